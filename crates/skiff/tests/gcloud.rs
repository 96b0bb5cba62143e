//! End-to-end tests with the real Google Cloud CLI: `skiff gcloud configure` writes a gcloud
//! configuration for a test server, then `gcloud run ...` deploys, updates, lists, moves
//! traffic, replaces and deletes services, and creates, executes and deletes jobs, while the
//! `skiff` CLI sees and changes the same objects. gcloud reaches the server only through its
//! API used as gcloud's HTTP proxy (no DNS, no internet).
//!
//! gcloud must be installed (CI has `/usr/bin/gcloud`); without it these tests fail, saying so.

use serde_json::Value;
use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");
const PROJECT: &str = "demo";
/// The longest one gcloud command may take (a deploy waits for a container to listen).
const GCLOUD_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion, killing it past `limit`.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// gcloud's human output as plain words: no ANSI colour or bold codes, and every run of
/// white space (gcloud wraps long lines) one space.
fn plain(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            // CSI: parameters up to a final letter.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A test server with the test image imported as `web`, and gcloud configured for it by
/// `skiff gcloud configure` in a private gcloud configuration directory.
struct Env {
    s: TestServer,
    gcloud_dir: tempfile::TempDir,
    _tmp: tempfile::TempDir,
}

fn gcloud_installed() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("gcloud").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "the Google Cloud CLI (gcloud) is not installed: these tests drive the real gcloud; install google-cloud-cli (CI has /usr/bin/gcloud)"
    );
}

impl Env {
    fn new() -> Env {
        Env::with_server_args(&[])
    }

    /// As [`Env::new`], the server started with extra `skiff server` flags.
    fn with_server_args(args: &[&str]) -> Env {
        gcloud_installed();
        let s = TestServer::start(Path::new(BIN), args);
        let tmp = tempfile::tempdir().unwrap();
        let layout = busybox_image(&tmp.path().join("web"), "web", &ImageSpec::default());
        s.ok(&["images", "import", layout.to_str().unwrap()]);
        let gcloud_dir = tempfile::tempdir().unwrap();
        let env = Env {
            s,
            gcloud_dir,
            _tmp: tmp,
        };
        let out = env.configure(&["--project", PROJECT]);
        assert!(
            out.contains("gcloud configuration [skiff]")
                && out.contains("gcloud --configuration skiff run services list"),
            "{out}"
        );
        env
    }

    /// `skiff gcloud configure ARGS` with this test's gcloud directory; returns stdout.
    fn configure(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        cmd.args(["gcloud", "configure"])
            .args(args)
            .env("CLOUDSDK_CONFIG", self.gcloud_dir.path())
            .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", self.s.api))
            .env("SKIFF_DATA_DIR", &self.s.data_dir)
            .env_remove("SKIFF_TOKEN")
            .env_remove("SKIFF_PROJECT");
        let out = run_bounded(cmd, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "skiff gcloud configure {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `skiff ARGS --project demo`, asserting success; returns stdout.
    fn skiff(&self, args: &[&str]) -> String {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--project", PROJECT]);
        self.s.ok(&a)
    }

    fn skiff_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--format", "json"]);
        serde_json::from_str(&self.skiff(&a)).unwrap()
    }

    /// The gcloud command, in configuration `skiff`, talking to nothing but the test server.
    fn command(&self, args: &[&str]) -> Command {
        self.command_in("skiff", args)
    }

    fn command_in(&self, configuration: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("gcloud");
        cmd.args(["--configuration", configuration, "--quiet"])
            .args(args);
        // Nothing from the caller's environment may point gcloud elsewhere.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            let proxy = matches!(
                k.to_ascii_lowercase().as_str(),
                "http_proxy" | "https_proxy" | "no_proxy" | "all_proxy"
            );
            let kept = matches!(
                k.as_str(),
                "CLOUDSDK_PYTHON" | "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE"
            );
            if proxy || (k.starts_with("CLOUDSDK_") && !kept) {
                cmd.env_remove(&k);
            }
        }
        cmd.env("CLOUDSDK_CONFIG", self.gcloud_dir.path())
            .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
            .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1");
        cmd
    }

    fn gcloud(&self, args: &[&str]) -> Output {
        run_bounded(self.command(args), GCLOUD_LIMIT)
    }

    /// Runs gcloud, asserts success; returns stdout and stderr (gcloud reports on stderr)
    /// as [`plain`] text.
    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.gcloud(args);
        let (stdout, stderr) = (plain(&out.stdout), plain(&out.stderr));
        assert!(
            out.status.success(),
            "gcloud {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}\nserver log: {}",
            out.status,
            self.s.log()
        );
        (stdout, stderr)
    }

    /// Runs gcloud, asserts failure; returns stderr as [`plain`] text.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.gcloud(args);
        assert!(
            !out.status.success(),
            "gcloud {args:?} should fail but printed {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        plain(&out.stderr)
    }

    /// `gcloud ARGS --format json`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--format", "json"]);
        let out = self.gcloud(&a);
        assert!(
            out.status.success(),
            "gcloud {a:?} failed: {}\nserver log: {}",
            String::from_utf8_lossy(&out.stderr),
            self.s.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "gcloud {a:?}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    fn host(&self, service: &str) -> String {
        format!("{service}.{PROJECT}.localhost")
    }

    fn url(&self, service: &str) -> String {
        format!("http://{}:{}", self.host(service), self.s.ingress)
    }
}

