//! What `gcloud run deploy --source` and `gcloud run jobs deploy --source` call besides Cloud
//! Run, served from Skiff's own builds (`skiff_build`):
//!
//! - Artifact Registry v1: `GET|POST /v1/projects/P/locations/L/repositories[/R]` (gcloud
//!   looks for `cloud-run-source-deploy` and creates it when missing; creation is a
//!   long-running operation that is done at once).
//! - Cloud Storage JSON API v1: `GET /storage/v1/b/B`, `POST /storage/v1/b?project=P`,
//!   `GET /storage/v1/b?project=P&prefix=X` (gcloud's bucket ownership check),
//!   `GET /storage/v1/b/B/o/O`, and `POST /upload/storage/v1/b/B/o?uploadType=multipart|media`
//!   (the source zip, at most `--build-max-source` bytes), or `uploadType=resumable` (gcloud's
//!   choice past 5 MiB, at `/resumable/upload/...`: the session URL in `Location`, then `PUT`s of `Content-Range` chunks,
//!   308 with `Range` until the last one).
//! - Cloud Build v1: `GET /v1/projects/P/locations/L/defaultServiceAccount` (the legacy
//!   `NUMBER@cloudbuild.gserviceaccount.com`, which gcloud does not look up further) and
//!   `GET /v1/projects/P/locations/L/operations/ID`, a build as a long-running operation:
//!   `done` once it ended, `response` the `Build` when it succeeded, `error` saying why when
//!   not (gcloud then fails with that message). Eventarc's operations share the path and
//!   are answered from `skiff_events`.
//! - Cloud Run v2: `POST /v2/projects/P/locations/L/builds:submit`, which takes the staged zip
//!   out of its bucket (it is deleted then; see [`skiff_build::staging`]) and starts a normal
//!   Skiff build of it for the service or job its `tags` name (`service_NAME`, `job_NAME`), so
//!   it shows in `skiff builds list|log` and its image in `skiff images list` as
//!   `PROJECT/cloud-run-source-deploy/NAME:BUILD_ID`.
//!
//! gcloud then deploys `REGION-docker.pkg.dev/P/cloud-run-source-deploy/NAME@DIGEST`, which the
//! controller finds by its digest in the image store without a registry round trip.

use crate::error::{ApiError, ApiResult};
use crate::routes::St;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Digest;
use skiff_build::staging::StagingError;
use skiff_build::{Build, BuildRequest, BuildStatus};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

/// Operation ids of repository creations start with this (build operations are build ids).
const REPOSITORY_OP: &str = "create-repository-";

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/v1/projects/{project}/locations/{location}/repositories",
            post(create_repository),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/repositories/{repository}",
            get(get_repository),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/operations/{operation}",
            get(get_operation),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/defaultServiceAccount",
            get(default_service_account),
        )
        .route(
            "/v2/projects/{project}/locations/{location}/builds:submit",
            post(submit_build),
        )
        .route("/storage/v1/b", get(list_buckets).post(insert_bucket))
        .route("/storage/v1/b/{bucket}", get(get_bucket))
        .route("/storage/v1/b/{bucket}/o/{*object}", get(get_object))
        .route(
            "/upload/storage/v1/b/{bucket}/o",
            post(upload_object).put(resumable_chunk),
        )
        // The resumable upload path of Cloud Storage's discovery document.
        .route(
            "/resumable/upload/storage/v1/b/{bucket}/o",
            post(upload_object).put(resumable_chunk),
        )
}

