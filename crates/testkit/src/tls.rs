//! TLS for tests: [`TestCa`], a certificate authority made with `rcgen` that issues server
//! certificates for the names a test asks, and [`TlsClient`], a blocking `rustls` client that
//! trusts it and sends HTTP/1.1 requests over one kept-alive connection, reporting the
//! certificate the server presented.

use rustls::pki_types::pem::PemObject;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A certificate authority for one test.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

/// A server certificate [`TestCa::issue`] made: PEM chain (leaf, then the CA) and key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The leaf certificate in DER, to compare with what a server presents.
    pub leaf_der: Vec<u8>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new self-signed CA (ECDSA P-256).
    pub fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Skiff test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    /// The CA certificate in PEM (what clients are told to trust).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `DIR/ca.pem` and returns the path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, self.pem()).unwrap();
        p
    }

    /// A server certificate for `names` (DNS names, `*.DOMAIN` wildcards allowed) with a new
    /// key.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
            leaf_der: cert.der().to_vec(),
        }
    }

    /// Issues for `names` and writes `DIR/cert.pem` and `DIR/key.pem` (each replaced by a
    /// rename, as a certificate manager would); returns what was issued.
    pub fn issue_to(&self, dir: &Path, names: &[&str]) -> Issued {
        let issued = self.issue(names);
        for (name, text) in [("cert.pem", &issued.cert_pem), ("key.pem", &issued.key_pem)] {
            let tmp = dir.join(format!(".{name}.new"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
        issued
    }
}

/// One TLS connection to `127.0.0.1:PORT`, naming `host` in SNI and `Host`.
pub struct TlsClient {
    stream: BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>,
    host: String,
}

/// A response [`TlsClient::get`] read.
#[derive(Debug)]
pub struct TlsResponse {
    pub status: u16,
    pub body: String,
}

impl TlsClient {
    /// Connects and completes the handshake, trusting only `ca_pem` and offering ALPN `alpn`
    /// (e.g. `["http/1.1"]`).
    pub fn connect(
        port: u16,
        host: &str,
        ca_pem: &str,
        alpn: &[&str],
    ) -> std::io::Result<TlsClient> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsClient {
            stream: BufReader::new(stream),
            host: host.to_string(),
        })
    }

    /// The leaf certificate the server presented (DER).
    pub fn peer_leaf(&self) -> Vec<u8> {
        self.stream.get_ref().conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// The ALPN protocol negotiated.
    pub fn alpn(&self) -> Option<String> {
        self.stream
            .get_ref()
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// `GET PATH` over HTTP/1.1, keeping the connection open; reads a response with a
    /// `Content-Length` or a chunked body.
    pub fn get(&mut self, path: &str) -> std::io::Result<TlsResponse> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.get_mut().write_all(req.as_bytes())?;
        self.stream.get_mut().flush()?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut chunked) = (None, false);
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => len = v.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.stream.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut chunk = vec![0; n + 2];
                self.stream.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let mut chunk = vec![0; len.unwrap_or(0)];
            self.stream.read_exact(&mut chunk)?;
            body = chunk;
        }
        Ok(TlsResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}
