//! Test images from Debian, for tests that need real software nobody here wrote (an
//! interpreter, a client library): a root file system made by `mmdebstrap` (variant
//! `essential` plus the packages asked for, from `deb.debian.org`, the host's Debian release),
//! with packages from PyPI installed by the host's `python3 -m pip` into the image's
//! `/usr/local/lib/python3.X/dist-packages` for the image's own Python version, and the test's
//! files as a second layer.
//!
//! Building the root file system takes a minute or more, so its compressed layer is cached in
//! `/tmp/skiff-testkit-cache/debian-<key>/`, the key being a hash of everything that goes into
//! it (release, mirror, packages, PyPI packages, the build's own flags). Builds that race for
//! the same key each build and the first to finish keeps its result.

use crate::image::{write_layout, ImageSpec, Layer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where built root file systems are kept between test runs.
pub const CACHE_DIR: &str = "/tmp/skiff-testkit-cache";

/// The Debian mirror the root file systems come from.
const MIRROR: &str = "http://deb.debian.org/debian";

/// How long one `mmdebstrap` run (with its PyPI downloads) may take before the build fails.
const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The host's Debian release (`VERSION_CODENAME` in /etc/os-release), so that binary wheels
/// the host's pip picks for its own C library also fit the image's.
fn host_release() -> String {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".into())
}

/// The `mmdebstrap` arguments for a root file system tarball at `out` (all but `out` make up
/// the cache key).
fn mmdebstrap_args(release: &str, packages: &[&str], pip_packages: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--variant=essential".into(),
        "--mode=root".into(),
        "--skip=output/dev".into(),
        "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright".into(),
        "--dpkgopt=path-exclude=/usr/share/man/*".into(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
    ];
    if !packages.is_empty() {
        args.push(format!("--include={}", packages.join(",")));
    }
    if !pip_packages.is_empty() {
        // The host's pip installs for the image's Python version, wheels only (no build
        // tools in the image or on the host are needed), into Debian's place for local
        // packages, which comes before Debian's own on sys.path.
        let quoted: Vec<String> = pip_packages
            .iter()
            .map(|p| format!("'{}'", p.replace('\'', "'\\''")))
            .collect();
        args.push(format!(
            "--customize-hook=set -e; \
             v=$(chroot \"$1\" python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'); \
             python3 -m pip install --no-cache-dir --disable-pip-version-check \
             --no-warn-script-location --only-binary=:all: --python-version \"$v\" \
             --target \"$1/usr/local/lib/python$v/dist-packages\" {}",
            quoted.join(" ")
        ));
    }
    args.push(release.into());
    args
}

/// The cached base layer for these Debian and PyPI packages, building it if needed.
///
/// Panics, saying what failed and with the end of the build's log, if `mmdebstrap` is missing
/// (`apt-get install mmdebstrap`; .ci/run does), Debian's mirror or PyPI cannot be reached, a
/// package does not exist, or the build takes longer than 20 minutes. PyPI packages need the
/// host's `python3 -m pip` (Debian's `python3-pip`).
pub fn debian_rootfs(packages: &[&str], pip_packages: &[&str]) -> Layer {
    let release = host_release();
    let args = mmdebstrap_args(&release, packages, pip_packages);
    let key = hex::encode(&Sha256::digest(format!("{MIRROR}\n{}", args.join("\n")))[..8]);
    let cache = Path::new(CACHE_DIR);
    let dir = cache.join(format!("debian-{key}"));
    if let Some(layer) = read_cached(&dir) {
        return layer;
    }
    if !pip_packages.is_empty() {
        let pip = Command::new("python3")
            .args(["-m", "pip", "--version"])
            .stdin(Stdio::null())
            .output();
        assert!(
            pip.as_ref().is_ok_and(|o| o.status.success()),
            "PyPI packages {pip_packages:?} need the host's `python3 -m pip` \
             (apt-get install python3-pip; .ci/run does): {pip:?}"
        );
    }
    std::fs::create_dir_all(cache).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix(".build-")
        .tempdir_in(cache)
        .unwrap();
    let tarball = tmp.path().join("rootfs.tar");
    let log_path = tmp.path().join("build.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("mmdebstrap")
        .args(&args)
        .arg(&tarball)
        .arg(MIRROR)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run mmdebstrap: {e} (apt-get install mmdebstrap; .ci/run does)")
        });
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            stop(&mut child);
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if status.is_none_or(|s| !s.success()) {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "building a Debian {release} image with {packages:?} and PyPI packages \
             {pip_packages:?} failed ({}); {MIRROR} and PyPI must be reachable. \
             The end of the log of mmdebstrap {args:?}:\n...\n{}",
            status.map_or("timed out".to_string(), |s| s.to_string()),
            tail.join("\n")
        );
    }
    let layer = Layer::from_tar_file(&tarball, &tmp.path().join("layer.tar.gz"))
        .unwrap_or_else(|e| panic!("cannot compress {}: {e}", tarball.display()));
    let _ = std::fs::remove_file(&tarball);
    let meta = serde_json::json!({
        "digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
    });
    std::fs::write(
        tmp.path().join("layer.json"),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
    let built = tmp.keep();
    if std::fs::rename(&built, &dir).is_err() {
        // Another build of the same key finished first: use its result.
        let _ = std::fs::remove_dir_all(&built);
    }
    read_cached(&dir).unwrap_or_else(|| panic!("{} holds no complete layer", dir.display()))
}

/// Stops `mmdebstrap` with SIGTERM, on which it unmounts and removes its chroot, then with
/// SIGKILL if it is still running a minute later.
fn stop(child: &mut std::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The layer in a cache entry, if the entry is complete.
fn read_cached(dir: &Path) -> Option<Layer> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("layer.json")).ok()?).ok()?;
    let blob = dir.join("layer.tar.gz");
    let size = meta["size"].as_u64()?;
    (std::fs::metadata(&blob).ok()?.len() == size).then(|| Layer {
        blob,
        digest: meta["digest"].as_str().unwrap_or_default().to_string(),
        diff_id: meta["diff_id"].as_str().unwrap_or_default().to_string(),
        size,
    })
}

/// Builds an OCI image layout at `dir` (tag `latest`, ref name `name:latest`): the cached
/// Debian root file system of [`debian_rootfs`] with `packages` and `pip_packages`, then a
/// layer with `spec.files` (paths relative to `/`, parent directories made 0755), and
/// `spec`'s entrypoint, command, environment and user. Panics as [`debian_rootfs`] does.
pub fn debian_image(
    dir: &Path,
    name: &str,
    packages: &[&str],
    pip_packages: &[&str],
    spec: &ImageSpec,
) -> PathBuf {
    let base = debian_rootfs(packages, pip_packages);
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for (path, _, _) in &spec.files {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        builder.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    for (path, contents, mode) in &spec.files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(*mode);
        h.set_size(contents.len() as u64);
        h.set_mtime(0);
        builder
            .append_data(&mut h, path, contents.as_bytes())
            .unwrap();
    }
    let files = builder.into_inner().unwrap();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let top = Layer::from_tar(&files, &blobs);
    let config = serde_json::json!({
        "Entrypoint": spec.entrypoint, "Cmd": spec.cmd, "Env": spec.env,
        "WorkingDir": "/", "User": spec.user.clone().unwrap_or_default(),
    });
    write_layout(dir, name, &[base, top], config)
}
