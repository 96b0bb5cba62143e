//! Trace tests of the KPA in virtual time: each case replays a load (concurrency per second)
//! through a [`Kpa`] and a pool whose instances become ready a fixed number of ticks after
//! they are asked for, then checks the decisions over time ranges.

use super::*;
use crate::settings::Defaults;
use std::ops::RangeInclusive;

/// What one tick looked like.
#[derive(Debug, Clone, Copy)]
struct Tick {
    ready: u64,
    d: Decision,
}

enum Expect {
    /// For every second in the range: desired within `desired`, panic state as given.
    Range {
        secs: RangeInclusive<u64>,
        desired: RangeInclusive<u64>,
        panicking: Option<bool>,
    },
    /// Exact decisions from a second on.
    Seq { from: u64, desired: Vec<u64> },
    /// The decision never goes down within the range.
    NoDecrease(RangeInclusive<u64>),
    /// Scale-down is rate-limited: every decision is at least `ready / rate` (floored).
    DownRate(RangeInclusive<u64>, f64),
    /// The decision changes at most `n` times within the range.
    MaxChanges(RangeInclusive<u64>, usize),
}

fn range(secs: RangeInclusive<u64>, desired: RangeInclusive<u64>) -> Expect {
    Expect::Range {
        secs,
        desired,
        panicking: None,
    }
}

fn range_p(secs: RangeInclusive<u64>, desired: RangeInclusive<u64>, panicking: bool) -> Expect {
    Expect::Range {
        secs,
        desired,
        panicking: Some(panicking),
    }
}

struct Case {
    name: &'static str,
    settings: KpaSettings,
    load: Box<dyn Fn(u64) -> f64>,
    seconds: u64,
    /// Ticks from asking for an instance to its being ready (at least 1: the next tick).
    startup: u64,
    /// Start with this many ready instances, through [`Kpa::resume`].
    resume: Option<u64>,
    expect: Vec<Expect>,
}

/// Containers of concurrency 10 at 70 % utilization: a target of 7 per instance; stable window
/// 60 s, panic window 6 s, grace 60 s, max 100.
fn settings(edit: impl FnOnce(&mut KpaSettings)) -> KpaSettings {
    let mut s = KpaSettings::from_defaults(10, &Defaults::default());
    edit(&mut s);
    s
}

fn case(name: &'static str, load: impl Fn(u64) -> f64 + 'static) -> Case {
    Case {
        name,
        settings: settings(|_| {}),
        load: Box::new(load),
        seconds: 400,
        startup: 1,
        resume: None,
        expect: vec![],
    }
}

impl Case {
    fn with(mut self, edit: impl FnOnce(&mut KpaSettings)) -> Self {
        edit(&mut self.settings);
        self
    }
    fn startup(mut self, ticks: u64) -> Self {
        self.startup = ticks;
        self
    }
    fn resume(mut self, ready: u64) -> Self {
        self.resume = Some(ready);
        self
    }
    fn expect(mut self, e: Vec<Expect>) -> Self {
        self.expect = e;
        self
    }
}

/// Replays a case: record, decide, then start or stop instances to match the decision.
fn run(c: &Case) -> Vec<Tick> {
    let mut kpa = match c.resume {
        Some(r) => Kpa::resume(c.settings.clone(), Duration::ZERO, r),
        None => Kpa::new(c.settings.clone()),
    };
    let mut ready = c.resume.unwrap_or(0);
    // (ready at tick, count), in order of request.
    let mut pending: Vec<(u64, u64)> = vec![];
    let mut ticks = vec![];
    for t in 0..c.seconds {
        let now = Duration::from_secs(t);
        ready += pending
            .iter()
            .filter(|p| p.0 <= t)
            .map(|p| p.1)
            .sum::<u64>();
        pending.retain(|p| p.0 > t);
        kpa.record(now, (c.load)(t));
        let d = kpa.desired(now, ready);
        ticks.push(Tick { ready, d });
        let total = ready + pending.iter().map(|p| p.1).sum::<u64>();
        if d.desired > total {
            pending.push((t + c.startup.max(1), d.desired - total));
        } else {
            let mut extra = total - d.desired;
            while extra > 0 {
                match pending.last_mut() {
                    Some(p) if p.1 > extra => {
                        p.1 -= extra;
                        extra = 0;
                    }
                    Some(p) => {
                        extra -= p.1;
                        pending.pop();
                    }
                    None => {
                        ready -= extra;
                        extra = 0;
                    }
                }
            }
        }
    }
    ticks
}

