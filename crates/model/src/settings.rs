//! `RevisionSettings`: what the serving plane needs to run a revision, derived from (and
//! validated against) a Knative revision template the way Cloud Run reads it.

use crate::{
    parse_cpu, parse_size, InvalidInput, RevisionTemplate, ANN_CPU_THROTTLING, ANN_MAX_SCALE,
    ANN_MIN_SCALE,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_CONCURRENCY: u64 = 80;
pub const MAX_CONCURRENCY: u64 = 1000;
pub const DEFAULT_MAX_INSTANCES: u64 = 100;
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
pub const MAX_TIMEOUT_SECS: u64 = 3600;
pub const DEFAULT_CPU_MILLIS: u64 = 1000;
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Cloud Run's smallest memory limit.
pub const MIN_MEMORY: u64 = 128 << 20;
/// Processes one instance may hold (a fork bomb stops here).
pub const PIDS_LIMIT: i64 = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSettings {
    /// The image reference as the user gave it.
    pub image: String,
    pub port: u16,
    pub concurrency: u64,
    pub min_instances: u64,
    pub max_instances: u64,
    pub timeout: Duration,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    /// The template's `autoscaling.knative.dev/*` annotations, for the autoscaler.
    pub autoscaling: std::collections::BTreeMap<String, String>,
    /// CPU only during requests, billed request-based (Cloud Run's default); `false` with
    /// `run.googleapis.com/cpu-throttling: "false"`: CPU always, billed instance-based.
    #[serde(default = "yes")]
    pub cpu_throttling: bool,
    /// `spec.serviceAccountName`: the identity the instances run as (`None`: the project's
    /// default service account).
    #[serde(default)]
    pub service_account: Option<String>,
    /// Whether the instances have a network beyond loopback ([`crate::ANN_EGRESS`]).
    #[serde(default = "yes")]
    pub egress: bool,
    /// HTTP/2 to the container (prior knowledge, "h2c"): its port is named `h2c`, as
    /// `gcloud run deploy --use-http2` names it. Otherwise the container gets HTTP/1.1.
    #[serde(default)]
    pub use_http2: bool,
    /// In-memory volumes mounted in the container.
    #[serde(default)]
    pub memory_volumes: Vec<MemoryVolume>,
    /// Environment variables whose values are secret versions, resolved at each instance
    /// start (`valueFrom.secretKeyRef`).
    #[serde(default)]
    pub secret_env: Vec<SecretEnv>,
    /// Secret volumes: files holding secret versions, resolved at each instance start,
    /// mounted read-only.
    #[serde(default)]
    pub secret_volumes: Vec<SecretVolume>,
    /// Host directories mounted read-only (`nfs` volumes with `server: localhost`).
    #[serde(default)]
    pub host_volumes: Vec<HostVolume>,
    /// The container's startup probe; `None`: Cloud Run's default, a TCP connect to `port`
    /// within 240 s.
    #[serde(default)]
    pub startup_probe: Option<ProbeSettings>,
    /// The container's liveness probe, run once it has started; `None`: none.
    #[serde(default)]
    pub liveness_probe: Option<ProbeSettings>,
    /// The ingress container's `name`, when the template gives one.
    #[serde(default)]
    pub container_name: Option<String>,
    /// The revision's other containers (sidecars), in the template's order. They share the
    /// instance's network namespace and in-memory volumes; each has its own root filesystem,
    /// limits and logs.
    #[serde(default)]
    pub sidecars: Vec<SidecarSettings>,
    /// The start order ([`crate::ANN_CONTAINER_DEPENDENCIES`]): a container's name to the
    /// names of the containers it starts after. Checked: every name is a container of the
    /// revision, and there is no cycle.
    #[serde(default)]
    pub container_dependencies: std::collections::BTreeMap<String, Vec<String>>,
}

/// A sidecar: a container of an instance other than the ingress container, with no port of
/// its own to serve requests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SidecarSettings {
    /// The container's `name` (required when a revision has more than one container).
    pub name: String,
    /// The image reference as the user gave it.
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Its own CPU limit (millicores; Cloud Run's default 1 CPU).
    pub cpu_millis: u64,
    /// Its own memory limit (bytes; Cloud Run's default 512 MiB).
    pub memory_bytes: u64,
    /// The revision's in-memory volumes this container mounts.
    pub memory_volumes: Vec<MemoryVolume>,
    /// When it has started: containers that depend on it wait for this probe to pass.
    pub startup_probe: Option<ProbeSettings>,
    /// Checked once the instance is ready; failing it restarts the instance, as the ingress
    /// container's does. Its port is the sidecar's own (given in the probe).
    #[serde(default)]
    pub liveness_probe: Option<ProbeSettings>,
    /// Its environment variables whose values are secret versions, resolved at each
    /// instance start (`valueFrom.secretKeyRef`).
    #[serde(default)]
    pub secret_env: Vec<SecretEnv>,
    /// The secret volumes it mounts, resolved at each instance start, read-only.
    #[serde(default)]
    pub secret_volumes: Vec<SecretVolume>,
    /// The host directories it mounts read-only.
    #[serde(default)]
    pub host_volumes: Vec<HostVolume>,
}

impl SidecarSettings {
    /// Whether the container takes secret values at instance start.
    pub fn has_secrets(&self) -> bool {
        !self.secret_env.is_empty() || !self.secret_volumes.is_empty()
    }
}

impl RevisionSettings {
    /// The CPU of the whole instance (millicores): every container's limit added up, as Cloud
    /// Run bills an instance with sidecars.
    pub fn instance_cpu_millis(&self) -> u64 {
        self.cpu_millis + self.sidecars.iter().map(|s| s.cpu_millis).sum::<u64>()
    }
    /// The memory of the whole instance (bytes), likewise.
    pub fn instance_memory_bytes(&self) -> u64 {
        self.memory_bytes + self.sidecars.iter().map(|s| s.memory_bytes).sum::<u64>()
    }

    /// The longest a new instance may take to start before its startup probe gives up: 240 s
    /// for the default probe; `initialDelaySeconds + failureThreshold × periodSeconds` plus a
    /// last attempt's timeout for a probe the revision gives.
    pub fn startup_limit(&self) -> Duration {
        match &self.startup_probe {
            None => Duration::from_secs(240),
            Some(p) => p.initial_delay + p.period * p.failure_threshold + p.timeout,
        }
    }
}

/// An in-memory `emptyDir` mounted in the container: a tmpfs of at most `size_bytes` (its
/// `sizeLimit`, else the memory limit) whose pages count against the instance's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryVolume {
    /// The volume's name.
    pub name: String,
    /// Absolute path in the container.
    pub mount_path: String,
    pub size_bytes: u64,
    pub read_only: bool,
}

/// An environment variable whose value is a version of a secret of the revision's project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretEnv {
    /// The variable's name.
    pub name: String,
    /// The secret's id (`projects/P/secrets/` left out).
    pub secret: String,
    /// `latest` (the highest enabled version when the instance starts) or a number.
    pub version: String,
}

/// A secret volume mounted in the container: each file a version of `secret`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVolume {
    /// The volume's name.
    pub name: String,
    /// Absolute directory in the container.
    pub mount_path: String,
    pub secret: String,
    /// `(version, file path relative to the mount path)`.
    pub files: Vec<(String, String)>,
}

