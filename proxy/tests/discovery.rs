//! In-process tests of the Discovery client: a real proxy (`Bound`) on 127.0.0.1 following the
//! real control plane (the serin-control library, its store in a temporary directory), and a tiny
//! deliberately broken Discovery server for what the real one never sends. No root.

#[path = "support/control_plane.rs"]
mod control_plane;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control_plane::{ControlPlaneProcess, eventually, free_addr, init_tracing};
use serin_proto::auth::AuthorizedAdmin;
use serin_proto::v1;
use serin_proto::v1::discovery_server::{Discovery as DiscoveryService, DiscoveryServer};
use serin_proxy::app::Bound;
use serin_proxy::config::{Config, ConfigSource, ControlPlane, Identity, ProxySettings};
use serin_proxy::discovery::ConnectionState;
use serin_proxy::orig_dst::FromFn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};

/// A proxy following the control plane at `grpc`, with short backoffs; its Discovery client
/// runs on a task aborted on drop.
struct Sidecar {
    bound: Arc<Bound>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const POD: &str = "productpage-v1-0";

impl Sidecar {
    async fn start(grpc: SocketAddr) -> Sidecar {
        Sidecar::start_with(grpc, |_| {}).await
    }

    /// A sidecar whose control-plane settings `tweak` changes.
    async fn start_with(grpc: SocketAddr, tweak: impl FnOnce(&mut ControlPlane)) -> Sidecar {
        let mut settings = ControlPlane {
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(300),
            connect_timeout: Duration::from_secs(2),
            ..ControlPlane::new(format!("http://{grpc}"))
        };
        tweak(&mut settings);
        let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let config = Config {
            identity: Identity {
                pod_name: POD.into(),
                namespace: "default".into(),
                pod_ips: vec!["10.244.0.9".parse().unwrap()],
                service: "productpage".into(),
                version: "v1".into(),
            },
            source: ConfigSource::ControlPlane(settings),
            admin_addr: any,
            outbound_addr: any,
            inbound_addr: any,
            drain_deadline: Duration::from_secs(1),
            proxy: ProxySettings::default(),
            static_tls: None,
        };
        let lookup = FromFn(|stream: &TcpStream| stream.local_addr());
        let bound = Arc::new(Bound::start(&config, Arc::new(lookup)).await.unwrap());
        let task = tokio::spawn({
            let bound = Arc::clone(&bound);
            async move { bound.discover().await }
        });
        Sidecar { bound, task }
    }

    /// `GET path` on the admin server: status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(self.bound.admin_addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
        (code, body)
    }

    async fn ready(&self) -> bool {
        self.get("/ready").await.0 == 200
    }

    async fn config_dump(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/config_dump").await.1).unwrap()
    }

    fn state(&self) -> ConnectionState {
        self.bound.discovery.as_ref().unwrap().status().view().state
    }

    fn applied_version(&self) -> Option<String> {
        let tables = self.bound.config.subscribe();
        let tables = tables.borrow();
        tables.snapshot.as_ref().map(|s| s.version.clone())
    }
}

/// This proxy's entry in ListProxies.
async fn proxy_status(admin: &mut AuthorizedAdmin) -> Option<v1::ProxyStatus> {
    let proxies = admin
        .list_proxies(v1::ListProxiesRequest::default())
        .await
        .ok()?
        .into_inner()
        .proxies;
    proxies
        .into_iter()
        .find(|p| p.proxy.as_ref().is_some_and(|id| id.pod_name == POD))
}

