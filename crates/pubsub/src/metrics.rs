//! Prometheus text for `/metrics`, named after Cloud Monitoring's Pub/Sub metrics
//! (`pubsub.googleapis.com/subscription/num_undelivered_messages` becomes
//! `pubsub_subscription_num_undelivered_messages`), labelled with the monitored resource's
//! `project_id` and `subscription_id` or `topic_id`.

use crate::broker::Broker;
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

fn split(name: &str) -> (String, String) {
    let mut parts = name.split('/');
    let project = parts.nth(1).unwrap_or_default().to_string();
    let id = parts.nth(1).unwrap_or_default().to_string();
    (project, id)
}

/// Renders the broker's figures now: backlog and oldest unacked age per subscription, publish
/// requests per topic, push requests per subscription and response class.
pub fn render(broker: &Broker) -> String {
    let r = Registry::new();
    let undelivered = IntGaugeVec::new(
        Opts::new(
            "pubsub_subscription_num_undelivered_messages",
            "Unacknowledged messages (the backlog) of a subscription.",
        ),
        &["project_id", "subscription_id"],
    )
    .expect("valid metric");
    let oldest = GaugeVec::new(
        Opts::new(
            "pubsub_subscription_oldest_unacked_message_age",
            "Age in seconds of the oldest unacknowledged message of a subscription.",
        ),
        &["project_id", "subscription_id"],
    )
    .expect("valid metric");
    let sent = IntCounterVec::new(
        Opts::new(
            "pubsub_topic_send_request_count",
            "Publish requests per topic since the server started.",
        ),
        &["project_id", "topic_id"],
    )
    .expect("valid metric");
    let pushed = IntCounterVec::new(
        Opts::new(
            "pubsub_subscription_push_request_count",
            "Push requests per subscription and response class (ack, remote_server_4xx, remote_server_5xx, deadline_exceeded, unreachable) since the server started.",
        ),
        &["project_id", "subscription_id", "response_class"],
    )
    .expect("valid metric");
    for m in [
        Box::new(undelivered.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(oldest.clone()),
        Box::new(sent.clone()),
        Box::new(pushed.clone()),
    ] {
        r.register(m).expect("metric names are distinct");
    }
    for s in broker.stats() {
        let (p, id) = split(&s.subscription);
        undelivered
            .with_label_values(&[&p, &id])
            .set(s.undelivered as i64);
        oldest
            .with_label_values(&[&p, &id])
            .set(s.oldest_unacked_age_s);
    }
    for (topic, n) in broker.publish_counts() {
        let (p, id) = split(&topic);
        sent.with_label_values(&[&p, &id]).inc_by(n);
    }
    for ((sub, class), n) in broker.push_counts() {
        let (p, id) = split(&sub);
        pushed.with_label_values(&[&p, &id, class]).inc_by(n);
    }
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&r.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_split_into_labels() {
        assert_eq!(
            super::split("projects/p/subscriptions/s"),
            ("p".to_string(), "s".to_string())
        );
    }
}
