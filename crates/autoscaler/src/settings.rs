//! Autoscaler settings: server-wide [`Defaults`] (Knative's `config-autoscaler`) and the
//! per-revision [`KpaSettings`] read from a revision template's `autoscaling.knative.dev/*`
//! annotations, validated with the ranges Knative enforces.

use std::collections::BTreeMap;
use std::time::Duration;

pub const ANN_TARGET: &str = "autoscaling.knative.dev/target";
pub const ANN_TARGET_UTILIZATION: &str = "autoscaling.knative.dev/target-utilization-percentage";
pub const ANN_WINDOW: &str = "autoscaling.knative.dev/window";
pub const ANN_PANIC_WINDOW_PERCENTAGE: &str = "autoscaling.knative.dev/panic-window-percentage";
pub const ANN_PANIC_THRESHOLD_PERCENTAGE: &str =
    "autoscaling.knative.dev/panic-threshold-percentage";
pub const ANN_MIN_SCALE_DASHED: &str = "autoscaling.knative.dev/min-scale";
pub const ANN_MIN_SCALE: &str = "autoscaling.knative.dev/minScale";
pub const ANN_MAX_SCALE_DASHED: &str = "autoscaling.knative.dev/max-scale";
pub const ANN_MAX_SCALE: &str = "autoscaling.knative.dev/maxScale";
pub const ANN_ACTIVATION_SCALE: &str = "autoscaling.knative.dev/activation-scale";
pub const ANN_METRIC: &str = "autoscaling.knative.dev/metric";

/// Knative's smallest target (`TargetMin`).
pub const TARGET_MIN: f64 = 0.01;
pub const WINDOW_MIN: Duration = Duration::from_secs(6);
pub const WINDOW_MAX: Duration = Duration::from_secs(3600);
pub const PANIC_WINDOW_PERCENTAGE_MIN: f64 = 1.0;
pub const PANIC_WINDOW_PERCENTAGE_MAX: f64 = 100.0;
pub const PANIC_THRESHOLD_PERCENTAGE_MIN: f64 = 110.0;
pub const PANIC_THRESHOLD_PERCENTAGE_MAX: f64 = 1000.0;
pub const TARGET_UTILIZATION_PERCENTAGE_MIN: f64 = 1.0;
pub const TARGET_UTILIZATION_PERCENTAGE_MAX: f64 = 100.0;

/// Server-wide autoscaler settings, the ones Knative keeps in its `config-autoscaler` map.
/// Every revision starts from these; its annotations override some of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Defaults {
    /// Per-instance target when the revision has no concurrency limit (`0`), before
    /// utilization (`container-concurrency-target-default`, 100).
    pub container_concurrency_target_default: f64,
    /// Fraction of the per-instance target to aim for, in `(0, 1]`
    /// (`container-concurrency-target-percentage`, 0.7).
    pub target_utilization: f64,
    /// Averaging window of stable mode (`stable-window`, 60 s).
    pub stable_window: Duration,
    /// Panic window as a percentage of the stable window (`panic-window-percentage`, 10).
    pub panic_window_percentage: f64,
    /// Panic when the panic-window desire reaches this percentage of the ready instances
    /// (`panic-threshold-percentage`, 200).
    pub panic_threshold_percentage: f64,
    /// At most this many times the ready instances in one decision (`max-scale-up-rate`, 1000).
    pub max_scale_up_rate: f64,
    /// At least the ready instances divided by this in one decision (`max-scale-down-rate`, 2).
    pub max_scale_down_rate: f64,
    /// A revision that has had no request for this long loses every instance above its minimum
    /// (Skiff's `--scale-to-zero-after`, 60 s).
    pub scale_to_zero_grace: Duration,
    /// Minimum instances when the revision sets none.
    pub min_scale: u64,
    /// Maximum instances when the revision sets none (Cloud Run's default, 100).
    pub max_scale: u64,
    /// Fewest instances a revision scales to when it scales above zero (1).
    pub activation_scale: u64,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            container_concurrency_target_default: 100.0,
            target_utilization: 0.7,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace: Duration::from_secs(60),
            min_scale: 0,
            max_scale: 100,
            activation_scale: 1,
        }
    }
}

fn in_range(v: f64, lo: f64, hi: f64) -> bool {
    v.is_finite() && v >= lo && v <= hi
}

