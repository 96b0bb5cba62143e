//! Control-plane scale: N services of the busybox image deployed with no instance, then the
//! server's memory and the latency of listing and describing them.
//!
//! The services are created through the Knative `services.create` call of Cloud Run's Admin
//! API v1 (`POST /apis/serving.knative.dev/v1/namespaces/default/services`), by CLIENTS
//! clients at once; each deploy starts one instance to check the revision, which stops once
//! idle (`--scale-to-zero-after 1s`). Once every service is Ready and no instance is left, and
//! after a few seconds of quiet, it prints:
//! - the server's RSS (`VmRSS` of `/proc/PID/status`) empty and with N services, and the
//!   difference per service, then again 31 s later (past the server's next heap trim);
//! - p50/p99 of `skiff services list` and `skiff services describe NAME` as users run them
//!   (the CLI process, start to exit);
//! - p50/p99 of the API calls: `namespaces.services.list` without a limit (what gcloud's
//!   `run services list` sends: one call, every item), the same with the `fields` of the CLI's
//!   table, the whole list right after a service changed (no answer kept ready), one page of
//!   it (`limit=500`) and a walk of all pages by `continue`, and `namespaces.services.get`;
//! - the time a restart takes until the API lists all N again, and the RSS after it;
//! - the server's CPU while idle with N services (its timers).
//!
//! `sudo cargo bench -p skiff --bench services_scale [-- N [CLIENTS]]` (defaults 10000 8).

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICES: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";

/// The process's CPU time so far (user + system), from `/proc/PID/stat` fields 14 and 15.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz.max(1))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn name(i: usize) -> String {
    format!("svc-{i:05}")
}

/// p50 and p99 of durations, in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let p = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1000.0
    };
    (p(0.5), p(0.99))
}

/// What a page walk reads of a `ServiceList`: its `metadata.continue`.
#[derive(serde::Deserialize)]
struct Page {
    metadata: PageMeta,
}

#[derive(serde::Deserialize)]
struct PageMeta {
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

struct Api {
    client: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(s: &TestServer) -> Api {
        let token = std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap();
        Api {
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(300))
                .no_proxy()
                .build()
                .unwrap(),
            base: format!("http://127.0.0.1:{}", s.api),
            token: token.trim().to_string(),
        }
    }

    fn get(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get_bytes(path)).unwrap()
    }

    /// The answer's body, read to its end (a call as a client sees it, before its own parse).
    fn get_bytes(&self, path: &str) -> bytes::Bytes {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status();
        let body = r.bytes().unwrap();
        assert!(
            status.is_success(),
            "GET {path}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        body
    }

    /// Replaces the object at `path` with `body`; panics unless it succeeds.
    fn put(&self, path: &str, body: &serde_json::Value) {
        let r = self
            .client
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .unwrap_or_else(|e| panic!("PUT {path}: {e}"));
        let status = r.status();
        assert!(
            status.is_success(),
            "PUT {path}: {status}: {}",
            r.text().unwrap_or_default()
        );
    }

    fn create(&self, svc: &str) -> Result<(), String> {
        let body = serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": svc},
            "spec": {"template": {
                "metadata": {"annotations": {"autoscaling.knative.dev/minScale": "0"}},
                "spec": {"containers": [{"image": "scale"}]}
            }}
        });
        let r = self
            .client
            .post(format!("{}{SERVICES}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .map_err(|e| e.to_string())?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("{}: {}", r.status(), r.text().unwrap_or_default()))
        }
    }
}

/// (ready, failed: `NAME: message`) among the listed services.
fn readiness(list: &serde_json::Value) -> (usize, Vec<String>) {
    let mut ready = 0;
    let mut failed = Vec::new();
    for item in list["items"].as_array().into_iter().flatten() {
        let conds = item["status"]["conditions"].as_array();
        let cond = conds.into_iter().flatten().find(|c| c["type"] == "Ready");
        match cond.and_then(|c| c["status"].as_str()).unwrap_or("") {
            "True" => ready += 1,
            "False" => failed.push(format!(
                "{}: {}",
                item["metadata"]["name"].as_str().unwrap_or(""),
                cond.and_then(|c| c["message"].as_str()).unwrap_or("")
            )),
            _ => {}
        }
    }
    (ready, failed)
}

