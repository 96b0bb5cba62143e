//! The REST/JSON face of the API, as `gcloud pubsub` and the REST reference call it:
//! `PUT|GET|PATCH|DELETE /v1/projects/P/topics/T`, `POST .../topics/T:publish`,
//! `PUT|GET|PATCH|DELETE /v1/projects/P/subscriptions/S`, `POST .../subscriptions/S:pull`,
//! `:acknowledge`, `:modifyAckDeadline`, `:modifyPushConfig`, `:seek`, `:detach`, snapshots,
//! and the list calls. Bodies use the API's JSON mapping: lowerCamelCase fields, `data` in
//! base64, durations as `"600s"`, times in RFC 3339.

use crate::broker::{Broker, PULL_WAIT};
use crate::error::{PubsubError, Result};
use crate::grpc::page;
use crate::names::{self, Kind};
use crate::proto::*;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type St = State<Arc<Broker>>;
type Res = std::result::Result<Response, PubsubError>;

/// The REST routes over a broker (no auth of their own; the caller layers it).
pub fn router(broker: Arc<Broker>) -> axum::Router {
    axum::Router::new()
        .route("/v1/projects/{project}/topics", get(list_topics))
        .route(
            "/v1/projects/{project}/topics/{t}",
            get(get_topic)
                .put(create_topic)
                .patch(patch_topic)
                .delete(delete_topic)
                .post(topic_verb),
        )
        .route(
            "/v1/projects/{project}/topics/{t}/subscriptions",
            get(topic_subscriptions),
        )
        .route(
            "/v1/projects/{project}/topics/{t}/snapshots",
            get(topic_snapshots),
        )
        .route(
            "/v1/projects/{project}/subscriptions",
            get(list_subscriptions),
        )
        .route(
            "/v1/projects/{project}/subscriptions/{s}",
            get(get_subscription)
                .put(create_subscription)
                .patch(patch_subscription)
                .delete(delete_subscription)
                .post(subscription_verb),
        )
        .route("/v1/projects/{project}/snapshots", get(list_snapshots))
        .route(
            "/v1/projects/{project}/snapshots/{n}",
            get(get_snapshot)
                .put(create_snapshot)
                .delete(delete_snapshot)
                .post(snapshot_verb),
        )
        .layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            authorize,
        ))
        .with_state(broker)
}

/// The resource a REST call names and the IAM permission it needs there (see [`crate::iam`]);
/// `None` for calls on a project (create, list), which only the admin makes, and for
/// `testIamPermissions`, which anyone admitted may call.
fn required(method: &http::Method, path: &str) -> Option<Option<(String, &'static str)>> {
    let rest = path.strip_prefix("/v1/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    // projects/P/KIND[/NAME[/SUB]]
    if parts.len() < 3 || parts[0] != "projects" {
        return None;
    }
    let kind = parts[2];
    let Some(seg) = parts.get(3) else {
        return Some(None);
    };
    let (name, verb) = split_verb(seg);
    let resource = format!("projects/{}/{kind}/{name}", parts[1]);
    let singular = match kind {
        "topics" => "topics",
        "subscriptions" => "subscriptions",
        "snapshots" => "snapshots",
        _ => return None,
    };
    let perm = |p: &str| -> &'static str {
        crate::iam::permissions_of("roles/pubsub.admin")
            .iter()
            .find(|x| **x == format!("pubsub.{singular}.{p}"))
            .copied()
            .unwrap_or("pubsub.admin")
    };
    if parts.len() > 4 {
        // topics/T/subscriptions, topics/T/snapshots
        return Some(Some((resource, perm("get"))));
    }
    let need = match (method.as_str(), verb) {
        (_, Some("testIamPermissions")) => return Some(Some((resource, ""))),
        (_, Some("getIamPolicy")) => perm("getIamPolicy"),
        (_, Some("setIamPolicy")) => perm("setIamPolicy"),
        ("GET", None) => perm("get"),
        ("PATCH", None) => perm("update"),
        ("DELETE", None) => perm("delete"),
        ("PUT", None) => return Some(None),
        ("POST", Some("publish")) => "pubsub.topics.publish",
        ("POST", Some("pull" | "acknowledge" | "modifyAckDeadline" | "seek")) => {
            "pubsub.subscriptions.consume"
        }
        ("POST", Some("modifyPushConfig")) => "pubsub.subscriptions.update",
        _ => return Some(None),
    };
    Some(Some((resource, need)))
}

