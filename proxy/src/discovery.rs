//! The Discovery client: one `serin.v1.Discovery.Subscribe` stream to the control plane (the
//! protocol is in proto/serin/v1/discovery.proto), each snapshot converted resource by resource
//! and applied through the [`ConfigWriter`], answered with an ACK or a NACK naming the rejected
//! resources, and a reconnect with backoff whenever the stream breaks.
//!
//! What the sidecar serves while this goes on (FAULTS 18-20):
//! - Before the first snapshot the tables are empty and `/ready` is 503.
//! - Once a snapshot was applied the tables are only ever replaced by the next snapshot: a broken
//!   stream, a reconnect and a new hello never publish anything, so the proxy keeps serving the
//!   last good config (and `/ready` stays 200) while the control plane is away, and never passes
//!   through an empty configuration. Readiness means "can route", not "is connected": taking
//!   every pod out of rotation because the control plane restarts would turn a control-plane
//!   blip into an outage. The connection state is in `/config_dump` and the metrics instead.
//! - A resource that does not convert is rejected alone: the rest of the snapshot is applied and
//!   the last good copy of the rejected resource (if any) stays. The answer to a version is
//!   remembered, so the same version arriving again (after a reconnect) is answered the same way
//!   without being converted or applied again: no retry loop on a bad version.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serin_proto::v1;
use serin_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{ControlPlane, Identity};
use crate::identity::CredentialsWatch;
use crate::metrics::Metrics;
use crate::snapshot::proto::{InvalidSnapshot, duplicate_policy};
use crate::snapshot::{MeshTls, Policy, Service, ServiceEndpoints, Snapshot};
use crate::tables::{ConfigWriter, Tables};

/// The capability every proxy announces: it understands full snapshots.
pub const CAPABILITY_SNAPSHOT_FULL: &str = "snapshot.full";

/// Why a Discovery stream could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// `--control-plane` is not a usable URL.
    #[error("invalid control plane URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection could not be made.
    #[error("cannot connect to the control plane at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// The transport's error, with its causes.
        reason: String,
    },
    /// The control plane refused or broke the stream.
    #[error("discovery stream failed: {code:?}: {message}")]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The control plane ended the stream (e.g. it is shutting down).
    #[error("the control plane ended the discovery stream")]
    Ended,
}

impl From<tonic::Status> for DiscoveryError {
    fn from(status: tonic::Status) -> Self {
        DiscoveryError::Status {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// `error` and its sources, joined with ": " (tonic's transport errors say little on their own).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}

/// Namespace of the control plane's own identity (as serin-control's).
pub const CONTROL_PLANE_NAMESPACE: &str = "serin-system";
/// Service account of the control plane's own identity.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "serin-control";

use crate::control_channel::plain_form;

/// Checks, at start, what the control plane will insist on: a URL it can dial, a pod name and a
/// pod IP (the hello is refused without them).
pub fn validate(settings: &ControlPlane, identity: &Identity) -> Result<(), String> {
    if let Some(tls_url) = &settings.tls_url {
        if !tls_url.starts_with("https://") {
            return Err(format!(
                "invalid --control-plane-tls URL {tls_url:?}: it must start with https:// (e.g. https://10.244.0.1:15012)"
            ));
        }
        tonic::transport::Endpoint::from_shared(plain_form(tls_url))
            .map_err(|e| format!("invalid --control-plane-tls URL {tls_url:?}: {}", chain(&e)))?;
        if settings.identity.is_none() {
            return Err("--control-plane-tls needs a workload certificate: give --identity-token or --identity-token-file".into());
        }
        if let Some(crate::config::CaSource::Pem(pem)) = settings.control_plane_ca.as_deref() {
            crate::tls::certs_from_pem("control plane roots", pem)
                .map_err(|e| format!("invalid --control-plane-ca-pem: {e}"))?;
        }
    }
    // The bootstrap URL is plaintext; the mTLS port is --control-plane-tls.
    if !settings.url.starts_with("http://") {
        return Err(format!(
            "invalid --control-plane URL {:?}: it must start with http:// (e.g. http://10.244.0.1:15010)",
            settings.url
        ));
    }
    tonic::transport::Endpoint::from_shared(settings.url.clone()).map_err(|e| {
        format!(
            "invalid --control-plane URL {:?}: {}",
            settings.url,
            chain(&e)
        )
    })?;
    if identity.pod_name.is_empty() {
        return Err(
            "--control-plane needs --pod-name (the control plane identifies proxies by pod)".into(),
        );
    }
    if identity.pod_ips.is_empty() {
        return Err("--control-plane needs --pod-ip (the control plane recognises the pod's own endpoints by it)".into());
    }
    Ok(())
}

/// Where the connection to the control plane stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Dialling and subscribing.
    Connecting,
    /// Subscribed: snapshots arrive as the mesh changes.
    Connected,
    /// Waiting out the backoff before the next attempt.
    Disconnected,
}

impl ConnectionState {
    const ALL: [ConnectionState; 3] = [
        ConnectionState::Connecting,
        ConnectionState::Connected,
        ConnectionState::Disconnected,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
        }
    }
}

/// Label set of `serin_discovery_connection_state`.
type StateLabel = [(&'static str, &'static str); 1];

/// The `serin_discovery_*` metrics.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryMetrics {
    /// 1 for the current connection state, 0 for the others.
    pub connection_state: Family<StateLabel, Gauge>,
    /// Discovery streams opened.
    pub connections: Counter,
    /// Snapshots applied whole (ACKed).
    pub snapshots_applied: Counter,
    /// Snapshots applied with some resources rejected (NACKed).
    pub snapshots_rejected: Counter,
    /// Resources rejected, over all snapshots.
    pub resources_rejected: Counter,
}

