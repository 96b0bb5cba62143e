//! Skiff as an OCI distribution registry: the `/v2/` API of the distribution spec on the
//! control API's listener, storing into the image store, so that `skopeo copy`, `podman push`
//! and `buildah push` can push images that `skiff deploy --image REPO:TAG` then runs.
//!
//! What it serves: `GET /v2/`; blob `HEAD`/`GET` (with `Range: bytes=N-[M]` for a resumed
//! download) and `DELETE` (of a blob nothing uses any longer); uploads by `POST` (monolithic with
//! `?digest=`, cross-repository mounts with `?mount=&from=`, or a session), `PATCH` chunks,
//! `PUT` to finish, `GET` status, `DELETE` to cancel; manifests by tag or digest (`HEAD`,
//! `GET`, `PUT` with optional `?tag=` parameters, `DELETE`); `tags/list` (paged with `n` and
//! `last`, a `Link` header to the next page); `referrers/{digest}` (with `?artifactType=`).
//! A pushed image manifest is
//! imported (verified, layers unpacked) under `REPO:TAG` (or `REPO@sha256:...`), the same
//! reference `skiff images list` shows and `skiff deploy` takes. Only container images are
//! kept runnable (unpacked); image indexes, Docker manifest lists and artifacts (signatures,
//! SBOMs...) are stored byte for byte, an index picked by platform on deploy, and listed by
//! `referrers/` when they name a `subject`.
//!
//! Uploads are written under `images/uploads/` (outside what the store's garbage collection
//! sweeps): a session's data in `sessions/<uuid>`, a finished blob in `blobs/<hex>` until a
//! manifest that names it is pushed and imported.
//!
//! Auth: the admin token, as the password of HTTP basic auth with any user name (what
//! `skopeo login`, `podman login` and `--creds USER:TOKEN` send) or as a bearer token. A
//! request without it gets 401 with `WWW-Authenticate: Bearer realm="http://HOST/v2/token",
//! service="skiff"`: the registry token flow, where `GET /v2/token` with basic auth answers
//! with a bearer token.

// Handlers and their helpers fail with the HTTP response to send (`Result<_, Response>`),
// built only on the failure path; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use skiff_image::{ImageError, ImageStore};
use tokio::io::AsyncWriteExt;

const API_VERSION: &str = "registry/2.0";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// The OCI empty descriptor's digest: `sha256` of `{}`, the config of many artifacts.
const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
/// Largest manifest accepted.
const MANIFEST_LIMIT: usize = 4 << 20;
/// A manifest push declared larger than [`MANIFEST_LIMIT`] but not than this is read to its
/// end (and dropped) before it is refused, so that the client sees the 413; a larger one is
/// refused at once and its connection closed.
const MANIFEST_DRAIN_LIMIT: u64 = 64 << 20;

/// Digests (`sha256:...`) that must not be garbage-collected: those deployed revisions and
/// jobs pin. Called when a manifest is deleted.
pub type PinnedFn = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// What the registry's handlers share.
pub struct RegistryServer {
    store: Arc<ImageStore>,
    admin_token: String,
    pinned: PinnedFn,
    uploads: PathBuf,
}

impl RegistryServer {
    /// A registry over `store`, behind `admin_token`. Creates `STORE/uploads/`.
    pub fn new(
        store: Arc<ImageStore>,
        admin_token: String,
        pinned: PinnedFn,
    ) -> std::io::Result<Arc<RegistryServer>> {
        let uploads = store.root().join("uploads");
        std::fs::create_dir_all(uploads.join("sessions"))?;
        std::fs::create_dir_all(uploads.join("blobs"))?;
        Ok(Arc::new(RegistryServer {
            store,
            admin_token,
            pinned,
            uploads,
        }))
    }
}

/// Remove what abandoned pushes left under `STORE/uploads/`: upload sessions, finished blobs
/// no manifest claimed and staging directories, each only once untouched for `idle` (so an
/// upload in progress is never removed). Returns how many entries went.
pub fn sweep_uploads(store_root: &Path, idle: std::time::Duration) -> std::io::Result<usize> {
    let uploads = store_root.join("uploads");
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for dir in [
        uploads.join("sessions"),
        uploads.join("blobs"),
        uploads.clone(),
    ] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            if dir == uploads && !name.to_string_lossy().starts_with("push-") {
                continue;
            }
            let meta = entry.metadata()?;
            let age = now.duration_since(meta.modified()?).unwrap_or_default();
            if age < idle {
                continue;
            }
            if meta.is_dir() {
                std::fs::remove_dir_all(entry.path())?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// The `/v2/` routes, to be merged into a listener's router outside its own auth.
pub fn router(server: Arc<RegistryServer>) -> Router {
    Router::new()
        .route("/v2", any(dispatch_root))
        .route("/v2/", any(dispatch_root))
        .route("/v2/token", axum::routing::get(token))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(server)
}

/// A distribution-spec error: `{"errors":[{"code","message"}]}`.
fn oci_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message.into()}]});
    let mut r = (status, axum::Json(body)).into_response();
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin token as a basic-auth password (any user) or as a bearer token.
fn authorized(server: &RegistryServer, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let token = server.admin_token.as_bytes();
    if let Some(b) = v.strip_prefix("Basic ") {
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) else {
            return false;
        };
        return match raw.iter().position(|c| *c == b':') {
            Some(i) => same(&raw[i + 1..], token),
            None => false,
        };
    }
    v.strip_prefix("Bearer ")
        .is_some_and(|t| same(t.trim().as_bytes(), token))
}

