//! The reference table `ROOT/refs.json` (`NAME:TAG` -> manifest digest), written durably
//! (temporary file, fsync, rename, fsync of the directory), and the `flock` locks that
//! serialize store mutations between threads and processes.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{ImageError, IoContext};

pub(crate) const REFS_FILE: &str = "refs.json";
const REFS_TMP: &str = "refs.json.tmp";

#[derive(Debug, Default, Serialize, Deserialize)]
struct RefsFile {
    version: u32,
    refs: BTreeMap<String, String>,
}

/// Load the reference table; a missing file is an empty table.
pub(crate) fn load(root: &Path) -> Result<BTreeMap<String, String>, ImageError> {
    let path = root.join(REFS_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
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
    Ok(file.refs)
}

/// Replace the reference table atomically and durably.
pub(crate) fn save(root: &Path, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
    let tmp = root.join(REFS_TMP);
    let path = root.join(REFS_FILE);
    let body = serde_json::to_vec_pretty(&RefsFile {
        version: 1,
        refs: refs.clone(),
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
