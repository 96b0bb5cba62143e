//! Knative Configurations and Routes (`GET /apis/serving.knative.dev/v1/namespaces/{ns}/
//! configurations|routes[/{name}]`), what `gcloud run configurations|routes list|describe`
//! read. As on Cloud Run, each service owns one of each, of its name; Skiff derives them from
//! the service when read rather than storing them: a Configuration is the service's template
//! and its latest revisions, a Route its traffic and URL.

use crate::error::{ApiError, ApiResult};
use crate::routes::{json_matches, label_selector, SelectorQuery, St};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use skiff_model::{Service, LABEL_SERVICE};
use std::sync::Arc;

pub fn routes() -> Router<Arc<crate::ApiState>> {
    let knative = "/apis/serving.knative.dev/v1/namespaces/{ns}";
    Router::new()
        .route(
            &format!("{knative}/configurations"),
            get(list_configurations),
        )
        .route(
            &format!("{knative}/configurations/{{name}}"),
            get(get_configuration),
        )
        .route(&format!("{knative}/routes"), get(list_routes))
        .route(&format!("{knative}/routes/{{name}}"), get(get_route))
}

/// `metadata` of an object a service owns: its name, namespace and labels, plus
/// `serving.knative.dev/service` and an owner reference to the service.
fn owned_metadata(svc: &Service) -> Value {
    let m = &svc.metadata;
    let mut labels = json!(m.labels);
    labels[LABEL_SERVICE] = json!(m.name);
    json!({
        "name": m.name,
        "namespace": m.namespace,
        "uid": m.uid,
        "generation": m.generation,
        "creationTimestamp": m.creation_timestamp,
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "name": m.name, "uid": m.uid, "controller": true, "blockOwnerDeletion": true,
        }],
    })
}

/// Conditions of the service of the given types, renamed `Ready` for the owned object.
fn ready_condition(svc: &Value, from: &str) -> Value {
    let c = svc["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == from))
        .cloned();
    match c {
        Some(mut c) => {
            c["type"] = json!("Ready");
            json!([c])
        }
        None => json!([]),
    }
}

/// The Configuration a service owns.
pub fn configuration(svc: &Service) -> Value {
    let v = serde_json::to_value(svc).unwrap_or_default();
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Configuration",
        "metadata": owned_metadata(svc),
        "spec": {"template": v["spec"]["template"]},
        "status": {
            "observedGeneration": v["status"]["observedGeneration"],
            "latestCreatedRevisionName": v["status"]["latestCreatedRevisionName"],
            "latestReadyRevisionName": v["status"]["latestReadyRevisionName"],
            "conditions": ready_condition(&v, "ConfigurationsReady"),
        },
    })
}

/// The Route a service owns.
pub fn route(svc: &Service) -> Value {
    let v = serde_json::to_value(svc).unwrap_or_default();
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": owned_metadata(svc),
        "spec": {"traffic": v["spec"]["traffic"]},
        "status": {
            "observedGeneration": v["status"]["observedGeneration"],
            "url": v["status"]["url"],
            "address": v["status"]["address"],
            "traffic": v["status"]["traffic"],
            "conditions": ready_condition(&v, "RoutesReady"),
        },
    })
}

fn list(
    st: &crate::ApiState,
    ns: &str,
    q: &SelectorQuery,
    kind: &str,
    make: fn(&Service) -> Value,
) -> ApiResult<Json<Value>> {
    let sel = label_selector(q.label_selector.as_deref())?;
    let items: Vec<Value> = st
        .controller
        .store
        .list_services(Some(ns))?
        .iter()
        .map(make)
        .filter(|v| json_matches(&sel, v))
        .collect();
    Ok(Json(
        json!({"apiVersion": "serving.knative.dev/v1", "kind": format!("{kind}List"), "metadata": {}, "items": items}),
    ))
}

fn one(
    st: &crate::ApiState,
    ns: &str,
    name: &str,
    what: &str,
    make: fn(&Service) -> Value,
) -> ApiResult<Json<Value>> {
    st.controller
        .store
        .get_service(ns, name)?
        .map(|s| Json(make(&s)))
        .ok_or_else(|| ApiError::not_found(format!("{what} {name} not found in project {ns}")))
}

async fn list_configurations(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<SelectorQuery>,
) -> ApiResult<Json<Value>> {
    list(&st, &ns, &q, "Configuration", configuration)
}

async fn get_configuration(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    one(&st, &ns, &name, "configuration", configuration)
}

async fn list_routes(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<SelectorQuery>,
) -> ApiResult<Json<Value>> {
    list(&st, &ns, &q, "Route", route)
}

async fn get_route(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    one(&st, &ns, &name, "route", route)
}
