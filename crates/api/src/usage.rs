//! Metering over the API: usage reports under `/skiff/v1/`, the Prometheus exposition at
//! `/metrics`, and the checkpoint loop that persists what the meters accrue.

use crate::error::{ApiError, ApiResult};
use crate::routes::St;
use crate::ApiState;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Datelike, SecondsFormat, TimeZone, Utc};
use serde::Deserialize;
use skiff_metering::registry::Kind;
use skiff_metering::{Metrics, Registry, Report};
use skiff_store::{Store, UsageFilter};
use std::sync::Arc;
use std::time::Duration;

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/skiff/v1/namespaces/{ns}/usage", get(usage))
}

async fn metrics(State(st): St) -> Response {
    st.controller.serving.refresh_metrics();
    (
        [(
            http::header::CONTENT_TYPE,
            skiff_metering::metrics::CONTENT_TYPE,
        )],
        st.metrics.render() + &skiff_pubsub::metrics::render(&st.pubsub),
    )
        .into_response()
}

#[derive(Deserialize)]
struct UsageQuery {
    service: Option<String>,
    job: Option<String>,
    /// RFC 3339; default: the start of the current month (UTC).
    since: Option<String>,
    /// RFC 3339; default: now.
    until: Option<String>,
}

fn instant(name: &str, v: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::invalid(format!(
                "invalid {name} {v:?}: {e}: give an RFC 3339 time like 2026-11-01T00:00:00Z"
            ))
        })
}

async fn usage(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<Report>> {
    let now = Utc::now();
    let since = match &q.since {
        Some(v) => instant("since", v)?,
        None => Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now),
    };
    let until = match &q.until {
        Some(v) => instant("until", v)?,
        None => now,
    };
    if until < since {
        return Err(ApiError::invalid(format!(
            "until {} is before since {}: give a period that ends after it starts",
            until.to_rfc3339(),
            since.to_rfc3339()
        )));
    }
    let (kind, owner) = match (q.service, q.job) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("give either service or job, not both"))
        }
        (Some(s), None) => (Some(Kind::Service), Some(s)),
        (None, Some(j)) => (Some(Kind::Job), Some(j)),
        (None, None) => (None, None),
    };
    let filter = UsageFilter {
        namespace: Some(ns),
        kind,
        owner,
        since_ms: since.timestamp_millis(),
        until_ms: until.timestamp_millis(),
    };
    let store = st.controller.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.usage(&filter))
        .await
        .map_err(|e| ApiError::internal(format!("usage query: {e}")))??;
    Ok(Json(skiff_metering::report::build(
        &rows,
        &st.prices,
        since.to_rfc3339_opts(SecondsFormat::Secs, true),
        until.to_rfc3339_opts(SecondsFormat::Secs, true),
    )))
}

/// How often the meters' accruals are written.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Takes one checkpoint: reads the live instances' cgroups, writes what accrued in one
/// transaction, and adds it to the metrics.
pub async fn checkpoint(meters: &Arc<Registry>, store: &Arc<Store>, metrics: &Arc<Metrics>) {
    let (meters, store) = (meters.clone(), store.clone());
    let cp = tokio::task::spawn_blocking(move || {
        let cp = meters.checkpoint(skiff_metering::now_ms(), skiff_runtime::cgroup::stats);
        if let Err(e) = store.record_usage(&cp) {
            tracing::error!("recording usage: {e}");
        }
        cp
    })
    .await;
    if let Ok(cp) = cp {
        metrics.record(&cp);
    }
}

/// Checkpoints every [`CHECKPOINT_EVERY`] until the returned handle is aborted.
pub fn start_checkpoints(
    meters: Arc<Registry>,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            checkpoint(&meters, &store, &metrics).await;
        }
    })
}
