//! The registry as the API server describes it: Services (ClusterIPs are the VIPs, ports with
//! their protocol from `appProtocol` or the name prefix), EndpointSlices (the endpoints and their
//! readiness) and Pods (the `version` label, the service account, the injected sidecar), turned into one immutable [`ClusterView`]. Pure: the
//! watchers in [`super::watch`] feed it what their reflectors hold.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::inject::config::STATUS_ANNOTATION;
use crate::model::{Protocol, ServiceKey};

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The pod label that names a version.
pub const VERSION_LABEL: &str = "version";

/// A port of a Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterServicePort {
    /// Port on the ClusterIPs.
    pub port: u16,
    /// Port name ("" for a single unnamed port).
    pub name: String,
    /// From `appProtocol`, else the name's prefix (`http-`, `http2-`, `grpc-`, `tcp-`).
    pub protocol: Protocol,
    /// A numeric `targetPort`; 0 when it is named (the endpoints' ports resolve it) or absent.
    pub target_port: u16,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterService {
    /// Namespace and name.
    pub key: ServiceKey,
    /// ClusterIPs (both families for dual-stack); empty for a headless Service.
    pub vips: Vec<IpAddr>,
    /// TCP ports (UDP and SCTP ports are not proxied).
    pub ports: Vec<ClusterServicePort>,
    /// The Service's labels.
    pub labels: BTreeMap<String, String>,
}

/// One endpoint (a pod, usually) of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEndpoint {
    /// The pod's name (or the endpoint's hostname or address when it is no pod).
    pub pod_name: String,
    /// Its addresses, IPv4 and IPv6 slices merged.
    pub addresses: Vec<IpAddr>,
    /// Ports by service port name.
    pub ports: BTreeMap<String, u16>,
    /// The pod's `version` label ("" when unversioned or not a pod).
    pub version: String,
    /// The pod's labels.
    pub labels: BTreeMap<String, String>,
    /// `conditions.ready` (absent counts as ready, as the API says).
    pub ready: bool,
    /// The pod's service account.
    pub service_account: String,
    /// The node it runs on.
    pub node_name: String,
    /// The pod carries the injected sidecar (the `sidecar.serin.io/status` annotation): it
    /// speaks mTLS with the identity of its service account.
    pub injected: bool,
}

/// Everything the registry knows at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Services by key.
    pub services: BTreeMap<ServiceKey, ClusterService>,
    /// Endpoints by service, sorted by pod name.
    pub endpoints: BTreeMap<ServiceKey, Vec<ClusterEndpoint>>,
}

/// The protocol a Service port declares: `appProtocol` first, then the port name's prefix.
pub fn port_protocol(app_protocol: Option<&str>, name: &str) -> Protocol {
    let by_word = |word: &str| match word.to_ascii_lowercase().as_str() {
        "http" | "http1" => Some(Protocol::Http1),
        "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        // TLS is opaque to the sidecar.
        "tcp" | "https" | "tls" | "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Protocol::Tcp),
        _ => None,
    };
    app_protocol
        .and_then(by_word)
        .or_else(|| by_word(name.split('-').next().unwrap_or("")))
        .unwrap_or(Protocol::Unspecified)
}

fn service(svc: &Service) -> Option<ClusterService> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let key = ServiceKey {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone()?,
    };
    let ips = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default();
    let vips = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let name = p.name.clone().unwrap_or_default();
            Some(ClusterServicePort {
                port: u16::try_from(p.port).ok()?,
                protocol: port_protocol(p.app_protocol.as_deref(), &name),
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => u16::try_from(*n).unwrap_or(0),
                    _ => 0,
                },
                name,
            })
        })
        .collect();
    Some(ClusterService {
        key,
        vips,
        ports,
        labels: svc.metadata.labels.clone().unwrap_or_default(),
    })
}