/// Times `calls` runs of the CLI with `args` (output discarded; each must succeed).
/// p50 and p99 of `calls` runs of the CLI, and the first run's time, in ms.
fn time_cli(s: &TestServer, args: &[&str], calls: usize) -> (f64, f64, f64) {
    let mut v = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        let st = Command::new(&s.bin)
            .args(args)
            .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", s.api))
            .env("SKIFF_DATA_DIR", &s.data_dir)
            .env_remove("SKIFF_TOKEN")
            .env_remove("SKIFF_PROJECT")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        v.push(t.elapsed());
        assert!(st.success(), "skiff {args:?} failed");
    }
    let first = v[0].as_secs_f64() * 1000.0;
    let (p50, p99) = percentiles(v);
    (p50, p99, first)
}

fn time_api(calls: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut v = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    percentiles(v)
}

/// Waits (polling the unpaged list) until all `n` services are Ready and no instance runs.
fn wait_settled(s: &TestServer, api: &Api, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.get(SERVICES);
        let (ready, failed) = readiness(&list);
        assert!(
            failed.is_empty(),
            "{} services not ready, the first: {}\n{}",
            failed.len(),
            failed[0],
            log_tail(s)
        );
        let instances = api.get("/skiff/v1/namespaces/default/instances")["instances"]
            .as_array()
            .map_or(0, |a| a.len());
        if ready == n && instances == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {n} services ready, {instances} instances left after {timeout:?}: {}",
            log_tail(s)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The server log's last 20 lines, newest first, for a failure's message.
fn log_tail(s: &TestServer) -> String {
    s.log()
        .lines()
        .rev()
        .take(20)
        .collect::<Vec<_>>()
        .join("\n")
}

fn main() {
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = nums.first().copied().unwrap_or(10_000);
    let clients = nums.get(1).copied().unwrap_or(8).max(1);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("image"), "scale", &ImageSpec::default());
    let mut s = TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_skiff")),
        // Each deploy's first instance stops soon after it answered; the server's default
        // of instances made ahead of demand (the test kit turns it off unless given).
        &["--scale-to-zero-after", "1s", "--prepared-instances", "8"],
    );
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    let pid = s.pid().expect("server running");
    std::thread::sleep(Duration::from_secs(3));
    let empty = skiff_testkit::server::rss_kib(pid);

    // Deploy: `clients` threads take the next index until all N are created.
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let api = Api::new(&s);
            let next = next.clone();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    return;
                }
                if let Err(e) = api.create(&name(i)) {
                    panic!("create {}: {e}", name(i));
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            eprintln!("{}", log_tail(&s));
            panic!("a deploy failed");
        }
    }
    let created = t.elapsed();
    let api = Api::new(&s);
    // Generous: a deploy's check instance takes tens of ms on a busy 2-core machine.
    wait_settled(&s, &api, n, Duration::from_secs(600 + n as u64 / 5));
    let settled = t.elapsed();
    // Quiet: what the server spends with N idle services (its timers), then its RSS.
    let quiet = Duration::from_secs(10);
    let cpu0 = cpu_time(pid);
    std::thread::sleep(quiet);
    let idle_cpu = (cpu_time(pid) - cpu0).as_secs_f64() / quiet.as_secs_f64() * 100.0;
    let full = skiff_testkit::server::rss_kib(pid);
    println!("services scale: {n} services of the busybox image, no instance, {clients} clients");
    println!(
        "  deploy: all created in {:.1} s ({:.0} services/s), all Ready with no instance after {:.1} s",
        created.as_secs_f64(),
        n as f64 / created.as_secs_f64(),
        settled.as_secs_f64()
    );
    println!(
        "  server RSS: empty {:.1} MiB, with {n} services {:.1} MiB, {:.1} KiB per service",
        mib(empty),
        mib(full),
        full.saturating_sub(empty) as f64 / n as f64
    );
    println!("  server CPU while idle: {idle_cpu:.1} % of one core");
    // The server trims its heap every 5 s: a reading past the next trim, without the spread
    // of where the first fell in that period.
    std::thread::sleep(Duration::from_secs(31));
    let trimmed = skiff_testkit::server::rss_kib(pid);
    println!(
        "  server RSS 31 s later (past a heap trim): {:.1} MiB ({:.1} KiB a service)",
        mib(trimmed),
        trimmed.saturating_sub(empty) as f64 / n as f64
    );

    let last = name(n - 1);
    let calls = 50;
    // The first list with the CLI's `fields` builds the answer the server then keeps.
    let (cl50, cl99, cl1) = time_cli(&s, &["services", "list"], calls);
    println!(
        "  skiff services list (CLI): median {cl50:.1} ms  p99 {cl99:.1} ms  (the first {cl1:.1} ms)"
    );
    let (cd50, cd99, _) = time_cli(&s, &["services", "describe", &last], calls * 2);
    println!("  skiff services describe (CLI): median {cd50:.1} ms  p99 {cd99:.1} ms");
    // The API's figures time the call until its last byte; what each answer holds is
    // checked once, outside the timing.
    let items = |v: &serde_json::Value| v["items"].as_array().map_or(0, |a| a.len());
    assert_eq!(items(&api.get(SERVICES)), n);
    let (al50, al99) = time_api(calls, || drop(api.get_bytes(SERVICES)));
    println!("  API services.list, no limit (gcloud): median {al50:.1} ms  p99 {al99:.1} ms");
    // What `skiff services list` asks: the table's fields.
    let table = format!("{SERVICES}?fields=items(metadata.name,status(url,latestReadyRevisionName,latestCreatedRevisionName,conditions(type,status)))");
    assert_eq!(items(&api.get(&table)), n);
    let (af50, af99) = time_api(calls, || drop(api.get_bytes(&table)));
    println!("  API services.list, the table's fields: median {af50:.1} ms  p99 {af99:.1} ms");
    // The whole list right after a service changed (a label, not timed): built afresh.
    let first_svc = format!("{SERVICES}/{}", name(0));
    let mut after_write = Vec::new();
    for i in 0..20 {
        let mut svc = api.get(&first_svc);
        svc["metadata"]["labels"]["bench-round"] = i.to_string().into();
        api.put(&first_svc, &svc);
        let t = Instant::now();
        let body = api.get_bytes(SERVICES);
        after_write.push(t.elapsed());
        let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            list["items"][0]["metadata"]["labels"]["bench-round"],
            i.to_string(),
            "the list after a write shows it"
        );
    }
    let (aa50, aa99) = percentiles(after_write);
    println!(
        "  API services.list, no limit, right after a write: median {aa50:.1} ms  p99 {aa99:.1} ms"
    );
    let page = 500.min(n);
    let first = format!("{SERVICES}?limit={page}");
    assert_eq!(items(&api.get(&first)), page);
    let (ap50, ap99) = time_api(calls, || drop(api.get_bytes(&first)));
    println!("  API services.list, limit={page}: median {ap50:.1} ms  p99 {ap99:.1} ms");
    // Every page, following `continue`: each service once, in name order.
    let walk = |check: bool| {
        let mut seen = Vec::new();
        let mut cont = String::new();
        loop {
            let q = if cont.is_empty() {
                first.clone()
            } else {
                format!("{first}&continue={cont}")
            };
            let body = api.get_bytes(&q);
            if check {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                for i in v["items"].as_array().into_iter().flatten() {
                    seen.push(i["metadata"]["name"].as_str().unwrap_or("").to_string());
                }
            }
            // Only the token: the items are skipped over, not built.
            let page: Page = serde_json::from_slice(&body).unwrap();
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => cont = c,
                _ => break,
            }
        }
        seen
    };
    let all: Vec<String> = (0..n).map(name).collect();
    assert_eq!(
        walk(true),
        all,
        "the pages hold every service once, in order"
    );
    let (aw50, aw99) = time_api(10, || drop(walk(false)));
    println!("  API services.list, every page of {page}: median {aw50:.1} ms  p99 {aw99:.1} ms");
    let one = format!("{SERVICES}/{last}");
    assert_eq!(api.get(&one)["metadata"]["name"], last.as_str());
    let (ag50, ag99) = time_api(calls * 2, || drop(api.get_bytes(&one)));
    println!("  API services.get: median {ag50:.1} ms  p99 {ag99:.1} ms");

    // A restart: from the server's start until its API lists all N again as Ready (the
    // restore of every revision and route comes first).
    s.stop();
    let t = Instant::now();
    s.restart();
    let api = Api::new(&s);
    wait_settled(&s, &api, n, Duration::from_secs(600));
    let relisted = t.elapsed();
    let pid = s.pid().expect("server running");
    std::thread::sleep(Duration::from_secs(5));
    let restarted = skiff_testkit::server::rss_kib(pid);

    println!(
        "  restart: all {n} listed Ready {:.1} s after the start, RSS {:.1} MiB",
        relisted.as_secs_f64(),
        mib(restarted)
    );
}
