//! Rule hits in sliding windows: how many requests each route of each traffic policy sent to
//! each version, from the sidecars' `ReportRequest.rule_hits` deltas. One series per (policy,
//! generation, rule, version), each two rings of counts (60 × 1 s, 60 × 10 s) like the edges'
//! windows, in a bounded table: at most [`MAX_HIT_SERIES`] series, at most
//! [`GENERATIONS_KEPT`] generations per policy (a newer generation pushes the oldest out: weight
//! flips under load must not fill the table), and series silent for the longest window age out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use super::window::{FINE_SPAN_MS, LONGEST_WINDOW_MS, REPORT_INTERVAL_MS};

/// Most series kept (each at most about 2 KiB); new series beyond it are dropped (and counted)
/// until old ones age out.
pub const MAX_HIT_SERIES: usize = 20_000;
/// Most rule-hit entries taken from one report; the rest are dropped and counted.
pub const MAX_RULE_HITS_PER_REPORT: usize = 1_000;
/// Generations of one policy kept at once: the current one and a few before it (proxies that
/// have not acknowledged the newest yet still report under the previous one).
pub const GENERATIONS_KEPT: usize = 4;

/// What one hit series counts: the requests one route of one policy generation sent to one
/// version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HitKey {
    /// Namespace of the policy.
    pub namespace: String,
    /// Name of the policy.
    pub policy: String,
    /// Generation the hits were counted under (0: none).
    pub generation: u64,
    /// The rule's name; empty for the default route.
    pub rule: String,
    /// The version the route's split chose.
    pub version: String,
}

/// One entry of one report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HitReport {
    /// The series.
    pub key: HitKey,
    /// Hits in the report's interval.
    pub count: u64,
}

/// One route entry's hits over a window (see [`RuleHitTable::policy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteHits {
    /// The rule's name; empty for the default route.
    pub rule: String,
    /// The version.
    pub version: String,
    /// Hits in the window.
    pub hits: u64,
}

/// Counts per time slot, oldest first, at most `slots` of `width_ms` each.
#[derive(Debug, Clone)]
struct CountRing {
    width_ms: u64,
    slots: u64,
    counts: VecDeque<(u64, u64)>,
}

impl CountRing {
    fn new(width_ms: u64, slots: u64) -> Self {
        CountRing {
            width_ms,
            slots,
            counts: VecDeque::new(),
        }
    }

    fn add(&mut self, now_ms: u64, n: u64) {
        let index = now_ms / self.width_ms;
        match self.counts.back_mut() {
            // The current slot, or a clock that went back: the newest slot.
            Some((last, count)) if *last >= index => *count += n,
            _ => {
                while self
                    .counts
                    .front()
                    .is_some_and(|(i, _)| i + self.slots <= index)
                {
                    self.counts.pop_front();
                }
                self.counts.push_back((index, n));
            }
        }
    }

    /// The sum over the `window_ms` ending at `now_ms`, the current (partial) slot included.
    fn sum(&self, now_ms: u64, window_ms: u64) -> u64 {
        let k = window_ms.div_ceil(self.width_ms).clamp(1, self.slots);
        let current = now_ms / self.width_ms;
        let first = current.saturating_sub(k - 1);
        self.counts
            .iter()
            .filter(|(i, _)| (first..=current).contains(i))
            .map(|(_, n)| n)
            .sum()
    }
}

/// The windows of one series.
#[derive(Debug, Clone)]
struct HitSeries {
    fine: CountRing,
    coarse: CountRing,
    last_ms: u64,
}

impl HitSeries {
    fn new(now_ms: u64) -> Self {
        HitSeries {
            fine: CountRing::new(1_000, FINE_SPAN_MS / 1_000),
            coarse: CountRing::new(10_000, LONGEST_WINDOW_MS / 10_000),
            last_ms: now_ms,
        }
    }

    fn add(&mut self, now_ms: u64, n: u64) {
        self.fine.add(now_ms, n);
        self.coarse.add(now_ms, n);
        self.last_ms = self.last_ms.max(now_ms);
    }

    fn sum(&self, now_ms: u64, window_ms: u64) -> u64 {
        if window_ms <= FINE_SPAN_MS {
            self.fine.sum(now_ms, window_ms)
        } else {
            self.coarse.sum(now_ms, window_ms)
        }
    }

