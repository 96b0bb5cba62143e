//! The billing rule, written once.
//!
//! Request-based billing (Cloud Run's default for services): an instance is billable while it
//! starts, while it handles at least one request, and while it shuts down. Instance-based
//! billing (`--no-cpu-throttling`, and every job task): for its whole life. Each maximal
//! billable interval is rounded up to a multiple of [`ROUND_MS`].
//!
//! [`Meter`] applies the rule as events happen, accruing billable time per minute so that it
//! can be persisted as it accrues; [`bill`] replays a complete schedule through a meter.

use crate::{bucket_of, round_up, BUCKET_MS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How an instance is billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Billing {
    /// Billable while starting, while handling a request, while shutting down.
    #[default]
    Request,
    /// Billable for the instance's whole life.
    Instance,
}

impl Billing {
    pub fn as_str(self) -> &'static str {
        match self {
            Billing::Request => "request",
            Billing::Instance => "instance",
        }
    }

    pub fn parse(s: &str) -> Option<Billing> {
        match s {
            "request" => Some(Billing::Request),
            "instance" => Some(Billing::Instance),
            _ => None,
        }
    }
}

/// What accrued since the last [`Meter::take`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accrued {
    /// `(minute, billable ms)`, rounding included for intervals that closed.
    pub minutes: Vec<(i64, i64)>,
    /// For the interval still open: `(minute, ms)` its rounding would add if it closed now.
    /// Replaces the previous take's value; it is what a crash right now would bill.
    pub rounding: Option<(i64, i64)>,
}

/// One instance's billing state.
#[derive(Debug, Clone)]
pub struct Meter {
    mode: Billing,
    starting: bool,
    busy: bool,
    stopping: bool,
    exited: bool,
    /// Start of the billable interval in progress.
    open: Option<i64>,
    /// The open interval's time is accrued up to here.
    accounted: i64,
    /// The latest time seen (time never runs backwards for a meter).
    last: i64,
    accrued: BTreeMap<i64, i64>,
}

impl Meter {
    /// An instance starting at `t` (starting is billable in both modes).
    pub fn new(mode: Billing, t: i64) -> Meter {
        let mut m = Meter {
            mode,
            starting: true,
            busy: false,
            stopping: false,
            exited: false,
            open: None,
            accounted: t,
            last: t,
            accrued: BTreeMap::new(),
        };
        m.update(t);
        m
    }

    pub fn mode(&self) -> Billing {
        self.mode
    }

    /// Whether the instance is billable now.
    pub fn billable(&self) -> bool {
        !self.exited
            && (self.mode == Billing::Instance || self.starting || self.busy || self.stopping)
    }

    /// Whether the instance may have its CPU throttled now: request-based, up and idle.
    pub fn throttled(&self) -> bool {
        !self.billable()
    }

    /// The instance answered its startup probe.
    pub fn ready(&mut self, t: i64) -> Option<(i64, i64)> {
        self.starting = false;
        self.update(t)
    }

    /// The instance went from no request in flight to at least one (`true`), or back.
    pub fn set_busy(&mut self, t: i64, busy: bool) -> Option<(i64, i64)> {
        self.busy = busy;
        self.update(t)
    }

    /// The instance was told to stop (or failed its start and is being stopped).
    pub fn stopping(&mut self, t: i64) -> Option<(i64, i64)> {
        self.stopping = true;
        self.update(t)
    }

    /// The instance's container is gone; nothing is billable after this.
    pub fn exited(&mut self, t: i64) -> Option<(i64, i64)> {
        self.exited = true;
        self.update(t)
    }

    /// Opens or closes the billable interval to match the state; returns a closed interval.
    fn update(&mut self, t: i64) -> Option<(i64, i64)> {
        let t = t.max(self.last);
        self.last = t;
        match (self.open, self.billable()) {
            (None, true) => {
                self.open = Some(t);
                self.accounted = t;
                None
            }
            (Some(s), false) => {
                self.accrue(t);
                let len = t - s;
                // An interval shorter than the clock's resolution still happened.
                let rounding = round_up(len.max(1)) - len;
                *self.accrued.entry(bucket_of(t)).or_default() += rounding;
                self.open = None;
                Some((s, t))
            }
            _ => None,
        }
    }

