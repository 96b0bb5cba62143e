//! Cloud Run Jobs (`/apis/run.googleapis.com/v1/namespaces/{ns}/jobs|executions|tasks`) and
//! Cloud Scheduler (`/v1/projects/{p}/locations/{l}/jobs`) handlers.

use crate::error::{ApiError, ApiResult};
use crate::routes::{json_matches, label_selector, parse_body, parse_known, SelectorQuery, St};
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use skiff_jobs::{JobError, Overrides};
use skiff_model::*;
use skiff_store::kind;
use std::sync::Arc;

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::Invalid(m) => ApiError::invalid(m),
            JobError::NotFound(m) => ApiError::not_found(m),
            JobError::Conflict(m) => ApiError::precondition(m),
            JobError::Store(e) => e.into(),
            JobError::Image(e) => e.into(),
        }
    }
}

pub fn routes() -> Router<Arc<crate::ApiState>> {
    let run = "/apis/run.googleapis.com/v1/namespaces/{ns}";
    Router::new()
        .route(&format!("{run}/jobs"), get(list_jobs).post(create_job))
        .route(
            &format!("{run}/jobs/{{name}}"),
            get(get_job)
                .put(replace_job)
                .delete(delete_job)
                .post(job_verb),
        )
        .route(&format!("{run}/executions"), get(list_executions))
        .route(
            &format!("{run}/executions/{{name}}"),
            get(get_execution)
                .delete(delete_execution)
                .post(execution_verb),
        )
        .route(&format!("{run}/tasks"), get(list_tasks))
        .route(&format!("{run}/tasks/{{name}}"), get(get_task))
        .route(
            "/v1/projects/{project}/locations/{location}/jobs",
            get(list_schedules).post(create_schedule),
        )
        .route(
            "/v1/projects/{project}/locations/{location}/jobs/{name}",
            get(get_schedule)
                .patch(update_schedule)
                .delete(delete_schedule)
                .post(schedule_verb),
        )
}

fn not_found(what: &str, name: &str, ns: &str) -> ApiError {
    ApiError::not_found(format!("{what} {name} not found in project {ns}"))
}

fn list(kind: &str, items: Vec<Value>) -> Json<Value> {
    Json(
        json!({"apiVersion": RUN_API_VERSION, "kind": format!("{kind}List"), "metadata": {}, "items": items}),
    )
}

fn load_job(st: &crate::ApiState, ns: &str, name: &str) -> ApiResult<Job> {
    st.controller
        .store
        .get_object(kind::JOB, ns, name)?
        .ok_or_else(|| not_found("job", name, ns))
}

async fn list_jobs(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<SelectorQuery>,
) -> ApiResult<Json<Value>> {
    let sel = label_selector(q.label_selector.as_deref())?;
    let mut items: Vec<Value> = st
        .controller
        .store
        .list_objects(kind::JOB, Some(&ns), None)?;
    items.retain(|v| json_matches(&sel, v));
    Ok(list("Job", items))
}

async fn get_job(State(st): St, Path((ns, name)): Path<(String, String)>) -> ApiResult<Json<Job>> {
    Ok(Json(load_job(&st, &ns, &name)?))
}

