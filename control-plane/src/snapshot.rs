//! Discovery snapshots: built once per change of the mesh, encoded once, shared by every proxy
//! stream as an `Arc`. Proxies on the plaintext port get the whole mesh (all services, endpoints
//! and policies); a proxy on the mTLS port gets [`MeshView::visible_to`] its namespace, built
//! per stream from the [`EncodedSnapshot::view`] the shared snapshot keeps.
//!
//! Changes are coalesced at the leading edge: a change after a quiet period is built and pushed
//! at once; changes within [`Publisher::debounce`] of the last build wait for the rest of that
//! interval and are then built together from the latest view. An isolated apply reaches the
//! proxies without delay, and a burst of applies makes at most one push per interval.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use serin_proto::v1;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::model::{MeshView, PolicyKey, ServiceKey};

/// One snapshot, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedSnapshot {
    /// Content version: a hash of the content, so equal content has the same version on every
    /// control plane and across restarts.
    pub version: String,
    /// `SubscribeResponse { version, snapshot }` encoded, without a nonce: each stream appends
    /// its own nonce field (protobuf fields may come in any order).
    pub body: Bytes,
    /// Number of services in it.
    pub services: usize,
    /// Number of endpoints in it.
    pub endpoints: usize,
    /// Number of policies in it.
    pub policies: usize,
    /// The generation of each policy in it (what a proxy that ACKed it serves).
    pub policy_generations: Arc<BTreeMap<PolicyKey, u64>>,
    /// The view it was built from: streams scoped to a namespace (sidecars on the mTLS port)
    /// build their own snapshot of [`MeshView::visible_to`] from it.
    pub view: Arc<MeshView>,
}

impl EncodedSnapshot {
    /// Builds and encodes the snapshot of a view.
    pub fn build(view: &MeshView) -> EncodedSnapshot {
        EncodedSnapshot::from_view(Arc::new(view.clone()))
    }

    /// Builds and encodes the snapshot of a shared view (kept in [`EncodedSnapshot::view`]).
    pub fn from_view(shared: Arc<MeshView>) -> EncodedSnapshot {
        let view = &*shared;
        let snapshot = snapshot(view);
        let version = version(view);
        let response = v1::SubscribeResponse {
            version: version.clone(),
            nonce: String::new(),
            payload: Some(v1::subscribe_response::Payload::Snapshot(snapshot)),
        };
        EncodedSnapshot {
            version,
            body: Bytes::from(response.encode_to_vec()),
            services: view.services.len(),
            endpoints: view.workloads.len(),
            policies: view.policies.len(),
            policy_generations: Arc::new(
                view.policies
                    .iter()
                    .map(|(k, p)| (k.clone(), p.generation()))
                    .collect(),
            ),
            view: shared,
        }
    }
}

/// The wire snapshot of a view: services and endpoints sorted by (namespace, name), endpoints by
/// pod name, policies by (namespace, name).
pub fn snapshot(view: &MeshView) -> v1::Snapshot {
    let services = view
        .services
        .values()
        .map(|s| v1::Service::from(&**s))
        .collect();
    // One pass over the workloads (sorted by namespace and pod name), grouped by service.
    let mut by_service: BTreeMap<ServiceKey, Vec<v1::Endpoint>> = BTreeMap::new();
    for w in view.workloads.values() {
        by_service
            .entry(w.service_key())
            .or_default()
            .push(v1::Endpoint::from(&**w));
    }
    let endpoints = by_service
        .into_iter()
        .map(|(k, endpoints)| v1::ServiceEndpoints {
            service: k.name,
            namespace: k.namespace,
            endpoints,
        })
        .collect();
    let policies = view
        .policies
        .values()
        .map(|p| v1::TrafficPolicy::from(&**p))
        .collect();
    v1::Snapshot {
        services,
        endpoints,
        policies,
        mtls: Some(v1::MeshTls::from(&view.mtls)),
    }
}

/// A hash of the view's content over a canonical form (JSON of sorted maps; the wire encoding
/// of protobuf maps has no fixed order, so it cannot be hashed).
fn version(view: &MeshView) -> String {
    let mut content = serde_json::to_vec(&(
        view.services.values().map(|s| &**s).collect::<Vec<_>>(),
        view.workloads.values().map(|w| &**w).collect::<Vec<_>>(),
        view.policies.values().map(|p| &**p).collect::<Vec<_>>(),
        &view.mtls,
    ))
    .expect("domain types serialize to JSON");
    // The private namespaces change what scoped streams get, so they change the version; hashed
    // only when there are some, so that the versions of a mesh without them stay as they were.
    if !view.private_namespaces.is_empty() {
        content.extend(
            serde_json::to_vec(&view.private_namespaces).expect("strings serialize to JSON"),
        );
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&content))
}

/// Turns views into snapshots.
#[derive(Debug)]
pub struct Publisher {
    /// The shortest time between two builds: changes that come sooner are coalesced.
    pub debounce: Duration,
}