/// 401 with a bearer challenge whose realm is this server's token endpoint, as Docker Hub
/// and the reference registry answer: clients then ask `/v2/token` for a token with the
/// credentials the user gave (`skopeo login`, `podman login`, `--creds`).
fn unauthorized(headers: &HeaderMap) -> Response {
    let mut r = oci_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "authentication required: log in with any user name and Skiff's admin token (DATA_DIR/admin.token) as the password",
    );
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
        .unwrap_or("127.0.0.1");
    let challenge = format!("Bearer realm=\"http://{host}/v2/token\",service=\"skiff\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

/// The token endpoint of the bearer challenge: basic auth with the admin token as the password
/// gets a bearer token (the admin token itself: the client has just shown it holds it).
async fn token(State(s): State<Arc<RegistryServer>>, headers: HeaderMap) -> Response {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Basic "));
    if !basic || !authorized(&s, &headers) {
        let mut r = oci_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the token service wants basic auth: any user name and Skiff's admin token as the password",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"skiff\""),
        );
        return r;
    }
    axum::Json(serde_json::json!({
        "token": s.admin_token, "access_token": s.admin_token, "expires_in": 3600,
    }))
    .into_response()
}

async fn dispatch_root(State(s): State<Arc<RegistryServer>>, req: Request) -> Response {
    if !authorized(&s, req.headers()) {
        return unauthorized(req.headers());
    }
    let mut r = (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

#[derive(Deserialize, Default)]
struct Params {
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
    n: Option<usize>,
    last: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
}

/// What a `/v2/<name>/...` path asks for.
#[derive(Debug, PartialEq)]
enum Target<'a> {
    Blob(&'a str, &'a str),
    Uploads(&'a str),
    Upload(&'a str, &'a str),
    Manifest(&'a str, &'a str),
    Tags(&'a str),
    Referrers(&'a str, &'a str),
}

fn parse_target<'a>(rest: &'a str) -> Option<Target<'a>> {
    let rest = rest.trim_start_matches('/');
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Target::Tags(name));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Target::Uploads(name));
    }
    for (sep, make) in [
        (
            "/blobs/uploads/",
            Target::Upload as fn(&'a str, &'a str) -> Target<'a>,
        ),
        ("/manifests/", Target::Manifest),
        ("/referrers/", Target::Referrers),
        ("/blobs/", Target::Blob),
    ] {
        if let Some(i) = rest.rfind(sep) {
            let (name, last) = (&rest[..i], &rest[i + sep.len()..]);
            if !name.is_empty() && !last.is_empty() && !last.contains('/') {
                return Some(make(name, last));
            }
        }
    }
    None
}

/// A repository name as the distribution spec allows it (and the image store stores it).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

fn valid_digest(d: &str) -> Option<&str> {
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

async fn dispatch(
    State(s): State<Arc<RegistryServer>>,
    UrlPath(rest): UrlPath<String>,
    Query(q): Query<Params>,
    req: Request,
) -> Response {
    if !authorized(&s, req.headers()) {
        return unauthorized(req.headers());
    }
    let Some(target) = parse_target(&rest) else {
        return oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no such registry path /v2/{rest}"),
        );
    };
    let name = match &target {
        Target::Blob(n, _)
        | Target::Uploads(n)
        | Target::Upload(n, _)
        | Target::Manifest(n, _)
        | Target::Tags(n)
        | Target::Referrers(n, _) => *n,
    };
    if !valid_name(name) {
        return oci_error(
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
            format!("invalid repository name {name:?}: lower-case path components of letters, digits and ._-"),
        );
    }
    let method = req.method().clone();
    let result = match (target, method) {
        (Target::Blob(_, d), Method::GET) => {
            let range = req
                .headers()
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            get_blob(&s, d, true, range.as_deref()).await
        }
        (Target::Blob(_, d), Method::HEAD) => get_blob(&s, d, false, None).await,
        (Target::Blob(_, d), Method::DELETE) => delete_blob(&s, d).await,
        (Target::Uploads(n), Method::POST) => start_upload(&s, n, &q, req).await,
        (Target::Upload(n, id), Method::PATCH) => patch_upload(&s, n, id, req).await,
        (Target::Upload(n, id), Method::PUT) => finish_upload(&s, n, id, &q, req).await,
        (Target::Upload(n, id), Method::GET) => upload_status(&s, n, id).await,
        (Target::Upload(_, id), Method::DELETE) => cancel_upload(&s, id).await,
        (Target::Manifest(n, r), Method::GET) => get_manifest(&s, n, r, true).await,
        (Target::Manifest(n, r), Method::HEAD) => get_manifest(&s, n, r, false).await,
        (Target::Manifest(n, r), Method::PUT) => {
            // `?tag=A&tag=B`: more tags for a manifest pushed by digest.
            let tags: Vec<String> =
                form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                    .filter(|(k, _)| k == "tag")
                    .map(|(_, v)| v.into_owned())
                    .collect();
            put_manifest(&s, n, r, &tags, req).await
        }
        (Target::Manifest(n, r), Method::DELETE) => delete_manifest(&s, n, r).await,
        (Target::Tags(n), Method::GET) => tags(&s, n, &q).await,
        (Target::Referrers(n, d), Method::GET) => {
            referrers(&s, n, d, q.artifact_type.as_deref()).await
        }
        (_, m) => Ok(oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{m} is not supported here"),
        )),
    };
    result.unwrap_or_else(|r| r)
}

