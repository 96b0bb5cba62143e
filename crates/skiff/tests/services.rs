//! End-to-end tests of the services core, driving the real `skiff` binary as a user would:
//! images made by hand and by skopeo, deploy, the request path, isolation, scale to zero,
//! `kill -9` and restart, graceful stop. They need root, namespaces, overlayfs and cgroups.

use skiff_testkit::image::{skopeo_docker_archive, skopeo_oci_archive};
use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::path::Path;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// A server with the default test image imported as `web:latest`.
fn server_with_image(args: &[&str]) -> (TestServer, tempfile::TempDir) {
    TestServer::with_web_image(Path::new(BIN), args)
}

fn deploy(s: &TestServer, service: &str, extra: &[&str]) -> String {
    s.deploy_web(service, extra)
}

fn host(service: &str) -> String {
    format!("{service}.localhost")
}

#[test]
fn images_from_real_tools_deploy_and_answer() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = busybox_image(&tmp.path().join("layout"), "base", &ImageSpec::default());
    let docker = skopeo_docker_archive(&layout, &tmp.path().join("docker.tar"), "fromdocker");
    let oci = skopeo_oci_archive(&layout, &tmp.path().join("oci.tar"), "fromoci");
    let cases = [
        ("layout", layout.clone(), "base"),
        ("docker-archive", docker, "fromdocker"),
        ("oci-archive", oci, "fromoci"),
    ];
    for (svc, path, image) in cases {
        let digest = s.ok(&["images", "import", path.to_str().unwrap()]);
        assert!(digest.trim().starts_with("sha256:"), "{svc}: {digest}");
        let out = s.ok(&["deploy", svc, "--image", image, "--allow-unauthenticated"]);
        let last = out.trim().lines().last().unwrap();
        assert_eq!(
            last,
            format!("Service URL: http://{svc}.localhost:{}", s.ingress),
            "{svc}"
        );
        let (code, body) = s.get(&host(svc), "/", None);
        assert_eq!((code, body.as_str()), (200, "hello from skiff\n"), "{svc}");
    }
    let list = s.ok(&["images", "list", "--format", "json"]);
    for name in ["base:latest", "fromdocker:latest", "fromoci:latest"] {
        assert!(list.contains(name), "{name} in {list}");
    }
    // Not an image at all: a clear error, nothing imported.
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, b"this is not an image").unwrap();
    let err = s.fails(&["images", "import", junk.to_str().unwrap()]);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("not an image"),
        "{err}"
    );
    assert!(
        last.contains("junk.tar"),
        "the error names the user's file: {err}"
    );
    // A layout that does not name its image, imported without --name: the error names the
    // user's path, not the server's spool file, and says to pass --name.
    let unnamed = busybox_image(&tmp.path().join("unnamed"), "x", &ImageSpec::default());
    let index_path = unnamed.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    index["manifests"][0]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    let err = s.fails(&["images", "import", unnamed.to_str().unwrap()]);
    let last = err.trim().lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "error: cannot import {}: the archive does not name its image; pass --name NAME[:TAG]",
            unnamed.display()
        ),
        "{err}"
    );
}

/// A server that refuses an upload before reading it (401 for a wrong token) closes the
/// connection mid-body; the CLI still prints the server's reason, and nothing is imported.
#[test]
fn import_refused_early_prints_the_servers_reason() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    // Large enough that the server answers long before the body is sent.
    let big = tmp.path().join("big.tar");
    std::fs::write(&big, vec![0u8; 64 << 20]).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["images", "import", big.to_str().unwrap()])
        .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", s.api))
        .env("SKIFF_TOKEN", "not-the-token")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot import ")
            && last.contains("big.tar")
            && last.contains("not this server's admin token"),
        "{err}"
    );
    assert!(!last.contains("body error"), "{err}");
    let list = s.ok(&["images", "list", "--format", "json"]);
    assert!(!list.contains("sha256:"), "{list}");
}

/// A client command whose stdout reader has gone away ends by SIGPIPE and says nothing, as
/// other command-line tools do (`skiff images list | head`), rather than printing a panic.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let s = TestServer::start(Path::new(BIN), &[]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(BIN)
        .args(["images", "list", "--format", "json"])
        .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", s.api))
        .env("SKIFF_DATA_DIR", &s.data_dir)
        .env_remove("SKIFF_TOKEN")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

