//! Prometheus metrics (names and labels from DESIGN.md) with label sets resolved ahead of the
//! request path: an [`EdgeMetrics`] is made per edge (source workload → destination service
//! version) when the config arrives, and caches the handles of the common outcome, so recording a
//! request is an atomic add and a histogram observation, with no string allocated.
//!
//! TCP metrics carry the edge labels only (`response_code` and `grpc_status` mean nothing for a
//! byte stream). Request and TCP metrics also carry `source_principal`: the SPIFFE ID of the
//! verified client certificate of an inbound mTLS connection, "" for plaintext and outbound
//! traffic (an inbound peer's mTLS edges are made per principal, see `tables.rs`). `serin_tcp_sent_bytes_total` counts bytes sent towards the destination,
//! `serin_tcp_received_bytes_total` bytes received from it.
//!
//! Beside the Prometheus handles every edge has an [`EdgeTally`]: cumulative totals in plain
//! atomics (requests per protocol and outcome with their duration buckets, TCP connections opened
//! and closed) that `telemetry.rs` reads off the request path and diffs into per-interval deltas.
//! Prometheus histograms do not expose their buckets, hence the second set of counters: one more
//! atomic add per bucket and sum, still no lock and no allocation for the usual outcomes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
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
    /// How the caller was authenticated (inbound edges only): `None` for plaintext connections
    /// and on every outbound edge; `Some` for mTLS from a client sidecar, holding the SPIFFE ID
    /// of its verified certificate ("" when the certificate has none). The `source_principal`
    /// label of the request and TCP metrics ("" when `None`).
    pub source_principal: Option<Arc<str>>,
}

impl Edge {
    /// Encodes the edge's labels; `source_principal` only `with_principal` (request and TCP
    /// metrics, not the outbound-only mirror counter).
    fn encode_labels(
        &self,
        encoder: &mut LabelSetEncoder<'_>,
        with_principal: bool,
    ) -> Result<(), fmt::Error> {
        ("direction", self.direction.as_str()).encode(encoder.encode_label())?;
        ("source_workload", &*self.source_workload).encode(encoder.encode_label())?;
        ("source_namespace", &*self.source_namespace).encode(encoder.encode_label())?;
        ("source_version", &*self.source_version).encode(encoder.encode_label())?;
        if with_principal {
            let principal = self.source_principal.as_deref().unwrap_or("");
            ("source_principal", principal).encode(encoder.encode_label())?;
        }
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
        self.edge.encode_labels(encoder, true)?;
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
        self.0.encode_labels(encoder, true)?;
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
        self.edge.encode_labels(encoder, false)?;
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

/// Why a listener turned work away (`reason` of `serin_overload_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverloadReason {
    /// The listener was at its concurrent connection limit: the new connection was closed.
    Connections,
    /// The listener was at its in-flight request limit: the request was answered 503.
    Requests,
}

impl EncodeLabelValue for OverloadReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        let value = match self {
            OverloadReason::Connections => "connections",
            OverloadReason::Requests => "requests",
        };
        EncodeLabelValue::encode(&value, encoder)
    }
}

/// Labels of `serin_overload_rejections_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OverloadLabels {
    /// `outbound` or `inbound`.
    pub listener: &'static str,
    /// Which limit.
    pub reason: OverloadReason,
}