fn workload(pod: &str, version: &str, ip: &str) -> v1::RegisterWorkloadRequest {
    v1::RegisterWorkloadRequest {
        workload: Some(v1::Workload {
            pod_name: pod.into(),
            namespace: "default".into(),
            addresses: vec![ip.into()],
            service: "reviews".into(),
            version: version.into(),
            ports: vec![v1::WorkloadPort {
                name: "http".into(),
                port: 9080,
                protocol: v1::Protocol::Http1 as i32,
            }],
            ..Default::default()
        }),
        ttl: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_control_plane_through_changes_outages_and_restarts() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let grpc = free_addr();

    // Control plane down at start: alive, not ready, retrying.
    let sidecar = Sidecar::start(grpc).await;
    let publishes = {
        // Every config the proxy publishes, to show it never goes back to an empty one.
        let mut rx = sidecar.bound.config.subscribe();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&seen);
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let t = rx.borrow_and_update().clone();
                out.lock().unwrap().push(
                    t.snapshot
                        .as_ref()
                        .map(|s| (s.version.clone(), s.services.len())),
                );
            }
        });
        seen
    };
    eventually("a failed attempt recorded", || async {
        let d = sidecar.config_dump().await;
        let error = d["discovery"]["lastError"].as_str()?.to_owned();
        error.contains("cannot connect").then_some(())
    })
    .await;
    assert_eq!(sidecar.get("/ready").await.0, 503);
    assert_ne!(sidecar.state(), ConnectionState::Connected);
    let metrics = sidecar.get("/metrics").await.1;
    assert!(
        metrics.contains("serin_discovery_connections_total 0"),
        "{metrics}"
    );

    // It comes up: the proxy connects, applies the first snapshot, becomes ready and acks.
    let cp = ControlPlaneProcess::start(store.path(), grpc).await;
    eventually("ready after the first snapshot", || async {
        sidecar.ready().await.then_some(())
    })
    .await;
    let mut admin = cp.admin().await;
    let status = eventually("in sync", || {
        let mut admin = admin.clone();
        async move { proxy_status(&mut admin).await.filter(|p| p.in_sync) }
    })
    .await;
    assert_eq!(
        Some(status.acked_version.clone()),
        sidecar.applied_version()
    );
    let id = status.proxy.unwrap();
    assert_eq!(id.pod_ips, ["10.244.0.9"]);
    assert_eq!(id.service, "productpage");
    assert_eq!(id.instance_id.len(), 32);
    assert_eq!(status.capabilities, ["snapshot.full"]);

    // A registration reaches the proxy's tables: the VIP of `reviews` leads to the workload.
    admin
        .register_workload(workload("reviews-v1-0", "v1", "10.244.0.5"))
        .await
        .unwrap();
    admin
        .register_workload(workload("reviews-v2-0", "v2", "10.244.0.6"))
        .await
        .unwrap();
    let vip = control_plane::vip_of(&mut admin, "reviews").await;
    let tables = sidecar.bound.config.subscribe();
    eventually("both endpoints of reviews in the tables", || {
        let t = tables.borrow().clone();
        async move {
            let d = t.destination(SocketAddr::new(vip, 9080))?;
            (d.backends.len() == 2).then_some(())
        }
    })
    .await;

    // A policy: a new snapshot, acked.
    let policy = v1::TrafficPolicy {
        metadata: Some(v1::PolicyMetadata {
            name: "reviews".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(v1::TrafficPolicySpec {
            service: "reviews".into(),
            default: Some(v1::DefaultRoute {
                route: vec![
                    v1::VersionWeight {
                        version: "v1".into(),
                        weight: 90,
                    },
                    v1::VersionWeight {
                        version: "v2".into(),
                        weight: 10,
                    },
                ],
            }),
            ..Default::default()
        }),
    };
    admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(policy),
            ..Default::default()
        })
        .await
        .unwrap();
    let synced = eventually("the policy acked", || {
        let (sidecar, mut admin) = (&sidecar, admin.clone());
        async move {
            let d = sidecar.config_dump().await;
            let policies = d["snapshot"]["policies"].as_array()?;
            let p = proxy_status(&mut admin).await?;
            (policies.len() == 1 && policies[0]["spec"]["service"] == "reviews" && p.in_sync)
                .then_some(p)
        }
    })
    .await;
    let version = synced.acked_version.clone();
    assert_eq!(sidecar.applied_version().as_deref(), Some(&version[..]));
    let dump = sidecar.config_dump().await;
    assert_eq!(dump["discovery"]["state"], "connected");
    assert_eq!(dump["discovery"]["appliedVersion"], version.as_str());
    assert_eq!(dump["discovery"]["controlPlane"], format!("http://{grpc}"));
    let metrics = sidecar.get("/metrics").await.1;
    assert!(
        metrics.contains("serin_discovery_connection_state{state=\"connected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("serin_discovery_snapshots_rejected_total 0"),
        "{metrics}"
    );
    drop(admin);

    // The control plane goes away: the proxy keeps its config and stays ready.
    let published_before = publishes.lock().unwrap().len();
    cp.stop().await;
    eventually("disconnected", || async {
        (sidecar.state() != ConnectionState::Connected).then_some(())
    })
    .await;
    assert!(sidecar.ready().await);
    assert!(
        tables
            .borrow()
            .destination(SocketAddr::new(vip, 9080))
            .is_some()
    );
    let dump = sidecar.config_dump().await;
    assert!(
        !dump["discovery"]["lastError"].as_str().unwrap().is_empty(),
        "{dump}"
    );

    // It comes back on the same store: the proxy resubscribes and is in sync with the same
    // version, without republishing (the same version is not applied again).
    let cp = ControlPlaneProcess::start(store.path(), grpc).await;
    let admin = cp.admin().await;
    let again = eventually("in sync again", || {
        let mut admin = admin.clone();
        async move { proxy_status(&mut admin).await.filter(|p| p.in_sync) }
    })
    .await;
    assert_eq!(again.acked_version, version);
    assert_eq!(sidecar.state(), ConnectionState::Connected);
    assert!(sidecar.ready().await);
    let publishes = publishes.lock().unwrap().clone();
    assert_eq!(publishes.len(), published_before, "{publishes:?}");
    assert!(
        publishes.iter().all(|p| p.is_some()),
        "an empty config was published: {publishes:?}"
    );
    let dump = sidecar.config_dump().await;
    assert_eq!(dump["discovery"]["connections"], 2);
    cp.stop().await;
}

