//! End-to-end tests of the service spec beyond image, env and limits, on real containers.
//! Probes as Cloud Run has them: a probe that fails fails the revision in the probe's own time
//! with its result in the reason, a failing liveness probe restarts the instance, probes
//! round-trip through `describe --format export` and `services replace`, and bad probes are
//! refused naming the field. Fields Skiff does not implement are refused by name, never
//! dropped.

use skiff_testkit::TestServer;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// A Knative Service running the test image `web` (busybox httpd on $PORT serving /www),
/// with `container` (YAML lines, indented for the container) added to its one container.
fn service_yaml(name: &str, container: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  annotations:
    run.googleapis.com/ingress: all
spec:
  template:
    spec:
      containers:
      - image: web
{container}"
    )
}

fn replace(s: &TestServer, dir: &Path, name: &str, yaml: &str) -> std::process::Output {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    s.skiff(&["services", "replace", file.to_str().unwrap()])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The Ready condition of the service's latest created revision.
fn ready_condition(s: &TestServer, service: &str) -> serde_json::Value {
    let svc: serde_json::Value =
        serde_json::from_str(&s.ok(&["services", "describe", service, "--format", "json"]))
            .unwrap();
    let rev = svc["status"]["latestCreatedRevisionName"].as_str().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&s.ok(&["revisions", "describe", rev, "--format", "json"])).unwrap();
    v["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap()
}

#[test]
fn a_failing_startup_probe_fails_the_revision_with_its_result() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    // The app listens on 9999, not on $PORT (8080): the TCP probe is refused three times,
    // a second apart, and the deploy fails then, not after the default probe's 240 s.
    let wrong_port = service_yaml(
        "wrongport",
        "        command: [/bin/sh]
        args: [-c, 'echo listening on 9999; exec httpd -f -p 9999 -h /www']
        startupProbe:
          tcpSocket: {}
          periodSeconds: 1
          failureThreshold: 3
",
    );
    let out = replace(&s, tmp.path(), "wrongport", &wrong_port);
    assert!(!out.status.success(), "{}", s.log());
    let err = stderr(&out);
    let last = err.trim().lines().last().unwrap_or_default();
    for part in [
        "error: ",
        "the startup probe (TCP connection to port 8080) failed 3 times in a row, last: connection refused",
        "listening on 9999",
    ] {
        assert!(last.contains(part), "{part:?} missing from {err}");
    }
    let cond = ready_condition(&s, "wrongport");
    assert_eq!(cond["status"], "False", "{cond}");
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .contains("startup probe (TCP connection to port 8080) failed 3 times"),
        "{cond}"
    );

    // An HTTP probe on a path the app answers 404: the status is the reason.
    let not_found = service_yaml(
        "notfound",
        "        startupProbe:
          httpGet:
            path: /missing
          periodSeconds: 1
          failureThreshold: 2
",
    );
    let out = replace(&s, tmp.path(), "notfound", &not_found);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("the startup probe (HTTP GET /missing on port 8080) failed 2 times in a row, last: answered 404 Not Found"),
        "{err}"
    );
    let logs = s.ok(&["logs", "read", "--service", "notfound"]);
    assert!(logs.contains("answered 404 Not Found"), "{logs}");
}

