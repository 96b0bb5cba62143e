//! One stored log line and where it came from.

use serde::{Deserialize, Serialize};

/// Where a log line comes from: a service's instance or a job's task attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSource {
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub execution: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u64>,
    /// The container that wrote the line, in an instance with sidecars (empty otherwise).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
}

/// The resource whose logs are read: a service or a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogResource {
    Service(String),
    Job(String),
}

impl LogResource {
    /// The resource's name (service or job).
    pub fn name(&self) -> &str {
        match self {
            LogResource::Service(n) | LogResource::Job(n) => n,
        }
    }
}

/// What one request looked like, as Cloud Logging's `HttpRequest` has it (camelCase JSON:
/// `requestMethod`, `requestUrl`, `status`, `requestSize` and `responseSize` in bytes as
/// strings, `latency` as seconds with an `s` suffix, `remoteIp`, `userAgent`, `protocol`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequest {
    pub request_method: String,
    pub request_url: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_size: Option<String>,
    /// `"0.012345s"`.
    pub latency: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote_ip: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
}

/// One stored line: a container's output line (`stream` `stdout`, `stderr`), a platform
/// message (`system`) or a request (`requests`, with [`HttpRequest`]). `seq` is unique,
/// increasing, and the time the line was taken in as microseconds since the Unix epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    /// RFC 3339, UTC, microseconds: the same instant as `seq`.
    pub time: String,
    #[serde(flatten)]
    pub source: LogSource,
    pub stream: String,
    pub line: String,
    #[serde(
        default,
        rename = "httpRequest",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_request: Option<HttpRequest>,
}

impl LogLine {
    /// Whether the line belongs to `resource` in `ns` (and to `execution`, when given).
    pub fn matches(&self, ns: &str, resource: &LogResource, execution: Option<&str>) -> bool {
        let s = &self.source;
        s.namespace == ns
            && match resource {
                LogResource::Service(name) => s.job.is_empty() && &s.service == name,
                LogResource::Job(name) => &s.job == name,
            }
            && execution.is_none_or(|e| s.execution == e)
    }

    /// The service or job the line belongs to.
    pub fn resource(&self) -> LogResource {
        if self.source.job.is_empty() {
            LogResource::Service(self.source.service.clone())
        } else {
            LogResource::Job(self.source.job.clone())
        }
    }
}

/// RFC 3339 (UTC, microseconds) of a time in microseconds since the Unix epoch.
pub fn rfc3339_micros(us: u64) -> String {
    chrono::DateTime::from_timestamp_micros(us as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
