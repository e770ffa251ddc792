//! `serin.v1.Telemetry.Report`: accepts each proxy's per-edge deltas and keeps running totals per
//! edge in memory, in a bounded table (at most [`MAX_EDGES`] edges; reports over
//! [`MAX_EDGES_PER_REPORT`] edges are cut). The sliding windows the dashboard and
//! `Admin.WatchTopology` need (rates, error rates, latency percentiles) are a later issue; the
//! totals here are what they will be computed from.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::Stream;
use serin_proto::v1;
use serin_proto::v1::telemetry_server::Telemetry;
use tonic::{Request, Response, Status, Streaming};

use crate::discovery::ProxyIdentity;
use crate::metrics::Metrics;
use crate::model::Protocol;

/// Most distinct edges kept; new edges beyond it are dropped (and counted) until restart.
pub const MAX_EDGES: usize = 10_000;
/// Most edges taken from one report; the rest are dropped and counted.
pub const MAX_EDGES_PER_REPORT: usize = 1_000;
/// Most distinct (response code, gRPC status) pairs kept per edge.
const MAX_OUTCOMES_PER_EDGE: usize = 64;

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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeDelta {
    /// Requests by (response code, gRPC status).
    pub responses: BTreeMap<(u32, Option<u32>), u64>,
    /// Sum of request durations, seconds.
    pub duration_sum_seconds: f64,
    /// Number of durations.
    pub duration_count: u64,
    /// Connections opened.
    pub tcp_opened: u64,
    /// Connections closed.
    pub tcp_closed: u64,
    /// Bytes toward the source.
    pub sent_bytes: u64,
    /// Bytes from the source.
    pub received_bytes: u64,
    /// Requests that fell back to another version.
    pub version_fallbacks: u64,
    /// Mirror outcomes.
    pub mirror_outcomes: BTreeMap<String, u64>,
}

/// One edge of one report.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeReport {
    /// The edge.
    pub key: EdgeKey,
    /// Its counts in the interval.
    pub delta: EdgeDelta,
}

/// Running totals of one edge since the control plane started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeTotals {
    /// Everything added up.
    pub totals: EdgeDelta,
    /// Reports that carried this edge.
    pub reports: u64,
    /// When the last one arrived.
    pub last_report: Option<SystemTime>,
}

impl EdgeTotals {
    fn add(&mut self, d: EdgeDelta) {
        let t = &mut self.totals;
        for (k, n) in d.responses {
            if t.responses.len() < MAX_OUTCOMES_PER_EDGE || t.responses.contains_key(&k) {
                *t.responses.entry(k).or_default() += n;
            }
        }
        t.duration_sum_seconds += d.duration_sum_seconds;
        t.duration_count += d.duration_count;
        t.tcp_opened += d.tcp_opened;
        t.tcp_closed += d.tcp_closed;
        t.sent_bytes += d.sent_bytes;
        t.received_bytes += d.received_bytes;
        t.version_fallbacks += d.version_fallbacks;
        for (k, n) in d.mirror_outcomes {
            if t.mirror_outcomes.len() < MAX_OUTCOMES_PER_EDGE || t.mirror_outcomes.contains_key(&k)
            {
                *t.mirror_outcomes.entry(k).or_default() += n;
            }
        }
        self.reports += 1;
        self.last_report = Some(SystemTime::now());
    }
}

/// The bounded table of edge totals.
#[derive(Debug, Default)]
pub struct EdgeTable {
    edges: Mutex<HashMap<EdgeKey, EdgeTotals>>,
}

impl EdgeTable {
    /// Adds deltas; returns (accepted, dropped).
    pub fn record(&self, deltas: Vec<EdgeReport>) -> (u64, u64) {
        let mut edges = self
            .edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut accepted, mut dropped) = (0, 0);
        for EdgeReport { key, delta } in deltas {
            if let Some(t) = edges.get_mut(&key) {
                t.add(delta);
                accepted += 1;
            } else if edges.len() < MAX_EDGES {
                edges.entry(key).or_default().add(delta);
                accepted += 1;
            } else {
                dropped += 1;
            }
        }
        (accepted, dropped)
    }

    /// Every edge with its totals, sorted by key.
    pub fn snapshot(&self) -> Vec<(EdgeKey, EdgeTotals)> {
        let edges = self
            .edges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = edges.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

/// The Telemetry service.
#[derive(Debug, Clone)]
pub struct TelemetryService {
    edges: Arc<EdgeTable>,
    metrics: Arc<Metrics>,
}

impl TelemetryService {
    /// Records into `edges`.
    pub fn new(edges: Arc<EdgeTable>, metrics: Arc<Metrics>) -> Self {
        Self { edges, metrics }
    }

    fn handle(&self, reporter: &ProxyIdentity, req: v1::ReportRequest) -> v1::ReportResponse {
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
        let (accepted, over) = self.edges.record(deltas);
        dropped += over;
        self.metrics.telemetry_reports.inc();
        self.metrics.telemetry_edges_dropped.inc_by(dropped);
        v1::ReportResponse {
            sequence: req.sequence,
            edges_accepted: accepted,
            edges_dropped: dropped,
            report_interval: None,
        }
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
        let inbound = request.into_inner();
        let state = (inbound, None::<ProxyIdentity>, self.clone());
        let stream = futures::stream::unfold(state, |(mut inbound, reporter, svc)| async move {
            let req = match inbound.message().await {
                Ok(Some(req)) => req,
                Ok(None) | Err(_) => return None,
            };
            let reporter = match reporter {
                Some(r) => r,
                None => match req.reporter.clone().map(ProxyIdentity::try_from) {
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
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> EdgeKey {
        EdgeKey {
            direction: Direction::Inbound,
            source_workload: format!("caller-{i}"),
            source_namespace: "default".into(),
            source_version: "v1".into(),
            destination_service: "reviews".into(),
            destination_namespace: "default".into(),
            destination_version: "v1".into(),
            protocol: Protocol::Http1,
            mirror: false,
        }
    }

    fn report(i: usize, requests: u64) -> EdgeReport {
        let delta = EdgeDelta {
            responses: [((200, None), requests)].into(),
            ..EdgeDelta::default()
        };
        EdgeReport { key: key(i), delta }
    }

    #[test]
    fn the_table_is_bounded_and_known_edges_keep_counting() {
        crate::test_tracing();
        let table = EdgeTable::default();
        let (accepted, dropped) = table.record((0..MAX_EDGES + 5).map(|i| report(i, 1)).collect());
        assert_eq!((accepted, dropped), (MAX_EDGES as u64, 5));
        // A known edge still adds up once the table is full; a new one is still dropped.
        assert_eq!(
            table.record(vec![report(0, 2), report(MAX_EDGES + 10, 1)]),
            (1, 1)
        );
        let edges = table.snapshot();
        assert_eq!(edges.len(), MAX_EDGES);
        let first = edges.iter().find(|(k, _)| *k == key(0)).unwrap();
        assert_eq!(first.1.totals.responses[&(200, None)], 3);
        assert_eq!(first.1.reports, 2);
    }

    #[test]
    fn outcomes_per_edge_are_bounded() {
        crate::test_tracing();
        let mut totals = EdgeTotals::default();
        for code in 0..(MAX_OUTCOMES_PER_EDGE as u32 + 10) {
            totals.add(EdgeDelta {
                responses: [((code, None), 1)].into(),
                ..EdgeDelta::default()
            });
        }
        assert_eq!(totals.totals.responses.len(), MAX_OUTCOMES_PER_EDGE);
    }
}
