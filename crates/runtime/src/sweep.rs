//! Start-up cleanup: instances a previous server run left behind (after `kill -9`, a crash or
//! a power cut) are killed and every mount, cgroup and directory of theirs removed. Run before
//! the async runtime starts: libcontainer's delete must not run on tokio worker threads.

use crate::InstanceConfig;
use std::path::Path;

/// Cleans every instance directory under `instances_dir`; returns how many were found.
pub fn sweep(instances_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(instances_dir) else {
        return 0;
    };
    let mut n = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        n += 1;
        match InstanceConfig::load(&dir) {
            Ok(cfg) => crate::shim::cleanup(&cfg, None),
            // Never got a config: nothing was started there.
            Err(_) => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    n
}

/// Removes the `skiff` parent cgroup from every hierarchy where it is empty (another server
/// on the machine may still have instances there; then it stays).
pub fn remove_cgroup_parents() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    dirs.push("/sys/fs/cgroup".into());
    for d in dirs {
        let _ = std::fs::remove_dir(d.join(crate::CGROUP_PARENT));
    }
}
