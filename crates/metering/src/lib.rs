//! Pay per use: the billing rule, the live meters the serving plane and the jobs executor keep
//! per instance, and the price table. No I/O, and no clock but [`now_ms`], which callers
//! read and pass in: every time is in milliseconds since the Unix epoch.
//!
//! - [`meter::Meter`] is the rule, as a state machine fed an instance's lifecycle (start,
//!   ready, busy or idle, stopping, exit). [`meter::bill`] replays a whole schedule through it.
//! - [`registry::Registry`] holds the meters of live instances and hands out, at each
//!   checkpoint, what accrued since the last one, per instance and minute.
//! - [`metrics::Metrics`] is the Prometheus exposition at `/metrics`.
//! - [`price::Prices`] turns usage into cost, with Cloud Run's list prices and free tier as
//!   the default.

pub mod meter;
pub mod metrics;
pub mod price;
pub mod registry;
pub mod report;

pub use meter::{bill, Bill, Billing, Lifecycle, Meter};
pub use metrics::Metrics;
pub use price::{Cost, Prices, Usage};
pub use registry::{
    Checkpoint, InstanceInfo, InstanceUsage, Kind, LiveInstance, NetReader, NetStats, Registry,
};
pub use report::{Line, Report, UsageRow};

/// Billable intervals are rounded up to a multiple of this.
pub const ROUND_MS: i64 = 100;
/// Usage is recorded per instance and per minute.
pub const BUCKET_MS: i64 = 60_000;

/// Now, in ms since the Unix epoch (the clock every meter is fed).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `ms` rounded up to a multiple of [`ROUND_MS`].
pub fn round_up(ms: i64) -> i64 {
    (ms.max(0) + ROUND_MS - 1) / ROUND_MS * ROUND_MS
}

/// The start of the minute `t` falls in.
pub fn bucket_of(t: i64) -> i64 {
    t.div_euclid(BUCKET_MS) * BUCKET_MS
}
