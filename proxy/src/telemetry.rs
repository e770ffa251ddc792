//! The telemetry reporter: each interval (1 s by default) it reads every edge's totals
//! ([`EdgeTally`], plain atomics the request path adds to), subtracts what the previous interval
//! read ([`Deltas`]) and sends the edges that carried traffic as one `serin.v1.Telemetry.Report`
//! message (protocol in proto/serin/v1/telemetry.proto) on a long-lived stream to the control
//! plane, which answers each report with an acknowledgement.
//!
//! What it costs and what it never does:
//! - Nothing on the request path: the reporter only reads atomics, on its own task.
//! - Deltas are taken every interval whether or not the control plane is there, so a report
//!   always covers one interval. A report that cannot go out (no stream, or
//!   [`MAX_UNACKED`] reports already waiting for their acknowledgement) is dropped and counted
//!   (`serin_telemetry_reports_dropped_total`), as are the reports a broken stream lost: memory
//!   stays bounded and nothing is resent.
//! - A broken or refused stream is reopened with the Discovery client's backoff (exponential,
//!   full jitter); so is one that stays open but leaves a report unacknowledged for
//!   [`STALL_INTERVALS`] intervals (counted). Serving never waits on telemetry.
//!
//! Rule hits ([`HitDeltas`]): each interval the reporter also reads the route counters of every
//! policy in force (the ones `/routes` shows, see `routing.rs`) and sends the non-zero deltas per
//! (policy, generation, rule or default route, version). Counters replaced by a new spec are read
//! one last time, so every hit is sent once, under the generation it was counted in.
//!
//! Security: an inbound edge's `mtls` and `source_principal` come from its [`crate::metrics::Edge`]
//! (the peer's edges are kept apart per verified client principal), so one peer can give an
//! entry per principal and one for its plaintext traffic; outbound edges leave both unset.
//!
//! Byte counts: the proto's `received_bytes` is the request direction (towards the destination,
//! the sidecar's `serin_tcp_sent_bytes_total`) and `sent_bytes` the response direction
//! (`serin_tcp_received_bytes_total`), whichever side reports.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serin_proto::v1;
use serin_proto::v1::telemetry_client::TelemetryClient;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::config::ControlPlane;
use crate::discovery::Backoff;
use crate::identity::CredentialsWatch;
use crate::metrics::{
    DURATION_BUCKETS, Direction, EdgeTally, EdgeTotals, Metrics, MirrorOutcome, OutcomeTotals,
    RequestProtocol, TALLY_BUCKETS, TCP_INDEX, TallyKey,
};
use crate::routing::PolicyRouting;
use crate::tables::Tables;

/// Reports sent but not yet acknowledged, at most; beyond it new reports are dropped (the control
/// plane is not keeping up, or the stream is stuck).
pub const MAX_UNACKED: usize = 4;
/// Shortest report interval accepted (from the flag or from the control plane).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest report interval accepted.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Intervals a report may wait for its acknowledgement on an open stream; after that many the
/// stream is taken for stuck (open, but the control plane no longer answers), closed, counted
/// (`serin_telemetry_streams_stalled_total`) and reopened.
pub const STALL_INTERVALS: u32 = 5;

/// Checks `--telemetry-interval` at start.
pub fn validate_interval(interval: Duration) -> Result<(), String> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        Ok(())
    } else {
        Err(format!(
            "invalid --telemetry-interval {interval:?}: it must be between {MIN_INTERVAL:?} and {MAX_INTERVAL:?} (use --no-telemetry to turn telemetry off)"
        ))
    }
}

/// The `serin_telemetry_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct TelemetryMetrics {
    /// Report intervals closed (deltas taken), whether a report went out or not.
    pub intervals: Counter,
    /// Telemetry streams opened.
    pub connections: Counter,
    /// Reports sent.
    pub reports_sent: Counter,
    /// Reports dropped: no stream, too many unacknowledged, or lost with a broken stream.
    pub reports_dropped: Counter,
    /// Edges the control plane said it dropped.
    pub edges_rejected: Counter,
    /// Rule-hit entries the control plane said it dropped.
    pub rule_hits_rejected: Counter,
    /// Streams closed because reports went unacknowledged for [`STALL_INTERVALS`] intervals.
    pub streams_stalled: Counter,
}

impl TelemetryMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> TelemetryMetrics {
        let m = TelemetryMetrics::default();
        registry.register(
            "serin_telemetry_intervals",
            "Report intervals closed (deltas taken), whether a report went out or not",
            m.intervals.clone(),
        );
        registry.register(
            "serin_telemetry_connections",
            "Telemetry streams opened to the control plane",
            m.connections.clone(),
        );
        registry.register(
            "serin_telemetry_reports_sent",
            "Telemetry reports sent to the control plane",
            m.reports_sent.clone(),
        );
        registry.register(
            "serin_telemetry_reports_dropped",
            "Telemetry reports dropped (control plane unreachable or not acknowledging)",
            m.reports_dropped.clone(),
        );
        registry.register(
            "serin_telemetry_edges_rejected",
            "Edges of sent reports that the control plane dropped",
            m.edges_rejected.clone(),
        );
        registry.register(
            "serin_telemetry_rule_hits_rejected",
            "Rule-hit entries of sent reports that the control plane dropped",
            m.rule_hits_rejected.clone(),
        );
        registry.register(
            "serin_telemetry_streams_stalled",
            "Telemetry streams closed and reopened because the control plane stopped acknowledging reports",
            m.streams_stalled.clone(),
        );
        m
    }
}

// ------------------------------------------------------------------------------------------------
// Deltas

