//! `serin.v1.Telemetry.Report`: accepts each proxy's per-edge deltas into sliding windows per
//! edge (see [`window`]), in a bounded table (at most [`MAX_EDGES`] edges; reports over
//! [`MAX_EDGES_PER_REPORT`] edges are cut; edges silent for the longest window age out). The
//! dashboard, `/api/topology` and `Admin.WatchTopology` all read these windows. The reports'
//! rule hits go to their own bounded windows ([`hits`]), which `/api/services/NAME` reads.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::Stream;
use serin_proto::v1;
use serin_proto::v1::telemetry_server::Telemetry;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::discovery::ProxyIdentity;
use crate::metrics::Metrics;
use crate::model::Protocol;

pub mod hits;
pub mod window;

pub use hits::{HitKey, HitReport, RuleHitTable};
pub use window::{EdgeWindows, Histogram, LONGEST_WINDOW_MS, WindowStats};

/// Most distinct edges kept (each at most a few tens of KiB, see `window`); new edges beyond it
/// are dropped (and counted) until old ones age out.
pub const MAX_EDGES: usize = 10_000;
/// Most edges taken from one report; the rest are dropped and counted.
pub const MAX_EDGES_PER_REPORT: usize = 1_000;

/// Which side of an edge reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The destination's sidecar.
    Inbound,
    /// The source's sidecar.
    Outbound,
}

/// What identifies an edge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// Reporting side.
    pub direction: Direction,
    /// Source workload.
    pub source_workload: String,
    /// Source namespace.
    pub source_namespace: String,
    /// Source version.
    pub source_version: String,
    /// Destination service.
    pub destination_service: String,
    /// Destination namespace.
    pub destination_namespace: String,
    /// Destination version.
    pub destination_version: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Mirrored traffic.
    pub mirror: bool,
}

/// One report's counts for one edge.
pub type EdgeDelta = window::Delta;

/// One edge of one report.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeReport {
    /// The edge.
    pub key: EdgeKey,
    /// Its counts in the interval.
    pub delta: EdgeDelta,
}

/// Where the control plane reads the time: the system clock, or a clock a test moves.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// Milliseconds since the Unix epoch.
    #[default]
    System,
    /// A test's clock, in ms; it only moves when the test stores a new value.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// Now, in ms since the Unix epoch (or the test's clock).
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            Clock::Manual(t) => t.load(Ordering::Acquire),
        }
    }
}

/// The bounded table of edges and their windows. Memory is at most [`MAX_EDGES`] edges of fixed
/// size each (two rings of 60 slots); an edge with nothing in the longest window (its pods left)
/// is removed.
#[derive(Debug, Default)]
pub struct EdgeTable {
    edges: Mutex<HashMap<EdgeKey, EdgeWindows>>,
}

