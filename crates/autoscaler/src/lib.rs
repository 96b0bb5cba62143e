//! Autoscaling as pure functions of (metrics, settings, time), so it can be tested and
//! simulated without instances or clocks.
//!
//! - The immediate rule ([`instances_to_start`]): enough instances that no request waits for
//!   a slot beyond `concurrency` per instance, within `[min, max]`; the serving plane applies
//!   it the moment requests wait, as a floor under the KPA's slower averages.
//! - [`Kpa`]: Knative's Pod Autoscaler per revision (stable and panic windows over per-second
//!   concurrency samples, target utilization, bounded scale rates), with [`KpaSettings`] read
//!   from `autoscaling.knative.dev/*` annotations over server-wide [`Defaults`].
//! - [`sim`]: replays synthetic traffic for many services through the real autoscaler in
//!   virtual time and reports instance-seconds against an ideal and requests that waited.

mod kpa;
mod settings;
pub mod sim;
mod window;

pub use kpa::{Decision, Kpa};
pub use settings::*;

/// What the pool looks like when it is asked whether to start an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Requests being served plus requests waiting for an instance.
    pub requests: u64,
    /// Instances that are ready or still starting.
    pub instances: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub concurrency: u64,
    pub min: u64,
    pub max: u64,
}

/// How many instances the pool should have for this many concurrent requests.
pub fn desired_instances(requests: u64, b: Bounds) -> u64 {
    let c = b.concurrency.max(1);
    requests.div_ceil(c).clamp(b.min, b.max.max(b.min))
}

/// How many more instances to start now (0 when the pool is big enough or at max).
pub fn instances_to_start(d: Demand, b: Bounds) -> u64 {
    desired_instances(d.requests, b).saturating_sub(d.instances)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(concurrency: u64, min: u64, max: u64) -> Bounds {
        Bounds {
            concurrency,
            min,
            max,
        }
    }

    #[test]
    fn desired() {
        let cases = [
            (0, b(80, 0, 100), 0),
            (1, b(80, 0, 100), 1),
            (80, b(80, 0, 100), 1),
            (81, b(80, 0, 100), 2),
            (0, b(80, 2, 100), 2),
            (1000, b(1, 0, 3), 3),
            (5, b(1, 0, 100), 5),
        ];
        for (requests, bounds, want) in cases {
            assert_eq!(
                desired_instances(requests, bounds),
                want,
                "{requests} {bounds:?}"
            );
        }
    }

    #[test]
    fn to_start() {
        let cases = [
            (
                Demand {
                    requests: 1,
                    instances: 0,
                },
                b(80, 0, 100),
                1,
            ),
            (
                Demand {
                    requests: 1,
                    instances: 1,
                },
                b(80, 0, 100),
                0,
            ),
            (
                Demand {
                    requests: 3,
                    instances: 1,
                },
                b(1, 0, 100),
                2,
            ),
            (
                Demand {
                    requests: 3,
                    instances: 2,
                },
                b(1, 0, 2),
                0,
            ),
            (
                Demand {
                    requests: 0,
                    instances: 0,
                },
                b(1, 1, 2),
                1,
            ),
        ];
        for (d, bounds, want) in cases {
            assert_eq!(instances_to_start(d, bounds), want, "{d:?} {bounds:?}");
        }
    }
}
