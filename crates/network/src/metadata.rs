//! The metadata server, as Cloud Run's container runtime contract describes it: reachable from
//! instances at `http://metadata.google.internal` and `http://169.254.169.254` (the firewall
//! sends that address to this server on the gateway), answering only requests that carry
//! `Metadata-Flavor: Google` and no `X-Forwarded-For` (403 otherwise), with
//! `Metadata-Flavor: Google` on every response.
//!
//! It knows who asks by the request's source address ([`crate::Network::owner_of`]); an
//! address that no instance holds gets 404. The tree under `/computeMetadata/v1/`:
//!
//! | path | value |
//! |---|---|
//! | `project/project-id` | the project (Skiff namespace) |
//! | `project/numeric-project-id` | its number |
//! | `instance/id` | the instance's id |
//! | `instance/region` | `projects/NUMBER/regions/REGION` |
//! | `instance/zone` | `projects/NUMBER/zones/REGION-1` |
//! | `instance/service-accounts/default/email` (and `.../EMAIL/email`) | the service account |
//! | `instance/service-accounts/default/aliases`, `scopes` | `default`, the cloud-platform scope |
//! | `instance/service-accounts/default/token` | an access token (JSON) |
//! | `instance/service-accounts/default/identity?audience=URL` | an identity token for URL |
//!
//! A directory answers with its entries one per line (subdirectories end in `/`), or as JSON
//! with `?recursive=true`, as Compute Engine's metadata server does.

use crate::{Network, Owner};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Mints tokens for an instance: `audience` `Some(URL)` for an identity token (`aud` = URL),
/// `None` for an access token. Returns the compact JWT.
pub type TokenIssuer = Arc<dyn Fn(&Owner, Option<&str>) -> String + Send + Sync>;

/// Lifetime of the tokens the issuer mints, in seconds (reported as `expires_in`).
pub const TOKEN_LIFETIME_SECS: u64 = 3600;

#[derive(Clone)]
struct Ctx {
    network: Arc<Network>,
    issuer: TokenIssuer,
    region: String,
}

/// Serves the metadata server on `listener` (the gateway's port 80) until the task is
/// dropped. `region` is what `instance/region` reports.
pub async fn serve(
    listener: tokio::net::TcpListener,
    network: Arc<Network>,
    issuer: TokenIssuer,
    region: String,
) -> std::io::Result<()> {
    let ctx = Ctx {
        network,
        issuer,
        region,
    };
    let app = axum::Router::new()
        .route("/", axum::routing::get(root))
        .route("/computeMetadata/v1", axum::routing::get(tree))
        .route("/computeMetadata/v1/", axum::routing::get(tree))
        .route("/computeMetadata/v1/{*path}", axum::routing::get(tree_path))
        .fallback(not_found)
        .with_state(ctx);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

fn flavored(status: StatusCode, content_type: &str, body: String) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert("metadata-flavor", HeaderValue::from_static("Google"));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert("content-type", v);
    }
    resp
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    flavored(status, "application/text", body.into())
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// Checks the request as Cloud Run's metadata server does; `Err` says why it is refused
/// (403).
fn admit(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.contains_key("x-forwarded-for") {
        return Err("requests with X-Forwarded-For are not accepted\n");
    }
    let flavor = headers.get("metadata-flavor").and_then(|v| v.to_str().ok());
    if flavor != Some("Google") {
        return Err("missing the Metadata-Flavor: Google header\n");
    }
    Ok(())
}

/// `GET /`: the liveness check Google's auth libraries make before they trust the server.
async fn root(headers: HeaderMap) -> Response {
    if let Err(why) = admit(&headers) {
        return text(StatusCode::FORBIDDEN, why);
    }
    text(StatusCode::OK, "computeMetadata/\n")
}

async fn tree(
    st: State<Ctx>,
    peer: ConnectInfo<SocketAddr>,
    q: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    answer(&st, peer.0, "", &q, &headers)
}

async fn tree_path(
    st: State<Ctx>,
    peer: ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    q: Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    answer(&st, peer.0, &path, &q, &headers)
}

