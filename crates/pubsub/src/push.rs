//! Push delivery: for each push subscription, a task that takes deliverable messages from the
//! broker and POSTs each as Pub/Sub's push envelope to the endpoint. 102, 200, 201, 202 and 204
//! acknowledge; any other answer, a connection failure or no answer within the ack deadline
//! is a nack, so the message comes again after the retry policy's backoff and counts toward
//! `maxDeliveryAttempts` (then the dead-letter topic), as on Google's service.
//!
//! Flow control is Pub/Sub's slow start: a subscription starts with one push outstanding; each
//! success adds one (up to [`MAX_WINDOW`]) and each failure halves it, so a slow service or one
//! scaled to zero gets one request (which wakes it) before a flood.
//!
//! A Skiff service URL (`http://SERVICE[.NS].localhost[:PORT]/...`, or any host under the
//! server's `--domain`, over `http` or `https`) is sent to the local ingress's plain HTTP
//! listener with its Host header (and `X-Forwarded-Proto: https` for an `https` URL, so the
//! ingress does not redirect it), carrying an identity token for `pushConfig.oidcToken`'s service
//! account and audience (default: the endpoint URL), minted by the closure the server passes in.
//!
//! Delivery format: a subscription labelled [`FORMAT_LABEL`]`=`[`CLOUDEVENTS_PUBSUB`] (as
//! Eventarc's Pub/Sub triggers are) gets each message as a CloudEvent 1.0 in binary content
//! mode instead of the plain envelope (see [`cloudevent_headers`]); the same retry, backoff and
//! dead-letter rules apply. [`CLOUDEVENTS_BINARY`] sends a CloudEvent the message carries (its
//! `ce-*` attributes as headers, its data as the body).

use crate::broker::{now_ms, Broker};
use crate::proto::{push_config, ReceivedMessage, Subscription};
use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Most pushes one subscription has outstanding.
pub const MAX_WINDOW: usize = 1000;

/// Mints an identity token: `(service account email, audience) → token`.
pub type TokenMinter = Arc<dyn Fn(&str, &str) -> String + Send + Sync>;

/// What push delivery needs from the server: where the ingress listens and how to mint tokens.
#[derive(Clone)]
pub struct PushSettings {
    /// The ingress's plain HTTP port on loopback.
    pub ingress_port: u16,
    /// The server's `--domain` (lower case), whose hosts are Skiff services too.
    pub domain: Option<String>,
    pub mint: TokenMinter,
}

impl PushSettings {
    /// Whether `host` names a Skiff service: `localhost`, `*.localhost` or `*.DOMAIN`.
    pub fn is_local(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        host == "localhost"
            || host.ends_with(".localhost")
            || self
                .domain
                .as_deref()
                .is_some_and(|d| host.ends_with(&format!(".{d}")))
    }
}

/// The hook to give [`Broker::set_pusher`]: starts one push loop per subscription (a loop
/// ends by itself once its subscription is gone or no longer a push subscription).
pub fn starter(settings: PushSettings) -> crate::broker::PushStarter {
    let settings = Arc::new(settings);
    let http = reqwest::Client::builder()
        .build()
        .expect("an HTTP client with default settings");
    let running: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    Arc::new(move |broker: Arc<Broker>, sub: String| {
        if !running.lock().unwrap().insert(sub.clone()) {
            return;
        }
        let (http, settings, running) = (http.clone(), settings.clone(), running.clone());
        tokio::spawn(async move {
            push_loop(broker, &sub, http, settings).await;
            running.lock().unwrap().remove(&sub);
        });
    })
}

/// The push envelope, as Pub/Sub sends it (both spellings of the id and time fields).
pub fn envelope(sub: &str, r: &ReceivedMessage) -> serde_json::Value {
    let m = r.message.clone().unwrap_or_default();
    let time = m
        .publish_time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let mut msg = serde_json::json!({
        "data": base64::engine::general_purpose::STANDARD.encode(&m.data),
        "messageId": m.message_id,
        "message_id": m.message_id,
        "publishTime": time,
        "publish_time": time,
    });
    if !m.attributes.is_empty() {
        msg["attributes"] = serde_json::json!(m.attributes);
    }
    if !m.ordering_key.is_empty() {
        msg["orderingKey"] = serde_json::json!(m.ordering_key);
    }
    let mut env = serde_json::json!({"message": msg, "subscription": sub});
    if r.delivery_attempt > 0 {
        env["deliveryAttempt"] = serde_json::json!(r.delivery_attempt);
    }
    env
}

