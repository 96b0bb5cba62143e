//! Source builds (`skiff-build`): `POST /skiff/v1/namespaces/{ns}/builds` takes a tar.gz of
//! the source as its body (streamed to disk, at most `--build-max-source` bytes, else 413) and
//! answers with an NDJSON stream: `{"build": BUILD}` as queued, `{"log": LINE}` for each line
//! of the build's log as it runs, and `{"build": BUILD}` as it ended. The build runs on if the
//! client goes away. `GET .../builds[?service=S]`, `GET .../builds/{id}`,
//! `GET .../builds/{id}/log` (text), `POST .../builds/{id}:cancel`.

use crate::error::{ApiError, ApiResult};
use crate::routes::St;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use skiff_build::{BuildError, BuildRequest};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/skiff/v1/namespaces/{ns}/builds",
            get(list_builds).post(submit),
        )
        .route(
            "/skiff/v1/namespaces/{ns}/builds/{id}",
            get(get_build).post(build_verb),
        )
        .route("/skiff/v1/namespaces/{ns}/builds/{id}/log", get(build_log))
}

fn build_error(e: BuildError) -> ApiError {
    match e {
        BuildError::NotFound(_) => ApiError::not_found(e.to_string()),
        BuildError::Invalid(_) | BuildError::Source(_) | BuildError::NoPlan(_) => {
            ApiError::invalid(e.to_string())
        }
        _ => ApiError::internal(e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmitQuery {
    service: Option<String>,
    job: Option<String>,
    image: Option<String>,
    /// `K=V,...`
    build_args: Option<String>,
    base_image: Option<String>,
    timeout: Option<String>,
}

async fn submit(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<SubmitQuery>,
    body: Body,
) -> ApiResult<Response> {
    skiff_model::validate_namespace(&ns).map_err(|e| ApiError::invalid(e.0))?;
    if let Some(s) = &q.service {
        skiff_model::validate_service_name(s).map_err(|e| ApiError::invalid(e.0))?;
    }
    if let Some(j) = &q.job {
        skiff_model::validate_name("job", j, 63).map_err(|e| ApiError::invalid(e.0))?;
    }
    let timeout = q
        .timeout
        .as_deref()
        .map(skiff_model::parse_duration)
        .transpose()
        .map_err(|e| ApiError::invalid(format!("timeout: {}", e.0)))?;
    if timeout.is_some_and(|t| t.is_zero() || t.as_secs() > 24 * 3600) {
        return Err(ApiError::invalid(
            "timeout: give a build timeout between 1s and 24h",
        ));
    }
    let mut build_args = BTreeMap::new();
    if let Some(list) = &q.build_args {
        for (k, v) in skiff_model::parse_env_list(list)
            .map_err(|e| ApiError::invalid(format!("buildArgs: {}", e.0)))?
        {
            build_args.insert(k, v);
        }
    }
    let builds = st.builds.clone();
    let spool = builds.spool().map_err(build_error)?;
    let mut file = spool
        .reopen()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut stream = body.into_data_stream();
    let mut hash = sha2::Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        let max = builds.max_archive_bytes();
        if total > max {
            // The rest of the upload is read and dropped (up to the limit again, at least
            // 1 MiB), so that the
            // client, still sending, gets this answer rather than a broken connection.
            let mut dropped = 0u64;
            while let Some(Ok(chunk)) = stream.next().await {
                dropped += chunk.len() as u64;
                if dropped > max.max(1 << 20) {
                    break;
                }
            }
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the source archive is larger than the server's limit of {max} bytes \
                     (skiff server --build-max-source): leave large files out with .gcloudignore"
                ),
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| ApiError::internal(format!("spooling the upload: {e}")))?;
    }
    if total == 0 {
        return Err(ApiError::invalid(
            "the request body is empty: send the source as a tar.gz",
        ));
    }
    let digest = format!("sha256:{}", hex::encode(hash.finalize()));
    let req = BuildRequest {
        service: q.service,
        job: q.job,
        image: q.image,
        build_args,
        base_image: q.base_image,
        timeout,
    };
    let (build, rx) = builds
        .submit(&ns, req, spool, digest, total)
        .map_err(build_error)?;
    let line = |v: Value| -> Result<bytes::Bytes, std::io::Error> {
        let mut b = serde_json::to_vec(&v).expect("serializes");
        b.push(b'\n');
        Ok(bytes::Bytes::from(b))
    };
    let first = futures::stream::iter([line(json!({ "build": build }))]);
    let logs = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(move |l| line(json!({ "log": l })));
    let (ns2, id) = (ns.clone(), build.id.clone());
    let last = futures::stream::once(async move {
        let end = builds
            .get(&ns2, &id)
            .map(|b| json!({ "build": b }))
            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        line(end)
    });
    let body = Body::from_stream(first.chain(logs).chain(last));
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    service: Option<String>,
    job: Option<String>,
}

async fn list_builds(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let all = st
        .builds
        .list(&ns, q.service.as_deref(), q.job.as_deref())
        .map_err(build_error)?;
    Ok(Json(json!({ "builds": all })))
}

async fn get_build(
    State(st): St,
    Path((ns, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let b = st.builds.get(&ns, &id).map_err(build_error)?;
    Ok(Json(json!(b)))
}

async fn build_verb(
    State(st): St,
    Path((ns, target)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let Some(id) = target.strip_suffix(":cancel") else {
        return Err(ApiError::not_found(format!(
            "unknown build method in {target:?}: use BUILD:cancel"
        )));
    };
    let b = st.builds.cancel(&ns, id).map_err(build_error)?;
    Ok(Json(json!(b)))
}

async fn build_log(State(st): St, Path((ns, id)): Path<(String, String)>) -> ApiResult<Response> {
    st.builds.get(&ns, &id).map_err(build_error)?;
    let text = tokio::fs::read_to_string(st.builds.log_path(&id))
        .await
        .unwrap_or_default();
    Ok((
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response())
}