type Answer = Result<Response, Response>;

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "registry request failed");
    oci_error(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", e.to_string())
}

fn digest_invalid(d: &str) -> Response {
    oci_error(
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
        format!("invalid digest {d:?}: give sha256: and 64 lower-case hex digits"),
    )
}

/// Where the blob `hex` is: the store, or the finished uploads.
fn find_blob(s: &RegistryServer, digest: &str) -> Option<PathBuf> {
    let hex = valid_digest(digest)?;
    s.store.stored_blob(digest).or_else(|| {
        let p = s.uploads.join("blobs").join(hex);
        p.is_file().then_some(p)
    })
}

fn with_headers(mut r: Response, pairs: &[(&'static str, String)]) -> Response {
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(*k, v);
        }
    }
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static(API_VERSION),
    );
    r
}

/// The byte range `bytes=START-[END]` of a blob `len` bytes long, as `(start, end)` with
/// `end` inclusive; `None` when it does not parse or lies outside the blob (the distribution
/// spec lets a registry answer with the whole blob or 416 then; Skiff answers 416).
fn blob_range(range: &str, len: u64) -> Option<(u64, u64)> {
    let (start, end) = range.trim().strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = match end.trim() {
        "" => len.checked_sub(1)?,
        e => e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
    };
    (start <= end).then_some((start, end))
}

async fn get_blob(s: &RegistryServer, digest: &str, body: bool, range: Option<&str>) -> Answer {
    if valid_digest(digest).is_none() {
        return Err(digest_invalid(digest));
    }
    let Some(path) = find_blob(s, digest) else {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not in this registry"),
        ));
    };
    let mut f = tokio::fs::File::open(&path).await.map_err(internal)?;
    let len = f.metadata().await.map_err(internal)?.len();
    if let Some(range) = range {
        // A resumed download: the bytes from where it stopped (RFC 9110 range requests).
        let Some((start, end)) = blob_range(range, len) else {
            let r = Response::builder()
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .body(Body::empty())
                .map_err(internal)?;
            return Err(with_headers(r, &[]));
        };
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        f.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(internal)?;
        let part = end - start + 1;
        let r = Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, part)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))
            .body(Body::from_stream(tokio_util::io::ReaderStream::new(
                f.take(part),
            )))
            .map_err(internal)?;
        return Ok(with_headers(
            r,
            &[("Docker-Content-Digest", digest.to_string())],
        ));
    }
    let b = if body {
        Body::from_stream(tokio_util::io::ReaderStream::new(f))
    } else {
        Body::empty()
    };
    let r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .body(b)
        .map_err(internal)?;
    Ok(with_headers(
        r,
        &[("Docker-Content-Digest", digest.to_string())],
    ))
}

fn session_path(s: &RegistryServer, id: &str) -> Option<PathBuf> {
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| s.uploads.join("sessions").join(id))
}

fn upload_unknown(id: &str) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        format!("no upload {id:?} in progress: start one with POST .../blobs/uploads/"),
    )
}

fn upload_answer(status: StatusCode, name: &str, id: &str, len: u64) -> Response {
    let r = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("static response");
    with_headers(
        r,
        &[
            ("Location", format!("/v2/{name}/blobs/uploads/{id}")),
            ("Range", format!("0-{}", len.saturating_sub(1))),
            ("Docker-Upload-UUID", id.to_string()),
        ],
    )
}