impl DiscoveryMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> DiscoveryMetrics {
        let m = DiscoveryMetrics::default();
        registry.register(
            "serin_discovery_connection_state",
            "Connection to the control plane: 1 for the current state (connecting, connected, disconnected)",
            m.connection_state.clone(),
        );
        registry.register(
            "serin_discovery_connections",
            "Discovery streams opened to the control plane",
            m.connections.clone(),
        );
        registry.register(
            "serin_discovery_snapshots_applied",
            "Snapshots applied whole and ACKed",
            m.snapshots_applied.clone(),
        );
        registry.register(
            "serin_discovery_snapshots_rejected",
            "Snapshots with rejected resources (the rest applied), NACKed",
            m.snapshots_rejected.clone(),
        );
        registry.register(
            "serin_discovery_resources_rejected",
            "Resources of snapshots rejected by the proxy",
            m.resources_rejected.clone(),
        );
        m
    }

    fn set_state(&self, state: ConnectionState) {
        for s in ConnectionState::ALL {
            self.connection_state
                .get_or_create(&[("state", s.as_str())])
                .set(i64::from(s == state));
        }
    }
}

/// One rejected resource, as `/config_dump` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    /// `service`, `endpoints`, `policy` or `snapshot`.
    pub kind: &'static str,
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// Field at fault ("" for the whole resource).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl From<&v1::ResourceError> for Rejected {
    fn from(e: &v1::ResourceError) -> Self {
        Rejected {
            kind: match v1::ResourceKind::try_from(e.kind) {
                Ok(v1::ResourceKind::Service) => "service",
                Ok(v1::ResourceKind::Endpoints) => "endpoints",
                Ok(v1::ResourceKind::TrafficPolicy) => "policy",
                _ => "snapshot",
            },
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            field: e.field.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// What the client knows about its connection, for `/config_dump` and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    /// The control plane's URL.
    pub control_plane: String,
    /// The connection state.
    pub state: ConnectionState,
    /// Why the last stream ended or the last attempt failed ("" when none did yet).
    pub last_error: String,
    /// Milliseconds until the next attempt, while disconnected.
    pub retry_in_ms: Option<u64>,
    /// Version of the snapshot being served ("" before the first).
    pub applied_version: String,
    /// Version of the last snapshot ACKed.
    pub acked_version: String,
    /// Version of the last snapshot NACKed ("" when none was).
    pub nacked_version: String,
    /// The resources that NACK rejected.
    pub rejected: Vec<Rejected>,
    /// Streams opened so far.
    pub connections: u64,
    /// This process's instance id, as sent in the hello.
    pub instance_id: String,
}

/// The client's state, shared with the admin server.
#[derive(Debug)]
pub struct DiscoveryStatus {
    view: Mutex<StatusView>,
    metrics: DiscoveryMetrics,
}

impl DiscoveryStatus {
    fn new(url: String, instance_id: String, metrics: DiscoveryMetrics) -> DiscoveryStatus {
        metrics.set_state(ConnectionState::Connecting);
        DiscoveryStatus {
            view: Mutex::new(StatusView {
                control_plane: url,
                state: ConnectionState::Connecting,
                last_error: String::new(),
                retry_in_ms: None,
                applied_version: String::new(),
                acked_version: String::new(),
                nacked_version: String::new(),
                rejected: Vec::new(),
                connections: 0,
                instance_id,
            }),
            metrics,
        }
    }

    /// A copy of the current state.
    pub fn view(&self) -> StatusView {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusView> {
        // A panic while holding this lock leaves plain data behind: still fine to read.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: ConnectionState, retry_in: Option<Duration>) {
        let mut view = self.lock();
        view.state = state;
        view.retry_in_ms = retry_in.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        if state == ConnectionState::Connected {
            view.connections += 1;
            self.metrics.connections.inc();
        }
        drop(view);
        self.metrics.set_state(state);
    }

    fn failed(&self, error: &DiscoveryError, retry_in: Duration) {
        self.lock().last_error = error.to_string();
        self.set_state(ConnectionState::Disconnected, Some(retry_in));
    }

    fn answered(&self, version: &str, applied: bool, errors: &[v1::ResourceError]) {
        let mut view = self.lock();
        if applied {
            view.applied_version = version.to_owned();
        }
        if errors.is_empty() {
            view.acked_version = version.to_owned();
        } else {
            view.nacked_version = version.to_owned();
            view.rejected = errors.iter().map(Rejected::from).collect();
        }
    }
}

/// Reconnect delays: exponential with full jitter (each delay drawn uniformly from zero to the
/// current ceiling, which doubles per failed attempt up to the maximum), so that proxies cut off
/// together do not come back together.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            ceiling: initial,
        }
    }

    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = u64::try_from(self.ceiling.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(rand::random_range(0..=ceiling));
        self.ceiling = (self.ceiling * 2).min(self.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.ceiling = self.initial;
    }
}

