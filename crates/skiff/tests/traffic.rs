//! End-to-end tests of revisions, traffic and Knative Service YAML, on the real `skiff` binary:
//! a blue/green rollout, a 50/50 split, a move to latest and a rollback under a steady load of
//! parallel requests that must all get 200; pinned against latest-following traffic; tags;
//! traffic errors that change nothing; a revision whose container exits at start; a Service
//! file in the shape of Cloud Run's documentation deployed with `services replace` and
//! round-tripped through `describe --format export`, which is checked against Knative
//! Serving's published Service schema. They need root, namespaces, overlayfs and cgroups.

use serde_json::{json, Value};
use skiff_testkit::{burst, busybox_image, yaml, ImageSpec, Load, TestServer};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// What `/` answers in each test image.
const V1: &str = "hello from skiff\n";
const V2: &str = "version two\n";
const V3: &str = "version three\n";

/// A server with three images: `web` (answers V1), `web2` (V2) and `web3` (V3).
fn server_with_images(args: &[&str]) -> (TestServer, tempfile::TempDir) {
    let s = TestServer::start(Path::new(BIN), args);
    let tmp = tempfile::tempdir().unwrap();
    for (name, body) in [("web", V1), ("web2", V2), ("web3", V3)] {
        let spec = ImageSpec {
            files: ImageSpec::default()
                .files
                .into_iter()
                .map(|(path, contents, mode)| {
                    if path == "www/index.html" {
                        (path, body.to_string(), mode)
                    } else {
                        (path, contents, mode)
                    }
                })
                .collect(),
            ..ImageSpec::default()
        };
        let layout = busybox_image(&tmp.path().join(name), name, &spec);
        s.ok(&["images", "import", layout.to_str().unwrap()]);
    }
    (s, tmp)
}

fn describe(s: &TestServer, service: &str) -> Value {
    serde_json::from_str(&s.ok(&["services", "describe", service, "--format", "json"])).unwrap()
}

