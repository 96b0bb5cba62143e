//! The HTTPS client that talks to the ACME CA: `hyper` with `rustls` (the `ring` provider),
//! trusting either the system's roots or only the certificates of a CA bundle
//! (`--acme-ca`, for a private CA such as a test `pebble`).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::AcmeError;

/// An `instant_acme` HTTP client; `ca_bundle` (PEM, one or more certificates) replaces the
/// system's roots when given.
///
/// Errors: [`AcmeError::CaBundle`] when the bundle cannot be read or holds no certificate, or
/// when no system roots can be loaded.
pub(crate) fn http_client(ca_bundle: Option<&Path>) -> Result<Box<dyn HttpClient>, AcmeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match ca_bundle {
        Some(path) => {
            let bad = |reason: String| AcmeError::CaBundle {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(bad("no CERTIFICATE block in it".into()));
            }
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| AcmeError::CaBundle {
                path: "(system roots)".into(),
                reason: e.to_string(),
            })?,
    };
    let connector = builder.https_only().enable_http1().enable_http2().build();
    let client: Client<_, BodyWrapper<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(client))
}
