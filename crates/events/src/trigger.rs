//! Eventarc triggers: the `eventarc.googleapis.com/v1` Trigger object and what creating or
//! deleting one does.
//!
//! A trigger with the Pub/Sub source (`type=google.cloud.pubsub.topic.v1.messagePublished`)
//! owns one push subscription on its transport topic (the one named by
//! `transport.pubsub.topic`, or a topic it creates, `eventarc-LOCATION-TRIGGER-NNN`, as
//! Eventarc names them). The subscription pushes to the destination service's URL through the
//! ingress (`http://SERVICE[.PROJECT].localhost:INGRESS/PATH`, the project left out for `default`) with an identity token of the
//! trigger's service account, and is labelled
//! [`skiff_pubsub::push::FORMAT_LABEL`]`=`[`skiff_pubsub::push::CLOUDEVENTS_PUBSUB`], so each
//! message arrives as a CloudEvent in binary content mode, retried and dead-lettered by Pub/Sub's
//! rules. Deleting the trigger deletes the subscription (and the topic when it created it).
//!
//! A trigger on Skiff's control-plane events (`type=google.cloud.audit.log.v1.written`,
//! `serviceName=run.googleapis.com`, `methodName=...`) gets a topic of its own; [`Triggers::audit`]
//! publishes a Cloud Audit Logs `LogEntry` to it, with the CloudEvent attributes as `ce-*`
//! message attributes, and its subscription (labelled
//! [`skiff_pubsub::push::CLOUDEVENTS_BINARY`]) sends them as headers and the entry as the body.
//!
//! Triggers are kept in the store's `objects` table (kind [`KIND`], namespace = project,
//! parent = location, name = trigger id).

use crate::error::{EventsError, Result};
use serde::{Deserialize, Serialize};
use skiff_pubsub::proto::PubsubMessage;
use skiff_pubsub::proto::{push_config, PushConfig, Subscription, Topic};
use skiff_pubsub::push::{CLOUDEVENTS_BINARY, CLOUDEVENTS_PUBSUB, FORMAT_LABEL, MESSAGE_PUBLISHED};
use skiff_pubsub::{Broker, PubsubError};
use skiff_store::Store;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The store kind of triggers.
pub const KIND: &str = "triggers";
/// The store kind of the long-running operations the API returns.
pub const OPERATION_KIND: &str = "eventarc-operations";

/// One event filter: `attribute` (`type`, or a source attribute) equals `value`
/// (`operator` is Eventarc's `match-path-pattern` when set; Skiff accepts only equality).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventFilter {
    pub attribute: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator: String,
}

/// `destination.cloudRun`: the Cloud Run service events go to, the path on it (default `/`)
/// and its region (default: the trigger's location).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudRun {
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
}

/// `destination.cloudRunJob`, Skiff's extension of Eventarc's `Destination` (which has no job
/// destination): the Cloud Run job each event starts an execution of, and its region (default:
/// the trigger's location). The event reaches every task as environment variables; see
/// [`event_env`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudRunJob {
    pub job: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
}

/// `destination`: where events go: a service (`cloudRun`) or a job (`cloudRunJob`), exactly
/// one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_run: Option<CloudRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_run_job: Option<CloudRunJob>,
}

/// Starts an execution of a job for an event: `(project, job, env)` → the execution's name, or
/// why it could not start (the event is then nacked and retried by the subscription's retry
/// policy, and dead-lettered as Pub/Sub does). The server passes one that calls the jobs
/// engine.
pub type JobLauncher = Arc<
    dyn Fn(&str, &str, Vec<(String, String)>) -> std::result::Result<String, String> + Send + Sync,
>;

/// The most bytes of event data one execution gets in `CE_DATA` (32 KiB, Cloud Run's limit on
/// one environment variable's value); a larger event is not delivered to a job.
pub const MAX_JOB_EVENT_DATA: usize = 32 * 1024;

