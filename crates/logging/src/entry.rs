//! A stored line as Cloud Logging API v2's `LogEntry`, shaped as Cloud Run writes them:
//! - `logName` `projects/P/logs/run.googleapis.com%2Fstdout` (`stderr`, `requests`,
//!   `varlog%2Fsystem` for the platform's own messages);
//! - `resource` `cloud_run_revision` (labels `service_name`, `revision_name`,
//!   `configuration_name`, `location`, `project_id`) or `cloud_run_job` (`job_name`,
//!   `location`, `project_id`);
//! - `labels`: `instanceId`, and for jobs `run.googleapis.com/execution_name`,
//!   `run.googleapis.com/task_index`, `run.googleapis.com/task_attempt`;
//! - `textPayload`, or `jsonPayload` when the line is a JSON object, with its `severity`
//!   lifted to the entry's and `logging.googleapis.com/labels` merged into `labels`;
//! - `httpRequest` for request entries (severity `ERROR` for 5xx, `WARNING` for 4xx, else
//!   `INFO`);
//! - `timestamp`, `receiveTimestamp`, `insertId` (the line's `seq`, which is also the page
//!   cursor).

use crate::filter::severity_rank;
use crate::record::LogLine;
use serde_json::{json, Map, Value};

/// Cloud Run's one region, as every entry's `resource.labels.location`.
pub const LOCATION: &str = skiff_model::REGION;

