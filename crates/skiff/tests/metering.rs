//! End-to-end tests of pay per use: billing modes as `skiff billing report` shows them, CPU
//! only during requests (read from the instance's cgroup), job tasks billed per attempt,
//! `/metrics` read by a Prometheus parser, and usage that survives `kill -9`.
//! They need root, namespaces, overlayfs and cgroups.

use skiff_metering::{Billing, Report};
use skiff_testkit::TestServer;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn server_with_image(args: &[&str]) -> (TestServer, tempfile::TempDir) {
    TestServer::with_web_image(Path::new(BIN), args)
}

fn deploy(s: &TestServer, service: &str, extra: &[&str]) {
    s.deploy_web(service, extra);
}

fn report(s: &TestServer, args: &[&str]) -> Report {
    let mut a = vec!["billing", "report", "--format", "json"];
    a.extend_from_slice(args);
    serde_json::from_str(&s.ok(&a)).unwrap()
}

/// Billable ms of a report's lines, exactly (the report's seconds are sums of whole 100 ms).
fn billable_ms(r: &Report) -> i64 {
    (r.lines
        .iter()
        .map(|l| l.usage.billable_seconds)
        .sum::<f64>()
        * 1000.0)
        .round() as i64
}

/// Waits past the next usage checkpoint.
fn checkpointed() {
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn request_based_bills_requests_and_instance_based_the_whole_life() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "perreq", &["--cpu", "1", "--memory", "512Mi"]);
    deploy(
        &s,
        "always",
        &["--cpu", "1", "--memory", "512Mi", "--no-cpu-throttling"],
    );
    let started = Instant::now();
    for _ in 0..10 {
        let (code, body) = s.get("perreq.localhost", "/cgi-bin/sleep?0.25", None);
        assert_eq!((code, body.trim()), (200, "slept"), "{}", s.log());
        // Apart, so that each request is a billable interval of its own.
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _) = s.get("always.localhost", "/", None);
    assert_eq!(code, 200);
    checkpointed();
    let alive_ms = started.elapsed().as_millis() as i64;

    let r = report(&s, &["--service", "perreq"]);
    assert_eq!(r.lines.len(), 1, "{r:?}");
    let l = &r.lines[0];
    assert_eq!((l.usage.requests, l.billing), (10, Billing::Request));
    let ms = billable_ms(&r);
    // Ten requests of 250 ms each round to 300 ms; the start-up (with the deploy's warm-up)
    // adds its own interval. A slow machine may push a request past 300 ms, never below.
    assert_eq!(ms % 100, 0, "{ms}");
    assert!((3_100..=4_500).contains(&ms), "billable {ms} ms");
    assert!(
        (l.usage.vcpu_seconds - ms as f64 / 1000.0).abs() < 1e-6,
        "{l:?}"
    );
    assert!(
        (l.usage.gib_seconds - ms as f64 / 2000.0).abs() < 1e-6,
        "{l:?}"
    );
    let want = ms as f64 / 1000.0 * (0.000024 + 0.5 * 0.0000025) + 10.0 * 0.4 / 1e6;
    assert!((l.cost.total - want).abs() < 1e-12, "{l:?}");
    assert!(l.used_cpu_seconds > 0.0 && l.peak_memory_bytes > 0, "{l:?}");

    // Instance-based: billed from the deploy on, requests or not.
    let r = report(&s, &["--service", "always"]);
    let l = &r.lines[0];
    assert_eq!(l.billing, Billing::Instance);
    let ms = billable_ms(&r);
    assert!(
        ms >= alive_ms - 1_000,
        "billable {ms} ms of {alive_ms} ms alive"
    );

    // The table a person reads, and a period with nothing in it.
    let table = s.ok(&["billing", "report"]);
    assert!(
        table.contains("perreq") && table.contains("always"),
        "{table}"
    );
    assert!(table.contains("List price $"), "{table}");
    let r = report(&s, &["--since", "2020-01-01", "--until", "2020-02-01"]);
    assert!(r.lines.is_empty() && r.total == 0.0);
    let e = s.fails(&["billing", "report", "--since", "yesterday"]);
    assert!(e.contains("--since"), "{e}");
}

#[test]
fn an_idle_request_based_instance_gets_almost_no_cpu() {
    let (s, _tmp) = server_with_image(&[]);
    // A busy loop runs beside the web server the whole time.
    let cmd = "(while :; do :; done) & exec httpd -f -p $PORT -h /www";
    for (svc, extra) in [("spin", None), ("spinfull", Some("--no-cpu-throttling"))] {
        let mut args = vec!["--cpu", "1", "--command", "/bin/sh", "--args"];
        let a = format!("-c,{cmd}");
        args.push(&a);
        args.extend(extra);
        deploy(&s, svc, &args);
    }
    let id = |svc: &str| {
        s.instances(svc)[0]["id"]
            .as_str()
            .expect("an instance id")
            .to_string()
    };
    let cpu = |id: &str| skiff_runtime::cgroup::stats(id).expect("cgroup").cpu_ns;
    let (spin, full) = (id("spin"), id("spinfull"));
    let window = Duration::from_millis(1000);

    let (a, b) = (cpu(&spin), cpu(&full));
    std::thread::sleep(window);
    let idle = cpu(&spin) - a;
    let unthrottled = cpu(&full) - b;

    let port = s.ingress;
    let req = std::thread::spawn(move || {
        skiff_testkit::http_get(port, "spin.localhost", "/cgi-bin/sleep?2", None)
    });
    std::thread::sleep(Duration::from_millis(400));
    let a = cpu(&spin);
    std::thread::sleep(window);
    let busy = cpu(&spin) - a;
    assert_eq!(req.join().unwrap().0, 200);

    let ms = |ns: u64| ns as f64 / 1e6;
    eprintln!(
        "cpu in {window:?}: idle {:.1} ms, during a request {:.1} ms, never throttled {:.1} ms",
        ms(idle),
        ms(busy),
        ms(unthrottled)
    );
    // Throttled to 1 % of a CPU while idle; the full share during a request, as the
    // instance-based one has all the time.
    assert!(idle * 10 < busy, "idle {idle} ns, busy {busy} ns");
    assert!(
        idle * 10 < unthrottled,
        "idle {idle} ns, unthrottled {unthrottled} ns"
    );
}