/// The answer given to a version, kept so that the same version is answered the same way
/// without being converted and applied again.
#[derive(Debug, Default)]
struct LastAnswer {
    version: Option<String>,
    errors: Vec<v1::ResourceError>,
}

/// How one stream ended.
#[derive(Debug)]
struct StreamEnd {
    /// Whether a snapshot arrived on it (then the backoff starts over).
    received: bool,
    error: DiscoveryError,
}

/// The Discovery client of one proxy.
#[derive(Debug)]
pub struct Discovery {
    settings: ControlPlane,
    identity: v1::ProxyIdentity,
    status: Arc<DiscoveryStatus>,
    credentials: CredentialsWatch,
}

impl Discovery {
    /// A client for the control plane of `settings`, saying it is `identity`, counting in
    /// `metrics`. Nothing is dialled before [`Discovery::run`].
    pub fn new(settings: ControlPlane, identity: &Identity, metrics: &Metrics) -> Discovery {
        let instance_id = format!("{:032x}", rand::random::<u128>());
        let identity = v1::ProxyIdentity {
            pod_name: identity.pod_name.clone(),
            namespace: identity.namespace.clone(),
            pod_ips: identity.pod_ips.iter().map(ToString::to_string).collect(),
            service: identity.service.clone(),
            version: identity.version.clone(),
            service_account: settings.service_account.clone(),
            node_name: settings.node_name.clone(),
            proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
            instance_id: instance_id.clone(),
            labels: if identity.version.is_empty() {
                Default::default()
            } else {
                [("version".to_owned(), identity.version.clone())].into()
            },
        };
        let status = Arc::new(DiscoveryStatus::new(
            crate::control_channel::stream_url(&settings).to_owned(),
            instance_id,
            metrics.discovery.clone(),
        ));
        Discovery {
            settings,
            identity,
            status,
            credentials: crate::identity::none(),
        }
    }

    /// The workload certificate to present on the control plane's mTLS port
    /// ([`ControlPlane::tls_url`]).
    pub fn with_credentials(mut self, credentials: CredentialsWatch) -> Discovery {
        self.credentials = credentials;
        self
    }

