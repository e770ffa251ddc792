//! Lookup tables built from a [`Snapshot`] when it arrives, so that the forwarding path only
//! does hash lookups: VIP:port → destination (service, protocol, ready endpoints with their
//! pools, balancer state and edge metrics); peer IP → the inbound edge of that workload; local
//! port → declared protocol. Endpoint state (pools, balancer statistics) carries over from the
//! previous tables by address, so a config push keeps warm connections.
//!
//! A destination of a service with a traffic policy also holds its ready backends grouped by
//! version and the policy's routing state ([`PolicyRouting`]): per request
//! [`Destination::route`] asks the compiled policy for a version (given which versions have ready
//! backends) and balances within that version's backends; without a policy it balances over all
//! ready backends. Nothing here parses configuration: all of it was built when the config came.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use serin_policy::{RequestView, Target};
use tokio::sync::watch;

use crate::config::Identity;
use crate::lb::{self, LbStats};
use crate::metrics::{Direction, Edge, EdgeMetrics, Metrics};
use crate::pool::{Pool, PoolSettings};
use crate::retry::RetryBudget;
use crate::routing::PolicyRouting;
use crate::snapshot::{Endpoint, MtlsMode, Protocol, Service, ServicePort, Snapshot};

/// Label value for a peer the config does not know.
pub const UNKNOWN: &str = "unknown";
/// Most distinct client principals one peer's inbound edges are kept apart for (per config
/// version); mTLS connections presenting further ones count under [`OTHER_PRINCIPALS`], so a
/// peer cannot grow `/metrics` and telemetry without bound.
pub const MAX_PRINCIPALS_PER_PEER: usize = 32;
/// `source_principal` of the mTLS traffic beyond [`MAX_PRINCIPALS_PER_PEER`] principals of one
/// peer (a SPIFFE ID always starts with `spiffe://`, so it cannot be taken for one).
pub const OTHER_PRINCIPALS: &str = "other";
/// `destination_service` of traffic to addresses outside the mesh.
pub const PASSTHROUGH: &str = "passthrough";

/// What an endpoint keeps across config updates.
#[derive(Debug)]
pub struct EndpointState {
    /// Balancer statistics.
    pub lb: LbStats,
    /// Upstream connections.
    pub pool: Arc<Pool>,
}

impl EndpointState {
    /// Fresh state for `addr`.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Arc<EndpointState> {
        Arc::new(EndpointState {
            lb: LbStats::default(),
            pool: Arc::new(Pool::new(addr, settings)),
        })
    }
}

/// One ready endpoint of a destination.
#[derive(Debug)]
pub struct Backend {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Its pod name.
    pub pod_name: Arc<str>,
    /// Its version label.
    pub version: Arc<str>,
    /// Its relative weight (at least 1).
    pub weight: f64,
    /// Pools and balancer state.
    pub state: Arc<EndpointState>,
    /// The outbound edge to its version.
    pub metrics: Arc<EdgeMetrics>,
}

/// A service port as reached through one VIP.
#[derive(Debug)]
pub struct Destination {
    /// Service name.
    pub service: Arc<str>,
    /// Service namespace.
    pub namespace: Arc<str>,
    /// Declared protocol of the port.
    pub protocol: Protocol,
    /// `host:port` for requests that carry no authority (HTTP/2 without `:authority`).
    pub authority: http::uri::Authority,
    /// The ready endpoints.
    pub backends: Vec<Backend>,
    /// The edge used when no endpoint answered (no version known).
    pub metrics: Arc<EdgeMetrics>,
    /// The service's traffic policy, when it has one (never for an endpoint addressed directly).
    pub routing: Option<Routing>,
    /// The service's retry budget.
    pub retry_budget: Arc<RetryBudget>,
}

/// The policy routing of one destination: its ready backends by version, and the policy.
#[derive(Debug)]
pub struct Routing {
    /// The service's policy and its counters.
    pub policy: Arc<PolicyRouting>,
    /// Each version with ready backends, with the indexes of those in `Destination::backends`.
    versions: Vec<(Arc<str>, Vec<usize>)>,
    metrics: Arc<Metrics>,
    /// The edge of mirrored copies (`mirror="true"`, the mirror version), when mirroring is on.
    mirror_edge: Option<Arc<EdgeMetrics>>,
}

impl Routing {
    fn group(&self, version: &str) -> Option<&[usize]> {
        self.versions
            .iter()
            .find(|(v, _)| &**v == version)
            .map(|(_, group)| group.as_slice())
    }
}

/// The backends a request's endpoint was picked from: all ready ones, or one version's.
#[derive(Debug, Clone, Copy)]
pub enum Candidates<'a> {
    /// Every ready backend of the destination.
    All(&'a [Backend]),
    /// The backends at these indexes (one version's).
    Group(&'a [Backend], &'a [usize]),
}

