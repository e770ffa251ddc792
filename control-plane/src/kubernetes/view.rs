//! Kubernetes mode's [`MeshView`]: the registry ([`ClusterView`]) and the policies
//! ([`ClusterPolicies`]) as the same view the embedded mode publishes, so that the snapshot
//! publisher, the Admin reads, the dashboard and the topology work unchanged. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use serin_policy::TrafficPolicy;

use super::cluster::ClusterView;
use super::policies::{ClusterPolicies, PolicyObject};
use super::settings::MeshSettings;
use crate::model::{
    ChangeCause, MeshView, PolicyKey, Revision, ServicePort, ServiceRecord, StoredPolicy, Workload,
    WorkloadPort,
};

/// What each TrafficPolicy object amounts to: the policy that serves, or why it does not (its
/// validation error, or another policy that already governs its service: the first by
/// namespace and name wins, as the embedded store refuses the second).
pub fn effective(
    policies: &ClusterPolicies,
) -> BTreeMap<PolicyKey, Result<&TrafficPolicy, String>> {
    let mut governed: BTreeMap<(&str, &str), &PolicyKey> = BTreeMap::new();
    policies
        .by_key
        .iter()
        .map(|(key, object)| {
            let outcome = match &object.policy {
                Err(e) => Err(e.clone()),
                Ok(p) => match governed.get(&(key.namespace.as_str(), p.spec.service.as_str())) {
                    Some(first) => Err(format!(
                        "spec.service: service {}/{} is already governed by policy {first}; this one is ignored",
                        key.namespace, p.spec.service
                    )),
                    None => {
                        governed.insert((key.namespace.as_str(), p.spec.service.as_str()), key);
                        Ok(p)
                    }
                },
            };
            (key.clone(), outcome)
        })
        .collect()
}

/// The policy of `object` at its current generation, as the Admin API shows it.
pub fn stored(key: &PolicyKey, object: &PolicyObject, policy: &TrafficPolicy) -> StoredPolicy {
    let mut policy = policy.clone();
    policy.metadata.namespace = key.namespace.clone();
    policy.metadata.generation = Some(u64::try_from(object.generation).unwrap_or(0));
    let created = object.created.unwrap_or(SystemTime::UNIX_EPOCH);
    StoredPolicy {
        policy,
        annotations: object.annotations.clone(),
        create_time: created,
        update_time: object
            .change
            .as_ref()
            .filter(|c| c.generation == object.generation)
            .map_or(created, |c| c.time),
    }
}

/// The current generation of `object` as a history record.
pub fn current_revision(key: &PolicyKey, object: &PolicyObject) -> Option<Revision> {
    let policy = object.policy.as_ref().ok()?;
    let stored = stored(key, object, policy);
    let note = object
        .change
        .as_ref()
        .filter(|c| c.generation == object.generation);
    Some(Revision {
        generation: stored.generation(),
        // Written by someone else (kubectl): an apply.
        cause: note.map_or(ChangeCause::Apply, |c| c.cause),
        time: stored.update_time,
        restored_generation: note.map_or(0, |c| c.restored_generation),
        policy: stored,
    })
}

