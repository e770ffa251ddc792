//! Latency histograms: HDR histograms of nanoseconds, merged across connections, summarised as
//! the percentiles the report shows.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency recorded exactly; anything slower is clamped to it (and shows as the max).
const HIGHEST_NANOS: u64 = 120 * 1_000_000_000;
/// Three significant figures: 0.1 % error on every percentile.
const SIGNIFICANT_FIGURES: u8 = 3;

/// The latencies of one run (or one connection of it).
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram covering 1 ns to 120 s.
    pub fn new() -> Latencies {
        Latencies {
            histogram: Histogram::new_with_bounds(1, HIGHEST_NANOS, SIGNIFICANT_FIGURES)
                .expect("constant bounds are valid"),
        }
    }

    /// Records one request's latency.
    pub fn record(&mut self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_NANOS);
        self.histogram.saturating_record(nanos);
    }

    /// Adds every sample of `other` (another connection's, another round's).
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides: adding cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("histograms share their bounds");
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles of the report.
    pub fn summary(&self) -> Summary {
        let at = |q: f64| Duration::from_nanos(self.histogram.value_at_quantile(q));
        Summary {
            count: self.count(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: Duration::from_nanos(self.histogram.max()),
        }
    }
}

/// The figures of one latency distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest.
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latencies::new();
        for i in 1..=1000 {
            l.record(Duration::from_micros(i));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        // Three significant figures: within 0.1 %.
        let close = |got: Duration, want_us: u64| {
            let got = got.as_nanos() as f64 / 1000.0;
            (got - want_us as f64).abs() <= want_us as f64 * 0.001 + 1.0
        };
        assert!(close(s.p50, 500), "{s:?}");
        assert!(close(s.p90, 900), "{s:?}");
        assert!(close(s.p99, 990), "{s:?}");
        assert!(close(s.p999, 999), "{s:?}");
        assert!(close(s.max, 1000), "{s:?}");
    }

    #[test]
    fn merging_is_the_same_as_recording_everything_in_one() {
        let mut a = Latencies::new();
        let mut b = Latencies::new();
        let mut all = Latencies::new();
        for i in 0..500 {
            a.record(ms(1));
            all.record(ms(1));
            if i % 5 == 0 {
                b.record(ms(100));
                all.record(ms(100));
            }
        }
        let mut merged = Latencies::new();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.summary(), all.summary());
        assert_eq!(merged.count(), 600);
        // 100 of 600 samples are slow: the 90th percentile is slow, the median is not.
        assert!(merged.summary().p50 < ms(2));
        assert!(merged.summary().p90 >= ms(99));
    }

    #[test]
    fn extremes_are_clamped_not_lost() {
        let mut l = Latencies::new();
        l.record(Duration::ZERO);
        l.record(Duration::from_secs(3600));
        assert_eq!(l.count(), 2);
        assert!(l.summary().max >= Duration::from_secs(119));
    }
}
