//! Pub/Sub end to end: the `skiff pubsub` CLI, Google's Python client
//! (`google-cloud-pubsub`) with `PUBSUB_EMULATOR_HOST` pointing at Skiff and, when it is
//! installed, at Google's own emulator with the same script, and durability across `kill -9`.

use serde_json::{json, Value};
use skiff_testkit::TestServer;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pubsub/client.py");

fn server() -> TestServer {
    TestServer::start(Path::new(BIN), &["--no-instance-network"])
}

/// The Python with `google-cloud-pubsub` that `.ci/run` installs (`SKIFF_PUBSUB_PYTHON`, else
/// `/opt/skiff-ci-venv/bin/python`).
fn python() -> PathBuf {
    let p = std::env::var_os("SKIFF_PUBSUB_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/skiff-ci-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: run .ci/run (it makes a venv with google-cloud-pubsub) or set SKIFF_PUBSUB_PYTHON",
        p.display()
    );
    p
}

fn run_client(host: &str, project: &str) -> (bool, String) {
    let out = Command::new(python())
        .arg(CLIENT)
        .arg(project)
        .env("PUBSUB_EMULATOR_HOST", host)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .expect("run the Python client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("ok"), text)
}

#[test]
fn python_client_against_skiff() {
    let s = server();
    let (ok, text) = run_client(&format!("127.0.0.1:{}", s.pubsub), "demo");
    assert!(ok, "{text}\nserver log:\n{}", s.log());
}

/// Google's emulator, killed with its process group on drop.
struct Emulator(std::process::Child);

impl Drop for Emulator {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

#[test]
fn python_client_against_the_official_emulator() {
    let Ok(gcloud) = which("gcloud") else {
        eprintln!("gcloud is not installed: the emulator comparison does not run");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = tempfile::tempdir().unwrap();
    use std::os::unix::process::CommandExt;
    let child = Command::new(gcloud)
        .args(["beta", "emulators", "pubsub", "start"])
        .arg(format!("--host-port=127.0.0.1:{port}"))
        .arg(format!("--data-dir={}", data.path().display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the emulator");
    let _emulator = Emulator(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !skiff_testkit::listening(port) {
        assert!(Instant::now() < deadline, "the emulator did not listen");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, text) = run_client(&format!("127.0.0.1:{port}"), "demo");
    assert!(ok, "the same script against Google's emulator:\n{text}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.exists())
        })
        .ok_or(())
}

#[test]
fn cli_topics_subscriptions_pull_ack_seek() {
    let s = server();
    assert!(s
        .ok(&["pubsub", "topics", "create", "events"])
        .contains("Created topic [projects/default/topics/events]"));
    let e = s.fails(&["pubsub", "topics", "create", "events"]);
    assert!(e.contains("error: ") && e.contains("already exists"), "{e}");
    let e = s.fails(&["pubsub", "topics", "create", "9bad"]);
    assert!(e.contains("must start with a letter"), "{e}");
    s.ok(&["pubsub", "topics", "create", "dead"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "worker",
        "--topic",
        "events",
        "--ack-deadline",
        "30",
        "--dead-letter-topic",
        "dead",
        "--max-delivery-attempts",
        "5",
        "--min-retry-delay",
        "1s",
        "--max-retry-delay",
        "2s",
        "--retain-acked-messages",
    ]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "red-only",
        "--topic",
        "events",
        "--message-filter",
        "attributes.color = \"red\"",
    ]);
    let e = s.fails(&[
        "pubsub",
        "subscriptions",
        "create",
        "x-bad",
        "--topic",
        "events",
        "--ack-deadline",
        "5",
    ]);
    assert!(e.contains("10 to 600"), "{e}");
    let e = s.fails(&[
        "pubsub",
        "subscriptions",
        "create",
        "x-bad",
        "--topic",
        "events",
        "--message-filter",
        "attributes.a = 1",
    ]);
    assert!(e.contains("Invalid filter"), "{e}");
    let e = s.fails(&[
        "pubsub",
        "subscriptions",
        "create",
        "x-bad",
        "--topic",
        "nope",
    ]);
    assert!(e.contains("Resource not found (resource=nope)"), "{e}");
    let listed = s.ok(&["pubsub", "subscriptions", "list", "--format", "json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let d: Value = serde_json::from_str(&s.ok(&[
        "pubsub",
        "subscriptions",
        "describe",
        "worker",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(d["ackDeadlineSeconds"], 30);
    assert_eq!(d["deadLetterPolicy"]["maxDeliveryAttempts"], 5);
    assert_eq!(d["retryPolicy"]["minimumBackoff"], "1s");
    assert_eq!(d["messageRetentionDuration"], "604800s");

    s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "events",
        "--message",
        "hello",
        "--attribute",
        "color=red,size=2",
        "--ordering-key",
        "k1",
    ]);
    s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "events",
        "--message",
        "blue one",
        "--attribute",
        "color=blue",
    ]);
    // Backlogs and publish requests in /metrics, named after Cloud Monitoring's metrics.
    let (_, metrics) = s.api("GET", "/metrics", None);
    for line in [
        r#"pubsub_subscription_num_undelivered_messages{project_id="default",subscription_id="worker"} 2"#,
        r#"pubsub_subscription_num_undelivered_messages{project_id="default",subscription_id="red-only"} 1"#,
        r#"pubsub_topic_send_request_count{project_id="default",topic_id="events"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(
        metrics.contains(r#"pubsub_subscription_oldest_unacked_message_age{project_id="default",subscription_id="worker"}"#),
        "{metrics}"
    );
    // The filter let only the red message into red-only.
    let red: Value = serde_json::from_str(&s.ok(&[
        "pubsub",
        "subscriptions",
        "pull",
        "red-only",
        "--limit",
        "10",
        "--auto-ack",
        "--format",
        "json",
    ]))
    .unwrap();
    let red = red.as_array().unwrap();
    assert_eq!(red.len(), 1, "{red:?}");
    assert_eq!(red[0]["message"]["attributes"]["color"], "red");
    assert_eq!(red[0]["message"]["orderingKey"], "k1");

    let got: Value = serde_json::from_str(&s.ok(&[
        "pubsub",
        "subscriptions",
        "pull",
        "worker",
        "--limit",
        "10",
        "--format",
        "json",
    ]))
    .unwrap();
    let got = got.as_array().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    // With a dead-letter policy, deliveryAttempt counts.
    assert!(got.iter().all(|r| r["deliveryAttempt"] == 1), "{got:?}");
    let ack_ids: Vec<&str> = got.iter().map(|r| r["ackId"].as_str().unwrap()).collect();
    assert!(s
        .ok(&[
            "pubsub",
            "subscriptions",
            "ack",
            "worker",
            "--ack-ids",
            &ack_ids.join(",")
        ])
        .contains("Acknowledged 2"));
    let none = s.ok(&["pubsub", "subscriptions", "pull", "worker", "--limit", "10"]);
    assert!(none.contains("Listed 0 items."), "{none}");
    // Seek back to the beginning: retained acked messages come again.
    s.ok(&[
        "pubsub",
        "subscriptions",
        "seek",
        "worker",
        "--time",
        "2000-01-01T00:00:00Z",
    ]);
    let again: Value = serde_json::from_str(&s.ok(&[
        "pubsub",
        "subscriptions",
        "pull",
        "worker",
        "--limit",
        "10",
        "--auto-ack",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(again.as_array().unwrap().len(), 2, "{again}");
    let e = s.fails(&[
        "pubsub",
        "subscriptions",
        "seek",
        "worker",
        "--time",
        "yesterday",
    ]);
    assert!(e.contains("invalid --time"), "{e}");

    // Deleting a topic detaches its subscriptions.
    s.ok(&["pubsub", "topics", "delete", "events"]);
    let d: Value = serde_json::from_str(&s.ok(&[
        "pubsub",
        "subscriptions",
        "describe",
        "worker",
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(d["topic"], "_deleted-topic_");
    s.ok(&["pubsub", "subscriptions", "delete", "worker"]);
    let e = s.fails(&["pubsub", "subscriptions", "describe", "worker"]);
    assert!(e.contains("Resource not found (resource=worker)"), "{e}");

    // The same REST API on the control listener needs the admin token; on the Pub/Sub
    // listener a loopback caller needs none.
    let (code, _) = s.api("GET", "/v1/projects/default/topics", None);
    assert_eq!(code, 200);
    let anon = reqwest::blocking::get(format!(
        "http://127.0.0.1:{}/v1/projects/default/topics",
        s.api
    ))
    .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let loopback = reqwest::blocking::get(format!(
        "http://127.0.0.1:{}/v1/projects/default/topics",
        s.pubsub
    ))
    .unwrap();
    assert_eq!(loopback.status().as_u16(), 200);
    let body: Value = loopback.json().unwrap();
    assert_eq!(body["topics"].as_array().unwrap().len(), 1, "{body}");
}

fn rest(port: u16) -> (reqwest::blocking::Client, String) {
    (
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        format!("http://127.0.0.1:{port}/v1/projects/p"),
    )
}

fn post(c: &reqwest::blocking::Client, url: &str, body: Value) -> Result<Value, String> {
    let r = c.post(url).json(&body).send().map_err(|e| e.to_string())?;
    let ok = r.status().is_success();
    let v: Value = r.json().map_err(|e| e.to_string())?;
    if ok {
        Ok(v)
    } else {
        Err(v.to_string())
    }
}

/// Publishes a burst from several threads, acknowledges part of what it pulls, and `kill -9`s
/// the server in the middle. After a restart: every publish that was answered is stored, every
/// message not acknowledged is delivered again, and no acknowledged one is.
#[test]
fn kill9_loses_no_acknowledged_publish_and_redelivers_every_unacked_message() {
    let mut s = server();
    let (c, base) = rest(s.pubsub);
    c.put(format!("{base}/topics/burst"))
        .json(&json!({}))
        .send()
        .unwrap();
    c.put(format!("{base}/subscriptions/all"))
        .json(&json!({"topic": "projects/p/topics/burst", "ackDeadlineSeconds": 600}))
        .send()
        .unwrap();
    let published: Arc<Mutex<HashSet<String>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<String>>> = Arc::default();
    // Acks sent when the server died: committed or not, either outcome is allowed.
    let unanswered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..4 {
        let (published, stop, base) = (published.clone(), stop.clone(), base.clone());
        threads.push(std::thread::spawn(move || {
            let c = reqwest::blocking::Client::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msgs: Vec<Value> = (0..10)
                    .map(|i| json!({"data": "eA==", "attributes": {"t": t.to_string(), "i": (n * 10 + i).to_string()}}))
                    .collect();
                match post(&c, &format!("{base}/topics/burst:publish"), json!({"messages": msgs})) {
                    Ok(v) => {
                        let mut p = published.lock().unwrap();
                        for id in v["messageIds"].as_array().unwrap() {
                            p.insert(id.as_str().unwrap().to_string());
                        }
                    }
                    Err(_) => return,
                }
                n += 1;
            }
        }));
    }
    // An acker: pulls and acknowledges every other message while the burst runs.
    let acker = {
        let (acked, unanswered, stop, base) = (
            acked.clone(),
            unanswered.clone(),
            stop.clone(),
            base.clone(),
        );
        std::thread::spawn(move || {
            let c = reqwest::blocking::Client::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(v) = post(
                    &c,
                    &format!("{base}/subscriptions/all:pull"),
                    json!({"maxMessages": 50, "returnImmediately": true}),
                ) else {
                    return;
                };
                let got = v["receivedMessages"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let half: Vec<&Value> = got.iter().step_by(2).collect();
                if half.is_empty() {
                    continue;
                }
                let ids: Vec<&str> = half.iter().map(|r| r["ackId"].as_str().unwrap()).collect();
                if post(
                    &c,
                    &format!("{base}/subscriptions/all:acknowledge"),
                    json!({"ackIds": ids}),
                )
                .is_ok()
                {
                    let mut a = acked.lock().unwrap();
                    for r in half {
                        a.insert(r["message"]["messageId"].as_str().unwrap().to_string());
                    }
                } else {
                    let mut u = unanswered.lock().unwrap();
                    for r in half {
                        u.insert(r["message"]["messageId"].as_str().unwrap().to_string());
                    }
                    return;
                }
            }
        })
    };
    // Kill once the burst is well under way.
    let deadline = Instant::now() + Duration::from_secs(120);
    while published.lock().unwrap().len() < 2000 || acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "the burst did not get going");
        std::thread::sleep(Duration::from_millis(10));
    }
    s.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    acker.join().unwrap();
    s.restart();
    let published = published.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let unanswered = unanswered.lock().unwrap().clone();
    // Everything after the restart, acknowledged as it comes.
    let mut redelivered: HashSet<String> = HashSet::new();
    let (c, base) = rest(s.pubsub);
    loop {
        let v = post(
            &c,
            &format!("{base}/subscriptions/all:pull"),
            json!({"maxMessages": 1000, "returnImmediately": true}),
        )
        .unwrap();
        let got = v["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if got.is_empty() {
            break;
        }
        let ids: Vec<&str> = got.iter().map(|r| r["ackId"].as_str().unwrap()).collect();
        post(
            &c,
            &format!("{base}/subscriptions/all:acknowledge"),
            json!({"ackIds": ids}),
        )
        .unwrap();
        for r in &got {
            redelivered.insert(r["message"]["messageId"].as_str().unwrap().to_string());
        }
    }
    let again: Vec<&String> = acked.intersection(&redelivered).collect();
    assert!(
        again.is_empty(),
        "{} acknowledged message(s) came again",
        again.len()
    );
    let lost: Vec<&String> = published
        .difference(&acked)
        .filter(|id| !redelivered.contains(*id) && !unanswered.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered publishes were neither acknowledged before the kill nor delivered after it",
        lost.len(),
        published.len()
    );
    eprintln!(
        "kill -9: {} publishes answered, {} acknowledged before the kill, {} delivered after the restart",
        published.len(),
        acked.len(),
        redelivered.len()
    );
}

/// One request a push endpoint got: when, its `Authorization` header and its JSON body.
struct Pushed {
    at: Instant,
    authorization: String,
    body: Value,
}

/// A push endpoint on loopback answering each request with the next status of `script` (the
/// last one repeats), recording what came.
struct Endpoint {
    port: u16,
    got: Arc<Mutex<Vec<Pushed>>>,
}

impl Endpoint {
    fn start(script: &'static [u16]) -> Endpoint {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Pushed>>> = Arc::default();
        let rec = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let (mut len, mut auth) = (0usize, String::new());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap_or(0);
                        } else if k.eq_ignore_ascii_case("authorization") {
                            auth = v.trim().to_string();
                        }
                    }
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let n = {
                    let mut g = rec.lock().unwrap();
                    g.push(Pushed {
                        at: Instant::now(),
                        authorization: auth,
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                    });
                    g.len()
                };
                let status = script[(n - 1).min(script.len() - 1)];
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Endpoint { port, got }
    }

    fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.got.lock().unwrap().len() < n {
            assert!(
                Instant::now() < deadline,
                "the endpoint got {} push(es), not {n}",
                self.got.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The claims of a JWT, unverified.
fn claims(bearer: &str) -> Value {
    use base64::Engine;
    let token = bearer.strip_prefix("Bearer ").unwrap_or_default();
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

#[test]
fn push_retries_with_growing_backoff_until_the_endpoint_acknowledges() {
    let s = server();
    let ep = Endpoint::start(&[500, 500, 200]);
    let url = format!("http://127.0.0.1:{}/push", ep.port);
    s.ok(&["pubsub", "topics", "create", "jobs"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "to-endpoint",
        "--topic",
        "jobs",
        "--push-endpoint",
        &url,
        "--push-auth-service-account",
        "pusher@demo.iam.gserviceaccount.com",
        "--min-retry-delay",
        "1s",
        "--max-retry-delay",
        "60s",
    ]);
    s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "jobs",
        "--message",
        "work",
        "--attribute",
        "k=v",
    ]);
    ep.wait_for(3);
    let got = ep.got.lock().unwrap();
    // The same message three times; backoff 1 s after the first failure, 2 s after the second.
    let ids: Vec<&Value> = got
        .iter()
        .map(|p| &p.body["message"]["messageId"])
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(gap1 >= Duration::from_secs(1), "first retry after {gap1:?}");
    assert!(
        gap2 >= Duration::from_secs(2),
        "second retry after {gap2:?}"
    );
    let b = &got[0].body;
    assert_eq!(
        b["subscription"],
        "projects/default/subscriptions/to-endpoint"
    );
    assert_eq!(b["message"]["data"], "d29yaw==");
    assert_eq!(b["message"]["attributes"]["k"], "v");
    assert_eq!(b["message"]["message_id"], b["message"]["messageId"]);
    assert!(
        b["message"]["publishTime"].as_str().unwrap().ends_with('Z'),
        "{b}"
    );
    assert!(b.get("deliveryAttempt").is_none(), "{b}");
    // An identity token for the push service account, for the endpoint.
    let c = claims(&got[0].authorization);
    assert_eq!(c["sub"], "pusher@demo.iam.gserviceaccount.com", "{c}");
    assert_eq!(c["aud"], url.as_str(), "{c}");
    drop(got);
    // Push results by response class in /metrics.
    let want = [
        r#"pubsub_subscription_push_request_count{project_id="default",response_class="remote_server_5xx",subscription_id="to-endpoint"} 2"#,
        r#"pubsub_subscription_push_request_count{project_id="default",response_class="ack",subscription_id="to-endpoint"} 1"#,
        r#"pubsub_subscription_num_undelivered_messages{project_id="default",subscription_id="to-endpoint"} 0"#,
    ];
    s.wait_for("push results in /metrics", 60, || {
        let (_, m) = s.api("GET", "/metrics", None);
        want.iter().all(|l| m.contains(l))
    });
}

#[test]
fn push_failures_go_to_the_dead_letter_topic_after_max_delivery_attempts() {
    let s = server();
    let ep = Endpoint::start(&[503]);
    let url = format!("http://127.0.0.1:{}/", ep.port);
    s.ok(&["pubsub", "topics", "create", "work"]);
    s.ok(&["pubsub", "topics", "create", "work-dead"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "dead-reader",
        "--topic",
        "work-dead",
    ]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "failing",
        "--topic",
        "work",
        "--push-endpoint",
        &url,
        "--dead-letter-topic",
        "work-dead",
        "--max-delivery-attempts",
        "5",
        "--min-retry-delay",
        "0s",
        "--max-retry-delay",
        "0s",
    ]);
    s.ok(&["pubsub", "topics", "publish", "work", "--message", "doomed"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let dead = loop {
        let v: Value = serde_json::from_str(&s.ok(&[
            "pubsub",
            "subscriptions",
            "pull",
            "dead-reader",
            "--auto-ack",
            "--format",
            "json",
        ]))
        .unwrap();
        if let Some(m) = v.as_array().and_then(|a| a.first()).cloned() {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the dead-letter topic"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(dead["message"]["data"], "ZG9vbWVk");
    let got = ep.got.lock().unwrap();
    let attempts: Vec<i64> = got
        .iter()
        .map(|p| p.body["deliveryAttempt"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
}

#[test]
fn push_reaches_a_private_service_through_the_ingress_with_an_identity_token() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    let account = "pusher@default.iam.gserviceaccount.com";
    s.ok(&["deploy", "sink", "--image", "web", "--max-instances", "1"]);
    s.ok(&[
        "services",
        "add-iam-policy-binding",
        "sink",
        "--member",
        &format!("serviceAccount:{account}"),
        "--role",
        "roles/run.invoker",
    ]);
    // The CGI script appends each pushed body to a file in the instance.
    let endpoint = format!(
        "http://sink.localhost:{}/cgi-bin/sh?cat%3E%3E%2Ftmp%2Fgot%3Becho",
        s.ingress
    );
    s.ok(&["pubsub", "topics", "create", "inbox"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "to-sink",
        "--topic",
        "inbox",
        "--push-endpoint",
        &endpoint,
        "--push-auth-service-account",
        account,
    ]);
    s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "inbox",
        "--message",
        "for the sink",
        "--attribute",
        "a=1",
    ]);
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let (code, body) = s.get(
            "sink.localhost",
            "/cgi-bin/sh?cat%20%2Ftmp%2Fgot",
            Some(&token),
        );
        if code == 200 && body.contains("messageId") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the sink got no push: {code} {body}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let envelope: Value = serde_json::from_str(got.trim()).expect("one envelope");
    assert_eq!(
        envelope["subscription"],
        "projects/default/subscriptions/to-sink"
    );
    assert_eq!(envelope["message"]["data"], "Zm9yIHRoZSBzaW5r");
    assert_eq!(envelope["message"]["attributes"]["a"], "1");
    // Without a token, the private service refuses (so the push above carried a valid one).
    let (code, _) = s.get("sink.localhost", "/", None);
    assert_eq!(code, 401);
}

#[test]
fn push_wakes_a_service_scaled_to_zero() {
    let (s, _tmp) = TestServer::with_web_image(
        Path::new(BIN),
        &["--no-instance-network", "--scale-to-zero-after", "1s"],
    );
    s.ok(&[
        "deploy",
        "sink",
        "--image",
        "web",
        "--max-instances",
        "1",
        "--allow-unauthenticated",
    ]);
    s.wait_for("the sink to scale to zero", 60, || {
        s.instances("sink").is_empty()
    });
    // The CGI script writes each pushed body to the container's log (PID 1's stdout), which
    // outlives the instance.
    let endpoint = format!(
        "http://sink.localhost:{}/cgi-bin/sh?cat%3E%2Fproc%2F1%2Ffd%2F1%3Becho",
        s.ingress
    );
    s.ok(&["pubsub", "topics", "create", "wake"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "to-sleeper",
        "--topic",
        "wake",
        "--push-endpoint",
        &endpoint,
    ]);
    assert!(s.instances("sink").is_empty());
    s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "wake",
        "--message",
        "wake up",
    ]);
    s.wait_for("the push to reach the woken service", 120, || {
        s.ok(&["logs", "read", "--service", "sink", "--limit", "100"])
            .contains("d2FrZSB1cA==")
    });
    // Acknowledged by the woken service at the first attempt.
    s.wait_for("the acknowledged push in /metrics", 60, || {
        let (_, m) = s.api("GET", "/metrics", None);
        m.lines().any(|l| {
            l.starts_with("pubsub_subscription_push_request_count")
                && l.contains("to-sleeper")
                && l.contains("response_class=\"ack\"")
                && l.ends_with(" 1")
        })
    });
}

/// A call to the Pub/Sub listener's REST API with a bearer token: `(status, body)`.
fn call_as(s: &TestServer, token: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let c = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{}{path}", s.pubsub);
    let r = c
        .request(method.parse().unwrap(), url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().unwrap_or(Value::Null))
}

#[test]
fn service_account_tokens_get_what_resource_iam_policies_grant() {
    let s = server();
    s.ok(&["pubsub", "topics", "create", "orders"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "billing",
        "--topic",
        "orders",
    ]);
    let pubber = "pubber@default.iam.gserviceaccount.com";
    let token = |sa: &str| {
        s.ok(&[
            "auth",
            "print-identity-token",
            "--impersonate-service-account",
            sa,
        ])
        .trim()
        .to_string()
    };
    let t = token(pubber);
    let publish = json!({"messages": [{"data": "aGk="}]});
    let topic = "/v1/projects/default/topics/orders";
    let (code, body) = call_as(&s, &t, "POST", &format!("{topic}:publish"), publish.clone());
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED", "{body}");
    assert!(body.to_string().contains("pubsub.topics.publish"), "{body}");

    let out = s.ok(&[
        "pubsub",
        "topics",
        "add-iam-policy-binding",
        "orders",
        "--member",
        &format!("serviceAccount:{pubber}"),
        "--role",
        "roles/pubsub.publisher",
    ]);
    assert!(out.contains("roles/pubsub.publisher"), "{out}");
    let policy = s.ok(&[
        "pubsub",
        "topics",
        "get-iam-policy",
        "orders",
        "--format",
        "json",
    ]);
    assert!(policy.contains(pubber), "{policy}");
    // A role Pub/Sub does not have is refused, naming it.
    let e = s.fails(&[
        "pubsub",
        "topics",
        "add-iam-policy-binding",
        "orders",
        "--member",
        &format!("serviceAccount:{pubber}"),
        "--role",
        "roles/run.invoker",
    ]);
    assert!(e.contains("roles/run.invoker"), "{e}");

    let (code, body) = call_as(&s, &t, "POST", &format!("{topic}:publish"), publish.clone());
    assert_eq!(code, 200, "{body}");
    // The publisher role grants publishing only: not pulling, not the project's lists.
    let (code, _) = call_as(
        &s,
        &t,
        "POST",
        "/v1/projects/default/subscriptions/billing:pull",
        json!({"maxMessages": 1, "returnImmediately": true}),
    );
    assert_eq!(code, 403);
    let (code, _) = call_as(&s, &t, "GET", "/v1/projects/default/topics", json!({}));
    assert_eq!(code, 403);
    // testIamPermissions says what the caller holds.
    let (code, body) = call_as(
        &s,
        &t,
        "POST",
        &format!("{topic}:testIamPermissions"),
        json!({"permissions": ["pubsub.topics.publish", "pubsub.topics.delete"]}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["permissions"], json!(["pubsub.topics.publish"]));
    // Another account holds nothing; a token minted for a service's audience is not a
    // Pub/Sub credential.
    let (code, _) = call_as(
        &s,
        &token("other@default.iam.gserviceaccount.com"),
        "POST",
        &format!("{topic}:publish"),
        publish.clone(),
    );
    assert_eq!(code, 403);
    let for_service = s
        .ok(&[
            "auth",
            "print-identity-token",
            "--impersonate-service-account",
            pubber,
            "--audience",
            "http://hello.localhost:8080",
        ])
        .trim()
        .to_string();
    let (code, _) = call_as(
        &s,
        &for_service,
        "POST",
        &format!("{topic}:publish"),
        publish,
    );
    assert_eq!(code, 401);

    // The same rule over gRPC, with Google's client sending the token as metadata.
    let script = r#"
import sys
from google.cloud import pubsub_v1
c = pubsub_v1.PublisherClient()
try:
    c.api.publish(request={"topic": sys.argv[1], "messages": [{"data": b"x"}]},
                  metadata=[("authorization", "Bearer " + sys.argv[2])])
    print("published")
except Exception as e:
    print(type(e).__name__)
"#;
    let grpc = |sa: &str| {
        let out = Command::new(python())
            .args(["-c", script, "projects/default/topics/orders", &token(sa)])
            .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{}", s.pubsub))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(grpc(pubber), "published");
    assert_eq!(
        grpc("other@default.iam.gserviceaccount.com"),
        "PermissionDenied"
    );

    // Removing the binding takes the grant back; a policy survives `kill -9` and a restart.
    s.ok(&[
        "pubsub",
        "topics",
        "remove-iam-policy-binding",
        "orders",
        "--member",
        &format!("serviceAccount:{pubber}"),
        "--role",
        "roles/pubsub.publisher",
    ]);
    assert_eq!(grpc(pubber), "PermissionDenied");
    s.ok(&[
        "pubsub",
        "subscriptions",
        "add-iam-policy-binding",
        "billing",
        "--member",
        &format!("serviceAccount:{pubber}"),
        "--role",
        "roles/pubsub.subscriber",
    ]);
    let t = token(pubber);
    let mut s = s;
    s.kill9();
    s.restart();
    let (code, body) = call_as(
        &s,
        &t,
        "POST",
        "/v1/projects/default/subscriptions/billing:pull",
        json!({"maxMessages": 10, "returnImmediately": true}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["receivedMessages"].as_array().map(Vec::len),
        Some(2),
        "{body}"
    );
}
