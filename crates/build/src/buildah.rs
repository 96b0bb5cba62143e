//! One build by Debian's `buildah` (`buildah bud`), a daemonless builder that reads
//! Dockerfiles as Docker does (multi-stage builds, `--build-arg`, `.dockerignore`, layer
//! cache with `--layers`).
//!
//! Isolation of a build:
//! - `RUN` steps run under runc (`--isolation oci`) in the network namespace of a Skiff
//!   network sandbox (`--network ns:/proc/PID/fd/N`), so they reach the internet through
//!   Skiff's NAT but no port of the host (the control API included) and no instance; without
//!   instance networking they get no network at all. They see the image's files and the build
//!   context only, never the server's data dir.
//! - `buildah` and everything it starts run in a cgroup of their own
//!   (`skiff-builds/ID` in the memory, cpu and pids hierarchies, the `RUN` containers below it
//!   through `--cgroup-parent`) with CPU, memory and pids limits, and the whole tree is killed
//!   when the time limit passes or the build is cancelled.
//! - Its storage (`--root`, `--runroot`) and temporary files are under `DATA/builds/`.
//!
//! Base images come from registries: Skiff's own (`/v2/` on the control API, with the admin
//! token) and any registry `skiff registries login` stored, through an auth file written for
//! the build; loopback and insecure registries are reached over plain HTTP through a
//! `registries.conf` written beside it.

use crate::BuildError;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Where buildah keeps its state, and the limits every build gets.
#[derive(Debug, Clone)]
pub struct BuildahConfig {
    /// `DATA/builds`: `storage/` (images and the layer cache), `run/` (runroot), `tmp/`.
    pub root: PathBuf,
    /// CPU limit of a build, in thousandths of a CPU.
    pub cpu_millis: u64,
    /// Memory limit of a build (buildah and its `RUN` steps together), in bytes.
    pub memory_bytes: u64,
    /// The cgroup (in every hierarchy) under which this server's builds run, one per server
    /// (`skiff-builds-ID`, see [`cgroup_parent`]), so that servers never touch each other's.
    pub cgroup_parent: String,
}

/// The cgroup under which the builds of the server with `data_dir` run:
/// `skiff-builds-<server id>`, the id the network crate names the server's bridge with.
pub fn cgroup_parent(data_dir: &Path) -> String {
    format!("skiff-builds-{}", skiff_network::server_id(data_dir))
}

impl BuildahConfig {
    fn global_args(&self) -> Vec<String> {
        vec![
            "--root".into(),
            self.root.join("storage").display().to_string(),
            "--runroot".into(),
            self.root.join("run").display().to_string(),
            "--storage-driver".into(),
            "overlay".into(),
        ]
    }

    /// A `buildah` command with Skiff's storage and environment.
    pub fn command(&self, auth_dir: &Path) -> tokio::process::Command {
        // buildah fails at once when its TMPDIR is missing (after a restart, before any
        // build made it).
        let _ = std::fs::create_dir_all(self.root.join("tmp"));
        let mut c = tokio::process::Command::new("buildah");
        c.args(self.global_args())
            .env("TMPDIR", self.root.join("tmp"))
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                auth_dir.join("registries.conf"),
            )
            .env("REGISTRY_AUTH_FILE", auth_dir.join("auth.json"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        c
    }
}

/// One `buildah bud`.
#[derive(Debug, Clone)]
pub struct BudJob {
    /// The build's id (names its cgroup).
    pub id: String,
    /// The unpacked source.
    pub context: PathBuf,
    /// The Dockerfile (absolute path).
    pub dockerfile: PathBuf,
    /// The name buildah stores the result under, in its own storage.
    pub tag: String,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// `/proc/PID/fd/N` of the sandbox's network namespace; `None`: no network.
    pub netns: Option<String>,
    /// The resolver `RUN` steps use (the sandbox's gateway).
    pub dns: Option<std::net::Ipv4Addr>,
    /// Where `auth.json` and `registries.conf` are (see [`write_registry_files`]).
    pub auth_dir: PathBuf,
    /// The time limit.
    pub timeout: Duration,
}

/// How a `buildah bud` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudOutcome {
    Success,
    /// buildah exited with this code (or was killed by a signal: `None`).
    Failed(Option<i32>),
    TimedOut,
    Cancelled,
}