fn latest_created(s: &TestServer, service: &str) -> String {
    describe(s, service)["status"]["latestCreatedRevisionName"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Revision names of a service, newest first.
fn revisions(s: &TestServer, service: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(&s.ok(&[
        "revisions",
        "list",
        "--service",
        service,
        "--format",
        "json",
    ]))
    .unwrap();
    v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// `status.traffic` in short: `REV=P`, `REV=P#TAG`, with `(latest)` after a target that
/// follows the latest ready revision.
fn traffic(svc: &Value) -> Vec<String> {
    svc["status"]["traffic"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let mut s = format!(
                "{}={}",
                t["revisionName"].as_str().unwrap_or("?"),
                t["percent"].as_u64().unwrap_or(0)
            );
            if t["latestRevision"] == true {
                s.push_str("(latest)");
            }
            if let Some(tag) = t["tag"].as_str() {
                s.push('#');
                s.push_str(tag);
            }
            s
        })
        .collect()
}

/// Sends `n` requests to `host` and asserts that every one got 200 with `body`.
fn all_answer(s: &TestServer, host: &str, n: usize, body: &str) {
    let r = burst(s.ingress, host, "/", n, 4);
    assert!(
        r.outcomes.iter().all(|o| o.status == 200 && o.body == body),
        "{host}: wanted {n} x 200 {body:?}, got {}",
        r.summary()
    );
}

/// The revision that answered a request to `host` (from the container's `K_REVISION`).
fn answering_revision(s: &TestServer, host: &str, token: Option<&str>) -> String {
    let (code, env) = s.get(host, "/cgi-bin/env", token);
    assert_eq!(code, 200, "{host}: {env}");
    env.lines()
        .find_map(|l| l.strip_prefix("K_REVISION="))
        .unwrap_or_else(|| panic!("no K_REVISION in {env}"))
        .to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// The issue's acceptance run: v1; v2 with no traffic and tag green; green at its tag URL;
/// 50/50; all to latest; roll back to v1; v2 scaled to zero. A steady load of parallel
/// requests runs through all of it and must see only 200s.
#[test]
fn blue_green_split_latest_and_rollback_under_steady_load_see_only_200s() {
    let (s, _tmp) = server_with_images(&["--scale-to-zero-after", "1s"]);
    // Two requests per instance, so the load needs several instances and scaling down
    // happens while it runs.
    s.ok(&[
        "deploy",
        "app",
        "--image",
        "web",
        "--concurrency",
        "2",
        "--allow-unauthenticated",
    ]);
    let v1 = latest_created(&s, "app");
    let load = Load::start(
        s.ingress,
        "app.localhost",
        "/",
        4,
        500_000,
        Duration::from_secs(900),
    );
    load.wait_more(100, 60);

    // v2 without traffic, tagged green.
    let out = s.ok(&[
        "deploy",
        "app",
        "--image",
        "web2",
        "--no-traffic",
        "--tag",
        "green",
    ]);
    let green_url = format!("http://green---app.localhost:{}", s.ingress);
    assert!(out.contains(&green_url), "{out}");
    let v2 = latest_created(&s, "app");
    assert_ne!(v1, v2);
    let svc = describe(&s, "app");
    assert_eq!(
        traffic(&svc),
        vec![format!("{v1}=100"), format!("{v2}=0#green")]
    );
    assert_eq!(svc["status"]["traffic"][1]["url"], green_url.as_str());
    assert_eq!(svc["status"]["latestReadyRevisionName"], v2.as_str());
    load.wait_more(100, 60);
    all_answer(&s, "green---app.localhost", 20, V2);
    all_answer(&s, "app.localhost", 100, V1);

    // 50/50, honoured per request.
    s.ok(&[
        "services",
        "update-traffic",
        "app",
        "--to-revisions",
        &format!("{v1}=50,{v2}=50"),
    ]);
    assert_eq!(
        traffic(&describe(&s, "app")),
        vec![
            format!("{v1}=50"),
            format!("{v2}=50"),
            format!("{v2}=0#green")
        ]
    );
    let n = 2000;
    let split = burst(s.ingress, "app.localhost", "/", n, 4);
    assert!(split.failures().is_empty(), "{}", split.summary());
    for body in [V1, V2] {
        let share = split.count_body(body) * 100;
        assert!(
            (45 * n..=55 * n).contains(&share),
            "{body:?} got {}% of {n}: {}",
            share as f64 / n as f64,
            split.summary()
        );
    }
    load.wait_more(100, 60);

    // Everything to the latest revision.
    s.ok(&["services", "update-traffic", "app", "--to-latest"]);
    assert_eq!(
        traffic(&describe(&s, "app")),
        vec![format!("{v2}=100(latest)"), format!("{v2}=0#green")]
    );
    all_answer(&s, "app.localhost", 100, V2);
    load.wait_more(100, 60);

    // Roll back.
    s.ok(&[
        "services",
        "update-traffic",
        "app",
        "--to-revisions",
        &format!("{v1}=100"),
    ]);
    assert_eq!(
        traffic(&describe(&s, "app")),
        vec![format!("{v1}=100"), format!("{v2}=0#green")]
    );
    all_answer(&s, "app.localhost", 100, V1);
    // v2 serves nothing now: its instances scale to zero while the load goes on.
    s.wait_for("v2 to scale to zero", 60, || {
        s.instances("app")
            .iter()
            .all(|i| i["revision"] != v2.as_str())
    });
    load.wait_more(100, 60);
    // Its tag still answers, from a cold start.
    all_answer(&s, "green---app.localhost", 4, V2);

    let report = load.finish();
    eprintln!("steady load: {}", report.summary());
    assert!(
        report.failures().is_empty(),
        "failed requests under load: {}",
        report.summary()
    );
    assert!(
        report.count_body(V1) > 0 && report.count_body(V2) > 0,
        "the load saw both revisions: {}",
        report.summary()
    );
}

/// Traffic that follows the latest revision moves on deploy; pinned traffic stays pinned.
#[test]
fn pinned_traffic_stays_pinned_and_latest_follows_deploys() {
    let (s, tmp) = server_with_images(&[]);
    s.ok(&["deploy", "pin", "--image", "web", "--allow-unauthenticated"]);
    let v1 = latest_created(&s, "pin");
    // Following latest: a deploy moves traffic once the new revision is ready.
    s.ok(&["deploy", "pin", "--image", "web2"]);
    let v2 = latest_created(&s, "pin");
    assert_eq!(
        traffic(&describe(&s, "pin")),
        vec![format!("{v2}=100(latest)")]
    );
    all_answer(&s, "pin.localhost", 20, V2);

    // Pinned: a deploy leaves traffic where it is.
    s.ok(&[
        "services",
        "update-traffic",
        "pin",
        "--to-revisions",
        &format!("{v1}=100"),
    ]);
    let out = s.ok(&["deploy", "pin", "--image", "web3"]);
    let v3 = latest_created(&s, "pin");
    assert!(
        out.contains(&format!("revision [{v3}]")) && out.contains("serving 0 percent"),
        "{out}"
    );
    let svc = describe(&s, "pin");
    assert_eq!(svc["status"]["latestReadyRevisionName"], v3.as_str());
    assert_eq!(traffic(&svc), vec![format!("{v1}=100")]);
    all_answer(&s, "pin.localhost", 20, V1);

    // Back to latest; the next deploy follows again.
    s.ok(&["services", "update-traffic", "pin", "--to-latest"]);
    all_answer(&s, "pin.localhost", 20, V3);
    s.ok(&["deploy", "pin", "--set-env-vars", "V=4"]);
    let v4 = latest_created(&s, "pin");
    assert_eq!(answering_revision(&s, "pin.localhost", None), v4);
    assert_eq!(
        traffic(&describe(&s, "pin")),
        vec![format!("{v4}=100(latest)")]
    );

    // A split service with a tag round-trips through export and replace.
    s.ok(&[
        "services",
        "update-traffic",
        "pin",
        "--to-revisions",
        &format!("{v1}=30,{v4}=70"),
        "--update-tags",
        &format!("old={v1}"),
    ]);
    round_trip(&s, tmp.path(), "pin");
}

/// Export, replace with the export, export again: no new revision, nothing changed, and the
/// two exports are byte-identical. Both pass the Knative schema check.
fn round_trip(s: &TestServer, dir: &Path, service: &str) {
    let before = describe(s, service);
    let revs = revisions(s, service);
    let first = s.ok(&["services", "describe", service, "--format", "export"]);
    check_knative_service(&first);
    let file = write(dir, &format!("{service}-export.yaml"), &first);
    s.ok(&["services", "replace", &file]);
    let second = s.ok(&["services", "describe", service, "--format", "export"]);
    assert_eq!(first, second, "a second export differs from the first");
    assert_eq!(revisions(s, service), revs, "replace made a new revision");
    let after = describe(s, service);
    for field in ["metadata", "spec"] {
        assert_eq!(before[field], after[field], "replace changed {field}");
    }
    assert_eq!(
        traffic(&before),
        traffic(&after),
        "replace changed the traffic"
    );
    // The export is exactly the service without its status and server-set metadata.
    let mut want = before.clone();
    want.as_object_mut().unwrap().remove("status");
    for k in ["uid", "resourceVersion", "generation", "creationTimestamp"] {
        want["metadata"].as_object_mut().unwrap().remove(k);
    }
    assert_eq!(yaml::parse(&first), want);
}

/// Percents that do not add up to 100, unknown revisions and tags: a clear error, no change.
#[test]
fn traffic_errors_change_nothing() {
    let (s, tmp) = server_with_images(&[]);
    s.ok(&["deploy", "sum", "--image", "web", "--allow-unauthenticated"]);
    let v1 = latest_created(&s, "sum");
    s.ok(&["deploy", "sum", "--image", "web2", "--no-traffic"]);
    let v2 = latest_created(&s, "sum");
    let before = describe(&s, "sum");
    assert_eq!(traffic(&before), vec![format!("{v1}=100")]);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--to-revisions".into(), format!("{v1}=60,{v2}=60")],
            "add up to 120",
        ),
        (
            vec!["--to-revisions".into(), format!("{v1}=30,{v2}=30")],
            "add up to 60",
        ),
        (
            vec!["--to-revisions".into(), format!("{v2}=101")],
            "from 0 to 100",
        ),
        (
            vec!["--to-revisions".into(), "sum-nope=100".into()],
            "sum-nope",
        ),
        (vec!["--to-tags".into(), "nope=100".into()], "nope"),
        (vec!["--update-tags".into(), "Bad=x".into()], "tag"),
    ];
    for (flags, want) in &cases {
        let mut args = vec!["services", "update-traffic", "sum"];
        args.extend(flags.iter().map(String::as_str));
        let err = s.fails(&args);
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(want),
            "{flags:?}: {err}"
        );
    }
    // A Service file whose traffic adds up to 90.
    let export = s.ok(&["services", "describe", "sum", "--format", "export"]);
    assert_eq!(export.matches("percent: 100").count(), 1, "{export}");
    let bad = write(
        tmp.path(),
        "ninety.yaml",
        &export.replace("percent: 100", "percent: 90"),
    );
    let err = s.fails(&["services", "replace", &bad]);
    assert!(
        err.contains("spec.traffic") && err.contains("add up to 90"),
        "{err}"
    );
    // The API itself refuses it too, whatever the client.
    let mut body = before.clone();
    body.as_object_mut().unwrap().remove("status");
    body["spec"]["traffic"] = json!([
        {"revisionName": v1, "percent": 50},
        {"revisionName": v2, "percent": 40}
    ]);
    let (code, answer) = s.api(
        "PUT",
        "/apis/serving.knative.dev/v1/namespaces/default/services/sum",
        Some(&body.to_string()),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer.contains("spec.traffic") && answer.contains("add up to 90"),
        "{answer}"
    );

    let after = describe(&s, "sum");
    for field in ["metadata", "spec"] {
        assert_eq!(
            before[field], after[field],
            "a refused change changed {field}"
        );
    }
    assert_eq!(traffic(&after), vec![format!("{v1}=100")]);
    assert_eq!(revisions(&s, "sum"), vec![v2, v1.clone()]);
    all_answer(&s, "sum.localhost", 20, V1);
}

