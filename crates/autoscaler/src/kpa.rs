//! The Knative Pod Autoscaler's decision, as a pure state machine per revision.
//!
//! Feed it the revision's concurrency once a second with [`Kpa::record`] and ask
//! [`Kpa::desired`] how many instances it should have. Time is a [`Duration`] since any epoch
//! the caller likes (virtual time in tests and the simulator); nothing here reads a clock.
//!
//! The rule, after Knative's `pkg/autoscaler/scaling/autoscaler.go`:
//!
//! - the stable average is the mean concurrency over the stable window (60 s), the panic
//!   average over the panic window (10 % of it), both per-second samples;
//! - each desire is `ceil(average / target)`, kept within `[ready / max-scale-down-rate,
//!   ready × max-scale-up-rate]` (with `ready` at least 1);
//! - when the panic desire reaches `panic-threshold-percentage` of the ready instances the
//!   revision panics: the decision is then the larger of both desires and never goes down;
//!   panic ends once a whole stable window has passed without crossing the threshold again;
//! - a revision with no request for the scale-to-zero grace goes to zero (then `min`), as the
//!   serving plane did before; until then it keeps at least one instance;
//! - a non-zero decision is at least `activation-scale`; every decision is within
//!   `[min, max]`.
//!
//! From the serving plane, per revision, once a second (`now` = time since any fixed
//! `Instant`, e.g. the pool's creation):
//!
//! 1. `kpa.record(now, c)` with `c` the requests in flight plus those waiting, averaged over
//!    the past second;
//! 2. `let d = kpa.desired(now, ready)` with `ready` the instances serving (not starting);
//! 3. start `d.desired - (ready + starting)` instances when positive, and stop idle instances
//!    (starting ones first) while `ready + starting > d.desired`.
//!
//! The immediate rule ([`crate::instances_to_start`]) can stay on the request path as a
//! floor: the simulator finds that the KPA with it both waits and costs less than without.

use crate::settings::KpaSettings;
use crate::window::Window;
use std::time::Duration;

/// What [`Kpa::desired`] decided, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Instances the revision should have (ready plus starting), within `[min, max]`.
    pub desired: u64,
    /// Whether the autoscaler is in panic mode (no scale-down).
    pub panicking: bool,
    /// Average concurrency over the stable window.
    pub stable_avg: f64,
    /// Average concurrency over the panic window.
    pub panic_avg: f64,
}

/// One revision's autoscaler: the recent samples (two fixed rings, at most one bucket per
/// second of the stable window) and the panic state.
#[derive(Debug, Clone)]
pub struct Kpa {
    settings: KpaSettings,
    stable: Window,
    panic: Window,
    /// When the panic threshold was last crossed, while panicking.
    panic_time: Option<Duration>,
    /// The highest decision since panic began.
    max_panic: u64,
    /// The latest time a sample showed any concurrency.
    last_active: Option<Duration>,
    last: Option<Decision>,
}

/// `ceil` that does not turn 10.000000000000002 into 11.
fn ceil(x: f64) -> f64 {
    (x - 1e-9).ceil().max(0.0)
}

impl Kpa {
    /// A fresh autoscaler: no samples, not panicking, never active.
    pub fn new(settings: KpaSettings) -> Self {
        Kpa {
            stable: Window::new(settings.stable_secs()),
            panic: Window::new(settings.panic_secs()),
            settings,
            panic_time: None,
            max_panic: 0,
            last_active: None,
            last: None,
        }
    }

    /// An autoscaler taking over a revision that already has `ready` instances (after a
    /// restart, say). As Knative does, it starts in panic mode when there is more than one,
    /// so that it holds them until it has a window of data, and counts as active at `now`.
    pub fn resume(settings: KpaSettings, now: Duration, ready: u64) -> Self {
        let mut k = Kpa::new(settings);
        k.last_active = Some(now);
        if ready > 1 {
            k.panic_time = Some(now);
            k.max_panic = ready;
        }
        k
    }

    pub fn settings(&self) -> &KpaSettings {
        &self.settings
    }

    /// Replaces the settings (a new revision template, or min-instances that only apply while
    /// the revision receives traffic). Samples are kept; when a window's length changes, the
    /// samples that still fit are carried over.
    pub fn set_settings(&mut self, settings: KpaSettings) {
        if settings.stable_secs() != self.settings.stable_secs()
            || settings.panic_secs() != self.settings.panic_secs()
        {
            let mut stable = Window::new(settings.stable_secs());
            let mut panic = Window::new(settings.panic_secs());
            for (sec, v) in self.stable.samples() {
                stable.record(sec, v);
                panic.record(sec, v);
            }
            self.stable = stable;
            self.panic = panic;
        }
        self.settings = settings;
    }

    /// The latest decision, if any.
    pub fn last_decision(&self) -> Option<Decision> {
        self.last
    }

    /// Records the revision's concurrency for the second containing `now`: the requests in
    /// flight plus those waiting for an instance, averaged over the past second (so that a
    /// short request still shows). Several records in one second keep the largest; a record
    /// for an earlier second than the latest is ignored.
    pub fn record(&mut self, now: Duration, concurrency: f64) {
        let sec = now.as_secs();
        let v = Window::to_fixed(concurrency);
        self.stable.record(sec, v);
        self.panic.record(sec, v);
        if v > 0 && self.last_active.is_none_or(|t| t < now) {
            self.last_active = Some(now);
        }
    }

    /// How long the revision has had no concurrency at `now` (`None`: never had any).
    pub fn idle_for(&self, now: Duration) -> Option<Duration> {
        self.last_active.map(|t| now.saturating_sub(t))
    }

    /// The number of instances the revision should have at `now`, given `ready` instances
    /// that are serving (starting ones excluded).
    pub fn desired(&mut self, now: Duration, ready: u64) -> Decision {
        let s = &self.settings;
        let sec = now.as_secs();
        let stable_avg = self.stable.average(sec);
        let panic_avg = self.panic.average(sec);

        let ready_f = ready.max(1) as f64;
        let max_up = (s.max_scale_up_rate * ready_f).ceil();
        let max_down = (ready_f / s.max_scale_down_rate).floor();
        let stable_want = ceil(stable_avg / s.target);
        let panic_want = ceil(panic_avg / s.target);
        let stable_pods = stable_want.max(max_down).min(max_up) as u64;
        let panic_pods = panic_want.max(max_down).min(max_up) as u64;

        let over_threshold = panic_want / ready_f >= s.panic_threshold_percentage / 100.0;
        if over_threshold {
            // Start panicking, or stay in panic for another stable window.
            self.panic_time = Some(now);
        } else if self.panic_time.is_some_and(|t| t + s.stable_window < now) {
            self.panic_time = None;
            self.max_panic = 0;
        }

        let mut want = stable_pods;
        if self.panic_time.is_some() {
            want = want.max(panic_pods).max(self.max_panic);
            self.max_panic = want;
        }

        let idle = self
            .idle_for(now)
            .is_none_or(|d| d >= s.scale_to_zero_grace);
        if idle {
            want = 0;
            self.panic_time = None;
            self.max_panic = 0;
        } else {
            want = want.max(1);
        }
        if want > 0 {
            want = want.max(s.activation_scale);
        }
        let want = want.clamp(s.min, s.max.max(s.min));
        let d = Decision {
            desired: want,
            panicking: self.panic_time.is_some(),
            stable_avg,
            panic_avg,
        };
        self.last = Some(d);
        d
    }
}

#[cfg(test)]
mod tests;
