//! The control plane's Prometheus metrics (served on `/metrics` of the HTTP port).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::snapshot::EncodedSnapshot;

/// Labels of a policy change counter: `op` (apply, set_weights, ...) and `outcome`.
type ChangeLabels = Vec<(String, String)>;

/// Every metric, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Proxies with an open Discovery stream.
    pub proxies_connected: Gauge,
    /// Snapshots sent to proxies.
    pub pushes: Counter,
    /// ACKs accepted (answers to the latest push).
    pub acks: Counter,
    /// NACKs accepted.
    pub nacks: Counter,
    /// Snapshots built (one per distinct content).
    pub snapshots: Counter,
    /// Endpoints in the latest snapshot.
    pub snapshot_endpoints: Gauge,
    /// Policy changes by operation and outcome.
    pub policy_changes: Family<ChangeLabels, Counter>,
    /// Telemetry reports received.
    pub telemetry_reports: Counter,
    /// Telemetry edges dropped (malformed or over the limits).
    pub telemetry_edges_dropped: Counter,
    /// Edges held in the telemetry windows (set when `/metrics` is read).
    pub telemetry_edges: Gauge,
    /// Rule-hit entries dropped (malformed or over the limits).
    pub telemetry_rule_hits_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("serin_control");
        let m = Metrics {
            registry: Registry::default(),
            proxies_connected: Gauge::default(),
            pushes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            snapshots: Counter::default(),
            snapshot_endpoints: Gauge::default(),
            policy_changes: Family::default(),
            telemetry_reports: Counter::default(),
            telemetry_edges_dropped: Counter::default(),
            telemetry_edges: Gauge::default(),
            telemetry_rule_hits_dropped: Counter::default(),
        };
        registry.register(
            "proxies_connected",
            "Proxies with an open Discovery stream",
            m.proxies_connected.clone(),
        );
        registry.register("pushes", "Snapshots sent to proxies", m.pushes.clone());
        registry.register(
            "acks",
            "ACKs of the latest push received from proxies",
            m.acks.clone(),
        );
        registry.register(
            "nacks",
            "NACKs of the latest push received from proxies",
            m.nacks.clone(),
        );
        registry.register(
            "snapshots",
            "Snapshots built, one per distinct mesh content",
            m.snapshots.clone(),
        );
        registry.register(
            "snapshot_endpoints",
            "Endpoints in the latest snapshot",
            m.snapshot_endpoints.clone(),
        );
        registry.register(
            "policy_changes",
            "Policy changes by operation and outcome",
            m.policy_changes.clone(),
        );
        registry.register(
            "telemetry_reports",
            "Telemetry reports received",
            m.telemetry_reports.clone(),
        );
        registry.register(
            "telemetry_edges_dropped",
            "Telemetry edges dropped as malformed or over the limits",
            m.telemetry_edges_dropped.clone(),
        );
        registry.register(
            "telemetry_edges",
            "Edges held in the telemetry windows",
            m.telemetry_edges.clone(),
        );
        registry.register(
            "telemetry_rule_hits_dropped",
            "Rule-hit entries of telemetry reports dropped as malformed or over the limits",
            m.telemetry_rule_hits_dropped.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a policy change.
    pub fn policy_change(&self, op: &str, outcome: &str) {
        self.policy_changes
            .get_or_create(&vec![
                ("op".to_owned(), op.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
    }

    /// Records a newly built snapshot.
    pub fn snapshot_built(&self, s: &EncodedSnapshot) {
        self.snapshots.inc();
        self.snapshot_endpoints
            .set(i64::try_from(s.endpoints).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
