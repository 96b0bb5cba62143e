//! Eventarc-style triggers end to end: `skiff triggers` and the Eventarc v1 API, a Pub/Sub
//! trigger delivering a published message to a private service as a CloudEvent in binary
//! content mode, and refusals that create nothing.

use serde_json::Value;
use skiff_testkit::TestServer;
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// The subscription names of the project.
fn subscriptions(s: &TestServer) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&s.ok(&["pubsub", "subscriptions", "list", "--format", "json"]))
            .unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn topics(s: &TestServer) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&s.ok(&["pubsub", "topics", "list", "--format", "json"])).unwrap();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn pubsub_trigger_delivers_a_binary_cloudevent_to_a_private_service() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    let account = "events@default.iam.gserviceaccount.com";
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
    s.ok(&["pubsub", "topics", "create", "orders"]);
    // The CGI script appends the request's environment (headers as HTTP_*) and body to a file.
    s.ok(&[
        "triggers",
        "create",
        "on-order",
        "--destination-run-service",
        "sink",
        "--destination-run-path",
        "/cgi-bin/sh?env%3E%3E%2Ftmp%2Fgot%3Bcat%3E%3E%2Ftmp%2Fgot%3Becho",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
        "--transport-topic",
        "projects/default/topics/orders",
        "--service-account",
        account,
    ]);
    let t: Value =
        serde_json::from_str(&s.ok(&["triggers", "describe", "on-order", "--format", "json"]))
            .unwrap();
    assert_eq!(
        t["name"],
        "projects/default/locations/us-central1/triggers/on-order"
    );
    assert_eq!(t["serviceAccount"], account);
    assert_eq!(t["destination"]["cloudRun"]["service"], "sink");
    assert_eq!(
        t["transport"]["pubsub"]["topic"],
        "projects/default/topics/orders"
    );
    let sub = t["transport"]["pubsub"]["subscription"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(sub.starts_with("projects/default/subscriptions/eventarc-us-central1-on-order-sub-"));
    assert!(subscriptions(&s).contains(&sub));
    assert!(!t["uid"].as_str().unwrap().is_empty());
    assert!(!t["etag"].as_str().unwrap().is_empty());
    let listed = s.ok(&["triggers", "list"]);
    assert!(
        listed.contains("on-order") && listed.contains("sink"),
        "{listed}"
    );

    let published = s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "orders",
        "--message",
        "order 7",
    ]);
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let (code, body) = s.get(
            "sink.localhost",
            "/cgi-bin/sh?cat%20%2Ftmp%2Fgot",
            Some(&token),
        );
        if code == 200 && body.contains("\"subscription\"") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the sink got no event: {code} {body}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let header = |name: &str| {
        got.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {got}"))
            .to_string()
    };
    let id = header("HTTP_CE_ID");
    assert!(published.contains(&id), "{id} not in {published}");
    assert_eq!(
        header("HTTP_CE_SOURCE"),
        "//pubsub.googleapis.com/projects/default/topics/orders"
    );
    assert_eq!(
        header("HTTP_CE_TYPE"),
        "google.cloud.pubsub.topic.v1.messagePublished"
    );
    assert_eq!(header("HTTP_CE_SPECVERSION"), "1.0");
    let time = header("HTTP_CE_TIME");
    assert!(chrono_like(&time), "{time}");
    assert!(!got.contains("HTTP_CE_SUBJECT"), "{got}");
    assert_eq!(header("CONTENT_TYPE"), "application/json");
    let body_line = got.lines().find(|l| l.starts_with('{')).expect("the body");
    let body: Value = serde_json::from_str(body_line).expect("a JSON body");
    assert_eq!(body["subscription"], sub);
    assert_eq!(body["message"]["data"], "b3JkZXIgNw==");
    assert_eq!(body["message"]["messageId"], id);
    // Without a token the private service refuses, so the delivery carried a valid one.
    let (code, _) = s.get("sink.localhost", "/", None);
    assert_eq!(code, 401);

    s.ok(&["triggers", "delete", "on-order"]);
    assert!(
        !subscriptions(&s).contains(&sub),
        "the subscription outlived its trigger"
    );
    assert!(topics(&s).contains(&"projects/default/topics/orders".to_string()));
    let err = s.fails(&["triggers", "describe", "on-order"]);
    assert!(err.contains("not found"), "{err}");
}