impl<'a> Candidates<'a> {
    fn pick(self) -> Option<&'a Backend> {
        let score = |b: &Backend| b.state.lb.load() / b.weight;
        match self {
            Candidates::All(all) => lb::pick(all, score).map(|i| &all[i]),
            Candidates::Group(all, group) => {
                lb::pick(group, |&i| score(&all[i])).map(|i| &all[group[i]])
            }
        }
    }

    /// How many backends there are to pick from.
    pub fn len(self) -> usize {
        match self {
            Candidates::All(all) => all.len(),
            Candidates::Group(_, group) => group.len(),
        }
    }

    /// True if there is none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Another backend than `not` (by address), balanced among the rest; `None` if there is
    /// none.
    pub fn another(self, not: SocketAddr) -> Option<&'a Backend> {
        let score = |b: &Backend| b.state.lb.load() / b.weight;
        let rest: Vec<&'a Backend> = match self {
            Candidates::All(all) => all.iter().filter(|b| b.addr != not).collect(),
            Candidates::Group(all, group) => group
                .iter()
                .map(|&i| &all[i])
                .filter(|b| b.addr != not)
                .collect(),
        };
        lb::pick(&rest, |b| score(b)).map(|i| rest[i])
    }
}

/// Where one request goes.
#[derive(Debug, Clone, Copy)]
pub struct Routed<'a> {
    /// The endpoint.
    pub backend: &'a Backend,
    /// What it was picked from (a retry picks another of these).
    pub candidates: Candidates<'a>,
    /// A mirror copy's endpoint, when the policy mirrors this request.
    pub mirror: Option<MirrorTo<'a>>,
    /// The policy chose a version without ready endpoints and `backend` is of the fallback
    /// version (the caller counts it on the backend's edge, where the request's protocol is
    /// known).
    pub fell_back: bool,
}

/// Where a mirrored copy goes.
#[derive(Debug, Clone, Copy)]
pub struct MirrorTo<'a> {
    /// An endpoint of the mirror version; `None` when that version has no ready endpoint.
    pub backend: Option<&'a Backend>,
    /// The mirrored edge (`mirror="true"`): the copy's request metrics and its outcome.
    pub metrics: &'a Arc<EdgeMetrics>,
    /// The policy that asked for the copy (it counts the outcome).
    pub policy: &'a Arc<PolicyRouting>,
}

impl Destination {
    /// The backend for a new request or connection by balance alone (no policy), `None` when no
    /// endpoint is ready.
    pub fn pick(&self) -> Option<&Backend> {
        Candidates::All(&self.backends).pick()
    }

    /// Routes one request: by the service's policy when it has one (rule, weights, stickiness,
    /// fallback, mirror; hits counted), then balanced within the version; without a policy,
    /// balanced over every ready backend. `None`: nothing can serve it (503).
    pub fn route<R: RequestView + ?Sized>(&self, req: &R) -> Option<Routed<'_>> {
        let Some(routing) = &self.routing else {
            return self.pick().map(|backend| Routed {
                backend,
                candidates: Candidates::All(&self.backends),
                mirror: None,
                fell_back: false,
            });
        };
        let random: u64 = rand::random();
        let (split_random, mirror_random) = (random as u32, (random >> 32) as u32);
        let compiled = &routing.policy.policy.compiled;
        let decision = compiled.decide(req, split_random, |v| routing.group(v).is_some());
        routing.policy.count(&decision);
        let version = match decision.target {
            Target::Version(v) => v,
            Target::FellBack(v) => {
                routing
                    .metrics
                    .route_fallback(&self.service, &self.namespace, decision.chosen, v);
                v
            }
            Target::Unavailable => return None,
        };
        let candidates = Candidates::Group(&self.backends, routing.group(version)?);
        let backend = candidates.pick()?;
        let mirror = match (
            compiled.mirror(&decision, mirror_random),
            &routing.mirror_edge,
        ) {
            (Some(version), Some(metrics)) => Some(MirrorTo {
                backend: routing
                    .group(version)
                    .and_then(|g| Candidates::Group(&self.backends, g).pick()),
                metrics,
                policy: &routing.policy,
            }),
            _ => None,
        };
        Some(Routed {
            backend,
            candidates,
            mirror,
            fell_back: matches!(decision.target, Target::FellBack(_)),
        })
    }

    /// The backend for an opaque TCP connection: with a policy, the version comes from the
    /// default route's weights (there is no request to match) with the same fallback as requests.
    pub fn pick_tcp(&self) -> Option<&Backend> {
        let Some(routing) = &self.routing else {
            return self.pick();
        };
        let split = routing.policy.policy.compiled.default_split();
        let chosen = split.pick_random(rand::random());
        let ready = |i: usize| split.weight(i) > 0 && routing.group(split.version(i)).is_some();
        let target = if ready(chosen) {
            Some(chosen)
        } else {
            (0..split.len()).find(|&i| i != chosen && ready(i))
        };
        let fell_back = target.is_some_and(|t| t != chosen);
        routing
            .policy
            .count_default(chosen, fell_back, target.is_none());
        let version = split.version(target?);
        if fell_back {
            routing.metrics.route_fallback(
                &self.service,
                &self.namespace,
                split.version(chosen),
                version,
            );
        }
        let backend = Candidates::Group(&self.backends, routing.group(version)?).pick()?;
        if fell_back {
            backend.metrics.record_fallback(None);
        }
        Some(backend)
    }
}

