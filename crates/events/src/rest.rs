//! The Eventarc v1 REST API (`eventarc.googleapis.com/v1`), as `gcloud eventarc triggers`
//! calls it: `POST /v1/projects/P/locations/L/triggers?triggerId=T` and `DELETE .../T` return a
//! long-running `Operation` that is already done (with the trigger in `response`); `GET` one
//! trigger or the list; [`operation`] answers gcloud's poll (the API serves that path, shared
//! with Cloud Build's and Artifact Registry's operations).
//! Callers put it behind the admin token.

use crate::error::EventsError;
use crate::trigger::{Trigger, Triggers, OPERATION_KIND};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

impl IntoResponse for EventsError {
    fn into_response(self) -> Response {
        (self.http_status(), Json(self.json())).into_response()
    }
}

type Result<T> = std::result::Result<T, EventsError>;

/// The Eventarc routes over `triggers`.
pub fn router(triggers: Arc<Triggers>) -> axum::Router {
    axum::Router::new()
        .route(
            "/v1/projects/{project}/locations/{location}/triggers",
            get(list).post(create),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/triggers/{trigger}",
            get(describe).delete(delete),
        )
        .with_state(triggers)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateQuery {
    #[serde(default)]
    trigger_id: String,
    #[serde(default)]
    validate_only: bool,
}

async fn create(
    State(t): State<Arc<Triggers>>,
    Path((project, location)): Path<(String, String)>,
    Query(q): Query<CreateQuery>,
    body: axum::body::Bytes,
) -> Result<Json<Value>> {
    if q.trigger_id.is_empty() {
        return Err(EventsError::invalid(
            "missing ?triggerId=: name the trigger to create",
        ));
    }
    if q.validate_only {
        return Err(EventsError::invalid(
            "validateOnly is not supported: create the trigger without it",
        ));
    }
    let input: Trigger = serde_json::from_slice(&body)
        .map_err(|e| EventsError::invalid(format!("invalid Trigger JSON: {e}")))?;
    let trigger = t.create(&project, &location, &q.trigger_id, input).await?;
    Ok(Json(done_operation(
        &t, &project, &location, "create", &trigger,
    )?))
}

async fn describe(
    State(t): State<Arc<Triggers>>,
    Path((project, location, id)): Path<(String, String, String)>,
) -> Result<Json<Trigger>> {
    Ok(Json(t.get(&project, &location, &id)?))
}

async fn list(
    State(t): State<Arc<Triggers>>,
    Path((project, location)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let all = t.list(&project, &location)?;
    Ok(Json(if all.is_empty() {
        json!({})
    } else {
        json!({"triggers": all})
    }))
}

async fn delete(
    State(t): State<Arc<Triggers>>,
    Path((project, location, id)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    let trigger = t.delete(&project, &location, &id).await?;
    Ok(Json(done_operation(
        &t, &project, &location, "delete", &trigger,
    )?))
}

/// The operation `op` (`operation-HEX`) a trigger's create or delete answered with, for
/// `GET /v1/projects/P/locations/L/operations/OP`. That path is shared with the other
/// long-running operations the control API serves (Cloud Build's, Artifact Registry's), so
/// the API's one handler for it asks here for Eventarc's. `None`: no such operation.
pub fn operation(t: &Triggers, project: &str, location: &str, op: &str) -> Result<Option<Value>> {
    let name = format!("projects/{project}/locations/{location}/operations/{op}");
    Ok(t.store()
        .get_object::<Value>(OPERATION_KIND, project, &name)?)
}

/// A finished `google.longrunning.Operation` for `verb` on `trigger`, kept in the store so
/// that a poll finds it.
fn done_operation(
    t: &Triggers,
    project: &str,
    location: &str,
    verb: &str,
    trigger: &Trigger,
) -> Result<Value> {
    let b: [u8; 16] = rand::random();
    let name = format!(
        "projects/{project}/locations/{location}/operations/operation-{}",
        hex::encode(b)
    );
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut response = serde_json::to_value(trigger).unwrap_or_default();
    response["@type"] = json!("type.googleapis.com/google.cloud.eventarc.v1.Trigger");
    let op = json!({
        "name": name,
        "metadata": {
            "@type": "type.googleapis.com/google.cloud.eventarc.v1.OperationMetadata",
            "createTime": time,
            "endTime": time,
            "target": trigger.name,
            "verb": verb,
            "apiVersion": "v1",
        },
        "done": true,
        "response": response,
    });
    t.store()
        .put_object(OPERATION_KIND, project, &name, location, &op)?;
    Ok(op)
}
