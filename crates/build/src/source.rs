//! The source archive: a tar.gz of the directory being built, as `gcloud builds submit` and
//! `gcloud run deploy --source` upload it.
//!
//! [`pack`] follows gcloud's rule for what is left out: the directory's `.gcloudignore`
//! (gitignore syntax, in any subdirectory too) when there is one; otherwise the `.gitignore`
//! files, plus `.git/`, `.gitignore` and `.gcloudignore` themselves (what gcloud's generated
//! default ignores). Entries are sorted, owned by 0:0 and dated 0, so that the same files
//! give the same archive and the same source digest. The gitignore matching is the `ignore`
//! crate's (ripgrep's), which implements gitignore's rules in full.
//!
//! [`unpack`] is the server's half: only regular files, directories and symbolic links, each
//! name relative and inside the context (`..` refused), and at most a given number of bytes.

use crate::BuildError;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path};

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Files (regular files and symbolic links) in the archive.
    pub files: usize,
    /// Bytes of the archive (compressed).
    pub bytes: u64,
    /// `sha256:HEX` of the archive.
    pub digest: String,
}

/// Which ignore file [`pack`] follows for `dir`: `.gcloudignore` when present, else
/// `.gitignore`.
pub fn ignore_file(dir: &Path) -> &'static str {
    if dir.join(".gcloudignore").is_file() {
        ".gcloudignore"
    } else {
        ".gitignore"
    }
}

/// Writes `dir` as a tar.gz to `out`, leaving out what the ignore files name (see the module
/// docs). Errors: `dir` is not a directory, or a file cannot be read ([`BuildError::Source`],
/// [`BuildError::Io`]).
pub fn pack(dir: &Path, out: &mut dyn Write) -> Result<Packed, BuildError> {
    if !dir.is_dir() {
        return Err(BuildError::Source(format!(
            "{} is not a directory: give the directory that holds the source",
            dir.display()
        )));
    }
    let ignore_name = ignore_file(dir);
    let fallback = ignore_name == ".gitignore";
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .hidden(false)
        .add_custom_ignore_filename(ignore_name)
        .sort_by_file_name(|a, b| a.cmp(b))
        .filter_entry(move |e| {
            !(fallback
                && e.depth() == 1
                && matches!(
                    e.file_name().to_str(),
                    Some(".git" | ".gitignore" | ".gcloudignore")
                ))
        })
        .build();
    let hashing = HashWriter {
        inner: out,
        hash: Sha256::new(),
        bytes: 0,
    };
    let gz = flate2::write::GzEncoder::new(hashing, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut files = 0;
    for entry in walker {
        let entry = entry.map_err(|e| BuildError::Source(e.to_string()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("walked paths are under the root");
        if rel.as_os_str().is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path())
            .map_err(BuildError::io(entry.path().display().to_string()))?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let ft = meta.file_type();
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        let what = entry.path().display().to_string();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            tar.append_data(&mut h, rel, std::io::empty())
                .map_err(BuildError::io(what))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(BuildError::io(&what))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, rel, target)
                .map_err(BuildError::io(what))?;
            files += 1;
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(mode);
            h.set_size(meta.len());
            let f = std::fs::File::open(entry.path()).map_err(BuildError::io(&what))?;
            tar.append_data(&mut h, rel, f)
                .map_err(BuildError::io(what))?;
            files += 1;
        }
        // Sockets, fifos and devices are not source: left out, as gcloud does.
    }
    let gz = tar
        .into_inner()
        .map_err(BuildError::io("writing the archive"))?;
    let hashing = gz.finish().map_err(BuildError::io("writing the archive"))?;
    Ok(Packed {
        files,
        bytes: hashing.bytes,
        digest: format!("sha256:{}", hex::encode(hashing.hash.finalize())),
    })
}