/// Checks a service account caller's permission before the handler runs: project-level calls
/// are the admin's, resource calls need the resource policy's grant. Callers the listener
/// marked as the admin, and requests with no caller (the control API, behind its admin
/// token), pass.
async fn authorize(
    State(b): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let caller = req
        .extensions()
        .get::<crate::iam::Caller>()
        .cloned()
        .unwrap_or(crate::iam::Caller::Admin);
    if caller != crate::iam::Caller::Admin {
        match required(req.method(), req.uri().path()) {
            Some(Some((_, ""))) => {}
            Some(Some((resource, permission))) => {
                if let Err(e) = b.authorize(&caller, &resource, permission) {
                    return e.into_response();
                }
            }
            Some(None) | None => {
                let what = format!("{} {}", req.method(), req.uri().path());
                return crate::iam::denied("on the project", &what).into_response();
            }
        }
    }
    next.run(req).await
}

/// The IAM verbs every resource has: `getIamPolicy`, `setIamPolicy` (`{"policy": {...}}`) and
/// `testIamPermissions` (`{"permissions": [...]}`); `None` for other verbs.
async fn iam_verb(
    b: &Broker,
    caller: &crate::iam::Caller,
    resource: &str,
    verb: Option<&str>,
    v: &Value,
) -> Option<Res> {
    let r = match verb? {
        "getIamPolicy" => b.get_iam_policy(resource).map(|p| Json(p).into_response()),
        "setIamPolicy" => {
            let policy: crate::iam::Policy = match serde_json::from_value(v["policy"].clone()) {
                Ok(p) => p,
                Err(e) => {
                    return Some(Err(PubsubError::invalid(format!(
                        "Invalid value at 'policy': {e}"
                    ))))
                }
            };
            b.set_iam_policy(resource, policy)
                .await
                .map(|p| Json(p).into_response())
        }
        "testIamPermissions" => strings(v, "permissions").and_then(|perms| {
            b.test_iam_permissions(caller, resource, &perms)
                .map(|held| {
                    let mut o = json!({});
                    if !held.is_empty() {
                        o["permissions"] = json!(held);
                    }
                    Json(o).into_response()
                })
        }),
        _ => return None,
    };
    Some(r)
}

/// The caller the listener recorded (the admin when there is none: the control API).
fn caller_of(ext: &Option<axum::Extension<crate::iam::Caller>>) -> crate::iam::Caller {
    ext.as_ref()
        .map(|e| e.0.clone())
        .unwrap_or(crate::iam::Caller::Admin)
}

type Who = Option<axum::Extension<crate::iam::Caller>>;

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    #[serde(default)]
    page_size: i32,
    #[serde(default)]
    page_token: String,
}

fn ok(v: Value) -> Res {
    Ok(Json(v).into_response())
}

fn body(bytes: &axum::body::Bytes) -> Result<Value> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| PubsubError::invalid(format!("Invalid JSON payload received: {e}")))
}

fn split_verb(seg: &str) -> (&str, Option<&str>) {
    match seg.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (seg, None),
    }
}

// ---- JSON mapping ----

fn dur_json(d: &Option<prost_types::Duration>) -> Option<Value> {
    d.as_ref().map(|d| {
        if d.nanos == 0 {
            json!(format!("{}s", d.seconds))
        } else {
            json!(
                format!("{}.{:09}s", d.seconds, d.nanos)
                    .trim_end_matches('0')
                    .to_string()
                    + ""
            )
        }
    })
}