/// --update-tags and --remove-tags; a tagged revision cannot be deleted.
#[test]
fn tags_are_added_used_removed_and_protect_their_revision() {
    let (s, _tmp) = server_with_images(&[]);
    s.ok(&[
        "deploy",
        "tags",
        "--image",
        "web",
        "--allow-unauthenticated",
    ]);
    let v1 = latest_created(&s, "tags");
    s.ok(&["deploy", "tags", "--image", "web2"]);
    let v2 = latest_created(&s, "tags");

    s.ok(&[
        "services",
        "update-traffic",
        "tags",
        "--update-tags",
        &format!("blue={v1}"),
    ]);
    let svc = describe(&s, "tags");
    assert_eq!(
        traffic(&svc),
        vec![format!("{v2}=100(latest)"), format!("{v1}=0#blue")]
    );
    assert_eq!(
        svc["status"]["traffic"][1]["url"],
        format!("http://blue---tags.localhost:{}", s.ingress).as_str()
    );
    all_answer(&s, "blue---tags.localhost", 10, V1);
    all_answer(&s, "tags.localhost", 10, V2);
    assert_eq!(s.get("red---tags.localhost", "/", None).0, 404);

    // A tagged revision serves its tag URL, so it cannot be deleted.
    let err = s.fails(&["revisions", "delete", &v1]);
    assert!(err.contains(&v1) && err.contains("blue"), "{err}");
    assert!(revisions(&s, "tags").contains(&v1));

    // Traffic by tag.
    s.ok(&[
        "services",
        "update-traffic",
        "tags",
        "--to-tags",
        "blue=100",
    ]);
    all_answer(&s, "tags.localhost", 10, V1);
    s.ok(&["services", "update-traffic", "tags", "--to-latest"]);
    all_answer(&s, "tags.localhost", 10, V2);

    // Move the tag, then remove it.
    s.ok(&[
        "services",
        "update-traffic",
        "tags",
        "--update-tags",
        &format!("blue={v2}"),
    ]);
    all_answer(&s, "blue---tags.localhost", 10, V2);
    s.ok(&[
        "services",
        "update-traffic",
        "tags",
        "--remove-tags",
        "blue",
    ]);
    assert_eq!(
        traffic(&describe(&s, "tags")),
        vec![format!("{v2}=100(latest)")]
    );
    assert_eq!(s.get("blue---tags.localhost", "/", None).0, 404);
    // Untagged and serving nothing, v1 can go now.
    s.ok(&["revisions", "delete", &v1]);
    assert_eq!(revisions(&s, "tags"), vec![v2]);
}