    /// A channel to the control plane (see [`crate::control_channel`]).
    async fn channel(&self) -> Result<(tonic::transport::Channel, &str), DiscoveryError> {
        let url = crate::control_channel::stream_url(&self.settings);
        let channel = crate::control_channel::stream_channel(&self.settings, &self.credentials)
            .await
            .map_err(|e| DiscoveryError::Connect {
                url: e.url,
                reason: e.reason,
            })?;
        Ok((channel, url))
    }

    /// Who this proxy says it is (the telemetry reporter says the same).
    pub fn identity(&self) -> &v1::ProxyIdentity {
        &self.identity
    }

    /// The client's state, for the admin server.
    pub fn status(&self) -> &Arc<DiscoveryStatus> {
        &self.status
    }

    /// Subscribes, applies and answers snapshots, and resubscribes after every failure, for
    /// ever (the caller drops the future to stop).
    pub async fn run(&self, writer: &ConfigWriter) -> Infallible {
        let tables = writer.subscribe();
        let mut last = LastAnswer::default();
        let mut backoff = Backoff::new(self.settings.backoff_initial, self.settings.backoff_max);
        loop {
            self.status.set_state(ConnectionState::Connecting, None);
            let end = self.stream(writer, &tables, &mut last).await;
            if end.received {
                backoff.reset();
            }
            let delay = backoff.next();
            let meanwhile = if tables.borrow().is_ready() {
                "serving the last config meanwhile"
            } else {
                "not ready until a first snapshot arrives"
            };
            tracing::warn!(control_plane = %crate::control_channel::stream_url(&self.settings), error = %end.error, retry_in = ?delay, "discovery disconnected; {meanwhile}");
            self.status.failed(&end.error, delay);
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream: connect, hello, then answer snapshots until it ends.
    async fn stream(
        &self,
        writer: &ConfigWriter,
        tables: &watch::Receiver<Arc<Tables>>,
        last: &mut LastAnswer,
    ) -> StreamEnd {
        let mut received = false;
        let error = match self
            .subscribe_and_serve(writer, tables, last, &mut received)
            .await
        {
            Ok(never) => match never {},
            Err(error) => error,
        };
        StreamEnd { received, error }
    }

    async fn subscribe_and_serve(
        &self,
        writer: &ConfigWriter,
        tables: &watch::Receiver<Arc<Tables>>,
        last: &mut LastAnswer,
        received: &mut bool,
    ) -> Result<Infallible, DiscoveryError> {
        let (channel, url) = self.channel().await?;
        let mut client = DiscoveryClient::new(channel);
        // Answers queue here; the stream carries at most one answer per snapshot received.
        let (tx, rx) = mpsc::channel(16);
        let applied_version = tables
            .borrow()
            .snapshot
            .as_ref()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        let hello = v1::SubscribeRequest {
            kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello {
                proxy: Some(self.identity.clone()),
                capabilities: vec![CAPABILITY_SNAPSHOT_FULL.to_owned()],
                applied_version: applied_version.clone(),
            })),
        };
        // The channel is empty and we hold the receiver: this cannot fail or wait.
        let _ = tx.try_send(hello);
        let mut inbound = client
            .subscribe(ReceiverStream::new(rx))
            .await?
            .into_inner();
        self.status.set_state(ConnectionState::Connected, None);
        tracing::info!(control_plane = %url, %applied_version, "subscribed to the control plane");
        loop {
            let Some(response) = inbound.message().await? else {
                return Err(DiscoveryError::Ended);
            };
            *received = true;
            let answer = self.answer(writer, tables, last, response);
            if tx.send(answer).await.is_err() {
                return Err(DiscoveryError::Ended);
            }
        }
    }

