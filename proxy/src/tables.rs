//! Lookup tables built from a [`Snapshot`] when it arrives, so that the forwarding path only
//! does hash lookups: VIP:port → destination (service, protocol, ready endpoints with their
//! pools, balancer state and edge metrics); peer IP → the inbound edge of that workload; local
//! port → declared protocol. Endpoint state (pools, balancer statistics) carries over from the
//! previous tables by address, so a config push keeps warm connections.
//!
//! The version routing of the next issue plugs in at [`Destination`]: its endpoints are already
//! grouped by version label (`Backend::version`), and a policy decision only needs to narrow
//! [`Destination::pick`] to one version's backends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Identity;
use crate::lb::{self, LbStats};
use crate::metrics::{Direction, Edge, EdgeMetrics, Metrics};
use crate::pool::{Pool, PoolSettings};
use crate::snapshot::{Endpoint, Protocol, Service, ServicePort, Snapshot};

/// Label value for a peer the config does not know.
pub const UNKNOWN: &str = "unknown";
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
}

impl Destination {
    /// The backend for a new request or connection, `None` when no endpoint is ready.
    pub fn pick(&self) -> Option<&Backend> {
        lb::pick(&self.backends, |b| b.state.lb.load() / b.weight).map(|i| &self.backends[i])
    }
}

/// Everything the forwarding path looks up, for one config version.
#[derive(Debug)]
pub struct Tables {
    /// The snapshot these tables come from; `None` until a config arrives (not ready).
    pub snapshot: Option<Arc<Snapshot>>,
    outbound: HashMap<SocketAddr, Arc<Destination>>,
    inbound_protocols: HashMap<u16, Protocol>,
    peers: HashMap<IpAddr, Arc<EdgeMetrics>>,
    unknown_peer: Arc<EdgeMetrics>,
    passthrough: Arc<EdgeMetrics>,
    endpoints: HashMap<SocketAddr, Arc<EndpointState>>,
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
            },
        ))
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
            unknown_peer: self.edge(Direction::Inbound, (UNKNOWN, UNKNOWN, UNKNOWN), self.me()),
            passthrough: self.edge(Direction::Outbound, (PASSTHROUGH, "", ""), self.me()),
            endpoints: HashMap::new(),
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
                            .unwrap_or_else(|| EndpointState::new(addr, self.pool))
                    })
                    .clone();
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
            let host = service
                .hostnames
                .first()
                .cloned()
                .unwrap_or_else(|| format!("{}.{}", service.name, service.namespace));
            let destination = |port: &ServicePort, backends: Vec<Backend>| {
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
                        destination(port, backends),
                    );
                }
                // An endpoint addressed directly (a headless service, or a pod by its IP) is that
                // endpoint only, ready or not: the app chose it.
                for ep in endpoints {
                    for ip in &ep.addresses {
                        let addr = SocketAddr::new(*ip, ep.port_for(port));
                        let only = backend(&mut tables, service, ep, addr);
                        direct.push((addr, destination(port, vec![only])));
                    }
                }
            }
            // Peers: every endpoint address is a possible source of inbound traffic.
            for ep in endpoints {
                let metrics = self.edge(
                    Direction::Inbound,
                    (&service.name, &service.namespace, &ep.version),
                    me,
                );
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

    /// The inbound edge of a connection from `peer`.
    pub fn inbound_edge(&self, peer: IpAddr) -> &Arc<EdgeMetrics> {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.peers.get(&peer).unwrap_or(&self.unknown_peer)
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
            &*t.inbound_edge("10.244.0.7".parse().unwrap())
                .edge()
                .source_workload,
            "reviews"
        );
        assert_eq!(
            &*t.inbound_edge("10.1.1.1".parse().unwrap())
                .edge()
                .source_workload,
            UNKNOWN
        );
        assert_eq!(t.inbound_protocol(9080), Protocol::Grpc);
        assert_eq!(t.inbound_protocol(7000), Protocol::Detect);
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