/// Validates and stores a job (create when `old` is `None`, else replace).
fn store_job(st: &crate::ApiState, ns: &str, mut job: Job, old: Option<Job>) -> ApiResult<Job> {
    if !job.metadata.namespace.is_empty() && job.metadata.namespace != ns {
        return Err(ApiError::invalid(format!(
            "metadata.namespace {:?} does not match the project {ns:?} in the URL",
            job.metadata.namespace
        )));
    }
    check_job(&job)?;
    if let Ok(t) = TaskSettings::from_spec(&job.spec.template.spec) {
        let mut refs: Vec<(String, String)> = t
            .secret_env
            .iter()
            .map(|e| (e.secret.clone(), e.version.clone()))
            .collect();
        for v in &t.secret_volumes {
            refs.extend(
                v.files
                    .iter()
                    .map(|(ver, _)| (v.secret.clone(), ver.clone())),
            );
        }
        crate::secrets::check_refs(st.secrets(), ns, &refs, "spec.template.spec.template.spec")?;
        crate::secrets::check_host_dirs(
            st.controller.serving.host_dirs(),
            &t.host_volumes,
            "spec.template.spec.template.spec",
        )?;
    }
    st.jobs.validate(&job).map_err(|e| match e {
        // What is left to fail after `check_job` is the image lookup.
        JobError::Invalid(m) => ApiError::invalid(format!("{JOB_IMAGE}: {m}")),
        e => e.into(),
    })?;
    job.api_version = RUN_API_VERSION.into();
    job.kind = "Job".into();
    job.metadata.namespace = ns.to_string();
    job.metadata
        .labels
        .insert(LABEL_LOCATION.into(), REGION.into());
    let now = now_rfc3339();
    let mut status = match &old {
        Some(o) => {
            job.metadata.uid = o.metadata.uid.clone();
            job.metadata.creation_timestamp = o.metadata.creation_timestamp.clone();
            job.metadata.generation = o.metadata.generation + 1;
            o.status.clone().unwrap_or_default()
        }
        None => {
            job.metadata.uid = hex_id();
            job.metadata.creation_timestamp = Some(now);
            job.metadata.generation = 1;
            JobStatus::default()
        }
    };
    job.metadata.resource_version = job.metadata.generation.to_string();
    status.observed_generation = job.metadata.generation;
    set_condition(
        &mut status.conditions,
        Condition::new("Ready", "True", None, None),
    );
    job.status = Some(status);
    st.controller
        .store
        .put_object(kind::JOB, ns, &job.metadata.name, "", &job)?;
    Ok(job)
}

const JOB_CONTAINERS: &str = "spec.template.spec.template.spec.containers";
const JOB_IMAGE: &str = "spec.template.spec.template.spec.containers[0].image";

/// Checks a job's name and template; an error names the field at fault.
fn check_job(job: &Job) -> ApiResult<()> {
    validate_name("job", &job.metadata.name, 63)
        .map_err(|e| ApiError::invalid(format!("metadata.name: {}", e.0)))?;
    match job.spec.template.spec.template.spec.containers.as_slice() {
        [] => {
            return Err(ApiError::invalid(format!(
                "{JOB_CONTAINERS}: the job has no container: give one with an image"
            )))
        }
        [c, ..] if c.image.trim().is_empty() => {
            return Err(ApiError::invalid(format!(
                "{JOB_IMAGE}: the job's container has no image: give an image imported with `skiff images import`"
            )))
        }
        _ => {}
    }
    TaskSettings::from_spec(&job.spec.template.spec)
        .map_err(|e| ApiError::invalid(format!("spec.template.spec: {}", e.0)))?;
    Ok(())
}

/// Pull the job's image when it names a registry, so that the store holds what the tag names
/// now: when the job is created or replaced, and for each execution. An execution's tasks all
/// run the digest it pinned (`skiff.dev/image-digest`).
async fn pull_job_image(st: &crate::ApiState, job: &Job) -> ApiResult<()> {
    check_job(job)?;
    let image = &job.spec.template.spec.template.spec.containers[0].image;
    st.controller.pull_if_remote(image, JOB_IMAGE).await?;
    Ok(())
}

fn hex_id() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

async fn create_job(
    State(st): St,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Job>> {
    let job: Job = parse_known(&body)?;
    if st
        .controller
        .store
        .get_object::<Job>(kind::JOB, &ns, &job.metadata.name)?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "job {} already exists in project {ns}",
            job.metadata.name
        )));
    }
    pull_job_image(&st, &job).await?;
    Ok(Json(store_job(&st, &ns, job, None)?))
}

