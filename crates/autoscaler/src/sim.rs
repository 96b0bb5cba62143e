//! A simulator that replays synthetic traffic for many services through the real [`Kpa`] in
//! virtual time, with a model of instance start-up, and reports what it cost (instance-seconds,
//! against an ideal) and what users felt (requests that waited for an instance).
//!
//! The model works in one-second steps, as a fluid per service:
//!
//! - requests arrive as a Poisson process whose rate follows the service's [`Shape`] (steps,
//!   spikes, ramps, sawtooth, a diurnal sine, random bursts); each takes `request_secs` of one
//!   of an instance's `concurrency` slots, so a ready instance serves
//!   `concurrency / request_secs` requests a second; an instance that becomes ready within a
//!   second serves for the rest of it;
//! - requests beyond what the ready instances serve wait, first come first served; a request
//!   "waited" when it could not be served in the second it arrived;
//! - the autoscaler sees, each second, the requests in flight plus those waiting (what the
//!   serving plane feeds [`Kpa::record`]) and its decision takes effect at once: new
//!   instances are ready after a start-up delay drawn from [`Startup`], surplus ones stop
//!   (those still starting first);
//! - every instance alive during a second (starting or ready) costs an instance-second; the
//!   ideal is, each second, the fewest instances that could hold that second's concurrency
//!   at their hard limit with no start-up delay: `ceil(arrivals × request_secs / concurrency)`.
//!
//! Every service draws its shape, its numbers and its arrivals from its own RNG seeded from
//! the run's seed and its index, so a run is reproducible and independent of thread count.

use crate::{Defaults, Kpa, KpaSettings};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt::Write as _;
use std::time::Duration;

/// A service's request rate (requests per second) over time.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    Steady {
        rate: f64,
    },
    /// `before` until `at` seconds, then `after`.
    Step {
        before: f64,
        after: f64,
        at: f64,
    },
    /// `base`, with `peak` from `at` for `len` seconds.
    Spike {
        base: f64,
        peak: f64,
        at: f64,
        len: f64,
    },
    /// `from` until `start`, linearly to `to` at `end`, then `to`.
    Ramp {
        from: f64,
        to: f64,
        start: f64,
        end: f64,
    },
    /// Rises linearly from `low` to `high` over each `period`, then drops back.
    Sawtooth {
        low: f64,
        high: f64,
        period: f64,
    },
    /// `mean + amplitude × sin(2π t / period + phase)`.
    Diurnal {
        mean: f64,
        amplitude: f64,
        period: f64,
        phase: f64,
    },
    /// `base`, and `peak` during each `(start, end)` interval (seconds).
    Bursts {
        base: f64,
        peak: f64,
        bursts: Vec<(f64, f64)>,
    },
}

/// The kinds of [`Shape`], for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Steady,
    Step,
    Spike,
    Ramp,
    Sawtooth,
    Diurnal,
    Bursts,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Steady,
        Kind::Step,
        Kind::Spike,
        Kind::Ramp,
        Kind::Sawtooth,
        Kind::Diurnal,
        Kind::Bursts,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Steady => "steady",
            Kind::Step => "step",
            Kind::Spike => "spike",
            Kind::Ramp => "ramp",
            Kind::Sawtooth => "sawtooth",
            Kind::Diurnal => "diurnal",
            Kind::Bursts => "bursts",
        }
    }
}

impl Shape {
    pub fn kind(&self) -> Kind {
        match self {
            Shape::Steady { .. } => Kind::Steady,
            Shape::Step { .. } => Kind::Step,
            Shape::Spike { .. } => Kind::Spike,
            Shape::Ramp { .. } => Kind::Ramp,
            Shape::Sawtooth { .. } => Kind::Sawtooth,
            Shape::Diurnal { .. } => Kind::Diurnal,
            Shape::Bursts { .. } => Kind::Bursts,
        }
    }