impl Defaults {
    /// Checks the server-wide settings; errors name the setting at fault.
    pub fn validate(&self) -> Result<(), String> {
        let d = self;
        if !(d.container_concurrency_target_default.is_finite()
            && d.container_concurrency_target_default >= TARGET_MIN)
        {
            return Err(format!(
                "invalid container-concurrency-target-default {}: use a value of at least {TARGET_MIN}",
                d.container_concurrency_target_default
            ));
        }
        if !(d.target_utilization.is_finite()
            && d.target_utilization > 0.0
            && d.target_utilization <= 1.0)
        {
            return Err(format!(
                "invalid target utilization {}: use a fraction above 0 and at most 1",
                d.target_utilization
            ));
        }
        check_window("stable-window", d.stable_window)?;
        if !in_range(
            d.panic_window_percentage,
            PANIC_WINDOW_PERCENTAGE_MIN,
            PANIC_WINDOW_PERCENTAGE_MAX,
        ) {
            return Err(format!(
                "invalid panic-window-percentage {}: use a value between {PANIC_WINDOW_PERCENTAGE_MIN} and {PANIC_WINDOW_PERCENTAGE_MAX}",
                d.panic_window_percentage
            ));
        }
        if !in_range(
            d.panic_threshold_percentage,
            PANIC_THRESHOLD_PERCENTAGE_MIN,
            PANIC_THRESHOLD_PERCENTAGE_MAX,
        ) {
            return Err(format!(
                "invalid panic-threshold-percentage {}: use a value between {PANIC_THRESHOLD_PERCENTAGE_MIN} and {PANIC_THRESHOLD_PERCENTAGE_MAX}",
                d.panic_threshold_percentage
            ));
        }
        for (name, v) in [
            ("max-scale-up-rate", d.max_scale_up_rate),
            ("max-scale-down-rate", d.max_scale_down_rate),
        ] {
            if !(v.is_finite() && v > 1.0) {
                return Err(format!("invalid {name} {v}: use a value above 1"));
            }
        }
        if d.max_scale == 0 {
            return Err("invalid max-scale 0: use at least 1".to_string());
        }
        if d.min_scale > d.max_scale {
            return Err(format!(
                "min-scale {} is above max-scale {}: lower min or raise max",
                d.min_scale, d.max_scale
            ));
        }
        if d.activation_scale == 0 {
            return Err("invalid activation-scale 0: use at least 1".to_string());
        }
        Ok(())
    }
}

/// One revision's autoscaler settings, in the units the autoscaler works in.
#[derive(Debug, Clone, PartialEq)]
pub struct KpaSettings {
    /// Concurrency to aim for per instance: `min(target annotation, containerConcurrency)`
    /// times the target utilization, at least [`TARGET_MIN`].
    pub target: f64,
    /// Stable window: whole seconds, 6 s to 1 h.
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub scale_to_zero_grace: Duration,
    pub min: u64,
    pub max: u64,
    pub activation_scale: u64,
}

impl KpaSettings {
    /// Settings of a revision with no autoscaling annotations. `container_concurrency` is the
    /// revision's per-instance limit (`0`: none, so the server-wide target applies).
    pub fn from_defaults(container_concurrency: u64, d: &Defaults) -> Self {
        let total = if container_concurrency == 0 {
            d.container_concurrency_target_default
        } else {
            container_concurrency as f64
        };
        KpaSettings {
            target: (total * d.target_utilization).max(TARGET_MIN),
            stable_window: d.stable_window,
            panic_window_percentage: d.panic_window_percentage,
            panic_threshold_percentage: d.panic_threshold_percentage,
            max_scale_up_rate: d.max_scale_up_rate,
            max_scale_down_rate: d.max_scale_down_rate,
            scale_to_zero_grace: d.scale_to_zero_grace,
            min: d.min_scale,
            max: d.max_scale,
            activation_scale: d.activation_scale,
        }
    }

