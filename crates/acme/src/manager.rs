//! [`AcmeManager`]: which host gets a certificate when, one order at a time per host, at most
//! [`AcmeConfig::max_in_flight`] at once, with per-host exponential backoff after failures.
//!
//! Triggers: [`AcmeManager::want`] (a TLS handshake named a host with no certificate, or a
//! service or domain mapping was created), the periodic renewal check
//! ([`AcmeManager::spawn_renewals`]), and [`AcmeManager::renew_all_now`] (the server's
//! SIGHUP). A new certificate replaces the old one in the [`CertStore`] by an `Arc` swap, so
//! connections already established keep theirs.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use instant_acme::{Account, AccountCredentials, ChallengeType, NewAccount};
use skiff_tls::{normalize_host, CertStore, Http01Challenges};
use tokio::sync::Semaphore;

use crate::storage::{self, AcmeDir, CertInfo};
use crate::{client, issue, policy, AcmeError};

/// Whether Skiff routes a host name (a service host under `--domain`, a domain mapping's
/// host); only such names are ever ordered, never an arbitrary name a client sends as SNI.
pub type HostFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// A challenge type Skiff can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// `http-01`: the key authorization at `http://HOST/.well-known/acme-challenge/TOKEN`
    /// (RFC 8555 §8.3), served by the HTTP listener from [`Http01Challenges`]; the CA connects
    /// to port 80 (or the port it is configured for).
    Http01,
    /// `tls-alpn-01`: a self-signed certificate for a handshake offering `acme-tls/1`
    /// (RFC 8737), served by the HTTPS listener from [`CertStore`]; the CA connects to 443.
    TlsAlpn01,
    /// `dns-01`: a TXT record at `_acme-challenge.DOMAIN` (RFC 8555 §8.4), set and cleared by
    /// the [`AcmeConfig::dns_hook`] command; the only way to a wildcard (`*.DOMAIN`).
    Dns01,
}

impl ChallengeKind {
    pub(crate) fn acme_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
            ChallengeKind::Dns01 => ChallengeType::Dns01,
        }
    }
}

impl fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        })
    }
}

/// How the manager reaches its CA and keeps its files.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL (`--acme-directory`), `https://` only.
    pub directory: String,
    /// The account's contact (`--acme-email`), sent as `mailto:EMAIL`.
    pub email: Option<String>,
    /// PEM certificates that sign the directory's own HTTPS certificate (`--acme-ca`); when
    /// given they replace the system's roots.
    pub ca_bundle: Option<PathBuf>,
    /// Where accounts and certificates are kept: `DATA/acme`.
    pub dir: PathBuf,
    /// The challenges this server can answer, in the order to try them (HTTP-01 needs the
    /// HTTP listener, TLS-ALPN-01 the HTTPS one).
    pub challenges: Vec<ChallengeKind>,
    /// At most this many orders at once (further hosts wait their turn).
    pub max_in_flight: usize,
    /// How often stored certificates are checked for renewal.
    pub check_every: Duration,
    /// The DNS-01 hook (`--acme-dns-hook CMD`), run as `CMD set NAME VALUE` before the CA is
    /// asked to validate and `CMD clear NAME VALUE` after, NAME being
    /// `_acme-challenge.DOMAIN` (no trailing dot) and VALUE the TXT record's text; it must
    /// exit 0 once the record is published. Needed for wildcard names only.
    pub dns_hook: Option<PathBuf>,
}

impl AcmeConfig {
    /// A configuration with Skiff's defaults: both challenges (HTTP-01 first), 4 orders at
    /// once, a renewal check every hour.
    pub fn new(directory: impl Into<String>, dir: impl Into<PathBuf>) -> AcmeConfig {
        AcmeConfig {
            directory: directory.into(),
            email: None,
            ca_bundle: None,
            dir: dir.into(),
            challenges: vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
            max_in_flight: 4,
            check_every: Duration::from_secs(3600),
            dns_hook: None,
        }
    }
}

