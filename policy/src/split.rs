//! Weighted choice of a version: at random, or sticky by a key hashed into 10 000 buckets.
//!
//! # The sticky scheme (a contract: changing it moves users between versions)
//! - `seed = xxh3_64_with_seed(service name as UTF-8, STICKY_SEED)`, then
//!   `bucket = xxh3_64_with_seed(key bytes, seed) % 10_000`. XXH3-64 is a fixed, specified
//!   function, so a key lands in the same bucket in every process, on every machine and release.
//! - Buckets are given to the route's entries cumulatively in the order the route lists them:
//!   entry `i` owns `[end(i-1), end(i))` with `end(i) = floor(10_000 * (w_0 + ... + w_i) / W)`
//!   where `W` is the sum of all weights. A weight-0 entry owns no bucket.
//!
//! # What is guaranteed
//! 1. While the route (versions, order, weights) is unchanged, a key always gets the same version.
//! 2. When one entry's weight grows and nothing else changes, every key on that entry stays on it:
//!    its start moves down (the weights before it are a smaller share of the larger sum) and its
//!    end moves up, and `floor` keeps both moves monotonic.
//! 3. When entry `j`'s weight grows, a key that changes version moves *towards* `j` and never past
//!    it: from an entry `i < j` to one in `(i, j]`, from an entry `i > j` to one in `[j, i)`.
//!    With two versions (the usual canary) every key that moves, moves to the grown one.
//!
//! Not guaranteed: with three or more versions a key may move between two entries that did not
//! change (e.g. `[a:50, b:50, c:0]` → `[a:50, b:50, c:100]` moves a quarter of the keys from `a`
//! to `b`); changing several weights at once, reordering entries or adding entries in the middle
//! may move any key. Keep the stable version first and the canary last, and change one weight
//! at a time (or keep the sum fixed in a two-version route), to move as few users as possible.
//!
//! Random choice uses the exact weights: `r = random * W / 2^32`, the entry whose cumulative range
//! holds `r`.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Number of sticky buckets.
pub const BUCKETS: u16 = 10_000;

/// The seed that turns a service name into the per-service key hash seed ("SERIN\0\0\x01").
pub const STICKY_SEED: u64 = 0x5345_5249_4E00_0001;

/// The per-service hash seed of [`sticky_bucket`]; computed once per policy.
pub fn service_seed(service: &str) -> u64 {
    xxh3_64_with_seed(service.as_bytes(), STICKY_SEED)
}

/// The bucket `0..BUCKETS` of a sticky key for the service whose [`service_seed`] is given.
pub fn sticky_bucket(service_seed: u64, key: &[u8]) -> u16 {
    (xxh3_64_with_seed(key, service_seed) % u64::from(BUCKETS)) as u16
}

/// A weighted split over versions, ready for choosing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    entries: Box<[SplitEntry]>,
    total: u64,
    /// Index of the only entry with traffic, when there is one: no choice to make.
    single: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SplitEntry {
    version: Box<str>,
    weight: u32,
    /// Exclusive end of this entry's range in weight units (`w_0 + ... + w_i`).
    cumulative: u64,
    /// Exclusive end of this entry's sticky buckets.
    bucket_end: u16,
}

impl Split {
    /// Builds a split from `(version, weight)` in route order; `None` if every weight is zero.
    pub fn new<V: Into<Box<str>>>(entries: impl IntoIterator<Item = (V, u32)>) -> Option<Split> {
        let mut cumulative = 0u64;
        let mut entries: Vec<SplitEntry> = entries
            .into_iter()
            .map(|(version, weight)| {
                cumulative += u64::from(weight);
                SplitEntry {
                    version: version.into(),
                    weight,
                    cumulative,
                    bucket_end: 0,
                }
            })
            .collect();
        let total = cumulative;
        if total == 0 {
            return None;
        }
        for entry in &mut entries {
            let end = u128::from(entry.cumulative) * u128::from(BUCKETS) / u128::from(total);
            entry.bucket_end = end as u16;
        }
        let mut with_traffic = entries.iter().enumerate().filter(|(_, e)| e.weight > 0);
        let first = with_traffic.next().map(|(i, _)| i);
        let single = if with_traffic.next().is_none() {
            first
        } else {
            None
        };
        Some(Split {
            entries: entries.into_boxed_slice(),
            total,
            single,
        })
    }