#[test]
fn container_contract_env_and_overrides() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(
        &s,
        "envy",
        &[
            "--set-env-vars",
            "GREETING=hi,IMAGE_VAR=overridden",
            "--port",
            "9090",
        ],
    );
    let (code, env) = s.get(&host("envy"), "/cgi-bin/env", None);
    assert_eq!(code, 200, "{env}");
    let rev = s.instances("envy")[0]["revision"]
        .as_str()
        .unwrap()
        .to_string();
    for want in [
        "PORT=9090".to_string(),
        "K_SERVICE=envy".into(),
        format!("K_REVISION={rev}"),
        "K_CONFIGURATION=envy".into(),
        "GREETING=hi".into(),
        "IMAGE_VAR=overridden".into(),
    ] {
        assert!(
            env.lines().any(|l| l == want),
            "{want} missing from:\n{env}"
        );
    }
    assert!(
        rev.starts_with("envy-00001-") && rev.len() == "envy-00001-abc".len(),
        "{rev}"
    );

    // --command and --args replace the image's entrypoint and cmd.
    s.ok(&[
        "deploy",
        "envy",
        "--command",
        "/bin/sh",
        "--args",
        "-c,echo custom; exec httpd -f -p $PORT -h /www",
    ]);
    s.wait_for("the custom command's output", 10, || {
        s.ok(&["logs", "read", "--service", "envy"])
            .contains("custom")
    });
    let (code, _) = s.get(&host("envy"), "/", None);
    assert_eq!(code, 200);
}

#[test]
fn instances_are_isolated_from_the_host() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "iso", &["--memory", "256Mi", "--cpu", "0.5"]);
    // Hostname: not the host's.
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let name = s.sh("iso", "hostname");
    assert_ne!(name.trim(), host_name);
    // Files: the host's data dir and root home are not there.
    let ls = s.sh(
        "iso",
        &format!("ls {} /root 2>&1; echo done", s.data_dir.display()),
    );
    assert!(ls.contains("No such file") && ls.contains("done"), "{ls}");
    // Processes: only the instance's own (pid 1 is its httpd).
    let ps = s.sh("iso", "ls /proc | grep -c '^[0-9]'");
    let n: u32 = ps.trim().parse().unwrap();
    assert!(n < 10, "the instance sees {n} processes");
    let init = s.sh("iso", "cat /proc/1/cmdline");
    assert!(init.contains("httpd"), "{init}");
    // Ports: the control API and the ingress on the host's loopback are out of reach.
    for port in [s.api, s.ingress] {
        let out = s.sh(
            "iso",
            &format!("nc -w 2 127.0.0.1 {port} </dev/null 2>&1; echo rc=$?"),
        );
        assert!(
            out.trim_end().ends_with("rc=1"),
            "port {port} reachable from inside: {out}"
        );
    }
    // No new privileges, Docker's capability set (no CAP_SYS_ADMIN: mounting fails).
    let status = s.sh("iso", "grep -E 'NoNewPrivs|CapBnd' /proc/self/status");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("CapBnd:\t00000000a80425fb"), "{status}");
    let mount = s.sh("iso", "mount -t tmpfs none /mnt 2>&1; echo rc=$?");
    assert!(!mount.contains("rc=0"), "{mount}");
    // Masked /proc paths and a writable layer of its own.
    let kcore = s.sh(
        "iso",
        "head -c 1 /proc/kcore | wc -c; echo x > /www/new && cat /www/new",
    );
    assert!(kcore.contains('x'), "{kcore}");
    // cgroup limits from --memory and --cpu.
    let id = s.instances("iso")[0]["id"].as_str().unwrap().to_string();
    let mem = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/skiff/{id}/memory.limit_in_bytes"
    ))
    .unwrap();
    assert_eq!(mem.trim(), (256u64 << 20).to_string());
    let quota = || {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/skiff/{id}/cpu.cfs_quota_us"))
            .unwrap()
            .trim()
            .to_string()
    };
    // Idle, a request-based instance is throttled; during a request it has its 0.5 CPU.
    assert_eq!(quota(), "1000");
    let port = s.ingress;
    let slow = std::thread::spawn(move || {
        skiff_testkit::http_get(port, "iso.localhost", "/cgi-bin/sleep?1", None).0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(quota(), "50000");
    assert_eq!(slow.join().unwrap(), 200);
    let pids = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/skiff/{id}/pids.max")).unwrap();
    assert_eq!(pids.trim(), "1024");
}

#[test]
fn private_services_need_an_identity_token() {
    let (s, _tmp) = server_with_image(&[]);
    s.ok(&["deploy", "secret", "--image", "web"]);
    let h = host("secret");
    assert_eq!(s.get(&h, "/", None).0, 401);
    assert_eq!(s.get(&h, "/", Some("not-a-token")).0, 403);
    let admin = std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap();
    assert_eq!(
        s.get(&h, "/", Some(admin.trim())).0,
        403,
        "the admin token is not an identity token"
    );
    let token = s.ok(&["auth", "print-identity-token"]);
    assert_eq!(s.get(&h, "/", Some(token.trim())).0, 200);
    let aud = format!("http://secret.localhost:{}", s.ingress);
    let scoped = s.ok(&["auth", "print-identity-token", "--audience", &aud]);
    assert_eq!(s.get(&h, "/", Some(scoped.trim())).0, 200);
    let other = s.ok(&[
        "auth",
        "print-identity-token",
        "--audience",
        "http://other.localhost",
    ]);
    assert_eq!(s.get(&h, "/", Some(other.trim())).0, 403);
    // Made public, it answers anyone; the API itself still needs the admin token.
    s.ok(&["deploy", "secret", "--allow-unauthenticated"]);
    assert_eq!(s.get(&h, "/", None).0, 200);
    let api = skiff_testkit::http_get(
        s.api,
        "127.0.0.1",
        "/apis/serving.knative.dev/v1/namespaces/default/services",
        None,
    );
    assert_eq!(api.0, 401);
}

#[test]
fn platform_status_codes() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "codes", &["--timeout", "1s"]);
    let cases: &[(&str, &str, u16)] = &[
        ("nothing.localhost", "/", 404),
        ("codes.localhost", "/", 200),
        ("codes.localhost", "/missing-file", 404),
        ("codes.localhost", "/cgi-bin/sleep?3", 504),
        ("nope---codes.localhost", "/", 404),
        ("example.com", "/", 404),
    ];
    for (h, path, want) in cases {
        let (code, body) = s.get(h, path, None);
        assert_eq!(code, *want, "{h}{path}: {body}");
    }
    // An app that accepts and closes connections without answering: 502.
    s.ok(&[
        "deploy",
        "rude",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--command",
        "/bin/sh",
        "--args",
        "-c,while true; do nc -l -p $PORT -e true; done",
    ]);
    assert_eq!(s.get("rude.localhost", "/", None).0, 502);
    // An app that exits at once: the deploy fails with its output, and nothing routes there.
    let err = s.fails(&[
        "deploy",
        "broken",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--command",
        "/bin/sh",
        "--args",
        "-c,echo doomed; exit 3",
    ]);
    assert!(
        err.contains("exited with code 3") && err.contains("doomed"),
        "{err}"
    );
    assert_eq!(s.get("broken.localhost", "/", None).0, 503);
}

