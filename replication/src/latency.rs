//! Latency histograms with fixed buckets, for `/metrics`: lock-free
//! counters a hot path bumps, read as Prometheus cumulative buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the last, +Inf, is implied).
pub const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// Counts of observations per bucket, their sum and their number.
#[derive(Debug, Default)]
pub struct Latency {
    buckets: [AtomicU64; BOUNDS.len()],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

/// What a [`Latency`] holds at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Observations at or below each of [`BOUNDS`] (cumulative).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(bucket) = BOUNDS
            .iter()
            .position(|b| seconds <= *b)
            .and_then(|i| self.buckets.get(i))
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        LatencySnapshot {
            cumulative,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let latency = Latency::default();
        for ms in [0, 3, 3, 40, 7000] {
            latency.observe(Duration::from_millis(ms));
        }
        let s = latency.snapshot();
        assert_eq!(s.count, 5);
        assert_eq!(s.cumulative[0], 1, "<= 0.5 ms");
        assert_eq!(s.cumulative[3], 3, "<= 5 ms");
        assert_eq!(s.cumulative[6], 4, "<= 50 ms");
        assert_eq!(
            *s.cumulative.last().unwrap(),
            4,
            "7 s is beyond the last bound"
        );
        assert!((s.sum_seconds - 7.046).abs() < 1e-9);
    }
}