/// `2026-01-02T03:04:05.678Z`-shaped.
fn chrono_like(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

#[test]
fn trigger_without_transport_topic_creates_one_and_delete_removes_both() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    s.ok(&["deploy", "sink", "--image", "web", "--max-instances", "1"]);
    s.ok(&[
        "triggers",
        "create",
        "auto",
        "--destination-run-service",
        "sink",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
    ]);
    let t: Value =
        serde_json::from_str(&s.ok(&["triggers", "describe", "auto", "--format", "json"])).unwrap();
    let topic = t["transport"]["pubsub"]["topic"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        topic.starts_with("projects/default/topics/eventarc-us-central1-auto-"),
        "{topic}"
    );
    assert!(topics(&s).contains(&topic));
    assert_eq!(
        t["serviceAccount"],
        format!(
            "{}-compute@developer.gserviceaccount.com",
            skiff_model::project_number("default")
        )
    );
    s.ok(&["triggers", "delete", "auto"]);
    assert!(!topics(&s).contains(&topic));
    assert!(subscriptions(&s).is_empty());
}

#[test]
fn bad_triggers_get_clear_errors_and_create_nothing() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    s.ok(&["deploy", "sink", "--image", "web", "--max-instances", "1"]);
    s.ok(&["pubsub", "topics", "create", "tee"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--destination-run-service",
                "nosuch",
                "--event-filters",
                "type=google.cloud.pubsub.topic.v1.messagePublished",
            ],
            "destination service \"nosuch\" does not exist",
        ),
        (
            &[
                "--destination-run-service",
                "sink",
                "--event-filters",
                "serviceName=run.googleapis.com",
            ],
            "no event filter on `type`",
        ),
        (
            &[
                "--destination-run-service",
                "sink",
                "--event-filters",
                "type=google.cloud.storage.object.v1.finalized",
            ],
            "unsupported event type",
        ),
        (
            &[
                "--destination-run-service",
                "sink",
                "--event-filters",
                "type=google.cloud.pubsub.topic.v1.messagePublished",
                "--transport-topic",
                "missing",
            ],
            "transport topic projects/default/topics/missing does not exist",
        ),
        (
            &[
                "--destination-run-service",
                "sink",
                "--event-filters",
                "type",
            ],
            "invalid --event-filters item",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["triggers", "create", "bad"];
        all.extend_from_slice(args);
        let err = s.fails(&all);
        assert!(
            err.contains("error:") && err.contains(want),
            "{args:?}: {err}"
        );
    }
    let err = s.fails(&[
        "triggers",
        "create",
        "Bad_Name",
        "--destination-run-service",
        "sink",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
    ]);
    assert!(err.contains("invalid trigger id"), "{err}");
    let listed = s.ok(&["triggers", "list", "--format", "json"]);
    assert_eq!(listed.trim(), "{}");
    assert!(subscriptions(&s).is_empty());
    assert_eq!(topics(&s), ["projects/default/topics/tee"]);
}