fn check(c: &Case) {
    let ticks = run(c);
    // The ticks around `t`, for failure messages.
    let show = |t: u64| {
        let lo = t.saturating_sub(4) as usize;
        let hi = (t as usize + 5).min(ticks.len());
        (lo..hi)
            .map(|t| {
                let k = ticks[t];
                format!(
                    "t={t} ready={} desired={}{} stable={:.2} panic={:.2}",
                    k.ready,
                    k.d.desired,
                    if k.d.panicking { " PANIC" } else { "" },
                    k.d.stable_avg,
                    k.d.panic_avg
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    for e in &c.expect {
        match e {
            Expect::Range {
                secs,
                desired,
                panicking,
            } => {
                for t in secs.clone() {
                    let k = ticks[t as usize];
                    assert!(
                        desired.contains(&k.d.desired)
                            && panicking.is_none_or(|p| p == k.d.panicking),
                        "{}: at t={t} want desired in {desired:?} panicking {panicking:?}, got {:?}\n{}",
                        c.name,
                        k.d,
                        show(t)
                    );
                }
            }
            Expect::Seq { from, desired } => {
                let got: Vec<u64> = ticks[*from as usize..*from as usize + desired.len()]
                    .iter()
                    .map(|k| k.d.desired)
                    .collect();
                assert_eq!(
                    &got,
                    desired,
                    "{}: decisions from t={from}\n{}",
                    c.name,
                    show(*from + desired.len() as u64 / 2)
                );
            }
            Expect::NoDecrease(secs) => {
                for t in *secs.start() + 1..=*secs.end() {
                    let (a, b) = (ticks[t as usize - 1].d.desired, ticks[t as usize].d.desired);
                    assert!(
                        b >= a,
                        "{}: desired went down from {a} to {b} at t={t}\n{}",
                        c.name,
                        show(t)
                    );
                }
            }
            Expect::DownRate(secs, rate) => {
                for t in secs.clone() {
                    let k = ticks[t as usize];
                    let floor = (k.ready as f64 / rate).floor() as u64;
                    assert!(
                        k.d.desired >= floor,
                        "{}: at t={t} desired {} is below ready {} / {rate}\n{}",
                        c.name,
                        k.d.desired,
                        k.ready,
                        show(t)
                    );
                }
            }
            Expect::MaxChanges(secs, n) => {
                let changes = (*secs.start() + 1..=*secs.end())
                    .filter(|&t| ticks[t as usize].d.desired != ticks[t as usize - 1].d.desired)
                    .count();
                assert!(
                    changes <= *n,
                    "{}: {changes} changes, want at most {n}\n{}",
                    c.name,
                    show(*secs.start())
                );
            }
        }
    }
}

fn step(at: u64, before: f64, after: f64) -> impl Fn(u64) -> f64 {
    move |t| if t < at { before } else { after }
}

#[test]
fn traces() {
    let cases = vec![
        // 0 → 70 (10 instances at a target of 7): panic takes it there within 5 s, and it
        // never overshoots; panic ends a stable window after the last threshold crossing.
        case("step", step(10, 0.0, 70.0)).expect(vec![
            range_p(0..=9, 0..=0, false),
            range_p(10..=10, 2..=2, true),
            Expect::Seq {
                from: 10,
                desired: vec![2, 4, 5, 7, 9, 10],
            },
            range(15..=399, 10..=10),
            range_p(15..=71, 10..=10, true),
            range_p(72..=399, 10..=10, false),
        ]),
        // The same step with instances that take 5 s to start: no overshoot while the ready
        // count lags.
        case("step, slow start", step(10, 0.0, 70.0))
            .startup(5)
            .expect(vec![range(10..=399, 1..=10), range(15..=399, 10..=10)]),
        // A panic threshold of 1000 % keeps it in stable mode: it follows the 60 s average.
        case("step, no panic", step(10, 0.0, 70.0))
            .with(|s| s.panic_threshold_percentage = 1000.0)
            .expect(vec![
                range_p(0..=399, 0..=10, false),
                range(15..=15, 1..=4),
                Expect::NoDecrease(0..=399),
                range(70..=399, 10..=10),
            ]),
        // A 10 s spike from 7 to 140: panic scales up to 20 within 5 s and holds 20 (no
        // scale-down) until a stable window after the crossing; then scale-down halves at most.
        case(
            "spike",
            |t| if (100..110).contains(&t) { 140.0 } else { 7.0 },
        )
        .expect(vec![
            range_p(0..=99, 1..=1, false),
            range_p(100..=100, 5..=5, true),
            Expect::NoDecrease(100..=160),
            range_p(105..=160, 20..=20, true),
            range_p(161..=161, 10..=10, false),
            Expect::DownRate(150..=200, 2.0),
            range_p(171..=399, 1..=1, false),
        ]),
        // A ramp from 0 to 140 over 200 s, then flat. Stable mode lags a ramp by half a
        // window; the 1 → 2 step at t=13 crosses the panic threshold (2 × ready), so panic
        // holds every increase until a stable window later, then falls back to the stable
        // desire (Knative does the same); after that it only goes up, and settles at 20.
        case("ramp", |t| 140.0 * (t.min(200) as f64) / 200.0).expect(vec![
            range_p(13..=73, 2..=8, true),
            Expect::NoDecrease(0..=73),
            range_p(74..=74, 5..=5, false),
            Expect::NoDecrease(74..=399),
            range_p(100..=100, 8..=8, false),
            range(225..=399, 20..=20),
        ]),
        // A sawtooth between 20 and 50 every 30 s (mean 35, 5 instances): past the panic of
        // the cold start, the stable window smooths it out; no panic, no flapping.
        case("sawtooth", |t| 20.0 + (t % 30) as f64).expect(vec![
            range(0..=399, 3..=8),
            range_p(120..=399, 5..=6, false),
            Expect::MaxChanges(120..=399, 20),
        ]),
        // 30 s at 70 then 90 s of nothing, with a 30 s grace: zero in every gap after the
        // grace, back up when traffic returns.
        case(
            "sawtooth to zero",
            |t| if t % 120 < 30 { 70.0 } else { 0.0 },
        )
        .with(|s| s.scale_to_zero_grace = Duration::from_secs(30))
        .expect(vec![
            range(5..=29, 10..=10),
            range(30..=58, 1..=10),
            range(59..=119, 0..=0),
            range(120..=120, 1..=10),
            range(125..=149, 10..=10),
            range(179..=239, 0..=0),
        ]),
        // Scale-up at most doubles per tick with max-scale-up-rate 2.
        case("scale-up rate", |_| 700.0)
            .with(|s| s.max_scale_up_rate = 2.0)
            .expect(vec![Expect::Seq {
                from: 0,
                desired: vec![2, 4, 8, 16, 32, 64, 100, 100],
            }]),
        // With a 6 s window the stable desire drops to 1 within 6 s of the load falling from
        // 700 to 7, but each decision keeps at least half the ready instances.
        case("scale-down rate", step(100, 700.0, 7.0))
            .with(|s| s.stable_window = Duration::from_secs(6))
            .expect(vec![
                range(20..=99, 100..=100),
                Expect::Seq {
                    from: 104,
                    desired: vec![18, 9, 4, 2, 1, 1],
                },
                Expect::DownRate(100..=399, 2.0),
            ]),
        case("max", |_| 700.0)
            .with(|s| s.max = 5)
            .expect(vec![range(0..=399, 5..=5)]),
        case("min, idle", |_| 0.0)
            .with(|s| s.min = 2)
            .expect(vec![range_p(0..=399, 2..=2, false)]),
        case("activation scale", step(50, 0.0, 1.0))
            .with(|s| s.activation_scale = 3)
            .expect(vec![range(0..=49, 0..=0), range(50..=399, 3..=3)]),
        // Scale to zero: a revision with no request for the grace (60 s) goes to zero, and
        // keeps at least one instance until then.
        case("scale to zero", |t| {
            if !(100..300).contains(&t) {
                35.0
            } else {
                0.0
            }
        })
        .expect(vec![
            range(60..=99, 5..=5),
            range(100..=158, 1..=5),
            range(159..=299, 0..=0),
            range(300..=300, 1..=1),
            range(310..=399, 5..=5),
        ]),
        case("scale to zero, min 1", step(100, 35.0, 0.0))
            .with(|s| s.min = 1)
            .expect(vec![range(100..=158, 1..=5), range(159..=399, 1..=1)]),
        // A grace longer than the stable window: one instance stays after the average is 0.
        case("scale to zero, long grace", step(100, 35.0, 0.0))
            .with(|s| s.scale_to_zero_grace = Duration::from_secs(120))
            .expect(vec![range(160..=218, 1..=1), range(219..=399, 0..=0)]),
        // A grace shorter than the stable window wins over the window.
        case("scale to zero, short grace", step(100, 35.0, 0.0))
            .with(|s| s.scale_to_zero_grace = Duration::from_secs(30))
            .expect(vec![range(100..=128, 1..=5), range(129..=399, 0..=0)]),
        // Taking over 8 ready instances: held for a stable window (start in panic), then down.
        case("resume", |_| 7.0).resume(8).expect(vec![
            range_p(0..=60, 8..=8, true),
            range_p(61..=61, 4..=4, false),
            Expect::DownRate(0..=399, 2.0),
            range(64..=399, 1..=1),
        ]),
        // Resuming with one instance and no traffic: kept for the grace, then zero.
        case("resume, idle", |_| 0.0)
            .resume(1)
            .expect(vec![range_p(0..=59, 1..=1, false), range(60..=399, 0..=0)]),
    ];
    for c in &cases {
        check(c);
    }
}

#[test]
fn settings_change_keeps_samples() {
    let mut k = Kpa::new(settings(|_| {}));
    for t in 0..60 {
        k.record(Duration::from_secs(t), 70.0);
    }
    let before = k.desired(Duration::from_secs(59), 10);
    assert_eq!(before.desired, 10);
    // A shorter window keeps the last 10 s of samples; a lower target raises the desire.
    k.set_settings(settings(|s| {
        s.stable_window = Duration::from_secs(10);
        s.target = 3.5;
    }));
    let after = k.desired(Duration::from_secs(59), 10);
    assert_eq!(after.desired, 20, "{after:?}");
    assert_eq!(after.stable_avg, 70.0);
    assert_eq!(k.last_decision(), Some(after));
    // min changes take effect at once.
    k.set_settings(settings(|s| s.min = 30));
    assert_eq!(k.desired(Duration::from_secs(59), 10).desired, 30);
}

#[test]
fn idle_for() {
    let mut k = Kpa::new(settings(|_| {}));
    assert_eq!(k.idle_for(Duration::from_secs(5)), None);
    k.record(Duration::from_millis(2500), 0.3);
    k.record(Duration::from_secs(4), 0.0);
    assert_eq!(
        k.idle_for(Duration::from_secs(10)),
        Some(Duration::from_millis(7500))
    );
}
