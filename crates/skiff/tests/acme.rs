//! End-to-end tests of `skiff server --acme-directory` against Debian's `pebble` (with
//! `pebble-challtestsrv` as the DNS the test controls), all on loopback: a service's host gets
//! its certificate when the service is deployed, served by SNI and verified against Pebble's
//! root; curl trusting that root gets HTTP/2; plain HTTP then redirects to HTTPS; SIGHUP
//! renews (a new serial, an open connection unaffected); a restart serves the stored
//! certificate without a new order. They need root (the server does), pebble and curl.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_testkit::pebble::{peer_serial, request_on, tls_connect};
use skiff_testkit::server::{free_port, get_head};
use skiff_testkit::{Pebble, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_skiff");

fn wait_until(what: &str, secs: u64, log: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn service_host_certificate_from_pebble_is_served_renewed_and_kept_across_restarts() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https);
    let host = "hello.apps.example.test";
    pebble.add_a(host);
    let https_addr = format!("127.0.0.1:{https}");
    let directory = pebble.directory();
    let ca = pebble.https_ca_file();
    let (mut s, _img) = TestServer::with_web_image_on(
        Path::new(BIN),
        Some(http),
        &[
            "--https",
            &https_addr,
            "--domain",
            "apps.example.test",
            "--acme-directory",
            &directory,
            "--acme-email",
            "ops@example.com",
            "--acme-ca",
            ca.to_str().unwrap(),
        ],
    );
    let server_log = s.data_dir.with_extension("log");
    let logs = || {
        format!(
            "server log:\n{}\npebble log:\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default(),
            pebble.log()
        )
    };
    let root = pebble.root_pem();
    // Before the service exists the host is not routed: no certificate, nothing ordered.
    assert!(tls_connect(https, host, &root, &[b"http/1.1"]).is_err());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pebble.issued(), 0, "{}", logs());

    // Deploying orders it.
    let out = s.deploy_web("hello", &[]);
    assert!(out.contains(&format!("https://{host}:{https}")), "{out}");
    wait_until("the service host's certificate", 180, logs, || {
        tls_connect(https, host, &root, &[b"http/1.1"]).is_ok()
    });
    let first = peer_serial(&tls_connect(https, host, &root, &[b"http/1.1"]).unwrap());
    assert_eq!(pebble.issued(), 1);
    // The service's localhost name (which it also answers at) is not its URL: no order.
    assert!(tls_connect(https, "hello.localhost", &root, &[b"http/1.1"]).is_err());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pebble.issued(), 1, "{}", logs());
    let stored = s.data_dir.join("acme/certs").join(host);
    assert!(stored.join("cert.pem").is_file() && stored.join("key.pem").is_file());

    // A client trusting Pebble's root gets HTTP/2 from the service.
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("pebble-root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "60", "--http2", "--cacert"])
        .arg(&root_file)
        .arg("--resolve")
        .arg(format!("{host}:{https}:127.0.0.1"))
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://{host}:{https}/index.html"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "hello from skiff\n\n2");

    // Plain HTTP now redirects to HTTPS.
    let (status, head) = get_head(http, host, "/index.html");
    assert!(matches!(status, 301 | 308), "{status}\n{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("location: https://{host}:{https}/index.html")),
        "{head}"
    );

    // SIGHUP renews: new connections get a new serial; one opened before keeps working.
    let mut old = tls_connect(https, host, &root, &[b"http/1.1"]).unwrap();
    assert_eq!(request_on(&mut old, host, "/index.html").0, 200);
    let pid = nix::unistd::Pid::from_raw(s.pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let mut renewed = String::new();
    wait_until("a renewed certificate", 180, logs, || {
        renewed = peer_serial(&tls_connect(https, host, &root, &[b"http/1.1"]).unwrap());
        renewed != first
    });
    assert_eq!(
        request_on(&mut old, host, "/index.html"),
        (200, "hello from skiff\n".to_string())
    );
    assert_eq!(peer_serial(&old), first);
    assert_eq!(pebble.issued(), 2);

    // A restart serves the stored (renewed) certificate and orders nothing.
    drop(old);
    s.stop();
    s.restart();
    wait_until("the HTTPS listener after the restart", 60, logs, || {
        skiff_testkit::listening(https)
    });
    let after = peer_serial(&tls_connect(https, host, &root, &[b"http/1.1"]).unwrap());
    assert_eq!(after, renewed);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pebble.issued(), 2, "{}", logs());
}

