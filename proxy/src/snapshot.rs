//! The mesh as the sidecar sees it: services with their VIPs and ports, endpoints with their
//! versions and readiness, and the traffic policies (validated and compiled once, here, when the
//! config arrives). Plain data, built from the wire types ([`proto`]) or from a static
//! `--config` file ([`file`]); the forwarding path never sees either, only the lookup tables
//! ([`crate::tables`]) built from a [`Snapshot`] when it arrives.

pub mod file;
pub mod proto;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use serin_policy::{CompiledPolicy, TrafficPolicy};

/// How a port's bytes are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Not declared: detected per connection (HTTP/2 preface, HTTP/1 request line, else TCP).
    #[default]
    Detect,
    /// HTTP/1.x (an HTTP/2 prior-knowledge preface is still accepted).
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
    /// gRPC: HTTP/2 whose `grpc-status` feeds the metrics.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port on the VIPs.
    pub port: u16,
    /// Port name, "" when unnamed.
    pub name: String,
    /// Declared protocol.
    pub protocol: Protocol,
    /// Port the endpoints listen on when they name none for this port.
    pub target_port: u16,
}

/// A service: a name and VIPs in front of the endpoints of all its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Virtual IPs apps connect to.
    pub vips: Vec<IpAddr>,
    /// Host names it answers to.
    pub hostnames: Vec<String>,
    /// Ports, unique by number.
    pub ports: Vec<ServicePort>,
    /// Labels (informational).
    pub labels: BTreeMap<String, String>,
}

impl Service {
    /// The port listening on `port` of the VIPs.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// One instance behind a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Its addresses, at most one per family.
    pub addresses: Vec<IpAddr>,
    /// Its ports by service port name.
    pub ports: BTreeMap<String, u16>,
    /// Pod or workload name.
    pub pod_name: String,
    /// Version label, "" when unversioned.
    pub version: String,
    /// Labels (informational).
    pub labels: BTreeMap<String, String>,
    /// Whether it may get new requests.
    pub ready: bool,
    /// Relative load-balancing weight, at least 1.
    pub weight: u32,
    /// SPIFFE ID of its sidecar when it is meshed (connections to it are mTLS and must present
    /// this identity); "" when not meshed.
    pub identity: String,
}

impl Endpoint {
    /// The address to use for an app that connected over `vip`'s family: same family, else the
    /// first.
    pub fn address_for(&self, vip: IpAddr) -> IpAddr {
        self.addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == vip.is_ipv4())
            .unwrap_or(self.addresses[0])
    }

    /// The port that serves `port` on this endpoint (see the resolution rule on
    /// `serin.v1.Endpoint`).
    pub fn port_for(&self, port: &ServicePort) -> u16 {
        self.ports
            .get(&port.name)
            .copied()
            .unwrap_or(if port.target_port == 0 {
                port.port
            } else {
                port.target_port
            })
    }
}

/// The endpoints of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEndpoints {
    /// Service name.
    pub service: String,
    /// Service namespace.
    pub namespace: String,
    /// Every endpoint, ready or not.
    pub endpoints: Vec<Endpoint>,
}

/// A traffic policy as applied: what was written (shown in `/config_dump`, summarised in
/// `/routes`) and its compiled form, built once when the config arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// The policy in the model's (YAML) shape.
    #[serde(flatten)]
    pub policy: TrafficPolicy,
    /// Ready for the request path.
    #[serde(skip)]
    pub compiled: Arc<CompiledPolicy>,
}

impl Policy {
    /// Validates and compiles `policy`; the errors name each field at fault.
    pub fn new(policy: TrafficPolicy) -> Result<Policy, Vec<serin_policy::ValidationError>> {
        let compiled = serin_policy::validate(&policy, None)?.into_compiled();
        Ok(Policy {
            policy,
            compiled: Arc::new(compiled),
        })
    }

    /// `metadata.namespace`: the namespace of the routed service.
    pub fn namespace(&self) -> &str {
        &self.policy.metadata.namespace
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.policy.metadata.name
    }

    /// The routed service.
    pub fn service(&self) -> &str {
        &self.policy.spec.service
    }
}

/// Two policies are equal when they were written the same (the compiled form follows).
impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.policy == other.policy
    }
}

/// The complete view of the mesh one proxy serves with.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Opaque version: the control plane's, or "file:<path>" for a static file.
    pub version: String,
    /// Services, unique by (namespace, name).
    pub services: Vec<Service>,
    /// Endpoints, at most one entry per service.
    pub endpoints: Vec<ServiceEndpoints>,
    /// Traffic policies, at most one per service (namespace, `spec.service`).
    pub policies: Vec<Policy>,
    /// Whether sidecars accept plain connections, mesh-wide and per namespace.
    pub mtls: MeshTls,
}

/// Whether a namespace's sidecars accept plain (not mTLS) connections from other pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plain and mTLS (the default).
    #[default]
    Permissive,
    /// mTLS only: plain connections from other pods are refused.
    Strict,
}

/// The mTLS modes of the mesh: a default and per-namespace exceptions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTls {
    /// The mode of namespaces not listed.
    pub default_mode: MtlsMode,
    /// Modes of individual namespaces.
    pub namespaces: BTreeMap<String, MtlsMode>,
}

impl MeshTls {
    /// The mode in force in `namespace`.
    pub fn mode_of(&self, namespace: &str) -> MtlsMode {
        self.namespaces
            .get(namespace)
            .copied()
            .unwrap_or(self.default_mode)
    }
}

impl Snapshot {
    /// The endpoints of service `namespace/name` (empty when it has none).
    pub fn endpoints_of(&self, namespace: &str, name: &str) -> &[Endpoint] {
        self.endpoints
            .iter()
            .find(|e| e.service == name && e.namespace == namespace)
            .map_or(&[], |e| &e.endpoints)
    }

    /// The policy routing service `namespace/service`, if any.
    pub fn policy_of(&self, namespace: &str, service: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.namespace() == namespace && p.service() == service)
    }
}
