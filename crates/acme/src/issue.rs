//! One order for one host name (RFC 8555 §7.4): new-order, answer each pending authorization
//! with the chosen challenge, wait for the order to be ready, finalize with a CSR for a fresh
//! ECDSA P-256 key, and download the chain.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use skiff_tls::{CertStore, Http01Challenges};

use crate::{AcmeError, ChallengeKind};

/// A certificate chain and its private key, both PEM.
pub(crate) struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
}

/// What answers challenges: the HTTP listener's tokens, the HTTPS listener's certificates,
/// the DNS hook.
pub(crate) struct Responders<'a> {
    pub http01: &'a Http01Challenges,
    pub store: &'a CertStore,
    pub dns_hook: Option<&'a Path>,
}

/// Takes down every HTTP-01 and TLS-ALPN-01 answer it set up when dropped, whatever happened
/// (DNS records are cleared by [`issue`] itself, since that runs a command).
struct Answers<'a> {
    http01: &'a Http01Challenges,
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
    dns_records: Vec<(String, String)>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.http01.remove(t);
        }
        for h in &self.alpn_hosts {
            self.store.set_alpn_challenge(h, None);
        }
    }
}

/// How long the CA may take to validate and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(120));

/// Orders a certificate for `host` from `account`, answering with `kind`.
///
/// Errors: [`AcmeError::NoChallenge`] when the CA does not offer `kind`,
/// [`AcmeError::Validation`] with the CA's detail when validation fails, [`AcmeError::Acme`]
/// for protocol and network failures, [`AcmeError::Rcgen`] for key generation.
pub(crate) async fn issue(
    account: &Account,
    host: &str,
    kind: ChallengeKind,
    responders: &Responders<'_>,
) -> Result<Issued, AcmeError> {
    let mut answers = Answers {
        http01: responders.http01,
        store: responders.store,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
        dns_records: Vec::new(),
    };
    let result = run_order(account, host, kind, responders, &mut answers).await;
    if let Some(hook) = responders.dns_hook {
        for (name, value) in std::mem::take(&mut answers.dns_records) {
            if let Err(e) = run_dns_hook(hook, "clear", &name, &value).await {
                tracing::warn!(name, error = %e, "the DNS hook did not clear a record");
            }
        }
    }
    result
}

async fn run_order(
    account: &Account,
    host: &str,
    kind: ChallengeKind,
    responders: &Responders<'_>,
    answers: &mut Answers<'_>,
) -> Result<Issued, AcmeError> {
    let (http01, store) = (responders.http01, responders.store);
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut auths = order.authorizations();
    while let Some(auth) = auths.next().await {
        let mut auth = auth?;
        match auth.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => {
                return Err(AcmeError::Validation {
                    host: host.to_owned(),
                    kind,
                    detail: format!("the authorization is {other:?}"),
                })
            }
        }
        let offered: Vec<String> = auth
            .challenges
            .iter()
            .map(|c| challenge_name(&c.r#type))
            .collect();
        let Some(mut challenge) = auth.challenge(kind.acme_type()) else {
            return Err(AcmeError::NoChallenge {
                host: host.to_owned(),
                offered: offered.join(", "),
            });
        };
        let key_auth = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                http01.set(&challenge.token, key_auth.as_str());
                answers.tokens.push(challenge.token.clone());
            }
            ChallengeKind::TlsAlpn01 => {
                let cert = alpn_certificate(host, key_auth.digest().as_ref())?;
                store.set_alpn_challenge(host, Some(Arc::new(cert)));
                answers.alpn_hosts.push(host.to_owned());
            }
            ChallengeKind::Dns01 => {
                let hook = responders.dns_hook.ok_or_else(|| AcmeError::Host {
                    host: host.to_owned(),
                    reason: "DNS-01 needs --acme-dns-hook".into(),
                })?;
                let name = format!("_acme-challenge.{}", host.trim_start_matches("*."));
                let value = key_auth.dns_value();
                answers.dns_records.push((name.clone(), value.clone()));
                run_dns_hook(hook, "set", &name, &value).await?;
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(|e| validation(host, kind, e))?;
    }

    let status = order
        .poll_ready(&POLL)
        .await
        .map_err(|e| validation(host, kind, e))?;
    if status != OrderStatus::Ready {
        let mut detail = format!("the order is {status:?}");
        let mut auths = order.authorizations();
        while let Some(Ok(mut auth)) = auths.next().await {
            if let Ok(state) = auth.refresh().await {
                if let Some(err) = state.challenges.iter().find_map(|c| c.error.as_ref()) {
                    detail = err.detail.clone().unwrap_or_else(|| err.to_string());
                }
            }
        }
        return Err(AcmeError::Validation {
            host: host.to_owned(),
            kind,
            detail,
        });
    }

    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Runs `hook OP NAME VALUE` (at most two minutes).
///
/// Errors: [`AcmeError::DnsHook`] when it cannot run, exits non-zero or takes too long.
async fn run_dns_hook(hook: &Path, op: &str, name: &str, value: &str) -> Result<(), AcmeError> {
    let fail = |reason: String| AcmeError::DnsHook {
        hook: hook.display().to_string(),
        op: op.to_owned(),
        name: name.to_owned(),
        reason,
    };
    let run = tokio::process::Command::new(hook)
        .args([op, name, value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .map_err(|_| fail("did not finish within 2 minutes".into()))?
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The TLS-ALPN-01 validation certificate for `host` (RFC 8737 §3): self-signed, `host` as its
/// only subject alternative name, and the critical `acmeIdentifier` extension holding the
/// SHA-256 digest of the key authorization.
pub(crate) fn alpn_certificate(
    host: &str,
    key_auth_digest: &[u8],
) -> Result<rustls::sign::CertifiedKey, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![host.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_auth_digest)];
    let cert = params.self_signed(&key)?;
    // Not `skiff_tls::certified_key_from_pem`: its key check parses the certificate with
    // webpki, which refuses the critical `acmeIdentifier` extension.
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|e| {
        AcmeError::Certificate {
            host: host.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    ))
}

/// A problem document the CA returns while validating is a validation failure (so the next
/// challenge type is tried); anything else stays what it is.
fn validation(host: &str, kind: ChallengeKind, e: instant_acme::Error) -> AcmeError {
    match e {
        instant_acme::Error::Api(p) => AcmeError::Validation {
            host: host.to_owned(),
            kind,
            detail: p.to_string(),
        },
        e => AcmeError::Acme(e),
    }
}

fn challenge_name(t: &ChallengeType) -> String {
    match t {
        ChallengeType::Http01 => "http-01".into(),
        ChallengeType::Dns01 => "dns-01".into(),
        ChallengeType::TlsAlpn01 => "tls-alpn-01".into(),
        ChallengeType::DeviceAttest01 => "device-attest-01".into(),
        ChallengeType::Unknown(s) => s.clone(),
        other => format!("{other:?}"),
    }
}