#[test]
fn scales_to_zero_and_back_and_replaces_crashed_instances() {
    let (s, _tmp) = server_with_image(&["--scale-to-zero-after", "1s"]);
    deploy(&s, "idle", &[]);
    s.wait_for("scale to zero", 20, || s.instances("idle").is_empty());
    let t = Instant::now();
    let (code, body) = s.get(&host("idle"), "/", None);
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));
    assert!(t.elapsed() < Duration::from_secs(30));
    // Kill the instance's container from the host: the next request gets a new instance.
    let inst = s.instances("idle");
    assert_eq!(inst.len(), 1);
    let id = inst[0]["id"].as_str().unwrap().to_string();
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/skiff/{id}/cgroup.procs")).unwrap();
    for pid in procs.split_whitespace() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    s.wait_for("the crashed instance to go", 10, || {
        s.instances("idle").iter().all(|i| i["id"] != id.as_str())
    });
    assert_eq!(s.get(&host("idle"), "/", None).0, 200);
    // Log entries reach the store in batches (at most 50 ms apart while lines keep coming):
    // the crash, logged as the instance goes, may follow the next request's entries.
    s.wait_for("the crash in the service's log", 10, || {
        s.ok(&["logs", "read", "--service", "idle"])
            .contains("killed by signal 9")
    });
}

