//! The reference table `ROOT/refs.json` (`NAME:TAG` -> manifest digest, and where each
//! reference came from: imported, pulled or pushed), written durably
//! (temporary file, fsync, rename, fsync of the directory), and the `flock` locks that
//! serialize store mutations between threads and processes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, IoContext};
use crate::ImageSource;

pub(crate) const REFS_FILE: &str = "refs.json";
const REFS_TMP: &str = "refs.json.tmp";

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    refs: BTreeMap<String, String>,
    /// Where each reference came from; absent for references written before sources were
    /// recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sources: BTreeMap<String, ImageSource>,
    /// `NAME@DIGEST` references that were pushed by digest and then listed by an index
    /// pushed to the same repository: they are kept only while something else (the index, a
    /// tag, a pin) reaches their digest.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    index_children: BTreeSet<String>,
}

/// Load the reference table; a missing file is an empty table.
pub(crate) fn load(root: &Path) -> Result<BTreeMap<String, String>, ImageError> {
    Ok(load_file(root)?.refs)
}

/// Where each reference came from, as far as recorded.
pub(crate) fn load_sources(root: &Path) -> Result<BTreeMap<String, ImageSource>, ImageError> {
    Ok(load_file(root)?.sources)
}

fn load_file(root: &Path) -> Result<RefsFile, ImageError> {
    let path = root.join(REFS_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(RefsFile::default()),
        Err(e) => return Err(ImageError::io(format!("cannot read {}", path.display()), e)),
    };
    let file: RefsFile = serde_json::from_slice(&bytes).map_err(|e| ImageError::Corrupt {
        root: root.display().to_string(),
        reason: format!(
            "{} does not parse ({e}); restore it from a backup or remove it and import \
                 the images again",
            path.display()
        ),
    })?;
    Ok(file)
}

/// Replace the reference table atomically and durably, keeping the recorded sources of the
/// references that stay.
pub(crate) fn save(root: &Path, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
    save_with_source(root, refs, None)
}

/// The `NAME@DIGEST` references marked as an index's children (see [`mark_index_children`]).
pub(crate) fn load_index_children(root: &Path) -> Result<BTreeSet<String>, ImageError> {
    Ok(load_file(root)?.index_children)
}

/// [`save`], recording `source` for the reference `key` too (a reference written again by
/// a push or import of its own is no longer an index's child).
pub(crate) fn save_with_source(
    root: &Path,
    refs: &BTreeMap<String, String>,
    source: Option<(&str, ImageSource)>,
) -> Result<(), ImageError> {
    write_file(root, refs, source, &[])
}

/// [`save_with_source`], marking `children` (`NAME@DIGEST` keys in `refs`) as children of an
/// index just stored.
pub(crate) fn mark_index_children(
    root: &Path,
    refs: &BTreeMap<String, String>,
    source: Option<(&str, ImageSource)>,
    children: &[String],
) -> Result<(), ImageError> {
    write_file(root, refs, source, children)
}

fn write_file(
    root: &Path,
    refs: &BTreeMap<String, String>,
    source: Option<(&str, ImageSource)>,
    children: &[String],
) -> Result<(), ImageError> {
    let tmp = root.join(REFS_TMP);
    let path = root.join(REFS_FILE);
    let old = load_file(root)?;
    let mut sources = old.sources;
    sources.retain(|k, _| refs.contains_key(k));
    let mut index_children = old.index_children;
    if let Some((key, s)) = source {
        sources.insert(key.to_string(), s);
        index_children.remove(key);
    }
    index_children.extend(children.iter().cloned());
    index_children.retain(|k| refs.contains_key(k));
    let body = serde_json::to_vec_pretty(&RefsFile {
        version: 1,
        refs: refs.clone(),
        sources,
        index_children,
    })
    .map_err(|source| ImageError::Json {
        what: "the reference table".into(),
        source,
    })?;
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(root)
    };
    write().ctx(|| format!("cannot write {}", path.display()))
}

/// fsync a directory so that renames into it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An advisory lock on a file under the store root, released on drop.
pub(crate) struct Lock {
    _lock: Flock<File>,
}

/// Take the lock file `name` under `root`, shared or exclusive, waiting for it.
pub(crate) fn lock(root: &Path, name: &str, exclusive: bool) -> Result<Lock, ImageError> {
    let path = root.join(name);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("cannot open lock file {}", path.display()))?;
    let arg = if exclusive {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockShared
    };
    let lock = Flock::lock(f, arg)
        .map_err(|(_, e)| ImageError::io(format!("cannot lock {}", path.display()), e.into()))?;
    Ok(Lock { _lock: lock })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_follow_their_references() {
        let dir = tempfile::tempdir().unwrap();
        // A table written before sources were recorded loads, with none.
        std::fs::write(
            dir.path().join(REFS_FILE),
            r#"{"version":1,"refs":{"a:latest":"sha256:aa"}}"#,
        )
        .unwrap();
        assert!(load_sources(dir.path()).unwrap().is_empty());
        let mut refs = load(dir.path()).unwrap();
        refs.insert("b:latest".into(), "sha256:bb".into());
        save_with_source(dir.path(), &refs, Some(("b:latest", ImageSource::Pushed))).unwrap();
        refs.insert("c:latest".into(), "sha256:cc".into());
        save_with_source(dir.path(), &refs, Some(("c:latest", ImageSource::Pulled))).unwrap();
        let sources = load_sources(dir.path()).unwrap();
        assert_eq!(sources.get("b:latest"), Some(&ImageSource::Pushed));
        assert_eq!(sources.get("c:latest"), Some(&ImageSource::Pulled));
        assert_eq!(sources.get("a:latest"), None);
        // A deleted reference takes its source with it.
        refs.remove("b:latest");
        save(dir.path(), &refs).unwrap();
        let sources = load_sources(dir.path()).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources.get("c:latest"), Some(&ImageSource::Pulled));
    }

    #[test]
    fn refs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let mut refs = BTreeMap::new();
        refs.insert(
            "busybox:latest".to_string(),
            format!("sha256:{}", "a".repeat(64)),
        );
        save(dir.path(), &refs).unwrap();
        assert_eq!(load(dir.path()).unwrap(), refs);
        assert!(!dir.path().join(REFS_TMP).exists());
        fs::write(dir.path().join(REFS_FILE), b"{oops").unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("refs.json"), "{err}");
    }
}