#[test]
fn probes_that_pass_serve_and_round_trip_through_export_and_replace() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    let yaml = service_yaml(
        "probed",
        "        startupProbe:
          httpGet:
            path: /index.html
            httpHeaders:
            - name: X-Probe
              value: startup
          initialDelaySeconds: 0
          timeoutSeconds: 2
          periodSeconds: 2
          failureThreshold: 5
        livenessProbe:
          httpGet:
            path: /index.html
          periodSeconds: 30
",
    );
    let out = replace(&s, tmp.path(), "probed", &yaml);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.log());
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let token = Some(token.as_str());
    let (code, body) = s.get("probed.localhost", "/", token);
    assert_eq!((code, body.as_str()), (200, "hello from skiff\n"));

    let text = s.ok(&["services", "describe", "probed"]);
    for line in [
        "HTTP GET /index.html on port 8080 every 2s (timeout 2s, 5 failures, first after 0s)",
        "HTTP GET /index.html on port 8080 every 30s (timeout 1s, 3 failures, first after 0s)",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    let first = s.ok(&["services", "describe", "probed", "--format", "export"]);
    for line in [
        "startupProbe:",
        "path: /index.html",
        "name: X-Probe",
        "value: startup",
        "timeoutSeconds: 2",
        "periodSeconds: 2",
        "failureThreshold: 5",
        "livenessProbe:",
        "periodSeconds: 30",
    ] {
        assert!(
            first.contains(line),
            "{line:?} missing from the export:\n{first}"
        );
    }
    let file = tmp.path().join("export.yaml");
    std::fs::write(&file, &first).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
    let second = s.ok(&["services", "describe", "probed", "--format", "export"]);
    assert_eq!(first, second);
    let revs = s.ok(&["revisions", "list", "--service", "probed"]);
    assert_eq!(
        revs.lines().filter(|l| l.contains("probed-0000")).count(),
        1,
        "replacing with the export made a new revision:\n{revs}"
    );
}

#[test]
fn a_failing_liveness_probe_restarts_the_instance() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    // /alive exists in each new container; a request removes it, so the probe then gets 404.
    let yaml = service_yaml(
        "lively",
        "        command: [/bin/sh]
        args: [-c, 'echo ok > /www/alive; exec httpd -f -p $PORT -h /www']
        livenessProbe:
          httpGet:
            path: /alive
          periodSeconds: 1
          failureThreshold: 2
",
    );
    let out = replace(&s, tmp.path(), "lively", &yaml);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.log());
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let token = Some(token.as_str());
    let (code, body) = s.get("lively.localhost", "/alive", token);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let first = s.instances("lively")[0]["id"].as_str().unwrap().to_string();
    let (code, _) = s.get("lively.localhost", "/cgi-bin/sh?rm%20/www/alive", token);
    assert_eq!(code, 200);
    s.wait_for("the liveness probe to restart the instance", 120, || {
        s.ok(&["logs", "read", "--service", "lively"])
            .contains(&format!("instance {first} failed its liveness probe (HTTP GET /alive on port 8080) 2 times in a row, last: answered 404 Not Found; restarting it"))
    });
    s.wait_for("the instance to be gone", 60, || {
        s.instances("lively")
            .iter()
            .all(|i| i["id"] != first.as_str())
    });
    // The next request gets a fresh instance, with /alive again.
    let (code, body) = s.get("lively.localhost", "/alive", token);
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let now = s.instances("lively");
    assert!(now.iter().all(|i| i["id"] != first.as_str()), "{now:?}");
}

#[test]
fn bad_probes_are_refused_naming_the_field_and_change_nothing() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    let cases = [
        (
            "          tcpSocket: {}\n          periodSeconds: 300\n",
            "spec.template.spec.containers[0].startupProbe.periodSeconds: 300 is out of range: use 1 to 240",
        ),
        (
            "          httpGet: {}\n          periodSeconds: 100\n          failureThreshold: 3\n",
            "spec.template.spec.containers[0].startupProbe.failureThreshold: 3 × periodSeconds 100 is above 240 seconds",
        ),
        (
            "          httpGet: {}\n          timeoutSeconds: 5\n          periodSeconds: 2\n",
            "spec.template.spec.containers[0].startupProbe.timeoutSeconds: 5 is above periodSeconds 2",
        ),
        (
            "          periodSeconds: 2\n",
            "spec.template.spec.containers[0].startupProbe: give exactly one of httpGet, tcpSocket or grpc",
        ),
    ];
    for (probe, want) in cases {
        let yaml = service_yaml("bad", &format!("        startupProbe:\n{probe}"));
        let out = replace(&s, tmp.path(), "bad", &yaml);
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.trim().starts_with("error: ") && err.contains(want),
            "{want}\n{err}"
        );
    }
    let yaml = service_yaml("bad", "        livenessProbe:\n          tcpSocket: {}\n");
    let err = stderr(&replace(&s, tmp.path(), "bad", &yaml));
    assert!(
        err.contains("spec.template.spec.containers[0].livenessProbe.tcpSocket: Cloud Run's liveness probes are httpGet or grpc"),
        "{err}"
    );
    // The server refuses them as well, whichever client sends them.
    let body = serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{
            "image": "web", "startupProbe": {"tcpSocket": {}, "periodSeconds": 0}
        }]}}},
    });
    let (code, text) = s.api(
        "POST",
        "/apis/serving.knative.dev/v1/namespaces/default/services",
        Some(&body.to_string()),
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains(
            "spec.template.spec.containers[0].startupProbe.periodSeconds: 0 is out of range"
        ),
        "{text}"
    );
    assert!(!s.ok(&["services", "list"]).contains("bad"));
}