/// The inbound edges of one peer over one kind of connection (plaintext, or mTLS with one
/// client principal). Copies a mirroring sidecar sends (`x-serin-mirror: 1` to a `-shadow`
/// host) are counted apart, on the `mirror` edge, as the sender counts them: so the mirror
/// version's primary traffic is not inflated by copies, in `/metrics` and in telemetry.
#[derive(Debug)]
pub struct InboundEdges {
    /// Its requests and connections.
    pub primary: Arc<EdgeMetrics>,
    /// The mirrored copies it sends us.
    pub mirror: Arc<EdgeMetrics>,
}

/// Everything one peer's inbound connections are counted on: the plaintext edges, made with the
/// tables, and the edges of its mTLS connections by the client's verified principal, made on the
/// first connection that presents it (the principal is only known after the handshake).
#[derive(Debug)]
pub struct InboundPeer {
    plain: Arc<InboundEdges>,
    secured: RwLock<HashMap<Arc<str>, Arc<InboundEdges>>>,
}

impl InboundPeer {
    fn new(plain: InboundEdges) -> InboundPeer {
        InboundPeer {
            plain: Arc::new(plain),
            secured: RwLock::new(HashMap::new()),
        }
    }

    /// The edges of a connection from this peer: plaintext (`None`), or mTLS whose client
    /// certificate names `principal` ("" when it names none).
    pub fn edges(&self, principal: Option<&str>) -> Arc<InboundEdges> {
        let Some(principal) = principal else {
            return Arc::clone(&self.plain);
        };
        // Plain data behind the lock: still fine after a panic elsewhere.
        let read = self.secured.read().unwrap_or_else(|e| e.into_inner());
        if let Some(edges) = read.get(principal) {
            return Arc::clone(edges);
        }
        drop(read);
        let mut write = self.secured.write().unwrap_or_else(|e| e.into_inner());
        let principal = if write.len() >= MAX_PRINCIPALS_PER_PEER && !write.contains_key(principal)
        {
            OTHER_PRINCIPALS
        } else {
            principal
        };
        let plain = &self.plain;
        let edges = write.entry(Arc::from(principal)).or_insert_with(|| {
            let variant = |of: &EdgeMetrics| {
                Arc::new(EdgeMetrics::new(
                    Arc::clone(of.registry()),
                    Edge {
                        source_principal: Some(Arc::from(principal)),
                        ..of.edge().clone()
                    },
                ))
            };
            Arc::new(InboundEdges {
                primary: variant(&plain.primary),
                mirror: variant(&plain.mirror),
            })
        });
        Arc::clone(edges)
    }
}

/// Everything the forwarding path looks up, for one config version.
#[derive(Debug)]
pub struct Tables {
    /// The snapshot these tables come from; `None` until a config arrives (not ready).
    pub snapshot: Option<Arc<Snapshot>>,
    outbound: HashMap<SocketAddr, Arc<Destination>>,
    inbound_protocols: HashMap<u16, Protocol>,
    peers: HashMap<IpAddr, Arc<InboundPeer>>,
    unknown_peer: Arc<InboundPeer>,
    passthrough: Arc<EdgeMetrics>,
    endpoints: HashMap<SocketAddr, Arc<EndpointState>>,
    /// Routing state per policy, by (namespace, service).
    policies: HashMap<(String, String), Arc<PolicyRouting>>,
    /// Retry budgets per (namespace, service), carried over like endpoint state.
    budgets: HashMap<(String, String), Arc<RetryBudget>>,
    /// The mTLS mode of our namespace: whether plain inbound connections are refused.
    pub mtls_mode: MtlsMode,
}

/// What tables are built with.
#[derive(Debug, Clone)]
pub struct Builder {
    /// Who we are.
    pub identity: Identity,
    /// Where edges register.
    pub metrics: Arc<Metrics>,
    /// Settings of new pools.
    pub pool: PoolSettings,
}