/// Credentials for one registry, as the auth file holds them.
#[derive(Debug, Clone)]
pub struct RegistryAccess {
    /// `HOST[:PORT]`.
    pub host: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Reach it over plain HTTP.
    pub insecure: bool,
}

/// Writes `auth.json` (mode 0600, the containers auth file format) and `registries.conf`
/// (short names resolve on Docker Hub, as `docker build` does; `insecure` registries over
/// HTTP) into `dir`.
pub fn write_registry_files(dir: &Path, registries: &[RegistryAccess]) -> Result<(), BuildError> {
    use base64::Engine;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(BuildError::io(dir.display().to_string()))?;
    let mut auths = serde_json::Map::new();
    let mut conf = String::from(
        "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n",
    );
    for r in registries {
        if let (Some(u), Some(p)) = (&r.username, &r.password) {
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            auths.insert(r.host.clone(), serde_json::json!({ "auth": auth }));
        }
        if r.insecure {
            // The host is checked by `check_host` or came from the server's own address.
            conf.push_str(&format!(
                "\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                r.host
            ));
        }
    }
    let path = dir.join("auth.json");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(BuildError::io(path.display().to_string()))?;
    f.write_all(serde_json::json!({ "auths": auths }).to_string().as_bytes())
        .map_err(BuildError::io(path.display().to_string()))?;
    let path = dir.join("registries.conf");
    std::fs::write(&path, conf).map_err(BuildError::io(path.display().to_string()))
}

