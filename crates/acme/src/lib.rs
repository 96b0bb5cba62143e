//! Certificates from an ACME CA (RFC 8555) for Skiff's HTTPS ingress.
//!
//! [`AcmeManager`] keeps one account per directory URL, obtains a certificate per host name
//! with the HTTP-01 (RFC 8555 §8.3) or TLS-ALPN-01 (RFC 8737) challenge — whichever the CA
//! offers, HTTP-01 first, the other after a failed attempt — or, for a wildcard, DNS-01
//! (RFC 8555 §8.4) through a user's hook command, stores it under
//! `DATA/acme/certs/HOST/` and puts it into the ingress's [`skiff_tls::CertStore`], renews it
//! once less than a third of its lifetime is left, and backs off exponentially per host after
//! a failure. Only host names the caller's [`HostFilter`] accepts (the hosts Skiff routes) are
//! ever ordered, and at most [`AcmeConfig::max_in_flight`] orders run at once.
//!
//! - `client.rs`: the HTTPS client that talks to the CA (optionally trusting a private CA).
//! - `storage.rs`: the account and certificate files under `DATA/acme/`.
//! - `issue.rs`: one order, from new-order to the certificate chain.
//! - `policy.rs`: when to renew and how long to back off (pure functions).
//! - `manager.rs`: [`AcmeManager`], which ties the others together.

mod client;
mod issue;
mod manager;
pub mod policy;
pub mod storage;

pub use manager::{AcmeConfig, AcmeManager, CertStatus, ChallengeKind, HostFilter};
pub use storage::CertInfo;

/// Errors of obtaining, storing and loading ACME certificates.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA bundle given for the directory's HTTPS (`--acme-ca`) could not be used.
    #[error("cannot use the ACME CA bundle {path}: {reason}")]
    CaBundle {
        /// The file named.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory URL is not an `https://` URL.
    #[error("the ACME directory {0:?} is not an https:// URL; give the CA's directory URL, e.g. https://acme-v02.api.letsencrypt.org/directory")]
    DirectoryUrl(String),
    /// The host name cannot be ordered (not a DNS name, or not one Skiff routes).
    #[error("no certificate is ordered for {host:?}: {reason}")]
    Host {
        /// The host name.
        host: String,
        /// Why.
        reason: String,
    },
    /// The CA or the protocol exchange with it failed.
    #[error("ACME CA: {}", chain(.0))]
    Acme(#[from] instant_acme::Error),
    /// The CA offered no challenge type this server can answer.
    #[error("the ACME CA offers no challenge Skiff can answer for {host:?} (offered: {offered})")]
    NoChallenge {
        /// The host name.
        host: String,
        /// The challenge types offered, comma-separated.
        offered: String,
    },
    /// The DNS-01 hook failed.
    #[error("the ACME DNS hook `{hook} {op} {name} ...` failed: {reason}")]
    DnsHook {
        /// The command.
        hook: String,
        /// `set` or `clear`.
        op: String,
        /// The TXT record's name.
        name: String,
        /// How it failed.
        reason: String,
    },
    /// The CA could not validate the challenge.
    #[error("the ACME CA could not validate {kind} for {host:?}: {detail}")]
    Validation {
        /// The host name.
        host: String,
        /// The challenge type tried.
        kind: ChallengeKind,
        /// The CA's problem detail.
        detail: String,
    },
    /// Making a key, CSR or challenge certificate failed.
    #[error("cannot make a key or certificate request: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A certificate (issued or stored) could not be parsed or used.
    #[error("certificate for {host:?} is not usable: {reason}")]
    Certificate {
        /// The host name.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing under `DATA/acme/` failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored account file could not be read.
    #[error("ACME account file {path}: {source}")]
    AccountFile {
        /// The file.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// An error with its sources, `: `-joined (a connection error's cause is in its sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}