#[test]
fn audit_log_trigger_gets_an_event_when_a_service_is_deployed() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    let account = "events@default.iam.gserviceaccount.com";
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
    s.ok(&[
        "triggers",
        "create",
        "on-deploy",
        "--destination-run-service",
        "sink",
        "--destination-run-path",
        "/cgi-bin/sh?env%3E%3E%2Ftmp%2Fgot%3Bcat%3E%3E%2Ftmp%2Fgot%3Becho",
        "--event-filters",
        "type=google.cloud.audit.log.v1.written,serviceName=run.googleapis.com",
        "--event-filters",
        "methodName=google.cloud.run.v1.Services.CreateService",
        "--service-account",
        account,
    ]);
    // A transport topic is refused for audit log triggers, and a missing methodName.
    let err = s.fails(&[
        "triggers",
        "create",
        "bad",
        "--destination-run-service",
        "sink",
        "--event-filters",
        "type=google.cloud.audit.log.v1.written,serviceName=run.googleapis.com",
    ]);
    assert!(err.contains("needs methodName"), "{err}");
    s.ok(&["deploy", "watched", "--image", "web"]);
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let (code, body) = s.get(
            "sink.localhost",
            "/cgi-bin/sh?cat%20%2Ftmp%2Fgot",
            Some(&token),
        );
        if code == 200 && body.contains("protoPayload") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the sink got no event: {code} {body}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let header = |name: &str| {
        got.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {got}"))
            .to_string()
    };
    assert_eq!(header("HTTP_CE_TYPE"), "google.cloud.audit.log.v1.written");
    assert_eq!(header("HTTP_CE_SPECVERSION"), "1.0");
    assert_eq!(
        header("HTTP_CE_SUBJECT"),
        "run.googleapis.com/namespaces/default/services/watched"
    );
    assert_eq!(
        header("HTTP_CE_SOURCE"),
        "//cloudaudit.googleapis.com/projects/default/logs/cloudaudit.googleapis.com%2Factivity"
    );
    assert_eq!(header("CONTENT_TYPE"), "application/json");
    let body_line = got.lines().find(|l| l.starts_with('{')).expect("the body");
    let entry: Value = serde_json::from_str(body_line).expect("a LogEntry");
    assert_eq!(entry["insertId"].as_str().unwrap(), header("HTTP_CE_ID"));
    assert_eq!(
        entry["protoPayload"]["methodName"],
        "google.cloud.run.v1.Services.CreateService"
    );
    assert_eq!(entry["protoPayload"]["serviceName"], "run.googleapis.com");
    assert_eq!(
        entry["protoPayload"]["resourceName"],
        "namespaces/default/services/watched"
    );
    // Only the matching method: one event (the sink's own deploy preceded the trigger).
    assert_eq!(got.matches("protoPayload").count(), 1, "{got}");
}

#[test]
fn audit_log_trigger_gets_an_event_when_a_job_execution_finishes() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    s.ok(&[
        "deploy",
        "sink",
        "--image",
        "web",
        "--max-instances",
        "1",
        "--allow-unauthenticated",
    ]);
    s.ok(&[
        "triggers",
        "create",
        "on-job",
        "--destination-run-service",
        "sink",
        "--destination-run-path",
        "/cgi-bin/sh?env%3E%3E%2Ftmp%2Fgot%3Bcat%3E%3E%2Ftmp%2Fgot%3Becho",
        "--event-filters",
        "type=google.cloud.audit.log.v1.written,serviceName=run.googleapis.com,methodName=google.cloud.run.v1.Jobs.RunJob",
    ]);
    s.ok(&[
        "jobs",
        "create",
        "nightly",
        "--image",
        "web",
        "--command",
        "/bin/sh",
        "--args",
        "-c,true",
    ]);
    s.ok(&["jobs", "execute", "nightly", "--wait"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let (code, body) = s.get("sink.localhost", "/cgi-bin/sh?cat%20%2Ftmp%2Fgot", None);
        if code == 200 && body.contains("protoPayload") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the sink got no event: {code} {body}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        got.contains("HTTP_CE_SUBJECT=run.googleapis.com/namespaces/default/jobs/nightly"),
        "{got}"
    );
    let body_line = got.lines().find(|l| l.starts_with('{')).expect("the body");
    let entry: Value = serde_json::from_str(body_line).expect("a LogEntry");
    assert_eq!(
        entry["protoPayload"]["methodName"],
        "google.cloud.run.v1.Jobs.RunJob"
    );
    assert_eq!(
        entry["protoPayload"]["resourceName"],
        "namespaces/default/jobs/nightly"
    );
}

/// The `CE_*` lines the job `handler`'s tasks printed, one string per execution.
fn job_event_logs(s: &TestServer) -> Vec<String> {
    let out = s.ok(&[
        "logs", "read", "--job", "handler", "--limit", "1000", "--format", "json",
    ]);
    let mut by_exec: std::collections::BTreeMap<String, String> = Default::default();
    for l in out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let exec = l["execution"].as_str().unwrap_or_default().to_string();
        let e = by_exec.entry(exec).or_default();
        e.push_str(l["line"].as_str().unwrap_or_default());
        e.push('\n');
    }
    by_exec.into_values().collect()
}