/// A revision whose container exits at start never takes traffic: the deploy fails with the
/// container's output, the service reports why, and the previous revision keeps serving a
/// steady load without a single failed request.
#[test]
fn a_revision_that_exits_at_start_never_takes_traffic() {
    let (s, _tmp) = server_with_images(&[]);
    s.ok(&[
        "deploy",
        "sturdy",
        "--image",
        "web",
        "--allow-unauthenticated",
    ]);
    let v1 = latest_created(&s, "sturdy");
    let load = Load::start(
        s.ingress,
        "sturdy.localhost",
        "/",
        4,
        200_000,
        Duration::from_secs(600),
    );
    load.wait_more(50, 60);
    let err = s.fails(&[
        "deploy",
        "sturdy",
        "--image",
        "web2",
        "--command",
        "/bin/sh",
        "--args",
        "-c,echo cannot-open-database; echo giving-up >&2; exit 3",
    ]);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{err}");
    for part in ["exited with code 3", "cannot-open-database", "giving-up"] {
        assert!(last.contains(part), "{part} missing from {err}");
    }
    load.wait_more(50, 60);
    let report = load.finish();
    assert!(report.failures().is_empty(), "{}", report.summary());
    assert_eq!(
        report.count_body(V1),
        report.outcomes.len(),
        "only v1 answered: {}",
        report.summary()
    );

    let svc = describe(&s, "sturdy");
    let v2 = svc["status"]["latestCreatedRevisionName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(v2, v1);
    assert_eq!(svc["status"]["latestReadyRevisionName"], v1.as_str());
    assert_eq!(traffic(&svc), vec![format!("{v1}=100(latest)")]);
    let ready = |v: &Value| {
        v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap()
    };
    let c = ready(&svc);
    assert_eq!(c["status"], "False", "{c}");
    assert!(!c["reason"].as_str().unwrap_or_default().is_empty(), "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot-open-database"),
        "{c}"
    );
    let rev: Value =
        serde_json::from_str(&s.ok(&["revisions", "describe", &v2, "--format", "json"])).unwrap();
    let c = ready(&rev);
    assert_eq!(c["status"], "False", "{c}");
    assert_eq!(c["reason"], "ContainerFailed", "{c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("giving-up"),
        "{c}"
    );
    // The YAML form says the same as the JSON form.
    let as_yaml = s.ok(&["services", "describe", "sturdy", "--format", "yaml"]);
    assert_eq!(yaml::parse(&as_yaml), svc);
    // The human form says why.
    let text = s.ok(&["services", "describe", "sturdy"]);
    assert!(
        text.contains("False") && text.contains("cannot-open-database"),
        "{text}"
    );

    // Fixed, the next deploy takes traffic again.
    s.ok(&["deploy", "sturdy", "--command", "", "--args", ""]);
    let v3 = latest_created(&s, "sturdy");
    assert_eq!(answering_revision(&s, "sturdy.localhost", None), v3);
    let svc = describe(&s, "sturdy");
    assert_eq!(ready(&svc)["status"], "True");
    assert_eq!(svc["status"]["latestReadyRevisionName"], v3.as_str());
}