    /// Reads a revision's settings from its template annotations, falling back to `d` for
    /// what they do not set. Errors name the annotation at fault. Annotations read:
    /// `target`, `target-utilization-percentage`, `window`, `panic-window-percentage`,
    /// `panic-threshold-percentage`, `min-scale`/`minScale`, `max-scale`/`maxScale`,
    /// `activation-scale` and `metric` (only `concurrency`), all under
    /// `autoscaling.knative.dev/`; every other annotation is ignored.
    pub fn from_annotations(
        container_concurrency: u64,
        annotations: &BTreeMap<String, String>,
        d: &Defaults,
    ) -> Result<Self, String> {
        d.validate()?;
        let a = annotations;
        if let Some(v) = a.get(ANN_METRIC) {
            if v.trim() != "concurrency" {
                return Err(format!(
                    "invalid annotation {ANN_METRIC}: {v:?} is not supported: use \"concurrency\""
                ));
            }
        }
        let mut total = if container_concurrency == 0 {
            d.container_concurrency_target_default
        } else {
            container_concurrency as f64
        };
        if let Some(t) = number(a, ANN_TARGET)? {
            if t <= TARGET_MIN {
                return Err(format!(
                    "invalid annotation {ANN_TARGET}: {t} is out of range: use a value above {TARGET_MIN}"
                ));
            }
            total = if container_concurrency > 0 {
                t.min(container_concurrency as f64)
            } else {
                t
            };
        }
        let utilization = match number(a, ANN_TARGET_UTILIZATION)? {
            None => d.target_utilization,
            Some(p) => {
                percentage(
                    ANN_TARGET_UTILIZATION,
                    p,
                    TARGET_UTILIZATION_PERCENTAGE_MIN,
                    TARGET_UTILIZATION_PERCENTAGE_MAX,
                )?;
                p / 100.0
            }
        };
        let stable_window = match a.get(ANN_WINDOW) {
            None => d.stable_window,
            Some(v) => {
                let w = parse_go_duration(v).ok_or_else(|| {
                    format!(
                        "invalid annotation {ANN_WINDOW}: {v:?} is not a duration: use a value like 60s or 2m"
                    )
                })?;
                check_window(ANN_WINDOW, w).map_err(|e| format!("invalid annotation {e}"))?;
                w
            }
        };
        let panic_window_percentage = match number(a, ANN_PANIC_WINDOW_PERCENTAGE)? {
            None => d.panic_window_percentage,
            Some(p) => percentage(
                ANN_PANIC_WINDOW_PERCENTAGE,
                p,
                PANIC_WINDOW_PERCENTAGE_MIN,
                PANIC_WINDOW_PERCENTAGE_MAX,
            )?,
        };
        let panic_threshold_percentage = match number(a, ANN_PANIC_THRESHOLD_PERCENTAGE)? {
            None => d.panic_threshold_percentage,
            Some(p) => percentage(
                ANN_PANIC_THRESHOLD_PERCENTAGE,
                p,
                PANIC_THRESHOLD_PERCENTAGE_MIN,
                PANIC_THRESHOLD_PERCENTAGE_MAX,
            )?,
        };
        let min = whole(a, ANN_MIN_SCALE_DASHED, ANN_MIN_SCALE)?.unwrap_or(d.min_scale);
        let (max_key, max) = match whole(a, ANN_MAX_SCALE_DASHED, ANN_MAX_SCALE)? {
            None => ("the default max-scale", d.max_scale),
            Some(0) => {
                return Err(format!(
                    "invalid annotation {}: 0: use at least 1",
                    present(a, ANN_MAX_SCALE_DASHED, ANN_MAX_SCALE)
                ))
            }
            Some(m) => (present(a, ANN_MAX_SCALE_DASHED, ANN_MAX_SCALE), m),
        };
        if min > max {
            return Err(format!(
                "invalid annotation {}: {min} is above {max_key} {max}: lower min or raise max",
                present(a, ANN_MIN_SCALE_DASHED, ANN_MIN_SCALE)
            ));
        }
        let activation_scale = match whole(a, ANN_ACTIVATION_SCALE, ANN_ACTIVATION_SCALE)? {
            None => d.activation_scale.min(max),
            Some(0) => {
                return Err(format!(
                    "invalid annotation {ANN_ACTIVATION_SCALE}: 0: use at least 1"
                ))
            }
            Some(s) if s > max => {
                return Err(format!(
                    "invalid annotation {ANN_ACTIVATION_SCALE}: {s} is above {max_key} {max}: lower it or raise max"
                ))
            }
            Some(s) => s,
        };
        Ok(KpaSettings {
            target: (total * utilization).max(TARGET_MIN),
            stable_window,
            panic_window_percentage,
            panic_threshold_percentage,
            max_scale_up_rate: d.max_scale_up_rate,
            max_scale_down_rate: d.max_scale_down_rate,
            scale_to_zero_grace: d.scale_to_zero_grace,
            min,
            max,
            activation_scale,
        })
    }

