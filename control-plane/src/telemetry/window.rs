//! Sliding windows of one edge's traffic in fixed memory: two rings of time slots, 60 × 1 s and
//! 60 × 10 s. Windows up to a minute are read from the fine ring (exact to the second), longer
//! ones up to [`LONGEST_WINDOW_MS`] from the coarse ring (exact to 10 s). Every function takes the
//! time as an explicit `now_ms`, so tests drive the clock instead of sleeping.

use std::collections::{BTreeMap, VecDeque};

/// Longest window kept (10 minutes).
pub const LONGEST_WINDOW_MS: u64 = 600_000;
/// The ring of 1 s slots covers this much.
pub const FINE_SPAN_MS: u64 = 60_000;
/// Most histogram buckets per edge (bounds); longer histograms are refused as malformed.
pub const MAX_BUCKETS: usize = 64;
/// Most distinct (response code, gRPC status) pairs per slot; the excess still counts as requests.
pub const MAX_OUTCOMES: usize = 16;
/// Most distinct mirror outcome names per slot.
pub const MAX_MIRROR_OUTCOMES: usize = 8;
/// Most client principals (SPIFFE IDs) one edge remembers; a new one beyond it replaces the one
/// seen longest ago.
pub const MAX_PRINCIPALS: usize = 8;
/// How much traffic one report covers when it does not say (the sidecars' default interval); a
/// report's own `interval_end - interval_start` is used when present.
pub const REPORT_INTERVAL_MS: u64 = 1_000;

const FINE: Tier = Tier {
    width_ms: 1_000,
    slots: 60,
};
const COARSE: Tier = Tier {
    width_ms: 10_000,
    slots: 60,
};

#[derive(Debug, Clone, Copy)]
struct Tier {
    width_ms: u64,
    slots: usize,
}

/// A histogram of request durations as reported: bucket upper bounds in seconds (ascending, +Inf
/// implied) and counts per bucket, not cumulative (one more count than bounds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Upper bounds, seconds.
    pub bounds: Vec<f64>,
    /// Counts per bucket; the last one is above the last bound.
    pub counts: Vec<u64>,
}

/// Whether a request with this outcome failed on the server's side: HTTP 5xx, no response, or a
/// gRPC status other than the client-error ones (admin.proto `TopologyEdge.error_rate`).
pub fn is_error(response_code: u32, grpc_status: Option<u32>) -> bool {
    if response_code == 0 || response_code >= 500 {
        return true;
    }
    match grpc_status {
        // OK, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
        // FAILED_PRECONDITION, OUT_OF_RANGE, UNAUTHENTICATED.
        None | Some(0 | 3 | 5 | 6 | 7 | 9 | 11 | 16) => false,
        Some(_) => true,
    }
}

/// Counts of one slot (or of a whole window once slots are summed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    /// Requests (HTTP and gRPC).
    pub requests: u64,
    /// Requests that failed (see [`is_error`]).
    pub errors: u64,
    /// Requests by (response code, gRPC status), at most [`MAX_OUTCOMES`] pairs.
    pub responses: Vec<((u32, Option<u32>), u64)>,
    /// Durations per bucket of the edge's bounds.
    pub histogram: Vec<u64>,
    /// Sum of durations, seconds.
    pub duration_sum_seconds: f64,
    /// Number of durations.
    pub duration_count: u64,
    /// TCP connections opened.
    pub tcp_opened: u64,
    /// TCP connections closed.
    pub tcp_closed: u64,
    /// TCP bytes from the destination to the source (response direction).
    pub sent_bytes: u64,
    /// TCP bytes from the source to the destination (request direction).
    pub received_bytes: u64,
    /// Requests that a policy sent to this version as a fallback.
    pub version_fallbacks: u64,
    /// Mirror outcomes, at most [`MAX_MIRROR_OUTCOMES`] names.
    pub mirror_outcomes: Vec<(String, u64)>,
    /// Requests that came over mTLS (a verified client certificate).
    pub mtls_requests: u64,
    /// TCP connections opened over mTLS.
    pub mtls_connections: u64,
}

