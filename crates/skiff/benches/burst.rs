//! Burst from zero: N requests of 100 ms each, all at once, to a service with concurrency 1 and
//! max-instances M. Prints errors, the time until the last response, p50/p99 latency and the
//! peak number of instances, and the median of each step of the instances' starts (from the
//! server's `ready in` log lines). Two bursts, each from zero with a service of its own: first
//! an app server that waits out each request without using the CPU (this very binary, with
//! `SKIFF_BURST_APP` set, as the image sets it: one process, a thread per core, as an app in
//! Go, Node or Java serves), then the busybox image's CGI script (`/cgi-bin/sleep?0.1`: httpd
//! forks, and runs `sh`, which runs `sleep`, about 1.5 ms of CPU per request). Also prints
//! the server's idle footprint (RSS) with 100 services deployed and no instance running.
//!
//! `sudo cargo bench -p skiff --bench burst [-- REQUESTS [MAX_INSTANCES] [SERVER FLAGS...]]`:
//! flags after the numbers go to `skiff server` (after the bench's own), to compare settings
//! such as `--network-prepared 0` in one build.

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    if std::env::var_os("SKIFF_BURST_APP").is_some() {
        serve_app();
        return;
    }
    let (nums, flags) = skiff_testkit::bench_args();
    let mut server_args = vec![
        "--scale-to-zero-after",
        "2s",
        // The burst stands for a thousand clients, but all come from 127.0.0.1: lift the
        // per-client connection limit (256 by default).
        "--max-connections-per-client",
        "0",
        // The server's default (the test kit turns it off unless given).
        "--prepared-instances",
        "8",
    ];
    server_args.extend(flags.iter().map(String::as_str));
    let requests = nums.first().copied().unwrap_or(1000);
    let max = nums.get(1).copied().unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(Path::new(env!("CARGO_BIN_EXE_skiff")), &server_args);
    let cgi = busybox_image(&tmp.path().join("image"), "burst", &ImageSpec::default());
    s.ok(&["images", "import", cgi.to_str().unwrap()]);
    let app = ImageSpec::current_exe_app("SKIFF_BURST_APP");
    let app = busybox_image(&tmp.path().join("app"), "burst-app", &app);
    s.ok(&["images", "import", app.to_str().unwrap()]);
    let b = Burst {
        s: &s,
        requests,
        max,
        flags: &flags,
    };
    b.run(
        "burst-app",
        "burst-app",
        "/sleep?0.1",
        "an app server that sleeps through each request",
    );
    b.run(
        "burst",
        "burst",
        "/cgi-bin/sleep?0.1",
        "busybox httpd's CGI, a fork and two execs per request",
    );

    // Footprint: 100 services deployed, all scaled to zero.
    for i in 0..100 {
        s.ok(&["deploy", &format!("idle{i}"), "--image", "burst"]);
    }
    s.wait_for("every instance to stop", 120, || {
        let out = s.ok(&["instances", "list", "--format", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["instances"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
    std::thread::sleep(Duration::from_secs(2));
    let pid = s.pid().unwrap();
    let footprint = |when: &str| {
        let kib = |f| skiff_testkit::server::status_kib(pid, f);
        println!(
            "footprint{when}: server RSS with 100 services and 0 instances: {} MiB (anonymous {:.1}, the executable and other files {:.1})",
            kib("VmRSS") / 1024,
            kib("RssAnon") as f64 / 1024.0,
            kib("RssFile") as f64 / 1024.0,
        );
    };
    footprint("");
    std::thread::sleep(Duration::from_secs(6));
    footprint(" 6 s later (past the server's next heap trim)");
}

/// The app of the first burst: HTTP/1.1 and h2c on `$PORT` (hyper), each request answered
/// `slept` after as many seconds as its query string says (`/sleep?0.1`), the wait a timer,
/// not the CPU.
fn serve_app() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let port: u16 = std::env::var("PORT").unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .unwrap();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let secs = req.uri().query().and_then(|q| q.parse::<f64>().ok());
                        tokio::time::sleep(Duration::from_secs_f64(secs.unwrap_or(0.0))).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"slept\n")),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// One burst's settings: see the crate's documentation.
struct Burst<'a> {
    s: &'a TestServer,
    requests: u64,
    max: u64,
    flags: &'a [String],
}

impl Burst<'_> {
    /// Deploys `service` from `image` and sends the burst to `path` once it has no instance.
    fn run(&self, service: &str, image: &str, path: &'static str, app: &str) {
        let (s, requests, max) = (self.s, self.requests, self.max);
        s.ok(&[
            "deploy",
            service,
            "--image",
            image,
            "--allow-unauthenticated",
            "--concurrency",
            "1",
            "--max-instances",
            &max.to_string(),
            "--timeout",
            "60s",
        ]);
        s.wait_for("zero instances", 60, || s.instances(service).is_empty());
        let log_before = s.log().len();
        // Peak instances, sampled from the API while the burst runs: over one kept-alive
        // connection, not a CLI process per sample, whose start would take CPU from the burst.
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (done, peak) = (done.clone(), peak.clone());
            let url = format!(
                "http://127.0.0.1:{}/skiff/v1/namespaces/default/instances?service={service}",
                s.api
            );
            let token = std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                while !done.load(Ordering::SeqCst) {
                    let listed = client.get(&url).bearer_auth(token.trim()).send();
                    if let Ok(v) = listed.and_then(|r| r.json::<serde_json::Value>()) {
                        let n = v["instances"].as_array().map_or(0, |a| a.len()) as u64;
                        peak.fetch_max(n, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        let port = s.ingress;
        let host: Arc<str> = format!("{service}.localhost").into();
        let cpu_before = cpu_times();
        let window_start = monotonic();
        let start = Instant::now();
        let handles: Vec<_> = (0..requests)
            .map(|_| {
                let host = host.clone();
                std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || {
                        let t = Instant::now();
                        (
                            skiff_testkit::server::status_of(
                                port,
                                &host,
                                path,
                                Duration::from_secs(120),
                            ),
                            t.elapsed(),
                        )
                    })
                    .unwrap()
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut codes = std::collections::BTreeMap::new();
        for h in handles {
            let (code, d) = h.join().unwrap();
            if code != 200 {
                errors += 1;
                *codes.entry(code).or_insert(0) += 1;
            }
            latencies.push(d);
        }
        let total = start.elapsed();
        let cpu_after = cpu_times();
        let window_end = monotonic();
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        latencies.sort();
        let p = |q: f64| {
            latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
        };
        println!("burst: {requests} requests of 100 ms at once, concurrency 1, max-instances {max}, from zero; the app: {app}");
        if !self.flags.is_empty() {
            println!("  server flags: {}", self.flags.join(" "));
        }
        println!(
            "  errors {errors}  all served in {:.2} s  p50 {:.0} ms  p99 {:.0} ms  slowest {:.0} ms  peak instances {}",
            total.as_secs_f64(),
            p(0.5).as_secs_f64() * 1000.0,
            p(0.99).as_secs_f64() * 1000.0,
            p(1.0).as_secs_f64() * 1000.0,
            peak.load(Ordering::SeqCst)
        );
        let (busy, all) = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
        println!(
            "  machine CPU busy during the burst: {:.0} % of {} CPUs ({:.2} CPU-seconds)",
            100.0 * busy as f64 / all.max(1) as f64,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            busy as f64 / clock_ticks()
        );
        // For `perf record -k CLOCK_MONOTONIC -a` beside the bench: `perf report --time A,B`.
        println!("  burst window (CLOCK_MONOTONIC, s): {window_start:.6},{window_end:.6}");
        println!(
            "  instance starts: {}",
            skiff_testkit::start_step_medians(&s.log()[log_before..])
        );
        if errors > 0 {
            // Which answers they were (0: no answer), and what the server said about them.
            println!("  error answers by status: {codes:?}");
            let log = s.log();
            let mut seen = std::collections::BTreeSet::new();
            for l in log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            {
                if seen.len() < 5
                    && seen.insert(l.split("instance").next().unwrap_or(l).to_string())
                {
                    println!("  server: {l}");
                }
            }
        }
        // Its instances hold network addresses: the next burst starts with none left.
        s.wait_for("the burst's instances to stop", 120, || {
            s.instances(service).is_empty()
        });
    }
}

/// The machine's CPU time from `/proc/stat`, in clock ticks: (busy, all).
fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    let all: u64 = ticks.iter().take(8).sum();
    // idle and iowait
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// `CLOCK_MONOTONIC` in seconds (perf's clock with `-k CLOCK_MONOTONIC`).
fn monotonic() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}
