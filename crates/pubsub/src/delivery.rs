//! The delivery state machine of one subscription, with no clock and no I/O: which of its
//! unacknowledged messages may be handed out now, leases (ack deadlines), nacks, redelivery
//! after an expired deadline with the retry policy's backoff, ordering keys, and when a message
//! has used up its delivery attempts and goes to the dead-letter topic. The broker feeds it
//! the time (milliseconds since the Unix epoch) and persists what it decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
///
/// Every message is in exactly one of four places, so that handing out, acknowledging,
/// nacking and a lease running out cost in proportion to the messages they touch, not to the
/// backlog (a push subscription hands out and acknowledges once per message, while thousands
/// may be unacknowledged): `ready` (may go out now), `waiting` (may go out from a time: a
/// nack's or an expired lease's backoff), `leases` (out with a client until a time, or held
/// while dead-lettered) or `blocked` (an ordered subscription's message behind an earlier
/// unacknowledged one of its ordering key).
#[derive(Debug, Default)]
pub struct Backlog {
    pending: BTreeMap<u64, Pending>,
    /// Ids that may be handed out now.
    ready: BTreeSet<u64>,
    /// (available from, id) of messages backing off.
    waiting: BTreeSet<(i64, u64)>,
    /// (until, id) of messages out with a client; `i64::MAX` while dead-lettered.
    leases: BTreeSet<(i64, u64)>,
    /// Ids waiting behind an earlier message of their ordering key.
    blocked: BTreeSet<u64>,
    /// Unacknowledged ids of each ordering key (messages with one): the first is the one an
    /// ordered subscription may hand out.
    keys: HashMap<String, BTreeSet<u64>>,
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
        let id = msg.id;
        if self.pending.contains_key(&id) {
            self.remove(id);
        }
        if !msg.ordering_key.is_empty() {
            self.keys
                .entry(msg.ordering_key.clone())
                .or_default()
                .insert(id);
        }
        self.pending.insert(
            id,
            Pending {
                msg,
                attempts,
                available_at: 0,
                lease: None,
            },
        );
        self.ready.insert(id);
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

