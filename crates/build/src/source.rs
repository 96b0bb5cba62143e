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
//! [`unpack_zip`] does the same for the zip gcloud uploads to its staging bucket
//! (`gcloud run deploy --source`), and [`unpack_file`] picks between them by the file's first
//! bytes.

use crate::BuildError;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, Write};
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

/// Unpacks the source archive at `path`, a tar.gz or a zip (told apart by their first bytes:
/// gzip's `1f 8b`, zip's `PK`), into `dest` as [`unpack`] or [`unpack_zip`] do.
pub fn unpack_file(path: &Path, dest: &Path, max_bytes: u64) -> Result<u64, BuildError> {
    let shown = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(BuildError::io(shown.clone()))?;
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(BuildError::io(shown.clone()))?;
    f.rewind().map_err(BuildError::io(shown))?;
    if n == 2 && magic == *b"PK" {
        unpack_zip(f, dest, max_bytes)
    } else {
        unpack(&mut f, dest, max_bytes)
    }
}

/// Unpacks the zip `archive` into the directory `dest` (which must exist), with the checks
/// [`unpack`] makes: every name relative and inside `dest` (zip's `enclosed_name`, which
/// refuses absolute names and `..`), only files and directories (a symbolic link, which a zip
/// marks in its Unix mode, is refused: gcloud's zips hold none), the Unix permission bits kept
/// when the zip records them, and at most `max_bytes` unpacked in all (counted as the bytes
/// are written, not as the headers claim). Errors name the entry ([`BuildError::Source`]).
pub fn unpack_zip(
    archive: impl Read + Seek,
    dest: &Path,
    max_bytes: u64,
) -> Result<u64, BuildError> {
    use std::os::unix::fs::PermissionsExt;
    let mut zip = zip::ZipArchive::new(archive)
        .map_err(|e| BuildError::Source(format!("not a zip archive: {e}")))?;
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| BuildError::Source(format!("not a zip archive: {e}")))?;
        let shown = entry.name().to_string();
        let Some(rel) = entry.enclosed_name() else {
            return Err(BuildError::Source(format!(
                "entry {shown:?} is not a relative path inside the source directory"
            )));
        };
        let mode = entry.unix_mode();
        if mode.is_some_and(|m| m & 0o170000 == 0o120000) {
            return Err(BuildError::Source(format!(
                "entry {shown:?} is a symbolic link: only files and directories are taken from a zip"
            )));
        }
        let out = dest.join(&rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(BuildError::io(out.display().to_string()))?;
            continue;
        }
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)
                .map_err(BuildError::io(parent.display().to_string()))?;
        }
        let mut file =
            std::fs::File::create(&out).map_err(BuildError::io(out.display().to_string()))?;
        let left = max_bytes.saturating_sub(total);
        let n = std::io::copy(&mut (&mut entry).take(left + 1), &mut file)
            .map_err(|e| BuildError::Source(format!("entry {shown:?}: {e}")))?;
        total += n;
        if total > max_bytes {
            return Err(BuildError::Source(format!(
                "the source unpacks to more than {max_bytes} bytes: leave large files out with .gcloudignore"
            )));
        }
        if let Some(m) = mode {
            std::fs::set_permissions(&out, std::fs::Permissions::from_mode(m & 0o777))
                .map_err(BuildError::io(out.display().to_string()))?;
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

    /// A zip of `entries` (name, text, Unix mode).
    fn zip_of(entries: &[(&str, &str, u32)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, text, mode) in entries {
            let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode & 0o777);
            if *mode & 0o170000 == 0o120000 {
                w.add_symlink(*name, *text, opts).unwrap();
            } else if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(text.as_bytes()).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zips_unpack_inside_the_context() {
        let out = tempfile::tempdir().unwrap();
        let z = zip_of(&[
            ("Dockerfile", "FROM x", 0o644),
            ("bin/", "", 0o755),
            ("bin/run", "#!/bin/sh", 0o755),
        ]);
        let p = out.path().join("src.zip");
        std::fs::write(&p, &z).unwrap();
        let ctx = out.path().join("ctx");
        std::fs::create_dir(&ctx).unwrap();
        assert_eq!(unpack_file(&p, &ctx, 1 << 20).unwrap(), 15);
        assert_eq!(
            std::fs::read_to_string(ctx.join("Dockerfile")).unwrap(),
            "FROM x"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ctx.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        for (bad, want) in [
            ("../evil", "not a relative path"),
            ("/etc/evil", "not a relative path"),
            ("a/../../evil", "not a relative path"),
        ] {
            let dest = tempfile::tempdir().unwrap();
            let z = zip_of(&[(bad, "x", 0o644)]);
            let err = unpack_zip(std::io::Cursor::new(z), dest.path(), 1 << 20)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(!out.path().join("evil").exists());
        }
        let dest = tempfile::tempdir().unwrap();
        let z = zip_of(&[("link", "/etc/passwd", 0o120777)]);
        let err = unpack_zip(std::io::Cursor::new(z), dest.path(), 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let z = zip_of(&[("big", "0123456789", 0o644)]);
        let err = unpack_zip(std::io::Cursor::new(z), dest.path(), 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than 5 bytes"), "{err}");
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
