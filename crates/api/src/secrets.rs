//! Secret Manager v1 REST, as gcloud (`gcloud secrets ...`) and Google's client libraries call
//! it: `/v1/projects/{p}/secrets[/{s}[:addVersion]]`, `/v1/projects/{p}/secrets/{s}/versions[/{v}]`
//! with `:access`, `:enable`, `:disable` and `:destroy`. The project is the namespace.
//! Payloads travel base64-encoded (`payload.data`) and are never logged.

use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_body, St};
use axum::extract::{Path, Query};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_secrets::{
    AccessResponse, ListSecretsResponse, ListVersionsResponse, Payload, SecretsError, VersionRef,
};
use std::collections::BTreeMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<crate::ApiState>> {
    let base = "/v1/projects/{project}/secrets";
    Router::new()
        .route(base, get(list_secrets).post(create_secret))
        .route(
            &format!("{base}/{{secret}}"),
            get(get_secret).delete(delete_secret).post(secret_action),
        )
        .route(&format!("{base}/{{secret}}/versions"), get(list_versions))
        .route(
            &format!("{base}/{{secret}}/versions/{{version}}"),
            get(get_version).post(version_action),
        )
}

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> Self {
        match e {
            SecretsError::NotFound(m) => ApiError::not_found(m),
            SecretsError::AlreadyExists(m) => ApiError::conflict(m),
            SecretsError::Invalid(m) => ApiError::invalid(m),
            SecretsError::FailedPrecondition(m) => ApiError::precondition(m),
            other => {
                tracing::error!("secrets: {other}");
                ApiError::internal(other.to_string())
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateQuery {
    secret_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SecretBody {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    replication: Option<Value>,
}

async fn create_secret(
    axum::extract::State(st): St,
    Path(project): Path<String>,
    Query(q): Query<CreateQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let Some(id) = q.secret_id else {
        return Err(ApiError::invalid(
            "missing secretId: name the secret with ?secretId=NAME",
        ));
    };
    let b: SecretBody = if body.is_empty() {
        SecretBody::default()
    } else {
        parse_body(&body)?
    };
    if let Some(r) = &b.replication {
        if r.get("userManaged").is_some() {
            return Err(ApiError::invalid(
                "replication.userManaged: Skiff keeps one copy of each secret: use automatic replication",
            ));
        }
    }
    let secret = st.secrets().create(&project, &id, b.labels)?;
    Ok(Json(json!(secret)))
}

async fn get_secret(
    axum::extract::State(st): St,
    Path((project, secret)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(st.secrets().get(&project, &secret)?)))
}

async fn delete_secret(
    axum::extract::State(st): St,
    Path((project, secret)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    st.secrets().delete(&project, &secret)?;
    Ok(Json(json!({})))
}

async fn list_secrets(
    axum::extract::State(st): St,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let secrets = st.secrets().list(&project)?;
    Ok(Json(json!(ListSecretsResponse {
        total_size: secrets.len(),
        secrets,
    })))
}

#[derive(Deserialize)]
struct AddVersionBody {
    payload: Payload,
}

/// `POST .../secrets/{s}:addVersion`.
async fn secret_action(
    axum::extract::State(st): St,
    Path((project, secret)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let Some(id) = secret.strip_suffix(":addVersion") else {
        return Err(ApiError::not_found(format!(
            "no such secret operation {secret:?}: use :addVersion"
        )));
    };
    let b: AddVersionBody = parse_body(&body)?;
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD
        .decode(b.payload.data.as_bytes())
        .map_err(|_| ApiError::invalid("payload.data: not base64: encode the value in base64"))?;
    let crc = match &b.payload.data_crc32c {
        None => None,
        Some(s) => Some(s.parse::<u32>().map_err(|_| {
            ApiError::invalid(format!(
                "payload.dataCrc32c: {s:?} is not a CRC32C: give the checksum as a decimal number"
            ))
        })?),
    };
    let v = st.secrets().add_version(&project, id, &data, crc)?;
    Ok(Json(json!(v)))
}

async fn list_versions(
    axum::extract::State(st): St,
    Path((project, secret)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let versions = st.secrets().versions(&project, &secret)?;
    Ok(Json(json!(ListVersionsResponse {
        total_size: versions.len(),
        versions,
    })))
}

/// `GET .../versions/{v}` and `GET .../versions/{v}:access`.
async fn get_version(
    axum::extract::State(st): St,
    Path((project, secret, version)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    if let Some(v) = version.strip_suffix(":access") {
        let (n, data) = st
            .secrets()
            .access(&project, &secret, VersionRef::parse(v)?)?;
        return Ok(Json(json!(AccessResponse::new(
            &project, &secret, n, &data
        ))));
    }
    let v = st
        .secrets()
        .version(&project, &secret, VersionRef::parse(&version)?)?;
    Ok(Json(json!(v)))
}

/// `POST .../versions/{v}:enable|:disable|:destroy`.
async fn version_action(
    axum::extract::State(st): St,
    Path((project, secret, version)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let Some((v, action)) = version.split_once(':') else {
        return Err(ApiError::not_found(format!(
            "no such version operation on {version:?}: use :enable, :disable or :destroy"
        )));
    };
    let n = match VersionRef::parse(v)? {
        VersionRef::Number(n) => n,
        VersionRef::Latest => {
            st.secrets()
                .version(&project, &secret, VersionRef::Latest)?
                .version
        }
    };
    let s = st.secrets();
    let out = match action {
        "enable" => s.set_enabled(&project, &secret, n, true)?,
        "disable" => s.set_enabled(&project, &secret, n, false)?,
        "destroy" => s.destroy(&project, &secret, n)?,
        other => {
            return Err(ApiError::not_found(format!(
                "no such version operation :{other}: use :enable, :disable or :destroy"
            )))
        }
    };
    Ok(Json(json!(out)))
}

/// Checks that every `(secret, version)` a revision or job names exists in project `ns` and
/// is enabled now, so that a deploy naming a missing secret fails before anything changes.
/// The error names the secret: `spec.template.spec: secret db not found in project p: ...`.
pub(crate) fn check_refs(
    secrets: &skiff_secrets::SecretStore,
    ns: &str,
    refs: &[(String, String)],
    field: &str,
) -> ApiResult<()> {
    for (secret, version) in refs {
        let v = VersionRef::parse(version)?;
        if let Err(e) = secrets.check(ns, secret, v) {
            return Err(match e {
                SecretsError::NotFound(m)
                | SecretsError::FailedPrecondition(m)
                | SecretsError::Invalid(m) => ApiError::invalid(format!("{field}: {m}")),
                other => other.into(),
            });
        }
    }
    Ok(())
}

/// Checks that every host directory a revision or job mounts exists and is (after following
/// symbolic links) one the server allows (`--allow-host-dir`) or below one. The error names
/// the path: `spec.template.spec: host directory /etc is not allowed: ...`.
pub(crate) fn check_host_dirs(
    allowed: &[std::path::PathBuf],
    volumes: &[skiff_model::HostVolume],
    field: &str,
) -> ApiResult<()> {
    for v in volumes {
        let real = std::fs::canonicalize(&v.host_path).map_err(|e| {
            ApiError::invalid(format!(
                "{field}: host directory {} of volume {}: {e}: give an existing directory",
                v.host_path, v.name
            ))
        })?;
        if !real.is_dir() {
            return Err(ApiError::invalid(format!(
                "{field}: host path {} of volume {} is not a directory",
                v.host_path, v.name
            )));
        }
        if !allowed.iter().any(|a| real.starts_with(a)) {
            return Err(ApiError::invalid(format!(
                "{field}: host directory {} of volume {} is not allowed: start skiff server with --allow-host-dir {} (or a directory above it)",
                v.host_path, v.name, v.host_path
            )));
        }
    }
    Ok(())
}
