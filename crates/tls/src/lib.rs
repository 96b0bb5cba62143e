//! TLS material for Skiff's HTTPS ingress.
//!
//! - [`CertStore`]: certificates by host name, chosen by the client's SNI (RFC 6066 §3), with
//!   `*.DOMAIN` wildcards (one label, RFC 6125 §6.4.3) and a default for clients that send no
//!   name or an unknown one. It is the ingress's `rustls` certificate resolver, and it also
//!   answers ACME TLS-ALPN-01 validation handshakes (RFC 8737 §3).
//! - [`Http01Challenges`]: the key authorizations the HTTP listener serves under
//!   `/.well-known/acme-challenge/TOKEN` for ACME HTTP-01 validation (RFC 8555 §8.3).
//! - [`certified_key_from_pem`]: a certificate chain and private key in PEM (the files
//!   `--tls-cert`/`--tls-key` name, or what an ACME CA issued) made ready to serve.
//! - [`UserCertificate`]: the `--tls-cert`/`--tls-key` pair, loaded as the store's default and
//!   reloaded when either file changes.
//!
//! Every lookup takes a read lock only; replacing a certificate never touches connections
//! already established, so renewals drop nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The ALPN protocol id of an ACME TLS-ALPN-01 validation handshake (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The path prefix under which HTTP-01 key authorizations are served (RFC 8555 §8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Errors of loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate PEM held no `CERTIFICATE` block.
    #[error("no certificate found in the certificate PEM")]
    NoCertificate,
    /// A PEM block could not be read.
    #[error("{what} is not valid PEM: {}", pem_problem(source))]
    Pem {
        /// "the certificate" or "the private key".
        what: &'static str,
        /// The parser's error.
        source: rustls::pki_types::pem::Error,
    },
    /// The private key is of a type or curve that cannot sign TLS handshakes.
    #[error("the private key cannot be used for TLS: {0}")]
    Key(rustls::Error),
    /// The private key is not the key of the chain's first (leaf) certificate.
    #[error("the private key does not belong to the certificate: {0}")]
    Mismatch(rustls::Error),
    /// A certificate or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `--tls-cert`/`--tls-key` pair does not make a servable certificate.
    #[error("--tls-cert {cert} with --tls-key {key}: {source}; give the certificate chain (leaf first) and its private key in PEM")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong with them.
        source: Box<TlsError>,
    },
}

/// The parser's error in words (its own display shows markers as byte lists).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "a block has no `-----END {}-----` line (is the file cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        E::IllegalSectionStart { line } => {
            format!("malformed BEGIN line `{}`", String::from_utf8_lossy(line))
        }
        E::Base64Decode(m) => format!("bad base64 inside a block ({m})"),
        E::NoItemsFound => "no block of the expected kind".to_string(),
        other => other.to_string(),
    }
}

/// Makes a servable certificate from PEM text: `cert_pem` holds the chain, leaf first (as
/// ACME CAs and `certbot`'s `fullchain.pem` give it); `key_pem` holds one PKCS#8, PKCS#1 (RSA)
/// or SEC1 (EC) private key.
///
/// Errors: [`TlsError::NoCertificate`], [`TlsError::Pem`], [`TlsError::Key`] for an unsupported
/// key, [`TlsError::Mismatch`] when the key is not the leaf certificate's.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "the certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
        what: "the private key",
        source,
    })?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Key)?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(TlsError::Mismatch)?;
    Ok(certified)
}