/// Sorted names of a list: gcloud's (an array) or the API's (`items`).
fn names(list: &Value) -> Vec<String> {
    let items = if list.is_array() {
        list
    } else {
        &list["items"]
    };
    let mut v: Vec<String> = items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

/// Percent-encodes a query parameter's value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `(revision, percent)` of a service's served traffic, from gcloud's describe.
fn traffic(svc: &Value) -> Vec<(String, u64)> {
    let mut t: Vec<(String, u64)> = svc["status"]["traffic"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["revisionName"].as_str().unwrap_or_default().to_string(),
                t["percent"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    t.sort();
    t
}

#[test]
fn gcloud_drives_services() {
    let e = Env::new();
    let s = &e.s;
    let svc_host = e.host("hello");

    // A new service without an auth flag: private, as on Cloud Run.
    let (_, err) = e.ok(&["run", "deploy", "hello", "--image", "web"]);
    assert!(
        err.contains(&format!("Service URL: {}", e.url("hello"))),
        "{err}"
    );
    assert_eq!(
        s.get(&svc_host, "/", None).0,
        401,
        "private without a token"
    );
    let token = s.ok(&["auth", "print-identity-token"]);
    let (code, body) = s.get(&svc_host, "/", Some(token.trim()));
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));

    // Updated with --allow-unauthenticated: a new revision, public.
    e.ok(&[
        "run",
        "deploy",
        "hello",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--set-env-vars",
        "GREETING=hi",
        "--no-cpu-throttling",
    ]);
    let (code, env) = s.get(&svc_host, "/cgi-bin/env", None);
    assert_eq!(code, 200, "{env}");
    assert!(env.contains("GREETING=hi"), "{env}");
    // --no-cpu-throttling: the new revision is billed for its instances' whole life.
    std::thread::sleep(Duration::from_millis(1500));
    let usage = e.skiff_json(&["billing", "report", "--service", "hello"]);
    let modes: Vec<&str> = usage["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["billing"].as_str().unwrap())
        .collect();
    assert_eq!(modes, vec!["request", "instance"], "{usage}");
    let revs = names(&e.json(&["run", "revisions", "list", "--service", "hello"]));
    assert_eq!(revs.len(), 2, "{revs:?}");
    let (r1, r2) = (revs[0].clone(), revs[1].clone());
    assert!(
        r1.starts_with("hello-00001-") && r2.starts_with("hello-00002-"),
        "{revs:?}"
    );
    // skiff sees what gcloud made.
    let skiff_revs = names(&e.skiff_json(&["revisions", "list", "--service", "hello"]));
    assert_eq!(skiff_revs, revs);

    // A new service made public at once; every request gcloud makes goes to Skiff.
    let (_, log) = e.ok(&[
        "run",
        "deploy",
        "open",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--log-http",
    ]);
    let words: Vec<&str> = log.split(' ').collect();
    let uris: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "uri:")
        .map(|w| w[1])
        .collect();
    assert!(uris.len() >= 4, "{log}");
    for u in &uris {
        assert!(
            u.starts_with(&format!("http://us-central1-run.skiff:{}/", s.api))
                || u.starts_with(&format!("http://run.skiff:{}/", s.api)),
            "gcloud asked {u}"
        );
    }
    assert!(uris.iter().any(|u| u.contains(":setIamPolicy")), "{uris:?}");
    assert_eq!(s.get(&e.host("open"), "/", None).0, 200);

    // list: regional, and without a region (all locations); describe.
    let listed = names(&e.json(&["run", "services", "list"]));
    assert_eq!(listed, vec!["hello", "open"]);
    let mut all = e.command(&["run", "services", "list", "--format", "json"]);
    all.env("CLOUDSDK_RUN_REGION", "");
    let out = run_bounded(all, GCLOUD_LIMIT);
    assert!(out.status.success(), "{out:?}");
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(names(&all), vec!["hello", "open"]);
    let d = e.json(&["run", "services", "describe", "hello"]);
    assert_eq!(d["status"]["url"], e.url("hello"));
    assert_eq!(
        d["metadata"]["labels"]["cloud.googleapis.com/location"],
        "us-central1"
    );
    let ready: Vec<(String, String)> = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for t in ["Ready", "ConfigurationsReady", "RoutesReady"] {
        assert!(
            ready.contains(&(t.to_string(), "True".to_string())),
            "{t} in {ready:?}"
        );
    }
    assert_eq!(
        d["status"]["observedGeneration"], d["metadata"]["generation"],
        "{d}"
    );

    // Traffic: split between the two revisions, then back to the latest.
    e.ok(&[
        "run",
        "services",
        "update-traffic",
        "hello",
        "--to-revisions",
        &format!("{r1}=50,{r2}=50"),
    ]);
    let d = e.json(&["run", "services", "describe", "hello"]);
    assert_eq!(traffic(&d), vec![(r1.clone(), 50), (r2.clone(), 50)]);
    let sk = e.skiff_json(&["services", "describe", "hello"]);
    assert_eq!(traffic(&sk), traffic(&d), "skiff sees the same split");
    e.ok(&["run", "services", "update-traffic", "hello", "--to-latest"]);
    let d = e.json(&["run", "services", "describe", "hello"]);
    assert_eq!(traffic(&d), vec![(r2.clone(), 100)]);
    assert_eq!(d["spec"]["traffic"][0]["latestRevision"], true);

    // skiff changes what gcloud made, gcloud sees it.
    e.skiff(&[
        "deploy",
        "hello",
        "--image",
        "web",
        "--update-env-vars",
        "FROM=skiff",
    ]);
    let revs = names(&e.json(&["run", "revisions", "list", "--service", "hello"]));
    assert_eq!(revs.len(), 3, "{revs:?}");
    let d = e.json(&["run", "services", "describe", "hello"]);
    assert_eq!(d["status"]["latestReadyRevisionName"], revs[2].as_str());
    let (_, env) = s.get(&svc_host, "/cgi-bin/env", None);
    assert!(
        env.contains("FROM=skiff") && env.contains("GREETING=hi"),
        "{env}"
    );

    // And the reverse: skiff makes a service, gcloud describes it and moves its traffic.
    e.skiff(&[
        "deploy",
        "mine",
        "--image",
        "web",
        "--allow-unauthenticated",
    ]);
    e.skiff(&["deploy", "mine", "--image", "web", "--set-env-vars", "V=2"]);
    let mine = names(&e.json(&["run", "revisions", "list", "--service", "mine"]));
    assert_eq!(mine.len(), 2, "{mine:?}");
    e.ok(&[
        "run",
        "services",
        "update-traffic",
        "mine",
        "--to-revisions",
        &format!("{}=100", mine[0]),
    ]);
    let sk = e.skiff_json(&["services", "describe", "mine"]);
    assert_eq!(traffic(&sk), vec![(mine[0].clone(), 100)]);
    let (_, env) = s.get(&e.host("mine"), "/cgi-bin/env", None);
    assert!(!env.contains("V=2"), "the first revision serves: {env}");

    // services replace FILE: create from a file, then update from gcloud's own export (which
    // names the namespace, so gcloud looks the project up first).
    let file = e.gcloud_dir.path().join("svc.yaml");
    std::fs::write(
        &file,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: replaced\nspec:\n  template:\n    spec:\n      containers:\n      - image: web\n        env:\n        - name: VERSION\n          value: \"1\"\n",
    )
    .unwrap();
    e.ok(&["run", "services", "replace", file.to_str().unwrap()]);
    let out = e.gcloud(&[
        "run", "services", "describe", "replaced", "--format", "export",
    ]);
    assert!(out.status.success(), "{out:?}");
    let export = String::from_utf8(out.stdout).unwrap();
    assert!(export.contains("namespace: demo"), "{export}");
    assert!(export.contains("value: '1'"), "{export}");
    std::fs::write(&file, export.replace("value: '1'", "value: '2'")).unwrap();
    e.ok(&["run", "services", "replace", file.to_str().unwrap()]);
    let rep = names(&e.json(&["run", "revisions", "list", "--service", "replaced"]));
    assert_eq!(rep.len(), 2, "{rep:?}");
    // gcloud sent no auth flag: private; ask with an identity token.
    let (code, env) = s.get(&e.host("replaced"), "/cgi-bin/env", Some(token.trim()));
    assert_eq!(code, 200, "{env}");
    assert!(env.contains("VERSION=2"), "{env}");

    // services update with any flag: gcloud finds the revision it made by a label selector
    // with spaces around `=` (`client.knative.dev/nonce = ...`).
    e.ok(&[
        "run",
        "services",
        "update",
        "hello",
        "--update-env-vars",
        "A=1",
    ]);
    let (_, env) = s.get(&svc_host, "/cgi-bin/env", None);
    assert!(env.contains("A=1") && env.contains("FROM=skiff"), "{env}");
    e.ok(&["run", "services", "update", "hello", "--memory", "1Gi"]);
    let d = e.json(&["run", "services", "describe", "hello"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"], "1Gi",
        "{d}"
    );
    let revs = names(&e.json(&["run", "revisions", "list", "--service", "hello"]));
    assert_eq!(
        d["status"]["latestReadyRevisionName"],
        revs[revs.len() - 1].as_str()
    );

    // Label selectors of every form, on the API's list calls.
    let knative = format!("/apis/serving.knative.dev/v1/namespaces/{PROJECT}");
    let listed = |what: &str, sel: &str| {
        let (code, body) = s.api(
            "GET",
            &format!("{knative}/{what}?labelSelector={}", encode(sel)),
            None,
        );
        assert_eq!(code, 200, "{sel}: {body}");
        names(&serde_json::from_str(&body).unwrap())
    };
    let svc = "serving.knative.dev/service";
    let hello_revs = listed("revisions", &format!("{svc} == hello"));
    assert_eq!(hello_revs, revs);
    let both = listed("revisions", &format!("{svc} in (hello, mine)"));
    assert_eq!(both.len(), revs.len() + mine.len(), "{both:?}");
    let others = listed("revisions", &format!("{svc} notin (hello,mine), {svc}"));
    assert!(
        !others.is_empty()
            && others
                .iter()
                .all(|r| r.starts_with("replaced-") || r.starts_with("open-")),
        "{others:?}"
    );
    assert_eq!(
        listed("revisions", &format!("{svc}!=hello,{svc}!=mine")),
        others
    );
    assert!(listed("revisions", &format!("!{svc}")).is_empty());
    assert_eq!(
        listed("services", "cloud.googleapis.com/location=us-central1"),
        vec!["hello", "mine", "open", "replaced"]
    );
    assert!(listed("services", "cloud.googleapis.com/location = elsewhere").is_empty());
    let (code, body) = s.api(
        "GET",
        &format!("{knative}/revisions?labelSelector={}", encode("a in (b")),
        None,
    );
    assert_eq!(code, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{body}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid labelSelector \"a in (b\""),
        "{body}"
    );

    // A revision whose container exits: gcloud fails with Skiff's message, traffic stays.
    let err = e.fails(&[
        "run",
        "deploy",
        "hello",
        "--image",
        "web",
        "--command",
        "/bin/sh",
        "--args=-c,echo skiff-boom; exit 3",
    ]);
    assert!(
        err.contains("exited with code 3") && err.contains("skiff-boom"),
        "{err}"
    );
    let d = e.json(&["run", "services", "describe", "hello"]);
    assert_eq!(d["status"]["latestReadyRevisionName"], revs[4].as_str());
    assert_eq!(
        s.get(&svc_host, "/", None).0,
        200,
        "the old revision serves"
    );
    // A new service whose only revision fails.
    let err = e.fails(&[
        "run",
        "deploy",
        "broken",
        "--image",
        "web",
        "--command",
        "/bin/false",
    ]);
    assert!(err.contains("exited with code 1"), "{err}");

    // delete: gone for gcloud and skiff.
    e.ok(&["run", "services", "delete", "hello"]);
    e.ok(&["run", "services", "delete", "broken"]);
    let err = e.fails(&["run", "services", "describe", "hello"]);
    assert!(err.contains("Cannot find service [hello]"), "{err}");
    let left = names(&e.skiff_json(&["services", "list"]));
    assert_eq!(left, vec!["mine", "open", "replaced"]);
    assert_eq!(s.get(&svc_host, "/", None).0, 404);
    // skiff deletes what gcloud made.
    e.skiff(&["services", "delete", "open"]);
    assert_eq!(
        names(&e.json(&["run", "services", "list"])),
        vec!["mine", "replaced"]
    );
}

#[test]
fn gcloud_drives_jobs() {
    let e = Env::new();
    e.ok(&[
        "run",
        "jobs",
        "create",
        "count",
        "--image",
        "web",
        "--tasks",
        "3",
        "--max-retries",
        "0",
        "--command",
        "/bin/sh",
        "--args=-c,echo task $CLOUD_RUN_TASK_INDEX of $CLOUD_RUN_TASK_COUNT $WHO",
    ]);
    let (_, err) = e.ok(&["run", "jobs", "execute", "count", "--wait"]);
    assert!(err.contains("has successfully completed"), "{err}");
    // Overrides: args, env and task count for one execution.
    e.ok(&[
        "run",
        "jobs",
        "execute",
        "count",
        "--wait",
        "--tasks",
        "2",
        "--update-env-vars",
        "WHO=override",
        "--task-timeout",
        "60s",
        "--args=-c,echo over $CLOUD_RUN_TASK_INDEX of $CLOUD_RUN_TASK_COUNT $WHO",
    ]);
    let execs = e.json(&["run", "jobs", "executions", "list", "--job", "count"]);
    let execs = execs.as_array().unwrap().clone();
    assert_eq!(execs.len(), 2, "{execs:?}");
    let by_tasks = |n: u64| {
        execs
            .iter()
            .find(|x| x["spec"]["taskCount"].as_u64() == Some(n))
            .unwrap_or_else(|| panic!("an execution of {n} tasks in {execs:?}"))
            .clone()
    };
    let (first, second) = (by_tasks(3), by_tasks(2));
    assert_eq!(first["status"]["succeededCount"], 3);
    assert_eq!(second["status"]["succeededCount"], 2);
    let first_name = first["metadata"]["name"].as_str().unwrap().to_string();
    let second_name = second["metadata"]["name"].as_str().unwrap().to_string();
    let logs = e.skiff(&["logs", "read", "--job", "count", "--limit", "100"]);
    assert!(logs.contains("task 2 of 3"), "{logs}");
    assert!(logs.contains("over 1 of 2 override"), "{logs}");

    // Tasks of one execution.
    let tasks = e.json(&[
        "run",
        "jobs",
        "executions",
        "tasks",
        "list",
        "--execution",
        &first_name,
    ]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    for t in tasks {
        assert_eq!(
            t["metadata"]["labels"]["run.googleapis.com/runningState"], "Succeeded",
            "{t}"
        );
    }

    // skiff sees the executions gcloud made, and gcloud runs a job skiff made.
    let sk = e.skiff_json(&["jobs", "executions", "list", "--job", "count"]);
    let mut want = vec![first_name.clone(), second_name.clone()];
    want.sort();
    assert_eq!(names(&sk), want);
    e.skiff(&[
        "jobs",
        "create",
        "mine",
        "--image",
        "web",
        "--command",
        "/bin/true",
    ]);
    e.ok(&["run", "jobs", "execute", "mine", "--wait"]);
    let sk = e.skiff_json(&["jobs", "describe", "mine"]);
    assert_eq!(sk["status"]["executionCount"], 1, "{sk}");

    // A failing execution: gcloud fails; the execution says why in Skiff's words.
    e.ok(&[
        "run",
        "jobs",
        "create",
        "fails",
        "--image",
        "web",
        "--max-retries",
        "0",
        "--command",
        "/bin/sh",
        "--args=-c,exit 7",
    ]);
    let err = e.fails(&["run", "jobs", "execute", "fails", "--wait"]);
    assert!(err.contains("The execution failed"), "{err}");
    let failed = names(&e.json(&["run", "jobs", "executions", "list", "--job", "fails"]));
    assert_eq!(failed.len(), 1);
    let (out, _) = e.ok(&["run", "jobs", "executions", "describe", &failed[0]]);
    assert!(
        out.contains("exited with code 7") && out.contains("Task(s) failed"),
        "{out}"
    );
    let tasks = e.json(&[
        "run",
        "jobs",
        "executions",
        "tasks",
        "list",
        "--execution",
        &failed[0],
    ]);
    assert_eq!(
        tasks[0]["metadata"]["labels"]["run.googleapis.com/runningState"],
        "Failed"
    );

    // Delete an execution, then the job.
    e.ok(&["run", "jobs", "executions", "delete", &first_name]);
    let left = names(&e.json(&["run", "jobs", "executions", "list", "--job", "count"]));
    assert_eq!(left, vec![second_name.clone()]);
    e.ok(&["run", "jobs", "delete", "count"]);
    let jobs = names(&e.skiff_json(&["jobs", "list"]));
    assert_eq!(jobs, vec!["fails", "mine"]);
    let err = e.fails(&["run", "jobs", "describe", "count"]);
    assert!(err.to_lowercase().contains("count"), "{err}");
    // skiff deletes a job gcloud made.
    e.skiff(&["jobs", "delete", "fails"]);
    assert_eq!(names(&e.json(&["run", "jobs", "list"])), vec!["mine"]);
}

/// A raw HTTP/1.1 request to the API in absolute form (`GET http://host/path`), as a client
/// using the API as its proxy sends it: `(status, body)`.
fn absolute_form(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        c,
        "GET http://us-central1-run.skiff:{port}{path} HTTP/1.1\r\nHost: us-central1-run.skiff:{port}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

#[test]
fn bad_requests_name_the_field_and_change_nothing() {
    let e = Env::new();
    let s = &e.s;
    // The API answers requests in absolute form, with the admin token only.
    let token = std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap();
    let path = format!("/apis/serving.knative.dev/v1/namespaces/{PROJECT}/services");
    let (code, body) = absolute_form(s.api, &path, Some(token.trim()));
    assert_eq!(code, 200, "{body}");
    assert_eq!(absolute_form(s.api, &path, None).0, 401);
    assert_eq!(absolute_form(s.api, &path, Some("wrong")).0, 401);
    // A tunnel anywhere else is refused: gcloud reaches nothing but Skiff.
    let mut c = std::net::TcpStream::connect(("127.0.0.1", s.api)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nAuthorization: Bearer {}\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut head = [0u8; 12];
    c.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 403");

    e.ok(&["run", "deploy", "keep", "--image", "web"]);
    let before = e.json(&["run", "services", "describe", "keep"]);
    let services = |e: &Env| names(&e.json(&["run", "services", "list"]));

    // Through gcloud: an image Skiff does not have, a file with a bad name, with no image.
    let err = e.fails(&["run", "deploy", "keep", "--image", "nothere:v1"]);
    assert!(
        err.contains("INVALID_ARGUMENT")
            && err.contains("spec.template.spec.containers[0].image")
            && err.contains("nothere:v1"),
        "{err}"
    );
    let file = e.gcloud_dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  template:\n    spec:\n      containers:\n      - image: web\n",
    )
    .unwrap();
    let err = e.fails(&["run", "services", "replace", file.to_str().unwrap()]);
    assert!(
        err.contains("INVALID_ARGUMENT")
            && err.contains("metadata.name")
            && err.contains("Bad_Name"),
        "{err}"
    );
    std::fs::write(
        &file,
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: keep\nspec:\n  template:\n    spec:\n      containers:\n      - env:\n        - name: A\n          value: b\n",
    )
    .unwrap();
    let err = e.fails(&["run", "services", "replace", file.to_str().unwrap()]);
    assert!(
        err.contains("spec.template.spec.containers[0].image") && err.contains("no image"),
        "{err}"
    );
    let err = e.fails(&["run", "jobs", "create", "j", "--image", "nothere"]);
    assert!(
        err.contains("spec.template.spec.template.spec.containers[0].image"),
        "{err}"
    );

    // Straight to the API (gcloud checks types itself): a field of the wrong type.
    let svc = |concurrency: &str, name: &str| {
        format!(
            r#"{{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{{"name":"{name}"}},"spec":{{"template":{{"spec":{{"containerConcurrency":{concurrency},"containers":[{{"image":"web"}}]}}}}}}}}"#
        )
    };
    let (code, body) = s.api("POST", &path, Some(&svc("\"lots\"", "typed")));
    assert_eq!(code, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{body}");
    assert_eq!(v["error"]["code"], 400, "{body}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("spec.template.spec.containerConcurrency"),
        "{msg}"
    );
    let (code, body) = s.api(
        "PUT",
        &format!("{path}/keep"),
        Some(&svc("\"lots\"", "keep")),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("spec.template.spec.containerConcurrency"),
        "{body}"
    );
    let (code, body) = s.api("POST", &path, Some(&svc("5", "Bad_Name")));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("metadata.name"), "{body}");
    let jobs = format!("/apis/run.googleapis.com/v1/namespaces/{PROJECT}/jobs");
    let (code, body) = s.api(
        "POST",
        &jobs,
        Some(r#"{"apiVersion":"run.googleapis.com/v1","kind":"Job","metadata":{"name":"typed"},"spec":{"template":{"spec":{"taskCount":"many","template":{"spec":{"containers":[{"image":"web"}]}}}}}}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("spec.template.spec.taskCount"), "{body}");
    let (code, body) = s.api(
        "POST",
        &jobs,
        Some(r#"{"apiVersion":"run.googleapis.com/v1","kind":"Job","metadata":{"name":"Bad_J"},"spec":{"template":{"spec":{"template":{"spec":{"containers":[{"image":"web"}]}}}}}}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("metadata.name") && body.contains("Bad_J"),
        "{body}"
    );

    // Nothing changed.
    assert_eq!(services(&e), vec!["keep"]);
    let after = e.json(&["run", "services", "describe", "keep"]);
    assert_eq!(
        after["metadata"]["generation"],
        before["metadata"]["generation"]
    );
    assert_eq!(after["spec"], before["spec"]);
    assert!(names(&e.json(&["run", "jobs", "list"])).is_empty());
    // A 404 is "does not exist" for gcloud.
    let err = e.fails(&["run", "services", "describe", "nothere"]);
    assert!(err.contains("Cannot find service [nothere]"), "{err}");

    // configure again: another configuration, with --token copied 0600 into gcloud's dir.
    let out = e.configure(&[
        "--project",
        PROJECT,
        "--configuration",
        "second",
        "--token",
        token.trim(),
    ]);
    assert!(out.contains("configuration [second]"), "{out}");
    let copy = e.gcloud_dir.path().join("skiff/second.token");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&copy).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let cmd = e.command_in("second", &["run", "services", "list", "--format", "json"]);
    let out = run_bounded(cmd, GCLOUD_LIMIT);
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(names(&listed), vec!["keep"]);
}

/// The text after gcloud's `YYYY-MM-DD HH:MM:SS ` on each line of `logs read`.
fn log_texts(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.splitn(3, ' ').nth(2).unwrap_or_default().to_string())
        .collect()
}

#[test]
fn gcloud_reads_logs() {
    let e = Env::new();
    let s = &e.s;
    // An app that writes a structured line, then 30 lines, then serves.
    let script = "printf '{\"severity\":\"ERROR\"\\054\"message\":\"structured boom\"}\\n'; i=0; while [ $i -lt 30 ]; do i=$((i+1)); echo app line $i; done; exec httpd -f -p $PORT -h /www";
    e.ok(&[
        "run",
        "deploy",
        "logged",
        "--image",
        "web",
        "--allow-unauthenticated",
        &format!("--args={script}"),
    ]);
    let host = e.host("logged");
    assert_eq!(s.get(&host, "/", None).0, 200);
    assert_eq!(s.get(&host, "/nothere", None).0, 404);
    // Request entries are written off the request path: wait for both.
    let skiff_lines = |limit: &str| {
        e.skiff(&["logs", "read", "--service", "logged", "--limit", limit])
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    s.wait_for("both request entries", 60, || {
        skiff_lines("100")
            .iter()
            .any(|l| l.contains("requests GET 404 "))
    });
    let mine = skiff_lines("20");
    assert!(
        mine.iter()
            .any(|l| l.ends_with(&format!("requests GET 200 http://{host}/"))),
        "{mine:#?}"
    );

    // gcloud run services logs read: the newest 20 entries, shown oldest first, the same
    // ones skiff shows (gcloud prints app output and requests, not the platform's own).
    let out = e.gcloud(&["run", "services", "logs", "read", "logged", "--limit", "20"]);
    assert!(out.status.success(), "{out:?}\n{}", s.log());
    let shown = log_texts(&out.stdout);
    let expected: Vec<String> = mine
        .iter()
        .filter(|l| !l.contains(" system "))
        .map(|l| l.splitn(4, ' ').nth(3).unwrap_or_default().to_string())
        .collect();
    assert_eq!(shown, expected, "gcloud: {shown:#?}\nskiff: {mine:#?}");
    assert!(shown.contains(&"app line 30".to_string()), "{shown:#?}");
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("GET 404 http://") && l.ends_with("/nothere")),
        "{shown:#?}"
    );
    // Skiff answers to any region, its logs too.
    let out = e.gcloud(&[
        "run",
        "services",
        "logs",
        "read",
        "logged",
        "--limit",
        "20",
        "--region",
        "europe-west1",
    ]);
    assert!(out.status.success(), "{out:?}");
    let elsewhere = log_texts(&out.stdout);
    assert!(
        elsewhere.contains(&"app line 30".to_string())
            && elsewhere.iter().any(|l| l.starts_with("GET 404 ")),
        "{elsewhere:#?}"
    );
    // --log-filter narrows.
    let out = e.gcloud(&[
        "run",
        "services",
        "logs",
        "read",
        "logged",
        "--log-filter",
        "textPayload:\"app line 1\"",
    ]);
    assert!(out.status.success(), "{out:?}");
    let mut want: Vec<String> = vec!["app line 1".into()];
    want.extend((10..=19).map(|i| format!("app line {i}")));
    assert_eq!(log_texts(&out.stdout), want);

    // gcloud logging read: entries as Cloud Run's, severity lifted from a structured line.
    let errors = e.json(&[
        "logging",
        "read",
        "resource.type=cloud_run_revision AND resource.labels.service_name=logged AND severity>=ERROR",
        "--limit",
        "10",
    ]);
    let errors = errors.as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0]["severity"], "ERROR");
    assert_eq!(errors[0]["jsonPayload"]["message"], "structured boom");
    assert_eq!(
        errors[0]["logName"],
        format!("projects/{PROJECT}/logs/run.googleapis.com%2Fstdout")
    );
    assert_eq!(errors[0]["resource"]["labels"]["service_name"], "logged");
    let reqs = e.json(&[
        "logging",
        "read",
        "logName:requests AND httpRequest.status>=400",
        "--limit",
        "10",
    ]);
    let reqs = reqs.as_array().unwrap();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let h = &reqs[0]["httpRequest"];
    assert_eq!(h["requestMethod"], "GET");
    assert_eq!(h["status"], 404);
    assert_eq!(reqs[0]["severity"], "WARNING");
    assert!(h["latency"].as_str().unwrap().ends_with('s'), "{h}");
    assert_eq!(h["remoteIp"], "127.0.0.1");
    assert!(h["responseSize"].as_str().is_some(), "{h}");
    // A bad filter is the server's INVALID_ARGUMENT, naming it.
    let err = e.fails(&["logging", "read", "severity>=", "--limit", "1"]);
    assert!(err.contains("invalid filter"), "{err}");

    // gcloud run jobs logs read: every task's lines.
    e.ok(&[
        "run",
        "jobs",
        "create",
        "chatty",
        "--image",
        "web",
        "--tasks",
        "2",
        "--args=echo task $CLOUD_RUN_TASK_INDEX says hi",
    ]);
    e.ok(&["run", "jobs", "execute", "chatty", "--wait"]);
    let out = e.gcloud(&["run", "jobs", "logs", "read", "chatty"]);
    assert!(out.status.success(), "{out:?}");
    let mut texts = log_texts(&out.stdout);
    texts.sort();
    assert_eq!(texts, vec!["task 0 says hi", "task 1 says hi"]);
    let one = e.json(&[
        "logging",
        "read",
        "resource.labels.job_name=chatty AND labels.\"run.googleapis.com/task_index\"=1 AND logName:stdout",
    ]);
    let one = one.as_array().unwrap();
    assert_eq!(one.len(), 1, "{one:#?}");
    assert_eq!(one[0]["textPayload"], "task 1 says hi");
    assert_eq!(one[0]["resource"]["type"], "cloud_run_job");
    assert!(one[0]["labels"]["run.googleapis.com/execution_name"]
        .as_str()
        .unwrap()
        .starts_with("chatty-"));
}

/// What one `gcloud run` command should do against Skiff.
enum Expect {
    /// Exit 0.
    Works,
    /// Fail, with stderr that contains this (the reason it cannot apply to one machine).
    Refused(&'static str),
}

/// Walks the `gcloud run` command groups of gcloud 528 (services, revisions, jobs, executions,
/// tasks, regions) against a real server, each command as a user types it, and fails on any
/// that breaks. Prints one line per command (`works: gcloud run ...`); README's list is that
/// output.
#[test]
fn gcloud_run_commands_walk() {
    let e = Env::new();
    let dir = e.gcloud_dir.path();
    e.ok(&["run", "deploy", "walk", "--image", "web"]);
    e.ok(&[
        "run",
        "jobs",
        "create",
        "walkjob",
        "--image",
        "web",
        "--args=echo walking",
    ]);
    e.ok(&["run", "jobs", "execute", "walkjob", "--wait"]);
    let exec =
        names(&e.json(&["run", "jobs", "executions", "list", "--job", "walkjob"]))[0].clone();
    let task = names(&e.json(&[
        "run",
        "jobs",
        "executions",
        "tasks",
        "list",
        "--execution",
        &exec,
    ]))[0]
        .clone();
    let export = |what: &str, name: &str, file: &str| {
        let out = e.gcloud(&["run", what, "describe", name, "--format", "export"]);
        assert!(out.status.success(), "{out:?}");
        let path = dir.join(file);
        std::fs::write(&path, out.stdout).unwrap();
        path.to_str().unwrap().to_string()
    };
    let svc_file = export("services", "walk", "walk.yaml");
    let job_file = export("jobs", "walkjob", "walkjob.yaml");
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"bindings":[{"role":"roles/run.invoker","members":["allUsers"]}]}"#,
    )
    .unwrap();
    let policy = policy.to_str().unwrap().to_string();

    let mut cmds: Vec<(Vec<String>, Expect)> = Vec::new();
    let mut add = |args: &[&str], x: Expect| {
        cmds.push((args.iter().map(|s| s.to_string()).collect(), x));
    };
    use Expect::*;
    add(&["regions", "list"], Works);
    add(&["services", "list"], Works);
    add(&["services", "describe", "walk"], Works);
    add(
        &["services", "update", "walk", "--update-env-vars", "W=1"],
        Works,
    );
    add(&["services", "update", "walk", "--memory", "1Gi"], Works);
    add(
        &["services", "update-traffic", "walk", "--to-latest"],
        Works,
    );
    add(&["services", "replace", &svc_file], Works);
    add(&["services", "logs", "read", "walk", "--limit", "5"], Works);
    add(&["services", "get-iam-policy", "walk"], Works);
    add(
        &[
            "services",
            "add-iam-policy-binding",
            "walk",
            "--member",
            "allUsers",
            "--role",
            "roles/run.invoker",
        ],
        Works,
    );
    add(
        &[
            "services",
            "remove-iam-policy-binding",
            "walk",
            "--member",
            "allUsers",
            "--role",
            "roles/run.invoker",
        ],
        Works,
    );
    add(&["services", "set-iam-policy", "walk", &policy], Works);
    add(&["revisions", "list"], Works);
    add(&["revisions", "list", "--service", "walk"], Works);
    add(&["jobs", "list"], Works);
    add(&["jobs", "describe", "walkjob"], Works);
    add(
        &["jobs", "update", "walkjob", "--update-env-vars", "W=1"],
        Works,
    );
    add(&["jobs", "replace", &job_file], Works);
    add(&["jobs", "execute", "walkjob", "--wait"], Works);
    add(&["jobs", "logs", "read", "walkjob"], Works);
    add(&["jobs", "executions", "list"], Works);
    add(&["jobs", "executions", "list", "--job", "walkjob"], Works);
    add(&["jobs", "executions", "describe", &exec], Works);
    add(
        &["jobs", "executions", "tasks", "list", "--execution", &exec],
        Works,
    );
    add(&["jobs", "executions", "tasks", "describe", &task], Works);
    add(&["jobs", "deploy", "walkjob", "--image", "web"], Works);
    add(&["jobs", "get-iam-policy", "walkjob"], Works);
    add(
        &[
            "jobs",
            "add-iam-policy-binding",
            "walkjob",
            "--member",
            "user:ann@example.com",
            "--role",
            "roles/run.invoker",
        ],
        Works,
    );
    add(
        &[
            "jobs",
            "remove-iam-policy-binding",
            "walkjob",
            "--member",
            "user:ann@example.com",
            "--role",
            "roles/run.invoker",
        ],
        Works,
    );
    add(&["jobs", "set-iam-policy", "walkjob", &policy], Works);
    add(
        &["jobs", "executions", "cancel", &exec],
        Refused("is not running"),
    );
    add(
        &["beta", "run", "jobs", "executions", "logs", "read", &exec],
        Works,
    );
    add(
        &["beta", "run", "revisions", "logs", "read", "walk-00001"],
        Works,
    );
    add(&["configurations", "list"], Works);
    add(&["configurations", "describe", "walk"], Works);
    add(&["routes", "list"], Works);
    add(&["routes", "describe", "walk"], Works);
    add(&["services", "proxy", "walk"], Refused("cloud-run-proxy"));
    add(&["jobs", "executions", "delete", &exec], Works);
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (args, want) in &cmds {
        let mut a = if args[0] == "beta" {
            vec![]
        } else {
            vec!["run"]
        };
        a.extend(args.iter().map(String::as_str));
        let out = e.gcloud(&a);
        let err = plain(&out.stderr);
        let ok = match want {
            Works => out.status.success(),
            Refused(why) => !out.status.success() && err.contains(why),
        };
        let shown = format!("gcloud {}", a.join(" ")).replace(dir.to_str().unwrap(), "DIR");
        report.push(match (ok, want) {
            (true, Works) => format!("works: {shown}"),
            (true, Refused(_)) => format!(
                "refused: {shown}: {}",
                err.rsplit("ERROR: ").next().unwrap_or_default()
            ),
            (false, _) => format!("BROKEN: {shown}"),
        });
        if !ok {
            failures.push(format!("{shown}: {err}"));
        }
    }
    // Revisions: describe one, delete one that no longer serves.
    let revs = names(&e.json(&["run", "revisions", "list", "--service", "walk"]));
    for (args, ok_needed) in [
        (
            vec![
                "run",
                "revisions",
                "describe",
                revs[revs.len() - 1].as_str(),
            ],
            true,
        ),
        (vec!["run", "revisions", "delete", revs[0].as_str()], true),
        (vec!["run", "services", "delete", "walk"], true),
        (vec!["run", "jobs", "delete", "walkjob"], true),
    ] {
        let out = e.gcloud(&args);
        let shown = format!("gcloud {}", args.join(" "));
        report.push(format!(
            "{}: {shown}",
            if out.status.success() {
                "works"
            } else {
                "BROKEN"
            }
        ));
        if out.status.success() != ok_needed {
            failures.push(format!("{shown}: {}", plain(&out.stderr)));
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "broken gcloud commands:\n{}",
        failures.join("\n")
    );
}

#[test]
fn gcloud_deploys_sidecars_with_container_flags_and_depends_on() {
    let e = Env::new();
    let s = &e.s;
    // `--container NAME` starts each container's flags; `--depends-on` writes the
    // container-dependencies annotation.
    e.ok(&[
        "run",
        "deploy",
        "pair",
        "--allow-unauthenticated",
        "--container",
        "app",
        "--image",
        "web",
        "--port",
        "8080",
        "--depends-on",
        "side",
        "--container",
        "side",
        "--image",
        "web",
        "--args",
        "httpd -f -p 9000 -h /www",
        "--memory",
        "256Mi",
    ]);
    let svc = e.skiff_json(&["services", "describe", "pair"]);
    let t = &svc["spec"]["template"];
    let names: Vec<&str> = t["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.contains(&"app") && names.contains(&"side"), "{svc}");
    let deps = t["metadata"]["annotations"]["run.googleapis.com/container-dependencies"]
        .as_str()
        .unwrap_or_default();
    assert!(deps.contains("side"), "{svc}");
    // The app reaches the sidecar on localhost.
    let (code, body) = s.get(
        &e.host("pair"),
        "/cgi-bin/sh?wget%20-qO-%20http%3A%2F%2F127.0.0.1%3A9000%2Findex.html",
        None,
    );
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));
}