#[test]
fn fields_skiff_does_not_implement_are_refused_by_name_not_dropped() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    // A Cloud Storage volume and an env var from a config map: not implemented, so refused by
    // name.
    let yaml = format!(
        "{}        env:
        - name: PASSWORD
          valueFrom:
            configMapKeyRef:
              name: db
              key: password
        volumeMounts:
        - name: creds
          mountPath: /creds
      volumes:
      - name: creds
        csi:
          driver: gcsfuse.run.googleapis.com
          volumeAttributes:
            bucketName: my-bucket
",
        service_yaml("vols", "")
    );
    let out = replace(&s, tmp.path(), "vols", &yaml);
    assert!(!out.status.success(), "{}", s.log());
    let err = stderr(&out);
    assert!(
        err.trim().starts_with("error: ")
            && err.contains("spec.template.spec.containers[0].env[0].valueFrom.configMapKeyRef, spec.template.spec.volumes[0].csi: Skiff does not implement these fields: remove them"),
        "{err}"
    );
    // The same object sent straight to the API (as gcloud or a client library would).
    let body = serde_json::json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "vols", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{
            "image": "web", "livenessProbe": {"exec": {"command": ["true"]}}
        }]}}},
    });
    let (code, text) = s.api(
        "POST",
        "/apis/serving.knative.dev/v1/namespaces/default/services",
        Some(&body.to_string()),
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("spec.template.spec.containers[0].livenessProbe.exec: Skiff does not implement this field: remove it"),
        "{text}"
    );
    assert!(!s.ok(&["services", "list"]).contains("vols"));
    // A job's too.
    let body = serde_json::json!({
        "apiVersion": "run.googleapis.com/v1", "kind": "Job",
        "metadata": {"name": "vols", "namespace": "default"},
        "spec": {"template": {"spec": {"template": {"spec": {
            "containers": [{"image": "web"}],
            "volumes": [{"name": "v", "csi": {"driver": "gcsfuse.run.googleapis.com"}}],
        }}}}},
    });
    let (code, text) = s.api(
        "POST",
        "/apis/run.googleapis.com/v1/namespaces/default/jobs",
        Some(&body.to_string()),
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("spec.template.spec.template.spec.volumes[0].csi: Skiff does not implement this field: remove it"),
        "{text}"
    );
    assert!(!s.ok(&["jobs", "list"]).contains("vols"));
    // What Skiff exports it takes back: nothing in an export is refused.
    let ok = service_yaml(
        "plain",
        "        ports:\n        - name: http1\n          containerPort: 8080\n",
    );
    let out = replace(&s, tmp.path(), "plain", &ok);
    assert!(out.status.success(), "{}", stderr(&out));
    let export = s.ok(&["services", "describe", "plain", "--format", "export"]);
    let file = tmp.path().join("plain-export.yaml");
    std::fs::write(&file, &export).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
}

