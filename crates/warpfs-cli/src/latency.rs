//! Per-operation latencies: each worker thread records into its own [`Latencies`]; the phase
//! merges them and reads percentiles.

use std::time::Duration;

/// Recorded operation durations, in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    nanos: Vec<u64>,
}

impl Latencies {
    /// An empty recorder with room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            nanos: Vec::with_capacity(n),
        }
    }
    /// Records one operation.
    #[inline]
    pub fn record(&mut self, d: Duration) {
        self.nanos.push(d.as_nanos().min(u64::MAX as u128) as u64);
    }
    /// Appends another thread's samples.
    pub fn merge(&mut self, other: Latencies) {
        self.nanos.extend(other.nanos);
    }
    /// The empirical CDF at up to `points` evenly spaced ranks: `(latency µs, fraction of
    /// operations at or below it)`, ending at the slowest operation. Sorts the samples.
    pub fn cdf_us(&mut self, points: usize) -> Vec<(f64, f64)> {
        self.nanos.sort_unstable();
        let n = self.nanos.len();
        let k = points.clamp(1, n.max(1));
        (1..=k)
            .filter(|_| n > 0)
            .map(|i| {
                let rank = (i * n).div_ceil(k);
                (self.nanos[rank - 1] as f64 / 1000.0, rank as f64 / n as f64)
            })
            .collect()
    }
    /// The `p`-th percentile (0–100) in microseconds (nearest rank); `None` when empty.
    pub fn percentile_us(&mut self, p: f64) -> Option<f64> {
        if self.nanos.is_empty() {
            return None;
        }
        self.nanos.sort_unstable();
        let rank = ((p / 100.0) * self.nanos.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.nanos.len()) - 1;
        Some(self.nanos[idx] as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut a = Latencies::default();
        assert_eq!(a.percentile_us(50.0), None);
        for us in 1..=50 {
            a.record(Duration::from_micros(us));
        }
        let mut b = Latencies::default();
        for us in 51..=100 {
            b.record(Duration::from_micros(us));
        }
        a.merge(b);
        assert_eq!(a.nanos.len(), 100);
        assert_eq!(a.percentile_us(50.0), Some(50.0));
        assert_eq!(a.percentile_us(99.0), Some(99.0));
        assert_eq!(a.percentile_us(100.0), Some(100.0));
        let cdf = a.cdf_us(4);
        assert_eq!(
            cdf,
            vec![(25.0, 0.25), (50.0, 0.5), (75.0, 0.75), (100.0, 1.0)]
        );
        assert_eq!(Latencies::default().cdf_us(10), vec![]);
    }
}
