//! Prometheus metrics, named as Cloud Run's own are when Google's managed Prometheus exports
//! them (`run.googleapis.com/request_count` → `run_request_count`), with the
//! resource labels as labels (`project_id`, `service_name`, `revision_name`, `job_name`).
//! What Cloud Run has no metric for is named `skiff_*`.
//!
//! The request path holds a [`RevisionMetrics`] per revision: recording a request is two
//! atomic adds, no label lookup.

use crate::registry::Checkpoint;
use crate::Kind;
use prometheus::{
    CounterVec, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGaugeVec, Opts, TextEncoder,
};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

const REV: &[&str] = &["project_id", "service_name", "revision_name"];
const USAGE: &[&str] = &["project_id", "service_name", "revision_name", "job_name"];
/// Milliseconds, as Cloud Run's latency distributions.
const LATENCY_BUCKETS_MS: &[f64] = &[
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    3_600_000.0,
];

pub struct Metrics {
    registry: prometheus::Registry,
    requests: IntCounterVec,
    latencies: HistogramVec,
    startup: HistogramVec,
    instances: IntGaugeVec,
    pending: IntGaugeVec,
    billable: CounterVec,
    cpu_allocation: CounterVec,
    cpu_usage: CounterVec,
    memory_peak: GaugeVec,
    sent_bytes: CounterVec,
    received_bytes: CounterVec,
}

/// One revision's request metrics. Each series is made on its first use and then held, so
/// recording a request is two atomic adds with no label lookup, and a revision that never
/// served a request or started an instance (most of 10 000 idle services) holds no series
/// (a series holds its labels, a histogram also a count for each of its 17 buckets).
pub struct RevisionMetrics {
    requests: IntCounterVec,
    latencies: HistogramVec,
    startups: HistogramVec,
    /// `project_id`, `service_name`, `revision_name`.
    labels: [String; 3],
    classes: [OnceLock<IntCounter>; 5],
    latency: OnceLock<Histogram>,
    startup: OnceLock<Histogram>,
}

impl RevisionMetrics {
    fn labels(&self) -> [&str; 3] {
        [&self.labels[0], &self.labels[1], &self.labels[2]]
    }

    /// A request answered with `status` after `elapsed`.
    pub fn request(&self, status: u16, elapsed: Duration) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[&self.labels()[..], &[CLASSES[class]]].concat())
            })
            .inc();
        self.latency
            .get_or_init(|| self.latencies.with_label_values(&self.labels()))
            .observe(elapsed.as_secs_f64() * 1000.0);
    }

    /// An instance answered its startup probe `elapsed` after it was started.
    pub fn started(&self, elapsed: Duration) {
        self.startup
            .get_or_init(|| self.startups.with_label_values(&self.labels()))
            .observe(elapsed.as_secs_f64() * 1000.0);
    }
}

