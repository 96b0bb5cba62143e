//! Safe layer unpacking. Every tar entry's path (and hard-link target) is cleaned and
//! validated by hand before anything is written: absolute and `./` names apply under the
//! layer's root (containerd's rule), a `..` that climbs above the root and any walk through a
//! symlink the layer already holds are refused. OCI whiteouts become overlayfs whiteouts
//! (`.wh.NAME` -> character device 0:0, `.wh..wh..opq` -> `trusted.overlay.opaque=y`). Modes, owners, mtimes,
//! extended attributes (PAX `SCHILY.xattr.*`), symlinks, hard links, devices and fifos are
//! preserved; GNU sparse files are written out in full. The uncompressed stream is hashed
//! so the caller can check the layer's diff_id.

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use nix::sys::stat::{makedev, mknod, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::compression;
use crate::digest::HashingReader;
use crate::error::{ImageError, IoContext};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Hash the uncompressed stream of a layer blob without unpacking it: its diff_id.
pub(crate) fn diff_id(blob: &Path, layer: &str) -> Result<String, ImageError> {
    let reader = open_layer(blob, layer)?;
    let (digest, _) = HashingReader::new(reader)
        .finish()
        .map_err(|e| bad_layer(layer, format!("cannot decompress the layer ({e})")))?;
    Ok(digest)
}

/// Unpack the layer blob at `blob` (named `layer` in messages) into the existing, empty
/// directory `dest`, which becomes the layer's root. Returns the diff_id of the stream.
/// On error `dest` may hold a partial tree; the caller removes it.
pub(crate) fn unpack_layer(blob: &Path, layer: &str, dest: &Path) -> Result<String, ImageError> {
    fs::set_permissions(dest, Permissions::from_mode(0o755))
        .ctx(|| format!("cannot prepare {}", dest.display()))?;
    let mut hashing = HashingReader::new(open_layer(blob, layer)?);
    let eof_at = Rc::new(Cell::new(None));
    let mut unpacker = Unpacker {
        root: dest,
        layer,
        dirs: HashMap::new(),
        eof_at: eof_at.clone(),
    };
    {
        let mut archive = tar::Archive::new(ZeroFillAtEof {
            inner: &mut hashing,
            pos: 0,
            eof_at,
            filled: 0,
        });
        let entries = archive
            .entries()
            .map_err(|e| bad_layer(layer, format!("not a tar stream ({e})")))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| bad_layer(layer, format!("not a valid tar stream ({e})")))?;
            unpacker.entry(&mut entry)?;
        }
    }
    unpacker.finish()?;
    let (digest, _) = hashing
        .finish()
        .map_err(|e| bad_layer(layer, format!("cannot decompress the layer ({e})")))?;
    Ok(digest)
}

/// How many zero bytes `ZeroFillAtEof` supplies: enough for the last entry's padding and the
/// two zero blocks that end an archive.
const ZERO_FILL: u64 = 2048;

/// Some tools (umoci as packaged in Debian, among others) write layers whose tar stream stops
/// right after the last file's data, without padding or end-of-archive blocks. This reader
/// supplies those zeros once the real stream ends and records where it ended, so that an
/// entry whose *data* the stream cut short is still detected (`Unpacker::regular`).
struct ZeroFillAtEof<R> {
    inner: R,
    pos: u64,
    eof_at: Rc<Cell<Option<u64>>>,
    filled: u64,
}

impl<R: Read> Read for ZeroFillAtEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.eof_at.get().is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            self.eof_at.set(Some(self.pos));
        }
        let k = (buf.len() as u64).min(ZERO_FILL - self.filled) as usize;
        buf[..k].fill(0);
        self.filled += k as u64;
        Ok(k)
    }
}

fn open_layer<'a>(blob: &Path, layer: &str) -> Result<Box<dyn Read + 'a>, ImageError> {
    let f = File::open(blob).ctx(|| format!("cannot open blob {}", blob.display()))?;
    match compression::decompress(BufReader::new(f))
        .ctx(|| format!("cannot read blob {}", blob.display()))?
    {
        Ok((_, r)) => Ok(r),
        Err(reason) => Err(bad_layer(layer, reason)),
    }
}

