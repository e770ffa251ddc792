//! The control plane's domain types: stored policies with their revisions, registered workloads,
//! services with their VIPs, and the immutable [`MeshView`] every reader works from.
//!
//! Policies are `serin_policy::TrafficPolicy` (the YAML schema of DESIGN.md) plus the bookkeeping
//! the wire API carries and the policy crate does not model (annotations, times).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serin_policy::TrafficPolicy;

/// The namespace used when a request leaves it empty.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `namespace` or [`DEFAULT_NAMESPACE`] when it is empty.
pub fn namespace_or_default(namespace: &str) -> String {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE.to_owned()
    } else {
        namespace.to_owned()
    }
}

/// Identity of a policy: (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyKey {
    /// Namespace of the policy and of its service.
    pub namespace: String,
    /// Policy name.
    pub name: String,
}

impl PolicyKey {
    /// A key, with "" read as the default namespace.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace_or_default(namespace),
            name: name.to_owned(),
        }
    }
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a user asks to store: the policy and the annotations the policy crate does not model.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyDraft {
    /// The policy; `metadata.generation` is ignored.
    pub policy: TrafficPolicy,
    /// User annotations, stored and returned as given.
    pub annotations: BTreeMap<String, String>,
}

impl PolicyDraft {
    /// The policy's key.
    pub fn key(&self) -> PolicyKey {
        PolicyKey::new(&self.policy.metadata.namespace, &self.policy.metadata.name)
    }
}

/// A policy as stored at one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// The policy, with `metadata.generation` set.
    pub policy: TrafficPolicy,
    /// User annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When this (namespace, name) was first created.
    pub create_time: SystemTime,
    /// When this generation was stored.
    pub update_time: SystemTime,
}

impl StoredPolicy {
    /// The stored generation.
    pub fn generation(&self) -> u64 {
        self.policy.metadata.generation.unwrap_or(0)
    }

    /// The policy's key.
    pub fn key(&self) -> PolicyKey {
        PolicyKey::new(&self.policy.metadata.namespace, &self.policy.metadata.name)
    }

    /// The service the policy governs.
    pub fn service(&self) -> &str {
        &self.policy.spec.service
    }

    /// True when `draft` would store nothing new: same spec, labels and annotations.
    pub fn same_content(&self, draft: &PolicyDraft) -> bool {
        self.policy.spec == draft.policy.spec
            && labels(&self.policy) == labels(&draft.policy)
            && self.annotations == draft.annotations
    }
}

fn labels(policy: &TrafficPolicy) -> Option<&BTreeMap<String, String>> {
    policy.metadata.labels.as_ref().filter(|l| !l.is_empty())
}

/// Which call made a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeCause {
    /// ApplyPolicy.
    Apply,
    /// SetWeights.
    SetWeights,
    /// Promote.
    Promote,
    /// Rollback.
    Rollback,
    /// DeletePolicy: the policy does not exist from this generation on.
    Delete,
}

/// One stored generation of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// The generation number.
    pub generation: u64,
    /// Which call made it.
    pub cause: ChangeCause,
    /// When it was stored.
    pub time: SystemTime,
    /// For a rollback: the generation whose content was restored; 0 otherwise.
    pub restored_generation: u64,
    /// The policy at this generation (for a delete: as it was just before).
    pub policy: StoredPolicy,
}

impl Revision {
    /// True for a deletion record.
    pub fn is_delete(&self) -> bool {
        self.cause == ChangeCause::Delete
    }
}

/// Protocol of a port (the wire enum, as a domain type).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Protocol {
    /// Detected per connection by the sidecar.
    #[default]
    Unspecified,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

/// A port a workload serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadPort {
    /// Port name, "" for a single unnamed port.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Protocol spoken on it.
    pub protocol: Protocol,
}

/// Identity of a workload: (namespace, pod name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadKey {
    /// Namespace.
    pub namespace: String,
    /// Pod (workload) name.
    pub pod_name: String,
}

