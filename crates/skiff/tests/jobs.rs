//! End-to-end tests of jobs and the scheduler, driving the real `skiff` binary: parallel
//! tasks with retries, timeouts, cancel, overrides, durability across `kill -9`, and cron
//! jobs that run a job or call a private service.

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::collections::HashMap;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn server() -> (TestServer, tempfile::TempDir) {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("img"), "tools", &ImageSpec::default());
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    (s, tmp)
}

/// Creates job `name` running `script` with `sh -c` (no commas in the script).
fn job(s: &TestServer, name: &str, script: &str, extra: &[&str]) {
    let args = format!("-c,{script}");
    let mut a = vec![
        "jobs",
        "create",
        name,
        "--image",
        "tools",
        "--command",
        "/bin/sh",
        "--args",
        &args,
    ];
    a.extend_from_slice(extra);
    s.ok(&a);
}

fn json(s: &TestServer, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&s.ok(args)).unwrap()
}

fn tasks_of(s: &TestServer, exec: &str) -> Vec<serde_json::Value> {
    let v = json(
        s,
        &["jobs", "executions", "describe", exec, "--format", "json"],
    );
    let mut t = v["tasks"].as_array().cloned().unwrap_or_default();
    t.sort_by_key(|t| t["status"]["index"].as_u64());
    t
}

