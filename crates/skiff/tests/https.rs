//! End-to-end tests of the HTTPS ingress: `skiff server --https` with a certificate the user
//! gives (`--tls-cert`, `--tls-key`), served to curl over HTTP/2 and HTTP/1.1 by ALPN,
//! reloaded when its files change without dropping an open connection, plain HTTP redirected
//! to HTTPS for the names the certificate covers, and start-up refusing a bad pair. They need
//! root (the server does) and curl.

use skiff_testkit::server::{free_port, get_head};
use skiff_testkit::{busybox_image, ImageSpec, TestCa, TestServer, TlsClient};
use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

/// curl over HTTPS to `https://HOST:PORT/PATH`, trusting `ca`, `host` resolved to loopback;
/// returns (body, HTTP version curl used).
fn curl(ca: &Path, host: &str, port: u16, path: &str, version_flag: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "60",
            version_flag,
            "--cacert",
        ])
        .arg(ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {host}{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[test]
fn user_certificate_is_served_over_h2_and_http1_reloaded_and_plain_http_redirected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    let first = ca.issue_to(dir.path(), &["hello.localhost", "*.apps.test"]);
    let https = free_port();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (s, _img) = TestServer::with_web_image(
        Path::new(BIN),
        &[
            "--https",
            &format!("127.0.0.1:{https}"),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    s.deploy_web("hello", &[]);
    // A domain mapping the user's certificate covers reports its certificate provisioned; one
    // it does not cover is still waiting.
    let provisioned = |domain: &str| {
        s.ok(&[
            "domain-mappings",
            "create",
            "--service",
            "hello",
            "--domain",
            domain,
        ]);
        let v: serde_json::Value = serde_json::from_str(&s.ok(&[
            "domain-mappings",
            "describe",
            "--domain",
            domain,
            "--format",
            "json",
        ]))
        .unwrap();
        v["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "CertificateProvisioned")
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(provisioned("www.apps.test"), "True");
    assert_eq!(provisioned("www.other.test"), "Unknown");
    // A client that never says hello: the handshake counts in the header read timeout.
    let mut silent = TcpStream::connect(("127.0.0.1", https)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();

    // HTTP/2 and HTTP/1.1, chosen by ALPN; the app is told the request was HTTPS.
    let (body, version) = curl(
        &ca_file,
        "hello.localhost",
        https,
        "/cgi-bin/env",
        "--http2",
    );
    assert_eq!(version, "2", "{body}");
    assert!(body.contains("HTTP_X_FORWARDED_PROTO=https"), "{body}");
    assert!(body.contains("proto=https"), "{body}");
    let (body, version) = curl(
        &ca_file,
        "hello.localhost",
        https,
        "/index.html",
        "--http1.1",
    );
    assert_eq!(version, "1.1");
    assert_eq!(body, "hello from skiff\n");

    // TLS requests are logged as HTTPS requests of the revision.
    s.wait_for("the request log", 60, || {
        s.ok(&[
            "logs",
            "read",
            "--service",
            "hello",
            "--limit",
            "50",
            "--format",
            "json",
        ])
        .contains("https://hello.localhost")
    });

    // Plain HTTP to a host the certificate covers moves to HTTPS, keeping path and query;
    // a host it does not cover is served over plain HTTP.
    let (status, head) = get_head(s.ingress, "hello.localhost", "/a/b?c=d");
    assert_eq!(status, 308, "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://hello.localhost:{https}/a/b?c=d"
        )),
        "{head}"
    );
    let (status, head) = get_head(s.ingress, "other.localhost", "/");
    assert_eq!(status, 404, "{head}");

    // A connection kept alive across the reload.
    let mut kept = TlsClient::connect(https, "hello.localhost", &ca.pem(), &["http/1.1"]).unwrap();
    assert_eq!(kept.peer_leaf(), first.leaf_der);
    assert_eq!(kept.alpn().as_deref(), Some("http/1.1"));
    assert_eq!(kept.get("/index.html").unwrap().status, 200);

    // New files: new connections get the new certificate, without a restart.
    let second = ca.issue_to(dir.path(), &["hello.localhost", "*.apps.test"]);
    assert_ne!(second.leaf_der, first.leaf_der);
    s.wait_for("the new certificate", 60, || {
        TlsClient::connect(https, "hello.localhost", &ca.pem(), &["h2"])
            .is_ok_and(|c| c.peer_leaf() == second.leaf_der)
    });
    let again = kept.get("/index.html").unwrap();
    assert_eq!(
        (again.status, again.body.as_str()),
        (200, "hello from skiff\n")
    );

    // A key that does not belong to the certificate: logged, and the last good one kept.
    std::fs::write(&key, ca.issue(&["x.test"]).key_pem).unwrap();
    s.wait_for("the reload error in the log", 60, || {
        s.log().contains("still serving the previous certificate")
    });
    let c = TlsClient::connect(https, "hello.localhost", &ca.pem(), &["h2"]).unwrap();
    assert_eq!(c.peer_leaf(), second.leaf_der);
    assert!(!s.log().contains("PRIVATE KEY"), "key material in the log");

    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("a silent client got {n} bytes"),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the silent connection was kept open: {e}"
        ),
    }
}

/// `skiff server` with these flags (in a fresh data dir): its stderr; it must fail.
fn server_fails(flags: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("server")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--http", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .args(flags)
        .output()
        .unwrap();
    assert!(!out.status.success(), "skiff server {flags:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_certificate_flags_stop_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.issue_to(dir.path(), &["hello.localhost"]);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let https = format!("127.0.0.1:{}", free_port());

    let e = server_fails(&["--https", &https, "--tls-cert", cert]);
    assert!(
        e.contains("give both --tls-cert FILE and --tls-key FILE"),
        "{e}"
    );
    let e = server_fails(&["--tls-cert", cert, "--tls-key", key]);
    assert!(e.contains("need --https"), "{e}");
    let e = server_fails(&["--https", "nowhere", "--tls-cert", cert, "--tls-key", key]);
    assert!(e.contains("invalid --https \"nowhere\""), "{e}");
    let missing = dir.path().join("missing.pem");
    let e = server_fails(&[
        "--https",
        &https,
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        key,
    ]);
    assert!(
        e.contains("cannot read") && e.contains("missing.pem"),
        "{e}"
    );
    // A key of another certificate.
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, ca.issue(&["x.test"]).key_pem).unwrap();
    let e = server_fails(&[
        "--https",
        &https,
        "--tls-cert",
        cert,
        "--tls-key",
        other.to_str().unwrap(),
    ]);
    assert!(
        e.contains("does not belong to the certificate") && e.contains("other-key.pem"),
        "{e}"
    );
    // Not PEM at all.
    let e = server_fails(&["--https", &https, "--tls-cert", key, "--tls-key", key]);
    assert!(e.contains("error:") && e.contains("key.pem"), "{e}");
}

/// Runs `cmd` (a shell command line) in a private mount namespace whose `/etc/hosts` is
/// `hosts` (bind-mounted there, gone with the process), so that clients resolve the test's
/// names without the host's resolver being touched; returns (success, stdout, stderr).
fn with_hosts(hosts: &Path, env: &[(&str, &str)], cmd: &str) -> (bool, String, String) {
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/hosts && exec {cmd}",
            hosts.display()
        ))
        .envs(env.iter().copied())
        .output()
        .expect("unshare");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn domain_urls_are_printed_routed_and_reached_by_curl_python_and_wrk() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ca_file = ca.write(dir.path());
    ca.issue_to(dir.path(), &["*.apps.test"]);
    let https = free_port();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (s, _img) = TestServer::with_web_image(
        Path::new(BIN),
        &[
            "--domain",
            "apps.test",
            "--https",
            &format!("127.0.0.1:{https}"),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // The URLs deploy and describe print: the service, a tag, another project.
    let out = s.deploy_web("hello", &["--tag", "blue"]);
    let url = format!("https://hello.apps.test:{https}");
    let tag_url = format!("https://blue---hello.apps.test:{https}");
    assert!(out.contains(&url) && out.contains(&tag_url), "{out}");
    let out = s.ok(&["services", "describe", "hello"]);
    assert!(out.contains(&url), "{out}");
    let out = s.ok(&[
        "deploy",
        "hello",
        "--image",
        "web",
        "--allow-unauthenticated",
        "--project",
        "team-a",
    ]);
    let team_url = format!("https://hello-team-a.apps.test:{https}");
    assert!(out.contains(&team_url), "{out}");
    let out = s.ok(&["deploy", "private", "--image", "web"]);
    let private_url = format!("https://private.apps.test:{https}");
    assert!(out.contains(&private_url), "{out}");

    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 hello.apps.test blue---hello.apps.test hello-team-a.apps.test private.apps.test\n",
    )
    .unwrap();
    let ca_env = ca_file.to_str().unwrap();

    // curl, trusting the test CA, at each printed URL.
    for (u, want) in [
        (&url, "HTTP_HOST=hello.apps.test"),
        (&tag_url, "HTTP_HOST=blue---hello.apps.test"),
        (&team_url, "HTTP_HOST=hello-team-a.apps.test"),
    ] {
        let (ok, body, err) = with_hosts(
            &hosts,
            &[],
            &format!("curl -sS --fail --max-time 60 --cacert {ca_env} {u}/cgi-bin/env"),
        );
        assert!(ok && body.contains(want), "{u}: {body} {err}");
        assert!(body.contains("HTTP_X_FORWARDED_PROTO=https"), "{body}");
    }
    // A private service takes an identity token minted for the URL it printed.
    let token = s.ok(&["auth", "print-identity-token", "--audience", &private_url]);
    let (ok, body, err) = with_hosts(
        &hosts,
        &[],
        &format!(
            "curl -sS --max-time 60 --cacert {ca_env} -o /dev/null -w %{{http_code}} -H 'Authorization: Bearer {}' {private_url}/",
            token.trim()
        ),
    );
    assert!(ok && body == "200", "{body} {err}");
    let other = s.ok(&["auth", "print-identity-token", "--audience", &url]);
    let (_, body, _) = with_hosts(
        &hosts,
        &[],
        &format!(
            "curl -sS --max-time 60 --cacert {ca_env} -o /dev/null -w %{{http_code}} -H 'Authorization: Bearer {}' {private_url}/",
            other.trim()
        ),
    );
    assert_eq!(body, "403", "a token for another service's URL");

    // Python's urllib, trusting the test CA through SSL_CERT_FILE.
    let (ok, body, err) = with_hosts(
        &hosts,
        &[("SSL_CERT_FILE", ca_env)],
        &format!(
            "python3 -c \"import urllib.request; print(urllib.request.urlopen('{team_url}/index.html', timeout=60).read().decode())\""
        ),
    );
    assert!(ok && body.contains("hello from skiff"), "{body} {err}");

    // wrk (it resolves the name itself and does not verify the certificate).
    let (ok, body, err) = with_hosts(
        &hosts,
        &[],
        &format!("wrk -t1 -c4 -d2s --timeout 30s {url}/index.html"),
    );
    assert!(ok, "{body} {err}");
    let requests: u64 = body
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(requests > 0, "{body}");
    assert!(
        !body.contains("Non-2xx") && !body.contains("Socket errors"),
        "{body}"
    );

    // Plain HTTP to the domain names moves to HTTPS.
    let (status, head) = get_head(s.ingress, "hello.apps.test", "/x");
    assert_eq!(status, 308, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("location: {url}/x")),
        "{head}"
    );
    // A Pub/Sub push to the printed https:// URL reaches the service (through the local
    // ingress, not redirected) and is logged as an HTTPS request.
    s.ok(&["pubsub", "topics", "create", "orders"]);
    s.ok(&[
        "pubsub",
        "subscriptions",
        "create",
        "to-hello",
        "--topic",
        "orders",
        "--push-endpoint",
        &format!("{url}/cgi-bin/env?pushed"),
    ]);
    s.ok(&["pubsub", "topics", "publish", "orders", "--message", "hi"]);
    s.wait_for("the push in the request log", 120, || {
        s.ok(&[
            "logs",
            "read",
            "--service",
            "hello",
            "--limit",
            "100",
            "--format",
            "json",
        ])
        .contains("https://hello.apps.test/cgi-bin/env?pushed")
    });

    // The localhost names still answer.
    assert_eq!(s.get("hello.localhost", "/index.html", None).0, 200);

    // Inside an instance the domain's names resolve to the ingress on the bridge: plain HTTP
    // is served there (not redirected), and so is HTTPS at the printed URL.
    let subnet = s.subnet.clone().expect("the test server's instance subnet");
    let gw = subnet.replace(".0/24", ".1");
    let looked_up = s.sh("hello", "nslookup hello-team-a.apps.test 2>&1");
    assert!(
        looked_up
            .lines()
            .skip_while(|l| !l.starts_with("Name:"))
            .any(|l| l.contains(&gw)),
        "{looked_up}"
    );
    let out = s.sh(
        "hello",
        &format!(
            "{{ printf 'GET /index.html HTTP/1.0\\r\\nHost: hello-team-a.apps.test\\r\\n\\r\\n'; sleep 1; }} | nc -w 3 {gw} {}",
            s.ingress
        ),
    );
    assert!(
        out.starts_with("HTTP/1.0 200") && out.contains("hello from skiff"),
        "{out}"
    );
    // A service calling another at its printed https:// URL: curl (the host's, with the
    // libraries it links) in an image of its own, trusting the test CA.
    let img = tempfile::tempdir().unwrap();
    let mut spec = ImageSpec {
        binaries: vec!["/usr/bin/curl".into()],
        ..ImageSpec::default()
    };
    spec.files.push(("ca.pem".into(), ca.pem(), 0o644));
    let layout = busybox_image(&img.path().join("caller"), "caller", &spec);
    s.ok(&["images", "import", layout.to_str().unwrap()]);
    s.ok(&[
        "deploy",
        "caller",
        "--image",
        "caller",
        "--allow-unauthenticated",
    ]);
    let out = s.sh(
        "caller",
        &format!("/app/curl -sS --max-time 60 --cacert /ca.pem {team_url}/index.html 2>&1"),
    );
    assert!(out.contains("hello from skiff"), "{out}");
}