/// Builds the view from what the reflectors hold. Endpoints of unknown Services are kept (the
/// Service may arrive a moment later); EndpointSlices of other address types (FQDN) are skipped.
pub fn build(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pods: &[Arc<Pod>],
) -> ClusterView {
    let mut view = ClusterView::default();
    for svc in services.iter().filter_map(|s| service(s)) {
        view.services.insert(svc.key.clone(), svc);
    }
    let pods: BTreeMap<(&str, &str), &Pod> = pods
        .iter()
        .filter_map(|p| {
            Some((
                (
                    p.metadata.namespace.as_deref()?,
                    p.metadata.name.as_deref()?,
                ),
                p.as_ref(),
            ))
        })
        .collect();
    // (service, pod name) → endpoint, so that a dual-stack pod's two slices make one endpoint.
    let mut merged: BTreeMap<(ServiceKey, String), ClusterEndpoint> = BTreeMap::new();
    for slice in slices {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let key = ServiceKey {
            namespace: namespace.clone(),
            name: service.clone(),
        };
        let ports: BTreeMap<String, u16> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some((
                    p.name.clone().unwrap_or_default(),
                    u16::try_from(p.port?).ok()?,
                ))
            })
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            let addresses: Vec<IpAddr> =
                ep.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            let Some(first) = addresses.first() else {
                continue;
            };
            let pod_name = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone())
                .or_else(|| ep.hostname.clone())
                .unwrap_or_else(|| first.to_string());
            let pod = pods.get(&(namespace.as_str(), pod_name.as_str())).copied();
            let labels = pod
                .and_then(|p| p.metadata.labels.clone())
                .unwrap_or_default();
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let entry = merged
                .entry((key.clone(), pod_name.clone()))
                .or_insert_with(|| ClusterEndpoint {
                    pod_name: pod_name.clone(),
                    addresses: Vec::new(),
                    ports: ports.clone(),
                    version: labels.get(VERSION_LABEL).cloned().unwrap_or_default(),
                    labels,
                    ready,
                    service_account: pod
                        .and_then(|p| p.spec.as_ref())
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                    node_name: ep.node_name.clone().unwrap_or_default(),
                    injected: pod
                        .and_then(|p| p.metadata.annotations.as_ref())
                        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION)),
                });
            entry.ready &= ready;
            for a in addresses {
                if !entry.addresses.contains(&a) {
                    entry.addresses.push(a);
                }
            }
            entry.addresses.sort();
        }
    }
    for ((key, _), ep) in merged {
        view.endpoints.entry(key).or_default().push(ep);
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Arc<Service> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn protocols_come_from_app_protocol_then_the_name() {
        assert_eq!(
            port_protocol(Some("kubernetes.io/h2c"), "web"),
            Protocol::Http2
        );
        assert_eq!(port_protocol(Some("grpc"), "http-x"), Protocol::Grpc);
        assert_eq!(port_protocol(None, "http-web"), Protocol::Http1);
        assert_eq!(port_protocol(None, "grpc"), Protocol::Grpc);
        assert_eq!(port_protocol(None, "tcp-db"), Protocol::Tcp);
        assert_eq!(
            port_protocol(Some("weird"), "metrics"),
            Protocol::Unspecified
        );
    }

    #[test]
    fn services_slices_and_pods_make_one_view() {
        let services = [
            svc(
                json!({"metadata": {"name": "reviews", "namespace": "shop"}, "spec": {
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                "ports": [
                    {"name": "http", "port": 9080, "targetPort": 8080},
                    {"name": "grpc-api", "port": 9090, "targetPort": "api"},
                    {"name": "dns", "port": 53, "protocol": "UDP"}
                ]}}),
            ),
            svc(
                json!({"metadata": {"name": "db", "namespace": "shop"}, "spec": {"clusterIP": "None", "ports": [{"port": 5432}]}}),
            ),
            svc(
                json!({"metadata": {"name": "ext", "namespace": "shop"}, "spec": {"type": "ExternalName", "externalName": "example.com"}}),
            ),
        ];
        let slice = |family: &str,
                     addr: &str,
                     pod: &str,
                     ready: Option<bool>|
         -> Arc<EndpointSlice> {
            Arc::new(serde_json::from_value(json!({
                "metadata": {"name": format!("reviews-{family}-{pod}"), "namespace": "shop",
                             "labels": {"kubernetes.io/service-name": "reviews"}},
                "addressType": family,
                "ports": [{"name": "http", "port": 8080}, {"name": "grpc-api", "port": 7070}],
                "endpoints": [{"addresses": [addr], "conditions": {"ready": ready},
                               "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}}]
            })).unwrap())
        };
        let slices = [
            slice("IPv4", "10.244.0.7", "reviews-v1-a", Some(true)),
            slice("IPv6", "fd00::7", "reviews-v1-a", None),
            slice("IPv4", "10.244.0.8", "reviews-v2-b", Some(false)),
        ];
        let pods = [
            Arc::new(serde_json::from_value::<Pod>(json!({"metadata": {"name": "reviews-v1-a", "namespace": "shop", "labels": {"app": "reviews", "version": "v1"}, "annotations": {"sidecar.serin.io/status": "injected"}}, "spec": {"containers": [], "serviceAccountName": "bookinfo"}})).unwrap()),
            Arc::new(serde_json::from_value::<Pod>(json!({"metadata": {"name": "reviews-v2-b", "namespace": "shop", "labels": {"app": "reviews", "version": "v2"}}, "spec": {"containers": []}})).unwrap()),
        ];
        let view = build(&services, &slices, &pods);
        let key = |n: &str| ServiceKey {
            namespace: "shop".into(),
            name: n.into(),
        };
        let reviews = &view.services[&key("reviews")];
        assert_eq!(
            reviews.vips,
            [
                "10.96.0.10".parse::<IpAddr>().unwrap(),
                "fd00::10".parse().unwrap()
            ]
        );
        assert_eq!(reviews.ports.len(), 2, "the UDP port is not proxied");
        assert_eq!(
            (reviews.ports[0].protocol, reviews.ports[0].target_port),
            (Protocol::Http1, 8080)
        );
        assert_eq!(
            (reviews.ports[1].protocol, reviews.ports[1].target_port),
            (Protocol::Grpc, 0)
        );
        assert!(view.services[&key("db")].vips.is_empty(), "headless");
        assert!(!view.services.contains_key(&key("ext")));
        let eps = &view.endpoints[&key("reviews")];
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].pod_name, "reviews-v1-a");
        assert_eq!(eps[0].addresses.len(), 2, "the dual-stack slices merge");
        assert_eq!((eps[0].version.as_str(), eps[0].ready), ("v1", true));
        assert_eq!(eps[0].service_account, "bookinfo");
        assert!(eps[0].injected && !eps[1].injected);
        assert_eq!(eps[0].ports["grpc-api"], 7070);
        assert_eq!((eps[1].version.as_str(), eps[1].ready), ("v2", false));
    }
}