impl Publisher {
    /// Builds the first snapshot now and spawns the task that rebuilds on every change of
    /// `views`. The task ends when the view sender is gone.
    pub fn spawn(
        &self,
        mut views: watch::Receiver<Arc<MeshView>>,
        metrics: Arc<Metrics>,
    ) -> watch::Receiver<Arc<EncodedSnapshot>> {
        let first = EncodedSnapshot::from_view(views.borrow_and_update().clone());
        metrics.snapshot_built(&first);
        let (tx, rx) = watch::channel(Arc::new(first));
        let debounce = self.debounce;
        tokio::spawn(async move {
            let mut last_build: Option<tokio::time::Instant> = None;
            while views.changed().await.is_ok() {
                if let Some(at) = last_build {
                    // Returns at once when the last build is older than the interval.
                    tokio::time::sleep_until(at + debounce).await;
                }
                last_build = Some(tokio::time::Instant::now());
                let view = views.borrow_and_update().clone();
                let Ok(built) =
                    tokio::task::spawn_blocking(move || EncodedSnapshot::from_view(view)).await
                else {
                    return;
                };
                if built.version != tx.borrow().version {
                    metrics.snapshot_built(&built);
                    tracing::debug!(version = %built.version, services = built.services, endpoints = built.endpoints, policies = built.policies, "new snapshot");
                    tx.send_replace(Arc::new(built));
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{ServiceRecord, Workload};

    fn view(version: &str) -> MeshView {
        let mut v = MeshView::default();
        let w = Workload {
            pod_name: "reviews-0".into(),
            namespace: "default".into(),
            addresses: vec!["10.244.0.5".parse().unwrap()],
            service: "reviews".into(),
            version: version.into(),
            ports: Vec::new(),
            labels: [
                ("version".to_owned(), version.to_owned()),
                ("team".to_owned(), "a".to_owned()),
            ]
            .into(),
            service_account: String::new(),
            node_name: String::new(),
            ready: true,
            identity: String::new(),
        };
        let s = ServiceRecord {
            namespace: "default".into(),
            name: "reviews".into(),
            vips: vec![Ipv4Addr::new(10, 96, 3, 4).into()],
            ports: Vec::new(),
        };
        v.services.insert(w.service_key(), Arc::new(s));
        v.workloads.insert(w.endpoint_key(), Arc::new(w));
        v
    }

    #[tokio::test]
    async fn an_isolated_change_goes_out_at_once_and_a_burst_is_coalesced() {
        crate::test_tracing();
        // A long interval, so that "at once" and "held" cannot be confused on a slow machine.
        let debounce = Duration::from_secs(4);
        let (views_tx, views) = watch::channel(Arc::new(view("v1")));
        let metrics = Arc::new(Metrics::default());
        let mut rx = Publisher { debounce }.spawn(views, Arc::clone(&metrics));
        let first = rx.borrow_and_update().version.clone();

        // Leading edge: the first change after a quiet period is built without waiting.
        views_tx.send_replace(Arc::new(view("v2")));
        tokio::time::timeout(debounce / 2, rx.changed())
            .await
            .expect("an isolated change is pushed before the interval ends")
            .unwrap();
        let second = rx.borrow_and_update().version.clone();
        assert_ne!(second, first);
        assert_eq!(second, EncodedSnapshot::build(&view("v2")).version);

        // A burst right after: held for the rest of the interval, then built once, from the
        // latest view.
        for version in ["v3", "v4", "v5"] {
            views_tx.send_replace(Arc::new(view(version)));
            tokio::task::yield_now().await;
        }
        assert!(
            tokio::time::timeout(debounce / 4, rx.changed())
                .await
                .is_err(),
            "a change within the interval of the last build waits"
        );
        tokio::time::timeout(debounce * 3, rx.changed())
            .await
            .expect("the held changes are pushed when the interval ends")
            .unwrap();
        assert_eq!(
            rx.borrow_and_update().version,
            EncodedSnapshot::build(&view("v5")).version
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.changed())
                .await
                .is_err(),
            "the burst made one push"
        );
        assert_eq!(metrics.snapshots.get(), 3, "built: the first, v2, then v5");
    }

    #[test]
    fn the_version_follows_the_content_only() {
        crate::test_tracing();
        assert_eq!(
            EncodedSnapshot::build(&view("v1")).version,
            EncodedSnapshot::build(&view("v1")).version
        );
        assert_ne!(
            EncodedSnapshot::build(&view("v1")).version,
            EncodedSnapshot::build(&view("v2")).version
        );
    }

    #[test]
    fn the_shared_body_plus_a_nonce_is_a_subscribe_response() {
        crate::test_tracing();
        let built = EncodedSnapshot::build(&view("v1"));
        let mut bytes = built.body.to_vec();
        prost::encoding::string::encode(2, &"7".to_owned(), &mut bytes);
        let decoded = v1::SubscribeResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            (decoded.version.as_str(), decoded.nonce.as_str()),
            (built.version.as_str(), "7")
        );
        let Some(v1::subscribe_response::Payload::Snapshot(s)) = decoded.payload else {
            panic!("no snapshot")
        };
        assert_eq!(s, snapshot(&view("v1")));
        assert_eq!(s.endpoints[0].endpoints[0].pod_name, "reviews-0");
    }
}