fn blob_created(name: &str, digest: &str) -> Response {
    let r = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("static response");
    with_headers(
        r,
        &[
            ("Location", format!("/v2/{name}/blobs/{digest}")),
            ("Docker-Content-Digest", digest.to_string()),
        ],
    )
}

/// Append the request body to `path`; returns the file's new length.
async fn append_body(path: &Path, req: Request) -> Result<u64, Response> {
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .await
        .map_err(internal)?;
    let mut stream = req.into_body().into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            oci_error(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("reading the upload: {e}"),
            )
        })?;
        f.write_all(&chunk).await.map_err(internal)?;
    }
    f.flush().await.map_err(internal)?;
    Ok(f.metadata().await.map_err(internal)?.len())
}

/// Hash the session file and, when it matches `digest`, move it to the finished blobs.
async fn commit_blob(s: &RegistryServer, session: &Path, digest: &str) -> Result<(), Response> {
    let Some(hex) = valid_digest(digest) else {
        return Err(digest_invalid(digest));
    };
    let p = session.to_path_buf();
    let actual = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut f = std::fs::File::open(&p)?;
        let mut h = Sha256::new();
        std::io::copy(&mut f, &mut h)?;
        Ok(format!("sha256:{}", hex::encode(h.finalize())))
    })
    .await
    .map_err(internal)?
    .map_err(internal)?;
    if actual != digest {
        let _ = tokio::fs::remove_file(session).await;
        return Err(oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the upload's content has digest {actual}, not {digest}"),
        ));
    }
    if s.store.stored_blob(digest).is_some() {
        let _ = tokio::fs::remove_file(session).await;
        return Ok(());
    }
    tokio::fs::rename(session, s.uploads.join("blobs").join(hex))
        .await
        .map_err(internal)
}

fn new_session_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

async fn start_upload(s: &RegistryServer, name: &str, q: &Params, req: Request) -> Answer {
    if let Some(d) = &q.mount {
        // Cross-repository mount: every repository shares the one content store.
        if valid_digest(d).is_some() && find_blob(s, d).is_some() {
            let _ = &q.from;
            return Ok(blob_created(name, d));
        }
    }
    let id = new_session_id();
    let path = s.uploads.join("sessions").join(&id);
    if let Some(d) = &q.digest {
        // Monolithic upload: the body is the whole blob.
        append_body(&path, req).await?;
        commit_blob(s, &path, d).await?;
        return Ok(blob_created(name, d));
    }
    tokio::fs::write(&path, b"").await.map_err(internal)?;
    Ok(upload_answer(StatusCode::ACCEPTED, name, &id, 0))
}

async fn patch_upload(s: &RegistryServer, name: &str, id: &str, req: Request) -> Answer {
    let Some(path) = session_path(s, id).filter(|p| p.is_file()) else {
        return Err(upload_unknown(id));
    };
    let range = req
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    check_chunk_start(&path, name, id, range).await?;
    let len = append_body(&path, req).await?;
    Ok(upload_answer(StatusCode::ACCEPTED, name, id, len))
}

/// A chunk (`PATCH`, or the closing `PUT` with a body) must start where the upload stands:
/// `Content-Range: START-END` with START the bytes received so far, else 416 with the
/// upload's `Range`.
async fn check_chunk_start(
    path: &Path,
    name: &str,
    id: &str,
    range: Option<String>,
) -> Result<(), Response> {
    let Some(range) = range else {
        return Ok(());
    };
    let have = tokio::fs::metadata(path).await.map_err(internal)?.len();
    let start = range
        .trim_start_matches("bytes ")
        .split(['-', '/'])
        .next()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if start != Some(have) {
        return Err(upload_answer(
            StatusCode::RANGE_NOT_SATISFIABLE,
            name,
            id,
            have,
        ));
    }
    Ok(())
}

async fn finish_upload(
    s: &RegistryServer,
    name: &str,
    id: &str,
    q: &Params,
    req: Request,
) -> Answer {
    let Some(path) = session_path(s, id).filter(|p| p.is_file()) else {
        return Err(upload_unknown(id));
    };
    let Some(d) = q.digest.clone() else {
        return Err(oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "finish an upload with ?digest=sha256:...",
        ));
    };
    let range = req
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    check_chunk_start(&path, name, id, range).await?;
    append_body(&path, req).await?;
    commit_blob(s, &path, &d).await?;
    Ok(blob_created(name, &d))
}