impl EdgeTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EdgeKey, EdgeWindows>> {
        self.edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds deltas received at `now_ms` that cover the `interval_ms` before it (the report's
    /// interval: a new edge's first report stands for that much time); returns (accepted,
    /// dropped).
    pub fn record(&self, now_ms: u64, interval_ms: u64, deltas: Vec<EdgeReport>) -> (u64, u64) {
        let mut edges = self.lock();
        let (mut accepted, mut dropped) = (0, 0);
        let mut swept = false;
        for EdgeReport { key, delta } in deltas {
            if !swept && edges.len() >= MAX_EDGES && !edges.contains_key(&key) {
                // Make room from edges that aged out before refusing a new one (one sweep per
                // report: a full table of live edges costs one scan, not one per new edge).
                expire(&mut edges, now_ms);
                swept = true;
            }
            if let Some(w) = edges.get_mut(&key) {
                w.record(now_ms, &delta);
                accepted += 1;
            } else if edges.len() < MAX_EDGES {
                edges
                    .entry(key)
                    .or_insert_with(|| EdgeWindows::new(now_ms, interval_ms))
                    .record(now_ms, &delta);
                accepted += 1;
            } else {
                dropped += 1;
            }
        }
        (accepted, dropped)
    }

    /// Every edge with traffic in the `window_ms` ending at `now_ms`, sorted by key; removes the
    /// edges that aged out.
    pub fn window(&self, now_ms: u64, window_ms: u64) -> Vec<(EdgeKey, WindowStats)> {
        let mut edges = self.lock();
        expire(&mut edges, now_ms);
        let mut out: Vec<_> = edges
            .iter()
            .filter_map(|(k, w)| w.window(now_ms, window_ms).map(|s| (k.clone(), s)))
            .collect();
        drop(edges);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Edges held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no edge is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the edges hold on the heap, about.
    pub fn heap_bytes(&self) -> usize {
        self.lock()
            .iter()
            .map(|(k, w)| {
                w.heap_bytes()
                    + k.source_workload.capacity()
                    + k.source_namespace.capacity()
                    + k.source_version.capacity()
                    + k.destination_service.capacity()
                    + k.destination_namespace.capacity()
                    + k.destination_version.capacity()
                    + size_of::<(EdgeKey, EdgeWindows)>()
            })
            .sum()
    }
}

/// Removes edges with nothing in the longest window.
fn expire(edges: &mut HashMap<EdgeKey, EdgeWindows>, now_ms: u64) {
    edges.retain(|_, w| w.last_ms() + LONGEST_WINDOW_MS + window::REPORT_INTERVAL_MS > now_ms);
}

/// The Telemetry service.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    edges: Arc<EdgeTable>,
    rule_hits: Arc<RuleHitTable>,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: watch::Receiver<bool>,
    require_client_certs: bool,
}

impl TelemetryService {
    /// Records into `edges` and `rule_hits`, reading the time from `clock`; every stream ends
    /// when `shutdown` turns true (proxies keep their streams open for ever, and a graceful stop
    /// waits for open streams).
    pub fn new(
        edges: Arc<EdgeTable>,
        rule_hits: Arc<RuleHitTable>,
        metrics: Arc<Metrics>,
        clock: Clock,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            edges,
            rule_hits,
            metrics,
            clock,
            shutdown,
            require_client_certs: false,
        }
    }

    /// Refuses Report on the plaintext port (as Discovery's Subscribe with the same flag).
    pub fn require_client_certs(mut self, require: bool) -> Self {
        self.require_client_certs = require;
        self
    }

    fn handle(&self, reporter: &ProxyIdentity, req: v1::ReportRequest) -> v1::ReportResponse {
        let interval_ms = report_interval_ms(&req);
        let total = req.edges.len();
        let mut dropped = total.saturating_sub(MAX_EDGES_PER_REPORT) as u64;
        let mut deltas = Vec::with_capacity(total.min(MAX_EDGES_PER_REPORT));
        for edge in req.edges.into_iter().take(MAX_EDGES_PER_REPORT) {
            match EdgeReport::try_from(edge) {
                Ok(d) => deltas.push(d),
                Err(e) => {
                    tracing::debug!(proxy = %format_args!("{}/{}", reporter.namespace, reporter.pod_name), error = %e, "malformed telemetry edge dropped");
                    dropped += 1;
                }
            }
        }
        let now = self.clock.now_ms();
        let (accepted, over) = self.edges.record(now, interval_ms, deltas);
        dropped += over;
        let (hits, mut hits_dropped) = self.rule_hits(reporter, req.rule_hits);
        hits_dropped += self.rule_hits.record(now, hits).1;
        self.metrics.telemetry_reports.inc();
        self.metrics.telemetry_edges_dropped.inc_by(dropped);
        self.metrics
            .telemetry_rule_hits_dropped
            .inc_by(hits_dropped);
        v1::ReportResponse {
            sequence: req.sequence,
            edges_accepted: accepted,
            edges_dropped: dropped,
            report_interval: None,
            rule_hits_dropped: hits_dropped,
        }
    }

    /// The well-formed rule hits of one report (at most [`hits::MAX_RULE_HITS_PER_REPORT`]),
    /// and how many were not.
    fn rule_hits(
        &self,
        reporter: &ProxyIdentity,
        wire: Vec<v1::RuleHits>,
    ) -> (Vec<HitReport>, u64) {
        let total = wire.len();
        let mut dropped = total.saturating_sub(hits::MAX_RULE_HITS_PER_REPORT) as u64;
        let mut out = Vec::with_capacity(total.min(hits::MAX_RULE_HITS_PER_REPORT));
        for h in wire.into_iter().take(hits::MAX_RULE_HITS_PER_REPORT) {
            match HitReport::try_from(h) {
                Ok(h) => out.push(h),
                Err(e) => {
                    tracing::debug!(proxy = %format_args!("{}/{}", reporter.namespace, reporter.pod_name), error = %e, "malformed rule hits dropped");
                    dropped += 1;
                }
            }
        }
        (out, dropped)
    }
}