/// `now - before`, field by field (a total never shrinks; saturating all the same).
pub fn delta(before: Option<&EdgeTotals>, now: &EdgeTotals) -> EdgeTotals {
    let Some(before) = before else {
        return now.clone();
    };
    let outcomes = now
        .outcomes
        .iter()
        .map(|(key, n)| {
            let b = before.outcomes.get(key).copied().unwrap_or_default();
            let d = OutcomeTotals {
                buckets: std::array::from_fn(|i| n.buckets[i].saturating_sub(b.buckets[i])),
                sum_nanos: n.sum_nanos.saturating_sub(b.sum_nanos),
            };
            (*key, d)
        })
        .filter(|(_, d)| d.count() > 0)
        .collect();
    EdgeTotals {
        outcomes,
        tcp_opened: now.tcp_opened.saturating_sub(before.tcp_opened),
        tcp_closed: now.tcp_closed.saturating_sub(before.tcp_closed),
        tcp_sent: now.tcp_sent.saturating_sub(before.tcp_sent),
        tcp_received: now.tcp_received.saturating_sub(before.tcp_received),
        fallbacks: std::array::from_fn(|i| now.fallbacks[i].saturating_sub(before.fallbacks[i])),
        mirror_outcomes: std::array::from_fn(|p| {
            std::array::from_fn(|o| {
                now.mirror_outcomes[p][o].saturating_sub(before.mirror_outcomes[p][o])
            })
        }),
    }
}

fn proto_protocol(p: RequestProtocol) -> v1::Protocol {
    match p {
        RequestProtocol::Http1 => v1::Protocol::Http1,
        RequestProtocol::Http2 => v1::Protocol::Http2,
        RequestProtocol::Grpc => v1::Protocol::Grpc,
    }
}

/// The wire form of one edge's delta: one `EdgeStats` per protocol that carried requests (or
/// counted fallbacks or mirror outcomes), and one for opaque TCP if any connection, byte or
/// fallback was counted; empty when nothing was.
pub fn edge_stats(key: &TallyKey, d: &EdgeTotals) -> Vec<v1::EdgeStats> {
    let e = &key.edge;
    let base = |protocol: v1::Protocol| v1::EdgeStats {
        direction: match e.direction {
            Direction::Inbound => v1::TrafficDirection::Inbound,
            Direction::Outbound => v1::TrafficDirection::Outbound,
        } as i32,
        source_workload: e.source_workload.to_string(),
        source_namespace: e.source_namespace.to_string(),
        source_version: e.source_version.to_string(),
        destination_service: e.destination_service.to_string(),
        destination_namespace: e.destination_namespace.to_string(),
        destination_version: e.destination_version.to_string(),
        protocol: protocol as i32,
        mirror: key.edge.mirror,
        mtls: e.source_principal.is_some(),
        source_principal: e.source_principal.as_deref().unwrap_or("").to_owned(),
        ..v1::EdgeStats::default()
    };
    let mut out = Vec::with_capacity(2);
    for protocol in RequestProtocol::ALL {
        let mut stats = base(proto_protocol(protocol));
        let mut counts = [0u64; TALLY_BUCKETS];
        let mut nanos = 0u64;
        for (outcome, totals) in d.outcomes.iter().filter(|(o, _)| o.protocol == protocol) {
            let count = totals.count();
            if count == 0 {
                continue;
            }
            stats.responses.push(v1::ResponseCount {
                response_code: u32::from(outcome.code),
                grpc_status: outcome.grpc.map(u32::from),
                count,
            });
            for (s, n) in counts.iter_mut().zip(totals.buckets) {
                *s += n;
            }
            nanos += totals.sum_nanos;
        }
        if !stats.responses.is_empty() {
            stats.duration = Some(v1::DurationHistogram {
                bucket_bounds_seconds: DURATION_BUCKETS.to_vec(),
                bucket_counts: counts.to_vec(),
                sum_seconds: Duration::from_nanos(nanos).as_secs_f64(),
                count: counts.iter().sum(),
            });
        }
        stats.version_fallbacks = d.fallbacks[protocol.index()];
        for (outcome, &n) in MirrorOutcome::ALL
            .iter()
            .zip(&d.mirror_outcomes[protocol.index()])
        {
            if n > 0 {
                stats.mirror_outcomes.insert(outcome.as_str().to_owned(), n);
            }
        }
        if !stats.responses.is_empty()
            || stats.version_fallbacks > 0
            || !stats.mirror_outcomes.is_empty()
        {
            out.push(stats);
        }
    }
    let tcp_fallbacks = d.fallbacks[TCP_INDEX];
    if d.tcp_opened + d.tcp_closed + d.tcp_sent + d.tcp_received + tcp_fallbacks > 0 {
        out.push(v1::EdgeStats {
            tcp_connections_opened: d.tcp_opened,
            tcp_connections_closed: d.tcp_closed,
            // The proto names bytes from the destination's side: it *receives* the request
            // direction, which the sidecar counts as *sent* towards the destination
            // (serin_tcp_sent_bytes_total), and *sends* the response direction
            // (serin_tcp_received_bytes_total).
            received_bytes: d.tcp_sent,
            sent_bytes: d.tcp_received,
            version_fallbacks: tcp_fallbacks,
            ..base(v1::Protocol::Tcp)
        });
    }
    out
}

/// What every edge totalled at the previous report, to subtract from the next.
#[derive(Debug, Default)]
pub struct Deltas {
    last: HashMap<TallyKey, EdgeTotals>,
}

impl Deltas {
    /// The edges of `tallies` with traffic since the previous call (all they counted, on the
    /// first), in wire form.
    pub fn take(&mut self, tallies: &[Arc<EdgeTally>]) -> Vec<v1::EdgeStats> {
        let mut out = Vec::new();
        for tally in tallies {
            let now = tally.totals();
            let d = delta(self.last.get(tally.key()), &now);
            out.extend(edge_stats(tally.key(), &d));
            self.last.insert(tally.key().clone(), now);
        }
        out
    }
}