    fn expired(&self, now_ms: u64) -> bool {
        self.last_ms + LONGEST_WINDOW_MS + REPORT_INTERVAL_MS <= now_ms
    }
}

/// The series of one policy: by generation, then by (rule, version).
type PolicySeries = BTreeMap<u64, HashMap<(String, String), HitSeries>>;

#[derive(Debug, Default)]
struct Series {
    /// By (namespace, policy name).
    policies: HashMap<(String, String), PolicySeries>,
    /// Series held, over every policy and generation.
    len: usize,
}

impl Series {
    /// Removes the series silent for longer than the longest window.
    fn expire(&mut self, now_ms: u64) {
        let mut len = 0;
        self.policies.retain(|_, generations| {
            generations.retain(|_, routes| {
                routes.retain(|_, s| !s.expired(now_ms));
                len += routes.len();
                !routes.is_empty()
            });
            !generations.is_empty()
        });
        self.len = len;
    }
}

/// The bounded table of hit series.
#[derive(Debug, Default)]
pub struct RuleHitTable {
    series: Mutex<Series>,
}

impl RuleHitTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds the hits of one report received at `now_ms`; returns (accepted, dropped).
    pub fn record(&self, now_ms: u64, hits: Vec<HitReport>) -> (u64, u64) {
        let mut table = self.lock();
        let (mut accepted, mut dropped) = (0, 0);
        let mut swept = false;
        for HitReport { key, count } in hits {
            let HitKey {
                namespace,
                policy,
                generation,
                rule,
                version,
            } = key;
            let route = (rule, version);
            if let Some(s) = table
                .policies
                .get_mut(&(namespace.clone(), policy.clone()))
                .and_then(|g| g.get_mut(&generation))
                .and_then(|routes| routes.get_mut(&route))
            {
                s.add(now_ms, count);
                accepted += 1;
                continue;
            }
            if !swept && table.len >= MAX_HIT_SERIES {
                table.expire(now_ms);
                swept = true;
            }
            if table.len >= MAX_HIT_SERIES {
                dropped += 1;
                continue;
            }
            let Series { policies, len } = &mut *table;
            let generations = policies.entry((namespace, policy)).or_default();
            if !generations.contains_key(&generation) {
                // A new generation: one of the newest few of its policy, or nothing.
                if generations.len() >= GENERATIONS_KEPT {
                    let oldest = generations.keys().next().copied().unwrap_or(0);
                    if generation < oldest {
                        dropped += 1;
                        continue;
                    }
                    if let Some(gone) = generations.remove(&oldest) {
                        *len -= gone.len();
                    }
                }
            }
            let mut s = HitSeries::new(now_ms);
            s.add(now_ms, count);
            generations.entry(generation).or_default().insert(route, s);
            *len += 1;
            accepted += 1;
        }
        (accepted, dropped)
    }

    /// The hits of policy `namespace/policy` at `generation` in the `window_ms` ending at
    /// `now_ms`, per rule and version (rules by name, the default route as ""), sorted; entries
    /// without hits in the window are left out. Removes the series that aged out.
    pub fn policy(
        &self,
        now_ms: u64,
        window_ms: u64,
        namespace: &str,
        policy: &str,
        generation: u64,
    ) -> Vec<RouteHits> {
        let window_ms = window_ms.clamp(1_000, LONGEST_WINDOW_MS);
        let mut table = self.lock();
        table.expire(now_ms);
        let mut out: Vec<RouteHits> = table
            .policies
            .get(&(namespace.to_owned(), policy.to_owned()))
            .and_then(|g| g.get(&generation))
            .into_iter()
            .flatten()
            .filter_map(|((rule, version), s)| {
                let hits = s.sum(now_ms, window_ms);
                (hits > 0).then(|| RouteHits {
                    rule: rule.clone(),
                    version: version.clone(),
                    hits,
                })
            })
            .collect();
        drop(table);
        out.sort_by(|a, b| (&a.rule, &a.version).cmp(&(&b.rule, &b.version)));
        out
    }

    /// Series held now.
    pub fn len(&self) -> usize {
        self.lock().len
    }

    /// True when no series is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn key(generation: u64, rule: &str, version: &str) -> HitKey {
        HitKey {
            namespace: "default".into(),
            policy: "reviews".into(),
            generation,
            rule: rule.into(),
            version: version.into(),
        }
    }

    fn report(generation: u64, rule: &str, version: &str, count: u64) -> HitReport {
        HitReport {
            key: key(generation, rule, version),
            count,
        }
    }

    fn hits(
        table: &RuleHitTable,
        now: u64,
        window: u64,
        generation: u64,
    ) -> Vec<(String, String, u64)> {
        table
            .policy(now, window, "default", "reviews", generation)
            .into_iter()
            .map(|h| (h.rule, h.version, h.hits))
            .collect()
    }

    fn h(rule: &str, version: &str, n: u64) -> (String, String, u64) {
        (rule.into(), version.into(), n)
    }

    #[test]
    fn hits_add_up_per_rule_and_version_and_slide_out_of_the_window() {
        crate::test_tracing();
        let table = RuleHitTable::default();
        // 30 s of reports: each second 8 default hits on v1, 2 on v2, 1 for the testers rule.
        for s in 0..30 {
            let r = vec![
                report(3, "", "v1", 8),
                report(3, "", "v2", 2),
                report(3, "testers", "v3", 1),
            ];
            assert_eq!(table.record(T0 + s * 1000 + 500, r), (3, 0));
        }
        let now = T0 + 29_900;
        assert_eq!(
            hits(&table, now, 10_000, 3),
            [h("", "v1", 80), h("", "v2", 20), h("testers", "v3", 10)]
        );
        assert_eq!(
            hits(&table, now, 60_000, 3),
            [h("", "v1", 240), h("", "v2", 60), h("testers", "v3", 30)]
        );
        // Another generation or policy shows nothing of it.
        assert!(hits(&table, now, 60_000, 2).is_empty());
        assert!(
            table
                .policy(now, 60_000, "default", "ratings", 3)
                .is_empty()
        );
        // A minute later the short windows are empty, the 10 min one still has everything.
        let later = now + 61_000;
        assert!(hits(&table, later, 60_000, 3).is_empty());
        assert_eq!(
            hits(&table, later, 600_000, 3),
            [h("", "v1", 240), h("", "v2", 60), h("testers", "v3", 30)]
        );
        // After ten minutes of silence the series are gone.
        assert!(hits(&table, now + LONGEST_WINDOW_MS + 2_000, 600_000, 3).is_empty());
        assert!(table.is_empty());
    }

    #[test]
    fn older_generations_give_way_to_newer_ones() {
        crate::test_tracing();
        let table = RuleHitTable::default();
        // A hundred weight flips: only the newest generations are kept.
        for g in 1..=100 {
            table.record(
                T0 + g * 100,
                vec![report(g, "", "v1", 1), report(g, "", "v2", 1)],
            );
        }
        assert_eq!(table.len(), 2 * GENERATIONS_KEPT);
        assert_eq!(hits(&table, T0 + 10_100, 60_000, 100).len(), 2);
        assert!(hits(&table, T0 + 10_100, 60_000, 1).is_empty());
        // A late report of a generation already pushed out is dropped, not re-added.
        assert_eq!(
            table.record(T0 + 10_200, vec![report(5, "", "v1", 1)]),
            (0, 1)
        );
        // Known series keep counting; other policies are untouched.
        let other = HitReport {
            key: HitKey {
                policy: "ratings".into(),
                ..key(1, "", "v1")
            },
            count: 7,
        };
        assert_eq!(
            table.record(T0 + 10_300, vec![report(100, "", "v1", 1), other]),
            (2, 0)
        );
        assert_eq!(
            hits(&table, T0 + 10_400, 60_000, 100),
            [h("", "v1", 2), h("", "v2", 1)]
        );
        assert_eq!(
            table
                .policy(T0 + 10_400, 60_000, "default", "ratings", 1)
                .len(),
            1
        );
    }

    #[test]
    fn the_table_is_bounded() {
        crate::test_tracing();
        let table = RuleHitTable::default();
        let many: Vec<_> = (0..MAX_HIT_SERIES + 10)
            .map(|i| HitReport {
                key: HitKey {
                    policy: format!("p{i}"),
                    ..key(1, "", "v1")
                },
                count: 1,
            })
            .collect();
        assert_eq!(table.record(T0, many), (MAX_HIT_SERIES as u64, 10));
        assert_eq!(table.len(), MAX_HIT_SERIES);
        // Once they aged out, new series take their room.
        let late = T0 + LONGEST_WINDOW_MS + 2_000;
        assert_eq!(table.record(late, vec![report(1, "", "v1", 1)]), (1, 0));
        assert_eq!(table.len(), 1);
    }
}