#[test]
fn gcloud_deploys_probes_in_memory_volumes_and_http2() {
    let e = Env::new();
    let s = &e.s;
    e.ok(&[
        "run",
        "deploy",
        "spec",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--startup-probe",
        "httpGet.path=/index.html,periodSeconds=1,failureThreshold=5",
        "--liveness-probe",
        "httpGet.path=/index.html,periodSeconds=30",
        "--add-volume",
        "name=cache,type=in-memory,size-limit=64Mi",
        "--add-volume-mount",
        "volume=cache,mount-path=/cache",
    ]);
    let svc = e.skiff_json(&["services", "describe", "spec"]);
    let t = &svc["spec"]["template"]["spec"];
    let c = &t["containers"][0];
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/index.html", "{svc}");
    assert_eq!(c["startupProbe"]["periodSeconds"], 1, "{svc}");
    assert_eq!(c["startupProbe"]["failureThreshold"], 5, "{svc}");
    assert_eq!(c["livenessProbe"]["periodSeconds"], 30, "{svc}");
    assert_eq!(t["volumes"][0]["emptyDir"]["medium"], "Memory", "{svc}");
    assert_eq!(t["volumes"][0]["emptyDir"]["sizeLimit"], "64Mi", "{svc}");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/cache", "{svc}");
    let (code, mounts) = s.get(
        &e.host("spec"),
        "/cgi-bin/sh?grep%20%2Fcache%20%2Fproc%2Fmounts",
        None,
    );
    assert_eq!(code, 200, "{mounts}");
    assert!(mounts.contains("tmpfs /cache tmpfs"), "{mounts}");

    // A probe out of Cloud Run's limits: gcloud shows the server's error, naming the field.
    let out = e.gcloud(&[
        "run",
        "deploy",
        "spec",
        "--image",
        "web",
        "--startup-probe",
        "httpGet.path=/index.html,periodSeconds=100,failureThreshold=3",
    ]);
    assert!(!out.status.success());
    let err = plain(&out.stderr);
    assert!(
        err.contains("spec.template.spec.containers[0].startupProbe.failureThreshold: 3 × periodSeconds 100 is above 240 seconds"),
        "{err}"
    );

    // A gRPC startup probe (grpc.port, grpc.service): busybox httpd speaks no gRPC, so the
    // revision fails with the probe's result, and the service keeps its ready revision.
    let out = e.gcloud(&[
        "run",
        "deploy",
        "spec",
        "--image",
        "web",
        "--startup-probe",
        "grpc.port=8080,grpc.service=app,periodSeconds=1,failureThreshold=3",
    ]);
    assert!(!out.status.success());
    let err = plain(&out.stderr);
    assert!(
        err.contains(
            "the startup probe (gRPC health check of \"app\" on port 8080) failed 3 times in a row"
        ),
        "{err}"
    );
    let svc = e.skiff_json(&["services", "describe", "spec"]);
    let latest = svc["status"]["latestCreatedRevisionName"].as_str().unwrap();
    let rev = e.skiff_json(&["revisions", "describe", latest]);
    let probe = &rev["spec"]["containers"][0]["startupProbe"];
    assert_eq!(probe["grpc"]["port"], 8080, "{rev}");
    assert_eq!(probe["grpc"]["service"], "app", "{rev}");
    let (code, _) = s.get(&e.host("spec"), "/index.html", None);
    assert_eq!(code, 200);

    // --use-http2 names the port h2c; --no-use-http2 takes the name away (HTTP/1.1 again).
    e.ok(&["run", "deploy", "h2", "--image", "web", "--use-http2"]);
    let svc = e.skiff_json(&["services", "describe", "h2"]);
    assert_eq!(
        svc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"], "h2c",
        "{svc}"
    );
    e.ok(&["run", "deploy", "h2", "--image", "web", "--no-use-http2"]);
    let svc = e.skiff_json(&["services", "describe", "h2"]);
    let name = &svc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"];
    assert!(name.is_null() || name == "http1", "{svc}");

    // --ingress internal: the Service's run.googleapis.com/ingress; then 404 from outside.
    e.ok(&[
        "run",
        "deploy",
        "h2",
        "--image",
        "web",
        "--ingress",
        "internal",
    ]);
    let svc = e.skiff_json(&["services", "describe", "h2"]);
    assert_eq!(
        svc["metadata"]["annotations"]["run.googleapis.com/ingress"], "internal",
        "{svc}"
    );
    let (code, body) = s.get(&e.host("h2"), "/", None);
    assert_eq!(code, 404, "{body}");
    e.ok(&["run", "services", "update", "h2", "--ingress", "all"]);
    let (code, body) = s.get(&e.host("h2"), "/", None);
    assert_ne!(code, 404, "{body}");
}

