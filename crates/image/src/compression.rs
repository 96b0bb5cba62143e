//! Compression detection by magic bytes (never by media type alone) and transparent
//! decompression of gzip and zstd streams.

use std::io::{self, BufReader, Read};

/// How a stream is compressed, as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for a tar stream compressed this way.
    pub(crate) fn layer_media_type(self) -> &'static str {
        match self {
            Compression::None => crate::oci::MT_LAYER_TAR,
            Compression::Gzip => crate::oci::MT_LAYER_GZIP,
            Compression::Zstd => crate::oci::MT_LAYER_ZSTD,
        }
    }
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// Classify a stream by its first bytes. Unsupported compressions are an error naming them.
pub(crate) fn detect(head: &[u8]) -> Result<Compression, String> {
    if head.starts_with(GZIP_MAGIC) {
        Ok(Compression::Gzip)
    } else if head.starts_with(ZSTD_MAGIC) {
        Ok(Compression::Zstd)
    } else if head.starts_with(XZ_MAGIC) {
        Err("xz compression is not supported; use gzip, zstd or no compression".into())
    } else if head.starts_with(BZIP2_MAGIC)
        && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b))
    {
        Err("bzip2 compression is not supported; use gzip, zstd or no compression".into())
    } else {
        Ok(Compression::None)
    }
}

/// Read up to `n` bytes (fewer only at end of stream).
fn read_head<R: Read>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    r.by_ref().take(n as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// A decompressed stream and the compression it had.
pub(crate) type Decompressed<'a> = (Compression, Box<dyn Read + 'a>);

/// Peek at a stream's magic bytes and return it decompressed. The error string explains an
/// unsupported compression; I/O errors are reported as such.
pub(crate) fn decompress<'a, R: Read + 'a>(
    mut r: R,
) -> io::Result<Result<Decompressed<'a>, String>> {
    let head = read_head(&mut r, 6)?;
    let kind = match detect(&head) {
        Ok(k) => k,
        Err(e) => return Ok(Err(e)),
    };
    let stream = io::Cursor::new(head).chain(r);
    let out: Box<dyn Read + 'a> = match kind {
        Compression::None => Box::new(stream),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(stream))),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(BufReader::new(
            stream,
        ))?),
    };
    Ok(Ok((kind, out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_and_decompresses_by_magic() {
        let data = b"not really a tar but bytes all the same".repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (input, kind) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
        ] {
            let (got_kind, mut r) = decompress(&input[..]).unwrap().unwrap();
            assert_eq!(got_kind, kind);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        for (head, needle) in [(XZ_MAGIC, "xz"), (&b"BZh9"[..], "bzip2")] {
            let err = decompress(head).unwrap().err().unwrap();
            assert!(err.contains(needle), "{err}");
        }
        let (kind, _) = decompress(&b""[..]).unwrap().unwrap();
        assert_eq!(kind, Compression::None);
    }
}