fn bad_layer(layer: &str, reason: impl Into<String>) -> ImageError {
    ImageError::BadLayer {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

/// Ownership, permissions and mtime an entry asks for.
#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
}

impl Meta {
    fn mtime(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.mtime)
    }

    fn timespec(&self) -> TimeSpec {
        TimeSpec::new(self.mtime.min(i64::MAX as u64) as i64, 0)
    }
}

/// Extended attributes an entry carries as PAX `SCHILY.xattr.NAME` records (what docker,
/// buildah and GNU tar write), except `trusted.overlay.*`, which overlayfs would read as its
/// own metadata (a layer must not be able to forge opaque dirs or redirects that way).
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with(b"trusted.overlay.") || name.is_empty() {
                continue;
            }
            out.push((
                OsStr::from_bytes(name).to_os_string(),
                ext.value_bytes().to_vec(),
            ));
        }
    }
    Ok(out)
}

/// Set `xattrs` on `path` (never following a symlink).
fn set_xattrs(path: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), PathFault> {
    for (name, value) in xattrs {
        xattr::set(path, name, value).map_err(|e| {
            PathFault::Bad(format!(
                "cannot set its extended attribute {:?} ({e})",
                name.to_string_lossy()
            ))
        })?;
    }
    Ok(())
}

/// Why a path cannot be used; turned into an error naming the entry.
enum PathFault {
    Unsafe(String),
    Bad(String),
    Io(io::Error),
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Directories whose metadata is applied at the end (their mtimes would otherwise change
    /// as children are added). Keyed by components relative to the root; the last entry for a
    /// directory wins.
    dirs: HashMap<Vec<OsString>, Meta>,
    /// Where the real tar stream ended, once it has (see `ZeroFillAtEof`).
    eof_at: Rc<Cell<Option<u64>>>,
}

/// Split an archive path into components, cleaned the way containerd and Docker apply layer
/// entries: a leading `/` and any `./` mean the layer's root, `.` and empty components are
/// dropped and `..` takes back the component before it (`/a/./b/../c` is `a/c`). Only a `..`
/// that would climb above the root is refused. Lexical cleaning is safe here because the
/// cleaned path is what gets applied, and `Unpacker::walk` refuses to go through symlinks.
fn components(raw: &[u8]) -> Result<Vec<OsString>, String> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err("path escapes the layer (its '..' climbs above the root)".into());
                }
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn show(comps: &[OsString]) -> String {
    let joined: Vec<String> = comps
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    joined.join("/")
}