    /// Applies one pushed snapshot (unless this version was answered already) and makes the
    /// answer.
    fn answer(
        &self,
        writer: &ConfigWriter,
        tables: &watch::Receiver<Arc<Tables>>,
        last: &mut LastAnswer,
        response: v1::SubscribeResponse,
    ) -> v1::SubscribeRequest {
        let v1::SubscribeResponse {
            version,
            nonce,
            payload,
        } = response;
        if last.version.as_deref() == Some(version.as_str()) {
            tracing::debug!(%version, %nonce, "snapshot version already answered: same answer, not applied again");
        } else {
            let (applied, errors) = match payload {
                Some(v1::subscribe_response::Payload::Snapshot(wire)) => {
                    let previous = tables.borrow().snapshot.clone();
                    let (snapshot, errors) = merge(version.clone(), wire, previous.as_deref());
                    writer.apply(snapshot);
                    (true, errors)
                }
                None => (
                    false,
                    vec![v1::ResourceError {
                        kind: v1::ResourceKind::Unspecified as i32,
                        reason: "no payload this proxy understands (it takes full snapshots)"
                            .into(),
                        ..Default::default()
                    }],
                ),
            };
            let metrics = &self.status.metrics;
            if errors.is_empty() {
                metrics.snapshots_applied.inc();
            } else {
                metrics.snapshots_rejected.inc();
                metrics.resources_rejected.inc_by(errors.len() as u64);
                for e in &errors {
                    let r = Rejected::from(e);
                    tracing::warn!(%version, kind = r.kind, resource = %format_args!("{}/{}", r.namespace, r.name), field = %r.field, reason = %r.reason, "rejected a resource of the snapshot; keeping its last good copy");
                }
            }
            self.status.answered(&version, applied, &errors);
            last.version = Some(version.clone());
            last.errors = errors;
        }
        let kind = if last.errors.is_empty() {
            v1::subscribe_request::Kind::Ack(v1::SnapshotAck { version, nonce })
        } else {
            v1::subscribe_request::Kind::Nack(v1::SnapshotNack {
                version,
                nonce,
                errors: last.errors.clone(),
            })
        };
        v1::SubscribeRequest { kind: Some(kind) }
    }
}

fn rejection(
    kind: v1::ResourceKind,
    namespace: &str,
    name: &str,
    field: &str,
    reason: &str,
) -> v1::ResourceError {
    v1::ResourceError {
        kind: kind as i32,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

fn rejected(
    kind: v1::ResourceKind,
    namespace: &str,
    name: &str,
    e: &InvalidSnapshot,
) -> v1::ResourceError {
    rejection(kind, namespace, name, &e.field, &e.reason)
}

/// Converts the `items` of one resource kind, unique by (namespace, name): a second one with the
/// same key is refused (naming `name_field`); one that does not convert is named in `errors` and
/// replaced by its copy in `previous` (when it had one).
#[allow(
    clippy::too_many_arguments,
    reason = "one call per resource kind, each spelled out"
)]
fn convert_each<W, T: Clone>(
    kind: v1::ResourceKind,
    name_field: &str,
    items: Vec<W>,
    key: impl Fn(&W) -> (String, String),
    convert: impl Fn(W) -> Result<T, InvalidSnapshot>,
    previous: &[T],
    previous_key: impl Fn(&T) -> (&str, &str),
    errors: &mut Vec<v1::ResourceError>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let (namespace, name) = key(&item);
        if !seen.insert((namespace.clone(), name.clone())) {
            errors.push(rejection(
                kind,
                &namespace,
                &name,
                name_field,
                "listed twice in the snapshot",
            ));
            continue;
        }
        match convert(item) {
            Ok(converted) => out.push(converted),
            Err(e) => {
                errors.push(rejected(kind, &namespace, &name, &e));
                let old = previous
                    .iter()
                    .find(|o| previous_key(o) == (namespace.as_str(), name.as_str()));
                out.extend(old.cloned());
            }
        }
    }
    out
}

