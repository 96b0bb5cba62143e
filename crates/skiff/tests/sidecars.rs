//! End-to-end tests of sidecars: several containers per instance, as Cloud Run runs them.
//! The ingress container reaches a sidecar on localhost, the start order of
//! `run.googleapis.com/container-dependencies` is honoured (a sidecar writes into a shared
//! in-memory volume what the app reads when it starts), each container's lines are labelled
//! with its name in the logs, a sidecar that exits takes its instance with it (the others get
//! SIGTERM and a grace period; a new instance serves the next request), a sidecar gets its
//! own secrets and liveness probe and runs the digest its revision pinned, and bad container
//! sets are refused naming what is wrong.

use skiff_testkit::TestServer;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn replace(s: &TestServer, dir: &Path, name: &str, yaml: &str) -> std::process::Output {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    s.skiff(&["services", "replace", file.to_str().unwrap()])
}

/// A service `name` of two containers from the test image `web`: `side`, a sidecar on port
/// 9000, and `app`, the ingress container (second: its place does not matter). `side` writes
/// `/shared/flag` before it listens, then serves until `/shared/stop` appears, and exits with
/// code 3; `app` starts after it (its startup probe passed) and copies the flag into what it
/// serves.
fn pair_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    metadata:
      annotations:
        run.googleapis.com/container-dependencies: '{{"app":["side"]}}'
    spec:
      containers:
      - name: side
        image: web
        args:
        - sleep 1; echo side-ready > /shared/flag; echo sidecar up; httpd -p 9000 -h /www; while
          [ ! -e /shared/stop ]; do sleep 0.2; done; echo sidecar stopping; exit 3
        resources:
          limits:
            cpu: 500m
            memory: 256Mi
        startupProbe:
          tcpSocket:
            port: 9000
          periodSeconds: 1
          failureThreshold: 60
        volumeMounts:
        - name: shared
          mountPath: /shared
      - name: app
        image: web
        args:
        - cp /shared/flag /www/flag && echo app started; httpd -f -p $PORT -h /www & trap 'echo
          app got SIGTERM; kill $!; exit 0' TERM; wait
        ports:
        - containerPort: 8080
        volumeMounts:
        - name: shared
          mountPath: /shared
      volumes:
      - name: shared
        emptyDir:
          medium: Memory
          sizeLimit: 16Mi
"#
    )
}