/// One endpoint of one service: a workload registered without a Kubernetes API, or (Kubernetes
/// mode) an endpoint of an EndpointSlice with its pod's labels. A pod behind two Services is two
/// of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// Workload name, unique in the namespace.
    pub pod_name: String,
    /// Namespace of the workload and its service.
    pub namespace: String,
    /// Its addresses, at most one per family.
    pub addresses: Vec<IpAddr>,
    /// Service it serves.
    pub service: String,
    /// Version label ("" for unversioned).
    pub version: String,
    /// Ports it listens on.
    pub ports: Vec<WorkloadPort>,
    /// Labels, including `version` when set.
    pub labels: BTreeMap<String, String>,
    /// Service account; informational.
    pub service_account: String,
    /// Host that runs it.
    pub node_name: String,
    /// SPIFFE ID its sidecar holds a certificate for ("" until the certificate authority signed
    /// one): peers then reach it over mTLS.
    #[serde(default)]
    pub identity: String,
    /// Ready to take new requests. A registration is ready while its lease lives (it is removed
    /// when the lease runs out); an EndpointSlice endpoint is ready when its `ready` condition
    /// says so (a terminating one is not: it drains).
    #[serde(default = "ready_by_default")]
    pub ready: bool,
}

fn ready_by_default() -> bool {
    true
}

impl Workload {
    /// The workload's key.
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            pod_name: self.pod_name.clone(),
        }
    }

    /// Its key in [`MeshView::workloads`].
    pub fn endpoint_key(&self) -> EndpointKey {
        EndpointKey {
            namespace: self.namespace.clone(),
            service: self.service.clone(),
            pod_name: self.pod_name.clone(),
        }
    }

    /// The key of its service.
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.service.clone(),
        }
    }
}

/// Identity of one endpoint of one service: (namespace, service, pod name). A pod behind several
/// Services has one endpoint in each.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EndpointKey {
    /// Namespace of the service and the pod.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Pod (workload) name.
    pub pod_name: String,
}

/// A workload under a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The workload.
    pub workload: Workload,
    /// Opaque lease id.
    pub lease_id: String,
    /// Lease length granted.
    pub ttl: Duration,
    /// When the lease runs out unless renewed (wall clock, so that it survives restarts).
    pub expires_at: SystemTime,
    /// The secret its sidecar presents to get a workload certificate (Identity service).
    #[serde(default)]
    pub bootstrap_token: String,
}

/// Identity of a service: (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A port of a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    /// Port on the VIP.
    pub port: u16,
    /// Port name.
    pub name: String,
    /// Protocol.
    pub protocol: Protocol,
    /// A numeric target port (Kubernetes Services); 0 when the endpoints' ports say it.
    #[serde(default)]
    pub target_port: u16,
}

/// A service, created by the first registration of one of its workloads and kept (with its VIP)
/// after its workloads leave, as a Kubernetes Service outlives its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Virtual IPs: in the embedded registry one IPv4 address from the service range, allocated
    /// once; in Kubernetes mode the Service's ClusterIPs (both families for dual-stack, none for a
    /// headless Service). Stored records of the embedded mode that hold one `vip` read as one.
    #[serde(alias = "vip", deserialize_with = "one_or_more_ips")]
    pub vips: Vec<IpAddr>,
    /// Ports, from its workloads' ports.
    pub ports: Vec<ServicePort>,
}

/// `"10.96.0.3"` (a record stored before services had several VIPs) or a list.
fn one_or_more_ips<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(IpAddr),
        More(Vec<IpAddr>),
    }
    Ok(match OneOrMore::deserialize(d)? {
        OneOrMore::One(ip) => vec![ip],
        OneOrMore::More(ips) => ips,
    })
}

impl ServiceRecord {
    /// The names the service answers to.
    pub fn hostnames(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            format!("{}.{}", self.name, self.namespace),
            format!("{}.{}.svc.cluster.local", self.name, self.namespace),
        ]
    }
}

/// Endpoint counts of one version of a service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionCounts {
    /// Endpoints that are ready (a live lease, or ready in their EndpointSlice).
    pub ready: u32,
    /// All endpoints.
    pub total: u32,
}