struct HashWriter<'a> {
    inner: &'a mut dyn Write,
    hash: Sha256,
    bytes: u64,
}

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Unpacks the tar.gz `archive` into the directory `dest` (which must exist). Only regular
/// files, directories and symbolic links; every name must be relative without `..`, and the
/// files may hold at most `max_bytes` in all. Errors name the entry ([`BuildError::Source`]).
pub fn unpack(archive: &mut dyn Read, dest: &Path, max_bytes: u64) -> Result<u64, BuildError> {
    let gz = flate2::read::GzDecoder::new(archive);
    let mut tar = tar::Archive::new(gz);
    tar.set_preserve_permissions(true);
    tar.set_overwrite(true);
    let mut total = 0u64;
    let entries = tar
        .entries()
        .map_err(|e| BuildError::Source(format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| BuildError::Source(format!("not a tar.gz archive: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| BuildError::Source(format!("an entry has an unreadable name: {e}")))?
            .into_owned();
        let shown = path.display().to_string();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(BuildError::Source(format!(
                "entry {shown:?} is not a relative path inside the source directory"
            )));
        }
        match entry.header().entry_type() {
            tar::EntryType::Regular
            | tar::EntryType::Directory
            | tar::EntryType::Symlink
            | tar::EntryType::GNULongName => {}
            other => {
                return Err(BuildError::Source(format!(
                    "entry {shown:?} is a {other:?}: only files, directories and symbolic links are source"
                )))
            }
        }
        total += entry.header().size().unwrap_or(0);
        if total > max_bytes {
            return Err(BuildError::Source(format!(
                "the source unpacks to more than {max_bytes} bytes: leave large files out with .gcloudignore"
            )));
        }
        // `unpack_in` refuses names that climb out and writes through symbolic links that
        // would leave `dest`.
        let ok = entry
            .unpack_in(dest)
            .map_err(|e| BuildError::Source(format!("entry {shown:?}: {e}")))?;
        if !ok {
            return Err(BuildError::Source(format!(
                "entry {shown:?} would be written outside the source directory"
            )));
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// Packs `files` (with `rel` → text) and returns the sorted names in the archive.
    fn check(files: &[(&str, &str)], want: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            write(dir.path(), rel, text);
        }
        let mut buf = Vec::new();
        let packed = pack(dir.path(), &mut buf).unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&mut buf.as_slice(), out.path(), 1 << 20).unwrap();
        let mut got: Vec<String> = ignore::WalkBuilder::new(out.path())
            .standard_filters(false)
            .build()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_some_and(|t| t.is_file()))
            .map(|e| {
                e.path()
                    .strip_prefix(out.path())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        got.sort();
        assert_eq!(got, want, "files {files:?}");
        assert_eq!(packed.files, want.len());
    }

    #[test]
    fn ignore_files() {
        check(
            &[("Dockerfile", "FROM x"), ("a/b.txt", "b")],
            &["Dockerfile", "a/b.txt"],
        );
        // .gcloudignore wins over .gitignore, and is itself packed unless it names itself.
        check(
            &[
                (".gcloudignore", "secret.txt\n"),
                (".gitignore", "keep.txt\n"),
                ("secret.txt", "s"),
                ("keep.txt", "k"),
                ("sub/secret.txt", "s"),
            ],
            &[".gcloudignore", ".gitignore", "keep.txt"],
        );
        // Without it, .gitignore applies, and .git and the ignore files stay out.
        check(
            &[
                (".gitignore", "*.log\n!keep.log\nbuild/\n"),
                ("a.log", "x"),
                ("keep.log", "k"),
                ("build/out", "o"),
                (".git/HEAD", "ref"),
                ("main.py", "m"),
            ],
            &["keep.log", "main.py"],
        );
        // Negation and anchored patterns.
        check(
            &[
                (".gcloudignore", "/top.txt\n*.tmp\n"),
                ("top.txt", "t"),
                ("d/top.txt", "t"),
                ("x.tmp", "x"),
            ],
            &[".gcloudignore", "d/top.txt"],
        );
    }

    #[test]
    fn same_files_same_digest() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        write(a.path(), "x/y", "1");
        write(a.path(), "z", "2");
        write(b.path(), "z", "2");
        write(b.path(), "x/y", "1");
        let da = pack(a.path(), &mut Vec::new()).unwrap().digest;
        let db = pack(b.path(), &mut Vec::new()).unwrap().digest;
        assert_eq!(da, db);
        write(b.path(), "z", "3");
        assert_ne!(da, pack(b.path(), &mut Vec::new()).unwrap().digest);
    }

    fn archive(name: &str, kind: tar::EntryType, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // Set the raw name, so that names `append_data` would refuse can be tested.
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpack_refuses() {
        for (name, kind, data, want) in [
            (
                "../x",
                tar::EntryType::Regular,
                &b"x"[..],
                "not a relative path",
            ),
            (
                "/etc/x",
                tar::EntryType::Regular,
                b"x",
                "not a relative path",
            ),
            ("dev", tar::EntryType::Char, b"", "only files"),
            (
                "big",
                tar::EntryType::Regular,
                &[0u8; 2048][..],
                "more than 1024 bytes",
            ),
        ] {
            let out = tempfile::tempdir().unwrap();
            let a = archive(name, kind, data);
            let e = unpack(&mut a.as_slice(), out.path(), 1024)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        let out = tempfile::tempdir().unwrap();
        let e = unpack(&mut &b"not gzip"[..], out.path(), 1024).unwrap_err();
        assert!(e.to_string().contains("not a tar.gz"), "{e}");
    }
}
