//! HTTP handlers, one small function per operation listed in [`crate::openapi::OPERATIONS`].

use crate::error::{ApiError, ApiResult};
use crate::fields::FieldMask;
use crate::ApiState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_model::{
    Condition, LabelSelector, Policy, Revision, Service, TrafficTarget, LABEL_SERVICE,
};
use skiff_serving::{LogLine, LogResource};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

pub(crate) type St = State<Arc<ApiState>>;

/// Image uploads larger than this are refused.
const MAX_UPLOAD: u64 = 16 << 30;

pub fn routes() -> Router<Arc<ApiState>> {
    let knative = "/apis/serving.knative.dev/v1/namespaces/{ns}";
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/openapi.json",
            get(|| async { Json(crate::openapi::document()) }),
        )
        .route(
            &format!("{knative}/services"),
            get(list_services).post(create_service),
        )
        .route(
            &format!("{knative}/services/{{name}}"),
            get(get_service).put(replace_service).delete(delete_service),
        )
        .route(&format!("{knative}/revisions"), get(list_revisions))
        .route(
            &format!("{knative}/revisions/{{name}}"),
            get(get_revision).delete(delete_revision),
        )
        .route("/v1/projects/{project}", get(get_project))
        .route("/v1/projects/{project}/locations", get(list_locations))
        .route(
            "/v1/projects/{project}/locations/{location}/services",
            get(list_project_services),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/services/{resource}",
            get(iam_get).post(iam_post),
        )
        .route("/skiff/v1/images:import", post(import_image))
        .route("/skiff/v1/images", get(list_images))
        .route(
            "/skiff/v1/images/{*reference}",
            axum::routing::delete(delete_image),
        )
        .route("/skiff/v1/namespaces/{ns}/instances", get(list_instances))
        .route("/skiff/v1/namespaces/{ns}/logs", get(read_logs))
        .route("/skiff/v1/identityToken", post(identity_token))
        .merge(crate::jobs::routes())
        .merge(crate::usage::routes())
        .merge(crate::logging::routes())
        .merge(crate::derived::routes())
        .merge(crate::registries::routes())
        .merge(crate::builds::routes())
        .merge(crate::secrets::routes())
        .merge(crate::sources::routes())
        .fallback(|| async { ApiError::not_found("no such API path: see /openapi.json") })
}

/// Parses a JSON body; an error names the field at fault (`spec.template.spec.containers[0].image`).
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(field_error)
}

/// Parses a Kubernetes-style object (Service, Job). Its `status` is the server's to write: a
/// client may send one back (gcloud's updates carry the status they read), and it is ignored
/// rather than read, so that a status the server never wrote cannot fail a request.
pub(crate) fn parse_object<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    match v.as_object_mut() {
        Some(o) => drop(o.remove("status")),
        None => {
            return Err(ApiError::invalid(
                "invalid request body: expected a JSON object",
            ))
        }
    }
    serde_path_to_error::deserialize(v).map_err(field_error)
}

/// Parses an object (Service, Job) as [`parse_object`] does, and refuses any field Skiff would
/// drop (`spec.template.spec.volumes[0].secret: Skiff does not implement this field: remove
/// it`).
pub(crate) fn parse_known<T: serde::de::DeserializeOwned + serde::Serialize>(
    body: &[u8],
) -> ApiResult<T> {
    let obj: T = parse_object(body)?;
    let input: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))?;
    skiff_model::refuse_unknown_fields(&input, &obj).map_err(|e| ApiError::invalid(e.0))?;
    Ok(obj)
}

fn parse_service(body: &[u8]) -> ApiResult<Service> {
    parse_known(body)
}

fn field_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if path.is_empty() || path == "." {
        ApiError::invalid(format!("invalid request body: {inner}"))
    } else {
        ApiError::invalid(format!("invalid value for field {path}: {inner}"))
    }
}

