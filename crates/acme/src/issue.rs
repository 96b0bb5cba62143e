//! One order for one host name (RFC 8555 §7.4): new-order, answer each pending authorization
//! with the chosen challenge, wait for the order to be ready, finalize with a CSR for a fresh
//! ECDSA P-256 key, and download the chain.

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

/// Takes down every challenge answer it set up when dropped, whatever happened.
struct Answers<'a> {
    http01: &'a Http01Challenges,
    store: &'a CertStore,
    tokens: Vec<String>,
    alpn_hosts: Vec<String>,
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
    http01: &Http01Challenges,
    store: &CertStore,
) -> Result<Issued, AcmeError> {
    let identifiers = [Identifier::Dns(host.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut answers = Answers {
        http01,
        store,
        tokens: Vec::new(),
        alpn_hosts: Vec::new(),
    };
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
    drop(answers);

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