/// `gcloud secrets create|versions add|versions access|versions list` against Skiff's Secret
/// Manager API, and `gcloud run deploy --set-secrets` using them as an env var and a file.
#[test]
fn gcloud_drives_secrets() {
    let e = Env::new();
    let s = &e.s;
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::write(&one, "gcloud-secret-one").unwrap();
    std::fs::write(&two, "gcloud-secret-two").unwrap();
    e.ok(&[
        "secrets",
        "create",
        "db",
        "--data-file",
        one.to_str().unwrap(),
        "--replication-policy",
        "automatic",
    ]);
    e.ok(&[
        "secrets",
        "versions",
        "add",
        "db",
        "--data-file",
        two.to_str().unwrap(),
    ]);
    let out = e.gcloud(&["secrets", "versions", "access", "latest", "--secret", "db"]);
    assert!(out.status.success(), "{}", plain(&out.stderr));
    assert_eq!(out.stdout, b"gcloud-secret-two");
    let versions = e.json(&["secrets", "versions", "list", "db"]);
    let states: Vec<(String, String)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["name"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
                v["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("2".into(), "ENABLED".into()),
            ("1".into(), "ENABLED".into())
        ],
        "{versions}"
    );
    // skiff sees what gcloud made, and back.
    assert_eq!(
        e.skiff(&["secrets", "versions", "access", "1", "--secret", "db"]),
        "gcloud-secret-one"
    );
    let listed = e.json(&["secrets", "list"]);
    assert!(listed.to_string().contains("secrets/db"), "{listed}");

    e.ok(&[
        "run",
        "deploy",
        "app",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--set-secrets",
        "PW=db:1,/secrets/db=db:latest",
    ]);
    let svc = e.skiff_json(&["services", "describe", "app"]);
    let t = &svc["spec"]["template"]["spec"];
    let c = &t["containers"][0];
    let env = c["env"].as_array().unwrap();
    let pw = env.iter().find(|v| v["name"] == "PW").unwrap();
    assert_eq!(pw["valueFrom"]["secretKeyRef"]["name"], "db", "{svc}");
    assert_eq!(pw["valueFrom"]["secretKeyRef"]["key"], "1", "{svc}");
    assert_eq!(t["volumes"][0]["secret"]["secretName"], "db", "{svc}");
    let cmd = "echo \"$PW|$(cat /secrets/db)\"";
    let q: String = cmd
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let (code, body) = s.get(&e.host("app"), &format!("/cgi-bin/sh?{q}"), None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body.trim(), "gcloud-secret-one|gcloud-secret-two");
    // A secret that does not exist: gcloud shows the server's error naming it.
    let err = e.fails(&[
        "run",
        "deploy",
        "app",
        "--image",
        "web",
        "--update-secrets",
        "X=nope:latest",
    ]);
    assert!(err.contains("secret nope not found"), "{err}");

    // A job's tasks too.
    e.ok(&[
        "run",
        "jobs",
        "create",
        "reader",
        "--image",
        "web",
        "--set-secrets",
        "PW=db:latest",
    ]);
    let job = e.skiff_json(&["jobs", "describe", "reader"]);
    let env = &job["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["key"], "latest", "{job}");

    // Versions change state, and secrets are described and deleted, as gcloud does it.
    e.ok(&["secrets", "versions", "disable", "1", "--secret", "db"]);
    let v = e.json(&["secrets", "versions", "describe", "1", "--secret", "db"]);
    assert_eq!(v["state"], "DISABLED", "{v}");
    e.ok(&["secrets", "versions", "enable", "1", "--secret", "db"]);
    e.ok(&["secrets", "versions", "destroy", "1", "--secret", "db"]);
    let v = e.json(&["secrets", "versions", "describe", "1", "--secret", "db"]);
    assert_eq!(v["state"], "DESTROYED", "{v}");
    let d = e.json(&["secrets", "describe", "db"]);
    assert!(d["name"].as_str().unwrap().ends_with("secrets/db"), "{d}");
    assert!(!d.to_string().contains("gcloud-secret"), "{d}");
    e.ok(&["secrets", "delete", "db"]);
    assert!(e.gcloud(&["secrets", "describe", "db"]).status.code() != Some(0));
}

/// `gcloud run deploy --add-volume type=nfs,location=localhost:/DIR,readonly=true`: a host
/// directory the server allows, mounted read-only.
#[test]
fn gcloud_mounts_an_allowed_host_directory() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello.txt"), "host file").unwrap();
    let dir = shared.path().to_str().unwrap().to_string();
    let e = Env::with_server_args(&["--allow-host-dir", &dir]);
    e.ok(&[
        "run",
        "deploy",
        "files",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--add-volume",
        &format!("name=data,type=nfs,location=localhost:{dir},readonly=true"),
        "--add-volume-mount",
        "volume=data,mount-path=/data",
    ]);
    let svc = e.skiff_json(&["services", "describe", "files"]);
    let nfs = &svc["spec"]["template"]["spec"]["volumes"][0]["nfs"];
    assert_eq!(nfs["server"], "localhost", "{svc}");
    assert_eq!(nfs["path"], dir.as_str(), "{svc}");
    let (code, body) = e.s.get(
        &e.host("files"),
        "/cgi-bin/sh?cat%20%2Fdata%2Fhello.txt",
        None,
    );
    assert_eq!((code, body.trim()), (200, "host file"));
    let err = e.fails(&[
        "run",
        "deploy",
        "files",
        "--image",
        "web",
        "--add-volume",
        "name=etc,type=nfs,location=localhost:/etc,readonly=true",
        "--add-volume-mount",
        "volume=etc,mount-path=/hostetc",
    ]);
    assert!(
        err.contains("host directory /etc of volume etc is not allowed"),
        "{err}"
    );
}