/// What the routing counters of one policy read at the previous report.
#[derive(Debug)]
struct PolicyReading {
    /// The routing state read (kept so that its counters can be read one last time once a new
    /// spec replaced them).
    routing: Arc<PolicyRouting>,
    /// Its [`PolicyRouting::entry_hits`] counts, in order.
    hits: Vec<u64>,
}

/// What every policy's route counters totalled at the previous report, to subtract from the
/// next: the rule-hit counterpart of [`Deltas`].
#[derive(Debug, Default)]
pub struct HitDeltas {
    /// By (namespace, routed service).
    last: HashMap<(String, String), PolicyReading>,
}

impl HitDeltas {
    /// The route hits of `policies` since the previous call (all they counted, on the first),
    /// in wire form, non-zero only. Counters that a new spec replaced (or whose policy went
    /// away) are read one last time, and their hits sent under their own generation.
    pub fn take(&mut self, policies: &[Arc<PolicyRouting>]) -> Vec<v1::RuleHits> {
        let mut out = Vec::new();
        let mut last = HashMap::with_capacity(policies.len());
        for routing in policies {
            let p = &routing.policy;
            // Keyed as the tables carry counters over: by the routed service.
            let key = (p.namespace().to_owned(), p.service().to_owned());
            let before = match self.last.remove(&key) {
                Some(old) if old.routing.shares_counters(routing) => Some(old.hits),
                Some(old) => {
                    // A new spec: the old counters' last hits, then the new ones from zero.
                    hit_deltas(&old.routing, Some(&old.hits), &mut out);
                    None
                }
                None => None,
            };
            let hits = hit_deltas(routing, before.as_deref(), &mut out);
            last.insert(
                key,
                PolicyReading {
                    routing: Arc::clone(routing),
                    hits,
                },
            );
        }
        for (_, gone) in self.last.drain() {
            hit_deltas(&gone.routing, Some(&gone.hits), &mut out);
        }
        self.last = last;
        out
    }
}

/// Appends to `out` the hits of `routing` since `before` (a reading of the same counters; `None`:
/// since they started), summed per (rule, version); returns the reading now.
fn hit_deltas(
    routing: &PolicyRouting,
    before: Option<&[u64]>,
    out: &mut Vec<v1::RuleHits>,
) -> Vec<u64> {
    let p = &routing.policy;
    let entries = routing.entry_hits();
    let mut sums: BTreeMap<(Option<&str>, &str), u64> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        let was = before.and_then(|b| b.get(i)).copied().unwrap_or(0);
        let d = e.hits.saturating_sub(was);
        if d > 0 {
            *sums.entry((e.rule, e.version)).or_default() += d;
        }
    }
    out.extend(
        sums.into_iter()
            .map(|((rule, version), count)| v1::RuleHits {
                policy_namespace: p.namespace().to_owned(),
                policy_name: p.name().to_owned(),
                generation: p.policy.metadata.generation.unwrap_or(0),
                rule: rule.unwrap_or_default().to_owned(),
                version: version.to_owned(),
                count,
            }),
    );
    entries.iter().map(|e| e.hits).collect()
}

// ------------------------------------------------------------------------------------------------
// The stream

/// Why a telemetry stream could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The connection could not be made.
    #[error("cannot connect to the control plane at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The transport's error, with its causes.
        reason: String,
    },
    /// The control plane refused or broke the stream.
    #[error("telemetry stream failed: {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The control plane ended the stream.
    #[error("the control plane ended the telemetry stream")]
    Ended,
    /// The stream stayed open but reports went unacknowledged.
    #[error(
        "the control plane acknowledged no report for {intervals} report intervals; reopening the telemetry stream"
    )]
    Stalled {
        /// Intervals waited.
        intervals: u32,
    },
}