/// Lower-cases a host name and drops a trailing dot and any `:port`, so that lookups match
/// however a client spelled the name.
pub fn normalize_host(host: &str) -> String {
    let host = if let Some(rest) = host.strip_prefix('[') {
        // A bracketed IPv6 literal, with or without a port.
        return format!(
            "[{}]",
            rest.split(']').next().unwrap_or("").to_ascii_lowercase()
        );
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Certificates by host name; the ingress's `rustls` certificate resolver.
///
/// Lookup order for a client hello: a TLS-ALPN-01 challenge certificate when the client offers
/// only [`ACME_TLS_ALPN`]; else the certificate stored for the exact SNI name; else the one
/// stored for `*.PARENT` (one label replaced); else the default certificate, if any. With
/// nothing found the handshake fails (rustls sends `unrecognized_name`/handshake failure).
#[derive(Default)]
pub struct CertStore {
    by_host: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    default: RwLock<Option<Arc<CertifiedKey>>>,
    /// Bumped after every change to the stored or default certificates: the generation of
    /// [`CertStore::covers`]'s remembered answers.
    generation: AtomicU64,
    /// [`CertStore::covers`]'s answers, by normalized host.
    covered: Mutex<Covered>,
    on_miss: RwLock<MissHook>,
}

/// Whether a host has a certificate, remembered per host: checking the default certificate
/// parses it (about 9 000 instructions), and every plain-HTTP request asks.
#[derive(Default)]
struct Covered {
    /// The [`CertStore`] generation the answers are for.
    generation: u64,
    by_host: HashMap<String, bool>,
}

/// Most hosts [`Covered`] remembers; past that it starts again (hosts come from clients).
const COVERED_HOSTS: usize = 4096;

/// Called with a host name a client asked for (SNI) that has no certificate of its own; see
/// [`CertStore::set_on_miss`].
pub type MissHook = Option<Arc<dyn Fn(&str) + Send + Sync>>;

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("hosts", &self.hosts())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Stores (or replaces) the certificate for `host`, an exact name or `*.DOMAIN`.
    pub fn insert(&self, host: &str, key: Arc<CertifiedKey>) {
        write(&self.by_host).insert(normalize_host(host), key);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets the certificate stored for `host` (exact or `*.DOMAIN`); `true` if there was one.
    pub fn remove(&self, host: &str) -> bool {
        let removed = write(&self.by_host).remove(&normalize_host(host)).is_some();
        self.generation.fetch_add(1, Ordering::SeqCst);
        removed
    }

    /// Sets (or with `None` clears) the certificate served when no stored name matches.
    pub fn set_default(&self, key: Option<Arc<CertifiedKey>>) {
        *write(&self.default) = key;
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The certificate a client naming `host` gets: exact name, then `*.PARENT`, then the
    /// default.
    pub fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.lookup_named(host)
            .or_else(|| read(&self.default).clone())
    }

    /// Like [`CertStore::lookup`] without the default: the certificate stored for `host` itself
    /// or for its wildcard, i.e. whether `host` has a certificate of its own.
    pub fn lookup_named(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.lookup_normalized(&normalize_host(host))
    }

    /// [`CertStore::lookup_named`] of a host already normalized.
    fn lookup_normalized(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let by_host = read(&self.by_host);
        if let Some(k) = by_host.get(host) {
            return Some(k.clone());
        }
        let (_, parent) = host.split_once('.')?;
        by_host.get(&format!("*.{parent}")).cloned()
    }

    /// Whether a client naming `host` (a DNS name, any case, with or without `:port`) gets a
    /// certificate valid for it: one stored for the name or its wildcard, or a default
    /// certificate whose leaf names it (its subject alternative names, checked as a TLS client
    /// would by `rustls-webpki`). Used to decide whether plain HTTP is redirected to HTTPS.
    pub fn covers(&self, host: &str) -> bool {
        let host = normalize_host(host);
        // Taken before the certificates are looked at, and bumped after they change: an
        // answer is never remembered under a generation newer than what it saw.
        let generation = self.generation.load(Ordering::SeqCst);
        {
            let covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
            if covered.generation == generation {
                if let Some(&known) = covered.by_host.get(&host) {
                    return known;
                }
            }
        }
        let valid = self.lookup_normalized(&host).is_some() || self.default_covers(&host);
        let mut covered = self.covered.lock().unwrap_or_else(|e| e.into_inner());
        if covered.generation > generation {
            // Answers for newer certificates than this one saw are kept.
            return valid;
        }
        if covered.generation != generation || covered.by_host.len() >= COVERED_HOSTS {
            covered.generation = generation;
            covered.by_host.clear();
        }
        covered.by_host.insert(host, valid);
        valid
    }

    /// Whether the default certificate's leaf is valid for `host` (normalized), checked as a
    /// TLS client would by `rustls-webpki`.
    fn default_covers(&self, host: &str) -> bool {
        let Some(key) = read(&self.default).clone() else {
            return false;
        };
        let Ok(name) = rustls::pki_types::ServerName::try_from(host) else {
            return false;
        };
        key.cert.first().is_some_and(|leaf| {
            webpki::EndEntityCert::try_from(leaf)
                .and_then(|c| c.verify_is_valid_for_subject_name(&name))
                .is_ok()
        })
    }

    /// Sets (or with `None` clears) the TLS-ALPN-01 validation certificate for `host`
    /// (RFC 8737 §3: self-signed, with the `acmeIdentifier` extension), served only to
    /// handshakes that offer the `acme-tls/1` protocol alone.
    pub fn set_alpn_challenge(&self, host: &str, key: Option<Arc<CertifiedKey>>) {
        let host = normalize_host(host);
        let mut map = write(&self.alpn_challenges);
        match key {
            Some(k) => {
                map.insert(host, k);
            }
            None => {
                map.remove(&host);
            }
        }
    }

    /// Sets (or with `None` clears) the hook called, without waiting, for each handshake
    /// naming a host that has no certificate of its own (exact or wildcard); the handshake
    /// itself goes on with the default certificate or fails. ACME uses it to order a
    /// certificate on first need; the hook decides whether the name deserves one.
    pub fn set_on_miss(&self, hook: MissHook) {
        *write(&self.on_miss) = hook;
    }

    /// Host names (and wildcards) with a stored certificate, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut v: Vec<String> = read(&self.by_host).keys().cloned().collect();
        v.sort();
        v
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_owned);
        let acme_only = hello
            .alpn()
            .map(|mut protos| protos.all(|p| p == ACME_TLS_ALPN))
            .unwrap_or(false);
        if acme_only {
            // RFC 8737 §3: a validation handshake gets the challenge certificate or nothing.
            let name = name?;
            return read(&self.alpn_challenges)
                .get(&normalize_host(&name))
                .cloned();
        }
        match name {
            Some(n) => {
                let found = self.lookup_named(&n);
                if found.is_some() {
                    return found;
                }
                let hook = read(&self.on_miss).clone();
                if let Some(hook) = hook {
                    hook(&normalize_host(&n));
                }
                self.lookup(&n)
            }
            None => read(&self.default).clone(),
        }
    }
}

