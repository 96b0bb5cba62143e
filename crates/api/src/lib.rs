//! The control API: Cloud Run Admin API v1 (Knative `serving.knative.dev/v1` services and
//! revisions, IAM policy calls, `run.googleapis.com/v1` jobs, executions and tasks), Cloud
//! Scheduler jobs, Secret Manager v1 secrets, Eventarc v1 triggers, domain mappings
//! (`domains.cloudrun.com/v1`), what `gcloud run deploy --source` calls (Cloud Storage staging
//! buckets, Artifact Registry repositories, Cloud Run v2 `builds:submit`, Cloud Build
//! operations; `sources.rs`), plus Skiff's own resources under `/skiff/v1` (images,
//! instances, logs, identity tokens), all behind the admin token.
//!
//! Handlers are thin: they parse, call the [`controller::Controller`], and shape responses.

mod builds;
pub mod controller;
mod derived;
pub mod error;
pub mod fields;
mod jobs;
pub mod list_cache;
mod logging;
mod openapi;
mod registries;
mod routes;
mod secrets;
mod sources;
pub mod usage;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use controller::Controller;
use error::ApiError;
use http::StatusCode;
use std::path::PathBuf;
use std::sync::Arc;

pub struct ApiState {
    pub controller: Arc<Controller>,
    pub jobs: Arc<skiff_jobs::Jobs>,
    pub scheduler: Arc<skiff_jobs::scheduler::Scheduler>,
    pub admin_token: String,
    /// Where uploads are spooled before import.
    pub tmp_dir: PathBuf,
    pub metrics: Arc<skiff_metering::Metrics>,
    pub prices: skiff_metering::Prices,
    /// Source builds (`/skiff/v1/namespaces/NS/builds`).
    pub builds: Arc<skiff_build::Builds>,
    /// The Pub/Sub broker, whose REST API is also served here behind the admin token.
    pub pubsub: Arc<skiff_pubsub::Broker>,
    /// Eventarc triggers, whose REST API is served here behind the admin token.
    pub triggers: Arc<skiff_events::Triggers>,
    /// Domain mappings (`domains.cloudrun.com/v1`), whose REST API is served here behind the
    /// admin token.
    pub domains: Arc<skiff_domains::DomainMappings>,
    /// Whole `services.list` answers ready to send, while no service changed since.
    pub lists: list_cache::ListCache,
}

impl ApiState {
    /// The secret store (the serving plane's, which resolves references at instance start).
    pub fn secrets(&self) -> &skiff_secrets::SecretStore {
        self.controller.serving.secrets()
    }
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `given` is the admin token, compared in constant time.
pub fn same_token(given: &str, admin: &str) -> bool {
    same(given.as_bytes(), admin.as_bytes())
}

async fn require_admin(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    // gcloud uses the API as its HTTP proxy (see `skiff gcloud configure`): requests for
    // Skiff come in absolute form and are routed by path; a tunnel elsewhere is refused.
    if req.method() == http::Method::CONNECT {
        let target = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("the Skiff API is gcloud's proxy for Skiff's own APIs only: it opens no tunnel to {target}"),
        )
        .into_response();
    }
    let path = req.uri().path();
    if path == "/openapi.json" || path == "/healthz" {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same(t.as_bytes(), st.admin_token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the token is not this server's admin token: use DATA_DIR/admin.token",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <admin token> (the token is in DATA_DIR/admin.token)",
        )
        .into_response(),
    }
}

pub fn router(state: Arc<ApiState>) -> axum::Router {
    let api = routes::routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_admin,
        ))
        .with_state(state.clone())
        .merge(skiff_pubsub::rest::router(state.pubsub.clone()).layer(
            axum::middleware::from_fn_with_state(state.clone(), require_admin),
        ))
        .merge(skiff_events::rest::router(state.triggers.clone()).layer(
            axum::middleware::from_fn_with_state(state.clone(), require_admin),
        ))
        .merge(skiff_domains::rest::router(state.domains.clone()).layer(
            axum::middleware::from_fn_with_state(state.clone(), require_admin),
        ));
    // The OCI distribution API (`/v2/`) does its own auth (the admin token as a basic-auth
    // password), as registry clients expect.
    let controller = state.controller.clone();
    let pinned: skiff_registry::serve::PinnedFn =
        Arc::new(move || controller.pinned_digests().unwrap_or_default());
    match skiff_registry::serve::RegistryServer::new(
        state.controller.images.clone(),
        state.admin_token.clone(),
        pinned,
    ) {
        Ok(registry) => api.merge(skiff_registry::serve::router(registry)),
        Err(e) => {
            tracing::error!("the registry API is off: cannot create its upload directory ({e})");
            api
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_comparison() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"ab"));
    }
}