    /// Number of entries (including weight-0 ones).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a split has at least one entry with traffic.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The version of entry `index`.
    pub fn version(&self, index: usize) -> &str {
        &self.entries[index].version
    }

    /// The weight of entry `index`.
    pub fn weight(&self, index: usize) -> u32 {
        self.entries[index].weight
    }

    /// The entry that takes all traffic, if only one entry has a non-zero weight.
    pub fn single(&self) -> Option<usize> {
        self.single
    }

    /// The sticky bucket range `[start, end)` of entry `index`.
    pub fn buckets(&self, index: usize) -> std::ops::Range<u16> {
        let start = if index == 0 {
            0
        } else {
            self.entries[index - 1].bucket_end
        };
        start..self.entries[index].bucket_end
    }

    /// The entry owning sticky `bucket` (`bucket < BUCKETS`).
    pub fn pick_bucket(&self, bucket: u16) -> usize {
        self.entries
            .iter()
            .position(|e| bucket < e.bucket_end)
            .unwrap_or(self.entries.len() - 1)
    }

    /// The entry chosen by a uniformly random `u32`, with probability `weight / sum`.
    pub fn pick_random(&self, random: u32) -> usize {
        let r = (u128::from(random) * u128::from(self.total)) >> 32;
        let r = r as u64;
        self.entries
            .iter()
            .position(|e| r < e.cumulative)
            .unwrap_or(self.entries.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;

    fn split(weights: &[u32]) -> Split {
        Split::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| (format!("v{i}"), w)),
        )
        .unwrap()
    }

    #[test]
    fn hash_is_pinned() {
        // These numbers are the contract: a change here moves every sticky user.
        let seed = service_seed("reviews");
        assert_eq!(sticky_bucket(seed, b"alice"), PINNED_ALICE);
        assert_eq!(sticky_bucket(seed, b"bob"), PINNED_BOB);
        assert_ne!(
            sticky_bucket(service_seed("ratings"), b"alice"),
            PINNED_ALICE,
            "the service name is part of the hash"
        );
        // The function is standard XXH3-64 (the reference value for empty input, seed 0).
        assert_eq!(xxh3_64_with_seed(b"", 0), 0x2D06_8005_38D3_94C2);
    }

    const PINNED_ALICE: u16 = 9649;
    const PINNED_BOB: u16 = 1991;

    #[test]
    fn buckets_are_cumulative_in_route_order() {
        let s = split(&[95, 5]);
        assert_eq!(s.buckets(0), 0..9500);
        assert_eq!(s.buckets(1), 9500..10_000);
        let s = split(&[1, 0, 2]);
        assert_eq!(s.buckets(0), 0..3333);
        assert_eq!(s.buckets(1), 3333..3333);
        assert_eq!(s.buckets(2), 3333..10_000);
        assert_eq!(s.pick_bucket(3332), 0);
        assert_eq!(s.pick_bucket(3333), 2);
        assert_eq!(s.pick_bucket(9999), 2);
    }

    #[test]
    fn raising_canary_from_5_to_10_keeps_its_users() {
        let before = split(&[95, 5]);
        let after = split(&[90, 10]);
        for bucket in 0..BUCKETS {
            if before.pick_bucket(bucket) == 1 {
                assert_eq!(after.pick_bucket(bucket), 1, "bucket {bucket}");
            }
        }
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let s = split(&[0, 3, 0, 1, 0]);
        for r in [0, 1, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
            assert!(s.weight(s.pick_random(r)) > 0);
        }
        for b in 0..BUCKETS {
            assert!(s.weight(s.pick_bucket(b)) > 0);
        }
        assert!(Split::new([("a", 0), ("b", 0)]).is_none());
        assert_eq!(split(&[0, 7, 0]).single(), Some(1));
        assert_eq!(split(&[1, 7]).single(), None);
    }

    #[test]
    fn random_choice_extremes_cover_first_and_last() {
        let s = split(&[1, 1]);
        assert_eq!(s.pick_random(0), 0);
        assert_eq!(s.pick_random(u32::MAX), 1);
        assert_eq!(s.pick_random(1 << 31), 1);
        assert_eq!(s.pick_random((1 << 31) - 1), 0);
    }