impl Unpacker<'_> {
    fn fault(&self, entry: &str, f: PathFault) -> ImageError {
        match f {
            PathFault::Unsafe(reason) => ImageError::UnsafeEntry {
                layer: self.layer.to_string(),
                entry: entry.to_string(),
                reason,
            },
            PathFault::Bad(reason) => ImageError::BadEntry {
                layer: self.layer.to_string(),
                entry: entry.to_string(),
                reason,
            },
            PathFault::Io(e) => ImageError::BadEntry {
                layer: self.layer.to_string(),
                entry: entry.to_string(),
                reason: format!("cannot unpack it ({e})"),
            },
        }
    }

    /// Walk `dirs` below the root, checking that every component is a real directory (never
    /// a symlink). Missing directories are created 0755 when `create`; otherwise they fail.
    fn walk(&self, dirs: &[OsString], create: bool) -> Result<PathBuf, PathFault> {
        let mut p = self.root.to_path_buf();
        for (i, c) in dirs.iter().enumerate() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(PathFault::Unsafe(format!(
                        "path goes through the symlink {:?} in the layer",
                        show(&dirs[..=i])
                    )))
                }
                Ok(_) => {
                    return Err(PathFault::Bad(format!(
                        "{:?} in the layer is not a directory",
                        show(&dirs[..=i])
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&p)
                        .map_err(PathFault::Io)?;
                    // The umask may have narrowed the mode.
                    fs::set_permissions(&p, Permissions::from_mode(0o755))
                        .map_err(PathFault::Io)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(PathFault::Bad(format!(
                        "{:?} is not in the layer",
                        show(&dirs[..=i])
                    )))
                }
                Err(e) => return Err(PathFault::Io(e)),
            }
        }
        Ok(p)
    }

    /// Remove whatever is at `path` (never following a symlink) unless it is a directory and
    /// `keep_dir` is set. Returns true when a directory was kept.
    fn clear(path: &Path, keep_dir: bool) -> Result<bool, PathFault> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                fs::remove_dir_all(path).map_err(PathFault::Io)?;
            }
            Ok(_) => fs::remove_file(path).map_err(PathFault::Io)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PathFault::Io(e)),
        }
        Ok(false)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let comps = components(&raw).map_err(|r| self.fault(&name, PathFault::Unsafe(r)))?;
        let meta = self
            .meta(entry)
            .map_err(|e| self.fault(&name, PathFault::Bad(format!("bad header ({e})"))))?;

        if let Some(last) = comps.last() {
            let last = last.as_bytes();
            if last.starts_with(WHITEOUT_PREFIX) {
                return self
                    .whiteout(&comps, meta)
                    .map_err(|f| self.fault(&name, f));
            }
        }

        if comps.is_empty() {
            // The layer root itself ("./"): only a directory may describe it.
            if kind == tar::EntryType::Directory {
                self.dirs.insert(Vec::new(), meta);
                return Ok(());
            }
            return Err(self.fault(
                &name,
                PathFault::Bad("entry has an empty path but is not a directory".into()),
            ));
        }

        let (parent, file) = comps.split_at(comps.len() - 1);
        let dir = self.walk(parent, true).map_err(|f| self.fault(&name, f))?;
        let path = dir.join(&file[0]);
        let xattrs = xattrs(entry)
            .map_err(|e| self.fault(&name, PathFault::Bad(format!("bad PAX header ({e})"))))?;
        let res = match kind {
            tar::EntryType::Directory => self
                .directory(&comps, &path, meta)
                .and_then(|()| set_xattrs(&path, &xattrs)),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // A sparse entry's data in the stream is only its non-hole parts.
                let stored = if kind == tar::EntryType::GNUSparse {
                    entry.header().entry_size().unwrap_or(0)
                } else {
                    entry.size()
                };
                Self::regular(entry, &path, meta)
                    .and_then(|()| set_xattrs(&path, &xattrs))
                    .and_then(|()| {
                        let end = entry.raw_file_position() + stored;
                        match self.eof_at.get() {
                            Some(eof) if eof < end => Err(PathFault::Bad(
                                "the layer's tar stream ends inside this file; it is truncated"
                                    .into(),
                            )),
                            _ => Ok(()),
                        }
                    })
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().map(|b| b.into_owned());
                Self::symlink(target, &path, meta)
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().map(|b| b.into_owned());
                self.hardlink(target, &path)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                let sflag = if kind == tar::EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                Self::node(&path, sflag, makedev(major.into(), minor.into()), meta)
            }
            tar::EntryType::Fifo => Self::node(&path, SFlag::S_IFIFO, 0, meta),
            other => Err(PathFault::Bad(format!(
                "entry type {other:?} is not supported in image layers"
            ))),
        };
        res.map_err(|f| self.fault(&name, f))
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> io::Result<Meta> {
        let h = entry.header();
        let mut meta = Meta {
            mode: h.mode()? & 0o7777,
            // Some writers leave these fields blank; they mean 0 (the image author picks
            // ownership anyway, so nothing is gained by refusing).
            uid: h
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(0),
            gid: h
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(0),
            mtime: h.mtime().unwrap_or(0),
        };
        // PAX records override the fixed-width header fields.
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let Ok(value) = ext.value() else { continue };
                match ext.key() {
                    Ok("uid") => meta.uid = value.parse().unwrap_or(meta.uid),
                    Ok("gid") => meta.gid = value.parse().unwrap_or(meta.gid),
                    Ok("mtime") => {
                        let secs = value.split('.').next().unwrap_or("");
                        meta.mtime = secs.parse::<i64>().map(|s| s.max(0) as u64).unwrap_or(0);
                    }
                    _ => {}
                }
            }
        }
        Ok(meta)
    }

    fn whiteout(&mut self, comps: &[OsString], meta: Meta) -> Result<(), PathFault> {
        let (parent, file) = comps.split_at(comps.len() - 1);
        let last = file[0].as_bytes();
        if last == OPAQUE_MARKER {
            let dir = self.walk(parent, true)?;
            return xattr::set(&dir, OPAQUE_XATTR, b"y").map_err(PathFault::Io);
        }
        if last.starts_with(b".wh..wh.") {
            // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to do in overlayfs.
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        match hidden {
            b"" => return Err(PathFault::Bad("the whiteout names no file".into())),
            b"." | b".." => {
                return Err(PathFault::Unsafe(
                    "the whiteout escapes its directory".into(),
                ))
            }
            _ => {}
        }
        let dir = self.walk(parent, true)?;
        let path = dir.join(OsStr::from_bytes(hidden));
        Self::clear(&path, false)?;
        let whiteout = Meta { mode: 0, ..meta };
        Self::node(&path, SFlag::S_IFCHR, makedev(0, 0), whiteout)
    }

    fn directory(&mut self, comps: &[OsString], path: &Path, meta: Meta) -> Result<(), PathFault> {
        if !Self::clear(path, true)? {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(PathFault::Io)?;
        }
        self.dirs.insert(comps.to_vec(), meta);
        Ok(())
    }

    fn regular<R: Read>(
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        meta: Meta,
    ) -> Result<(), PathFault> {
        Self::clear(path, false)?;
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(PathFault::Io)?;
        io::copy(entry, &mut f).map_err(PathFault::Io)?;
        // chown before chmod: chown clears set-user-ID and set-group-ID bits.
        std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid)).map_err(PathFault::Io)?;
        f.set_permissions(Permissions::from_mode(meta.mode))
            .map_err(PathFault::Io)?;
        f.set_times(
            FileTimes::new()
                .set_accessed(meta.mtime())
                .set_modified(meta.mtime()),
        )
        .map_err(PathFault::Io)
    }

    fn symlink(target: Option<Vec<u8>>, path: &Path, meta: Meta) -> Result<(), PathFault> {
        let target = match target {
            Some(t) if !t.is_empty() => t,
            _ => return Err(PathFault::Bad("symlink has no target".into())),
        };
        Self::clear(path, false)?;
        // The target is stored, never followed: it resolves inside the container's root.
        std::os::unix::fs::symlink(OsStr::from_bytes(&target), path).map_err(PathFault::Io)?;
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(PathFault::Io)?;
        let t = meta.timespec();
        utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| PathFault::Io(e.into()))
    }

    fn hardlink(&self, target: Option<Vec<u8>>, path: &Path) -> Result<(), PathFault> {
        let Some(target) = target else {
            return Err(PathFault::Bad("hard link has no target".into()));
        };
        let shown = String::from_utf8_lossy(&target).into_owned();
        let comps = components(&target)
            .map_err(|r| PathFault::Unsafe(format!("hard link target {shown:?}: {r}")))?;
        if comps.is_empty() {
            return Err(PathFault::Bad("hard link points at the layer root".into()));
        }
        let (parent, file) = comps.split_at(comps.len() - 1);
        let dir = self.walk(parent, false).map_err(|f| match f {
            PathFault::Unsafe(r) => PathFault::Unsafe(format!("hard link target {shown:?}: {r}")),
            PathFault::Bad(r) => PathFault::Bad(format!("hard link target {shown:?}: {r}")),
            io => io,
        })?;
        let source = dir.join(&file[0]);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.file_type().is_dir() => {
                return Err(PathFault::Bad(format!(
                    "hard link target {shown:?} is a directory"
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(PathFault::Bad(format!(
                    "hard link target {shown:?} is not in the layer"
                )))
            }
            Err(e) => return Err(PathFault::Io(e)),
        }
        if source == path {
            return Ok(());
        }
        Self::clear(path, false)?;
        // linkat(2) without AT_SYMLINK_FOLLOW: a symlink target is linked, not followed.
        fs::hard_link(&source, path).map_err(PathFault::Io)
    }

    fn node(path: &Path, kind: SFlag, dev: libc::dev_t, meta: Meta) -> Result<(), PathFault> {
        Self::clear(path, false)?;
        mknod(path, kind, Mode::from_bits_truncate(meta.mode), dev)
            .map_err(|e| PathFault::Io(e.into()))?;
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid)).map_err(PathFault::Io)?;
        // chmod(2) follows symlinks, but `path` is the node just made under checked parents.
        fs::set_permissions(path, Permissions::from_mode(meta.mode)).map_err(PathFault::Io)?;
        let t = meta.timespec();
        utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(|e| PathFault::Io(e.into()))
    }

    /// Apply directory metadata, deepest first, re-checking each path so that a directory
    /// later replaced (or hidden behind a symlink) by another entry is skipped.
    fn finish(self) -> Result<(), ImageError> {
        let mut dirs: Vec<(Vec<OsString>, Meta)> =
            self.dirs.iter().map(|(k, v)| (k.clone(), *v)).collect();
        dirs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        for (comps, meta) in dirs {
            let path = match self.walk(&comps, false) {
                Ok(p) => p,
                Err(_) => continue,
            };
            let f = match OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&path)
            {
                Ok(f) => f,
                Err(_) => continue,
            };
            let apply = || -> io::Result<()> {
                std::os::unix::fs::fchown(&f, Some(meta.uid), Some(meta.gid))?;
                f.set_permissions(Permissions::from_mode(meta.mode))?;
                let t = meta.timespec();
                nix::sys::stat::futimens(f.as_raw_fd(), &t, &t)?;
                Ok(())
            };
            apply().map_err(|e| ImageError::BadEntry {
                layer: self.layer.to_string(),
                entry: show(&comps),
                reason: format!("cannot set the directory's owner, mode or time ({e})"),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_cleaned_and_refuse_escapes() {
        let ok = |s: &str| show(&components(s.as_bytes()).unwrap());
        assert_eq!(ok("./a/b/"), "a/b");
        assert_eq!(ok("a//./b"), "a/b");
        assert_eq!(ok("."), "");
        assert_eq!(ok("/"), "");
        assert_eq!(ok("./"), "");
        assert_eq!(ok("/etc/passwd"), "etc/passwd");
        assert_eq!(ok("/a/./b/../c"), "a/c");
        assert_eq!(ok("a/../b"), "b");
        assert_eq!(ok("a/.."), "");
        assert_eq!(ok("//a///b/./"), "a/b");
        for bad in ["../x", "/../x", "a/../../b", "./..", "a/b/../../.."] {
            assert!(components(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    fn one_file_tar(data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "f", data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn missing_padding_is_tolerated_but_truncated_data_is_not() {
        let data = vec![7u8; 1000];
        let full = one_file_tar(&data);
        // Header + data, no padding and no end-of-archive blocks.
        let unpadded = &full[..512 + data.len()];
        let truncated = &full[..512 + data.len() / 2];
        let tmp = tempfile::tempdir().unwrap();
        for (label, bytes, ok) in [
            ("full", &full[..], true),
            ("unpadded", unpadded, true),
            ("truncated", truncated, false),
        ] {
            let blob = tmp.path().join(format!("{label}.tar"));
            fs::write(&blob, bytes).unwrap();
            let dest = tmp.path().join(label);
            fs::create_dir(&dest).unwrap();
            let res = unpack_layer(&blob, "sha256:test", &dest);
            if ok {
                assert_eq!(res.unwrap(), crate::digest::sha256_digest(bytes), "{label}");
                assert_eq!(fs::read(dest.join("f")).unwrap(), data, "{label}");
            } else {
                let err = res.unwrap_err().to_string();
                assert!(err.contains("truncated") && err.contains("\"f\""), "{err}");
            }
        }
    }
}