/// Bucket bounds of `serin_request_duration_seconds` (and of the telemetry histograms): 0.5 ms
/// to 60 s.
pub const DURATION_BUCKETS: [f64; 16] = [
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
    /// Every edge's telemetry totals, one per key for the life of the process (as the Prometheus
    /// families keep their series): same cardinality as `/metrics`.
    tallies: Mutex<HashMap<TallyKey, Arc<EdgeTally>>>,
    route_fallbacks: Family<FallbackLabels, Counter>,
    mirror_requests: Family<MirrorLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    overload_rejections: Family<OverloadLabels, Counter>,
    /// The Discovery client's `serin_discovery_*` metrics.
    pub discovery: crate::discovery::DiscoveryMetrics,
    /// The telemetry reporter's `serin_telemetry_*` metrics.
    pub telemetry: crate::telemetry::TelemetryMetrics,
    /// Workload certificate and mTLS connection metrics.
    pub identity: crate::identity::IdentityMetrics,
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
        let overload_rejections = Family::<OverloadLabels, Counter>::default();
        registry.register(
            "serin_overload_rejections",
            "Connections closed and requests answered 503 because a listener was at a limit",
            overload_rejections.clone(),
        );
        let discovery = crate::discovery::DiscoveryMetrics::register(&mut registry);
        let telemetry = crate::telemetry::TelemetryMetrics::register(&mut registry);
        let identity = crate::identity::IdentityMetrics::register(&mut registry);
        Metrics {
            identity,
            route_fallbacks,
            mirror_requests,
            retries,
            overload_rejections,
            registry,
            discovery,
            telemetry,
            tallies: Mutex::new(HashMap::new()),
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

    /// The telemetry totals of every edge made so far (in no particular order), for the
    /// telemetry reporter to diff.
    pub fn edge_tallies(&self) -> Vec<Arc<EdgeTally>> {
        self.lock_tallies().values().cloned().collect()
    }

    fn lock_tallies(&self) -> std::sync::MutexGuard<'_, HashMap<TallyKey, Arc<EdgeTally>>> {
        // Plain data: still fine after a panic elsewhere.
        self.tallies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tally of `key`, made on first use; edges made again by a later config share it.
    fn tally(&self, key: TallyKey) -> Arc<EdgeTally> {
        Arc::clone(
            self.lock_tallies()
                .entry(key.clone())
                .or_insert_with(|| Arc::new(EdgeTally::new(key))),
        )
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

    /// Counts work the `listener` turned away for `reason`.
    pub fn overload_rejection(&self, listener: &'static str, reason: OverloadReason) {
        self.overload_rejections
            .get_or_create(&OverloadLabels { listener, reason })
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
    tally: Arc<EdgeTally>,
}

impl EdgeMetrics {
    /// The metrics of `edge`.
    pub fn new(metrics: Arc<Metrics>, edge: Edge) -> EdgeMetrics {
        let edge = Arc::new(edge);
        let tally = metrics.tally(TallyKey {
            edge: Arc::clone(&edge),
        });
        EdgeMetrics {
            metrics,
            edge,
            http_ok: OnceLock::new(),
            grpc_ok: OnceLock::new(),
            tally,
        }
    }

    /// The edge's labels.
    pub fn edge(&self) -> &Edge {
        &self.edge
    }

    /// Records one request carried over `protocol` that ended with HTTP `code` (and gRPC status
    /// `grpc`) after `elapsed`.
    pub fn record_request(
        &self,
        protocol: RequestProtocol,
        code: u16,
        grpc: Option<u16>,
        elapsed: Duration,
    ) {
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
        let outcome = OutcomeKey {
            protocol,
            code,
            grpc,
        };
        self.tally.observe(outcome, elapsed);
    }

    /// Counts a mirrored copy's `outcome` on this (mirror) edge; `protocol` is the copied
    /// request's.
    pub fn record_mirror(&self, protocol: RequestProtocol, outcome: MirrorOutcome) {
        self.tally.mirror_outcomes[protocol.index()][outcome as usize]
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .mirror_requests
            .get_or_create(&MirrorLabels {
                edge: Arc::clone(&self.edge),
                outcome,
            })
            .inc();
    }

    /// Counts a request carried over `protocol` (`None`: an opaque TCP connection) that a traffic
    /// policy sent to this edge's version because the version its split chose had no ready
    /// endpoint (telemetry only: `serin_route_fallbacks_total` is counted by the router).
    pub fn record_fallback(&self, protocol: Option<RequestProtocol>) {
        let i = protocol.map_or(TCP_INDEX, RequestProtocol::index);
        self.tally.fallbacks[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The registry these metrics belong to.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The TCP counters of this edge.
    pub fn tcp(&self) -> &TcpHandles {
        self.tally.tcp.get_or_init(|| {
            let labels = TcpLabels(Arc::clone(&self.edge));
            TcpHandles {
                opened: self.metrics.tcp_opened.get_or_create_owned(&labels),
                sent: self.metrics.tcp_sent.get_or_create_owned(&labels),
                received: self.metrics.tcp_received.get_or_create_owned(&labels),
            }
        })
    }

    /// Counts one opaque TCP connection of this edge closed (telemetry only: the control plane
    /// shows connections open as opened minus closed).
    pub fn tcp_closed(&self) {
        self.tally.tcp_closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a request travelled, as telemetry reports it (the control plane keys edges by protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestProtocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 that is not gRPC.
    Http2,
    /// gRPC (`content-type: application/grpc...`).
    Grpc,
}

impl RequestProtocol {
    /// Every protocol, in the order of [`RequestProtocol::index`].
    pub const ALL: [RequestProtocol; 3] = [
        RequestProtocol::Http1,
        RequestProtocol::Http2,
        RequestProtocol::Grpc,
    ];

    /// Its index in per-protocol counters (opaque TCP, when counted too, is [`TCP_INDEX`]).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Index of opaque TCP in per-protocol counters, after the [`RequestProtocol`]s.
pub const TCP_INDEX: usize = RequestProtocol::ALL.len();

/// What telemetry counts apart: an edge, and whether its traffic is mirrored copies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TallyKey {
    /// The edge; its `mirror` flag keeps mirrored copies apart from the primary traffic.
    pub edge: Arc<Edge>,
}

/// One outcome of requests on an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OutcomeKey {
    /// How the requests travelled.
    pub protocol: RequestProtocol,
    /// HTTP status sent to the client (0: none).
    pub code: u16,
    /// gRPC status, for gRPC requests.
    pub grpc: Option<u16>,
}

/// Buckets of the telemetry histograms: one per bound of [`DURATION_BUCKETS`], then +Inf.
pub const TALLY_BUCKETS: usize = DURATION_BUCKETS.len() + 1;

/// Most distinct outcomes one edge keeps apart; beyond it new outcomes are folded into their
/// status class (`5xx` as 500, gRPC statuses as UNKNOWN), so an upstream that invents status
/// codes cannot grow the tally without bound.
pub const MAX_OUTCOMES_PER_EDGE: usize = 64;

/// Cumulative request totals of one outcome: durations by bucket, and their sum.
#[derive(Debug, Default)]
pub struct OutcomeTally {
    buckets: [AtomicU64; TALLY_BUCKETS],
    sum_nanos: AtomicU64,
}

impl OutcomeTally {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // (bounds[i-1], bounds[i]], as Prometheus and telemetry.proto count.
        let bucket = DURATION_BUCKETS.partition_point(|&b| b < seconds);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The totals now.
    pub fn totals(&self) -> OutcomeTotals {
        OutcomeTotals {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// A reading of an [`OutcomeTally`] (or the difference of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutcomeTotals {
    /// Requests per duration bucket (not cumulative), the last one above every bound.
    pub buckets: [u64; TALLY_BUCKETS],
    /// Sum of the durations, nanoseconds.
    pub sum_nanos: u64,
}

impl OutcomeTotals {
    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The telemetry totals of one edge since the process started.
#[derive(Debug)]
pub struct EdgeTally {
    key: TallyKey,
    /// The outcomes seen so far; read-locked per request only for outcomes not cached below.
    outcomes: RwLock<HashMap<OutcomeKey, Arc<OutcomeTally>>>,
    /// The usual outcomes (200 over HTTP/1, HTTP/2, and gRPC OK), resolved once.
    ok: [OnceLock<Arc<OutcomeTally>>; 3],
    tcp: OnceLock<TcpHandles>,
    tcp_closed: AtomicU64,
    /// Policy fallbacks that this edge's version served, per protocol (then TCP).
    fallbacks: [AtomicU64; TCP_INDEX + 1],
    /// Mirror outcomes (mirror edges), per request protocol and [`MirrorOutcome`].
    mirror_outcomes: [[AtomicU64; MirrorOutcome::ALL.len()]; TCP_INDEX],
}

impl EdgeTally {
    fn new(key: TallyKey) -> EdgeTally {
        EdgeTally {
            key,
            outcomes: RwLock::new(HashMap::new()),
            ok: Default::default(),
            tcp: OnceLock::new(),
            tcp_closed: AtomicU64::new(0),
            fallbacks: Default::default(),
            mirror_outcomes: Default::default(),
        }
    }

    /// The edge (and mirror flag) these totals belong to.
    pub fn key(&self) -> &TallyKey {
        &self.key
    }

    /// Counts one request of outcome `key` that took `elapsed`. The usual outcomes go straight
    /// to their cached tally (no lock, no reference count touched).
    fn observe(&self, key: OutcomeKey, elapsed: Duration) {
        let cached = match (key.protocol, key.code, key.grpc) {
            (RequestProtocol::Http1, 200, None) => Some(&self.ok[0]),
            (RequestProtocol::Http2, 200, None) => Some(&self.ok[1]),
            (RequestProtocol::Grpc, 200, Some(0)) => Some(&self.ok[2]),
            _ => None,
        };
        match cached {
            Some(cell) => cell.get_or_init(|| self.outcome_slow(key)).observe(elapsed),
            None => self.outcome_slow(key).observe(elapsed),
        }
    }

    fn outcome_slow(&self, key: OutcomeKey) -> Arc<OutcomeTally> {
        let read = self.outcomes.read().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = read.get(&key) {
            return Arc::clone(t);
        }
        drop(read);
        let mut write = self.outcomes.write().unwrap_or_else(|e| e.into_inner());
        let key = if write.len() >= MAX_OUTCOMES_PER_EDGE && !write.contains_key(&key) {
            OutcomeKey {
                protocol: key.protocol,
                code: key.code / 100 * 100,
                grpc: key.grpc.map(|_| 2),
            }
        } else {
            key
        };
        Arc::clone(write.entry(key).or_default())
    }

    /// Every total of the edge now.
    pub fn totals(&self) -> EdgeTotals {
        let outcomes = self
            .outcomes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, t)| (*k, t.totals()))
            .collect();
        let (tcp_opened, tcp_sent, tcp_received) = match self.tcp.get() {
            Some(h) => (h.opened.get(), h.sent.get(), h.received.get()),
            None => (0, 0, 0),
        };
        EdgeTotals {
            outcomes,
            tcp_opened,
            tcp_closed: self.tcp_closed.load(Ordering::Relaxed),
            tcp_sent,
            tcp_received,
            fallbacks: std::array::from_fn(|i| self.fallbacks[i].load(Ordering::Relaxed)),
            mirror_outcomes: std::array::from_fn(|p| {
                std::array::from_fn(|o| self.mirror_outcomes[p][o].load(Ordering::Relaxed))
            }),
        }
    }
}

/// A reading of an [`EdgeTally`] (or the difference of two: see `telemetry.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeTotals {
    /// Requests by outcome.
    pub outcomes: std::collections::BTreeMap<OutcomeKey, OutcomeTotals>,
    /// Opaque TCP connections opened.
    pub tcp_opened: u64,
    /// Opaque TCP connections closed.
    pub tcp_closed: u64,
    /// Bytes sent towards the destination (request direction).
    pub tcp_sent: u64,
    /// Bytes received from the destination (response direction).
    pub tcp_received: u64,
    /// Policy fallbacks served, per [`RequestProtocol::index`], then opaque TCP ([`TCP_INDEX`]).
    pub fallbacks: [u64; TCP_INDEX + 1],
    /// Mirror outcomes per [`RequestProtocol::index`] and `MirrorOutcome as usize`.
    pub mirror_outcomes: [[u64; MirrorOutcome::ALL.len()]; TCP_INDEX],
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
            source_principal: None,
        }
    }

    #[test]
    fn renders_design_names_and_labels() {
        let metrics = Arc::new(Metrics::new());
        let em = EdgeMetrics::new(Arc::clone(&metrics), edge());
        em.record_request(RequestProtocol::Http1, 200, None, Duration::from_millis(3));
        em.record_request(RequestProtocol::Http1, 200, None, Duration::from_millis(3));
        em.record_request(RequestProtocol::Http1, 503, None, Duration::from_millis(1));
        em.record_request(
            RequestProtocol::Grpc,
            200,
            Some(14),
            Duration::from_millis(1),
        );
        em.tcp().opened.inc();
        em.tcp().sent.inc_by(10);
        let text = metrics.render();
        let labels = "direction=\"outbound\",source_workload=\"productpage\",source_namespace=\"default\",source_version=\"v1\",source_principal=\"\",destination_service=\"reviews\",destination_namespace=\"default\",destination_version=\"v2\"";
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
        mirror.record_request(RequestProtocol::Http1, 200, None, Duration::from_millis(1));
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::Sent);
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::Dropped);
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::Dropped);
        metrics.route_fallback("reviews", "default", "v3", "v1");
        metrics.retry("reviews", "default", RetryOutcome::BudgetExhausted);
        let text = metrics.render();
        let edge_labels = "direction=\"outbound\",source_workload=\"productpage\",source_namespace=\"default\",source_version=\"v1\",destination_service=\"reviews\",destination_namespace=\"default\",destination_version=\"v2\"";
        // The request metrics name the (here absent) principal; the mirror counter does not.
        let labels = "direction=\"outbound\",source_workload=\"productpage\",source_namespace=\"default\",source_version=\"v1\",source_principal=\"\",destination_service=\"reviews\",destination_namespace=\"default\",destination_version=\"v2\"";
        assert!(text.contains(&format!("serin_requests_total{{{labels},response_code=\"200\",grpc_status=\"\",mirror=\"true\"}} 1")), "{text}");
        assert!(
            text.contains(&format!(
                "serin_mirror_requests_total{{{edge_labels},outcome=\"dropped\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "serin_mirror_requests_total{{{edge_labels},outcome=\"sent\"}} 1"
            )),
            "{text}"
        );
        assert!(text.contains("serin_route_fallbacks_total{destination_service=\"reviews\",destination_namespace=\"default\",chosen_version=\"v3\",fallback_version=\"v1\"} 1"), "{text}");
        assert!(text.contains("serin_retries_total{destination_service=\"reviews\",destination_namespace=\"default\",outcome=\"budget_exhausted\"} 1"), "{text}");
    }
    #[test]
    fn inbound_edges_name_the_verified_client_principal() {
        let metrics = Arc::new(Metrics::new());
        let inbound = |principal: Option<&str>| Edge {
            direction: Direction::Inbound,
            source_principal: principal.map(Arc::from),
            ..edge()
        };
        let id = "spiffe://cluster.local/ns/default/sa/productpage";
        let mtls = EdgeMetrics::new(Arc::clone(&metrics), inbound(Some(id)));
        let plain = EdgeMetrics::new(Arc::clone(&metrics), inbound(None));
        mtls.record_request(RequestProtocol::Http1, 200, None, Duration::from_millis(2));
        mtls.record_request(RequestProtocol::Http1, 200, None, Duration::from_millis(2));
        plain.record_request(RequestProtocol::Http1, 200, None, Duration::from_millis(2));
        mtls.tcp().opened.inc();
        mtls.tcp().sent.inc_by(7);
        let text = metrics.render();
        let with = |principal: &str| {
            format!(
                "direction=\"inbound\",source_workload=\"productpage\",source_namespace=\"default\",source_version=\"v1\",source_principal=\"{principal}\",destination_service=\"reviews\""
            )
        };
        for (line, n) in [
            (format!("serin_requests_total{{{}", with(id)), 2),
            (format!("serin_requests_total{{{}", with("")), 1),
            (
                format!("serin_request_duration_seconds_count{{{}", with(id)),
                2,
            ),
            (
                format!("serin_tcp_connections_opened_total{{{}", with(id)),
                1,
            ),
            (format!("serin_tcp_sent_bytes_total{{{}", with(id)), 7),
        ] {
            let found: Vec<&str> = text.lines().filter(|l| l.starts_with(&line)).collect();
            assert_eq!(found.len(), 1, "{line} in {text}");
            assert!(found[0].ends_with(&format!(" {n}")), "{}", found[0]);
        }
        // Plain and mTLS traffic of one peer are apart in telemetry too.
        let keys: Vec<_> = metrics
            .edge_tallies()
            .iter()
            .map(|t| t.key().edge.source_principal.clone())
            .collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.contains(&None) && keys.contains(&Some(Arc::from(id))));
    }
}
