//! Secrets end to end, on real containers: the `skiff secrets` commands over the Secret
//! Manager API; secret versions as env vars and as read-only files in a service's instances
//! and a job's tasks, `latest` resolved again at each start while a pinned version stays; a
//! deploy naming a missing secret fails and changes nothing; exports carry the references,
//! never the values; and no value is written to the data dir in clear.

use skiff_testkit::TestServer;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// Values distinctive enough to search the disk for.
const ONE: &str = "first-value-7f3a9c-one";
const TWO: &str = "second-value-7f3a9c-two";
const THREE: &str = "third-value-7f3a9c-three";

fn write(dir: &Path, name: &str, data: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p.to_str().unwrap().to_string()
}

/// Every file under `dir` (following no symlinks) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                if let Ok(b) = std::fs::read(e.path()) {
                    if b.windows(needle.len()).any(|w| w == needle) {
                        out.push(e.path().display().to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn secrets_commands_follow_secret_managers_model() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let f1 = write(tmp.path(), "one", ONE);
    s.ok(&[
        "secrets",
        "create",
        "db",
        "--data-file",
        &f1,
        "--labels",
        "team=web",
    ]);
    // Binary values come back byte for byte.
    let bin = tmp.path().join("bin");
    let bytes: Vec<u8> = (0..=255u8).chain([0, 10, 13]).collect();
    std::fs::write(&bin, &bytes).unwrap();
    s.ok(&[
        "secrets",
        "versions",
        "add",
        "db",
        "--data-file",
        bin.to_str().unwrap(),
    ]);
    let out = s.skiff(&["secrets", "versions", "access", "latest", "--secret", "db"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, bytes);
    assert_eq!(
        s.ok(&["secrets", "versions", "access", "1", "--secret", "db"]),
        ONE
    );
    let listed = s.ok(&["secrets", "versions", "list", "db"]);
    let states: Vec<(&str, &str)> = listed
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f[1])
        })
        .collect();
    assert_eq!(states, [("2", "enabled"), ("1", "enabled")], "{listed}");
    // Disabled: not readable, and latest skips it; destroyed: gone for good.
    s.ok(&["secrets", "versions", "disable", "2", "--secret", "db"]);
    assert_eq!(
        s.ok(&["secrets", "versions", "access", "latest", "--secret", "db"]),
        ONE
    );
    let err = s.fails(&["secrets", "versions", "access", "2", "--secret", "db"]);
    assert!(
        err.starts_with("error: ") && err.contains("DISABLED"),
        "{err}"
    );
    s.ok(&["secrets", "versions", "enable", "2", "--secret", "db"]);
    s.ok(&["secrets", "versions", "destroy", "2", "--secret", "db"]);
    let err = s.fails(&["secrets", "versions", "enable", "2", "--secret", "db"]);
    assert!(err.contains("destroyed"), "{err}");
    assert!(s
        .ok(&["secrets", "versions", "list", "db"])
        .contains("destroyed"));
    // describe and list show metadata, never a value.
    let described = s.ok(&["secrets", "describe", "db"]);
    assert!(
        described.contains("projects/default/secrets/db"),
        "{described}"
    );
    assert!(described.contains("team=web"), "{described}");
    let json = s.ok(&["secrets", "describe", "db", "--format", "json"]);
    let listed = s.ok(&["secrets", "list", "--format", "json"]);
    for text in [&described, &json, &listed] {
        assert!(!text.contains(ONE), "{text}");
    }
    // Bad input: a clear error, and nothing changes.
    let err = s.fails(&["secrets", "create", "db", "--data-file", &f1]);
    assert!(err.contains("already exists"), "{err}");
    let err = s.fails(&["secrets", "create", "bad/name", "--data-file", &f1]);
    assert!(err.contains("invalid secret name"), "{err}");
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 64 * 1024 + 1]).unwrap();
    let err = s.fails(&[
        "secrets",
        "versions",
        "add",
        "db",
        "--data-file",
        big.to_str().unwrap(),
    ]);
    assert!(err.contains("at most 65536 bytes"), "{err}");
    let err = s.fails(&["secrets", "versions", "add", "nope", "--data-file", &f1]);
    assert!(err.contains("secret nope not found"), "{err}");
    assert_eq!(
        s.ok(&["secrets", "versions", "list", "db"]).lines().count(),
        3
    );
    // A checksum that does not match is refused by the API.
    let (code, text) = s.api(
        "POST",
        "/v1/projects/default/secrets/db:addVersion",
        Some(r#"{"payload":{"data":"aGVsbG8=","dataCrc32c":"1"}}"#),
    );
    assert_eq!(code, 400, "{text}");
    s.ok(&["secrets", "delete", "db"]);
    let err = s.fails(&["secrets", "describe", "db"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn services_get_secrets_as_env_and_files_and_latest_moves_on_at_the_next_start() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &["--scale-to-zero-after", "1s"]);
    let f1 = write(tmp.path(), "one", ONE);
    let f2 = write(tmp.path(), "two", TWO);
    let f3 = write(tmp.path(), "three", THREE);
    s.ok(&["secrets", "create", "db", "--data-file", &f1]);
    s.ok(&["secrets", "versions", "add", "db", "--data-file", &f2]);
    s.deploy_web(
        "app",
        &[
            "--set-secrets",
            "PINNED=db:1,LATEST=db:latest,/secrets/db.txt=db:latest,/secrets/first.txt=db:1",
        ],
    );
    let read = || {
        s.sh(
            "app",
            r#"echo "$PINNED|$LATEST|$(cat /secrets/db.txt)|$(cat /secrets/first.txt)""#,
        )
    };
    assert_eq!(read().trim(), format!("{ONE}|{TWO}|{TWO}|{ONE}"));
    // The files are read-only.
    let w = s.sh("app", "echo x > /secrets/db.txt 2>/dev/null; echo rc=$?");
    assert!(!w.contains("rc=0"), "{w}");
    // A new version: the running instance keeps what it started with; the next instance
    // gets the new latest, the pinned version stays.
    s.ok(&["secrets", "versions", "add", "db", "--data-file", &f3]);
    assert_eq!(read().trim(), format!("{ONE}|{TWO}|{TWO}|{ONE}"));
    s.wait_for("scale to zero", 60, || s.instances("app").is_empty());
    assert_eq!(read().trim(), format!("{ONE}|{THREE}|{THREE}|{ONE}"));

    let text = s.ok(&["services", "describe", "app"]);
    for line in [
        "LATEST=secret db:latest, PINNED=secret db:1",
        "secret-1 at /secrets: secret db, read-only (db.txt=db:latest, first.txt=db:1)",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    // The export carries the references as Cloud Run writes them, never a value, and
    // replacing the service with it changes nothing.
    let first = s.ok(&["services", "describe", "app", "--format", "export"]);
    for line in [
        "secretKeyRef:",
        "key: latest",
        "name: db",
        "secretName: db",
        "path: db.txt",
        "mountPath: /secrets",
    ] {
        assert!(
            first.contains(line),
            "{line:?} missing from the export:\n{first}"
        );
    }
    let file = tmp.path().join("export.yaml");
    std::fs::write(&file, &first).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
    let second = s.ok(&["services", "describe", "app", "--format", "export"]);
    assert_eq!(first, second);
    let revs = s.ok(&["revisions", "list", "--service", "app"]);
    assert_eq!(
        revs.lines().filter(|l| l.contains("app-0000")).count(),
        1,
        "replacing with the export made a new revision:\n{revs}"
    );

    // A deploy naming a missing secret fails, naming it, and changes nothing.
    let err = s.fails(&["deploy", "app", "--update-secrets", "OTHER=nope:latest"]);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("secret nope not found"),
        "{err}"
    );
    let yaml = first.replace("secretName: db", "secretName: gone");
    std::fs::write(&file, &yaml).unwrap();
    let out = s.skiff(&["services", "replace", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret gone not found"));
    assert_eq!(
        s.ok(&["services", "describe", "app", "--format", "export"]),
        first
    );

    // No value is anywhere in the data dir in clear (store, instance dirs, logs), nor in
    // the service's objects, nor in the server's log.
    for v in [ONE, TWO, THREE] {
        let found = files_containing(&s.data_dir, v.as_bytes());
        assert!(found.is_empty(), "{v} in clear in {found:?}");
        assert!(!s.log().contains(v));
        let (_, body) = s.api(
            "GET",
            "/apis/serving.knative.dev/v1/namespaces/default/services/app",
            None,
        );
        assert!(!body.contains(v));
    }
}

#[test]
fn job_tasks_get_secrets_as_env_and_files() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    let f1 = write(tmp.path(), "one", ONE);
    let f2 = write(tmp.path(), "two", TWO);
    s.ok(&["secrets", "create", "tok", "--data-file", &f1]);
    s.ok(&[
        "jobs",
        "create",
        "reader",
        "--image",
        "web",
        "--command",
        "/bin/sh",
        "--args",
        r#"-c,echo "env=$PW file=$(cat /run/tok/value)""#,
        "--set-secrets",
        "PW=tok:1,/run/tok/value=tok:latest",
    ]);
    s.ok(&["jobs", "execute", "reader", "--wait"]);
    s.ok(&["secrets", "versions", "add", "tok", "--data-file", &f2]);
    s.ok(&["jobs", "execute", "reader", "--wait"]);
    let logs = s.ok(&["logs", "read", "--job", "reader"]);
    assert!(logs.contains(&format!("env={ONE} file={ONE}")), "{logs}");
    assert!(logs.contains(&format!("env={ONE} file={TWO}")), "{logs}");
    // A job naming a missing secret is refused, naming it.
    let err = s.fails(&["jobs", "update", "reader", "--update-secrets", "X=nope:1"]);
    assert!(err.contains("secret nope not found"), "{err}");
    let err = s.fails(&[
        "jobs",
        "create",
        "other",
        "--image",
        "web",
        "--set-secrets",
        "X=tok:9",
    ]);
    assert!(err.contains("has no version 9"), "{err}");
    assert!(!s.ok(&["jobs", "list"]).contains("other"));
}
