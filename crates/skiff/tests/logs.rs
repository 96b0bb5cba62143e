//! End-to-end tests of the log store through the real `skiff` binary: a job that writes more
//! than `--log-size-cap` keeps only its newest lines, in order; what survives a restart; each
//! execution's lines read alone; request entries beside the app's lines.

use serde_json::Value;
use skiff_testkit::TestServer;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn lines(s: &TestServer, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["logs", "read"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["--format", "json"]);
    s.ok(&a)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn texts(v: &[Value]) -> Vec<String> {
    v.iter()
        .filter(|l| l["stream"] == "stdout")
        .map(|l| l["line"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_size_cap_keeps_each_jobs_newest_lines_across_a_restart() {
    let (mut s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--log-size-cap", "64Ki"]);
    // Two executions of 3000 numbered lines each (several hundred KiB stored), far past 64 KiB.
    s.ok(&[
        "jobs",
        "create",
        "loud",
        "--image",
        "web",
        "--command",
        "/bin/sh",
        "--args",
        "-c,i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo $CLOUD_RUN_EXECUTION line $i; done",
    ]);
    let first = s
        .ok(&["jobs", "execute", "loud", "--wait"])
        .trim()
        .to_string();
    let second = s
        .ok(&["jobs", "execute", "loud", "--wait"])
        .trim()
        .to_string();
    s.ok(&[
        "jobs",
        "create",
        "quiet",
        "--image",
        "web",
        "--command",
        "/bin/sh",
        "--args",
        "-c,echo quiet here",
    ]);
    s.ok(&["jobs", "execute", "quiet", "--wait"]);
    let want_last = format!("{second} line 3000");
    s.wait_for("the last line to be stored", 60, || {
        texts(&lines(&s, &["--job", "loud", "--limit", "5"])).last() == Some(&want_last)
    });

    let check = |s: &TestServer| {
        let kept = lines(s, &["--job", "loud", "--limit", "100000"]);
        let bytes: usize = kept
            .iter()
            .map(|l| serde_json::to_string(l).unwrap().len())
            .sum();
        assert!(bytes <= 64 * 1024 + 4096, "{bytes} bytes kept");
        let t = texts(&kept);
        assert!(t.len() > 100, "{} lines kept", t.len());
        // The newest lines, in order, without a gap: the oldest went first.
        let n = t.len();
        let expected: Vec<String> = (3001 - n..=3000)
            .map(|i| format!("{second} line {i}"))
            .collect();
        assert_eq!(t, expected);
        // The other job keeps its own line.
        assert_eq!(
            texts(&lines(s, &["--job", "quiet"])),
            vec!["quiet here".to_string()]
        );
        // The first execution's lines alone: all went to the cap.
        assert!(texts(&lines(s, &["--job", "loud", "--execution", &first])).is_empty());
        let newest = texts(&lines(
            s,
            &["--job", "loud", "--execution", &second, "--limit", "10"],
        ));
        assert_eq!(
            newest[newest.len() - 3..],
            [
                format!("{second} line 2998"),
                format!("{second} line 2999"),
                format!("{second} line 3000")
            ]
        );
    };
    check(&s);
    s.stop();
    s.restart();
    check(&s);
}

#[test]
fn request_entries_sit_beside_the_apps_lines() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    s.deploy_web("web", &[]);
    // A follower started before the request sees its entry arrive.
    let mut follower = std::process::Command::new(BIN)
        .args(["logs", "read", "--service", "web", "--follow"])
        .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", s.api))
        .env("SKIFF_DATA_DIR", &s.data_dir)
        .env_remove("SKIFF_TOKEN")
        .env_remove("SKIFF_PROJECT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The follower has printed the past (the app's first line) once it is subscribed.
    let past = rx.recv_timeout(std::time::Duration::from_secs(60));
    let (code, _) = s.get("web.localhost", "/nothere", None);
    assert_eq!(code, 404);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = vec![];
    let followed = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(" requests GET 404 http://web.localhost/nothere") => break true,
            Ok(l) => seen.push(l),
            Err(_) => break false,
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(followed, "first {past:?}, then {seen:?}");
    s.wait_for("the request entry", 60, || {
        lines(&s, &["--service", "web"])
            .iter()
            .any(|l| l["stream"] == "requests")
    });
    let all = lines(&s, &["--service", "web"]);
    let req = all.iter().find(|l| l["stream"] == "requests").unwrap();
    let h = &req["httpRequest"];
    assert_eq!(h["requestMethod"], "GET");
    assert_eq!(h["requestUrl"], "http://web.localhost/nothere");
    assert_eq!(h["status"], 404);
    assert_eq!(h["remoteIp"], "127.0.0.1");
    assert!(h["latency"].as_str().unwrap().ends_with('s'), "{h}");
    assert!(
        h["responseSize"].as_str().unwrap().parse::<u64>().unwrap() > 0,
        "{h}"
    );
    assert!(req["instance"].as_str().unwrap().starts_with("web-00001-"));
    // The app's own output is there too, older.
    let listening = all
        .iter()
        .position(|l| {
            l["line"]
                .as_str()
                .unwrap_or_default()
                .starts_with("listening on")
        })
        .expect("the app's line");
    let at = all.iter().position(|l| l["stream"] == "requests").unwrap();
    assert!(listening < at);
    let human = s.ok(&["logs", "read", "--service", "web"]);
    assert!(
        human.contains(" requests GET 404 http://web.localhost/nothere"),
        "{human}"
    );
    // An unknown service is an error that names it.
    let err = s.fails(&["logs", "read", "--service", "nothere"]);
    assert!(err.contains("service nothere not found"), "{err}");
}

#[test]
fn logs_an_older_server_kept_in_files_are_imported() {
    // A retention of about 55 years: the line dated 2026-01-02 is kept, the one dated
    // 1970-01-02 goes when the server sweeps at start.
    let (mut s, _tmp) = TestServer::with_web_image(Path::new(BIN), &["--log-retention", "20000d"]);
    s.deploy_web("web", &[]);
    s.wait_for("the app's first line", 60, || {
        !lines(&s, &["--service", "web"]).is_empty()
    });
    s.stop();
    // The format logs were kept in before the store: a JSON-lines file per service.
    let file = s.data_dir.join("logs/default/web.jsonl");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "{\"seq\":6,\"time\":\"1970-01-02T00:00:00Z\",\"namespace\":\"default\",\"service\":\"web\",\"stream\":\"stdout\",\"line\":\"past the retention\"}\n{\"seq\":7,\"time\":\"2026-01-02T03:04:05.678Z\",\"namespace\":\"default\",\"service\":\"web\",\"revision\":\"web-00001-abc\",\"instance\":\"web-00001-abc-x\",\"stream\":\"stdout\",\"line\":\"from the old file\"}\n",
    )
    .unwrap();
    s.restart();
    s.wait_for("the retention sweep", 60, || {
        lines(&s, &["--service", "web"])
            .iter()
            .all(|l| l["line"] != "past the retention")
    });
    let all = lines(&s, &["--service", "web"]);
    assert_eq!(all[0]["line"], "from the old file", "{all:?} {}", s.log());
    assert_eq!(all[1]["line"], "listening on 8080", "{all:?}");
    assert_eq!(all[0]["time"], "2026-01-02T03:04:05.678000Z");
    assert!(!file.exists(), "the file is removed once imported");
}