#[test]
fn a_sidecar_serves_the_app_on_localhost_in_dependency_order_with_its_own_logs() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    let out = replace(&s, tmp.path(), "pair", &pair_yaml("pair"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    s.ok(&[
        "services",
        "add-iam-policy-binding",
        "pair",
        "--member",
        "allUsers",
        "--role",
        "roles/run.invoker",
    ]);
    // The app started after the sidecar had written the flag into the shared volume (the
    // sidecar sleeps a second first: an app started at once would find no flag and exit).
    let (code, body) = s.get("pair.localhost", "/flag", None);
    assert_eq!((code, body.as_str()), (200, "side-ready\n"));
    // The two containers share the network namespace: the app reaches the sidecar on
    // localhost, and the sidecar's own root filesystem is not the app's.
    let via = s.sh("pair", "wget -qO- http://127.0.0.1:9000/index.html");
    assert_eq!(via, "hello from skiff\n");
    let seen = s.sh("pair", "ls /shared; cat /proc/1/cmdline | tr '\\0' ' '");
    assert!(seen.contains("flag"), "{seen}");
    assert!(
        !seen.contains("while"),
        "the app sees the sidecar's processes: {seen}"
    );

    // Each container's lines carry its name.
    let id = s.instances("pair")[0]["id"].as_str().unwrap().to_string();
    s.wait_for("both containers' lines in the log", 60, || {
        let logs = s.ok(&["logs", "read", "--service", "pair"]);
        logs.contains(&format!("{id}[side] stdout sidecar up"))
            && logs.contains(&format!("{id}[app] stdout app started"))
    });

    let text = s.ok(&["services", "describe", "pair"]);
    for part in ["app", "side (web, 500m CPU, 256 MiB)"] {
        assert!(text.contains(part), "{part:?} missing from\n{text}");
    }

    // The whole set round-trips through the export and `services replace` byte for byte.
    let first = s.ok(&["services", "describe", "pair", "--format", "export"]);
    for part in [
        "name: side",
        "name: app",
        "container-dependencies",
        "port: 9000",
    ] {
        assert!(first.contains(part), "{part:?} missing from {first}");
    }
    let file = tmp.path().join("export.yaml");
    std::fs::write(&file, &first).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
    let second = s.ok(&["services", "describe", "pair", "--format", "export"]);
    assert_eq!(first, second);

    // The sidecar exits: the instance goes with it, and the next request gets a new one.
    s.sh("pair", "touch /shared/stop");
    s.wait_for("the sidecar's exit to replace the instance", 120, || {
        s.ok(&["logs", "read", "--service", "pair"])
            .contains(&format!(
                "instance {id} container side exited with code 3: replacing it"
            ))
    });
    s.wait_for("the instance to be gone", 60, || {
        s.instances("pair").iter().all(|i| i["id"] != id.as_str())
    });
    // The app got SIGTERM and its grace period, as on a scale-down, not SIGKILL at once.
    s.wait_for("the app's SIGTERM line", 60, || {
        s.ok(&["logs", "read", "--service", "pair"])
            .contains(&format!("{id}[app] stdout app got SIGTERM"))
    });
    let (code, body) = s.get("pair.localhost", "/flag", None);
    assert_eq!((code, body.as_str()), (200, "side-ready\n"));

    // `skiff deploy` flags change the ingress container, whatever its place in the list.
    s.ok(&["deploy", "pair", "--set-env-vars", "MARK=ingress"]);
    let svc: serde_json::Value =
        serde_json::from_str(&s.ok(&["services", "describe", "pair", "--format", "json"])).unwrap();
    let cs = &svc["spec"]["template"]["spec"]["containers"];
    assert_eq!(cs[1]["env"][0]["value"], "ingress", "{svc}");
    assert!(cs[0]["env"].is_null(), "{svc}");
    assert_eq!(s.sh("pair", "echo $MARK"), "ingress\n");
}

#[test]
fn bad_container_sets_are_refused_naming_what_is_wrong_and_change_nothing() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    let pair = pair_yaml("bad");
    let cases = [
        (
            pair.replace(
                "        startupProbe:\n          tcpSocket:\n            port: 9000\n",
                "        ports:\n        - containerPort: 9000\n        startupProbe:\n          tcpSocket:\n            port: 9000\n",
            ),
            "spec.template.spec.containers: 2 containers have ports (containers[0], containers[1]): only the ingress container has one, sidecars have none",
        ),
        (
            pair.replace(r#"{"app":["side"]}"#, r#"{"app":["side"],"side":["app"]}"#),
            "invalid annotation run.googleapis.com/container-dependencies: the containers depend on each other in a cycle (app -> side -> app)",
        ),
        (
            pair.replace(r#"{"app":["side"]}"#, r#"{"app":["proxy"]}"#),
            "invalid annotation run.googleapis.com/container-dependencies: \"proxy\" is not a container of the revision (its containers: side, app)",
        ),
        (
            pair.replace("      - name: side\n", "      - image: web\n        name: app\n      - name: side\n"),
            "spec.template.spec.containers[2].name: \"app\" is used twice",
        ),
        (
            {
                let more: String = (0..9)
                    .map(|i| format!("      - name: extra{i}\n        image: web\n"))
                    .collect();
                pair.replace("      volumes:\n", &format!("{more}      volumes:\n"))
            },
            "spec.template.spec.containers: 11 containers: Cloud Run takes at most 10 (the ingress container and up to 9 sidecars)",
        ),
    ];
    for (yaml, want) in cases {
        let out = replace(&s, tmp.path(), "bad", &yaml);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{yaml}");
        assert!(err.contains(want), "{want:?} missing from {err}");
        assert!(err.starts_with("error: "), "{err}");
    }
    // A sidecar whose startup probe fails fails the revision, naming the container.
    let wrong = pair
        .replace("port: 9000", "port: 9001")
        .replace("failureThreshold: 60", "failureThreshold: 2");
    let out = replace(&s, tmp.path(), "bad", &wrong);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("container side: the startup probe (TCP connection to port 9001) failed 2 times in a row, last: connection refused"),
        "{err}"
    );
    s.ok(&["services", "delete", "bad"]);
    // None of them made a service.
    let err = s.fails(&["services", "describe", "bad"]);
    assert!(err.contains("not found"), "{err}");
    // The server refuses them too, to any client.
    let (code, body) = s.api(
        "POST",
        "/apis/serving.knative.dev/v1/namespaces/default/services",
        Some(
            r#"{"apiVersion":"serving.knative.dev/v1","kind":"Service","metadata":{"name":"bad"},
               "spec":{"template":{"spec":{"containers":[
                 {"name":"a","image":"web","ports":[{"containerPort":8080}]},
                 {"name":"b","image":"web","ports":[{"containerPort":9000}]}]}}}}"#,
        ),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("2 containers have ports"), "{body}");
}