/// The version the fake server turns into a broken stream.
const RESET: &str = "RESET";

/// What the fake Discovery server saw.
#[derive(Debug, Default)]
struct Seen {
    streams: usize,
    requests: Vec<v1::SubscribeRequest>,
}

/// A Discovery server that sends what the test gives it and records what the proxy says.
#[derive(Clone)]
struct FakeDiscovery {
    seen: Arc<Mutex<Seen>>,
    pushes: Arc<tokio::sync::Mutex<mpsc::Receiver<v1::SubscribeResponse>>>,
}

#[tonic::async_trait]
impl DiscoveryService for FakeDiscovery {
    type SubscribeStream = ReceiverStream<Result<v1::SubscribeResponse, tonic::Status>>;

    async fn subscribe(
        &self,
        request: tonic::Request<tonic::Streaming<v1::SubscribeRequest>>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        self.seen.lock().unwrap().streams += 1;
        let mut inbound = request.into_inner();
        let seen = Arc::clone(&self.seen);
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                seen.lock().unwrap().requests.push(msg);
            }
        });
        let (tx, rx) = mpsc::channel(4);
        let pushes = Arc::clone(&self.pushes);
        tokio::spawn(async move {
            let mut pushes = pushes.lock().await;
            while let Some(push) = pushes.recv().await {
                // A push of version RESET breaks the stream instead, as a failing server would.
                let item = if push.version == RESET {
                    Err(tonic::Status::unavailable("test: stream reset"))
                } else {
                    Ok(push)
                };
                let reset = item.is_err();
                if tx.send(item).await.is_err() || reset {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

fn snapshot(version: &str, nonce: &str, vip: &str, endpoint: &str) -> v1::SubscribeResponse {
    v1::SubscribeResponse {
        version: version.into(),
        nonce: nonce.into(),
        payload: Some(v1::subscribe_response::Payload::Snapshot(v1::Snapshot {
            services: vec![
                v1::Service {
                    name: "reviews".into(),
                    namespace: "default".into(),
                    vips: vec![vip.into()],
                    ports: vec![v1::ServicePort {
                        port: 9080,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                v1::Service {
                    name: "ratings".into(),
                    namespace: "default".into(),
                    vips: vec!["10.96.0.20".into()],
                    ports: vec![v1::ServicePort {
                        port: 9080,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            endpoints: vec![v1::ServiceEndpoints {
                service: "reviews".into(),
                namespace: "default".into(),
                endpoints: vec![v1::Endpoint {
                    addresses: vec![endpoint.into()],
                    ready: true,
                    ..Default::default()
                }],
            }],
            policies: vec![],
            ..Default::default()
        })),
    }
}

/// A short description of each request: `hello`, `ack <version>`, `nack <version>`.
fn describe(requests: &[v1::SubscribeRequest]) -> Vec<String> {
    use v1::subscribe_request::Kind;
    requests
        .iter()
        .map(|r| match &r.kind {
            Some(Kind::Hello(h)) => format!("hello {}", h.applied_version),
            Some(Kind::Ack(a)) => format!("ack {} {}", a.version, a.nonce),
            Some(Kind::Nack(n)) => format!("nack {} {}", n.version, n.nonce),
            None => "none".into(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_it_cannot_apply_is_nacked_by_resource_and_the_rest_applied_once() {
    init_tracing();
    let (push, pushes) = mpsc::channel(8);
    let fake = FakeDiscovery {
        seen: Arc::default(),
        pushes: Arc::new(tokio::sync::Mutex::new(pushes)),
    };
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServer::new(fake.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let sidecar = Sidecar::start(addr).await;
    let requests = |n: usize| {
        let seen = Arc::clone(&fake.seen);
        move || {
            let seen = Arc::clone(&seen);
            async move {
                let seen = seen.lock().unwrap();
                (seen.requests.len() >= n).then(|| describe(&seen.requests))
            }
        }
    };
    eventually("hello", requests(1)).await;
    assert!(!sidecar.ready().await);

    push.send(snapshot("v1", "1", "10.96.0.10", "10.244.0.5"))
        .await
        .unwrap();
    eventually("ack of v1", requests(2)).await;
    assert!(sidecar.ready().await);

    // v2: the reviews VIP is bad, its endpoints changed. The service is rejected alone.
    push.send(snapshot("v2", "2", "not-an-ip", "10.244.0.6"))
        .await
        .unwrap();
    eventually("answer to v2", requests(3)).await;
    let nack = match &fake.seen.lock().unwrap().requests[2].kind {
        Some(v1::subscribe_request::Kind::Nack(n)) => n.clone(),
        other => panic!("expected a NACK, got {other:?}"),
    };
    assert_eq!(nack.errors.len(), 1, "{nack:?}");
    let e = &nack.errors[0];
    assert_eq!(e.kind, v1::ResourceKind::Service as i32);
    assert_eq!(
        (&e.namespace[..], &e.name[..], &e.field[..]),
        ("default", "reviews", "vips[0]")
    );
    assert_eq!(e.reason, "\"not-an-ip\" is not an IP address");
    // The last good reviews service stays; the endpoints of v2 were applied.
    let tables = sidecar.bound.config.subscribe().borrow().clone();
    let d = tables
        .destination("10.96.0.10:9080".parse().unwrap())
        .expect("the previous reviews VIP is kept");
    assert_eq!(d.backends[0].addr, "10.244.0.6:9080".parse().unwrap());
    assert!(sidecar.ready().await);
    let dump = sidecar.config_dump().await;
    assert_eq!(dump["discovery"]["nackedVersion"], "v2");
    assert_eq!(dump["discovery"]["rejected"][0]["name"], "reviews");
    assert_eq!(dump["discovery"]["rejected"][0]["field"], "vips[0]");
    let metrics = sidecar.get("/metrics").await.1;
    assert!(
        metrics.contains("serin_discovery_snapshots_rejected_total 1"),
        "{metrics}"
    );

    // No retry loop: nothing more is said about v2 (checked over a few backoff periods) and the
    // stream stays up; the next snapshot is answered normally.
    tokio::time::sleep(Duration::from_millis(500)).await;
    push.send(snapshot("v3", "3", "10.96.0.11", "10.244.0.7"))
        .await
        .unwrap();
    let said = eventually("ack of v3", requests(4)).await;
    assert_eq!(said, ["hello ", "ack v1 1", "nack v2 2", "ack v3 3"]);
    assert_eq!(fake.seen.lock().unwrap().streams, 1);
    assert!(
        tables_now(&sidecar)
            .destination("10.96.0.11:9080".parse().unwrap())
            .is_some()
    );

    // The stream breaks: the proxy resubscribes saying what it serves, keeps serving it (ready,
    // the very same tables) and answers the same version again without re-applying it.
    let before = tables_now(&sidecar);
    push.send(v1::SubscribeResponse {
        version: RESET.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let said = eventually("a new hello", requests(5)).await;
    assert_eq!(said[4], "hello v3");
    assert_eq!(fake.seen.lock().unwrap().streams, 2);
    assert!(sidecar.ready().await);
    push.send(snapshot("v3", "1", "10.96.0.11", "10.244.0.7"))
        .await
        .unwrap();
    let said = eventually("ack of v3 on the new stream", requests(6)).await;
    assert_eq!(said[5], "ack v3 1");
    assert!(Arc::ptr_eq(&before, &tables_now(&sidecar)));
    server.abort();
}

fn tables_now(sidecar: &Sidecar) -> Arc<serin_proxy::tables::Tables> {
    sidecar.bound.config.subscribe().borrow().clone()
}

/// A TCP relay to `target` whose open connections can be frozen: bytes stop passing but the
/// sockets stay open, as when the control plane's host vanishes without closing anything. New
/// connections pass normally.
struct Relay {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let task = tokio::spawn({
            let connections = Arc::clone(&connections);
            async move {
                while let Ok((downstream, _)) = listener.accept().await {
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        continue;
                    };
                    let frozen = Arc::new(AtomicBool::new(false));
                    connections.lock().unwrap().push(Arc::clone(&frozen));
                    let (dr, dw) = downstream.into_split();
                    let (ur, uw) = upstream.into_split();
                    tokio::spawn(pump(dr, uw, Arc::clone(&frozen)));
                    tokio::spawn(pump(ur, dw, frozen));
                }
            }
        });
        Relay {
            addr,
            connections,
            task,
        }
    }

    /// Freezes every connection open now.
    fn freeze(&self) {
        for c in self.connections.lock().unwrap().iter() {
            c.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until `frozen`; then swallows what arrives, holding both sockets open.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_that_goes_silent_is_noticed_by_keepalive_and_replaced() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let cp = ControlPlaneProcess::start(store.path(), "127.0.0.1:0".parse().unwrap()).await;
    let relay = Relay::start(cp.grpc).await;
    let sidecar = Sidecar::start_with(relay.addr, |s| {
        s.keepalive_interval = Duration::from_millis(200);
        s.keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    eventually("ready", || async { sidecar.ready().await.then_some(()) }).await;
    let status = || sidecar.bound.discovery.as_ref().unwrap().status().view();
    assert_eq!(status().connections, 1);
    let version = sidecar.applied_version();

    // The connection goes silent without closing: the pings go unanswered, the proxy gives up
    // on it and subscribes again on a new connection, serving its config all along.
    relay.freeze();
    let start = Instant::now();
    eventually("resubscribed on a new connection", || async {
        let s = status();
        (s.connections == 2 && s.state == ConnectionState::Connected).then_some(())
    })
    .await;
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "noticed after {:?}",
        start.elapsed()
    );
    let error = status().last_error;
    assert!(!error.is_empty());
    tracing::info!(%error, "the silent connection ended");
    assert!(sidecar.ready().await);
    assert_eq!(sidecar.applied_version(), version);
    cp.stop().await;
}