    /// The request rate at `t` seconds.
    pub fn rate(&self, t: f64) -> f64 {
        let r = match self {
            Shape::Steady { rate } => *rate,
            Shape::Step { before, after, at } => {
                if t < *at {
                    *before
                } else {
                    *after
                }
            }
            Shape::Spike {
                base,
                peak,
                at,
                len,
            } => {
                if t >= *at && t < at + len {
                    *peak
                } else {
                    *base
                }
            }
            Shape::Ramp {
                from,
                to,
                start,
                end,
            } => {
                if t <= *start {
                    *from
                } else if t >= *end {
                    *to
                } else {
                    from + (to - from) * (t - start) / (end - start)
                }
            }
            Shape::Sawtooth { low, high, period } => low + (high - low) * (t % period) / period,
            Shape::Diurnal {
                mean,
                amplitude,
                period,
                phase,
            } => mean + amplitude * (std::f64::consts::TAU * t / period + phase).sin(),
            Shape::Bursts { base, peak, bursts } => {
                if bursts.iter().any(|&(s, e)| t >= s && t < e) {
                    *peak
                } else {
                    *base
                }
            }
        };
        r.max(0.0)
    }

    /// The highest rate the shape reaches.
    pub fn peak(&self) -> f64 {
        match self {
            Shape::Steady { rate } => *rate,
            Shape::Step { before, after, .. } => before.max(*after),
            Shape::Spike { base, peak, .. } => base.max(*peak),
            Shape::Ramp { from, to, .. } => from.max(*to),
            Shape::Sawtooth { low, high, .. } => low.max(*high),
            Shape::Diurnal {
                mean, amplitude, ..
            } => mean + amplitude.abs(),
            Shape::Bursts { base, peak, .. } => base.max(*peak),
        }
    }

    /// Multiplies every rate by `f`.
    pub fn scale(&mut self, f: f64) {
        match self {
            Shape::Steady { rate } => *rate *= f,
            Shape::Step { before, after, .. } => {
                *before *= f;
                *after *= f;
            }
            Shape::Spike { base, peak, .. } => {
                *base *= f;
                *peak *= f;
            }
            Shape::Ramp { from, to, .. } => {
                *from *= f;
                *to *= f;
            }
            Shape::Sawtooth { low, high, .. } => {
                *low *= f;
                *high *= f;
            }
            Shape::Diurnal {
                mean, amplitude, ..
            } => {
                *mean *= f;
                *amplitude *= f;
            }
            Shape::Bursts { base, peak, .. } => {
                *base *= f;
                *peak *= f;
            }
        }
    }
}

/// One simulated service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub shape: Shape,
    /// Seconds one request holds an instance slot.
    pub request_secs: f64,
    /// Requests one instance serves at once (containerConcurrency).
    pub concurrency: u64,
    pub min: u64,
    pub max: u64,
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    (lo.ln() + rng.gen::<f64>() * (hi.ln() - lo.ln())).exp()
}

impl Service {
    /// A random service of `kind` for a run of `seconds`: Cloud Run–like numbers (mostly
    /// concurrency 80, requests of 20 ms to 1 s, 0.02 to 50 requests a second at the base, one
    /// in ten with min-instances 1, max-instances 100), its peak kept within half of what
    /// max-instances can hold at their hard limit.
    pub fn random(rng: &mut StdRng, kind: Kind, seconds: u64) -> Service {
        let secs = seconds.max(1) as f64;
        let concurrency = match rng.gen_range(0..20) {
            0..=1 => 1,
            2..=4 => 10,
            5..=16 => 80,
            _ => 250,
        };
        let request_secs = log_uniform(rng, 0.02, 1.0);
        let base = log_uniform(rng, 0.02, 50.0);
        let min = u64::from(rng.gen_range(0..10) == 0);
        let max = 100;
        let mut shape = match kind {
            Kind::Steady => Shape::Steady { rate: base },
            Kind::Step => {
                let f = rng.gen_range(3.0..10.0);
                let after = if rng.gen_bool(0.5) {
                    base * f
                } else {
                    base / f
                };
                Shape::Step {
                    before: base,
                    after,
                    at: secs * rng.gen_range(0.2..0.8),
                }
            }
            Kind::Spike => Shape::Spike {
                base,
                peak: base * rng.gen_range(5.0..20.0),
                at: secs * rng.gen_range(0.2..0.7),
                len: rng.gen_range(5.0..30.0),
            },
            Kind::Ramp => {
                let start = secs * rng.gen_range(0.0..0.3);
                Shape::Ramp {
                    from: base * 0.1,
                    to: base * rng.gen_range(3.0..10.0),
                    start,
                    end: start + secs * rng.gen_range(0.3..0.6),
                }
            }
            Kind::Sawtooth => Shape::Sawtooth {
                low: base * 0.2,
                high: base * rng.gen_range(2.0..5.0),
                period: rng.gen_range(20.0..120.0),
            },
            Kind::Diurnal => Shape::Diurnal {
                mean: base,
                amplitude: base * rng.gen_range(0.5..0.95),
                period: secs,
                phase: rng.gen_range(0.0..std::f64::consts::TAU),
            },
            Kind::Bursts => {
                let mut bursts = vec![];
                let mut t = 0.0;
                loop {
                    // Gaps exponential with a mean of 90 s, bursts of 5 to 30 s.
                    t += -90.0 * (1.0 - rng.gen::<f64>()).ln();
                    if t >= secs {
                        break;
                    }
                    let len = rng.gen_range(5.0..30.0);
                    bursts.push((t, t + len));
                    t += len;
                }
                Shape::Bursts {
                    base: if rng.gen_bool(0.5) { 0.0 } else { base * 0.05 },
                    peak: base * rng.gen_range(2.0..10.0),
                    bursts,
                }
            }
        };
        let cap = 0.5 * max as f64 * concurrency as f64 / request_secs;
        if shape.peak() > cap {
            shape.scale(cap / shape.peak());
        }
        Service {
            shape,
            request_secs,
            concurrency,
            min,
            max,
        }
    }
}