/// A service whose sidecar `side` (image `side:v1`) takes a secret env var and a secret
/// volume, and has a liveness probe on its own port: it serves them, and `/alive`, from the
/// shared volume; the ingress container `app` (image `web`) starts after it.
fn secret_sidecar_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    metadata:
      annotations:
        run.googleapis.com/container-dependencies: '{{"app":["side"]}}'
    spec:
      containers:
      - name: app
        image: web
        ports:
        - containerPort: 8080
        volumeMounts:
        - name: shared
          mountPath: /shared
      - name: side
        image: side:v1
        args:
        - mkdir -p /shared/www && echo "$TOKEN" > /shared/www/token && cat /certs/tls.pem >
          /shared/www/cert && cp /www/index.html /shared/www/ && echo ok > /shared/www/alive &&
          exec httpd -f -p 9000 -h /shared/www
        env:
        - name: TOKEN
          valueFrom:
            secretKeyRef:
              name: tok
              key: latest
        startupProbe:
          tcpSocket:
            port: 9000
          periodSeconds: 1
          failureThreshold: 60
        livenessProbe:
          httpGet:
            path: /alive
            port: 9000
          periodSeconds: 1
          failureThreshold: 2
        volumeMounts:
        - name: shared
          mountPath: /shared
        - name: certs
          mountPath: /certs
      volumes:
      - name: shared
        emptyDir:
          medium: Memory
          sizeLimit: 16Mi
      - name: certs
        secret:
          secretName: cert
          items:
          - key: latest
            path: tls.pem
"#
    )
}