#[test]
fn min_instances_stay_and_concurrency_scales_out() {
    let (s, _tmp) = server_with_image(&["--scale-to-zero-after", "1s"]);
    deploy(&s, "warm", &["--min-instances", "2"]);
    s.wait_for("two warm instances", 20, || {
        s.instances("warm")
            .iter()
            .filter(|i| i["state"] == "ready")
            .count()
            == 2
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        s.instances("warm").len(),
        2,
        "min-instances keeps them past the idle delay"
    );

    deploy(&s, "busy", &["--concurrency", "1", "--max-instances", "3"]);
    let port = s.ingress;
    let handles: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                skiff_testkit::http_get(port, "busy.localhost", "/cgi-bin/sleep?2", None).0
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let live = s.instances("busy");
    let in_flight: u64 = live.iter().map(|i| i["inFlight"].as_u64().unwrap()).sum();
    assert_eq!((live.len(), in_flight), (3, 3), "{live:?}");
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn redeploy_moves_traffic_without_failed_requests() {
    let (s, tmp) = server_with_image(&[]);
    deploy(&s, "roll", &[]);
    let v2 = ImageSpec {
        files: vec![("www/index.html".into(), "version two\n".into(), 0o644)],
        ..ImageSpec::default()
    };
    let layout = busybox_image(&tmp.path().join("v2"), "web2", &v2);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    let port = s.ingress;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && seen.len() < 20_000 {
                seen.push(skiff_testkit::http_get(port, "roll.localhost", "/", None));
            }
            seen
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    s.ok(&["deploy", "roll", "--image", "web2"]);
    s.wait_for("the new revision to answer", 10, || {
        s.get("roll.localhost", "/", None).1 == "version two\n"
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = load.join().unwrap();
    let failed: Vec<_> = seen.iter().filter(|(c, _)| *c != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        seen.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(
        seen.iter().any(|(_, b)| b == "hello from skiff\n")
            && seen.iter().any(|(_, b)| b == "version two\n")
    );
}

#[test]
fn kill_9_and_restart_lose_nothing_and_sigterm_leaves_nothing() {
    let (mut s, _tmp) = server_with_image(&[]);
    deploy(&s, "durable", &[]);
    s.ok(&["deploy", "quiet", "--image", "web"]);
    assert!(!s.instances("durable").is_empty());
    s.kill9();
    // Without its server, every instance is killed and cleaned by its shim.
    // Its bridge, rules and the tmpfs at DATA/run stay until the next start sweeps them;
    // instances' links go now (the namespaces die with their last process).
    let run_mount = format!(" {}/run ", s.data_dir.display());
    s.wait_for("instances of the killed server to go", 15, || {
        s.leftovers().iter().all(|l| {
            l.starts_with("link: skiff")
                || l.starts_with("nftables")
                || (l.starts_with("mount: ") && l.contains(&run_mount))
        })
    });
    s.restart();
    let list = s.ok(&["services", "list"]);
    assert!(list.contains("durable") && list.contains("quiet"), "{list}");
    assert_eq!(s.get(&host("durable"), "/", None).0, 200);
    assert_eq!(
        s.get(&host("quiet"), "/", None).0,
        401,
        "still private after restart"
    );
    let images = s.ok(&["images", "list"]);
    assert!(images.contains("web:latest"), "{images}");

    assert_eq!(s.stop(), Some(0), "SIGTERM exits 0: {}", s.log());
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

#[test]
fn revisions_describe_and_delete() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "life", &[]);
    deploy(&s, "life", &["--set-env-vars", "V=2"]);
    let revs: serde_json::Value = serde_json::from_str(&s.ok(&[
        "revisions",
        "list",
        "--service",
        "life",
        "--format",
        "json",
    ]))
    .unwrap();
    let names: Vec<String> = revs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with("life-00002-") && names[1].starts_with("life-00001-"),
        "{names:?}"
    );
    // The serving revision cannot be deleted; the old one can.
    let err = s.fails(&["revisions", "delete", &names[0]]);
    assert!(err.contains("serves traffic"), "{err}");
    s.ok(&["revisions", "delete", &names[1]]);
    // describe shows the Knative object, with the image pinned by digest.
    let svc: serde_json::Value =
        serde_json::from_str(&s.ok(&["services", "describe", "life", "--format", "json"])).unwrap();
    assert_eq!(svc["status"]["latestReadyRevisionName"], names[0].as_str());
    assert_eq!(svc["status"]["traffic"][0]["percent"], 100);
    let rev: serde_json::Value =
        serde_json::from_str(&s.ok(&["revisions", "describe", &names[0], "--format", "json"]))
            .unwrap();
    assert!(
        rev["status"]["imageDigest"]
            .as_str()
            .unwrap()
            .starts_with("web@sha256:"),
        "{rev}"
    );
    // A bad flag changes nothing.
    let err = s.fails(&["deploy", "life", "--concurrency", "5000"]);
    assert!(err.contains("concurrency"), "{err}");
    assert_eq!(
        s.ok(&["revisions", "list", "--service", "life"])
            .lines()
            .count(),
        2,
        "header and one revision"
    );
    // Deleting the service stops its instances and frees its host name.
    assert!(!s.instances("life").is_empty());
    s.ok(&["services", "delete", "life"]);
    assert_eq!(s.get(&host("life"), "/", None).0, 404);
    s.wait_for("the deleted service's instances to stop", 15, || {
        s.instances("life").is_empty()
    });
    s.wait_for("no instance dirs", 15, || s.instance_leftovers().is_empty());
    let err = s.fails(&["services", "describe", "life"]);
    assert!(err.contains("not found"), "{err}");
    // The image is no longer pinned by anything and can be deleted.
    s.ok(&["images", "delete", "web"]);
    assert!(!s.ok(&["images", "list"]).contains("web:latest"));
    let err = s.fails(&["deploy", "again", "--image", "web"]);
    assert!(err.contains("not in the image store"), "{err}");
}

#[test]
fn request_and_response_bodies_stream_through_on_reused_connections() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "bodies", &[]);
    // The CGI script runs `sh -c CMD` with the request body on its stdin.
    let url = format!("http://127.0.0.1:{}/cgi-bin/sh?wc%20-c", s.ingress);
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let body = vec![b'x'; 3 << 20];
    for _ in 0..3 {
        let r = client
            .post(&url)
            .header("Host", host("bodies"))
            .body(body.clone())
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().unwrap().trim(), (3 << 20).to_string());
    }
    // A large response, then more requests on the same client connection.
    let big = client
        .get(format!(
            "http://127.0.0.1:{}/cgi-bin/sh?head%20-c%205000000%20%2Fdev%2Fzero",
            s.ingress
        ))
        .header("Host", host("bodies"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(big.len(), 5_000_000);
    for _ in 0..3 {
        assert_eq!(s.get(&host("bodies"), "/", None).0, 200);
    }
}

#[test]
fn a_response_body_is_cut_off_at_the_request_timeout() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "slowbody", &["--timeout", "2s"]);
    // The head and a first line come at once; the rest would come after the timeout.
    let url = format!(
        "http://127.0.0.1:{}/cgi-bin/sh?echo%20start%3B%20sleep%205%3B%20echo%20end",
        s.ingress
    );
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(&url)
        .header("Host", host("slowbody"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    match r.text() {
        Ok(body) => assert!(
            !body.contains("end"),
            "the body went past the timeout: {body}"
        ),
        Err(e) => assert!(e.is_body() || e.is_decode(), "{e}"),
    }
    // The service still answers.
    assert_eq!(s.get(&host("slowbody"), "/", None).0, 200);
}

#[test]
fn the_ingress_speaks_http1_and_h2c() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "both", &[]);
    let url = format!("http://127.0.0.1:{}/", s.ingress);
    for h2 in [false, true] {
        let mut b = reqwest::blocking::Client::builder().no_proxy();
        if h2 {
            b = b.http2_prior_knowledge();
        }
        let client = b.build().unwrap();
        for _ in 0..3 {
            let r = client
                .get(&url)
                .header("Host", host("both"))
                .send()
                .unwrap();
            let want = if h2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            };
            assert_eq!((r.status().as_u16(), r.version()), (200, want));
            assert_eq!(r.text().unwrap(), "hello from skiff\n");
        }
    }
}

