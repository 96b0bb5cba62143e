//! The container runtime: turns an unpacked image plus revision settings into an isolated
//! instance, using youki's `libcontainer` in a single-threaded helper process (the *shim*).
//!
//! - [`InstanceConfig`] is everything one instance needs; the server writes it to the
//!   instance directory and starts `skiff __shim DIR` ([`shim::shim_main`]).
//! - The shim mounts the overlayfs root, joins the network namespace the server made for the
//!   instance (or creates one with loopback only), starts
//!   the container through libcontainer, then supervises it: it reports `started`/`exited` on
//!   its control pipe, obeys `term`/`kill` commands, and cleans every mount, cgroup and state
//!   directory when the container ends or when the server goes away.
//! - [`supervisor`] is the server's side of that conversation (async, tokio).
//! - [`netns`] opens TCP connections inside an instance's network namespace.
//! - [`sweep`] removes what a previous server run left behind.

pub mod cgroup;
pub mod handoff;
pub mod logs;
pub mod netns;
pub mod shim;
mod spec;
pub mod supervisor;
pub mod sweep;
mod user;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Cloud Run's grace period between SIGTERM and SIGKILL: for an instance scaled down or
/// replaced, for a task stopped, and for the other containers of an instance one of whose
/// containers has ended.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Name of the per-instance config file inside the instance directory.
pub const CONFIG_FILE: &str = "instance.json";
/// cgroup parent under every v1 hierarchy (and the v2 root when that is in use).
pub const CGROUP_PARENT: &str = "skiff";

/// Everything the shim needs to create one instance. Serialized into `DIR/instance.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceConfig {
    pub id: String,
    /// The instance directory: overlay upper/work dirs, rootfs mount point, bundle.
    pub dir: PathBuf,
    /// libcontainer's state root (shared by all instances).
    pub state_root: PathBuf,
    /// Unpacked image layers, bottom first.
    pub layers: Vec<PathBuf>,
    /// argv; the first element is resolved by the container's PATH.
    pub args: Vec<String>,
    /// `K=V` environment.
    pub env: Vec<String>,
    pub cwd: String,
    /// The image's `User` (`name`, `uid`, `uid:gid`, `name:group`), resolved in the rootfs.
    pub user: Option<String>,
    pub hostname: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pids_limit: i64,
    /// The container's network: `true` when the server hands the shim a network namespace
    /// made ahead (on [`NETNS_FD`]); `false` for a fresh namespace with loopback only.
    #[serde(default)]
    pub joins_netns: bool,
    /// The container's `/etc/hosts` (bind-mounted from the instance dir; the image's layers
    /// stay untouched).
    #[serde(default)]
    pub hosts: String,
    /// The container's `/etc/resolv.conf`, likewise.
    #[serde(default)]
    pub resolv_conf: String,
    /// In-memory volumes: a tmpfs each, at `(path in the container, size in bytes, read-only)`.
    /// Their pages are charged to the container's memory cgroup, so they count against its
    /// memory limit.
    #[serde(default)]
    pub memory_volumes: Vec<(String, u64, bool)>,
    /// Host directories bind-mounted read-only: `(host path, path in the container)`.
    #[serde(default)]
    pub host_volumes: Vec<(String, String)>,
    /// Whether the shim gets [`SecretMaterial`] on [`SECRETS_FD`] (set by
    /// [`supervisor::spawn`]).
    #[serde(default)]
    pub secrets_on_fd: bool,
    /// The secret values this instance starts with. Never written to `instance.json`: the
    /// server hands them to the shim in a memfd on [`SECRETS_FD`], and the shim writes them
    /// (and the OCI spec that holds the env) only into a tmpfs of its own mount namespace.
    #[serde(skip)]
    pub secrets: SecretMaterial,
    /// The container's name: empty for the one container of a single-container instance.
    #[serde(default)]
    pub name: String,
    /// The instance's other containers (sidecars), each with its own root filesystem (under
    /// `dir`), cgroup and output pipes ([`SIDECAR_OUTPUT_FD`]); they share the instance's
    /// network namespace and its [`InstanceConfig::shared_volumes`]. A sidecar's own
    /// `sidecars` and `shared_volumes` are ignored; its secrets come with the instance's
    /// ([`SecretMaterial::sidecars`]).
    #[serde(default)]
    pub sidecars: Vec<InstanceConfig>,
    /// Whether the shim starts this container at once; otherwise when the server sends
    /// `start NAME` (a container that starts after others), or, for the one container of a
    /// single-container instance, `start` (an instance created ahead of demand, which
    /// reports `created` first).
    #[serde(default = "yes")]
    pub start_now: bool,
    /// The container's cgroup below [`CGROUP_PARENT`] when not `ID` itself: with sidecars,
    /// every container has `ID/NAME`, so that `ID` holds the instance's total.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// In-memory volumes the instance's containers share: `(volume name, size in bytes)`,
    /// each a tmpfs the shim mounts at `DIR/volumes/NAME` (instances with sidecars).
    #[serde(default)]
    pub shared_volumes: Vec<(String, u64)>,
    /// The shared volumes this container mounts: `(volume name, path in the container,
    /// read-only)`.
    #[serde(default)]
    pub volume_binds: Vec<(String, String, bool)>,
}

