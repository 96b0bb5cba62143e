//! Reading the newest 100 entries of a long history: the log store against `tail -n 100` of a
//! JSON-lines file of the same size (what the store replaced: every read scanned the file).
//!
//! `cargo bench -p skiff-logging --bench newest_entries -- [MiB]` (default 1024): fills a store
//! with one service's lines until it holds MiB of them, with a few other services' and a job's
//! lines interleaved, writes the same lines to a file, then times 20 reads of each and prints
//! the medians. Also times one execution's newest 100 lines.

use skiff_logging::{Limits, LogLine, LogResource, LogSource, LogStore};
use std::io::Write;
use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let target = mib << 20;
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = LogStore::open(
        &dir.path().join("logs.db"),
        Limits {
            max_bytes_per_resource: u64::MAX / 2,
            ..Limits::default()
        },
    )
    .expect("open the store");
    let file_path = dir.path().join("same.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&file_path).expect("a file"));
    let web = LogResource::Service("web".into());
    let start_us = 1_790_000_000_000_000u64;
    let (mut seq, mut written) = (start_us, 0u64);
    let (mut appending, mut appended) = (Duration::ZERO, 0u64);
    let filled = Instant::now();
    while written < target {
        let mut batch = Vec::with_capacity(10_000);
        for i in 0..10_000u64 {
            seq += 1;
            let (service, job, execution) = match i % 10 {
                0 => ("other", "", ""),
                1 => ("", "batch", if i % 20 == 1 { "batch-a" } else { "batch-b" }),
                _ => ("web", "", ""),
            };
            batch.push(LogLine {
                seq,
                time: skiff_logging::record::rfc3339_micros(seq),
                source: LogSource {
                    namespace: "demo".into(),
                    service: service.into(),
                    revision: if service.is_empty() { String::new() } else { format!("{service}-00001-abc") },
                    instance: if service.is_empty() { String::new() } else { format!("{service}-00001-abc-x1y2z") },
                    job: job.into(),
                    execution: execution.into(),
                    ..LogSource::default()
                },
                stream: "stdout".into(),
                line: format!("GET /api/items/{i} handled in 3 ms by worker {} with a little more text to make a typical line", i % 7),
                http_request: None,
            });
        }
        for l in &batch {
            let mut b = serde_json::to_vec(l).expect("json");
            b.push(b'\n');
            file.write_all(&b).expect("write the file");
        }
        let t = Instant::now();
        store.append(&batch).expect("append");
        appending += t.elapsed();
        appended += batch.len() as u64;
        written = store.size_of("demo", &web).expect("size");
    }
    file.flush().expect("flush");
    drop(file);
    let file_size = std::fs::metadata(&file_path).expect("stat").len();
    eprintln!(
        "filled {} MiB of web's lines ({} MiB file with every line) in {:.0} s",
        written >> 20,
        file_size >> 20,
        filled.elapsed().as_secs_f64()
    );
    println!(
        "appended {appended} lines at {:.0} lines/s (batches of 10 000)",
        appended as f64 / appending.as_secs_f64()
    );

    let rounds = 20;
    let mut store_t = Vec::new();
    let mut exec_t = Vec::new();
    let mut tail_t = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let got = store.tail("demo", &web, None, 100).expect("tail");
        store_t.push(t.elapsed());
        assert_eq!(got.len(), 100);
        let t = Instant::now();
        let got = store
            .tail(
                "demo",
                &LogResource::Job("batch".into()),
                Some("batch-a"),
                100,
            )
            .expect("tail");
        exec_t.push(t.elapsed());
        assert_eq!(got.len(), 100);
        let t = Instant::now();
        let out = std::process::Command::new("tail")
            .args(["-n", "100"])
            .arg(&file_path)
            .output()
            .expect("run tail");
        tail_t.push(t.elapsed());
        assert_eq!(out.stdout.iter().filter(|b| **b == b'\n').count(), 100);
    }
    println!(
        "newest 100 of {} MiB: log store median {:.2} ms; one execution's newest 100: median {:.2} ms; tail -n 100 of a {} MiB file: median {:.2} ms",
        written >> 20,
        median(store_t),
        median(exec_t),
        file_size >> 20,
        median(tail_t)
    );
}