/// `--ingress-workers N` serves the ingress on N threads of its own (0: on the server's
/// runtime); either way every connection is answered, HTTP/1.1 and h2c, from a start at zero.
#[test]
fn the_ingress_runs_on_the_workers_asked_for() {
    for workers in ["0", "3"] {
        let (s, _tmp) = server_with_image(&["--ingress-workers", workers]);
        deploy(&s, "w", &[]);
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", s.pid().unwrap()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_string())
            .filter(|c| c.starts_with("skiff-ingress"))
            .collect();
        assert_eq!(
            threads.len(),
            workers.parse::<usize>().unwrap(),
            "{threads:?}"
        );
        let url = format!("http://127.0.0.1:{}/", s.ingress);
        // Each client its own connections, so that they land on different workers.
        for h2 in [false, true, false, true] {
            let mut b = reqwest::blocking::Client::builder().no_proxy();
            if h2 {
                b = b.http2_prior_knowledge();
            }
            let client = b.build().unwrap();
            for _ in 0..3 {
                let r = client.get(&url).header("Host", host("w")).send().unwrap();
                assert_eq!(r.status().as_u16(), 200, "workers {workers}");
                assert_eq!(r.text().unwrap(), "hello from skiff\n");
            }
        }
    }
}

#[test]
fn queued_requests_are_served_in_order_and_the_queue_is_bounded() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "fifo", &["--concurrency", "1", "--max-instances", "1"]);
    let port = s.ingress;
    let get = move |path: &'static str| {
        std::thread::spawn(move || {
            let code = skiff_testkit::http_get(port, "fifo.localhost", path, None).0;
            (code, Instant::now())
        })
    };
    // One request holds the only slot; three more queue behind it, a little apart.
    let holder = get("/cgi-bin/sleep?1");
    std::thread::sleep(Duration::from_millis(300));
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(get("/cgi-bin/sleep?0.1"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(holder.join().unwrap().0, 200);
    let done: Vec<_> = queued.into_iter().map(|h| h.join().unwrap()).collect();
    for (code, _) in &done {
        assert_eq!(*code, 200);
    }
    assert!(
        done[0].1 < done[1].1 && done[1].1 < done[2].1,
        "served out of arrival order"
    );

    // The queue holds 100 requests here (ten times max-instances × concurrency, at least
    // 100): with one slot taken and 100 waiting, one more is refused at once.
    let holder = get("/cgi-bin/sleep?3");
    std::thread::sleep(Duration::from_millis(300));
    let waiting: Vec<_> = (0..100).map(|_| get("/")).collect();
    s.wait_for("100 queued requests", 10, || {
        let (_, text) = s.api("GET", "/metrics", None);
        text.lines().any(|l| {
            l.starts_with("skiff_pending_requests{") && l.contains("fifo") && l.ends_with(" 100")
        })
    });
    let (code, body) = s.get("fifo.localhost", "/", None);
    assert_eq!(code, 429, "{body}");
    let refused_at = Instant::now();
    let (code, held_until) = holder.join().unwrap();
    assert_eq!(code, 200);
    assert!(refused_at < held_until, "the overflow waited for a slot");
    for h in waiting {
        assert_eq!(h.join().unwrap().0, 200);
    }
}

/// Instance directories under the server's run tmpfs: running instances and those made ahead.
fn instance_dirs(s: &TestServer) -> Vec<String> {
    std::fs::read_dir(s.data_dir.join("run/i"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn instances_made_ahead_serve_starts_from_zero_and_go_with_their_revision() {
    let (s, _tmp) =
        server_with_image(&["--scale-to-zero-after", "1s", "--prepared-instances", "1"]);
    deploy(&s, "ahead", &[]);
    s.wait_for("scale to zero", 20, || s.instances("ahead").is_empty());
    s.wait_for("an instance made ahead of demand", 20, || {
        instance_dirs(&s).len() == 1
    });
    let made = instance_dirs(&s).remove(0);
    assert!(made.starts_with("ahead-"), "{made}");
    // A second service serves too, but the server keeps one instance made ahead in all.
    deploy(&s, "second", &[]);
    s.wait_for("scale to zero", 20, || s.instances("second").is_empty());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(instance_dirs(&s), vec![made.clone()]);

    // A request at zero instances takes it: the instance that answers is the one made ahead.
    let (code, body) = s.get(&host("ahead"), "/", None);
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));
    let running = s.instances("ahead");
    assert_eq!(running.len(), 1, "{running:?}");
    assert_eq!(running[0]["id"], made.as_str());
    // The log gives each start's steps: the whole start for the deploy's first instance, only
    // the app's start for the one made ahead.
    let log = s.log();
    let ready: Vec<&str> = log.lines().filter(|l| l.contains(" ready in ")).collect();
    eprintln!("{}", ready.join("\n"));
    let steps = [
        "network ",
        "spawn ",
        "rootfs ",
        "create ",
        "start ",
        "until first accept ",
    ];
    assert!(
        ready
            .iter()
            .any(|l| steps.iter().all(|step| l.contains(step))),
        "{log}"
    );
    assert!(
        ready
            .iter()
            .any(|l| l.contains("(made ahead of demand): start ")
                && l.contains("until first accept ")
                && !l.contains("create ")),
        "{log}"
    );
    // Its output is captured like any instance's.
    s.wait_for("the app's output in the log", 10, || {
        s.ok(&["logs", "read", "--service", "ahead"])
            .contains("listening on 8080")
    });
    // It scales to zero like any other, and another is made ahead in its place.
    s.wait_for("scale to zero", 20, || s.instances("ahead").is_empty());
    s.wait_for("another instance made ahead", 20, || {
        let dirs = instance_dirs(&s);
        dirs.len() == 1 && dirs[0] != made
    });
    // Deleting the services removes the instance made ahead with everything it held.
    s.ok(&["services", "delete", "ahead"]);
    s.ok(&["services", "delete", "second"]);
    s.wait_for("no instance left", 20, || s.instance_leftovers().is_empty());
}

/// `namespaces.services.list` pages with Cloud Run's `limit` and `continue`, in name order,
/// leaves out what a label selector does not match without counting it toward the limit,
/// and refuses a bad limit or token; `skiff services list` shows every service.
#[test]
fn services_list_pages_by_name() {
    let (s, _tmp) = server_with_image(&[]);
    for name in ["cherry", "apple", "banana"] {
        deploy(&s, name, &[]);
    }
    let knative = "/apis/serving.knative.dev/v1/namespaces/default/services";
    let (_, banana) = s.api("GET", &format!("{knative}/banana"), None);
    let mut banana: serde_json::Value = serde_json::from_str(&banana).unwrap();
    banana["metadata"]["labels"]["fruit"] = "yellow".into();
    let (code, body) = s.api(
        "PUT",
        &format!("{knative}/banana"),
        Some(&banana.to_string()),
    );
    assert_eq!(code, 200, "{body}");
    let page = |query: &str| -> (Vec<String>, Option<String>) {
        let (code, body) = s.api("GET", &format!("{knative}?{query}"), None);
        assert_eq!(code, 200, "{query}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["kind"], "ServiceList", "{body}");
        let names = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        (names, v["metadata"]["continue"].as_str().map(String::from))
    };
    assert_eq!(page("").0, ["apple", "banana", "cherry"]);
    assert_eq!(page("").1, None);
    let (first, next) = page("limit=2");
    assert_eq!(first, ["apple", "banana"]);
    let next = next.expect("a continue token while more follow");
    assert_eq!(
        page(&format!("limit=2&continue={next}")),
        (vec!["cherry".to_string()], None)
    );
    assert_eq!(
        page("limit=3"),
        (vec!["apple".into(), "banana".into(), "cherry".into()], None)
    );
    // The selector's misses do not fill the page; as in Kubernetes, a token may lead to an
    // empty last page when what is left does not match.
    let sel = "labelSelector=fruit%3Dyellow";
    assert_eq!(
        page(&format!("limit=1&{sel}")),
        (vec!["banana".to_string()], Some("banana".to_string()))
    );
    assert_eq!(
        page(&format!("limit=1&{sel}&continue=banana")),
        (vec![], None)
    );
    assert_eq!(page(sel), (vec!["banana".to_string()], None));
    // Each item is the service as `services.get` answers it.
    let (_, one) = s.api("GET", &format!("{knative}/apple"), None);
    let (_, list) = s.api("GET", &format!("{knative}?limit=1"), None);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(
        list["items"][0],
        serde_json::from_str::<serde_json::Value>(&one).unwrap()
    );
    for (query, says) in [
        ("limit=0", "limit must be at least 1"),
        ("continue=Not_A_Name", "is not a token from an earlier page"),
    ] {
        let (code, body) = s.api("GET", &format!("{knative}?{query}"), None);
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }
    let table = s.ok(&["services", "list"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(
        rows[0].starts_with("apple ") && rows[0].ends_with("True"),
        "{table}"
    );
    assert!(
        rows[1].starts_with("banana ") && rows[1].contains("banana-00001-"),
        "{table}"
    );
}

/// `services.list` takes Google's `fields` system parameter (partial responses), and its
/// whole answer, kept ready between calls, shows every write acknowledged before it: each
/// create, update and delete through the API is in the next list, with or without `fields`,
/// and in `skiff services list`.
#[test]
fn services_list_fields_and_lists_after_writes() {
    let (s, _tmp) = server_with_image(&[]);
    deploy(&s, "apple", &[]);
    let knative = "/apis/serving.knative.dev/v1/namespaces/default/services";
    let get = |query: &str| -> serde_json::Value {
        let (code, body) = s.api("GET", &format!("{knative}{query}"), None);
        assert_eq!(code, 200, "{query}: {body}");
        serde_json::from_str(&body).unwrap()
    };
    let (_, apple) = s.api("GET", &format!("{knative}/apple"), None);
    let apple: serde_json::Value = serde_json::from_str(&apple).unwrap();
    let url = apple["status"]["url"].as_str().unwrap().to_string();
    assert_eq!(
        get("?fields=items(metadata.name,status.url)"),
        serde_json::json!({"items": [{"metadata": {"name": "apple"}, "status": {"url": url}}]})
    );
    assert_eq!(
        get("?fields=items/metadata/name,kind"),
        serde_json::json!({"kind": "ServiceList", "items": [{"metadata": {"name": "apple"}}]})
    );
    assert_eq!(get("?fields=*"), get(""));
    assert_eq!(get("?fields=items")["items"][0], apple);
    // The mask may come as the X-Goog-FieldMask header instead; each answer stays its own.
    let token = std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap();
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    for _ in 0..2 {
        let masked: serde_json::Value = client
            .get(format!("http://127.0.0.1:{}{knative}", s.api))
            .bearer_auth(token.trim())
            .header("X-Goog-FieldMask", "items.metadata.name")
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(
            masked,
            serde_json::json!({"items": [{"metadata": {"name": "apple"}}]})
        );
        assert_eq!(get("")["items"][0], apple);
    }
    for query in ["fields=items(metadata", "fields=", "fields=items..name"] {
        let (code, body) = s.api("GET", &format!("{knative}?{query}"), None);
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains("invalid fields"), "{query}: {body}");
    }

    let names = |v: &serde_json::Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let table_names = || -> Vec<String> {
        s.ok(&["services", "list"])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let fields = "?fields=items(metadata(name,labels))";
    let mut want = vec!["apple".to_string()];
    for i in 0..4 {
        // Each list is asked twice, so the second may come from what the first left ready.
        for _ in 0..2 {
            assert_eq!(names(&get("")), want);
            assert_eq!(names(&get(fields)), want);
            assert_eq!(table_names(), want);
        }
        let name = format!("pear-{i}");
        let svc = serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"template": {"spec": {"containers": [{"image": "web:latest"}]}}}
        });
        let (code, body) = s.api("POST", knative, Some(&svc.to_string()));
        assert_eq!(code, 200, "{body}");
        want.push(name.clone());
        assert_eq!(names(&get("")), want, "after creating {name}");
        assert_eq!(names(&get(fields)), want, "after creating {name}");
        assert_eq!(table_names(), want, "after creating {name}");
        // An update: a label, seen in the next list.
        let (_, body) = s.api("GET", &format!("{knative}/{name}"), None);
        let mut svc: serde_json::Value = serde_json::from_str(&body).unwrap();
        svc["metadata"]["labels"]["round"] = i.to_string().into();
        let (code, body) = s.api("PUT", &format!("{knative}/{name}"), Some(&svc.to_string()));
        assert_eq!(code, 200, "{body}");
        for query in ["", fields] {
            let list = get(query);
            let item = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|it| it["metadata"]["name"] == name.as_str())
                .unwrap_or_else(|| panic!("{name} in {list}"));
            assert_eq!(
                item["metadata"]["labels"]["round"],
                i.to_string(),
                "{query}"
            );
        }
        if i % 2 == 1 {
            let (code, body) = s.api("DELETE", &format!("{knative}/{name}"), None);
            assert_eq!(code, 200, "{body}");
            want.pop();
            assert_eq!(names(&get("")), want, "after deleting {name}");
            assert_eq!(names(&get(fields)), want, "after deleting {name}");
            assert_eq!(table_names(), want, "after deleting {name}");
        }
    }
    // The whole list is the pages joined.
    let mut paged = Vec::new();
    let mut cont = String::new();
    loop {
        let page = get(&format!("?limit=1&continue={cont}"));
        paged.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(c) => cont = c.to_string(),
            None => break,
        }
    }
    assert_eq!(serde_json::Value::Array(paged), get("")["items"]);
}
