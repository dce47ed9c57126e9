//! Latency samples and their percentiles.
//!
//! Every request's latency is kept (4 bytes each: 10 s at 500 k requests/s is 20 MB), so
//! the percentiles are exact, not a histogram's bucket bounds.

/// Latencies in nanoseconds, one per completed request.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    ns: Vec<u32>,
    sorted: bool,
}

/// The summary printed for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Largest, µs.
    pub max_us: f64,
}

impl Latencies {
    /// Room for `n` samples up front (no reallocation while measuring).
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            ns: Vec::with_capacity(n),
            sorted: true,
        }
    }

    /// Add one latency (saturating at 4.29 s).
    pub fn record(&mut self, ns: u64) {
        self.ns.push(ns.min(u32::MAX as u64) as u32);
        self.sorted = false;
    }

    /// Samples so far.
    pub fn len(&self) -> usize {
        self.ns.len()
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }

    /// The `q`-quantile (0..=1) in ns by the nearest-rank method; 0 without samples.
    pub fn quantile(&mut self, q: f64) -> u64 {
        if self.ns.is_empty() {
            return 0;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        // Nearest rank: the smallest value with at least q of the samples at or below it.
        let rank = (q.clamp(0.0, 1.0) * self.ns.len() as f64).ceil() as usize;
        self.ns[rank.clamp(1, self.ns.len()) - 1] as u64
    }

    /// Count, mean and the percentiles the harness reports.
    pub fn summary(&mut self) -> Summary {
        let n = self.ns.len();
        let mean = if n == 0 {
            0.0
        } else {
            self.ns.iter().map(|&v| v as f64).sum::<f64>() / n as f64
        };
        let us = |ns: u64| ns as f64 / 1e3;
        Summary {
            count: n as u64,
            mean_us: mean / 1e3,
            p50_us: us(self.quantile(0.50)),
            p99_us: us(self.quantile(0.99)),
            p999_us: us(self.quantile(0.999)),
            max_us: us(self.quantile(1.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        // 1..=1000 µs in a scrambled order.
        for i in 0..1000u64 {
            l.record(((i * 617) % 1000 + 1) * 1000);
        }
        assert_eq!(l.quantile(0.5), 500_000);
        assert_eq!(l.quantile(0.99), 990_000);
        assert_eq!(l.quantile(0.999), 999_000);
        assert_eq!(l.quantile(1.0), 1_000_000);
        assert_eq!(l.quantile(0.0), 1_000);
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.mean_us - 500.5).abs() < 1e-9);
        assert_eq!((s.p50_us, s.p99_us, s.p999_us, s.max_us), (500.0, 990.0, 999.0, 1000.0));
    }

    #[test]
    fn empty_and_saturating() {
        let mut l = Latencies::default();
        assert_eq!(l.summary().p99_us, 0.0);
        l.record(u64::MAX);
        assert_eq!(l.quantile(0.5), u32::MAX as u64);
    }
}
