//! The broker: topics, subscriptions and snapshots in memory, mirrored by the store, and the
//! engine that fans published messages out to subscriptions and hands them to pulling (and,
//! through the push hook, pushing) clients. Every API surface (gRPC, REST, the CLI through
//! REST) calls [`Broker`]; nothing else touches the store.
//!
//! Writes go through one writer thread (`store.rs`); a publish or ack is answered only once its
//! transaction has committed. In-memory delivery state (leases, backoff) is not persisted except
//! for delivery counts: after a restart every unacknowledged message is deliverable at once.

use crate::delivery::{Backlog, Delivered, Message, Policy};
use crate::error::{PubsubError, Result};
use crate::filter::Filter;
use crate::names::{self, Kind};
use crate::proto::{seek_request, PubsubMessage, ReceivedMessage, Snapshot, Subscription, Topic};
use crate::store;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// Default and bounds of `ackDeadlineSeconds`.
pub const ACK_DEADLINE_DEFAULT: i32 = 10;
const ACK_DEADLINE_RANGE: std::ops::RangeInclusive<i64> = 10..=600;
/// Default `messageRetentionDuration` (7 days) and its bounds (10 minutes to 31 days), in s.
pub const RETENTION_DEFAULT_S: i64 = 7 * 24 * 3600;
const RETENTION_RANGE_S: std::ops::RangeInclusive<i64> = 600..=31 * 24 * 3600;
/// `retryPolicy` defaults and bounds, in s.
const MIN_BACKOFF_DEFAULT_S: i64 = 10;
const MAX_BACKOFF_DEFAULT_S: i64 = 600;
const BACKOFF_RANGE_S: std::ops::RangeInclusive<i64> = 0..=600;
/// `deadLetterPolicy.maxDeliveryAttempts` default and bounds.
const MAX_ATTEMPTS_DEFAULT: i32 = 5;
const MAX_ATTEMPTS_RANGE: std::ops::RangeInclusive<i32> = 5..=100;
/// Snapshots live 7 days (less if the oldest message they hold is older).
const SNAPSHOT_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// Most messages one publish may carry, as the service allows.
const MAX_PUBLISH_BATCH: usize = 1000;
/// Longest a pull without `returnImmediately` waits for a message.
pub const PULL_WAIT: Duration = Duration::from_secs(10);

