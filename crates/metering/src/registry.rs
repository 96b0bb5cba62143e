//! The meters of live instances, and the checkpoints that persist what they accrue.
//!
//! The serving plane and the jobs executor register every instance they start
//! ([`Registry::start`]) and tell its meter what happens to it. Once a second the server takes
//! a [`Checkpoint`]: per instance, the billable time, requests and CPU that accrued since the
//! last one, by minute, plus what the interval still open would add if it closed now. Writing
//! each checkpoint in one transaction means that after a crash every open interval ends at the
//! last checkpoint, at most a second old.

use crate::meter::{Billing, Meter};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What an instance runs for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Service,
    Job,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Job => "job",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "service" => Some(Kind::Service),
            "job" => Some(Kind::Job),
            _ => None,
        }
    }
}

/// Who an instance bills to, and at what size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub id: String,
    pub namespace: String,
    pub kind: Kind,
    /// The service or the job.
    pub owner: String,
    /// The revision, or the execution.
    pub revision: String,
    /// For a job task: `INDEX/ATTEMPT`.
    pub task: Option<String>,
    pub mode: Billing,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What an instance's cgroup says it used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupStats {
    pub cpu_ns: u64,
    pub memory_peak_bytes: u64,
    /// Processes the memory cgroup's OOM killer has killed (`oom_kill` in cgroup v1's
    /// `memory.oom_control`, v2's `memory.events`).
    #[serde(default)]
    pub oom_kills: u64,
}

/// What an instance's network interface carried so far, in bytes (totals since it started).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetStats {
    /// Sent by the instance, to anywhere (Cloud Run's `container/network/sent_bytes_count`).
    pub sent_bytes: u64,
    /// Received by the instance (`container/network/received_bytes_count`).
    pub received_bytes: u64,
    /// Of `sent_bytes`, what left for the internet (not the platform's own services on the
    /// gateway: other services, DNS, metadata): the part Cloud Run bills as outbound data
    /// transfer.
    pub egress_bytes: u64,
}

/// Reads an instance's [`NetStats`] (cheap: counters the kernel keeps).
pub type NetReader = Box<dyn Fn() -> NetStats + Send + Sync>;

/// One instance's meter while it lives.
pub struct LiveInstance {
    pub info: InstanceInfo,
    pub started_ms: i64,
    meter: Mutex<Meter>,
    requests: AtomicU64,
    state: Mutex<Taken>,
    net: std::sync::OnceLock<NetReader>,
}

#[derive(Default)]
struct Taken {
    ended: Option<(i64, Option<CgroupStats>)>,
    stats: CgroupStats,
    /// The open interval's rounding and the peak memory last reported (`None`: never
    /// reported); a checkpoint with nothing new for the instance leaves it out.
    reported: Option<(Option<(i64, i64)>, u64)>,
    /// Network totals already counted.
    net: NetStats,
    /// The network's last reading, taken when the instance ended.
    net_final: Option<NetStats>,
}

impl LiveInstance {
    /// Runs `f` on the meter under its lock (keep it short: the request path calls this).
    pub fn with_meter<R>(&self, f: impl FnOnce(&mut Meter) -> R) -> R {
        f(&mut self.meter.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Counts one request.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how the instance's network counters are read (at most once; an instance without
    /// a network interface has none).
    pub fn set_net_reader(&self, reader: NetReader) {
        let _ = self.net.set(reader);
    }

    /// The container is gone at `t`; `stats` is its cgroup's final reading, when known. The
    /// network counters are read a last time now, while the interface still exists.
    pub fn end(&self, t: i64, stats: Option<CgroupStats>) {
        self.with_meter(|m| m.exited(t));
        let net = self.net.get().map(|r| r());
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.ended.is_none() {
            s.ended = Some((t, stats));
            s.net_final = net;
        }
    }
}

/// Usage of one minute of one instance, to add to what is recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MinuteUsage {
    pub minute: i64,
    pub billable_ms: i64,
    pub requests: u64,
    pub cpu_ns: u64,
    /// Bytes the instance sent, received, and sent to the internet ([`NetStats`]).
    pub sent_bytes: u64,
    pub received_bytes: u64,
    pub egress_bytes: u64,
}

/// One instance's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceUsage {
    pub info: InstanceInfo,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    /// Deltas since the previous checkpoint.
    pub minutes: Vec<MinuteUsage>,
    /// `(minute, ms)`: what the open interval's rounding adds now (replaces the previous one).
    pub rounding: Option<(i64, i64)>,
    /// Peak memory so far.
    pub memory_peak_bytes: u64,
    /// Whether anything in it is new since the instance's last report (an idle instance's
    /// unchanged row need not be written again).
    pub changed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub at_ms: i64,
    pub instances: Vec<InstanceUsage>,
}

