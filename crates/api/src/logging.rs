//! Cloud Logging API v2's `entries:list` (`POST /v2/entries:list`), what `gcloud run services
//! logs read`, `gcloud run jobs logs read`, `gcloud logging read` and Google's logging client
//! libraries call: `resourceNames` (`projects/P`), `filter` (the logging query language, see
//! [`skiff_logging::filter`]), `orderBy` (`timestamp asc` or `timestamp desc`), `pageSize`
//! (default 50, at most 1000) and `pageToken`. Entries are Cloud Run's `LogEntry`s
//! ([`skiff_logging::entry`]).
//!
//! A read is narrowed before it is filtered: a service, job or execution the filter pins, and
//! its `timestamp` bounds, choose the store's index and range, so the rows read are about the
//! rows returned. One call reads at most [`MAX_SCANNED`] rows; past that it answers what it
//! found with a `nextPageToken` to go on from there, as Cloud Logging does for slow queries.

use crate::error::{ApiError, ApiResult};
use crate::routes::{parse_body, St};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_logging::{to_entry, Filter, LogResource, Scan};
use std::sync::Arc;

/// Rows one `entries:list` call reads at most.
pub const MAX_SCANNED: usize = 200_000;

pub fn routes() -> Router<Arc<crate::ApiState>> {
    Router::new().route("/v2/entries:list", post(list_entries))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ListRequest {
    resource_names: Vec<String>,
    /// Deprecated by Cloud Logging, still sent by old clients.
    project_ids: Vec<String>,
    filter: String,
    order_by: String,
    page_size: Option<i64>,
    page_token: String,
}

async fn list_entries(State(st): St, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let req: ListRequest = if body.is_empty() {
        ListRequest::default()
    } else {
        parse_body(&body)?
    };
    let mut projects: Vec<String> = req.project_ids.clone();
    for r in &req.resource_names {
        match r.strip_prefix("projects/") {
            Some(p) if !p.is_empty() && !p.contains('/') => projects.push(p.to_string()),
            _ => {
                return Err(ApiError::invalid(format!(
                    "resourceNames: {r:?} is not supported: Skiff keeps logs per project, give projects/PROJECT"
                )))
            }
        }
    }
    projects.dedup();
    let project = match projects.as_slice() {
        [p] => p.clone(),
        [] => {
            return Err(ApiError::invalid(
                "resourceNames: give the project to read, as projects/PROJECT",
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "resourceNames: give one project (projects/PROJECT); Skiff reads one at a time",
            ))
        }
    };
    let filter = Filter::parse(&req.filter).map_err(|e| ApiError::invalid(e.to_string()))?;
    let newest_first = match req.order_by.trim().to_ascii_lowercase().as_str() {
        "" | "timestamp" | "timestamp asc" => false,
        "timestamp desc" => true,
        other => {
            return Err(ApiError::invalid(format!(
                "orderBy {other:?}: use \"timestamp asc\" or \"timestamp desc\""
            )))
        }
    };
    let page_size = match req.page_size {
        None | Some(0) => 50,
        Some(n @ 1..=1000) => n as usize,
        Some(n) => return Err(ApiError::invalid(format!("pageSize {n}: give 1 to 1000"))),
    };
    let cursor = match req.page_token.as_str() {
        "" => None,
        t => Some(t.parse::<u64>().map_err(|_| {
            ApiError::invalid(format!(
                "pageToken {t:?} is not one this server gave: start again without it"
            ))
        })?),
    };

    let mut scan = Scan {
        namespace: project,
        newest_first,
        ..Scan::default()
    };
    let pin = |path: &[&str]| filter.pinned(path).map(str::to_string);
    if let Some(s) = pin(&["resource", "labels", "service_name"]) {
        scan.resource = Some(LogResource::Service(s));
    } else if let Some(j) = pin(&["resource", "labels", "job_name"]) {
        scan.resource = Some(LogResource::Job(j));
        scan.execution = pin(&["labels", "run.googleapis.com/execution_name"]);
    }
    (scan.since, scan.until) = filter.time_bounds();
    match (cursor, newest_first) {
        (Some(c), true) => {
            scan.until = Some(
                scan.until
                    .map_or(c.saturating_sub(1), |u| u.min(c.saturating_sub(1))),
            )
        }
        (Some(c), false) => scan.since = Some(scan.since.map_or(c + 1, |s| s.max(c + 1))),
        (None, _) => {}
    }

    // Skiff has one region and answers to any (its objects all say `us-central1`); gcloud
    // puts its `--region` in the filter, so an entry is read as being in the region the
    // filter names.
    let region = pin(&["resource", "labels", "location"]);
    let store = st.controller.serving.logs().store().clone();
    let (entries, next) = tokio::task::spawn_blocking(move || {
        let (mut entries, mut scanned, mut last) = (Vec::new(), 0usize, None);
        let mut full = false;
        let res = store.scan(&scan, |l| {
            scanned += 1;
            last = Some(l.seq);
            let mut e = to_entry(&l);
            if let Some(r) = &region {
                e["resource"]["labels"]["location"] = json!(r);
            }
            if filter.matches(&e) {
                entries.push(e);
            }
            full = entries.len() == page_size;
            !full && scanned < MAX_SCANNED
        });
        let next = if full || scanned >= MAX_SCANNED {
            last
        } else {
            None
        };
        res.map(|_| (entries, next))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = json!({ "entries": entries });
    if let Some(n) = next {
        out["nextPageToken"] = json!(n.to_string());
    }
    Ok(Json(out))
}