/// Milliseconds since the Unix epoch, the broker's clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn dur_ms(d: &Option<prost_types::Duration>) -> Option<i64> {
    d.as_ref()
        .map(|d| d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

fn dur(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

/// A timestamp from ms since the epoch.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// What a push subscription's deliveries are handed to: the server wires it to an HTTP client
/// (see `push.rs`). Called with the subscription's name; it pulls through the broker itself.
pub type PushStarter = Arc<dyn Fn(Arc<Broker>, String) + Send + Sync>;

struct SubState {
    config: Subscription,
    policy: Policy,
    filter: Option<Filter>,
    backlog: Backlog,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, Topic>,
    subs: BTreeMap<String, SubState>,
    snapshots: BTreeMap<String, (Snapshot, String)>,
    /// IAM policies by resource name (absent: the empty policy).
    policies: BTreeMap<String, crate::iam::Policy>,
}

struct NewMessage {
    data: Vec<u8>,
    attributes: HashMap<String, String>,
    ordering_key: String,
}

type Reply<T> = oneshot::Sender<Result<T>>;
type SqlFn = Box<dyn FnOnce(&Connection) -> Result<()> + Send>;

enum Op {
    Publish {
        topic: String,
        msgs: Vec<NewMessage>,
        reply: Reply<Vec<u64>>,
    },
    Ack {
        sub: String,
        ids: Vec<u64>,
        reply: Option<Reply<()>>,
    },
    Attempts {
        sub: String,
        id: u64,
        attempts: u32,
    },
    Sql {
        f: SqlFn,
        reply: Reply<()>,
    },
}

/// Per-subscription figures for `/metrics` and the CLI.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionStats {
    pub subscription: String,
    pub topic: String,
    /// Unacknowledged messages.
    pub undelivered: usize,
    /// Age of the oldest unacknowledged message, in seconds (0 when none).
    pub oldest_unacked_age_s: f64,
}

/// The Pub/Sub engine. Cheap to share (`Arc<Broker>`); every method is safe to call from
/// any task. Methods take and return `google.pubsub.v1` messages.
pub struct Broker {
    state: Mutex<State>,
    writer: Mutex<mpsc::Sender<Op>>,
    /// For reads outside the writer (reloading a subscription after a seek).
    reader: Mutex<Connection>,
    pusher: Mutex<Option<PushStarter>>,
    /// Publish requests per topic (`pubsub_topic_send_request_count`).
    sent: Mutex<HashMap<String, u64>>,
    /// Push requests per (subscription, response class).
    pushed: Mutex<HashMap<(String, &'static str), u64>>,
}

impl Broker {
    /// Opens (creating) the store under `dir` (`dir/pubsub.db`) and restores every topic,
    /// subscription, snapshot and unacknowledged message. Starts the writer thread and,
    /// inside a tokio runtime, the hourly retention sweep.
    pub fn open(dir: &Path) -> Result<Arc<Broker>> {
        let path = dir.join("pubsub.db");
        let writer_conn = store::open(&path)?;
        let reader = store::open(&path)?;
        let mut state = State::default();
        for t in store::load_all::<Topic>(&reader, "topics")? {
            state.topics.insert(t.name.clone(), t);
        }
        let mut cache = HashMap::new();
        for s in store::load_all::<Subscription>(&reader, "subscriptions")? {
            let mut backlog = Backlog::default();
            for (m, attempts) in store::unacked(&reader, &s.name, &mut cache)? {
                backlog.add(m, attempts);
            }
            let filter = (!s.filter.is_empty())
                .then(|| Filter::parse(&s.filter))
                .transpose()?;
            state.subs.insert(
                s.name.clone(),
                SubState {
                    policy: policy_of(&s),
                    filter,
                    backlog,
                    notify: Arc::new(Notify::new()),
                    config: s,
                },
            );
        }
        {
            let mut stmt = reader.prepare("SELECT name, subscription, body FROM snapshots")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            for row in rows {
                let (name, sub, body) = row?;
                if let Ok(snap) = <Snapshot as prost::Message>::decode(body.as_slice()) {
                    state.snapshots.insert(name, (snap, sub));
                }
            }
        }
        {
            let mut stmt = reader.prepare("SELECT name, body FROM iam_policies")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (name, body) = row?;
                if let Ok(p) = serde_json::from_str::<crate::iam::Policy>(&body) {
                    state.policies.insert(name, p);
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        let broker = Arc::new(Broker {
            state: Mutex::new(state),
            writer: Mutex::new(tx),
            reader: Mutex::new(reader),
            pusher: Mutex::new(None),
            sent: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&broker);
        std::thread::Builder::new()
            .name("pubsub-writer".into())
            .spawn(move || writer_loop(writer_conn, rx, weak))
            .map_err(|e| PubsubError::Unavailable(format!("cannot start the writer: {e}")))?;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&broker);
            rt.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let Some(b) = weak.upgrade() else { return };
                    if let Err(e) = b.sweep(now_ms()).await {
                        tracing::warn!("pubsub retention sweep: {e}");
                    }
                }
            });
        }
        Ok(broker)
    }

    /// Sets what starts push delivery for push subscriptions, and starts it for every push
    /// subscription there is.
    pub fn set_pusher(self: &Arc<Self>, pusher: PushStarter) {
        *self.pusher.lock().unwrap() = Some(pusher.clone());
        let names: Vec<String> = {
            let st = self.state.lock().unwrap();
            st.subs
                .values()
                .filter(|s| is_push(&s.config))
                .map(|s| s.config.name.clone())
                .collect()
        };
        for n in names {
            pusher(self.clone(), n);
        }
    }

    fn send(&self, op: Op) -> Result<()> {
        self.writer
            .lock()
            .unwrap()
            .send(op)
            .map_err(|_| PubsubError::Unavailable("the message store's writer stopped".into()))
    }

    async fn sql(&self, f: impl FnOnce(&Connection) -> Result<()> + Send + 'static) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Sql {
            f: Box::new(f),
            reply,
        })?;
        rx.await
            .map_err(|_| PubsubError::Unavailable("the message store's writer stopped".into()))?
    }

    // ---- topics ----

    /// `CreateTopic`. Errors: `InvalidArgument` (name, retention), `AlreadyExists`.
    pub async fn create_topic(&self, mut topic: Topic) -> Result<Topic> {
        names::check(Kind::Topic, &topic.name)?;
        check_topic_retention(&topic)?;
        if self.state.lock().unwrap().topics.contains_key(&topic.name) {
            return Err(PubsubError::exists(&topic.name));
        }
        topic.state = 1; // ACTIVE
        let t = topic.clone();
        self.sql(move |c| store::put(c, "topics", &t.name, &t))
            .await?;
        let mut st = self.state.lock().unwrap();
        if st.topics.contains_key(&topic.name) {
            return Err(PubsubError::exists(&topic.name));
        }
        st.topics.insert(topic.name.clone(), topic.clone());
        Ok(topic)
    }

    /// `GetTopic`. Errors: `InvalidArgument`, `NotFound`.
    pub fn get_topic(&self, name: &str) -> Result<Topic> {
        names::check(Kind::Topic, name)?;
        self.state
            .lock()
            .unwrap()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| PubsubError::not_found(name))
    }

    /// `ListTopics` of a project (`projects/P`), by name.
    pub fn list_topics(&self, project: &str) -> Vec<Topic> {
        let prefix = format!("{project}/topics/");
        self.state
            .lock()
            .unwrap()
            .topics
            .values()
            .filter(|t| t.name.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// `UpdateTopic`: `labels` and `message_retention_duration` (mask paths in snake or
    /// camel case). Errors: `InvalidArgument` for other paths, `NotFound`.
    pub async fn update_topic(&self, topic: Topic, paths: &[String]) -> Result<Topic> {
        let mut cur = self.get_topic(&topic.name)?;
        if paths.is_empty() {
            return Err(PubsubError::invalid(
                "update_mask must name at least one field",
            ));
        }
        for p in paths {
            match snake(p).as_str() {
                "labels" => cur.labels = topic.labels.clone(),
                "message_retention_duration" => {
                    cur.message_retention_duration = topic.message_retention_duration
                }
                other => {
                    return Err(PubsubError::invalid(format!(
                        "Invalid update_mask provided in the UpdateTopicRequest: the field {other} cannot be updated (updatable: labels, message_retention_duration)"
                    )))
                }
            }
        }
        check_topic_retention(&cur)?;
        let t = cur.clone();
        self.sql(move |c| store::put(c, "topics", &t.name, &t))
            .await?;
        self.state
            .lock()
            .unwrap()
            .topics
            .insert(cur.name.clone(), cur.clone());
        Ok(cur)
    }

    /// `DeleteTopic`: its subscriptions stay, detached (their topic becomes
    /// `_deleted-topic_`). Errors: `NotFound`.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        self.get_topic(name)?;
        let orphans: Vec<Subscription> = {
            let st = self.state.lock().unwrap();
            st.subs
                .values()
                .filter(|s| s.config.topic == name)
                .map(|s| {
                    let mut c = s.config.clone();
                    c.topic = names::DELETED_TOPIC.into();
                    c
                })
                .collect()
        };
        let n = name.to_string();
        let o = orphans.clone();
        self.sql(move |c| {
            c.execute("DELETE FROM topics WHERE name = ?1", [&n])?;
            c.execute("DELETE FROM iam_policies WHERE name = ?1", [&n])?;
            for s in &o {
                store::put(c, "subscriptions", &s.name, s)?;
            }
            Ok(())
        })
        .await?;
        let mut st = self.state.lock().unwrap();
        st.topics.remove(name);
        st.policies.remove(name);
        for s in orphans {
            if let Some(cur) = st.subs.get_mut(&s.name) {
                cur.config.topic = s.topic;
            }
        }
        Ok(())
    }

    /// `ListTopicSubscriptions`: names of the subscriptions attached to a topic.
    pub fn topic_subscriptions(&self, topic: &str) -> Result<Vec<String>> {
        self.get_topic(topic)?;
        let st = self.state.lock().unwrap();
        Ok(st
            .subs
            .values()
            .filter(|s| s.config.topic == topic)
            .map(|s| s.config.name.clone())
            .collect())
    }

    /// `ListTopicSnapshots`: names of the snapshots of a topic.
    pub fn topic_snapshots(&self, topic: &str) -> Result<Vec<String>> {
        self.get_topic(topic)?;
        let st = self.state.lock().unwrap();
        Ok(st
            .snapshots
            .values()
            .filter(|(s, _)| s.topic == topic)
            .map(|(s, _)| s.name.clone())
            .collect())
    }

    /// `Publish`: stores the messages (once committed, not before, it returns their ids, as
    /// decimal strings) and fans each out to every subscription attached to the topic whose
    /// filter it passes. Errors: `NotFound` topic, `InvalidArgument` for an empty batch, more
    /// than 1000 messages, or a message with neither data nor attributes.
    pub async fn publish(&self, topic: &str, messages: Vec<PubsubMessage>) -> Result<Vec<String>> {
        self.get_topic(topic)?;
        *self
            .sent
            .lock()
            .unwrap()
            .entry(topic.to_string())
            .or_default() += 1;
        if messages.is_empty() {
            return Err(PubsubError::invalid(
                "The value for message_count is too small. You passed 0 in the request, but the minimum value is 1.",
            ));
        }
        if messages.len() > MAX_PUBLISH_BATCH {
            return Err(PubsubError::invalid(format!(
                "The value for message_count is too large. You passed {} in the request, but the maximum value is {MAX_PUBLISH_BATCH}.",
                messages.len()
            )));
        }
        let mut msgs = Vec::with_capacity(messages.len());
        for m in messages {
            if m.data.is_empty() && m.attributes.is_empty() {
                return Err(PubsubError::invalid(
                    "Some messages are empty: a message needs data or at least one attribute",
                ));
            }
            msgs.push(NewMessage {
                data: m.data,
                attributes: m.attributes,
                ordering_key: m.ordering_key,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.send(Op::Publish {
            topic: topic.to_string(),
            msgs,
            reply,
        })?;
        let ids = rx
            .await
            .map_err(|_| PubsubError::Unavailable("the message store's writer stopped".into()))??;
        Ok(ids.into_iter().map(|i| i.to_string()).collect())
    }

    // ---- subscriptions ----

    /// `CreateSubscription`: validates as the service does (name, topic, ack deadline 10–600 s,
    /// retention 10 min–31 days, filter, dead-letter policy 5–100 attempts, retry policy
    /// 0–600 s, push endpoint) and fills in defaults. Errors: `InvalidArgument`,
    /// `NotFound` (topic or dead-letter topic), `AlreadyExists`.
    pub async fn create_subscription(self: &Arc<Self>, sub: Subscription) -> Result<Subscription> {
        names::check(Kind::Subscription, &sub.name)?;
        names::check(Kind::Topic, &sub.topic)?;
        let sub = self.normalize(sub)?;
        {
            let st = self.state.lock().unwrap();
            if st.subs.contains_key(&sub.name) {
                return Err(PubsubError::exists(&sub.name));
            }
            if !st.topics.contains_key(&sub.topic) {
                return Err(PubsubError::not_found(&sub.topic));
            }
        }
        let s = sub.clone();
        self.sql(move |c| store::put(c, "subscriptions", &s.name, &s))
            .await?;
        let filter = (!sub.filter.is_empty())
            .then(|| Filter::parse(&sub.filter))
            .transpose()?;
        {
            let mut st = self.state.lock().unwrap();
            st.subs.insert(
                sub.name.clone(),
                SubState {
                    policy: policy_of(&sub),
                    filter,
                    backlog: Backlog::default(),
                    notify: Arc::new(Notify::new()),
                    config: sub.clone(),
                },
            );
        }
        self.maybe_push(&sub);
        Ok(sub)
    }

    fn maybe_push(self: &Arc<Self>, sub: &Subscription) {
        if !is_push(sub) {
            return;
        }
        let pusher = self.pusher.lock().unwrap().clone();
        if let Some(p) = pusher {
            p(self.clone(), sub.name.clone());
        }
    }

    /// Checks a subscription and fills in the service's defaults.
    fn normalize(&self, mut sub: Subscription) -> Result<Subscription> {
        if sub.ack_deadline_seconds == 0 {
            sub.ack_deadline_seconds = ACK_DEADLINE_DEFAULT;
        }
        if !ACK_DEADLINE_RANGE.contains(&i64::from(sub.ack_deadline_seconds)) {
            return Err(PubsubError::invalid(format!(
                "Invalid ack deadline given: {} s; give 10 to 600 seconds",
                sub.ack_deadline_seconds
            )));
        }
        match dur_ms(&sub.message_retention_duration) {
            None | Some(0) => sub.message_retention_duration = Some(dur(RETENTION_DEFAULT_S)),
            Some(ms) if !RETENTION_RANGE_S.contains(&(ms / 1000)) || ms % 1000 != 0 => {
                return Err(PubsubError::invalid(format!(
                    "Invalid message_retention_duration: {} s; give 10 minutes (600s) to 31 days (2678400s)",
                    ms / 1000
                )))
            }
            Some(_) => {}
        }
        if !sub.filter.is_empty() {
            Filter::parse(&sub.filter)?;
        }
        if let Some(dl) = sub.dead_letter_policy.as_mut() {
            if dl.dead_letter_topic.is_empty() {
                sub.dead_letter_policy = None;
            } else {
                names::check(Kind::Topic, &dl.dead_letter_topic)?;
                if !self
                    .state
                    .lock()
                    .unwrap()
                    .topics
                    .contains_key(&dl.dead_letter_topic)
                {
                    return Err(PubsubError::not_found(&dl.dead_letter_topic));
                }
                if dl.max_delivery_attempts == 0 {
                    dl.max_delivery_attempts = MAX_ATTEMPTS_DEFAULT;
                }
                if !MAX_ATTEMPTS_RANGE.contains(&dl.max_delivery_attempts) {
                    return Err(PubsubError::invalid(format!(
                        "Invalid max_delivery_attempts: {}; give 5 to 100",
                        dl.max_delivery_attempts
                    )));
                }
            }
        }
        if let Some(rp) = sub.retry_policy.as_mut() {
            let min = dur_ms(&rp.minimum_backoff).unwrap_or(MIN_BACKOFF_DEFAULT_S * 1000);
            let max = dur_ms(&rp.maximum_backoff).unwrap_or(MAX_BACKOFF_DEFAULT_S * 1000);
            for (what, v) in [("minimum_backoff", min), ("maximum_backoff", max)] {
                if !(BACKOFF_RANGE_S.start() * 1000..=BACKOFF_RANGE_S.end() * 1000).contains(&v) {
                    return Err(PubsubError::invalid(format!(
                        "Invalid retry_policy.{what}: {} s; give 0 to 600 seconds",
                        v as f64 / 1000.0
                    )));
                }
            }
            if min > max {
                return Err(PubsubError::invalid(format!(
                    "Invalid retry_policy: minimum_backoff ({} s) is above maximum_backoff ({} s)",
                    min as f64 / 1000.0,
                    max as f64 / 1000.0
                )));
            }
            rp.minimum_backoff = Some(ms_dur(min));
            rp.maximum_backoff = Some(ms_dur(max));
        }
        if let Some(pc) = sub.push_config.as_ref() {
            let url = &pc.push_endpoint;
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(PubsubError::invalid(format!(
                    "Invalid push_endpoint given (endpoint={}): give an http:// or https:// URL",
                    pc.push_endpoint
                )));
            }
        }
        if sub.enable_exactly_once_delivery {
            return Err(PubsubError::invalid(
                "enable_exactly_once_delivery is not supported by this server: leave it off",
            ));
        }
        if sub.bigquery_config.is_some()
            || sub.cloud_storage_config.is_some()
            || sub.bigtable_config.is_some()
        {
            return Err(PubsubError::invalid(
                "BigQuery, Cloud Storage and Bigtable subscriptions are not supported by this server: give a pull or push subscription",
            ));
        }
        sub.state = 1; // ACTIVE
        Ok(sub)
    }

    /// `GetSubscription`. Errors: `InvalidArgument`, `NotFound`.
    pub fn get_subscription(&self, name: &str) -> Result<Subscription> {
        names::check(Kind::Subscription, name)?;
        self.state
            .lock()
            .unwrap()
            .subs
            .get(name)
            .map(|s| s.config.clone())
            .ok_or_else(|| PubsubError::not_found(name))
    }

    /// `ListSubscriptions` of a project (`projects/P`), by name.
    pub fn list_subscriptions(&self, project: &str) -> Vec<Subscription> {
        let prefix = format!("{project}/subscriptions/");
        self.state
            .lock()
            .unwrap()
            .subs
            .values()
            .filter(|s| s.config.name.starts_with(&prefix))
            .map(|s| s.config.clone())
            .collect()
    }

    /// `UpdateSubscription` for the mask's paths (snake or camel case): ack deadline, push
    /// config, retention, labels, dead-letter and retry policies, expiration policy.
    /// Errors: `InvalidArgument` for an immutable or unknown path, `NotFound`.
    pub async fn update_subscription(
        self: &Arc<Self>,
        update: Subscription,
        paths: &[String],
    ) -> Result<Subscription> {
        let mut cur = self.get_subscription(&update.name)?;
        if paths.is_empty() {
            return Err(PubsubError::invalid(
                "update_mask must name at least one field",
            ));
        }
        for p in paths {
            match snake(p).as_str() {
                "ack_deadline_seconds" => cur.ack_deadline_seconds = update.ack_deadline_seconds,
                "push_config" => cur.push_config = update.push_config.clone(),
                "retain_acked_messages" => {
                    cur.retain_acked_messages = update.retain_acked_messages
                }
                "message_retention_duration" => {
                    cur.message_retention_duration = update.message_retention_duration
                }
                "labels" => cur.labels = update.labels.clone(),
                "dead_letter_policy" => cur.dead_letter_policy = update.dead_letter_policy.clone(),
                "retry_policy" => cur.retry_policy = update.retry_policy,
                "expiration_policy" => cur.expiration_policy = update.expiration_policy,
                "filter" | "enable_message_ordering" | "topic" => {
                    return Err(PubsubError::invalid(format!(
                        "Invalid update_mask provided in the UpdateSubscriptionRequest: {p} cannot be changed after creation"
                    )))
                }
                other => {
                    return Err(PubsubError::invalid(format!(
                        "Invalid update_mask provided in the UpdateSubscriptionRequest: unknown or unsupported field {other}"
                    )))
                }
            }
        }
        let cur = self.normalize(cur)?;
        let s = cur.clone();
        self.sql(move |c| store::put(c, "subscriptions", &s.name, &s))
            .await?;
        let was_push = {
            let mut st = self.state.lock().unwrap();
            let Some(s) = st.subs.get_mut(&cur.name) else {
                return Err(PubsubError::not_found(&cur.name));
            };
            let was = is_push(&s.config);
            s.policy = policy_of(&cur);
            s.config = cur.clone();
            s.notify.notify_waiters();
            was
        };
        if !was_push {
            self.maybe_push(&cur);
        }
        Ok(cur)
    }

    /// `ModifyPushConfig`: an empty config makes it a pull subscription.
    pub async fn modify_push_config(
        self: &Arc<Self>,
        name: &str,
        push_config: Option<crate::proto::PushConfig>,
    ) -> Result<()> {
        let mut s = self.get_subscription(name)?;
        s.push_config = push_config.filter(|p| !p.push_endpoint.is_empty());
        self.update_subscription(s, &["push_config".to_string()])
            .await
            .map(|_| ())
    }

    /// `DeleteSubscription`: its backlog goes with it. Errors: `NotFound`.
    pub async fn delete_subscription(&self, name: &str) -> Result<()> {
        self.get_subscription(name)?;
        let n = name.to_string();
        self.sql(move |c| {
            c.execute("DELETE FROM subscriptions WHERE name = ?1", [&n])?;
            c.execute("DELETE FROM deliveries WHERE subscription = ?1", [&n])?;
            c.execute("DELETE FROM iam_policies WHERE name = ?1", [&n])?;
            Ok(())
        })
        .await?;
        self.state.lock().unwrap().policies.remove(name);
        if let Some(s) = self.state.lock().unwrap().subs.remove(name) {
            s.notify.notify_waiters();
        }
        Ok(())
    }

    /// `DetachSubscription`: the subscription stays but gets no more messages and loses its
    /// backlog; pulls fail with `FailedPrecondition`.
    pub async fn detach_subscription(&self, name: &str) -> Result<()> {
        let mut s = self.get_subscription(name)?;
        s.detached = true;
        let n = name.to_string();
        let body = s.clone();
        self.sql(move |c| {
            store::put(c, "subscriptions", &n, &body)?;
            c.execute("DELETE FROM deliveries WHERE subscription = ?1", [&n])?;
            Ok(())
        })
        .await?;
        let mut st = self.state.lock().unwrap();
        if let Some(cur) = st.subs.get_mut(name) {
            cur.config.detached = true;
            cur.backlog = Backlog::default();
            cur.notify.notify_waiters();
        }
        Ok(())
    }

    // ---- delivery ----

    /// Hands out up to `max` messages now (none waiting: an empty list), leased for
    /// `deadline_s` seconds (the subscription's ack deadline if `None`). Messages that used up
    /// their delivery attempts are forwarded to the dead-letter topic instead.
    /// Also returns the subscription's wake-up handle and when something may next become
    /// deliverable (ms), for callers that wait.
    pub fn deliver(
        self: &Arc<Self>,
        sub: &str,
        max: usize,
        deadline_s: Option<i64>,
    ) -> Result<(Vec<ReceivedMessage>, Arc<Notify>, Option<i64>)> {
        let now = now_ms();
        let (batch, notify, with_attempts, dead_topic) = {
            let mut st = self.state.lock().unwrap();
            let s = st
                .subs
                .get_mut(sub)
                .ok_or_else(|| PubsubError::not_found(sub))?;
            if s.config.detached {
                return Err(PubsubError::FailedPrecondition(format!(
                    "Subscription {sub} is detached: it receives no messages"
                )));
            }
            let deadline = deadline_s.unwrap_or(i64::from(s.config.ack_deadline_seconds)) * 1000;
            let batch = s.backlog.deliver(&s.policy, now, max, deadline);
            let dlt = s
                .config
                .dead_letter_policy
                .as_ref()
                .map(|d| d.dead_letter_topic.clone());
            (batch, s.notify.clone(), dlt.is_some(), dlt)
        };
        // The count is kept across restarts where it decides something: the dead-letter
        // policy's attempts and `deliveryAttempt`. Without one, only the retry backoff reads it,
        // and after a restart that starts again from its minimum.
        if with_attempts {
            for d in &batch.delivered {
                let _ = self.send(Op::Attempts {
                    sub: sub.to_string(),
                    id: d.msg.id,
                    attempts: d.attempt,
                });
            }
        }
        if !batch.dead.is_empty() {
            if let Some(topic) = dead_topic {
                self.forward_dead(sub.to_string(), topic, batch.dead.clone());
            }
        }
        let out = batch
            .delivered
            .iter()
            .map(|d| received(d, with_attempts))
            .collect();
        Ok((out, notify, batch.next_at))
    }

    /// Publishes dead messages to the dead-letter topic, then acknowledges them here.
    fn forward_dead(self: &Arc<Self>, sub: String, topic: String, dead: Vec<Arc<Message>>) {
        let me = self.clone();
        tokio::spawn(async move {
            let msgs = dead
                .iter()
                .map(|m| PubsubMessage {
                    data: m.data.clone(),
                    attributes: m.attributes.clone(),
                    ordering_key: m.ordering_key.clone(),
                    ..Default::default()
                })
                .collect();
            let ids: Vec<u64> = dead.iter().map(|m| m.id).collect();
            match me.publish(&topic, msgs).await {
                Ok(_) => {
                    if let Err(e) = me.ack_ids(&sub, ids).await {
                        tracing::warn!(
                            "pubsub: acknowledging dead-lettered messages of {sub}: {e}"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!("pubsub: cannot dead-letter messages of {sub} to {topic}: {e}");
                    let mut st = me.state.lock().unwrap();
                    if let Some(s) = st.subs.get_mut(&sub) {
                        for id in ids {
                            s.backlog.release(id);
                        }
                    }
                }
            }
        });
    }

    /// `Pull`: waits (up to `wait`) for at least one message, then returns up to `max`.
    pub async fn pull(
        self: &Arc<Self>,
        sub: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>> {
        names::check(Kind::Subscription, sub)?;
        if max == 0 {
            return Err(PubsubError::invalid(
                "The value for max_messages is too small. You passed 0 in the request, but the minimum value is 1.",
            ));
        }
        let until = tokio::time::Instant::now() + wait;
        loop {
            let notify = self.notify_of(sub)?;
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (got, _, next_at) = self.deliver(sub, max, None)?;
            let now = tokio::time::Instant::now();
            if !got.is_empty() || now >= until {
                return Ok(got);
            }
            let mut sleep = until - now;
            if let Some(at) = next_at {
                let d = Duration::from_millis((at - now_ms()).max(1) as u64);
                sleep = sleep.min(d);
            }
            let _ = tokio::time::timeout(sleep.min(Duration::from_secs(1)), notified).await;
        }
    }

    /// Which of `ack_ids` are still out with a client (see [`Backlog::is_out`]); all false for
    /// an unknown subscription.
    pub fn still_out<'a>(
        &self,
        sub: &str,
        ack_ids: impl Iterator<Item = &'a String>,
    ) -> Vec<String> {
        let now = now_ms();
        let st = self.state.lock().unwrap();
        match st.subs.get(sub) {
            Some(s) => ack_ids
                .filter(|a| s.backlog.is_out(a, now))
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// The handle notified when a subscription may have something new to deliver.
    pub fn notify_of(&self, sub: &str) -> Result<Arc<Notify>> {
        self.state
            .lock()
            .unwrap()
            .subs
            .get(sub)
            .map(|s| s.notify.clone())
            .ok_or_else(|| PubsubError::not_found(sub))
    }

    /// `Acknowledge`: answered once the acks are on disk; ack ids of messages already
    /// acknowledged or gone are ignored. Errors: `NotFound` subscription, `InvalidArgument`
    /// for a malformed ack id.
    pub async fn acknowledge(&self, sub: &str, ack_ids: &[String]) -> Result<()> {
        names::check(Kind::Subscription, sub)?;
        let mut ids = Vec::with_capacity(ack_ids.len());
        for a in ack_ids {
            let (id, _) = crate::delivery::parse_ack_id(a).ok_or_else(|| {
                PubsubError::invalid(format!("Invalid ack ID given (ack_id={a})"))
            })?;
            ids.push(id);
        }
        self.ack_ids(sub, ids).await
    }

    async fn ack_ids(&self, sub: &str, ids: Vec<u64>) -> Result<()> {
        {
            let mut st = self.state.lock().unwrap();
            let s = st
                .subs
                .get_mut(sub)
                .ok_or_else(|| PubsubError::not_found(sub))?;
            for id in &ids {
                s.backlog.remove(*id);
            }
            // Streams waiting for room under their flow-control limit.
            s.notify.notify_waiters();
        }
        let (reply, rx) = oneshot::channel();
        self.send(Op::Ack {
            sub: sub.to_string(),
            ids,
            reply: Some(reply),
        })?;
        rx.await
            .map_err(|_| PubsubError::Unavailable("the message store's writer stopped".into()))?
    }

    /// `ModifyAckDeadline`: 0 s nacks (redelivered after the retry policy's backoff); else
    /// 0–600 s from now. Errors: `InvalidArgument` out of range or bad ack id, `NotFound`.
    pub fn modify_ack_deadline(&self, sub: &str, ack_ids: &[String], secs: i32) -> Result<()> {
        names::check(Kind::Subscription, sub)?;
        if !(0..=600).contains(&secs) {
            return Err(PubsubError::invalid(format!(
                "Invalid ack deadline given: {secs} s; give 0 to 600 seconds (0 nacks)"
            )));
        }
        for a in ack_ids {
            if crate::delivery::parse_ack_id(a).is_none() {
                return Err(PubsubError::invalid(format!(
                    "Invalid ack ID given (ack_id={a})"
                )));
            }
        }
        let now = now_ms();
        let mut st = self.state.lock().unwrap();
        let s = st
            .subs
            .get_mut(sub)
            .ok_or_else(|| PubsubError::not_found(sub))?;
        let mut woke = false;
        for a in ack_ids {
            woke |= s.backlog.modify(&s.policy, a, i64::from(secs), now);
        }
        if woke {
            s.notify.notify_waiters();
        }
        Ok(())
    }

    // ---- snapshots and seek ----

    /// `CreateSnapshot`: keeps the subscription's unacknowledged messages (and what is
    /// published after now) for a later seek. Errors: `InvalidArgument`, `NotFound`,
    /// `AlreadyExists`.
    pub async fn create_snapshot(
        &self,
        name: &str,
        sub: &str,
        labels: HashMap<String, String>,
    ) -> Result<Snapshot> {
        names::check(Kind::Snapshot, name)?;
        let now = now_ms();
        let (snap, ids) = {
            let st = self.state.lock().unwrap();
            if st.snapshots.contains_key(name) {
                return Err(PubsubError::exists(name));
            }
            let s = st
                .subs
                .get(sub)
                .ok_or_else(|| PubsubError::not_found(sub))?;
            let oldest = s.backlog.oldest_ms().unwrap_or(now);
            let snap = Snapshot {
                name: name.to_string(),
                topic: s.config.topic.clone(),
                expire_time: Some(timestamp(oldest + SNAPSHOT_TTL_MS)),
                labels,
            };
            (snap, s.backlog.ids())
        };
        let (n, sb, body) = (
            name.to_string(),
            sub.to_string(),
            prost::Message::encode_to_vec(&snap),
        );
        self.sql(move |c| {
            c.execute(
                "INSERT INTO snapshots(name, subscription, created_ms, body) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![n, sb, now, body],
            )?;
            let mut stmt =
                c.prepare_cached("INSERT INTO snapshot_messages(snapshot, msg) VALUES (?1, ?2)")?;
            for id in ids {
                stmt.execute(rusqlite::params![n, id as i64])?;
            }
            Ok(())
        })
        .await?;
        self.state
            .lock()
            .unwrap()
            .snapshots
            .insert(name.to_string(), (snap.clone(), sub.to_string()));
        Ok(snap)
    }

    /// `GetSnapshot`. Errors: `InvalidArgument`, `NotFound`.
    pub fn get_snapshot(&self, name: &str) -> Result<Snapshot> {
        names::check(Kind::Snapshot, name)?;
        self.state
            .lock()
            .unwrap()
            .snapshots
            .get(name)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| PubsubError::not_found(name))
    }

    /// `ListSnapshots` of a project.
    pub fn list_snapshots(&self, project: &str) -> Vec<Snapshot> {
        let prefix = format!("{project}/snapshots/");
        self.state
            .lock()
            .unwrap()
            .snapshots
            .values()
            .filter(|(s, _)| s.name.starts_with(&prefix))
            .map(|(s, _)| s.clone())
            .collect()
    }

    // ---- IAM ----

    /// Whether `resource` (a topic, subscription or snapshot) exists. Errors: `InvalidArgument`
    /// for a name of no such kind, `NotFound`.
    fn check_resource(&self, resource: &str) -> Result<()> {
        if resource.contains("/topics/") {
            self.get_topic(resource).map(|_| ())
        } else if resource.contains("/subscriptions/") {
            self.get_subscription(resource).map(|_| ())
        } else if resource.contains("/snapshots/") {
            self.get_snapshot(resource).map(|_| ())
        } else {
            Err(PubsubError::invalid(format!(
                "Invalid resource name given (name={resource}): use projects/P/topics/T, projects/P/subscriptions/S or projects/P/snapshots/S"
            )))
        }
    }

    /// `GetIamPolicy`: the resource's policy (empty if none was set), with its `etag`.
    /// Errors: `NotFound`, `InvalidArgument`.
    pub fn get_iam_policy(&self, resource: &str) -> Result<crate::iam::Policy> {
        self.check_resource(resource)?;
        let st = self.state.lock().unwrap();
        Ok(st
            .policies
            .get(resource)
            .cloned()
            .unwrap_or_else(|| crate::iam::Policy {
                version: 1,
                bindings: Vec::new(),
                etag: "ACAB".into(),
            }))
    }

    /// `SetIamPolicy`: replaces the resource's policy; when `policy.etag` is given it must be
    /// the current one. Returns the stored policy with its new `etag`. Errors: `NotFound`,
    /// `InvalidArgument` (see [`crate::iam::check_policy`]), `Aborted` on an etag mismatch.
    pub async fn set_iam_policy(
        &self,
        resource: &str,
        mut policy: crate::iam::Policy,
    ) -> Result<crate::iam::Policy> {
        self.check_resource(resource)?;
        crate::iam::check_policy(&policy)?;
        let current = self.get_iam_policy(resource)?;
        if !policy.etag.is_empty() && policy.etag != current.etag {
            return Err(PubsubError::Aborted(format!(
                "The policy of {resource} changed since it was read (etag {} is not {}): read it again and retry",
                policy.etag, current.etag
            )));
        }
        use base64::Engine;
        policy.version = 1;
        policy.bindings.retain(|b| !b.members.is_empty());
        // A fresh opaque tag: the std hasher's random keys mixed with the time.
        let tag = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(now_ms());
            h.finish()
        };
        policy.etag = base64::engine::general_purpose::STANDARD.encode(tag.to_be_bytes());
        let (n, body) = (
            resource.to_string(),
            serde_json::to_string(&policy).expect("a policy serializes"),
        );
        self.sql(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO iam_policies(name, body) VALUES (?1, ?2)",
                rusqlite::params![n, body],
            )?;
            Ok(())
        })
        .await?;
        self.state
            .lock()
            .unwrap()
            .policies
            .insert(resource.to_string(), policy.clone());
        Ok(policy)
    }

    /// `TestIamPermissions`: which of `permissions` the caller holds on `resource`.
    pub fn test_iam_permissions(
        &self,
        caller: &crate::iam::Caller,
        resource: &str,
        permissions: &[String],
    ) -> Result<Vec<String>> {
        self.check_resource(resource)?;
        Ok(permissions
            .iter()
            .filter(|p| self.authorize(caller, resource, p).is_ok())
            .cloned()
            .collect())
    }

    /// Checks that `caller` holds `permission` on `resource` (by the resource's policy; the
    /// admin holds every permission). Errors: `PermissionDenied`. A resource that does not
    /// exist has no policy, so only the admin passes (and then learns it is missing).
    pub fn authorize(
        &self,
        caller: &crate::iam::Caller,
        resource: &str,
        permission: &str,
    ) -> Result<()> {
        match caller {
            crate::iam::Caller::Admin => Ok(()),
            crate::iam::Caller::Account(email) => {
                let st = self.state.lock().unwrap();
                match st.policies.get(resource) {
                    Some(p) if crate::iam::grants(p, email, permission) => Ok(()),
                    _ => Err(crate::iam::denied(permission, resource)),
                }
            }
        }
    }

    /// `DeleteSnapshot`. Errors: `NotFound`.
    pub async fn delete_snapshot(&self, name: &str) -> Result<()> {
        self.get_snapshot(name)?;
        let n = name.to_string();
        self.sql(move |c| {
            c.execute("DELETE FROM snapshots WHERE name = ?1", [&n])?;
            c.execute("DELETE FROM snapshot_messages WHERE snapshot = ?1", [&n])?;
            c.execute("DELETE FROM iam_policies WHERE name = ?1", [&n])?;
            Ok(())
        })
        .await?;
        let mut st = self.state.lock().unwrap();
        st.snapshots.remove(name);
        st.policies.remove(name);
        Ok(())
    }

    /// `Seek`: to a time, every retained message published before it counts as acknowledged
    /// and (with `retainAckedMessages`) every one at or after it as unacknowledged; to a
    /// snapshot, the snapshot's unacknowledged messages and everything published since it was
    /// taken become unacknowledged, the rest acknowledged. Errors: `NotFound`,
    /// `InvalidArgument` (no target, or a snapshot of another topic).
    pub async fn seek(&self, sub: &str, target: Option<seek_request::Target>) -> Result<()> {
        let cfg = self.get_subscription(sub)?;
        let s = sub.to_string();
        match target {
            Some(seek_request::Target::Time(t)) => {
                let at = t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
                let reopen = cfg.retain_acked_messages;
                self.sql(move |c| {
                    c.execute(
                        "UPDATE deliveries SET acked = 1 WHERE subscription = ?1
                         AND msg IN (SELECT id FROM messages WHERE publish_ms < ?2)",
                        rusqlite::params![s, at],
                    )?;
                    if reopen {
                        c.execute(
                            "UPDATE deliveries SET acked = 0 WHERE subscription = ?1
                             AND msg IN (SELECT id FROM messages WHERE publish_ms >= ?2)",
                            rusqlite::params![s, at],
                        )?;
                    }
                    Ok(())
                })
                .await?;
            }
            Some(seek_request::Target::Snapshot(snap)) => {
                let found = self.get_snapshot(&snap)?;
                if found.topic != cfg.topic {
                    return Err(PubsubError::invalid(format!(
                        "Snapshot {snap} is of topic {}, not of {sub}'s topic {}",
                        found.topic, cfg.topic
                    )));
                }
                self.sql(move |c| {
                    let created = store::snapshot_created(c, &snap)?.unwrap_or(0);
                    c.execute(
                        "UPDATE deliveries SET acked = 1 WHERE subscription = ?1",
                        rusqlite::params![s],
                    )?;
                    c.execute(
                        "INSERT OR REPLACE INTO deliveries(subscription, msg, acked, attempts)
                         SELECT ?1, sm.msg, 0, 0 FROM snapshot_messages sm
                         JOIN messages m ON m.id = sm.msg WHERE sm.snapshot = ?2",
                        rusqlite::params![s, snap],
                    )?;
                    c.execute(
                        "UPDATE deliveries SET acked = 0 WHERE subscription = ?1
                         AND msg IN (SELECT id FROM messages WHERE publish_ms >= ?2)",
                        rusqlite::params![s, created],
                    )?;
                    Ok(())
                })
                .await?;
            }
            None => {
                return Err(PubsubError::invalid(
                    "A seek needs a target: give a time or a snapshot",
                ))
            }
        }
        self.reload(sub)
    }

    /// Rebuilds a subscription's backlog from the store.
    fn reload(&self, sub: &str) -> Result<()> {
        let mut cache = HashMap::new();
        let rows = store::unacked(&self.reader.lock().unwrap(), sub, &mut cache)?;
        let mut st = self.state.lock().unwrap();
        if let Some(s) = st.subs.get_mut(sub) {
            let mut b = Backlog::default();
            for (m, a) in rows {
                b.add(m, a);
            }
            s.backlog = b;
            s.notify.notify_waiters();
        }
        Ok(())
    }

    /// Drops messages past their subscription's retention, acknowledged rows nothing needs
    /// any more, and messages no subscription or snapshot holds.
    pub async fn sweep(&self, now: i64) -> Result<()> {
        let subs: Vec<(String, i64, bool)> = {
            let mut st = self.state.lock().unwrap();
            let snap_subs: Vec<String> = st.snapshots.values().map(|(_, s)| s.clone()).collect();
            st.subs
                .values_mut()
                .map(|s| {
                    let keep = dur_ms(&s.config.message_retention_duration)
                        .unwrap_or(RETENTION_DEFAULT_S * 1000);
                    s.backlog.expire_before(now - keep);
                    let drop_acked =
                        !s.config.retain_acked_messages && !snap_subs.contains(&s.config.name);
                    (s.config.name.clone(), now - keep, drop_acked)
                })
                .collect()
        };
        let expired_snaps: Vec<String> = {
            let st = self.state.lock().unwrap();
            st.snapshots
                .values()
                .filter(|(s, _)| {
                    s.expire_time
                        .as_ref()
                        .is_some_and(|t| t.seconds * 1000 < now)
                })
                .map(|(s, _)| s.name.clone())
                .collect()
        };
        for n in &expired_snaps {
            self.delete_snapshot(n).await?;
        }
        let topic_keep: i64 = {
            let st = self.state.lock().unwrap();
            st.topics
                .values()
                .filter_map(|t| dur_ms(&t.message_retention_duration))
                .max()
                .unwrap_or(0)
        };
        self.sql(move |c| {
            for (name, cutoff, drop_acked) in &subs {
                c.execute(
                    "DELETE FROM deliveries WHERE subscription = ?1
                     AND msg IN (SELECT id FROM messages WHERE publish_ms < ?2)",
                    rusqlite::params![name, cutoff],
                )?;
                if *drop_acked {
                    c.execute(
                        "DELETE FROM deliveries WHERE subscription = ?1 AND acked = 1",
                        rusqlite::params![name],
                    )?;
                }
            }
            c.execute(
                "DELETE FROM messages WHERE publish_ms < ?1
                 AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg = messages.id)
                 AND NOT EXISTS (SELECT 1 FROM snapshot_messages s WHERE s.msg = messages.id)",
                rusqlite::params![now - topic_keep],
            )?;
            Ok(())
        })
        .await
    }

    /// Backlog figures of every subscription, for `/metrics`.
    pub fn stats(&self) -> Vec<SubscriptionStats> {
        let now = now_ms();
        let st = self.state.lock().unwrap();
        st.subs
            .values()
            .map(|s| SubscriptionStats {
                subscription: s.config.name.clone(),
                topic: s.config.topic.clone(),
                undelivered: s.backlog.len(),
                oldest_unacked_age_s: s
                    .backlog
                    .oldest_ms()
                    .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
            })
            .collect()
    }

    /// Counts a push request's result (`ack`, `remote_server_4xx`, ...).
    pub fn record_push(&self, sub: &str, class: &'static str) {
        *self
            .pushed
            .lock()
            .unwrap()
            .entry((sub.to_string(), class))
            .or_default() += 1;
    }

    /// Push requests per (subscription, response class) since start.
    pub fn push_counts(&self) -> HashMap<(String, &'static str), u64> {
        self.pushed.lock().unwrap().clone()
    }

    /// Publish requests per topic since start.
    pub fn publish_counts(&self) -> HashMap<String, u64> {
        self.sent.lock().unwrap().clone()
    }

    /// The writer's commit for a batch of publishes: fans the committed messages out in memory.
    fn fan_out(&self, msgs: Vec<Arc<Message>>, subs: &[String]) {
        let mut st = self.state.lock().unwrap();
        for name in subs {
            if let Some(s) = st.subs.get_mut(name) {
                for m in &msgs {
                    if s.filter.as_ref().is_none_or(|f| f.matches(&m.attributes)) {
                        s.backlog.add(m.clone(), 0);
                    }
                }
                s.notify.notify_waiters();
            }
        }
    }

    /// Subscriptions attached to `topic` with their filters (what a publish fans out to).
    fn targets(&self, topic: &str) -> Vec<(String, Option<Filter>)> {
        let st = self.state.lock().unwrap();
        st.subs
            .values()
            .filter(|s| s.config.topic == topic && !s.config.detached)
            .map(|s| (s.config.name.clone(), s.filter.clone()))
            .collect()
    }
}

fn is_push(s: &Subscription) -> bool {
    s.push_config
        .as_ref()
        .is_some_and(|p| !p.push_endpoint.is_empty())
}

fn ms_dur(ms: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn check_topic_retention(t: &Topic) -> Result<()> {
    match dur_ms(&t.message_retention_duration) {
        None | Some(0) => Ok(()),
        Some(ms) if RETENTION_RANGE_S.contains(&(ms / 1000)) => Ok(()),
        Some(ms) => Err(PubsubError::invalid(format!(
            "Invalid message_retention_duration: {} s; give 10 minutes (600s) to 31 days (2678400s)",
            ms / 1000
        ))),
    }
}

/// Push backoff of a push subscription without a retry policy, as Pub/Sub's: exponential from
/// 100 ms to 60 s, in ms.
const PUSH_BACKOFF_MS: (i64, i64) = (100, 60_000);

/// The delivery policy a subscription's settings give.
fn policy_of(s: &Subscription) -> Policy {
    Policy {
        backoff: s
            .retry_policy
            .as_ref()
            .map(|r| {
                (
                    dur_ms(&r.minimum_backoff).unwrap_or(MIN_BACKOFF_DEFAULT_S * 1000),
                    dur_ms(&r.maximum_backoff).unwrap_or(MAX_BACKOFF_DEFAULT_S * 1000),
                )
            })
            .or(is_push(s).then_some(PUSH_BACKOFF_MS)),
        max_attempts: s
            .dead_letter_policy
            .as_ref()
            .map(|d| d.max_delivery_attempts.max(1) as u32),
        ordered: s.enable_message_ordering,
    }
}

/// `ackDeadlineSeconds` → `ack_deadline_seconds`; snake case is kept.
fn snake(path: &str) -> String {
    let mut out = String::new();
    for c in path.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A delivery as the API's `ReceivedMessage`; `deliveryAttempt` only with a dead-letter
/// policy, as the service sets it.
fn received(d: &Delivered, with_attempts: bool) -> ReceivedMessage {
    ReceivedMessage {
        ack_id: d.ack_id.clone(),
        message: Some(pubsub_message(&d.msg)),
        delivery_attempt: if with_attempts { d.attempt as i32 } else { 0 },
    }
}

/// A stored message as the API's `PubsubMessage`.
pub fn pubsub_message(m: &Message) -> PubsubMessage {
    PubsubMessage {
        data: m.data.clone(),
        attributes: m.attributes.clone(),
        message_id: m.id.to_string(),
        publish_time: Some(timestamp(m.publish_ms)),
        ordering_key: m.ordering_key.clone(),
    }
}

/// The writer thread: takes every queued operation, runs them in one transaction, commits,
/// then applies publishes in memory and answers. Ends when the broker is dropped.
fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Op>, broker: std::sync::Weak<Broker>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < 10_000 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let Some(b) = broker.upgrade() else { return };
        let now = now_ms();
        // Per publish: the committed messages and the subscriptions they go to.
        let mut published: Vec<(Vec<Arc<Message>>, Vec<String>)> = Vec::new();
        let mut replies: Vec<Box<dyn FnOnce(Result<()>) + Send>> = Vec::new();
        let result = (|| -> Result<()> {
            let mut tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for op in ops {
                match op {
                    Op::Publish { topic, msgs, reply } => {
                        let targets = b.targets(&topic);
                        let mut stored = Vec::with_capacity(msgs.len());
                        let mut ids = Vec::with_capacity(msgs.len());
                        for m in msgs {
                            let id = store::insert_message(
                                &tx,
                                &topic,
                                &m.data,
                                &m.attributes,
                                &m.ordering_key,
                                now,
                            )?;
                            for (sub, filter) in &targets {
                                if filter.as_ref().is_none_or(|f| f.matches(&m.attributes)) {
                                    store::insert_delivery(&tx, sub, id)?;
                                }
                            }
                            ids.push(id);
                            stored.push(Arc::new(Message {
                                id,
                                data: m.data,
                                attributes: m.attributes,
                                ordering_key: m.ordering_key,
                                publish_ms: now,
                            }));
                        }
                        published.push((stored, targets.into_iter().map(|(s, _)| s).collect()));
                        replies.push(Box::new(move |r| {
                            let _ = reply.send(r.map(|_| ids));
                        }));
                    }
                    Op::Ack { sub, ids, reply } => {
                        store::ack(&tx, &sub, &ids)?;
                        if let Some(reply) = reply {
                            replies.push(Box::new(move |r| {
                                let _ = reply.send(r);
                            }));
                        }
                    }
                    Op::Attempts { sub, id, attempts } => {
                        store::set_attempts(&tx, &sub, id, attempts)?;
                    }
                    Op::Sql { f, reply } => {
                        // One failing change must not fail the batch: run it in a savepoint.
                        let sp = tx.savepoint()?;
                        let r = f(&sp);
                        if r.is_ok() {
                            sp.commit()?;
                        }
                        replies.push(Box::new(move |outer| {
                            let _ = reply.send(outer.and(r));
                        }));
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                for (msgs, subs) in published {
                    b.fan_out(msgs, &subs);
                }
                for r in replies {
                    r(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!("pubsub: commit failed: {e}");
                let msg = e.to_string();
                for r in replies {
                    r(Err(PubsubError::Unavailable(format!(
                        "commit failed: {msg}"
                    ))));
                }
            }
        }
    }
}
