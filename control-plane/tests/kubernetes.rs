//! The registry from the API server against a fake API server on loopback: kube-rs lists and
//! watches Services, EndpointSlices and Pods over plain HTTP on 127.0.0.1, and the test drives
//! what the "API server" says: events, a watch that ends (resumed from its resourceVersion), and
//! a watch that expires (410 Gone: listed again, and what changed unseen is picked up).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use serin_control::kubernetes::cluster::ClusterView;
use serin_control::kubernetes::watch::ClusterRegistry;
use serin_control::model::ServiceKey;

#[path = "support/fake_api.rs"]
mod fake_api;
use fake_api::*;
#[path = "support/mtls.rs"]
mod mtls_support;

/// A kube client of the fake.
fn client(fake: &FakeApi) -> kube::Client {
    let config = kube::Config::new(format!("http://{}", fake.addr).parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug,hyper=info,kube_client=info")
        .try_init();
}

/// Waits (up to 20 s) until the view passes `check`.
async fn until(
    view: &mut tokio::sync::watch::Receiver<Arc<ClusterView>>,
    what: &str,
    check: impl Fn(&ClusterView) -> bool,
) {
    let reached = tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| check(v)))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "timed out waiting for {what}; the view is {:#?}",
        *view.borrow()
    );
}

fn versions(view: &ClusterView) -> Vec<(String, bool)> {
    let key = ServiceKey {
        namespace: "shop".into(),
        name: "reviews".into(),
    };
    view.endpoints
        .get(&key)
        .map(|eps| eps.iter().map(|e| (e.version.clone(), e.ready)).collect())
        .unwrap_or_default()
}

/// Polls (up to 20 s) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_registry_follows_the_api_server_through_watch_restarts() {
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    fake.apply(PODS, pod("reviews-v1-a", "v1"));
    fake.apply(SLICES, slice(&[("reviews-v1-a", "10.244.0.7", true)]));

    let registry = ClusterRegistry::start(&client(&fake), Duration::from_millis(5));
    let mut view = registry.watch();
    until(&mut view, "the listed state", |v| {
        versions(v) == [("v1".to_owned(), true)]
    })
    .await;
    let reviews = ServiceKey {
        namespace: "shop".into(),
        name: "reviews".into(),
    };
    assert_eq!(
        view.borrow().services[&reviews].vips,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );

    // Events on the open watches: a v2 pod and its endpoint, not ready yet, then ready.
    eventually("three watches open", || {
        fake.requests(|r| r.contains("watch=true")) >= 3
    })
    .await;
    fake.apply(PODS, pod("reviews-v2-b", "v2"));
    fake.apply(
        SLICES,
        slice(&[
            ("reviews-v1-a", "10.244.0.7", true),
            ("reviews-v2-b", "10.244.0.8", false),
        ]),
    );
    until(&mut view, "v2 not ready", |v| {
        versions(v) == [("v1".to_owned(), true), ("v2".to_owned(), false)]
    })
    .await;
    fake.apply(
        SLICES,
        slice(&[
            ("reviews-v1-a", "10.244.0.7", true),
            ("reviews-v2-b", "10.244.0.8", true),
        ]),
    );
    until(&mut view, "v2 ready", |v| {
        versions(v) == [("v1".to_owned(), true), ("v2".to_owned(), true)]
    })
    .await;

    // Every watch ends: they resume from their resourceVersion, without listing again, and a
    // change made while they were away arrives.
    let lists = fake.requests(|r| !r.contains("watch=true"));
    let watches = fake.requests(|r| r.contains("watch=true"));
    let _ = fake.live.send(Live::End);
    fake.apply(SLICES, slice(&[("reviews-v2-b", "10.244.0.8", true)]));
    until(&mut view, "v1 gone after the watch restart", |v| {
        versions(v) == [("v2".to_owned(), true)]
    })
    .await;
    eventually("three new watches", || {
        fake.requests(|r| r.contains("watch=true")) >= watches + 3
    })
    .await;
    assert_eq!(
        fake.requests(|r| !r.contains("watch=true")),
        lists,
        "a resumed watch lists nothing"
    );
    let resumed = fake
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .rev()
        .find(|r| r.starts_with(SLICES) && r.contains("watch=true"))
        .cloned()
        .unwrap();
    assert!(
        resumed.contains("resourceVersion=") && !resumed.contains("resourceVersion=0&"),
        "{resumed}"
    );

    // The watches expire (410 Gone) while a Service was deleted without an event reaching them:
    // the watchers list again, and the view loses the Service.
    fake.change(SERVICES, "DELETED", service("reviews", "10.96.0.10"), false);
    fake.apply(SERVICES, service("ratings", "10.96.0.11"));
    until(&mut view, "ratings added", |v| v.services.len() == 2).await;
    let _ = fake.live.send(Live::Expire);
    until(&mut view, "reviews gone after the re-list", |v| {
        v.services
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            == ["ratings"]
    })
    .await;
    assert!(
        fake.requests(|r| !r.contains("watch=true")) > lists,
        "410 Gone lists again"
    );
    drop(registry);
}