/// The `rustls` server configuration of the HTTPS ingress over `store`: TLS 1.2 and 1.3, ALPN
/// `h2`, `http/1.1` and `acme-tls/1` (the last so TLS-ALPN-01 validations can complete; the
/// ingress closes such a connection right after the handshake).
///
/// Its cryptography is AWS-LC's (`aws-lc-rs`, rustls's default provider): its X25519 key
/// exchange, the largest part of a handshake's CPU, takes about half of `ring`'s time.
/// The cipher suite is the server's choice among the client's: AES-128-GCM, then
/// ChaCha20-Poly1305, then AES-256-GCM (see [`suite_rank`]).
pub fn server_config(store: Arc<CertStore>) -> rustls::ServerConfig {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| suite_rank(s.suite()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    config
}

/// The ingress's preference among cipher suites, lowest first: AES-128-GCM (what Chrome and
/// Google's front ends agree on), ChaCha20-Poly1305, then AES-256-GCM. OpenSSL-based clients
/// (curl, Python, wrk) list AES-256-GCM with SHA-384 first; taken in their order, each
/// handshake's transcript hash and key schedule ran on SHA-384, which `ring` computed without
/// the CPU's SHA extensions (a tenth of a handshake's CPU, measured); SHA-256 uses them, and
/// AES-128 takes 10 rounds per block to AES-256's 14.
fn suite_rank(suite: rustls::CipherSuite) -> u8 {
    use rustls::CipherSuite as S;
    match suite {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        S::TLS13_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    }
}

/// The certificate and key files a user gave (`--tls-cert`, `--tls-key`): the [`CertStore`]'s
/// default certificate, reloaded when either file's content changes (read again on every look:
/// a few kilobytes, and it catches a rewrite in place, a rename over the file and a
/// `certbot`-style symlink swap alike, whatever the file system's timestamp resolution).
#[derive(Debug)]
pub struct UserCertificate {
    cert: PathBuf,
    key: PathBuf,
    /// The two files' bytes as last read.
    seen: Option<(Vec<u8>, Vec<u8>)>,
}

impl UserCertificate {
    /// The pair at `cert` (PEM chain, leaf first) and `key` (PEM private key); nothing is read
    /// yet.
    pub fn new(cert: PathBuf, key: PathBuf) -> Self {
        UserCertificate {
            cert,
            key,
            seen: None,
        }
    }

    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    fn make(&self, (cert, key): &(Vec<u8>, Vec<u8>)) -> Result<CertifiedKey, TlsError> {
        certified_key_from_pem(cert, key).map_err(|e| TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source: Box::new(e),
        })
    }

    /// Reads both files and makes the certificate.
    ///
    /// Errors: [`TlsError::Read`] naming the file that cannot be read; [`TlsError::Pair`]
    /// naming both files around what [`certified_key_from_pem`] refused.
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        self.make(&self.read()?)
    }

    /// Loads the pair into `store` as its default certificate (at start-up: an error means
    /// nothing was changed).
    pub fn install(&mut self, store: &CertStore) -> Result<(), TlsError> {
        let bytes = self.read()?;
        let key = self.make(&bytes)?;
        store.set_default(Some(Arc::new(key)));
        self.seen = Some(bytes);
        Ok(())
    }

    /// If either file changed since the last look, makes the pair again and, when it is good,
    /// `store`'s default; established connections keep the certificate they got. Returns
    /// `None` when nothing changed, else what the reload did (an error leaves the previous
    /// certificate in place; it is tried again once a file changes again).
    pub fn reload_if_changed(&mut self, store: &CertStore) -> Option<Result<(), TlsError>> {
        let bytes = match self.read() {
            Ok(b) => b,
            // A file being replaced may be missing for a moment: report it once.
            Err(e) => return self.seen.take().map(|_| Err(e)),
        };
        if self.seen.as_ref() == Some(&bytes) {
            return None;
        }
        let made = self.make(&bytes);
        self.seen = Some(bytes);
        Some(made.map(|key| store.set_default(Some(Arc::new(key)))))
    }
}