    /// Removes a message (acknowledged, expired or dead-lettered); whether it was there. The
    /// next message of its ordering key, if it was waiting behind it, may go out from then.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(p) = self.pending.remove(&id) else {
            return false;
        };
        match p.lease {
            Some((until, _)) => {
                self.leases.remove(&(until, id));
            }
            None => {
                if !self.ready.remove(&id) && !self.waiting.remove(&(p.available_at, id)) {
                    self.blocked.remove(&id);
                }
            }
        }
        let key = &p.msg.ordering_key;
        if let Some(ids) = self.keys.get_mut(key) {
            ids.remove(&id);
            match ids.first() {
                None => {
                    self.keys.remove(key);
                }
                Some(&next) => {
                    if self.blocked.remove(&next) {
                        let at = self.pending[&next].available_at;
                        self.waiting.insert((at, next));
                    }
                }
            }
        }
        true
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
            self.remove(*id);
        }
        old
    }

    /// Hands out up to `max` messages at `now`, each leased for `deadline_ms`, oldest first.
    ///
    /// A lease that has run out counts as a nack at its deadline (backoff from there). With
    /// ordering, only the first unacknowledged message of a key may be out, so a key's next
    /// message waits until the one before it is acknowledged. A message that would exceed
    /// `max_attempts` is returned in `dead` (and leased, so it is not handed out meanwhile).
    pub fn deliver(&mut self, policy: &Policy, now: i64, max: usize, deadline_ms: i64) -> Batch {
        while let Some(&(until, id)) = self.leases.first() {
            if until > now {
                break;
            }
            self.leases.pop_first();
            let p = self
                .pending
                .get_mut(&id)
                .expect("a lease is of a pending message");
            p.lease = None;
            p.available_at = until + policy.backoff_ms(p.attempts);
            self.waiting.insert((p.available_at, id));
        }
        while let Some(&(at, id)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.waiting.pop_first();
            self.ready.insert(id);
        }
        let mut batch = Batch::default();
        while batch.delivered.len() < max {
            let Some(id) = self.ready.pop_first() else {
                break;
            };
            let p = self.pending.get_mut(&id).expect("a ready id is pending");
            let key = &p.msg.ordering_key;
            if policy.ordered
                && !key.is_empty()
                && self.keys.get(key).and_then(|ids| ids.first()) != Some(&id)
            {
                self.blocked.insert(id);
                continue;
            }
            self.gen += 1;
            if policy.max_attempts.is_some_and(|m| p.attempts >= m) {
                // Held while it is forwarded; removed once the forward is committed.
                p.lease = Some((i64::MAX, self.gen));
                self.leases.insert((i64::MAX, id));
                batch.dead.push(p.msg.clone());
                continue;
            }
            p.attempts += 1;
            p.lease = Some((now + deadline_ms, self.gen));
            self.leases.insert((now + deadline_ms, id));
            batch.delivered.push(Delivered {
                msg: p.msg.clone(),
                ack_id: format!("{id}-{}", self.gen),
                attempt: p.attempts,
            });
        }
        batch.next_at = [self.waiting.first(), self.leases.first()]
            .into_iter()
            .flatten()
            .map(|&(t, _)| t)
            .min();
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
                self.leases.remove(&(until, id));
                if secs == 0 {
                    p.lease = None;
                    p.available_at = now + policy.backoff_ms(p.attempts);
                    self.waiting.insert((p.available_at, id));
                    true
                } else {
                    p.lease = Some((now + secs * 1000, g));
                    self.leases.insert((now + secs * 1000, id));
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
            if let Some((until, _)) = p.lease.take() {
                self.leases.remove(&(until, id));
                self.waiting.insert((p.available_at, id));
            }
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

    /// The rule [`Backlog`] keeps, written as a scan of every message on each call: what a
    /// delivery may hand out, in which order, and when a lease's end makes it a nack.
    #[derive(Default)]
    struct Scan {
        pending: BTreeMap<u64, Pending>,
        gen: u64,
    }

    impl Scan {
        fn deliver(&mut self, policy: &Policy, now: i64, max: usize, deadline: i64) -> Vec<u64> {
            let (mut out, mut delivered) = (Vec::new(), 0);
            let mut keys = std::collections::HashSet::new();
            for (id, p) in self.pending.iter_mut() {
                if let Some((until, _)) = p.lease {
                    if until <= now {
                        p.lease = None;
                        p.available_at = until + policy.backoff_ms(p.attempts);
                    }
                }
                let key = &p.msg.ordering_key;
                let free = !policy.ordered || key.is_empty() || keys.insert(key.clone());
                if p.lease.is_some() || p.available_at > now || !free || delivered >= max {
                    continue;
                }
                self.gen += 1;
                if policy.max_attempts.is_some_and(|m| p.attempts >= m) {
                    p.lease = Some((i64::MAX, self.gen));
                    out.push(id + 1_000_000);
                    continue;
                }
                p.attempts += 1;
                p.lease = Some((now + deadline, self.gen));
                out.push(*id);
                delivered += 1;
            }
            out
        }
    }

    #[test]
    fn deliveries_follow_the_scan_of_every_message() {
        for (seed, policy) in [
            (1u64, PLAIN),
            (
                2,
                Policy {
                    ordered: true,
                    ..PLAIN
                },
            ),
            (
                3,
                Policy {
                    backoff: Some((5, 40)),
                    max_attempts: Some(4),
                    ordered: true,
                },
            ),
            (
                4,
                Policy {
                    backoff: Some((10, 10)),
                    max_attempts: Some(2),
                    ordered: false,
                },
            ),
        ] {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let (mut b, mut scan) = (Backlog::default(), Scan::default());
            let mut out: Vec<String> = Vec::new();
            let mut now = 0;
            let mut id = 0;
            for step in 0..4000 {
                now += next(4) as i64;
                match next(10) {
                    0..=2 => {
                        id += 1 + next(3);
                        let key = ["", "a", "b", "c"][next(4) as usize];
                        b.add(msg(id, key), 0);
                        let m = msg(id, key);
                        scan.pending.insert(
                            id,
                            Pending {
                                msg: m,
                                attempts: 0,
                                available_at: 0,
                                lease: None,
                            },
                        );
                    }
                    3..=5 => {
                        let max = 1 + next(4) as usize;
                        let got = b.deliver(&policy, now, max, 1 + next(30) as i64);
                        let want = scan.deliver(&policy, now, max, 0);
                        let mut ids: Vec<u64> = got.delivered.iter().map(|d| d.msg.id).collect();
                        ids.extend(got.dead.iter().map(|m| m.id + 1_000_000));
                        let mut want_sorted = want.clone();
                        want_sorted.sort_unstable();
                        ids.sort_unstable();
                        assert_eq!(ids, want_sorted, "seed {seed} step {step}");
                        // The scan's leases follow the backlog's deadlines and generations.
                        for d in &got.delivered {
                            let (until, gen) = b.pending[&d.msg.id].lease.unwrap();
                            scan.pending.get_mut(&d.msg.id).unwrap().lease = Some((until, gen));
                            out.push(d.ack_id.clone());
                        }
                        for m in &got.dead {
                            let lease = b.pending[&m.id].lease;
                            scan.pending.get_mut(&m.id).unwrap().lease = lease;
                        }
                    }
                    6 if !out.is_empty() => {
                        let ack = out.swap_remove(next(out.len() as u64) as usize);
                        let (mid, _) = parse_ack_id(&ack).unwrap();
                        if next(2) == 0 {
                            assert_eq!(b.remove(mid), scan.pending.remove(&mid).is_some());
                        } else {
                            let secs = next(2) as i64 * 3;
                            b.modify(&policy, &ack, secs, now);
                            let lease = b.pending.get(&mid).map(|p| (p.lease, p.available_at));
                            if let Some((lease, at)) = lease {
                                let p = scan.pending.get_mut(&mid).unwrap();
                                p.lease = lease;
                                p.available_at = at;
                            }
                        }
                    }
                    7 => {
                        // A dead-lettered message forwarded (removed) or its forward failed.
                        let held: Vec<u64> = b
                            .pending
                            .iter()
                            .filter(|(_, p)| matches!(p.lease, Some((i64::MAX, _))))
                            .map(|(id, _)| *id)
                            .collect();
                        if let Some(&h) = held.first() {
                            if next(2) == 0 {
                                b.remove(h);
                                scan.pending.remove(&h);
                            } else {
                                b.release(h);
                                scan.pending.get_mut(&h).unwrap().lease = None;
                            }
                        }
                    }
                    8 if next(20) == 0 => {
                        let cutoff = id.saturating_sub(20) as i64;
                        b.expire_before(cutoff);
                        scan.pending.retain(|_, p| p.msg.publish_ms >= cutoff);
                    }
                    _ => {}
                }
                assert_eq!(b.ids(), scan.pending.keys().copied().collect::<Vec<_>>());
                let placed = b.ready.len() + b.waiting.len() + b.leases.len() + b.blocked.len();
                assert_eq!(
                    placed,
                    b.len(),
                    "seed {seed} step {step}: each message in one place"
                );
            }
        }
    }
}