    /// Accrues the open interval's time up to `to`, split at minute boundaries.
    fn accrue(&mut self, to: i64) {
        let mut from = self.accounted;
        while from < to {
            let minute = bucket_of(from);
            let end = (minute + BUCKET_MS).min(to);
            *self.accrued.entry(minute).or_default() += end - from;
            from = end;
        }
        self.accounted = self.accounted.max(to);
    }

    /// Hands out what accrued since the last take, with the open interval counted up to `t`.
    pub fn take(&mut self, t: i64) -> Accrued {
        let t = t.max(self.last);
        self.last = t;
        let rounding = self.open.map(|s| {
            self.accrue(t);
            let len = t - s;
            (bucket_of(t), round_up(len.max(1)) - len)
        });
        Accrued {
            minutes: std::mem::take(&mut self.accrued).into_iter().collect(),
            rounding,
        }
    }
}

/// An instance's life, in ms since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    pub start: i64,
    /// When it answered its startup probe (`None`: it never did).
    pub ready: Option<i64>,
    /// When it was told to stop (`None`: it exited on its own).
    pub stopping: Option<i64>,
    pub exit: i64,
}

/// What a whole schedule bills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bill {
    /// Maximal billable intervals, unrounded.
    pub intervals: Vec<(i64, i64)>,
    /// Their lengths, each rounded up to [`ROUND_MS`](crate::ROUND_MS), summed.
    pub billable_ms: i64,
    /// Requests handled (billed only in request-based mode).
    pub requests: u64,
}