    /// Weights as generated for the property tests: 2 to 5 entries, some of them zero.
    fn weights() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::vec(prop_oneof![Just(0u32), 1u32..=1000], 2..=5)
            .prop_filter("some weight is non-zero", |w| w.iter().any(|&x| x > 0))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Over 100k uniformly random draws every entry's count is within 3σ of the binomial mean
        /// (plus one draw for the rounding of `random * W / 2^32`).
        #[test]
        fn random_choice_respects_weights(weights in weights(), seed in any::<u64>()) {
            const DRAWS: u32 = 100_000;
            let s = split(&weights);
            let mut counts = vec![0u32; weights.len()];
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..DRAWS {
                counts[s.pick_random(rng.random())] += 1;
            }
            let total: u32 = weights.iter().sum();
            for (i, (&w, &n)) in weights.iter().zip(&counts).enumerate() {
                let p = f64::from(w) / f64::from(total);
                let mean = f64::from(DRAWS) * p;
                let sigma = (f64::from(DRAWS) * p * (1.0 - p)).sqrt();
                prop_assert!(
                    (f64::from(n) - mean).abs() <= 3.0 * sigma + 1.0,
                    "entry {} weight {} of {}: {} draws, expected {:.0} ± {:.0}", i, w, total, n, mean, 3.0 * sigma
                );
                if w == 0 {
                    prop_assert_eq!(n, 0);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Guarantee 1: unchanged weights, same version for a key, however often it is asked.
        #[test]
        fn a_key_keeps_its_version_while_weights_are_unchanged(
            weights in weights(), key in prop::collection::vec(any::<u8>(), 0..40)
        ) {
            let seed = service_seed("reviews");
            let first = split(&weights).pick_bucket(sticky_bucket(seed, &key));
            for _ in 0..3 {
                let again = split(&weights).pick_bucket(sticky_bucket(seed, &key));
                prop_assert_eq!(again, first);
            }
        }

        /// Guarantees 2 and 3 over every bucket (so over every possible key): when entry `j` grows,
        /// keys on `j` stay, and keys that move go towards `j`, never past it.
        #[test]
        fn sticky_assignment_is_monotonic_when_one_weight_grows(
            weights in weights(), j in 0usize..5, growth in 1u32..=2000
        ) {
            let j = j % weights.len();
            let mut grown = weights.clone();
            grown[j] += growth;
            let before = split(&weights);
            let after = split(&grown);
            for bucket in 0..BUCKETS {
                let (b, a) = (before.pick_bucket(bucket), after.pick_bucket(bucket));
                if b == j {
                    prop_assert_eq!(a, j, "bucket {} left the grown entry {}", bucket, j);
                } else if b < j {
                    prop_assert!(b <= a && a <= j, "bucket {}: {} -> {} (grown {})", bucket, b, a, j);
                } else {
                    prop_assert!(j <= a && a <= b, "bucket {}: {} -> {} (grown {})", bucket, b, a, j);
                }
            }
        }

        /// With two versions, raising one moves keys only onto it.
        #[test]
        fn two_version_canary_only_gains(stable in 0u32..=100, canary in 0u32..100, growth in 1u32..=100) {
            prop_assume!(stable + canary > 0);
            let before = split(&[stable, canary]);
            let after = split(&[stable, canary + growth]);
            for bucket in 0..BUCKETS {
                let (b, a) = (before.pick_bucket(bucket), after.pick_bucket(bucket));
                prop_assert!(a == b || a == 1, "bucket {} moved {} -> {}", bucket, b, a);
            }
        }
    }

    #[test]
    fn what_is_not_guaranteed_three_versions_may_shift_between_unchanged_entries() {
        // Documented limit of cumulative assignment: growing `c` moves part of `a` onto `b`.
        let before = split(&[50, 50, 0]);
        let after = split(&[50, 50, 100]);
        let moved_a_to_b = (0..BUCKETS)
            .filter(|&b| before.pick_bucket(b) == 0 && after.pick_bucket(b) == 1)
            .count();
        assert_eq!(moved_a_to_b, 2500);
    }
}