/// `"600s"`, `"1.5s"` → Duration. Errors name the field.
fn parse_dur(v: &Value, field: &str) -> Result<prost_types::Duration> {
    let s = v
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .ok_or_else(|| {
            PubsubError::invalid(format!(
                "Invalid value at '{field}': give a duration like \"600s\""
            ))
        })?;
    let secs: f64 = s.parse().map_err(|_| {
        PubsubError::invalid(format!(
            "Invalid value at '{field}': give a duration like \"600s\""
        ))
    })?;
    Ok(prost_types::Duration {
        seconds: secs.trunc() as i64,
        nanos: ((secs.fract()) * 1e9).round() as i32,
    })
}

fn time_json(t: &Option<prost_types::Timestamp>) -> Option<Value> {
    t.as_ref().and_then(|t| {
        chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32)
            .map(|d| json!(d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)))
    })
}

fn parse_time(v: &Value, field: &str) -> Result<prost_types::Timestamp> {
    let d = v
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .ok_or_else(|| {
            PubsubError::invalid(format!(
                "Invalid value at '{field}': give an RFC 3339 time like \"2024-01-01T00:00:00Z\""
            ))
        })?;
    Ok(prost_types::Timestamp {
        seconds: d.timestamp(),
        nanos: d.timestamp_subsec_nanos() as i32,
    })
}

fn labels(v: &Value, field: &str) -> Result<HashMap<String, String>> {
    match v {
        Value::Null => Ok(HashMap::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| {
                        PubsubError::invalid(format!(
                            "Invalid value at '{field}.{k}': give a string"
                        ))
                    })
            })
            .collect(),
        _ => Err(PubsubError::invalid(format!(
            "Invalid value at '{field}': give an object of strings"
        ))),
    }
}

fn insert_opt(m: &mut Map<String, Value>, k: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(k.into(), v);
    }
}

/// A topic as JSON.
pub fn topic_json(t: &Topic) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(t.name));
    if !t.labels.is_empty() {
        m.insert("labels".into(), json!(t.labels));
    }
    insert_opt(
        &mut m,
        "messageRetentionDuration",
        dur_json(&t.message_retention_duration),
    );
    m.insert("state".into(), json!("ACTIVE"));
    Value::Object(m)
}

fn topic_from(name: &str, v: &Value) -> Result<Topic> {
    let mut t = Topic {
        name: name.to_string(),
        labels: labels(&v["labels"], "labels")?,
        ..Default::default()
    };
    if !v["messageRetentionDuration"].is_null() {
        t.message_retention_duration = Some(parse_dur(
            &v["messageRetentionDuration"],
            "messageRetentionDuration",
        )?);
    }
    Ok(t)
}

/// A subscription as JSON.
pub fn subscription_json(s: &Subscription) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(s.name));
    m.insert("topic".into(), json!(s.topic));
    if let Some(pc) = &s.push_config {
        let mut p = Map::new();
        p.insert("pushEndpoint".into(), json!(pc.push_endpoint));
        if !pc.attributes.is_empty() {
            p.insert("attributes".into(), json!(pc.attributes));
        }
        if let Some(push_config::AuthenticationMethod::OidcToken(o)) = &pc.authentication_method {
            let mut t = Map::new();
            t.insert("serviceAccountEmail".into(), json!(o.service_account_email));
            if !o.audience.is_empty() {
                t.insert("audience".into(), json!(o.audience));
            }
            p.insert("oidcToken".into(), Value::Object(t));
        }
        m.insert("pushConfig".into(), Value::Object(p));
    } else {
        m.insert("pushConfig".into(), json!({}));
    }
    m.insert("ackDeadlineSeconds".into(), json!(s.ack_deadline_seconds));
    if s.retain_acked_messages {
        m.insert("retainAckedMessages".into(), json!(true));
    }
    insert_opt(
        &mut m,
        "messageRetentionDuration",
        dur_json(&s.message_retention_duration),
    );
    if !s.labels.is_empty() {
        m.insert("labels".into(), json!(s.labels));
    }
    if s.enable_message_ordering {
        m.insert("enableMessageOrdering".into(), json!(true));
    }
    if let Some(e) = &s.expiration_policy {
        let mut x = Map::new();
        insert_opt(&mut x, "ttl", dur_json(&e.ttl));
        m.insert("expirationPolicy".into(), Value::Object(x));
    }
    if !s.filter.is_empty() {
        m.insert("filter".into(), json!(s.filter));
    }
    if let Some(d) = &s.dead_letter_policy {
        m.insert(
            "deadLetterPolicy".into(),
            json!({"deadLetterTopic": d.dead_letter_topic, "maxDeliveryAttempts": d.max_delivery_attempts}),
        );
    }
    if let Some(r) = &s.retry_policy {
        let mut x = Map::new();
        insert_opt(&mut x, "minimumBackoff", dur_json(&r.minimum_backoff));
        insert_opt(&mut x, "maximumBackoff", dur_json(&r.maximum_backoff));
        m.insert("retryPolicy".into(), Value::Object(x));
    }
    if s.detached {
        m.insert("detached".into(), json!(true));
    }
    m.insert("state".into(), json!("ACTIVE"));
    Value::Object(m)
}