fn add_bounded<K: PartialEq + Clone>(list: &mut Vec<(K, u64)>, key: &K, n: u64, max: usize) {
    if let Some(e) = list.iter_mut().find(|(k, _)| k == key) {
        e.1 += n;
    } else if list.len() < max {
        list.push((key.clone(), n));
    }
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.errors += o.errors;
        for (k, n) in &o.responses {
            add_bounded(&mut self.responses, k, *n, MAX_OUTCOMES);
        }
        if self.histogram.len() < o.histogram.len() {
            self.histogram.resize(o.histogram.len(), 0);
        }
        for (i, n) in o.histogram.iter().enumerate() {
            self.histogram[i] += n;
        }
        self.duration_sum_seconds += o.duration_sum_seconds;
        self.duration_count += o.duration_count;
        self.tcp_opened += o.tcp_opened;
        self.tcp_closed += o.tcp_closed;
        self.sent_bytes += o.sent_bytes;
        self.received_bytes += o.received_bytes;
        self.version_fallbacks += o.version_fallbacks;
        self.mtls_requests += o.mtls_requests;
        self.mtls_connections += o.mtls_connections;
        for (k, n) in &o.mirror_outcomes {
            add_bounded(&mut self.mirror_outcomes, k, *n, MAX_MIRROR_OUTCOMES);
        }
    }

    fn clear(&mut self) {
        let (mut r, mut h, mut m) = (
            std::mem::take(&mut self.responses),
            std::mem::take(&mut self.histogram),
            std::mem::take(&mut self.mirror_outcomes),
        );
        r.clear();
        h.iter_mut().for_each(|n| *n = 0);
        m.clear();
        *self = Counts {
            responses: r,
            histogram: h,
            mirror_outcomes: m,
            ..Counts::default()
        };
    }

    fn is_empty(&self) -> bool {
        self.requests == 0
            && self.tcp_opened == 0
            && self.tcp_closed == 0
            && self.sent_bytes == 0
            && self.received_bytes == 0
            && self.version_fallbacks == 0
            && self.mirror_outcomes.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        self.responses.capacity() * size_of::<((u32, Option<u32>), u64)>()
            + self.histogram.capacity() * 8
            + self
                .mirror_outcomes
                .iter()
                .map(|(k, _)| k.capacity())
                .sum::<usize>()
            + self.mirror_outcomes.capacity() * size_of::<(String, u64)>()
    }
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// Slot number (time / width).
    index: u64,
    counts: Counts,
}

/// The slots of one tier that hold traffic, oldest first: an idle or young edge holds few.
#[derive(Debug, Clone)]
struct Ring {
    tier: Tier,
    slots: VecDeque<Slot>,
}

impl Ring {
    fn new(tier: Tier) -> Self {
        Ring {
            tier,
            slots: VecDeque::new(),
        }
    }

    fn add(&mut self, now_ms: u64, c: &Counts) {
        let index = now_ms / self.tier.width_ms;
        let n = self.tier.slots as u64;
        match self.slots.back_mut() {
            // The current slot, or a clock that went back: add to the newest slot.
            Some(last) if last.index >= index => last.counts.add(c),
            _ => {
                let mut reused = None;
                while self.slots.front().is_some_and(|s| s.index + n <= index) {
                    reused = self.slots.pop_front();
                }
                let mut slot = match reused {
                    // Keep the allocations of a slot that fell out of the ring.
                    Some(mut old) => {
                        old.counts.clear();
                        old
                    }
                    None => Slot::default(),
                };
                slot.index = index;
                slot.counts.add(c);
                self.slots.push_back(slot);
            }
        }
    }

    /// Sums the slots of the `window_ms` ending at `now_ms` (the current, partial slot included);
    /// returns the sum and when the summed span starts.
    fn sum(&self, now_ms: u64, window_ms: u64) -> (Counts, u64) {
        let w = self.tier.width_ms;
        let k = window_ms.div_ceil(w).clamp(1, self.tier.slots as u64);
        let current = now_ms / w;
        let first = current.saturating_sub(k - 1);
        let mut total = Counts::default();
        for slot in self
            .slots
            .iter()
            .filter(|s| (first..=current).contains(&s.index))
        {
            total.add(&slot.counts);
        }
        (total, first * w)
    }
}

