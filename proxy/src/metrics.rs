//! Prometheus metrics (names and labels from DESIGN.md) with label sets resolved ahead of the
//! request path: an [`EdgeMetrics`] is made per edge (source workload → destination service
//! version) when the config arrives, and caches the handles of the common outcome, so recording a
//! request is an atomic add and a histogram observation, with no string allocated.
//!
//! TCP metrics carry the edge labels only (`response_code` and `grpc_status` mean nothing for a
//! byte stream). `serin_tcp_sent_bytes_total` counts bytes sent towards the destination,
//! `serin_tcp_received_bytes_total` bytes received from it.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabel;
use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which side of the proxy an edge is seen from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The app's calls out.
    Outbound,
    /// Calls into the app.
    Inbound,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Who talks to whom: the labels every metric of one edge shares.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Edge {
    /// Outbound or inbound.
    pub direction: Direction,
    /// Calling workload (service name, else pod name; "unknown" when not in the config).
    pub source_workload: Arc<str>,
    /// Its namespace.
    pub source_namespace: Arc<str>,
    /// Its version.
    pub source_version: Arc<str>,
    /// Called service ("passthrough" for destinations outside the mesh).
    pub destination_service: Arc<str>,
    /// Its namespace.
    pub destination_namespace: Arc<str>,
    /// The version of the endpoint that served.
    pub destination_version: Arc<str>,
    /// Mirrored copies (`mirror="true"`), apart from the traffic they copy.
    pub mirror: bool,
}

impl Edge {
    fn encode_labels(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_namespace", &*self.source_namespace).encode(encoder.encode_label())?;
        ("source_version", &*self.source_version).encode(encoder.encode_label())?;
        ("destination_service", &*self.destination_service).encode(encoder.encode_label())?;
        ("destination_namespace", &*self.destination_namespace).encode(encoder.encode_label())?;
        ("destination_version", &*self.destination_version).encode(encoder.encode_label())
    }

    fn mirror_label(&self) -> &'static str {
        if self.mirror { "true" } else { "false" }
    }
}

/// `grpc_status` label value: empty for plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GrpcLabel(Option<u16>);

impl EncodeLabelValue for GrpcLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        match self.0 {
            Some(code) => EncodeLabelValue::encode(&code, encoder),
            None => EncodeLabelValue::encode(&"", encoder),
        }
    }
}

/// Labels of the request metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestLabels {
    edge: Arc<Edge>,
    response_code: u16,
    grpc_status: GrpcLabel,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        self.edge.encode_labels(encoder)?;
        ("response_code", self.response_code).encode(encoder.encode_label())?;
        ("grpc_status", self.grpc_status).encode(encoder.encode_label())?;
        ("mirror", self.edge.mirror_label()).encode(encoder.encode_label())
    }
}

/// Labels of the TCP metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpLabels(Arc<Edge>);

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        self.0.encode_labels(encoder)?;
        ("mirror", self.0.mirror_label()).encode(encoder.encode_label())
    }
}

/// Labels of `serin_route_fallbacks_total`: a request whose chosen version had no ready
/// endpoint, and the version it went to instead.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The routed service.
    pub destination_service: String,
    /// Its namespace.
    pub destination_namespace: String,
    /// The version the policy chose.
    pub chosen_version: String,
    /// The version that served instead.
    pub fallback_version: String,
}

/// What became of a request the policy chose to mirror (`outcome` of
/// `serin_mirror_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MirrorOutcome {
    /// The copy was sent and answered (any status; the answer is discarded).
    Sent,
    /// The copy was sent but failed: connect error, reset, or the mirror timeout.
    Failed,
    /// Not sent: as many copies as allowed were in flight already.
    Dropped,
    /// Not sent: the request body was larger than the mirror limit (64 KiB).
    TooLarge,
    /// Not sent: the primary request's body ended in an error (the client went away).
    Aborted,
    /// Not sent: the mirror version has no ready endpoint.
    NoEndpoint,
}