#[test]
fn in_memory_volumes_are_mounted_counted_against_memory_and_round_trip() {
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    let yaml = format!(
        "{}        resources:
          limits:
            memory: 256Mi
        volumeMounts:
        - name: cache
          mountPath: /cache
      volumes:
      - name: cache
        emptyDir:
          medium: Memory
          sizeLimit: 64Mi
",
        service_yaml("vols", "")
    );
    let out = replace(&s, tmp.path(), "vols", &yaml);
    assert!(out.status.success(), "{}\n{}", stderr(&out), s.log());
    let token = s.ok(&["auth", "print-identity-token"]).trim().to_string();
    let sh = |cmd: &str| {
        let q = cmd
            .replace(' ', "%20")
            .replace('/', "%2F")
            .replace(';', "%3B")
            .replace('>', "%3E")
            .replace('=', "%3D");
        let (code, body) = s.get("vols.localhost", &format!("/cgi-bin/sh?{q}"), Some(&token));
        assert_eq!(code, 200, "{cmd}: {body}");
        body
    };
    let mounts = sh("grep /cache /proc/mounts");
    assert!(
        mounts.contains("tmpfs /cache tmpfs") && mounts.contains("size=65536k"),
        "{mounts}"
    );
    // 40 MB written there is the instance's memory (its memory cgroup's usage).
    let id = s.instances("vols")[0]["id"].as_str().unwrap().to_string();
    let usage = || {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/skiff/{id}/memory.usage_in_bytes"
        ))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    let before = usage();
    sh("dd if=/dev/zero of=/cache/blob bs=1M count=40 2>&1; ls -l /cache/blob");
    let after = usage();
    assert!(
        after >= before + (40 << 20) * 9 / 10,
        "writing 40 MB to /cache took memory from {before} to {after}"
    );
    // The size limit holds: a write past 64 MiB fails.
    let out = sh("dd if=/dev/zero of=/cache/more bs=1M count=40 2>&1; echo exit=$?");
    assert!(
        out.contains("No space left on device") && out.contains("exit=1"),
        "{out}"
    );

    let text = s.ok(&["services", "describe", "vols"]);
    assert!(
        text.contains("cache at /cache: in memory, up to 64 MiB"),
        "{text}"
    );
    // Round trip: the export shows the volume as given, and replacing with it changes nothing.
    let first = s.ok(&["services", "describe", "vols", "--format", "export"]);
    for line in [
        "volumeMounts:",
        "mountPath: /cache",
        "medium: Memory",
        "sizeLimit: 64Mi",
    ] {
        assert!(first.contains(line), "{line:?} missing from\n{first}");
    }
    let file = tmp.path().join("vols-export.yaml");
    std::fs::write(&file, &first).unwrap();
    s.ok(&["services", "replace", file.to_str().unwrap()]);
    assert_eq!(
        first,
        s.ok(&["services", "describe", "vols", "--format", "export"])
    );

    // Mistakes name the field and change nothing.
    let cases = [
        ("medium: Memory\n          sizeLimit: 1Gi", "spec.template.spec.volumes[0].emptyDir.sizeLimit: 1Gi is more than the memory limit (256 MiB)"),
        ("sizeLimit: 8Mi", "spec.template.spec.volumes[0].emptyDir.medium: \"\": Cloud Run's emptyDir volumes are in memory: use medium: Memory"),
    ];
    for (ed, want) in cases {
        let yaml = yaml.replace("medium: Memory\n          sizeLimit: 64Mi", ed);
        let err = stderr(&replace(&s, tmp.path(), "vols", &yaml));
        assert!(err.contains(want), "{want}\n{err}");
    }
    let yaml2 = yaml.replace(
        "- name: cache\n          mountPath",
        "- name: other\n          mountPath",
    );
    let err = stderr(&replace(&s, tmp.path(), "vols", &yaml2));
    assert!(
        err.contains("spec.template.spec.containers[0].volumeMounts[0].name: no volume \"other\" in spec.volumes"),
        "{err}"
    );
    let yaml3 = yaml.replace("mountPath: /cache", "mountPath: /proc/x");
    let err = stderr(&replace(&s, tmp.path(), "vols", &yaml3));
    assert!(err.contains("spec.template.spec.containers[0].volumeMounts[0].mountPath: \"/proc/x\" is under /proc"), "{err}");
    assert_eq!(
        first,
        s.ok(&["services", "describe", "vols", "--format", "export"])
    );
}

fn job_task(s: &TestServer, exec: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&s.ok(&["jobs", "executions", "describe", exec, "--format", "json"]))
            .unwrap();
    v["tasks"][0].clone()
}