/// `gcloud run deploy --image HOST:PORT/REPO:TAG`: the server pulls the image from the
/// registry (Debian's docker-registry on loopback) and the revision pins its digest.
#[test]
fn gcloud_deploys_an_image_from_a_registry() {
    let e = Env::new();
    let registry = skiff_testkit::TestRegistry::start();
    let mut spec = ImageSpec::default();
    spec.files[0].1 = "from the registry\n".into();
    let layout = busybox_image(&e._tmp.path().join("reg"), "reg", &spec);
    let reference = registry.push(&layout, "team/web:v1");
    let (_, err) = e.ok(&[
        "run",
        "deploy",
        "pulled",
        "--image",
        &reference,
        "--allow-unauthenticated",
    ]);
    assert!(
        err.contains(&format!("Service URL: {}", e.url("pulled"))),
        "{err}"
    );
    assert_eq!(
        e.s.get(&e.host("pulled"), "/", None),
        (200, "from the registry\n".into())
    );
    let rev = e.json(&["run", "revisions", "list", "--service", "pulled"]);
    let digest = rev[0]["status"]["imageDigest"].as_str().unwrap_or_default();
    assert!(
        digest.starts_with(&format!("{}/team/web@sha256:", registry.host)),
        "{rev}"
    );
}

#[test]
fn gcloud_pubsub_topics_push_and_pull_subscriptions() {
    let env = Env::new();
    env.ok(&["pubsub", "topics", "create", "orders"]);
    let (topics, _) = env.ok(&["pubsub", "topics", "list", "--format", "json"]);
    assert!(
        topics.contains(&format!("projects/{PROJECT}/topics/orders")),
        "{topics}"
    );
    let endpoint = format!("http://sink.localhost:{}/", env.s.ingress);
    env.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "pusher",
        "--topic",
        "orders",
        "--push-endpoint",
        &endpoint,
        "--push-auth-service-account",
        "pusher@demo.iam.gserviceaccount.com",
        "--ack-deadline",
        "20",
    ]);
    let (desc, _) = env.ok(&[
        "pubsub",
        "subscriptions",
        "describe",
        "pusher",
        "--format",
        "json",
    ]);
    let desc: Value = serde_json::from_str(&desc).unwrap();
    assert_eq!(
        desc["pushConfig"]["pushEndpoint"],
        endpoint.as_str(),
        "{desc}"
    );
    assert_eq!(
        desc["pushConfig"]["oidcToken"]["serviceAccountEmail"],
        "pusher@demo.iam.gserviceaccount.com"
    );
    assert_eq!(desc["ackDeadlineSeconds"], 20);
    env.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "puller",
        "--topic",
        "orders",
    ]);
    env.ok(&[
        "pubsub",
        "topics",
        "publish",
        "orders",
        "--message",
        "from gcloud",
        "--attribute",
        "k=v",
    ]);
    let (pulled, _) = env.ok(&[
        "pubsub",
        "subscriptions",
        "pull",
        "puller",
        "--auto-ack",
        "--format",
        "json",
    ]);
    let pulled: Value = serde_json::from_str(&pulled).unwrap();
    let m = &pulled[0]["message"];
    assert_eq!(m["attributes"]["k"], "v", "{pulled}");
    // The CLI sees what gcloud made.
    let subs = env.skiff(&["pubsub", "subscriptions", "list"]);
    assert!(subs.contains("pusher") && subs.contains("puller"), "{subs}");
    // A name the API refuses fails with the reason.
    let e = env.fails(&["pubsub", "topics", "create", "goog-topic"]);
    assert!(e.contains("goog"), "{e}");
    // IAM on a topic, as gcloud reads and writes it.
    env.ok(&[
        "pubsub",
        "topics",
        "add-iam-policy-binding",
        "orders",
        "--member",
        "serviceAccount:pub@default.iam.gserviceaccount.com",
        "--role",
        "roles/pubsub.publisher",
    ]);
    let (policy, _) = env.ok(&[
        "pubsub",
        "topics",
        "get-iam-policy",
        "orders",
        "--format",
        "json",
    ]);
    let policy: Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(
        policy["bindings"][0]["role"], "roles/pubsub.publisher",
        "{policy}"
    );
    let policy = env.skiff(&["pubsub", "topics", "get-iam-policy", "orders"]);
    assert!(
        policy.contains("pub@default.iam.gserviceaccount.com"),
        "{policy}"
    );
}