/// The registry hosts the `FROM` lines of a Dockerfile name (`HOST[:PORT]/...`, where `HOST`
/// has a `.` or `:` or is `localhost`), so that loopback ones can be reached over HTTP.
pub fn from_hosts(dockerfile: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let Some(image) = words.find(|w| !w.starts_with("--")) else {
            continue;
        };
        if let Some((host, _)) = image.split_once('/') {
            if host.contains('.') || host.contains(':') || host == "localhost" {
                hosts.push(host.to_string());
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Whether `host` (`HOST[:PORT]`) is a loopback name or address.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The build's cgroup: one directory per hierarchy (cgroup v1: memory, cpu, pids; v2: one).
struct Cgroup {
    dirs: Vec<PathBuf>,
    /// The path `--cgroup-parent` takes (relative to each hierarchy's root).
    parent: String,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroup {
    fn create(cfg: &BuildahConfig, id: &str) -> Result<Cgroup, BuildError> {
        let (cpu_millis, memory_bytes) = (cfg.cpu_millis, cfg.memory_bytes);
        let root = Path::new(CGROUP_ROOT);
        let parent_name = cfg.cgroup_parent.as_str();
        let rel = format!("{parent_name}/{id}");
        let mut dirs = Vec::new();
        let period = 100_000u64;
        let quota = (cpu_millis * period / 1000).max(1000);
        let w = |p: PathBuf, v: String| -> Result<(), BuildError> {
            std::fs::write(&p, v).map_err(BuildError::io(format!("setting {}", p.display())))
        };
        if root.join("cgroup.controllers").exists() {
            // cgroup v2: enable the controllers for the parent's children first.
            let parent = root.join(parent_name);
            std::fs::create_dir_all(&parent)
                .map_err(BuildError::io(parent.display().to_string()))?;
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu +pids");
            let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids");
            let d = root.join(&rel);
            std::fs::create_dir_all(&d).map_err(BuildError::io(d.display().to_string()))?;
            w(d.join("memory.max"), memory_bytes.to_string())?;
            w(d.join("cpu.max"), format!("{quota} {period}"))?;
            w(d.join("pids.max"), "4096".into())?;
            dirs.push(d);
        } else {
            for h in ["memory", "cpu", "pids"] {
                let base = if root.join(h).is_dir() {
                    root.join(h)
                } else if h == "cpu" && root.join("cpu,cpuacct").is_dir() {
                    root.join("cpu,cpuacct")
                } else {
                    continue;
                };
                let d = base.join(&rel);
                std::fs::create_dir_all(&d).map_err(BuildError::io(d.display().to_string()))?;
                match h {
                    "memory" => {
                        w(d.join("memory.limit_in_bytes"), memory_bytes.to_string())?;
                        // No swap beyond the limit, where the kernel accounts swap.
                        let _ = std::fs::write(
                            d.join("memory.memsw.limit_in_bytes"),
                            memory_bytes.to_string(),
                        );
                    }
                    "cpu" => {
                        w(d.join("cpu.cfs_period_us"), period.to_string())?;
                        w(d.join("cpu.cfs_quota_us"), quota.to_string())?;
                    }
                    _ => w(d.join("pids.max"), "4096".into())?,
                }
                dirs.push(d);
            }
        }
        // buildah hands `--cgroup-parent` to runc as the RUN container's own cgroup, which
        // runc creates and removes: a directory below the one buildah itself runs in.
        Ok(Cgroup {
            dirs,
            parent: format!("/{rel}/run"),
        })
    }

    fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").as_os_str().as_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Every process in the cgroup or below it.
    fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for d in &self.dirs {
            collect_pids(d, &mut pids);
        }
        pids.sort();
        pids.dedup();
        pids
    }

    /// SIGKILLs everything in the cgroup until it is empty (at most ~10 s).
    async fn kill_all(&self) {
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                // SAFETY: kill has no memory effects; a pid that has gone is ESRCH.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Removes the cgroup directories, deepest first, in every hierarchy (runc makes the
    /// `RUN` containers' cgroups in all of them, so the build's path exists in each).
    fn remove(&self) {
        for d in &self.dirs {
            remove_tree(d);
        }
        if let Some(rel) = self
            .parent
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix("/run"))
        {
            for h in hierarchies() {
                remove_tree(&h.join(rel));
            }
        }
    }
}

fn collect_pids(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_pids(&e.path(), out);
            }
        }
    }
}

