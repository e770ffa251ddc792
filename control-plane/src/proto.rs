//! Conversions between the serin.v1 wire types and the domain types: generated types stop here.
//! Every `TryFrom` error names the field (in the YAML spelling of DESIGN.md) and the reason.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serin_policy::TrafficPolicy;
use serin_proto::v1;

use crate::discovery::proxies::{ProxyIdentity, ProxyState, Rejection, ResourceKind};
use crate::model::{
    ChangeCause, MtlsMode, MtlsModes, PolicyDraft, Protocol, Revision, ServiceRecord, StoredPolicy,
    Workload, WorkloadPort, namespace_or_default,
};
use crate::telemetry::{Direction, EdgeDelta, EdgeKey, EdgeReport, Histogram, HitKey, HitReport};
use crate::topology::{Graph, protocol_from_name};

/// A wire message field that cannot be turned into a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Path of the field, e.g. `spec.rules[0].match[1].uri.ignoreCase`.
    pub field: String,
    /// Why it is refused, one lowercase line.
    pub reason: String,
}

impl InvalidField {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The wire timestamp of a time.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The wire duration of a span (saturating; spans here are small).
pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// A non-negative wire duration as a span.
pub fn to_duration(field: &str, d: prost_types::Duration) -> Result<Duration, InvalidField> {
    Duration::try_from(d).map_err(|_| InvalidField::new(field, "must be a non-negative duration"))
}

// ------------------------------------------------------------------------------------------------
// Policies: the TrafficPolicy conversion itself is serin-policy's (feature `proto`), shared with
// the sidecar; here only what the control plane adds (annotations, times, the default namespace).

pub use serin_policy::proto::{os_value, weights_from_proto, weights_to_proto};

impl From<serin_policy::proto::InvalidField> for InvalidField {
    fn from(e: serin_policy::proto::InvalidField) -> Self {
        InvalidField {
            field: e.field,
            reason: e.reason,
        }
    }
}

impl TryFrom<v1::TrafficPolicy> for PolicyDraft {
    type Error = InvalidField;

    /// Converts what a user sent. Problems the policy crate's validation reports (empty names,
    /// bad regexes, unset matchers, unknown OS names) pass through unchanged so that validation
    /// names them; only what the domain model cannot hold is refused here. The generation a
    /// client sends is ignored; an empty namespace is `default`.
    fn try_from(mut p: v1::TrafficPolicy) -> Result<Self, InvalidField> {
        let annotations = p
            .metadata
            .as_mut()
            .map(|m| std::mem::take(&mut m.annotations))
            .unwrap_or_default();
        let mut policy = TrafficPolicy::try_from(p)?;
        policy.metadata.namespace = namespace_or_default(&policy.metadata.namespace);
        policy.metadata.generation = None;
        Ok(PolicyDraft {
            policy,
            annotations: annotations.into_iter().collect(),
        })
    }
}

impl From<&StoredPolicy> for v1::TrafficPolicy {
    fn from(s: &StoredPolicy) -> Self {
        let mut out = policy_to_proto(&s.policy, &s.annotations);
        if let Some(meta) = out.metadata.as_mut() {
            meta.generation = s.generation();
            meta.create_time = Some(timestamp(s.create_time));
            meta.update_time = Some(timestamp(s.update_time));
        }
        out
    }
}

impl From<&PolicyDraft> for v1::TrafficPolicy {
    /// A policy as a client sends it (no generation, no times).
    fn from(d: &PolicyDraft) -> Self {
        let mut out = policy_to_proto(&d.policy, &d.annotations);
        if let Some(meta) = out.metadata.as_mut() {
            meta.generation = 0;
        }
        out
    }
}

fn policy_to_proto(p: &TrafficPolicy, annotations: &BTreeMap<String, String>) -> v1::TrafficPolicy {
    let mut out = v1::TrafficPolicy::from(p);
    if let Some(meta) = out.metadata.as_mut() {
        meta.annotations = annotations.clone().into_iter().collect();
    }
    out
}

impl From<ChangeCause> for v1::ChangeCause {
    fn from(c: ChangeCause) -> Self {
        match c {
            ChangeCause::Apply => v1::ChangeCause::Apply,
            ChangeCause::SetWeights => v1::ChangeCause::SetWeights,
            ChangeCause::Promote => v1::ChangeCause::Promote,
            ChangeCause::Rollback => v1::ChangeCause::Rollback,
            ChangeCause::Delete => v1::ChangeCause::Delete,
        }
    }
}

impl From<&Revision> for v1::PolicyRevision {
    fn from(r: &Revision) -> Self {
        v1::PolicyRevision {
            generation: r.generation,
            policy: Some(v1::TrafficPolicy::from(&r.policy)),
            cause: v1::ChangeCause::from(r.cause) as i32,
            time: Some(timestamp(r.time)),
            restored_generation: r.restored_generation,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Registry

impl From<Protocol> for v1::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Unspecified => v1::Protocol::Unspecified,
            Protocol::Http1 => v1::Protocol::Http1,
            Protocol::Http2 => v1::Protocol::Http2,
            Protocol::Grpc => v1::Protocol::Grpc,
            Protocol::Tcp => v1::Protocol::Tcp,
        }
    }
}

fn protocol_from_proto(field: &str, value: i32) -> Result<Protocol, InvalidField> {
    Ok(match v1::Protocol::try_from(value) {
        Ok(v1::Protocol::Unspecified) => Protocol::Unspecified,
        Ok(v1::Protocol::Http1) => Protocol::Http1,
        Ok(v1::Protocol::Http2) => Protocol::Http2,
        Ok(v1::Protocol::Grpc) => Protocol::Grpc,
        Ok(v1::Protocol::Tcp) => Protocol::Tcp,
        Err(_) => {
            return Err(InvalidField::new(
                field,
                format!("unknown protocol {value}"),
            ));
        }
    })
}

/// A DNS-1123 label (pod and service names): lowercase letters, digits and '-'.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// A label value (versions): letters, digits, '-', '_', '.'.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

fn port(field: &str, value: u32) -> Result<u16, InvalidField> {
    u16::try_from(value)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| InvalidField::new(field, format!("port {value} is outside 1..=65535")))
}