#[test]
fn gcloud_eventarc_creates_lists_describes_and_deletes_a_pubsub_trigger() {
    let env = Env::new();
    env.skiff(&["deploy", "sink", "--image", "web"]);
    env.ok(&["pubsub", "topics", "create", "orders"]);
    env.ok(&[
        "eventarc",
        "triggers",
        "create",
        "on-order",
        "--location",
        "us-central1",
        "--destination-run-service",
        "sink",
        "--destination-run-region",
        "us-central1",
        "--event-filters",
        "type=google.cloud.pubsub.topic.v1.messagePublished",
        "--transport-topic",
        &format!("projects/{PROJECT}/topics/orders"),
    ]);
    let (desc, _) = env.ok(&[
        "eventarc",
        "triggers",
        "describe",
        "on-order",
        "--location",
        "us-central1",
        "--format",
        "json",
    ]);
    let desc: Value = serde_json::from_str(&desc).unwrap();
    assert_eq!(desc["destination"]["cloudRun"]["service"], "sink", "{desc}");
    let sub = desc["transport"]["pubsub"]["subscription"]
        .as_str()
        .unwrap()
        .to_string();
    let (list, _) = env.ok(&["eventarc", "triggers", "list", "--location", "us-central1"]);
    assert!(list.contains("on-order"), "{list}");
    // The CLI sees what gcloud made.
    let t = env.skiff(&["triggers", "describe", "on-order"]);
    assert!(t.contains(&sub), "{t}");
    env.ok(&[
        "eventarc",
        "triggers",
        "delete",
        "on-order",
        "--location",
        "us-central1",
        "--quiet",
    ]);
    let subs = env.skiff(&["pubsub", "subscriptions", "list"]);
    assert!(!subs.contains("eventarc-"), "{subs}");
}

