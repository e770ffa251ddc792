//! The traffic graph at one moment, built from the registry (nodes: service versions with their
//! ready endpoints and connected proxies) and the telemetry windows (edges). One builder feeds
//! `/api/topology`, the dashboard's live stream and `Admin.WatchTopology`, so they always agree.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::discovery::ProxyState;
use crate::model::{MeshView, Protocol};
use crate::telemetry::{Direction, EdgeKey, WindowStats};

/// Id of the node that stands for callers outside the mesh.
pub const EXTERNAL_ID: &str = "unknown/unknown/unknown";

/// One service version (or an outside caller).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// "namespace/service/version".
    pub id: String,
    /// Namespace.
    pub namespace: String,
    /// Service (or the caller's workload name when it has no service).
    pub service: String,
    /// Version label ("" when unversioned).
    pub version: String,
    /// Ready endpoints now.
    pub ready_endpoints: u32,
    /// Connected proxies now.
    pub proxies: u32,
    /// A caller outside the mesh.
    pub external: bool,
}

/// Traffic from one node to another over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    /// Caller node id.
    pub source: String,
    /// Callee node id.
    pub destination: String,
    /// "http1", "http2", "grpc", "tcp".
    pub protocol: &'static str,
    /// Mirrored (shadow) traffic.
    pub mirror: bool,
    /// Which side's reports the numbers come from: "inbound" (the callee's sidecar) when it
    /// reports, else "outbound".
    pub reported_by: &'static str,
    /// Requests per second (TCP-only: connections opened per second).
    pub rps: f64,
    /// Requests in the window.
    pub requests: u64,
    /// Fraction of requests that failed (server side).
    pub error_rate: f64,
    /// Median latency, ms; `null` without histograms.
    pub p50_ms: Option<f64>,
    /// 95th percentile, ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// TCP bytes per second from source to destination (request direction).
    pub received_bytes_per_second: f64,
    /// TCP bytes per second from destination to source (response direction).
    pub sent_bytes_per_second: f64,
    /// Requests by HTTP status ("0" = no response).
    pub response_codes: BTreeMap<u32, u64>,
    /// gRPC requests by gRPC status.
    pub grpc_statuses: BTreeMap<u32, u64>,
    /// Requests (or TCP connections) a policy sent to this version because the version its split
    /// chose had no ready endpoint; from the caller's outbound reports (only the router knows).
    pub version_fallbacks: u64,
    /// TCP connections open now.
    pub active_connections: u64,
    /// Mirror outcomes ("sent", "failed", "dropped", "too_large", "aborted", "no_endpoint"),
    /// for mirror edges; from the caller's outbound reports.
    pub mirror_outcomes: BTreeMap<String, u64>,
    /// Every request (TCP-only edges: every connection) of the window came over mTLS, its client
    /// certificate verified by the callee's sidecar; false when any was plaintext, and for edges
    /// only the caller reports (its sidecar does not see the server's side of the handshake).
    pub mtls: bool,
    /// Fraction 0..=1 of the window's requests (TCP-only: connections) that came over mTLS.
    pub mtls_fraction: f64,
    /// SPIFFE IDs of the verified client certificates seen in the window, sorted (at most
    /// [`crate::telemetry::window::MAX_PRINCIPALS`]); empty for plaintext edges.
    pub source_principals: Vec<String>,
}

/// The graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Graph {
    /// When it was computed, ms since the Unix epoch.
    pub time_ms: u64,
    /// The window, seconds.
    pub window_seconds: u64,
    /// Nodes sorted by id.
    pub nodes: Vec<Node>,
    /// Edges sorted by (source, destination, mirror, protocol).
    pub edges: Vec<Edge>,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Unspecified => "unknown",
        Protocol::Http1 => "http1",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}

/// Parses a protocol name of [`Edge::protocol`].
pub fn protocol_from_name(name: &str) -> Protocol {
    match name {
        "http1" => Protocol::Http1,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tcp" => Protocol::Tcp,
        _ => Protocol::Unspecified,
    }
}

fn is_external(namespace: &str, workload: &str) -> bool {
    namespace == "unknown" && workload == "unknown"
}