/// The whole mesh at one moment: what the writer publishes after every change. Immutable;
/// readers hold an `Arc` of it for as long as they need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshView {
    /// Live (not deleted) policies at their current generation.
    pub policies: BTreeMap<PolicyKey, Arc<StoredPolicy>>,
    /// Services.
    pub services: BTreeMap<ServiceKey, Arc<ServiceRecord>>,
    /// Endpoints by (namespace, service, pod): registered workloads with a live lease (lease
    /// times stay with the writer, so that a renewal changes nothing readers see), or the
    /// cluster's endpoints in Kubernetes mode.
    pub workloads: BTreeMap<EndpointKey, Arc<Workload>>,
    /// The mTLS modes.
    pub mtls: MtlsModes,
    /// Private namespaces: their services, endpoints and policies go only to sidecars of the
    /// same namespace on the mTLS port (every other namespace is public).
    pub private_namespaces: BTreeSet<String>,
}

/// Whether a namespace's sidecars accept plain connections from other pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// Plain and mTLS.
    Permissive,
    /// mTLS only.
    Strict,
}

/// The mTLS modes: mesh-wide (unset: permissive) and per namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MtlsModes {
    /// The mode of namespaces without their own.
    pub default: Option<MtlsMode>,
    /// Namespaces with their own mode.
    pub namespaces: BTreeMap<String, MtlsMode>,
}

impl MtlsModes {
    /// Sets (`Some`) or clears (`None`) the mode of `namespace`, or the mesh-wide one for "".
    pub fn set(&mut self, namespace: &str, mode: Option<MtlsMode>) {
        match (namespace.is_empty(), mode) {
            (true, mode) => self.default = mode,
            (false, Some(mode)) => {
                self.namespaces.insert(namespace.to_owned(), mode);
            }
            (false, None) => {
                self.namespaces.remove(namespace);
            }
        }
    }
}

impl MeshView {
    /// What a sidecar of `namespace` may see: everything of its own namespace and of every
    /// public namespace (services, endpoints, policies); the mTLS modes are all kept (a client
    /// needs the mode of every destination).
    pub fn visible_to(&self, namespace: &str) -> MeshView {
        let visible = |ns: &str| ns == namespace || !self.private_namespaces.contains(ns);
        MeshView {
            policies: self
                .policies
                .iter()
                .filter(|(k, _)| visible(&k.namespace))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            services: self
                .services
                .iter()
                .filter(|(k, _)| visible(&k.namespace))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            workloads: self
                .workloads
                .iter()
                .filter(|(k, _)| visible(&k.namespace))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mtls: self.mtls.clone(),
            private_namespaces: self.private_namespaces.clone(),
        }
    }

    /// The live policy that governs `service` in `namespace`.
    pub fn policy_for_service(&self, namespace: &str, service: &str) -> Option<&Arc<StoredPolicy>> {
        self.policies
            .values()
            .find(|p| p.policy.metadata.namespace == namespace && p.service() == service)
    }

    /// Endpoint counts per version of a service.
    pub fn versions(&self, namespace: &str, service: &str) -> BTreeMap<String, VersionCounts> {
        let mut out: BTreeMap<String, VersionCounts> = BTreeMap::new();
        for w in self.workloads_of(namespace, service) {
            let c = out.entry(w.version.clone()).or_default();
            c.ready += u32::from(w.ready);
            c.total += 1;
        }
        out
    }

    /// The versions of a service that have pods, for validation warnings.
    pub fn known_versions(&self, namespace: &str, service: &str) -> BTreeSet<String> {
        self.workloads_of(namespace, service)
            .map(|w| w.version.clone())
            .collect()
    }

    /// The workloads of a service.
    pub fn workloads_of<'a>(
        &'a self,
        namespace: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> + 'a {
        let first = EndpointKey {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            pod_name: String::new(),
        };
        self.workloads
            .range(first..)
            .take_while(move |(k, _)| k.namespace == namespace && k.service == service)
            .map(|(_, w)| w)
    }
}