/// The images each container of `service`'s latest revision is pinned to:
/// `(imageDigest, [(name, imageDigest)])` from the revision's status.
fn pinned(s: &TestServer, service: &str) -> (String, Vec<(String, String)>) {
    let svc: serde_json::Value =
        serde_json::from_str(&s.ok(&["services", "describe", service, "--format", "json"]))
            .unwrap();
    let rev = svc["status"]["latestReadyRevisionName"].as_str().unwrap();
    let (code, body) = s.api(
        "GET",
        &format!("/apis/serving.knative.dev/v1/namespaces/default/revisions/{rev}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let rev: serde_json::Value = serde_json::from_str(&body).unwrap();
    let st = &rev["status"];
    let sidecars = st["containerStatuses"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap().to_string(),
                        c["imageDigest"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (st["imageDigest"].as_str().unwrap().to_string(), sidecars)
}

/// Imports the default test image, its index page saying `greeting`, as `name`.
fn import_saying(s: &TestServer, dir: &Path, name: &str, greeting: &str) {
    let mut spec = skiff_testkit::ImageSpec::default();
    spec.files[0].1 = format!("{greeting}\n");
    let layout = skiff_testkit::busybox_image(dir, "web", &spec);
    s.ok(&["images", "import", layout.to_str().unwrap(), "--name", name]);
}

#[test]
fn a_sidecar_gets_its_secrets_and_liveness_probe_and_keeps_its_pinned_digest() {
    let (mut s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    import_saying(&s, &tmp.path().join("v1"), "side:v1", "first");
    for (name, value) in [("tok", "s3cret"), ("cert", "-----PEM-----")] {
        let f = tmp.path().join(name);
        std::fs::write(&f, value).unwrap();
        s.ok(&[
            "secrets",
            "create",
            name,
            "--data-file",
            f.to_str().unwrap(),
        ]);
    }
    let out = replace(&s, tmp.path(), "sec", &secret_sidecar_yaml("sec"));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    s.ok(&[
        "services",
        "add-iam-policy-binding",
        "sec",
        "--member",
        "allUsers",
        "--role",
        "roles/run.invoker",
    ]);
    // The sidecar got its secret env var and its secret file; the app got neither.
    assert_eq!(
        s.sh("sec", "wget -qO- http://127.0.0.1:9000/token"),
        "s3cret\n"
    );
    assert_eq!(
        s.sh("sec", "wget -qO- http://127.0.0.1:9000/cert"),
        "-----PEM-----"
    );
    assert_eq!(
        s.sh("sec", "echo x$TOKEN; ls /certs 2>&1 | wc -l"),
        "x\n1\n"
    );
    let text = s.ok(&["services", "describe", "sec"]);
    for part in [
        "TOKEN=secret tok:latest (container side)",
        "certs at /certs: secret cert, read-only (tls.pem=cert:latest) (container side)",
        "HTTP GET /alive on port 9000 every 1s",
    ] {
        assert!(text.contains(part), "{part:?} missing from\n{text}");
    }
    // No secret value is in the export, which round-trips byte for byte.
    let first = s.ok(&["services", "describe", "sec", "--format", "export"]);
    assert!(
        !first.contains("s3cret") && first.contains("livenessProbe"),
        "{first}"
    );
    let file = tmp.path().join("export.yaml");
    std::fs::write(&file, &first).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
    assert_eq!(
        s.ok(&["services", "describe", "sec", "--format", "export"]),
        first
    );

    // The revision pinned the sidecar's digest; the tag moves, the server restarts, and the
    // sidecar still runs what was deployed.
    let (ingress, sidecars) = pinned(&s, "sec");
    assert!(ingress.starts_with("web@sha256:"), "{ingress}");
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    assert_eq!(sidecars[0].0, "side");
    assert!(sidecars[0].1.starts_with("side@sha256:"), "{sidecars:?}");
    import_saying(&s, &tmp.path().join("v2"), "side:v1", "second");
    s.stop();
    s.restart();
    s.wait_for("the service after the restart", 120, || {
        s.get("sec.localhost", "/", None).0 == 200
    });
    assert_eq!(
        s.sh("sec", "wget -qO- http://127.0.0.1:9000/index.html"),
        "first\n"
    );
    assert_eq!(pinned(&s, "sec"), (ingress, sidecars));

    // The sidecar fails its liveness probe: the instance is replaced.
    let id = s.instances("sec")[0]["id"].as_str().unwrap().to_string();
    s.sh("sec", "rm /shared/www/alive");
    s.wait_for("the sidecar's liveness failure in the log", 120, || {
        s.ok(&["logs", "read", "--service", "sec"]).contains(&format!(
            "instance {id} container side failed its liveness probe (HTTP GET /alive on port 9000) 2 times in a row, last: "
        ))
    });
    s.wait_for("a new instance to serve", 120, || {
        s.get("sec.localhost", "/", None).0 == 200
            && s.instances("sec").iter().all(|i| i["id"] != id.as_str())
    });
    assert_eq!(
        s.sh("sec", "wget -qO- http://127.0.0.1:9000/token"),
        "s3cret\n"
    );

    // A secret that does not exist is refused at deploy, naming the container's field.
    let bad = secret_sidecar_yaml("sec").replace("name: tok", "name: nope");
    let out = replace(&s, tmp.path(), "sec", &bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted");
    assert!(
        err.contains("error: spec.template.spec: secret nope not found"),
        "{err}"
    );
}

#[test]
fn skiff_deploy_container_groups_make_and_update_sidecars() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    s.ok(&[
        "deploy",
        "grp",
        "--allow-unauthenticated",
        "--container",
        "app",
        "--image",
        "web",
        "--port",
        "8080",
        "--set-env-vars",
        "WHO=app",
        "--depends-on",
        "side",
        "--container",
        "side",
        "--image",
        "web",
        "--args",
        "echo side up; exec httpd -f -p 9000 -h /www",
        "--set-env-vars",
        "WHO=side",
        "--memory",
        "256Mi",
    ]);
    // The app reaches the sidecar on localhost; each container has its own env.
    assert_eq!(
        s.sh("grp", "wget -qO- http://127.0.0.1:9000/index.html"),
        "hello from skiff\n"
    );
    assert_eq!(s.sh("grp", "echo $WHO"), "app\n");
    let containers = |s: &TestServer| -> serde_json::Value {
        let svc: serde_json::Value =
            serde_json::from_str(&s.ok(&["services", "describe", "grp", "--format", "json"]))
                .unwrap();
        svc["spec"]["template"].clone()
    };
    let t = containers(&s);
    let cs = &t["spec"]["containers"];
    assert_eq!(
        (cs[0]["name"].as_str(), cs[1]["name"].as_str()),
        (Some("app"), Some("side")),
        "{t}"
    );
    assert_eq!(cs[1]["env"][0]["value"], "side", "{t}");
    assert_eq!(cs[1]["resources"]["limits"]["memory"], "256Mi", "{t}");
    assert!(cs[1]["ports"].is_null(), "{t}");
    assert_eq!(
        t["metadata"]["annotations"]["run.googleapis.com/container-dependencies"],
        r#"{"app":["side"]}"#
    );

    // An update names one container; the other keeps its settings.
    s.ok(&[
        "deploy",
        "grp",
        "--container",
        "side",
        "--update-env-vars",
        "MORE=1",
    ]);
    let t = containers(&s);
    let cs = &t["spec"]["containers"];
    assert_eq!(cs[0]["env"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(cs[1]["env"][1]["name"], "MORE", "{t}");
    assert_eq!(
        s.sh("grp", "wget -qO- http://127.0.0.1:9000/index.html"),
        "hello from skiff\n"
    );

    // Bad groups are refused before anything is sent, and change nothing.
    let before = s.ok(&["services", "describe", "grp", "--format", "json"]);
    let cases: [(&[&str], &str); 4] = [
        (
            &["--image", "web", "--container", "side", "--cpu", "1"],
            "error: --image is a container flag: with --container, give it after the --container NAME it is for",
        ),
        (
            &["--container", "side", "--port", "9000"],
            "error: containers app and side would both have ports",
        ),
        (
            &["--container", "side", "--cpu", "1", "--no-traffic"],
            "error: --no-traffic after --container side: it is not a container flag: give it before the first --container",
        ),
        (
            &["--container", "a", "--image", "web", "--port", "1", "--container", "b", "--image", "web", "--port", "2"],
            "error: --port is given for containers a and b: only the ingress container has a port",
        ),
    ];
    for (flags, want) in cases {
        let mut args = vec!["deploy", "grp"];
        args.extend_from_slice(flags);
        let err = s.fails(&args);
        assert!(err.starts_with(want), "{flags:?}: {err}");
    }
    assert_eq!(
        s.ok(&["services", "describe", "grp", "--format", "json"]),
        before
    );
}