/// The subscription label choosing the push body's format; absent means Pub/Sub's envelope.
pub const FORMAT_LABEL: &str = "skiff-push-format";

/// [`FORMAT_LABEL`]'s value for Eventarc's `google.cloud.pubsub.topic.v1.messagePublished`
/// CloudEvent in binary content mode.
pub const CLOUDEVENTS_PUBSUB: &str = "cloudevents-pubsub";

/// [`FORMAT_LABEL`]'s value for a CloudEvent carried inside the message (binary content mode):
/// the message's `ce-*` attributes become the request's `ce-*` headers and its data the body
/// (`Content-Type: application/json`). Skiff's own events (Cloud Audit Logs entries) travel so.
pub const CLOUDEVENTS_BINARY: &str = "cloudevents-binary";

/// The CloudEvents type of a Pub/Sub message, as Eventarc names it.
pub const MESSAGE_PUBLISHED: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// The `ce-*` headers of a message delivered as Eventarc's `messagePublished` CloudEvent in
/// binary content mode (CloudEvents 1.0 HTTP binding): `ce-id` (the message id), `ce-source`
/// (`//pubsub.googleapis.com/projects/P/topics/T`), `ce-type`, `ce-specversion: 1.0` and
/// `ce-time` (the publish time, RFC 3339). Eventarc sends no `ce-subject` for Pub/Sub events.
/// The body stays the envelope ([`envelope`]), as Eventarc sends it, with `Content-Type:
/// application/json`.
pub fn cloudevent_headers(topic: &str, r: &ReceivedMessage) -> Vec<(&'static str, String)> {
    let m = r.message.clone().unwrap_or_default();
    let time = m
        .publish_time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos as u32))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    vec![
        ("ce-id", m.message_id),
        ("ce-source", format!("//pubsub.googleapis.com/{topic}")),
        ("ce-type", MESSAGE_PUBLISHED.to_string()),
        ("ce-specversion", "1.0".to_string()),
        ("ce-time", time),
    ]
}

/// CloudEvent attributes as `(name, value)` pairs, names like `ce-id`.
pub type Attributes = Vec<(String, String)>;