/// `services.list`'s query: Cloud Run v1's `labelSelector`, `limit` and `continue`, and
/// Google's `fields` system parameter (see [`crate::fields`]).
#[derive(Deserialize)]
pub(crate) struct ServiceListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
    fields: Option<String>,
}

/// The `fields` mask of a request: the `fields` query parameter, else the
/// `X-Goog-FieldMask` header, as Google's APIs take either; `None` keeps every field.
pub(crate) fn field_mask(
    query: Option<&str>,
    headers: &http::HeaderMap,
) -> ApiResult<Option<FieldMask>> {
    let header = headers.get("x-goog-fieldmask");
    let text = match (query, header) {
        (Some(q), _) => q,
        (None, Some(h)) => h.to_str().map_err(|_| {
            ApiError::invalid("the X-Goog-FieldMask header is not text: give field names")
        })?,
        (None, None) => return Ok(None),
    };
    FieldMask::parse(text)
        .map(Some)
        .map_err(|e| ApiError::invalid(e.to_string()))
}

/// A namespace's services, ordered by name, as stored (10 000 services are served without a
/// parse and a serialization of each; only a label selector reads their labels). With
/// `limit`, a page: `metadata.continue` is then set when more follow and is passed back as
/// `continue` for the next page (it is the last name of the page). Without, every service,
/// as gcloud's `run services list` asks; that answer is kept ready and up to date (see
/// [`crate::list_cache`]). `fields` keeps only the fields it names.
async fn list_services(
    State(st): St,
    Path(ns): Path<String>,
    headers: http::HeaderMap,
    Query(q): Query<ServiceListQuery>,
) -> ApiResult<Response> {
    let sel = label_selector(q.label_selector.as_deref())?;
    let mask = field_mask(q.fields.as_deref(), &headers)?;
    let after = q.continue_.filter(|c| !c.is_empty());
    if let Some(c) = &after {
        skiff_model::validate_service_name(c).map_err(|_| {
            ApiError::invalid(format!(
                "continue {c:?} is not a token from an earlier page of this list"
            ))
        })?;
    }
    if q.limit == Some(0) {
        return Err(ApiError::invalid("limit must be at least 1"));
    }
    if q.limit.is_none() && after.is_none() {
        // The whole list: kept ready (pages are cheap to read).
        let st2 = st.clone();
        let body = tokio::task::spawn_blocking(move || {
            let query = crate::list_cache::ListQuery {
                ns,
                selector: sel,
                mask,
            };
            st2.lists.services(&st2.controller.store, query)
        })
        .await
        .map_err(|e| ApiError::internal(format!("listing services: {e}")))??;
        return Ok(json_response(body));
    }
    let st2 = st.clone();
    let body = tokio::task::spawn_blocking(move || -> ApiResult<_> {
        let mut items: Vec<(String, String)> = Vec::new();
        let mut next = None;
        let mut from = after;
        // Services the selector leaves out do not count toward the limit: read on until it
        // is met.
        'pages: loop {
            let page = st2.controller.store.list_service_bodies(
                &ns,
                from.as_deref(),
                q.limit.map(|l| l + 1),
            )?;
            let page = page.items;
            let done = q.limit.is_none_or(|l| page.len() <= l);
            for (name, body) in page {
                if q.limit.is_some_and(|l| items.len() == l) {
                    next = items.last().map(|(n, _)| n.clone());
                    break 'pages;
                }
                from = Some(name.clone());
                if !sel.requirements.is_empty() {
                    let labels: crate::jobs::LabelsOnly = serde_json::from_str(&body)
                        .map_err(|e| ApiError::internal(format!("stored service: {e}")))?;
                    if !sel.matches_map(&labels.metadata.labels) {
                        continue;
                    }
                }
                items.push((name, body));
            }
            if done {
                break;
            }
        }
        let body = stored_list_text(
            "serving.knative.dev/v1",
            "ServiceList",
            next,
            items.iter().map(|(_, body)| body.as_str()),
            mask.as_ref(),
        )?;
        Ok(Bytes::from(body))
    })
    .await
    .map_err(|e| ApiError::internal(format!("listing services: {e}")))??;
    Ok(json_response(body))
}