#[tokio::test]
async fn traffic_policies_are_read_validated_and_given_a_status() {
    use serin_control::kubernetes::policies::{ClusterPolicies, PolicyWatcher};
    use serin_control::model::PolicyKey;
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(POLICIES, policy("reviews", 1, 100));
    fake.apply(POLICIES, policy("ratings", 1, -5));
    let watcher = PolicyWatcher::start(&client(&fake), Duration::from_millis(5));
    let mut view = watcher.watch();
    let state = |v: &ClusterPolicies, name: &str| {
        v.by_key
            .get(&PolicyKey::new("shop", name))
            .map(|p| (p.generation, p.policy.clone().err()))
    };
    let wait = |view: &mut tokio::sync::watch::Receiver<Arc<ClusterPolicies>>,
                what: &'static str,
                check: Box<dyn Fn(&ClusterPolicies) -> bool + Send + Sync>| {
        let mut view = view.clone();
        async move {
            let reached =
                tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| check(v)))
                    .await
                    .is_ok_and(|r| r.is_ok());
            assert!(
                reached,
                "timed out waiting for {what}: {:#?}",
                *view.borrow()
            );
        }
    };
    wait(
        &mut view,
        "both policies",
        Box::new(move |v| v.by_key.len() == 2),
    )
    .await;
    assert_eq!(state(&view.borrow(), "reviews"), Some((1, None)));
    let (generation, error) = state(&view.borrow(), "ratings").unwrap();
    assert_eq!(generation, 1);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("weight")),
        "{error:?}"
    );

    // The status says what the control plane made of each object.
    eventually("both statuses written", || {
        !fake.patches("shop/reviews").is_empty() && !fake.patches("shop/ratings").is_empty()
    })
    .await;
    assert_eq!(
        fake.patches("shop/reviews")[0],
        json!({"status": {"observedGeneration": 1, "lastError": ""}})
    );
    let ratings_status = &fake.patches("shop/ratings")[0]["status"];
    assert_eq!(ratings_status["observedGeneration"], 1);
    assert!(
        ratings_status["lastError"]
            .as_str()
            .unwrap()
            .contains("weight"),
        "{ratings_status}"
    );

    // A fix (generation 2) clears the error; the status follows.
    fake.apply(POLICIES, policy("ratings", 2, 100));
    wait(
        &mut view,
        "ratings fixed",
        Box::new(move |v| state(v, "ratings") == Some((2, None))),
    )
    .await;
    eventually("the fixed status", || {
        fake.patches("shop/ratings").len() == 2
    })
    .await;
    assert_eq!(
        fake.patches("shop/ratings")[1],
        json!({"status": {"observedGeneration": 2, "lastError": ""}})
    );

    // The watch ends and a policy is deleted meanwhile: the resumed watch removes it. A status
    // already right is never written again (no write loop through our own MODIFIED events).
    let _ = fake.live.send(Live::End);
    fake.change(POLICIES, "DELETED", policy("ratings", 2, 100), true);
    fake.apply(POLICIES, policy("details", 1, 100));
    wait(
        &mut view,
        "ratings gone, details there",
        Box::new(move |v| {
            v.by_key.keys().map(|k| k.name.as_str()).collect::<Vec<_>>() == ["details", "reviews"]
        }),
    )
    .await;
    eventually("the details status", || {
        fake.patches("shop/details").len() == 1
    })
    .await;
    assert_eq!(
        fake.patches("shop/reviews").len(),
        1,
        "reviews' status was right: not written again"
    );
    drop(watcher);
}

// ------------------------------------------------------------------------------------------------
// `serin-control --kubernetes` as a whole: sidecars subscribe through Discovery, the Admin API
// writes TrafficPolicy objects.

mod mode {
    use super::*;
    use serin_control::app::App;
    use serin_control::config::{Config, KubernetesConfig};
    use serin_proto::auth::{AuthorizedAdmin, BearerToken, admin_client};
    use serin_proto::v1;

    /// The write token in the tokens file the replicas share.
    const ADMIN_TOKEN: &str = "serin-test-kubernetes-write-token-0001";
    use serin_proto::v1::discovery_client::DiscoveryClient;
    use tokio::sync::{mpsc, oneshot};
    use tokio_stream::wrappers::ReceiverStream;

    /// The control plane's namespace in these tests (where the ConfigMap `serin-mesh` is).
    pub const CONTROL_PLANE_NAMESPACE: &str = "serin-system";

    /// A control plane in Kubernetes mode on 127.0.0.1:0 whose kubeconfig names the fake.
    pub struct ControlPlane {
        pub grpc: SocketAddr,
        /// The mTLS port, when it is on ([`ControlPlane::start_with_mtls_port`]).
        pub grpc_tls: Option<SocketAddr>,
        stop: Option<oneshot::Sender<()>>,
        run: tokio::task::JoinHandle<anyhow::Result<()>>,
        _dir: tempfile::TempDir,
    }

    impl ControlPlane {
        pub async fn start(fake: &FakeApi, replica: &str) -> ControlPlane {
            Self::start_with(fake, replica, false).await
        }

        /// The same with the mTLS port on 127.0.0.1:0 (certificate names localhost, 127.0.0.1).
        pub async fn start_with_mtls_port(fake: &FakeApi, replica: &str) -> ControlPlane {
            Self::start_with(fake, replica, true).await
        }

        async fn start_with(fake: &FakeApi, replica: &str, mtls_port: bool) -> ControlPlane {
            let dir = tempfile::tempdir().unwrap();
            let kubeconfig = dir.path().join("kubeconfig");
            std::fs::write(
                &kubeconfig,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
                    fake.addr
                ),
            )
            .unwrap();
            // The replicas share the operator's tokens file.
            let tokens = dir.path().join("admin-tokens");
            std::fs::write(&tokens, format!("write {ADMIN_TOKEN}\n")).unwrap();
            // ... and the operator's CA root.
            let root =
                serin_control::ca::generate_root(serin_control::ca::DEFAULT_TRUST_DOMAIN).unwrap();
            let (ca_cert, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
            std::fs::write(&ca_cert, &root.cert_pem).unwrap();
            std::fs::write(&ca_key, &root.key_pem).unwrap();
            let mut config = Config {
                admin_tokens: Some(tokens),
                grpc: "127.0.0.1:0".parse().unwrap(),
                http: "127.0.0.1:0".parse().unwrap(),
                debounce: Duration::from_millis(5),
                kubernetes: Some(KubernetesConfig {
                    kubeconfig: Some(kubeconfig),
                    replica: replica.to_owned(),
                    status_interval: Duration::from_millis(50),
                    token_audience: "serin".to_owned(),
                    namespace: Some(CONTROL_PLANE_NAMESPACE.to_owned()),
                }),
                ..Config::new(dir.path().join("unused-store"))
            };
            config.ca.root_files = Some((ca_cert, ca_key));
            if mtls_port {
                config.grpc_tls = Some(serin_control::tls::TlsPortConfig {
                    addr: "127.0.0.1:0".parse().unwrap(),
                    sans: vec!["localhost".into(), "127.0.0.1".into()],
                });
            }
            let app = tokio::time::timeout(Duration::from_secs(20), App::new(config))
                .await
                .expect("the cluster is listed within 20 s")
                .unwrap();
            assert!(
                !dir.path().join("unused-store").exists(),
                "no embedded store in Kubernetes mode"
            );
            let grpc = app.grpc_addr();
            let grpc_tls = app.grpc_tls_addr();
            let (stop, stopped) = oneshot::channel::<()>();
            let (_, run) = app
                .start(async move {
                    let _ = stopped.await;
                })
                .unwrap();
            ControlPlane {
                grpc,
                grpc_tls,
                stop: Some(stop),
                run: tokio::spawn(run),
                _dir: dir,
            }
        }

