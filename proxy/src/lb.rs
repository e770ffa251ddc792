//! Load balancing: power of two choices over the ready endpoints, comparing each one's load as
//! (requests in flight + 1) × its latency EWMA (divided by the endpoint's weight), the "peak EWMA" idea of linkerd and Finagle
//! without its decay clock. State lives in atomics: picking takes no lock.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Weight of a new latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.25;
/// The latency an endpoint starts with (so new endpoints are tried, but not flooded).
const INITIAL_LATENCY_NANOS: f64 = 1_000_000.0;

/// What the balancer knows about one endpoint.
#[derive(Debug)]
pub struct LbStats {
    in_flight: AtomicU32,
    ewma_nanos: AtomicU64,
}

impl Default for LbStats {
    fn default() -> Self {
        LbStats {
            in_flight: AtomicU32::new(0),
            ewma_nanos: AtomicU64::new(INITIAL_LATENCY_NANOS.to_bits()),
        }
    }
}

impl LbStats {
    /// Counts a request in flight; every `begin` needs one [`LbStats::end`].
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// Ends a request counted by [`LbStats::begin`].
    pub fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Folds one observed latency (to response headers, or to connect) into the average.
    pub fn observe(&self, latency: Duration) {
        let sample = latency.as_nanos() as f64;
        // A lost update under a race only drops one sample: good enough for balancing.
        let old = f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed));
        let new = old + EWMA_ALPHA * (sample - old);
        self.ewma_nanos.store(new.to_bits(), Ordering::Relaxed);
    }

    /// The load score: lower is better.
    pub fn load(&self) -> f64 {
        let in_flight = f64::from(self.in_flight.load(Ordering::Relaxed));
        (in_flight + 1.0) * f64::from_bits(self.ewma_nanos.load(Ordering::Relaxed))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Picks the index of one of `items` by power of two choices on `score` (lower is better, e.g.
/// [`LbStats::load`] divided by the endpoint's weight); `None` when empty.
pub fn pick<T>(items: &[T], score: impl Fn(&T) -> f64) -> Option<usize> {
    match items.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = rand::random_range(0..n);
            // A second, different index.
            let b = (a + 1 + rand::random_range(0..n - 1)) % n;
            Some(if score(&items[a]) <= score(&items[b]) {
                a
            } else {
                b
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let stats = [LbStats::default(), LbStats::default()];
        for _ in 0..5 {
            stats[0].begin();
        }
        for _ in 0..50 {
            assert_eq!(pick(&stats, LbStats::load), Some(1));
        }
    }

    #[test]
    fn prefers_the_faster_and_spreads_among_equals() {
        let stats = [LbStats::default(), LbStats::default(), LbStats::default()];
        for _ in 0..20 {
            stats[2].observe(Duration::from_millis(50));
        }
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[pick(&stats, LbStats::load).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1000 && counts[1] > 1000, "{counts:?}");
    }

    #[test]
    fn weights_scale_the_share() {
        let stats = [LbStats::default(), LbStats::default()];
        let weights = [1.0, 4.0];
        // Equal load: the heavier endpoint always wins the comparison.
        for _ in 0..50 {
            assert_eq!(pick(&[0, 1], |&i| stats[i].load() / weights[i]), Some(1));
        }
    }

    #[test]
    fn in_flight_counts() {
        let s = LbStats::default();
        s.begin();
        assert_eq!(s.in_flight(), 1);
        s.end();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(pick::<LbStats>(&[], LbStats::load), None);
    }
}