/// How long an instance takes from being asked for to serving: uniform in `[min, max]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Startup {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Startup {
    /// 1 to 3 s: a typical application's own start-up (Skiff's share is about 30 ms).
    fn default() -> Self {
        Startup {
            min: Duration::from_secs(1),
            max: Duration::from_secs(3),
        }
    }
}

impl Startup {
    fn sample(&self, rng: &mut StdRng) -> f64 {
        let (lo, hi) = (self.min.as_secs_f64(), self.max.as_secs_f64());
        if hi > lo {
            rng.gen_range(lo..hi)
        } else {
            lo
        }
    }
}

/// What decides the instance count each second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The KPA's decision alone.
    Kpa,
    /// The KPA's decision, raised to what the requests in flight and waiting need at the
    /// hard concurrency limit (the serving plane's immediate rule, [`crate::instances_to_start`]).
    KpaReactive,
    /// Only the serving plane's former rule: start what the requests need; an instance stops
    /// once it has served nothing for the scale-to-zero grace. With least-loaded balancing an
    /// instance stays busy while the concurrency reaches it, so this keeps, over the grace,
    /// the highest count the concurrency used.
    Legacy,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Kpa, Policy::KpaReactive, Policy::Legacy];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Kpa => "kpa",
            Policy::KpaReactive => "kpa+reactive",
            Policy::Legacy => "legacy",
        }
    }
}

/// A simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub services: usize,
    pub seconds: u64,
    pub seed: u64,
    /// Server-wide autoscaler settings every service starts from.
    pub defaults: Defaults,
    pub startup: Startup,
    pub policy: Policy,
    /// Shapes to draw services from, in turn (service `i` gets `kinds[i % len]`).
    pub kinds: Vec<Kind>,
    /// Worker threads (0: one per CPU). The result does not depend on it.
    pub threads: usize,
}

impl SimConfig {
    pub fn new(services: usize, seconds: u64, seed: u64) -> Self {
        SimConfig {
            services,
            seconds,
            seed,
            defaults: Defaults::default(),
            startup: Startup::default(),
            policy: Policy::Kpa,
            kinds: Kind::ALL.to_vec(),
            threads: 0,
        }
    }
}

