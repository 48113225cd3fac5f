//! A latency histogram with fixed power-of-two buckets, updated without locks: what the store
//! reports of its fsync times (`/metrics`). Owns counts only; recording never allocates or
//! blocks, so the writer thread can record every flush.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 16 µs, 32 µs, … about 16.8 s; one more
/// bucket holds anything slower.
pub const BOUNDS_US: [u64; 21] = {
    let mut b = [0u64; 21];
    let mut i = 0;
    while i < 21 {
        b[i] = 16 << i;
        i += 1;
    }
    b
};

/// Counts of durations by bucket, their sum and their number.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `BOUNDS_US.len() + 1` counters; the last is the overflow bucket.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// A copy of a histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket (not cumulative), `BOUNDS_US` order, then the overflow bucket.
    pub counts: Vec<u64>,
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    /// Counts one duration.
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BOUNDS_US.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let h = Histogram::default();
        h.record(Duration::from_micros(16));
        h.record(Duration::from_micros(17));
        h.record(Duration::from_millis(3));
        h.record(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.sum_us, 16 + 17 + 3000 + 60_000_000);
        assert_eq!(s.counts[0], 1, "16 µs");
        assert_eq!(s.counts[1], 1, "17 µs goes to ≤ 32 µs");
        assert_eq!(s.counts[8], 1, "3 ms goes to ≤ 4096 µs");
        assert_eq!(s.counts[BOUNDS_US.len()], 1, "overflow");
        assert_eq!(s.counts.iter().sum::<u64>(), 4);
    }
}