/// A Service as Cloud Run's documentation writes one (`gcloud run services replace`).
const CLOUD_RUN_SERVICE: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: docs
  labels:
    cloud.googleapis.com/location: us-central1
    team: web
  annotations:
    run.googleapis.com/ingress: all
    run.googleapis.com/launch-stage: BETA
spec:
  template:
    metadata:
      name: docs-v1
      labels:
        version: one
      annotations:
        autoscaling.knative.dev/minScale: '1'
        autoscaling.knative.dev/maxScale: '3'
        autoscaling.knative.dev/target: '40'
        autoscaling.knative.dev/window: 60s
        run.googleapis.com/cpu-throttling: 'false'
        run.googleapis.com/execution-environment: gen2
    spec:
      containerConcurrency: 40
      timeoutSeconds: 120
      containers:
      - image: web
        command:
        - /bin/sh
        args:
        - -c
        - echo docs starting; exec httpd -f -p $PORT -h /www
        env:
        - name: GREETING
          value: hello docs
        ports:
        - name: http1
          containerPort: 9000
        resources:
          limits:
            cpu: 500m
            memory: 256Mi
  traffic:
  - revisionName: docs-v1
    percent: 100
    tag: stable
  - latestRevision: true
    percent: 0
    tag: latest
"#;

#[test]
fn cloud_run_service_yaml_deploys_as_written_and_round_trips() {
    let (s, tmp) = server_with_images(&[]);
    let file = write(tmp.path(), "service.yaml", CLOUD_RUN_SERVICE);
    let out = s.skiff(&["services", "replace", &file]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}\n{}", s.log());
    assert_eq!(
        stdout.trim().lines().last().unwrap(),
        format!("Service URL: http://docs.localhost:{}", s.ingress)
    );
    // Annotations Skiff does not act on are kept and reported, each once.
    for key in [
        "run.googleapis.com/ingress",
        "run.googleapis.com/launch-stage",
        "run.googleapis.com/execution-environment",
    ] {
        let line = format!("warning: annotation {key} is kept but Skiff does not act on it");
        assert_eq!(stderr.matches(&line).count(), 1, "{line}\n{stderr}");
    }
    // The scale bounds, the autoscaler's settings and CPU throttling are acted on.
    for key in ["autoscaling.knative.dev", "cpu-throttling"] {
        assert!(!stderr.contains(key), "{stderr}");
    }

    // Deployed as written.
    let svc = describe(&s, "docs");
    let st = &svc["status"];
    assert_eq!(st["latestCreatedRevisionName"], "docs-v1");
    assert_eq!(st["latestReadyRevisionName"], "docs-v1");
    assert_eq!(
        st["url"],
        format!("http://docs.localhost:{}", s.ingress).as_str()
    );
    assert_eq!(
        traffic(&svc),
        vec!["docs-v1=100#stable", "docs-v1=0(latest)#latest"]
    );
    for (i, tag) in ["stable", "latest"].iter().enumerate() {
        assert_eq!(
            st["traffic"][i]["url"],
            format!("http://{tag}---docs.localhost:{}", s.ingress).as_str()
        );
    }
    let meta = &svc["metadata"];
    assert_eq!(
        meta["labels"]["cloud.googleapis.com/location"],
        "us-central1"
    );
    assert_eq!(meta["labels"]["team"], "web");
    assert_eq!(
        meta["annotations"]["run.googleapis.com/launch-stage"],
        "BETA"
    );
    let tmeta = &svc["spec"]["template"]["metadata"];
    assert_eq!(
        tmeta["annotations"]["run.googleapis.com/cpu-throttling"],
        "false"
    );
    assert_eq!(
        tmeta["annotations"]["autoscaling.knative.dev/window"],
        "60s"
    );
    let rev: Value =
        serde_json::from_str(&s.ok(&["revisions", "describe", "docs-v1", "--format", "json"]))
            .unwrap();
    assert_eq!(rev["spec"]["containerConcurrency"], 40);
    assert_eq!(rev["spec"]["timeoutSeconds"], 120);
    assert_eq!(rev["metadata"]["labels"]["version"], "one");
    assert_eq!(
        rev["metadata"]["annotations"]["autoscaling.knative.dev/target"],
        "40"
    );

    // Private until made public, as in Cloud Run: ask with an identity token.
    let token = s.ok(&["auth", "print-identity-token"]);
    let token = Some(token.trim());
    let (code, env) = s.get("docs.localhost", "/cgi-bin/env", token);
    assert_eq!(code, 200, "{env}");
    for want in ["GREETING=hello docs", "PORT=9000", "K_REVISION=docs-v1"] {
        assert!(env.lines().any(|l| l == want), "{want} missing from {env}");
    }
    for tag in ["stable", "latest"] {
        let (code, body) = s.get(&format!("{tag}---docs.localhost"), "/", token);
        assert_eq!((code, body.as_str()), (200, V1), "{tag}");
    }
    s.wait_for("the command's output in the logs", 20, || {
        s.ok(&["logs", "read", "--service", "docs"])
            .contains("docs starting")
    });
    // minScale 1 keeps an instance; the limits are the cgroup's.
    let inst = s.instances("docs");
    assert!(!inst.is_empty());
    let id = inst[0]["id"].as_str().unwrap();
    let mem = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/skiff/{id}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(mem.trim(), (256u64 << 20).to_string());
    let quota =
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/skiff/{id}/cpu.cfs_quota_us")).unwrap();
    assert_eq!(quota.trim(), "50000");

    // Replacing it with its own export changes nothing; a second export is the same bytes.
    round_trip(&s, tmp.path(), "docs");
    // So does replacing it with the original file again.
    s.ok(&["services", "replace", &file]);
    assert_eq!(revisions(&s, "docs"), vec!["docs-v1"]);
}