/// Totals for a group of services.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub services: u64,
    pub requests: u64,
    pub requests_waited: u64,
    pub instance_seconds: u64,
    pub ideal_instance_seconds: u64,
    /// Instances started.
    pub cold_starts: u64,
    /// Request-seconds spent waiting.
    pub wait_seconds: f64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.services += o.services;
        self.requests += o.requests;
        self.requests_waited += o.requests_waited;
        self.instance_seconds += o.instance_seconds;
        self.ideal_instance_seconds += o.ideal_instance_seconds;
        self.cold_starts += o.cold_starts;
        self.wait_seconds += o.wait_seconds;
    }

    /// Fraction of requests that waited.
    pub fn waited_fraction(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.requests_waited as f64 / self.requests as f64
        }
    }

    /// Instance-seconds used per ideal instance-second.
    pub fn cost_ratio(&self) -> f64 {
        if self.ideal_instance_seconds == 0 {
            0.0
        } else {
            self.instance_seconds as f64 / self.ideal_instance_seconds as f64
        }
    }
}

/// What a run cost and how it served.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub policy: Policy,
    pub instance_seconds: u64,
    pub ideal_instance_seconds: u64,
    pub requests: u64,
    pub requests_waited: u64,
    /// Most instances (starting or ready) alive at once, across all services.
    pub peak_instances: u64,
    /// Service-seconds with more instances than the service's max (should be 0).
    pub max_violations: u64,
    pub cold_starts: u64,
    /// Service-seconds spent in panic mode.
    pub panic_seconds: u64,
    /// Request-seconds spent waiting.
    pub wait_seconds: f64,
    /// The same totals per shape of traffic.
    pub by_kind: Vec<(Kind, Stats)>,
}

impl Report {
    pub fn total(&self) -> Stats {
        let mut s = Stats::default();
        for (_, k) in &self.by_kind {
            s.add(k);
        }
        s
    }

    /// Fraction of requests that waited.
    pub fn waited_fraction(&self) -> f64 {
        self.total().waited_fraction()
    }

    /// Instance-seconds used per ideal instance-second.
    pub fn cost_ratio(&self) -> f64 {
        self.total().cost_ratio()
    }

    /// A markdown table of the totals per kind of traffic, then all of them.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str(TABLE_HEAD);
        for (k, s) in &self.by_kind {
            row(&mut out, k.name(), s, None);
        }
        row(
            &mut out,
            "**all**",
            &self.total(),
            Some(self.peak_instances),
        );
        out
    }
}

const TABLE_HEAD: &str = "| | services | requests | waited | mean wait | instance-s | ideal instance-s | ratio | cold starts | peak instances |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";

fn row(out: &mut String, name: &str, s: &Stats, peak: Option<u64>) {
    let mean_wait = if s.requests_waited == 0 {
        0.0
    } else {
        s.wait_seconds / s.requests_waited as f64
    };
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} ({:.2} %) | {:.2} s | {} | {} | {:.2} | {} | {} |",
        s.services,
        s.requests,
        s.requests_waited,
        100.0 * s.waited_fraction(),
        mean_wait,
        s.instance_seconds,
        s.ideal_instance_seconds,
        s.cost_ratio(),
        s.cold_starts,
        peak.map_or("".to_string(), |p| p.to_string()),
    );
}

/// A markdown table comparing the totals of several runs (one row per run, named by policy).
pub fn compare(reports: &[Report]) -> String {
    let mut out = String::from(TABLE_HEAD).replacen("| |", "| policy |", 1);
    for r in reports {
        row(
            &mut out,
            r.policy.name(),
            &r.total(),
            Some(r.peak_instances),
        );
    }
    out
}

/// Simulates `services` services (every shape in turn) for `seconds` virtual seconds under
/// the KPA with default settings.
pub fn simulate(services: usize, seconds: u64, seed: u64) -> Report {
    simulate_with(&SimConfig::new(services, seconds, seed))
}

/// What one worker found.
struct Part {
    by_kind: Vec<Stats>,
    per_second: Vec<u64>,
    max_violations: u64,
    panic_seconds: u64,
}