/// How long the report's interval was, ms: `interval_end - interval_start` by the proxy's clock
/// (only the difference is used, so skew does not matter), within 1 ms ..= 60 s;
/// [`window::REPORT_INTERVAL_MS`] when the report does not say.
pub fn report_interval_ms(req: &v1::ReportRequest) -> u64 {
    let ms =
        |t: &prost_types::Timestamp| i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
    match (&req.interval_start, &req.interval_end) {
        (Some(start), Some(end)) if ms(end) > ms(start) => {
            u64::try_from((ms(end) - ms(start)).min(60_000)).unwrap_or(window::REPORT_INTERVAL_MS)
        }
        _ => window::REPORT_INTERVAL_MS,
    }
}

type ReportStream = Pin<Box<dyn Stream<Item = Result<v1::ReportResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type ReportStream = ReportStream;

    async fn report(
        &self,
        request: Request<Streaming<v1::ReportRequest>>,
    ) -> Result<Response<ReportStream>, Status> {
        // On the mTLS port a sidecar reports only as a proxy of its certificate's namespace.
        let tls_peer = request.extensions().get::<crate::tls::TlsPeer>().cloned();
        let scope =
            crate::tls::caller_scope(tls_peer.as_ref(), self.require_client_certs, "Report")?;
        let inbound = request.into_inner();
        let state = (inbound, None::<ProxyIdentity>, self.clone());
        let scope = Arc::new(scope);
        let stream = futures::stream::unfold(state, move |(mut inbound, reporter, svc)| {
            let scope = Arc::clone(&scope);
            async move {
                let mut stop = svc.shutdown.clone();
                let req = tokio::select! {
                    () = crate::http::stopped(&mut stop) => return None,
                    req = inbound.message() => match req {
                        Ok(Some(req)) => req,
                        Ok(None) | Err(_) => return None,
                    },
                };
                let reporter = match reporter {
                    Some(r) => r,
                    None => match req.reporter.clone().map(ProxyIdentity::try_from) {
                        Some(Ok(r))
                            if scope.as_ref().as_ref().is_some_and(|ns| *ns != r.namespace) =>
                        {
                            let message = format!(
                                "reporter.namespace {:?}: the client certificate is for namespace {:?}",
                                r.namespace,
                                scope.as_deref().unwrap_or_default()
                            );
                            return Some((
                                Err(Status::permission_denied(message)),
                                (inbound, None, svc),
                            ));
                        }
                        Some(Ok(r)) => r,
                        Some(Err(e)) => {
                            return Some((
                                Err(Status::invalid_argument(format!("reporter.{e}"))),
                                (inbound, None, svc),
                            ));
                        }
                        None => {
                            return Some((
                                Err(Status::invalid_argument(
                                    "reporter: is required in the first report of a stream",
                                )),
                                (inbound, None, svc),
                            ));
                        }
                    },
                };
                let response = svc.handle(&reporter, req);
                Some((Ok(response), (inbound, Some(reporter), svc)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize, mirror: bool) -> EdgeKey {
        EdgeKey {
            direction: Direction::Inbound,
            source_workload: format!("caller-{i}"),
            source_namespace: "default".into(),
            source_version: "v1".into(),
            destination_service: "reviews".into(),
            destination_namespace: "default".into(),
            destination_version: "v1".into(),
            protocol: Protocol::Http1,
            mirror,
        }
    }

    fn report(i: usize, mirror: bool, requests: u64) -> EdgeReport {
        let delta = EdgeDelta {
            responses: [((200, None), requests)].into(),
            ..EdgeDelta::default()
        };
        EdgeReport {
            key: key(i, mirror),
            delta,
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn the_table_is_bounded_and_known_edges_keep_counting() {
        crate::test_tracing();
        let table = EdgeTable::default();
        let all = (0..MAX_EDGES + 5).map(|i| report(i, false, 1)).collect();
        assert_eq!(table.record(T0, 1_000, all), (MAX_EDGES as u64, 5));
        // A known edge still adds up once the table is full; a new one is still dropped.
        let more = vec![report(0, false, 2), report(MAX_EDGES + 10, false, 1)];
        assert_eq!(table.record(T0 + 500, 1_000, more), (1, 1));
        let edges = table.window(T0 + 900, 10_000);
        assert_eq!(edges.len(), MAX_EDGES);
        let first = edges.iter().find(|(k, _)| *k == key(0, false)).unwrap();
        assert_eq!(first.1.counts.requests, 3);
        // The whole table stays within its bound: a few tens of KiB per edge at most.
        let bytes = table.heap_bytes();
        assert!(bytes < MAX_EDGES * 64 * 1024, "{bytes} bytes");
    }

    #[test]
    fn edges_of_pods_that_left_age_out_and_make_room() {
        crate::test_tracing();
        let table = EdgeTable::default();
        let all = (0..MAX_EDGES).map(|i| report(i, false, 1)).collect();
        table.record(T0, 1_000, all);
        // Still there (and in the 10 min window) nine minutes later, gone after ten.
        assert_eq!(table.window(T0 + 540_000, 600_000).len(), MAX_EDGES);
        assert_eq!(
            table.record(T0 + 540_000, 1_000, vec![report(0, false, 1)]),
            (1, 0)
        );
        // A new edge arriving when the old ones have aged out takes their room.
        let late = T0 + LONGEST_WINDOW_MS + 2_000;
        assert_eq!(
            table.record(late, 1_000, vec![report(MAX_EDGES + 1, false, 1)]),
            (1, 0)
        );
        assert_eq!(table.len(), 2, "edge 0 reported later and is kept");
        let left = table.window(T0 + 540_000 + LONGEST_WINDOW_MS + 2_000, 600_000);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, key(MAX_EDGES + 1, false));
    }

    #[test]
    fn the_report_interval_comes_from_the_report() {
        crate::test_tracing();
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        let req = |start, end| v1::ReportRequest {
            interval_start: start,
            interval_end: end,
            ..Default::default()
        };
        assert_eq!(
            report_interval_ms(&req(at(100, 0), at(100, 250_000_000))),
            250
        );
        assert_eq!(
            report_interval_ms(&req(at(100, 900_000_000), at(102, 0))),
            1_100
        );
        // Missing, backwards or absurd: the default, or at most a minute.
        assert_eq!(report_interval_ms(&req(None, at(100, 0))), 1_000);
        assert_eq!(report_interval_ms(&req(at(100, 0), at(99, 0))), 1_000);
        assert_eq!(report_interval_ms(&req(at(0, 0), at(10_000, 0))), 60_000);
    }

    #[test]
    fn malformed_rule_hits_are_refused_by_field() {
        crate::test_tracing();
        let good = v1::RuleHits {
            policy_namespace: "default".into(),
            policy_name: "reviews".into(),
            generation: 3,
            rule: String::new(),
            version: "v1".into(),
            count: 5,
        };
        let h = HitReport::try_from(good.clone()).unwrap();
        assert_eq!((h.key.rule.as_str(), h.count), ("", 5), "the default route");
        for (bad, field) in [
            (
                v1::RuleHits {
                    count: 0,
                    ..good.clone()
                },
                "count",
            ),
            (
                v1::RuleHits {
                    version: String::new(),
                    ..good.clone()
                },
                "version",
            ),
            (
                v1::RuleHits {
                    policy_name: "x".repeat(300),
                    ..good
                },
                "policy_name",
            ),
        ] {
            let e = HitReport::try_from(bad).unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn mirror_traffic_is_kept_apart() {
        crate::test_tracing();
        let table = EdgeTable::default();
        table.record(T0, 1_000, vec![report(0, false, 100), report(0, true, 10)]);
        let edges = table.window(T0 + 500, 10_000);
        assert_eq!(edges.len(), 2);
        let primary = edges.iter().find(|(k, _)| !k.mirror).unwrap();
        let mirror = edges.iter().find(|(k, _)| k.mirror).unwrap();
        assert_eq!(primary.1.counts.requests, 100);
        assert_eq!(mirror.1.counts.requests, 10);
    }
}