/// Invalid Service files: an error that names the field, and no change.
#[test]
fn invalid_service_files_name_the_field_and_change_nothing() {
    let (s, tmp) = server_with_images(&[]);
    s.ok(&[
        "deploy",
        "strict",
        "--image",
        "web",
        "--concurrency",
        "7",
        "--port",
        "8080",
        "--allow-unauthenticated",
    ]);
    // Give the service a spec.traffic to get wrong.
    s.ok(&["services", "update-traffic", "strict", "--to-latest"]);
    let before = describe(&s, "strict");
    let revs = revisions(&s, "strict");
    let export = s.ok(&["services", "describe", "strict", "--format", "export"]);
    let cases: &[(&str, &str, &str)] = &[
        (
            "containerConcurrency: 7",
            "containerConcurrency: \"abc\"",
            "spec.template.spec.containerConcurrency",
        ),
        (
            "containerConcurrency: 7",
            "containerConcurrency: 5000",
            "spec.template.spec.containerConcurrency",
        ),
        (
            "containerPort: 8080",
            "containerPort: -1",
            "spec.template.spec.containers[0].ports[0].containerPort",
        ),
        (
            "containerPort: 8080",
            "containerPort: 0",
            "spec.template.spec.containers[0].ports[0].containerPort",
        ),
        ("percent: 100", "percent: 150", "spec.traffic[0].percent"),
        (
            "image: web",
            "image: web\n        resources:\n          limits:\n            memory: lots",
            "spec.template.spec.containers[0].resources.limits.memory",
        ),
        (
            "containerConcurrency: 7",
            "containerConcurrency: 7\n      timeoutSeconds: 99999",
            "spec.template.spec.timeoutSeconds",
        ),
    ];
    for (i, (from, to, field)) in cases.iter().enumerate() {
        assert_eq!(export.matches(from).count(), 1, "{from} in {export}");
        let file = write(
            tmp.path(),
            &format!("bad{i}.yaml"),
            &export.replace(from, to),
        );
        let err = s.fails(&["services", "replace", &file]);
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(field),
            "{to}: the error should name {field}: {err}"
        );
    }
    // A revision the traffic names must exist (the server checks it).
    let file = write(
        tmp.path(),
        "ghost.yaml",
        &format!("{export}  - revisionName: strict-ghost\n    percent: 0\n    tag: ghost\n"),
    );
    let err = s.fails(&["services", "replace", &file]);
    assert!(
        err.contains("spec.traffic[1].revisionName") && err.contains("strict-ghost"),
        "{err}"
    );
    // The API names the field of a malformed body too.
    let mut body = before.clone();
    body.as_object_mut().unwrap().remove("status");
    body["spec"]["template"]["spec"]["containerConcurrency"] = json!("abc");
    let (code, answer) = s.api(
        "PUT",
        "/apis/serving.knative.dev/v1/namespaces/default/services/strict",
        Some(&body.to_string()),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("containerConcurrency"), "{answer}");

    let after = describe(&s, "strict");
    for field in ["metadata", "spec"] {
        assert_eq!(
            before[field], after[field],
            "a refused file changed {field}"
        );
    }
    assert_eq!(revisions(&s, "strict"), revs);
    assert_eq!(
        s.ok(&["services", "describe", "strict", "--format", "export"]),
        export
    );
    all_answer(&s, "strict.localhost", 10, V1);
}