fn json_response(body: Bytes) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A Kubernetes-style list answer (`{"apiVersion","kind","metadata":{"continue"?},"items"}`)
/// spliced from items' stored JSON as they are, without parsing them again; `next` becomes
/// `metadata.continue` when more are left.
pub(crate) fn stored_list<'a>(
    api_version: &str,
    kind: &str,
    next: Option<String>,
    items: impl Iterator<Item = &'a str> + Clone,
) -> ApiResult<Response> {
    let body = stored_list_text(api_version, kind, next, items, None)?;
    Ok(json_response(Bytes::from(body)))
}

/// The text of [`stored_list`]'s answer, with only what `fields` keeps of it when given (the
/// mask applies to the whole answer: `items(metadata.name)` keeps each item's name and drops
/// `apiVersion`, `kind` and `metadata`).
///
/// Errors: a stored item is not JSON (internal).
pub(crate) fn stored_list_text<'a>(
    api_version: &str,
    kind: &str,
    next: Option<String>,
    items: impl Iterator<Item = &'a str> + Clone,
    fields: Option<&FieldMask>,
) -> ApiResult<String> {
    let corrupt = |e: serde_json::Error| ApiError::internal(format!("stored object: {e}"));
    let (mut out, item_mask) = list_head(api_version, kind, next, fields)?;
    if let Some(m) = item_mask {
        out.reserve(match m {
            FieldMask::All => items.clone().map(|b| b.len() + 1).sum::<usize>() + 2,
            FieldMask::Fields(_) => 4096,
        });
        for (i, body) in items.enumerate() {
            if i > 0 {
                out.push(',');
            }
            m.project(body, &mut out).map_err(corrupt)?;
        }
        out.push(']');
    }
    out.push('}');
    Ok(out)
}