/// The environment a task of an execution started by an event gets: each CloudEvent attribute
/// `ce-NAME` as `CE_NAME` (upper case: `CE_ID`, `CE_SOURCE`, `CE_TYPE`, `CE_SPECVERSION`,
/// `CE_TIME`, `CE_SUBJECT` and extensions), and the event's data as `CE_DATA` (UTF-8 text,
/// JSON for Eventarc's events) or, when it is not UTF-8, `CE_DATA_BASE64`. Sorted by name.
/// Errors: data over [`MAX_JOB_EVENT_DATA`].
pub fn event_env(
    attributes: &[(String, String)],
    data: &[u8],
) -> std::result::Result<Vec<(String, String)>, String> {
    if data.len() > MAX_JOB_EVENT_DATA {
        return Err(format!(
            "the event's data is {} bytes; a job gets at most {MAX_JOB_EVENT_DATA} in CE_DATA",
            data.len()
        ));
    }
    let mut env: Vec<(String, String)> = attributes
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("ce-")?;
            Some((
                format!("CE_{}", name.to_ascii_uppercase().replace('-', "_")),
                v.clone(),
            ))
        })
        .collect();
    match std::str::from_utf8(data) {
        Ok(text) => env.push(("CE_DATA".into(), text.to_string())),
        Err(_) => {
            use base64::Engine;
            env.push((
                "CE_DATA_BASE64".into(),
                base64::engine::general_purpose::STANDARD.encode(data),
            ))
        }
    }
    env.sort();
    Ok(env)
}

/// `transport.pubsub`: the topic events travel on (full name `projects/P/topics/T`) and the
/// trigger's subscription to it (output only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PubsubTransport {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subscription: String,
}

/// `transport`: how events reach the destination.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubsubTransport>,
}

/// A condition of a trigger (`conditions` map value): a code and message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateCondition {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Eventarc's `Trigger` (`eventarc.googleapis.com/v1`), in its JSON shape. Output-only fields
/// (`name`'s full form, `uid`, times, `transport.pubsub.subscription`, `etag`) are set by
/// [`Triggers::create`]. Times are RFC 3339 UTC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub create_time: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub update_time: String,
    #[serde(default)]
    pub event_filters: Vec<EventFilter>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_account: String,
    #[serde(default)]
    pub destination: Destination,
    #[serde(default)]
    pub transport: Transport,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conditions: BTreeMap<String, StateCondition>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
}

/// What the store keeps of a trigger: the object and whether it created its transport topic
/// (then deleting the trigger deletes the topic too).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    trigger: Trigger,
    owns_topic: bool,
}

/// The trigger engine: validates, creates and deletes triggers and their subscriptions.
pub struct Triggers {
    store: Arc<Store>,
    broker: Arc<Broker>,
    launcher: std::sync::OnceLock<JobLauncher>,
    /// Subscriptions with a job delivery loop running.
    job_loops: std::sync::Mutex<std::collections::HashSet<String>>,
    urls: skiff_model::ServiceUrls,
}

/// The CloudEvents type of a Cloud Audit Logs entry, as Eventarc names it.
pub const AUDIT_LOG_WRITTEN: &str = "google.cloud.audit.log.v1.written";
/// The `serviceName` of Skiff's own control-plane events (Cloud Run's).
pub const RUN_SERVICE_NAME: &str = "run.googleapis.com";

/// Where a trigger's events go, checked.
enum Target {
    /// A service, at `path` (absolute).
    Service { service: String, path: String },
    /// A job, one execution per event.
    Job { job: String },
}

/// Where a trigger's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Messages published to the transport topic.
    Pubsub,
    /// Skiff's control-plane events in Cloud Audit Logs' shape.
    AuditLog,
}

/// The value of filter `attribute`, if any.
fn filter<'a>(filters: &'a [EventFilter], attribute: &str) -> Option<&'a str> {
    filters
        .iter()
        .find(|f| f.attribute == attribute)
        .map(|f| f.value.as_str())
}