fn staging_error(e: StagingError) -> ApiError {
    match e {
        StagingError::NotFound(m) => ApiError::not_found(m),
        StagingError::Conflict(m) => ApiError::conflict(m),
        StagingError::Invalid(m) => ApiError::invalid(m),
        e @ StagingError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

fn check_project(project: &str) -> ApiResult<()> {
    skiff_model::validate_namespace(project).map_err(|e| ApiError::invalid(e.0))
}

// ---- Artifact Registry ----

async fn get_repository(
    State(st): St,
    Path((project, location, repository)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&project)?;
    let r = st
        .builds
        .staging()
        .get_repository(&project, &location, &repository)
        .map_err(staging_error)?;
    Ok(Json(json!(r)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateRepositoryQuery {
    repository_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RepositoryBody {
    format: String,
    description: String,
}

async fn create_repository(
    State(st): St,
    Path((project, location)): Path<(String, String)>,
    Query(q): Query<CreateRepositoryQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    check_project(&project)?;
    let Some(id) = q.repository_id.filter(|r| !r.is_empty()) else {
        return Err(ApiError::invalid(
            "repositoryId: give the new repository's id as ?repositoryId=ID",
        ));
    };
    let b: RepositoryBody = if body.is_empty() {
        RepositoryBody::default()
    } else {
        crate::routes::parse_body(&body)?
    };
    let r = st
        .builds
        .staging()
        .create_repository(&project, &location, &id, &b.format, &b.description)
        .map_err(staging_error)?;
    Ok(Json(repository_operation(&project, &location, &id, &r)))
}

fn repository_operation(
    project: &str,
    location: &str,
    id: &str,
    r: &skiff_build::staging::Repository,
) -> Value {
    let mut response = json!(r);
    response["@type"] = json!("type.googleapis.com/google.devtools.artifactregistry.v1.Repository");
    json!({
        "name": format!("projects/{project}/locations/{location}/operations/{REPOSITORY_OP}{id}"),
        "metadata": {"@type": "type.googleapis.com/google.devtools.artifactregistry.v1.OperationMetadata"},
        "done": true,
        "response": response,
    })
}

// ---- Cloud Build ----

async fn default_service_account(
    Path((project, location)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&project)?;
    let number = skiff_model::project_number(&project);
    Ok(Json(json!({
        "name": format!("projects/{project}/locations/{location}/defaultServiceAccount"),
        "serviceAccountEmail": format!("projects/{project}/serviceAccounts/{number}@cloudbuild.gserviceaccount.com"),
    })))
}

/// A Skiff build in the shape of Cloud Build's `Build`, as the Cloud Build API names it.
fn cloud_build(b: &Build, location: &str) -> Value {
    let mut v = json!(b);
    v["name"] = json!(format!(
        "projects/{}/locations/{location}/builds/{}",
        b.project_id, b.id
    ));
    // Where to read the log: Skiff has no console, so the command that prints it.
    v["logUrl"] = json!(format!(
        "skiff builds log {} --project {}",
        b.id, b.project_id
    ));
    v
}

fn build_operation(b: &Build, location: &str) -> Value {
    let build = cloud_build(b, location);
    let mut op = json!({
        "name": format!("projects/{}/locations/{location}/operations/{}", b.project_id, b.id),
        "metadata": {
            "@type": "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata",
            "build": build.clone(),
        },
        "done": b.status.is_final(),
    });
    match b.status {
        BuildStatus::Success => {
            let mut response = build;
            response["@type"] = json!("type.googleapis.com/google.devtools.cloudbuild.v1.Build");
            op["response"] = response;
        }
        BuildStatus::Queued | BuildStatus::Working => {}
        status => {
            let what = match status {
                BuildStatus::Timeout => "Build timed out",
                BuildStatus::Cancelled => "Build was cancelled",
                _ => "Build failed",
            };
            let detail = b
                .status_detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default();
            op["error"] = json!({
                "code": 2,
                "message": format!(
                    "{what}{detail}; check the build log with `skiff builds log {} --project {}`",
                    b.id, b.project_id
                ),
            });
        }
    }
    op
}

async fn get_operation(
    State(st): St,
    Path((project, location, operation)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_project(&project)?;
    if let Some(id) = operation.strip_prefix(REPOSITORY_OP) {
        let r = st
            .builds
            .staging()
            .get_repository(&project, &location, id)
            .map_err(|_| ApiError::not_found(format!("no such operation: {operation}")))?;
        return Ok(Json(repository_operation(&project, &location, id, &r)));
    }
    if let Ok(b) = st.builds.get(&project, &operation) {
        return Ok(Json(build_operation(&b, &location)));
    }
    // Eventarc's trigger operations share this path.
    match skiff_events::rest::operation(&st.triggers, &project, &location, &operation) {
        Ok(Some(op)) => Ok(Json(op)),
        Ok(None) => Err(ApiError::not_found(format!(
            "no such operation: projects/{project}/locations/{location}/operations/{operation}"
        ))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

// ---- Cloud Run v2 builds:submit ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubmitBuildRequest {
    storage_source: StorageSource,
    image_uri: String,
    #[serde(default)]
    buildpack_build: Option<BuildpacksBuild>,
    #[serde(default)]
    docker_build: Option<Value>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    worker_pool: Option<String>,
    #[serde(default)]
    machine_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StorageSource {
    bucket: String,
    object: String,
    #[serde(default)]
    generation: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct BuildpacksBuild {
    base_image: Option<String>,
    function_target: Option<String>,
    environment_variables: BTreeMap<String, String>,
    enable_automatic_updates: bool,
    project_descriptor: Option<String>,
}

/// The service or job a source build is for: the `service_NAME` / `job_NAME` tag gcloud
/// sends, else the last segment of the image URI.
fn build_owner(req: &SubmitBuildRequest) -> ApiResult<(Option<String>, Option<String>)> {
    for t in &req.tags {
        if let Some(s) = t.strip_prefix("service_") {
            skiff_model::validate_service_name(s).map_err(|e| ApiError::invalid(e.0))?;
            return Ok((Some(s.to_string()), None));
        }
        if let Some(j) = t.strip_prefix("job_") {
            skiff_model::validate_name("job", j, 63).map_err(|e| ApiError::invalid(e.0))?;
            return Ok((None, Some(j.to_string())));
        }
    }
    let name = req
        .image_uri
        .split('@')
        .next()
        .unwrap_or_default()
        .rsplit('/')
        .next()
        .unwrap_or_default();
    let name = name.split(':').next().unwrap_or_default();
    skiff_model::validate_service_name(name).map_err(|e| {
        ApiError::invalid(format!(
            "imageUri: cannot tell the service from {:?}: {}",
            req.image_uri, e.0
        ))
    })?;
    Ok((Some(name.to_string()), None))
}

async fn submit_build(
    State(st): St,
    Path((project, location)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    check_project(&project)?;
    let req: SubmitBuildRequest = crate::routes::parse_body(&body)?;
    if req.worker_pool.as_deref().is_some_and(|w| !w.is_empty()) {
        return Err(ApiError::invalid(
            "workerPool: Skiff builds on this machine and has no worker pools: remove --build-worker-pool",
        ));
    }
    let _ = (&req.service_account, &req.machine_type, &req.docker_build);
    let (service, job) = build_owner(&req)?;
    let mut build_args = BTreeMap::new();
    let mut base_image = None;
    if let Some(bp) = &req.buildpack_build {
        if bp.function_target.as_deref().is_some_and(|f| !f.is_empty()) {
            return Err(ApiError::invalid(
                "buildpackBuild.functionTarget: Skiff builds services and jobs, not functions: remove --function",
            ));
        }
        let _ = (bp.enable_automatic_updates, &bp.project_descriptor);
        build_args.extend(bp.environment_variables.clone());
        base_image = bp
            .base_image
            .clone()
            .filter(|b| !b.is_empty() && !google_run_image(b));
    }
    let builds = st.builds.clone();
    let spool = builds
        .spool()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let src = &req.storage_source;
    let object = builds
        .staging()
        .take_object(
            &src.bucket,
            &src.object,
            src.generation.as_deref(),
            spool.path(),
        )
        // A missing source is the request's fault (400), not a 404: gcloud reads a 404 from
        // `builds:submit` as "this API is not enabled" and falls back to Cloud Build's
        // `builds.create`, which Skiff does not serve.
        .map_err(|e| match e {
            StagingError::NotFound(m) => ApiError::invalid(format!("storageSource: {m}")),
            e => staging_error(e),
        })?;
    let bytes = object.size.parse().unwrap_or(0);
    let breq = BuildRequest {
        service,
        job,
        image: None,
        build_args,
        base_image,
        timeout: None,
    };
    let (build, _log) = builds
        .submit(&project, breq, spool, object.sha256, bytes)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    tracing::info!(build = %build.id, bucket = %src.bucket, object = %src.object, "source build submitted through the Cloud Run API");
    Ok(Json(json!({
        "buildOperation": build_operation(&build, &location),
        "baseImageUri": "",
    })))
}

/// Whether `image` is one of Google's own buildpacks run images (`gcr.io/buildpacks/...`,
/// `...-docker.pkg.dev/serverless-runtimes/...`), which gcloud sends as `baseImage` when the
/// user gave none: Skiff's own defaults (`--build-base-image`) stand in for them, as the
/// images users would pick, where Google's hold no language runtime Skiff's plans use.
fn google_run_image(image: &str) -> bool {
    image.starts_with("gcr.io/buildpacks/") || image.contains("docker.pkg.dev/serverless-runtimes/")
}

// ---- Cloud Storage ----

async fn get_bucket(State(st): St, Path(bucket): Path<String>) -> ApiResult<Json<Value>> {
    let b = st
        .builds
        .staging()
        .get_bucket(&bucket)
        .map_err(staging_error)?;
    Ok(Json(json!(b)))
}

#[derive(Deserialize)]
struct ProjectQuery {
    project: Option<String>,
    #[serde(default)]
    prefix: String,
}

#[derive(Deserialize)]
struct BucketBody {
    name: String,
    #[serde(default)]
    location: Option<String>,
}

async fn insert_bucket(
    State(st): St,
    Query(q): Query<ProjectQuery>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let Some(project) = q.project else {
        return Err(ApiError::invalid(
            "project: give the project that owns the bucket as ?project=P",
        ));
    };
    check_project(&project)?;
    let b: BucketBody = crate::routes::parse_body(&body)?;
    let b = st
        .builds
        .staging()
        .insert_bucket(
            &project,
            skiff_model::project_number(&project),
            &b.name,
            b.location.as_deref(),
        )
        .map_err(staging_error)?;
    Ok(Json(json!(b)))
}

async fn list_buckets(State(st): St, Query(q): Query<ProjectQuery>) -> ApiResult<Json<Value>> {
    let Some(project) = q.project else {
        return Err(ApiError::invalid(
            "project: give the project whose buckets to list as ?project=P",
        ));
    };
    check_project(&project)?;
    let items = st
        .builds
        .staging()
        .list_buckets(&project, &q.prefix)
        .map_err(staging_error)?;
    Ok(Json(json!({"kind": "storage#buckets", "items": items})))
}

async fn get_object(
    State(st): St,
    Path((bucket, object)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let o = st
        .builds
        .staging()
        .get_object(&bucket, &object)
        .map_err(staging_error)?;
    Ok(Json(json!(o)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadQuery {
    upload_type: Option<String>,
    name: Option<String>,
    /// The resumable session (Cloud Storage spells it in snake case).
    #[serde(rename = "upload_id")]
    upload_id: Option<String>,
}

/// A resumable upload session, kept as `ID.json` beside its data `ID.data`.
#[derive(serde::Serialize, Deserialize)]
struct Session {
    bucket: String,
    name: String,
    content_type: String,
    /// `X-Upload-Content-Length`, when the client gave it.
    total: Option<u64>,
}

/// Starts a resumable upload (`uploadType=resumable`): answers 200 with the session URL in
/// `Location`, where the data is then `PUT` in one or more chunks.
async fn start_resumable(
    st: &ApiState,
    bucket: &str,
    name: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the upload's metadata: {e}")))?;
    let meta: ObjectMeta = if body.is_empty() {
        ObjectMeta::default()
    } else {
        crate::routes::parse_body(&body)?
    };
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(name) = name.or(meta.name).filter(|n| !n.is_empty()) else {
        return Err(ApiError::invalid(
            "name: give the object's name as ?name=NAME or in the metadata",
        ));
    };
    skiff_build::staging::validate_object_name(&name).map_err(staging_error)?;
    let total = header("x-upload-content-length").and_then(|v| v.parse().ok());
    if let Some(t) = total {
        let max = st.builds.max_archive_bytes();
        if t > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the object is larger than the server's limit of {max} bytes \
                     (skiff server --build-max-source): leave large files out with .gcloudignore"
                ),
            ));
        }
    }
    let session = Session {
        bucket: bucket.to_string(),
        name,
        content_type: meta
            .content_type
            .or_else(|| header("x-upload-content-type"))
            .unwrap_or_default(),
        total,
    };
    // Sessions a client left unfinished for a day are dropped as new ones start.
    st.builds
        .staging()
        .sweep_uploads(std::time::Duration::from_secs(24 * 3600));
    let dir = st.builds.staging().uploads_dir().map_err(staging_error)?;
    let id = skiff_model::new_uuid();
    std::fs::write(dir.join(format!("{id}.data")), b"")
        .map_err(|e| ApiError::internal(format!("starting the upload: {e}")))?;
    std::fs::write(
        dir.join(format!("{id}.json")),
        serde_json::to_vec(&session).expect("serializes"),
    )
    .map_err(|e| ApiError::internal(format!("starting the upload: {e}")))?;
    let host = header("host").unwrap_or_else(|| "storage.skiff".into());
    let location =
        format!("http://{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable&upload_id={id}");
    Ok((
        StatusCode::OK,
        [(http::header::LOCATION, location)],
        Json(json!({})),
    )
        .into_response())
}

/// A chunk's first and last byte.
type Span = (u64, u64);

/// `Content-Range: bytes START-END/TOTAL` (or `bytes */TOTAL`, or `.../*`): the chunk's first
/// and last byte, and the total when known.
fn content_range(v: &str) -> Option<(Option<Span>, Option<u64>)> {
    let r = v.trim().strip_prefix("bytes ")?;
    let (span, total) = r.split_once('/')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    if span == "*" {
        return Some((None, total));
    }
    let (a, b) = span.split_once('-')?;
    Some((Some((a.parse().ok()?, b.parse().ok()?)), total))
}

/// `PUT` of a resumable upload's data: appends the chunk at its offset; answers 308 with the
/// `Range` received so far until the last byte is in, then stores the object and answers
/// with it, as Cloud Storage does.
async fn resumable_chunk(
    State(st): St,
    Path(bucket): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let session_id = |i: &String| {
        (1..=64).contains(&i.len()) && i.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    };
    let Some(id) = q.upload_id.filter(session_id) else {
        return Err(ApiError::invalid(
            "upload_id: give the session id the resumable upload's start answered with",
        ));
    };
    let dir = st.builds.staging().uploads_dir().map_err(staging_error)?;
    let (meta_path, data_path) = (
        dir.join(format!("{id}.json")),
        dir.join(format!("{id}.data")),
    );
    let session: Session = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|s: &Session| s.bucket == bucket)
        .ok_or_else(|| ApiError::not_found(format!("no such upload session: {id}")))?;
    let have = std::fs::metadata(&data_path).map(|m| m.len()).unwrap_or(0);
    let range = headers
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            content_range(v)
                .ok_or_else(|| ApiError::invalid(format!("invalid Content-Range {v:?}")))
        })
        .transpose()?;
    let (span, total) = range.unwrap_or((None, None));
    let total = total.or(session.total);
    let max = st.builds.max_archive_bytes();
    if let Some((start, end)) = span {
        if start != have || end < start {
            return Err(ApiError::invalid(format!(
                "the chunk starts at byte {start}, but the session holds {have} bytes: resume from byte {have}"
            )));
        }
        if end + 1 > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the object is larger than the server's limit of {max} bytes \
                     (skiff server --build-max-source): leave large files out with .gcloudignore"
                ),
            ));
        }
        let want = end + 1 - start;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&data_path)
            .map_err(|e| ApiError::internal(format!("the upload's data: {e}")))?;
        let mut stream = body.into_data_stream();
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the upload: {e}")))?;
            got += chunk.len() as u64;
            if got > want {
                let _ = file.set_len(have);
                return Err(ApiError::invalid(format!(
                    "the chunk holds more than the {want} bytes its Content-Range names"
                )));
            }
            file.write_all(&chunk)
                .map_err(|e| ApiError::internal(format!("the upload's data: {e}")))?;
        }
        if got != want {
            let _ = file.set_len(have);
            return Err(ApiError::invalid(format!(
                "the chunk holds {got} bytes, but its Content-Range names {want}"
            )));
        }
    }
    let now = std::fs::metadata(&data_path).map(|m| m.len()).unwrap_or(0);
    if total != Some(now) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        if now > 0 {
            r.headers_mut().insert(
                http::header::RANGE,
                http::HeaderValue::from_str(&format!("bytes=0-{}", now - 1))
                    .expect("a valid header"),
            );
        }
        return Ok(r);
    }
    // Complete: hash it and store it as the object.
    let spool = st
        .builds
        .staging()
        .spool()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let digest = {
        let data_path = data_path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = std::fs::File::open(&data_path)?;
            let mut h = sha2::Sha256::new();
            std::io::copy(&mut f, &mut h)?;
            Ok(format!("sha256:{}", hex::encode(h.finalize())))
        })
        .await
        .expect("hashing does not panic")
        .map_err(|e| ApiError::internal(format!("the upload's data: {e}")))?
    };
    std::fs::rename(&data_path, spool.path())
        .map_err(|e| ApiError::internal(format!("the upload's data: {e}")))?;
    let _ = std::fs::remove_file(&meta_path);
    let o = st
        .builds
        .staging()
        .insert_object(
            &session.bucket,
            &session.name,
            &session.content_type,
            spool,
            now,
            digest,
        )
        .map_err(staging_error)?;
    Ok(Json(json!(o)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ObjectMeta {
    name: Option<String>,
    content_type: Option<String>,
}

/// Writes `stream` to a new spool file, at most the server's `--build-max-source` bytes.
/// Returns the file, its size and `sha256:HEX`.
async fn spool_stream<S, E>(
    st: &ApiState,
    mut stream: S,
) -> ApiResult<(tempfile::NamedTempFile, u64, String)>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let max = st.builds.max_archive_bytes();
    let spool = st
        .builds
        .staging()
        .spool()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut file = spool
        .reopen()
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut hash = sha2::Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the object is larger than the server's limit of {max} bytes \
                     (skiff server --build-max-source): leave large files out with .gcloudignore"
                ),
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| ApiError::internal(format!("spooling the upload: {e}")))?;
    }
    Ok((
        spool,
        total,
        format!("sha256:{}", hex::encode(hash.finalize())),
    ))
}