impl RevisionSettings {
    /// Every secret reference, `(secret, version)`, in the order given: the ingress
    /// container's (env, then volumes), then each sidecar's likewise.
    pub fn secret_refs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let all = std::iter::once((&self.secret_env, &self.secret_volumes)).chain(
            self.sidecars
                .iter()
                .map(|c| (&c.secret_env, &c.secret_volumes)),
        );
        for (env, volumes) in all {
            out.extend(env.iter().map(|e| (e.secret.clone(), e.version.clone())));
            for v in volumes {
                for (version, _) in &v.files {
                    out.push((v.secret.clone(), version.clone()));
                }
            }
        }
        out
    }
    /// Whether any container of an instance takes secret values at its start.
    pub fn has_secrets(&self) -> bool {
        !self.secret_env.is_empty()
            || !self.secret_volumes.is_empty()
            || self.sidecars.iter().any(SidecarSettings::has_secrets)
    }
    /// Every host directory mounted by any container of an instance.
    pub fn all_host_volumes(&self) -> Vec<HostVolume> {
        self.host_volumes
            .iter()
            .chain(self.sidecars.iter().flat_map(|c| &c.host_volumes))
            .cloned()
            .collect()
    }
}

/// Reads `containers[index].env[i]`'s `valueFrom` (a `secretKeyRef`) as Cloud Run does: the
/// variable `name` takes version `key` of secret `name`. Errors name the field.
fn secret_env_var(
    index: usize,
    i: usize,
    e: &crate::EnvVar,
    from: &crate::EnvVarSource,
) -> Result<SecretEnv, InvalidInput> {
    let at = format!("containers[{index}].env[{i}]");
    let Some(r) = &from.secret_key_ref else {
        return Err(InvalidInput::new(format!(
            "{at}.valueFrom: give secretKeyRef: {{name: SECRET, key: VERSION}}"
        )));
    };
    if !e.value.is_empty() {
        return Err(InvalidInput::new(format!(
            "{at}: give value or valueFrom, not both"
        )));
    }
    secret_ref(&format!("{at}.valueFrom.secretKeyRef"), &r.name, &r.key)?;
    Ok(SecretEnv {
        name: e.name.clone(),
        secret: r.name.clone(),
        version: r.key.clone(),
    })
}

/// Checks a secret reference's name and version as Cloud Run reads them: a secret id (letters,
/// digits, `-`, `_`; a `projects/P/secrets/S` name is for other projects, which Skiff does not
/// reach) and `latest` or a version number.
fn secret_ref(field: &str, name: &str, version: &str) -> Result<(), InvalidInput> {
    if name.starts_with("projects/") {
        return Err(InvalidInput::new(format!(
            "{field}: {name:?}: secrets of other projects are not reachable: create the secret in this project and name it alone"
        )));
    }
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(InvalidInput::new(format!(
            "{field}: {name:?} is not a secret name: use letters, digits, - and _"
        )));
    }
    let version_ok = version == "latest"
        || (!version.starts_with('0')
            && !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit()));
    if !version_ok {
        return Err(InvalidInput::new(format!(
            "{field}: version {version:?} of secret {name}: use latest or a version number like 1"
        )));
    }
    Ok(())
}

/// A directory of the host mounted read-only in the container, Skiff's stand-in for Cloud
/// Run's NFS volumes (`nfs: {server: localhost, path: HOST_DIR, readOnly: true}`). Which host
/// directories may be mounted is the server's to allow (`--allow-host-dir`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVolume {
    /// The volume's name.
    pub name: String,
    /// Absolute directory in the container.
    pub mount_path: String,
    /// Absolute directory on the host.
    pub host_path: String,
}

/// A container's volumes, by kind.
struct Volumes {
    memory: Vec<MemoryVolume>,
    secrets: Vec<SecretVolume>,
    hosts: Vec<HostVolume>,
}

/// Where a volume's contents come from.
enum VolumeSource {
    /// A host directory (absolute path).
    Host(String),
    /// An in-memory `emptyDir` of this many bytes.
    Memory(u64),
    /// A secret, `(secret, [(version, path)])`.
    Secret(String, Vec<(String, String)>),
}

/// Reads `spec.volumes` and the container's `volumeMounts` as Cloud Run does for in-memory
/// and secret volumes. Errors name the field (`volumes[0].emptyDir.sizeLimit: ...`).
fn volumes(
    t: &RevisionTemplate,
    c: &crate::Container,
    index: usize,
    memory_bytes: u64,
) -> Result<Volumes, InvalidInput> {
    let mut sources = std::collections::BTreeMap::new();
    for (i, v) in t.spec.volumes.iter().enumerate() {
        crate::validate_name("volume", &v.name, 63)
            .map_err(|e| InvalidInput::new(format!("volumes[{i}].name: {e}")))?;
        let source = match (&v.empty_dir, &v.secret, &v.nfs) {
            (Some(ed), None, None) => VolumeSource::Memory(empty_dir_size(i, ed, memory_bytes)?),
            (None, Some(sv), None) => {
                VolumeSource::Secret(sv.secret_name.clone(), secret_items(i, sv)?)
            }
            (None, None, Some(n)) => VolumeSource::Host(host_dir(i, n)?),
            _ => {
                return Err(InvalidInput::new(format!(
                    "volumes[{i}]: give exactly one source: Skiff has in-memory emptyDir volumes (emptyDir: {{medium: Memory}}), secret volumes (secret: {{secretName: NAME}}) and host directories (nfs: {{server: localhost, path: DIR, readOnly: true}})"
                )))
            }
        };
        if sources.insert(v.name.clone(), source).is_some() {
            return Err(InvalidInput::new(format!(
                "volumes[{i}].name: {:?} is used twice: give each volume its own name",
                v.name
            )));
        }
    }
    let mut memory: Vec<MemoryVolume> = Vec::new();
    let mut secrets: Vec<SecretVolume> = Vec::new();
    let mut hosts: Vec<HostVolume> = Vec::new();
    let mut mounted: Vec<(String, String)> = Vec::new();
    for (i, m) in c.volume_mounts.iter().enumerate() {
        let at = format!("containers[{index}].volumeMounts[{i}]");
        let Some(source) = sources.get(&m.name) else {
            return Err(InvalidInput::new(format!(
                "{at}.name: no volume {:?} in spec.volumes: declare it there",
                m.name
            )));
        };
        let p = &m.mount_path;
        if !clean_path(p) {
            return Err(InvalidInput::new(format!(
                "{at}.mountPath: {p:?} is not an absolute path below /: give one like /cache"
            )));
        }
        for reserved in ["/proc", "/sys", "/dev"] {
            if p == reserved || p.starts_with(&format!("{reserved}/")) {
                return Err(InvalidInput::new(format!(
                    "{at}.mountPath: {p:?} is under {reserved}, which the platform provides: choose another path"
                )));
            }
        }
        if let Some((name, path)) = mounted.iter().find(|(n, q)| q == p || *n == m.name) {
            return Err(InvalidInput::new(format!(
                "{at}: volume {:?} at {p:?} clashes with volume {name:?} at {path:?}: mount each volume once, each at its own path",
                m.name
            )));
        }
        mounted.push((m.name.clone(), p.clone()));
        match source {
            VolumeSource::Memory(size) => memory.push(MemoryVolume {
                name: m.name.clone(),
                mount_path: p.clone(),
                size_bytes: *size,
                read_only: m.read_only.unwrap_or(false),
            }),
            VolumeSource::Host(host_path) => {
                if m.read_only == Some(false) {
                    return Err(InvalidInput::new(format!(
                        "{at}.readOnly: host directories are mounted read-only: leave readOnly out or set it to true"
                    )));
                }
                hosts.push(HostVolume {
                    name: m.name.clone(),
                    mount_path: p.clone(),
                    host_path: host_path.clone(),
                });
            }
            VolumeSource::Secret(secret, files) => {
                if m.read_only == Some(false) {
                    return Err(InvalidInput::new(format!(
                        "{at}.readOnly: secret volumes are read-only: leave readOnly out or set it to true"
                    )));
                }
                secrets.push(SecretVolume {
                    name: m.name.clone(),
                    mount_path: p.clone(),
                    secret: secret.clone(),
                    files: files.clone(),
                });
            }
        }
    }
    Ok(Volumes {
        memory,
        secrets,
        hosts,
    })
}