fn latest_execution(s: &TestServer, job: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&s.ok(&[
        "jobs",
        "executions",
        "list",
        "--job",
        job,
        "--format",
        "json",
    ]))
    .unwrap();
    let items = v["items"]
        .as_array()
        .or(v.as_array())
        .cloned()
        .unwrap_or_default();
    items
        .iter()
        .filter_map(|e| e["metadata"]["name"].as_str().map(String::from))
        .max_by_key(|n| {
            items
                .iter()
                .find(|e| e["metadata"]["name"] == n.as_str())
                .and_then(|e| {
                    e["metadata"]["creationTimestamp"]
                        .as_str()
                        .map(String::from)
                })
        })
        .expect("an execution")
}

#[test]
fn out_of_memory_is_reported_as_cloud_run_reports_it() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    // A task whose one process asks for more than its 128 MiB.
    s.ok(&[
        "jobs",
        "create",
        "hog",
        "--image",
        "web",
        "--memory",
        "128Mi",
        "--max-retries",
        "0",
        "--command",
        "/bin/dd",
        "--args",
        "if=/dev/zero,of=/dev/null,bs=200M,count=1",
    ]);
    let err = s.fails(&["jobs", "execute", "hog", "--wait"]);
    assert!(err.contains("failed"), "{err}");
    let exec = latest_execution(&s, "hog");
    let t = job_task(&s, &exec);
    let msg = t["status"]["lastAttemptResult"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains(
            "Memory limit of 128 MiB exceeded with 128 MiB used: the container killed by signal 9"
        ),
        "{t}"
    );
    // Log entries reach the store in batches, at most 50 ms apart.
    s.wait_for("the task's end in its log", 10, || {
        s.ok(&["logs", "read", "--job", "hog"])
            .contains("Memory limit of 128 MiB exceeded with")
    });
    let describe = s.ok(&["jobs", "executions", "describe", &exec]);
    assert!(
        describe.contains("Memory limit of 128 MiB exceeded with"),
        "{describe}"
    );

    // A service that runs out of memory as it starts: the revision's reason says so.
    let out = s.skiff(&[
        "deploy",
        "hog",
        "--image",
        "web",
        "--memory",
        "128Mi",
        "--command",
        "/bin/dd",
        "--args",
        "if=/dev/zero,of=/dev/null,bs=200M,count=1",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("Memory limit of 128 MiB exceeded with 128 MiB used: the container killed by signal 9 before listening on port 8080"),
        "{err}"
    );
}

#[test]
fn the_writable_layer_is_in_memory_and_counts_against_the_limit() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    // Tried as a new user would: 300 MB written into the root filesystem of a 128 MiB task.
    s.ok(&[
        "jobs",
        "create",
        "filler",
        "--image",
        "web",
        "--memory",
        "128Mi",
        "--max-retries",
        "0",
        "--command",
        "/bin/sh",
        "--args",
        "-c,dd if=/dev/zero of=/big bs=1M count=300 && echo wrote-it; grep ' / ' /proc/mounts",
    ]);
    let _ = s.skiff(&["jobs", "execute", "filler", "--wait"]);
    let exec = latest_execution(&s, "filler");
    let t = job_task(&s, &exec);
    let msg = t["status"]["lastAttemptResult"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Log entries reach the store in batches, at most 50 ms apart: the task's last lines may
    // come after its end.
    // Either the write fails for want of space or the task is killed for want of memory,
    // and either way it says so.
    let read = || s.ok(&["logs", "read", "--job", "filler"]);
    s.wait_for("the task's failure in its message or its log", 5, || {
        msg.contains("Memory limit of 128 MiB exceeded")
            || read().contains("No space left on device")
    });
    let logs = read();
    assert!(
        !logs.contains("wrote-it"),
        "300 MB fit in a 128 MiB task:\n{logs}"
    );
    // A task that stays within its memory writes to its root filesystem as before.
    s.ok(&[
        "jobs",
        "create",
        "writer",
        "--image",
        "web",
        "--memory",
        "128Mi",
        "--command",
        "/bin/sh",
        "--args",
        "-c,dd if=/dev/zero of=/small bs=1M count=20 && echo wrote-small",
    ]);
    s.ok(&["jobs", "execute", "writer", "--wait"]);
    assert!(s
        .ok(&["logs", "read", "--job", "writer"])
        .contains("wrote-small"));
}