/// Bills an instance's life and the `(begin, end)` intervals of the requests it handled.
pub fn bill(mode: Billing, life: &Lifecycle, requests: &[(i64, i64)]) -> Bill {
    // At one instant: requests begin before anything else happens and end after, so that
    // back-to-back or overlapping requests make one interval.
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    enum Ev {
        Begin,
        Ready,
        End,
        Stopping,
        Exit,
    }
    let mut evs: Vec<(i64, Ev)> = Vec::new();
    for &(b, e) in requests {
        evs.push((b, Ev::Begin));
        evs.push((e.max(b), Ev::End));
    }
    if let Some(r) = life.ready {
        evs.push((r, Ev::Ready));
    }
    if let Some(s) = life.stopping {
        evs.push((s, Ev::Stopping));
    }
    evs.push((life.exit, Ev::Exit));
    evs.sort();
    let mut m = Meter::new(mode, life.start);
    let mut out = Bill {
        requests: requests.len() as u64,
        ..Bill::default()
    };
    let mut in_flight = 0u64;
    for (t, ev) in evs {
        let t = t.clamp(life.start, life.exit);
        let closed = match ev {
            Ev::Begin => {
                in_flight += 1;
                m.set_busy(t, true)
            }
            Ev::End => {
                in_flight = in_flight.saturating_sub(1);
                m.set_busy(t, in_flight > 0)
            }
            Ev::Ready => m.ready(t),
            Ev::Stopping => m.stopping(t),
            Ev::Exit => m.exited(t),
        };
        if let Some(iv) = closed {
            out.billable_ms += round_up((iv.1 - iv.0).max(1));
            out.intervals.push(iv);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(start: i64, ready: i64, stopping: Option<i64>, exit: i64) -> Lifecycle {
        Lifecycle {
            start,
            ready: Some(ready),
            stopping,
            exit,
        }
    }

    #[test]
    fn sequential_requests_are_each_rounded() {
        // Started at 0, ready at 40 with the first request already there; ten requests of
        // 250 ms, 1 s apart; scaled down at 20 s, gone 5 ms later.
        let reqs: Vec<_> = (0..10).map(|i| (40 + i * 1000, 290 + i * 1000)).collect();
        let b = bill(Billing::Request, &life(0, 40, Some(20_000), 20_005), &reqs);
        assert_eq!(b.requests, 10);
        // Start-up merges with the first request: 0..290 → 300; nine more → 300 each;
        // the shutdown 20 000..20 005 → 100.
        assert_eq!(b.intervals.len(), 11);
        assert_eq!(b.intervals[0], (0, 290));
        assert_eq!(b.billable_ms, 300 + 9 * 300 + 100);
    }

    #[test]
    fn overlapping_and_touching_requests_make_one_interval() {
        let reqs = [(1000, 1500), (1200, 1300), (1500, 1700), (1650, 2010)];
        let b = bill(Billing::Request, &life(0, 100, None, 5000), &reqs);
        assert_eq!(b.intervals, vec![(0, 100), (1000, 2010)]);
        assert_eq!(b.billable_ms, 100 + 1100);
    }

    #[test]
    fn a_burst_of_short_requests_is_one_rounded_interval() {
        let reqs: Vec<_> = (0..100).map(|i| (500 + i, 502 + i)).collect();
        let b = bill(Billing::Request, &life(0, 50, Some(3000), 3000), &reqs);
        assert_eq!(b.intervals, vec![(0, 50), (500, 601), (3000, 3000)]);
        // A zero-length shutdown still counts as one rounded step.
        assert_eq!(b.billable_ms, 100 + 200 + 100);
    }

    #[test]
    fn a_request_spanning_the_shutdown_keeps_it_billable() {
        let reqs = [(1000, 2500)];
        let b = bill(Billing::Request, &life(0, 30, Some(2000), 2600), &reqs);
        assert_eq!(b.intervals, vec![(0, 30), (1000, 2600)]);
        assert_eq!(b.billable_ms, 100 + 1600);
    }

    #[test]
    fn instance_based_bills_the_whole_life() {
        let reqs = [(1000, 1200), (5000, 5100)];
        let b = bill(Billing::Instance, &life(0, 30, Some(9_000), 9_050), &reqs);
        assert_eq!(b.intervals, vec![(0, 9_050)]);
        assert_eq!(b.billable_ms, 9_100);
        assert_eq!(b.requests, 2);
    }

    #[test]
    fn a_failed_start_bills_the_attempt() {
        let b = bill(
            Billing::Request,
            &Lifecycle {
                start: 0,
                ready: None,
                stopping: None,
                exit: 1234,
            },
            &[],
        );
        assert_eq!((b.intervals, b.billable_ms), (vec![(0, 1234)], 1300));
    }

    #[test]
    fn accrual_matches_the_bill_and_splits_at_minutes() {
        let reqs = [(59_950, 60_120), (61_000, 61_001), (119_990, 120_010)];
        let l = life(59_900, 59_910, Some(130_000), 130_002);
        let b = bill(Billing::Request, &l, &reqs);
        // Replay the same events with takes in between, as checkpoints would.
        let mut m = Meter::new(Billing::Request, l.start);
        let mut total: BTreeMap<i64, i64> = BTreeMap::new();
        let mut take = |m: &mut Meter, t| {
            let a = m.take(t);
            for (k, v) in a.minutes {
                *total.entry(k).or_default() += v;
            }
            a.rounding
        };
        m.ready(59_910);
        m.set_busy(59_950, true);
        assert_eq!(take(&mut m, 60_010), Some((60_000, 40)));
        m.set_busy(60_120, false);
        m.set_busy(61_000, true);
        m.set_busy(61_001, false);
        m.set_busy(119_990, true);
        take(&mut m, 120_000);
        m.set_busy(120_010, false);
        m.stopping(130_000);
        m.exited(130_002);
        assert_eq!(take(&mut m, 131_000), None);
        assert_eq!(total.values().sum::<i64>(), b.billable_ms);
        // 59 900..59 910 (→100, rounding lands at its end), 59 950..60 000 in the first minute.
        assert_eq!(total[&0], 10 + 90 + 50);
        assert_eq!(total[&120_000], 10 + 80 + 2 + 98);
    }

    #[test]
    fn time_never_runs_backwards() {
        let mut m = Meter::new(Billing::Request, 1000);
        assert_eq!(m.ready(900), Some((1000, 1000)));
        let a = m.take(500);
        assert_eq!(a.minutes, vec![(0, 100)]);
    }
}
