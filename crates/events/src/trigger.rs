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
//! Triggers are kept in the store's `objects` table (kind [`KIND`], namespace = project,
//! parent = location, name = trigger id).

use crate::error::{EventsError, Result};
use serde::{Deserialize, Serialize};
use skiff_pubsub::proto::{push_config, PushConfig, Subscription, Topic};
use skiff_pubsub::push::{CLOUDEVENTS_PUBSUB, FORMAT_LABEL, MESSAGE_PUBLISHED};
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

/// `destination`: where events go (only `cloudRun` in Skiff).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_run: Option<CloudRun>,
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
    ingress_port: u16,
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
    /// The engine over the server's store and broker; `ingress_port` is where service URLs
    /// are reached.
    pub fn new(store: Arc<Store>, broker: Arc<Broker>, ingress_port: u16) -> Arc<Triggers> {
        Arc::new(Triggers {
            store,
            broker,
            ingress_port,
        })
    }

    /// Creates trigger `id` in `project`/`location` from `input` (its output-only fields are
    /// ignored): checks the filters (exactly one `type`, which must be
    /// `google.cloud.pubsub.topic.v1.messagePublished`, and no other attribute), that the
    /// destination service exists in the project and the transport topic (a full
    /// `projects/P/topics/T` or a bare `T`) exists, then creates the topic if none was given,
    /// the push subscription, and stores the trigger. Nothing is left behind on an error.
    pub async fn create(
        &self,
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
        let mut types = input.event_filters.iter().filter(|f| f.attribute == "type");
        let Some(ty) = types.next() else {
            return Err(EventsError::invalid(
                "the trigger has no event filter on `type`: give --event-filters type=google.cloud.pubsub.topic.v1.messagePublished",
            ));
        };
        if types.next().is_some() {
            return Err(EventsError::invalid(
                "the trigger has more than one `type` event filter: give exactly one",
            ));
        }
        if ty.value != MESSAGE_PUBLISHED {
            return Err(EventsError::invalid(format!(
                "unsupported event type {:?}: Skiff's triggers take {MESSAGE_PUBLISHED}",
                ty.value
            )));
        }
        if let Some(f) = input.event_filters.iter().find(|f| f.attribute != "type") {
            return Err(EventsError::invalid(format!(
                "event filter attribute {:?} is not supported for {MESSAGE_PUBLISHED}: give only `type` and the topic as --transport-topic",
                f.attribute
            )));
        }
        if let Some(f) = input.event_filters.iter().find(|f| !f.operator.is_empty()) {
            return Err(EventsError::invalid(format!(
                "event filter operator {:?} is not supported: Skiff matches `type` exactly",
                f.operator
            )));
        }
        let Some(run) = input.destination.cloud_run.clone() else {
            return Err(EventsError::invalid(
                "the trigger has no destination: give --destination-run-service SERVICE",
            ));
        };
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
        if !run.region.is_empty() && run.region != location {
            return Err(EventsError::invalid(format!(
                "destination region {:?} is not the trigger's location {location:?}: Skiff serves one region",
                run.region
            )));
        }
        let path = if run.path.is_empty() {
            "/".to_string()
        } else if run.path.starts_with('/') {
            run.path.clone()
        } else {
            format!("/{}", run.path)
        };
        let given_topic = input
            .transport
            .pubsub
            .as_ref()
            .map(|p| p.topic.clone())
            .unwrap_or_default();
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
        let endpoint = format!(
            "http://{}:{}{path}",
            skiff_model::service_host(project, &run.service, None),
            self.ingress_port
        );
        let mut labels = std::collections::HashMap::new();
        labels.insert(FORMAT_LABEL.to_string(), CLOUDEVENTS_PUBSUB.to_string());
        labels.insert("goog-eventarc".to_string(), String::new());
        let created = self
            .broker
            .create_subscription(Subscription {
                name: sub_name.clone(),
                topic: topic.clone(),
                labels,
                push_config: Some(PushConfig {
                    push_endpoint: endpoint,
                    authentication_method: Some(push_config::AuthenticationMethod::OidcToken(
                        push_config::OidcToken {
                            service_account_email: account.clone(),
                            audience: String::new(),
                        },
                    )),
                    ..Default::default()
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
            uid: hex_id(16),
            create_time: time.clone(),
            update_time: time,
            event_filters: input.event_filters.clone(),
            service_account: account,
            destination: Destination {
                cloud_run: Some(CloudRun {
                    service: run.service.clone(),
                    path: run.path.clone(),
                    region: location.to_string(),
                }),
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
        Ok(trigger)
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