fn answer(
    ctx: &Ctx,
    peer: SocketAddr,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Response {
    if let Err(why) = admit(headers) {
        return text(StatusCode::FORBIDDEN, why);
    }
    let IpAddr::V4(ip) = peer.ip() else {
        return text(StatusCode::NOT_FOUND, "unknown instance\n");
    };
    let Some(owner) = ctx.network.owner_of(ip) else {
        return text(StatusCode::NOT_FOUND, "unknown instance\n");
    };
    let trimmed = path.trim_end_matches('/');
    let parts: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    // Tokens are computed, not stored in the tree.
    if let ["instance", "service-accounts", account, leaf] = parts.as_slice() {
        if *account == "default" || *account == owner.service_account {
            match *leaf {
                "identity" => {
                    let Some(aud) = q.get("audience").filter(|a| !a.is_empty()) else {
                        return text(
                            StatusCode::BAD_REQUEST,
                            "non-empty audience parameter required\n",
                        );
                    };
                    return text(StatusCode::OK, (ctx.issuer)(&owner, Some(aud)));
                }
                "token" => {
                    let body = json!({
                        "access_token": (ctx.issuer)(&owner, None),
                        "expires_in": TOKEN_LIFETIME_SECS - 1,
                        "token_type": "Bearer",
                    });
                    return flavored(StatusCode::OK, "application/json", body.to_string());
                }
                _ => {}
            }
        }
    }
    let root = metadata_tree(&owner, &ctx.region);
    let mut node = &root;
    for p in &parts {
        match node.get(*p) {
            Some(n) => node = n,
            None => return text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
    let recursive = q.get("recursive").is_some_and(|v| v == "true");
    match node {
        Value::Object(_) if recursive => {
            flavored(StatusCode::OK, "application/json", camel(node).to_string())
        }
        Value::Object(map) => {
            let listing: String = map
                .iter()
                .map(|(k, v)| {
                    if v.is_object() {
                        format!("{k}/\n")
                    } else {
                        format!("{k}\n")
                    }
                })
                .collect();
            text(StatusCode::OK, listing)
        }
        Value::Array(items) => text(
            StatusCode::OK,
            items
                .iter()
                .filter_map(|v| v.as_str())
                .map(|s| format!("{s}\n"))
                .collect::<String>(),
        ),
        Value::String(s) => text(StatusCode::OK, s.clone()),
        other => text(StatusCode::OK, other.to_string()),
    }
}

/// Keys in recursive JSON are camelCase (`numeric-project-id` → `numericProjectId`).
fn camel(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let mut out = String::new();
                    let mut up = false;
                    for c in k.chars() {
                        if c == '-' {
                            up = true;
                        } else if up {
                            out.extend(c.to_uppercase());
                            up = false;
                        } else {
                            out.push(c);
                        }
                    }
                    (out, camel(v))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn metadata_tree(owner: &Owner, region: &str) -> Value {
    let number = owner.project_number;
    let account = json!({
        "aliases": ["default"],
        "email": owner.service_account,
        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
    });
    json!({
        "project": {
            "project-id": owner.project,
            "numeric-project-id": number.to_string(),
        },
        "instance": {
            "id": owner.instance_id,
            "region": format!("projects/{number}/regions/{region}"),
            "zone": format!("projects/{number}/zones/{region}-1"),
            "service-accounts": {
                "default": account.clone(),
                owner.service_account.clone(): account,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_and_camel_case() {
        let owner = Owner {
            project: "demo".into(),
            project_number: 123456789012,
            instance_id: "abc".into(),
            service_account: "sa@demo.iam.gserviceaccount.com".into(),
        };
        let t = metadata_tree(&owner, "us-central1");
        assert_eq!(
            t["instance"]["region"],
            "projects/123456789012/regions/us-central1"
        );
        assert_eq!(
            t["instance"]["service-accounts"]["sa@demo.iam.gserviceaccount.com"]["email"],
            "sa@demo.iam.gserviceaccount.com"
        );
        let c = camel(&t["project"]);
        assert_eq!(c["numericProjectId"], "123456789012");
    }

    #[test]
    fn admission() {
        let mut h = HeaderMap::new();
        assert!(admit(&h).is_err());
        h.insert("metadata-flavor", HeaderValue::from_static("Google"));
        assert!(admit(&h).is_ok());
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        assert!(admit(&h).is_err());
    }
}