#[test]
fn pubsub_trigger_with_a_job_destination_starts_an_execution_per_event() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--no-instance-network"]);
    s.ok(&["pubsub", "topics", "create", "orders"]);
    s.ok(&[
        "jobs",
        "create",
        "handler",
        "--image",
        "web",
        "--command",
        "/bin/sh",
        "--args",
        "-c,env | grep ^CE_ | sort",
    ]);
    // A job destination and a service destination at once are refused by the CLI.
    let out = s.skiff(&[
        "triggers",
        "create",
        "both",
        "--destination-run-job",
        "handler",
        "--destination-run-service",
        "x",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be used with"),
        "{out:?}"
    );
    // A job that does not exist is refused by the server, naming it.
    let err = s.fails(&[
        "triggers",
        "create",
        "nojob",
        "--destination-run-job",
        "missing",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
    ]);
    assert!(
        err.contains("destination job \"missing\" does not exist"),
        "{err}"
    );
    s.ok(&[
        "triggers",
        "create",
        "on-order",
        "--destination-run-job",
        "handler",
        "--transport-topic",
        "orders",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
    ]);
    let t: Value =
        serde_json::from_str(&s.ok(&["triggers", "describe", "on-order", "--format", "json"]))
            .unwrap();
    assert_eq!(t["destination"]["cloudRunJob"]["job"], "handler", "{t}");
    assert!(t["destination"].get("cloudRun").is_none(), "{t}");
    assert!(s.ok(&["triggers", "list"]).contains("job/handler"));
    for n in 1..=3 {
        s.ok(&[
            "pubsub",
            "topics",
            "publish",
            "orders",
            "--message",
            &format!("order {n}"),
        ]);
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    let logs = loop {
        let logs = job_event_logs(&s);
        // `env | sort` prints CE_DATA first and CE_TYPE last: wait for each execution's last
        // line, not its first.
        if logs.len() == 3
            && logs
                .iter()
                .all(|l| l.contains("CE_DATA=") && l.contains("CE_TYPE="))
        {
            break logs;
        }
        assert!(
            Instant::now() < deadline,
            "three executions with the event: {logs:?}\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut orders = Vec::new();
    for l in &logs {
        assert!(
            l.contains("CE_TYPE=google.cloud.pubsub.topic.v1.messagePublished"),
            "{l}"
        );
        assert!(
            l.contains("CE_SOURCE=//pubsub.googleapis.com/projects/default/topics/orders"),
            "{l}"
        );
        assert!(l.contains("CE_SPECVERSION=1.0"), "{l}");
        let data = l
            .lines()
            .find_map(|x| x.strip_prefix("CE_DATA="))
            .expect("CE_DATA");
        let envelope: Value = serde_json::from_str(data).expect("the push envelope");
        use base64::Engine;
        let msg = base64::engine::general_purpose::STANDARD
            .decode(envelope["message"]["data"].as_str().unwrap())
            .unwrap();
        orders.push(String::from_utf8(msg).unwrap());
        let id = l.lines().find_map(|x| x.strip_prefix("CE_ID=")).unwrap();
        assert_eq!(envelope["message"]["messageId"], id, "{l}");
    }
    orders.sort();
    assert_eq!(orders, ["order 1", "order 2", "order 3"]);
    // Every event was acknowledged: nothing waits on the trigger's subscription.
    let sub = t["transport"]["pubsub"]["subscription"].as_str().unwrap();
    let sub_id = sub.rsplit('/').next().unwrap();
    let pulled = s.ok(&[
        "pubsub",
        "subscriptions",
        "pull",
        sub_id,
        "--format",
        "json",
    ]);
    assert!(!pulled.contains("ackId"), "{pulled}");
    // The trigger's subscription backs off between failed deliveries: with the job gone, a
    // new event is tried once, then again only after 10 s.
    let d: Value = serde_json::from_str(&s.ok(&[
        "pubsub",
        "subscriptions",
        "describe",
        sub_id,
        "--format",
        "json",
    ]))
    .unwrap();
    assert_eq!(d["retryPolicy"]["minimumBackoff"], "10s", "{d}");
    assert_eq!(d["retryPolicy"]["maximumBackoff"], "600s", "{d}");
    s.ok(&["jobs", "delete", "handler"]);
    s.ok(&[
        "pubsub",
        "topics",
        "publish",
        "orders",
        "--message",
        "orphan",
    ]);
    let retried = || s.log().matches("is retried later").count();
    s.wait_for("the first failed start", 60, || retried() >= 1);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(retried(), 1, "{}", s.log());
    // Deleted: the subscription goes, and later messages are not tried.
    s.ok(&["triggers", "delete", "on-order"]);
    assert!(!subscriptions(&s).iter().any(|x| x == sub));
    s.ok(&["pubsub", "topics", "publish", "orders", "--message", "late"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(retried(), 1, "{}", s.log());
}
