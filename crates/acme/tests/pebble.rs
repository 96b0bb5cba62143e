//! `skiff-acme` against Debian's `pebble`: HTTP-01 and TLS-ALPN-01 orders answered by small
//! responders over `skiff-tls`'s `Http01Challenges` and `CertStore`, the fallback from one
//! challenge to the other, per-host backoff, renewal, reloading stored certificates, and
//! ordering on first need from a TLS handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_acme::{AcmeConfig, AcmeManager, CertStatus, ChallengeKind, HostFilter};
use skiff_testkit::pebble::{peer_serial, request_on, tls_connect};
use skiff_testkit::Pebble;
use skiff_tls::{CertStore, Http01Challenges};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads a request head; returns its path.
async fn read_path<S: AsyncReadExt + Unpin>(s: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.ok()? == 0 {
            return None;
        }
        buf.push(b[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    head.split_whitespace().nth(1).map(str::to_owned)
}

/// An HTTP listener answering only ACME HTTP-01 requests from `challenges`.
async fn http01_responder(challenges: Arc<Http01Challenges>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let challenges = challenges.clone();
            tokio::spawn(async move {
                let path = read_path(&mut s).await.unwrap_or_default();
                let resp = match challenges.answer(&path) {
                    Some(a) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{a}",
                        a.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// A TLS listener over `store` (so it answers TLS-ALPN-01 handshakes) that answers every
/// other request with `200 ok`.
async fn tls_responder(store: Arc<CertStore>) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(skiff_tls::server_config(store)));
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(skiff_tls::ACME_TLS_ALPN) {
                    let _ = tls.shutdown().await;
                    return;
                }
                while read_path(&mut tls).await.is_some() {
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    port
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    rt: tokio::runtime::Runtime,
    store: Arc<CertStore>,
    http01: Arc<Http01Challenges>,
    tls_port: u16,
    pebble: Pebble,
    data: tempfile::TempDir,
}

/// Pebble validating against the responders (HTTP-01 at a closed port when `http` is false).
fn setup(http: bool) -> Setup {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = CertStore::new();
    let http01 = Http01Challenges::new();
    let http_port = if http {
        rt.block_on(http01_responder(http01.clone()))
    } else {
        closed_port()
    };
    let tls_port = rt.block_on(tls_responder(store.clone()));
    let pebble = Pebble::start(http_port, tls_port);
    Setup {
        rt,
        store,
        http01,
        tls_port,
        pebble,
        data: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn manager(&self, challenges: &[ChallengeKind], routed: &[&str]) -> Arc<AcmeManager> {
        let mut cfg = AcmeConfig::new(self.pebble.directory(), self.data.path().join("acme"));
        cfg.email = Some("ops@example.com".into());
        cfg.ca_bundle = Some(self.pebble.https_ca_file());
        cfg.challenges = challenges.to_vec();
        let routed: Vec<String> = routed.iter().map(|s| s.to_string()).collect();
        let filter: HostFilter = Arc::new(move |h: &str| routed.iter().any(|r| r == h));
        let _guard = self.rt.enter();
        AcmeManager::new(cfg, self.store.clone(), self.http01.clone(), filter).unwrap()
    }

    /// The serial of the certificate served for `host`, verified against Pebble's root.
    fn served_serial(&self, host: &str) -> Result<String, String> {
        let root = self.pebble.root_pem();
        tls_connect(self.tls_port, host, &root, &[b"http/1.1"]).map(|s| peer_serial(&s))
    }

    fn wait_status(
        &self,
        m: &AcmeManager,
        host: &str,
        what: &str,
        ok: impl Fn(&CertStatus) -> bool,
    ) -> CertStatus {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = m.status(host);
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{host}: waited for {what}, status {s:?}\npebble log:\n{}",
                self.pebble.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn http01_certificate_is_stored_reloaded_and_renewed() {
    let s = setup(true);
    let host = "web.apps.example.test";
    s.pebble.add_a(host);
    let m = s.manager(&[ChallengeKind::Http01], &[host]);
    let info =
        s.rt.block_on(m.obtain(host))
            .unwrap_or_else(|e| panic!("{e}\npebble log:\n{}", s.pebble.log()));
    assert_eq!(s.served_serial(host).unwrap(), info.serial);
    assert_eq!(m.status(host), CertStatus::Ready(info.clone()));
    assert_eq!(s.pebble.issued(), 1);

    // Files: the chain, the key (0600), one account.
    use std::os::unix::fs::PermissionsExt;
    let dir = s.data.path().join("acme/certs").join(host);
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(dir.join("cert.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    let accounts = || {
        std::fs::read_dir(s.data.path().join("acme/accounts"))
            .unwrap()
            .count()
    };
    assert_eq!(accounts(), 1);

    // A new manager (a restart) serves the stored certificate and orders nothing.
    let fresh_store = CertStore::new();
    let m2 = {
        let mut cfg = AcmeConfig::new(s.pebble.directory(), s.data.path().join("acme"));
        cfg.ca_bundle = Some(s.pebble.https_ca_file());
        let h = host.to_string();
        let filter: HostFilter = Arc::new(move |x: &str| x == h);
        let _g = s.rt.enter();
        AcmeManager::new(cfg, fresh_store.clone(), Http01Challenges::new(), filter).unwrap()
    };
    assert_eq!(m2.load_stored(), vec![host.to_string()]);
    assert!(fresh_store.lookup_named(host).is_some());
    m2.want(host);
    assert_eq!(m2.status(host), CertStatus::Ready(info.clone()));
    assert_eq!(m2.orders_placed(), 0);

    // A forced renewal: a new serial, served without restarting anything; a connection opened
    // before it keeps working.
    let root = s.pebble.root_pem();
    let mut old = tls_connect(s.tls_port, host, &root, &[b"http/1.1"]).unwrap();
    assert_eq!(peer_serial(&old), info.serial);
    assert_eq!(m.renew_all_now(), vec![host.to_string()]);
    let renewed = s.wait_status(
        &m,
        host,
        "a renewed certificate",
        |st| matches!(st, CertStatus::Ready(i) if i.serial != info.serial),
    );
    let CertStatus::Ready(renewed) = renewed else {
        unreachable!()
    };
    assert_eq!(s.served_serial(host).unwrap(), renewed.serial);
    assert_eq!(request_on(&mut old, host, "/"), (200, "ok".to_string()));
    assert_eq!(s.pebble.issued(), 2);
    // The stored files are the renewed ones; the account was reused.
    let stored = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert_eq!(
        skiff_acme::CertInfo::from_pem(host, &stored)
            .unwrap()
            .serial,
        renewed.serial
    );
    assert_eq!(accounts(), 1);
}

#[test]
fn tls_alpn01_after_http01_fails_and_backoff_after_both_fail() {
    // HTTP-01 validations reach a closed port, so only TLS-ALPN-01 can succeed.
    let s = setup(false);
    let good = "alpn.apps.example.test";
    let unresolvable = "nowhere.apps.example.test";
    s.pebble.add_a(good);
    let m = s.manager(
        &[ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
        &[good, unresolvable],
    );
    let info =
        s.rt.block_on(m.obtain(good))
            .unwrap_or_else(|e| panic!("{e}\npebble log:\n{}", s.pebble.log()));
    assert_eq!(s.served_serial(good).unwrap(), info.serial);
    // Two orders: the failed HTTP-01 one, then TLS-ALPN-01.
    assert_eq!(m.orders_placed(), 2);

    // A host Skiff does not route is never ordered.
    assert_eq!(m.status("random.example.test"), CertStatus::NotRouted);
    m.want("random.example.test");
    let err = s.rt.block_on(m.obtain("random.example.test")).unwrap_err();
    assert!(err.to_string().contains("does not route"), "{err}");
    assert_eq!(m.orders_placed(), 2);

    // A host no validation can reach fails and then backs off: asking again orders nothing.
    m.want(unresolvable);
    let st = s.wait_status(&m, unresolvable, "a failure", |st| {
        matches!(st, CertStatus::Failed { .. })
    });
    let CertStatus::Failed {
        failures,
        retry_in,
        error,
    } = st
    else {
        unreachable!()
    };
    assert_eq!(failures, 1);
    assert!(
        retry_in > Duration::ZERO && retry_in <= skiff_acme::policy::backoff(1),
        "{retry_in:?}"
    );
    assert!(error.contains(unresolvable), "{error}");
    let placed = m.orders_placed();
    m.want(unresolvable);
    assert!(matches!(
        m.status(unresolvable),
        CertStatus::Failed { failures: 1, .. }
    ));
    assert_eq!(m.orders_placed(), placed);
    assert!(s.store.lookup_named(unresolvable).is_none());
}

#[test]
fn a_handshake_for_a_routed_host_orders_its_certificate() {
    let s = setup(true);
    let host = "ondemand.apps.example.test";
    s.pebble.add_a(host);
    let m = s.manager(&[ChallengeKind::Http01], &[host]);
    let hook = m.clone();
    s.store
        .set_on_miss(Some(Arc::new(move |h: &str| hook.want(h))));
    // The first handshake fails (no certificate, no default) but starts the order.
    assert!(s.served_serial(host).is_err());
    let st = s.wait_status(&m, host, "a certificate", |st| {
        matches!(st, CertStatus::Ready(_))
    });
    let CertStatus::Ready(info) = st else {
        unreachable!()
    };
    assert_eq!(s.served_serial(host).unwrap(), info.serial);
    // A name Skiff does not route gets nothing.
    assert!(s.served_serial("other.example.test").is_err());
    assert_eq!(m.status("other.example.test"), CertStatus::NotRouted);
    assert_eq!(s.pebble.issued(), 1);
}

#[test]
fn a_wildcard_certificate_through_the_dns_hook() {
    let s = setup(true);
    let wildcard = "*.wild.example.test";
    let hook = s.pebble.dns_hook(s.data.path());
    let mut cfg = AcmeConfig::new(s.pebble.directory(), s.data.path().join("acme"));
    cfg.ca_bundle = Some(s.pebble.https_ca_file());
    let filter: HostFilter = Arc::new(move |h: &str| h == wildcard);
    let without_hook = {
        let _g = s.rt.enter();
        AcmeManager::new(
            cfg.clone(),
            s.store.clone(),
            s.http01.clone(),
            filter.clone(),
        )
        .unwrap()
    };
    let err = s.rt.block_on(without_hook.obtain(wildcard)).unwrap_err();
    assert!(err.to_string().contains("--acme-dns-hook"), "{err}");
    assert_eq!(without_hook.orders_placed(), 0);

    cfg.dns_hook = Some(hook);
    let m = {
        let _g = s.rt.enter();
        AcmeManager::new(cfg, s.store.clone(), s.http01.clone(), filter).unwrap()
    };
    let info =
        s.rt.block_on(m.obtain(wildcard))
            .unwrap_or_else(|e| panic!("{e}\npebble log:\n{}", s.pebble.log()));
    // Any one-label name under the domain gets it.
    assert_eq!(s.served_serial("a.wild.example.test").unwrap(), info.serial);
    assert_eq!(s.served_serial("b.wild.example.test").unwrap(), info.serial);
    assert!(s.served_serial("a.b.wild.example.test").is_err());
    // The record was set, then cleared.
    let log = std::fs::read_to_string(s.data.path().join("hook.log")).unwrap();
    assert_eq!(
        log,
        "set _acme-challenge.wild.example.test\nclear _acme-challenge.wild.example.test\n"
    );
    assert!(s
        .data
        .path()
        .join("acme/certs/*.wild.example.test/cert.pem")
        .exists());
}