fn push_config_from(v: &Value) -> Result<Option<PushConfig>> {
    if v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(None);
    }
    let mut pc = PushConfig {
        push_endpoint: v["pushEndpoint"].as_str().unwrap_or_default().to_string(),
        attributes: labels(&v["attributes"], "pushConfig.attributes")?,
        ..Default::default()
    };
    if let Some(o) = v.get("oidcToken").filter(|o| !o.is_null()) {
        pc.authentication_method = Some(push_config::AuthenticationMethod::OidcToken(
            push_config::OidcToken {
                service_account_email: o["serviceAccountEmail"].as_str().unwrap_or_default().into(),
                audience: o["audience"].as_str().unwrap_or_default().into(),
            },
        ));
    }
    Ok(Some(pc))
}

fn subscription_from(name: &str, v: &Value) -> Result<Subscription> {
    let int = |k: &str| -> Result<i32> {
        match &v[k] {
            Value::Null => Ok(0),
            Value::Number(n) => n.as_i64().map(|n| n as i32).ok_or_else(|| {
                PubsubError::invalid(format!("Invalid value at '{k}': give an integer"))
            }),
            Value::String(s) => s.parse().map_err(|_| {
                PubsubError::invalid(format!("Invalid value at '{k}': give an integer"))
            }),
            _ => Err(PubsubError::invalid(format!(
                "Invalid value at '{k}': give an integer"
            ))),
        }
    };
    let mut s = Subscription {
        name: name.to_string(),
        topic: v["topic"].as_str().unwrap_or_default().to_string(),
        push_config: push_config_from(&v["pushConfig"])?,
        ack_deadline_seconds: int("ackDeadlineSeconds")?,
        retain_acked_messages: v["retainAckedMessages"].as_bool().unwrap_or(false),
        labels: labels(&v["labels"], "labels")?,
        enable_message_ordering: v["enableMessageOrdering"].as_bool().unwrap_or(false),
        filter: v["filter"].as_str().unwrap_or_default().to_string(),
        enable_exactly_once_delivery: v["enableExactlyOnceDelivery"].as_bool().unwrap_or(false),
        ..Default::default()
    };
    if !v["messageRetentionDuration"].is_null() {
        s.message_retention_duration = Some(parse_dur(
            &v["messageRetentionDuration"],
            "messageRetentionDuration",
        )?);
    }
    if let Some(e) = v.get("expirationPolicy").filter(|e| e.is_object()) {
        s.expiration_policy = Some(ExpirationPolicy {
            ttl: e
                .get("ttl")
                .map(|t| parse_dur(t, "expirationPolicy.ttl"))
                .transpose()?,
        });
    }
    if let Some(d) = v.get("deadLetterPolicy").filter(|d| d.is_object()) {
        s.dead_letter_policy = Some(DeadLetterPolicy {
            dead_letter_topic: d["deadLetterTopic"].as_str().unwrap_or_default().into(),
            max_delivery_attempts: d["maxDeliveryAttempts"].as_i64().unwrap_or(0) as i32,
        });
    }
    if let Some(r) = v.get("retryPolicy").filter(|r| r.is_object()) {
        s.retry_policy = Some(RetryPolicy {
            minimum_backoff: r
                .get("minimumBackoff")
                .map(|d| parse_dur(d, "retryPolicy.minimumBackoff"))
                .transpose()?,
            maximum_backoff: r
                .get("maximumBackoff")
                .map(|d| parse_dur(d, "retryPolicy.maximumBackoff"))
                .transpose()?,
        });
    }
    Ok(s)
}