/// `gcloud beta run domain-mappings ARGS`.
fn dm<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["beta", "run", "domain-mappings"];
    v.extend_from_slice(args);
    v
}

#[test]
fn gcloud_beta_run_domain_mappings_create_list_describe_delete() {
    let env = Env::with_server_args(&["--public-address", "203.0.113.7"]);
    env.skiff(&[
        "deploy",
        "site",
        "--image",
        "web",
        "--allow-unauthenticated",
    ]);
    let domain = "www.example.com";

    // Create prints the DNS records to make (gcloud's NAME, RECORD TYPE, CONTENTS table).
    let (out, err) = env.ok(&dm(&["create", "--service", "site", "--domain", domain]));
    assert!(
        out.contains(&format!("NAME RECORD TYPE CONTENTS {domain} A 203.0.113.7")),
        "stdout: {out}\nstderr: {err}"
    );
    // The ingress routes the domain to the service.
    let (code, body) = env.s.get(domain, "/", None);
    assert_eq!(code, 200, "{body}");

    let list = env.json(&dm(&["list"]));
    assert_eq!(names(&list), [domain], "{list}");
    assert_eq!(list[0]["spec"]["routeName"], "site");
    let (table, _) = env.ok(&dm(&["list"]));
    assert!(
        table.contains(&format!("{domain} site us-central1")),
        "{table}"
    );

    let m = env.json(&dm(&["describe", "--domain", domain]));
    assert_eq!(m["apiVersion"], "domains.cloudrun.com/v1", "{m}");
    assert_eq!(
        m["status"]["resourceRecords"][0]["rrdata"], "203.0.113.7",
        "{m}"
    );
    let cert = m["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "CertificateProvisioned")
        .unwrap();
    assert_eq!(cert["reason"], "CertificatePending", "{m}");
    // The CLI sees what gcloud made.
    assert!(env.skiff(&["domain-mappings", "list"]).contains(domain));

    // Mapped once: gcloud reports the server's error; a missing service is named.
    let err = env.fails(&dm(&["create", "--service", "site", "--domain", domain]));
    assert!(err.contains("already"), "{err}");
    let err = env.fails(&dm(&[
        "create",
        "--service",
        "nope",
        "--domain",
        "api.example.com",
    ]));
    assert!(
        err.contains("spec.routeName: service nope not found"),
        "{err}"
    );

    let (_, err) = env.ok(&dm(&["delete", "--domain", domain]));
    assert!(
        err.contains(&format!("Mappings to [{domain}] now have been deleted")),
        "{err}"
    );
    assert_eq!(env.s.get(domain, "/", None).0, 404);
    assert_eq!(env.json(&dm(&["list"])), serde_json::json!([]));
}

fn write_file(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `gcloud run deploy --source` and `gcloud run jobs deploy --source`: gcloud creates the
/// `cloud-run-source-deploy` repository and the staging bucket, uploads the zip, submits the
/// build through Cloud Run's `builds:submit`, follows the Cloud Build operation and deploys the
/// digest, all against Skiff, which builds it as any source build (busybox base pushed into its
/// own registry, so the build is offline).
#[test]
fn gcloud_deploys_services_and_jobs_from_source() {
    let e = Env::new();
    let tmp = e._tmp.path();
    let layout = busybox_image(&tmp.join("base"), "busybox", &ImageSpec::default());
    let base = e.s.push_layout(&layout, "base/busybox:latest");
    let src = tmp.join("src");
    write_file(
        &src,
        "Dockerfile",
        &format!(
            "FROM {base}\nCOPY page.txt /www/page.txt\nCOPY big.bin /big.bin\n\
             RUN echo built v1 > /www/version.txt && busybox wc -c < /big.bin > /www/big.txt\n"
        ),
    );
    write_file(&src, "page.txt", "from the zip\n");
    // Past 5 MiB (incompressible) gcloud uploads the zip in a resumable session.
    let big = skiff_testkit::incompressible(6 << 20);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    write_file(&src, ".gcloudignore", "secret.txt\n");
    write_file(&src, "secret.txt", "not uploaded\n");
    let src_arg = src.to_str().unwrap();
    let (_, err) = e.ok(&[
        "run",
        "deploy",
        "hello",
        "--source",
        src_arg,
        "--allow-unauthenticated",
    ]);
    assert!(
        err.contains(&format!("Service URL: {}", e.url("hello"))),
        "{err}"
    );
    assert_eq!(
        e.s.get(&e.host("hello"), "/version.txt", None),
        (200, "built v1\n".into())
    );
    assert_eq!(
        e.s.get(&e.host("hello"), "/page.txt", None),
        (200, "from the zip\n".into())
    );
    assert_eq!(
        e.s.get(&e.host("hello"), "/big.txt", None),
        (200, format!("{}\n", 6 << 20))
    );

    // The build is Skiff's own: listed, with its log, its image in the store, and the
    // service's revision pins that image's digest.
    let builds = e.skiff_json(&["builds", "list"]);
    let builds = builds["builds"].as_array().unwrap().clone();
    assert_eq!(builds.len(), 1, "{builds:?}");
    let b = &builds[0];
    assert_eq!(b["status"], "SUCCESS", "{b}");
    assert_eq!(b["service"], "hello", "{b}");
    assert_eq!(b["plan"]["kind"], "dockerfile", "{b}");
    let id = b["id"].as_str().unwrap();
    let digest = b["results"]["images"][0]["digest"].as_str().unwrap();
    let log = e.skiff(&["builds", "log", id]);
    assert!(log.contains("STEP") && log.contains("DONE"), "{log}");
    let images = e.skiff(&["images", "list"]);
    assert!(
        images.contains(&format!("{PROJECT}/cloud-run-source-deploy/hello:{id}")),
        "{images}"
    );
    let rev = e.json(&["run", "revisions", "list", "--service", "hello"]);
    assert_eq!(rev.as_array().unwrap().len(), 1, "{rev}");
    let image = rev[0]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        image,
        format!("us-central1-docker.pkg.dev/{PROJECT}/cloud-run-source-deploy/hello@{digest}"),
        "{rev}"
    );
    // gcloud made the repository and the bucket; the staged zip is gone once the build took it.
    let (code, body) = e.s.api(
        "GET",
        &format!(
            "/v1/projects/{PROJECT}/locations/us-central1/repositories/cloud-run-source-deploy"
        ),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let bucket = format!("run-sources-{PROJECT}-us-central1");
    let (code, body) = e.s.api("GET", &format!("/storage/v1/b/{bucket}"), None);
    assert_eq!(code, 200, "{body}");
    let objects =
        e.s.data_dir
            .join("builds/staging")
            .join(&bucket)
            .join("objects");
    assert_eq!(
        std::fs::read_dir(&objects).unwrap().count(),
        0,
        "staged objects left in {objects:?}"
    );

    // A build that fails: gcloud says why and where the log is, and the service is as it was.
    write_file(
        &src,
        "Dockerfile",
        &format!("FROM {base}\nRUN echo about to fail && exit 3\n"),
    );
    let err = e.fails(&["run", "deploy", "hello", "--source", src_arg]);
    assert!(
        err.contains("Build failed") && err.contains("skiff builds log"),
        "{err}"
    );
    let rev = e.json(&["run", "revisions", "list", "--service", "hello"]);
    assert_eq!(rev.as_array().unwrap().len(), 1, "{rev}");
    assert_eq!(
        e.s.get(&e.host("hello"), "/version.txt", None),
        (200, "built v1\n".into())
    );
    let builds = e.skiff_json(&["builds", "list"]);
    let failed: Vec<&Value> = builds["builds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "FAILURE")
        .collect();
    assert_eq!(failed.len(), 1, "{builds}");
    let log = e.skiff(&["builds", "log", failed[0]["id"].as_str().unwrap()]);
    assert!(log.contains("about to fail"), "{log}");

    // A job from source, then executed.
    let job_src = tmp.join("job");
    write_file(
        &job_src,
        "Dockerfile",
        &format!("FROM {base}\nCMD [\"echo job built from source ran\"]\n"),
    );
    e.ok(&[
        "run",
        "jobs",
        "deploy",
        "nightly",
        "--source",
        job_src.to_str().unwrap(),
        "--max-retries",
        "0",
    ]);
    let (_, err) = e.ok(&["run", "jobs", "execute", "nightly", "--wait"]);
    assert!(err.contains("has successfully completed"), "{err}");
    let logs = e.skiff(&["logs", "read", "--job", "nightly", "--limit", "50"]);
    assert!(logs.contains("job built from source ran"), "{logs}");
    let builds = e.skiff_json(&["builds", "list"]);
    assert!(
        builds["builds"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["job"] == "nightly" && b["status"] == "SUCCESS"),
        "{builds}"
    );
}

/// The source-deploy APIs refuse bad input in Google's error shape, naming what is wrong, and
/// start no build.
#[test]
fn source_deploy_apis_refuse_bad_input_and_start_nothing() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let check = |method: &str, path: &str, body: Option<&str>, code: u16, want: &str| {
        let (got, text) = s.api(method, path, body);
        assert_eq!(got, code, "{method} {path}: {text}");
        if code >= 400 {
            let v: Value = serde_json::from_str(&text).unwrap_or_default();
            let msg = v["error"]["message"].as_str().unwrap_or_default();
            assert!(msg.contains(want), "{method} {path}: {text}");
            assert_eq!(v["error"]["code"], code, "{text}");
        }
    };
    let submit = "/v2/projects/demo/locations/us-central1/builds:submit";
    check(
        "POST",
        submit,
        Some(
            r#"{"storageSource":{"bucket":"run-sources-demo-us-central1","object":"services/web/x.zip"},"imageUri":"us-central1-docker.pkg.dev/demo/cloud-run-source-deploy/web","dockerBuild":{},"tags":["service_web"]}"#,
        ),
        400,
        "storageSource: the specified bucket does not exist",
    );
    check(
        "POST",
        "/storage/v1/b?project=demo",
        Some(r#"{"name":"Bad_Name"}"#),
        400,
        "invalid bucket name",
    );
    check(
        "POST",
        "/storage/v1/b?project=demo",
        Some(r#"{"name":"run-sources-demo-us-central1","location":"us-central1"}"#),
        200,
        "",
    );
    check(
        "POST",
        "/storage/v1/b?project=demo",
        Some(r#"{"name":"run-sources-demo-us-central1"}"#),
        409,
        "exists already",
    );
    check(
        "POST",
        submit,
        Some(
            r#"{"storageSource":{"bucket":"run-sources-demo-us-central1","object":"services/web/x.zip"},"imageUri":"x/web","dockerBuild":{},"tags":["service_web"]}"#,
        ),
        400,
        "storageSource: no such object",
    );
    check(
        "POST",
        submit,
        Some(
            r#"{"storageSource":{"bucket":"b","object":"o"},"imageUri":"x/web","buildpackBuild":{"functionTarget":"f"},"tags":["service_web"]}"#,
        ),
        400,
        "remove --function",
    );
    check(
        "POST",
        "/upload/storage/v1/b/run-sources-none/o?uploadType=media&name=x.zip",
        Some("{}"),
        404,
        "bucket does not exist",
    );
    check(
        "POST",
        "/upload/storage/v1/b/run-sources-demo-us-central1/o?uploadType=media&name=../x.zip",
        Some("PK"),
        400,
        "invalid object name",
    );
    check(
        "GET",
        "/v1/projects/demo/locations/us-central1/operations/nothing",
        None,
        404,
        "no such operation",
    );
    check(
        "POST",
        "/v1/projects/demo/locations/us-central1/repositories?repositoryId=Bad",
        Some("{}"),
        400,
        "invalid repository id",
    );
    let out = s.ok(&["builds", "list", "--format", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["builds"], serde_json::json!([]), "{out}");
}