#[test]
fn job_tasks_are_billed_per_attempt_at_the_configured_prices() {
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.yaml");
    std::fs::write(
        &prices,
        "requestBased: {vcpuSecond: 0.001, gibSecond: 0.0001, millionRequests: 1}\n\
         instanceBased: {vcpuSecond: 0.002, gibSecond: 0.0002, millionRequests: 0}\n\
         freeTier: {vcpuSeconds: 0, gibSeconds: 0, requests: 0}\n",
    )
    .unwrap();
    // A price file with a mistake stops the server before it starts, naming the field.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "requestBased: {vcpuSecond: cheap}\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "server",
            "--ingress",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--prices",
        ])
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--prices") && err.contains("vcpuSecond"),
        "{err}"
    );

    let (s, _tmp) = server_with_image(&["--prices", prices.to_str().unwrap()]);
    // Task 1 fails its first attempt.
    let script = "sleep 0.2; [ $CLOUD_RUN_TASK_INDEX = 1 ] && [ $CLOUD_RUN_TASK_ATTEMPT = 0 ] && exit 1; exit 0";
    s.ok(&[
        "jobs",
        "create",
        "nightly",
        "--image",
        "web",
        "--tasks",
        "2",
        "--max-retries",
        "1",
        "--cpu",
        "2",
        "--memory",
        "1Gi",
        "--command",
        "/bin/sh",
        "--args",
        &format!("-c,{script}"),
    ]);
    s.ok(&["jobs", "execute", "nightly", "--wait"]);
    checkpointed();
    let r = report(&s, &["--job", "nightly"]);
    assert_eq!(r.lines.len(), 1, "{r:?}");
    let l = &r.lines[0];
    assert_eq!(
        (l.instances, l.billing, l.usage.requests),
        (3, Billing::Instance, 0)
    );
    let ms = billable_ms(&r);
    assert_eq!(ms % 100, 0);
    assert!(ms >= 3 * 200, "billable {ms} ms");
    assert!((l.usage.vcpu_seconds - 2.0 * ms as f64 / 1000.0).abs() < 1e-6);
    assert!((l.usage.gib_seconds - ms as f64 / 1000.0).abs() < 1e-6);
    assert!(r.instance_based.billable_seconds > 0.0 && r.request_based.billable_seconds == 0.0);
    let want = l.usage.vcpu_seconds * 0.002 + l.usage.gib_seconds * 0.0002;
    assert!((l.cost.total - want).abs() < 1e-12, "{l:?}");
    assert_eq!((r.free_tier, r.total), (0.0, r.cost));
}

#[test]
fn metrics_count_the_requests_sent() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "counted", &[]);
    for _ in 0..7 {
        assert_eq!(s.get("counted.localhost", "/", None).0, 200);
    }
    for _ in 0..3 {
        assert_eq!(s.get("counted.localhost", "/missing", None).0, 404);
    }
    checkpointed();
    let (code, text) = s.api("GET", "/metrics", None);
    assert_eq!(code, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|x| {
                x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
            })
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let svc = ("service_name", "counted");
    assert_eq!(
        value("run_request_count", &[svc, ("response_code_class", "2xx")]),
        7.0
    );
    assert_eq!(
        value("run_request_count", &[svc, ("response_code_class", "4xx")]),
        3.0
    );
    assert_eq!(
        value("run_container_instance_count", &[svc, ("state", "idle")]),
        1.0
    );
    assert!(value("run_container_billable_instance_time", &[svc]) > 0.0);
    let latencies = scrape
        .samples
        .iter()
        .find(|x| x.metric == "run_request_latencies_count" || x.metric == "run_request_latencies")
        .expect("a latency histogram");
    assert!(latencies.labels.get("service_name") == Some("counted"));
    // Without the admin token, nothing.
    let plain = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let r = plain
        .get(format!("http://127.0.0.1:{}/metrics", s.api))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[test]
fn recorded_usage_survives_kill_9_and_reports_stay_the_same() {
    let (mut s, _tmp) = server_with_image(&[]);
    let since = chrono::Utc::now().to_rfc3339();
    deploy(&s, "steady", &["--no-cpu-throttling"]);
    for _ in 0..3 {
        assert_eq!(s.get("steady.localhost", "/", None).0, 200);
    }
    std::thread::sleep(Duration::from_millis(2500));
    let before = report(&s, &["--service", "steady"]);
    s.kill9();
    s.restart();
    let until = chrono::Utc::now().to_rfc3339();
    let period = ["--service", "steady", "--since", &since, "--until", &until];
    let after = report(&s, &period);
    assert_eq!(after.lines.len(), 1, "{after:?}\n{}", s.log());
    assert_eq!(after.lines[0].usage.requests, 3);
    // The open interval ended at the last checkpoint: nothing recorded was lost.
    assert!(
        billable_ms(&after) >= billable_ms(&before),
        "{before:?}\n{after:?}"
    );
    assert_eq!(billable_ms(&after) % 100, 0);
    // The same period, the same report.
    checkpointed();
    assert_eq!(report(&s, &period), after);
}
