//! The delivery state machine of one subscription, with no clock and no I/O: which of its
//! unacknowledged messages may be handed out now, leases (ack deadlines), nacks, redelivery
//! after an expired deadline with the retry policy's backoff, ordering keys, and when a message
//! has used up its delivery attempts and goes to the dead-letter topic. The broker feeds it
//! the time (milliseconds since the Unix epoch) and persists what it decides.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// A stored message: what publish wrote, shared by every subscription it fanned out to.
#[derive(Debug, PartialEq)]
pub struct Message {
    /// The message id (decimal in the API), increasing in publish order.
    pub id: u64,
    pub data: Vec<u8>,
    pub attributes: HashMap<String, String>,
    /// Empty when the message has none.
    pub ordering_key: String,
    /// When the server committed it, ms since the epoch.
    pub publish_ms: i64,
}

/// Retry and dead-letter settings of a subscription, already validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `retryPolicy`: (minimumBackoff, maximumBackoff) in ms; `None`: redeliver at once.
    pub backoff: Option<(i64, i64)>,
    /// `deadLetterPolicy.maxDeliveryAttempts`; `None`: no dead-lettering.
    pub max_attempts: Option<u32>,
    /// `enableMessageOrdering`.
    pub ordered: bool,
}

impl Policy {
    /// Delay before a message that has been delivered `attempts` times and was nacked or
    /// expired may go out again: `min × 2^(attempts−1)`, capped at `max` (Pub/Sub's exponential
    /// backoff between the retry policy's bounds); 0 without a retry policy.
    pub fn backoff_ms(&self, attempts: u32) -> i64 {
        match self.backoff {
            None => 0,
            Some((min, max)) => {
                let shift = attempts.saturating_sub(1).min(30);
                min.saturating_mul(1i64 << shift).min(max).max(min.min(max))
            }
        }
    }
}

#[derive(Debug)]
struct Pending {
    msg: Arc<Message>,
    /// Deliveries so far (the next one is `attempts + 1`).
    attempts: u32,
    /// Not before this time (backoff after a nack or an expired lease).
    available_at: i64,
    /// Out with a client until `until`; `gen` tells this delivery's ack id from older ones.
    lease: Option<(i64, u64)>,
}

/// A message handed out: what `ReceivedMessage` carries.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub msg: Arc<Message>,
    /// `ID-GEN`: opaque to clients.
    pub ack_id: String,
    /// 1 for the first delivery.
    pub attempt: u32,
}

/// What `deliver` found: messages to hand out, messages that used up their attempts (to be
/// forwarded to the dead-letter topic, then acknowledged), and when something may next
/// become deliverable (ms), if anything is waiting.
#[derive(Debug, Default)]
pub struct Batch {
    pub delivered: Vec<Delivered>,
    pub dead: Vec<Arc<Message>>,
    pub next_at: Option<i64>,
}

/// Unacknowledged messages of one subscription, by id (publish order).
#[derive(Debug, Default)]
pub struct Backlog {
    pending: BTreeMap<u64, Pending>,
    gen: u64,
}

/// Parses an ack id (`ID-GEN`).
pub fn parse_ack_id(ack_id: &str) -> Option<(u64, u64)> {
    let (id, gen) = ack_id.split_once('-')?;
    Some((id.parse().ok()?, gen.parse().ok()?))
}

impl Backlog {
    /// Adds a message (published, restored or sought back), available now.
    pub fn add(&mut self, msg: Arc<Message>, attempts: u32) {
        self.pending.insert(
            msg.id,
            Pending {
                msg,
                attempts,
                available_at: 0,
                lease: None,
            },
        );
    }

