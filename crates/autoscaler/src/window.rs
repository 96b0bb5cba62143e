//! A sliding window of per-second samples in a fixed ring, averaged the way Knative's
//! `TimedFloat64Buckets` does: over the part of the window that has data when the first
//! sample is recent, gaps inside the window counting as zero.
//!
//! Values are kept in millionths as integers, so sums never drift: a window that has seen
//! only zeros for a whole window averages exactly 0.

/// Fixed-point scale of stored values.
const SCALE: f64 = 1e6;

#[derive(Debug, Clone)]
pub(crate) struct Window {
    buckets: Box<[u64]>,
    total: u64,
    /// Second of the first sample since the window last emptied.
    first: u64,
    /// Second of the latest sample.
    last: u64,
    has_data: bool,
}

impl Window {
    /// A window of `secs` one-second buckets (at least 1).
    pub(crate) fn new(secs: u64) -> Self {
        Window {
            buckets: vec![0; secs.max(1) as usize].into_boxed_slice(),
            total: 0,
            first: 0,
            last: 0,
            has_data: false,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn idx(&self, sec: u64) -> usize {
        (sec % self.len()) as usize
    }

    pub(crate) fn to_fixed(v: f64) -> u64 {
        if v.is_finite() && v > 0.0 {
            // Saturates at u64::MAX; windows hold at most 3600 samples, so cap each one well
            // below u64::MAX / 3600.
            (v * SCALE).round().min(1e15) as u64
        } else {
            0
        }
    }

    /// Records `v` (already fixed-point) for second `sec`. Several samples in one second keep
    /// the largest; a sample for a second before the latest one is ignored.
    pub(crate) fn record(&mut self, sec: u64, v: u64) {
        if !self.has_data {
            self.has_data = true;
            self.first = sec;
            self.last = sec;
            self.buckets.fill(0);
            self.total = 0;
        } else if sec < self.last {
            return;
        } else if sec > self.last {
            if sec - self.last >= self.len() {
                // Nothing for a whole window: start over, as if this were the first sample.
                self.buckets.fill(0);
                self.total = 0;
                self.first = sec;
            } else {
                for s in self.last + 1..=sec {
                    let i = self.idx(s);
                    self.total -= self.buckets[i];
                    self.buckets[i] = 0;
                }
            }
            self.last = sec;
        }
        let i = self.idx(sec);
        if v > self.buckets[i] {
            self.total += v - self.buckets[i];
            self.buckets[i] = v;
        }
    }

    /// The samples still in the window, oldest first, as `(second, fixed-point value)`.
    pub(crate) fn samples(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let start = if self.has_data {
            self.first.max((self.last + 1).saturating_sub(self.len()))
        } else {
            1
        };
        let end = if self.has_data { self.last + 1 } else { 0 };
        (start..end).map(|s| (s, self.buckets[self.idx(s)]))
    }

    /// Whether no sample falls within the window ending at `sec`.
    pub(crate) fn is_empty(&self, sec: u64) -> bool {
        !self.has_data || sec.saturating_sub(self.last) >= self.len()
    }

    /// Average per second over the window ending at `sec`.
    pub(crate) fn average(&self, sec: u64) -> f64 {
        if self.is_empty(sec) {
            return 0.0;
        }
        let span = self.last - self.first + 1;
        let (total, n) = if sec <= self.last {
            (self.total, span.min(self.len()))
        } else {
            // Seconds after the latest sample have no data yet: drop the buckets they will
            // overwrite and average over what is left.
            let gap = sec - self.last;
            let mut total = self.total;
            for s in self.last + 1..=sec {
                total -= self.buckets[self.idx(s)];
            }
            (total, span.min(self.len() - gap))
        };
        total as f64 / SCALE / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `(sec, value)` samples into a window of `len` seconds and checks the average
    /// at each `(sec, want)`.
    fn check(len: u64, samples: &[(u64, f64)], at: &[(u64, f64)]) {
        let mut w = Window::new(len);
        for &(s, v) in samples {
            w.record(s, Window::to_fixed(v));
        }
        for &(s, want) in at {
            let got = w.average(s);
            assert!(
                (got - want).abs() < 1e-9,
                "len {len} samples {samples:?}: average at {s} is {got}, want {want}"
            );
        }
    }

    #[test]
    fn averages() {
        let ramp: Vec<(u64, f64)> = (0..10).map(|s| (s, s as f64)).collect();
        type Samples = Vec<(u64, f64)>;
        let cases: Vec<(u64, Samples, Samples)> = vec![
            // Empty.
            (6, vec![], vec![(0, 0.0), (100, 0.0)]),
            // One sample counts fully: the window is only as long as the data.
            (60, vec![(5, 10.0)], vec![(5, 10.0)]),
            // Partial window: two seconds of data.
            (60, vec![(5, 10.0), (6, 20.0)], vec![(6, 15.0)]),
            // Full window: the oldest falls out.
            (4, ramp.clone(), vec![(9, (6.0 + 7.0 + 8.0 + 9.0) / 4.0)]),
            // Gaps inside the window count as zero.
            (
                4,
                vec![(0, 4.0), (1, 4.0), (2, 4.0), (3, 4.0), (5, 4.0)],
                vec![(5, 3.0)],
            ),
            // No data yet for the latest seconds: average over the seconds that have some.
            (
                4,
                ramp.clone(),
                vec![(10, (7.0 + 8.0 + 9.0) / 3.0), (12, 9.0), (13, 0.0)],
            ),
            // A whole window without data starts over.
            (4, vec![(0, 8.0), (1, 8.0), (10, 2.0)], vec![(10, 2.0)]),
            // Two samples in one second keep the larger.
            (4, vec![(3, 1.0), (3, 5.0), (3, 2.0)], vec![(3, 5.0)]),
            // A sample for an earlier second is ignored.
            (4, vec![(3, 1.0), (2, 9.0)], vec![(3, 1.0)]),
            // Zeros for a whole window give exactly zero.
            (
                3,
                vec![(0, 0.3), (1, 0.1), (2, 0.7), (3, 0.0), (4, 0.0), (5, 0.0)],
                vec![(5, 0.0)],
            ),
            // Negative and non-finite samples count as zero.
            (2, vec![(0, -1.0), (1, f64::NAN)], vec![(1, 0.0)]),
        ];
        for (len, samples, at) in cases {
            check(len, &samples, &at);
        }
    }
}