/// Checks a trigger's event filters: exactly one `type`, a supported one, with only the
/// attributes that type takes (`messagePublished`: none; `audit.log.v1.written`:
/// `serviceName=run.googleapis.com` and `methodName` required, `resourceName` optional), no
/// attribute twice, equality only.
fn check_filters(filters: &[EventFilter]) -> Result<Source> {
    let Some(ty) = filter(filters, "type") else {
        return Err(EventsError::invalid(format!(
            "the trigger has no event filter on `type`: give --event-filters type={MESSAGE_PUBLISHED} (or type={AUDIT_LOG_WRITTEN},serviceName={RUN_SERVICE_NAME},methodName=METHOD)"
        )));
    };
    let mut seen = std::collections::HashSet::new();
    for f in filters {
        if !seen.insert(f.attribute.as_str()) {
            return Err(EventsError::invalid(format!(
                "event filter attribute {:?} is given more than once: give each once",
                f.attribute
            )));
        }
        if !f.operator.is_empty() {
            return Err(EventsError::invalid(format!(
                "event filter operator {:?} is not supported: Skiff matches attributes exactly",
                f.operator
            )));
        }
    }
    let (source, allowed): (Source, &[&str]) = match ty {
        MESSAGE_PUBLISHED => (Source::Pubsub, &["type"]),
        AUDIT_LOG_WRITTEN => (
            Source::AuditLog,
            &["type", "serviceName", "methodName", "resourceName"],
        ),
        other => {
            return Err(EventsError::invalid(format!(
                "unsupported event type {other:?}: Skiff's triggers take {MESSAGE_PUBLISHED} and {AUDIT_LOG_WRITTEN}"
            )))
        }
    };
    if let Some(f) = filters
        .iter()
        .find(|f| !allowed.contains(&f.attribute.as_str()))
    {
        return Err(EventsError::invalid(format!(
            "event filter attribute {:?} is not supported for {ty}: use {}",
            f.attribute,
            allowed.join(", ")
        )));
    }
    if source == Source::AuditLog {
        match filter(filters, "serviceName") {
            Some(RUN_SERVICE_NAME) => {}
            Some(other) => {
                return Err(EventsError::invalid(format!(
                    "unsupported serviceName {other:?}: Skiff writes audit log entries for {RUN_SERVICE_NAME} only"
                )))
            }
            None => {
                return Err(EventsError::invalid(format!(
                    "a {AUDIT_LOG_WRITTEN} trigger needs serviceName={RUN_SERVICE_NAME} in --event-filters"
                )))
            }
        }
        if filter(filters, "methodName").is_none() {
            return Err(EventsError::invalid(format!(
                "a {AUDIT_LOG_WRITTEN} trigger needs methodName=METHOD in --event-filters, like google.cloud.run.v1.Services.CreateService"
            )));
        }
    }
    Ok(source)
}

/// A Cloud Audit Logs `LogEntry` (JSON) for a Skiff control-plane call: `methodName` like
/// `google.cloud.run.v1.Services.ReplaceService`, `resourceName` like
/// `namespaces/P/services/S`, `time` RFC 3339 UTC.
pub fn audit_log_entry(
    project: &str,
    method: &str,
    resource: &str,
    time: &str,
    id: &str,
) -> serde_json::Value {
    serde_json::json!({
        "insertId": id,
        "logName": format!("projects/{project}/logs/cloudaudit.googleapis.com%2Factivity"),
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "serviceName": RUN_SERVICE_NAME,
            "methodName": method,
            "resourceName": resource,
        },
        "resource": {
            "type": "cloud_run_revision",
            "labels": {"project_id": project, "location": skiff_model::REGION},
        },
        "severity": "NOTICE",
        "timestamp": time,
        "receiveTimestamp": time,
    })
}