/// The name of the newest execution of `job`.
fn latest_execution(s: &TestServer, job: &str) -> String {
    let v = json(
        s,
        &[
            "jobs",
            "executions",
            "list",
            "--job",
            job,
            "--format",
            "json",
        ],
    );
    v["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until one of the execution's tasks runs.
fn wait_running(s: &TestServer, exec: &str) {
    s.wait_for("a task to run", 20, || {
        tasks_of(s, exec)
            .iter()
            .any(|t| t["status"]["state"] == "Running")
    });
}

fn log_lines(s: &TestServer, job: &str) -> Vec<serde_json::Value> {
    let out = s.ok(&[
        "logs", "read", "--job", job, "--limit", "1000", "--format", "json",
    ]);
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn parallel_tasks_retry_and_respect_parallelism() {
    let (s, _tmp) = server();
    let script = "echo job=$CLOUD_RUN_JOB exec=$CLOUD_RUN_EXECUTION index=$CLOUD_RUN_TASK_INDEX count=$CLOUD_RUN_TASK_COUNT attempt=$CLOUD_RUN_TASK_ATTEMPT; sleep 0.3; \
                  if [ $CLOUD_RUN_TASK_ATTEMPT = 0 ] && [ $CLOUD_RUN_TASK_INDEX = 2 -o $CLOUD_RUN_TASK_INDEX = 4 ]; then exit 5; fi";
    job(
        &s,
        "six",
        script,
        &["--tasks", "6", "--parallelism", "2", "--max-retries", "1"],
    );
    let exec = s
        .ok(&["jobs", "execute", "six", "--wait"])
        .trim()
        .to_string();
    assert!(
        exec.starts_with("six-") && exec.len() == "six-abcde".len(),
        "{exec}"
    );
    let tasks = tasks_of(&s, &exec);
    assert_eq!(tasks.len(), 6);
    for t in &tasks {
        let i = t["status"]["index"].as_u64().unwrap();
        let want: Vec<serde_json::Value> = if i == 2 || i == 4 {
            vec![5.into(), 0.into()]
        } else {
            vec![0.into()]
        };
        assert_eq!(
            t["status"]["exitCodes"].as_array().unwrap(),
            &want,
            "task {i}"
        );
        assert_eq!(t["status"]["state"], "Succeeded", "task {i}");
    }
    // The execution's counts (kept as tasks change) agree with its tasks.
    let e = json(
        &s,
        &["jobs", "executions", "describe", &exec, "--format", "json"],
    );
    assert_eq!(e["status"]["succeededCount"], 6, "{e}");
    assert_eq!(e["status"]["retriedCount"], 2, "{e}");
    assert_eq!(e["status"]["failedCount"].as_u64().unwrap_or(0), 0, "{e}");
    // tasks.list in pages (Cloud Run's `limit` and `continue`), and filtered by state.
    let list = |query: &str| -> (u16, serde_json::Value) {
        let (code, body) = s.api(
            "GET",
            &format!("/apis/run.googleapis.com/v1/namespaces/default/tasks?labelSelector=run.googleapis.com/execution%3D{exec}{query}"),
            None,
        );
        (code, serde_json::from_str(&body).unwrap_or_default())
    };
    let (code, first) = list("&limit=4");
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["kind"], "TaskList");
    assert_eq!(first["items"].as_array().unwrap().len(), 4, "{first}");
    let token = first["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, second) = list(&format!("&limit=4&continue={token}"));
    assert_eq!(second["items"].as_array().unwrap().len(), 2, "{second}");
    assert!(second["metadata"]["continue"].is_null(), "{second}");
    let mut names: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|t| t["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 6, "every task once: {names:?}");
    let (_, running) = list(",run.googleapis.com/runningState%3DRunning");
    assert!(running["items"].as_array().unwrap().is_empty(), "{running}");
    let (code, body) = list("&continue=not-a-token");
    assert_eq!(code, 400, "{body}");
    let describe = s.ok(&["jobs", "executions", "describe", &exec]);
    assert!(
        !describe.contains("the first"),
        "all six are shown: {describe}"
    );
    assert_eq!(describe.matches("Succeeded").count(), 7, "{describe}");
    // The logs carry every task's CLOUD_RUN_* values, tagged with task and attempt.
    let lines = log_lines(&s, "six");
    for i in 0..6 {
        let want = format!("job=six exec={exec} index={i} count=6 attempt=0");
        assert!(
            lines
                .iter()
                .any(|l| l["line"] == want.as_str() && l["attempt"] == 0),
            "{want}"
        );
    }
    assert!(lines.iter().any(|l| l["line"]
        .as_str()
        .unwrap()
        .ends_with("index=4 count=6 attempt=1")
        && l["attempt"] == 1));
    // Never more than 2 attempts at once: replay starts (first output) and ends (exit record).
    let mut events: Vec<(String, i32)> = Vec::new();
    let mut started: HashMap<(String, u64), bool> = HashMap::new();
    for l in &lines {
        let key = (
            l["task"].as_str().unwrap().to_string(),
            l["attempt"].as_u64().unwrap(),
        );
        let t = l["time"].as_str().unwrap().to_string();
        if l["stream"] == "system" {
            events.push((t, -1));
        } else if started.insert(key, true).is_none() {
            events.push((t, 1));
        }
    }
    assert_eq!(
        events.iter().filter(|e| e.1 == 1).count(),
        8,
        "6 tasks, 2 retries"
    );
    events.sort();
    let (mut now, mut max) = (0, 0);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    assert!(max <= 2, "{max} attempts ran at once");
}

#[test]
fn failures_timeouts_overrides_and_cancel() {
    let (s, _tmp) = server();
    // Always failing: exactly 1 + max-retries attempts, and --wait fails with the reason.
    job(&s, "doomed", "echo trying; exit 3", &["--max-retries", "2"]);
    let err = s.fails(&["jobs", "execute", "doomed", "--wait"]);
    assert!(
        err.contains("failed") && err.contains("after 2 retries"),
        "{err}"
    );
    let exec = latest_execution(&s, "doomed");
    let t = &tasks_of(&s, &exec)[0];
    assert_eq!(t["status"]["attempts"], 3);
    assert_eq!(t["status"]["exitCodes"], serde_json::json!([3, 3, 3]));

    // Past its timeout a task is stopped (SIGTERM, the trap answers) and fails.
    job(
        &s,
        "slow",
        "trap 'exit 143' TERM; sleep 30 & wait",
        &["--task-timeout", "1s", "--max-retries", "0"],
    );
    let err = s.fails(&["jobs", "execute", "slow", "--wait"]);
    assert!(err.contains("failed"), "{err}");
    let exec = latest_execution(&s, "slow");
    let t = &tasks_of(&s, &exec)[0];
    let msg = t["status"]["lastAttemptResult"]["status"]["message"]
        .as_str()
        .unwrap();
    assert!(msg.contains("timed out after 1s"), "{msg}");

    // Overrides for one execution: task count, args, env.
    job(&s, "echoer", "echo default", &[]);
    let exec = s
        .ok(&[
            "jobs",
            "execute",
            "echoer",
            "--wait",
            "--tasks",
            "2",
            "--args",
            "-c,echo $GREETING $CLOUD_RUN_TASK_COUNT",
            "--update-env-vars",
            "GREETING=hi",
        ])
        .trim()
        .to_string();
    let lines = log_lines(&s, "echoer");
    let mine: Vec<_> = lines
        .iter()
        .filter(|l| l["execution"] == exec.as_str() && l["stream"] == "stdout")
        .collect();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|l| l["line"] == "hi 2"), "{mine:?}");

    // Cancel stops the running task and the pending ones never start.
    job(
        &s,
        "long",
        "trap 'exit 143' TERM; sleep 60 & wait",
        &["--tasks", "3", "--parallelism", "1"],
    );
    let exec = s.ok(&["jobs", "execute", "long"]).trim().to_string();
    wait_running(&s, &exec);
    s.ok(&["jobs", "executions", "cancel", &exec]);
    let e = json(
        &s,
        &["jobs", "executions", "describe", &exec, "--format", "json"],
    );
    assert_eq!(e["status"]["cancelledCount"], 3, "{e}");
    let describe = s.ok(&["jobs", "executions", "describe", &exec]);
    assert!(describe.contains("Cancelled"), "{describe}");
    s.wait_for("no task containers", 20, || {
        s.instance_leftovers().is_empty()
    });
}

#[test]
fn an_execution_survives_kill_9_of_the_server() {
    let (mut s, _tmp) = server();
    job(
        &s,
        "durable",
        "echo run $CLOUD_RUN_TASK_INDEX $CLOUD_RUN_TASK_ATTEMPT; sleep 1",
        &["--tasks", "3", "--parallelism", "1"],
    );
    let exec = s.ok(&["jobs", "execute", "durable"]).trim().to_string();
    wait_running(&s, &exec);
    s.kill9();
    s.wait_for("the killed server's tasks to go", 20, || {
        s.instance_leftovers().is_empty()
    });
    s.restart();
    s.wait_for("the execution to finish after the restart", 60, || {
        json(
            &s,
            &["jobs", "executions", "describe", &exec, "--format", "json"],
        )["status"]["succeededCount"]
            == 3
    });
    let out = s.ok(&["jobs", "executions", "describe", &exec]);
    assert!(out.contains("Succeeded"), "{out}");
}

#[test]
fn scheduler_runs_jobs_and_calls_private_services() {
    let (s, _tmp) = server();
    job(&s, "nightly", "echo scheduled run", &[]);
    s.ok(&[
        "scheduler",
        "jobs",
        "create",
        "at-three",
        "--schedule",
        "0 3 * * *",
        "--time-zone",
        "Europe/Paris",
        "--job",
        "nightly",
    ]);
    let out = s.ok(&["scheduler", "jobs", "run", "at-three"]);
    assert!(out.contains("started execution nightly-"), "{out}");
    s.wait_for("the scheduled execution", 20, || {
        let v = json(
            &s,
            &[
                "jobs",
                "executions",
                "list",
                "--job",
                "nightly",
                "--format",
                "json",
            ],
        );
        v["items"].as_array().is_some_and(|i| i.len() == 1)
    });
    let d = json(
        &s,
        &[
            "scheduler",
            "jobs",
            "describe",
            "at-three",
            "--format",
            "json",
        ],
    );
    assert_eq!(d["state"], "ENABLED");
    assert_eq!(d["runs"][0]["trigger"], "manual");
    let next = d["scheduleTime"].as_str().unwrap();
    assert!(next.ends_with(":00:00Z"), "{next}");
    s.ok(&["scheduler", "jobs", "pause", "at-three"]);
    assert_eq!(
        json(
            &s,
            &[
                "scheduler",
                "jobs",
                "describe",
                "at-three",
                "--format",
                "json"
            ]
        )["state"],
        "PAUSED"
    );

    // An HTTP target: a private Skiff service, reached with an identity token.
    s.ok(&["deploy", "hook", "--image", "tools"]);
    let uri = format!("http://hook.localhost:{}/cgi-bin/env", s.ingress);
    s.ok(&[
        "scheduler",
        "jobs",
        "create",
        "ping",
        "--schedule",
        "*/5 * * * *",
        "--uri",
        &uri,
        "--http-method",
        "GET",
    ]);
    let out = s.ok(&["scheduler", "jobs", "run", "ping"]);
    assert!(out.contains("200"), "{out}");

    // Bad input: named in the error, nothing created.
    let cases: &[(&[&str], &str)] = &[
        (
            &["--schedule", "61 * * * *", "--job", "nightly"],
            "schedule",
        ),
        (&["--schedule", "* * *", "--job", "nightly"], "schedule"),
        (
            &[
                "--schedule",
                "* * * * *",
                "--time-zone",
                "Mars/Olympus",
                "--job",
                "nightly",
            ],
            "time zone",
        ),
        (&["--schedule", "* * * * *", "--job", "missing"], "missing"),
    ];
    for (extra, what) in cases {
        let mut a = vec!["scheduler", "jobs", "create", "bad"];
        a.extend_from_slice(extra);
        let err = s.fails(&a);
        assert!(err.contains(what), "{extra:?}: {err}");
    }
    let list = s.ok(&["scheduler", "jobs", "list"]);
    assert!(!list.contains("bad"), "{list}");
    let err = s.fails(&["jobs", "create", "x", "--image", "tools", "--tasks", "0"]);
    assert!(err.contains("task count"), "{err}");
}