/// Runs a simulation as configured.
pub fn simulate_with(cfg: &SimConfig) -> Report {
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, cfg.services.max(1));
    let chunk = cfg.services.div_ceil(threads).max(1);
    let parts: Vec<Part> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let range = (t * chunk).min(cfg.services)..((t + 1) * chunk).min(cfg.services);
                scope.spawn(move || run_part(cfg, range))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation worker panicked"))
            .collect()
    });
    let mut by_kind = vec![Stats::default(); Kind::ALL.len()];
    let mut per_second = vec![0u64; cfg.seconds as usize];
    let (mut max_violations, mut panic_seconds) = (0, 0);
    for p in &parts {
        for (a, b) in by_kind.iter_mut().zip(&p.by_kind) {
            a.add(b);
        }
        for (a, b) in per_second.iter_mut().zip(&p.per_second) {
            *a += b;
        }
        max_violations += p.max_violations;
        panic_seconds += p.panic_seconds;
    }
    let by_kind: Vec<(Kind, Stats)> = Kind::ALL
        .iter()
        .copied()
        .zip(by_kind)
        .filter(|(_, s)| s.services > 0)
        .collect();
    let mut total = Stats::default();
    for (_, s) in &by_kind {
        total.add(s);
    }
    Report {
        policy: cfg.policy,
        instance_seconds: total.instance_seconds,
        ideal_instance_seconds: total.ideal_instance_seconds,
        requests: total.requests,
        requests_waited: total.requests_waited,
        peak_instances: per_second.iter().copied().max().unwrap_or(0),
        max_violations,
        cold_starts: total.cold_starts,
        panic_seconds,
        wait_seconds: total.wait_seconds,
        by_kind,
    }
}