fn yes() -> bool {
    true
}

/// The first file descriptor of the sidecars' output pipes: sidecar `i` writes its stdout
/// to `SIDECAR_OUTPUT_FD + 2i` and its stderr to the next.
pub const SIDECAR_OUTPUT_FD: i32 = 7;

/// File descriptor on which the shim receives the network namespace to join.
pub const NETNS_FD: i32 = 5;
/// File descriptor on which the shim receives its [`SecretMaterial`] (a memfd of JSON).
pub const SECRETS_FD: i32 = 6;

/// Secret values resolved for one instance or task attempt: environment variables and the
/// files of secret volumes. `Debug` shows names and paths, never values.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SecretMaterial {
    /// `(name, value)`, added to the container's environment over the image's.
    pub env: Vec<(String, String)>,
    /// Secret volumes, each a read-only directory in the container.
    pub volumes: Vec<SecretFiles>,
    /// The sidecars' own secret values, by container name (instances with sidecars).
    #[serde(default)]
    pub sidecars: Vec<(String, SecretMaterial)>,
}

/// One secret volume: files (relative path, contents) mounted read-only at `mount_path`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SecretFiles {
    pub mount_path: String,
    pub files: Vec<(String, Vec<u8>)>,
}

impl SecretMaterial {
    pub fn is_empty(&self) -> bool {
        self.env.is_empty()
            && self.volumes.is_empty()
            && self.sidecars.iter().all(|(_, m)| m.is_empty())
    }
    /// Bytes of values held (env values and file contents), the sidecars' included.
    pub fn value_bytes(&self) -> usize {
        self.env.iter().map(|(_, v)| v.len()).sum::<usize>()
            + self
                .volumes
                .iter()
                .flat_map(|v| &v.files)
                .map(|(_, d)| d.len())
                .sum::<usize>()
            + self
                .sidecars
                .iter()
                .map(|(_, m)| m.value_bytes())
                .sum::<usize>()
    }
    /// The values of sidecar `name` (none when it has none).
    pub fn of_sidecar(&self, name: &str) -> Option<&SecretMaterial> {
        self.sidecars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m)
    }
}

impl std::fmt::Debug for SecretMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        let files: Vec<String> = self
            .volumes
            .iter()
            .flat_map(|v| {
                v.files
                    .iter()
                    .map(move |(p, _)| format!("{}/{p}", v.mount_path))
            })
            .collect();
        f.debug_struct("SecretMaterial")
            .field("env", &env)
            .field("files", &files)
            .field("sidecars", &self.sidecars)
            .finish()
    }
}

