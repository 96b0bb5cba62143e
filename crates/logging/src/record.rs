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

    /// Appends the line's JSON to `out`: the bytes `serde_json::to_writer` gives for it (the
    /// same fields, order and escaping), written field by field. The log writer calls this for
    /// every line it stores, where serde's derived code for the flattened source (a map
    /// serializer and a check per skipped field) cost about 6 000 instructions a line.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let s = &self.source;
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        field(out, "time", &self.time);
        field(out, "namespace", &s.namespace);
        for (name, v) in [
            ("service", &s.service),
            ("revision", &s.revision),
            ("instance", &s.instance),
            ("job", &s.job),
            ("execution", &s.execution),
            ("task", &s.task),
        ] {
            if !v.is_empty() {
                field(out, name, v);
            }
        }
        if let Some(a) = s.attempt {
            out.extend_from_slice(b",\"attempt\":");
            out.extend_from_slice(itoa::Buffer::new().format(a).as_bytes());
        }
        if !s.container.is_empty() {
            field(out, "container", &s.container);
        }
        field(out, "stream", &self.stream);
        field(out, "line", &self.line);
        if let Some(h) = &self.http_request {
            out.extend_from_slice(b",\"httpRequest\":{\"requestMethod\":");
            string(out, &h.request_method);
            field(out, "requestUrl", &h.request_url);
            out.extend_from_slice(b",\"status\":");
            out.extend_from_slice(itoa::Buffer::new().format(h.status).as_bytes());
            if let Some(v) = &h.request_size {
                field(out, "requestSize", v);
            }
            if let Some(v) = &h.response_size {
                field(out, "responseSize", v);
            }
            field(out, "latency", &h.latency);
            for (name, v) in [
                ("remoteIp", &h.remote_ip),
                ("userAgent", &h.user_agent),
                ("protocol", &h.protocol),
            ] {
                if !v.is_empty() {
                    field(out, name, v);
                }
            }
            out.push(b'}');
        }
        out.push(b'}');
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

/// `,"name":` and `v` as a JSON string, after the fields before it.
fn field(out: &mut Vec<u8>, name: &str, v: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    string(out, v);
}

/// `v` as a JSON string: copied between quotes when nothing in it needs escaping (a test over
/// the whole string that the compiler turns into vector instructions), else escaped by
/// serde_json's own routine, which looks the bytes up one at a time.
fn string(out: &mut Vec<u8>, v: &str) {
    let plain = !v.bytes().fold(false, |esc, b| {
        esc | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if plain {
        out.reserve(v.len() + 2);
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
        return;
    }
    use serde::Serializer;
    // Writing to a Vec cannot fail.
    let _ = serde_json::Serializer::new(out).serialize_str(v);
}

/// RFC 3339 (UTC, microseconds) of a time in microseconds since the Unix epoch
/// (`2026-11-30T23:42:38.298951Z`). Every log line gets one: the date and time up to the
/// second come from chrono once per second (per thread), and the microseconds are appended,
/// where formatting all of it each time cost about 1 200 instructions a line.
pub fn rfc3339_micros(us: u64) -> String {
    use std::cell::RefCell;
    thread_local! {
        /// The second last formatted, and its text up to the decimal point.
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let (secs, micros) = (us / 1_000_000, (us % 1_000_000) as u32);
    SECOND.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != secs {
            let mut text = chrono::DateTime::from_timestamp_micros((secs * 1_000_000) as i64)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            text.pop(); // the `Z`
            text.push('.');
            *cell = (secs, text);
        }
        let mut s = String::with_capacity(cell.1.len() + 7);
        s.push_str(&cell.1);
        push_micros(&mut s, micros);
        s.push('Z');
        s
    })
}

/// Appends the microseconds of a second (below 1 000 000) as the six digits after a decimal
/// point (`734` → `000734`), as RFC 3339 times and Cloud Logging's durations write them,
/// without `format!`'s machinery (every log line and request entry has one).
pub fn push_micros(s: &mut String, micros: u32) {
    let mut div = 100_000;
    while div > 0 {
        s.push(char::from(b'0' + (micros / div % 10) as u8));
        div /= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_chronos_rfc3339_with_microseconds() {
        for us in [
            0,
            1,
            999_999,
            1_000_000,
            1_796_082_158_298_951,
            1_796_082_158_000_000,
            1_796_082_158_999_999,
            1_796_082_159_000_001,
            1_796_082_158_298_951, // the same second again, after another
            4_102_444_799_999_999, // 2099-12-31T23:59:59.999999
        ] {
            let want = chrono::DateTime::from_timestamp_micros(us as i64)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(rfc3339_micros(us), want, "{us}");
        }
    }

    #[test]
    fn a_lines_json_is_serdes_byte_for_byte() {
        let tricky =
            "quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f} é 雪 🚀 \u{1b}[0m";
        let full = LogSource {
            namespace: "ns".into(),
            service: "web".into(),
            revision: "web-00001-abc".into(),
            instance: "web-00001-abc-xyz".into(),
            job: "etl".into(),
            execution: "etl-x".into(),
            task: "3".into(),
            attempt: Some(2),
            container: tricky.into(),
        };
        let request = HttpRequest {
            request_method: "POST".into(),
            request_url: format!("http://h/{tricky}"),
            status: 503,
            request_size: Some("12".into()),
            response_size: Some("0".into()),
            latency: "0.000734s".into(),
            remote_ip: "10.0.0.1".into(),
            user_agent: tricky.into(),
            protocol: "HTTP/2.0".into(),
        };
        let sources = [
            full.clone(),
            LogSource {
                namespace: "default".into(),
                ..LogSource::default()
            },
            LogSource {
                attempt: Some(0),
                container: String::new(),
                ..full
            },
        ];
        let requests = [
            None,
            Some(request.clone()),
            Some(HttpRequest {
                request_size: None,
                response_size: None,
                remote_ip: String::new(),
                user_agent: String::new(),
                protocol: String::new(),
                ..request
            }),
        ];
        for source in &sources {
            for http_request in &requests {
                for line in ["", "plain", tricky] {
                    let l = LogLine {
                        seq: 1_796_082_158_298_951,
                        time: rfc3339_micros(1_796_082_158_298_951),
                        source: source.clone(),
                        stream: "requests".into(),
                        line: line.into(),
                        http_request: http_request.clone(),
                    };
                    let mut ours = Vec::new();
                    l.write_json(&mut ours);
                    let theirs = serde_json::to_vec(&l).unwrap();
                    assert_eq!(
                        String::from_utf8(ours).unwrap(),
                        String::from_utf8(theirs).unwrap()
                    );
                }
            }
        }
    }
}