/// The CloudEvent a message of subscription `cfg` stands for, when the subscription's
/// [`FORMAT_LABEL`] asks for one: its `ce-*` attributes (lower-case names, as HTTP headers of
/// the binary content mode) and its data (JSON: the push envelope for [`CLOUDEVENTS_PUBSUB`],
/// the message's data for [`CLOUDEVENTS_BINARY`]). `None` for the plain push envelope.
pub fn cloudevent(cfg: &Subscription, r: &ReceivedMessage) -> Option<(Attributes, Vec<u8>)> {
    match cfg.labels.get(FORMAT_LABEL).map(String::as_str) {
        Some(CLOUDEVENTS_PUBSUB) => {
            let attributes = cloudevent_headers(&cfg.topic, r)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let data = serde_json::to_vec(&envelope(&cfg.name, r)).expect("JSON of a JSON value");
            Some((attributes, data))
        }
        Some(CLOUDEVENTS_BINARY) => {
            let m = r.message.clone().unwrap_or_default();
            let attributes = m
                .attributes
                .iter()
                .filter(|(k, _)| k.starts_with("ce-"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Some((attributes, m.data))
        }
        _ => None,
    }
}

/// Whether a push answer acknowledges the message.
pub fn acknowledges(status: u16) -> bool {
    matches!(status, 102 | 200 | 201 | 202 | 204)
}

/// Slow-start window after a result.
pub fn next_window(window: usize, ok: bool) -> usize {
    if ok {
        (window + 1).min(MAX_WINDOW)
    } else {
        (window / 2).max(1)
    }
}

async fn push_loop(
    broker: Arc<Broker>,
    sub: &str,
    http: reqwest::Client,
    settings: Arc<PushSettings>,
) {
    let window = Arc::new(AtomicUsize::new(1));
    let inflight = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    loop {
        let Ok(cfg) = broker.get_subscription(sub) else {
            return;
        };
        let Some(pc) = cfg
            .push_config
            .clone()
            .filter(|p| !p.push_endpoint.is_empty())
        else {
            return;
        };
        let Ok(notify) = broker.notify_of(sub) else {
            return;
        };
        let published = notify.notified();
        let finished = done.notified();
        tokio::pin!(published, finished);
        published.as_mut().enable();
        finished.as_mut().enable();
        let room = window
            .load(Ordering::SeqCst)
            .saturating_sub(inflight.load(Ordering::SeqCst));
        let mut wait = Duration::from_secs(1);
        if room > 0 && !cfg.detached {
            match broker.deliver(sub, room, None) {
                Ok((got, _, next_at)) => {
                    if let Some(at) = next_at {
                        wait = wait.min(Duration::from_millis((at - now_ms()).max(1) as u64));
                    }
                    // Shared by this round's pushes, not copied for each.
                    let (cfg, pc) = (Arc::new(cfg), Arc::new(pc));
                    for r in got {
                        inflight.fetch_add(1, Ordering::SeqCst);
                        let (broker, http, settings, cfg, pc) = (
                            broker.clone(),
                            http.clone(),
                            settings.clone(),
                            cfg.clone(),
                            pc.clone(),
                        );
                        let (window, inflight, done) =
                            (window.clone(), inflight.clone(), done.clone());
                        tokio::spawn(async move {
                            let class = push_one(&http, &settings, &cfg, &pc, &r).await;
                            broker.record_push(&cfg.name, class);
                            let ok = class == "ack";
                            let sub = &cfg.name;
                            let result = if ok {
                                broker
                                    .acknowledge(sub, std::slice::from_ref(&r.ack_id))
                                    .await
                            } else {
                                broker.modify_ack_deadline(sub, std::slice::from_ref(&r.ack_id), 0)
                            };
                            if let Err(e) = result {
                                tracing::debug!("push to {}: {e}", pc.push_endpoint);
                            }
                            let _ = window.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                                Some(next_window(w, ok))
                            });
                            inflight.fetch_sub(1, Ordering::SeqCst);
                            done.notify_waiters();
                        });
                    }
                }
                Err(_) => return,
            }
        }
        tokio::select! {
            _ = &mut published => {}
            _ = &mut finished => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The `response_class` of a push result, as Cloud Monitoring names them.
pub fn response_class(status: u16) -> &'static str {
    if acknowledges(status) {
        "ack"
    } else if (400..500).contains(&status) {
        "remote_server_4xx"
    } else if status >= 500 {
        "remote_server_5xx"
    } else {
        "invalid"
    }
}

/// One POST of one message; its response class (`ack` when acknowledged).
async fn push_one(
    http: &reqwest::Client,
    settings: &PushSettings,
    cfg: &Subscription,
    pc: &crate::proto::PushConfig,
    r: &ReceivedMessage,
) -> &'static str {
    let Ok(url) = reqwest::Url::parse(&pc.push_endpoint) else {
        return "invalid";
    };
    let host = url.host_str().unwrap_or_default().to_string();
    let local = settings.is_local(&host);
    let https = url.scheme() == "https";
    let mut target = url.clone();
    if local {
        let _ = target.set_scheme("http");
        let _ = target.set_host(Some("127.0.0.1"));
        let _ = target.set_port(Some(settings.ingress_port));
    }
    let mut req = http
        .post(target)
        .timeout(Duration::from_secs(cfg.ack_deadline_seconds.max(10) as u64));
    match cloudevent(cfg, r) {
        Some((attributes, data)) => {
            for (k, v) in attributes {
                req = req.header(k, v);
            }
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(data);
        }
        None => req = req.json(&envelope(&cfg.name, r)),
    }
    if local {
        req = req.header(reqwest::header::HOST, host);
        if https {
            req = req.header("x-forwarded-proto", "https");
        }
    }
    if let Some(push_config::AuthenticationMethod::OidcToken(o)) = &pc.authentication_method {
        let aud = if o.audience.is_empty() {
            pc.push_endpoint.as_str()
        } else {
            o.audience.as_str()
        };
        req = req.bearer_auth((settings.mint)(&o.service_account_email, aud));
    }
    match req.send().await {
        Ok(resp) => response_class(resp.status().as_u16()),
        Err(e) => {
            tracing::debug!("push to {}: {e}", pc.push_endpoint);
            if e.is_timeout() {
                "deadline_exceeded"
            } else {
                "unreachable"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::PubsubMessage;

    #[test]
    fn local_hosts() {
        let s = PushSettings {
            ingress_port: 8080,
            domain: Some("apps.test".into()),
            mint: Arc::new(|_: &str, _: &str| String::new()),
        };
        for (host, local) in [
            ("localhost", true),
            ("hello.localhost", true),
            ("hello.apps.test", true),
            ("HELLO.apps.test.", true),
            ("apps.test", false),
            ("hello.xapps.test", false),
            ("example.com", false),
        ] {
            assert_eq!(s.is_local(host), local, "{host}");
        }
    }

    #[test]
    fn slow_start() {
        let mut w = 1;
        for _ in 0..5 {
            w = next_window(w, true);
        }
        assert_eq!(w, 6);
        assert_eq!(next_window(w, false), 3);
        assert_eq!(next_window(1, false), 1);
        assert_eq!(next_window(MAX_WINDOW, true), MAX_WINDOW);
    }

    #[test]
    fn ack_codes() {
        for c in [102, 200, 201, 202, 204] {
            assert!(acknowledges(c), "{c}");
        }
        for c in [203, 301, 400, 429, 500, 503] {
            assert!(!acknowledges(c), "{c}");
        }
        assert_eq!(response_class(204), "ack");
        assert_eq!(response_class(403), "remote_server_4xx");
        assert_eq!(response_class(503), "remote_server_5xx");
        assert_eq!(response_class(302), "invalid");
    }

    #[test]
    fn cloudevent_headers_shape() {
        let r = ReceivedMessage {
            ack_id: "1-1".into(),
            message: Some(PubsubMessage {
                data: b"hi".to_vec(),
                message_id: "42".into(),
                publish_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            delivery_attempt: 0,
        };
        let h = cloudevent_headers("projects/p/topics/t", &r);
        assert_eq!(
            h,
            [
                ("ce-id", "42".to_string()),
                (
                    "ce-source",
                    "//pubsub.googleapis.com/projects/p/topics/t".into()
                ),
                ("ce-type", MESSAGE_PUBLISHED.into()),
                ("ce-specversion", "1.0".into()),
                ("ce-time", "2023-11-14T22:13:20.000Z".into()),
            ]
        );
    }

    #[test]
    fn envelope_shape() {
        let r = ReceivedMessage {
            ack_id: "1-1".into(),
            message: Some(PubsubMessage {
                data: b"hi".to_vec(),
                attributes: [("k".to_string(), "v".to_string())].into(),
                message_id: "42".into(),
                publish_time: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5_000_000,
                }),
                ordering_key: "o".into(),
            }),
            delivery_attempt: 3,
        };
        let e = envelope("projects/p/subscriptions/s", &r);
        assert_eq!(
            e,
            serde_json::json!({
                "message": {
                    "data": "aGk=", "attributes": {"k": "v"},
                    "messageId": "42", "message_id": "42",
                    "publishTime": "2023-11-14T22:13:20.005Z", "publish_time": "2023-11-14T22:13:20.005Z",
                    "orderingKey": "o"
                },
                "subscription": "projects/p/subscriptions/s",
                "deliveryAttempt": 3
            })
        );
    }
}