impl From<tonic::Status> for TelemetryError {
    fn from(status: tonic::Status) -> Self {
        TelemetryError::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// An open stream: where reports go, where acknowledgements come from.
#[derive(Debug)]
struct Open {
    tx: mpsc::Sender<v1::ReportRequest>,
    acks: Streaming<v1::ReportResponse>,
    /// Sequence number of the next report (1 for the first, which names the reporter).
    next_sequence: u64,
    /// Sequence numbers sent and not acknowledged yet.
    unacked: VecDeque<u64>,
    /// Whether the control plane acknowledged anything on this stream (the backoff restarts).
    acked: bool,
    /// Intervals closed in a row while some report waited for its acknowledgement.
    waiting_intervals: u32,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Box<Open>, TelemetryError>> + Send>>;

/// Where the connection stands.
enum Link {
    Connecting(Connecting),
    Up(Box<Open>),
    Waiting(Pin<Box<tokio::time::Sleep>>),
}

/// What moved the reporter's loop.
enum Event {
    Tick,
    Opened(Result<Box<Open>, TelemetryError>),
    Ack(Result<Option<v1::ReportResponse>, tonic::Status>),
    Retry,
}

impl Link {
    /// Waits for the next thing that happens to the connection (cancel-safe: the connect and the
    /// sleep are kept across calls, and `Streaming::message` keeps its state in the stream).
    async fn progress(&mut self) -> Event {
        match self {
            Link::Connecting(connecting) => Event::Opened(connecting.await),
            Link::Up(open) => Event::Ack(open.acks.message().await),
            Link::Waiting(sleep) => {
                sleep.await;
                Event::Retry
            }
        }
    }
}

async fn open(
    settings: ControlPlane,
    credentials: CredentialsWatch,
) -> Result<Box<Open>, TelemetryError> {
    let channel = crate::control_channel::stream_channel(&settings, &credentials)
        .await
        .map_err(|e| TelemetryError::Connect {
            url: e.url,
            reason: e.reason,
        })?;
    let (tx, rx) = mpsc::channel(MAX_UNACKED);
    let acks = TelemetryClient::new(channel)
        .report(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok(Box::new(Open {
        tx,
        acks,
        next_sequence: 1,
        unacked: VecDeque::new(),
        acked: false,
        waiting_intervals: 0,
    }))
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The reporter of one proxy.
#[derive(Debug)]
pub struct Reporter {
    settings: ControlPlane,
    credentials: CredentialsWatch,
    interval: Duration,
    identity: v1::ProxyIdentity,
    metrics: Arc<Metrics>,
    tables: watch::Receiver<Arc<Tables>>,
}

impl Reporter {
    /// A reporter to the control plane of `settings`, every `interval`, as `identity` (the one
    /// the Discovery client sends), reading the edges of `metrics` and the route counters of the
    /// policies in `tables`. Nothing is dialled before [`Reporter::run`].
    pub fn new(
        settings: ControlPlane,
        interval: Duration,
        identity: v1::ProxyIdentity,
        metrics: Arc<Metrics>,
        tables: watch::Receiver<Arc<Tables>>,
    ) -> Reporter {
        Reporter {
            settings,
            credentials: crate::identity::none(),
            interval,
            identity,
            metrics,
            tables,
        }
    }

    /// The workload certificate to present on the control plane's mTLS port
    /// ([`ControlPlane::tls_url`]), as the Discovery client does.
    pub fn with_credentials(mut self, credentials: CredentialsWatch) -> Reporter {
        self.credentials = credentials;
        self
    }

    fn connect(&self) -> Link {
        Link::Connecting(Box::pin(open(
            self.settings.clone(),
            self.credentials.clone(),
        )))
    }

    /// Takes deltas and reports them every interval, reopening the stream after every failure,
    /// for ever (the caller drops the future to stop).
    pub async fn run(&self) -> Infallible {
        let stats = &self.metrics.telemetry;
        let mut interval = self.interval;
        let mut ticker = ticker(interval);
        let mut deltas = Deltas::default();
        let mut hit_deltas = HitDeltas::default();
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        let mut link = self.connect();
        let mut interval_start = SystemTime::now();
        loop {
            let event = tokio::select! {
                _ = ticker.tick() => Event::Tick,
                event = link.progress() => event,
            };
            match event {
                Event::Tick => {
                    let edges = deltas.take(&self.metrics.edge_tallies());
                    let policies: Vec<Arc<PolicyRouting>> = self
                        .tables
                        .borrow()
                        .policies()
                        .into_iter()
                        .cloned()
                        .collect();
                    let rule_hits = hit_deltas.take(&policies);
                    stats.intervals.inc();
                    let interval_end = SystemTime::now();
                    let start = std::mem::replace(&mut interval_start, interval_end);
                    if let Link::Up(open) = &mut link
                        && !open.unacked.is_empty()
                    {
                        open.waiting_intervals += 1;
                        if open.waiting_intervals >= STALL_INTERVALS {
                            stats.streams_stalled.inc();
                            let lost = open.unacked.len() as u64;
                            let error = TelemetryError::Stalled {
                                intervals: open.waiting_intervals,
                            };
                            link = self.failed(&mut backoff, &error, lost);
                        }
                    }
                    if edges.is_empty() && rule_hits.is_empty() {
                        continue;
                    }
                    let Link::Up(open) = &mut link else {
                        stats.reports_dropped.inc();
                        continue;
                    };
                    if open.unacked.len() >= MAX_UNACKED {
                        tracing::debug!(
                            unacked = open.unacked.len(),
                            "telemetry report dropped: the control plane has not acknowledged the previous ones"
                        );
                        stats.reports_dropped.inc();
                        continue;
                    }
                    let sequence = open.next_sequence;
                    let report = v1::ReportRequest {
                        reporter: (sequence == 1).then(|| self.identity.clone()),
                        sequence,
                        interval_start: Some(timestamp(start)),
                        interval_end: Some(timestamp(interval_end)),
                        edges,
                        rule_hits,
                    };
                    // Room is guaranteed by the unacked bound (the channel holds MAX_UNACKED),
                    // but a closed stream is possible: then the report is lost, and counted.
                    match open.tx.try_send(report) {
                        Ok(()) => {
                            open.next_sequence += 1;
                            open.unacked.push_back(sequence);
                            stats.reports_sent.inc();
                        }
                        Err(_) => {
                            stats.reports_dropped.inc();
                        }
                    }
                }
                Event::Opened(Ok(open)) => {
                    tracing::info!(control_plane = %crate::control_channel::stream_url(&self.settings), "telemetry stream open");
                    stats.connections.inc();
                    link = Link::Up(open);
                }
                Event::Opened(Err(error)) => {
                    link = self.failed(&mut backoff, &error, 0);
                }
                Event::Ack(Ok(Some(ack))) => {
                    let Link::Up(open) = &mut link else {
                        continue;
                    };
                    open.unacked.retain(|&s| s > ack.sequence);
                    open.waiting_intervals = 0;
                    if !open.acked {
                        open.acked = true;
                        backoff.reset();
                    }
                    if ack.edges_dropped > 0 {
                        tracing::debug!(
                            sequence = ack.sequence,
                            dropped = ack.edges_dropped,
                            "the control plane dropped edges of a telemetry report"
                        );
                        stats.edges_rejected.inc_by(ack.edges_dropped);
                    }
                    if ack.rule_hits_dropped > 0 {
                        tracing::debug!(
                            sequence = ack.sequence,
                            dropped = ack.rule_hits_dropped,
                            "the control plane dropped rule hits of a telemetry report"
                        );
                        stats.rule_hits_rejected.inc_by(ack.rule_hits_dropped);
                    }
                    if let Some(asked) =
                        ack.report_interval.and_then(|d| Duration::try_from(d).ok())
                    {
                        let asked = asked.clamp(MIN_INTERVAL, MAX_INTERVAL);
                        if asked != interval {
                            tracing::info!(?asked, "report interval set by the control plane");
                            interval = asked;
                            ticker = self::ticker(interval);
                        }
                    }
                }
                Event::Ack(end) => {
                    let error = match end {
                        Err(status) => TelemetryError::from(status),
                        Ok(_) => TelemetryError::Ended,
                    };
                    let lost = match &link {
                        Link::Up(open) => open.unacked.len() as u64,
                        _ => 0,
                    };
                    link = self.failed(&mut backoff, &error, lost);
                }
                Event::Retry => link = self.connect(),
            }
        }
    }

    /// After a failed connect or a broken stream (which lost `lost` unacknowledged reports):
    /// count, log, and wait out the backoff.
    fn failed(&self, backoff: &mut Backoff, error: &TelemetryError, lost: u64) -> Link {
        self.metrics.telemetry.reports_dropped.inc_by(lost);
        let delay = backoff.next();
        tracing::warn!(control_plane = %crate::control_channel::stream_url(&self.settings), %error, retry_in = ?delay, lost, "telemetry disconnected; serving on, reports dropped meanwhile");
        Link::Waiting(Box::pin(tokio::time::sleep(delay)))
    }
}

fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    // A late tick takes one delta covering the longer interval, not a burst of empty ones.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Edge, EdgeMetrics, OutcomeKey};

    fn edge(destination_version: &str) -> Edge {
        Edge {
            direction: Direction::Outbound,
            source_workload: "productpage".into(),
            source_namespace: "default".into(),
            source_version: "v1".into(),
            destination_service: "reviews".into(),
            destination_namespace: "default".into(),
            destination_version: destination_version.into(),
            mirror: false,
            source_principal: None,
        }
    }

    fn responses(stats: &v1::EdgeStats) -> Vec<(u32, Option<u32>, u64)> {
        let mut out: Vec<_> = stats
            .responses
            .iter()
            .map(|r| (r.response_code, r.grpc_status, r.count))
            .collect();
        out.sort();
        out
    }

    fn find(edges: &[v1::EdgeStats], version: &str, protocol: v1::Protocol) -> v1::EdgeStats {
        edges
            .iter()
            .find(|e| e.destination_version == version && e.protocol == protocol as i32)
            .cloned()
            .unwrap_or_else(|| panic!("no {version} {protocol:?} edge in {edges:#?}"))
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_report_carries_everything_counted_so_far() {
        let metrics = Arc::new(Metrics::new());
        let v1_edge = EdgeMetrics::new(Arc::clone(&metrics), edge("v1"));
        let _idle = EdgeMetrics::new(Arc::clone(&metrics), edge("v3"));
        for _ in 0..3 {
            v1_edge.record_request(RequestProtocol::Http1, 200, None, 3 * MS);
        }
        v1_edge.record_request(RequestProtocol::Http1, 503, None, MS);
        let mut deltas = Deltas::default();
        let edges = deltas.take(&metrics.edge_tallies());
        assert_eq!(
            edges.len(),
            1,
            "the edge without traffic is not sent: {edges:#?}"
        );
        let e = find(&edges, "v1", v1::Protocol::Http1);
        assert_eq!(e.direction, v1::TrafficDirection::Outbound as i32);
        assert_eq!(
            (&*e.source_workload, &*e.destination_service, e.mirror),
            ("productpage", "reviews", false)
        );
        assert_eq!(responses(&e), [(200, None, 3), (503, None, 1)]);
        let h = e.duration.unwrap();
        assert_eq!(h.bucket_bounds_seconds, DURATION_BUCKETS);
        assert_eq!(h.bucket_counts.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(h.count, 4);
        // 1 ms is in (0.5 ms, 1 ms]; 3 ms in (2.5 ms, 5 ms].
        assert_eq!(h.bucket_counts[1], 1);
        assert_eq!(h.bucket_counts[3], 3);
        assert!((h.sum_seconds - 0.010).abs() < 1e-9, "{}", h.sum_seconds);
        assert_eq!(e.tcp_connections_opened, 0);
    }

    #[test]
    fn growing_counters_send_only_what_is_new_and_silence_sends_nothing() {
        let metrics = Arc::new(Metrics::new());
        let em = EdgeMetrics::new(Arc::clone(&metrics), edge("v2"));
        let mut deltas = Deltas::default();
        assert!(deltas.take(&metrics.edge_tallies()).is_empty());
        em.record_request(RequestProtocol::Grpc, 200, Some(0), 2 * MS);
        em.record_request(RequestProtocol::Grpc, 200, Some(14), 2 * MS);
        assert_eq!(deltas.take(&metrics.edge_tallies()).len(), 1);
        // Nothing new: nothing sent.
        assert!(deltas.take(&metrics.edge_tallies()).is_empty());
        for _ in 0..5 {
            em.record_request(RequestProtocol::Grpc, 200, Some(0), 20 * MS);
        }
        em.record_request(RequestProtocol::Http2, 404, None, 70 * MS);
        let edges = deltas.take(&metrics.edge_tallies());
        assert_eq!(edges.len(), 2, "{edges:#?}");
        let grpc = find(&edges, "v2", v1::Protocol::Grpc);
        assert_eq!(
            responses(&grpc),
            [(200, Some(0), 5)],
            "only the new requests"
        );
        let h = grpc.duration.unwrap();
        assert_eq!(h.count, 5);
        // 20 ms: (10 ms, 25 ms], bucket 5; the earlier 2 ms requests are not sent again.
        assert_eq!(h.bucket_counts[5], 5);
        assert_eq!(h.bucket_counts.iter().sum::<u64>(), 5);
        assert!((h.sum_seconds - 0.100).abs() < 1e-9);
        let h2 = find(&edges, "v2", v1::Protocol::Http2);
        assert_eq!(responses(&h2), [(404, None, 1)]);
        // (50 ms, 100 ms], bucket 7.
        assert_eq!(h2.duration.unwrap().bucket_counts[7], 1);
    }

    #[test]
    fn tcp_edges_count_connections_and_bytes_by_direction() {
        let metrics = Arc::new(Metrics::new());
        let em = EdgeMetrics::new(Arc::clone(&metrics), edge("v1"));
        let mut deltas = Deltas::default();
        em.tcp().opened.inc();
        em.tcp().sent.inc_by(100);
        em.tcp().received.inc_by(4000);
        let edges = deltas.take(&metrics.edge_tallies());
        let tcp = find(&edges, "v1", v1::Protocol::Tcp);
        assert_eq!(tcp.tcp_connections_opened, 1);
        assert_eq!(tcp.tcp_connections_closed, 0);
        assert_eq!(tcp.received_bytes, 100, "request direction");
        assert_eq!(tcp.sent_bytes, 4000, "response direction");
        assert!(tcp.responses.is_empty() && tcp.duration.is_none());
        // The connection closes later: only that is new.
        em.tcp_closed();
        let edges = deltas.take(&metrics.edge_tallies());
        let tcp = find(&edges, "v1", v1::Protocol::Tcp);
        assert_eq!(
            (
                tcp.tcp_connections_opened,
                tcp.tcp_connections_closed,
                tcp.sent_bytes
            ),
            (0, 1, 0)
        );
    }

    #[test]
    fn histogram_deltas_subtract_bucket_by_bucket() {
        let key = OutcomeKey {
            protocol: RequestProtocol::Http1,
            code: 200,
            grpc: None,
        };
        let mut before = EdgeTotals::default();
        let mut b = OutcomeTotals::default();
        b.buckets[2] = 10;
        b.buckets[16] = 1;
        b.sum_nanos = 5_000_000;
        before.outcomes.insert(key, b);
        let mut now = before.clone();
        let n = now.outcomes.get_mut(&key).unwrap();
        n.buckets[2] = 13;
        n.buckets[4] = 2;
        n.sum_nanos = 9_000_000;
        let d = delta(Some(&before), &now);
        let got = d.outcomes[&key];
        let mut want = [0; TALLY_BUCKETS];
        want[2] = 3;
        want[4] = 2;
        assert_eq!(got.buckets, want);
        assert_eq!(got.count(), 5);
        assert_eq!(got.sum_nanos, 4_000_000);
        // An outcome with nothing new is left out; no outcome and no bytes: nothing to send.
        let same = delta(Some(&now), &now);
        assert!(same.outcomes.is_empty());
        let tally_key = TallyKey {
            edge: Arc::new(edge("v1")),
        };
        assert!(edge_stats(&tally_key, &same).is_empty());
    }

    #[test]
    fn mirrored_traffic_is_keyed_apart() {
        let tally_key = TallyKey {
            edge: Arc::new(Edge {
                mirror: true,
                ..edge("v2")
            }),
        };
        let mut d = EdgeTotals::default();
        let mut t = OutcomeTotals::default();
        t.buckets[0] = 1;
        d.outcomes.insert(
            OutcomeKey {
                protocol: RequestProtocol::Http1,
                code: 200,
                grpc: None,
            },
            t,
        );
        let stats = edge_stats(&tally_key, &d);
        assert_eq!(stats.len(), 1);
        assert!(stats[0].mirror);
    }

    #[test]
    fn outcomes_per_edge_are_bounded() {
        let metrics = Arc::new(Metrics::new());
        let em = EdgeMetrics::new(Arc::clone(&metrics), edge("v1"));
        for code in 100..1000 {
            em.record_request(RequestProtocol::Http1, code, None, MS);
        }
        let mut deltas = Deltas::default();
        let edges = deltas.take(&metrics.edge_tallies());
        let e = find(&edges, "v1", v1::Protocol::Http1);
        let total: u64 = e.responses.iter().map(|r| r.count).sum();
        assert_eq!(total, 900, "every request still counts");
        assert!(
            e.responses.len() <= crate::metrics::MAX_OUTCOMES_PER_EDGE + 9,
            "{} outcomes",
            e.responses.len()
        );
    }

    #[test]
    fn fallbacks_and_mirror_outcomes_go_on_their_edge_and_protocol() {
        let metrics = Arc::new(Metrics::new());
        let served = EdgeMetrics::new(Arc::clone(&metrics), edge("v1"));
        let mirror = EdgeMetrics::new(
            Arc::clone(&metrics),
            Edge {
                mirror: true,
                ..edge("v2")
            },
        );
        let mut deltas = Deltas::default();
        served.record_request(RequestProtocol::Http1, 200, None, MS);
        served.record_fallback(Some(RequestProtocol::Http1));
        // A fallback whose request has not ended yet still goes out (on its protocol's edge).
        served.record_fallback(Some(RequestProtocol::Grpc));
        served.record_fallback(None);
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::Sent);
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::Dropped);
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::Dropped);
        let edges = deltas.take(&metrics.edge_tallies());
        let http = edges
            .iter()
            .find(|e| !e.mirror && e.protocol == v1::Protocol::Http1 as i32)
            .unwrap();
        assert_eq!(http.version_fallbacks, 1);
        assert_eq!(responses(http), [(200, None, 1)]);
        let grpc = find(&edges, "v1", v1::Protocol::Grpc);
        assert_eq!(grpc.version_fallbacks, 1);
        assert!(grpc.responses.is_empty() && grpc.duration.is_none());
        let tcp = find(&edges, "v1", v1::Protocol::Tcp);
        assert_eq!((tcp.version_fallbacks, tcp.tcp_connections_opened), (1, 0));
        let m = edges.iter().find(|e| e.mirror).unwrap();
        assert_eq!(m.destination_version, "v2");
        assert_eq!(m.protocol, v1::Protocol::Http1 as i32);
        let mut outcomes: Vec<_> = m.mirror_outcomes.iter().map(|(k, n)| (&**k, *n)).collect();
        outcomes.sort();
        assert_eq!(outcomes, [("dropped", 2), ("sent", 1)]);
        assert!(
            m.responses.is_empty(),
            "no copy was answered through the meter here"
        );
        // Only what is new is sent next time.
        mirror.record_mirror(RequestProtocol::Http1, MirrorOutcome::NoEndpoint);
        let edges = deltas.take(&metrics.edge_tallies());
        assert_eq!(edges.len(), 1, "{edges:#?}");
        let outcomes: Vec<_> = edges[0].mirror_outcomes.iter().collect();
        assert_eq!(outcomes, [(&"no_endpoint".to_owned(), &1)]);
        assert_eq!(edges[0].version_fallbacks, 0);
    }

    mod rule_hits {
        use super::*;
        use crate::pool::PoolSettings;
        use crate::snapshot::file;
        use crate::tables::{Builder, Tables};

        const SERVICES: &str = r#"
services:
  - {name: reviews, namespace: default, vips: ["10.96.0.10"],
     ports: [{port: 9080, protocol: PROTOCOL_HTTP1}]}
endpoints:
  - service: reviews
    namespace: default
    endpoints:
      - {addresses: ["10.244.0.5"], podName: r1, version: v1, ready: true}
      - {addresses: ["10.244.0.6"], podName: r2, version: v2, ready: true}
"#;

        /// jason → v3 (no endpoint: falls back), `x-canary` → v2, the rest split v1/v2.
        fn policy(generation: u64, v2_weight: u32) -> String {
            format!(
                r#"
policies:
  - metadata: {{name: reviews-release, namespace: default, generation: {generation}}}
    spec:
      service: reviews
      rules:
        - name: jason
          match: [{{headers: {{end-user: {{exact: jason}}}}}}]
          route: [{{version: v3, weight: 100}}]
        - name: canary
          match: [{{headers: {{x-canary: {{present: true}}}}}}]
          route: [{{version: v2, weight: 1}}]
      default: {{route: [{{version: v1, weight: 50}}, {{version: v2, weight: {v2_weight}}}]}}
"#
            )
        }

        fn builder() -> Builder {
            Builder {
                identity: crate::config::Identity {
                    pod_name: "pp".into(),
                    namespace: "default".into(),
                    pod_ips: vec!["10.244.0.9".parse().unwrap()],
                    service: "productpage".into(),
                    version: "v1".into(),
                },
                metrics: Arc::new(Metrics::new()),
                pool: PoolSettings {
                    connect_timeout: Duration::from_secs(1),
                    idle_timeout: Duration::from_secs(1),
                    max_idle: 1,
                    tls: None,
                },
            }
        }

        fn tables(b: &Builder, policy: &str, previous: &Tables) -> Tables {
            let snapshot = file::parse(&format!("{SERVICES}{policy}"), "1".into()).unwrap();
            b.build(Arc::new(snapshot), previous)
        }

        fn send(t: &Tables, header: Option<(&str, &str)>, n: usize) {
            let d = t.destination("10.96.0.10:9080".parse().unwrap()).unwrap();
            for _ in 0..n {
                let mut req = http::Request::get("/");
                if let Some((k, v)) = header {
                    req = req.header(k, v);
                }
                let routed = d.route(&req.body(()).unwrap()).unwrap();
                if routed.fell_back {
                    routed
                        .backend
                        .metrics
                        .record_fallback(Some(RequestProtocol::Http1));
                }
            }
        }

        fn take(h: &mut HitDeltas, t: &Tables) -> Vec<(u64, String, String, u64)> {
            let policies: Vec<_> = t.policies().into_iter().cloned().collect();
            let mut out: Vec<_> = h
                .take(&policies)
                .into_iter()
                .map(|r| {
                    assert_eq!(
                        (&*r.policy_namespace, &*r.policy_name),
                        ("default", "reviews-release")
                    );
                    assert!(r.count > 0, "zero deltas are not sent: {r:?}");
                    (r.generation, r.rule, r.version, r.count)
                })
                .collect();
            out.sort();
            out
        }

        fn hit(generation: u64, rule: &str, version: &str, n: u64) -> (u64, String, String, u64) {
            (generation, rule.to_owned(), version.to_owned(), n)
        }

        #[test]
        fn deltas_per_rule_and_version_across_generations_and_specs() {
            let b = builder();
            let mut h = HitDeltas::default();
            let t1 = tables(&b, &policy(2, 0), &b.empty());
            send(&t1, Some(("end-user", "jason")), 3);
            send(&t1, Some(("x-canary", "1")), 2);
            send(&t1, None, 5);
            // The split chose v3 for jason (the hit), v1 served (the fallback, on v1's edge).
            assert_eq!(
                take(&mut h, &t1),
                [
                    hit(2, "", "v1", 5),
                    hit(2, "canary", "v2", 2),
                    hit(2, "jason", "v3", 3)
                ]
            );
            assert!(take(&mut h, &t1).is_empty(), "nothing new, nothing sent");
            let edges = Deltas::default().take(&b.metrics.edge_tallies());
            let v1_edge = find(&edges, "v1", v1::Protocol::Http1);
            assert_eq!(v1_edge.version_fallbacks, 3);

            // Same spec, new generation: the counters carry on, labelled with the new one.
            let t2 = tables(&b, &policy(3, 0), &t1);
            send(&t2, Some(("end-user", "jason")), 1);
            assert_eq!(take(&mut h, &t2), [hit(3, "jason", "v3", 1)]);

            // A new spec: a request still routed by the old tables counts under generation 3,
            // the new ones from zero under generation 4; nothing counts twice.
            let t3 = tables(&b, &policy(4, 50), &t2);
            send(&t2, Some(("end-user", "jason")), 1);
            send(&t3, Some(("end-user", "jason")), 2);
            send(&t3, Some(("x-canary", "1")), 1);
            assert_eq!(
                take(&mut h, &t3),
                [
                    hit(3, "jason", "v3", 1),
                    hit(4, "canary", "v2", 1),
                    hit(4, "jason", "v3", 2)
                ]
            );
            // The default split 50/50 over many requests: every one counted on one version.
            send(&t3, None, 200);
            let split = take(&mut h, &t3);
            assert_eq!(split.len(), 2, "{split:?}");
            assert_eq!(split.iter().map(|s| s.3).sum::<u64>(), 200);

            // The policy goes away: its last hits are still sent, then nothing.
            let t4 = tables(&b, "", &t3);
            send(&t3, Some(("x-canary", "1")), 1);
            assert_eq!(take(&mut h, &t4), [hit(4, "canary", "v2", 1)]);
            assert!(take(&mut h, &t4).is_empty());
        }
    }

    /// A telemetry server that takes every report and never acknowledges one.
    #[derive(Debug, Clone, Default)]
    struct Silent {
        streams: Arc<std::sync::atomic::AtomicU64>,
        reports: Arc<std::sync::atomic::AtomicU64>,
    }

    type Acks =
        Pin<Box<dyn futures::Stream<Item = Result<v1::ReportResponse, tonic::Status>> + Send>>;

    #[tonic::async_trait]
    impl v1::telemetry_server::Telemetry for Silent {
        type ReportStream = Acks;

        async fn report(
            &self,
            request: tonic::Request<Streaming<v1::ReportRequest>>,
        ) -> Result<tonic::Response<Acks>, tonic::Status> {
            use std::sync::atomic::Ordering::Relaxed;
            self.streams.fetch_add(1, Relaxed);
            let mut inbound = request.into_inner();
            let reports = Arc::clone(&self.reports);
            tokio::spawn(async move {
                while let Ok(Some(_)) = inbound.message().await {
                    reports.fetch_add(1, Relaxed);
                }
            });
            Ok(tonic::Response::new(Box::pin(futures::stream::pending())))
        }
    }

    #[tokio::test]
    async fn a_stream_that_stops_acknowledging_is_reopened_and_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let silent = Silent::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(v1::telemetry_server::TelemetryServer::new(silent.clone()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let metrics = Arc::new(Metrics::new());
        let em = EdgeMetrics::new(Arc::clone(&metrics), edge("v1"));
        em.record_request(RequestProtocol::Http1, 200, None, MS);
        let settings = ControlPlane {
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            ..ControlPlane::new(format!("http://{addr}"))
        };
        let (_tables_tx, tables) = watch::channel(Arc::new(
            crate::tables::Builder {
                identity: crate::config::Identity {
                    pod_name: "pp".into(),
                    namespace: "default".into(),
                    pod_ips: vec![],
                    service: "productpage".into(),
                    version: "v1".into(),
                },
                metrics: Arc::clone(&metrics),
                pool: crate::pool::PoolSettings {
                    connect_timeout: Duration::from_secs(1),
                    idle_timeout: Duration::from_secs(1),
                    max_idle: 1,
                    tls: None,
                },
            }
            .empty(),
        ));
        let reporter = Arc::new(Reporter::new(
            settings,
            MIN_INTERVAL,
            v1::ProxyIdentity {
                pod_name: "pp".into(),
                namespace: "default".into(),
                ..Default::default()
            },
            Arc::clone(&metrics),
            tables,
        ));
        let run = tokio::spawn({
            let reporter = Arc::clone(&reporter);
            async move { match reporter.run().await {} }
        });
        // The first report goes out and waits; STALL_INTERVALS later the stream is given up and
        // a new one opened, where the next traffic is reported again.
        let deadline = Instant::now() + Duration::from_secs(15);
        while metrics.telemetry.streams_stalled.get() == 0 || silent.streams.load(Relaxed) < 2 {
            assert!(
                Instant::now() < deadline,
                "no reconnect after a stalled stream"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        em.record_request(RequestProtocol::Http1, 200, None, MS);
        while silent.reports.load(Relaxed) < 2 {
            assert!(Instant::now() < deadline, "no report on the new stream");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = &metrics.telemetry;
        assert!(t.connections.get() >= 2);
        assert!(
            t.reports_dropped.get() >= 1,
            "the unacknowledged report counts as lost"
        );
        run.abort();
        server.abort();
    }

    #[test]
    fn the_interval_is_checked() {
        assert!(validate_interval(Duration::from_secs(1)).is_ok());
        let err = validate_interval(Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("--telemetry-interval"), "{err}");
        assert!(validate_interval(Duration::from_secs(600)).is_err());
    }
}