/// The largest multipart upload taken (gcloud sends multipart only below 5 MiB).
const MAX_MULTIPART: usize = 64 << 20;

/// Splits a `multipart/related` body into its parts' header text and content. Hand-written
/// because gcloud's HTTP library (apitools, through Python's `email` generator) separates
/// lines with a bare LF, which Cloud Storage accepts but multipart parsers built to RFC 2046
/// (CRLF only, such as `multer`) refuse; this one takes either. A delimiter counts only at the
/// start of a line.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<(String, &'a [u8])>, String> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let starts: Vec<usize> = body
        .windows(delim.len())
        .enumerate()
        .filter(|(i, w)| *w == delim && (*i == 0 || body[i - 1] == b'\n'))
        .map(|(i, _)| i)
        .collect();
    let mut parts = Vec::new();
    let mut closed = false;
    for pair in starts.windows(2) {
        let mut seg = &body[pair[0] + delim.len()..pair[1]];
        if seg.starts_with(b"--") {
            closed = true;
            break;
        }
        seg = seg
            .strip_prefix(b"\r\n")
            .or_else(|| seg.strip_prefix(b"\n"))
            .ok_or("a delimiter line has trailing characters")?;
        seg = seg
            .strip_suffix(b"\r\n")
            .or_else(|| seg.strip_suffix(b"\n"))
            .unwrap_or(seg);
        let split = [&b"\r\n\r\n"[..], b"\n\n"]
            .iter()
            .filter_map(|sep| {
                seg.windows(sep.len())
                    .position(|w| w == *sep)
                    .map(|p| (p, sep.len()))
            })
            .min();
        let (headers, content) = match (seg.first(), split) {
            // A part without headers starts with its blank line.
            (Some(b'\n'), _) => ("", &seg[1..]),
            (Some(b'\r'), _) if seg.starts_with(b"\r\n") => ("", &seg[2..]),
            (_, Some((p, n))) => (
                std::str::from_utf8(&seg[..p]).map_err(|_| "a part's headers are not text")?,
                &seg[p + n..],
            ),
            (_, None) => return Err("a part has no blank line after its headers".into()),
        };
        parts.push((headers.to_string(), content));
    }
    if !closed {
        if let Some(&last) = starts.last() {
            closed = body[last + delim.len()..].starts_with(b"--");
        }
    }
    if !closed {
        return Err("the body does not end with its closing delimiter".into());
    }
    Ok(parts)
}

