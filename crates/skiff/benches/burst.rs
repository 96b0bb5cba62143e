//! Burst from zero: N requests of 100 ms each, all at once, to a service with concurrency 1 and
//! max-instances M. Prints errors, the time until the last response, p50/p99 latency and the
//! peak number of instances, and the median of each step of the instances' starts (from the
//! server's `ready in` log lines). Also prints the server's idle footprint (RSS) with 100 services
//! deployed and no instance running.
//!
//! `sudo cargo bench -p skiff --bench burst [-- REQUESTS [MAX_INSTANCES]]`

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let requests = nums.first().copied().unwrap_or(1000);
    let max = nums.get(1).copied().unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("image"), "burst", &ImageSpec::default());
    let s = TestServer::start(
        Path::new(env!("CARGO_BIN_EXE_skiff")),
        // The burst stands for a thousand clients, but all come from 127.0.0.1: lift the
        // per-client connection limit (256 by default).
        &[
            "--scale-to-zero-after",
            "2s",
            "--max-connections-per-client",
            "0",
            // The server's default (the test kit turns it off unless given).
            "--prepared-instances",
            "8",
        ],
    );
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    s.ok(&[
        "deploy",
        "burst",
        "--image",
        "burst",
        "--allow-unauthenticated",
        "--concurrency",
        "1",
        "--max-instances",
        &max.to_string(),
        "--timeout",
        "60s",
    ]);
    s.wait_for("zero instances", 60, || s.instances("burst").is_empty());

    // Peak instances, sampled from the API while the burst runs.
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        let api = s.api;
        let data_dir = s.data_dir.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
                    .args([
                        "instances",
                        "list",
                        "--service",
                        "burst",
                        "--format",
                        "json",
                    ])
                    .env("SKIFF_API_URL", format!("http://127.0.0.1:{api}"))
                    .env("SKIFF_DATA_DIR", &data_dir)
                    .output();
                if let Ok(o) = out {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                        let n = v["instances"].as_array().map_or(0, |a| a.len()) as u64;
                        peak.fetch_max(n, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let port = s.ingress;
    let start = Instant::now();
    let handles: Vec<_> = (0..requests)
        .map(|_| {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let t = Instant::now();
                    (
                        skiff_testkit::server::status_of(
                            port,
                            "burst.localhost",
                            "/cgi-bin/sleep?0.1",
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
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    latencies.sort();
    let p = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!("burst: {requests} requests of 100 ms at once, concurrency 1, max-instances {max}, from zero");
    println!(
        "  errors {errors}  all served in {:.2} s  p50 {:.0} ms  p99 {:.0} ms  peak instances {}",
        total.as_secs_f64(),
        p(0.5).as_secs_f64() * 1000.0,
        p(0.99).as_secs_f64() * 1000.0,
        peak.load(Ordering::SeqCst)
    );
    println!(
        "  instance starts: {}",
        skiff_testkit::start_step_medians(&s.log())
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
            if seen.len() < 5 && seen.insert(l.split("instance").next().unwrap_or(l).to_string()) {
                println!("  server: {l}");
            }
        }
    }

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
    println!(
        "footprint: server RSS with 100 services and 0 instances: {} MiB",
        skiff_testkit::server::rss_kib(s.pid().unwrap()) / 1024
    );
}
