//! A steady load of parallel ingress requests on loopback, recording every status code and
//! body, for tests that must see zero failed requests while traffic moves. It is bounded both
//! in requests and in time, so a test that forgets to stop it cannot run forever, and it
//! reports progress so a test can make sure requests ran through each step it takes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One answered (or failed) request: status 0 means no HTTP answer at all (the text says why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    pub body: String,
}

/// A running load: `threads` clients sending `GET path` with `Host: host` back to back.
pub struct Load {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<Outcome>>>,
    handles: Vec<JoinHandle<()>>,
}

/// What a finished load saw.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// Requests that did not get a 200.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.status != 200).collect()
    }

    /// How many 200 answers had exactly this body.
    pub fn count_body(&self, body: &str) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.status == 200 && o.body == body)
            .count()
    }

    /// A one-line summary for assertion messages: totals per status and per body.
    pub fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<(u16, String), usize> = Default::default();
        for o in &self.outcomes {
            let body: String = o.body.chars().take(80).collect();
            *counts.entry((o.status, body)).or_default() += 1;
        }
        let parts: Vec<String> = counts
            .iter()
            .map(|((s, b), n)| format!("{n} x {s} {b:?}"))
            .collect();
        format!("{} requests: {}", self.outcomes.len(), parts.join(", "))
    }
}

impl Load {
    /// Starts the load on the ingress at `127.0.0.1:port`. It stops by itself after
    /// `max_requests` requests in all or after `max_time`, whichever comes first.
    pub fn start(
        port: u16,
        host: &str,
        path: &str,
        threads: usize,
        max_requests: usize,
        max_time: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let deadline = Instant::now() + max_time;
        let handles = (0..threads)
            .map(|_| {
                let (stop, sent, results) = (stop.clone(), sent.clone(), results.clone());
                let url = format!("http://127.0.0.1:{port}{path}");
                let host = host.to_string();
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::builder()
                        .timeout(Duration::from_secs(60))
                        .no_proxy()
                        .build()
                        .unwrap();
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                        if sent.fetch_add(1, Ordering::SeqCst) >= max_requests {
                            break;
                        }
                        let outcome = match client.get(&url).header("Host", &host).send() {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                match r.text() {
                                    Ok(body) => Outcome { status, body },
                                    Err(e) => Outcome {
                                        status: 0,
                                        body: format!("status {status} but the body broke: {e}"),
                                    },
                                }
                            }
                            Err(e) => Outcome {
                                status: 0,
                                body: format!("{e:?}"),
                            },
                        };
                        results.lock().unwrap().push(outcome);
                    }
                })
            })
            .collect();
        Load {
            stop,
            results,
            handles,
        }
    }

    /// Requests finished so far.
    pub fn done(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    /// Waits until `n` more requests than now have finished; panics if that takes longer than
    /// `secs` (the load ended, or the server stopped answering).
    pub fn wait_more(&self, n: usize, secs: u64) {
        let target = self.done() + n;
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.done() < target {
            assert!(
                Instant::now() < deadline,
                "the load did not finish {n} more requests within {secs}s (finished {})",
                self.done()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the load, waits for requests in flight, and returns what every request got.
    pub fn finish(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles {
            h.join().expect("a load thread panicked");
        }
        let outcomes = std::mem::take(&mut *self.results.lock().unwrap());
        Report { outcomes }
    }
}

/// Sends exactly `n` requests over `threads` parallel clients and returns what they got.
pub fn burst(port: u16, host: &str, path: &str, n: usize, threads: usize) -> Report {
    let load = Load::start(port, host, path, threads, n, Duration::from_secs(600));
    for h in &load.handles {
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    load.finish()
}