/// The whole view: Services with their ClusterIPs and ports, their endpoints (ready or not) with
/// the pods' versions, and the policies that serve. Endpoints whose pod carries the injected
/// sidecar are meshed with the identity of the pod's service account in `trust_domain` (the
/// sidecar gets its certificate for it with its projected service-account token). The mTLS
/// modes and the private namespaces are the `settings`.
pub fn mesh_view(
    cluster: &ClusterView,
    policies: &ClusterPolicies,
    settings: &MeshSettings,
    trust_domain: &str,
) -> MeshView {
    let mut view = MeshView {
        mtls: settings.mtls.clone(),
        private_namespaces: settings.private_namespaces.clone(),
        ..MeshView::default()
    };
    for (key, svc) in &cluster.services {
        view.services.insert(
            key.clone(),
            Arc::new(ServiceRecord {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                vips: svc.vips.clone(),
                ports: svc
                    .ports
                    .iter()
                    .map(|p| ServicePort {
                        port: p.port,
                        name: p.name.clone(),
                        protocol: p.protocol,
                        target_port: p.target_port,
                    })
                    .collect(),
            }),
        );
    }
    for (key, endpoints) in &cluster.endpoints {
        // Endpoints of a Service not seen yet wait for it: a proxy cannot place them.
        let Some(svc) = cluster.services.get(key) else {
            continue;
        };
        for ep in endpoints {
            let ports: BTreeSet<WorkloadPort> = ep
                .ports
                .iter()
                .map(|(name, port)| WorkloadPort {
                    name: name.clone(),
                    port: *port,
                    protocol: svc
                        .ports
                        .iter()
                        .find(|p| &p.name == name)
                        .map(|p| p.protocol)
                        .unwrap_or_default(),
                })
                .collect();
            let workload = Workload {
                pod_name: ep.pod_name.clone(),
                namespace: key.namespace.clone(),
                addresses: ep.addresses.clone(),
                service: key.name.clone(),
                version: ep.version.clone(),
                ports: ports.into_iter().collect(),
                labels: ep.labels.clone(),
                service_account: ep.service_account.clone(),
                node_name: ep.node_name.clone(),
                identity: if ep.injected {
                    crate::ca::spiffe_id(trust_domain, &key.namespace, &ep.service_account)
                } else {
                    String::new()
                },
                ready: ep.ready,
            };
            view.workloads
                .insert(workload.endpoint_key(), Arc::new(workload));
        }
    }
    for (key, outcome) in effective(policies) {
        if let (Ok(policy), Some(object)) = (outcome, policies.by_key.get(&key)) {
            view.policies
                .insert(key.clone(), Arc::new(stored(&key, object, policy)));
        }
    }
    view
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::cluster::{ClusterEndpoint, ClusterService, ClusterServicePort};
    use crate::model::{EndpointKey, Protocol, ServiceKey};

    fn policy(service: &str) -> TrafficPolicy {
        serde_yaml_ng::from_str(&format!(
            "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata: {{name: x, namespace: shop}}\nspec:\n  service: {service}\n  default: {{route: [{{version: v1, weight: 100}}]}}\n"
        ))
        .unwrap()
    }

    fn object(generation: i64, policy: Result<TrafficPolicy, String>) -> PolicyObject {
        PolicyObject {
            generation,
            policy,
            annotations: BTreeMap::new(),
            created: None,
            change: None,
            history: Vec::new(),
        }
    }

    #[test]
    fn the_cluster_becomes_a_mesh_view() {
        let reviews = ServiceKey {
            namespace: "shop".into(),
            name: "reviews".into(),
        };
        let ratings = ServiceKey {
            namespace: "shop".into(),
            name: "ratings".into(),
        };
        let mut cluster = ClusterView::default();
        cluster.services.insert(
            reviews.clone(),
            ClusterService {
                key: reviews.clone(),
                vips: vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()],
                ports: vec![ClusterServicePort {
                    port: 9080,
                    name: "http".into(),
                    protocol: Protocol::Http1,
                    target_port: 8080,
                }],
                labels: BTreeMap::new(),
            },
        );
        let endpoint = |pod: &str, version: &str, ready: bool| ClusterEndpoint {
            pod_name: pod.into(),
            addresses: vec!["10.244.0.7".parse().unwrap()],
            ports: [("http".to_owned(), 8080)].into(),
            version: version.into(),
            labels: BTreeMap::new(),
            ready,
            service_account: String::new(),
            node_name: String::new(),
            injected: pod == "a",
        };
        cluster.endpoints.insert(
            reviews.clone(),
            vec![endpoint("a", "v1", true), endpoint("b", "v2", false)],
        );
        // The same pod behind a second Service that is not listed yet: left out for now.
        cluster
            .endpoints
            .insert(ratings.clone(), vec![endpoint("a", "v1", true)]);
        let mut policies = ClusterPolicies::default();
        policies.by_key.insert(
            PolicyKey::new("shop", "a"),
            object(3, Ok(policy("reviews"))),
        );
        policies.by_key.insert(
            PolicyKey::new("shop", "b"),
            object(1, Ok(policy("reviews"))),
        );
        policies
            .by_key
            .insert(PolicyKey::new("shop", "c"), object(1, Err("bad".into())));

        let mut settings = MeshSettings::default();
        settings.private_namespaces.insert("bank".into());
        settings
            .mtls
            .set("shop", Some(crate::model::MtlsMode::Strict));
        let view = mesh_view(&cluster, &policies, &settings, "cluster.local");
        assert_eq!(view.mtls, settings.mtls);
        assert_eq!(view.private_namespaces, settings.private_namespaces);
        assert_eq!(view.services[&reviews].vips.len(), 2);
        assert_eq!(view.services[&reviews].ports[0].target_port, 8080);
        let versions = view.versions("shop", "reviews");
        assert_eq!((versions["v1"].ready, versions["v1"].total), (1, 1));
        assert_eq!((versions["v2"].ready, versions["v2"].total), (0, 1));
        let a = &view.workloads[&EndpointKey {
            namespace: "shop".into(),
            service: "reviews".into(),
            pod_name: "a".into(),
        }];
        assert_eq!(a.ports[0].protocol, Protocol::Http1);
        assert_eq!(a.identity, "spiffe://cluster.local/ns/shop/sa/default");
        let b = &view.workloads[&EndpointKey {
            namespace: "shop".into(),
            service: "reviews".into(),
            pod_name: "b".into(),
        }];
        assert_eq!(b.identity, "", "a pod without the sidecar is plain");
        assert_eq!(view.workloads.len(), 2, "ratings has no Service yet");
        assert_eq!(
            view.policies
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["a"],
            "the second policy of a service and the invalid one do not serve"
        );
        assert_eq!(view.policies[&PolicyKey::new("shop", "a")].generation(), 3);
        let outcomes = effective(&policies);
        assert!(
            outcomes[&PolicyKey::new("shop", "b")]
                .as_ref()
                .unwrap_err()
                .contains("already governed by policy shop/a")
        );

        // The pod behind two Services is an endpoint of each once ratings is listed.
        cluster.services.insert(
            ratings.clone(),
            ClusterService {
                key: ratings,
                vips: Vec::new(),
                ports: Vec::new(),
                labels: BTreeMap::new(),
            },
        );
        assert_eq!(
            mesh_view(&cluster, &policies, &settings, "cluster.local")
                .workloads
                .len(),
            3
        );
    }
}