/// Where a host's certificate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertStatus {
    /// Skiff does not route the host, so it gets no certificate.
    NotRouted,
    /// Nothing asked for one yet.
    None,
    /// An order is queued or under way (a certificate may already be served meanwhile).
    Issuing,
    /// A certificate is served.
    Ready(CertInfo),
    /// The last order failed; the next one waits until `retry_in` has passed.
    Failed {
        /// The error of the last attempt.
        error: String,
        /// Failed orders in a row.
        failures: u32,
        /// Time left before the next attempt.
        retry_in: Duration,
    },
}

#[derive(Debug, Default)]
struct HostState {
    cert: Option<CertInfo>,
    issuing: bool,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// Obtains, stores, serves and renews ACME certificates; see the module docs.
pub struct AcmeManager {
    cfg: AcmeConfig,
    dir: AcmeDir,
    store: Arc<CertStore>,
    http01: Arc<Http01Challenges>,
    filter: HostFilter,
    account: tokio::sync::Mutex<Option<Account>>,
    hosts: Mutex<HashMap<String, HostState>>,
    permits: Semaphore,
    runtime: tokio::runtime::Handle,
    orders: AtomicU64,
}

impl fmt::Debug for AcmeManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeManager")
            .field("directory", &self.cfg.directory)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn is_account_missing(e: &AcmeError) -> bool {
    matches!(e, AcmeError::Acme(instant_acme::Error::Api(p))
        if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist"))
}

impl AcmeManager {
    /// A manager serving into `store` and `http01`, ordering only hosts `filter` accepts.
    /// Must be called within a tokio runtime (orders run on it).
    ///
    /// Errors: [`AcmeError::DirectoryUrl`] for a directory that is not `https://`,
    /// [`AcmeError::CaBundle`] for an unusable CA bundle, [`AcmeError::Io`] when `DATA/acme`
    /// cannot be created. Nothing is sent to the CA yet.
    pub fn new(
        cfg: AcmeConfig,
        store: Arc<CertStore>,
        http01: Arc<Http01Challenges>,
        filter: HostFilter,
    ) -> Result<Arc<AcmeManager>, AcmeError> {
        if !cfg.directory.starts_with("https://") {
            return Err(AcmeError::DirectoryUrl(cfg.directory.clone()));
        }
        client::http_client(cfg.ca_bundle.as_deref())?;
        storage::create_dir(&cfg.dir)?;
        Ok(Arc::new(AcmeManager {
            dir: AcmeDir::new(cfg.dir.clone()),
            permits: Semaphore::new(cfg.max_in_flight.max(1)),
            cfg,
            store,
            http01,
            filter,
            account: tokio::sync::Mutex::new(None),
            hosts: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            orders: AtomicU64::new(0),
        }))
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, HostState>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts every certificate stored under `DATA/acme/certs/` into the store (so a restart
    /// orders nothing new) and returns the hosts loaded. A stored pair that cannot be used is
    /// skipped with a warning and ordered anew when next needed.
    pub fn load_stored(&self) -> Vec<String> {
        let mut loaded = Vec::new();
        for (host, chain, key) in self.dir.stored_certs() {
            let ck = skiff_tls::certified_key_from_pem(chain.as_bytes(), key.as_bytes());
            let info = CertInfo::from_pem(&host, &chain);
            match (ck, info) {
                (Ok(ck), Ok(info)) => {
                    self.store.insert(&host, Arc::new(ck));
                    self.hosts().entry(host.clone()).or_default().cert = Some(info);
                    loaded.push(host);
                }
                (Err(e), _) => tracing::warn!(host, error = %e, "stored certificate not loaded"),
                (_, Err(e)) => tracing::warn!(host, error = %e, "stored certificate not loaded"),
            }
        }
        loaded
    }

    /// Orders placed with the CA since this manager started (renewals included).
    pub fn orders_placed(&self) -> u64 {
        self.orders.load(Ordering::Relaxed)
    }

    /// Asks for a certificate for `host` in the background, unless Skiff does not route it,
    /// it has a certificate that is not due for renewal, an order is already under way, or
    /// the host is backing off after a failure. Never blocks; safe to call from a TLS
    /// handshake.
    pub fn want(self: &Arc<Self>, host: &str) {
        self.start(host, false);
    }

    /// Renews every certificate this manager holds now, whatever its age or backoff (the
    /// server's SIGHUP). Returns the hosts whose renewal started.
    pub fn renew_all_now(self: &Arc<Self>) -> Vec<String> {
        let hosts: Vec<String> = self
            .hosts()
            .iter()
            .filter(|(_, s)| s.cert.is_some())
            .map(|(h, _)| h.clone())
            .collect();
        hosts.into_iter().filter(|h| self.start(h, true)).collect()
    }

    /// Starts the renewal check: every [`AcmeConfig::check_every`], each certificate with less
    /// than a third of its lifetime left is renewed (subject to backoff). Stops when the
    /// manager is dropped.
    pub fn spawn_renewals(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = self.cfg.check_every;
        self.runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(m) = weak.upgrade() else { break };
                let due: Vec<String> = m
                    .hosts()
                    .iter()
                    .filter(|(_, s)| {
                        s.cert.as_ref().is_some_and(|c| {
                            policy::needs_renewal(c.not_before, c.not_after, unix_now())
                        })
                    })
                    .map(|(h, _)| h.clone())
                    .collect();
                for h in due {
                    m.want(&h);
                }
            }
        });
    }

    /// Where `host`'s certificate stands.
    pub fn status(&self, host: &str) -> CertStatus {
        let host = normalize_host(host);
        if !(self.filter)(&host) {
            return CertStatus::NotRouted;
        }
        let hosts = self.hosts();
        let Some(s) = hosts.get(&host) else {
            return CertStatus::None;
        };
        if s.issuing {
            return CertStatus::Issuing;
        }
        if let Some(c) = &s.cert {
            if s.failures == 0 {
                return CertStatus::Ready(c.clone());
            }
        }
        match (&s.last_error, s.retry_at) {
            (Some(e), Some(at)) => CertStatus::Failed {
                error: e.clone(),
                failures: s.failures,
                retry_in: at.saturating_duration_since(Instant::now()),
            },
            _ => s
                .cert
                .clone()
                .map(CertStatus::Ready)
                .unwrap_or(CertStatus::None),
        }
    }

    /// Starts an order for `host` if the rules allow; `true` if one started.
    fn start(self: &Arc<Self>, host: &str, force: bool) -> bool {
        let host = normalize_host(host);
        if host.is_empty() || host.starts_with('[') || !(self.filter)(&host) {
            return false;
        }
        if host.starts_with("*.") && self.cfg.dns_hook.is_none() {
            return false;
        }
        {
            let mut hosts = self.hosts();
            let s = hosts.entry(host.clone()).or_default();
            if s.issuing {
                return false;
            }
            if !force {
                if let Some(at) = s.retry_at {
                    if Instant::now() < at {
                        return false;
                    }
                }
                if let Some(c) = &s.cert {
                    if !policy::needs_renewal(c.not_before, c.not_after, unix_now()) {
                        return false;
                    }
                }
            }
            s.issuing = true;
        }
        let me = self.clone();
        self.runtime.spawn(async move {
            let _ = me.obtain(&host).await;
        });
        true
    }

    /// Orders a certificate for `host` now (waiting for a free order slot), stores it and
    /// serves it; returns what was issued. Ignores backoff; [`AcmeManager::want`] is the
    /// rate-limited way in.
    ///
    /// Errors: [`AcmeError::Host`] for a host Skiff does not route; otherwise what the order,
    /// the CA or the files failed with (after trying each challenge kind in turn).
    pub async fn obtain(&self, host: &str) -> Result<CertInfo, AcmeError> {
        let host = normalize_host(host);
        if !(self.filter)(&host) {
            return Err(AcmeError::Host {
                host,
                reason: "Skiff does not route this host".into(),
            });
        }
        let result = self.order(&host).await;
        let mut hosts = self.hosts();
        let s = hosts.entry(host.clone()).or_default();
        s.issuing = false;
        match &result {
            Ok(info) => {
                tracing::info!(host, serial = info.serial, "ACME certificate installed");
                s.cert = Some(info.clone());
                s.failures = 0;
                s.retry_at = None;
                s.last_error = None;
            }
            Err(e) => {
                s.failures += 1;
                let wait = policy::backoff(s.failures);
                tracing::warn!(host, error = %e, failures = s.failures, retry_in = ?wait,
                    "ACME certificate not obtained");
                s.retry_at = Some(Instant::now() + wait);
                s.last_error = Some(e.to_string());
            }
        }
        result
    }

    /// One attempt per challenge kind, in order, until one yields a certificate.
    async fn order(&self, host: &str) -> Result<CertInfo, AcmeError> {
        let host = host.to_owned();
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let wildcard = host.starts_with("*.");
        if wildcard && self.cfg.dns_hook.is_none() {
            return Err(AcmeError::Host {
                host,
                reason:
                    "a wildcard certificate needs the DNS-01 challenge; give --acme-dns-hook CMD"
                        .into(),
            });
        }
        let kinds = if wildcard {
            vec![ChallengeKind::Dns01]
        } else {
            self.cfg.challenges.clone()
        };
        let mut last = None;
        for kind in kinds {
            let mut attempt = self.issue_once(&host, kind).await;
            if attempt.as_ref().err().is_some_and(is_account_missing) {
                // The CA forgot the account (a test CA restarted): register anew, once.
                tracing::warn!("the ACME CA does not know the stored account; registering again");
                *self.account.lock().await = None;
                let _ = std::fs::remove_file(self.dir.account_file(&self.cfg.directory));
                attempt = self.issue_once(&host, kind).await;
            }
            match attempt {
                Ok(issued) => return self.install(&host, &issued),
                Err(e @ (AcmeError::Validation { .. } | AcmeError::NoChallenge { .. })) => {
                    tracing::info!(host, %kind, error = %e, "ACME challenge failed; trying the next kind");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| AcmeError::Host {
            host,
            reason: "no challenge type is enabled (an HTTP or HTTPS listener is needed)".into(),
        }))
    }

    async fn issue_once(
        &self,
        host: &str,
        kind: ChallengeKind,
    ) -> Result<issue::Issued, AcmeError> {
        let account = self.account().await?;
        self.orders.fetch_add(1, Ordering::Relaxed);
        let responders = issue::Responders {
            http01: &self.http01,
            store: &self.store,
            dns_hook: self.cfg.dns_hook.as_deref(),
        };
        issue::issue(&account, host, kind, &responders).await
    }

    fn install(&self, host: &str, issued: &issue::Issued) -> Result<CertInfo, AcmeError> {
        let info = CertInfo::from_pem(host, &issued.chain_pem)?;
        let ck = skiff_tls::certified_key_from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
        )
        .map_err(|e| AcmeError::Certificate {
            host: host.to_owned(),
            reason: e.to_string(),
        })?;
        self.dir
            .store_cert(host, &issued.chain_pem, &issued.key_pem)?;
        self.store.insert(host, Arc::new(ck));
        Ok(info)
    }

    /// The account for the configured directory: loaded from `DATA/acme/accounts/`, or
    /// registered (terms of service agreed, `mailto:` contact) and stored there.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(a) = &*slot {
            return Ok(a.clone());
        }
        let file = self.dir.account_file(&self.cfg.directory);
        let http = client::http_client(self.cfg.ca_bundle.as_deref())?;
        let account = match std::fs::read(&file) {
            Ok(bytes) => {
                let creds: AccountCredentials =
                    serde_json::from_slice(&bytes).map_err(|source| AcmeError::AccountFile {
                        path: file.display().to_string(),
                        source,
                    })?;
                Account::builder_with_http(http)
                    .from_credentials(creds)
                    .await?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let contact = self.cfg.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = Account::builder_with_http(http)
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.cfg.directory.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_vec(&creds).map_err(|source| AcmeError::AccountFile {
                    path: file.display().to_string(),
                    source,
                })?;
                if let Some(parent) = file.parent() {
                    storage::create_dir(parent)?;
                }
                storage::write_private(&file, &json, 0o600)?;
                tracing::info!(
                    account = account.id(),
                    directory = self.cfg.directory,
                    "ACME account registered"
                );
                account
            }
            Err(source) => {
                return Err(AcmeError::Io {
                    path: file.display().to_string(),
                    source,
                })
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }
}