/// The start of a list answer (`{` and the members before `items` that `fields` keeps), and
/// what the mask keeps of each item. When it keeps `items`, the text ends with `"items":[`,
/// where the first item goes; else the answer is the text and a closing `}`.
///
/// Errors: none in practice (the head is JSON Skiff makes); internal if it were not.
pub(crate) fn list_head<'m>(
    api_version: &str,
    kind: &str,
    next: Option<String>,
    fields: Option<&'m FieldMask>,
) -> ApiResult<(String, Option<&'m FieldMask>)> {
    let corrupt = |e: serde_json::Error| ApiError::internal(format!("list head: {e}"));
    let mask = fields.unwrap_or(&FieldMask::All);
    let metadata = match next {
        Some(token) => json!({ "continue": token }),
        None => json!({}),
    };
    let head = [
        ("apiVersion", json!(api_version).to_string()),
        ("kind", json!(kind).to_string()),
        ("metadata", metadata.to_string()),
    ];
    let mut out = String::with_capacity(128);
    out.push('{');
    for (key, text) in head {
        if let Some(m) = mask.child(key) {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(&format!("{key:?}:"));
            m.project(&text, &mut out).map_err(corrupt)?;
        }
    }
    let items = mask.child("items");
    if items.is_some() {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(r#""items":["#);
    }
    Ok((out, items))
}

/// `GET /v1/projects/{p}/locations/{l}/services`: what gcloud lists without a region
/// (location `-`, every region). Skiff has one region, so every location lists the project.
async fn list_project_services(
    st: St,
    Path((project, _location)): Path<(String, String)>,
    headers: http::HeaderMap,
    q: Query<ServiceListQuery>,
) -> ApiResult<Response> {
    list_services(st, Path(project), headers, q).await
}

/// Resource Manager's `GET /v1/projects/{p}`: gcloud asks it for the project's number before
/// it replaces a service or job from a file that names its namespace. Skiff's projects are
/// its namespaces, made on first use; each gets a stable number derived from its name.
async fn get_project(Path(project): Path<String>) -> ApiResult<Json<Value>> {
    skiff_model::validate_namespace(&project)?;
    Ok(Json(json!({
        "projectId": project,
        "name": project,
        "projectNumber": project_number(&project).to_string(),
        "lifecycleState": "ACTIVE",
    })))
}

use skiff_model::project_number;

/// `GET /v1/projects/{p}/locations` (`gcloud run regions list`): Skiff's one region, as
/// Cloud Run's `ListLocations` answers (`name`, `locationId`, `displayName`, `labels`).
async fn list_locations(Path(project): Path<String>) -> ApiResult<Json<Value>> {
    skiff_model::validate_namespace(&project)?;
    Ok(Json(json!({"locations": [{
        "name": format!("projects/{project}/locations/{}", skiff_model::REGION),
        "locationId": skiff_model::REGION,
        "displayName": "Skiff (this machine)",
        "labels": {"cloud.googleapis.com/region": skiff_model::REGION},
    }]})))
}

async fn create_service(
    State(st): St,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Service>> {
    let svc = parse_service(&body)?;
    let out = st.controller.apply_service(&ns, svc, true).await?;
    audit_service(&st, &ns, &out.metadata.name, "CreateService").await;
    Ok(Json(out))
}

/// Tells Eventarc-style triggers that `google.cloud.run.v1.Services.METHOD` succeeded on
/// `namespaces/NS/services/NAME`.
async fn audit_service(st: &ApiState, ns: &str, name: &str, method: &str) {
    st.triggers
        .audit(
            ns,
            &format!("google.cloud.run.v1.Services.{method}"),
            &format!("namespaces/{ns}/services/{name}"),
        )
        .await;
}

async fn replace_service(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Service>> {
    let svc = parse_service(&body)?;
    if svc.metadata.name != name {
        return Err(ApiError::invalid(format!(
            "metadata.name {:?} does not match {name:?} in the URL",
            svc.metadata.name
        )));
    }
    let out = st.controller.apply_service(&ns, svc, false).await?;
    audit_service(&st, &ns, &name, "ReplaceService").await;
    Ok(Json(out))
}

async fn get_service(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Service>> {
    st.controller
        .store
        .get_service(&ns, &name)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("service {name} not found in project {ns}")))
}

async fn delete_service(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let svc = st.controller.delete_service(&ns, &name).await?;
    Ok(Json(json!({
        "apiVersion": "v1", "kind": "Status", "status": "Success",
        "details": {"name": name, "kind": "services", "uid": svc.metadata.uid}
    })))
}

/// Parses a list call's `labelSelector` (Kubernetes' syntax, see [`LabelSelector::parse`]);
/// absent is the empty selector, a bad one INVALID_ARGUMENT naming it.
pub(crate) fn label_selector(sel: Option<&str>) -> ApiResult<LabelSelector> {
    LabelSelector::parse(sel.unwrap_or("")).map_err(|e| ApiError::invalid(e.to_string()))
}

/// Whether a stored object (JSON) has `metadata.labels` that `sel` matches.
pub(crate) fn json_matches(sel: &LabelSelector, v: &Value) -> bool {
    let labels = &v["metadata"]["labels"];
    sel.matches(|k| labels.get(k).and_then(Value::as_str))
}

/// The `labelSelector` query parameter of every list call.
#[derive(Deserialize)]
pub(crate) struct SelectorQuery {
    #[serde(rename = "labelSelector")]
    pub(crate) label_selector: Option<String>,
}

async fn list_revisions(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<SelectorQuery>,
) -> ApiResult<Json<Value>> {
    let sel = label_selector(q.label_selector.as_deref())?;
    let mut items: Vec<Revision> = st
        .controller
        .store
        .list_revisions(Some(&ns), sel.equality(LABEL_SERVICE))?;
    items.retain(|r| sel.matches_map(&r.metadata.labels));
    mark_active(&st, &ns, &mut items)?;
    Ok(Json(
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionList", "metadata": {}, "items": items}),
    ))
}

async fn get_revision(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Revision>> {
    let rev = st
        .controller
        .store
        .get_revision(&ns, &name)?
        .ok_or_else(|| ApiError::not_found(format!("revision {name} not found in project {ns}")))?;
    let mut one = [rev];
    mark_active(&st, &ns, &mut one)?;
    let [rev] = one;
    Ok(Json(rev))
}

/// Sets each revision's `Active` condition (gcloud's ACTIVE column): whether its service
/// routes traffic to it now. Computed when read, from the service's status, so that a
/// traffic change does not rewrite every revision.
fn mark_active(st: &ApiState, ns: &str, revisions: &mut [Revision]) -> ApiResult<()> {
    let mut traffic: std::collections::HashMap<String, Vec<TrafficTarget>> = Default::default();
    for r in revisions {
        let service = r
            .metadata
            .labels
            .get(LABEL_SERVICE)
            .cloned()
            .unwrap_or_default();
        if !traffic.contains_key(&service) {
            let t = st
                .controller
                .store
                .get_service(ns, &service)?
                .and_then(|s| s.status)
                .map(|s| s.traffic)
                .unwrap_or_default();
            traffic.insert(service.clone(), t);
        }
        let serving = traffic[&service].iter().any(|t| {
            t.revision_name.as_deref() == Some(r.metadata.name.as_str())
                && t.percent.unwrap_or(0) > 0
        });
        let mut c = if serving {
            Condition::new("Active", "True", None, None)
        } else {
            Condition::new(
                "Active",
                "False",
                Some("NoTraffic"),
                Some("The revision is not receiving traffic".to_string()),
            )
        };
        c.last_transition_time = None;
        c.severity = Some("Info".to_string());
        let status = r.status.get_or_insert_with(Default::default);
        status.conditions.retain(|c| c.type_ != "Active");
        status.conditions.push(c);
    }
    Ok(())
}

async fn delete_revision(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let rev = st.controller.delete_revision(&ns, &name).await?;
    Ok(Json(json!({
        "apiVersion": "v1", "kind": "Status", "status": "Success",
        "details": {"name": name, "kind": "revisions", "uid": rev.metadata.uid}
    })))
}

fn iam_target(resource: &str) -> ApiResult<(&str, &str)> {
    resource.split_once(':').ok_or_else(|| {
        ApiError::not_found("expected SERVICE:getIamPolicy, :setIamPolicy or :testIamPermissions")
    })
}

async fn iam_get(
    State(st): St,
    Path((project, _loc, resource)): Path<(String, String, String)>,
) -> ApiResult<Json<Policy>> {
    let (service, verb) = iam_target(&resource)?;
    if verb != "getIamPolicy" {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{verb} needs POST"),
        ));
    }
    if st
        .controller
        .store
        .get_service(&project, service)?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "service {service} not found in project {project}"
        )));
    }
    Ok(Json(
        st.controller
            .store
            .get_policy(&project, service)?
            .unwrap_or_default(),
    ))
}