/// Converts `wire` resource by resource: what converts is taken, what does not is named in the
/// returned errors and replaced by its copy in `previous` (when it had one).
pub fn merge(
    version: String,
    wire: v1::Snapshot,
    previous: Option<&Snapshot>,
) -> (Snapshot, Vec<v1::ResourceError>) {
    let mut errors = Vec::new();

    let services = convert_each(
        v1::ResourceKind::Service,
        "name",
        wire.services,
        |s| (s.namespace.clone(), s.name.clone()),
        Service::try_from,
        previous.map_or(&[], |p| &p.services),
        |o| (&o.namespace, &o.name),
        &mut errors,
    );
    let endpoints = convert_each(
        v1::ResourceKind::Endpoints,
        "service",
        wire.endpoints,
        |e| (e.namespace.clone(), e.service.clone()),
        ServiceEndpoints::try_from,
        previous.map_or(&[], |p| &p.endpoints),
        |o| (&o.namespace, &o.service),
        &mut errors,
    );

    // Policies: converted, validated and compiled here, once; a bad one keeps its last good
    // copy, a second one for the same service is refused.
    let mut policies: Vec<Policy> = Vec::with_capacity(wire.policies.len());
    for p in wire.policies {
        let (namespace, name) = p
            .metadata
            .as_ref()
            .map(|m| (m.namespace.clone(), m.name.clone()))
            .unwrap_or_default();
        let converted =
            Policy::try_from(p).and_then(|policy| match duplicate_policy(&policy, &policies) {
                Some(e) => Err(e),
                None => Ok(policy),
            });
        match converted {
            Ok(policy) => policies.push(policy),
            Err(e) => {
                errors.push(rejected(
                    v1::ResourceKind::TrafficPolicy,
                    &namespace,
                    &name,
                    &e,
                ));
                let old = previous.and_then(|p| {
                    p.policies
                        .iter()
                        .find(|o| o.namespace() == namespace && o.name() == name)
                });
                if let Some(old) = old
                    && duplicate_policy(old, &policies).is_none()
                {
                    policies.push(old.clone());
                }
            }
        }
    }

    let snapshot = Snapshot {
        version,
        services,
        endpoints,
        policies,
        mtls: wire.mtls.map(MeshTls::from).unwrap_or_default(),
    };
    (snapshot, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, vip: &str) -> v1::Service {
        v1::Service {
            name: name.into(),
            namespace: "default".into(),
            vips: vec![vip.into()],
            ports: vec![v1::ServicePort {
                port: 9080,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn endpoints(name: &str, address: &str) -> v1::ServiceEndpoints {
        v1::ServiceEndpoints {
            service: name.into(),
            namespace: "default".into(),
            endpoints: vec![v1::Endpoint {
                addresses: vec![address.into()],
                ready: true,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_bad_resource_is_rejected_alone_and_its_last_good_copy_kept() {
        let good = v1::Snapshot {
            services: vec![
                service("reviews", "10.96.0.10"),
                service("ratings", "10.96.0.11"),
            ],
            endpoints: vec![endpoints("reviews", "10.244.0.5")],
            policies: vec![],
            ..Default::default()
        };
        let (first, errors) = merge("1".into(), good, None);
        assert!(errors.is_empty());

        let bad = v1::Snapshot {
            services: vec![
                service("reviews", "not-an-ip"),
                service("ratings", "10.96.0.12"),
                service("details", "10.96.0.13"),
                service("details", "10.96.0.14"),
            ],
            endpoints: vec![endpoints("reviews", "10.244.0.6"), endpoints("ratings", "")],
            policies: vec![],
            ..Default::default()
        };
        let (second, errors) = merge("2".into(), bad, Some(&first));
        let named: Vec<_> = errors
            .iter()
            .map(|e| (Rejected::from(e).kind, e.name.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("service", "reviews", "vips[0]"),
                ("service", "details", "name"),
                ("endpoints", "ratings", "endpoints[0].addresses[0]"),
            ]
        );
        assert_eq!(errors[0].reason, "\"not-an-ip\" is not an IP address");
        let vip = |name: &str| {
            second
                .services
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.vips[0].to_string())
        };
        // The bad one keeps its last good copy, the good ones change, the duplicate is dropped.
        assert_eq!(vip("reviews").as_deref(), Some("10.96.0.10"));
        assert_eq!(vip("ratings").as_deref(), Some("10.96.0.12"));
        assert_eq!(vip("details").as_deref(), Some("10.96.0.13"));
        assert_eq!(second.services.len(), 3);
        // Endpoints of reviews updated; ratings never had a good copy: it goes without.
        assert_eq!(
            second.endpoints_of("default", "reviews")[0].addresses[0].to_string(),
            "10.244.0.6"
        );
        assert!(second.endpoints_of("default", "ratings").is_empty());
    }

    #[test]
    fn a_bad_policy_is_rejected_naming_its_field_and_its_last_good_copy_kept() {
        use crate::snapshot::proto::tests::wire_policy;
        let good = v1::Snapshot {
            policies: vec![wire_policy("reviews", "reviews")],
            ..Default::default()
        };
        let (first, errors) = merge("1".into(), good, None);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(first.policies.len(), 1);

        let mut bad = wire_policy("reviews", "reviews");
        let route = &mut bad.spec.as_mut().unwrap().default.as_mut().unwrap().route;
        route[0].weight = 0;
        route[1].weight = 0;
        let mut other = wire_policy("ratings", "ratings");
        other.metadata.as_mut().unwrap().generation = 9;
        let next = v1::Snapshot {
            policies: vec![bad, other, wire_policy("ratings-2", "ratings")],
            ..Default::default()
        };
        let (second, errors) = merge("2".into(), next, Some(&first));
        let named: Vec<_> = errors
            .iter()
            .map(|e| (Rejected::from(e).kind, e.name.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                ("policy", "reviews", "spec.default.route"),
                ("policy", "ratings-2", "spec.service"),
            ]
        );
        // The bad policy keeps serving its last good copy (80/20), the good one is taken.
        let reviews = second.policy_of("default", "reviews").unwrap();
        assert_eq!(reviews.compiled.default_split().weight(0), 80);
        assert_eq!(
            second
                .policy_of("default", "ratings")
                .unwrap()
                .compiled
                .generation(),
            Some(9)
        );
        assert_eq!(second.policies.len(), 2);
    }

    #[test]
    fn backoff_doubles_to_its_bound_with_full_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            let before = b.ceiling;
            assert!(b.next() <= before);
            ceilings.push(before.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.ceiling, Duration::from_millis(100));
    }

    #[test]
    fn control_plane_flags_make_discovery_settings() {
        use clap::Parser;
        let cli = crate::app::Cli::try_parse_from([
            "serin-proxy",
            "--control-plane",
            "http://10.244.0.1:15010",
            "--pod-name",
            "reviews-v2-0",
            "--pod-ip",
            "10.244.0.7",
            "--service-account",
            "reviews",
        ])
        .unwrap();
        let config = cli.into_config();
        let crate::config::ConfigSource::ControlPlane(cp) = &config.source else {
            panic!("{:?}", config.source);
        };
        assert_eq!(cp.url, "http://10.244.0.1:15010");
        assert_eq!(cp.service_account, "reviews");
        assert_eq!(cp.backoff_max, Duration::from_secs(15));
        assert!(validate(cp, &config.identity).is_ok());
    }

    #[test]
    fn control_plane_settings_are_checked_at_start() {
        let id = Identity {
            pod_name: "p".into(),
            namespace: "default".into(),
            pod_ips: vec!["10.244.0.2".parse().unwrap()],
            ..Default::default()
        };
        assert!(validate(&ControlPlane::new("http://10.244.0.1:15010"), &id).is_ok());
        let err = validate(&ControlPlane::new("10.244.0.1:15010"), &id).unwrap_err();
        assert!(err.contains("must start with http://"), "{err}");
        // The mTLS port: an https:// URL, and a certificate to present there.
        let mut tls = ControlPlane::new("http://10.244.0.1:15010");
        tls.tls_url = Some("http://10.244.0.1:15012".into());
        let err = validate(&tls, &id).unwrap_err();
        assert!(err.contains("must start with https://"), "{err}");
        tls.tls_url = Some("https://10.244.0.1:15012".into());
        let err = validate(&tls, &id).unwrap_err();
        assert!(err.contains("--identity-token"), "{err}");
        tls.identity = Some(Box::new(crate::identity::IdentitySettings {
            token: crate::identity::TokenSource::Value("t".into()),
            trust_domain: "cluster.local".into(),
            service_account: String::new(),
            cert_ttl: None,
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(1),
        }));
        assert_eq!(validate(&tls, &id), Ok(()));
        assert_eq!(plain_form("https://cp:15012"), "http://cp:15012");
        let no_ip = Identity {
            pod_ips: vec![],
            ..id
        };
        let err = validate(&ControlPlane::new("http://cp:15010"), &no_ip).unwrap_err();
        assert!(err.contains("--pod-ip"), "{err}");
    }
}