/// `DELETE /v2/<name>/blobs/<digest>`: an unclaimed upload, or a stored blob that no
/// image, index, artifact, revision or job reaches any longer (202); 404 when there is no
/// such blob; 405 while something still uses it.
async fn delete_blob(s: &RegistryServer, digest: &str) -> Answer {
    let Some(hex) = valid_digest(digest) else {
        return Err(digest_invalid(digest));
    };
    let upload = s.uploads.join("blobs").join(hex);
    let mut found = match tokio::fs::remove_file(&upload).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(internal(e)),
    };
    let pinned: Vec<String> = (s.pinned)();
    let store = s.store.clone();
    let d = digest.to_string();
    match tokio::task::spawn_blocking(move || store.delete_blob(&d, &pinned))
        .await
        .map_err(internal)?
    {
        Ok(stored) => found |= stored,
        Err(e @ ImageError::InUse { .. }) => {
            return Err(oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                e.to_string(),
            ))
        }
        Err(e) => return Err(internal(e)),
    }
    if !found {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not in this registry"),
        ));
    }
    Ok(with_headers(
        StatusCode::ACCEPTED.into_response(),
        &[("Docker-Content-Digest", digest.to_string())],
    ))
}

async fn upload_status(s: &RegistryServer, name: &str, id: &str) -> Answer {
    let Some(path) = session_path(s, id).filter(|p| p.is_file()) else {
        return Err(upload_unknown(id));
    };
    let len = tokio::fs::metadata(&path).await.map_err(internal)?.len();
    Ok(upload_answer(StatusCode::NO_CONTENT, name, id, len))
}

async fn cancel_upload(s: &RegistryServer, id: &str) -> Answer {
    let Some(path) = session_path(s, id).filter(|p| p.is_file()) else {
        return Err(upload_unknown(id));
    };
    tokio::fs::remove_file(&path).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `REPO:TAG` or `REPO@DIGEST`, the store's key for a manifest reference.
fn store_reference(name: &str, reference: &str) -> Result<String, Response> {
    if reference.starts_with("sha256:") {
        valid_digest(reference).ok_or_else(|| digest_invalid(reference))?;
        Ok(format!("{name}@{reference}"))
    } else if valid_tag(reference) {
        Ok(format!("{name}:{reference}"))
    } else {
        Err(oci_error(
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
            format!("invalid tag {reference:?}: up to 128 letters, digits and _.- (not starting with . or -)"),
        ))
    }
}

fn manifest_unknown(name: &str, reference: &str) -> Response {
    oci_error(
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
        format!("no manifest {reference} in repository {name}"),
    )
}

/// The digest `name` + `reference` stands for in the store.
async fn lookup(s: &RegistryServer, name: &str, reference: &str) -> Result<String, Response> {
    let key = store_reference(name, reference)?;
    let store = s.store.clone();
    let found = tokio::task::spawn_blocking(move || {
        let d = store.digest_of(&key)?;
        // A digest is only in a repository if some reference of that repository has it.
        if key.contains('@') {
            let listed = store.list()?;
            let name = key.split('@').next().unwrap_or_default();
            if !listed
                .iter()
                .any(|i| i.digest == d && repo_of(&i.reference) == Some(name))
            {
                return Err(ImageError::NotFound { reference: key });
            }
        }
        Ok(d)
    })
    .await
    .map_err(internal)?;
    match found {
        Ok(d) => Ok(d),
        Err(ImageError::NotFound { .. }) | Err(ImageError::InvalidReference { .. }) => {
            Err(manifest_unknown(name, reference))
        }
        Err(e) => Err(internal(e)),
    }
}

/// `REPO` of a stored `REPO:TAG` or `REPO@DIGEST`.
fn repo_of(reference: &str) -> Option<&str> {
    if let Some((n, _)) = reference.split_once('@') {
        return Some(n);
    }
    let (n, t) = reference.rsplit_once(':')?;
    (!t.contains('/')).then_some(n)
}

fn media_type_of(bytes: &[u8]) -> String {
    skiff_image::manifest_media_type(bytes)
}

async fn get_manifest(s: &RegistryServer, name: &str, reference: &str, body: bool) -> Answer {
    let digest = lookup(s, name, reference).await?;
    let path = find_blob(s, &digest).ok_or_else(|| manifest_unknown(name, reference))?;
    let bytes = tokio::fs::read(&path).await.map_err(internal)?;
    let r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, media_type_of(&bytes))
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(if body {
            Body::from(bytes)
        } else {
            Body::empty()
        })
        .map_err(internal)?;
    Ok(with_headers(r, &[("Docker-Content-Digest", digest)]))
}

fn manifest_invalid(reason: impl Into<String>) -> Response {
    oci_error(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", reason)
}

fn blob_unknown_in_manifest(what: &str, digest: &str) -> Response {
    oci_error(
        StatusCode::BAD_REQUEST,
        "MANIFEST_BLOB_UNKNOWN",
        format!("{what} {digest} is not in this registry: push it first"),
    )
}

/// True for a non-distributable ("foreign") layer, which registries do not hold (OCI image
/// spec, `layer.md`): a manifest may name one the registry lacks.
fn non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
}