impl TryFrom<v1::Workload> for Workload {
    type Error = InvalidField;

    fn try_from(w: v1::Workload) -> Result<Self, InvalidField> {
        let namespace = namespace_or_default(&w.namespace);
        for (field, value) in [
            ("workload.pod_name", &w.pod_name),
            ("workload.namespace", &namespace),
            ("workload.service", &w.service),
        ] {
            if value.is_empty() {
                return Err(InvalidField::new(field, "is required"));
            }
            if !is_dns_label(value) {
                return Err(InvalidField::new(
                    field,
                    format!(
                        "{value:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
                    ),
                ));
            }
        }
        if !is_label_value(&w.version) {
            return Err(InvalidField::new(
                "workload.version",
                format!(
                    "{:?} is not a label value (letters, digits, '-', '_', '.')",
                    w.version
                ),
            ));
        }
        if w.addresses.is_empty() {
            return Err(InvalidField::new(
                "workload.addresses",
                "at least one address is required",
            ));
        }
        let mut addresses: Vec<IpAddr> = Vec::new();
        for (i, a) in w.addresses.iter().enumerate() {
            let ip: IpAddr = a.parse().map_err(|_| {
                InvalidField::new(
                    format!("workload.addresses[{i}]"),
                    format!("{a:?} is not an IP literal"),
                )
            })?;
            if addresses.iter().any(|x| x.is_ipv4() == ip.is_ipv4()) {
                return Err(InvalidField::new(
                    format!("workload.addresses[{i}]"),
                    "at most one address per family",
                ));
            }
            addresses.push(ip);
        }
        let mut ports: Vec<WorkloadPort> = Vec::new();
        for (i, p) in w.ports.iter().enumerate() {
            let field = format!("workload.ports[{i}]");
            let number = port(&format!("{field}.port"), p.port)?;
            if ports.iter().any(|q| q.name == p.name) {
                return Err(InvalidField::new(
                    format!("{field}.name"),
                    format!("port name {:?} is used twice", p.name),
                ));
            }
            if ports.iter().any(|q| q.port == number) {
                return Err(InvalidField::new(
                    format!("{field}.port"),
                    format!("port {number} is listed twice"),
                ));
            }
            ports.push(WorkloadPort {
                name: p.name.clone(),
                port: number,
                protocol: protocol_from_proto(&format!("{field}.protocol"), p.protocol)?,
            });
        }
        let mut labels: BTreeMap<String, String> = w.labels.into_iter().collect();
        if !w.version.is_empty() {
            labels.insert("version".to_owned(), w.version.clone());
        }
        Ok(Workload {
            pod_name: w.pod_name,
            namespace,
            addresses,
            service: w.service,
            version: w.version,
            ports,
            labels,
            service_account: w.service_account,
            node_name: w.node_name,
            // A registration is live until its lease runs out; then it is removed.
            ready: true,
            // Set by the certificate authority when the workload's sidecar gets a certificate.
            identity: String::new(),
        })
    }
}