/// What one edge did over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WindowStats {
    /// How long the numbers cover, ms: the window, or less for an edge younger than it.
    pub covered_ms: u64,
    /// The summed counts.
    pub counts: Counts,
    /// Requests per second (for TCP-only traffic: connections opened per second).
    pub rps: f64,
    /// Fraction of requests that failed.
    pub error_rate: f64,
    /// Median duration, ms (`None` without a histogram).
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// TCP bytes per second from the source to the destination (request direction).
    pub received_bytes_per_second: f64,
    /// TCP bytes per second from the destination to the source (response direction).
    pub sent_bytes_per_second: f64,
    /// Connections open now (opened minus closed since the edge was first seen).
    pub active_connections: u64,
    /// Fraction 0..=1 of the requests (without requests: of the TCP connections opened) that
    /// came over mTLS.
    pub mtls_fraction: f64,
    /// The client principals (SPIFFE IDs of verified certificates) seen in the window, sorted;
    /// at most [`MAX_PRINCIPALS`].
    pub source_principals: Vec<String>,
}

/// The `q` quantile (0..=1) of a non-cumulative histogram, in the bounds' unit, interpolating
/// linearly inside the bucket as Prometheus' `histogram_quantile` does; the overflow bucket
/// answers with the last bound (nothing better is known). `None` when it is empty.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let target = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= target {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let into = ((target - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * into);
        }
        below += n;
    }
    bounds.last().copied()
}

/// Rebins `h` into `bounds`: each reported bucket's count goes to the first bucket of `bounds`
/// whose upper bound is at or above the reported bucket's upper bound.
fn rebin(bounds: &[f64], h: &Histogram) -> Vec<u64> {
    let mut out = vec![0; bounds.len() + 1];
    for (i, &n) in h.counts.iter().enumerate() {
        let upper = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let j = bounds.partition_point(|b| *b < upper);
        out[j] += n;
    }
    out
}

/// The windows of one edge.
#[derive(Debug, Clone)]
pub struct EdgeWindows {
    bounds: Vec<f64>,
    fine: Ring,
    coarse: Ring,
    /// When the traffic of the edge's first report started: its arrival minus its interval.
    since_ms: u64,
    /// The first report's interval, ms (the shortest span a rate is averaged over).
    first_interval_ms: u64,
    last_ms: u64,
    opened: u64,
    closed: u64,
    /// Client principals seen, with when each was last reported; at most [`MAX_PRINCIPALS`].
    principals: Vec<(String, u64)>,
}

/// One report's counts for one edge, as the window code takes them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Requests by (response code, gRPC status).
    pub responses: BTreeMap<(u32, Option<u32>), u64>,
    /// Request durations.
    pub histogram: Option<Histogram>,
    /// Sum of durations, seconds.
    pub duration_sum_seconds: f64,
    /// Number of durations.
    pub duration_count: u64,
    /// Connections opened.
    pub tcp_opened: u64,
    /// Connections closed.
    pub tcp_closed: u64,
    /// TCP bytes from the destination to the source (response direction; telemetry.proto
    /// `sent_bytes`, the sidecar's `serin_tcp_received_bytes_total`).
    pub sent_bytes: u64,
    /// TCP bytes from the source to the destination (request direction; telemetry.proto
    /// `received_bytes`, the sidecar's `serin_tcp_sent_bytes_total`).
    pub received_bytes: u64,
    /// Requests that a policy sent to this version as a fallback.
    pub version_fallbacks: u64,
    /// Mirror outcomes.
    pub mirror_outcomes: BTreeMap<String, u64>,
    /// The traffic came over mTLS (telemetry.proto `mtls`).
    pub mtls: bool,
    /// The verified client's SPIFFE ID when `mtls` ("" when unknown).
    pub source_principal: String,
}

impl EdgeWindows {
    /// An edge first seen at `now_ms`, in a report covering the `interval_ms` before it.
    pub fn new(now_ms: u64, interval_ms: u64) -> Self {
        let interval_ms = interval_ms.max(1);
        EdgeWindows {
            bounds: Vec::new(),
            fine: Ring::new(FINE),
            coarse: Ring::new(COARSE),
            since_ms: now_ms.saturating_sub(interval_ms),
            first_interval_ms: interval_ms,
            last_ms: now_ms,
            opened: 0,
            closed: 0,
            principals: Vec::new(),
        }
    }