async fn replace_job(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Job>> {
    let job: Job = parse_known(&body)?;
    if job.metadata.name != name {
        return Err(ApiError::invalid(format!(
            "metadata.name {:?} does not match {name:?} in the URL",
            job.metadata.name
        )));
    }
    let old = load_job(&st, &ns, &name)?;
    pull_job_image(&st, &job).await?;
    Ok(Json(store_job(&st, &ns, job, Some(old))?))
}

async fn delete_job(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let job = load_job(&st, &ns, &name)?;
    let execs: Vec<Execution> =
        st.controller
            .store
            .list_objects(kind::EXECUTION, Some(&ns), Some(&name))?;
    for e in &execs {
        let _ = st.jobs.cancel(&ns, &e.metadata.name);
        st.controller
            .store
            .delete_object(kind::EXECUTION, &ns, &e.metadata.name, &[kind::TASK])?;
    }
    st.controller
        .store
        .delete_object(kind::JOB, &ns, &name, &[])?;
    st.controller
        .store
        .delete_policy(&ns, &job_policy_key(&name))?;
    st.jobs
        .logs()
        .remove(&ns, &skiff_runtime::logs::LogResource::Job(name.clone()));
    Ok(Json(
        json!({"apiVersion": "v1", "kind": "Status", "status": "Success",
        "details": {"name": name, "kind": "jobs", "uid": job.metadata.uid}}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RunRequest {
    #[serde(default)]
    overrides: Option<RunOverrides>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RunOverrides {
    #[serde(default)]
    container_overrides: Vec<ContainerOverride>,
    #[serde(default)]
    task_count: Option<u64>,
    #[serde(default)]
    timeout_seconds: Option<u64>,
    /// Cloud Run v2 spells the timeout as a duration string ("600s").
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ContainerOverride {
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<EnvVar>,
    #[serde(default)]
    clear_args: bool,
}

async fn job_verb(
    State(st): St,
    Path((ns, target)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Execution>> {
    let Some(name) = target.strip_suffix(":run") else {
        return Err(ApiError::not_found(format!(
            "unknown job method in {target:?}: use JOB:run"
        )));
    };
    let job = load_job(&st, &ns, name)?;
    let req: RunRequest = if body.is_empty() {
        RunRequest::default()
    } else {
        parse_body(&body)?
    };
    let mut o = Overrides::default();
    if let Some(ov) = req.overrides {
        o.task_count = ov.task_count;
        o.timeout_seconds = match (ov.timeout_seconds, ov.timeout) {
            (Some(s), _) => Some(s),
            (None, Some(t)) => Some(parse_duration(&t)?.as_secs()),
            (None, None) => None,
        };
        if let Some(c) = ov.container_overrides.into_iter().next() {
            if c.clear_args || !c.args.is_empty() {
                o.args = Some(c.args);
            }
            o.env = c.env.into_iter().map(|e| (e.name, e.value)).collect();
        }
    }
    // A registry tag is resolved again for each execution, as Cloud Run resolves a job's
    // tag to a digest when the job is executed; a store tag is resolved by the executor.
    pull_job_image(&st, &job).await?;
    Ok(Json(st.jobs.execute(&ns, &job, &o)?))
}

async fn list_executions(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<SelectorQuery>,
) -> ApiResult<Json<Value>> {
    let sel = label_selector(q.label_selector.as_deref())?;
    let mut items: Vec<Value> =
        st.controller
            .store
            .list_objects(kind::EXECUTION, Some(&ns), sel.equality(LABEL_JOB))?;
    items.retain(|v| json_matches(&sel, v));
    items.reverse();
    Ok(list("Execution", items))
}

async fn get_execution(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Execution>> {
    st.controller
        .store
        .get_object(kind::EXECUTION, &ns, &name)?
        .map(Json)
        .ok_or_else(|| not_found("execution", &name, &ns))
}

async fn delete_execution(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    if st.jobs.is_running(&ns, &name) {
        return Err(ApiError::precondition(format!(
            "execution {name} is running: cancel it first"
        )));
    }
    if !st
        .controller
        .store
        .delete_object(kind::EXECUTION, &ns, &name, &[kind::TASK])?
    {
        return Err(not_found("execution", &name, &ns));
    }
    Ok(Json(
        json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "details": {"name": name, "kind": "executions"}}),
    ))
}

async fn execution_verb(
    State(st): St,
    Path((ns, target)): Path<(String, String)>,
) -> ApiResult<Json<Execution>> {
    let Some(name) = target.strip_suffix(":cancel") else {
        return Err(ApiError::not_found(format!(
            "unknown execution method in {target:?}: use EXECUTION:cancel"
        )));
    };
    st.jobs.cancel(&ns, name)?;
    // Wait (bounded) for the tasks to stop, so the answer shows the cancelled execution.
    for _ in 0..300 {
        if !st.jobs.is_running(&ns, name) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    get_execution(State(st), Path((ns, name.to_string()))).await
}

/// `tasks.list`'s query: Cloud Run v1's `labelSelector`, `limit` and `continue`.
#[derive(Deserialize)]
struct TaskListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_: Option<String>,
}

/// Only what a label selector reads of a stored task.
#[derive(Deserialize)]
pub(crate) struct LabelsOnly {
    #[serde(default)]
    pub(crate) metadata: LabelsMeta,
}

#[derive(Deserialize, Default)]
pub(crate) struct LabelsMeta {
    #[serde(default)]
    pub(crate) labels: std::collections::BTreeMap<String, String>,
}

/// Tasks, oldest first, as stored (an execution of 10 000 tasks is served without a parse and
/// a serialization of each). With `limit`, a page: `metadata.continue` is then set when more
/// follow and is passed back as `continue` for the next page.
async fn list_tasks(
    State(st): St,
    Path(ns): Path<String>,
    Query(q): Query<TaskListQuery>,
) -> ApiResult<axum::response::Response> {
    let sel = label_selector(q.label_selector.as_deref())?;
    let after = match q.continue_.as_deref().filter(|c| !c.is_empty()) {
        None => 0,
        Some(c) => c.parse::<i64>().map_err(|_| {
            ApiError::invalid(format!(
                "continue {c:?} is not a token from an earlier page of this list"
            ))
        })?,
    };
    if q.limit == Some(0) {
        return Err(ApiError::invalid("limit must be at least 1"));
    }
    let mut items = Vec::new();
    let mut next = None;
    let mut from = after;
    // Rows the selector leaves out do not count toward the limit: read on until it is met.
    'pages: loop {
        let page = st.controller.store.list_object_bodies(
            kind::TASK,
            Some(&ns),
            sel.equality(LABEL_EXECUTION),
            from,
            q.limit.map(|l| l + 1),
        )?;
        let done = q.limit.is_none_or(|l| page.len() <= l);
        for (seq, body) in page {
            if q.limit.is_some_and(|l| items.len() == l) {
                next = items.last().map(|(seq, _)| *seq);
                break 'pages;
            }
            from = seq;
            let labels: LabelsOnly = serde_json::from_str(&body)
                .map_err(|e| ApiError::internal(format!("stored task: {e}")))?;
            if sel.matches_map(&labels.metadata.labels) {
                items.push((seq, body));
            }
        }
        if done {
            break;
        }
    }
    crate::routes::stored_list(
        RUN_API_VERSION,
        "TaskList",
        next.map(|seq| seq.to_string()),
        items.iter().map(|(_, body)| body.as_str()),
    )
}

async fn get_task(
    State(st): St,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Task>> {
    st.controller
        .store
        .get_object(kind::TASK, &ns, &name)?
        .map(Json)
        .ok_or_else(|| not_found("task", &name, &ns))
}

async fn list_schedules(
    State(st): St,
    Path((p, _l)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"jobs": st.scheduler.list(&p)?})))
}

async fn create_schedule(
    State(st): St,
    Path((p, l)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SchedulerJob>> {
    let j: SchedulerJob = parse_body(&body)?;
    Ok(Json(st.scheduler.put(&p, &l, j, false).await?))
}

async fn get_schedule(
    State(st): St,
    Path((p, _l, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    if let Some((job, verb)) = name.split_once(':') {
        return job_iam(&st, &p, job, verb, &[]);
    }
    Ok(Json(
        serde_json::to_value(st.scheduler.get(&p, &name)?).unwrap_or_default(),
    ))
}

/// Where a Cloud Run job's IAM policy is stored, beside services' policies: `job:NAME` (no
/// service name has a `:`).
fn job_policy_key(job: &str) -> String {
    format!("job:{job}")
}

/// Cloud Run's IAM calls on a job (`JOB:getIamPolicy`, `:setIamPolicy`,
/// `:testIamPermissions`), whose path Cloud Scheduler's jobs share. The policy is kept and
/// returned as Cloud Run does; running a job needs the admin token either way.
fn job_iam(
    st: &crate::ApiState,
    ns: &str,
    job: &str,
    verb: &str,
    body: &[u8],
) -> ApiResult<Json<Value>> {
    load_job(st, ns, job)?;
    let key = job_policy_key(job);
    match verb {
        "getIamPolicy" => Ok(Json(
            serde_json::to_value(
                st.controller
                    .store
                    .get_policy(ns, &key)?
                    .unwrap_or_default(),
            )
            .unwrap_or_default(),
        )),
        "setIamPolicy" => {
            #[derive(Deserialize)]
            struct SetReq {
                policy: Policy,
            }
            let mut p = parse_body::<SetReq>(body)?.policy;
            p.etag = Some(skiff_model::new_uuid());
            p.version = Some(p.version.unwrap_or(1));
            st.controller.store.put_policy(ns, &key, &p)?;
            Ok(Json(serde_json::to_value(p).unwrap_or_default()))
        }
        "testIamPermissions" => {
            // The admin token holds every permission.
            let v: Value = parse_body(body)?;
            Ok(Json(
                json!({"permissions": v.get("permissions").cloned().unwrap_or(json!([]))}),
            ))
        }
        other => Err(ApiError::not_found(format!(
            "unknown job method {other}: use getIamPolicy, setIamPolicy or testIamPermissions"
        ))),
    }
}

async fn update_schedule(
    State(st): St,
    Path((p, l, name)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<SchedulerJob>> {
    let mut j: SchedulerJob = parse_body(&body)?;
    j.name = name;
    Ok(Json(st.scheduler.put(&p, &l, j, true).await?))
}

async fn delete_schedule(
    State(st): St,
    Path((p, _l, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    st.scheduler.delete(&p, &name).await?;
    Ok(Json(json!({})))
}

async fn schedule_verb(
    State(st): St,
    Path((p, _l, target)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let (name, verb) = target.split_once(':').ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "use JOB:pause, JOB:resume or JOB:run",
        )
    })?;
    if matches!(verb, "getIamPolicy" | "setIamPolicy" | "testIamPermissions") {
        return job_iam(&st, &p, name, verb, &body);
    }
    let j = match verb {
        "pause" => {
            st.scheduler
                .set_state(&p, name, skiff_jobs::scheduler::PAUSED)
                .await?
        }
        "resume" => {
            st.scheduler
                .set_state(&p, name, skiff_jobs::scheduler::ENABLED)
                .await?
        }
        "run" => st.scheduler.run_now(&p, name).await?,
        other => {
            return Err(ApiError::not_found(format!(
                "unknown scheduler method {other}: use pause, resume or run"
            )))
        }
    };
    Ok(Json(serde_json::to_value(j).unwrap_or_default()))
}