    /// Unacknowledged messages.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Publish time of the oldest unacknowledged message.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.pending.values().map(|p| p.msg.publish_ms).min()
    }

    /// Ids of every unacknowledged message.
    pub fn ids(&self) -> Vec<u64> {
        self.pending.keys().copied().collect()
    }

    /// Removes a message (acknowledged, expired or dead-lettered); whether it was there.
    pub fn remove(&mut self, id: u64) -> bool {
        self.pending.remove(&id).is_some()
    }

    /// Drops every message published before `cutoff_ms`; returns their ids.
    pub fn expire_before(&mut self, cutoff_ms: i64) -> Vec<u64> {
        let old: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.msg.publish_ms < cutoff_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &old {
            self.pending.remove(id);
        }
        old
    }

    /// Hands out up to `max` messages at `now`, each leased for `deadline_ms`.
    ///
    /// A lease that has run out counts as a nack at its deadline (backoff from there). With
    /// ordering, only the first unacknowledged message of a key may be out, so a key's next
    /// message waits until the one before it is acknowledged. A message that would exceed
    /// `max_attempts` is returned in `dead` (and leased, so it is not handed out meanwhile).
    pub fn deliver(&mut self, policy: &Policy, now: i64, max: usize, deadline_ms: i64) -> Batch {
        let mut batch = Batch::default();
        let mut blocked_keys: HashSet<String> = HashSet::new();
        for (id, p) in self.pending.iter_mut() {
            if let Some((until, _)) = p.lease {
                if until <= now {
                    p.lease = None;
                    p.available_at = until + policy.backoff_ms(p.attempts);
                }
            }
            let key_free = !policy.ordered
                || p.msg.ordering_key.is_empty()
                || !blocked_keys.contains(&p.msg.ordering_key);
            if policy.ordered && !p.msg.ordering_key.is_empty() {
                blocked_keys.insert(p.msg.ordering_key.clone());
            }
            if let Some((until, _)) = p.lease {
                batch.next_at = Some(batch.next_at.map_or(until, |t: i64| t.min(until)));
                continue;
            }
            if p.available_at > now {
                batch.next_at = Some(
                    batch
                        .next_at
                        .map_or(p.available_at, |t: i64| t.min(p.available_at)),
                );
                continue;
            }
            if !key_free || batch.delivered.len() >= max {
                continue;
            }
            self.gen += 1;
            if policy.max_attempts.is_some_and(|m| p.attempts >= m) {
                // Held while it is forwarded; removed once the forward is committed.
                p.lease = Some((i64::MAX, self.gen));
                batch.dead.push(p.msg.clone());
                continue;
            }
            p.attempts += 1;
            p.lease = Some((now + deadline_ms, self.gen));
            batch.delivered.push(Delivered {
                msg: p.msg.clone(),
                ack_id: format!("{id}-{}", self.gen),
                attempt: p.attempts,
            });
        }
        batch
    }

    /// Delivery count of a message, if unacknowledged.
    pub fn attempts(&self, id: u64) -> Option<u32> {
        self.pending.get(&id).map(|p| p.attempts)
    }

    /// `modifyAckDeadline` for one ack id at `now`: 0 s is a nack (available again after the
    /// backoff), else the lease runs `secs` from now. An ack id of an older delivery of the
    /// same message changes nothing. Returns whether the message became available again.
    pub fn modify(&mut self, policy: &Policy, ack_id: &str, secs: i64, now: i64) -> bool {
        let Some((id, gen)) = parse_ack_id(ack_id) else {
            return false;
        };
        let Some(p) = self.pending.get_mut(&id) else {
            return false;
        };
        match p.lease {
            Some((until, g)) if g == gen && until != i64::MAX => {
                if secs == 0 {
                    p.lease = None;
                    p.available_at = now + policy.backoff_ms(p.attempts);
                    true
                } else {
                    p.lease = Some((now + secs * 1000, g));
                    false
                }
            }
            _ => false,
        }
    }

    /// Whether the delivery `ack_id` names is still out with its client at `now`: not
    /// acknowledged, not nacked, not redelivered, its lease not run out.
    pub fn is_out(&self, ack_id: &str, now: i64) -> bool {
        let Some((id, gen)) = parse_ack_id(ack_id) else {
            return false;
        };
        matches!(
            self.pending.get(&id).and_then(|p| p.lease),
            Some((until, g)) if g == gen && until > now
        )
    }

    /// Ends the lease of a message being dead-lettered whose forward failed: it is offered
    /// again (and tried again) at the next delivery.
    pub fn release(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.lease = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, key: &str) -> Arc<Message> {
        Arc::new(Message {
            id,
            data: format!("m{id}").into_bytes(),
            attributes: HashMap::new(),
            ordering_key: key.into(),
            publish_ms: id as i64,
        })
    }

    fn ids(b: &Batch) -> Vec<u64> {
        b.delivered.iter().map(|d| d.msg.id).collect()
    }

    const PLAIN: Policy = Policy {
        backoff: None,
        max_attempts: None,
        ordered: false,
    };

    #[test]
    fn backoff_doubles_between_bounds() {
        let p = Policy {
            backoff: Some((10_000, 600_000)),
            ..PLAIN
        };
        let got: Vec<i64> = (1..=8).map(|a| p.backoff_ms(a)).collect();
        assert_eq!(
            got,
            [10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 600_000, 600_000]
        );
        assert_eq!(p.backoff_ms(1000), 600_000);
        assert_eq!(PLAIN.backoff_ms(3), 0);
        let zero = Policy {
            backoff: Some((0, 0)),
            ..PLAIN
        };
        assert_eq!(zero.backoff_ms(5), 0);
    }

    #[test]
    fn lease_expiry_redelivers_after_backoff() {
        let policy = Policy {
            backoff: Some((1000, 4000)),
            ..PLAIN
        };
        let mut b = Backlog::default();
        b.add(msg(1, ""), 0);
        let first = b.deliver(&policy, 0, 10, 10_000);
        assert_eq!(ids(&first), [1]);
        assert_eq!(first.delivered[0].attempt, 1);
        // Leased: nothing until the deadline.
        let none = b.deliver(&policy, 9_999, 10, 10_000);
        assert!(none.delivered.is_empty());
        assert_eq!(none.next_at, Some(10_000));
        // Expired at 10 000, then 1 s of backoff.
        let wait = b.deliver(&policy, 10_500, 10, 10_000);
        assert!(wait.delivered.is_empty());
        assert_eq!(wait.next_at, Some(11_000));
        let again = b.deliver(&policy, 11_000, 10, 10_000);
        assert_eq!(ids(&again), [1]);
        assert_eq!(again.delivered[0].attempt, 2);
        // A nack of the second delivery backs off 2 s.
        assert!(b.modify(&policy, &again.delivered[0].ack_id, 0, 12_000));
        assert!(b.deliver(&policy, 13_999, 10, 10_000).delivered.is_empty());
        assert_eq!(ids(&b.deliver(&policy, 14_000, 10, 10_000)), [1]);
    }

    #[test]
    fn stale_ack_ids_do_not_touch_the_new_lease() {
        let mut b = Backlog::default();
        b.add(msg(1, ""), 0);
        let first = b.deliver(&PLAIN, 0, 10, 1000);
        let second = b.deliver(&PLAIN, 1000, 10, 1000);
        assert_eq!(ids(&second), [1]);
        assert!(!b.modify(&PLAIN, &first.delivered[0].ack_id, 0, 1001));
        assert!(b.deliver(&PLAIN, 1002, 10, 1000).delivered.is_empty());
        // Extending the current lease holds the message past its first deadline.
        assert!(!b.modify(&PLAIN, &second.delivered[0].ack_id, 60, 1500));
        assert!(b.deliver(&PLAIN, 2500, 10, 1000).delivered.is_empty());
        assert_eq!(ids(&b.deliver(&PLAIN, 61_500, 10, 1000)), [1]);
    }

    #[test]
    fn dead_letter_after_max_attempts() {
        let policy = Policy {
            max_attempts: Some(3),
            ..PLAIN
        };
        let mut b = Backlog::default();
        b.add(msg(7, ""), 0);
        for attempt in 1..=3 {
            let got = b.deliver(&policy, attempt * 100, 10, 50);
            assert_eq!(got.delivered[0].attempt, attempt as u32);
            assert!(got.dead.is_empty());
        }
        let last = b.deliver(&policy, 1000, 10, 50);
        assert!(last.delivered.is_empty());
        assert_eq!(last.dead.len(), 1);
        assert_eq!(last.dead[0].id, 7);
        // Held while being forwarded.
        assert!(b.deliver(&policy, 2000, 10, 50).dead.is_empty());
        assert!(b.remove(7));
        assert!(b.is_empty());
    }

    #[test]
    fn restored_attempts_count_toward_the_limit() {
        let policy = Policy {
            max_attempts: Some(5),
            ..PLAIN
        };
        let mut b = Backlog::default();
        b.add(msg(1, ""), 4);
        let got = b.deliver(&policy, 0, 10, 50);
        assert_eq!(got.delivered[0].attempt, 5);
        assert_eq!(b.deliver(&policy, 100, 10, 50).dead.len(), 1);
    }

    #[test]
    fn ordering_keys_one_outstanding_per_key() {
        let policy = Policy {
            ordered: true,
            ..PLAIN
        };
        let mut b = Backlog::default();
        for (id, key) in [(1, "a"), (2, "b"), (3, "a"), (4, ""), (5, "b"), (6, "a")] {
            b.add(msg(id, key), 0);
        }
        let first = b.deliver(&policy, 0, 100, 1000);
        assert_eq!(ids(&first), [1, 2, 4]);
        // Nothing more of a or b while 1 and 2 are out.
        assert!(b.deliver(&policy, 10, 100, 1000).delivered.is_empty());
        // A nack of 1 gives 1 again, never 3 ahead of it.
        b.modify(&policy, &first.delivered[0].ack_id, 0, 20);
        assert_eq!(ids(&b.deliver(&policy, 30, 100, 1000)), [1]);
        b.remove(1);
        b.remove(2);
        assert_eq!(ids(&b.deliver(&policy, 40, 100, 1000)), [3, 5]);
        b.remove(3);
        assert_eq!(ids(&b.deliver(&policy, 50, 100, 1000)), [6]);
        // Without ordering, every message goes at once.
        let mut u = Backlog::default();
        for (id, key) in [(1, "a"), (2, "a")] {
            u.add(msg(id, key), 0);
        }
        assert_eq!(ids(&u.deliver(&PLAIN, 0, 100, 1000)), [1, 2]);
    }

    #[test]
    fn max_limits_a_batch_and_expiry_by_publish_time() {
        let mut b = Backlog::default();
        for id in 1..=5 {
            b.add(msg(id, ""), 0);
        }
        assert_eq!(ids(&b.deliver(&PLAIN, 0, 2, 1000)), [1, 2]);
        assert_eq!(ids(&b.deliver(&PLAIN, 0, 2, 1000)), [3, 4]);
        assert_eq!(b.expire_before(3), [1, 2]);
        assert_eq!(b.ids(), [3, 4, 5]);
        assert_eq!(b.oldest_ms(), Some(3));
    }
}