/// A message as JSON (`data` in base64).
pub fn message_json(m: &PubsubMessage) -> Value {
    let mut o = Map::new();
    o.insert(
        "data".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(&m.data)),
    );
    if !m.attributes.is_empty() {
        o.insert("attributes".into(), json!(m.attributes));
    }
    o.insert("messageId".into(), json!(m.message_id));
    insert_opt(&mut o, "publishTime", time_json(&m.publish_time));
    if !m.ordering_key.is_empty() {
        o.insert("orderingKey".into(), json!(m.ordering_key));
    }
    Value::Object(o)
}

fn received_json(r: &ReceivedMessage) -> Value {
    let mut o = Map::new();
    o.insert("ackId".into(), json!(r.ack_id));
    if let Some(m) = &r.message {
        o.insert("message".into(), message_json(m));
    }
    if r.delivery_attempt > 0 {
        o.insert("deliveryAttempt".into(), json!(r.delivery_attempt));
    }
    Value::Object(o)
}

fn snapshot_json(s: &Snapshot) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(s.name));
    o.insert("topic".into(), json!(s.topic));
    insert_opt(&mut o, "expireTime", time_json(&s.expire_time));
    if !s.labels.is_empty() {
        o.insert("labels".into(), json!(s.labels));
    }
    Value::Object(o)
}