/// The digests a manifest names: blobs in `config` and `layers` (without non-distributable
/// layers), manifests in `manifests`, and its `subject`'s.
fn named_digests(v: &serde_json::Value) -> (Vec<String>, Vec<String>, Option<String>) {
    let digests = |key: &str| -> Vec<String> {
        let one = |d: &serde_json::Value| -> Option<String> {
            if non_distributable(d["mediaType"].as_str().unwrap_or_default()) {
                return None;
            }
            Some(d["digest"].as_str().unwrap_or_default().to_string())
        };
        match &v[key] {
            serde_json::Value::Array(a) => a.iter().filter_map(one).collect(),
            serde_json::Value::Null => Vec::new(),
            d => one(d).into_iter().collect(),
        }
    };
    let mut blobs = digests("config");
    blobs.extend(digests("layers"));
    let subject = v["subject"]["digest"].as_str().map(str::to_string);
    (blobs, digests("manifests"), subject)
}

/// `PUT /v2/<name>/manifests/<reference>`: any well-formed image manifest, image index
/// (or Docker manifest list) or artifact manifest whose blobs, and for an index whose
/// manifests, are in the registry (distribution spec, "Pushing Manifests"). A container image
/// is imported (verified, layers unpacked) so that it deploys; an index or an artifact, or an
/// image whose layers do not unpack, is stored byte for byte. A `subject` need not exist yet;
/// its digest is echoed in `OCI-Subject`. Each of `tags` (the `tag` query parameters) also
/// names it, and is listed in `OCI-Tag`. Errors: 413 over 4 MiB, `MANIFEST_INVALID`,
/// `MANIFEST_BLOB_UNKNOWN`, `DIGEST_INVALID`, `TAG_INVALID`.
async fn put_manifest(
    s: &RegistryServer,
    name: &str,
    reference: &str,
    tags: &[String],
    req: Request,
) -> Answer {
    let key = store_reference(name, reference)?;
    let mut extra_keys = Vec::with_capacity(tags.len());
    for t in tags {
        if t.starts_with("sha256:") {
            return Err(oci_error(
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!("tag {t:?} is a digest; a tag parameter names a tag"),
            ));
        }
        extra_keys.push(store_reference(name, t)?);
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    let too_large = || {
        let mut r = oci_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
            "the manifest is larger than 4 MiB, the most this registry accepts",
        );
        // The rest of the body is not read: the connection cannot carry another request.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MANIFEST_LIMIT as u64) {
        if n > MANIFEST_DRAIN_LIMIT {
            return Err(too_large());
        }
        // Read and drop the body first: a client that sends the whole body before it reads
        // the answer (most do) would otherwise meet a closed connection, not the 413.
        let mut body = req.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
        return Err(oci_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MANIFEST_INVALID",
            "the manifest is larger than 4 MiB, the most this registry accepts",
        ));
    }
    let bytes: Bytes = match axum::body::to_bytes(req.into_body(), MANIFEST_LIMIT).await {
        Ok(b) => b,
        Err(e) if format!("{e:?}").contains("LengthLimit") => return Err(too_large()),
        Err(e) => return Err(manifest_invalid(format!("cannot read the manifest: {e}"))),
    };
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if reference.starts_with("sha256:") && reference != digest {
        return Err(oci_error(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the manifest has digest {digest}, not {reference}"),
        ));
    }
    let kind = skiff_image::manifest_kind(&bytes).map_err(manifest_invalid)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| manifest_invalid(format!("the manifest is not valid JSON: {e}")))?;
    let mt = skiff_image::manifest_media_type(&bytes);
    if let (Some(ct), Some(declared)) = (&content_type, v["mediaType"].as_str()) {
        if ct != declared {
            return Err(manifest_invalid(format!(
                "Content-Type {ct} differs from the manifest's mediaType {declared}: send the manifest with Content-Type {declared}"
            )));
        }
    }
    let (blob_digests, manifest_digests, subject) = named_digests(&v);
    for d in blob_digests
        .iter()
        .chain(&manifest_digests)
        .chain(subject.iter())
    {
        if valid_digest(d).is_none() {
            return Err(manifest_invalid(format!(
                "the manifest names {d:?}; only sha256 digests (sha256: and 64 lower-case hex digits) are supported"
            )));
        }
    }
    // Every blob must be here (the empty descriptor `{}` is written by the store if missing),
    // and every manifest an index lists.
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for d in &blob_digests {
        match find_blob(s, d) {
            Some(p) => found.push((d.clone(), p)),
            None if d == EMPTY_DIGEST => {}
            None => return Err(blob_unknown_in_manifest("blob", d)),
        }
    }
    for d in &manifest_digests {
        if s.store.stored_blob(d).is_none() {
            return Err(blob_unknown_in_manifest("manifest", d));
        }
    }

    let mut stored = false;
    if kind == skiff_image::ManifestKind::Image {
        match import_image(s, &key, &digest, &mt, &bytes, &found).await {
            Ok(()) => stored = true,
            Err(ImageError::Io { .. }) | Err(ImageError::Corrupt { .. }) => {
                return Err(internal("cannot store the image"))
            }
            // Kept as pushed: a registry stores what it is given; deploying it says why not.
            Err(e) => {
                tracing::warn!(reference = %key, error = %e, "pushed image kept without unpacking")
            }
        }
    }
    if !stored {
        let store = s.store.clone();
        let (key2, bytes2, found2) = (key.clone(), bytes.to_vec(), found.clone());
        tokio::task::spawn_blocking(move || {
            store.put_content(&key2, &bytes2, &found2, skiff_image::ImageSource::Pushed)
        })
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            ImageError::MissingContent { what, digest } => blob_unknown_in_manifest(&what, &digest),
            ImageError::DigestMismatch { .. } => {
                oci_error(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e.to_string())
            }
            ImageError::Io { .. } | ImageError::Corrupt { .. } => internal(e),
            e => manifest_invalid(e.to_string()),
        })?;
        tracing::info!(reference = %key, %digest, media_type = %mt, "manifest pushed");
    }
    for k in &extra_keys {
        let store = s.store.clone();
        let (k, d) = (k.clone(), digest.clone());
        tokio::task::spawn_blocking(move || store.tag(&k, &d, skiff_image::ImageSource::Pushed))
            .await
            .map_err(internal)?
            .map_err(internal)?;
    }
    // Finished uploads this manifest used are in the store now.
    for (d, _) in &found {
        if let Some(hex) = valid_digest(d) {
            if s.store.stored_blob(d).is_some() {
                let _ = std::fs::remove_file(s.uploads.join("blobs").join(hex));
            }
        }
    }
    let r = Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .map_err(internal)?;
    let mut headers = vec![
        ("Location", format!("/v2/{name}/manifests/{digest}")),
        ("Docker-Content-Digest", digest),
    ];
    if let Some(subject) = subject {
        headers.push(("OCI-Subject", subject));
    }
    if !tags.is_empty() {
        headers.push(("OCI-Tag", tags.join(", ")));
    }
    Ok(with_headers(r, &headers))
}