impl From<&ServiceRecord> for v1::Service {
    fn from(s: &ServiceRecord) -> Self {
        v1::Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            vips: s.vips.iter().map(ToString::to_string).collect(),
            hostnames: s.hostnames(),
            ports: s
                .ports
                .iter()
                .map(|p| v1::ServicePort {
                    port: u32::from(p.port),
                    name: p.name.clone(),
                    protocol: v1::Protocol::from(p.protocol) as i32,
                    target_port: u32::from(p.target_port),
                })
                .collect(),
            labels: Default::default(),
        }
    }
}

impl From<&Workload> for v1::Endpoint {
    fn from(w: &Workload) -> Self {
        v1::Endpoint {
            addresses: w.addresses.iter().map(ToString::to_string).collect(),
            ports: w
                .ports
                .iter()
                .map(|p| v1::EndpointPort {
                    name: p.name.clone(),
                    port: u32::from(p.port),
                })
                .collect(),
            pod_name: w.pod_name.clone(),
            version: w.version.clone(),
            labels: w.labels.clone().into_iter().collect(),
            ready: w.ready,
            weight: 1,
            service_account: w.service_account.clone(),
            node_name: w.node_name.clone(),
            identity: w.identity.clone(),
        }
    }
}

impl From<MtlsMode> for v1::MtlsMode {
    fn from(m: MtlsMode) -> Self {
        match m {
            MtlsMode::Permissive => v1::MtlsMode::Permissive,
            MtlsMode::Strict => v1::MtlsMode::Strict,
        }
    }
}

/// A wire mode: `None` for UNSPECIFIED; unknown numbers are refused.
pub fn mtls_mode_from_proto(mode: i32) -> Result<Option<MtlsMode>, InvalidField> {
    match v1::MtlsMode::try_from(mode) {
        Ok(v1::MtlsMode::Unspecified) => Ok(None),
        Ok(v1::MtlsMode::Permissive) => Ok(Some(MtlsMode::Permissive)),
        Ok(v1::MtlsMode::Strict) => Ok(Some(MtlsMode::Strict)),
        Err(_) => Err(InvalidField::new(
            "mode",
            format!("unknown mtls mode {mode}"),
        )),
    }
}

