//! Deploy from source, end to end with the real `skiff` binary and Debian's `buildah`: a base
//! image the test makes itself (busybox, pushed into Skiff's own registry with `skopeo`), a
//! multi-stage Dockerfile with a build argument, `.gcloudignore` and `.dockerignore`, a build
//! sandbox that reaches the ingress but neither the control API nor the data dir, a failing
//! `RUN` that leaves the service as it was, a static site found without a Dockerfile (built
//! to the same digest by a second server whose base image comes from the first's registry), a
//! directory with nothing to build, the time limit, cancel, and a build a killed server left
//! behind; and a Python app without a Dockerfile whose `requirements.txt` installs Flask from
//! PyPI through the build's sandbox, on a Debian base made with `mmdebstrap`; a Node.js app
//! without a Dockerfile whose `package.json` installs a package from npm, on Debian's nodejs
//! and npm; a Go app without a Dockerfile built into a static binary on a busybox base; and a
//! job deployed from source, run, rebuilt after a failed build that left it; and the layer
//! cache kept per service across builds, pruned when the service goes, and bounded by
//! `--build-cache-max` (the least recently built service's cache goes first; 0 keeps none); and
//! the cache of a `builds submit --tag` image dropped by the prune after the image is deleted.

use skiff_testkit::{busybox_image, ImageSpec, TestServer};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// Pushes the default busybox test image into the server's own registry as
/// `base/busybox:latest`; returns its reference there.
fn push_base(s: &TestServer, tmp: &Path) -> String {
    let layout = busybox_image(&tmp.join("base"), "busybox", &ImageSpec::default());
    s.push_layout(&layout, "base/busybox:latest")
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn service(s: &TestServer, name: &str) -> serde_json::Value {
    let (code, body) = s.api(
        "GET",
        &format!("/apis/serving.knative.dev/v1/namespaces/default/services/{name}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn builds(s: &TestServer) -> Vec<serde_json::Value> {
    let out = s.ok(&["builds", "list", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["builds"].as_array().unwrap().clone()
}

#[test]
fn multi_stage_dockerfile_deploys_in_a_sandbox_and_a_failed_build_changes_nothing() {
    let mut s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let base = push_base(&s, tmp.path());
    let src = tmp.path().join("src");
    let data = s.data_dir.display().to_string();
    // Stage one writes a file from a build argument; stage two copies it, the context (less
    // what the ignore files name) and what the sandbox could reach: the ingress on the
    // gateway (allowed, so the checks below can tell), the control API on the gateway and on
    // loopback, and the server's data dir.
    let dockerfile = format!(
        "FROM {base} AS stage1\n\
         ARG GREETING=unset\n\
         RUN busybox mkdir -p /out && echo \"built $GREETING\" > /out/greeting.txt\n\
         FROM {base}\n\
         COPY --from=stage1 /out/greeting.txt /www/greeting.txt\n\
         COPY . /www/src/\n\
         RUN GW=$(busybox awk '/^nameserver/ {{print $2; exit}}' /etc/resolv.conf); \
             (echo | nc -w 5 $GW {ingress} >/dev/null 2>&1 && echo reached || echo blocked) > /www/ingress.txt; \
             (echo | nc -w 5 $GW {api} >/dev/null 2>&1 && echo reached || echo blocked) > /www/api-gateway.txt; \
             (echo | nc -w 5 127.0.0.1 {api} >/dev/null 2>&1 && echo reached || echo blocked) > /www/api-loopback.txt; \
             (cat {data}/admin.token >/dev/null 2>&1 && echo reached || echo blocked) > /www/data.txt\n",
        ingress = s.ingress,
        api = s.api,
    );
    write(&src, "Dockerfile", &dockerfile);
    write(&src, ".gcloudignore", "secret.txt\n");
    write(&src, ".dockerignore", "dockerignored.txt\n");
    write(&src, "keep.txt", "kept\n");
    write(&src, "secret.txt", "must not be uploaded\n");
    write(&src, "dockerignored.txt", "must not be copied\n");

    let src_arg = src.to_str().unwrap();
    let out = s.skiff(&[
        "deploy",
        "app",
        "--source",
        src_arg,
        "--set-build-env-vars",
        "GREETING=hello",
        "--allow-unauthenticated",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy --source failed: {stderr}\nserver log: {}",
        s.log()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Service URL: http://app.localhost:"),
        "{stdout}"
    );
    // The build's log was streamed: buildah's steps, then the image.
    assert!(stderr.contains("STEP"), "{stderr}");
    assert!(
        stderr.contains("Built image default/cloud-run-source-deploy/app:"),
        "{stderr}"
    );

    let host = "app.localhost";
    for (path, want) in [
        ("/greeting.txt", "built hello\n"),
        ("/src/keep.txt", "kept\n"),
        ("/ingress.txt", "reached\n"),
        ("/api-gateway.txt", "blocked\n"),
        ("/api-loopback.txt", "blocked\n"),
        ("/data.txt", "blocked\n"),
    ] {
        assert_eq!(s.get(host, path, None), (200, want.to_string()), "{path}");
    }
    for path in ["/src/secret.txt", "/src/dockerignored.txt"] {
        assert_eq!(s.get(host, path, None).0, 404, "{path}");
    }

    // The build as an object, and its image in the store under the service's name.
    let list = builds(&s);
    assert_eq!(list.len(), 1, "{list:?}");
    let b = &list[0];
    assert_eq!(b["status"], "SUCCESS", "{b}");
    assert_eq!(b["service"], "app");
    assert_eq!(b["plan"]["kind"], "dockerfile");
    assert!(b["source"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let id = b["id"].as_str().unwrap();
    let digest = b["results"]["images"][0]["digest"].as_str().unwrap();
    let images = s.ok(&["images", "list"]);
    assert!(
        images.contains(&format!("default/cloud-run-source-deploy/app:{id}"))
            && images.contains("default/cloud-run-source-deploy/app:latest"),
        "{images}"
    );
    let described = s.ok(&["builds", "describe", id]);
    assert!(
        described.contains("SUCCESS") && described.contains(digest),
        "{described}"
    );
    let log = s.ok(&["builds", "log", id]);
    assert!(log.contains("COMMIT") || log.contains("STEP"), "{log}");
    let rev = service(&s, "app")["status"]["latestReadyRevisionName"]
        .as_str()
        .unwrap()
        .to_string();
    let pinned = s
        .api(
            "GET",
            &format!("/apis/serving.knative.dev/v1/namespaces/default/revisions/{rev}"),
            None,
        )
        .1;
    assert!(pinned.contains(digest), "{pinned}");

    // A failing RUN: the log's tail is printed, the deploy fails, the service stays.
    write(
        &src,
        "Dockerfile",
        &format!("{dockerfile}RUN echo about to fail && exit 3\n"),
    );
    let err = s.fails(&[
        "deploy",
        "app",
        "--source",
        src_arg,
        "--set-build-env-vars",
        "GREETING=hello",
    ]);
    // The steps before it come from the layer cache of the first build.
    assert!(err.contains("Using cache"), "{err}");
    assert!(err.contains("about to fail"), "{err}");
    assert!(err.contains("FAILURE"), "{err}");
    assert!(err.contains("skiff builds log"), "{err}");
    let svc = service(&s, "app");
    assert_eq!(svc["status"]["latestReadyRevisionName"], rev.as_str());
    assert_eq!(svc["metadata"]["generation"], 1, "{svc}");
    assert_eq!(s.get(host, "/greeting.txt", None).1, "built hello\n");
    let list = builds(&s);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["status"], "FAILURE", "{:?}", list[0]);
    assert!(list[0].get("results").is_none());

    // Stopping the server leaves no build process, mount or cgroup behind.
    assert_eq!(s.stop(), Some(0));
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

#[test]
fn static_site_nothing_to_build_time_limit_cancel_and_a_killed_server() {
    let mut s = TestServer::start(Path::new(BIN), &["--build-max-source", "64Ki"]);
    let tmp = tempfile::tempdir().unwrap();

    // Nothing to build: the error lists what was looked for, and no service is made.
    let empty = tmp.path().join("empty");
    write(&empty, "README.md", "no code here\n");
    let err = s.fails(&["deploy", "nothing", "--source", empty.to_str().unwrap()]);
    for want in [
        "nothing to build",
        "Dockerfile",
        "package.json",
        "requirements.txt",
        "go.mod",
        "index.html",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    let (code, _) = s.api(
        "GET",
        "/apis/serving.knative.dev/v1/namespaces/default/services/nothing",
        None,
    );
    assert_eq!(code, 404);
    let err = s.fails(&["deploy", "x", "--source", "/no/such/dir"]);
    assert!(
        err.contains("--source /no/such/dir: no such directory"),
        "{err}"
    );
    let err = s.fails(&["builds", "describe", "no-such-build"]);
    assert!(err.contains("build no-such-build not found"), "{err}");

    // No Dockerfile but an index.html: a static site, on the base image given.
    let base = push_base(&s, tmp.path());
    let site = tmp.path().join("site");
    write(&site, "index.html", "<p>static site</p>\n");
    write(&site, "about/index.html", "about\n");
    let out = s.ok(&[
        "deploy",
        "site",
        "--source",
        site.to_str().unwrap(),
        "--base-image",
        &base,
        "--allow-unauthenticated",
    ]);
    assert!(out.contains("Service URL: http://site.localhost:"), "{out}");
    assert_eq!(
        s.get("site.localhost", "/", None),
        (200, "<p>static site</p>\n".to_string())
    );
    assert_eq!(
        s.get("site.localhost", "/about/", None),
        (200, "about\n".to_string())
    );
    let b = &builds(&s)[0];
    assert_eq!(b["plan"]["kind"], "static", "{b}");
    assert_eq!(b["plan"]["baseImage"], base.as_str(), "{b}");
    let log = s.ok(&["builds", "log", b["id"].as_str().unwrap()]);
    assert!(log.contains("Generated Dockerfile (static)"), "{log}");
    let site_digest = b["results"]["images"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // Reproducible: another server, with a storage and layer cache of its own, builds the same
    // source on the same base (pulled from this server's registry with the credentials
    // `registries login` stored) into the very same image; deploying it again says so.
    let other = TestServer::start(Path::new(BIN), &[]);
    let token = std::fs::read_to_string(s.data_dir.join("admin.token")).unwrap();
    let registry = format!("127.0.0.1:{}", s.api);
    let login = std::process::Command::new(BIN)
        .args([
            "registries",
            "login",
            &registry,
            "-u",
            "skiff",
            "--password-stdin",
        ])
        .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", other.api))
        .env("SKIFF_DATA_DIR", &other.data_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(token.trim().as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(login.success());
    let site_arg = site.to_str().unwrap();
    let out = other.skiff(&[
        "builds",
        "submit",
        site_arg,
        "--tag",
        "site:v1",
        "--base-image",
        &base,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        other.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("site:v1@{site_digest}")
    );
    let out = other.skiff(&[
        "builds",
        "submit",
        site_arg,
        "--tag",
        "site:v1",
        "--base-image",
        &base,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("The image is the same as build"), "{err}");
    drop(other);

    // A source larger than the server's limit is refused with 413 and a clear error, and
    // nothing is built.
    let before = builds(&s).len();
    let big = tmp.path().join("big");
    let noise = skiff_testkit::incompressible(256 * 1024);
    std::fs::create_dir_all(&big).unwrap();
    std::fs::write(big.join("noise.bin"), noise).unwrap();
    write(&big, "index.html", "x\n");
    let err = s.fails(&["builds", "submit", big.to_str().unwrap(), "--tag", "big:v1"]);
    assert!(
        err.contains("larger than the server's limit") && err.contains(".gcloudignore"),
        "{err}"
    );
    assert_eq!(builds(&s).len(), before);

    // A RUN that outlasts the time limit ends TIMEOUT.
    let slow = tmp.path().join("slow");
    write(
        &slow,
        "Dockerfile",
        &format!("FROM {base}\nRUN sleep 600\n"),
    );
    let slow_arg = slow.to_str().unwrap();
    let err = s.fails(&[
        "builds",
        "submit",
        slow_arg,
        "--tag",
        "slow:v1",
        "--build-timeout",
        "3s",
    ]);
    assert!(err.contains("TIMEOUT"), "{err}");

    // Cancel: a build in its RUN step ends CANCELLED.
    let bin = Path::new(BIN);
    let spawn_submit = || {
        std::process::Command::new(bin)
            .args(["builds", "submit", slow_arg, "--tag", "slow:v2"])
            .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", s.api))
            .env("SKIFF_DATA_DIR", &s.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let working = |s: &TestServer| {
        builds(s)
            .into_iter()
            .find(|b| b["status"] == "WORKING" && b["plan"]["kind"] == "dockerfile")
            .map(|b| b["id"].as_str().unwrap().to_string())
    };
    let mut client = spawn_submit();
    s.wait_for("a build to be working", 120, || working(&s).is_some());
    let id = working(&s).unwrap();
    s.ok(&["builds", "cancel", &id]);
    let b = serde_json::from_str::<serde_json::Value>(
        &s.ok(&["builds", "describe", &id, "--format", "json"]),
    )
    .unwrap();
    assert_eq!(b["status"], "CANCELLED", "{b}");
    assert!(!client.wait().unwrap().success());

    // A build running when the server is killed is FAILURE after the restart, with why.
    let mut client = spawn_submit();
    s.wait_for("a build to be working", 120, || working(&s).is_some());
    let id = working(&s).unwrap();
    s.kill9();
    let _ = client.wait();
    s.restart();
    let b = serde_json::from_str::<serde_json::Value>(
        &s.ok(&["builds", "describe", &id, "--format", "json"]),
    )
    .unwrap();
    assert_eq!(b["status"], "FAILURE", "{b}");
    assert!(
        b["statusDetail"]
            .as_str()
            .unwrap()
            .contains("server stopped"),
        "{b}"
    );
    assert!(builds(&s).iter().all(|b| b["status"] != "WORKING"));
    assert_eq!(s.stop(), Some(0));
    assert_eq!(s.leftovers(), Vec::<String>::new());
}

#[test]
fn python_app_without_a_dockerfile_installs_flask_from_pypi() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    // The base: Debian's python3 and pip (from `mmdebstrap`), trusting the host's CA bundle
    // (the machine may reach PyPI through a TLS proxy of its own), with pip allowed to install
    // beside Debian's packages, as the official python images allow.
    let ca = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let spec = ImageSpec {
        entrypoint: vec![],
        cmd: vec![],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "PIP_BREAK_SYSTEM_PACKAGES=1".into(),
            "PIP_DISABLE_PIP_VERSION_CHECK=1".into(),
            "PIP_CERT=/etc/skiff-test-ca.pem".into(),
        ],
        files: vec![("etc/skiff-test-ca.pem".into(), ca, 0o644)],
        user: None,
        binaries: vec![],
    };
    let layout = skiff_testkit::debian_image(
        &tmp.path().join("python"),
        "python",
        &["python3", "python3-pip"],
        &[],
        &spec,
    );
    let base = s.push_layout(&layout, "base/python:3");

    let app = tmp.path().join("app");
    write(&app, "requirements.txt", "flask\n");
    write(
        &app,
        "main.py",
        "import flask\n\napp = flask.Flask(__name__)\n\n\n@app.route(\"/\")\n\
         def hello():\n    return \"hello from flask \" + flask.__version__ + \"\\n\"\n",
    );
    let out = s.skiff(&[
        "deploy",
        "pyapp",
        "--source",
        app.to_str().unwrap(),
        "--base-image",
        &base,
        "--allow-unauthenticated",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy --source failed: {stderr}\nserver log: {}",
        s.log()
    );
    assert!(stderr.contains("Generated Dockerfile (python)"), "{stderr}");
    assert!(stderr.contains("Successfully installed"), "{stderr}");
    let (code, body) = s.get("pyapp.localhost", "/", None);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("hello from flask "), "{body}");
    let b = &builds(&s)[0];
    assert_eq!(b["plan"]["kind"], "python", "{b}");
}

#[test]
fn node_app_without_a_dockerfile_installs_a_package_from_npm() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    // The base: Debian's nodejs and npm (from `mmdebstrap`), trusting the host's CA bundle
    // too (the machine may reach npm's registry through a TLS proxy of its own).
    let ca = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let spec = ImageSpec {
        entrypoint: vec![],
        cmd: vec![],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "NODE_EXTRA_CA_CERTS=/etc/skiff-test-ca.pem".into(),
            "npm_config_update_notifier=false".into(),
            "npm_config_fund=false".into(),
            "npm_config_audit=false".into(),
        ],
        files: vec![("etc/skiff-test-ca.pem".into(), ca, 0o644)],
        user: None,
        binaries: vec![],
    };
    let layout = skiff_testkit::debian_image(
        &tmp.path().join("node"),
        "node",
        &["nodejs", "npm"],
        &[],
        &spec,
    );
    let base = s.push_layout(&layout, "base/node:22");

    let app = tmp.path().join("app");
    write(
        &app,
        "package.json",
        "{\"name\": \"nodeapp\", \"version\": \"1.0.0\", \"main\": \"server.js\",\n \
         \"scripts\": {\"start\": \"node server.js\"},\n \
         \"dependencies\": {\"ms\": \"^2.1.3\"}}\n",
    );
    write(
        &app,
        "server.js",
        "const http = require('http');\nconst ms = require('ms');\n\
         http.createServer((req, res) => {\n  res.end('hello from node, 2h is ' + ms('2h') + ' ms\\n');\n\
         }).listen(process.env.PORT);\n",
    );
    let out = s.skiff(&[
        "deploy",
        "nodeapp",
        "--source",
        app.to_str().unwrap(),
        "--base-image",
        &base,
        "--allow-unauthenticated",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy --source failed: {stderr}\nserver log: {}",
        s.log()
    );
    assert!(stderr.contains("Generated Dockerfile (nodejs)"), "{stderr}");
    assert!(stderr.contains("RUN npm install"), "{stderr}");
    assert!(stderr.contains("added 1 package"), "{stderr}");
    let (code, body) = s.get("nodeapp.localhost", "/", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "hello from node, 2h is 7200000 ms\n");
    let b = &builds(&s)[0];
    assert_eq!(b["plan"]["kind"], "nodejs", "{b}");
}

#[test]
fn go_app_without_a_dockerfile_builds_a_static_binary_on_a_small_base() {
    let mut s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    // The build stage: Debian's golang-go, using only the toolchain it has (no module proxy
    // is reachable). The run stage: the busybox test image, set as the server's go-run base.
    let spec = ImageSpec {
        entrypoint: vec![],
        cmd: vec![],
        env: vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".into(),
            "GOTOOLCHAIN=local".into(),
        ],
        files: vec![],
        user: None,
        binaries: vec![],
    };
    let layout =
        skiff_testkit::debian_image(&tmp.path().join("go"), "go", &["golang-go"], &[], &spec);
    let go_base = s.push_layout(&layout, "base/golang:1");
    let run_base = push_base(&s, tmp.path());
    s.stop();
    let flag = format!("go-run={run_base}");
    s.restart_with(&["--build-base-image", &flag]);
    s.wait_for("the server to answer", 60, || {
        s.skiff(&["services", "list"]).status.success()
    });

    let app = tmp.path().join("app");
    write(&app, "go.mod", "module example.com/hello\n\ngo 1.19\n");
    write(
        &app,
        "main.go",
        "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n\t\"os\"\n\t\"runtime\"\n)\n\n\
         func main() {\n\thttp.HandleFunc(\"/\", func(w http.ResponseWriter, r *http.Request) {\n\
         \t\tfmt.Fprintf(w, \"hello from go, compiled by %s\\n\", runtime.Compiler)\n\t})\n\
         \thttp.ListenAndServe(\":\"+os.Getenv(\"PORT\"), nil)\n}\n",
    );
    let out = s.skiff(&[
        "deploy",
        "goapp",
        "--source",
        app.to_str().unwrap(),
        "--base-image",
        &go_base,
        "--allow-unauthenticated",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "deploy --source failed: {stderr}\nserver log: {}",
        s.log()
    );
    assert!(stderr.contains("Generated Dockerfile (go)"), "{stderr}");
    assert!(stderr.contains(&format!("FROM {run_base}")), "{stderr}");
    let (code, body) = s.get("goapp.localhost", "/", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, "hello from go, compiled by gc\n");
    let b = &builds(&s)[0];
    assert_eq!(b["plan"]["kind"], "go", "{b}");
}

/// The job's image as stored.
fn job_image(s: &TestServer, name: &str) -> String {
    let out = s.ok(&["jobs", "describe", name, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["spec"]["template"]["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs an execution of `job` to its end and waits until its log holds every line of `want`.
fn execute_and_read(s: &TestServer, job: &str, want: &[&str]) {
    s.ok(&["jobs", "execute", job, "--wait"]);
    s.wait_for("the execution's log", 60, || {
        let out = s.ok(&["logs", "read", "--job", job, "--limit", "1000"]);
        want.iter().all(|w| out.contains(w))
    });
}

#[test]
fn job_deploys_from_source_runs_the_built_program_and_a_failed_build_leaves_it() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let base = push_base(&s, tmp.path());
    let src = tmp.path().join("src");
    let dockerfile = format!(
        "FROM {base}\n\
         ARG WHO=unset\n\
         RUN echo \"built for $WHO\" > /msg.txt\n\
         COPY run.sh /run.sh\n\
         ENTRYPOINT [\"/bin/sh\", \"/run.sh\"]\n"
    );
    write(&src, "Dockerfile", &dockerfile);
    write(
        &src,
        "run.sh",
        "echo \"job ran: $(cat /msg.txt) task=$CLOUD_RUN_TASK_INDEX\"\n",
    );
    let src_arg = src.to_str().unwrap();

    // Nothing to create it from: an error, and no job.
    let err = s.fails(&["jobs", "deploy", "nightly"]);
    assert!(
        err.contains("pass --image NAME[:TAG] or --source DIR"),
        "{err}"
    );
    let err = s.fails(&["jobs", "deploy", "nightly", "--base-image", "x"]);
    assert!(err.contains("add --source DIR"), "{err}");
    assert!(!s.ok(&["jobs", "list"]).contains("nightly"));

    // Created from source: the build's log streams, the job runs the built program.
    let out = s.skiff(&[
        "jobs",
        "deploy",
        "nightly",
        "--source",
        src_arg,
        "--set-build-env-vars",
        "WHO=skiff",
        "--tasks",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "jobs deploy --source failed: {stderr}\nserver log: {}",
        s.log()
    );
    assert!(stderr.contains("STEP"), "{stderr}");
    assert!(
        stderr.contains("Built image default/cloud-run-source-deploy/nightly:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Job [nightly] has successfully been deployed."),
        "{stderr}"
    );
    let first = job_image(&s, "nightly");
    assert!(
        first.starts_with("default/cloud-run-source-deploy/nightly:"),
        "{first}"
    );
    execute_and_read(
        &s,
        "nightly",
        &[
            "job ran: built for skiff task=0",
            "job ran: built for skiff task=1",
        ],
    );

    // The build is the job's: listed under it, not under a service.
    let out = s.ok(&["builds", "list", "--job", "nightly", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v["builds"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(list[0]["job"], "nightly");
    assert!(list[0].get("service").is_none(), "{out}");
    assert!(s.ok(&["builds", "list"]).contains("job/nightly"));

    // A failed build leaves the job as it was.
    write(&src, "Dockerfile", &format!("{dockerfile}RUN exit 3\n"));
    let err = s.fails(&["jobs", "deploy", "nightly", "--source", src_arg]);
    assert!(err.contains("FAILURE"), "{err}");
    assert_eq!(job_image(&s, "nightly"), first);
    assert_eq!(builds(&s).len(), 2);

    // Deployed again from changed source: updated in place, its other settings kept.
    write(&src, "Dockerfile", &dockerfile);
    write(
        &src,
        "run.sh",
        "echo \"second build ran task=$CLOUD_RUN_TASK_INDEX\"\n",
    );
    s.ok(&["jobs", "deploy", "nightly", "--source", src_arg]);
    let second = job_image(&s, "nightly");
    assert_ne!(second, first);
    let out = s.ok(&["jobs", "describe", "nightly", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spec"]["template"]["spec"]["taskCount"], 2, "{out}");
    execute_and_read(
        &s,
        "nightly",
        &["second build ran task=0", "second build ran task=1"],
    );
}

/// `(id, name:tag)` of every image in the server's buildah storage (untagged ones with an
/// empty name).
fn buildah_images(s: &TestServer) -> Vec<(String, String)> {
    let b = s.data_dir.join("builds");
    let out = std::process::Command::new("buildah")
        .arg("--root")
        .arg(b.join("storage"))
        .arg("--runroot")
        .arg(b.join("run"))
        .args([
            "--storage-driver",
            "overlay",
            "images",
            "--all",
            "--noheading",
        ])
        .args(["--no-trunc", "--format", "{{.ID}} {{.Name}}:{{.Tag}}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "buildah images: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, name) = l.trim().split_once(' ')?;
            let name = name.trim();
            let name = if name.starts_with("<none>") { "" } else { name };
            Some((id.to_string(), name.to_string()))
        })
        .collect()
}

#[test]
fn layer_cache_is_kept_per_service_and_pruned_when_the_service_goes() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let base = push_base(&s, tmp.path());
    // Two stages per service; stage one's RUN prints `ran-N` only when it runs (its STEP line
    // shows the unexpanded `$((...))`), so a rebuild shows whether stage one came from cache.
    for (name, n) in [("cache-a", 1), ("cache-b", 2)] {
        let src = tmp.path().join(name);
        write(
            &src,
            "Dockerfile",
            &format!(
                "FROM {base} AS one\n\
                 RUN echo ran-$((1+{n})) && busybox mkdir -p /out && echo {name} > /out/who\n\
                 FROM {base}\n\
                 COPY --from=one /out/who /www/who\n"
            ),
        );
        let out = s.skiff(&["deploy", name, "--source", src.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "deploy --source {name}: {stderr}");
        assert!(stderr.contains(&format!("ran-{}", 1 + n)), "{stderr}");
    }
    let images = buildah_images(&s);
    let tagged = |svc: &str| -> Vec<String> {
        let prefix = format!("localhost/skiff-cache/default/service-{svc}:");
        images
            .iter()
            .filter(|(_, n)| n.starts_with(&prefix))
            .map(|(id, _)| id.clone())
            .collect()
    };
    // One cache tag per stage, for each service.
    let a_ids = tagged("cache-a");
    assert_eq!(a_ids.len(), 2, "{images:?}");
    assert_eq!(tagged("cache-b").len(), 2, "{images:?}");

    // A rebuild of the newest service still hits the cache of both stages after the pruning
    // the builds did.
    let src_b = tmp.path().join("cache-b");
    let out = s.skiff(&["deploy", "cache-b", "--source", src_b.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rebuild: {stderr}");
    assert!(stderr.contains("Using cache"), "{stderr}");
    assert!(!stderr.contains("ran-3"), "stage one ran again: {stderr}");

    // The service goes; `skiff images prune` drops its cache and says what it freed.
    s.ok(&["services", "delete", "cache-a"]);
    let out = s.skiff(&["images", "prune"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "images prune: {stderr}");
    let freed = stderr
        .lines()
        .find(|l| l.contains("build cache images"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(!freed.contains("Deleted 0 build cache images"), "{stderr}");
    let after = buildah_images(&s);
    for id in &a_ids {
        assert!(
            !after.iter().any(|(i, _)| i == id),
            "{id} of the deleted service is still in buildah's storage: {after:?}"
        );
    }
    let b_prefix = "localhost/skiff-cache/default/service-cache-b:";
    assert_eq!(
        after
            .iter()
            .filter(|(_, n)| n.starts_with(b_prefix))
            .count(),
        2,
        "{after:?}"
    );
    assert!(
        !after.iter().any(|(_, n)| n.contains("service-cache-a")),
        "{after:?}"
    );
}

/// Writes a two-stage Dockerfile for `name` whose first stage's RUN prints `ran-{n+1}` only
/// when it runs and leaves `mib` MiB of random bytes in that stage's cached layer.
fn big_stage_source(tmp: &Path, base: &str, name: &str, n: u32, mib: u32) -> std::path::PathBuf {
    let src = tmp.join(name);
    write(
        &src,
        "Dockerfile",
        &format!(
            "FROM {base} AS one\n\
             RUN echo ran-$((1+{n})) && busybox mkdir -p /out && echo {name} > /out/who && \
                 busybox dd if=/dev/urandom of=/out/blob bs=1048576 count={mib} 2>/dev/null\n\
             FROM {base}\n\
             COPY --from=one /out/who /www/{name}\n"
        ),
    );
    src
}

#[test]
fn build_cache_over_its_limit_drops_the_least_recently_built_owner() {
    // Each service's first stage caches 32 MiB; the limit holds one such cache (and the base
    // image), not two.
    let s = TestServer::start(Path::new(BIN), &["--build-cache-max", "48Mi"]);
    let tmp = tempfile::tempdir().unwrap();
    let base = push_base(&s, tmp.path());
    let deploy = |name: &str, src: &Path| -> String {
        let out = s.skiff(&["deploy", name, "--source", src.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "deploy --source {name}: {stderr}\nserver log: {}",
            s.log()
        );
        stderr
    };
    let src_a = big_stage_source(tmp.path(), &base, "cache-a", 1, 32);
    let src_b = big_stage_source(tmp.path(), &base, "cache-b", 2, 32);
    let first = deploy("cache-a", &src_a);
    assert!(first.contains("ran-2"), "{first}");
    assert!(!first.contains("Dropped the layer cache"), "{first}");
    let tags = |svc: &str| -> usize {
        let prefix = format!("localhost/skiff-cache/default/service-{svc}:");
        buildah_images(&s)
            .iter()
            .filter(|(_, n)| n.starts_with(&prefix))
            .count()
    };
    assert_eq!(tags("cache-a"), 2, "{:?}", buildah_images(&s));

    // The second service's build takes the storage over the limit: the first's cache goes
    // (the build's log and the server's say so), the second's stays.
    let second = deploy("cache-b", &src_b);
    assert!(second.contains("ran-3"), "{second}");
    assert!(
        second.contains("Dropped the layer cache of default/service-cache-a"),
        "{second}"
    );
    assert!(
        s.log().contains("dropped a build layer cache"),
        "{}",
        s.log()
    );
    assert_eq!(tags("cache-a"), 0, "{:?}", buildah_images(&s));
    assert_eq!(tags("cache-b"), 2, "{:?}", buildah_images(&s));

    // The second's rebuild comes from its cache and drops nothing; the first's runs its steps
    // again.
    let again_b = deploy("cache-b", &src_b);
    assert!(again_b.contains("Using cache"), "{again_b}");
    assert!(!again_b.contains("ran-3"), "stage one ran again: {again_b}");
    assert!(!again_b.contains("Dropped the layer cache"), "{again_b}");
    let again_a = deploy("cache-a", &src_a);
    assert!(!again_a.contains("Using cache"), "{again_a}");
    assert!(again_a.contains("ran-2"), "{again_a}");

    // A cache over the limit on its own stays after its build, which made it, and goes at the
    // next `images prune`, which says so.
    let src_c = big_stage_source(tmp.path(), &base, "cache-c", 3, 64);
    deploy("cache-c", &src_c);
    assert_eq!(tags("cache-c"), 2, "{:?}", buildah_images(&s));
    let out = s.skiff(&["images", "prune"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "images prune: {stderr}");
    assert!(
        stderr.contains("Dropped the layer cache of default/service-cache-c"),
        "{stderr}"
    );
    assert_eq!(tags("cache-c"), 0, "{:?}", buildah_images(&s));
}

#[test]
fn builds_submit_tag_cache_goes_when_its_image_is_deleted() {
    let mut s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let base = push_base(&s, tmp.path());
    let submit = |s: &TestServer, src: &Path, tag: &str| -> String {
        let out = s.skiff(&["builds", "submit", src.to_str().unwrap(), "--tag", tag]);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            out.status.success(),
            "builds submit --tag {tag}: {stderr}\nserver log: {}",
            s.log()
        );
        stderr
    };
    let keep = big_stage_source(tmp.path(), &base, "keep", 1, 1);
    let gone = big_stage_source(tmp.path(), &base, "gone", 2, 1);
    submit(&s, &keep, "keep:v1");
    submit(&s, &gone, "gone:v1");
    let owners = |s: &TestServer| -> std::collections::BTreeSet<String> {
        buildah_images(s)
            .into_iter()
            .filter_map(|(_, n)| {
                let rest = n.strip_prefix("localhost/skiff-cache/default/image-")?;
                Some(rest.split(':').next()?.to_string())
            })
            .collect()
    };
    assert_eq!(owners(&s).len(), 2, "{:?}", buildah_images(&s));

    // While its image is in Skiff's store, a prune keeps a `--tag` build's cache.
    s.ok(&["images", "prune"]);
    assert_eq!(owners(&s).len(), 2, "{:?}", buildah_images(&s));

    // Deleting the image lets the next prune drop its cache, and only its.
    s.ok(&["images", "delete", "gone:v1"]);
    // Also after a restart, before any build has run.
    s.stop();
    s.restart();
    let out = s.skiff(&["images", "prune"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "images prune: {stderr}");
    assert!(!stderr.contains("Deleted 0 build cache images"), "{stderr}");
    assert_eq!(owners(&s).len(), 1, "{:?}", buildah_images(&s));
    let again_keep = submit(&s, &keep, "keep:v1");
    assert!(again_keep.contains("Using cache"), "{again_keep}");
    assert!(!again_keep.contains("ran-2"), "{again_keep}");
    let again_gone = submit(&s, &gone, "gone:v1");
    assert!(!again_gone.contains("Using cache"), "{again_gone}");
    assert!(again_gone.contains("ran-3"), "{again_gone}");
}

#[test]
fn build_cache_max_zero_keeps_no_cache() {
    let mut s = TestServer::start(Path::new(BIN), &["--build-cache-max", "0"]);
    let tmp = tempfile::tempdir().unwrap();
    let base = push_base(&s, tmp.path());
    let src = big_stage_source(tmp.path(), &base, "nocache", 1, 1);
    for _ in 0..2 {
        let out = s.skiff(&["deploy", "nocache", "--source", src.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "deploy --source: {stderr}");
        assert!(stderr.contains("ran-2"), "{stderr}");
        assert!(!stderr.contains("Using cache"), "{stderr}");
        assert!(
            stderr.contains("Dropped the layer cache of default/service-nocache"),
            "{stderr}"
        );
        let images = buildah_images(&s);
        assert!(
            !images
                .iter()
                .any(|(_, n)| n.starts_with("localhost/skiff-cache/")),
            "{images:?}"
        );
    }
    s.stop();

    // A size that is not one is refused, naming the flag.
    let out = std::process::Command::new(BIN)
        .args(["server", "--build-cache-max", "lots"])
        .env("SKIFF_DATA_DIR", tmp.path().join("unused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--build-cache-max"), "{err}");
    assert!(!tmp.path().join("unused").exists());
}