/// Builds the graph of `namespace` ("" = all) from the view, the connected proxies and the
/// edges' windows. Both sidecars of a hop report it: the callee's inbound report is used when
/// there is one, else the caller's outbound one, so nothing counts twice.
pub fn build(
    view: &MeshView,
    proxies: &[ProxyState],
    windows: Vec<(EdgeKey, WindowStats)>,
    namespace: &str,
    time_ms: u64,
    window_seconds: u64,
) -> Graph {
    let mut proxy_count: HashMap<(&str, &str, &str), u32> = HashMap::new();
    for p in proxies {
        let id = &p.identity;
        *proxy_count
            .entry((&id.namespace, &id.service, &id.version))
            .or_default() += 1;
    }
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let in_namespace = |ns: &str| namespace.is_empty() || ns == namespace;
    for s in view
        .services
        .values()
        .filter(|s| in_namespace(&s.namespace))
    {
        for (version, counts) in view.versions(&s.namespace, &s.name) {
            let id = format!("{}/{}/{}", s.namespace, s.name, version);
            let proxies = proxy_count
                .get(&(s.namespace.as_str(), s.name.as_str(), version.as_str()))
                .copied()
                .unwrap_or(0);
            nodes.insert(
                id.clone(),
                Node {
                    id,
                    namespace: s.namespace.clone(),
                    service: s.name.clone(),
                    version,
                    ready_endpoints: counts.ready,
                    proxies,
                    external: false,
                },
            );
        }
    }

    // Logical edge -> (inbound stats, outbound stats).
    type Side = Option<WindowStats>;
    let mut logical: BTreeMap<(String, String, bool, Protocol), (Side, Side)> = BTreeMap::new();
    for (k, stats) in windows {
        if !in_namespace(&k.source_namespace) && !in_namespace(&k.destination_namespace) {
            continue;
        }
        let source = if is_external(&k.source_namespace, &k.source_workload) {
            EXTERNAL_ID.to_owned()
        } else {
            format!(
                "{}/{}/{}",
                k.source_namespace, k.source_workload, k.source_version
            )
        };
        let destination = format!(
            "{}/{}/{}",
            k.destination_namespace, k.destination_service, k.destination_version
        );
        for (id, ns, svc, version) in [
            (
                &source,
                &k.source_namespace,
                &k.source_workload,
                &k.source_version,
            ),
            (
                &destination,
                &k.destination_namespace,
                &k.destination_service,
                &k.destination_version,
            ),
        ] {
            nodes.entry(id.clone()).or_insert_with(|| Node {
                id: id.clone(),
                namespace: ns.clone(),
                service: svc.clone(),
                version: version.clone(),
                ready_endpoints: 0,
                proxies: proxy_count
                    .get(&(ns.as_str(), svc.as_str(), version.as_str()))
                    .copied()
                    .unwrap_or(0),
                external: id == EXTERNAL_ID,
            });
        }
        let entry = logical
            .entry((source, destination, k.mirror, k.protocol))
            .or_default();
        match k.direction {
            Direction::Inbound => entry.0 = Some(stats),
            Direction::Outbound => entry.1 = Some(stats),
        }
    }
    let edges = logical
        .into_iter()
        .filter_map(|((source, destination, mirror, protocol), (inb, outb))| {
            // What only the router knows (fallbacks, mirror outcomes) comes from the caller's
            // outbound reports whichever side the rest comes from.
            let routed = outb.as_ref().map(|o| {
                (
                    o.counts.version_fallbacks,
                    o.counts.mirror_outcomes.iter().cloned().collect(),
                )
            });
            let (s, reported_by) = match (inb, outb) {
                (Some(s), _) => (s, "inbound"),
                (None, Some(s)) => (s, "outbound"),
                (None, None) => return None,
            };
            let (version_fallbacks, mirror_outcomes) = routed.unwrap_or_else(|| {
                (
                    s.counts.version_fallbacks,
                    s.counts.mirror_outcomes.iter().cloned().collect(),
                )
            });
            // Only the callee's sidecar terminates mTLS: outbound reports say nothing of it.
            let (mtls_fraction, source_principals) = match reported_by {
                "inbound" => (s.mtls_fraction, s.source_principals.clone()),
                _ => (0.0, Vec::new()),
            };
            let mut response_codes = BTreeMap::new();
            let mut grpc_statuses = BTreeMap::new();
            for ((code, grpc), n) in &s.counts.responses {
                *response_codes.entry(*code).or_default() += n;
                if let Some(g) = grpc {
                    *grpc_statuses.entry(*g).or_default() += n;
                }
            }
            Some(Edge {
                source,
                destination,
                protocol: protocol_name(protocol),
                mirror,
                reported_by,
                rps: s.rps,
                requests: s.counts.requests,
                error_rate: s.error_rate,
                p50_ms: s.p50_ms,
                p95_ms: s.p95_ms,
                p99_ms: s.p99_ms,
                received_bytes_per_second: s.received_bytes_per_second,
                sent_bytes_per_second: s.sent_bytes_per_second,
                response_codes,
                grpc_statuses,
                version_fallbacks,
                active_connections: s.active_connections,
                mirror_outcomes,
                mtls: mtls_fraction >= 1.0,
                mtls_fraction,
                source_principals,
            })
        })
        .collect();
    Graph {
        time_ms,
        window_seconds,
        nodes: nodes.into_values().collect(),
        edges,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::window::{Delta, EdgeWindows};

    fn key(direction: Direction, mirror: bool) -> EdgeKey {
        EdgeKey {
            direction,
            source_workload: "productpage".into(),
            source_namespace: "default".into(),
            source_version: "v1".into(),
            destination_service: "reviews".into(),
            destination_namespace: "default".into(),
            destination_version: "v2".into(),
            protocol: Protocol::Http1,
            mirror,
        }
    }

    fn stats(requests: u64) -> WindowStats {
        stats_with(requests, 0)
    }

    fn stats_with(requests: u64, version_fallbacks: u64) -> WindowStats {
        let mut w = EdgeWindows::new(10_000, 1_000);
        w.record(
            10_000,
            &Delta {
                responses: [((200, None), requests)].into(),
                version_fallbacks,
                ..Delta::default()
            },
        );
        w.window(10_500, 10_000).unwrap()
    }

    #[test]
    fn fallbacks_come_from_the_router_side() {
        crate::test_tracing();
        let windows = vec![
            (key(Direction::Inbound, false), stats(90)),
            (key(Direction::Outbound, false), stats_with(100, 7)),
        ];
        let g = build(&MeshView::default(), &[], windows, "", 10_500, 10);
        assert_eq!(g.edges.len(), 1);
        assert_eq!(g.edges[0].reported_by, "inbound");
        assert_eq!(g.edges[0].requests, 90);
        assert_eq!(g.edges[0].version_fallbacks, 7);
    }

    #[test]
    fn the_callee_side_is_preferred_and_mirror_edges_stay_apart() {
        crate::test_tracing();
        let windows = vec![
            (key(Direction::Inbound, false), stats(90)),
            (key(Direction::Outbound, false), stats(100)),
            (key(Direction::Outbound, true), stats(10)),
        ];
        let g = build(&MeshView::default(), &[], windows, "", 10_500, 10);
        assert_eq!(g.edges.len(), 2);
        assert_eq!(g.edges[0].reported_by, "inbound");
        assert_eq!(g.edges[0].requests, 90);
        assert!(g.edges[1].mirror);
        assert_eq!(g.edges[1].reported_by, "outbound");
        let ids: Vec<_> = g.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["default/productpage/v1", "default/reviews/v2"]);
        // Another namespace sees none of it.
        let windows = vec![(key(Direction::Inbound, false), stats(1))];
        let other = build(&MeshView::default(), &[], windows, "shop", 10_500, 10);
        assert!(other.edges.is_empty() && other.nodes.is_empty());
    }
    #[test]
    fn mtls_and_principals_come_from_the_callee_side() {
        crate::test_tracing();
        let alice = "spiffe://cluster.local/ns/default/sa/productpage";
        let with = |mtls_requests: u64, plain: u64| {
            let mut w = EdgeWindows::new(10_000, 1_000);
            w.record(
                10_000,
                &Delta {
                    responses: [((200, None), mtls_requests)].into(),
                    mtls: true,
                    source_principal: alice.into(),
                    ..Delta::default()
                },
            );
            if plain > 0 {
                w.record(
                    10_000,
                    &Delta {
                        responses: [((200, None), plain)].into(),
                        ..Delta::default()
                    },
                );
            }
            w.window(10_500, 10_000).unwrap()
        };
        let g = build(
            &MeshView::default(),
            &[],
            vec![(key(Direction::Inbound, false), with(40, 0))],
            "",
            10_500,
            10,
        );
        let e = &g.edges[0];
        assert!(e.mtls);
        assert_eq!(
            (e.mtls_fraction, &e.source_principals[..]),
            (1.0, &[alice.to_owned()][..])
        );
        // Partly plaintext: no padlock, the share says how much.
        let g = build(
            &MeshView::default(),
            &[],
            vec![(key(Direction::Inbound, false), with(30, 10))],
            "",
            10_500,
            10,
        );
        assert!(!g.edges[0].mtls);
        assert!((g.edges[0].mtls_fraction - 0.75).abs() < 1e-9);
        // Only the caller reports: nothing known of the server's side of the handshake.
        let g = build(
            &MeshView::default(),
            &[],
            vec![(key(Direction::Outbound, false), with(40, 0))],
            "",
            10_500,
            10,
        );
        let e = &g.edges[0];
        assert_eq!(e.reported_by, "outbound");
        assert!(!e.mtls && e.mtls_fraction == 0.0 && e.source_principals.is_empty());
        let json = serde_json::to_value(&g).unwrap();
        assert_eq!(json["edges"][0]["mtls"], false);
        assert_eq!(json["edges"][0]["source_principals"], serde_json::json!([]));
    }
}