/// Reads an `nfs` volume as a host directory: `server` is this machine (`localhost`,
/// `127.0.0.1`), `path` a clean absolute directory, `readOnly: true`.
fn host_dir(i: usize, n: &crate::NfsVolumeSource) -> Result<String, InvalidInput> {
    let at = format!("volumes[{i}].nfs");
    if !matches!(n.server.as_str(), "localhost" | "127.0.0.1") {
        return Err(InvalidInput::new(format!(
            "{at}.server: {:?}: Skiff mounts directories of its own host: use server: localhost and the host directory as path",
            n.server
        )));
    }
    if !clean_path(&n.path) {
        return Err(InvalidInput::new(format!(
            "{at}.path: {:?} is not an absolute directory: give one like /srv/data",
            n.path
        )));
    }
    if n.read_only != Some(true) {
        return Err(InvalidInput::new(format!(
            "{at}.readOnly: Skiff mounts host directories read-only: set readOnly: true"
        )));
    }
    Ok(n.path.clone())
}

/// An absolute path below `/` without empty, `.` or `..` segments.
fn clean_path(p: &str) -> bool {
    p.starts_with('/')
        && p.len() > 1
        && !p.ends_with('/')
        && p.split('/')
            .skip(1)
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

fn empty_dir_size(
    i: usize,
    ed: &crate::EmptyDirVolumeSource,
    memory_bytes: u64,
) -> Result<u64, InvalidInput> {
    if ed.medium.as_deref() != Some("Memory") {
        return Err(InvalidInput::new(format!(
            "volumes[{i}].emptyDir.medium: {:?}: Cloud Run's emptyDir volumes are in memory: use medium: Memory",
            ed.medium.clone().unwrap_or_default()
        )));
    }
    match &ed.size_limit {
        None => Ok(memory_bytes),
        Some(s) => {
            let n = crate::parse_size(s)
                .map_err(|e| InvalidInput::new(format!("volumes[{i}].emptyDir.sizeLimit: {e}")))?;
            if n == 0 || n > memory_bytes {
                return Err(InvalidInput::new(format!(
                    "volumes[{i}].emptyDir.sizeLimit: {s} is more than the memory limit ({} MiB) it counts against: lower it or raise the memory",
                    memory_bytes >> 20
                )));
            }
            Ok(n)
        }
    }
}

/// A secret volume's files, `(version, relative path)`: its items, or without items one file
/// named after the secret holding its latest version.
fn secret_items(
    i: usize,
    sv: &crate::SecretVolumeSource,
) -> Result<Vec<(String, String)>, InvalidInput> {
    let at = format!("volumes[{i}].secret");
    if sv.items.is_empty() {
        secret_ref(&format!("{at}.secretName"), &sv.secret_name, "latest")?;
        return Ok(vec![("latest".into(), sv.secret_name.clone())]);
    }
    let mut files: Vec<(String, String)> = Vec::new();
    for (j, item) in sv.items.iter().enumerate() {
        secret_ref(&format!("{at}.items[{j}]"), &sv.secret_name, &item.key)?;
        if !clean_path(&format!("/{}", item.path)) {
            return Err(InvalidInput::new(format!(
                "{at}.items[{j}].path: {:?} is not a relative file path: give one like password or conf/key.json",
                item.path
            )));
        }
        if files.iter().any(|(_, p)| {
            *p == item.path
                || item.path.starts_with(&format!("{p}/"))
                || p.starts_with(&format!("{}/", item.path))
        }) {
            return Err(InvalidInput::new(format!(
                "{at}.items[{j}].path: {:?} clashes with another item's path: give each file its own",
                item.path
            )));
        }
        files.push((item.key.clone(), item.path.clone()));
    }
    Ok(files)
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeAction {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` with these headers answers 200 to 399 (over HTTP/1.1).
    Http {
        path: String,
        headers: Vec<(String, String)>,
    },
    /// The gRPC Health Checking protocol's `grpc.health.v1.Health/Check` for `service` (the
    /// empty name: the server as a whole), over HTTP/2 without TLS, answers `SERVING`.
    Grpc { service: String },
}

/// A validated probe, Cloud Run's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSettings {
    pub action: ProbeAction,
    pub port: u16,
    pub initial_delay: Duration,
    /// Each attempt's time limit (never above `period`).
    pub timeout: Duration,
    pub period: Duration,
    /// Consecutive failures that fail the probe.
    pub failure_threshold: u32,
}

impl ProbeSettings {
    /// What the probe checks, for messages: `HTTP GET /ready on port 8080`.
    pub fn describe(&self) -> String {
        match &self.action {
            ProbeAction::Tcp => format!("TCP connection to port {}", self.port),
            ProbeAction::Http { path, .. } => format!("HTTP GET {path} on port {}", self.port),
            ProbeAction::Grpc { service } if service.is_empty() => {
                format!("gRPC health check on port {}", self.port)
            }
            ProbeAction::Grpc { service } => {
                format!("gRPC health check of {service:?} on port {}", self.port)
            }
        }
    }
}

/// Which probe, with Cloud Run's limits for it (seconds).
#[derive(Clone, Copy)]
enum ProbeKind {
    Startup,
    Liveness,
}

impl ProbeKind {
    fn field(self) -> &'static str {
        match self {
            ProbeKind::Startup => "startupProbe",
            ProbeKind::Liveness => "livenessProbe",
        }
    }
    /// Most seconds for initialDelaySeconds, periodSeconds and timeoutSeconds.
    fn max_secs(self) -> i64 {
        match self {
            ProbeKind::Startup => 240,
            ProbeKind::Liveness => 3600,
        }
    }
}

/// Reads a probe as Cloud Run does: one of `httpGet`, `tcpSocket` (startup probes only) or
/// `grpc` (`port`, `service`: the gRPC Health Checking protocol); `initialDelaySeconds` 0 (0..=240 for startup, 0..=3600 for liveness),
/// `periodSeconds` 10 (1..=240 / 1..=3600), `timeoutSeconds` 1 (1..=the period),
/// `failureThreshold` 3 (at least 1), `successThreshold` only 1; for a startup probe
/// `failureThreshold × periodSeconds` at most 240. Errors name the field:
/// `startupProbe.periodSeconds: ...`.
fn probe_settings(
    p: &crate::Probe,
    kind: ProbeKind,
    container_port: u16,
) -> Result<ProbeSettings, InvalidInput> {
    let f = kind.field();
    let max = kind.max_secs();
    let secs = |name: &str, v: Option<i64>, default: i64, min: i64, max: i64| {
        let v = v.unwrap_or(default);
        if v < min || v > max {
            return Err(InvalidInput::new(format!(
                "{f}.{name}: {v} is out of range: use {min} to {max}"
            )));
        }
        Ok(v)
    };
    let initial = secs("initialDelaySeconds", p.initial_delay_seconds, 0, 0, max)?;
    let period = secs("periodSeconds", p.period_seconds, 10, 1, max)?;
    let timeout = secs("timeoutSeconds", p.timeout_seconds, 1, 1, max)?;
    if timeout > period {
        return Err(InvalidInput::new(format!(
            "{f}.timeoutSeconds: {timeout} is above periodSeconds {period}: use at most the period"
        )));
    }
    let failures = secs(
        "failureThreshold",
        p.failure_threshold,
        3,
        1,
        i64::from(u32::MAX),
    )?;
    if let Some(n) = p.success_threshold {
        if n != 1 {
            return Err(InvalidInput::new(format!(
                "{f}.successThreshold: {n}: Cloud Run takes only 1"
            )));
        }
    }
    if matches!(kind, ProbeKind::Startup) && failures.saturating_mul(period) > 240 {
        return Err(InvalidInput::new(format!(
            "{f}.failureThreshold: {failures} × periodSeconds {period} is above 240 seconds: lower one of them"
        )));
    }
    let port = |field: &str, v: Option<i64>| {
        match v {
        None => Ok(container_port),
        Some(n) => u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| {
            InvalidInput::new(format!(
                "{f}.{field}.port: {n} is not a port: use 1 to 65535, or leave it out for the container's port"
            ))
        }),
    }
    };
    let given = [
        p.http_get.is_some(),
        p.tcp_socket.is_some(),
        p.grpc.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given != 1 {
        return Err(InvalidInput::new(format!(
            "{f}: give exactly one of httpGet, tcpSocket or grpc"
        )));
    }
    let (action, port) = if let Some(h) = &p.http_get {
        let path = h.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(InvalidInput::new(format!(
                "{f}.httpGet.path: {path:?} is not a request path: give one like /ready"
            )));
        }
        let mut headers = Vec::new();
        for (i, hh) in h.http_headers.iter().enumerate() {
            if http_header_ok(&hh.name, &hh.value) {
                headers.push((hh.name.clone(), hh.value.clone()));
            } else {
                return Err(InvalidInput::new(format!(
                    "{f}.httpGet.httpHeaders[{i}]: {:?}: {:?} is not a valid header",
                    hh.name, hh.value
                )));
            }
        }
        (
            ProbeAction::Http { path, headers },
            port("httpGet", h.port)?,
        )
    } else if let Some(t) = &p.tcp_socket {
        if matches!(kind, ProbeKind::Liveness) {
            return Err(InvalidInput::new(format!(
                "{f}.tcpSocket: Cloud Run's liveness probes are httpGet or grpc: use httpGet"
            )));
        }
        (ProbeAction::Tcp, port("tcpSocket", t.port)?)
    } else {
        let g = p.grpc.as_ref().expect("one action is given");
        let service = g.service.clone().unwrap_or_default();
        if service.chars().any(char::is_control) {
            return Err(InvalidInput::new(format!(
                "{f}.grpc.service: {service:?} has control characters: give a service name like grpc.health.v1.Health"
            )));
        }
        (ProbeAction::Grpc { service }, port("grpc", g.port)?)
    };
    let s = |n: i64| Duration::from_secs(n as u64);
    Ok(ProbeSettings {
        action,
        port,
        initial_delay: s(initial),
        timeout: s(timeout),
        period: s(period),
        failure_threshold: failures as u32,
    })
}

/// The ingress container and its index: the only container, or, of several (at most
/// [`crate::MAX_CONTAINERS`], each named, names unique), the one that has `ports`.
fn ingress_container(
    containers: &[crate::Container],
) -> Result<(usize, &crate::Container), InvalidInput> {
    match containers {
        [] => {
            return Err(InvalidInput::new(
                "the revision template has no container: give one with an image",
            ))
        }
        [c] => return Ok((0, c)),
        _ => {}
    }
    if containers.len() > crate::MAX_CONTAINERS {
        return Err(InvalidInput::new(format!(
            "containers: {} containers: Cloud Run takes at most {} (the ingress container and up to {} sidecars)",
            containers.len(),
            crate::MAX_CONTAINERS,
            crate::MAX_CONTAINERS - 1
        )));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let Some(name) = c.name.as_deref() else {
            return Err(InvalidInput::new(format!(
                "containers[{i}].name: a revision with several containers names each one: give it a name"
            )));
        };
        crate::validate_name("container", name, 63)
            .map_err(|e| InvalidInput::new(format!("containers[{i}].name: {e}")))?;
        if names.contains(&name) {
            return Err(InvalidInput::new(format!(
                "containers[{i}].name: {name:?} is used twice: give each container its own name"
            )));
        }
        names.push(name);
    }
    let with_ports: Vec<usize> = containers
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.ports.is_empty())
        .map(|(i, _)| i)
        .collect();
    match with_ports.as_slice() {
        [i] => Ok((*i, &containers[*i])),
        [] => Err(InvalidInput::new(
            "containers: no container has ports: give the ingress container (the one that serves requests) a port, and the sidecars none",
        )),
        more => Err(InvalidInput::new(format!(
            "containers: {} containers have ports ({}): only the ingress container has one, sidecars have none",
            more.len(),
            more.iter()
                .map(|i| format!("containers[{i}]"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Reads and checks sidecar `containers[i]`: its image, command, args, env (literal and
/// secret), limits, volume mounts, and startup and liveness probes (which must name their
/// port). Errors name the field from `containers[i]` on.
fn sidecar(
    t: &RevisionTemplate,
    i: usize,
    c: &crate::Container,
) -> Result<SidecarSettings, InvalidInput> {
    let at = |m: String| InvalidInput::new(format!("containers[{i}].{m}"));
    let name = c.name.clone().unwrap_or_default();
    if c.image.trim().is_empty() {
        return Err(at(format!(
            "image: sidecar {name:?} has no image: give one"
        )));
    }
    let limits = c.resources.as_ref().map(|r| &r.limits);
    let cpu_millis = match limits.and_then(|l| l.get("cpu")) {
        Some(v) => parse_cpu(v).map_err(|e| at(format!("resources.limits.cpu: {e}")))?,
        None => DEFAULT_CPU_MILLIS,
    };
    let memory_bytes = match limits.and_then(|l| l.get("memory")) {
        Some(v) => parse_size(v).map_err(|e| at(format!("resources.limits.memory: {e}")))?,
        None => DEFAULT_MEMORY,
    };
    if memory_bytes < MIN_MEMORY {
        return Err(at(format!(
            "resources.limits.memory: {memory_bytes} bytes is below the minimum: use at least 128Mi"
        )));
    }
    let mut env: Vec<(String, String)> = Vec::new();
    let mut secret_env: Vec<SecretEnv> = Vec::new();
    for (j, e) in c.env.iter().enumerate() {
        crate::parse_env_list(&format!("{}=x", e.name))
            .map_err(|x| at(format!("env[{j}].name: {x}")))?;
        if env.iter().any(|(k, _)| *k == e.name) || secret_env.iter().any(|s| s.name == e.name) {
            return Err(at(format!(
                "env[{j}]: env var {} is given twice: give each variable once",
                e.name
            )));
        }
        match &e.value_from {
            None => env.push((e.name.clone(), e.value.clone())),
            Some(from) => secret_env.push(secret_env_var(i, j, e, from)?),
        }
    }
    let v = volumes(t, c, i, memory_bytes)?;
    // A sidecar has no container port: its probes name the port they check.
    let own_port = |p: ProbeSettings, field: &str| {
        if p.port == 0 {
            return Err(at(format!(
                "{field}: a sidecar has no container port: give the port the probe checks (tcpSocket.port, httpGet.port or grpc.port)"
            )));
        }
        Ok(p)
    };
    let startup_probe = match &c.startup_probe {
        None => None,
        Some(p) => {
            let p = probe_settings(p, ProbeKind::Startup, 0).map_err(|e| at(e.0))?;
            Some(own_port(p, "startupProbe")?)
        }
    };
    let liveness_probe = match &c.liveness_probe {
        None => None,
        Some(p) => {
            let p = probe_settings(p, ProbeKind::Liveness, 0).map_err(|e| at(e.0))?;
            Some(own_port(p, "livenessProbe")?)
        }
    };
    Ok(SidecarSettings {
        name,
        image: c.image.clone(),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        working_dir: c.working_dir.clone(),
        cpu_millis,
        memory_bytes,
        memory_volumes: v.memory,
        startup_probe,
        liveness_probe,
        secret_env,
        secret_volumes: v.secrets,
        host_volumes: v.hosts,
    })
}

/// Reads [`crate::ANN_CONTAINER_DEPENDENCIES`]: a JSON object from a container's name to the
/// names it starts after, every name a container of the template, without cycles.
fn container_dependencies(
    t: &RevisionTemplate,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, InvalidInput> {
    use std::collections::BTreeMap;
    let key = crate::ANN_CONTAINER_DEPENDENCIES;
    let Some(v) = t.metadata.annotations.get(key) else {
        return Ok(BTreeMap::new());
    };
    let bad = |m: String| InvalidInput::new(format!("invalid annotation {key}: {m}"));
    let deps: BTreeMap<String, Vec<String>> = serde_json::from_str(v).map_err(|e| {
        bad(format!(
            "{v:?} is not a JSON object of container names to lists of names ({e}): give one like {{\"app\":[\"sidecar\"]}}"
        ))
    })?;
    let names: Vec<&str> = t
        .spec
        .containers
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    for (c, after) in &deps {
        for n in std::iter::once(c).chain(after) {
            if !names.contains(&n.as_str()) {
                return Err(bad(format!(
                    "{n:?} is not a container of the revision (its containers: {}): name containers by their name",
                    names.join(", ")
                )));
            }
        }
    }
    // A depth-first walk; a name met again on the current path closes a cycle.
    fn walk<'a>(
        n: &'a str,
        deps: &'a BTreeMap<String, Vec<String>>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Result<(), String> {
        if let Some(at) = path.iter().position(|p| *p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n);
            return Err(cycle.join(" -> "));
        }
        if done.contains(&n) {
            return Ok(());
        }
        path.push(n);
        for d in deps.get(n).into_iter().flatten() {
            walk(d, deps, path, done)?;
        }
        path.pop();
        done.push(n);
        Ok(())
    }
    let mut done = Vec::new();
    for c in deps.keys() {
        walk(c, &deps, &mut Vec::new(), &mut done).map_err(|cycle| {
            bad(format!(
                "the containers depend on each other in a cycle ({cycle}): remove one of these dependencies"
            ))
        })?;
    }
    Ok(deps)
}

/// A header name is a token (RFC 9110 §5.6.2) and its value has no control characters.
fn http_header_ok(name: &str, value: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && value
            .bytes()
            .all(|b| b == b'\t' || (b' '..0x7f).contains(&b))
}

/// Reads [`crate::ANN_EGRESS`] from annotations: `all` (or absent) is `true`, `none` `false`.
pub fn egress_annotation(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<bool, InvalidInput> {
    match annotations.get(crate::ANN_EGRESS).map(|v| v.trim()) {
        None | Some("all") => Ok(true),
        Some("none") => Ok(false),
        Some(v) => Err(InvalidInput::new(format!(
            "invalid annotation {}: {v:?}: use \"all\" or \"none\"",
            crate::ANN_EGRESS
        ))),
    }
}

/// Checks `serviceAccountName`: an email address, as Cloud Run takes it.
pub fn validate_service_account(sa: &str) -> Result<(), InvalidInput> {
    let ok = sa.split_once('@').is_some_and(|(user, domain)| {
        !user.is_empty()
            && domain.contains('.')
            && sa
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "@.-_".contains(c))
    });
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::new(format!(
            "invalid service account {sa:?}: give an email like NAME@PROJECT.iam.gserviceaccount.com"
        )))
    }
}

fn yes() -> bool {
    true
}

/// A [`RevisionSettings::from_template`] error as the field of a Service it is about: a probe's
/// or a volume's message already names its field from the container or the revision spec on
/// (`startupProbe.periodSeconds: ...` → `spec.template.spec.containers[0].startupProbe.periodSeconds: ...`);
/// any other is about the template as a whole (`spec.template: ...`).
pub fn template_error(e: &InvalidInput) -> String {
    let m = &e.0;
    if m.starts_with("startupProbe") || m.starts_with("livenessProbe") {
        format!("spec.template.spec.containers[0].{m}")
    } else if m.starts_with("volumes[") || m.starts_with("containers") {
        format!("spec.template.spec.{m}")
    } else {
        format!("spec.template: {m}")
    }
}

/// Prefix of the Knative autoscaling annotations.
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";

fn scale_annotation(t: &RevisionTemplate, key: &str) -> Result<Option<u64>, InvalidInput> {
    match t.metadata.annotations.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            InvalidInput::new(format!(
                "invalid annotation {key}: {v:?} is not a whole number"
            ))
        }),
    }
}

impl RevisionSettings {
    /// Reads and validates a revision template. Every limit Cloud Run enforces is checked here,
    /// so that nothing invalid is ever stored.
    pub fn from_template(t: &RevisionTemplate) -> Result<Self, InvalidInput> {
        let spec = &t.spec;
        let (index, c) = ingress_container(&spec.containers)?;
        if c.image.trim().is_empty() {
            return Err(InvalidInput::new(
                "the container has no image: pass --image NAME[:TAG]",
            ));
        }
        let use_http2 = match c.ports.first().and_then(|p| p.name.as_deref()) {
            None | Some("http1") => false,
            Some("h2c") => true,
            Some(other) => {
                return Err(InvalidInput::new(format!(
                    "invalid port name {other:?}: use http1 (HTTP/1.1 to the container) or h2c (HTTP/2)"
                )))
            }
        };
        let port = match c.ports.as_slice() {
            [] => DEFAULT_PORT,
            [p] => u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    InvalidInput::new(format!(
                        "invalid port {}: use a port between 1 and 65535",
                        p.container_port
                    ))
                })?,
            _ => {
                return Err(InvalidInput::new(
                    "more than one container port: give exactly one",
                ))
            }
        };
        let concurrency = match spec.container_concurrency {
            None | Some(0) => DEFAULT_CONCURRENCY,
            Some(n) if n <= MAX_CONCURRENCY => n,
            Some(n) => {
                return Err(InvalidInput::new(format!(
                    "invalid concurrency {n}: use a value between 1 and {MAX_CONCURRENCY}"
                )))
            }
        };
        let timeout_secs = spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECS);
        if timeout_secs == 0 || timeout_secs > MAX_TIMEOUT_SECS {
            return Err(InvalidInput::new(format!(
                "invalid timeout {timeout_secs}s: use a value between 1s and {MAX_TIMEOUT_SECS}s"
            )));
        }
        let min_instances = scale_annotation(t, ANN_MIN_SCALE)?.unwrap_or(0);
        let max_instances = scale_annotation(t, ANN_MAX_SCALE)?.unwrap_or(DEFAULT_MAX_INSTANCES);
        if max_instances == 0 {
            return Err(InvalidInput::new("invalid max-instances 0: use at least 1"));
        }
        if min_instances > max_instances {
            return Err(InvalidInput::new(format!(
                "min-instances {min_instances} is above max-instances {max_instances}: lower min or raise max"
            )));
        }
        let limits = c.resources.as_ref().map(|r| &r.limits);
        let cpu_millis = match limits.and_then(|l| l.get("cpu")) {
            Some(v) => parse_cpu(v)?,
            None => DEFAULT_CPU_MILLIS,
        };
        let memory_bytes = match limits.and_then(|l| l.get("memory")) {
            Some(v) => parse_size(v)?,
            None => DEFAULT_MEMORY,
        };
        if memory_bytes < MIN_MEMORY {
            return Err(InvalidInput::new(format!(
                "memory limit {memory_bytes} bytes is below the minimum: use at least 128Mi"
            )));
        }
        let mut env = Vec::new();
        let mut secret_env: Vec<SecretEnv> = Vec::new();
        for (i, e) in c.env.iter().enumerate() {
            if matches!(
                e.name.as_str(),
                "PORT" | "K_SERVICE" | "K_REVISION" | "K_CONFIGURATION"
            ) {
                return Err(InvalidInput::new(format!(
                    "env var {} is reserved: Skiff sets it for every instance",
                    e.name
                )));
            }
            crate::parse_env_list(&format!("{}=x", e.name))?;
            if env.iter().any(|(k, _)| *k == e.name) || secret_env.iter().any(|s| s.name == e.name)
            {
                return Err(InvalidInput::new(format!(
                    "env var {} is given twice: give each variable once",
                    e.name
                )));
            }
            match &e.value_from {
                None => env.push((e.name.clone(), e.value.clone())),
                Some(from) => secret_env.push(secret_env_var(index, i, e, from)?),
            }
        }
        let cpu_throttling = match t.metadata.annotations.get(ANN_CPU_THROTTLING) {
            None => true,
            // gcloud writes Python's `True`/`False`.
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(InvalidInput::new(format!(
                        "invalid annotation {ANN_CPU_THROTTLING}: {v:?}: use \"true\" or \"false\""
                    )))
                }
            },
        };
        let Volumes {
            memory: memory_volumes,
            secrets: secret_volumes,
            hosts: host_volumes,
        } = volumes(t, c, index, memory_bytes)?;
        let in_container = |e: InvalidInput| match index {
            0 => e,
            i => InvalidInput::new(format!("containers[{i}].{}", e.0)),
        };
        let startup_probe = c
            .startup_probe
            .as_ref()
            .map(|p| probe_settings(p, ProbeKind::Startup, port))
            .transpose()
            .map_err(in_container)?;
        let liveness_probe = c
            .liveness_probe
            .as_ref()
            .map(|p| probe_settings(p, ProbeKind::Liveness, port))
            .transpose()
            .map_err(in_container)?;
        let sidecars = spec
            .containers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(i, sc)| sidecar(t, i, sc))
            .collect::<Result<Vec<_>, _>>()?;
        let container_dependencies = container_dependencies(t)?;
        for (p, field) in [
            (&startup_probe, "startupProbe"),
            (&liveness_probe, "livenessProbe"),
        ] {
            if use_http2
                && matches!(
                    p,
                    Some(ProbeSettings {
                        action: ProbeAction::Http { .. },
                        ..
                    })
                )
            {
                return Err(InvalidInput::new(format!(
                    "{field}.httpGet: HTTP probes speak HTTP/1.1, and this container's port is h2c (HTTP/2): use tcpSocket, or name the port http1"
                )));
            }
        }
        if let Some(sa) = &spec.service_account_name {
            validate_service_account(sa)?;
        }
        Ok(RevisionSettings {
            service_account: spec.service_account_name.clone(),
            egress: egress_annotation(&t.metadata.annotations)?,
            memory_volumes,
            secret_env,
            secret_volumes,
            host_volumes,
            use_http2,
            startup_probe,
            liveness_probe,
            container_name: c.name.clone(),
            sidecars,
            container_dependencies,
            cpu_throttling,
            image: c.image.clone(),
            port,
            concurrency,
            min_instances,
            max_instances,
            timeout: Duration::from_secs(timeout_secs),
            cpu_millis,
            memory_bytes,
            env,
            command: c.command.clone(),
            args: c.args.clone(),
            working_dir: c.working_dir.clone(),
            autoscaling: t
                .metadata
                .annotations
                .iter()
                .filter(|(k, _)| k.starts_with(AUTOSCALING_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Container, ContainerPort, EnvVar, Resources};

    fn template(f: impl FnOnce(&mut RevisionTemplate)) -> RevisionTemplate {
        let mut t = RevisionTemplate::default();
        t.spec.containers.push(Container {
            image: "hello".into(),
            ..Default::default()
        });
        f(&mut t);
        t
    }

    #[test]
    fn defaults() {
        let s = RevisionSettings::from_template(&template(|_| {})).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.concurrency, 80);
        assert_eq!((s.min_instances, s.max_instances), (0, 100));
        assert_eq!(s.timeout, Duration::from_secs(300));
        assert_eq!((s.cpu_millis, s.memory_bytes), (1000, 512 << 20));
        assert!(s.cpu_throttling);
    }

    #[test]
    fn cpu_throttling_annotation() {
        let with = |v: &str| {
            RevisionSettings::from_template(&template(|t| {
                t.metadata
                    .annotations
                    .insert(ANN_CPU_THROTTLING.into(), v.into());
            }))
        };
        assert!(!with("false").unwrap().cpu_throttling);
        assert!(!with("False").unwrap().cpu_throttling);
        assert!(with("true").unwrap().cpu_throttling);
        let e = with("no").unwrap_err().to_string();
        assert!(e.contains(ANN_CPU_THROTTLING), "{e}");
    }

    #[test]
    fn overrides() {
        let s = RevisionSettings::from_template(&template(|t| {
            t.metadata
                .annotations
                .insert(ANN_MIN_SCALE.into(), "1".into());
            t.metadata
                .annotations
                .insert(ANN_MAX_SCALE.into(), "3".into());
            t.spec.container_concurrency = Some(5);
            t.spec.timeout_seconds = Some(10);
            let c = &mut t.spec.containers[0];
            c.ports.push(ContainerPort {
                name: None,
                container_port: 9000,
            });
            c.env.push(EnvVar {
                name: "A".into(),
                value: "b".into(),
                value_from: None,
            });
            c.resources = Some(Resources {
                limits: [
                    ("cpu".into(), "500m".into()),
                    ("memory".into(), "1Gi".into()),
                ]
                .into(),
            });
        }))
        .unwrap();
        assert_eq!(s.port, 9000);
        assert_eq!(s.concurrency, 5);
        assert_eq!((s.min_instances, s.max_instances), (1, 3));
        assert_eq!(s.timeout, Duration::from_secs(10));
        assert_eq!((s.cpu_millis, s.memory_bytes), (500, 1 << 30));
        assert_eq!(s.env, vec![("A".to_string(), "b".to_string())]);
    }

    fn probe(yaml: &str) -> crate::Probe {
        serde_json::from_value(serde_json::from_str::<serde_json::Value>(yaml).unwrap()).unwrap()
    }

    fn with_probes(
        startup: Option<&str>,
        liveness: Option<&str>,
    ) -> Result<RevisionSettings, InvalidInput> {
        RevisionSettings::from_template(&template(|t| {
            let c = &mut t.spec.containers[0];
            c.startup_probe = startup.map(probe);
            c.liveness_probe = liveness.map(probe);
        }))
    }

    #[test]
    fn probes_take_cloud_runs_defaults() {
        let s = with_probes(
            Some(r#"{"httpGet":{"path":"/ready"}}"#),
            Some(r#"{"httpGet":{"port":9000,"httpHeaders":[{"name":"X-A","value":"b"}]},"periodSeconds":30,"timeoutSeconds":5,"failureThreshold":1,"initialDelaySeconds":7}"#),
        )
        .unwrap();
        let st = s.startup_probe.unwrap();
        assert_eq!(
            st,
            ProbeSettings {
                action: ProbeAction::Http {
                    path: "/ready".into(),
                    headers: vec![]
                },
                port: 8080,
                initial_delay: Duration::ZERO,
                timeout: Duration::from_secs(1),
                period: Duration::from_secs(10),
                failure_threshold: 3,
            }
        );
        assert_eq!(st.describe(), "HTTP GET /ready on port 8080");
        let l = s.liveness_probe.unwrap();
        assert_eq!(l.port, 9000);
        assert_eq!(
            (l.initial_delay, l.timeout, l.period, l.failure_threshold),
            (
                Duration::from_secs(7),
                Duration::from_secs(5),
                Duration::from_secs(30),
                1
            )
        );
        let s = with_probes(Some(r#"{"tcpSocket":{}}"#), None).unwrap();
        assert_eq!(s.startup_probe.unwrap().action, ProbeAction::Tcp);
        let s = with_probes(
            Some(r#"{"grpc":{}}"#),
            Some(r#"{"grpc":{"port":9001,"service":"app"}}"#),
        )
        .unwrap();
        let (st, l) = (s.startup_probe.unwrap(), s.liveness_probe.unwrap());
        assert_eq!(
            st.action,
            ProbeAction::Grpc {
                service: String::new()
            }
        );
        assert_eq!(st.describe(), "gRPC health check on port 8080");
        assert_eq!(l.describe(), "gRPC health check of \"app\" on port 9001");
        assert_eq!(with_probes(None, None).unwrap().startup_probe, None);
    }

    fn containers(yaml: &str, deps: Option<&str>) -> Result<RevisionSettings, InvalidInput> {
        let mut t = RevisionTemplate::default();
        t.spec.containers = serde_json::from_str(yaml).unwrap();
        if let Some(d) = deps {
            t.metadata
                .annotations
                .insert(crate::ANN_CONTAINER_DEPENDENCIES.into(), d.into());
        }
        RevisionSettings::from_template(&t)
    }

    #[test]
    fn sidecars_are_read_and_checked() {
        let s = containers(
            r#"[{"name":"proxy","image":"p","resources":{"limits":{"cpu":"500m","memory":"256Mi"}},
                 "startupProbe":{"tcpSocket":{"port":9000}}},
                {"name":"app","image":"a","ports":[{"containerPort":8081}]}]"#,
            Some(r#"{"app":["proxy"]}"#),
        )
        .unwrap();
        assert_eq!((s.image.as_str(), s.port), ("a", 8081));
        assert_eq!(s.container_name.as_deref(), Some("app"));
        assert_eq!(s.sidecars.len(), 1);
        assert_eq!(s.sidecars[0].name, "proxy");
        assert_eq!(s.sidecars[0].startup_probe.as_ref().unwrap().port, 9000);
        assert_eq!(s.container_dependencies["app"], ["proxy"]);
        assert_eq!(s.instance_cpu_millis(), 1500);
        assert_eq!(s.instance_memory_bytes(), (512 + 256) << 20);

        // A sidecar takes secrets (env and volumes) and a liveness probe on its own port.
        let t = RevisionTemplate {
            spec: serde_json::from_str(
            r#"{"containers":[{"name":"app","image":"a","ports":[{"containerPort":8080}]},
                {"name":"proxy","image":"p",
                 "env":[{"name":"TOKEN","valueFrom":{"secretKeyRef":{"name":"tok","key":"latest"}}}],
                 "volumeMounts":[{"name":"certs","mountPath":"/certs"}],
                 "livenessProbe":{"httpGet":{"path":"/healthz","port":9000},"periodSeconds":2}}],
               "volumes":[{"name":"certs","secret":{"secretName":"cert","items":[{"key":"2","path":"tls.pem"}]}}]}"#,
            )
            .unwrap(),
            ..Default::default()
        };
        let s = RevisionSettings::from_template(&t).unwrap();
        let p = &s.sidecars[0];
        assert_eq!(p.liveness_probe.as_ref().unwrap().port, 9000);
        assert_eq!(p.secret_env[0].secret, "tok");
        assert_eq!(p.secret_volumes[0].mount_path, "/certs");
        assert!(s.has_secrets() && s.secret_env.is_empty());
        assert_eq!(
            s.secret_refs(),
            [("tok".into(), "latest".into()), ("cert".into(), "2".into())]
        );

        let two = r#"[{"name":"a","image":"a","ports":[{"containerPort":8080}]},{"name":"b","image":"b"}]"#;
        let cases = [
            (
                r#"[{"name":"a","image":"a","ports":[{"containerPort":8080}]},{"name":"b","image":"b","ports":[{"containerPort":9000}]}]"#,
                None,
                "containers: 2 containers have ports (containers[0], containers[1])",
            ),
            (
                r#"[{"name":"a","image":"a"},{"name":"b","image":"b"}]"#,
                None,
                "containers: no container has ports",
            ),
            (
                r#"[{"image":"a","ports":[{"containerPort":8080}]},{"name":"b","image":"b"}]"#,
                None,
                "containers[0].name: a revision with several containers names each one",
            ),
            (
                r#"[{"name":"a","image":"a","ports":[{"containerPort":8080}]},{"name":"a","image":"b"}]"#,
                None,
                "containers[1].name: \"a\" is used twice",
            ),
            (
                r#"[{"name":"a","image":"a","ports":[{"containerPort":8080}]},{"name":"b","image":"b","startupProbe":{"tcpSocket":{}}}]"#,
                None,
                "containers[1].startupProbe: a sidecar has no container port",
            ),
            (
                r#"[{"name":"a","image":"a","ports":[{"containerPort":8080}]},{"name":"b","image":"b","livenessProbe":{"httpGet":{}}}]"#,
                None,
                "containers[1].livenessProbe: a sidecar has no container port",
            ),
            (
                r#"[{"name":"a","image":"a","ports":[{"containerPort":8080}]},{"name":"b","image":"b","env":[{"name":"K","valueFrom":{"secretKeyRef":{"name":"s","key":"x"}}}]}]"#,
                None,
                "containers[1].env[0].valueFrom.secretKeyRef: version \"x\" of secret s",
            ),
            (two, Some(r#"{"a":["c"]}"#), "invalid annotation run.googleapis.com/container-dependencies: \"c\" is not a container"),
            (two, Some(r#"{"a":["b"],"b":["a"]}"#), "invalid annotation run.googleapis.com/container-dependencies: the containers depend on each other in a cycle (a -> b -> a)"),
            (two, Some(r#"["a"]"#), "invalid annotation run.googleapis.com/container-dependencies: \"[\\\"a\\\"]\" is not a JSON object"),
        ];
        for (yaml, deps, want) in cases {
            let e = containers(yaml, deps).unwrap_err().to_string();
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
        let eleven: Vec<String> = (0..11)
            .map(|i| format!(r#"{{"name":"c{i}","image":"x"}}"#))
            .collect();
        let e = containers(&format!("[{}]", eleven.join(",")), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("containers: 11 containers: Cloud Run takes at most 10"),
            "{e}"
        );
    }

    #[test]
    fn probe_errors_name_the_field() {
        let cases = [
            (
                Some(r#"{"tcpSocket":{},"periodSeconds":241}"#),
                None,
                "startupProbe.periodSeconds: 241 is out of range: use 1 to 240",
            ),
            (
                Some(r#"{"tcpSocket":{},"periodSeconds":0}"#),
                None,
                "startupProbe.periodSeconds: 0",
            ),
            (
                Some(r#"{"tcpSocket":{},"initialDelaySeconds":-1}"#),
                None,
                "startupProbe.initialDelaySeconds",
            ),
            (
                Some(r#"{"tcpSocket":{},"timeoutSeconds":5,"periodSeconds":2}"#),
                None,
                "startupProbe.timeoutSeconds: 5 is above periodSeconds 2",
            ),
            (
                Some(r#"{"tcpSocket":{},"periodSeconds":100,"failureThreshold":3}"#),
                None,
                "startupProbe.failureThreshold: 3 × periodSeconds 100 is above 240",
            ),
            (
                Some(r#"{"tcpSocket":{},"failureThreshold":0}"#),
                None,
                "startupProbe.failureThreshold: 0",
            ),
            (
                Some(r#"{"tcpSocket":{},"successThreshold":2}"#),
                None,
                "startupProbe.successThreshold",
            ),
            (
                Some(r#"{"tcpSocket":{"port":70000}}"#),
                None,
                "startupProbe.tcpSocket.port: 70000",
            ),
            (
                Some(r#"{"httpGet":{"path":"ready"}}"#),
                None,
                "startupProbe.httpGet.path",
            ),
            (
                Some(r#"{"httpGet":{"httpHeaders":[{"name":"a b","value":"x"}]}}"#),
                None,
                "startupProbe.httpGet.httpHeaders[0]",
            ),
            (
                Some(r#"{"periodSeconds":5}"#),
                None,
                "startupProbe: give exactly one of httpGet, tcpSocket or grpc",
            ),
            (
                Some(r#"{"httpGet":{},"tcpSocket":{}}"#),
                None,
                "startupProbe: give exactly one",
            ),
            (
                Some(r#"{"grpc":{"port":0}}"#),
                None,
                "startupProbe.grpc.port: 0 is not a port",
            ),
            (
                None,
                Some(r#"{"grpc":{"service":"a\nb"}}"#),
                "livenessProbe.grpc.service",
            ),
            (None, Some(r#"{"tcpSocket":{}}"#), "livenessProbe.tcpSocket"),
            (
                None,
                Some(r#"{"httpGet":{},"periodSeconds":3601}"#),
                "livenessProbe.periodSeconds: 3601 is out of range: use 1 to 3600",
            ),
        ];
        for (startup, liveness, want) in cases {
            let e = with_probes(startup, liveness).unwrap_err().to_string();
            assert!(e.starts_with(want), "{startup:?} {liveness:?}: {e}");
        }
        // Liveness probes may wait longer than startup probes.
        assert!(with_probes(
            None,
            Some(r#"{"httpGet":{},"periodSeconds":3600,"initialDelaySeconds":3600}"#)
        )
        .is_ok());
    }

    #[test]
    fn rejects() {
        type Edit = fn(&mut RevisionTemplate);
        let cases: &[(&str, Edit)] = &[
            ("no container", |t| t.spec.containers.clear()),
            ("no image", |t| t.spec.containers[0].image.clear()),
            ("concurrency", |t| t.spec.container_concurrency = Some(1001)),
            ("timeout", |t| t.spec.timeout_seconds = Some(3601)),
            ("min > max", |t| {
                t.metadata
                    .annotations
                    .insert(ANN_MIN_SCALE.into(), "5".into());
                t.metadata
                    .annotations
                    .insert(ANN_MAX_SCALE.into(), "2".into());
            }),
            ("bad scale", |t| {
                t.metadata
                    .annotations
                    .insert(ANN_MAX_SCALE.into(), "x".into());
            }),
            ("port", |t| {
                t.spec.containers[0].ports.push(ContainerPort {
                    name: None,
                    container_port: 70000,
                })
            }),
            ("port name", |t| {
                t.spec.containers[0].ports.push(ContainerPort {
                    name: Some("grpc".into()),
                    container_port: 8080,
                })
            }),
            ("reserved env", |t| {
                t.spec.containers[0].env.push(EnvVar {
                    name: "PORT".into(),
                    value: "1".into(),
                    value_from: None,
                })
            }),
            ("memory", |t| {
                t.spec.containers[0].resources = Some(Resources {
                    limits: [("memory".into(), "1Mi".into())].into(),
                })
            }),
        ];
        for (what, edit) in cases {
            let mut t = template(|_| {});
            edit(&mut t);
            assert!(RevisionSettings::from_template(&t).is_err(), "{what}");
        }
    }

    fn with_json(f: &str) -> Result<RevisionSettings, InvalidInput> {
        let t: RevisionTemplate = serde_json::from_str(f).unwrap();
        RevisionSettings::from_template(&t)
    }

    #[test]
    fn secrets_as_env_and_files() {
        let s = with_json(
            r#"{"spec":{"containers":[{"image":"i",
                "env":[{"name":"A","value":"x"},{"name":"PW","valueFrom":{"secretKeyRef":{"name":"db","key":"2"}}}],
                "volumeMounts":[{"name":"s","mountPath":"/etc/conf"},{"name":"t","mountPath":"/t"}]}],
              "volumes":[{"name":"s","secret":{"secretName":"cfg","items":[{"key":"latest","path":"a.json"},{"key":"1","path":"old/a.json"}]}},
                         {"name":"t","secret":{"secretName":"tok"}}]}}"#,
        )
        .unwrap();
        assert_eq!(s.env, vec![("A".to_string(), "x".to_string())]);
        assert_eq!(
            s.secret_env,
            vec![SecretEnv {
                name: "PW".into(),
                secret: "db".into(),
                version: "2".into()
            }]
        );
        assert_eq!(s.secret_volumes.len(), 2);
        assert_eq!(s.secret_volumes[0].mount_path, "/etc/conf");
        assert_eq!(
            s.secret_volumes[0].files,
            vec![
                ("latest".to_string(), "a.json".to_string()),
                ("1".to_string(), "old/a.json".to_string())
            ]
        );
        assert_eq!(
            s.secret_volumes[1].files,
            vec![("latest".to_string(), "tok".to_string())]
        );
        assert_eq!(s.secret_refs().len(), 4);
    }

    #[test]
    fn bad_secret_references_name_the_field() {
        let env = |from: &str| {
            with_json(&format!(
                r#"{{"spec":{{"containers":[{{"image":"i","env":[{{"name":"PW","valueFrom":{from}}}]}}]}}}}"#
            ))
            .unwrap_err()
            .to_string()
        };
        let e = env(r#"{"secretKeyRef":{"name":"db","key":"v1"}}"#);
        assert!(
            e.starts_with("containers[0].env[0].valueFrom.secretKeyRef: version \"v1\""),
            "{e}"
        );
        let e = env(r#"{"secretKeyRef":{"name":"projects/p/secrets/db","key":"1"}}"#);
        assert!(e.contains("other projects"), "{e}");
        let e = env(r#"{}"#);
        assert!(
            e.starts_with("containers[0].env[0].valueFrom: give secretKeyRef"),
            "{e}"
        );
        let vol = |v: &str, m: &str| {
            with_json(&format!(
                r#"{{"spec":{{"containers":[{{"image":"i","volumeMounts":[{m}]}}],"volumes":[{v}]}}}}"#
            ))
            .unwrap_err()
            .to_string()
        };
        let e = vol(
            r#"{"name":"s","secret":{"secretName":"a","items":[{"key":"1","path":"../x"}]}}"#,
            r#"{"name":"s","mountPath":"/s"}"#,
        );
        assert!(e.starts_with("volumes[0].secret.items[0].path"), "{e}");
        let e = vol(
            r#"{"name":"s","secret":{"secretName":"a"}}"#,
            r#"{"name":"s","mountPath":"/s","readOnly":false}"#,
        );
        assert!(e.contains("readOnly"), "{e}");
        let e = vol(
            r#"{"name":"s","secret":{"secretName":"a"},"emptyDir":{"medium":"Memory"}}"#,
            r#"{"name":"s","mountPath":"/s"}"#,
        );
        assert!(e.starts_with("volumes[0]: give exactly one source"), "{e}");
        let dup = with_json(
            r#"{"spec":{"containers":[{"image":"i","env":[{"name":"A","value":"x"},{"name":"A","valueFrom":{"secretKeyRef":{"name":"a","key":"1"}}}]}]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(dup.contains("given twice"), "{dup}");
    }

    #[test]
    fn secret_env_exports_without_an_empty_value() {
        let e: crate::EnvVar = serde_json::from_str(
            r#"{"name":"PW","valueFrom":{"secretKeyRef":{"name":"db","key":"latest"}}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"name":"PW","valueFrom":{"secretKeyRef":{"name":"db","key":"latest"}}}"#
        );
        let plain: crate::EnvVar = serde_json::from_str(r#"{"name":"A","value":""}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"name":"A","value":""}"#
        );
    }

    #[test]
    fn host_directories_are_nfs_volumes_of_localhost_read_only() {
        let vol = |nfs: &str| {
            with_json(&format!(
                r#"{{"spec":{{"containers":[{{"image":"i","volumeMounts":[{{"name":"d","mountPath":"/d"}}]}}],"volumes":[{{"name":"d","nfs":{nfs}}}]}}}}"#
            ))
        };
        let s = vol(r#"{"server":"localhost","path":"/srv/data","readOnly":true}"#).unwrap();
        assert_eq!(
            s.host_volumes,
            vec![HostVolume {
                name: "d".into(),
                mount_path: "/d".into(),
                host_path: "/srv/data".into()
            }]
        );
        for (nfs, want) in [
            (
                r#"{"server":"10.0.0.2","path":"/x","readOnly":true}"#,
                "volumes[0].nfs.server",
            ),
            (
                r#"{"server":"localhost","path":"x/../y","readOnly":true}"#,
                "volumes[0].nfs.path",
            ),
            (
                r#"{"server":"localhost","path":"/x"}"#,
                "volumes[0].nfs.readOnly",
            ),
        ] {
            let e = vol(nfs).unwrap_err().to_string();
            assert!(e.starts_with(want), "{nfs}: {e}");
        }
    }
}