    /// When the edge last reported.
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }

    /// The edge's histogram bounds (seconds); empty before the first histogram.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Adds one report received at `now_ms`.
    pub fn record(&mut self, now_ms: u64, d: &Delta) {
        let mut c = Counts::default();
        for (&(code, grpc), &n) in &d.responses {
            c.requests += n;
            if is_error(code, grpc) {
                c.errors += n;
            }
            add_bounded(&mut c.responses, &(code, grpc), n, MAX_OUTCOMES);
        }
        if let Some(h) = &d.histogram {
            if self.bounds.is_empty() {
                self.bounds.clone_from(&h.bounds);
            }
            c.histogram = if h.bounds == self.bounds {
                h.counts.clone()
            } else {
                rebin(&self.bounds, h)
            };
        }
        c.duration_sum_seconds = d.duration_sum_seconds;
        c.duration_count = d.duration_count;
        c.tcp_opened = d.tcp_opened;
        c.tcp_closed = d.tcp_closed;
        c.sent_bytes = d.sent_bytes;
        c.received_bytes = d.received_bytes;
        c.version_fallbacks = d.version_fallbacks;
        for (k, &n) in &d.mirror_outcomes {
            add_bounded(&mut c.mirror_outcomes, k, n, MAX_MIRROR_OUTCOMES);
        }
        if d.mtls {
            c.mtls_requests = c.requests;
            c.mtls_connections = d.tcp_opened;
            if !d.source_principal.is_empty() {
                self.saw_principal(&d.source_principal, now_ms);
            }
        }
        self.opened += d.tcp_opened;
        self.closed += d.tcp_closed;
        self.fine.add(now_ms, &c);
        self.coarse.add(now_ms, &c);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Remembers `principal` as seen at `now_ms`, in place of the one seen longest ago when
    /// [`MAX_PRINCIPALS`] are known.
    fn saw_principal(&mut self, principal: &str, now_ms: u64) {
        if let Some(p) = self.principals.iter_mut().find(|(p, _)| p == principal) {
            p.1 = p.1.max(now_ms);
        } else if self.principals.len() < MAX_PRINCIPALS {
            self.principals.push((principal.to_owned(), now_ms));
        } else if let Some(oldest) = self.principals.iter_mut().min_by_key(|(_, t)| *t) {
            *oldest = (principal.to_owned(), now_ms);
        }
    }

    /// The edge over the `window_ms` ending at `now_ms`; `None` when it had no traffic then.
    pub fn window(&self, now_ms: u64, window_ms: u64) -> Option<WindowStats> {
        let window_ms = window_ms.clamp(1_000, LONGEST_WINDOW_MS);
        let ring = if window_ms <= FINE_SPAN_MS {
            &self.fine
        } else {
            &self.coarse
        };
        let (counts, span_start) = ring.sum(now_ms, window_ms);
        if counts.is_empty() {
            return None;
        }
        // A young edge is averaged over its own life (its first report covers its interval
        // before it arrived), not over a window it was not there for.
        let start = span_start.max(self.since_ms);
        let covered_ms = now_ms.saturating_sub(start).max(self.first_interval_ms);
        let secs = covered_ms as f64 / 1000.0;
        let rps = if counts.requests > 0 {
            counts.requests as f64 / secs
        } else {
            counts.tcp_opened as f64 / secs
        };
        let error_rate = if counts.requests == 0 {
            0.0
        } else {
            counts.errors as f64 / counts.requests as f64
        };
        let q = |p| quantile(&self.bounds, &counts.histogram, p).map(|s| s * 1000.0);
        let (units, mtls_units) = if counts.requests > 0 {
            (counts.requests, counts.mtls_requests)
        } else {
            (counts.tcp_opened, counts.mtls_connections)
        };
        let mtls_fraction = if units == 0 {
            0.0
        } else {
            mtls_units.min(units) as f64 / units as f64
        };
        let mut source_principals: Vec<String> = self
            .principals
            .iter()
            .filter(|(_, seen)| *seen >= span_start)
            .map(|(p, _)| p.clone())
            .collect();
        source_principals.sort();
        Some(WindowStats {
            mtls_fraction,
            source_principals,
            covered_ms,
            rps,
            error_rate,
            p50_ms: q(0.50),
            p95_ms: q(0.95),
            p99_ms: q(0.99),
            received_bytes_per_second: counts.received_bytes as f64 / secs,
            sent_bytes_per_second: counts.sent_bytes as f64 / secs,
            active_connections: self.opened.saturating_sub(self.closed),
            counts,
        })
    }

    /// Bytes this edge holds on the heap (for the memory bound's test and `/metrics`).
    pub fn heap_bytes(&self) -> usize {
        let ring = |r: &Ring| {
            r.slots.capacity() * size_of::<Slot>()
                + r.slots.iter().map(|s| s.counts.heap_bytes()).sum::<usize>()
        };
        self.bounds.capacity() * 8
            + ring(&self.fine)
            + ring(&self.coarse)
            + self.principals.capacity() * size_of::<(String, u64)>()
            + self
                .principals
                .iter()
                .map(|(p, _)| p.capacity())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: [f64; 5] = [0.005, 0.01, 0.05, 0.1, 1.0];

    fn delta(ok: u64, failed: u64, hist: [u64; 6]) -> Delta {
        Delta {
            responses: [((200, None), ok), ((503, None), failed)].into(),
            histogram: Some(Histogram {
                bounds: BOUNDS.to_vec(),
                counts: hist.to_vec(),
            }),
            duration_count: hist.iter().sum(),
            received_bytes: 100 * (ok + failed),
            ..Delta::default()
        }
    }

    #[test]
    fn quantiles_interpolate_inside_buckets_like_prometheus() {
        crate::test_tracing();
        // 100 requests, all in (0.01, 0.05]: the median is half-way through that bucket.
        let counts = [0, 0, 100, 0, 0, 0];
        let p50 = quantile(&BOUNDS, &counts, 0.5).unwrap();
        assert!((p50 - 0.03).abs() < 1e-9, "{p50}");
        // 90 fast, 10 slow: p50 in the first bucket, p99 in (0.1, 1].
        let counts = [90, 0, 0, 0, 10, 0];
        assert!(quantile(&BOUNDS, &counts, 0.5).unwrap() <= 0.005);
        let p99 = quantile(&BOUNDS, &counts, 0.99).unwrap();
        assert!((p99 - (0.1 + 0.9 * 0.9)).abs() < 1e-9, "{p99}");
        // Above the last bound: the last bound, not a made-up number.
        assert_eq!(quantile(&BOUNDS, &[0, 0, 0, 0, 0, 7], 0.99), Some(1.0));
        assert_eq!(quantile(&BOUNDS, &[0; 6], 0.5), None);
    }

    #[test]
    fn errors_are_server_side_failures() {
        crate::test_tracing();
        assert!(is_error(503, None));
        assert!(is_error(0, None));
        assert!(!is_error(404, None));
        assert!(!is_error(200, Some(5)), "NOT_FOUND is the client's");
        assert!(is_error(200, Some(14)), "UNAVAILABLE is the server's");
        assert!(is_error(200, Some(2)), "UNKNOWN is the server's");
    }

    #[test]
    fn windows_slide_with_the_clock() {
        crate::test_tracing();
        let t0 = 1_000_000_000;
        let mut e = EdgeWindows::new(t0, 1_000);
        // 20 seconds at 50 requests per second (one report a second, 10 % failing), then 30
        // seconds at 10 per second without failures.
        for s in 0..20 {
            e.record(t0 + s * 1000 + 500, &delta(45, 5, [0, 50, 0, 0, 0, 0]));
        }
        for s in 20..50 {
            e.record(t0 + s * 1000 + 500, &delta(10, 0, [0, 0, 10, 0, 0, 0]));
        }
        let now = t0 + 50_000 + 600;
        let w10 = e.window(now, 10_000).unwrap();
        assert!((w10.rps - 10.0).abs() < 1.2, "{}", w10.rps);
        assert_eq!(w10.error_rate, 0.0);
        assert!(w10.p50_ms.unwrap() > 10.0, "the slow phase only");
        let w60 = e.window(now, 60_000).unwrap();
        // 1000 + 300 requests over the edge's 51 s of life.
        assert!((w60.rps - 1300.0 / 51.1).abs() < 1.0, "{}", w60.rps);
        assert!((w60.error_rate - 100.0 / 1300.0).abs() < 1e-9);
        assert!((w60.received_bytes_per_second - 100.0 * w60.rps).abs() < 1.0);
        // Ten minutes later the 10 s and 1 min windows are empty; the 10 min one still has it.
        let later = now + 120_000;
        assert_eq!(e.window(later, 10_000), None);
        assert_eq!(e.window(later, 60_000), None);
        let w600 = e.window(later, 600_000).unwrap();
        assert_eq!(w600.counts.requests, 1300);
        assert!(e.window(now + 700_000, 600_000).is_none());
    }

    #[test]
    fn young_edges_are_averaged_over_their_life() {
        crate::test_tracing();
        let t0 = 5_000_000;
        let mut e = EdgeWindows::new(t0, 1_000);
        for s in 0..3 {
            e.record(t0 + s * 1000, &delta(100, 0, [100, 0, 0, 0, 0, 0]));
        }
        let w = e.window(t0 + 2_100, 600_000).unwrap();
        // 300 requests over 3.1 s, not over ten minutes.
        assert!((w.rps - 300.0 / 3.1).abs() < 0.5, "{}", w.rps);
    }

    #[test]
    fn a_new_edge_covers_its_first_report_interval_not_a_guess() {
        crate::test_tracing();
        // A proxy reporting every 200 ms: 20 requests in its first report are 100 rps, not 20.
        let t0 = 7_000_000;
        let mut e = EdgeWindows::new(t0, 200);
        e.record(t0, &delta(20, 0, [20, 0, 0, 0, 0, 0]));
        let w = e.window(t0, 10_000).unwrap();
        assert_eq!(w.covered_ms, 200);
        assert!((w.rps - 100.0).abs() < 1e-9, "{}", w.rps);
        // And one reporting every 5 s: 50 requests over its first 5 s are 10 rps.
        let mut slow = EdgeWindows::new(t0, 5_000);
        slow.record(t0, &delta(50, 0, [50, 0, 0, 0, 0, 0]));
        let w = slow.window(t0 + 100, 60_000).unwrap();
        assert!((w.rps - 50.0 / 5.1).abs() < 1e-9, "{}", w.rps);
    }

    #[test]
    fn fallbacks_and_mirror_outcomes_alone_keep_an_edge_visible() {
        crate::test_tracing();
        let mut e = EdgeWindows::new(0, 1_000);
        let d = Delta {
            version_fallbacks: 0,
            mirror_outcomes: [("dropped".to_owned(), 3)].into(),
            ..Delta::default()
        };
        e.record(1_000, &d);
        let w = e.window(1_500, 10_000).unwrap();
        assert_eq!(w.counts.mirror_outcomes, [("dropped".to_owned(), 3)]);
        let mut f = EdgeWindows::new(0, 1_000);
        f.record(
            1_000,
            &Delta {
                version_fallbacks: 2,
                ..Delta::default()
            },
        );
        assert_eq!(f.window(1_500, 10_000).unwrap().counts.version_fallbacks, 2);
    }

    #[test]
    fn other_bounds_are_rebinned_into_the_edge_bounds() {
        crate::test_tracing();
        let mut e = EdgeWindows::new(0, 1_000);
        e.record(1000, &delta(10, 0, [10, 0, 0, 0, 0, 0]));
        let other = Delta {
            responses: [((200, None), 10)].into(),
            histogram: Some(Histogram {
                bounds: vec![0.02, 0.5],
                counts: vec![0, 10, 0],
            }),
            ..Delta::default()
        };
        e.record(1500, &other);
        let w = e.window(2000, 10_000).unwrap();
        // (0.02, 0.5] lands in the edge's (0.1, 1] bucket: conservative, never faster than seen.
        assert_eq!(w.counts.histogram, vec![10, 0, 0, 0, 10, 0]);
    }

    #[test]
    fn memory_per_edge_is_fixed_however_long_it_reports() {
        crate::test_tracing();
        let mut e = EdgeWindows::new(0, 1_000);
        let mut d = delta(1, 1, [1, 1, 1, 1, 1, 1]);
        d.mirror_outcomes = [("sent".to_owned(), 1)].into();
        for s in 0..2_000 {
            // Many distinct outcomes: bounded per slot.
            d.responses.insert((200 + (s % 300) as u32, None), 1);
            e.record(s * 1000, &d);
        }
        let bytes = e.heap_bytes();
        assert!(bytes <= MAX_EDGE_BYTES, "{bytes} bytes");
        let w = e.window(2_000_000, 10_000).unwrap();
        assert!(w.counts.responses.len() <= MAX_OUTCOMES);
    }

    #[test]
    fn mtls_share_and_principals_follow_the_window() {
        crate::test_tracing();
        let t0 = 9_000_000;
        let mut e = EdgeWindows::new(t0, 1_000);
        let alice = "spiffe://cluster.local/ns/default/sa/alice";
        let secured = |n, principal: &str| Delta {
            mtls: true,
            source_principal: principal.to_owned(),
            ..delta(n, 0, [n, 0, 0, 0, 0, 0])
        };
        // 30 s of 30 mTLS requests from alice and 10 plaintext ones per second, then 10 s of
        // mTLS only (from bob).
        for s in 0..30 {
            e.record(t0 + s * 1000, &secured(30, alice));
            e.record(t0 + s * 1000, &delta(10, 0, [10, 0, 0, 0, 0, 0]));
        }
        let bob = "spiffe://cluster.local/ns/shop/sa/bob";
        for s in 30..40 {
            e.record(t0 + s * 1000, &secured(20, bob));
        }
        let now = t0 + 39_500;
        let w10 = e.window(now, 10_000).unwrap();
        assert_eq!(w10.mtls_fraction, 1.0);
        assert_eq!(w10.source_principals, [bob]);
        let w60 = e.window(now, 60_000).unwrap();
        let want = (30.0 * 30.0 + 10.0 * 20.0) / (30.0 * 40.0 + 10.0 * 20.0);
        assert!(
            (w60.mtls_fraction - want).abs() < 1e-9,
            "{}",
            w60.mtls_fraction
        );
        assert_eq!(w60.source_principals, [alice, bob]);
        // Plaintext only: no share, no principal.
        let mut plain = EdgeWindows::new(t0, 1_000);
        plain.record(t0, &delta(5, 0, [5, 0, 0, 0, 0, 0]));
        let w = plain.window(t0 + 100, 10_000).unwrap();
        assert_eq!((w.mtls_fraction, w.source_principals.len()), (0.0, 0));
        // TCP-only traffic counts connections; the remembered principals are bounded.
        let mut tcp = EdgeWindows::new(t0, 1_000);
        for i in 0..(MAX_PRINCIPALS as u64 + 4) {
            let d = Delta {
                tcp_opened: 1,
                mtls: true,
                source_principal: format!("spiffe://td/ns/a/sa/{i}"),
                ..Delta::default()
            };
            tcp.record(t0 + i, &d);
        }
        tcp.record(
            t0 + 50,
            &Delta {
                tcp_opened: 4,
                ..Delta::default()
            },
        );
        let w = tcp.window(t0 + 100, 10_000).unwrap();
        assert!(
            (w.mtls_fraction - 12.0 / 16.0).abs() < 1e-9,
            "{}",
            w.mtls_fraction
        );
        assert_eq!(w.source_principals.len(), MAX_PRINCIPALS);
        assert!(
            w.source_principals
                .contains(&"spiffe://td/ns/a/sa/11".to_owned()),
            "the newest replace the oldest: {:?}",
            w.source_principals
        );
        assert!(
            !w.source_principals
                .contains(&"spiffe://td/ns/a/sa/0".to_owned())
        );
    }

    /// The most an edge holds: 120 slots with full outcome lists, mirror names and histograms.
    const MAX_EDGE_BYTES: usize = 120
        * (size_of::<Slot>()
            + MAX_OUTCOMES * 24
            + (MAX_BUCKETS + 1) * 8
            + MAX_MIRROR_OUTCOMES * 64)
        + MAX_BUCKETS * 8
        + MAX_PRINCIPALS * (size_of::<(String, u64)>() + 2048);
}
