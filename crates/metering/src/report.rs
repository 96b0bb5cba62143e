//! Usage reports: recorded usage, priced, per service revision and job execution, beside what
//! the instances' cgroups say they actually used.

use crate::price::{Cost, Prices, Usage};
use crate::{Billing, Kind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Recorded usage of one revision (or execution) at one size and billing mode in one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    pub namespace: String,
    pub kind: Kind,
    pub owner: String,
    pub revision: String,
    pub mode: Billing,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// `YYYY-MM`, UTC.
    pub month: String,
    pub instances: u64,
    pub billable_ms: i64,
    pub requests: u64,
    pub cpu_ns: u64,
    pub memory_peak_bytes: u64,
    /// Bytes the instances sent, received, and sent to the internet.
    #[serde(default)]
    pub sent_bytes: u64,
    #[serde(default)]
    pub received_bytes: u64,
    #[serde(default)]
    pub egress_bytes: u64,
}

/// One line of a report: a service revision or a job execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    pub namespace: String,
    pub kind: Kind,
    /// The service or the job.
    pub name: String,
    /// The revision, or the execution.
    pub revision: String,
    pub billing: Billing,
    /// Limits of one instance.
    pub cpu: f64,
    pub memory_bytes: u64,
    /// Instances (or task attempts) that ran.
    pub instances: u64,
    #[serde(flatten)]
    pub usage: Usage,
    pub cost: Cost,
    /// CPU seconds the instances consumed, according to their cgroups.
    pub used_cpu_seconds: f64,
    /// The largest peak memory of one instance, according to its cgroup.
    pub peak_memory_bytes: u64,
    /// Bytes the instances sent and received over their interfaces.
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Of `sent_bytes`, what went to the internet: billed as outbound data transfer
    /// (traffic to other services and the metadata server is free, as within a Cloud Run
    /// region).
    pub egress_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// RFC 3339; the report covers every minute (usage is recorded per minute) that overlaps
    /// `[since, until)`.
    pub since: String,
    pub until: String,
    pub currency: String,
    pub lines: Vec<Line>,
    /// Summed over the lines, by billing mode.
    pub request_based: Usage,
    pub instance_based: Usage,
    /// List-price cost of every line.
    pub cost: f64,
    /// The free tier, applied per calendar month to the usage in this report.
    pub free_tier: f64,
    pub total: f64,
    pub prices: Prices,
}

