//! The REST routes of domain mappings, as gcloud's Cloud Run v1 client calls them (the
//! regional endpoint's `namespaces.domainmappings` and the global `projects.authorizeddomains`):
//!
//! - `GET|POST /apis/domains.cloudrun.com/v1/namespaces/NS/domainmappings`
//! - `GET|DELETE /apis/domains.cloudrun.com/v1/namespaces/NS/domainmappings/DOMAIN`
//! - `GET /v1/projects/P/authorizeddomains` and
//!   `GET /apis/domains.cloudrun.com/v1/namespaces/NS/authorizeddomains`
//!
//! Callers put them behind the admin token.

use crate::error::DomainsError;
use crate::mapping::DomainMapping;
use crate::DomainMappings;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

impl IntoResponse for DomainsError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(self.json())).into_response()
    }
}

type Result<T> = std::result::Result<T, DomainsError>;
type St = State<Arc<DomainMappings>>;

/// The domain mapping routes over `mappings`.
pub fn router(mappings: Arc<DomainMappings>) -> axum::Router {
    let base = "/apis/domains.cloudrun.com/v1/namespaces/{ns}";
    axum::Router::new()
        .route(&format!("{base}/domainmappings"), get(list).post(create))
        .route(
            &format!("{base}/domainmappings/{{domain}}"),
            get(describe).delete(delete),
        )
        .route(&format!("{base}/authorizeddomains"), get(authorized))
        .route("/v1/projects/{project}/authorizeddomains", get(authorized))
        .with_state(mappings)
}

/// Parses a DomainMapping body. Its `status` is the server's and is ignored; a field of `spec`
/// Skiff does not know is refused by name.
fn parse(body: &[u8]) -> Result<DomainMapping> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| DomainsError::invalid(format!("invalid DomainMapping JSON: {e}")))?;
    match v.as_object_mut() {
        Some(o) => drop(o.remove("status")),
        None => {
            return Err(DomainsError::invalid(
                "invalid DomainMapping JSON: expected an object",
            ))
        }
    }
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        DomainsError::invalid(format!("{path}: {}", e.into_inner()))
    })
}

async fn create(
    State(d): St,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<DomainMapping>> {
    let m = parse(&body)?;
    Ok(Json(d.create(&ns, m)?))
}

async fn list(State(d): St, Path(ns): Path<String>) -> Result<Json<Value>> {
    let items = d.list(&ns)?;
    Ok(Json(json!({
        "apiVersion": crate::mapping::API_VERSION,
        "kind": "DomainMappingList",
        "metadata": {},
        "items": items,
    })))
}

async fn describe(
    State(d): St,
    Path((ns, domain)): Path<(String, String)>,
) -> Result<Json<DomainMapping>> {
    Ok(Json(d.get(&ns, &domain)?))
}

async fn delete(State(d): St, Path((ns, domain)): Path<(String, String)>) -> Result<Json<Value>> {
    let m = d.delete(&ns, &domain)?;
    Ok(Json(json!({
        "apiVersion": "v1", "kind": "Status", "status": "Success",
        "details": {"name": domain, "group": "domains.cloudrun.com", "kind": "domainmappings", "uid": m.metadata.uid},
    })))
}

/// Cloud Run's `AuthorizedDomain` list: the domains the caller has proven to own, which gcloud
/// checks before it creates a mapping (a domain must end with one of them). Skiff has no
/// ownership verification of its own — the admin runs the server and points DNS at it, and a
/// certificate is issued only to whoever controls the domain — so the admin is authorized for
/// every domain: the answer is the DNS root, `.`, of which every domain is a subdomain.
async fn authorized(Path(project): Path<String>) -> Result<Json<Value>> {
    skiff_model::validate_namespace(&project).map_err(|e| DomainsError::invalid(e.0))?;
    Ok(Json(json!({"domains": [{
        "id": ".",
        "name": format!("projects/{project}/authorizedDomains/."),
    }]})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let ok = parse(br#"{"apiVersion":"domains.cloudrun.com/v1","kind":"DomainMapping",
            "metadata":{"name":"www.example.com","annotations":{"run.googleapis.com/launch-stage":"BETA"}},
            "spec":{"routeName":"hello","forceOverride":true},
            "status":{"conditions":"not the client's to set"}}"#)
        .unwrap();
        assert_eq!(ok.metadata.name, "www.example.com");
        assert_eq!(ok.spec.route_name, "hello");
        assert!(ok.spec.force_override);
        assert!(ok.status.is_none(), "a client's status is ignored");
        let cases: &[(&[u8], &str)] = &[
            (b"[]", "expected an object"),
            (b"{", "invalid DomainMapping JSON"),
            (
                br#"{"spec":{"routeName":"a","route":"b"}}"#,
                "spec.route: unknown field `route`",
            ),
            (
                br#"{"spec":{"forceOverride":"yes"}}"#,
                "spec.forceOverride: invalid type",
            ),
        ];
        for (body, want) in cases {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
        }
    }
}
