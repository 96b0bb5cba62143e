//! Knative Serving `serving.knative.dev/v1` objects (Service, Revision) in the JSON shape that
//! Cloud Run Admin API v1 and `kubectl`/`gcloud` exchange. Fields Skiff does not use are kept
//! out; unknown fields in input are ignored, as Kubernetes does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const SERVING_API_VERSION: &str = "serving.knative.dev/v1";
pub const ANN_MIN_SCALE: &str = "autoscaling.knative.dev/minScale";
pub const ANN_MAX_SCALE: &str = "autoscaling.knative.dev/maxScale";
/// `"false"`: the instance keeps its CPU between requests and is billed instance-based.
pub const ANN_CPU_THROTTLING: &str = "run.googleapis.com/cpu-throttling";
/// Outbound traffic of the revision's instances: `all` (the default: internet, other
/// services, DNS, the metadata server) or `none` (loopback only). Skiff's own annotation,
/// named the way Cloud Run names its `run.googleapis.com/vpc-access-egress`.
pub const ANN_EGRESS: &str = "skiff.dev/egress";
/// Who may reach a service, on the Service's own metadata as gcloud's `--ingress` writes it:
/// `all` (the default), `internal` or `internal-and-cloud-load-balancing` ([`Ingress`]).
pub const ANN_INGRESS: &str = "run.googleapis.com/ingress";
/// The start order of a revision's containers, a JSON map from a container's name to the
/// names of the containers it starts after (`{"app":["proxy"]}`): each of those must have
/// started, and passed its startup probe if it has one, first. Without it all start at once.
pub const ANN_CONTAINER_DEPENDENCIES: &str = "run.googleapis.com/container-dependencies";
/// Cloud Run's most containers per instance: the ingress container and nine sidecars.
pub const MAX_CONTAINERS: usize = 10;
pub const ANN_CREATOR: &str = "serving.knative.dev/creator";
/// The `fields` mask (Google's partial responses) that `skiff services list` sends with its
/// `services.list` call: what its table shows. The server keeps this answer ready.
pub const SERVICE_TABLE_FIELDS: &str = "items(metadata.name,status(url,latestReadyRevisionName,latestCreatedRevisionName,conditions(type,status)))";
pub const LABEL_SERVICE: &str = "serving.knative.dev/service";
pub const LABEL_CONFIGURATION: &str = "serving.knative.dev/configuration";
pub const LABEL_CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
/// The region label Cloud Run puts on every object (gcloud reads it to name the region).
pub const LABEL_LOCATION: &str = "cloud.googleapis.com/location";
/// Skiff's one region: every object carries it as [`LABEL_LOCATION`], whatever region a
/// client named in its request (Skiff serves them all from the one server).
pub const REGION: &str = "us-central1";
/// IAM member that makes a service public.
pub const ALL_USERS: &str = "allUsers";
pub const ROLE_INVOKER: &str = "roles/run.invoker";

/// A stable 12-digit number for a project name (FNV-1a), as Google's project numbers look;
/// what Resource Manager and the metadata server report as the project's number.
pub fn project_number(project: &str) -> u64 {
    let h = project.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    100_000_000_000 + h % 900_000_000_000
}

/// The service account a revision or job runs as when it names none: Cloud Run's default, the
/// project's Compute Engine default service account, `NUMBER-compute@developer.gserviceaccount.com`.
pub fn default_service_account(project: &str) -> String {
    format!(
        "{}-compute@developer.gserviceaccount.com",
        project_number(project)
    )
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default = "serving_api_version")]
    pub api_version: String,
    #[serde(default = "service_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ServiceStatus>,
}

fn serving_api_version() -> String {
    SERVING_API_VERSION.to_string()
}
fn service_kind() -> String {
    "Service".to_string()
}
fn revision_kind() -> String {
    "Revision".to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub template: RevisionTemplate,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_concurrency: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Volumes the containers may mount: in-memory `emptyDir` and `secret`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
}

/// A Kubernetes `Volume`: a name and its source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsVolumeSource>,
}

/// `nfs`: Cloud Run's NFS volume. Skiff's stand-in: `server: localhost` and `path` a directory
/// of the host that `skiff server --allow-host-dir` allows, mounted read-only
/// (`readOnly: true`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NfsVolumeSource {
    #[serde(default)]
    pub server: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// `secret`: versions of a secret as files. Each item puts version `key` (`latest` or a