/// Import a pushed container image: stage an OCI layout of the manifest and its blobs (hard
/// links) and import it, the same verification and unpacking as any image.
async fn import_image(
    s: &RegistryServer,
    key: &str,
    digest: &str,
    mt: &str,
    bytes: &[u8],
    blobs: &[(String, PathBuf)],
) -> Result<(), ImageError> {
    let io = |e: std::io::Error| ImageError::Io {
        context: "cannot stage the pushed image".into(),
        source: e,
    };
    let staging = tempfile::Builder::new()
        .prefix("push-")
        .tempdir_in(&s.uploads)
        .map_err(io)?;
    let layout = staging.path();
    let blobs_dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs_dir).map_err(io)?;
    for (d, src) in blobs {
        let dest = blobs_dir.join(&d["sha256:".len()..]);
        if !dest.exists() {
            std::fs::hard_link(src, &dest)
                .or_else(|_| std::fs::copy(src, &dest).map(|_| ()))
                .map_err(io)?;
        }
    }
    std::fs::write(blobs_dir.join(&digest["sha256:".len()..]), bytes).map_err(io)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io)?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": mt, "digest": digest, "size": bytes.len()}]});
    std::fs::write(layout.join("index.json"), index.to_string()).map_err(io)?;
    let store = s.store.clone();
    let key = key.to_string();
    let imported = tokio::task::spawn_blocking(move || {
        let r = store.import_pulled(staging.path(), &key, skiff_image::ImageSource::Pushed);
        drop(staging);
        r
    })
    .await
    .map_err(|e| ImageError::Io {
        context: "the import task failed".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
    tracing::info!(reference = %imported.reference, digest = %imported.digest, "image pushed");
    Ok(())
}

async fn delete_manifest(s: &RegistryServer, name: &str, reference: &str) -> Answer {
    lookup(s, name, reference).await?;
    let key = store_reference(name, reference)?;
    let pinned: Vec<String> = (s.pinned)();
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.delete(&key, &pinned))
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            ImageError::NotFound { .. } => manifest_unknown(name, reference),
            e => internal(e),
        })?;
    Ok(StatusCode::ACCEPTED.into_response())
}