#[test]
fn every_container_runs_under_a_seccomp_filter() {
    let (s, _tmp) = TestServer::with_web_image(Path::new(BIN), &[]);
    s.deploy_web("boxed", &[]);
    let sh = |cmd: &str| {
        let q: String = cmd
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (code, body) = s.get("boxed.localhost", &format!("/cgi-bin/sh?{q}"), None);
        assert_eq!(code, 200, "{cmd}: {body}");
        body
    };
    // The kernel reports the filter: mode 2 is a seccomp filter.
    let status = sh("grep Seccomp: /proc/self/status");
    assert!(status.contains("Seccomp:\t2"), "{status}");
    // New namespaces and mounts are refused, as Docker's default profile refuses them.
    for cmd in ["unshare -U true", "unshare -n true", "unshare -m true"] {
        let out = sh(&format!("{cmd}; echo exit=$?"));
        assert!(
            out.contains("Operation not permitted") && out.contains("exit=1"),
            "{cmd}: {out}"
        );
    }
    // Ordinary work goes on.
    let out = sh("echo hi > /tmp/f && cat /tmp/f && ls / > /dev/null && echo fine");
    assert!(out.contains("hi") && out.contains("fine"), "{out}");
}

#[test]
fn host_directories_mount_read_only_where_the_server_allows() {
    let shared = tempfile::tempdir().unwrap();
    std::fs::create_dir(shared.path().join("data")).unwrap();
    std::fs::write(shared.path().join("data/hello.txt"), "from the host\n").unwrap();
    let allowed = shared.path().to_str().unwrap().to_string();
    let (s, tmp) = TestServer::with_web_image(Path::new(BIN), &["--allow-host-dir", &allowed]);
    let volume = |path: &str| {
        format!(
            "{}        volumeMounts:
        - name: data
          mountPath: /data
      volumes:
      - name: data
        nfs:
          server: localhost
          path: {path}
          readOnly: true
",
            service_yaml("hostdir", "")
        )
    };
    let inside = format!("{allowed}/data");
    let yaml = volume(&inside);
    let out = replace(&s, tmp.path(), "hostdir", &yaml);
    assert!(out.status.success(), "{}", stderr(&out));
    s.ok(&[
        "services",
        "add-iam-policy-binding",
        "hostdir",
        "--member",
        "allUsers",
        "--role",
        "roles/run.invoker",
    ]);
    let read = s.sh(
        "hostdir",
        "cat /data/hello.txt; echo x > /data/new 2>/dev/null; echo rc=$?",
    );
    assert!(read.contains("from the host"), "{read}");
    assert!(!read.contains("rc=0"), "{read}");
    assert!(!shared.path().join("data/new").exists());
    let text = s.ok(&["services", "describe", "hostdir"]);
    let line = format!("data at /data: host directory {inside}, read-only");
    assert!(text.contains(&line), "{line:?} missing from\n{text}");
    // Round trip: the export shows the volume as given.
    let export = s.ok(&["services", "describe", "hostdir", "--format", "export"]);
    for line in [
        "nfs:",
        "server: localhost",
        &format!("path: {inside}"),
        "readOnly: true",
    ] {
        assert!(export.contains(line), "{line:?} missing from\n{export}");
    }
    // Outside the allowed directories (also through a symlink): refused, naming the path.
    let link = shared.path().join("escape");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    for path in ["/etc", link.to_str().unwrap()] {
        let out = replace(&s, tmp.path(), "hostdir", &volume(path));
        assert!(!out.status.success());
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "host directory {path} of volume data is not allowed"
            )) && err.contains("--allow-host-dir"),
            "{err}"
        );
    }
    assert_eq!(
        s.ok(&["services", "describe", "hostdir", "--format", "export"]),
        export
    );
    // Writable host directories are not offered.
    let out = replace(
        &s,
        tmp.path(),
        "hostdir",
        &yaml.replace("readOnly: true", "readOnly: false"),
    );
    assert!(stderr(&out).contains("nfs.readOnly"), "{}", stderr(&out));
}