/// number) in the file `path` under the mount path; without items the volume holds one file
/// named after the secret with its latest version (Cloud Run's rule).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeSource {
    #[serde(default)]
    pub secret_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<KeyToPath>,
}

/// One file of a secret volume: version `key` at `path` (relative to the mount path).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyToPath {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub path: String,
}

/// `emptyDir`: a directory that starts empty with each instance. Cloud Run's is in memory
/// (`medium: Memory`) and counts against the instance's memory; `sizeLimit` (a size like
/// `64Mi`) caps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDirVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

/// A Kubernetes `VolumeMount`: the volume `name` at `mountPath` in the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    pub name: String,
    #[serde(default)]
    pub mount_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// When the container has started (Cloud Run: TCP, HTTP or gRPC; without one, a TCP
    /// connect to the port within 240 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// Whether a started container is still alive; failing it restarts the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// A Kubernetes `Probe` as Cloud Run takes it: one action (`httpGet`, `tcpSocket` or `grpc`)
/// and its timing, in whole seconds. Absent fields take Cloud Run's defaults (see
/// `RevisionSettings::from_template`); they are kept absent, so an export shows what was given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcAction>,
}

/// `httpGet`: a GET of `path` (default `/`) on `port` (default the container's port); any
/// status from 200 to 399 is a success.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeader {
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// `tcpSocket`: a TCP connection to `port` (default the container's port) is a success.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSocketAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// `grpc`: the gRPC Health Checking protocol's `Check` on `port` for `service`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// An environment variable: a literal `value`, or (`valueFrom.secretKeyRef`) a version of a
/// secret, resolved when each instance or task starts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub value_from: Option<EnvVarSource>,
}

impl Serialize for EnvVar {
    /// `{name, value}`, or `{name, valueFrom}` for a secret (no empty `value` beside it), so
    /// that an export reads as the input did.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let with_value = self.value_from.is_none() || !self.value.is_empty();
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &self.name)?;
        if with_value {
            m.serialize_entry("value", &self.value)?;
        }
        if let Some(f) = &self.value_from {
            m.serialize_entry("valueFrom", f)?;
        }
        m.end()
    }
}

/// `valueFrom`: Cloud Run takes only `secretKeyRef`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
}

/// `secretKeyRef`: the secret `name` and, as `key`, its version (`latest` or a number), as
/// Cloud Run reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub container_port: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// `Info` or `Warning` for a condition that does not decide `Ready` (Knative's severity);
    /// absent for one that does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