        /// An Admin client with the write token.
        pub async fn admin(&self) -> AuthorizedAdmin {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
            admin_client(channel, BearerToken::new(ADMIN_TOKEN).unwrap())
        }

        pub async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            tokio::time::timeout(Duration::from_secs(10), &mut self.run)
                .await
                .expect("stops within 10 s")
                .unwrap()
                .unwrap();
        }
    }

    /// A simulated sidecar on the Discovery stream.
    pub struct Sidecar {
        tx: mpsc::Sender<v1::SubscribeRequest>,
        rx: tonic::Streaming<v1::SubscribeResponse>,
        /// The version of the last push [`Sidecar::until`] read.
        pub version: String,
    }

    impl Sidecar {
        /// A sidecar of namespace shop on the plaintext port.
        pub async fn connect(cp: &ControlPlane, pod: &str, service: &str) -> Sidecar {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
            Self::subscribe(channel, "shop", pod, service).await
        }

        /// A sidecar of `namespace` on `channel` (the mTLS port's, with its certificate).
        pub async fn subscribe(
            channel: tonic::transport::Channel,
            namespace: &str,
            pod: &str,
            service: &str,
        ) -> Sidecar {
            let mut client = DiscoveryClient::new(channel);
            let (tx, requests) = mpsc::channel(16);
            tx.send(v1::SubscribeRequest {
                kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello {
                    proxy: Some(v1::ProxyIdentity {
                        pod_name: pod.into(),
                        namespace: namespace.into(),
                        pod_ips: vec!["10.244.0.99".into()],
                        service: service.into(),
                        version: "v1".into(),
                        proxy_version: "test".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
            let rx = client
                .subscribe(ReceiverStream::new(requests))
                .await
                .unwrap()
                .into_inner();
            Sidecar {
                tx,
                rx,
                version: String::new(),
            }
        }

        /// Reads (and ACKs) pushes until one satisfies `check`, within 20 s.
        pub async fn until(
            &mut self,
            what: &str,
            check: impl Fn(&v1::Snapshot) -> bool,
        ) -> v1::Snapshot {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let msg = tokio::time::timeout(left, self.rx.message())
                    .await
                    .unwrap_or_else(|_| panic!("timed out waiting for a push with {what}"))
                    .unwrap()
                    .expect("the stream is open");
                self.ack(&msg).await;
                self.version = msg.version.clone();
                let Some(v1::subscribe_response::Payload::Snapshot(snapshot)) = msg.payload else {
                    panic!("a push without a snapshot");
                };
                if check(&snapshot) {
                    return snapshot;
                }
            }
        }
    }

    impl Sidecar {
        async fn ack(&self, msg: &v1::SubscribeResponse) {
            self.tx
                .send(v1::SubscribeRequest {
                    kind: Some(v1::subscribe_request::Kind::Ack(v1::SnapshotAck {
                        version: msg.version.clone(),
                        nonce: msg.nonce.clone(),
                    })),
                })
                .await
                .unwrap();
        }

        /// NACKs the first push that satisfies `check` (within 20 s), naming shop/reviews'
        /// policy; the pushes before it are ACKed.
        pub async fn nack_when(&mut self, check: impl Fn(&v1::Snapshot) -> bool) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let msg = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let msg = tokio::time::timeout(left, self.rx.message())
                    .await
                    .expect("the push to NACK within 20 s")
                    .unwrap()
                    .expect("the stream is open");
                match &msg.payload {
                    Some(v1::subscribe_response::Payload::Snapshot(s)) if check(s) => break msg,
                    _ => self.ack(&msg).await,
                }
            };
            self.tx
                .send(v1::SubscribeRequest {
                    kind: Some(v1::subscribe_request::Kind::Nack(v1::SnapshotNack {
                        version: msg.version,
                        nonce: msg.nonce,
                        errors: vec![v1::ResourceError {
                            kind: v1::ResourceKind::TrafficPolicy as i32,
                            namespace: "shop".into(),
                            name: "reviews".into(),
                            field: "spec.default".into(),
                            reason: "test rejection".into(),
                        }],
                    })),
                })
                .await
                .unwrap();
        }
    }

    /// (version, ready) of each endpoint of shop/reviews in a snapshot.
    pub fn reviews_endpoints(s: &v1::Snapshot) -> Vec<(String, bool)> {
        s.endpoints
            .iter()
            .filter(|e| e.namespace == "shop" && e.service == "reviews")
            .flat_map(|e| e.endpoints.iter().map(|ep| (ep.version.clone(), ep.ready)))
            .collect()
    }

    /// The default route of shop/reviews' policy in a snapshot: (generation, [(version, weight)]).
    pub fn reviews_policy(s: &v1::Snapshot) -> Option<(u64, Vec<(String, u32)>)> {
        s.policies
            .iter()
            .find(|p| {
                p.metadata
                    .as_ref()
                    .is_some_and(|m| m.name == "reviews" && m.namespace == "shop")
            })
            .map(|p| {
                (
                    p.metadata.as_ref().map_or(0, |m| m.generation),
                    p.spec
                        .as_ref()
                        .and_then(|s| s.default.as_ref())
                        .map(|d| {
                            d.route
                                .iter()
                                .map(|w| (w.version.clone(), w.weight))
                                .collect()
                        })
                        .unwrap_or_default(),
                )
            })
    }

    pub fn split(pairs: &[(&str, u32)]) -> Vec<(String, u32)> {
        pairs.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect()
    }
}

fn reviews_slice_v1_v2(v2_ready: bool) -> Value {
    slice(&[
        ("reviews-v1-a", "10.244.0.7", true),
        ("reviews-v2-b", "10.244.0.8", v2_ready),
    ])
}

#[tokio::test]
async fn kubernetes_mode_pushes_the_cluster_to_sidecars_and_serinctl_writes_policy_objects() {
    use mode::*;
    use serin_proto::v1;
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    fake.apply(PODS, pod("reviews-v1-a", "v1"));
    fake.apply(PODS, pod("reviews-v2-b", "v2"));
    fake.apply(SLICES, reviews_slice_v1_v2(true));
    let mut reviews = policy("reviews", 1, 100);
    reviews["metadata"]["creationTimestamp"] = json!("2026-11-26T12:00:00Z");
    fake.apply(POLICIES, reviews);

    let cp = ControlPlane::start(&fake, "serin-control-a").await;
    let mut sidecar = Sidecar::connect(&cp, "productpage-a", "productpage").await;

    // The first push is the whole cluster: the Service with its ClusterIP, both endpoints, the
    // policy at the object's generation.
    let first = sidecar
        .until("the listed cluster", |s| {
            reviews_endpoints(s).len() == 2 && reviews_policy(s).is_some()
        })
        .await;
    let svc = first.services.iter().find(|s| s.name == "reviews").unwrap();
    assert_eq!(svc.vips, ["10.96.0.10"]);
    assert_eq!(svc.ports[0].protocol, v1::Protocol::Http1 as i32);
    assert_eq!(
        reviews_endpoints(&first),
        [("v1".to_owned(), true), ("v2".to_owned(), true)]
    );
    assert_eq!(reviews_policy(&first), Some((1, split(&[("v1", 100)]))));

    // The status: the sidecar of reviews ACKed generation 1, so this replica writes 1 of 1 in
    // its own entry and in the totals.
    let mut reviews_sidecar = Sidecar::connect(&cp, "reviews-v1-a", "reviews").await;
    reviews_sidecar.until("the first push", |_| true).await;
    let in_sync = |p: &Value| {
        p["status"]["proxiesInSync"] == 1
            && p["status"]["proxiesTotal"] == 1
            && p["status"]["observedGeneration"] == 1
            && p["status"]["replicas"]["serin-control-a"]["proxiesInSync"] == 1
    };
    eventually("the status says 1 of 1 in sync", || {
        fake.patches("shop/reviews").iter().any(in_sync)
    })
    .await;
    let written = fake.patches("shop/reviews").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        fake.patches("shop/reviews").len(),
        written,
        "a status already right is not written again"
    );

    // A watch event: v2's endpoint terminates (not ready: it drains, no new requests).
    eventually("every watch open", || {
        fake.requests(|r| r.contains("watch=true")) >= 6
    })
    .await;
    fake.apply(SLICES, reviews_slice_v1_v2(false));
    sidecar
        .until("v2 not ready", |s| {
            reviews_endpoints(s) == [("v1".to_owned(), true), ("v2".to_owned(), false)]
        })
        .await;

    // A policy edited with kubectl (generation 2) is pushed.
    fake.apply(POLICIES, {
        let mut p = policy("reviews", 2, 100);
        p["spec"]["default"]["route"] =
            json!([{"version": "v1", "weight": 90}, {"version": "v2", "weight": 10}]);
        p
    });
    sidecar
        .until("generation 2", |s| {
            reviews_policy(s) == Some((2, split(&[("v1", 90), ("v2", 10)])))
        })
        .await;

    // The sidecar of reviews NACKs generation 2: the status says so, 0 of 1 in sync.
    reviews_sidecar
        .nack_when(|s| reviews_policy(s).is_some_and(|(g, _)| g == 2))
        .await;
    eventually("the NACK in the status", || {
        fake.patches("shop/reviews").iter().any(|p| {
            p["status"]["observedGeneration"] == 2
                && p["status"]["proxiesInSync"] == 0
                && p["status"]["lastError"]
                    .as_str()
                    .is_some_and(|e| e.contains("reviews-v1-a: spec.default: test rejection"))
        })
    })
    .await;
    drop(reviews_sidecar);

    // Every watch ends; a change made meanwhile arrives through the resumed watches.
    let _ = fake.live.send(Live::End);
    fake.apply(SLICES, reviews_slice_v1_v2(true));
    sidecar
        .until("v2 ready after the watch restart", |s| {
            reviews_endpoints(s) == [("v1".to_owned(), true), ("v2".to_owned(), true)]
        })
        .await;

    // Every watch expires (410 Gone) while a Service was added unseen: listed again, pushed.
    fake.change(SERVICES, "ADDED", service("ratings", "10.96.0.11"), false);
    let _ = fake.live.send(Live::Expire);
    sidecar
        .until("ratings after the re-list", |s| {
            s.services.iter().any(|svc| svc.name == "ratings")
        })
        .await;

    // `serinctl canary reviews v2 --weight 30`: SetWeights at the generation it read. The
    // object is replaced with the resourceVersion it was read at; the generation it replaces
    // goes into the history annotation.
    let mut admin = cp.admin().await;
    let canary = admin
        .set_weights(v1::SetWeightsRequest {
            namespace: "shop".into(),
            service: "reviews".into(),
            weights: vec![
                v1::VersionWeight {
                    version: "v1".into(),
                    weight: 70,
                },
                v1::VersionWeight {
                    version: "v2".into(),
                    weight: 30,
                },
            ],
            if_generation: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canary.policy.unwrap().metadata.unwrap().generation, 3);
    let writes = fake.writes();
    let (method, key, body) = writes.last().unwrap();
    assert_eq!((method.as_str(), key.as_str()), ("PUT", "shop/reviews"));
    assert_eq!(
        body["spec"]["default"]["route"],
        json!([{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}])
    );
    assert!(body["metadata"]["resourceVersion"].is_string(), "{body}");
    let history: Value = serde_json::from_str(
        body["metadata"]["annotations"]["serin.io/history"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(history[0]["generation"], 2, "{history}");
    sidecar
        .until("the canary", |s| {
            reviews_policy(s) == Some((3, split(&[("v1", 70), ("v2", 30)])))
        })
        .await;
    // The caller reads its own write from the cache.
    let got = admin
        .get_policy(v1::GetPolicyRequest {
            namespace: "shop".into(),
            name: "reviews".into(),
            generation: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(got.metadata.unwrap().generation, 3);

    // A stale if_generation is refused, naming the current one; nothing is written.
    let before = fake.writes().len();
    let stale = admin
        .set_weights(v1::SetWeightsRequest {
            namespace: "shop".into(),
            service: "reviews".into(),
            weights: vec![v1::VersionWeight {
                version: "v1".into(),
                weight: 100,
            }],
            if_generation: Some(2),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{stale:?}");
    assert!(stale.message().contains("generation 3"), "{stale:?}");
    assert_eq!(fake.writes().len(), before);

    // `serinctl promote reviews v2` loses a race with another writer once (409 Conflict):
    // read again, written again.
    fake.state.lock().unwrap().race_next_put = true;
    let promoted = admin
        .promote(v1::PromoteRequest {
            namespace: "shop".into(),
            service: "reviews".into(),
            version: "v2".into(),
            if_generation: None,
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(promoted.policy.unwrap().metadata.unwrap().generation, 4);
    let puts: Vec<_> = fake.writes()[before..]
        .iter()
        .filter(|(m, _, _)| m == "PUT")
        .cloned()
        .collect();
    assert_eq!(puts.len(), 2, "the conflicting PUT and the retry");
    assert_eq!(
        puts[1].2["spec"]["default"]["route"],
        json!([{"version": "v2", "weight": 100}])
    );
    assert_eq!(
        puts[1].2["metadata"]["labels"],
        json!({"touched-by": "another-writer"}),
        "the retry starts from the other writer's object"
    );
    sidecar
        .until("the promotion", |s| {
            reviews_policy(s) == Some((4, split(&[("v2", 100)])))
        })
        .await;

    // `serinctl apply -f details.yaml`: a new object is created.
    let details: serin_policy::TrafficPolicy = serde_yaml_ng::from_str(
        "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata: {name: details, namespace: shop}\nspec:\n  service: details\n  default: {route: [{version: v1, weight: 100}]}\n",
    )
    .unwrap();
    let applied = admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(v1::TrafficPolicy::from(&details)),
            if_generation: Some(0),
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.outcome, v1::ApplyOutcome::Created as i32);
    let (method, key, body) = fake.writes().last().unwrap().clone();
    assert_eq!((method.as_str(), key.as_str()), ("POST", "shop/details"));
    assert_eq!(body["spec"]["service"], "details");

    // The control plane restarts: `serinctl rollback reviews` still finds generation 3 in the
    // object's history annotation and restores it as generation 5.
    drop(admin);
    drop(sidecar);
    cp.stop().await;
    let cp = ControlPlane::start(&fake, "serin-control-b").await;
    let mut admin = cp.admin().await;
    let rolled = admin
        .rollback(v1::RollbackRequest {
            namespace: "shop".into(),
            service: "reviews".into(),
            to_generation: None,
            if_generation: Some(4),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.restored_generation, 3);
    assert_eq!(rolled.policy.unwrap().metadata.unwrap().generation, 5);
    let (method, _, body) = fake.writes().last().unwrap().clone();
    assert_eq!(method, "PUT");
    assert_eq!(
        body["spec"]["default"]["route"],
        json!([{"version": "v1", "weight": 70}, {"version": "v2", "weight": 30}])
    );
    let history = admin
        .policy_history(v1::PolicyHistoryRequest {
            namespace: "shop".into(),
            name: "reviews".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(
        history.iter().map(|r| r.generation).collect::<Vec<_>>(),
        [5, 4, 3, 2],
        "the current generation, then what serin replaced (kubectl's generation 1 was never replaced through serin)"
    );
    assert_eq!(history[0].cause, v1::ChangeCause::Rollback as i32);
    let mut sidecar = Sidecar::connect(&cp, "productpage-a", "productpage").await;
    sidecar
        .until("the rollback", |s| {
            reviews_policy(s) == Some((5, split(&[("v1", 70), ("v2", 30)])))
        })
        .await;

    // Registration belongs to the API server in this mode.
    let refused = admin
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(v1::Workload {
                pod_name: "x".into(),
                namespace: "shop".into(),
                addresses: vec!["10.244.1.1".into()],
                service: "reviews".into(),
                ..Default::default()
            }),
            ttl: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // `serinctl delete policy details`.
    admin
        .delete_policy(v1::DeletePolicyRequest {
            namespace: "shop".into(),
            name: "details".into(),
            if_generation: Some(1),
        })
        .await
        .unwrap();
    let (method, key, _) = fake.writes().last().unwrap().clone();
    assert_eq!((method.as_str(), key.as_str()), ("DELETE", "shop/details"));
    drop(sidecar);
    drop(admin);
    cp.stop().await;
}

#[tokio::test]
async fn two_replicas_write_one_status_without_fighting() {
    use mode::*;
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    fake.apply(PODS, pod("reviews-v1-a", "v1"));
    fake.apply(PODS, pod("reviews-v2-b", "v2"));
    fake.apply(SLICES, reviews_slice_v1_v2(true));
    fake.apply(POLICIES, policy("reviews", 1, 100));

    // Two replicas, each with one sidecar of reviews (and b with one of another service).
    let a = ControlPlane::start(&fake, "serin-control-a").await;
    let b = ControlPlane::start(&fake, "serin-control-b").await;
    let mut on_a = Sidecar::connect(&a, "reviews-v1-a", "reviews").await;
    let mut on_b = Sidecar::connect(&b, "reviews-v2-b", "reviews").await;
    let mut other = Sidecar::connect(&b, "productpage-a", "productpage").await;
    for s in [&mut on_a, &mut on_b, &mut other] {
        s.until("generation 1", |s| {
            reviews_policy(s).is_some_and(|(g, _)| g == 1)
        })
        .await;
    }
    let status = || fake.stored("shop/reviews")["status"].clone();
    let settled = |generation: i64| {
        move |s: &Value| {
            s["observedGeneration"] == generation
                && s["proxiesInSync"] == 2
                && s["proxiesTotal"] == 2
                && s["lastError"] == ""
                && s["replicas"]["serin-control-a"]["proxiesInSync"] == 1
                && s["replicas"]["serin-control-b"]["proxiesInSync"] == 1
                && s["replicas"]["serin-control-b"]["proxiesTotal"] == 1
        }
    };
    let first = settled(1);
    eventually("both replicas' entries and the sums", || first(&status())).await;
    // Settled: ten passes of each replica (50 ms apart) write nothing more.
    let written = fake.patches("shop/reviews").len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.patches("shop/reviews").len(),
        written,
        "the replicas agree and stop writing: {:#}",
        status()
    );
    assert!(first(&status()));

    // A new generation: each replica counts its sidecar again once it ACKs.
    fake.apply(POLICIES, policy("reviews", 2, 100));
    let second = settled(2);
    eventually("generation 2 observed, not yet in sync", || {
        let s = status();
        s["observedGeneration"] == 2 && s["proxiesInSync"] == 0
    })
    .await;
    for s in [&mut on_a, &mut on_b] {
        s.until("generation 2", |s| {
            reviews_policy(s).is_some_and(|(g, _)| g == 2)
        })
        .await;
    }
    eventually("both in sync at generation 2", || second(&status())).await;
    drop((on_a, on_b, other));
    a.stop().await;
    b.stop().await;
}

/// A PEM CSR whose one URI SAN is `identity`.
fn csr_for(identity: &str) -> String {
    mtls_support::csr(identity).0
}

#[tokio::test]
async fn kubernetes_mode_signs_for_projected_tokens_and_meshes_injected_pods() {
    use mode::*;
    use serin_proto::v1;
    use serin_proto::v1::identity_client::IdentityClient;
    tracing();
    let td = serin_control::ca::DEFAULT_TRUST_DOMAIN;
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    let mut injected = pod("reviews-v1-a", "v1");
    injected["metadata"]["annotations"] = json!({"sidecar.serin.io/status": "injected"});
    injected["spec"]["serviceAccountName"] = json!("reviews");
    fake.apply(PODS, injected);
    fake.apply(PODS, pod("reviews-v2-b", "v2"));
    fake.apply(SLICES, reviews_slice_v1_v2(true));
    fake.issue_token(
        "token-reviews",
        &["serin"],
        "shop",
        "reviews",
        "reviews-v1-a",
    );
    fake.issue_token(
        "token-for-the-api-server",
        &["https://kubernetes.default.svc"],
        "shop",
        "reviews",
        "reviews-v1-a",
    );
    let cp = ControlPlane::start(&fake, "serin-control-a").await;

    // The injected pod's endpoint is meshed with its service account's identity; the other
    // one stays plain.
    let mut sidecar = Sidecar::connect(&cp, "productpage-a", "productpage").await;
    let snapshot = sidecar
        .until("both endpoints", |s| reviews_endpoints(s).len() == 2)
        .await;
    let identities: Vec<(String, String)> = snapshot
        .endpoints
        .iter()
        .filter(|e| e.service == "reviews")
        .flat_map(|e| e.endpoints.iter())
        .map(|ep| (ep.pod_name.clone(), ep.identity.clone()))
        .collect();
    assert_eq!(
        identities,
        [
            (
                "reviews-v1-a".to_owned(),
                format!("spiffe://{td}/ns/shop/sa/reviews")
            ),
            ("reviews-v2-b".to_owned(), String::new()),
        ]
    );

    // A projected token for the audience `serin`: a certificate for its service account.
    let mut client = IdentityClient::connect(format!("http://{}", cp.grpc))
        .await
        .unwrap();
    let reviews_id = format!("spiffe://{td}/ns/shop/sa/reviews");
    let sign = |token: &str, identity: &str| v1::SignCertificateRequest {
        csr_pem: csr_for(identity),
        bootstrap_token: token.to_owned(),
        ttl: None,
    };
    let signed = client
        .sign_certificate(sign("token-reviews", &reviews_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(signed.identity, reviews_id);
    assert!(!signed.cert_chain_pem.is_empty() && !signed.trust_bundle_pem.is_empty());
    let reviews = fake.state.lock().unwrap().token_reviews.clone();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["apiVersion"], "authentication.k8s.io/v1");
    assert_eq!(reviews[0]["kind"], "TokenReview");
    assert_eq!(reviews[0]["spec"]["token"], "token-reviews");
    assert_eq!(reviews[0]["spec"]["audiences"], json!(["serin"]));

    // An unknown token, a token for another audience: UNAUTHENTICATED.
    let e = client
        .sign_certificate(sign("forged", &reviews_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(
        e.message()
            .contains("not authenticated for audience \"serin\"")
            && e.message().contains("token lookup failed"),
        "{}",
        e.message()
    );
    let e = client
        .sign_certificate(sign("token-for-the-api-server", &reviews_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    assert!(
        e.message()
            .contains("is invalid for the target audiences [\"serin\"]"),
        "{}",
        e.message()
    );

    // A CSR for another service account than the token's: PERMISSION_DENIED, naming both.
    let ratings_id = format!("spiffe://{td}/ns/shop/sa/ratings");
    let e = client
        .sign_certificate(sign("token-reviews", &ratings_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("must name exactly the identity {reviews_id}"))
            && e.message().contains(&ratings_id),
        "{}",
        e.message()
    );
    assert_eq!(fake.state.lock().unwrap().token_reviews.len(), 4);
    cp.stop().await;
}

/// The mTLS modes of a snapshot: (mesh-wide default, [(namespace, mode)] sorted).
fn mtls_of(s: &serin_proto::v1::Snapshot) -> (i32, Vec<(String, i32)>) {
    let tls = s.mtls.clone().unwrap_or_default();
    let mut namespaces: Vec<_> = tls.namespaces.into_iter().collect();
    namespaces.sort();
    (tls.default_mode, namespaces)
}

#[tokio::test]
async fn kubernetes_mode_keeps_mtls_modes_in_namespace_annotations_and_the_mesh_configmap() {
    use mode::*;
    use serin_proto::v1;
    use serin_proto::v1::MtlsMode::{Permissive, Strict, Unspecified};
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    fake.apply(PODS, pod("reviews-v1-a", "v1"));
    fake.apply(SLICES, slice(&[("reviews-v1-a", "10.244.0.7", true)]));
    fake.apply(NAMESPACES, namespace("shop", &[]));
    fake.apply(
        NAMESPACES,
        namespace("bank", &[("serin.io/mtls", "strict")]),
    );
    fake.apply(NAMESPACES, namespace(CONTROL_PLANE_NAMESPACE, &[]));
    // Another ConfigMap of the control plane's namespace is none of its business.
    let mut other = mesh_configmap(CONTROL_PLANE_NAMESPACE, "strict");
    other["metadata"]["name"] = json!("unrelated");
    fake.apply(CONFIGMAPS, other);
    let strict = Strict as i32;
    let ns_modes = |pairs: &[(&str, v1::MtlsMode)]| -> Vec<(String, i32)> {
        pairs
            .iter()
            .map(|(n, m)| ((*n).to_owned(), *m as i32))
            .collect()
    };

    let cp = ControlPlane::start(&fake, "serin-control-a").await;
    // Only the one ConfigMap is watched.
    assert!(
        fake.requests(
            |r| r.starts_with("/api/v1/namespaces/serin-system/configmaps?")
                && r.contains("fieldSelector=metadata.name%3Dserin-mesh")
        ) >= 1
    );
    let mut sidecar = Sidecar::connect(&cp, "productpage-a", "productpage").await;
    // The first push already has the annotated mode: never a less strict mesh first.
    let first = sidecar.until("the listed cluster", |_| true).await;
    assert_eq!(
        mtls_of(&first),
        (Unspecified as i32, ns_modes(&[("bank", Strict)]))
    );

    // `serinctl mtls -n shop strict`: the Namespace's annotation, merge-patched.
    let mut admin = cp.admin().await;
    let set = admin
        .set_mtls_mode(v1::SetMtlsModeRequest {
            namespace: "shop".into(),
            mode: strict,
        })
        .await
        .unwrap()
        .into_inner()
        .mtls
        .unwrap();
    assert_eq!(set.namespaces.get("shop"), Some(&strict));
    assert_eq!(set.namespaces.get("bank"), Some(&strict));
    let (method, path, body) = fake.core_writes().last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("PATCH", "/api/v1/namespaces/shop")
    );
    assert_eq!(
        body,
        json!({"metadata": {"annotations": {"serin.io/mtls": "strict"}}})
    );
    assert_eq!(
        fake.stored_in(NAMESPACES, "/shop")["metadata"]["annotations"]["serin.io/mtls"],
        "strict"
    );
    // Read-your-write: the call returns once the watch shows it.
    let got = admin
        .get_mtls_modes(v1::GetMtlsModesRequest {})
        .await
        .unwrap()
        .into_inner()
        .mtls
        .unwrap();
    assert_eq!(got.namespaces.get("shop"), Some(&strict));
    sidecar
        .until("shop strict", |s| {
            mtls_of(s)
                == (
                    Unspecified as i32,
                    ns_modes(&[("bank", Strict), ("shop", Strict)]),
                )
        })
        .await;

    // `serinctl mtls --mesh-wide strict`: no ConfigMap yet, so it is created.
    let set = admin
        .set_mtls_mode(v1::SetMtlsModeRequest {
            namespace: String::new(),
            mode: strict,
        })
        .await
        .unwrap()
        .into_inner()
        .mtls
        .unwrap();
    assert_eq!(set.default_mode, strict);
    let writes = fake.core_writes();
    let (method, path, body) = writes.last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/api/v1/namespaces/serin-system/configmaps")
    );
    assert_eq!(body["metadata"]["name"], "serin-mesh");
    assert_eq!(body["data"], json!({"mtls": "strict"}));
    assert_eq!(
        writes[writes.len() - 2].0,
        "PATCH",
        "a patch first, which found no ConfigMap"
    );
    let on_a_snapshot = sidecar
        .until("the mesh-wide default strict", |s| mtls_of(s).0 == strict)
        .await;

    // A second replica computes the same snapshot, version included.
    let b = ControlPlane::start(&fake, "serin-control-b").await;
    let mut on_b = Sidecar::connect(&b, "productpage-b", "productpage").await;
    let on_b_snapshot = on_b
        .until("the same modes on b", |s| mtls_of(s).0 == strict)
        .await;
    assert_eq!(on_b_snapshot, on_a_snapshot);
    assert_eq!(
        on_b.version, sidecar.version,
        "both replicas push one version"
    );
    drop(on_b);
    b.stop().await;

    // kubectl annotate namespace shop serin.io/mtls=permissive --overwrite: pushed.
    fake.apply(
        NAMESPACES,
        namespace("shop", &[("serin.io/mtls", "permissive")]),
    );
    sidecar
        .until("shop permissive from kubectl", |s| {
            mtls_of(s).1 == ns_modes(&[("bank", Strict), ("shop", Permissive)])
        })
        .await;

    // A typo in an annotation and in the ConfigMap: each ignored (shop follows the default, the
    // default is unset), everything else still served, and the next change still pushed.
    fake.apply(
        NAMESPACES,
        namespace("shop", &[("serin.io/mtls", "sometimes")]),
    );
    fake.apply(
        CONFIGMAPS,
        mesh_configmap(CONTROL_PLANE_NAMESPACE, "always"),
    );
    let served = sidecar
        .until("the typos ignored", |s| {
            mtls_of(s) == (Unspecified as i32, ns_modes(&[("bank", Strict)]))
        })
        .await;
    assert_eq!(reviews_endpoints(&served), [("v1".to_owned(), true)]);
    fake.apply(NAMESPACES, namespace("web", &[("serin.io/mtls", "STRICT")]));
    sidecar
        .until("web strict after the typos", |s| {
            mtls_of(s).1 == ns_modes(&[("bank", Strict), ("web", Strict)])
        })
        .await;

    // `serinctl mtls --mesh-wide unset`: the key goes (a merge patch with null).
    admin
        .set_mtls_mode(v1::SetMtlsModeRequest {
            namespace: String::new(),
            mode: Unspecified as i32,
        })
        .await
        .unwrap();
    let (method, _, body) = fake.core_writes().last().cloned().unwrap();
    assert_eq!(method, "PATCH");
    assert_eq!(body, json!({"data": {"mtls": null}}));
    assert!(
        fake.stored_in(CONFIGMAPS, "serin-system/serin-mesh")["data"]
            .get("mtls")
            .is_none()
    );

    // A namespace the cluster does not have: NOT_FOUND, naming it.
    let e = admin
        .set_mtls_mode(v1::SetMtlsModeRequest {
            namespace: "nowhere".into(),
            mode: strict,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("namespace nowhere"), "{}", e.message());

    // A restart: the modes are the API server's, so they are all still there.
    drop(sidecar);
    drop(admin);
    cp.stop().await;
    let cp = ControlPlane::start(&fake, "serin-control-c").await;
    let modes = cp
        .admin()
        .await
        .get_mtls_modes(v1::GetMtlsModesRequest {})
        .await
        .unwrap()
        .into_inner()
        .mtls
        .unwrap();
    let mut namespaces: Vec<_> = modes.namespaces.into_iter().collect();
    namespaces.sort();
    assert_eq!(
        (modes.default_mode, namespaces),
        (
            Unspecified as i32,
            ns_modes(&[("bank", Strict), ("web", Strict)])
        )
    );
    cp.stop().await;
}

/// The namespace/name of every service in a snapshot.
fn service_names(s: &serin_proto::v1::Snapshot) -> Vec<String> {
    s.services
        .iter()
        .map(|svc| format!("{}/{}", svc.namespace, svc.name))
        .collect()
}

#[tokio::test]
async fn kubernetes_mode_keeps_private_namespaces_in_annotations_and_hides_them_on_the_mtls_port() {
    use mode::*;
    use serin_proto::v1;
    use serin_proto::v1::identity_client::IdentityClient;
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    let mut ledger = service("ledger", "10.96.0.20");
    ledger["metadata"]["namespace"] = json!("bank");
    fake.apply(SERVICES, ledger);
    fake.apply(NAMESPACES, namespace("shop", &[]));
    fake.apply(NAMESPACES, namespace("bank", &[]));
    fake.apply(POLICIES, policy("reviews", 1, 100));
    fake.issue_token("token-shop", &["serin"], "shop", "reviews", "reviews-v1-a");
    let cp = ControlPlane::start_with_mtls_port(&fake, "serin-control-a").await;
    let tls_addr = cp.grpc_tls.expect("the mTLS port is on");

    // The shop sidecar's certificate, for its projected token, then Subscribe on the mTLS port.
    let identity = format!(
        "spiffe://{}/ns/shop/sa/reviews",
        serin_control::ca::DEFAULT_TRUST_DOMAIN
    );
    let (csr_pem, key) = mtls_support::csr(&identity);
    let signed = IdentityClient::connect(format!("http://{}", cp.grpc))
        .await
        .unwrap()
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem,
            bootstrap_token: "token-shop".into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    let channel = mtls_support::tls_channel(
        tls_addr,
        mtls_support::client_config(
            &signed.trust_bundle_pem,
            Some((&signed.cert_chain_pem, &key)),
        ),
    )
    .await
    .unwrap();
    let mut shop = Sidecar::subscribe(channel, "shop", "reviews-v1-a", "reviews").await;
    let mut plain = Sidecar::connect(&cp, "productpage-a", "productpage").await;
    let both = vec!["bank/ledger".to_owned(), "shop/reviews".to_owned()];
    shop.until("bank public at first", |s| service_names(s) == both)
        .await;

    // `serinctl visibility -n bank private`: the Namespace's annotation.
    let mut admin = cp.admin().await;
    let private = admin
        .set_namespace_visibility(v1::SetNamespaceVisibilityRequest {
            namespace: "bank".into(),
            private: true,
        })
        .await
        .unwrap()
        .into_inner()
        .private_namespaces;
    assert_eq!(private, ["bank"]);
    let (method, path, body) = fake.core_writes().last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("PATCH", "/api/v1/namespaces/bank")
    );
    assert_eq!(
        body,
        json!({"metadata": {"annotations": {"serin.io/visibility": "private"}}})
    );
    let listed = admin
        .get_namespace_visibility(v1::GetNamespaceVisibilityRequest {})
        .await
        .unwrap()
        .into_inner()
        .private_namespaces;
    assert_eq!(listed, ["bank"], "read-your-write");
    let hidden = shop
        .until("bank hidden from shop", |s| {
            service_names(s) == ["shop/reviews"]
        })
        .await;
    assert!(!format!("{hidden:?}").contains("ledger"), "{hidden:?}");
    // Its snapshot is now scoped (a version of its own, not the whole mesh's): the policy's
    // status still counts the shop reviews sidecar in sync, since it ACKed the generation.
    let in_sync = |p: &Value| p["status"]["proxiesInSync"] == 1 && p["status"]["proxiesTotal"] == 1;
    eventually("the reviews sidecar counted 1 of 1 in sync", || {
        fake.patches("shop/reviews").iter().any(in_sync)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = fake.patches("shop/reviews").last().cloned().unwrap();
    assert!(in_sync(&last), "{last:#}");
    // The plaintext port gets the whole mesh, as in the embedded mode.
    plain
        .until("the whole mesh on the plaintext port", |s| {
            service_names(s) == both
        })
        .await;

    // kubectl annotate namespace bank serin.io/visibility=public --overwrite.
    fake.apply(
        NAMESPACES,
        namespace("bank", &[("serin.io/visibility", "public")]),
    );
    shop.until("bank public again from kubectl", |s| {
        service_names(s) == both
    })
    .await;
    // kubectl with a typo on bank, private on shop: the typo is ignored (bank stays public),
    // shop's own annotation is served.
    fake.apply(
        NAMESPACES,
        namespace("bank", &[("serin.io/visibility", "secret")]),
    );
    fake.apply(
        NAMESPACES,
        namespace("shop", &[("serin.io/visibility", "private")]),
    );
    let listed = eventually_private(&mut admin, &["shop"]).await;
    assert_eq!(listed, ["shop"]);
    // The shop sidecar sees its own private namespace and the public bank.
    shop.until("shop's own namespace and bank", |s| {
        service_names(s) == both
    })
    .await;

    // `serinctl visibility -n shop public`: the annotation goes.
    admin
        .set_namespace_visibility(v1::SetNamespaceVisibilityRequest {
            namespace: "shop".into(),
            private: false,
        })
        .await
        .unwrap();
    let (_, path, body) = fake.core_writes().last().cloned().unwrap();
    assert_eq!(path, "/api/v1/namespaces/shop");
    assert_eq!(
        body,
        json!({"metadata": {"annotations": {"serin.io/visibility": null}}})
    );
    assert!(
        fake.stored_in(NAMESPACES, "/shop")["metadata"]["annotations"]
            .get("serin.io/visibility")
            .is_none()
    );
    // A namespace the cluster does not have: NOT_FOUND.
    let e = admin
        .set_namespace_visibility(v1::SetNamespaceVisibilityRequest {
            namespace: "nowhere".into(),
            private: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    drop((shop, plain, admin));
    cp.stop().await;
}

/// Polls GetNamespaceVisibility (up to 20 s) until it lists `want`; returns the list.
async fn eventually_private(
    admin: &mut serin_proto::auth::AuthorizedAdmin,
    want: &[&str],
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = admin
            .get_namespace_visibility(serin_proto::v1::GetNamespaceVisibilityRequest {})
            .await
            .unwrap()
            .into_inner()
            .private_namespaces;
        if listed == want {
            return listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "private namespaces {listed:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