impl From<&MtlsModes> for v1::MeshTls {
    fn from(m: &MtlsModes) -> Self {
        v1::MeshTls {
            default_mode: m
                .default
                .map_or(v1::MtlsMode::Unspecified, v1::MtlsMode::from)
                as i32,
            namespaces: m
                .namespaces
                .iter()
                .map(|(ns, mode)| (ns.clone(), v1::MtlsMode::from(*mode) as i32))
                .collect(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Proxies

impl TryFrom<v1::ProxyIdentity> for ProxyIdentity {
    type Error = InvalidField;

    fn try_from(p: v1::ProxyIdentity) -> Result<Self, InvalidField> {
        for (field, value) in [
            ("proxy.pod_name", &p.pod_name),
            ("proxy.namespace", &p.namespace),
        ] {
            if value.is_empty() {
                return Err(InvalidField::new(field, "is required"));
            }
        }
        if p.pod_ips.is_empty() {
            return Err(InvalidField::new(
                "proxy.pod_ips",
                "at least one pod IP is required",
            ));
        }
        let pod_ips = p
            .pod_ips
            .iter()
            .enumerate()
            .map(|(i, a)| {
                a.parse::<IpAddr>().map_err(|_| {
                    InvalidField::new(
                        format!("proxy.pod_ips[{i}]"),
                        format!("{a:?} is not an IP literal"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ProxyIdentity {
            pod_name: p.pod_name,
            namespace: p.namespace,
            pod_ips,
            service: p.service,
            version: p.version,
            service_account: p.service_account,
            node_name: p.node_name,
            proxy_version: p.proxy_version,
            instance_id: p.instance_id,
            labels: p.labels.into_iter().collect(),
        })
    }
}

impl From<&ProxyIdentity> for v1::ProxyIdentity {
    fn from(p: &ProxyIdentity) -> Self {
        v1::ProxyIdentity {
            pod_name: p.pod_name.clone(),
            namespace: p.namespace.clone(),
            pod_ips: p.pod_ips.iter().map(ToString::to_string).collect(),
            service: p.service.clone(),
            version: p.version.clone(),
            service_account: p.service_account.clone(),
            node_name: p.node_name.clone(),
            proxy_version: p.proxy_version.clone(),
            instance_id: p.instance_id.clone(),
            labels: p.labels.clone().into_iter().collect(),
        }
    }
}

impl From<v1::ResourceError> for Rejection {
    fn from(e: v1::ResourceError) -> Self {
        let kind = match v1::ResourceKind::try_from(e.kind) {
            Ok(v1::ResourceKind::Service) => ResourceKind::Service,
            Ok(v1::ResourceKind::Endpoints) => ResourceKind::Endpoints,
            Ok(v1::ResourceKind::TrafficPolicy) => ResourceKind::TrafficPolicy,
            Ok(v1::ResourceKind::Unspecified) | Err(_) => ResourceKind::Unspecified,
        };
        Rejection {
            kind,
            namespace: e.namespace,
            name: e.name,
            field: e.field,
            reason: e.reason,
        }
    }
}

impl From<&Rejection> for v1::ResourceError {
    fn from(e: &Rejection) -> Self {
        let kind = match e.kind {
            ResourceKind::Unspecified => v1::ResourceKind::Unspecified,
            ResourceKind::Service => v1::ResourceKind::Service,
            ResourceKind::Endpoints => v1::ResourceKind::Endpoints,
            ResourceKind::TrafficPolicy => v1::ResourceKind::TrafficPolicy,
        };
        v1::ResourceError {
            kind: kind as i32,
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            field: e.field.clone(),
            reason: e.reason.clone(),
        }
    }
}

impl From<&ProxyState> for v1::ProxyStatus {
    fn from(s: &ProxyState) -> Self {
        v1::ProxyStatus {
            proxy: Some(v1::ProxyIdentity::from(&s.identity)),
            connected_since: Some(timestamp(s.connected_since)),
            capabilities: s.capabilities.clone(),
            sent_version: s.sent_version.clone(),
            acked_version: s.acked_version.clone(),
            acked_at: s.acked_at.map(timestamp),
            nacked_version: s
                .nack
                .as_ref()
                .map(|n| n.version.clone())
                .unwrap_or_default(),
            nack_errors: s
                .nack
                .iter()
                .flat_map(|n| n.errors.iter().map(v1::ResourceError::from))
                .collect(),
            nacked_at: s.nack.as_ref().map(|n| timestamp(n.at)),
            in_sync: s.in_sync(),
            peer_address: s.peer.map(|p| p.to_string()).unwrap_or_default(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Telemetry

impl TryFrom<v1::EdgeStats> for EdgeReport {
    type Error = InvalidField;

    fn try_from(e: v1::EdgeStats) -> Result<Self, InvalidField> {
        let direction = match v1::TrafficDirection::try_from(e.direction) {
            Ok(v1::TrafficDirection::Inbound) => Direction::Inbound,
            Ok(v1::TrafficDirection::Outbound) => Direction::Outbound,
            _ => {
                return Err(InvalidField::new(
                    "edges[].direction",
                    "must be INBOUND or OUTBOUND",
                ));
            }
        };
        let protocol = protocol_from_proto("edges[].protocol", e.protocol)?;
        if let Some(h) = &e.duration {
            if h.bucket_counts.len() != h.bucket_bounds_seconds.len() + 1 {
                return Err(InvalidField::new(
                    "edges[].duration.bucket_counts",
                    "must have one more entry than bucket_bounds_seconds",
                ));
            }
            if h.bucket_bounds_seconds.len() > crate::telemetry::window::MAX_BUCKETS {
                return Err(InvalidField::new(
                    "edges[].duration.bucket_bounds_seconds",
                    "must have at most 64 bounds",
                ));
            }
            let b = &h.bucket_bounds_seconds;
            if b.iter().any(|x| !x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
                return Err(InvalidField::new(
                    "edges[].duration.bucket_bounds_seconds",
                    "must be finite and strictly ascending",
                ));
            }
        }
        if e.source_principal.len() > MAX_PRINCIPAL {
            return Err(InvalidField::new(
                "edges[].source_principal",
                "must be at most 2048 bytes (a SPIFFE ID)",
            ));
        }
        if !e.mtls && !e.source_principal.is_empty() {
            return Err(InvalidField::new(
                "edges[].source_principal",
                "must be empty when mtls is false (a principal is only known from a verified client certificate)",
            ));
        }
        let key = EdgeKey {
            direction,
            source_workload: e.source_workload,
            source_namespace: e.source_namespace,
            source_version: e.source_version,
            destination_service: e.destination_service,
            destination_namespace: e.destination_namespace,
            destination_version: e.destination_version,
            protocol,
            mirror: e.mirror,
        };
        let mut responses = BTreeMap::new();
        for r in e.responses {
            *responses
                .entry((r.response_code, r.grpc_status))
                .or_default() += r.count;
        }
        let delta = EdgeDelta {
            responses,
            histogram: e.duration.as_ref().map(|h| Histogram {
                bounds: h.bucket_bounds_seconds.clone(),
                counts: h.bucket_counts.clone(),
            }),
            duration_sum_seconds: e.duration.as_ref().map_or(0.0, |h| h.sum_seconds),
            duration_count: e.duration.as_ref().map_or(0, |h| h.count),
            tcp_opened: e.tcp_connections_opened,
            tcp_closed: e.tcp_connections_closed,
            sent_bytes: e.sent_bytes,
            received_bytes: e.received_bytes,
            version_fallbacks: e.version_fallbacks,
            mirror_outcomes: e.mirror_outcomes.into_iter().collect(),
            mtls: e.mtls,
            source_principal: e.source_principal,
        };
        Ok(EdgeReport { key, delta })
    }
}

/// Longest `source_principal` an edge may carry (the SPIFFE ID limit).
const MAX_PRINCIPAL: usize = 2048;

/// Longest name a rule-hit entry may carry (policy, rule, version: DNS-label sized names).
const MAX_HIT_NAME: usize = 253;

impl TryFrom<v1::RuleHits> for HitReport {
    type Error = InvalidField;

    fn try_from(h: v1::RuleHits) -> Result<Self, InvalidField> {
        for (field, value, may_be_empty) in [
            ("rule_hits[].policy_namespace", &h.policy_namespace, false),
            ("rule_hits[].policy_name", &h.policy_name, false),
            ("rule_hits[].rule", &h.rule, true),
            ("rule_hits[].version", &h.version, false),
        ] {
            if value.is_empty() && !may_be_empty {
                return Err(InvalidField::new(field, "must not be empty"));
            }
            if value.len() > MAX_HIT_NAME {
                return Err(InvalidField::new(
                    field,
                    format!("must be at most {MAX_HIT_NAME} bytes"),
                ));
            }
        }
        if h.count == 0 {
            return Err(InvalidField::new(
                "rule_hits[].count",
                "must not be 0 (only non-zero deltas are sent)",
            ));
        }
        Ok(HitReport {
            key: HitKey {
                namespace: h.policy_namespace,
                policy: h.policy_name,
                generation: h.generation,
                rule: h.rule,
                version: h.version,
            },
            count: h.count,
        })
    }
}

// ------------------------------------------------------------------------------------------------
// Topology

impl From<&Graph> for v1::TopologyUpdate {
    fn from(g: &Graph) -> Self {
        let time = UNIX_EPOCH + Duration::from_millis(g.time_ms);
        v1::TopologyUpdate {
            time: Some(timestamp(time)),
            window: Some(duration(Duration::from_secs(g.window_seconds))),
            nodes: g
                .nodes
                .iter()
                .map(|n| v1::TopologyNode {
                    id: n.id.clone(),
                    namespace: n.namespace.clone(),
                    service: n.service.clone(),
                    version: n.version.clone(),
                    ready_endpoints: n.ready_endpoints,
                    proxies: n.proxies,
                    external: n.external,
                })
                .collect(),
            edges: g
                .edges
                .iter()
                .map(|e| v1::TopologyEdge {
                    source_id: e.source.clone(),
                    destination_id: e.destination.clone(),
                    protocol: v1::Protocol::from(protocol_from_name(e.protocol)) as i32,
                    mirror: e.mirror,
                    rps: e.rps,
                    error_rate: e.error_rate,
                    latency_p50_ms: e.p50_ms.unwrap_or(0.0),
                    latency_p95_ms: e.p95_ms.unwrap_or(0.0),
                    latency_p99_ms: e.p99_ms.unwrap_or(0.0),
                    received_bytes_per_second: e.received_bytes_per_second,
                    sent_bytes_per_second: e.sent_bytes_per_second,
                    response_code_counts: e.response_codes.clone().into_iter().collect(),
                    grpc_status_counts: e.grpc_statuses.clone().into_iter().collect(),
                    version_fallbacks: e.version_fallbacks,
                    active_connections: e.active_connections,
                    mtls: e.mtls,
                    mtls_fraction: e.mtls_fraction,
                    source_principals: e.source_principals.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_policy() -> v1::TrafficPolicy {
        v1::TrafficPolicy {
            metadata: Some(v1::PolicyMetadata {
                name: "reviews".into(),
                labels: [("team".to_owned(), "a".to_owned())].into(),
                annotations: [("note".to_owned(), "x".to_owned())].into(),
                ..Default::default()
            }),
            spec: Some(v1::TrafficPolicySpec {
                service: "reviews".into(),
                rules: vec![v1::Rule {
                    name: "testers".into(),
                    r#match: vec![v1::MatchBlock {
                        headers: [(
                            "end-user".to_owned(),
                            v1::StringMatch {
                                kind: Some(v1::string_match::Kind::Exact("jason".into())),
                                ignore_case: true,
                            },
                        )]
                        .into(),
                        uri: Some(v1::UriMatch {
                            kind: Some(v1::uri_match::Kind::Prefix("/beta".into())),
                            ignore_case: false,
                        }),
                        os: vec![v1::ClientOs::Ios as i32, v1::ClientOs::Harmonyos as i32],
                        method: "GET".into(),
                        ..Default::default()
                    }],
                    route: vec![v1::VersionWeight {
                        version: "v3".into(),
                        weight: 100,
                    }],
                }],
                default: Some(v1::DefaultRoute {
                    route: vec![v1::VersionWeight {
                        version: "v1".into(),
                        weight: 90,
                    }],
                }),
                mirror: Some(v1::Mirror {
                    version: "v2".into(),
                    percent: 2.5,
                }),
                stickiness: Some(v1::Stickiness {
                    key: Some(v1::stickiness::Key::Cookie("uid".into())),
                }),
            }),
        }
    }

    #[test]
    fn policy_round_trips_through_the_domain() {
        crate::test_tracing();
        let draft = PolicyDraft::try_from(wire_policy()).unwrap();
        assert_eq!(draft.policy.metadata.namespace, "default");
        assert_eq!(
            draft.policy.spec.rules[0].matches[0].os.as_deref(),
            Some(&["ios".to_owned(), "harmonyos".to_owned()][..])
        );
        serin_policy::validate(&draft.policy, None).unwrap();
        let stored = StoredPolicy {
            policy: draft.policy.clone(),
            annotations: draft.annotations,
            create_time: SystemTime::UNIX_EPOCH,
            update_time: SystemTime::UNIX_EPOCH,
        };
        let back = v1::TrafficPolicy::from(&stored);
        let mut expected = wire_policy();
        let meta = expected.metadata.as_mut().unwrap();
        meta.namespace = "default".into();
        meta.create_time = Some(timestamp(SystemTime::UNIX_EPOCH));
        meta.update_time = Some(timestamp(SystemTime::UNIX_EPOCH));
        assert_eq!(back, expected);
    }

    #[test]
    fn uri_ignore_case_is_refused_naming_the_field() {
        crate::test_tracing();
        let mut p = wire_policy();
        p.spec.as_mut().unwrap().rules[0].r#match[0]
            .uri
            .as_mut()
            .unwrap()
            .ignore_case = true;
        let err = PolicyDraft::try_from(p).unwrap_err();
        assert_eq!(err.field, "spec.rules[0].match[0].uri.ignoreCase");
    }

    #[test]
    fn unknown_os_values_reach_validation() {
        crate::test_tracing();
        let mut p = wire_policy();
        p.spec.as_mut().unwrap().rules[0].r#match[0].os = vec![0];
        let draft = PolicyDraft::try_from(p).unwrap();
        let errors = serin_policy::validate(&draft.policy, None).unwrap_err();
        assert_eq!(errors[0].path, "spec.rules[0].match[0].os[0]", "{errors:?}");
    }

    #[test]
    fn workload_errors_name_the_field() {
        crate::test_tracing();
        let ok = v1::Workload {
            pod_name: "reviews-v1-0".into(),
            addresses: vec!["10.244.0.7".into()],
            service: "reviews".into(),
            version: "v1".into(),
            ports: vec![v1::WorkloadPort {
                name: "http".into(),
                port: 9080,
                protocol: 1,
            }],
            ..Default::default()
        };
        let w = Workload::try_from(ok.clone()).unwrap();
        assert_eq!(w.labels["version"], "v1");
        assert_eq!(w.namespace, "default");
        let cases: Vec<(v1::Workload, &str)> = vec![
            (
                v1::Workload {
                    pod_name: String::new(),
                    ..ok.clone()
                },
                "workload.pod_name",
            ),
            (
                v1::Workload {
                    service: "Bad_Name".into(),
                    ..ok.clone()
                },
                "workload.service",
            ),
            (
                v1::Workload {
                    addresses: vec!["10.0.0.1".into(), "10.0.0.2".into()],
                    ..ok.clone()
                },
                "workload.addresses[1]",
            ),
            (
                v1::Workload {
                    addresses: vec!["nope".into()],
                    ..ok.clone()
                },
                "workload.addresses[0]",
            ),
            (
                v1::Workload {
                    ports: vec![v1::WorkloadPort {
                        name: "h".into(),
                        port: 70000,
                        protocol: 0,
                    }],
                    ..ok.clone()
                },
                "workload.ports[0].port",
            ),
            (
                v1::Workload {
                    version: "v 1".into(),
                    ..ok
                },
                "workload.version",
            ),
        ];
        for (w, field) in cases {
            assert_eq!(Workload::try_from(w).unwrap_err().field, field);
        }
    }
    #[test]
    fn edge_principals_come_with_mtls_only() {
        crate::test_tracing();
        let edge = v1::EdgeStats {
            direction: v1::TrafficDirection::Inbound as i32,
            protocol: v1::Protocol::Http1 as i32,
            mtls: true,
            source_principal: "spiffe://cluster.local/ns/default/sa/a".into(),
            ..Default::default()
        };
        let report = EdgeReport::try_from(edge.clone()).unwrap();
        assert!(report.delta.mtls);
        assert_eq!(
            report.delta.source_principal,
            "spiffe://cluster.local/ns/default/sa/a"
        );
        // An older sidecar's edge: plaintext, no principal.
        let old = EdgeReport::try_from(v1::EdgeStats {
            mtls: false,
            source_principal: String::new(),
            ..edge.clone()
        })
        .unwrap();
        assert!(!old.delta.mtls && old.delta.source_principal.is_empty());
        for bad in [
            v1::EdgeStats {
                mtls: false,
                ..edge.clone()
            },
            v1::EdgeStats {
                source_principal: "x".repeat(MAX_PRINCIPAL + 1),
                ..edge
            },
        ] {
            let e = EdgeReport::try_from(bad).unwrap_err().to_string();
            assert!(e.contains("edges[].source_principal"), "{e}");
        }
    }
}
