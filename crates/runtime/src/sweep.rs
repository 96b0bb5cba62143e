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

/// Mode and size of the tmpfs [`mount_run_dir`] puts at the server's run directory. It holds
/// each instance's directory (its config, bundle and mount points: a few KiB each; the
/// writable layers are tmpfs mounts of their own) and the container state; pages are only
/// used as files are written.
const RUN_TMPFS_OPTIONS: &str = "mode=0700,size=1g";

/// Whether `path` is a mount point (an exact entry in `/proc/self/mountinfo`).
fn is_mount_point(path: &Path) -> bool {
    // mountinfo escapes space, tab, newline and backslash in octal.
    let want = path
        .to_string_lossy()
        .replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012");
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// Puts a tmpfs at `run`, the directory instances and their containers' state live in, unless
/// one is there already (left mounted by a server that was killed; [`sweep`] has cleaned it).
///
/// Every instance start creates a dozen directories and files there and every stop removes
/// them. On a disk filesystem that churn is the server's largest cost per start after the
/// network (ext4 searches its inode tables past recently deleted inodes on each create); in
/// memory it costs next to nothing, and nothing there needs to outlive the machine.
///
/// Errors: `run` cannot be made or mounted (no `CAP_SYS_ADMIN`, say).
pub fn mount_run_dir(run: &Path) -> Result<(), crate::RuntimeError> {
    std::fs::create_dir_all(run).map_err(|e| crate::RuntimeError::io(run, e))?;
    let run = run
        .canonicalize()
        .map_err(|e| crate::RuntimeError::io(run, e))?;
    if is_mount_point(&run) {
        return Ok(());
    }
    nix::mount::mount(
        Some("skiff-run"),
        &run,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(RUN_TMPFS_OPTIONS),
    )
    .map_err(|e| crate::RuntimeError::Sys(format!("mounting a tmpfs at {}: {e}", run.display())))
}

/// Unmounts the tmpfs at `run` once every instance has ended. Still in use (an instance that
/// did not stop), it stays, and the next start sweeps it.
pub fn unmount_run_dir(run: &Path) {
    let Ok(run) = run.canonicalize() else { return };
    if is_mount_point(&run) {
        if let Err(e) = nix::mount::umount(&run) {
            tracing::warn!("{} stays mounted: {e}", run.display());
        }
    }
}