// ---------------------------------------------------------------------------------------------
// Knative Serving's published Service schema.
// ---------------------------------------------------------------------------------------------

/// A field's type in the schema.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Int,
    Bool,
    /// An object of strings (`additionalProperties: {type: string}`).
    MapOfStr,
    /// An object of quantities (`additionalProperties: {anyOf: [integer, string]}`).
    MapOfIntOrStr,
}

/// The fields of a `serving.knative.dev/v1` Service that Skiff's export may contain, with their
/// types, transcribed by hand from the CRD Knative Serving publishes:
/// `knative/serving` `config/core/300-resources/service.yaml` (main branch at commit 01d9ed8,
/// the schema generated for the v1 API by `hack/update-codegen.sh`). That file leaves the
/// top-level `metadata` as `type: object`, so its fields follow Kubernetes' ObjectMeta (as the
/// CRD spells them for `spec.template.metadata`). `spec.traffic[].url` is in the CRD but
/// "disallowed on spec", so it is not listed here. `[]` stands for every item of an array.
const KNATIVE_SERVICE: &[(&str, Ty)] = &[
    ("apiVersion", Ty::Str),
    ("kind", Ty::Str),
    ("metadata.name", Ty::Str),
    ("metadata.namespace", Ty::Str),
    ("metadata.labels", Ty::MapOfStr),
    ("metadata.annotations", Ty::MapOfStr),
    ("spec.template.metadata.name", Ty::Str),
    ("spec.template.metadata.namespace", Ty::Str),
    ("spec.template.metadata.labels", Ty::MapOfStr),
    ("spec.template.metadata.annotations", Ty::MapOfStr),
    ("spec.template.spec.containerConcurrency", Ty::Int),
    ("spec.template.spec.timeoutSeconds", Ty::Int),
    ("spec.template.spec.serviceAccountName", Ty::Str),
    ("spec.template.spec.containers[].name", Ty::Str),
    ("spec.template.spec.containers[].image", Ty::Str),
    ("spec.template.spec.containers[].command[]", Ty::Str),
    ("spec.template.spec.containers[].args[]", Ty::Str),
    ("spec.template.spec.containers[].workingDir", Ty::Str),
    ("spec.template.spec.containers[].env[].name", Ty::Str),
    ("spec.template.spec.containers[].env[].value", Ty::Str),
    ("spec.template.spec.containers[].ports[].name", Ty::Str),
    (
        "spec.template.spec.containers[].ports[].containerPort",
        Ty::Int,
    ),
    ("spec.template.spec.containers[].ports[].protocol", Ty::Str),
    (
        "spec.template.spec.containers[].resources.limits",
        Ty::MapOfIntOrStr,
    ),
    (
        "spec.template.spec.containers[].resources.requests",
        Ty::MapOfIntOrStr,
    ),
    ("spec.traffic[].configurationName", Ty::Str),
    ("spec.traffic[].revisionName", Ty::Str),
    ("spec.traffic[].latestRevision", Ty::Bool),
    ("spec.traffic[].percent", Ty::Int),
    ("spec.traffic[].tag", Ty::Str),
];