/// A trigger id as Eventarc accepts it: a lowercase letter, then up to 62 lowercase letters,
/// digits or hyphens, not ending in a hyphen.
pub fn check_id(id: &str) -> Result<()> {
    let ok = id.len() <= 63
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(EventsError::invalid(format!(
            "invalid trigger id {id:?}: use a lowercase letter, then lowercase letters, digits or hyphens (at most 63, not ending in a hyphen)"
        )))
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn hex_id(bytes: usize) -> String {
    let b: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(b)
}

/// The full name of a trigger.
pub fn trigger_name(project: &str, location: &str, id: &str) -> String {
    format!("projects/{project}/locations/{location}/triggers/{id}")
}

impl Triggers {
    /// The engine over the server's store and broker; `urls` makes the service URLs that
    /// triggers push to.
    pub fn new(
        store: Arc<Store>,
        broker: Arc<Broker>,
        urls: skiff_model::ServiceUrls,
    ) -> Arc<Triggers> {
        Arc::new(Triggers {
            store,
            broker,
            launcher: std::sync::OnceLock::new(),
            job_loops: Default::default(),
            urls,
        })
    }

    /// Sets what starts job executions (only the first call takes effect) and starts delivery
    /// for every trigger with a job destination.
    pub fn set_job_launcher(self: &Arc<Self>, launcher: JobLauncher) {
        let _ = self.launcher.set(launcher);
        match self.store.list_objects::<Stored>(KIND, None, None) {
            Ok(all) => {
                for s in all {
                    self.start_job_delivery(&s.trigger);
                }
            }
            Err(e) => tracing::warn!("cannot list triggers to start job deliveries: {e}"),
        }
    }

    /// Starts the delivery loop of a trigger whose destination is a job, once.
    fn start_job_delivery(self: &Arc<Self>, t: &Trigger) {
        let (Some(job), Some(transport)) = (
            t.destination.cloud_run_job.clone(),
            t.transport.pubsub.clone(),
        ) else {
            return;
        };
        let Some(launcher) = self.launcher.get().cloned() else {
            return;
        };
        if !self
            .job_loops
            .lock()
            .unwrap()
            .insert(transport.subscription.clone())
        {
            return;
        }
        let project = t
            .name
            .strip_prefix("projects/")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        let me = self.clone();
        tokio::spawn(async move {
            me.job_delivery(&project, &job.job, &transport.subscription, launcher)
                .await;
            me.job_loops.lock().unwrap().remove(&transport.subscription);
        });
    }

    /// Takes the events of a job trigger's pull subscription one at a time and starts an
    /// execution of `job` for each: acknowledged once the execution exists, nacked (so
    /// redelivered after the retry policy's backoff, and dead-lettered after
    /// `maxDeliveryAttempts`) when it cannot start. Ends when the subscription is deleted.
    async fn job_delivery(&self, project: &str, job: &str, sub: &str, launcher: JobLauncher) {
        loop {
            let (Ok(cfg), Ok(notify)) = (
                self.broker.get_subscription(sub),
                self.broker.notify_of(sub),
            ) else {
                return;
            };
            let published = notify.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            let mut wait = std::time::Duration::from_secs(1);
            match self.broker.deliver(sub, 1, None) {
                Err(_) => return,
                Ok((got, _, next_at)) => {
                    if let Some(at) = next_at {
                        let ms = (at - skiff_pubsub::broker::now_ms()).max(1) as u64;
                        wait = wait.min(std::time::Duration::from_millis(ms));
                    }
                    for r in got {
                        let (attributes, data) =
                            skiff_pubsub::push::cloudevent(&cfg, &r).unwrap_or_default();
                        let started = event_env(&attributes, &data)
                            .and_then(|env| launcher(project, job, env));
                        let ack = std::slice::from_ref(&r.ack_id);
                        let result = match started {
                            Ok(execution) => {
                                tracing::info!(
                                    "event {} started execution {execution} of job {job}",
                                    r.message
                                        .as_ref()
                                        .map(|m| m.message_id.as_str())
                                        .unwrap_or("")
                                );
                                self.broker.record_push(sub, "ack");
                                self.broker.acknowledge(sub, ack).await
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "event {} for job {job} in {project} is retried later: {e}",
                                    r.message
                                        .as_ref()
                                        .map(|m| m.message_id.as_str())
                                        .unwrap_or("")
                                );
                                self.broker.record_push(sub, "invalid");
                                self.broker.modify_ack_deadline(sub, ack, 0)
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!("job trigger subscription {sub}: {e}");
                        }
                        // Look again at once: more may be waiting.
                        wait = std::time::Duration::ZERO;
                    }
                }
            }
            tokio::select! {
                _ = &mut published => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Creates trigger `id` in `project`/`location` from `input` (its output-only fields are
    /// ignored): checks the filters (see `check_filters`: `messagePublished`, or
    /// `audit.log.v1.written` with `serviceName=run.googleapis.com` and a `methodName`), that
    /// the destination service exists in the project and the transport topic (a full
    /// `projects/P/topics/T` or a bare `T`; Pub/Sub triggers only) exists, then creates the
    /// topic if none was given, the push subscription, and stores the trigger. Nothing is left
    /// behind on an error.
    pub async fn create(
        self: &Arc<Self>,
        project: &str,
        location: &str,
        id: &str,
        input: Trigger,
    ) -> Result<Trigger> {
        check_id(id)?;
        if self
            .store
            .get_object::<Stored>(KIND, project, &key(location, id))?
            .is_some()
        {
            return Err(EventsError::AlreadyExists(trigger_name(
                project, location, id,
            )));
        }
        let source = check_filters(&input.event_filters)?;
        let target = self.check_destination(project, location, &input.destination)?;
        let given_topic = input
            .transport
            .pubsub
            .as_ref()
            .map(|p| p.topic.clone())
            .unwrap_or_default();
        if source == Source::AuditLog && !given_topic.is_empty() {
            return Err(EventsError::invalid(format!(
                "--transport-topic is for {MESSAGE_PUBLISHED} triggers: a {AUDIT_LOG_WRITTEN} trigger creates its own topic"
            )));
        }
        let (topic, owns_topic) = if given_topic.is_empty() {
            let name = format!(
                "projects/{project}/topics/eventarc-{location}-{id}-{:03}",
                rand::random::<u16>() % 1000
            );
            let mut labels = std::collections::HashMap::new();
            labels.insert("goog-eventarc".to_string(), String::new());
            self.broker
                .create_topic(Topic {
                    name: name.clone(),
                    labels,
                    ..Default::default()
                })
                .await?;
            (name, true)
        } else {
            let name = if given_topic.contains('/') {
                given_topic.clone()
            } else {
                format!("projects/{project}/topics/{given_topic}")
            };
            match self.broker.get_topic(&name) {
                Ok(_) => {}
                Err(PubsubError::NotFound { .. }) => {
                    return Err(EventsError::invalid(format!(
                        "transport topic {name} does not exist: create it with `skiff pubsub topics create`"
                    )))
                }
                Err(PubsubError::InvalidArgument(m)) => {
                    return Err(EventsError::invalid(format!(
                        "invalid transport topic {given_topic:?}: {m}"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
            (name, false)
        };
        let account = if input.service_account.is_empty() {
            skiff_model::knative::default_service_account(project)
        } else {
            input.service_account.clone()
        };
        let sub_name = format!(
            "projects/{project}/subscriptions/eventarc-{location}-{id}-sub-{:03}",
            rand::random::<u16>() % 1000
        );
        let mut labels = std::collections::HashMap::new();
        let format = match source {
            Source::Pubsub => CLOUDEVENTS_PUBSUB,
            Source::AuditLog => CLOUDEVENTS_BINARY,
        };
        labels.insert(FORMAT_LABEL.to_string(), format.to_string());
        labels.insert("goog-eventarc".to_string(), String::new());
        // A service gets the events pushed through the ingress; a job's events are pulled by
        // this engine's own delivery loop (see `job_delivery`).
        let push_config = match &target {
            Target::Service { service, path } => Some(PushConfig {
                push_endpoint: format!("{}{path}", self.urls.url(project, service, None)),
                authentication_method: Some(push_config::AuthenticationMethod::OidcToken(
                    push_config::OidcToken {
                        service_account_email: account.clone(),
                        audience: String::new(),
                    },
                )),
                ..Default::default()
            }),
            Target::Job { .. } => None,
        };
        let created = self
            .broker
            .create_subscription(Subscription {
                name: sub_name.clone(),
                topic: topic.clone(),
                labels,
                push_config,
                // Failed deliveries come back with exponential backoff (10 s doubling to
                // 600 s, Pub/Sub's bounds), never at once.
                retry_policy: Some(skiff_pubsub::proto::RetryPolicy {
                    minimum_backoff: Some(prost_types::Duration {
                        seconds: 10,
                        nanos: 0,
                    }),
                    maximum_backoff: Some(prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    }),
                }),
                ..Default::default()
            })
            .await;
        if let Err(e) = created {
            if owns_topic {
                let _ = self.broker.delete_topic(&topic).await;
            }
            return Err(e.into());
        }
        let time = now();
        let trigger = Trigger {
            name: trigger_name(project, location, id),
            uid: skiff_model::new_uuid(),
            create_time: time.clone(),
            update_time: time,
            event_filters: input.event_filters.clone(),
            service_account: account,
            destination: match &target {
                Target::Service { service, .. } => Destination {
                    cloud_run: Some(CloudRun {
                        service: service.clone(),
                        path: input
                            .destination
                            .cloud_run
                            .as_ref()
                            .map(|r| r.path.clone())
                            .unwrap_or_default(),
                        region: location.to_string(),
                    }),
                    cloud_run_job: None,
                },
                Target::Job { job } => Destination {
                    cloud_run: None,
                    cloud_run_job: Some(CloudRunJob {
                        job: job.clone(),
                        region: location.to_string(),
                    }),
                },
            },
            transport: Transport {
                pubsub: Some(PubsubTransport {
                    topic: topic.clone(),
                    subscription: sub_name.clone(),
                }),
            },
            labels: input.labels.clone(),
            conditions: BTreeMap::new(),
            etag: hex_id(8),
        };
        let stored = Stored {
            trigger: trigger.clone(),
            owns_topic,
        };
        if let Err(e) = self
            .store
            .put_object(KIND, project, &key(location, id), location, &stored)
        {
            let _ = self.broker.delete_subscription(&sub_name).await;
            if owns_topic {
                let _ = self.broker.delete_topic(&topic).await;
            }
            return Err(e.into());
        }
        self.start_job_delivery(&trigger);
        Ok(trigger)
    }

    /// Checks a trigger's destination: exactly one of `cloudRun` (an existing service of the
    /// project; `path` made absolute) and `cloudRunJob` (an existing job), in the trigger's
    /// region.
    fn check_destination(&self, project: &str, location: &str, d: &Destination) -> Result<Target> {
        let (region, target) = match (&d.cloud_run, &d.cloud_run_job) {
            (Some(_), Some(_)) => {
                return Err(EventsError::invalid(
                    "the trigger has two destinations: give either --destination-run-service or --destination-run-job",
                ))
            }
            (None, None) => {
                return Err(EventsError::invalid(
                    "the trigger has no destination: give --destination-run-service SERVICE (or --destination-run-job JOB)",
                ))
            }
            (Some(run), None) => {
                if run.service.is_empty() {
                    return Err(EventsError::invalid(
                        "the trigger has no destination service: give --destination-run-service SERVICE",
                    ));
                }
                if self.store.get_service(project, &run.service)?.is_none() {
                    return Err(EventsError::invalid(format!(
                        "destination service {:?} does not exist in project {project}: deploy it first (`skiff services list` shows the existing ones)",
                        run.service
                    )));
                }
                let path = if run.path.is_empty() {
                    "/".to_string()
                } else if run.path.starts_with('/') {
                    run.path.clone()
                } else {
                    format!("/{}", run.path)
                };
                (
                    &run.region,
                    Target::Service {
                        service: run.service.clone(),
                        path,
                    },
                )
            }
            (None, Some(j)) => {
                if j.job.is_empty() {
                    return Err(EventsError::invalid(
                        "the trigger has no destination job: give --destination-run-job JOB",
                    ));
                }
                if self
                    .store
                    .get_object::<serde_json::Value>(skiff_store::kind::JOB, project, &j.job)?
                    .is_none()
                {
                    return Err(EventsError::invalid(format!(
                        "destination job {:?} does not exist in project {project}: create it first (`skiff jobs list` shows the existing ones)",
                        j.job
                    )));
                }
                (&j.region, Target::Job { job: j.job.clone() })
            }
        };
        if !region.is_empty() && region != location {
            return Err(EventsError::invalid(format!(
                "destination region {region:?} is not the trigger's location {location:?}: Skiff serves one region"
            )));
        }
        Ok(target)
    }

    /// Trigger `id` of `project`/`location`; `NotFound` if there is none.
    pub fn get(&self, project: &str, location: &str, id: &str) -> Result<Trigger> {
        self.store
            .get_object::<Stored>(KIND, project, &key(location, id))?
            .map(|s| s.trigger)
            .ok_or_else(|| EventsError::NotFound(trigger_name(project, location, id)))
    }

    /// The triggers of `project`/`location`, oldest first.
    pub fn list(&self, project: &str, location: &str) -> Result<Vec<Trigger>> {
        Ok(self
            .store
            .list_objects::<Stored>(KIND, Some(project), Some(location))?
            .into_iter()
            .map(|s| s.trigger)
            .collect())
    }

    /// Deletes trigger `id` and its subscription (and its transport topic when the trigger
    /// created it); the deleted trigger. `NotFound` if there is none.
    pub async fn delete(&self, project: &str, location: &str, id: &str) -> Result<Trigger> {
        let k = key(location, id);
        let Some(stored) = self.store.get_object::<Stored>(KIND, project, &k)? else {
            return Err(EventsError::NotFound(trigger_name(project, location, id)));
        };
        if let Some(p) = &stored.trigger.transport.pubsub {
            ignore_missing(self.broker.delete_subscription(&p.subscription).await)?;
            if stored.owns_topic {
                ignore_missing(self.broker.delete_topic(&p.topic).await)?;
            }
        }
        self.store.delete_object(KIND, project, &k, &[])?;
        Ok(stored.trigger)
    }

    /// Publishes a control-plane event (Cloud Audit Logs' shape, see [`audit_log_entry`]) to
    /// every `google.cloud.audit.log.v1.written` trigger of `project` whose filters match
    /// `method` (and `resource`, when the trigger filters on it). The CloudEvent's attributes
    /// travel as the message's `ce-*` attributes: `ce-id`, `ce-source`
    /// (`//cloudaudit.googleapis.com/projects/P/logs/cloudaudit.googleapis.com%2Factivity`),
    /// `ce-type`, `ce-specversion`, `ce-time`, `ce-subject` (`run.googleapis.com/RESOURCE`) and
    /// Eventarc's extensions `ce-servicename`, `ce-methodname`, `ce-resourcename`. Failures
    /// are logged, not returned: the control-plane call has already succeeded.
    pub async fn audit(&self, project: &str, method: &str, resource: &str) {
        let triggers = match self.store.list_objects::<Stored>(KIND, Some(project), None) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("audit event {method}: cannot list triggers: {e}");
                return;
            }
        };
        for t in triggers.iter().map(|s| &s.trigger) {
            let f = &t.event_filters;
            if filter(f, "type") != Some(AUDIT_LOG_WRITTEN)
                || filter(f, "methodName") != Some(method)
                || filter(f, "resourceName").is_some_and(|r| r != resource)
            {
                continue;
            }
            let Some(topic) = t.transport.pubsub.as_ref().map(|p| p.topic.clone()) else {
                continue;
            };
            let time = now();
            let id = hex_id(16);
            let entry = audit_log_entry(project, method, resource, &time, &id);
            let attributes = [
                ("ce-id", id.clone()),
                ("ce-source", format!("//cloudaudit.googleapis.com/projects/{project}/logs/cloudaudit.googleapis.com%2Factivity")),
                ("ce-type", AUDIT_LOG_WRITTEN.to_string()),
                ("ce-specversion", "1.0".to_string()),
                ("ce-time", time.clone()),
                ("ce-subject", format!("{RUN_SERVICE_NAME}/{resource}")),
                ("ce-servicename", RUN_SERVICE_NAME.to_string()),
                ("ce-methodname", method.to_string()),
                ("ce-resourcename", resource.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let msg = PubsubMessage {
                data: entry.to_string().into_bytes(),
                attributes,
                ..Default::default()
            };
            if let Err(e) = self.broker.publish(&topic, vec![msg]).await {
                tracing::warn!("audit event {method} for trigger {}: {e}", t.name);
            }
        }
    }

    /// The store, for the API's operations.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }
}

fn ignore_missing(r: skiff_pubsub::Result<()>) -> Result<()> {
    match r {
        Ok(()) | Err(PubsubError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The store name of a trigger: `LOCATION/ID` (so ids in different locations do not clash).
fn key(location: &str, id: &str) -> String {
    format!("{location}/{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(pairs: &[(&str, &str)]) -> Vec<EventFilter> {
        pairs
            .iter()
            .map(|(a, v)| EventFilter {
                attribute: a.to_string(),
                value: v.to_string(),
                operator: String::new(),
            })
            .collect()
    }

    #[test]
    fn filter_rules() {
        assert_eq!(
            check_filters(&filters(&[("type", MESSAGE_PUBLISHED)])).unwrap(),
            Source::Pubsub
        );
        assert_eq!(
            check_filters(&filters(&[
                ("type", AUDIT_LOG_WRITTEN),
                ("serviceName", RUN_SERVICE_NAME),
                ("methodName", "google.cloud.run.v1.Jobs.RunJob"),
                ("resourceName", "namespaces/p/jobs/j"),
            ]))
            .unwrap(),
            Source::AuditLog
        );
        let bad: &[(&[(&str, &str)], &str)] = &[
            (&[], "no event filter on `type`"),
            (
                &[("type", "google.cloud.storage.object.v1.finalized")],
                "unsupported event type",
            ),
            (
                &[("type", MESSAGE_PUBLISHED), ("bucket", "b")],
                "not supported for",
            ),
            (
                &[("type", MESSAGE_PUBLISHED), ("type", MESSAGE_PUBLISHED)],
                "more than once",
            ),
            (
                &[("type", AUDIT_LOG_WRITTEN), ("methodName", "m")],
                "needs serviceName",
            ),
            (
                &[
                    ("type", AUDIT_LOG_WRITTEN),
                    ("serviceName", "storage.googleapis.com"),
                    ("methodName", "m"),
                ],
                "unsupported serviceName",
            ),
            (
                &[
                    ("type", AUDIT_LOG_WRITTEN),
                    ("serviceName", RUN_SERVICE_NAME),
                ],
                "needs methodName",
            ),
        ];
        for (f, want) in bad {
            let e = check_filters(&filters(f)).unwrap_err().to_string();
            assert!(e.contains(want), "{f:?}: {e}");
        }
        let mut with_op = filters(&[("type", MESSAGE_PUBLISHED)]);
        with_op[0].operator = "match-path-pattern".into();
        assert!(check_filters(&with_op).is_err());
    }

    #[test]
    fn ids() {
        for ok in ["a", "on-order", "t1"] {
            check_id(ok).unwrap();
        }
        for bad in ["", "1a", "A", "a_b", "a-", &"x".repeat(64)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn log_entry_shape() {
        let e = audit_log_entry(
            "p",
            "google.cloud.run.v1.Services.CreateService",
            "namespaces/p/services/s",
            "2026-01-01T00:00:00Z",
            "abc",
        );
        assert_eq!(e["insertId"], "abc");
        assert_eq!(
            e["logName"],
            "projects/p/logs/cloudaudit.googleapis.com%2Factivity"
        );
        assert_eq!(e["protoPayload"]["serviceName"], "run.googleapis.com");
        assert_eq!(
            e["protoPayload"]["methodName"],
            "google.cloud.run.v1.Services.CreateService"
        );
        assert_eq!(e["protoPayload"]["resourceName"], "namespaces/p/services/s");
        assert_eq!(
            e["protoPayload"]["@type"],
            "type.googleapis.com/google.cloud.audit.AuditLog"
        );
    }

    #[test]
    fn event_env_shape() {
        let attrs = vec![
            ("ce-type".to_string(), "t".to_string()),
            ("ce-id".to_string(), "1".to_string()),
            ("ce-methodname".to_string(), "m".to_string()),
            ("other".to_string(), "x".to_string()),
        ];
        assert_eq!(
            event_env(&attrs, b"{}").unwrap(),
            [
                ("CE_DATA".to_string(), "{}".to_string()),
                ("CE_ID".into(), "1".into()),
                ("CE_METHODNAME".into(), "m".into()),
                ("CE_TYPE".into(), "t".into()),
            ]
        );
        let env = event_env(&[], &[0xff, 0xfe]).unwrap();
        assert_eq!(env, [("CE_DATA_BASE64".to_string(), "//4=".to_string())]);
        let big = vec![b'a'; MAX_JOB_EVENT_DATA + 1];
        assert!(event_env(&[], &big).unwrap_err().contains("at most"));
        assert!(event_env(&[], &big[1..]).is_ok());
    }
}