    /// The stable window in whole seconds (at least 1).
    pub fn stable_secs(&self) -> u64 {
        self.stable_window.as_secs().max(1)
    }

    /// The panic window: `panic-window-percentage` of the stable window, rounded up to whole
    /// seconds, at least 1 s.
    pub fn panic_window(&self) -> Duration {
        Duration::from_secs(self.panic_secs())
    }

    pub fn panic_secs(&self) -> u64 {
        let s = self.stable_secs() as f64 * self.panic_window_percentage / 100.0;
        // The epsilon keeps 60 s × 10 % at 6 s rather than 7 after rounding error.
        ((s - 1e-9).ceil() as u64).clamp(1, self.stable_secs())
    }
}

fn check_window(name: &str, w: Duration) -> Result<(), String> {
    if w < WINDOW_MIN || w > WINDOW_MAX {
        return Err(format!(
            "{name}: {} is out of range: use a value between 6s and 1h",
            show(w)
        ));
    }
    if w.subsec_nanos() != 0 {
        return Err(format!(
            "{name}: {} is not a whole number of seconds: use a value like 60s",
            show(w)
        ));
    }
    Ok(())
}

fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn number(a: &BTreeMap<String, String>, key: &str) -> Result<Option<f64>, String> {
    match a.get(key) {
        None => Ok(None),
        Some(v) => match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(format!("invalid annotation {key}: {v:?} is not a number")),
        },
    }
}

fn percentage(key: &str, p: f64, lo: f64, hi: f64) -> Result<f64, String> {
    if in_range(p, lo, hi) {
        Ok(p)
    } else {
        Err(format!(
            "invalid annotation {key}: {p} is out of range: use a value between {lo} and {hi}"
        ))
    }
}

/// The key of a pair of spellings that is present (the first when neither is).
fn present<'a>(a: &BTreeMap<String, String>, key: &'a str, old: &'a str) -> &'a str {
    if a.contains_key(key) || !a.contains_key(old) {
        key
    } else {
        old
    }
}

fn whole(a: &BTreeMap<String, String>, key: &str, old: &str) -> Result<Option<u64>, String> {
    let v = match (a.get(key), a.get(old)) {
        (Some(_), Some(_)) if key != old => {
            return Err(format!(
                "annotations {key} and {old} are both set: keep one"
            ))
        }
        (Some(v), _) | (None, Some(v)) => v,
        (None, None) => return Ok(None),
    };
    let k = present(a, key, old);
    v.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| format!("invalid annotation {k}: {v:?} is not a whole number"))
}