impl Condition {
    pub fn new(type_: &str, status: &str, reason: Option<&str>, message: Option<String>) -> Self {
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.map(String::from),
            message,
            last_transition_time: Some(now_rfc3339()),
            severity: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficTarget>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    #[serde(default = "serving_api_version")]
    pub api_version: String,
    #[serde(default = "revision_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RevisionStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default)]
    pub observed_generation: u64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The image as deployed, pinned to its digest (`NAME@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// Each sidecar's image as deployed, pinned to its digest (Knative's
    /// `status.containerStatuses`; the ingress container's is `imageDigest`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
}

/// One container of a revision as it runs (Knative's `ContainerStatus`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's `name`.
    pub name: String,
    /// Its image pinned to the digest deployed (`NAME@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

impl RevisionStatus {
    /// The manifest digests (`sha256:...`) the revision runs: the ingress container's, then
    /// each sidecar's.
    pub fn pinned_digests(&self) -> Vec<String> {
        self.image_digest
            .iter()
            .chain(
                self.container_statuses
                    .iter()
                    .filter_map(|c| c.image_digest.as_ref()),
            )
            .filter_map(|d| d.rsplit_once('@').map(|(_, d)| d.to_string()))
            .collect()
    }
    /// The pinned image (`NAME@sha256:...`) of sidecar `name`, if recorded.
    pub fn container_digest(&self, name: &str) -> Option<&str> {
        self.container_statuses
            .iter()
            .find(|c| c.name == name)?
            .image_digest
            .as_deref()
    }
}

/// The `Ready` condition's status, if any (`"True"`, `"False"`, `"Unknown"`).
pub fn ready_status(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// Replaces (or adds) the condition of the same type.
pub fn set_condition(conditions: &mut Vec<Condition>, c: Condition) {
    if let Some(old) = conditions.iter_mut().find(|o| o.type_ == c.type_) {
        if old.status == c.status && old.reason == c.reason && old.message == c.message {
            return;
        }
        *old = c;
    } else {
        conditions.push(c);
    }
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Google-style error body: `{"error":{"code":404,"message":"...","status":"NOT_FOUND"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
    pub status: String,
}

/// IAM policy, as Cloud Run's `getIamPolicy`/`setIamPolicy` exchange it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<Binding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    pub role: String,
    #[serde(default)]
    pub members: Vec<String>,
}

impl Policy {
    /// A service is public when `allUsers` holds `roles/run.invoker`.
    pub fn is_public(&self) -> bool {
        self.bindings
            .iter()
            .any(|b| b.role == ROLE_INVOKER && b.members.iter().any(|m| m == ALL_USERS))
    }

    /// Every member that holds `roles/run.invoker`.
    pub fn invokers(&self) -> Vec<String> {
        self.bindings
            .iter()
            .filter(|b| b.role == ROLE_INVOKER)
            .flat_map(|b| b.members.iter().cloned())
            .collect()
    }

    /// Adds or removes `allUsers` as invoker, keeping every other binding.
    pub fn set_public(&mut self, public: bool) {
        if public {
            if self.is_public() {
                return;
            }
            match self.bindings.iter_mut().find(|b| b.role == ROLE_INVOKER) {
                Some(b) => b.members.push(ALL_USERS.to_string()),
                None => self.bindings.push(Binding {
                    role: ROLE_INVOKER.to_string(),
                    members: vec![ALL_USERS.to_string()],
                }),
            }
        } else {
            for b in &mut self.bindings {
                b.members.retain(|m| m != ALL_USERS);
            }
            self.bindings.retain(|b| !b.members.is_empty());
        }
    }
}

/// A service's ingress setting (Cloud Run's `run.googleapis.com/ingress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ingress {
    /// Requests from anywhere.
    #[default]
    All,
    /// Only requests from Skiff's own instances and job tasks; any other gets 404.
    Internal,
    /// Cloud Run's `internal-and-cloud-load-balancing`: internal traffic and a Google Cloud
    /// load balancer's. Skiff has no load balancer of its own, so it is `Internal`'s rule;
    /// kept as written.
    InternalAndCloudLoadBalancing,
}

impl Ingress {
    /// The values [`ANN_INGRESS`] takes.
    pub const VALUES: [&'static str; 3] = ["all", "internal", "internal-and-cloud-load-balancing"];

    /// Parses the annotation's value; an unknown one is an error naming the values there are.
    pub fn parse(s: &str) -> Result<Ingress, crate::InvalidInput> {
        match s {
            "all" => Ok(Ingress::All),
            "internal" => Ok(Ingress::Internal),
            "internal-and-cloud-load-balancing" => Ok(Ingress::InternalAndCloudLoadBalancing),
            _ => Err(crate::InvalidInput::new(format!(
                "invalid ingress {s:?}: use all, internal or internal-and-cloud-load-balancing"
            ))),
        }
    }

    /// The setting of a Service with these annotations ([`ANN_INGRESS`]; `All` without it).
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<Ingress, crate::InvalidInput> {
        annotations
            .get(ANN_INGRESS)
            .map_or(Ok(Ingress::All), |v| Ingress::parse(v))
    }

    /// Whether only Skiff's own instances and jobs may reach the service.
    pub fn internal_only(self) -> bool {
        self != Ingress::All
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Ingress::All => "all",
            Ingress::Internal => "internal",
            Ingress::InternalAndCloudLoadBalancing => "internal-and-cloud-load-balancing",
        }
    }
}

#[cfg(test)]
mod ingress_tests {
    use super::*;

    #[test]
    fn ingress_values_parse_and_others_are_refused() {
        for v in Ingress::VALUES {
            assert_eq!(Ingress::parse(v).unwrap().as_str(), v);
        }
        assert!(!Ingress::All.internal_only());
        assert!(Ingress::Internal.internal_only());
        assert!(Ingress::InternalAndCloudLoadBalancing.internal_only());
        let e = Ingress::parse("public").unwrap_err();
        assert!(e.0.contains("use all, internal"), "{e:?}");
        let mut a = BTreeMap::new();
        assert_eq!(Ingress::of(&a).unwrap(), Ingress::All);
        a.insert(ANN_INGRESS.to_string(), "internal".to_string());
        assert_eq!(Ingress::of(&a).unwrap(), Ingress::Internal);
    }
}