#[derive(Default)]
pub struct Registry {
    live: Mutex<HashMap<String, Arc<LiveInstance>>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Starts metering an instance that starts at `t`.
    pub fn start(&self, info: InstanceInfo, t: i64) -> Arc<LiveInstance> {
        let inst = Arc::new(LiveInstance {
            meter: Mutex::new(Meter::new(info.mode, t)),
            started_ms: t,
            info,
            requests: AtomicU64::new(0),
            state: Mutex::new(Taken::default()),
            net: std::sync::OnceLock::new(),
        });
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(inst.info.id.clone(), inst.clone());
        inst
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// What accrued since the last checkpoint, up to `t`. `stats` reads a live instance's
    /// cgroup. Instances that ended are reported a last time and forgotten.
    pub fn checkpoint(&self, t: i64, stats: impl Fn(&str) -> Option<CgroupStats>) -> Checkpoint {
        let insts: Vec<Arc<LiveInstance>> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out = Checkpoint {
            at_ms: t,
            instances: Vec::with_capacity(insts.len()),
        };
        let mut gone = Vec::new();
        for inst in insts {
            let (ended, net_final) = {
                let st = inst.state.lock().unwrap_or_else(|e| e.into_inner());
                (st.ended, st.net_final)
            };
            let now_stats = match ended {
                Some((_, s)) => s,
                None => stats(&inst.info.id),
            };
            let now_net = match ended {
                Some(_) => net_final,
                None => inst.net.get().map(|r| r()),
            };
            let accrued = inst.with_meter(|m| m.take(t));
            let requests = inst.requests.swap(0, Ordering::Relaxed);
            let mut minutes: BTreeMap<i64, MinuteUsage> = accrued
                .minutes
                .iter()
                .map(|&(minute, ms)| {
                    (
                        minute,
                        MinuteUsage {
                            minute,
                            billable_ms: ms,
                            ..MinuteUsage::default()
                        },
                    )
                })
                .collect();
            let here = crate::bucket_of(ended.map_or(t, |e| e.0));
            let mut st = inst.state.lock().unwrap_or_else(|e| e.into_inner());
            let cpu_delta = match now_stats {
                Some(s) => {
                    let d = s.cpu_ns.saturating_sub(st.stats.cpu_ns);
                    st.stats.cpu_ns = st.stats.cpu_ns.max(s.cpu_ns);
                    st.stats.memory_peak_bytes =
                        st.stats.memory_peak_bytes.max(s.memory_peak_bytes);
                    d
                }
                None => 0,
            };
            let net_delta = match now_net {
                Some(n) => {
                    let d = NetStats {
                        sent_bytes: n.sent_bytes.saturating_sub(st.net.sent_bytes),
                        received_bytes: n.received_bytes.saturating_sub(st.net.received_bytes),
                        egress_bytes: n.egress_bytes.saturating_sub(st.net.egress_bytes),
                    };
                    st.net = NetStats {
                        sent_bytes: st.net.sent_bytes.max(n.sent_bytes),
                        received_bytes: st.net.received_bytes.max(n.received_bytes),
                        egress_bytes: st.net.egress_bytes.max(n.egress_bytes),
                    };
                    d
                }
                None => NetStats::default(),
            };
            if requests > 0 || cpu_delta > 0 || net_delta != NetStats::default() {
                let m = minutes.entry(here).or_insert(MinuteUsage {
                    minute: here,
                    ..MinuteUsage::default()
                });
                m.requests += requests;
                m.cpu_ns += cpu_delta;
                m.sent_bytes += net_delta.sent_bytes;
                m.received_bytes += net_delta.received_bytes;
                m.egress_bytes += net_delta.egress_bytes;
            }
            let state = (accrued.rounding, st.stats.memory_peak_bytes);
            let changed = ended.is_some() || !minutes.is_empty() || st.reported != Some(state);
            st.reported = Some(state);
            out.instances.push(InstanceUsage {
                changed,
                info: inst.info.clone(),
                started_ms: inst.started_ms,
                ended_ms: ended.map(|e| e.0),
                minutes: minutes.into_values().collect(),
                rounding: accrued.rounding,
                memory_peak_bytes: st.stats.memory_peak_bytes,
            });
            if ended.is_some() {
                gone.push(inst.info.id.clone());
            }
        }
        if !gone.is_empty() {
            let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
            for id in gone {
                live.remove(&id);
            }
        }
        out.instances.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, mode: Billing) -> InstanceInfo {
        InstanceInfo {
            id: id.into(),
            namespace: "default".into(),
            kind: Kind::Service,
            owner: "hello".into(),
            revision: "hello-00001-abc".into(),
            task: None,
            mode,
            cpu_millis: 1000,
            memory_bytes: 512 << 20,
        }
    }

    #[test]
    fn checkpoints_carry_deltas_and_forget_ended_instances() {
        let r = Registry::new();
        let i = r.start(info("a", Billing::Request), 1_000);
        i.with_meter(|m| m.ready(1_050));
        i.request();
        i.with_meter(|m| m.set_busy(1_100, true));
        let stats = |_: &str| {
            Some(CgroupStats {
                cpu_ns: 7_000,
                memory_peak_bytes: 1 << 20,
                oom_kills: 0,
            })
        };
        let c = r.checkpoint(1_200, stats);
        let u = &c.instances[0];
        assert_eq!(u.minutes.len(), 1);
        let m = u.minutes[0];
        // 1 000..1 050 (→100) and 1 100..1 200 so far.
        assert_eq!((m.billable_ms, m.requests, m.cpu_ns), (100 + 100, 1, 7_000));
        assert_eq!(u.rounding, Some((0, 0)));
        // Idle, with nothing new: marked unchanged in the next checkpoint.
        i.with_meter(|m| m.set_busy(1_200, false));
        assert!(r.checkpoint(1_200, stats).instances[0].changed);
        assert!(!r.checkpoint(1_210, stats).instances[0].changed);
        i.with_meter(|m| m.set_busy(1_200, true));
        i.with_meter(|m| m.set_busy(1_250, false));
        i.end(
            1_300,
            Some(CgroupStats {
                cpu_ns: 9_000,
                memory_peak_bytes: 2 << 20,
                oom_kills: 0,
            }),
        );
        let c = r.checkpoint(1_400, stats);
        let u = &c.instances[0];
        // 1 200..1 250 plus the rounding of 1 100..1 250 (→200).
        assert_eq!(u.minutes[0].billable_ms, 50 + 50);
        assert_eq!(u.minutes[0].cpu_ns, 2_000);
        assert_eq!((u.ended_ms, u.memory_peak_bytes), (Some(1_300), 2 << 20));
        assert_eq!(r.live_count(), 0);
        assert!(r.checkpoint(1_500, stats).instances.is_empty());
    }
}