async fn iam_post(
    State(st): St,
    Path((project, loc, resource)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let (service, verb) = iam_target(&resource)?;
    match verb {
        "getIamPolicy" => {
            let p = iam_get(State(st), Path((project, loc, resource.clone()))).await?;
            Ok(Json(serde_json::to_value(p.0).unwrap_or_default()))
        }
        "setIamPolicy" => {
            #[derive(Deserialize)]
            struct SetReq {
                policy: Policy,
            }
            let req: SetReq = parse_body(&body)?;
            let p = st
                .controller
                .set_policy(&project, service, req.policy)
                .await?;
            Ok(Json(serde_json::to_value(p).unwrap_or_default()))
        }
        "testIamPermissions" => {
            // The admin token holds every permission.
            let v: Value = parse_body(&body)?;
            Ok(Json(
                json!({"permissions": v.get("permissions").cloned().unwrap_or(json!([]))}),
            ))
        }
        other => Err(ApiError::not_found(format!("unknown IAM method {other}"))),
    }
}

#[derive(Deserialize)]
struct ImportQuery {
    name: Option<String>,
}

async fn import_image(
    State(st): St,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> ApiResult<Json<Value>> {
    std::fs::create_dir_all(&st.tmp_dir)
        .map_err(|e| ApiError::internal(format!("{}: {e}", st.tmp_dir.display())))?;
    let spool = tempfile::NamedTempFile::new_in(&st.tmp_dir)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut file = tokio::fs::File::from_std(
        spool
            .reopen()
            .map_err(|e| ApiError::internal(e.to_string()))?,
    );
    let mut stream = body.into_data_stream();
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the upload: {e}")))?;
        total += chunk.len() as u64;
        if total > MAX_UPLOAD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the archive is larger than {} GiB", MAX_UPLOAD >> 30),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    drop(file);
    if total == 0 {
        return Err(ApiError::invalid(
            "empty upload: send the image archive as the request body",
        ));
    }
    let images = st.controller.images.clone();
    // The store's errors name the file they read, here the server's spool file: the client
    // names the user's own path instead (`cannot import ./app-layout: ...`).
    let spooled = spool.path().display().to_string();
    let imported =
        tokio::task::spawn_blocking(move || images.import(spool.path(), q.name.as_deref()))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| {
                let mut e = ApiError::from(e);
                e.message = e
                    .message
                    .replace(&format!("{spooled}: "), "")
                    .replace(&spooled, "the archive");
                e
            })?;
    Ok(Json(
        json!({"reference": imported.reference, "digest": imported.digest}),
    ))
}

async fn list_images(State(st): St) -> ApiResult<Json<Value>> {
    let images = st.controller.images.clone();
    let list = tokio::task::spawn_blocking(move || images.list())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({"images": list})))
}

