//! Registry operations: `POST /skiff/v1/images:pull` (pull an image into the store without
//! deploying it), `POST /skiff/v1/images:prune` (garbage-collect the store) and the per-registry settings `skiff registries login|list|logout` manage
//! (`/skiff/v1/registries[/{host}]`). Passwords are written, never read back.

use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_body, St};
use crate::ApiState;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_registry::{check_login, is_registry_reference, RegistryError, RegistrySettings};
use std::sync::Arc;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/skiff/v1/images:pull", post(pull_image))
        .route("/skiff/v1/images:prune", post(prune_images))
        .route("/skiff/v1/registries", get(list_registries))
        .route("/skiff/v1/registries/{host}", put(login).delete(logout))
}

#[derive(Deserialize)]
struct PullRequest {
    reference: String,
}

/// The media type of a streamed pull: one JSON object a line.
const NDJSON: &str = "application/x-ndjson";

/// Pulls the image. With `Accept: application/x-ndjson` the answer is a stream of progress
/// events, one JSON object a line ([`skiff_registry::PullProgress`]: `resolved`, `blob`,
/// `resumed`, `unpacking`), ending with `{"event":"pulled",...}` (the same fields as the
/// plain answer) or `{"event":"error","error":{"code","message","status"}}`; otherwise the
/// answer is the pulled image as one JSON object once the pull is done.
async fn pull_image(
    State(st): St,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    use futures::StreamExt;
    let req: PullRequest = parse_body(&body)?;
    if !is_registry_reference(&req.reference) {
        return Err(ApiError::invalid(format!(
            "reference: {:?} names no registry: give HOST[:PORT]/REPO[:TAG|@DIGEST] (local images are imported with `skiff images import`)",
            req.reference
        )));
    }
    let streamed = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(NDJSON));
    if !streamed {
        let pulled = st
            .controller
            .pull_if_remote(&req.reference, "reference")
            .await?
            .expect("a registry reference is pulled");
        return Ok(Json(serde_json::to_value(pulled).expect("serializes")).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let (ptx, mut prx) = tokio::sync::mpsc::unbounded_channel();
    // The pull runs on its own: a client that goes away does not stop it half-way.
    tokio::spawn(async move {
        let forward = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(p) = prx.recv().await {
                    let _ = tx.send(serde_json::to_value(p).expect("serializes"));
                }
            })
        };
        let res = st
            .controller
            .pull_if_remote_with_progress(&req.reference, "reference", Some(&ptx))
            .await;
        drop(ptx);
        let _ = forward.await;
        let last = match res {
            Ok(p) => {
                let mut v = serde_json::to_value(p.expect("a registry reference is pulled"))
                    .expect("serializes");
                v["event"] = json!("pulled");
                v
            }
            Err(e) => json!({"event": "error", "error": {
                "code": e.code.as_u16(), "message": e.message,
                "status": crate::error::status_name(e.code),
            }}),
        };
        let _ = tx.send(last);
    });
    let lines = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|v| {
        let mut line = serde_json::to_vec(&v).expect("serializes");
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(line))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, NDJSON)],
        axum::body::Body::from_stream(lines),
    )
        .into_response())
}

async fn prune_images(State(st): St) -> ApiResult<Json<Value>> {
    let mut v = st.controller.prune_images().await?;
    let cache = st.builds.prune_cache().await;
    v["buildCacheImages"] = cache.images.into();
    v["buildCacheBytes"] = cache.bytes.into();
    v["buildCacheDropped"] = cache.over_limit.into();
    Ok(Json(v))
}

async fn list_registries(State(st): St) -> ApiResult<Json<Value>> {
    let all = st
        .controller
        .puller
        .registries()
        .load()
        .map_err(registry_error)?;
    let list: Vec<Value> = all
        .into_iter()
        .map(|(host, s)| {
            json!({"host": host, "username": s.username, "insecure": s.insecure, "caFile": s.ca_file})
        })
        .collect();
    Ok(Json(json!({"registries": list})))
}

/// Store settings for a registry after checking its credentials with the registry itself.
async fn login(
    State(st): St,
    Path(host): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let settings: RegistrySettings = parse_body(&body)?;
    skiff_registry::settings::check_host(&host).map_err(registry_error)?;
    if settings.username.is_some() != settings.password.is_some() {
        return Err(ApiError::invalid(
            "username, password: give both or neither",
        ));
    }
    check_login(&host, &settings)
        .await
        .map_err(registry_error)?;
    st.controller
        .puller
        .registries()
        .set(&host, settings)
        .map_err(registry_error)?;
    Ok(Json(json!({"host": host})))
}

async fn logout(State(st): St, Path(host): Path<String>) -> ApiResult<Json<Value>> {
    if !st
        .controller
        .puller
        .registries()
        .remove(&host)
        .map_err(registry_error)?
    {
        return Err(ApiError::not_found(format!(
            "no settings for registry {host}: see `skiff registries list`"
        )));
    }
    Ok(Json(json!({})))
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Io { .. } | RegistryError::Config { .. } => {
            ApiError::internal(e.to_string())
        }
        e => ApiError::invalid(e.to_string()),
    }
}