/// How many instances of a revision are in one state, for [`Metrics::set_instances`].
pub struct InstanceCount<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    pub revision: &'a str,
    /// `starting`, `active` (a request in flight), `idle` or `draining`.
    pub state: &'static str,
    pub count: i64,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &prometheus::Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = prometheus::Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                CounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histogram = |name: &str, help: &str| {
            let o = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS_MS.to_vec());
            register(&r, HistogramVec::new(o, REV).expect("valid"))
        };
        Metrics {
            requests: register(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "run_request_count",
                        "Requests that reached a revision, by response code class.",
                    ),
                    &[REV, &["response_code_class"]].concat(),
                )
                .expect("valid"),
            ),
            latencies: histogram(
                "run_request_latencies",
                "Time from a request's arrival to the end of its response, in milliseconds.",
            ),
            startup: histogram(
                "run_container_startup_latencies",
                "Time from an instance's start to its startup probe's success (one per cold start), in milliseconds.",
            ),
            instances: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "run_container_instance_count",
                        "Instances by state: starting, active (a request in flight), idle, draining.",
                    ),
                    &[REV, &["state"]].concat(),
                )
                .expect("valid"),
            ),
            pending: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "skiff_pending_requests",
                        "Requests waiting in a revision's queue for a free instance slot.",
                    ),
                    REV,
                )
                .expect("valid"),
            ),
            billable: counter(
                "run_container_billable_instance_time",
                "Billable instance time, in seconds (each billable interval rounded up to 100 ms).",
                USAGE,
            ),
            cpu_allocation: counter(
                "run_container_cpu_allocation_time",
                "Billable CPU: billable time times the CPU limit, in vCPU-seconds.",
                USAGE,
            ),
            sent_bytes: counter(
                "run_container_network_sent_bytes_count",
                "Bytes the instances sent over their network interfaces.",
                USAGE,
            ),
            received_bytes: counter(
                "run_container_network_received_bytes_count",
                "Bytes the instances received over their network interfaces.",
                USAGE,
            ),
            cpu_usage: counter(
                "skiff_container_cpu_usage_seconds",
                "CPU time the instances' cgroups consumed, in seconds.",
                USAGE,
            ),
            memory_peak: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "skiff_container_memory_peak_bytes",
                        "Largest peak memory among the live instances, from their cgroups.",
                    ),
                    USAGE,
                )
                .expect("valid"),
            ),
            registry: r,
        }
    }

    /// The handles of one revision's request metrics.
    pub fn revision(&self, namespace: &str, service: &str, revision: &str) -> RevisionMetrics {
        RevisionMetrics {
            requests: self.requests.clone(),
            latencies: self.latencies.clone(),
            startups: self.startup.clone(),
            labels: [namespace.into(), service.into(), revision.into()],
            classes: Default::default(),
            latency: OnceLock::new(),
            startup: OnceLock::new(),
        }
    }

    /// Drops a removed revision's series.
    pub fn forget_revision(&self, namespace: &str, service: &str, revision: &str) {
        let l = [namespace, service, revision];
        for c in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let _ = self.requests.remove_label_values(&[&l[..], &[c]].concat());
        }
        let _ = self.latencies.remove_label_values(&l);
        let _ = self.startup.remove_label_values(&l);
        let _ = self.pending.remove_label_values(&l);
    }

    /// Replaces the instance counts and queue depths with what the serving plane has now.
    pub fn set_instances(&self, counts: &[InstanceCount<'_>], pending: &[(&str, &str, &str, i64)]) {
        self.instances.reset();
        for c in counts {
            self.instances
                .with_label_values(&[c.namespace, c.service, c.revision, c.state])
                .set(c.count);
        }
        self.pending.reset();
        for (ns, svc, rev, n) in pending {
            self.pending.with_label_values(&[*ns, *svc, *rev]).set(*n);
        }
    }

    /// Adds what a checkpoint accrued.
    pub fn record(&self, cp: &Checkpoint) {
        let mut peaks: HashMap<[&str; 4], f64> = HashMap::new();
        for u in &cp.instances {
            let i = &u.info;
            let l = match i.kind {
                Kind::Service => [i.namespace.as_str(), &i.owner, &i.revision, ""],
                Kind::Job => [i.namespace.as_str(), "", "", &i.owner],
            };
            let billable_ms: i64 = u.minutes.iter().map(|m| m.billable_ms).sum();
            let cpu_ns: u64 = u.minutes.iter().map(|m| m.cpu_ns).sum();
            let secs = billable_ms as f64 / 1000.0;
            if secs > 0.0 {
                self.billable.with_label_values(&l).inc_by(secs);
                self.cpu_allocation
                    .with_label_values(&l)
                    .inc_by(secs * i.cpu_millis as f64 / 1000.0);
            }
            let sent: u64 = u.minutes.iter().map(|m| m.sent_bytes).sum();
            let received: u64 = u.minutes.iter().map(|m| m.received_bytes).sum();
            if sent > 0 {
                self.sent_bytes.with_label_values(&l).inc_by(sent as f64);
            }
            if received > 0 {
                self.received_bytes
                    .with_label_values(&l)
                    .inc_by(received as f64);
            }
            if cpu_ns > 0 {
                self.cpu_usage
                    .with_label_values(&l)
                    .inc_by(cpu_ns as f64 / 1e9);
            }
            if u.ended_ms.is_none() {
                let p = peaks.entry(l).or_default();
                *p = p.max(u.memory_peak_bytes as f64);
            }
        }
        self.memory_peak.reset();
        for (l, p) in peaks {
            self.memory_peak.with_label_values(&l).set(p);
        }
    }

    /// The text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{InstanceInfo, InstanceUsage, MinuteUsage};
    use crate::Billing;

    #[test]
    fn an_idle_revision_holds_no_series() {
        let m = Metrics::new();
        let r = m.revision("default", "idle", "idle-00001-abc");
        assert!(!m.render().contains("idle-00001-abc"));
        r.started(Duration::from_millis(25));
        let text = m.render();
        assert!(text.contains("run_container_startup_latencies_count{project_id=\"default\",revision_name=\"idle-00001-abc\",service_name=\"idle\"} 1"), "{text}");
        assert!(!text.contains("run_request_count{"), "{text}");
        r.request(200, Duration::from_millis(3));
        r.request(200, Duration::from_millis(3));
        let text = m.render();
        assert!(text.contains("run_request_count{project_id=\"default\",response_code_class=\"2xx\",revision_name=\"idle-00001-abc\",service_name=\"idle\"} 2"), "{text}");
        assert!(!text.contains("response_code_class=\"5xx\""), "{text}");
    }

    #[test]
    fn renders_what_a_prometheus_parser_reads() {
        let m = Metrics::new();
        let r = m.revision("default", "hello", "hello-00001-abc");
        for status in [200, 200, 204, 404, 503] {
            r.request(status, Duration::from_millis(3));
        }
        r.started(Duration::from_millis(25));
        m.set_instances(
            &[InstanceCount {
                namespace: "default",
                service: "hello",
                revision: "hello-00001-abc",
                state: "idle",
                count: 2,
            }],
            &[("default", "hello", "hello-00001-abc", 4)],
        );
        m.record(&Checkpoint {
            at_ms: 0,
            instances: vec![InstanceUsage {
                info: InstanceInfo {
                    id: "x".into(),
                    namespace: "default".into(),
                    kind: Kind::Job,
                    owner: "nightly".into(),
                    revision: "nightly-abcde".into(),
                    task: Some("0/0".into()),
                    mode: Billing::Instance,
                    cpu_millis: 2000,
                    memory_bytes: 1 << 30,
                },
                started_ms: 0,
                ended_ms: None,
                minutes: vec![MinuteUsage {
                    minute: 0,
                    billable_ms: 1500,
                    requests: 0,
                    cpu_ns: 250_000_000,
                    sent_bytes: 4096,
                    received_bytes: 1024,
                    egress_bytes: 0,
                }],
                rounding: None,
                memory_peak_bytes: 1 << 20,
                changed: true,
            }],
        });
        let text = m.render();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let s = prometheus_parse::Scrape::parse(lines).unwrap();
        let value = |name: &str, label: (&str, &str)| -> f64 {
            s.samples
                .iter()
                .filter(|x| x.metric == name && x.labels.get(label.0) == Some(label.1))
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => 0.0,
                })
                .sum()
        };
        let rc = "run_request_count";
        assert_eq!(value(rc, ("response_code_class", "2xx")), 3.0);
        assert_eq!(value(rc, ("response_code_class", "5xx")), 1.0);
        assert_eq!(
            value("run_container_instance_count", ("state", "idle")),
            2.0
        );
        assert_eq!(
            value("skiff_pending_requests", ("service_name", "hello")),
            4.0
        );
        let b = "run_container_billable_instance_time";
        assert_eq!(value(b, ("job_name", "nightly")), 1.5);
        assert_eq!(
            value("run_container_cpu_allocation_time", ("job_name", "nightly")),
            3.0
        );
        assert_eq!(
            value(
                "run_container_network_sent_bytes_count",
                ("job_name", "nightly")
            ),
            4096.0
        );
        assert_eq!(
            value(
                "run_container_network_received_bytes_count",
                ("job_name", "nightly")
            ),
            1024.0
        );
        assert_eq!(
            value("skiff_container_cpu_usage_seconds", ("job_name", "nightly")),
            0.25
        );
        let hist = s
            .samples
            .iter()
            .find(|x| x.metric == "run_request_latencies")
            .expect("latency histogram");
        match &hist.value {
            prometheus_parse::Value::Histogram(h) => {
                assert_eq!(h.iter().map(|b| b.count).fold(0.0, f64::max), 5.0);
            }
            v => panic!("not a histogram: {v:?}"),
        }
        m.forget_revision("default", "hello", "hello-00001-abc");
        assert!(!m.render().contains("hello-00001-abc\",response_code_class"));
    }
}