/// Parses a duration the way Go's `time.ParseDuration` (and so Knative) reads it: a sequence
/// of decimal numbers with units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h` (`60s`, `1m30s`,
/// `1.5h`); a bare `0` is zero. Negative durations are refused.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += n * mult;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.to_string()))
            .collect()
    }

    /// What a successful parse should give; `None` leaves the field unchecked.
    #[derive(Default)]
    struct Want {
        target: Option<f64>,
        window: Option<u64>,
        panic_secs: Option<u64>,
        threshold: Option<f64>,
        min: Option<u64>,
        max: Option<u64>,
        activation: Option<u64>,
    }

    #[test]
    fn annotations_parse() {
        type Case<'a> = (u64, Vec<(&'a str, &'a str)>, Want);
        let cases: Vec<Case> = vec![
            (
                80,
                vec![],
                Want {
                    target: Some(56.0),
                    window: Some(60),
                    panic_secs: Some(6),
                    threshold: Some(200.0),
                    min: Some(0),
                    max: Some(100),
                    activation: Some(1),
                },
            ),
            // No concurrency limit: the server-wide default target.
            (
                0,
                vec![],
                Want {
                    target: Some(70.0),
                    ..Want::default()
                },
            ),
            // target is capped by containerConcurrency, then utilization applies.
            (
                10,
                vec![("target", "50")],
                Want {
                    target: Some(7.0),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("target", "10"), ("target-utilization-percentage", "50")],
                Want {
                    target: Some(5.0),
                    ..Want::default()
                },
            ),
            (
                0,
                vec![("target", "0.02"), ("target-utilization-percentage", "1")],
                Want {
                    target: Some(TARGET_MIN),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("window", "2m"), ("panic-window-percentage", "25")],
                Want {
                    window: Some(120),
                    panic_secs: Some(30),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("window", "6s"), ("panic-window-percentage", "1")],
                Want {
                    window: Some(6),
                    panic_secs: Some(1),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("window", "1h"), ("panic-window-percentage", "100")],
                Want {
                    window: Some(3600),
                    panic_secs: Some(3600),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("window", "1m30s")],
                Want {
                    window: Some(90),
                    panic_secs: Some(9),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("panic-threshold-percentage", "110")],
                Want {
                    threshold: Some(110.0),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![
                    ("minScale", "2"),
                    ("maxScale", "5"),
                    ("activation-scale", "3"),
                ],
                Want {
                    min: Some(2),
                    max: Some(5),
                    activation: Some(3),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![("min-scale", "1"), ("max-scale", "1")],
                Want {
                    min: Some(1),
                    max: Some(1),
                    activation: Some(1),
                    ..Want::default()
                },
            ),
            (
                80,
                vec![
                    ("metric", "concurrency"),
                    ("class", "kpa.autoscaling.knative.dev"),
                ],
                Want::default(),
            ),
        ];
        let d = Defaults::default();
        for (cc, pairs, want) in cases {
            let a = ann(&pairs);
            let s = KpaSettings::from_annotations(cc, &a, &d)
                .unwrap_or_else(|e| panic!("{cc} {pairs:?}: {e}"));
            let ctx = format!("{cc} {pairs:?}: {s:?}");
            if let Some(t) = want.target {
                assert!((s.target - t).abs() < 1e-9, "target {ctx}");
            }
            if let Some(w) = want.window {
                assert_eq!(s.stable_window, Duration::from_secs(w), "{ctx}");
            }
            if let Some(p) = want.panic_secs {
                assert_eq!(s.panic_window(), Duration::from_secs(p), "{ctx}");
            }
            if let Some(t) = want.threshold {
                assert_eq!(s.panic_threshold_percentage, t, "{ctx}");
            }
            assert_eq!(want.min.map(|_| s.min), want.min, "{ctx}");
            assert_eq!(want.max.map(|_| s.max), want.max, "{ctx}");
            assert_eq!(
                want.activation.map(|_| s.activation_scale),
                want.activation,
                "{ctx}"
            );
        }
    }

    #[test]
    fn annotations_refused() {
        // (annotations, what the error must contain): every error names its annotation.
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (
                vec![("target", "fast")],
                "autoscaling.knative.dev/target: \"fast\" is not a number",
            ),
            (
                vec![("target", "0.01")],
                "autoscaling.knative.dev/target: 0.01 is out of range",
            ),
            (
                vec![("target", "-3")],
                "autoscaling.knative.dev/target: -3 is out of range",
            ),
            (
                vec![("target", "NaN")],
                "autoscaling.knative.dev/target: \"NaN\" is not a number",
            ),
            (
                vec![("target-utilization-percentage", "0")],
                "target-utilization-percentage: 0 is out of range",
            ),
            (
                vec![("target-utilization-percentage", "101")],
                "target-utilization-percentage: 101 is out of range",
            ),
            (
                vec![("window", "5s")],
                "autoscaling.knative.dev/window: 5s is out of range: use a value between 6s and 1h",
            ),
            (
                vec![("window", "61m")],
                "autoscaling.knative.dev/window: 3660s is out of range",
            ),
            (
                vec![("window", "6500ms")],
                "autoscaling.knative.dev/window: 6500ms is not a whole number of seconds",
            ),
            (
                vec![("window", "60")],
                "autoscaling.knative.dev/window: \"60\" is not a duration",
            ),
            (
                vec![("window", "1 minute")],
                "autoscaling.knative.dev/window: \"1 minute\" is not a duration",
            ),
            (
                vec![("panic-window-percentage", "0.5")],
                "panic-window-percentage: 0.5 is out of range: use a value between 1 and 100",
            ),
            (
                vec![("panic-window-percentage", "101")],
                "panic-window-percentage: 101 is out of range",
            ),
            (
                vec![("panic-threshold-percentage", "109")],
                "panic-threshold-percentage: 109 is out of range: use a value between 110 and 1000",
            ),
            (
                vec![("panic-threshold-percentage", "1001")],
                "panic-threshold-percentage: 1001 is out of range",
            ),
            (
                vec![("minScale", "-1")],
                "autoscaling.knative.dev/minScale: \"-1\" is not a whole number",
            ),
            (
                vec![("maxScale", "0")],
                "autoscaling.knative.dev/maxScale: 0: use at least 1",
            ),
            (
                vec![("minScale", "4"), ("maxScale", "3")],
                "autoscaling.knative.dev/minScale: 4 is above autoscaling.knative.dev/maxScale 3",
            ),
            (
                vec![("min-scale", "101")],
                "autoscaling.knative.dev/min-scale: 101 is above the default max-scale 100",
            ),
            (
                vec![("min-scale", "1"), ("minScale", "1")],
                "min-scale and autoscaling.knative.dev/minScale are both set",
            ),
            (
                vec![("activation-scale", "0")],
                "activation-scale: 0: use at least 1",
            ),
            (
                vec![("activation-scale", "4"), ("max-scale", "3")],
                "activation-scale: 4 is above autoscaling.knative.dev/max-scale 3",
            ),
            (
                vec![("metric", "rps")],
                "autoscaling.knative.dev/metric: \"rps\" is not supported",
            ),
        ];
        let d = Defaults::default();
        for (pairs, want) in cases {
            let err = KpaSettings::from_annotations(80, &ann(&pairs), &d)
                .expect_err(&format!("{pairs:?} should be refused"));
            assert!(err.contains(want), "{pairs:?}: {err:?} lacks {want:?}");
            assert!(!err.ends_with('.'), "{err}");
            assert!(err.starts_with(char::is_lowercase), "{err}");
        }
    }

    #[test]
    fn defaults_refused() {
        type Edit = fn(&mut Defaults);
        let cases: Vec<(Edit, &str)> = vec![
            (|d| d.target_utilization = 0.0, "target utilization 0"),
            (|d| d.target_utilization = 1.5, "target utilization 1.5"),
            (
                |d| d.stable_window = Duration::from_secs(2),
                "stable-window: 2s is out of range",
            ),
            (
                |d| d.panic_window_percentage = 0.0,
                "panic-window-percentage 0",
            ),
            (
                |d| d.panic_threshold_percentage = 100.0,
                "panic-threshold-percentage 100",
            ),
            (
                |d| d.max_scale_up_rate = 1.0,
                "max-scale-up-rate 1: use a value above 1",
            ),
            (|d| d.max_scale_down_rate = 0.5, "max-scale-down-rate 0.5"),
            (|d| d.max_scale = 0, "max-scale 0"),
            (
                |d| d.min_scale = 200,
                "min-scale 200 is above max-scale 100",
            ),
            (|d| d.activation_scale = 0, "activation-scale 0"),
            (
                |d| d.container_concurrency_target_default = 0.0,
                "container-concurrency-target-default 0",
            ),
        ];
        assert_eq!(Defaults::default().validate(), Ok(()));
        for (edit, want) in cases {
            let mut d = Defaults::default();
            edit(&mut d);
            let err = d.validate().expect_err(want);
            assert!(err.contains(want), "{err:?} lacks {want:?}");
            // from_annotations refuses bad defaults too.
            assert!(KpaSettings::from_annotations(80, &BTreeMap::new(), &d).is_err());
        }
    }

    #[test]
    fn go_durations() {
        let s = Duration::from_secs;
        let cases: Vec<(&str, Option<Duration>)> = vec![
            ("60s", Some(s(60))),
            ("1m", Some(s(60))),
            ("1m30s", Some(s(90))),
            ("1.5h", Some(s(5400))),
            ("500ms", Some(Duration::from_millis(500))),
            ("10us", Some(Duration::from_micros(10))),
            ("0", Some(Duration::ZERO)),
            ("+6s", Some(s(6))),
            ("", None),
            ("60", None),
            ("-6s", None),
            ("6 s", None),
            ("6d", None),
            ("s", None),
            (".s", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_go_duration(text), want, "{text:?}");
        }
    }
}
