//! When to renew a certificate and how long to wait after a failed order: pure functions of
//! times given in seconds since the Unix epoch, so they are tested without a clock.

use std::time::Duration;

/// The first wait after a failed order.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(60);

/// The longest wait between two attempts for one host.
pub const BACKOFF_MAX: Duration = Duration::from_secs(24 * 3600);

/// Whether a certificate valid from `not_before` to `not_after` (Unix seconds) is due for
/// renewal at `now`: when less than a third of its lifetime is left (Let's Encrypt's advice
/// for 90-day certificates: renew at 60 days), or when it is already expired.
pub fn needs_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    let lifetime = (not_after - not_before).max(0);
    not_after - now < lifetime / 3
}

/// The Unix second at which a certificate valid from `not_before` to `not_after` becomes due.
pub fn renewal_due_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    not_after - lifetime / 3
}

/// How long to wait before the next order for a host after `failures` failed ones in a row
/// (`failures >= 1`): [`BACKOFF_FIRST`] doubled for every further failure, at most
/// [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_in_the_last_third() {
        let day = 86_400;
        // A 90-day certificate: due from day 60 on.
        let (nb, na) = (0, 90 * day);
        for (now, due) in [
            (0, false),
            (59 * day, false),
            (60 * day - 1, false),
            (60 * day + 1, true),
            (89 * day, true),
            (91 * day, true),
        ] {
            assert_eq!(needs_renewal(nb, na, now), due, "day {}", now / day);
        }
        assert_eq!(renewal_due_at(nb, na), 60 * day);
        // A 5-year certificate (as pebble issues) is not due for years.
        assert!(!needs_renewal(0, 5 * 365 * day, 365 * day));
    }

    #[test]
    fn backoff_doubles_up_to_a_day() {
        let secs: Vec<u64> = (1..=6).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![60, 120, 240, 480, 960, 1920]);
        assert_eq!(backoff(11), BACKOFF_MAX.min(Duration::from_secs(60 << 10)));
        assert_eq!(backoff(12), BACKOFF_MAX);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