impl Builder {
    fn edge(
        &self,
        direction: Direction,
        peer: (&str, &str, &str),
        me: (&str, &str, &str),
    ) -> Arc<EdgeMetrics> {
        self.edge_of(direction, peer, me, false)
    }

    fn edge_of(
        &self,
        direction: Direction,
        peer: (&str, &str, &str),
        me: (&str, &str, &str),
        mirror: bool,
    ) -> Arc<EdgeMetrics> {
        let (src, dst) = match direction {
            Direction::Outbound => (me, peer),
            Direction::Inbound => (peer, me),
        };
        Arc::new(EdgeMetrics::new(
            Arc::clone(&self.metrics),
            Edge {
                direction,
                source_workload: src.0.into(),
                source_namespace: src.1.into(),
                source_version: src.2.into(),
                destination_service: dst.0.into(),
                destination_namespace: dst.1.into(),
                destination_version: dst.2.into(),
                mirror,
                source_principal: None,
            },
        ))
    }

    /// The inbound edges of a peer: its primary traffic and the mirrored copies it sends.
    fn inbound_peer(&self, peer: (&str, &str, &str)) -> Arc<InboundPeer> {
        Arc::new(InboundPeer::new(InboundEdges {
            primary: self.edge_of(Direction::Inbound, peer, self.me(), false),
            mirror: self.edge_of(Direction::Inbound, peer, self.me(), true),
        }))
    }

    fn me(&self) -> (&str, &str, &str) {
        let id = &self.identity;
        (id.workload(), &id.namespace, &id.version)
    }

    /// The tables before any config: nothing known, every destination passes through.
    pub fn empty(&self) -> Tables {
        Tables {
            snapshot: None,
            outbound: HashMap::new(),
            inbound_protocols: HashMap::new(),
            peers: HashMap::new(),
            unknown_peer: self.inbound_peer((UNKNOWN, UNKNOWN, UNKNOWN)),
            passthrough: self.edge(Direction::Outbound, (PASSTHROUGH, "", ""), self.me()),
            endpoints: HashMap::new(),
            policies: HashMap::new(),
            budgets: HashMap::new(),
            mtls_mode: MtlsMode::default(),
        }
    }