impl MirrorOutcome {
    /// Every outcome, in the order `/routes` shows them.
    pub const ALL: [MirrorOutcome; 6] = [
        MirrorOutcome::Sent,
        MirrorOutcome::Failed,
        MirrorOutcome::Dropped,
        MirrorOutcome::TooLarge,
        MirrorOutcome::Aborted,
        MirrorOutcome::NoEndpoint,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorOutcome::Sent => "sent",
            MirrorOutcome::Failed => "failed",
            MirrorOutcome::Dropped => "dropped",
            MirrorOutcome::TooLarge => "too_large",
            MirrorOutcome::Aborted => "aborted",
            MirrorOutcome::NoEndpoint => "no_endpoint",
        }
    }
}

impl EncodeLabelValue for MirrorOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Labels of `serin_mirror_requests_total`: the mirrored edge (its `destination_version` is the
/// mirror version) and the outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MirrorLabels {
    edge: Arc<Edge>,
    outcome: MirrorOutcome,
}

impl EncodeLabelSet for MirrorLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        self.edge.encode_labels(encoder)?;
        ("outcome", self.outcome).encode(encoder.encode_label())
    }
}

/// What became of a failed request that could have been retried (`outcome` of
/// `serin_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOutcome {
    /// Sent again to another endpoint of the same version.
    Retried,
    /// Not retried: the service's retry budget was spent.
    BudgetExhausted,
    /// Not retried: no other ready endpoint of the version.
    NoOtherEndpoint,
}

impl EncodeLabelValue for RetryOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let value = match self {
            RetryOutcome::Retried => "retried",
            RetryOutcome::BudgetExhausted => "budget_exhausted",
            RetryOutcome::NoOtherEndpoint => "no_other_endpoint",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

/// Labels of `serin_retries_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// The called service.
    pub destination_service: String,
    /// Its namespace.
    pub destination_namespace: String,
    /// What happened.
    pub outcome: RetryOutcome,
}