#[test]
fn a_wildcard_certificate_by_dns01_through_the_hook_covers_every_service() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https);
    let dir = tempfile::tempdir().unwrap();
    let hook = pebble.dns_hook(dir.path());
    let https_addr = format!("127.0.0.1:{https}");
    let directory = pebble.directory();
    let ca = pebble.https_ca_file();
    let (s, _img) = TestServer::with_web_image_on(
        Path::new(BIN),
        Some(http),
        &[
            "--https",
            &https_addr,
            "--domain",
            "wild.example.test",
            "--acme-directory",
            &directory,
            "--acme-ca",
            ca.to_str().unwrap(),
            "--acme-dns-hook",
            hook.to_str().unwrap(),
        ],
    );
    let server_log = s.data_dir.with_extension("log");
    let logs = || {
        format!(
            "server log:\n{}\npebble log:\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default(),
            pebble.log()
        )
    };
    let root = pebble.root_pem();
    s.deploy_web("hello", &[]);
    s.deploy_web("bye", &[]);
    let hello = "hello.wild.example.test";
    wait_until("the wildcard certificate", 180, logs, || {
        tls_connect(https, hello, &root, &[b"http/1.1"]).is_ok()
    });
    let serial = peer_serial(&tls_connect(https, hello, &root, &[b"http/1.1"]).unwrap());
    let mut bye = tls_connect(https, "bye.wild.example.test", &root, &[b"http/1.1"]).unwrap();
    assert_eq!(peer_serial(&bye), serial);
    assert_eq!(
        request_on(&mut bye, "bye.wild.example.test", "/index.html"),
        (200, "hello from skiff\n".to_string())
    );
    // One order for the wildcard, none per service; the TXT record was set, then cleared.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pebble.issued(), 1, "{}", logs());
    assert!(s
        .data_dir
        .join("acme/certs/*.wild.example.test/cert.pem")
        .is_file());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("hook.log")).unwrap(),
        "set _acme-challenge.wild.example.test\nclear _acme-challenge.wild.example.test\n"
    );
    // A mapped custom domain outside the wildcard still gets a certificate of its own.
    let custom = "www.custom.example.test";
    pebble.add_a(custom);
    s.ok(&[
        "domain-mappings",
        "create",
        "--service",
        "hello",
        "--domain",
        custom,
    ]);
    wait_until("the mapped domain's certificate", 180, logs, || {
        tls_connect(https, custom, &root, &[b"http/1.1"]).is_ok()
    });
    assert_eq!(pebble.issued(), 2, "{}", logs());
}

/// `skiff server` with `flags`: must exit non-zero; returns its stderr.
fn server_fails(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("server")
        .arg("--data-dir")
        .arg(dir.path())
        .args(flags)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {flags:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_acme_flags_stop_start_up_with_a_clear_error() {
    let err = server_fails(&["--acme-directory", "https://acme.example.test/dir"]);
    assert!(
        err.contains("error: --acme-directory needs --https"),
        "{err}"
    );
    let err = server_fails(&["--acme-email", "ops@example.com"]);
    assert!(err.contains("--acme-email needs --acme-directory"), "{err}");
    let err = server_fails(&[
        "--https",
        "127.0.0.1:0",
        "--acme-directory",
        "http://acme.example.test/dir",
    ]);
    assert!(err.contains("is not an https:// URL"), "{err}");
}

#[test]
fn a_domain_mapping_gets_its_certificate_and_reports_it_provisioned() {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(http, https);
    let domain = "www.shop.example.test";
    pebble.add_a(domain);
    let https_addr = format!("127.0.0.1:{https}");
    let directory = pebble.directory();
    let ca = pebble.https_ca_file();
    let (s, _img) = TestServer::with_web_image_on(
        Path::new(BIN),
        Some(http),
        &[
            "--https",
            &https_addr,
            "--acme-directory",
            &directory,
            "--acme-ca",
            ca.to_str().unwrap(),
        ],
    );
    let server_log = s.data_dir.with_extension("log");
    let logs = || {
        format!(
            "server log:\n{}\npebble log:\n{}",
            std::fs::read_to_string(&server_log).unwrap_or_default(),
            pebble.log()
        )
    };
    let root = pebble.root_pem();
    s.deploy_web("shop", &[]);
    // Not mapped yet: a handshake naming the domain orders nothing.
    assert!(tls_connect(https, domain, &root, &[b"http/1.1"]).is_err());
    std::thread::sleep(Duration::from_secs(1));
    let before = pebble.issued();
    assert_eq!(
        s.ok(&["domain-mappings", "list"]).matches(domain).count(),
        0
    );

    s.ok(&[
        "domain-mappings",
        "create",
        "--service",
        "shop",
        "--domain",
        domain,
    ]);
    wait_until("the mapped domain's certificate", 180, logs, || {
        tls_connect(https, domain, &root, &[b"http/1.1"]).is_ok()
    });
    assert_eq!(pebble.issued(), before + 1, "{}", logs());
    let mut conn = tls_connect(https, domain, &root, &[b"http/1.1"]).unwrap();
    assert_eq!(
        request_on(&mut conn, domain, "/index.html"),
        (200, "hello from skiff\n".to_string())
    );
    // The mapping says its certificate is there, and is ready.
    wait_until("CertificateProvisioned", 60, logs, || {
        let v: serde_json::Value = serde_json::from_str(&s.ok(&[
            "domain-mappings",
            "describe",
            "--domain",
            domain,
            "--format",
            "json",
        ]))
        .unwrap();
        let conditions = v["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let is_true = |t: &str| {
            conditions
                .iter()
                .any(|c| c["type"] == t && c["status"] == "True")
        };
        is_true("CertificateProvisioned") && is_true("Ready")
    });
    // Plain HTTP to the domain now redirects to HTTPS.
    let (status, head) = get_head(http, domain, "/index.html");
    assert!(matches!(status, 301 | 308), "{status}\n{head}");
}
