//! Import sources: an image layout directory, or a tar archive (optionally gzip/zstd
//! compressed) read in place through an index of its entries. Both answer "give me the file at
//! this archive path" and never read outside the directory or archive.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::compression::{self, Compression};
use crate::error::{ImageError, IoContext};

/// Which image format a source holds, by its top-level files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `index.json` (and blobs/): OCI image layout, also `docker save` since v25.
    Oci,
    /// `manifest.json` only: the docker archive format.
    Docker,
}

enum TarItem {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
    Dir,
    Other,
}

enum Kind {
    Dir(PathBuf),
    Tar {
        file: PathBuf,
        items: HashMap<String, TarItem>,
        // Keeps a decompressed copy of a compressed archive alive while it is read.
        _decompressed: Option<tempfile::NamedTempFile>,
    },
}

/// A reader over one file of a source.
pub(crate) type FileReader = Box<dyn Read + Send>;

/// An image layout directory or archive being imported.
pub(crate) struct Source {
    /// The path the user gave, for messages.
    pub display: String,
    kind: Kind,
}

/// Normalize an archive-relative path: drop `.` and empty components, apply `..` without
/// ever leaving the archive root. `None` when the path would leave it.
pub(crate) fn normalize(path: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn not_an_image(display: &str, reason: impl Into<String>) -> ImageError {
    ImageError::NotAnImage {
        path: display.to_string(),
        reason: reason.into(),
    }
}

impl Source {
    /// Open `path`: a directory is read as a layout; a file must be a (compressed) tar. A
    /// compressed archive is decompressed into `tmp_dir` first.
    pub(crate) fn open(path: &Path, tmp_dir: &Path) -> Result<Source, ImageError> {
        let display = path.display().to_string();
        let meta = std::fs::metadata(path).ctx(|| format!("cannot read {display}"))?;
        if meta.is_dir() {
            let root = path
                .canonicalize()
                .ctx(|| format!("cannot read {display}"))?;
            return Ok(Source {
                display,
                kind: Kind::Dir(root),
            });
        }
        if !meta.is_file() {
            return Err(not_an_image(
                &display,
                "it is neither a file nor a directory",
            ));
        }
        let mut f = File::open(path).ctx(|| format!("cannot open {display}"))?;
        let mut head = Vec::new();
        (&mut f)
            .take(8)
            .read_to_end(&mut head)
            .ctx(|| format!("cannot read {display}"))?;
        let kind = compression::detect(&head).map_err(|e| not_an_image(&display, e))?;
        let (file, decompressed) = if kind == Compression::None {
            (path.to_path_buf(), None)
        } else {
            f.seek(SeekFrom::Start(0))
                .ctx(|| format!("cannot read {display}"))?;
            let mut tmp = tempfile::Builder::new()
                .prefix("archive-")
                .tempfile_in(tmp_dir)
                .ctx(|| format!("cannot create a temporary file in {}", tmp_dir.display()))?;
            let copied = compression::decompress(BufReader::new(f)).and_then(|r| match r {
                Ok((_, mut r)) => io::copy(&mut r, tmp.as_file_mut()).map(|_| ()),
                Err(e) => Err(io::Error::other(e)),
            });
            if let Err(e) = copied {
                return Err(not_an_image(
                    &display,
                    format!("it looks {kind:?}-compressed but does not decompress ({e})")
                        .to_lowercase(),
                ));
            }
            (tmp.path().to_path_buf(), Some(tmp))
        };
        let items = index_tar(&file)
            .map_err(|e| not_an_image(&display, format!("it is not a tar archive ({e})")))?;
        Ok(Source {
            display,
            kind: Kind::Tar {
                file,
                items,
                _decompressed: decompressed,
            },
        })
    }

    /// Which format the top-level files say this is.
    pub(crate) fn format(&self) -> Result<Format, ImageError> {
        if self.exists("index.json")? {
            Ok(Format::Oci)
        } else if self.exists("manifest.json")? {
            Ok(Format::Docker)
        } else {
            Err(not_an_image(
                &self.display,
                "it has neither index.json (OCI layout) nor manifest.json (docker archive)",
            ))
        }
    }

    /// Whether a regular file exists at `path`.
    pub(crate) fn exists(&self, path: &str) -> Result<bool, ImageError> {
        Ok(self.locate(path)?.is_some())
    }

    /// Open the regular file at `path`; `None` when there is none. Returns the reader and the
    /// file's length.
    pub(crate) fn open_file(&self, path: &str) -> Result<Option<(FileReader, u64)>, ImageError> {
        let Some(loc) = self.locate(path)? else {
            return Ok(None);
        };
        match loc {
            Located::Path(p) => {
                let f = File::open(&p).ctx(|| format!("cannot open {}", p.display()))?;
                let len = f
                    .metadata()
                    .ctx(|| format!("cannot read {}", p.display()))?
                    .len();
                Ok(Some((Box::new(BufReader::new(f)), len)))
            }
            Located::Range { file, offset, size } => {
                let mut f = File::open(file).ctx(|| format!("cannot open {}", self.display))?;
                f.seek(SeekFrom::Start(offset))
                    .ctx(|| format!("cannot read {}", self.display))?;
                Ok(Some((Box::new(BufReader::new(f).take(size)), size)))
            }
        }
    }

    /// Read a small file (JSON) whole; refuses files over `limit` bytes.
    pub(crate) fn read_small(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let Some((r, len)) = self.open_file(path)? else {
            return Ok(None);
        };
        if len > limit {
            return Err(not_an_image(
                &self.display,
                format!("{path} is {len} bytes, more than the {limit} a metadata file may have"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        r.take(limit)
            .read_to_end(&mut buf)
            .ctx(|| format!("cannot read {path} in {}", self.display))?;
        Ok(Some(buf))
    }

    fn locate(&self, path: &str) -> Result<Option<Located<'_>>, ImageError> {
        let Some(norm) = normalize(path) else {
            return Err(not_an_image(
                &self.display,
                format!("it refers to {path:?}, which is outside the archive"),
            ));
        };
        if norm.is_empty() {
            return Ok(None);
        }
        match &self.kind {
            Kind::Dir(root) => {
                let candidate = root.join(&norm);
                let real = match candidate.canonicalize() {
                    Ok(p) => p,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(ImageError::io(
                            format!("cannot read {}", candidate.display()),
                            e,
                        ))
                    }
                };
                if !real.starts_with(root) {
                    return Err(not_an_image(
                        &self.display,
                        format!("{norm} is a symlink that leads outside the directory"),
                    ));
                }
                let is_file = std::fs::metadata(&real)
                    .map(|m| m.is_file())
                    .unwrap_or(false);
                Ok(is_file.then_some(Located::Path(real)))
            }
            Kind::Tar { file, items, .. } => {
                let mut cur = norm;
                // Follow symlinks and hard links inside the archive (legacy docker archives
                // link `<id>/layer.tar` to `../<digest>.tar`), a bounded number of times.
                for _ in 0..16 {
                    match items.get(&cur) {
                        Some(TarItem::File { offset, size }) => {
                            return Ok(Some(Located::Range {
                                file,
                                offset: *offset,
                                size: *size,
                            }))
                        }
                        Some(TarItem::Symlink(target)) => {
                            let base = match cur.rfind('/') {
                                Some(i) => &cur[..i],
                                None => "",
                            };
                            let joined = if target.starts_with('/') {
                                target.clone()
                            } else {
                                format!("{base}/{target}")
                            };
                            match normalize(&joined) {
                                Some(n) => cur = n,
                                None => return Ok(None),
                            }
                        }
                        Some(TarItem::Hardlink(target)) => match normalize(target) {
                            Some(n) => cur = n,
                            None => return Ok(None),
                        },
                        Some(TarItem::Dir) | Some(TarItem::Other) | None => return Ok(None),
                    }
                }
                Ok(None)
            }
        }
    }
}

enum Located<'a> {
    Path(PathBuf),
    Range {
        file: &'a Path,
        offset: u64,
        size: u64,
    },
}

/// Read every header of the tar at `path` and remember where each file's data lies.
fn index_tar(path: &Path) -> io::Result<HashMap<String, TarItem>> {
    let f = File::open(path)?;
    let mut archive = tar::Archive::new(BufReader::new(f));
    let mut items = HashMap::new();
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let raw = entry.path_bytes();
        let Ok(name) = std::str::from_utf8(&raw) else {
            continue;
        };
        let Some(name) = normalize(name) else {
            continue;
        };
        let link = || {
            entry
                .link_name_bytes()
                .map(|b| {
                    std::ffi::OsStr::from_bytes(&b)
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default()
        };
        let item = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => TarItem::File {
                offset: entry.raw_file_position(),
                size: entry.size(),
            },
            tar::EntryType::Symlink => TarItem::Symlink(link()),
            tar::EntryType::Link => TarItem::Hardlink(link()),
            tar::EntryType::Directory => TarItem::Dir,
            _ => TarItem::Other,
        };
        items.insert(name, item);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_stays_inside() {
        assert_eq!(normalize("./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(normalize("a/../b").as_deref(), Some("b"));
        assert_eq!(normalize("id/../x.tar").as_deref(), Some("x.tar"));
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("a/../../x"), None);
        assert_eq!(normalize("/abs/x").as_deref(), Some("abs/x"));
    }
}
