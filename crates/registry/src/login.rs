//! Checking credentials the way `docker login` does: `GET /v2/` with basic auth; a registry
//! that answers with a `Bearer` challenge instead is asked for a token at its realm with the
//! same credentials. `oci-client` has no call that only authenticates, hence this one request
//! (or two) with `reqwest`, the client `oci-client` itself uses.

use std::time::Duration;

use crate::error::RegistryError;
use crate::pull::is_loopback;
use crate::settings::RegistrySettings;

/// How a registry is reached: over HTTPS (verifying its certificate against the system's
/// roots and the registry's CA file, or, for an insecure registry, accepting any certificate)
/// or over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// HTTPS; `verify` false accepts any certificate (insecure registries only).
    Https { verify: bool },
    /// Plain HTTP (an insecure registry that does not speak HTTPS).
    Http,
}

impl Transport {
    /// `"https"` or `"http"`.
    pub(crate) fn scheme(self) -> &'static str {
        match self {
            Transport::Https { .. } => "https",
            Transport::Http => "http",
        }
    }
}

/// Whether `registry` is insecure as Docker counts it: marked `--insecure`, or on loopback
/// (Docker's `insecure-registries` holds 127.0.0.0/8 by default) without a CA file given.
pub fn is_insecure(registry: &str, settings: &RegistrySettings) -> bool {
    settings.insecure || (is_loopback(registry) && settings.ca_file.is_none())
}

/// The transport for `registry` under `settings`, by Docker's rule for insecure registries
/// ("Test an insecure registry" in Docker's docs): HTTPS first, tolerating certificate errors,
/// and plain HTTP only when HTTPS is not answered at all. A registry with a CA file (and not
/// marked insecure) and every other registry is HTTPS, verified. The probe is one
/// `GET https://REGISTRY/v2/` (any HTTP answer, 401 included, means HTTPS is served).
pub(crate) async fn transport(registry: &str, settings: &RegistrySettings) -> Transport {
    if !is_insecure(registry, settings) {
        return Transport::Https { verify: true };
    }
    let probe = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")))
        .build();
    let Ok(probe) = probe else {
        return Transport::Http;
    };
    match probe.get(format!("https://{registry}/v2/")).send().await {
        Ok(_) => Transport::Https { verify: false },
        Err(_) => Transport::Http,
    }
}

/// Parse `Bearer realm="...",service="...",scope="..."` into (realm, service).
fn bearer_challenge(header: &str) -> Option<(String, Option<String>)> {
    let rest = header
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| header.trim().strip_prefix("bearer "))?;
    let mut realm = None;
    let mut service = None;
    // Values are quoted strings without commas inside in every registry seen; split on '",'.
    for part in rest.split("\",") {
        let (k, v) = part.split_once('=')?;
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "realm" => realm = Some(v),
            "service" => service = Some(v),
            _ => {}
        }
    }
    Some((realm?, service))
}

/// Check that `settings`' credentials (or anonymous access, without any) are accepted by
/// `registry`. Errors: `Unreachable`, `LoginRefused` with the registry's reason.
pub async fn check_login(registry: &str, settings: &RegistrySettings) -> Result<(), RegistryError> {
    let transport = transport(registry, settings).await;
    let mut builder = reqwest::Client::builder()
        .danger_accept_invalid_certs(transport == Transport::Https { verify: false })
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("skiff/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &settings.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            RegistryError::io(format!("cannot read the CA file {}", ca.display()), e)
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| RegistryError::Config {
            path: ca.display().to_string(),
            reason: format!("not a PEM certificate ({e})"),
        })?;
        builder = builder.add_root_certificate(cert);
    }
    let http = builder.build().map_err(|e| RegistryError::Registry {
        reference: registry.to_string(),
        reason: format!("cannot set up the HTTP client ({e})"),
    })?;
    let unreachable = |e: reqwest::Error| RegistryError::Unreachable {
        registry: registry.to_string(),
        reason: crate::pull::chain(&e),
    };
    let refused = |reason: String| RegistryError::LoginRefused {
        registry: registry.to_string(),
        reason,
    };
    let with_auth = |req: reqwest::RequestBuilder| match (&settings.username, &settings.password) {
        (Some(u), p) => req.basic_auth(u, p.as_ref()),
        _ => req,
    };
    let url = format!("{}://{registry}/v2/", transport.scheme());
    let resp = with_auth(http.get(&url))
        .send()
        .await
        .map_err(unreachable)?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    if status != reqwest::StatusCode::UNAUTHORIZED {
        return Err(RegistryError::Registry {
            reference: registry.to_string(),
            reason: format!("GET {url} answered {status}; is it an OCI distribution registry?"),
        });
    }
    let challenge = resp
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(bearer_challenge);
    let Some((realm, service)) = challenge else {
        return Err(refused(if settings.username.is_some() {
            "the password was refused for that user name".into()
        } else {
            "it wants a user name and password".into()
        }));
    };
    let mut query: Vec<(&str, String)> = Vec::new();
    if let Some(s) = service {
        query.push(("service", s));
    }
    if let Some(u) = &settings.username {
        query.push(("account", u.clone()));
    }
    let resp = with_auth(http.get(&realm).query(&query))
        .send()
        .await
        .map_err(unreachable)?;
    if resp.status().is_success() {
        return Ok(());
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(refused(format!(
        "its token service {realm} answered {status} {}",
        body.trim().chars().take(200).collect::<String>()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            bearer_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a:pull""#
            ),
            Some((
                "https://auth.example/token".into(),
                Some("registry.example".into())
            ))
        );
        assert_eq!(
            bearer_challenge(r#"Bearer realm="http://127.0.0.1:1/v2/token""#),
            Some(("http://127.0.0.1:1/v2/token".into(), None))
        );
        assert_eq!(bearer_challenge(r#"Basic realm="x""#), None);
    }
}