/// ACME HTTP-01 key authorizations by token, served by the HTTP listener at
/// [`HTTP01_PREFIX`]`TOKEN` as `text/plain` (RFC 8555 §8.3).
#[derive(Debug, Default)]
pub struct Http01Challenges {
    by_token: RwLock<HashMap<String, String>>,
}

impl Http01Challenges {
    /// An empty set.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Serves `key_authorization` for `token` until [`Http01Challenges::remove`].
    pub fn set(&self, token: &str, key_authorization: &str) {
        write(&self.by_token).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops serving `token`.
    pub fn remove(&self, token: &str) {
        write(&self.by_token).remove(token);
    }

    /// The key authorization to answer a request for `path`, if `path` is
    /// `/.well-known/acme-challenge/TOKEN` for a token being validated.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        read(&self.by_token).get(token).cloned()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        (ck.cert.pem(), ck.key_pair.serialize_pem())
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].to_vec()
    }

    #[test]
    fn loads_pem_and_refuses_bad_input() {
        let (cert, key) = self_signed(&["a.example.com"]);
        certified_key_from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert!(matches!(
            certified_key_from_pem(b"", key.as_bytes()),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            certified_key_from_pem(cert.as_bytes(), b"not a key"),
            Err(TlsError::Pem { .. })
        ));
        let cut = &cert.as_bytes()[..cert.len() / 2];
        let e = certified_key_from_pem(cut, key.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("-----END CERTIFICATE-----") && e.contains("cut short"),
            "{e}"
        );
        let (_, other_key) = self_signed(&["b.example.com"]);
        assert!(matches!(
            certified_key_from_pem(cert.as_bytes(), other_key.as_bytes()),
            Err(TlsError::Mismatch(_))
        ));
    }

    #[test]
    fn lookup_exact_then_wildcard_then_default() {
        let store = CertStore::new();
        let mk = |n: &str| {
            let (c, k) = self_signed(&[n]);
            Arc::new(certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap())
        };
        let exact = mk("hello.apps.example.com");
        let wild = mk("*.apps.example.com");
        let dflt = mk("fallback");
        assert!(store.lookup("hello.apps.example.com").is_none());
        store.insert("hello.apps.example.com", exact.clone());
        store.insert("*.apps.example.com", wild.clone());
        assert_eq!(
            leaf(&store.lookup("HELLO.apps.example.com.").unwrap()),
            leaf(&exact)
        );
        assert_eq!(
            leaf(&store.lookup("other.apps.example.com:443").unwrap()),
            leaf(&wild)
        );
        // A wildcard covers one label only.
        assert!(store.lookup("a.b.apps.example.com").is_none());
        store.set_default(Some(dflt.clone()));
        assert_eq!(
            leaf(&store.lookup("a.b.apps.example.com").unwrap()),
            leaf(&dflt)
        );
        assert!(store.lookup_named("a.b.apps.example.com").is_none());
        assert!(store.remove("hello.apps.example.com"));
        assert_eq!(
            leaf(&store.lookup("hello.apps.example.com").unwrap()),
            leaf(&wild)
        );
        assert_eq!(store.hosts(), vec!["*.apps.example.com".to_string()]);
    }

    /// Sends a client hello naming `sni` to a server over `store`; returns whether the server
    /// found a certificate to answer with.
    fn hello(store: &Arc<CertStore>, sni: &str) -> bool {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = rustls::ServerConnection::new(Arc::new(server_config(store.clone()))).unwrap();
        let mut buf = Vec::new();
        c.write_tls(&mut buf).unwrap();
        s.read_tls(&mut buf.as_slice()).unwrap();
        s.process_new_packets().is_ok()
    }

    #[test]
    fn the_server_picks_aes_128_gcm_whatever_the_clients_order() {
        let store = CertStore::new();
        let (c, k) = self_signed(&["order.test"]);
        store.set_default(Some(Arc::new(
            certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap(),
        )));
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(c.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        use rustls::crypto::ring::cipher_suite as cs;
        for (version, offered, want) in [
            // OpenSSL's order.
            (
                &rustls::version::TLS13,
                vec![
                    cs::TLS13_AES_256_GCM_SHA384,
                    cs::TLS13_CHACHA20_POLY1305_SHA256,
                    cs::TLS13_AES_128_GCM_SHA256,
                ],
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            ),
            (
                &rustls::version::TLS13,
                vec![
                    cs::TLS13_AES_256_GCM_SHA384,
                    cs::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ),
            (
                &rustls::version::TLS13,
                vec![cs::TLS13_AES_256_GCM_SHA384],
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            ),
            (
                &rustls::version::TLS12,
                vec![
                    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
        ] {
            let provider = rustls::crypto::CryptoProvider {
                cipher_suites: offered,
                ..rustls::crypto::ring::default_provider()
            };
            let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from("order.test").unwrap();
            let mut c = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
            let mut s =
                rustls::ServerConnection::new(Arc::new(server_config(store.clone()))).unwrap();
            while c.is_handshaking() || s.is_handshaking() {
                let mut buf = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut buf).unwrap();
                }
                s.read_tls(&mut buf.as_slice()).unwrap();
                s.process_new_packets().unwrap();
                buf.clear();
                while s.wants_write() {
                    s.write_tls(&mut buf).unwrap();
                }
                c.read_tls(&mut buf.as_slice()).unwrap();
                c.process_new_packets().unwrap();
            }
            assert_eq!(c.negotiated_cipher_suite().unwrap().suite(), want);
        }
    }

    #[test]
    fn handshake_for_unknown_host_calls_the_miss_hook() {
        let store = CertStore::new();
        let (c, k) = self_signed(&["known.example.com"]);
        store.insert(
            "known.example.com",
            Arc::new(certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap()),
        );
        let missed = Arc::new(RwLock::new(Vec::<String>::new()));
        let m = missed.clone();
        store.set_on_miss(Some(Arc::new(move |h: &str| {
            m.write().unwrap().push(h.to_owned())
        })));
        assert!(hello(&store, "known.example.com"));
        assert!(!hello(&store, "New.Example.com"));
        assert_eq!(*missed.read().unwrap(), vec!["new.example.com".to_string()]);
        store.set_on_miss(None);
        assert!(!hello(&store, "other.example.com"));
        assert_eq!(missed.read().unwrap().len(), 1);
    }

    #[test]
    fn covers_stored_names_and_the_default_certificates_names() {
        let store = CertStore::new();
        let mk = |n: &[&str]| {
            let (c, k) = self_signed(n);
            Arc::new(certified_key_from_pem(c.as_bytes(), k.as_bytes()).unwrap())
        };
        assert!(!store.covers("hello.apps.test"));
        store.set_default(Some(mk(&["*.apps.test", "apps.test"])));
        for (host, want) in [
            ("hello.apps.test", true),
            ("HELLO.apps.test:8443", true),
            ("apps.test", true),
            ("a.b.apps.test", false),
            ("hello.localhost", false),
            ("127.0.0.1", false),
            ("", false),
        ] {
            assert_eq!(store.covers(host), want, "{host}");
            // Asked again, the remembered answer is the same.
            assert_eq!(store.covers(host), want, "{host}");
        }
        assert!(!store.covers("only.example.com"));
        store.insert("only.example.com", mk(&["only.example.com"]));
        assert!(store.covers("only.example.com"));
        store.remove("only.example.com");
        assert!(!store.covers("only.example.com"));
        // Answers follow a replaced default certificate, and its removal.
        store.set_default(Some(mk(&["other.test"])));
        assert!(!store.covers("hello.apps.test"));
        assert!(store.covers("OTHER.test"));
        store.set_default(None);
        assert!(!store.covers("other.test"));
        // Past the hosts it remembers, it starts again and still answers.
        store.set_default(Some(mk(&["*.apps.test"])));
        for i in 0..COVERED_HOSTS + 10 {
            assert!(store.covers(&format!("h{i}.apps.test")));
        }
        assert!(store.covered.lock().unwrap().by_host.len() <= COVERED_HOSTS);
        assert!(!store.covers("apps.test"));
    }

    #[test]
    fn user_certificate_loads_reloads_and_keeps_the_old_one_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let write = |names: &[&str]| {
            let (c, k) = self_signed(names);
            std::fs::write(&cert, c).unwrap();
            std::fs::write(&key, k).unwrap();
        };
        let store = CertStore::new();
        let mut user = UserCertificate::new(cert.clone(), key.clone());
        let e = user.install(&store).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("cert.pem"),
            "{e}"
        );
        write(&["one.test"]);
        user.install(&store).unwrap();
        let first = leaf(&store.lookup("any").unwrap());
        assert!(user.reload_if_changed(&store).is_none());
        // A new pair is served.
        write(&["two.test", "three.test"]);
        assert!(matches!(user.reload_if_changed(&store), Some(Ok(()))));
        let second = leaf(&store.lookup("any").unwrap());
        assert_ne!(first, second);
        assert!(store.covers("three.test") && !store.covers("one.test"));
        // A key that is not the certificate's: the error names both files, the old one stays.
        let (_, other_key) = self_signed(&["x.test"]);
        std::fs::write(&key, other_key).unwrap();
        let e = user
            .reload_if_changed(&store)
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cert.pem") && e.contains("key.pem") && e.contains("does not belong"),
            "{e}"
        );
        assert_eq!(leaf(&store.lookup("any").unwrap()), second);
        assert!(user.reload_if_changed(&store).is_none());
        // Garbage in the certificate file at start-up: refused, naming it.
        std::fs::write(&cert, "garbage").unwrap();
        let mut fresh = UserCertificate::new(cert.clone(), key.clone());
        let e = fresh.install(&CertStore::new()).unwrap_err().to_string();
        assert!(e.contains("cert.pem") && e.contains("PEM"), "{e}");
    }

    #[test]
    fn http01_answers_only_known_tokens() {
        let c = Http01Challenges::new();
        c.set("tok", "tok.thumb");
        assert_eq!(
            c.answer("/.well-known/acme-challenge/tok").as_deref(),
            Some("tok.thumb")
        );
        assert_eq!(c.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.answer("/tok"), None);
        c.remove("tok");
        assert_eq!(c.answer("/.well-known/acme-challenge/tok"), None);
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("A.Example.COM."), "a.example.com");
        assert_eq!(normalize_host("a.example.com:8443"), "a.example.com");
        assert_eq!(normalize_host("[::1]:443"), "[::1]");
    }
}