/// Seed of service `i`'s RNG.
fn service_seed(seed: u64, i: usize) -> u64 {
    // SplitMix64 of the pair, so neighbouring services get unrelated streams.
    let mut z = seed
        ^ (i as u64)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn run_part(cfg: &SimConfig, services: std::ops::Range<usize>) -> Part {
    let mut part = Part {
        by_kind: vec![Stats::default(); Kind::ALL.len()],
        per_second: vec![0; cfg.seconds as usize],
        max_violations: 0,
        panic_seconds: 0,
    };
    let kinds = if cfg.kinds.is_empty() {
        &Kind::ALL[..]
    } else {
        &cfg.kinds[..]
    };
    for i in services {
        // Traffic and start-up delays draw from separate streams, so that every policy sees
        // the same requests.
        let mut rng = StdRng::seed_from_u64(service_seed(cfg.seed, i));
        let mut startup_rng = StdRng::seed_from_u64(service_seed(!cfg.seed, i));
        let kind = kinds[i % kinds.len()];
        let svc = Service::random(&mut rng, kind, cfg.seconds);
        let s = run_service(cfg, &svc, &mut rng, &mut startup_rng, &mut part);
        part.by_kind[kind as usize].add(&s);
    }
    part
}

/// A Poisson-distributed count with mean `lambda` (Knuth's method below 30, a normal
/// approximation above).
fn poisson(rng: &mut StdRng, lambda: f64) -> u64 {
    if lambda <= 0.0 {
        return 0;
    }
    if lambda < 30.0 {
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p: f64 = rng.gen();
        while p > l {
            k += 1;
            p *= rng.gen::<f64>();
        }
        k
    } else {
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (lambda + lambda.sqrt() * z + 0.5).floor().max(0.0) as u64
    }
}

/// Replays one service; adds its instances per second to `part`.
fn run_service(
    cfg: &SimConfig,
    svc: &Service,
    rng: &mut StdRng,
    startup_rng: &mut StdRng,
    part: &mut Part,
) -> Stats {
    let mut settings = KpaSettings::from_defaults(svc.concurrency, &cfg.defaults);
    settings.min = svc.min;
    settings.max = svc.max;
    let grace_secs = settings.scale_to_zero_grace.as_secs().max(1) as usize;
    let mut kpa = Kpa::new(settings);
    let cc = svc.concurrency as f64;
    let d = svc.request_secs;

    let mut s = Stats {
        services: 1,
        ..Stats::default()
    };
    let mut ready: u64 = 0;
    // Ready times (seconds) of instances still starting.
    let mut starting: Vec<f64> = vec![];
    let mut waiting = 0.0f64;
    let mut waited = 0.0f64;
    // Legacy policy: instances the concurrency used, over the last grace seconds.
    let mut used = vec![
        0u64;
        if cfg.policy == Policy::Legacy {
            grace_secs
        } else {
            0
        }
    ];

    for t in 0..cfg.seconds {
        let tf = t as f64;
        let alive = ready + starting.len() as u64;
        s.instance_seconds += alive;
        part.per_second[t as usize] += alive;
        if alive > svc.max {
            part.max_violations += 1;
        }

        // Traffic during [t, t+1).
        let arrivals = poisson(rng, svc.shape.rate(tf + 0.5));
        let a = arrivals as f64;
        let serving: f64 = ready as f64
            + starting
                .iter()
                .map(|&r| (tf + 1.0 - r).clamp(0.0, 1.0))
                .sum::<f64>();
        let capacity = serving * cc / d;
        let admitted_new = (capacity - waiting).clamp(0.0, a);
        waited += a - admitted_new;
        let queue = waiting + a;
        let served = queue.min(capacity);
        waiting = queue - served;
        s.wait_seconds += waiting;
        s.requests += arrivals;
        s.ideal_instance_seconds += (a * d / cc - 1e-9).ceil().max(0.0) as u64;
        let concurrency = served * d + waiting;

        // The decision at t+1.
        let now = Duration::from_secs(t + 1);
        let end = tf + 1.0;
        let before = starting.len();
        starting.retain(|&r| r > end);
        ready += (before - starting.len()) as u64;
        let alive = ready + starting.len() as u64;
        let need = (concurrency / cc - 1e-9).ceil().max(0.0) as u64;
        let target = match cfg.policy {
            Policy::Kpa | Policy::KpaReactive => {
                kpa.record(now, concurrency);
                let dec = kpa.desired(now, ready);
                if dec.panicking {
                    part.panic_seconds += 1;
                }
                if cfg.policy == Policy::KpaReactive {
                    dec.desired.max(need.min(svc.max))
                } else {
                    dec.desired
                }
            }
            Policy::Legacy => {
                used[t as usize % grace_secs] = alive.min(concurrency.ceil() as u64);
                let keep = used.iter().copied().max().unwrap_or(0);
                need.max(keep.min(alive)).clamp(svc.min, svc.max)
            }
        };
        if target > alive {
            for _ in alive..target {
                starting.push(end + cfg.startup.sample(startup_rng));
            }
            s.cold_starts += target - alive;
        } else {
            let mut extra = alive - target;
            while extra > 0 && starting.pop().is_some() {
                extra -= 1;
            }
            ready -= extra;
        }
    }
    s.requests_waited = waited.round() as u64;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(services: usize, seconds: u64, edit: impl FnOnce(&mut SimConfig)) -> SimConfig {
        let mut c = SimConfig::new(services, seconds, 7);
        edit(&mut c);
        c
    }

    #[test]
    fn shapes() {
        let cases: Vec<(Shape, Vec<(f64, f64)>)> = vec![
            (Shape::Steady { rate: 3.0 }, vec![(0.0, 3.0), (1e6, 3.0)]),
            (
                Shape::Step {
                    before: 1.0,
                    after: 5.0,
                    at: 10.0,
                },
                vec![(9.9, 1.0), (10.0, 5.0)],
            ),
            (
                Shape::Spike {
                    base: 1.0,
                    peak: 9.0,
                    at: 10.0,
                    len: 5.0,
                },
                vec![(9.0, 1.0), (10.0, 9.0), (14.9, 9.0), (15.0, 1.0)],
            ),
            (
                Shape::Ramp {
                    from: 0.0,
                    to: 10.0,
                    start: 10.0,
                    end: 20.0,
                },
                vec![(0.0, 0.0), (15.0, 5.0), (30.0, 10.0)],
            ),
            (
                Shape::Sawtooth {
                    low: 2.0,
                    high: 4.0,
                    period: 10.0,
                },
                vec![(0.0, 2.0), (5.0, 3.0), (10.0, 2.0)],
            ),
            (
                Shape::Diurnal {
                    mean: 2.0,
                    amplitude: 3.0,
                    period: 40.0,
                    phase: 0.0,
                },
                vec![(0.0, 2.0), (10.0, 5.0), (30.0, 0.0)],
            ),
            (
                Shape::Bursts {
                    base: 0.0,
                    peak: 4.0,
                    bursts: vec![(5.0, 6.0)],
                },
                vec![(4.0, 0.0), (5.5, 4.0), (6.0, 0.0)],
            ),
        ];
        for (shape, at) in cases {
            for (t, want) in at {
                let got = shape.rate(t);
                assert!((got - want).abs() < 1e-9, "{shape:?} at {t}: {got}");
                assert!(got <= shape.peak() + 1e-9, "{shape:?} at {t}");
            }
        }
    }

    #[test]
    fn poisson_mean() {
        let mut rng = StdRng::seed_from_u64(1);
        for lambda in [0.0, 0.5, 5.0, 29.0, 100.0] {
            let n = 4000;
            let sum: u64 = (0..n).map(|_| poisson(&mut rng, lambda)).sum();
            let mean = sum as f64 / n as f64;
            assert!(
                (mean - lambda).abs() <= 0.1 + 0.05 * lambda,
                "lambda {lambda}: mean {mean}"
            );
        }
    }

    #[test]
    fn invariants() {
        // (config, most waited fraction allowed)
        let cases: Vec<(SimConfig, f64)> = vec![
            (cfg(200, 300, |_| {}), 0.10),
            (cfg(200, 300, |c| c.policy = Policy::KpaReactive), 0.10),
            (cfg(200, 300, |c| c.policy = Policy::Legacy), 0.10),
            // Steady traffic waits only for the first cold start and the odd Poisson burst.
            (cfg(100, 300, |c| c.kinds = vec![Kind::Steady]), 0.02),
            (
                cfg(100, 300, |c| {
                    c.kinds = vec![Kind::Steady, Kind::Diurnal];
                    c.policy = Policy::KpaReactive;
                }),
                0.02,
            ),
        ];
        for (c, most_waited) in cases {
            let r = simulate_with(&c);
            let ctx = format!("{:?} {:?}:\n{}", c.policy, c.kinds, r.markdown());
            assert!(r.requests > 0, "{ctx}");
            assert!(
                r.instance_seconds as f64 >= 0.9 * r.ideal_instance_seconds as f64,
                "{ctx}"
            );
            assert!(r.waited_fraction() <= most_waited, "{ctx}");
            assert_eq!(r.max_violations, 0, "{ctx}");
            assert!(r.peak_instances <= 100 * c.services as u64, "{ctx}");
            assert_eq!(r.total().instance_seconds, r.instance_seconds, "{ctx}");
            assert_eq!(r.total().services, c.services as u64, "{ctx}");
        }
    }

    #[test]
    fn reproducible() {
        let one = simulate_with(&cfg(40, 120, |c| c.threads = 1));
        let three = simulate_with(&cfg(40, 120, |c| c.threads = 3));
        assert_eq!(one, three);
        let other = simulate_with(&cfg(40, 120, |c| c.seed = 8));
        assert_ne!(one.requests, other.requests);
        assert_eq!(simulate(40, 120, 7), one);
    }

    #[test]
    fn policies_see_the_same_requests() {
        let runs: Vec<Report> = Policy::ALL
            .iter()
            .map(|&p| simulate_with(&cfg(30, 120, |c| c.policy = p)))
            .collect();
        for r in &runs[1..] {
            assert_eq!(r.requests, runs[0].requests);
            assert_eq!(r.ideal_instance_seconds, runs[0].ideal_instance_seconds);
        }
    }

    #[test]
    fn kpa_scales_down_where_legacy_does_not() {
        // Spikes and down-steps: the legacy rule keeps the peak while traffic goes on.
        let kinds = vec![Kind::Spike, Kind::Step];
        let kpa = simulate_with(&cfg(100, 300, |c| c.kinds = kinds.clone()));
        let legacy = simulate_with(&cfg(100, 300, |c| {
            c.kinds = kinds.clone();
            c.policy = Policy::Legacy;
        }));
        assert!(
            kpa.instance_seconds < legacy.instance_seconds,
            "{}",
            compare(&[kpa, legacy])
        );
    }

    #[test]
    fn markdown() {
        let r = simulate(14, 30, 1);
        let md = r.markdown();
        assert!(md.starts_with("| | services |"), "{md}");
        for k in Kind::ALL {
            assert!(md.contains(&format!("| {} | 2 |", k.name())), "{md}");
        }
        assert!(md.contains("| **all** | 14 |"), "{md}");
        let cmp = compare(&[r]);
        assert!(cmp.contains("| kpa | 14 |"), "{cmp}");
    }
}