async fn tags(s: &RegistryServer, name: &str, q: &Params) -> Answer {
    let store = s.store.clone();
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let mut tags: Vec<String> = list
        .iter()
        .filter(|i| !i.reference.contains('@'))
        .filter_map(|i| {
            let (n, t) = i.reference.rsplit_once(':')?;
            (n == name).then(|| t.to_string())
        })
        .collect();
    if tags.is_empty() && !list.iter().any(|i| repo_of(&i.reference) == Some(name)) {
        return Err(oci_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("no repository {name}"),
        ));
    }
    tags.sort();
    if let Some(last) = &q.last {
        tags.retain(|t| t > last);
    }
    // A page of `n`: a `Link` header names the next one when more tags follow.
    let mut next = None;
    if let Some(n) = q.n {
        if tags.len() > n {
            tags.truncate(n);
            if let Some(last) = tags.last() {
                next = Some(format!(
                    "</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""
                ));
            }
        }
    }
    let r = axum::Json(serde_json::json!({"name": name, "tags": tags})).into_response();
    Ok(match next {
        Some(link) => with_headers(r, &[("Link", link)]),
        None => r,
    })
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=T]`: the manifests and indexes of `name`
/// whose `subject` is `digest`, as an image index of descriptors carrying each one's
/// `artifactType` (a manifest's config media type when it has none) and annotations
/// (distribution spec v1.1, "Listing Referrers"). An empty index when there are none, never
/// 404; with `artifactType`, only that type and the header `OCI-Filters-Applied: artifactType`.
async fn referrers(
    s: &RegistryServer,
    name: &str,
    digest: &str,
    artifact_type: Option<&str>,
) -> Answer {
    if valid_digest(digest).is_none() {
        return Err(digest_invalid(digest));
    }
    let store = s.store.clone();
    let list = tokio::task::spawn_blocking(move || store.list())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let mut seen = std::collections::HashSet::new();
    let mut manifests = Vec::new();
    for i in list.iter().filter(|i| repo_of(&i.reference) == Some(name)) {
        if !seen.insert(i.digest.clone()) {
            continue;
        }
        let Some(path) = find_blob(s, &i.digest) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if v["subject"]["digest"].as_str() == Some(digest) {
            let mut d = serde_json::json!({
                "mediaType": media_type_of(&bytes), "digest": i.digest, "size": bytes.len(),
            });
            let at = v
                .get("artifactType")
                .cloned()
                .or_else(|| v["config"].get("mediaType").cloned());
            if let Some(at) = at {
                d["artifactType"] = at;
            }
            if let Some(a) = v.get("annotations") {
                d["annotations"] = a.clone();
            }
            if artifact_type.is_some_and(|t| d["artifactType"].as_str() != Some(t)) {
                continue;
            }
            manifests.push(d);
        }
    }
    let body =
        serde_json::json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": manifests});
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, MT_OCI_INDEX)
        .body(Body::from(body.to_string()))
        .map_err(internal)?;
    if artifact_type.is_some() {
        r.headers_mut().insert(
            "OCI-Filters-Applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(with_headers(r, &[]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let d = "sha256:0123";
        assert_eq!(
            parse_target("a/b/blobs/sha256:0123"),
            Some(Target::Blob("a/b", d))
        );
        assert_eq!(parse_target("a/blobs/uploads/"), Some(Target::Uploads("a")));
        assert_eq!(
            parse_target("a/blobs/uploads/abc"),
            Some(Target::Upload("a", "abc"))
        );
        assert_eq!(
            parse_target("x/manifests/v1"),
            Some(Target::Manifest("x", "v1"))
        );
        assert_eq!(parse_target("x/y/tags/list"), Some(Target::Tags("x/y")));
        assert_eq!(
            parse_target("x/referrers/sha256:0123"),
            Some(Target::Referrers("x", d))
        );
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            parse_target("blobs/manifests/latest"),
            Some(Target::Manifest("blobs", "latest"))
        );
        assert_eq!(parse_target("nothing"), None);
        assert_eq!(parse_target("x/manifests/"), None);
    }

    #[test]
    fn blob_ranges() {
        assert_eq!(blob_range("bytes=0-", 10), Some((0, 9)));
        assert_eq!(blob_range("bytes=4-", 10), Some((4, 9)));
        assert_eq!(blob_range("bytes=4-6", 10), Some((4, 6)));
        assert_eq!(blob_range("bytes=4-60", 10), Some((4, 9)));
        for bad in [
            "bytes=10-",
            "bytes=5-4",
            "bytes=-3",
            "items=0-",
            "bytes=x-",
            "0-3",
        ] {
            assert_eq!(blob_range(bad, 10), None, "{bad}");
        }
        assert_eq!(blob_range("bytes=0-", 0), None);
    }

    #[test]
    fn names_tags_and_references() {
        for ok in ["a", "team/app", "a.b-c_d/e"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "A", "a//b", "-a", "a-", "a b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_tag("v1.0_rc-1") && !valid_tag(".x") && !valid_tag(""));
        assert_eq!(store_reference("a", "v1").unwrap(), "a:v1");
        assert_eq!(repo_of("a/b:v1"), Some("a/b"));
        assert_eq!(repo_of("a/b@sha256:00"), Some("a/b"));
        assert_eq!(repo_of("host:5000/a"), None);
    }
}
