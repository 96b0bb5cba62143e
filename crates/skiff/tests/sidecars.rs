//! End-to-end tests of sidecars: several containers per instance, as Cloud Run runs them.
//! The ingress container reaches a sidecar on localhost, the start order of
//! `run.googleapis.com/container-dependencies` is honoured (a sidecar writes into a shared
//! in-memory volume what the app reads when it starts), each container's lines are labelled
//! with its name in the logs, a sidecar that exits takes its instance with it (a new one
//! serves the next request), and bad container sets are refused naming what is wrong.

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
        - cp /shared/flag /www/flag && echo app started && exec httpd -f -p $PORT -h /www
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