async fn delete_image(State(st): St, Path(reference): Path<String>) -> ApiResult<Json<Value>> {
    // Deployed revisions pin their image's digest; those blobs stay until the revision goes.
    let pinned: Vec<String> = st
        .controller
        .store
        .list_revisions(None, None)?
        .iter()
        .filter_map(|r| r.status.as_ref())
        .flat_map(skiff_model::RevisionStatus::pinned_digests)
        .collect();
    let images = st.controller.images.clone();
    tokio::task::spawn_blocking(move || images.delete(&reference, &pinned))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct ServiceQuery {
    service: Option<String>,
}

async fn list_instances(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<ServiceQuery>,
) -> Json<Value> {
    Json(json!({"instances": st.controller.serving.instances(&ns, q.service.as_deref())}))
}

#[derive(Deserialize)]
struct LogQuery {
    service: Option<String>,
    job: Option<String>,
    execution: Option<String>,
    limit: Option<usize>,
    follow: Option<bool>,
}

async fn read_logs(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let resource = match (q.service, q.job) {
        (Some(s), None) => {
            if st.controller.store.get_service(&ns, &s)?.is_none() {
                return Err(ApiError::not_found(format!(
                    "service {s} not found in project {ns}"
                )));
            }
            LogResource::Service(s)
        }
        (None, Some(j)) => {
            if st
                .controller
                .store
                .get_object::<Value>(skiff_store::kind::JOB, &ns, &j)?
                .is_none()
            {
                return Err(ApiError::not_found(format!(
                    "job {j} not found in project {ns}"
                )));
            }
            LogResource::Job(j)
        }
        _ => {
            return Err(ApiError::invalid(
                "pass exactly one of service=NAME or job=NAME",
            ))
        }
    };
    let execution = q.execution;
    let limit = q.limit.unwrap_or(100);
    let sink = st.controller.serving.logs().clone();
    // Subscribe before reading the file, then skip what the file already had.
    let live = q.follow.unwrap_or(false).then(|| sink.subscribe());
    let (ns2, res2, exec2) = (ns.clone(), resource.clone(), execution.clone());
    let past = tokio::task::spawn_blocking(move || sink.tail(&ns2, &res2, exec2.as_deref(), limit))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let last_seq = past.last().map_or(0, |l| l.seq);
    let encode = |l: &LogLine| {
        let mut v = serde_json::to_vec(l).unwrap_or_default();
        v.push(b'\n');
        Ok::<_, std::io::Error>(bytes::Bytes::from(v))
    };
    let head = futures::stream::iter(past.iter().map(encode).collect::<Vec<_>>());
    let body = match live {
        None => Body::from_stream(head),
        Some(rx) => {
            let tail = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| {
                let out = match r {
                    Ok(l)
                        if l.seq > last_seq && l.matches(&ns, &resource, execution.as_deref()) =>
                    {
                        Some(encode(&l))
                    }
                    _ => None,
                };
                async move { out }
            });
            Body::from_stream(head.chain(tail))
        }
    };
    Ok(([(http::header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

#[derive(Deserialize)]
struct TokenReq {
    audience: Option<String>,
    /// Mint for this service account instead of the admin (the admin impersonating it, as
    /// `gcloud auth print-identity-token --impersonate-service-account` does).
    #[serde(default, rename = "serviceAccount")]
    service_account: Option<String>,
}

async fn identity_token(State(st): St, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let req: TokenReq = if body.is_empty() {
        TokenReq {
            audience: None,
            service_account: None,
        }
    } else {
        parse_body(&body)?
    };
    let token = match req.service_account.as_deref() {
        Some(sa) => {
            if !sa.contains('@') {
                return Err(ApiError::invalid(format!(
                    "invalid serviceAccount {sa:?}: give a service account's email, like NAME@PROJECT.iam.gserviceaccount.com"
                )));
            }
            st.controller
                .serving
                .mint_token_for(sa, req.audience.as_deref())
        }
        None => st.controller.serving.mint_token(req.audience.as_deref()),
    };
    Ok(Json(json!({ "token": token })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_mask_from_the_query_else_the_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(field_mask(None, &headers).unwrap(), None);
        headers.insert("X-Goog-FieldMask", "items.kind".parse().unwrap());
        let from_header = field_mask(None, &headers).unwrap().unwrap();
        assert_eq!(from_header, FieldMask::parse("items(kind)").unwrap());
        let from_query = field_mask(Some("kind"), &headers).unwrap().unwrap();
        assert_eq!(from_query, FieldMask::parse("kind").unwrap());
        let e = field_mask(Some("a("), &headers).unwrap_err();
        assert!(format!("{e:?}").contains("invalid fields"), "{e:?}");
    }

    #[test]
    fn stored_lists_whole_and_projected() {
        let items = [
            r#"{"metadata":{"name":"a","uid":"1"}}"#,
            r#"{"metadata":{"name":"b"}}"#,
        ];
        let text = |next: Option<&str>, fields: Option<&str>| {
            let mask = fields.map(|f| FieldMask::parse(f).unwrap());
            stored_list_text(
                "v1",
                "L",
                next.map(String::from),
                items.iter().copied(),
                mask.as_ref(),
            )
            .unwrap()
        };
        assert_eq!(
            text(None, None),
            r#"{"apiVersion":"v1","kind":"L","metadata":{},"items":[{"metadata":{"name":"a","uid":"1"}},{"metadata":{"name":"b"}}]}"#
        );
        assert_eq!(
            text(Some("b"), Some("metadata,items.metadata.name")),
            r#"{"metadata":{"continue":"b"},"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]}"#
        );
        assert_eq!(text(None, Some("kind")), r#"{"kind":"L"}"#);
    }
}