/// Prices recorded usage. Rows of the same revision in different months make one line; the free
/// tier is applied per month.
pub fn build(rows: &[UsageRow], prices: &Prices, since: String, until: String) -> Report {
    let mut lines: Vec<Line> = Vec::new();
    let mut months: BTreeMap<&str, (Usage, Usage)> = BTreeMap::new();
    let mut egress_by_month: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows {
        let u = Usage::of(r.billable_ms, r.requests, r.cpu_millis, r.memory_bytes);
        *egress_by_month.entry(r.month.as_str()).or_default() += r.egress_bytes;
        let m = months.entry(r.month.as_str()).or_default();
        match r.mode {
            Billing::Request => m.0.add(&u),
            Billing::Instance => m.1.add(&u),
        }
        let same = |l: &Line| {
            l.namespace == r.namespace
                && l.kind == r.kind
                && l.name == r.owner
                && l.revision == r.revision
                && l.billing == r.mode
                && l.memory_bytes == r.memory_bytes
                && l.cpu == r.cpu_millis as f64 / 1000.0
        };
        let line = match lines.iter_mut().rev().find(|l| same(l)) {
            Some(l) => l,
            None => {
                lines.push(Line {
                    namespace: r.namespace.clone(),
                    kind: r.kind,
                    name: r.owner.clone(),
                    revision: r.revision.clone(),
                    billing: r.mode,
                    cpu: r.cpu_millis as f64 / 1000.0,
                    memory_bytes: r.memory_bytes,
                    instances: 0,
                    usage: Usage::default(),
                    cost: Cost::default(),
                    used_cpu_seconds: 0.0,
                    peak_memory_bytes: 0,
                    sent_bytes: 0,
                    received_bytes: 0,
                    egress_bytes: 0,
                });
                lines.last_mut().expect("just pushed")
            }
        };
        line.instances += r.instances;
        line.usage.add(&u);
        line.used_cpu_seconds += r.cpu_ns as f64 / 1e9;
        line.peak_memory_bytes = line.peak_memory_bytes.max(r.memory_peak_bytes);
        line.sent_bytes += r.sent_bytes;
        line.received_bytes += r.received_bytes;
        line.egress_bytes += r.egress_bytes;
    }
    let (mut request_based, mut instance_based) = (Usage::default(), Usage::default());
    let mut cost = 0.0;
    for l in &mut lines {
        l.cost = prices.cost(l.billing, &l.usage);
        l.cost.networking = prices.egress_cost(l.egress_bytes);
        l.cost.total += l.cost.networking;
        cost += l.cost.total;
        match l.billing {
            Billing::Request => request_based.add(&l.usage),
            Billing::Instance => instance_based.add(&l.usage),
        }
    }
    // A fold from +0.0: an empty `sum()` of floats is -0.0, which would print as "-0".
    let free_tier = months
        .values()
        .map(|(req, inst)| prices.free_tier_credit(req, inst).total)
        .chain(
            egress_by_month
                .values()
                .map(|b| prices.free_egress_credit(*b)),
        )
        .fold(0.0, |a, b| a + b);
    Report {
        since,
        until,
        currency: format!("{:?}", prices.currency),
        lines,
        request_based,
        instance_based,
        cost,
        free_tier,
        total: (cost - free_tier).max(0.0),
        prices: *prices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rev: &str, mode: Billing, month: &str, billable_ms: i64, requests: u64) -> UsageRow {
        UsageRow {
            namespace: "default".into(),
            kind: Kind::Service,
            owner: "hello".into(),
            revision: rev.into(),
            mode,
            cpu_millis: 1000,
            memory_bytes: 512 << 20,
            month: month.into(),
            instances: 1,
            billable_ms,
            requests,
            cpu_ns: 500_000_000,
            memory_peak_bytes: 3 << 20,
            sent_bytes: 0,
            received_bytes: 0,
            egress_bytes: 0,
        }
    }

    #[test]
    fn lines_merge_months_and_the_free_tier_covers_small_usage() {
        let rows = [
            row("hello-1", Billing::Request, "2026-10", 3_400, 10),
            row("hello-1", Billing::Request, "2026-11", 600, 2),
            row("hello-2", Billing::Instance, "2026-11", 60_000, 5),
        ];
        let r = build(&rows, &Prices::default(), "a".into(), "b".into());
        assert_eq!(r.lines.len(), 2);
        let l = &r.lines[0];
        assert_eq!((l.usage.requests, l.instances), (12, 2));
        assert!((l.usage.billable_seconds - 4.0).abs() < 1e-9);
        assert!((l.usage.gib_seconds - 2.0).abs() < 1e-9);
        assert!((l.used_cpu_seconds - 1.0).abs() < 1e-9);
        let want = 4.0 * 0.000024 + 2.0 * 0.0000025 + 12.0 * 0.4 / 1e6;
        assert!((l.cost.total - want).abs() < 1e-12);
        assert!((r.lines[1].cost.total - (60.0 * 0.000018 + 30.0 * 0.000002)).abs() < 1e-12);
        // All of it is within the free tier.
        assert!((r.free_tier - r.cost).abs() < 1e-12);
        assert_eq!(r.total, 0.0);
        // Outbound internet traffic: 3 GiB in one month, 1 GiB of it free.
        let mut net = row("hello-3", Billing::Request, "2026-11", 0, 0);
        net.egress_bytes = 3 << 30;
        net.sent_bytes = 4 << 30;
        let r = build(&[net], &Prices::default(), "a".into(), "b".into());
        assert!((r.lines[0].cost.networking - 3.0 * 0.12).abs() < 1e-9);
        assert!((r.free_tier - 0.12).abs() < 1e-9, "{}", r.free_tier);
        assert!((r.total - 2.0 * 0.12).abs() < 1e-9);
        let empty = build(&[], &Prices::default(), "a".into(), "b".into());
        assert!(empty.free_tier.is_sign_positive() && empty.cost.is_sign_positive());
    }
}