/// Fields the schema requires when their parent is present (`required:` in the CRD).
const KNATIVE_REQUIRED: &[(&str, &str)] = &[
    ("spec.template.spec", "containers"),
    ("spec.template.spec.containers[].env[]", "name"),
    ("spec.template.spec.containers[].ports[]", "containerPort"),
];

fn ty_of(path: &str) -> Option<Ty> {
    KNATIVE_SERVICE
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
}

fn scalar_fits(v: &Value, ty: Ty) -> bool {
    match ty {
        Ty::Str => v.is_string(),
        Ty::Int => v.is_i64() || v.is_u64(),
        Ty::Bool => v.is_boolean(),
        Ty::MapOfStr | Ty::MapOfIntOrStr => false,
    }
}

/// Every problem of `v` (at `path`) against the schema table.
fn schema_errors(v: &Value, path: &str, out: &mut Vec<String>) {
    let ty = ty_of(path);
    match (v, ty) {
        (Value::Object(m), Some(Ty::MapOfStr)) => {
            for (k, x) in m {
                if !x.is_string() {
                    out.push(format!("{path}.{k}: {x} is not a string"));
                }
            }
        }
        (Value::Object(m), Some(Ty::MapOfIntOrStr)) => {
            for (k, x) in m {
                if !(x.is_string() || x.is_i64() || x.is_u64()) {
                    out.push(format!("{path}.{k}: {x} is not an integer or a string"));
                }
            }
        }
        (Value::Object(m), None) => {
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}.")
            };
            if !path.is_empty() && !KNATIVE_SERVICE.iter().any(|(p, _)| p.starts_with(&prefix)) {
                out.push(format!("{path}: not a field of a Knative Service"));
                return;
            }
            for (parent, field) in KNATIVE_REQUIRED {
                if *parent == path && !m.contains_key(*field) {
                    out.push(format!("{path}: the required field {field} is missing"));
                }
            }
            for (k, x) in m {
                schema_errors(x, &format!("{prefix}{k}"), out);
            }
        }
        (Value::Array(items), None) => {
            let item = format!("{path}[]");
            if !KNATIVE_SERVICE.iter().any(|(p, _)| p.starts_with(&item)) {
                out.push(format!("{path}: not a list in a Knative Service"));
                return;
            }
            for x in items {
                schema_errors(x, &item, out);
            }
        }
        (Value::Null, _) => out.push(format!("{path}: null")),
        (x, Some(t)) if scalar_fits(x, t) => {}
        (x, Some(t)) => out.push(format!("{path}: {x} is not of type {t:?}")),
        (x, None) => out.push(format!("{path}: {x} is not a field of a Knative Service")),
    }
}

/// Asserts that an exported YAML is a Knative Service by the published schema.
fn check_knative_service(export: &str) {
    let v = yaml::parse(export);
    assert_eq!(v["apiVersion"], "serving.knative.dev/v1", "{export}");
    assert_eq!(v["kind"], "Service", "{export}");
    let mut errors = Vec::new();
    schema_errors(&v, "", &mut errors);
    assert!(
        errors.is_empty(),
        "the export does not fit Knative's Service schema:\n{}\n{export}",
        errors.join("\n")
    );
}

/// The schema check itself catches what it should (no server needed).
#[test]
fn schema_check_catches_wrong_types_and_unknown_fields() {
    let good = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: a\n  annotations:\n    x: 'false'\nspec:\n  template:\n    spec:\n      containerConcurrency: 5\n      containers:\n      - image: web\n        ports:\n        - containerPort: 8080\n        resources:\n          limits:\n            cpu: 1\n            memory: 512Mi\n  traffic:\n  - latestRevision: true\n    percent: 100\n";
    check_knative_service(good);
    let cases: &[(&str, &str, &str)] = &[
        ("percent: 100", "percent: '100'", "spec.traffic[].percent"),
        ("x: 'false'", "x: false", "metadata.annotations.x"),
        (
            "containerConcurrency: 5",
            "containerConcurrency: 5\n      concurrency: 5",
            "spec.template.spec.concurrency",
        ),
        (
            "percent: 100",
            "percent: 100\n    url: http://a",
            "spec.traffic[].url",
        ),
        (
            "- containerPort: 8080",
            "- name: http1",
            "containerPort is missing",
        ),
        (
            "cpu: 1",
            "cpu: true",
            "limits.cpu: true is not an integer or a string",
        ),
    ];
    for (from, to, want) in cases {
        assert_eq!(good.matches(from).count(), 1, "{from}");
        let v = yaml::parse(&good.replace(from, to));
        let mut errors = Vec::new();
        schema_errors(&v, "", &mut errors);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{to}: {errors:?} lacks {want:?}"
        );
    }
}