fn mask_paths(v: &Value) -> Vec<String> {
    v["updateMask"]
        .as_str()
        .map(|s| {
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value, field: &str) -> Result<Vec<String>> {
    match &v[field] {
        Value::Null => Ok(vec![]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str().map(str::to_string).ok_or_else(|| {
                    PubsubError::invalid(format!("Invalid value at '{field}': give strings"))
                })
            })
            .collect(),
        _ => Err(PubsubError::invalid(format!(
            "Invalid value at '{field}': give a list of strings"
        ))),
    }
}

// ---- topics ----

async fn list_topics(State(b): St, Path(p): Path<String>, Query(q): Query<ListQuery>) -> Res {
    let (items, next) = page(
        b.list_topics(&format!("projects/{p}")),
        |t| &t.name,
        q.page_size,
        &q.page_token,
    );
    let mut v = json!({"topics": items.iter().map(topic_json).collect::<Vec<_>>()});
    if !next.is_empty() {
        v["nextPageToken"] = json!(next);
    }
    ok(v)
}

async fn get_topic(State(b): St, who: Who, Path((p, seg)): Path<(String, String)>) -> Res {
    let (t, verb) = split_verb(&seg);
    let name = names::full(Kind::Topic, &p, t);
    if let Some(r) = iam_verb(&b, &caller_of(&who), &name, verb, &json!({})).await {
        return r;
    }
    ok(topic_json(&b.get_topic(&name)?))
}

async fn create_topic(
    State(b): St,
    Path((p, t)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let v = body(&raw)?;
    let topic = topic_from(&names::full(Kind::Topic, &p, &t), &v)?;
    ok(topic_json(&b.create_topic(topic).await?))
}

async fn patch_topic(
    State(b): St,
    Path((p, t)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let v = body(&raw)?;
    let name = names::full(Kind::Topic, &p, &t);
    let topic = topic_from(&name, &v["topic"])?;
    ok(topic_json(&b.update_topic(topic, &mask_paths(&v)).await?))
}

async fn delete_topic(State(b): St, Path((p, t)): Path<(String, String)>) -> Res {
    b.delete_topic(&names::full(Kind::Topic, &p, &t)).await?;
    ok(json!({}))
}

async fn topic_verb(
    State(b): St,
    who: Who,
    Path((p, seg)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let (t, verb) = split_verb(&seg);
    let name = names::full(Kind::Topic, &p, t);
    let v = body(&raw)?;
    if let Some(r) = iam_verb(&b, &caller_of(&who), &name, verb, &v).await {
        return r;
    }
    match verb {
        Some("publish") => {
            names::check(Kind::Topic, &name)?;
            let mut msgs = Vec::new();
            for (i, m) in v["messages"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let data = match m["data"].as_str() {
                    None => Vec::new(),
                    Some(d) => base64::engine::general_purpose::STANDARD
                        .decode(d)
                        .map_err(|_| {
                            PubsubError::invalid(format!(
                                "Invalid value at 'messages[{i}].data' (TYPE_BYTES): give base64"
                            ))
                        })?,
                };
                msgs.push(PubsubMessage {
                    data,
                    attributes: labels(&m["attributes"], &format!("messages[{i}].attributes"))?,
                    ordering_key: m["orderingKey"].as_str().unwrap_or_default().to_string(),
                    ..Default::default()
                });
            }
            let ids = b.publish(&name, msgs).await?;
            ok(json!({"messageIds": ids}))
        }
        _ => Err(PubsubError::invalid(format!(
            "Unknown topic method {seg:?}: give TOPIC:publish, :getIamPolicy, :setIamPolicy or :testIamPermissions"
        ))),
    }
}

async fn topic_subscriptions(
    State(b): St,
    Path((p, t)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> Res {
    let all = b.topic_subscriptions(&names::full(Kind::Topic, &p, &t))?;
    let (items, next) = page(all, |s| s, q.page_size, &q.page_token);
    let mut v = json!({"subscriptions": items});
    if !next.is_empty() {
        v["nextPageToken"] = json!(next);
    }
    ok(v)
}

async fn topic_snapshots(State(b): St, Path((p, t)): Path<(String, String)>) -> Res {
    ok(json!({"snapshots": b.topic_snapshots(&names::full(Kind::Topic, &p, &t))?}))
}

// ---- subscriptions ----

async fn list_subscriptions(
    State(b): St,
    Path(p): Path<String>,
    Query(q): Query<ListQuery>,
) -> Res {
    let (items, next) = page(
        b.list_subscriptions(&format!("projects/{p}")),
        |s| &s.name,
        q.page_size,
        &q.page_token,
    );
    let mut v = json!({"subscriptions": items.iter().map(subscription_json).collect::<Vec<_>>()});
    if !next.is_empty() {
        v["nextPageToken"] = json!(next);
    }
    ok(v)
}

async fn get_subscription(State(b): St, who: Who, Path((p, seg)): Path<(String, String)>) -> Res {
    let (s, verb) = split_verb(&seg);
    let name = names::full(Kind::Subscription, &p, s);
    if let Some(r) = iam_verb(&b, &caller_of(&who), &name, verb, &json!({})).await {
        return r;
    }
    ok(subscription_json(&b.get_subscription(&name)?))
}

async fn create_subscription(
    State(b): St,
    Path((p, s)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let v = body(&raw)?;
    let sub = subscription_from(&names::full(Kind::Subscription, &p, &s), &v)?;
    ok(subscription_json(&b.create_subscription(sub).await?))
}

async fn patch_subscription(
    State(b): St,
    Path((p, s)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let v = body(&raw)?;
    let name = names::full(Kind::Subscription, &p, &s);
    let sub = subscription_from(&name, &v["subscription"])?;
    ok(subscription_json(
        &b.update_subscription(sub, &mask_paths(&v)).await?,
    ))
}

async fn delete_subscription(State(b): St, Path((p, s)): Path<(String, String)>) -> Res {
    b.delete_subscription(&names::full(Kind::Subscription, &p, &s))
        .await?;
    ok(json!({}))
}

async fn subscription_verb(
    State(b): St,
    who: Who,
    Path((p, seg)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let (s, verb) = split_verb(&seg);
    let name = names::full(Kind::Subscription, &p, s);
    names::check(Kind::Subscription, &name)?;
    let v = body(&raw)?;
    if let Some(r) = iam_verb(&b, &caller_of(&who), &name, verb, &v).await {
        return r;
    }
    match verb {
        Some("pull") => {
            let max = v["maxMessages"].as_i64().or_else(|| v["maxMessages"].as_str().and_then(|s| s.parse().ok())).unwrap_or(0);
            let wait = if v["returnImmediately"].as_bool().unwrap_or(false) { Duration::ZERO } else { PULL_WAIT };
            let got = b.pull(&name, max.max(0) as usize, wait).await?;
            ok(json!({"receivedMessages": got.iter().map(received_json).collect::<Vec<_>>()}))
        }
        Some("acknowledge") => {
            b.acknowledge(&name, &strings(&v, "ackIds")?).await?;
            ok(json!({}))
        }
        Some("modifyAckDeadline") => {
            let secs = v["ackDeadlineSeconds"].as_i64().unwrap_or(0);
            b.modify_ack_deadline(&name, &strings(&v, "ackIds")?, secs.clamp(-1, 100_000) as i32)?;
            ok(json!({}))
        }
        Some("modifyPushConfig") => {
            b.modify_push_config(&name, push_config_from(&v["pushConfig"])?).await?;
            ok(json!({}))
        }
        Some("seek") => {
            let target = if !v["time"].is_null() {
                Some(seek_request::Target::Time(parse_time(&v["time"], "time")?))
            } else {
                v["snapshot"]
                    .as_str()
                    .map(|snap| seek_request::Target::Snapshot(names::full(Kind::Snapshot, &p, snap)))
            };
            b.seek(&name, target).await?;
            ok(json!({}))
        }
        Some("detach") => {
            b.detach_subscription(&name).await?;
            ok(json!({}))
        }
        _ => Err(PubsubError::invalid(format!(
            "Unknown subscription method {seg:?}: give SUBSCRIPTION:pull, :acknowledge, :modifyAckDeadline, :modifyPushConfig, :seek or :detach"
        ))),
    }
}

// ---- snapshots ----

async fn list_snapshots(State(b): St, Path(p): Path<String>) -> Res {
    ok(
        json!({"snapshots": b.list_snapshots(&format!("projects/{p}")).iter().map(snapshot_json).collect::<Vec<_>>()}),
    )
}

async fn get_snapshot(State(b): St, who: Who, Path((p, seg)): Path<(String, String)>) -> Res {
    let (n, verb) = split_verb(&seg);
    let name = names::full(Kind::Snapshot, &p, n);
    if let Some(r) = iam_verb(&b, &caller_of(&who), &name, verb, &json!({})).await {
        return r;
    }
    ok(snapshot_json(&b.get_snapshot(&name)?))
}

async fn snapshot_verb(
    State(b): St,
    who: Who,
    Path((p, seg)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let (n, verb) = split_verb(&seg);
    let name = names::full(Kind::Snapshot, &p, n);
    let v = body(&raw)?;
    if let Some(r) = iam_verb(&b, &caller_of(&who), &name, verb, &v).await {
        return r;
    }
    Err(PubsubError::invalid(format!(
        "Unknown snapshot method {seg:?}: give SNAPSHOT:getIamPolicy, :setIamPolicy or :testIamPermissions"
    )))
}

async fn create_snapshot(
    State(b): St,
    Path((p, n)): Path<(String, String)>,
    raw: axum::body::Bytes,
) -> Res {
    let v = body(&raw)?;
    let sub = v["subscription"]
        .as_str()
        .ok_or_else(|| PubsubError::invalid("A snapshot needs a subscription"))?;
    let sub = names::full(Kind::Subscription, &p, sub);
    let snap = b
        .create_snapshot(
            &names::full(Kind::Snapshot, &p, &n),
            &sub,
            labels(&v["labels"], "labels")?,
        )
        .await?;
    ok(snapshot_json(&snap))
}

async fn delete_snapshot(State(b): St, Path((p, n)): Path<(String, String)>) -> Res {
    b.delete_snapshot(&names::full(Kind::Snapshot, &p, &n))
        .await?;
    ok(json!({}))
}