/// Bucket bounds of `serin_request_duration_seconds`: 0.5 ms to 30 s.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the sidecar, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    route_fallbacks: Family<FallbackLabels, Counter>,
    mirror_requests: Family<MirrorLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    /// The Discovery client's `serin_discovery_*` metrics.
    pub discovery: crate::discovery::DiscoveryMetrics,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        registry.register("serin_requests", "HTTP requests proxied", requests.clone());
        registry.register(
            "serin_request_duration_seconds",
            "Time from a request's start to its response's end",
            durations.clone(),
        );
        registry.register(
            "serin_tcp_connections_opened",
            "Opaque TCP connections proxied",
            tcp_opened.clone(),
        );
        registry.register(
            "serin_tcp_sent_bytes",
            "Bytes of opaque TCP connections sent towards the destination",
            tcp_sent.clone(),
        );
        registry.register(
            "serin_tcp_received_bytes",
            "Bytes of opaque TCP connections received from the destination",
            tcp_received.clone(),
        );
        let route_fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "serin_route_fallbacks",
            "Requests whose policy-chosen version had no ready endpoint, by the version that served",
            route_fallbacks.clone(),
        );
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "serin_mirror_requests",
            "Requests chosen for mirroring, by what became of the copy",
            mirror_requests.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "serin_retries",
            "Failed idempotent requests that could be retried, by what became of them",
            retries.clone(),
        );
        let discovery = crate::discovery::DiscoveryMetrics::register(&mut registry);
        Metrics {
            route_fallbacks,
            mirror_requests,
            retries,
            registry,
            discovery,
            requests,
            durations,
            tcp_opened,
            tcp_sent,
            tcp_received,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request that fell back from `chosen` to `fallback` (a rare path: labels are
    /// built per call).
    pub fn route_fallback(&self, service: &str, namespace: &str, chosen: &str, fallback: &str) {
        self.route_fallbacks
            .get_or_create(&FallbackLabels {
                destination_service: service.to_owned(),
                destination_namespace: namespace.to_owned(),
                chosen_version: chosen.to_owned(),
                fallback_version: fallback.to_owned(),
            })
            .inc();
    }

    /// Counts a retry decision for `namespace/service`.
    pub fn retry(&self, service: &str, namespace: &str, outcome: RetryOutcome) {
        self.retries
            .get_or_create(&RetryLabels {
                destination_service: service.to_owned(),
                destination_namespace: namespace.to_owned(),
                outcome,
            })
            .inc();
    }

    fn request_handles(&self, edge: &Arc<Edge>, code: u16, grpc: Option<u16>) -> RequestHandles {
        let labels = RequestLabels {
            edge: Arc::clone(edge),
            response_code: code,
            grpc_status: GrpcLabel(grpc),
        };
        RequestHandles {
            code,
            grpc,
            count: self.requests.get_or_create_owned(&labels),
            duration: self.durations.get_or_create_owned(&labels),
        }
    }
}

/// The counter and histogram of one (edge, code, grpc status).
#[derive(Debug, Clone)]
struct RequestHandles {
    code: u16,
    grpc: Option<u16>,
    count: Counter,
    duration: Histogram,
}

/// The TCP counters of one edge.
#[derive(Debug, Clone)]
pub struct TcpHandles {
    /// Connections opened.
    pub opened: Counter,
    /// Bytes sent towards the destination.
    pub sent: Counter,
    /// Bytes received from the destination.
    pub received: Counter,
}

/// The metrics of one edge, with the handles of its usual outcomes resolved on first use.
#[derive(Debug)]
pub struct EdgeMetrics {
    metrics: Arc<Metrics>,
    edge: Arc<Edge>,
    http_ok: OnceLock<RequestHandles>,
    grpc_ok: OnceLock<RequestHandles>,
    tcp: OnceLock<TcpHandles>,
}

impl EdgeMetrics {
    /// The metrics of `edge`.
    pub fn new(metrics: Arc<Metrics>, edge: Edge) -> EdgeMetrics {
        EdgeMetrics {
            metrics,
            edge: Arc::new(edge),
            http_ok: OnceLock::new(),
            grpc_ok: OnceLock::new(),
            tcp: OnceLock::new(),
        }
    }

    /// The edge's labels.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Records one request that ended with HTTP `code` (and gRPC status `grpc`) after `elapsed`.
    pub fn record_request(&self, code: u16, grpc: Option<u16>, elapsed: Duration) {
        let cached = match (code, grpc) {
            (200, None) => Some(&self.http_ok),
            (200, Some(0)) => Some(&self.grpc_ok),
            _ => None,
        };
        let seconds = elapsed.as_secs_f64();
        match cached {
            Some(cell) => {
                let h = cell.get_or_init(|| self.metrics.request_handles(&self.edge, code, grpc));
                debug_assert!(h.code == code && h.grpc == grpc);
                h.count.inc();
                h.duration.observe(seconds);
            }
            None => {
                let h = self.metrics.request_handles(&self.edge, code, grpc);
                h.count.inc();
                h.duration.observe(seconds);
            }
        }
    }

    /// Counts a mirrored copy's `outcome` on this (mirror) edge.
    pub fn record_mirror(&self, outcome: MirrorOutcome) {
        self.metrics
            .mirror_requests
            .get_or_create(&MirrorLabels {
                edge: Arc::clone(&self.edge),
                outcome,
            })
            .inc();
    }

    /// The registry these metrics belong to.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The TCP counters of this edge.
    pub fn tcp(&self) -> &TcpHandles {
        self.tcp.get_or_init(|| {
            let labels = TcpLabels(Arc::clone(&self.edge));
            TcpHandles {
                opened: self.metrics.tcp_opened.get_or_create_owned(&labels),
                sent: self.metrics.tcp_sent.get_or_create_owned(&labels),
                received: self.metrics.tcp_received.get_or_create_owned(&labels),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge() -> Edge {
        Edge {
            direction: Direction::Outbound,
            source_workload: "productpage".into(),
            source_namespace: "default".into(),
            source_version: "v1".into(),
            destination_service: "reviews".into(),
            destination_namespace: "default".into(),
            destination_version: "v2".into(),
            mirror: false,
        }
    }

    #[test]
    fn renders_design_names_and_labels() {
        let metrics = Arc::new(Metrics::new());
        let em = EdgeMetrics::new(Arc::clone(&metrics), edge());
        em.record_request(200, None, Duration::from_millis(3));
        em.record_request(200, None, Duration::from_millis(3));
        em.record_request(503, None, Duration::from_millis(1));
        em.record_request(200, Some(14), Duration::from_millis(1));
        em.tcp().opened.inc();
        em.tcp().sent.inc_by(10);
        let text = metrics.render();
        let labels = "direction=\"outbound\",source_workload=\"productpage\",source_namespace=\"default\",source_version=\"v1\",destination_service=\"reviews\",destination_namespace=\"default\",destination_version=\"v2\"";
        assert!(text.contains(&format!("serin_requests_total{{{labels},response_code=\"200\",grpc_status=\"\",mirror=\"false\"}} 2")), "{text}");
        assert!(text.contains(&format!("serin_requests_total{{{labels},response_code=\"503\",grpc_status=\"\",mirror=\"false\"}} 1")), "{text}");
        assert!(text.contains(&format!("serin_requests_total{{{labels},response_code=\"200\",grpc_status=\"14\",mirror=\"false\"}} 1")), "{text}");
        assert!(text.contains(&format!("serin_request_duration_seconds_count{{{labels},response_code=\"200\",grpc_status=\"\",mirror=\"false\"}} 2")), "{text}");
        assert!(
            text.contains(&format!(
                "serin_tcp_connections_opened_total{{{labels},mirror=\"false\"}} 1"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "serin_tcp_sent_bytes_total{{{labels},mirror=\"false\"}} 10"
            )),
            "{text}"
        );
        let other = EdgeMetrics::new(
            Arc::clone(&metrics),
            Edge {
                destination_service: "ratings".into(),
                ..edge()
            },
        );
        drop(other);
        // An edge that carried nothing shows nothing.
        assert!(!metrics.render().contains("ratings"));
    }

    #[test]
    fn mirror_edges_fallbacks_and_retries_are_labelled() {
        let metrics = Arc::new(Metrics::new());
        let mirror = EdgeMetrics::new(
            Arc::clone(&metrics),
            Edge {
                mirror: true,
                ..edge()
            },
        );
        mirror.record_request(200, None, Duration::from_millis(1));
        mirror.record_mirror(MirrorOutcome::Sent);
        mirror.record_mirror(MirrorOutcome::Dropped);
        mirror.record_mirror(MirrorOutcome::Dropped);
        metrics.route_fallback("reviews", "default", "v3", "v1");
        metrics.retry("reviews", "default", RetryOutcome::BudgetExhausted);
        let text = metrics.render();
        let labels = "direction=\"outbound\",source_workload=\"productpage\",source_namespace=\"default\",source_version=\"v1\",destination_service=\"reviews\",destination_namespace=\"default\",destination_version=\"v2\"";
        assert!(text.contains(&format!("serin_requests_total{{{labels},response_code=\"200\",grpc_status=\"\",mirror=\"true\"}} 1")), "{text}");
        assert!(
            text.contains(&format!(
                "serin_mirror_requests_total{{{labels},outcome=\"dropped\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "serin_mirror_requests_total{{{labels},outcome=\"sent\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains("serin_route_fallbacks_total{destination_service=\"reviews\",destination_namespace=\"default\",chosen_version=\"v3\",fallback_version=\"v1\"} 1"), "{text}");
        assert!(text.contains("serin_retries_total{destination_service=\"reviews\",destination_namespace=\"default\",outcome=\"budget_exhausted\"} 1"), "{text}");
    }
}
