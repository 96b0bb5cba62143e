//! Images from registries, end to end with the real `skiff` binary and Debian's
//! `docker-registry` (the reference registry) on loopback, images pushed with `skopeo`:
//! deploy by name, a tag moved after deploy, restarts that never pull again, a password-
//! protected registry with `skiff registries login`, jobs, a sidecar's image pinned like the
//! ingress container's, and errors that say what to do;
//! pushes into Skiff's own registry with `skopeo`, `podman` and `buildah`, then deploys.

use skiff_testkit::{busybox_image, ImageSpec, TestRegistry, TestServer};
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// The default test image, its index page saying `greeting`.
fn image_saying(dir: &Path, greeting: &str) -> std::path::PathBuf {
    let mut spec = ImageSpec::default();
    spec.files[0].1 = format!("{greeting}\n");
    busybox_image(dir, "web", &spec)
}

fn revision_digest(s: &TestServer, service: &str) -> String {
    let (code, body) = s.api(
        "GET",
        &format!("/apis/serving.knative.dev/v1/namespaces/default/services/{service}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let svc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rev = svc["status"]["latestReadyRevisionName"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, body) = s.api(
        "GET",
        &format!("/apis/serving.knative.dev/v1/namespaces/default/revisions/{rev}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let rev: serde_json::Value = serde_json::from_str(&body).unwrap();
    rev["status"]["imageDigest"].as_str().unwrap().to_string()
}

#[test]
fn deploy_by_name_pins_the_digest_a_moved_tag_and_restarts_do_not_change_it() {
    let mut registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let first = registry.push(&image_saying(&tmp.path().join("a"), "first"), "team/app:v1");
    let mut s = TestServer::start(Path::new(BIN), &[]);

    let out = s.skiff(&[
        "deploy",
        "app",
        "--image",
        &first,
        "--allow-unauthenticated",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    assert!(err.contains(&format!("Pulling {first}...")), "{err}");
    assert!(err.contains("blobs downloaded"), "{err}");
    assert_eq!(s.get("app.localhost", "/", None), (200, "first\n".into()));
    let pinned = revision_digest(&s, "app");
    assert!(
        pinned.starts_with(&format!("{}/team/app@sha256:", registry.host)),
        "{pinned}"
    );

    // The image is listed like an imported one, under the name it was pulled by.
    let list = s.ok(&["images", "list"]);
    assert!(list.contains(&first), "{list}");

    // The tag moves in the registry; the deployed revision stays on its digest, also
    // across a restart with the registry gone (nothing is pulled again).
    let second = registry.push(
        &image_saying(&tmp.path().join("b"), "second"),
        "team/app:v1",
    );
    assert_eq!(second, first);
    registry.stop();
    s.stop();
    s.restart();
    s.wait_for("the service after restart", 60, || {
        s.get("app.localhost", "/", None) == (200, "first\n".into())
    });
    assert_eq!(revision_digest(&s, "app"), pinned);

    // A new deploy by the same name resolves the tag again: with the registry down, it says
    // so and changes nothing.
    let err = s.fails(&["deploy", "app", "--image", &first]);
    assert!(
        err.contains(&format!("cannot reach the registry {}", registry.host)),
        "{err}"
    );
    assert_eq!(revision_digest(&s, "app"), pinned);
}

#[test]
fn a_new_deploy_follows_the_moved_tag_and_pulls_only_new_blobs() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = registry.push(&image_saying(&tmp.path().join("a"), "one"), "app:latest");
    let s = TestServer::start(Path::new(BIN), &[]);
    s.ok(&["deploy", "svc", "--image", &r, "--allow-unauthenticated"]);
    let before = revision_digest(&s, "svc");
    registry.push(&image_saying(&tmp.path().join("b"), "two"), "app:latest");
    let out = s.skiff(&["deploy", "svc", "--image", &r]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("2 of 2 blobs downloaded"), "{err}");
    assert_eq!(s.get("svc.localhost", "/", None), (200, "two\n".into()));
    assert_ne!(revision_digest(&s, "svc"), before);

    // By digest: the first image again, pinned.
    let digest = before.rsplit_once('@').unwrap().1;
    let by_digest = format!("{}/app@{digest}", registry.host);
    let out = s.ok(&["images", "pull", &by_digest]);
    assert_eq!(out.trim(), digest);
    s.ok(&["deploy", "svc", "--image", &by_digest]);
    assert_eq!(s.get("svc.localhost", "/", None), (200, "one\n".into()));

    // The same image as a Docker v2 schema 2 manifest in another repository: a new manifest,
    // but its config and layer are in the store already and are not downloaded again.
    let v2s2 = format!("{}/docker/app:v2s2", registry.host);
    skiff_testkit::run(std::process::Command::new("skopeo").args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{r}"),
        &format!("docker://{v2s2}"),
    ]));
    let out = s.skiff(&["images", "pull", &v2s2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("0 of 2 blobs downloaded"), "{err}");
    s.ok(&["deploy", "v2", "--image", &v2s2, "--allow-unauthenticated"]);
    assert_eq!(s.get("v2.localhost", "/", None), (200, "two\n".into()));

    // Unknown tag and unknown repository: clear errors, nothing deployed.
    let err = s.fails(&[
        "deploy",
        "svc",
        "--image",
        &format!("{}/app:nope", registry.host),
    ]);
    assert!(
        err.contains("the registry has no image") && err.contains("app:nope"),
        "{err}"
    );
    let err = s.fails(&["images", "pull", &format!("{}/nothing/here", registry.host)]);
    assert!(err.contains("the registry has no image"), "{err}");
    assert_eq!(s.get("svc.localhost", "/", None), (200, "one\n".into()));
}

/// The digest `reference` names in its registry now, as skopeo reads it.
fn registry_digest(reference: &str) -> String {
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

/// The image digests the job's executions pinned, oldest first.
fn execution_digests(s: &TestServer) -> Vec<String> {
    let (code, body) = s.api(
        "GET",
        "/apis/run.googleapis.com/v1/namespaces/default/executions",
        None,
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut items: Vec<(String, String)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e["metadata"]["annotations"]["skiff.dev/image-digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    items.sort();
    items.into_iter().map(|(_, d)| d).collect()
}

#[test]
fn each_job_execution_resolves_a_registry_tag_again() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let r = registry.push(&image_saying(&tmp.path().join("a"), "one"), "job:v1");
    let first = registry_digest(&r);
    let s = TestServer::start(Path::new(BIN), &[]);
    let job = |verb: &[&str]| {
        let out = s.skiff(verb);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}\n{}", s.log());
    };
    job(&[
        "jobs",
        "create",
        "j",
        "--image",
        &r,
        "--command",
        "/bin/sh",
        "--args",
        "-c,cat /www/index.html",
    ]);
    job(&["jobs", "execute", "j", "--wait"]);
    assert_eq!(execution_digests(&s), vec![first.clone()]);

    // The tag moves in the registry: the next execution runs what it names now, as on Cloud
    // Run, without a `jobs update`; the first execution keeps its digest.
    registry.push(&image_saying(&tmp.path().join("b"), "two"), "job:v1");
    let second = registry_digest(&r);
    assert_ne!(second, first);
    job(&["jobs", "execute", "j", "--wait"]);
    assert_eq!(execution_digests(&s), vec![first, second]);
}

#[test]
fn password_protected_registry_with_registries_login() {
    let registry = TestRegistry::with_password("alice", "s3cret");
    let tmp = tempfile::tempdir().unwrap();
    let r = registry.push(&image_saying(&tmp.path().join("a"), "private"), "app:v1");
    let s = TestServer::start(Path::new(BIN), &[]);

    let err = s.fails(&["deploy", "svc", "--image", &r]);
    assert!(
        err.contains("refused access")
            && err.contains(&format!("skiff registries login {}", registry.host)),
        "{err}"
    );

    // A wrong password is refused at login and not kept.
    let err = s.fails(&[
        "registries",
        "login",
        &registry.host,
        "-u",
        "alice",
        "-p",
        "wrong",
    ]);
    assert!(
        err.contains(&format!(
            "the registry {} refused the login: the password was refused for that user name; nothing was saved: give the right credentials with `skiff registries login {} -u USER --password-stdin` (or --password)",
            registry.host, registry.host
        )),
        "{err}"
    );
    let list = s.ok(&["registries", "list", "--format", "json"]);
    assert!(!list.contains(&registry.host), "{list}");

    let out = std::process::Command::new(BIN)
        .args([
            "registries",
            "login",
            &registry.host,
            "-u",
            "alice",
            "--password-stdin",
        ])
        .env("SKIFF_API_URL", format!("http://127.0.0.1:{}", s.api))
        .env("SKIFF_DATA_DIR", &s.data_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"s3cret\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = s.ok(&["registries", "list"]);
    assert!(
        list.contains(&registry.host) && list.contains("alice"),
        "{list}"
    );
    assert!(!list.contains("s3cret"), "{list}");
    let (_, raw) = s.api("GET", "/skiff/v1/registries", None);
    assert!(!raw.contains("s3cret"), "{raw}");

    s.ok(&["deploy", "svc", "--image", &r, "--allow-unauthenticated"]);
    assert_eq!(s.get("svc.localhost", "/", None), (200, "private\n".into()));

    // A job from the same registry runs what was pulled.
    let job_image = registry.push(&image_saying(&tmp.path().join("j"), "job"), "job:v1");
    let out = s.skiff(&[
        "jobs",
        "create",
        "j",
        "--image",
        &job_image,
        "--command",
        "/bin/sh",
        "--args",
        "-c,cat /www/index.html",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The CLI pulls first, showing the download.
    assert!(
        err.contains(&format!("Pulling {job_image}...")) && err.contains(": done ("),
        "{err}"
    );
    s.ok(&["jobs", "execute", "j", "--wait"]);

    s.ok(&["registries", "logout", &registry.host]);
    let err = s.fails(&["images", "pull", &r]);
    assert!(err.contains("refused access"), "{err}");
}

#[test]
fn a_tls_registry_on_loopback_is_reached_over_https_with_its_ca_or_as_an_insecure_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = skiff_testkit::TestCa::new();
    let ca_file = ca.write(tmp.path());
    ca.issue_to(tmp.path(), &["127.0.0.1"]);
    let registry =
        TestRegistry::with_tls(&tmp.path().join("cert.pem"), &tmp.path().join("key.pem"));
    let r = registry.push(&image_saying(&tmp.path().join("a"), "over tls"), "app:v1");
    let s = TestServer::start(Path::new(BIN), &[]);

    // With the CA file: HTTPS verified against it.
    let out = s.skiff(&[
        "registries",
        "login",
        &registry.host,
        "--ca-file",
        ca_file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    let list = s.ok(&["registries", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&registry.host))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(row.contains(" no ") && row.contains("ca.pem"), "{list}");
    s.ok(&["deploy", "tls", "--image", &r, "--allow-unauthenticated"]);
    assert_eq!(
        s.get("tls.localhost", "/", None),
        (200, "over tls\n".into())
    );

    // A CA file that did not sign the registry's certificate: refused, naming the registry.
    std::fs::create_dir(tmp.path().join("other")).unwrap();
    let other = skiff_testkit::TestCa::new().write(&tmp.path().join("other"));
    let err = s.fails(&[
        "registries",
        "login",
        &registry.host,
        "--ca-file",
        other.to_str().unwrap(),
    ]);
    assert!(
        err.contains(&format!("cannot reach the registry {}", registry.host)),
        "{err}"
    );

    // Without settings a loopback registry is insecure, as in Docker: HTTPS is tried first
    // and its certificate is not checked.
    s.ok(&["registries", "logout", &registry.host]);
    let out = s.skiff(&["images", "pull", &r]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    s.ok(&["registries", "login", &registry.host]);
    let list = s.ok(&["registries", "list"]);
    assert!(list.contains("yes (loopback)"), "{list}");
}

fn admin_token(s: &TestServer) -> String {
    std::fs::read_to_string(s.data_dir.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// Runs skopeo, returning (success, stderr).
fn skopeo(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn push_into_skiffs_own_registry_then_deploy() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = image_saying(&tmp.path().join("a"), "pushed");
    let host = format!("127.0.0.1:{}", s.api);
    let token = admin_token(&s);
    let creds = format!("anyone:{token}");
    let src = format!("oci:{}", layout.display());
    let dest = format!("docker://{host}/team/app:v1");

    // Without credentials: 401 with a challenge, and nothing stored.
    let http = reqwest::blocking::Client::new();
    let r = http.get(format!("http://{host}/v2/")).send().unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        format!("Bearer realm=\"http://{host}/v2/token\",service=\"skiff\"")
    );
    // The token service: basic auth with the admin token gets a bearer token that works.
    let r = http
        .get(format!("http://{host}/v2/token?service=skiff"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!(
            "http://{host}/v2/token?service=skiff&scope=repository:team/app:push,pull"
        ))
        .basic_auth("anyone", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("http://{host}/v2/token?service=skiff"))
        .basic_auth("anyone", Some(&token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: serde_json::Value = r.json().unwrap();
    let bearer = t["token"].as_str().unwrap().to_string();
    let r = http
        .get(format!("http://{host}/v2/"))
        .bearer_auth(&bearer)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (ok, err) = skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("admin token"),
        "{err}"
    );
    let wrong = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "anyone:wrong",
        &src,
        &dest,
    ]);
    assert!(!wrong.0, "{}", wrong.1);
    assert!(!s.ok(&["images", "list"]).contains("team/app"));

    // skopeo's push: a session upload per blob (POST, PATCH, PUT), then the manifest.
    let (ok, err) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dest,
    ]);
    assert!(ok, "{err}\n{}", s.log());
    let list = s.ok(&["images", "list"]);
    assert!(list.contains("team/app:v1"), "{list}");
    s.ok(&[
        "deploy",
        "app",
        "--image",
        "team/app:v1",
        "--allow-unauthenticated",
    ]);
    assert_eq!(s.get("app.localhost", "/", None), (200, "pushed\n".into()));

    // Read back: tags, the manifest by tag, a copy out with skopeo.
    let (ok, err) = skopeo(&[
        "login",
        "--tls-verify=false",
        "-u",
        "x",
        "-p",
        &token,
        &host,
    ]);
    assert!(ok, "{err}");
    let out = std::process::Command::new("skopeo")
        .args([
            "list-tags",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("docker://{host}/team/app"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    let (ok, err) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dest,
        &format!("oci:{}:out", tmp.path().join("out").display()),
    ]);
    assert!(ok, "{err}");

    // Skiff's own puller against Skiff's registry: basic auth with the token.
    s.ok(&["registries", "login", &host, "-u", "x", "-p", &token]);
    let digest = s.ok(&["images", "pull", &format!("{host}/team/app:v1")]);
    let (_, body) = s.api("GET", "/skiff/v1/images", None);
    assert!(body.contains(digest.trim()), "{body}");

    // Monolithic upload, a cross-repository mount, a chunked upload with a bad range, a
    // wrong digest, a manifest that names a missing blob, and deletes.
    let auth = |rb: reqwest::blocking::RequestBuilder| rb.basic_auth("u", Some(&token));
    let data = b"just some bytes".to_vec();
    let d = format!("sha256:{}", sha256_hex(&data));
    let r = auth(http.post(format!("http://{host}/v2/other/blobs/uploads/?digest={d}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    let r = auth(http.get(format!("http://{host}/v2/other/blobs/{d}")))
        .send()
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.bytes().unwrap().to_vec()),
        (200, data.clone())
    );
    // A resumed download: the rest of the blob from a byte on, or a range past its end.
    let r = auth(http.get(format!("http://{host}/v2/other/blobs/{d}")))
        .header("Range", "bytes=5-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 5-{}/{}", data.len() - 1, data.len()).as_str()
    );
    assert_eq!(r.bytes().unwrap().to_vec(), data[5..].to_vec());
    let r = auth(http.get(format!("http://{host}/v2/other/blobs/{d}")))
        .header("Range", format!("bytes={}-", data.len()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = auth(http.post(format!(
        "http://{host}/v2/third/blobs/uploads/?mount={d}&from=other"
    )))
    .send()
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = auth(http.post(format!("http://{host}/v2/third/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = auth(http.patch(format!("http://{host}{loc}")))
        .header("Content-Range", "0-3")
        .body(b"abcd".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], "0-3");
    let r = auth(http.patch(format!("http://{host}{loc}")))
        .header("Content-Range", "2-5")
        .body(b"cdef".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = auth(http.patch(format!("http://{host}{loc}")))
        .header("Content-Range", "4-5")
        .body(b"ef".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let whole = format!("sha256:{}", sha256_hex(b"abcdef"));
    let r = auth(http.put(format!(
        "http://{host}{loc}?digest=sha256:{}",
        "0".repeat(64)
    )))
    .send()
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("DIGEST_INVALID"));
    let r = auth(http.post(format!("http://{host}/v2/third/blobs/uploads/")))
        .send()
        .unwrap();
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let r = auth(http.put(format!("http://{host}{loc}?digest={whole}")))
        .body(b"abcdef".to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let missing = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", "1".repeat(64)), "size": 2},
        "layers": []
    });
    let r = auth(http.put(format!("http://{host}/v2/third/manifests/x")))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(missing.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("MANIFEST_BLOB_UNKNOWN"));
    // Tags a page at a time: `n`, then `last` from the `Link` header.
    for tag in ["a", "b"] {
        let r = auth(http.put(format!("http://{host}/v2/team/app/manifests/{tag}")))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(
                auth(http.get(format!("http://{host}/v2/team/app/manifests/v1")))
                    .send()
                    .unwrap()
                    .bytes()
                    .unwrap(),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = auth(http.get(format!("http://{host}/v2/team/app/tags/list?n=2")))
        .send()
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/team/app/tags/list?n=2&last=b>; rel=\"next\""
    );
    let page: serde_json::Value = r.json().unwrap();
    assert_eq!(page["tags"], serde_json::json!(["a", "b"]));
    let r = auth(http.get(format!("http://{host}/v2/team/app/tags/list?n=2&last=b")))
        .send()
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let page: serde_json::Value = r.json().unwrap();
    assert_eq!(page["tags"], serde_json::json!(["v1"]));
    let r = auth(http.get(format!("http://{host}/v2/team/app/manifests/nope")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = auth(http.get(format!(
        "http://{host}/v2/team/app/referrers/{}",
        digest.trim()
    )))
    .send()
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = auth(http.delete(format!("http://{host}/v2/team/app/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let list = s.ok(&["images", "list"]);
    assert!(
        !list.lines().any(|l| l.starts_with("team/app:v1 ")),
        "{list}"
    );
    // The deployed revision pinned its digest: it still answers.
    assert_eq!(s.get("app.localhost", "/", None), (200, "pushed\n".into()));
}

/// The name of the service's latest created revision.
fn latest_revision(s: &TestServer, service: &str) -> String {
    let (code, body) = s.api(
        "GET",
        &format!("/apis/serving.knative.dev/v1/namespaces/default/services/{service}"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let svc: serde_json::Value = serde_json::from_str(&body).unwrap();
    svc["status"]["latestCreatedRevisionName"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_new_deploy_of_a_tag_moved_in_skiffs_own_store_makes_a_new_revision() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", s.api);
    let creds = format!("anyone:{}", admin_token(&s));
    let push = |dir: &str, greeting: &str| {
        let layout = image_saying(&tmp.path().join(dir), greeting);
        let (ok, err) = skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &creds,
            &format!("oci:{}", layout.display()),
            &format!("docker://{host}/team/app:v2"),
        ]);
        assert!(ok, "{err}");
    };
    push("a", "first");
    let out = s.skiff(&[
        "deploy",
        "svc2",
        "--image",
        "team/app:v2",
        "--allow-unauthenticated",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    assert!(err.contains("Creating revision"), "{err}");
    assert_eq!(s.get("svc2.localhost", "/", None), (200, "first\n".into()));
    let first_rev = latest_revision(&s, "svc2");
    let first_digest = revision_digest(&s, "svc2");

    // The same deploy again: nothing changed, no revision, and the CLI says so.
    let out = s.skiff(&["deploy", "svc2", "--image", "team/app:v2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("Creating revision"), "{err}");
    assert!(err.contains("No new revision"), "{err}");
    assert_eq!(latest_revision(&s, "svc2"), first_rev);

    // Other content pushed to the same tag: the next deploy resolves the tag again and makes
    // a new revision pinned to the new digest, as a moved registry tag does.
    push("b", "second");
    let out = s.skiff(&["deploy", "svc2", "--image", "team/app:v2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    assert!(err.contains("Creating revision"), "{err}");
    let second_rev = latest_revision(&s, "svc2");
    assert_ne!(second_rev, first_rev);
    let second_digest = revision_digest(&s, "svc2");
    assert_ne!(second_digest, first_digest);
    assert!(
        second_digest.starts_with("team/app@sha256:"),
        "{second_digest}"
    );
    assert_eq!(s.get("svc2.localhost", "/", None), (200, "second\n".into()));

    // An import to the same name moves the tag too; a replace of the service as it is
    // (the API's PUT, as `services replace` sends) makes a new revision for it.
    let third = image_saying(&tmp.path().join("c"), "third");
    s.ok(&[
        "images",
        "import",
        third.to_str().unwrap(),
        "--name",
        "team/app:v2",
    ]);
    let path = "/apis/serving.knative.dev/v1/namespaces/default/services/svc2";
    let (code, body) = s.api("GET", path, None);
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.api("PUT", path, Some(&body));
    assert_eq!(code, 200, "{body}");
    s.wait_for("the third image", 120, || {
        s.get("svc2.localhost", "/", None) == (200, "third\n".into())
    });
    assert_ne!(latest_revision(&s, "svc2"), second_rev);
    assert_ne!(revision_digest(&s, "svc2"), second_digest);
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Starts an upload session in Skiff's registry; returns its file under the data dir.
fn upload_session(s: &TestServer, repo: &str) -> std::path::PathBuf {
    let token = admin_token(s);
    let r = reqwest::blocking::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v2/{repo}/blobs/uploads/",
            s.api
        ))
        .basic_auth("u", Some(&token))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["docker-upload-uuid"]
        .to_str()
        .unwrap()
        .to_string();
    let path = s.data_dir.join("images/uploads/sessions").join(id);
    assert!(path.is_file(), "{}", path.display());
    path
}

fn age_by_two_hours(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
}

fn blob_count(s: &TestServer) -> usize {
    std::fs::read_dir(s.data_dir.join("images/blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn prune_deletes_only_what_nothing_uses() {
    let (s, _web) = TestServer::with_web_image(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let other = image_saying(&tmp.path().join("o"), "other");
    s.ok(&[
        "images",
        "import",
        other.to_str().unwrap(),
        "--name",
        "other:1",
    ]);
    let web_blobs = 3;
    assert_eq!(blob_count(&s), 2 * web_blobs);
    s.ok(&[
        "deploy",
        "svc",
        "--image",
        "other:1",
        "--allow-unauthenticated",
    ]);
    // The reference goes, the revision keeps the image.
    s.ok(&["images", "delete", "other:1"]);
    let err = s.ok(&["images", "prune"]);
    assert_eq!(blob_count(&s), 2 * web_blobs, "{err}");
    assert_eq!(s.get("svc.localhost", "/", None), (200, "other\n".into()));

    // Once the service is gone nothing uses it; an old abandoned upload goes too, an upload
    // in progress stays.
    s.ok(&["services", "delete", "svc"]);
    let fresh = upload_session(&s, "team/x");
    let old = upload_session(&s, "team/y");
    age_by_two_hours(&old);
    let out = s.skiff(&["images", "prune"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("Deleted 3 blobs")
            && err.contains("1 unpacked layers")
            && err.contains("1 abandoned uploads"),
        "{err}"
    );
    assert_eq!(blob_count(&s), web_blobs);
    assert!(fresh.is_file() && !old.exists());
    // What is still referenced works.
    s.deploy_web("web", &[]);
    assert_eq!(
        s.get("web.localhost", "/", None),
        (200, "hello from skiff\n".into())
    );
    let err = s.fails(&["deploy", "again", "--image", "other:1"]);
    assert!(err.contains("not in the image store"), "{err}");
}

#[test]
fn the_server_prunes_periodically() {
    let s = TestServer::start(Path::new(BIN), &["--prune-images-every", "1s"]);
    let old = upload_session(&s, "team/z");
    age_by_two_hours(&old);
    s.wait_for("the periodic prune", 120, || !old.exists());
}

/// `podman` or `buildah` with all its state (image storage, run state, the auth file that
/// `login` writes, `XDG_RUNTIME_DIR`) in a temporary directory, removed on drop, so that
/// tests never touch the host's container storage. The `vfs` driver copies layers into
/// plain directories, so nothing is mounted.
struct ContainerTool {
    tool: &'static str,
    dir: tempfile::TempDir,
}

impl ContainerTool {
    fn new(tool: &'static str) -> ContainerTool {
        let dir = tempfile::Builder::new()
            .prefix(&format!("skiff-{tool}-"))
            .tempdir_in("/tmp")
            .unwrap();
        for d in ["root", "run", "tmp", "xdg", "home"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        // Both refuse to start with a REGISTRY_AUTH_FILE that does not exist yet.
        std::fs::write(dir.path().join("auth.json"), "{}").unwrap();
        ContainerTool { tool, dir }
    }

    /// Runs the tool; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let d = self.dir.path();
        let mut cmd = std::process::Command::new(self.tool);
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "vfs"]);
        if self.tool == "podman" {
            cmd.arg("--tmpdir").arg(d.join("tmp")).args([
                "--events-backend",
                "file",
                "--cgroup-manager",
                "cgroupfs",
            ]);
        }
        let out = cmd
            .args(args)
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            .env("XDG_RUNTIME_DIR", d.join("xdg"))
            .env("HOME", d.join("home"))
            .env("TMPDIR", d.join("tmp"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{} is missing ({e}): apt-get install {0} (.ci/run does)",
                    self.tool
                )
            });
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "{} {args:?}: {err}", self.tool);
        out
    }
}

#[test]
fn podman_and_buildah_push_into_skiffs_own_registry_then_deploy() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", s.api);
    let token = admin_token(&s);
    let creds = format!("anyone:{token}");

    // podman: the image into its own storage, then pushed.
    let podman = ContainerTool::new("podman");
    let layout = image_saying(&tmp.path().join("p"), "from podman");
    // `podman pull oci:DIR` names the image after DIR, which a temporary directory's
    // upper-case letters make invalid: load an OCI archive with a name instead.
    let archive =
        skiff_testkit::image::skopeo_oci_archive(&layout, &tmp.path().join("p.tar"), "web");
    let out = podman.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(out.contains("localhost/web:latest"), "{out}");
    let id = "localhost/web:latest";
    let dest = format!("docker://{host}/pod/app:v1");

    // Without credentials: refused with the challenge's answer, nothing stored.
    let (ok, _, err) = podman.run(&["push", "--tls-verify=false", id, &dest]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("admin token"),
        "{err}"
    );
    let (ok, _, err) = podman.run(&[
        "login",
        "--tls-verify=false",
        "-u",
        "anyone",
        "-p",
        "wrong",
        &host,
    ]);
    assert!(!ok, "{err}");
    // What a push starts with, without credentials: 401 and the challenge, for an upload
    // and for a manifest alike.
    let http = reqwest::blocking::Client::new();
    for r in [
        http.post(format!("http://{host}/v2/pod/app/blobs/uploads/")),
        http.put(format!("http://{host}/v2/pod/app/manifests/v1"))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body("{}"),
        http.head(format!(
            "http://{host}/v2/pod/app/blobs/sha256:{}",
            "0".repeat(64)
        )),
    ] {
        let r = r.send().unwrap();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"].to_str().unwrap(),
            format!("Bearer realm=\"http://{host}/v2/token\",service=\"skiff\"")
        );
    }
    assert!(!s.ok(&["images", "list"]).contains("pod/app"));

    // `podman login`, then a push in podman's default format (OCI) and one as Docker v2
    // schema 2 with `--creds`.
    let out = podman.ok(&[
        "login",
        "--tls-verify=false",
        "-u",
        "anyone",
        "-p",
        &token,
        &host,
    ]);
    assert!(out.contains("Login Succeeded"), "{out}");
    podman.ok(&["push", "--tls-verify=false", id, &dest]);
    podman.ok(&["logout", &host]);
    podman.ok(&[
        "push",
        "--tls-verify=false",
        "--creds",
        &creds,
        "--format",
        "v2s2",
        id,
        &format!("{host}/pod/app:v2s2"),
    ]);
    let list = s.ok(&["images", "list"]);
    assert!(
        list.contains("pod/app:v1") && list.contains("pod/app:v2s2"),
        "{list}"
    );
    for (svc, image) in [("pod1", "pod/app:v1"), ("pod2", "pod/app:v2s2")] {
        s.ok(&["deploy", svc, "--image", image, "--allow-unauthenticated"]);
        assert_eq!(
            s.get(&format!("{svc}.localhost"), "/", None),
            (200, "from podman\n".into())
        );
    }
    // podman reads it back.
    podman.ok(&[
        "pull",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("{host}/pod/app:v2s2"),
    ]);

    // buildah: a working container from the image, a file of its own on top (a layer buildah
    // writes), committed and pushed.
    let buildah = ContainerTool::new("buildah");
    let layout = image_saying(&tmp.path().join("b"), "base");
    let archive =
        skiff_testkit::image::skopeo_oci_archive(&layout, &tmp.path().join("b.tar"), "base");
    let ctr = buildah.ok(&["from", &format!("oci-archive:{}", archive.display())]);
    let ctr = ctr.trim().lines().last().unwrap().to_string();
    let page = tmp.path().join("index.html");
    std::fs::write(&page, "from buildah\n").unwrap();
    buildah.ok(&["copy", &ctr, page.to_str().unwrap(), "/www/index.html"]);
    buildah.ok(&["commit", &ctr, "built:one"]);
    let (ok, _, err) = buildah.run(&[
        "push",
        "--tls-verify=false",
        "built:one",
        &format!("docker://{host}/bh/app:v1"),
    ]);
    assert!(!ok && err.contains("unauthorized"), "{err}");
    let out = buildah.ok(&[
        "login",
        "--tls-verify=false",
        "-u",
        "x",
        "-p",
        &token,
        &host,
    ]);
    assert!(out.contains("Login Succeeded"), "{out}");
    buildah.ok(&[
        "push",
        "--tls-verify=false",
        "built:one",
        &format!("docker://{host}/bh/app:v1"),
    ]);
    buildah.ok(&["logout", &host]);
    buildah.ok(&[
        "push",
        "--tls-verify=false",
        "--creds",
        &creds,
        "--format",
        "docker",
        "built:one",
        &format!("{host}/bh/app:docker"),
    ]);
    for (svc, image) in [("bh1", "bh/app:v1"), ("bh2", "bh/app:docker")] {
        s.ok(&["deploy", svc, "--image", image, "--allow-unauthenticated"]);
        assert_eq!(
            s.get(&format!("{svc}.localhost"), "/", None),
            (200, "from buildah\n".into())
        );
    }

    // `images list` shows pushed, pulled and imported images alike, with where each came from.
    s.ok(&[
        "images",
        "import",
        archive.to_str().unwrap(),
        "--name",
        "local/app:v1",
    ]);
    s.ok(&["registries", "login", &host, "-u", "x", "-p", &token]);
    let pulled = format!("{host}/bh/app:v1");
    s.ok(&["images", "pull", &pulled]);
    let list: serde_json::Value =
        serde_json::from_str(&s.ok(&["images", "list", "--format", "json"])).unwrap();
    let source = |r: &str| {
        list["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["reference"] == r)
            .map(|i| i["source"].clone())
            .unwrap_or_else(|| panic!("{r} not in {list}"))
    };
    assert_eq!(source("pod/app:v1"), "pushed");
    assert_eq!(source("bh/app:docker"), "pushed");
    assert_eq!(source("local/app:v1"), "imported");
    assert_eq!(source(&pulled), "pulled");
    let table = s.ok(&["images", "list"]);
    assert!(
        table.lines().next().unwrap().ends_with("SOURCE")
            && table
                .lines()
                .any(|l| l.starts_with(&format!("{pulled} ")) && l.ends_with(" pulled")),
        "{table}"
    );
}

#[test]
fn a_download_cut_off_part_way_resumes_with_a_range_request_and_deploy_shows_progress() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    registry.push(&image_saying(&tmp.path().join("a"), "resumed"), "app:v1");
    let size_of_layer = {
        let out = skiff_testkit::run(std::process::Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{}/app:v1", registry.host),
        ]));
        let m: serde_json::Value = serde_json::from_str(&out).unwrap();
        m["layers"][0]["size"].as_u64().unwrap()
    };
    // Cut the first long blob download (the layer: the config is shorter) half-way.
    let cut_at = (size_of_layer / 2) as usize;
    let proxy = skiff_testkit::CuttingProxy::start(&registry.host, cut_at);
    let image = format!("{}/app:v1", proxy.host);
    let s = TestServer::start(Path::new(BIN), &[]);

    // deploy pulls first, showing each blob as it comes.
    let out = s.skiff(&[
        "deploy",
        "app",
        "--image",
        &image,
        "--allow-unauthenticated",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}\n{}", s.log());
    assert_eq!(proxy.cuts(), 1, "{:?}", proxy.requests());
    assert!(err.contains(&format!("Pulling {image}...")), "{err}");
    assert!(err.contains("  2 blobs to download\n"), "{err}");
    assert!(!err.contains("the rest"), "nothing was in the store: {err}");
    assert!(
        err.contains(": downloading ") && err.contains(": done ("),
        "{err}"
    );
    assert!(
        err.contains("the connection was cut; resuming at byte"),
        "{err}"
    );
    assert!(err.contains("2 of 2 blobs downloaded"), "{err}");
    assert_eq!(s.get("app.localhost", "/", None), (200, "resumed\n".into()));

    // The layer was fetched twice: whole, then from where the cut left it with a Range
    // request; no other blob was asked for with a range.
    let ranged: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.range.is_some())
        .collect();
    assert_eq!(ranged.len(), 1, "{:?}", proxy.requests());
    let range = ranged[0].range.clone().unwrap();
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{range}"));
    assert!(
        from > 0 && from < size_of_layer,
        "{range} of {size_of_layer}"
    );
    assert!(err.contains(&format!("resuming at byte {from} ")), "{err}");

    // The NDJSON stream of the API: progress events, then the result.
    let (code, body) = {
        let http = reqwest::blocking::Client::new();
        let r = http
            .post(format!("http://127.0.0.1:{}/skiff/v1/images:pull", s.api))
            .bearer_auth(admin_token(&s))
            .header("Accept", "application/x-ndjson")
            .json(&serde_json::json!({"reference": format!("{}/app:v1", registry.host)}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(code, 200, "{body}");
    let events: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "resolved", "{body}");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "pulled", "{body}");
    assert_eq!(last["blobs"], 0, "already in the store: {body}");
}

#[test]
fn a_resumed_download_with_wrong_bytes_fails_its_digest_check_and_stores_nothing() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let layout = image_saying(&tmp.path().join("a"), "checked");
    let size = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    registry.push(&layout, "app:v1");
    let proxy =
        skiff_testkit::CuttingProxy::start_corrupting_resumes(&registry.host, (size / 2) as usize);
    let image = format!("{}/app:v1", proxy.host);
    let s = TestServer::start(Path::new(BIN), &[]);

    let err = s.fails(&["images", "pull", &image]);
    assert_eq!(proxy.cuts(), 1, "{:?}", proxy.requests());
    assert!(
        err.contains("does not match its digest") && err.contains(&image),
        "{err}"
    );
    assert!(!s.ok(&["images", "list"]).contains("app:v1"));
    // The proxy cuts only once: a new pull downloads it whole and verifies.
    let out = s.skiff(&["images", "pull", &image]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.ok(&[
        "deploy",
        "app",
        "--image",
        &image,
        "--allow-unauthenticated",
    ]);
    assert_eq!(s.get("app.localhost", "/", None), (200, "checked\n".into()));
}

/// An OCI layout at `dir` whose `multi` tag is an image index of two images: one for this
/// machine's platform saying "native", one for another architecture saying "foreign".
/// Returns the layout and the index's bytes.
fn multi_arch_layout(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let foreign = if host == "amd64" { "arm64" } else { "amd64" };
    let out = dir.join("multi");
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut entries = Vec::new();
    for (arch, greeting) in [(host, "native"), (foreign, "foreign")] {
        let layout = image_saying(&dir.join(arch), greeting);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let read = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&read(&manifest_digest)).unwrap();
        // The image's config says its architecture, as `buildah build --arch` writes it.
        let mut config: serde_json::Value =
            serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        config["architecture"] = arch.into();
        let config = serde_json::to_vec(&config).unwrap();
        std::fs::write(blobs.join(sha256_hex(&config)), &config).unwrap();
        manifest["config"]["digest"] = format!("sha256:{}", sha256_hex(&config)).into();
        manifest["config"]["size"] = config.len().into();
        for l in manifest["layers"].as_array().unwrap() {
            let d = l["digest"].as_str().unwrap();
            std::fs::write(blobs.join(&d[7..]), read(d)).unwrap();
        }
        let manifest = serde_json::to_vec(&manifest).unwrap();
        std::fs::write(blobs.join(sha256_hex(&manifest)), &manifest).unwrap();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", sha256_hex(&manifest)), "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    std::fs::write(blobs.join(sha256_hex(&index)), &index).unwrap();
    std::fs::write(out.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": format!("sha256:{}", sha256_hex(&index)), "size": index.len(),
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }]});
    std::fs::write(out.join("index.json"), top.to_string()).unwrap();
    (out, index)
}

#[test]
fn a_multi_platform_index_pushed_with_skopeo_all_deploys_the_hosts_image_and_keeps_the_rest() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, index) = multi_arch_layout(tmp.path());
    let host = format!("127.0.0.1:{}", s.api);
    let token = admin_token(&s);
    let creds = format!("anyone:{token}");
    let (ok, err) = skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{host}/team/multi:v1"),
    ]);
    assert!(ok, "{err}\n{}", s.log());

    // Served back byte for byte with its media type.
    let http = reqwest::blocking::Client::new();
    let auth = |rb: reqwest::blocking::RequestBuilder| rb.basic_auth("u", Some(&token));
    let r = auth(http.get(format!("http://{host}/v2/team/multi/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.index.v1+json"
    );
    let index_digest = format!("sha256:{}", sha256_hex(&index));
    assert_eq!(r.headers()["docker-content-digest"], index_digest.as_str());
    assert_eq!(r.bytes().unwrap().to_vec(), index);
    let list = s.ok(&["images", "list"]);
    assert!(list.contains("team/multi:v1"), "{list}");

    // Deploy by the index's name runs this machine's image.
    s.ok(&[
        "deploy",
        "multi",
        "--image",
        "team/multi:v1",
        "--allow-unauthenticated",
    ]);
    assert_eq!(
        s.get("multi.localhost", "/", None),
        (200, "native\n".into())
    );
    let parsed: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let native = parsed["manifests"][0]["digest"].as_str().unwrap();
    let foreign = parsed["manifests"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(revision_digest(&s, "multi"), format!("team/multi@{native}"));

    // Prune keeps everything the index reaches, the foreign image included; a copy out with
    // --all gets the whole index back.
    s.ok(&["images", "prune"]);
    let r = auth(http.get(format!("http://{host}/v2/team/multi/manifests/{foreign}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let foreign_manifest: serde_json::Value = r.json().unwrap();
    for d in std::iter::once(&foreign_manifest["config"])
        .chain(foreign_manifest["layers"].as_array().unwrap())
    {
        let d = d["digest"].as_str().unwrap();
        let r = auth(http.head(format!("http://{host}/v2/team/multi/blobs/{d}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{d}");
    }
    let out = tmp.path().join("out");
    let (ok, err) = skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("docker://{host}/team/multi:v1"),
        &format!("oci:{}:back", out.display()),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(out.join("blobs/sha256").join(&index_digest[7..])).unwrap(),
        index
    );

    // Skiff's own puller picks the same image from the index in Skiff's registry.
    s.ok(&["registries", "login", &host, "-u", "x", "-p", &token]);
    let pulled = s.ok(&["images", "pull", &format!("{host}/team/multi:v1")]);
    assert!(pulled.contains(native), "{pulled}");

    // An index whose entries are not here is refused, naming the missing manifest.
    let missing = format!("sha256:{}", "2".repeat(64));
    let bad = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": missing, "size": 10}]});
    let r = auth(http.put(format!("http://{host}/v2/team/multi/manifests/bad")))
        .header("Content-Type", "application/vnd.oci.image.index.v1+json")
        .body(bad.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().unwrap();
    assert!(
        body.contains("MANIFEST_BLOB_UNKNOWN") && body.contains(&missing),
        "{body}"
    );

    // The entries skopeo pushed by digest live as long as the index: with the index's tag
    // and the revision gone, prune removes them, references and blobs alike.
    let list = s.ok(&["images", "list"]);
    assert!(list.contains(&format!("team/multi@{foreign}")), "{list}");
    s.ok(&["services", "delete", "multi"]);
    s.ok(&["images", "delete", "team/multi:v1"]);
    s.ok(&["images", "delete", &format!("{host}/team/multi:v1")]);
    s.ok(&["images", "prune"]);
    let list = s.ok(&["images", "list"]);
    assert!(!list.contains("team/multi"), "{list}");
    for d in [native, foreign.as_str(), index_digest.as_str()] {
        let r = auth(http.get(format!("http://{host}/v2/team/multi/manifests/{d}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "{d}");
        assert!(
            !s.data_dir
                .join("images/blobs/sha256")
                .join(&d[7..])
                .exists(),
            "{d}"
        );
    }
}

/// PUT a manifest; returns (status, headers, body).
fn put_manifest(
    host: &str,
    token: &str,
    path: &str,
    manifest: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::blocking::Client::new()
        .put(format!("http://{host}/v2/{path}"))
        .basic_auth("u", Some(token))
        .header(
            "Content-Type",
            manifest["mediaType"]
                .as_str()
                .unwrap_or("application/vnd.oci.image.manifest.v1+json"),
        )
        .body(manifest.to_string())
        .send()
        .unwrap();
    let (code, headers) = (r.status().as_u16(), r.headers().clone());
    (code, headers, r.text().unwrap())
}

#[test]
fn artifacts_with_a_subject_are_listed_as_referrers_kept_by_prune_and_not_deployable() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let layout = image_saying(&tmp.path().join("a"), "signed");
    let host = format!("127.0.0.1:{}", s.api);
    let token = admin_token(&s);
    let (ok, err) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("u:{token}"),
        &format!("oci:{}", layout.display()),
        &format!("docker://{host}/team/app:v1"),
    ]);
    assert!(ok, "{err}");
    let http = reqwest::blocking::Client::new();
    let auth = |rb: reqwest::blocking::RequestBuilder| rb.basic_auth("u", Some(&token));
    let subject = auth(http.head(format!("http://{host}/v2/team/app/manifests/v1")))
        .send()
        .unwrap();
    let subject_digest = subject.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let subject_size: u64 = subject.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    // Two artifacts naming the image as their subject: an SBOM (its config the empty
    // descriptor, never uploaded: the registry knows `{}`) and a signature.
    let mut pushed = Vec::new();
    for (artifact_type, content) in [
        ("application/vnd.example.sbom.v1", &b"{\"packages\":[]}"[..]),
        (
            "application/vnd.example.signature.v1",
            &b"signature bytes"[..],
        ),
    ] {
        let d = format!("sha256:{}", sha256_hex(content));
        let r = auth(http.post(format!(
            "http://{host}/v2/team/app/blobs/uploads/?digest={d}"
        )))
        .body(content.to_vec())
        .send()
        .unwrap();
        assert_eq!(r.status(), 201);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                       "size": 2},
            "layers": [{"mediaType": artifact_type, "digest": d, "size": content.len()}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": subject_digest, "size": subject_size},
            "annotations": {"org.example.kind": artifact_type},
        });
        let digest = format!("sha256:{}", sha256_hex(manifest.to_string().as_bytes()));
        let (code, headers, body) = put_manifest(
            &host,
            &token,
            &format!("team/app/manifests/{digest}"),
            &manifest,
        );
        assert_eq!(code, 201, "{body}");
        assert_eq!(headers["oci-subject"], subject_digest.as_str());
        assert_eq!(headers["docker-content-digest"], digest.as_str());
        pushed.push((artifact_type, digest, d));
    }

    let referrers = |query: &str| {
        let r = auth(http.get(format!(
            "http://{host}/v2/team/app/referrers/{subject_digest}{query}"
        )))
        .send()
        .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "application/vnd.oci.image.index.v1+json"
        );
        let filtered = r
            .headers()
            .get("oci-filters-applied")
            .map(|v| v.to_str().unwrap().to_string());
        let index: serde_json::Value = r.json().unwrap();
        (filtered, index)
    };
    let (filtered, all) = referrers("");
    assert_eq!(filtered, None);
    let mut listed: Vec<(String, String)> = all["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["annotations"]["org.example.kind"], d["artifactType"]);
            (
                d["artifactType"].as_str().unwrap().to_string(),
                d["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.sort();
    let mut want: Vec<(String, String)> = pushed
        .iter()
        .map(|(t, d, _)| (t.to_string(), d.clone()))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    let (filtered, sboms) = referrers("?artifactType=application/vnd.example.sbom.v1");
    assert_eq!(filtered.as_deref(), Some("artifactType"));
    assert_eq!(sboms["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(sboms["manifests"][0]["digest"], pushed[0].1.as_str());
    let (_, none) = referrers("?artifactType=application/vnd.example.other");
    assert_eq!(none["manifests"], serde_json::json!([]));
    // A subject with no referrers, or one not pushed yet: an empty index, not 404.
    let (_, empty) = {
        let r = auth(http.get(format!(
            "http://{host}/v2/team/app/referrers/sha256:{}",
            "3".repeat(64)
        )))
        .send()
        .unwrap();
        assert_eq!(r.status(), 200);
        ((), r.json::<serde_json::Value>().unwrap())
    };
    assert_eq!(empty["manifests"], serde_json::json!([]));

    // Served back byte for byte; not deployable, saying why.
    let r = auth(http.get(format!(
        "http://{host}/v2/team/app/manifests/{}",
        pushed[0].1
    )))
    .send()
    .unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&r.bytes().unwrap())),
        pushed[0].1
    );
    let err = s.fails(&[
        "deploy",
        "sbom",
        "--image",
        &format!("team/app@{}", pushed[0].1),
    ]);
    assert!(
        err.contains("not a runnable container image")
            && err.contains("application/vnd.example.sbom.v1"),
        "{err}"
    );

    // Prune keeps artifacts and their blobs; a blob in use cannot be deleted.
    s.ok(&["images", "prune"]);
    for (_, _, blob) in &pushed {
        let r = auth(http.head(format!("http://{host}/v2/team/app/blobs/{blob}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let sig_blob = &pushed[1].2;
    let r = auth(http.delete(format!("http://{host}/v2/team/app/blobs/{sig_blob}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.text().unwrap().contains("in use by team/app@"));
    // Deleting the signature leaves the SBOM listed; its blob then goes with a blob DELETE
    // (or the store's garbage collection got there first: 404).
    let r = auth(http.delete(format!(
        "http://{host}/v2/team/app/manifests/{}",
        pushed[1].1
    )))
    .send()
    .unwrap();
    assert_eq!(r.status(), 202);
    let (_, after) = referrers("");
    assert_eq!(after["manifests"].as_array().unwrap().len(), 1);
    let r = auth(http.delete(format!("http://{host}/v2/team/app/blobs/{sig_blob}")))
        .send()
        .unwrap();
    assert!([202, 404].contains(&r.status().as_u16()), "{}", r.status());
    let r = auth(http.head(format!("http://{host}/v2/team/app/blobs/{sig_blob}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    // The image itself still deploys.
    s.ok(&[
        "deploy",
        "app",
        "--image",
        "team/app:v1",
        "--allow-unauthenticated",
    ]);
    assert_eq!(s.get("app.localhost", "/", None), (200, "signed\n".into()));
}

#[test]
fn buildah_manifest_push_all_of_a_docker_manifest_list_deploys_the_hosts_image() {
    let s = TestServer::start(Path::new(BIN), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let host_arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let foreign_arch = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let native = image_saying(&tmp.path().join("native"), "native list entry");
    let foreign = image_saying(&tmp.path().join("foreign"), "foreign list entry");
    let host = format!("127.0.0.1:{}", s.api);
    let token = admin_token(&s);
    let buildah = ContainerTool::new("buildah");
    buildah.ok(&["manifest", "create", "skiff-list"]);
    for (arch, layout) in [(host_arch, &native), (foreign_arch, &foreign)] {
        buildah.ok(&[
            "manifest",
            "add",
            "--os",
            "linux",
            "--arch",
            arch,
            "skiff-list",
            &format!("oci:{}", layout.display()),
        ]);
    }
    // As a Docker manifest list (v2s2), every entry pushed with it.
    buildah.ok(&[
        "manifest",
        "push",
        "--all",
        "--format",
        "v2s2",
        "--tls-verify=false",
        "--creds",
        &format!("u:{token}"),
        "skiff-list",
        &format!("docker://{host}/team/list:v1"),
    ]);
    let r = reqwest::blocking::Client::new()
        .get(format!("http://{host}/v2/team/list/manifests/v1"))
        .basic_auth("u", Some(&token))
        .header(
            "Accept",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let list: serde_json::Value = r.json().unwrap();
    assert_eq!(list["manifests"].as_array().unwrap().len(), 2, "{list}");
    s.ok(&[
        "deploy",
        "list",
        "--image",
        "team/list:v1",
        "--allow-unauthenticated",
    ]);
    assert_eq!(
        s.get("list.localhost", "/", None),
        (200, "native list entry\n".into())
    );
}

#[test]
fn a_sidecar_image_is_pulled_and_pinned_and_a_moved_tag_does_not_change_it() {
    let registry = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let side = registry.push(
        &image_saying(&tmp.path().join("a"), "first"),
        "team/side:v1",
    );
    let (mut s, _web) = TestServer::with_web_image(Path::new(BIN), &[]);
    let deploy = |s: &TestServer, extra: &[&str]| {
        let mut args = vec!["deploy", "rs", "--allow-unauthenticated"];
        args.extend_from_slice(extra);
        let out = s.skiff(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}\n{}", s.log());
        err
    };
    let err = deploy(
        &s,
        &[
            "--container",
            "app",
            "--image",
            "web",
            "--port",
            "8080",
            "--container",
            "side",
            "--image",
            &side,
            "--args",
            "exec httpd -f -p 9000 -h /www",
        ],
    );
    assert!(err.contains(&format!("Pulling {side}...")), "{err}");
    let sidecar_page = |s: &TestServer| s.sh("rs", "wget -qO- http://127.0.0.1:9000/index.html");
    // The containers start together: the sidecar may listen a moment after the app.
    let serves = |s: &TestServer, want: &str| {
        s.wait_for(&format!("the sidecar to serve {want:?}"), 120, || {
            sidecar_page(s) == format!("{want}\n")
        })
    };
    serves(&s, "first");
    let digest = |s: &TestServer| -> String {
        let svc: serde_json::Value =
            serde_json::from_str(&s.ok(&["services", "describe", "rs", "--format", "json"]))
                .unwrap();
        let rev = svc["status"]["latestReadyRevisionName"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, body) = s.api(
            "GET",
            &format!("/apis/serving.knative.dev/v1/namespaces/default/revisions/{rev}"),
            None,
        );
        let rev: serde_json::Value = serde_json::from_str(&body).unwrap();
        rev["status"]["containerStatuses"][0]["imageDigest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let pinned = digest(&s);
    assert!(
        pinned.starts_with(&format!("{}/team/side@sha256:", registry.host)),
        "{pinned}"
    );

    // The tag moves; a restart keeps the sidecar on its digest.
    registry.push(
        &image_saying(&tmp.path().join("b"), "second"),
        "team/side:v1",
    );
    s.stop();
    s.restart();
    s.wait_for("the service after the restart", 120, || {
        s.get("rs.localhost", "/", None).0 == 200
    });
    serves(&s, "first");
    assert_eq!(digest(&s), pinned);

    // A new deploy resolves the tag again, as for the ingress container.
    deploy(&s, &["--container", "side", "--update-env-vars", "X=1"]);
    serves(&s, "second");
    assert_ne!(digest(&s), pinned);
}