async fn upload_object(
    State(st): St,
    Path(bucket): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    // Fail before reading the data when the bucket is missing.
    st.builds
        .staging()
        .get_bucket(&bucket)
        .map_err(staging_error)?;
    let (meta, spooled) = match q.upload_type.as_deref().unwrap_or("media") {
        "resumable" => return start_resumable(&st, &bucket, q.name, &headers, body).await,
        "media" => {
            let s = spool_stream(&st, body.into_data_stream()).await?;
            let meta = ObjectMeta {
                name: None,
                content_type: Some(content_type.clone()),
            };
            (meta, s)
        }
        "multipart" => {
            let boundary = content_type
                .split(';')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("boundary="))
                .map(|b| b.trim_matches(|c| c == '"' || c == '\'').to_string())
                .filter(|b| !b.is_empty() && content_type.starts_with("multipart/"))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "uploadType=multipart needs a multipart/related body with a boundary",
                    )
                })?;
            let limit = (st.builds.max_archive_bytes() as usize).min(MAX_MULTIPART) + (64 << 10);
            let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "a multipart upload holds at most {} bytes here: send larger sources with uploadType=media",
                        limit - (64 << 10)
                    ),
                )
            })?;
            let parts = split_multipart(&body, &boundary)
                .map_err(|e| ApiError::invalid(format!("multipart upload: {e}")))?;
            let [(_, meta_bytes), (data_headers, data)] = parts.as_slice() else {
                return Err(ApiError::invalid(format!(
                    "multipart upload: expected 2 parts (the metadata, then the data), got {}",
                    parts.len()
                )));
            };
            let meta: ObjectMeta = crate::routes::parse_body(meta_bytes)?;
            let part_type = data_headers
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-type")
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let chunk = body.slice_ref(data);
            let s = spool_stream(
                &st,
                futures::stream::iter([Ok::<_, std::convert::Infallible>(chunk)]),
            )
            .await?;
            let meta = ObjectMeta {
                name: meta.name,
                content_type: meta.content_type.or(Some(part_type)),
            };
            (meta, s)
        }
        other => {
            return Err(ApiError::invalid(format!(
                "uploadType={other} is not served: use uploadType=media, multipart or resumable"
            )))
        }
    };
    let Some(name) = q.name.or(meta.name).filter(|n| !n.is_empty()) else {
        return Err(ApiError::invalid(
            "name: give the object's name as ?name=NAME or in the metadata",
        ));
    };
    let (file, size, digest) = spooled;
    let o = st
        .builds
        .staging()
        .insert_object(
            &bucket,
            &name,
            meta.content_type.as_deref().unwrap_or(""),
            file,
            size,
            digest,
        )
        .map_err(staging_error)?;
    Ok(Json(json!(o)).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn googles_run_images_give_way_to_skiffs_defaults() {
        assert!(super::google_run_image("gcr.io/buildpacks/google-22/run"));
        assert!(super::google_run_image(
            "us-central1-docker.pkg.dev/serverless-runtimes/google-22/runtimes/python312"
        ));
        assert!(!super::google_run_image("127.0.0.1:8081/base/busybox:1"));
        assert!(!super::google_run_image("python:3.12-slim"));
    }

    use super::split_multipart;

    #[test]
    fn content_ranges() {
        use super::content_range;
        assert_eq!(
            content_range("bytes 0-9/10"),
            Some((Some((0, 9)), Some(10)))
        );
        assert_eq!(content_range("bytes */10"), Some((None, Some(10))));
        assert_eq!(content_range("bytes 5-9/*"), Some((Some((5, 9)), None)));
        for bad in ["0-9/10", "bytes 0-x/10", "bytes 0-9"] {
            assert_eq!(content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn multipart_with_lf_or_crlf() {
        for nl in ["\n", "\r\n"] {
            let body = format!(
                "--b1{nl}Content-Type: application/json{nl}MIME-Version: 1.0{nl}{nl}{{\"name\":\"o\"}}{nl}\
                 --b1{nl}Content-Type: application/zip{nl}{nl}PK\x03\x04data{nl}\
                 --b1--{nl}"
            );
            let parts = split_multipart(body.as_bytes(), "b1").unwrap();
            assert_eq!(parts.len(), 2, "{nl:?}");
            assert_eq!(parts[0].1, b"{\"name\":\"o\"}");
            assert!(parts[1].0.contains("application/zip"));
            assert_eq!(parts[1].1, b"PK\x03\x04data");
        }
        // Content may hold the boundary text when it is not at a line start.
        let body = "--b1\n\nx--b1y\n--b1--";
        assert_eq!(
            split_multipart(body.as_bytes(), "b1").unwrap()[0].1,
            b"x--b1y"
        );
        for bad in ["--b1\n\nunclosed\n", "--b1\nNo-Blank-Line: x\n--b1--"] {
            assert!(split_multipart(bad.as_bytes(), "b1").is_err(), "{bad:?}");
        }
    }
}
