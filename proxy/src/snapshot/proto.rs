//! Conversions from the `serin.v1` wire types into the domain model, each error naming the
//! resource and the field at fault.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use serin_proto::v1;

use serin_policy::TrafficPolicy;

use super::{
    Endpoint, MeshTls, MtlsMode, Policy, Protocol, Service, ServiceEndpoints, ServicePort, Snapshot,
};

/// A snapshot field the proxy cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {resource}: {field}: {reason}")]
pub struct InvalidSnapshot {
    /// The resource: `service default/reviews`, `endpoints default/reviews`,
    /// `policy default/reviews`.
    pub resource: String,
    /// Path of the field inside the resource, e.g. `ports[1].port`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(resource: &str, field: impl Into<String>, reason: impl Into<String>) -> InvalidSnapshot {
    InvalidSnapshot {
        resource: resource.to_owned(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn port(resource: &str, field: &str, value: u32, required: bool) -> Result<u16, InvalidSnapshot> {
    match u16::try_from(value) {
        Ok(0) if required => Err(invalid(resource, field, "must be set (1..=65535)")),
        Ok(p) => Ok(p),
        Err(_) => Err(invalid(
            resource,
            field,
            format!("{value} is not a port (1..=65535)"),
        )),
    }
}

fn ip(resource: &str, field: &str, text: &str) -> Result<IpAddr, InvalidSnapshot> {
    text.parse()
        .map_err(|_| invalid(resource, field, format!("{text:?} is not an IP address")))
}

impl TryFrom<i32> for Protocol {
    type Error = String;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match v1::Protocol::try_from(value) {
            Ok(v1::Protocol::Unspecified) => Ok(Protocol::Detect),
            Ok(v1::Protocol::Http1) => Ok(Protocol::Http1),
            Ok(v1::Protocol::Http2) => Ok(Protocol::Http2),
            Ok(v1::Protocol::Grpc) => Ok(Protocol::Grpc),
            Ok(v1::Protocol::Tcp) => Ok(Protocol::Tcp),
            Err(_) => Err(format!("unknown protocol {value}")),
        }
    }
}

impl TryFrom<v1::Service> for Service {
    type Error = InvalidSnapshot;

    fn try_from(s: v1::Service) -> Result<Self, Self::Error> {
        let resource = format!("service {}/{}", s.namespace, s.name);
        if s.name.is_empty() {
            return Err(invalid(&resource, "name", "must be set"));
        }
        if s.namespace.is_empty() {
            return Err(invalid(&resource, "namespace", "must be set"));
        }
        let vips = s
            .vips
            .iter()
            .enumerate()
            .map(|(i, v)| ip(&resource, &format!("vips[{i}]"), v))
            .collect::<Result<Vec<_>, _>>()?;
        let mut seen = HashSet::new();
        let mut ports = Vec::with_capacity(s.ports.len());
        for (i, p) in s.ports.into_iter().enumerate() {
            let number = port(&resource, &format!("ports[{i}].port"), p.port, true)?;
            if !seen.insert(number) {
                return Err(invalid(
                    &resource,
                    format!("ports[{i}].port"),
                    format!("port {number} is listed twice"),
                ));
            }
            ports.push(ServicePort {
                port: number,
                name: p.name,
                protocol: Protocol::try_from(p.protocol)
                    .map_err(|reason| invalid(&resource, format!("ports[{i}].protocol"), reason))?,
                target_port: port(
                    &resource,
                    &format!("ports[{i}].targetPort"),
                    p.target_port,
                    false,
                )?,
            });
        }
        Ok(Service {
            name: s.name,
            namespace: s.namespace,
            vips,
            hostnames: s.hostnames,
            ports,
            labels: s.labels.into_iter().collect(),
        })
    }
}

fn endpoint(resource: &str, i: usize, e: v1::Endpoint) -> Result<Endpoint, InvalidSnapshot> {
    let field = |f: &str| format!("endpoints[{i}].{f}");
    if e.addresses.is_empty() {
        return Err(invalid(
            resource,
            field("addresses"),
            "at least one address is required",
        ));
    }
    let addresses = e
        .addresses
        .iter()
        .enumerate()
        .map(|(j, a)| ip(resource, &field(&format!("addresses[{j}]")), a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = BTreeMap::new();
    for (j, p) in e.ports.into_iter().enumerate() {
        let number = port(resource, &field(&format!("ports[{j}].port")), p.port, true)?;
        ports.insert(p.name, number);
    }
    Ok(Endpoint {
        addresses,
        ports,
        pod_name: e.pod_name,
        version: e.version,
        labels: e.labels.into_iter().collect(),
        ready: e.ready,
        weight: e.weight.max(1),
        identity: e.identity,
    })
}

impl TryFrom<v1::ServiceEndpoints> for ServiceEndpoints {
    type Error = InvalidSnapshot;

    fn try_from(s: v1::ServiceEndpoints) -> Result<Self, Self::Error> {
        let resource = format!("endpoints {}/{}", s.namespace, s.service);
        if s.service.is_empty() {
            return Err(invalid(&resource, "service", "must be set"));
        }
        let endpoints = s
            .endpoints
            .into_iter()
            .enumerate()
            .map(|(i, e)| endpoint(&resource, i, e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServiceEndpoints {
            service: s.service,
            namespace: s.namespace,
            endpoints,
        })
    }
}

impl TryFrom<v1::TrafficPolicy> for Policy {
    type Error = InvalidSnapshot;

    /// Converts, validates and compiles a policy. Every validation error is named: the first
    /// one's path is the `field`, the others follow it in the reason.
    fn try_from(p: v1::TrafficPolicy) -> Result<Self, Self::Error> {
        let resource = {
            let meta = p.metadata.as_ref();
            format!(
                "policy {}/{}",
                meta.map_or("", |m| m.namespace.as_str()),
                meta.map_or("", |m| m.name.as_str())
            )
        };
        let policy =
            TrafficPolicy::try_from(p).map_err(|e| invalid(&resource, e.field, e.reason))?;
        Policy::new(policy).map_err(|errors| {
            let mut reason = errors
                .first()
                .map(|e| e.kind.to_string())
                .unwrap_or_default();
            for e in errors.iter().skip(1) {
                reason.push_str(&format!("; also {}: {}", e.path, e.kind));
            }
            let field = errors.first().map(|e| e.path.clone()).unwrap_or_default();
            invalid(&resource, field, reason)
        })
    }
}

/// The error for a second policy of one service (or a policy name listed twice).
pub(crate) fn duplicate_policy(p: &Policy, taken: &[Policy]) -> Option<InvalidSnapshot> {
    let resource = format!("policy {}/{}", p.namespace(), p.name());
    taken.iter().find_map(|q| {
        if q.namespace() == p.namespace() && q.name() == p.name() {
            Some(invalid(
                &resource,
                "metadata.name",
                "listed twice in the snapshot",
            ))
        } else if q.namespace() == p.namespace() && q.service() == p.service() {
            Some(invalid(
                &resource,
                "spec.service",
                format!(
                    "service {}/{} is already routed by policy {}; one policy per service",
                    p.namespace(),
                    p.service(),
                    q.name()
                ),
            ))
        } else {
            None
        }
    })
}

/// A mode as the wire gives it: unknown numbers read as not set.
fn mtls_mode(mode: i32) -> Option<MtlsMode> {
    match v1::MtlsMode::try_from(mode).unwrap_or_default() {
        v1::MtlsMode::Unspecified => None,
        v1::MtlsMode::Permissive => Some(MtlsMode::Permissive),
        v1::MtlsMode::Strict => Some(MtlsMode::Strict),
    }
}

impl From<v1::MeshTls> for MeshTls {
    fn from(m: v1::MeshTls) -> Self {
        MeshTls {
            default_mode: mtls_mode(m.default_mode).unwrap_or_default(),
            namespaces: m
                .namespaces
                .into_iter()
                .filter_map(|(ns, mode)| Some((ns, mtls_mode(mode)?)))
                .collect(),
        }
    }
}

impl Snapshot {
    /// Converts a wire snapshot of version `version`, rejecting it whole at the first invalid
    /// field. (Per-resource NACKs belong to the discovery client, which can convert resource by
    /// resource with the `TryFrom` impls above.)
    pub fn from_proto(version: String, s: v1::Snapshot) -> Result<Snapshot, InvalidSnapshot> {
        let services = s
            .services
            .into_iter()
            .map(Service::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut keys = HashSet::new();
        for svc in &services {
            if !keys.insert((svc.namespace.as_str(), svc.name.as_str())) {
                let resource = format!("service {}/{}", svc.namespace, svc.name);
                return Err(invalid(&resource, "name", "listed twice in the snapshot"));
            }
        }
        let endpoints = s
            .endpoints
            .into_iter()
            .map(ServiceEndpoints::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let mut policies: Vec<Policy> = Vec::with_capacity(s.policies.len());
        for p in s.policies {
            let policy = Policy::try_from(p)?;
            if let Some(e) = duplicate_policy(&policy, &policies) {
                return Err(e);
            }
            policies.push(policy);
        }
        Ok(Snapshot {
            version,
            services,
            endpoints,
            policies,
            mtls: s.mtls.map(MeshTls::from).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn service() -> v1::Service {
        v1::Service {
            name: "reviews".into(),
            namespace: "default".into(),
            vips: vec!["10.96.0.10".into(), "fd00:10:96::10".into()],
            ports: vec![v1::ServicePort {
                port: 9080,
                name: "http".into(),
                protocol: v1::Protocol::Http1 as i32,
                target_port: 8080,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn converts_a_valid_service() {
        let s = Service::try_from(service()).unwrap();
        assert_eq!(s.vips.len(), 2);
        assert_eq!(s.port(9080).unwrap().protocol, Protocol::Http1);
        assert_eq!(s.port(9080).unwrap().target_port, 8080);
    }

    #[test]
    fn errors_name_the_resource_and_field() {
        let mut bad = service();
        bad.vips[1] = "not-an-ip".into();
        let err = Service::try_from(bad).unwrap_err();
        assert_eq!(err.field, "vips[1]");
        assert_eq!(
            err.to_string(),
            "invalid service default/reviews: vips[1]: \"not-an-ip\" is not an IP address"
        );

        let mut bad = service();
        bad.ports[0].port = 70000;
        assert_eq!(Service::try_from(bad).unwrap_err().field, "ports[0].port");

        let mut bad = service();
        bad.ports[0].protocol = 42;
        assert_eq!(
            Service::try_from(bad).unwrap_err().field,
            "ports[0].protocol"
        );

        let eps = v1::ServiceEndpoints {
            service: "reviews".into(),
            namespace: "default".into(),
            endpoints: vec![v1::Endpoint::default()],
        };
        let err = ServiceEndpoints::try_from(eps).unwrap_err();
        assert_eq!(err.field, "endpoints[0].addresses");
    }

    #[test]
    fn endpoint_ports_resolve_by_name_then_target_port() {
        let s = Service::try_from(service()).unwrap();
        let port = s.port(9080).unwrap();
        let mut ep = endpoint(
            "x",
            0,
            v1::Endpoint {
                addresses: vec!["10.244.0.5".into(), "fd00:10:244::5".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(ep.port_for(port), 8080);
        assert_eq!(ep.weight, 1);
        ep.ports.insert("http".into(), 9999);
        assert_eq!(ep.port_for(port), 9999);
        assert_eq!(
            ep.address_for("fd00:10:96::10".parse().unwrap()),
            ep.addresses[1]
        );
        assert_eq!(
            ep.address_for("10.96.0.10".parse().unwrap()),
            ep.addresses[0]
        );
    }

    pub(crate) fn wire_policy(name: &str, service: &str) -> v1::TrafficPolicy {
        v1::TrafficPolicy {
            metadata: Some(v1::PolicyMetadata {
                name: name.into(),
                namespace: "default".into(),
                generation: 3,
                ..Default::default()
            }),
            spec: Some(v1::TrafficPolicySpec {
                service: service.into(),
                default: Some(v1::DefaultRoute {
                    route: vec![
                        v1::VersionWeight {
                            version: "v1".into(),
                            weight: 80,
                        },
                        v1::VersionWeight {
                            version: "v2".into(),
                            weight: 20,
                        },
                    ],
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn policies_are_validated_and_compiled_once() {
        let p = Policy::try_from(wire_policy("reviews", "reviews")).unwrap();
        assert_eq!(p.compiled.service(), "reviews");
        assert_eq!(p.compiled.generation(), Some(3));
        assert_eq!(p.policy.spec.default.route.len(), 2);

        let mut bad = wire_policy("reviews", "reviews");
        let spec = bad.spec.as_mut().unwrap();
        spec.mirror = Some(v1::Mirror {
            version: "v2".into(),
            percent: 120.0,
        });
        spec.rules.push(v1::Rule {
            name: "r".into(),
            r#match: vec![v1::MatchBlock {
                uri: Some(v1::UriMatch {
                    kind: Some(v1::uri_match::Kind::Regex("(".into())),
                    ignore_case: false,
                }),
                ..Default::default()
            }],
            route: vec![v1::VersionWeight {
                version: "v3".into(),
                weight: 1,
            }],
        });
        let err = Policy::try_from(bad).unwrap_err();
        assert_eq!(err.resource, "policy default/reviews");
        assert_eq!(err.field, "spec.rules[0].match[0].uri.regex", "{err}");
        assert!(err.reason.contains("; also spec.mirror.percent: "), "{err}");

        let mut bad = wire_policy("reviews", "reviews");
        bad.spec.as_mut().unwrap().rules.push(v1::Rule {
            name: "r".into(),
            r#match: vec![v1::MatchBlock {
                uri: Some(v1::UriMatch {
                    kind: Some(v1::uri_match::Kind::Prefix("/a".into())),
                    ignore_case: true,
                }),
                ..Default::default()
            }],
            route: vec![],
        });
        let err = Policy::try_from(bad).unwrap_err();
        assert_eq!(err.field, "spec.rules[0].match[0].uri.ignoreCase");
    }

    #[test]
    fn a_second_policy_for_one_service_is_rejected() {
        let snapshot = v1::Snapshot {
            policies: vec![
                wire_policy("reviews", "reviews"),
                wire_policy("reviews-canary", "reviews"),
            ],
            ..Default::default()
        };
        let err = Snapshot::from_proto("1".into(), snapshot).unwrap_err();
        assert_eq!(err.resource, "policy default/reviews-canary");
        assert_eq!(err.field, "spec.service");
    }

    #[test]
    fn duplicate_services_are_rejected() {
        let snapshot = v1::Snapshot {
            services: vec![service(), service()],
            ..Default::default()
        };
        let err = Snapshot::from_proto("1".into(), snapshot).unwrap_err();
        assert_eq!(err.resource, "service default/reviews");
    }
}