impl InstanceConfig {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }
    /// The instance dir's copy of a file bind-mounted over the container's `/etc/NAME`.
    pub fn etc_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("etc-{name}"))
    }
    pub fn cgroup_path(&self) -> String {
        match &self.cgroup {
            Some(c) => format!("/{CGROUP_PARENT}/{c}"),
            None => format!("/{CGROUP_PARENT}/{}", self.id),
        }
    }
    /// Where the shim mounts the shared in-memory volume `name`.
    pub fn shared_volume_dir(&self, name: &str) -> PathBuf {
        self.dir.join("volumes").join(name)
    }
    pub fn load(dir: &Path) -> Result<Self, RuntimeError> {
        let path = dir.join(CONFIG_FILE);
        let data = std::fs::read(&path).map_err(|e| RuntimeError::io(&path, e))?;
        serde_json::from_slice(&data)
            .map_err(|e| RuntimeError::Config(format!("{}: {e}", path.display())))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid instance config: {0}")]
    Config(String),
    #[error("container failed to start: {0}")]
    Start(String),
    #[error("{0}")]
    Sys(String),
}

impl RuntimeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// A revision's (or job task's) volumes as an instance mounts them: `(memory_volumes,
/// host_volumes)` in [`InstanceConfig`]'s shapes. Secret volumes are resolved at each start
/// and handed over apart from these (see [`SecretMaterial`]).
#[allow(clippy::type_complexity)]
pub fn volume_mounts(
    memory: &[skiff_model::MemoryVolume],
    host: &[skiff_model::HostVolume],
) -> (Vec<(String, u64, bool)>, Vec<(String, String)>) {
    (
        memory
            .iter()
            .map(|v| (v.mount_path.clone(), v.size_bytes, v.read_only))
            .collect(),
        host.iter()
            .map(|v| (v.host_path.clone(), v.mount_path.clone()))
            .collect(),
    )
}

/// The process to run, as Docker and Cloud Run build it: `command` replaces the image's
/// entrypoint (and then its CMD too), `args` replaces the image's CMD.
pub fn process_args(
    entrypoint: &[String],
    cmd: &[String],
    command: &[String],
    args: &[String],
) -> Vec<String> {
    let mut argv = if command.is_empty() {
        entrypoint.to_vec()
    } else {
        command.to_vec()
    };
    if args.is_empty() && command.is_empty() {
        argv.extend(cmd.iter().cloned());
    } else {
        argv.extend(args.iter().cloned());
    }
    argv
}

/// The environment: the image's `K=V` list, then the user's, then the platform's, each later
/// one overriding an earlier one of the same name; `PATH` defaults to the usual one.
pub fn merge_env(
    image: &[String],
    user: &[(String, String)],
    platform: &[(&str, String)],
) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    let later = user
        .iter()
        .cloned()
        .chain(platform.iter().map(|(k, v)| (k.to_string(), v.clone())));
    for (k, v) in later {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv() {
        let cases = [
            (
                (v(&["/ep"]), v(&["cmd"]), v(&[]), v(&[])),
                v(&["/ep", "cmd"]),
            ),
            (
                (v(&["/ep"]), v(&["cmd"]), v(&[]), v(&["a"])),
                v(&["/ep", "a"]),
            ),
            ((v(&["/ep"]), v(&["cmd"]), v(&["/c"]), v(&[])), v(&["/c"])),
            (
                (v(&["/ep"]), v(&["cmd"]), v(&["/c"]), v(&["a"])),
                v(&["/c", "a"]),
            ),
            (
                (v(&[]), v(&["/cmd", "x"]), v(&[]), v(&[])),
                v(&["/cmd", "x"]),
            ),
        ];
        for ((ep, cmd, command, args), want) in cases {
            assert_eq!(process_args(&ep, &cmd, &command, &args), want);
        }
    }

    #[test]
    fn env() {
        let got = merge_env(
            &v(&["PATH=/bin", "A=image", "B=image"]),
            &[("B".into(), "user".into())],
            &[("A", "platform".into())],
        );
        assert_eq!(got, v(&["PATH=/bin", "B=user", "A=platform"]));
        assert!(merge_env(&[], &[], &[])[0].starts_with("PATH=/usr/local/sbin"));
    }
}