/// The `LogEntry` JSON of a stored line.
pub fn to_entry(l: &LogLine) -> Value {
    let s = &l.source;
    let ns = &s.namespace;
    let log = match l.stream.as_str() {
        "stdout" => "run.googleapis.com%2Fstdout",
        "stderr" => "run.googleapis.com%2Fstderr",
        "requests" => "run.googleapis.com%2Frequests",
        _ => "run.googleapis.com%2Fvarlog%2Fsystem",
    };
    let mut labels = Map::new();
    if !s.instance.is_empty() {
        labels.insert("instanceId".into(), json!(s.instance));
    }
    if !s.container.is_empty() {
        labels.insert("container_name".into(), json!(s.container));
    }
    let resource = if s.job.is_empty() {
        json!({"type": "cloud_run_revision", "labels": {
            "service_name": s.service, "revision_name": s.revision,
            "configuration_name": s.service, "location": LOCATION, "project_id": ns,
        }})
    } else {
        labels.insert(
            "run.googleapis.com/execution_name".into(),
            json!(s.execution),
        );
        // Task names end `-taskN` (N the index).
        if let Some(i) = s
            .task
            .rsplit_once("-task")
            .map(|(_, i)| i)
            .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        {
            labels.insert("run.googleapis.com/task_index".into(), json!(i));
        }
        if let Some(a) = s.attempt {
            labels.insert(
                "run.googleapis.com/task_attempt".into(),
                json!(a.to_string()),
            );
        }
        json!({"type": "cloud_run_job", "labels": {
            "job_name": s.job, "location": LOCATION, "project_id": ns,
        }})
    };
    let mut e = Map::new();
    e.insert("insertId".into(), json!(l.seq.to_string()));
    e.insert("logName".into(), json!(format!("projects/{ns}/logs/{log}")));
    e.insert("resource".into(), resource);
    e.insert("timestamp".into(), json!(l.time));
    e.insert("receiveTimestamp".into(), json!(l.time));
    let mut severity = match l.stream.as_str() {
        "system" => "INFO",
        _ => "DEFAULT",
    }
    .to_string();
    if let Some(h) = &l.http_request {
        severity = match h.status {
            500.. => "ERROR",
            400..=499 => "WARNING",
            _ => "INFO",
        }
        .into();
        e.insert("httpRequest".into(), json!(h));
    } else {
        match serde_json::from_str::<Value>(l.line.trim()) {
            Ok(Value::Object(mut payload)) => {
                if let Some(sev) = payload.remove("severity") {
                    let name = sev.as_str().map(str::to_string).unwrap_or(sev.to_string());
                    if let Some(r) = severity_rank(&name) {
                        severity = crate::filter::SEVERITIES
                            .iter()
                            .rev()
                            .find(|(_, v)| *v <= r)
                            .map_or("DEFAULT", |(n, _)| n)
                            .to_string();
                    }
                }
                if let Some(Value::Object(extra)) = payload.remove("logging.googleapis.com/labels")
                {
                    for (k, v) in extra {
                        labels.insert(k, v);
                    }
                }
                e.insert("jsonPayload".into(), Value::Object(payload));
            }
            _ => {
                e.insert("textPayload".into(), json!(l.line));
            }
        }
    }
    e.insert("severity".into(), json!(severity));
    if !labels.is_empty() {
        e.insert("labels".into(), Value::Object(labels));
    }
    Value::Object(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{HttpRequest, LogSource};

    fn line(source: LogSource, stream: &str, text: &str) -> LogLine {
        LogLine {
            seq: 1_796_000_000_000_001,
            time: crate::record::rfc3339_micros(1_796_000_000_000_001),
            source,
            stream: stream.into(),
            line: text.into(),
            http_request: None,
        }
    }

    fn service() -> LogSource {
        LogSource {
            namespace: "demo".into(),
            service: "hello".into(),
            revision: "hello-00001-abc".into(),
            instance: "hello-00001-abc-xyz12".into(),
            ..LogSource::default()
        }
    }

    #[test]
    fn a_service_text_line() {
        let e = to_entry(&line(service(), "stdout", "listening on 8080"));
        assert_eq!(
            e["logName"],
            "projects/demo/logs/run.googleapis.com%2Fstdout"
        );
        assert_eq!(e["resource"]["type"], "cloud_run_revision");
        assert_eq!(e["resource"]["labels"]["service_name"], "hello");
        assert_eq!(e["resource"]["labels"]["revision_name"], "hello-00001-abc");
        assert_eq!(e["resource"]["labels"]["location"], "us-central1");
        assert_eq!(e["labels"]["instanceId"], "hello-00001-abc-xyz12");
        assert_eq!(e["textPayload"], "listening on 8080");
        assert_eq!(e["severity"], "DEFAULT");
        assert_eq!(e["insertId"], "1796000000000001");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'), "{e}");
    }

    #[test]
    fn a_structured_line_lifts_its_severity_and_labels() {
        let e = to_entry(&line(
            service(),
            "stdout",
            r#"{"severity":"warn","message":"disk low","free":12,"logging.googleapis.com/labels":{"user":"ann"}}"#,
        ));
        assert_eq!(e["severity"], "WARNING");
        assert_eq!(e["jsonPayload"], json!({"message": "disk low", "free": 12}));
        assert_eq!(e["labels"]["user"], "ann");
        assert!(e.get("textPayload").is_none());
        let e = to_entry(&line(service(), "stderr", r#"{"severity":"CRITICAL"}"#));
        assert_eq!(e["severity"], "CRITICAL");
        assert_eq!(
            e["logName"],
            "projects/demo/logs/run.googleapis.com%2Fstderr"
        );
        // Not an object: text.
        let e = to_entry(&line(service(), "stdout", "[1,2]"));
        assert_eq!(e["textPayload"], "[1,2]");
    }

    #[test]
    fn a_job_task_line() {
        let src = LogSource {
            namespace: "demo".into(),
            job: "resize".into(),
            execution: "resize-x7k2p".into(),
            task: "resize-x7k2p-task3".into(),
            attempt: Some(1),
            ..LogSource::default()
        };
        let e = to_entry(&line(src, "stdout", "done"));
        assert_eq!(e["resource"]["type"], "cloud_run_job");
        assert_eq!(e["resource"]["labels"]["job_name"], "resize");
        assert_eq!(
            e["labels"]["run.googleapis.com/execution_name"],
            "resize-x7k2p"
        );
        assert_eq!(e["labels"]["run.googleapis.com/task_index"], "3");
        assert_eq!(e["labels"]["run.googleapis.com/task_attempt"], "1");
    }

    #[test]
    fn a_request() {
        let mut l = line(service(), "requests", "GET /x 503");
        l.http_request = Some(HttpRequest {
            request_method: "GET".into(),
            request_url: "http://hello.localhost/x".into(),
            status: 503,
            latency: "0.002000s".into(),
            ..HttpRequest::default()
        });
        let e = to_entry(&l);
        assert_eq!(
            e["logName"],
            "projects/demo/logs/run.googleapis.com%2Frequests"
        );
        assert_eq!(e["severity"], "ERROR");
        assert_eq!(e["httpRequest"]["requestMethod"], "GET");
        assert_eq!(e["httpRequest"]["status"], 503);
        assert_eq!(e["httpRequest"]["latency"], "0.002000s");
    }
}