/// Every cgroup hierarchy's root: `/sys/fs/cgroup/*` with cgroup v1 (and its `unified`),
/// `/sys/fs/cgroup` itself with v2.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut out = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        out.extend(
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    out
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Kills every build process under `cfg.cgroup_parent` and removes the cgroups: what a
/// previous run left, or what runs when the server stops.
pub async fn sweep_cgroups(cfg: &BuildahConfig) {
    let mut dirs = Vec::new();
    for h in hierarchies() {
        let d = h.join(&cfg.cgroup_parent);
        if let Ok(rd) = std::fs::read_dir(&d) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    let cg = Cgroup {
        dirs,
        parent: String::new(),
    };
    cg.kill_all().await;
    cg.remove();
    for h in hierarchies() {
        let _ = std::fs::remove_dir(h.join(&cfg.cgroup_parent));
    }
}

/// Runs `buildah bud` for `job`, giving every line it prints to `log`. The build stops (every
/// process in its cgroup killed) when `job.timeout` passes or `cancel` turns true.
pub async fn bud(
    cfg: &BuildahConfig,
    job: &BudJob,
    log: &mut (dyn FnMut(String) + Send),
    mut cancel: tokio::sync::watch::Receiver<bool>,
) -> Result<BudOutcome, BuildError> {
    for d in ["storage", "run", "tmp"] {
        let p = cfg.root.join(d);
        std::fs::create_dir_all(&p).map_err(BuildError::io(p.display().to_string()))?;
    }
    let cgroup = Cgroup::create(cfg, &job.id)?;
    let result = run_in(cfg, job, &cgroup, log, &mut cancel).await;
    cgroup.kill_all().await;
    cgroup.remove();
    result
}

async fn run_in(
    cfg: &BuildahConfig,
    job: &BudJob,
    cgroup: &Cgroup,
    log: &mut (dyn FnMut(String) + Send),
    cancel: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<BudOutcome, BuildError> {
    let mut c = cfg.command(&job.auth_dir);
    c.args([
        "bud",
        "--isolation",
        "oci",
        // runc by name, not buildah's default runtime: Debian's containers.conf prefers crun,
        // which refuses to run on a host whose cgroups are in hybrid mode (v1 controllers with
        // an empty v2 tree), and the cgroup handling here follows runc's.
        "--runtime",
        "runc",
        "--layers",
        "--timestamp",
        "0",
        "--cgroup-parent",
        &cgroup.parent,
        "--authfile",
    ]);
    c.arg(job.auth_dir.join("auth.json"));
    match &job.netns {
        Some(ns) => {
            c.arg(format!("--network=ns:{ns}"));
            if let Some(dns) = job.dns {
                c.arg(format!("--dns={dns}"));
            }
        }
        None => {
            c.arg("--network=none");
        }
    }
    for (k, v) in &job.build_args {
        c.arg("--build-arg").arg(format!("{k}={v}"));
    }
    c.arg("-f").arg(&job.dockerfile);
    c.arg("-t").arg(&job.tag);
    c.arg(&job.context);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let procs = cgroup.procs_files();
    // SAFETY: between fork and exec only async-signal-safe calls: open, write, close on
    // paths prepared before the fork, and setpgid.
    unsafe {
        c.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
                if n < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| BuildError::Io {
        what: "cannot start buildah (install Debian's buildah package)".into(),
        source: e,
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + job.timeout;
    let mut outcome = None;
    let mut lines_open = true;
    loop {
        tokio::select! {
            l = rx.recv(), if lines_open => match l {
                Some(l) => log(l),
                None => lines_open = false,
            },
            status = child.wait(), if outcome.is_none() => {
                let status = status.map_err(BuildError::io("waiting for buildah"))?;
                outcome = Some(if status.success() {
                    BudOutcome::Success
                } else {
                    BudOutcome::Failed(status.code())
                });
            },
            _ = tokio::time::sleep_until(deadline), if outcome.is_none() => {
                cgroup.kill_all().await;
                let _ = child.wait().await;
                outcome = Some(BudOutcome::TimedOut);
            },
            changed = cancel.changed(), if outcome.is_none() => {
                if changed.is_err() || *cancel.borrow() {
                    cgroup.kill_all().await;
                    let _ = child.wait().await;
                    outcome = Some(BudOutcome::Cancelled);
                }
            },
        }
        if let (Some(o), false) = (&outcome, lines_open) {
            return Ok(o.clone());
        }
    }
}

/// Exports buildah's image `tag` as an OCI layout at `dir` (tag `latest`).
pub async fn push_oci(
    cfg: &BuildahConfig,
    auth_dir: &Path,
    tag: &str,
    dir: &Path,
) -> Result<(), BuildError> {
    let out = cfg
        .command(auth_dir)
        .args(["push", "--quiet", tag])
        .arg(format!("oci:{}:latest", dir.display()))
        .output()
        .await
        .map_err(BuildError::io("cannot start buildah push"))?;
    if !out.status.success() {
        return Err(BuildError::Io {
            what: format!(
                "exporting the built image: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            source: std::io::Error::other("buildah push failed"),
        });
    }
    Ok(())
}

/// Removes buildah's working containers (what an interrupted build leaves; the layer cache,
/// which is images, stays).
pub async fn remove_containers(cfg: &BuildahConfig, auth_dir: &Path) {
    if !cfg.root.join("storage").is_dir() {
        return;
    }
    let _ = cfg.command(auth_dir).args(["rm", "--all"]).output().await;
}

/// The repository under which buildah's own storage keeps the layer cache of one owner
/// (`KEY` is `NS/service-NAME`, `NS/job-NAME` or `NS/image-HASH`): one tag `stage-N` per
/// stage of the owner's newest build, on that stage's last image. Tagged images and the
/// images they descend from survive [`prune_dangling`]; everything else is cache no build
/// will use again.
pub fn cache_repository(key: &str) -> String {
    format!("localhost/skiff-cache/{key}")
}

/// The ids of the last image of each stage of a `buildah bud --layers` run, from its log
/// lines: a stage ends where the next one's `[K/N] STEP 1/...` begins, and the build with
/// its last `--> ID` (or `--> Using cache ID`) line. Ids may be abbreviated, as buildah prints
/// them.
pub fn stage_images(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut last: Option<String> = None;
    for l in lines {
        let l = l.trim();
        if l.starts_with('[') && l.contains("] STEP 1/") {
            if let Some(id) = last.take() {
                out.push(id);
            }
        } else if let Some(rest) = l.strip_prefix("--> ") {
            let rest = rest.strip_prefix("Using cache ").unwrap_or(rest);
            if let Some(id) = rest.split_whitespace().next() {
                if id.len() >= 6 && id.bytes().all(|c| c.is_ascii_hexdigit()) {
                    last = Some(id.to_string());
                }
            }
        }
    }
    out.extend(last);
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|id| seen.insert(id.clone()));
    out
}

/// The cache tags in buildah's storage: `(repository:tag)` names under `localhost/skiff-cache/`.
pub async fn cache_tags(cfg: &BuildahConfig, auth_dir: &Path) -> Vec<String> {
    if !cfg.root.join("storage").is_dir() {
        return Vec::new();
    }
    let Ok(out) = cfg
        .command(auth_dir)
        .args(["images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"])
        .output()
        .await
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with("localhost/skiff-cache/"))
        .map(String::from)
        .collect()
}

/// Moves the cache tags of `key` onto `ids` (the stages of its newest build, see
/// [`stage_images`]) and removes the tags of stages that build no longer has.
pub async fn keep_cache(
    cfg: &BuildahConfig,
    auth_dir: &Path,
    key: &str,
    ids: &[String],
) -> Result<(), BuildError> {
    let repo = cache_repository(key);
    let mut kept = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let name = format!("{repo}:stage-{i}");
        let out = cfg
            .command(auth_dir)
            .args(["tag", id, &name])
            .output()
            .await
            .map_err(BuildError::io("cannot start buildah tag"))?;
        if !out.status.success() {
            return Err(BuildError::Io {
                what: format!(
                    "keeping the layer cache: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("buildah tag failed"),
            });
        }
        kept.push(name);
    }
    let prefix = format!("{repo}:");
    for t in cache_tags(cfg, auth_dir).await {
        if t.starts_with(&prefix) && !kept.contains(&t) {
            let _ = cfg.command(auth_dir).args(["rmi", &t]).output().await;
        }
    }
    Ok(())
}

/// How many images (tagged or not, cached steps included) buildah's storage holds.
pub async fn image_count(cfg: &BuildahConfig, auth_dir: &Path) -> usize {
    if !cfg.root.join("storage").is_dir() {
        return 0;
    }
    match cfg
        .command(auth_dir)
        .args(["images", "--all", "--quiet", "--no-trunc"])
        .output()
        .await
    {
        Ok(out) => {
            let ids: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            ids.len()
        }
        Err(_) => 0,
    }
}

/// Removes a cache tag (the image itself goes at the next [`prune_dangling`]).
pub async fn drop_cache_tag(cfg: &BuildahConfig, auth_dir: &Path, name: &str) {
    let _ = cfg.command(auth_dir).args(["rmi", name]).output().await;
}

/// Removes the images nothing tagged descends from, repeating `buildah rmi --prune` (which
/// removes only untagged images without children) until a pass removes none. Returns how
/// many images went.
pub async fn prune_dangling(cfg: &BuildahConfig, auth_dir: &Path) -> usize {
    if !cfg.root.join("storage").is_dir() {
        return 0;
    }
    let mut n = 0;
    // A chain of cached steps loses one image per pass; Dockerfiles have far fewer steps.
    for _ in 0..1000 {
        let Ok(out) = cfg
            .command(auth_dir)
            .args(["rmi", "--prune"])
            .output()
            .await
        else {
            break;
        };
        let removed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        if removed == 0 || !out.status.success() {
            break;
        }
        n += removed;
    }
    n
}

/// Bytes of the files under buildah's storage (`DATA/builds/storage`), as `du` counts
/// allocated blocks; 0 when there is none.
pub fn storage_bytes(cfg: &BuildahConfig) -> u64 {
    fn walk(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(rd) = std::fs::read_dir(dir) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            n += m.blocks() * 512;
            if m.is_dir() {
                n += walk(&e.path());
            }
        }
        n
    }
    walk(&cfg.root.join("storage"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_images_from_a_log() {
        let log: Vec<String> = [
            "[1/2] STEP 1/2: FROM busybox AS build",
            "[1/2] STEP 2/2: RUN echo hi > /x",
            "--> Using cache 0123456789abcdef0123",
            "--> 0123456789ab",
            "[2/2] STEP 1/2: FROM busybox",
            "[2/2] STEP 2/2: COPY --from=build /x /x",
            "[2/2] COMMIT localhost/skiff-build/1",
            "--> fedcba987654",
            "Successfully tagged localhost/skiff-build/1:latest",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(stage_images(&log), ["0123456789ab", "fedcba987654"]);
        let one: Vec<String> = ["STEP 1/1: FROM busybox", "COMMIT t", "--> abcdef123456"]
            .map(String::from)
            .to_vec();
        assert_eq!(stage_images(&one), ["abcdef123456"]);
        assert!(stage_images(&[]).is_empty());
    }

    #[test]
    fn hosts_in_from_lines() {
        let df = "FROM 127.0.0.1:5000/base:1 AS a\nfrom --platform=linux/amd64 localhost/x\n\
                  FROM python:3.12\nFROM gcr.io/distroless/static\nRUN FROM 1.2.3.4/x\nFROM a\n";
        assert_eq!(from_hosts(df), ["127.0.0.1:5000", "gcr.io", "localhost"]);
    }

    #[test]
    fn loopback() {
        for (h, want) in [
            ("127.0.0.1:8081", true),
            ("localhost:5000", true),
            ("localhost", true),
            ("[::1]:5000", true),
            ("gcr.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(is_loopback_host(h), want, "{h}");
        }
    }

    #[test]
    fn registry_files() {
        let d = tempfile::tempdir().unwrap();
        write_registry_files(
            d.path(),
            &[
                RegistryAccess {
                    host: "127.0.0.1:8081".into(),
                    username: Some("skiff".into()),
                    password: Some("tok".into()),
                    insecure: true,
                },
                RegistryAccess {
                    host: "gcr.io".into(),
                    username: None,
                    password: None,
                    insecure: false,
                },
            ],
        )
        .unwrap();
        let auth: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join("auth.json")).unwrap()).unwrap();
        assert_eq!(auth["auths"]["127.0.0.1:8081"]["auth"], "c2tpZmY6dG9r");
        assert!(auth["auths"].get("gcr.io").is_none());
        let conf = std::fs::read_to_string(d.path().join("registries.conf")).unwrap();
        assert!(
            conf.contains("location = \"127.0.0.1:8081\"\ninsecure = true"),
            "{conf}"
        );
        assert!(!conf.contains("gcr.io"), "{conf}");
    }
}
