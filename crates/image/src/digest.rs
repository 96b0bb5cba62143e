//! sha256 digests: readers and writers that hash what passes through them, and helpers that
//! turn digests into blob and layer file names.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// `sha256:HEX` of a byte slice.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a validated `sha256:HEX` digest.
pub(crate) fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// True when `s` is 64 lower-case hex digits.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A reader that hashes and counts every byte read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Read the rest of the stream, then return `(sha256:HEX, bytes read in total)`.
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts every byte written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// `(sha256:HEX, bytes written, the inner writer)`.
    pub(crate) fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
            self.inner,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_reader_and_writer_agree_with_sha256() {
        let data = b"hello layers".repeat(1000);
        let want = sha256_digest(&data);
        let (got, n) = HashingReader::new(&data[..]).finish().unwrap();
        assert_eq!((got.as_str(), n), (want.as_str(), data.len() as u64));
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(&data).unwrap();
        let (got, n, inner) = w.finish();
        assert_eq!((got, n, inner), (want, data.len() as u64, data));
        assert!(is_hex64(hex_of(&sha256_digest(b""))));
        assert!(!is_hex64("ABC"));
    }
}