    /// Tables for `snapshot`, reusing the endpoint state of `previous`.
    pub fn build(&self, snapshot: Arc<Snapshot>, previous: &Tables) -> Tables {
        let mut tables = self.empty();
        let me = self.me();
        let mut edges: HashMap<(String, String, String), Arc<EdgeMetrics>> = HashMap::new();
        // One backend of `service` at `addr`, with its state carried over and its edge shared.
        let mut backend =
            |tables: &mut Tables, service: &Service, ep: &Endpoint, addr: SocketAddr| {
                let state = tables
                    .endpoints
                    .entry(addr)
                    .or_insert_with(|| {
                        previous
                            .endpoints
                            .get(&addr)
                            .cloned()
                            .unwrap_or_else(|| EndpointState::new(addr, self.pool.clone()))
                    })
                    .clone();
                state.pool.set_peer_identity(&ep.identity);
                let key = (
                    service.name.clone(),
                    service.namespace.clone(),
                    ep.version.clone(),
                );
                let metrics = edges
                    .entry(key)
                    .or_insert_with(|| {
                        self.edge(
                            Direction::Outbound,
                            (&service.name, &service.namespace, &ep.version),
                            me,
                        )
                    })
                    .clone();
                Backend {
                    addr,
                    pod_name: ep.pod_name.as_str().into(),
                    version: ep.version.as_str().into(),
                    weight: f64::from(ep.weight),
                    state,
                    metrics,
                }
            };
        let mut direct = Vec::new();
        for service in &snapshot.services {
            let endpoints = snapshot.endpoints_of(&service.namespace, &service.name);
            let key = (service.namespace.clone(), service.name.clone());
            let policy = snapshot
                .policy_of(&service.namespace, &service.name)
                .map(|p| {
                    let routing =
                        PolicyRouting::new(p.clone(), previous.policies.get(&key).map(|r| &**r));
                    Arc::new(routing)
                });
            if let Some(p) = &policy {
                tables.policies.insert(key.clone(), Arc::clone(p));
            }
            let mirror_edge = policy
                .as_ref()
                .and_then(|p| p.policy.compiled.mirror_policy())
                .map(|(version, _)| {
                    self.edge_of(
                        Direction::Outbound,
                        (&service.name, &service.namespace, version),
                        me,
                        true,
                    )
                });
            let budget = Arc::clone(
                tables
                    .budgets
                    .entry(key.clone())
                    .or_insert_with(|| previous.budgets.get(&key).cloned().unwrap_or_default()),
            );
            let host = service
                .hostnames
                .first()
                .cloned()
                .unwrap_or_else(|| format!("{}.{}", service.name, service.namespace));
            let destination = |port: &ServicePort,
                               backends: Vec<Backend>,
                               policy: Option<&Arc<PolicyRouting>>| {
                let routing = policy.map(|policy| {
                    let mut versions: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
                    for (i, b) in backends.iter().enumerate() {
                        match versions.iter_mut().find(|(v, _)| *v == b.version) {
                            Some((_, group)) => group.push(i),
                            None => versions.push((Arc::clone(&b.version), vec![i])),
                        }
                    }
                    Routing {
                        policy: Arc::clone(policy),
                        versions,
                        metrics: Arc::clone(&self.metrics),
                        mirror_edge: mirror_edge.clone(),
                    }
                });
                Arc::new(Destination {
                    service: service.name.as_str().into(),
                    namespace: service.namespace.as_str().into(),
                    protocol: port.protocol,
                    authority: format!("{host}:{}", port.port)
                        .parse()
                        .unwrap_or_else(|_| http::uri::Authority::from_static("unknown")),
                    backends,
                    metrics: self.edge(
                        Direction::Outbound,
                        (&service.name, &service.namespace, UNKNOWN),
                        me,
                    ),
                    routing,
                    retry_budget: Arc::clone(&budget),
                })
            };
            for port in &service.ports {
                for vip in &service.vips {
                    let backends = endpoints
                        .iter()
                        .filter(|e| e.ready)
                        .map(|ep| {
                            let addr = SocketAddr::new(ep.address_for(*vip), ep.port_for(port));
                            backend(&mut tables, service, ep, addr)
                        })
                        .collect();
                    tables.outbound.insert(
                        SocketAddr::new(*vip, port.port),
                        destination(port, backends, policy.as_ref()),
                    );
                }
                // An endpoint addressed directly (a headless service, or a pod by its IP) is that
                // endpoint only, ready or not: the app chose it.
                for ep in endpoints {
                    for ip in &ep.addresses {
                        let addr = SocketAddr::new(*ip, ep.port_for(port));
                        let only = backend(&mut tables, service, ep, addr);
                        direct.push((addr, destination(port, vec![only], None)));
                    }
                }
            }
            // Peers: every endpoint address is a possible source of inbound traffic.
            for ep in endpoints {
                let metrics = self.inbound_peer((&service.name, &service.namespace, &ep.version));
                for addr in &ep.addresses {
                    tables
                        .peers
                        .entry(*addr)
                        .or_insert_with(|| Arc::clone(&metrics));
                }
            }
            // Our own service: the protocols of the ports we serve.
            if service.name == self.identity.service && service.namespace == self.identity.namespace
            {
                let own = endpoints.iter().find(|e| {
                    e.addresses
                        .iter()
                        .any(|a| self.identity.pod_ips.contains(a))
                });
                for port in &service.ports {
                    let local = match own {
                        Some(ep) => ep.port_for(port),
                        None if port.target_port != 0 => port.target_port,
                        None => port.port,
                    };
                    tables.inbound_protocols.insert(local, port.protocol);
                }
            }
        }
        for (addr, destination) in direct {
            tables.outbound.entry(addr).or_insert(destination);
        }
        tables.mtls_mode = snapshot.mtls.mode_of(&self.identity.namespace);
        tables.snapshot = Some(snapshot);
        tables
    }
}

/// The one writer of the tables: converts each new snapshot into tables (off the forwarding
/// path) and publishes them; readers see whole versions only.
#[derive(Debug)]
pub struct ConfigWriter {
    builder: Builder,
    tx: watch::Sender<Arc<Tables>>,
}

impl ConfigWriter {
    /// A writer publishing empty tables (not ready) until the first snapshot.
    pub fn new(builder: Builder) -> (ConfigWriter, watch::Receiver<Arc<Tables>>) {
        let (tx, rx) = watch::channel(Arc::new(builder.empty()));
        (ConfigWriter { builder, tx }, rx)
    }

    /// Builds tables for `snapshot` and publishes them.
    pub fn apply(&self, snapshot: Snapshot) {
        let version = snapshot.version.clone();
        let tables = {
            let previous = self.tx.borrow();
            self.builder.build(Arc::new(snapshot), &previous)
        };
        self.tx.send_replace(Arc::new(tables));
        tracing::info!(%version, "config applied");
    }

    /// Another reader of the tables.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Tables>> {
        self.tx.subscribe()
    }
}

