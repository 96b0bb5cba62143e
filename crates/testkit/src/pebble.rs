//! Debian's `pebble` (a test ACME CA) with `pebble-challtestsrv` as its DNS server, on
//! loopback ports of their own, for tests of Skiff's ACME client.
//!
//! Pebble's HTTPS (directory and management API) gets a certificate for `127.0.0.1` signed by
//! a CA this kit makes ([`Pebble::https_ca_file`], what `--acme-ca` is given); the
//! certificates Pebble issues chain to a root it makes at each start ([`Pebble::root_pem`]).
//! Validations connect to `127.0.0.1` at the HTTP and TLS ports given to [`Pebble::start`]
//! (Skiff's listeners), for names the test points there with [`Pebble::add_a`].

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running Pebble and challtestsrv; both are killed on drop.
pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Child,
    dns: Child,
    port: u16,
    mgmt_port: u16,
    dns_mgmt_port: u16,
}

fn wait_listening(port: u16, what: &str, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !crate::server::listening(port) {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Pebble {
    /// Starts challtestsrv (DNS only, no default addresses) and Pebble validating HTTP-01 at
    /// `127.0.0.1:http_port` and TLS-ALPN-01 at `127.0.0.1:tls_port`, without the random
    /// validation delay, never rejecting nonces at random, and never reusing authorizations.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "skiff test pebble HTTPS CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();

        let [dns_port, dns_mgmt_port, port, mgmt_port] = crate::server::free_ports::<4>();
        let dns_log = dir.path().join("challtestsrv.log");
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "", "-defaultIPv6", ""])
            .stdout(std::fs::File::create(&dns_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; .ci/run installs it)");
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
                "certificate": dir.path().join("cert.pem"),
                "privateKey": dir.path().join("key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let log = dir.path().join("pebble.log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.path().join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("pebble.err")).unwrap())
            .spawn()
            .expect("pebble (Debian package pebble; .ci/run installs it)");
        let p = Pebble {
            dir,
            pebble,
            dns,
            port,
            mgmt_port,
            dns_mgmt_port,
        };
        wait_listening(dns_mgmt_port, "pebble-challtestsrv", &dns_log);
        wait_listening(port, "pebble", &log);
        wait_listening(mgmt_port, "pebble's management API", &log);
        p
    }

    /// The directory URL (`--acme-directory`).
    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The CA file that signs Pebble's own HTTPS certificate (`--acme-ca`).
    pub fn https_ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Makes `host` resolve to 127.0.0.1 for Pebble's validations.
    pub fn add_a(&self, host: &str) {
        let body = serde_json::json!({ "host": format!("{host}."), "addresses": ["127.0.0.1"] });
        let (status, text) = crate::server::http_post_json(self.dns_mgmt_port, "/add-a", &body);
        assert_eq!(status, 200, "challtestsrv /add-a: {text}");
    }

    /// The port of challtestsrv's management API (`/set-txt`, `/clear-txt`, `/add-a`...).
    pub fn dns_management_port(&self) -> u16 {
        self.dns_mgmt_port
    }

    /// Writes an `--acme-dns-hook` command into `dir` that sets and clears TXT records in
    /// challtestsrv (Python, `hook set|clear NAME VALUE`) and logs each call to `hook.log`
    /// beside it; returns its path.
    pub fn dns_hook(&self, dir: &std::path::Path) -> PathBuf {
        let path = dir.join("dns-hook");
        let log = dir.join("hook.log");
        let script = format!(
            r#"#!/usr/bin/env python3
import json, sys, urllib.request
op, name, value = sys.argv[1:4]
with open({log:?}, "a") as f:
    f.write(f"{{op}} {{name}}\n")
body = {{"host": name + "."}}
if op == "set":
    body["value"] = value
path = "/set-txt" if op == "set" else "/clear-txt"
req = urllib.request.Request("http://127.0.0.1:{port}" + path, data=json.dumps(body).encode(), method="POST")
urllib.request.urlopen(req, timeout=30).read()
"#,
            log = log.display().to_string(),
            port = self.dns_mgmt_port
        );
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Pebble's issuing root (regenerated at each start), PEM, from its management API.
    pub fn root_pem(&self) -> String {
        let (status, body) = https_get(
            self.mgmt_port,
            "127.0.0.1",
            "/roots/0",
            &std::fs::read_to_string(self.https_ca_file()).unwrap(),
        );
        assert_eq!(status, 200, "pebble /roots/0: {body}");
        body
    }

    /// Pebble's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("pebble.err")).unwrap_or_default()
    }

    /// Certificates Pebble has issued (from its log).
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// A TLS client configuration trusting only `roots_pem`, offering `alpn`.
pub fn tls_client(roots_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An established TLS connection to `127.0.0.1:port` naming `sni`, verified against
/// `roots_pem`.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `127.0.0.1:port` with SNI `sni`, verifying the server's chain against
/// `roots_pem` and offering `alpn`; completes the handshake.
pub fn tls_connect(
    port: u16,
    sni: &str,
    roots_pem: &str,
    alpn: &[&[u8]],
) -> Result<TlsStream, String> {
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(tls_client(roots_pem, alpn), name)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("TLS handshake with {sni} at port {port}: {e}"))?;
    }
    Ok(s)
}

/// The serial number (lower-case hex) of the leaf certificate a TLS connection got.
pub fn peer_serial(s: &TlsStream) -> String {
    let leaf = &s.conn.peer_certificates().expect("a server certificate")[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    hex::encode(cert.raw_serial())
}

/// One HTTP/1.1 request on an established connection (`Connection: keep-alive`); returns the
/// status and body (read by `Content-Length`).
pub fn request_on<S: Read + Write>(s: &mut S, host: &str, path: &str) -> (u16, String) {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert!(n == 1, "connection closed in the response head: {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET https://127.0.0.1:port/path` naming `sni`, trusting `roots_pem`; returns the status
/// and body (HTTP/1.0, read to the end).
pub fn https_get(port: u16, sni: &str, path: &str, roots_pem: &str) -> (u16, String) {
    let mut s = tls_connect(port, sni, roots_pem, &[b"http/1.1"]).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {sni}\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        // Go's TLS servers close without close_notify.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("reading https://{sni}:{port}{path}: {e}"),
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