impl Tables {
    /// Whether a config has arrived.
    pub fn is_ready(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The service port an app reached by connecting to `orig_dst`.
    pub fn destination(&self, orig_dst: SocketAddr) -> Option<&Arc<Destination>> {
        self.outbound.get(&orig_dst)
    }

    /// The edge of traffic to addresses outside the mesh.
    pub fn passthrough(&self) -> &Arc<EdgeMetrics> {
        &self.passthrough
    }

    /// The inbound edges of a connection from `peer`: plaintext (`principal` `None`), or mTLS
    /// whose verified client certificate names `principal`.
    pub fn inbound_edges(&self, peer: IpAddr, principal: Option<&str>) -> Arc<InboundEdges> {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.peers
            .get(&peer)
            .unwrap_or(&self.unknown_peer)
            .edges(principal)
    }

    /// The routing state of every policy in force, ordered by namespace and service.
    pub fn policies(&self) -> Vec<&Arc<PolicyRouting>> {
        let mut all: Vec<_> = self.policies.iter().collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all.into_iter().map(|(_, p)| p).collect()
    }

    /// The declared protocol of local port `port` (detect when undeclared).
    pub fn inbound_protocol(&self, port: u16) -> Protocol {
        self.inbound_protocols
            .get(&port)
            .copied()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::file;
    use std::time::Duration;

    const CONFIG: &str = r#"
services:
  - {name: reviews, namespace: default, vips: ["10.96.0.10"], hostnames: [reviews],
     ports: [{port: 9080, name: http, protocol: PROTOCOL_HTTP1, targetPort: 8080}]}
  - {name: productpage, namespace: default, vips: ["10.96.0.11"],
     ports: [{port: 9080, protocol: PROTOCOL_GRPC}]}
endpoints:
  - service: reviews
    namespace: default
    endpoints:
      - {addresses: ["10.244.0.5"], podName: r1, version: v1, ready: true}
      - {addresses: ["10.244.0.6"], podName: r2, version: v2, ready: true}
      - {addresses: ["10.244.0.7"], podName: r3, version: v2, ready: false}
  - service: productpage
    namespace: default
    endpoints:
      - {addresses: ["10.244.0.9"], podName: pp, version: v1, ready: true}
"#;

    fn builder() -> Builder {
        Builder {
            identity: Identity {
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

    #[test]
    fn looks_up_vips_ready_endpoints_peers_and_own_ports() {
        let b = builder();
        let snapshot = Arc::new(file::parse(CONFIG, "1".into()).unwrap());
        let t = b.build(snapshot, &b.empty());
        assert!(t.is_ready());
        let d = t.destination("10.96.0.10:9080".parse().unwrap()).unwrap();
        assert_eq!(&*d.service, "reviews");
        assert_eq!(d.protocol, Protocol::Http1);
        assert_eq!(d.authority.as_str(), "reviews:9080");
        let addrs: Vec<_> = d.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, ["10.244.0.5:8080", "10.244.0.6:8080"]);
        assert_eq!(&*d.backends[1].metrics.edge().destination_version, "v2");
        assert!(t.destination("10.96.0.10:9081".parse().unwrap()).is_none());
        assert_eq!(
            &*t.inbound_edges("10.244.0.7".parse().unwrap(), None)
                .primary
                .edge()
                .source_workload,
            "reviews"
        );
        assert_eq!(
            &*t.inbound_edges("10.1.1.1".parse().unwrap(), None)
                .primary
                .edge()
                .source_workload,
            UNKNOWN
        );
        assert_eq!(t.inbound_protocol(9080), Protocol::Grpc);
        assert_eq!(t.inbound_protocol(7000), Protocol::Detect);
    }

    #[test]
    fn inbound_mtls_edges_are_kept_apart_by_principal_and_bounded() {
        let b = builder();
        let snapshot = Arc::new(file::parse(CONFIG, "1".into()).unwrap());
        let t = b.build(snapshot, &b.empty());
        let peer: IpAddr = "10.244.0.7".parse().unwrap();
        let id = "spiffe://cluster.local/ns/default/sa/reviews";
        let plain = t.inbound_edges(peer, None);
        assert_eq!(plain.primary.edge().source_principal, None);
        let mtls = t.inbound_edges(peer, Some(id));
        let edge = mtls.primary.edge();
        assert_eq!(edge.source_principal.as_deref(), Some(id));
        assert_eq!(
            (&*edge.source_workload, edge.direction),
            ("reviews", Direction::Inbound),
            "the same peer, only the principal added"
        );
        assert!(mtls.mirror.edge().mirror);
        assert_eq!(mtls.mirror.edge().source_principal.as_deref(), Some(id));
        assert!(
            Arc::ptr_eq(&mtls, &t.inbound_edges(peer, Some(id))),
            "made once"
        );
        // A certificate without a SPIFFE ID is still mTLS.
        let anonymous = t.inbound_edges(peer, Some(""));
        assert_eq!(
            anonymous.primary.edge().source_principal.as_deref(),
            Some("")
        );
        // Beyond the bound, further principals share one edge.
        for i in 0..MAX_PRINCIPALS_PER_PEER {
            t.inbound_edges(peer, Some(&format!("spiffe://td/ns/x/sa/{i}")));
        }
        let over = t.inbound_edges(peer, Some("spiffe://td/ns/x/sa/late"));
        assert_eq!(
            over.primary.edge().source_principal.as_deref(),
            Some(OTHER_PRINCIPALS)
        );
        assert!(
            Arc::ptr_eq(&mtls, &t.inbound_edges(peer, Some(id))),
            "known ones stay"
        );
    }

    #[test]
    fn endpoints_addressed_directly_are_their_service() {
        let b = builder();
        let snapshot = Arc::new(file::parse(CONFIG, "1".into()).unwrap());
        let t = b.build(snapshot, &b.empty());
        // A not-ready pod called by its IP and target port: that pod, counted as `reviews`.
        let d = t.destination("10.244.0.7:8080".parse().unwrap()).unwrap();
        assert_eq!(&*d.service, "reviews");
        assert_eq!(d.protocol, Protocol::Http1);
        assert_eq!(d.backends.len(), 1);
        assert_eq!(d.backends[0].addr, "10.244.0.7:8080".parse().unwrap());
        assert_eq!(&*d.backends[0].metrics.edge().destination_version, "v2");
        assert!(t.destination("10.244.0.7:9999".parse().unwrap()).is_none());
    }

    /// reviews has v1 and v2 ready (v3 none); the policy sends jason to v3, `x-canary` to v2,
    /// the rest 80/20, mirrors everything to v2.
    const POLICY: &str = r#"
policies:
  - metadata: {name: reviews, namespace: default, generation: 2}
    spec:
      service: reviews
      rules:
        - name: jason
          match: [{headers: {end-user: {exact: jason}}}]
          route: [{version: v3, weight: 100}]
        - name: canary
          match: [{headers: {x-canary: {present: true}}}, {uri: {prefix: /beta}}]
          route: [{version: v2, weight: 1}]
      default: {route: [{version: v1, weight: 80}, {version: v2, weight: 20}]}
      mirror: {version: v2, percent: 100}
"#;

    fn with_policy(policy: &str) -> Arc<Snapshot> {
        Arc::new(file::parse(&format!("{CONFIG}{policy}"), "1".into()).unwrap())
    }

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::get("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn reviews(t: &Tables) -> &Arc<Destination> {
        t.destination("10.96.0.10:9080".parse().unwrap()).unwrap()
    }

    #[test]
    fn rules_take_matching_requests_and_weights_split_the_rest() {
        let b = builder();
        let t = b.build(with_policy(POLICY), &b.empty());
        let d = reviews(&t);
        let canary = d.route(&request(&[("x-canary", "1")])).unwrap();
        assert_eq!(&*canary.backend.version, "v2");
        let n = 10_000;
        let on_v2 = (0..n)
            .filter(|_| &*d.route(&request(&[])).unwrap().backend.version == "v2")
            .count() as f64;
        // Binomial(10 000, 0.2): mean 2000, sigma 40; 3 sigma = 120.
        assert!((on_v2 - 2000.0).abs() < 120.0, "{on_v2} of {n} on v2");
        let view = t.policies()[0].view();
        assert_eq!(view.rules[1].route.hits, 1);
        assert_eq!(view.default.hits, n as u64);
        assert_eq!(
            view.default.route[0].hits + view.default.route[1].hits,
            n as u64
        );
    }

    #[test]
    fn a_version_without_ready_endpoints_falls_back_and_is_counted() {
        let b = builder();
        let t = b.build(with_policy(POLICY), &b.empty());
        let d = reviews(&t);
        for _ in 0..3 {
            let routed = d.route(&request(&[("end-user", "jason")])).unwrap();
            assert_eq!(
                &*routed.backend.version, "v1",
                "first ready version of the default"
            );
        }
        let view = t.policies()[0].view();
        assert_eq!(view.rules[0].route.route[0].hits, 3);
        assert_eq!(view.fallbacks, 3);
        let text = b.metrics.render();
        assert!(
            text.contains("serin_route_fallbacks_total{destination_service=\"reviews\",destination_namespace=\"default\",chosen_version=\"v3\",fallback_version=\"v1\"} 3"),
            "{text}"
        );
    }

    #[test]
    fn no_ready_version_is_unavailable() {
        let b = builder();
        let policy = POLICY
            .replace(
                "{version: v1, weight: 80}, {version: v2, weight: 20}",
                "{version: v4, weight: 1}",
            )
            .replace("mirror: {version: v2, percent: 100}", "");
        let t = b.build(with_policy(&policy), &b.empty());
        let d = reviews(&t);
        assert!(d.route(&request(&[("end-user", "jason")])).is_none());
        assert!(d.route(&request(&[])).is_none());
        assert!(d.pick_tcp().is_none());
        assert_eq!(t.policies()[0].view().unavailable, 3);
        // Without a policy every ready backend serves.
        let t = b.build(Arc::new(file::parse(CONFIG, "1".into()).unwrap()), &t);
        assert!(reviews(&t).route(&request(&[])).is_some());
        assert!(t.policies().is_empty());
    }

    #[test]
    fn tcp_connections_follow_the_default_weights() {
        let b = builder();
        let policy = POLICY.replace("weight: 80}", "weight: 0}");
        let t = b.build(with_policy(&policy), &b.empty());
        let d = reviews(&t);
        for _ in 0..50 {
            assert_eq!(&*d.pick_tcp().unwrap().version, "v2");
        }
        assert_eq!(t.policies()[0].view().default.route[1].hits, 50);
    }

    #[test]
    fn mirror_copies_go_to_the_mirror_version_and_a_full_queue_drops_them() {
        let b = builder();
        let t = b.build(with_policy(POLICY), &b.empty());
        let d = reviews(&t);
        let routed = d.route(&request(&[("end-user", "jason")])).unwrap();
        let to = routed.mirror.expect("100 % mirrored");
        assert_eq!(&*to.backend.unwrap().version, "v2");
        assert!(to.metrics.edge().mirror);
        // Requests already on the mirror version are not copied.
        assert!(
            d.route(&request(&[("x-canary", "1")]))
                .unwrap()
                .mirror
                .is_none()
        );
        let full = crate::mirror::Mirrors::new(0, Duration::from_secs(1));
        let req = http::Request::get("/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        assert!(full.start(&req, to).is_none());
        let view = t.policies()[0].view();
        assert_eq!(view.mirror.unwrap().dropped, 1);
        assert!(b.metrics.render().contains("outcome=\"dropped\"} 1"));
    }

    #[test]
    fn routes_json_shows_rules_weights_hits_and_mirror() {
        let b = builder();
        let t = b.build(with_policy(POLICY), &b.empty());
        reviews(&t)
            .route(&request(&[("end-user", "jason")]))
            .unwrap();
        let json = crate::admin::routes(&t);
        let p = &json["policies"][0];
        assert_eq!(json["version"], "1");
        assert_eq!(p["namespace"], "default");
        assert_eq!(p["service"], "reviews");
        assert_eq!(p["name"], "reviews");
        assert_eq!(p["generation"], 2);
        assert_eq!(p["rules"][0]["name"], "jason");
        assert_eq!(
            p["rules"][0]["match"][0],
            "headers[end-user] exact \"jason\""
        );
        assert_eq!(
            p["rules"][1]["match"],
            serde_json::json!(["headers[x-canary] present", "uri prefix \"/beta\""])
        );
        assert_eq!(
            p["rules"][0]["route"],
            serde_json::json!([{"version": "v3", "weight": 100, "hits": 1}])
        );
        assert_eq!(p["rules"][0]["hits"], 1);
        assert_eq!(p["default"]["route"][0]["weight"], 80);
        assert_eq!(p["fallbacks"], 1);
        assert_eq!(p["mirror"]["version"], "v2");
        assert_eq!(p["mirror"]["percent"], 100.0);
        assert_eq!(p["mirror"]["tooLarge"], 0);
    }

    #[test]
    fn hit_counts_survive_an_update_that_keeps_the_spec_and_reset_on_a_change() {
        let b = builder();
        let first = b.build(with_policy(POLICY), &b.empty());
        reviews(&first)
            .route(&request(&[("x-canary", "1")]))
            .unwrap();
        let same = b.build(
            with_policy(&POLICY.replace("generation: 2", "generation: 3")),
            &first,
        );
        assert_eq!(same.policies()[0].view().rules[1].route.hits, 1);
        assert_eq!(same.policies()[0].view().generation, Some(3));
        let changed = b.build(
            with_policy(&POLICY.replace("weight: 80", "weight: 70")),
            &same,
        );
        assert_eq!(changed.policies()[0].view().rules[1].route.hits, 0);
    }

    #[test]
    fn endpoint_state_survives_a_config_update() {
        let b = builder();
        let snapshot = Arc::new(file::parse(CONFIG, "1".into()).unwrap());
        let first = b.build(Arc::clone(&snapshot), &b.empty());
        let second = b.build(snapshot, &first);
        let vip = "10.96.0.10:9080".parse().unwrap();
        assert!(Arc::ptr_eq(
            &first.destination(vip).unwrap().backends[0].state,
            &second.destination(vip).unwrap().backends[0].state
        ));
    }
}
