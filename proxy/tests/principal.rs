//! In-process loopback test of the verified peer identity on inbound traffic (issue 10): the
//! real control plane (the serin-control library: CA, Identity, registry, Telemetry), a client
//! sidecar and a server sidecar, both with certificates. A request through the client sidecar
//! reaches the server sidecar over mTLS; a request straight to the server's inbound listener is
//! plaintext (permissive mode). The server sidecar must label its inbound request metrics with
//! the client's SPIFFE ID (`source_principal`) for the first and "" for the second, the client
//! sidecar its outbound ones with "", and the server's telemetry must tell the control plane
//! which of its inbound requests came over mTLS and from which principal. No root: the original
//! destinations are injected.

#[path = "support/control_plane.rs"]
mod control_plane;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use control_plane::{ControlPlaneProcess, LONG, eventually, free_addr, init_tracing};
use serin_control::telemetry::{Clock, Direction};
use serin_proto::v1;
use serin_proxy::app::Bound;
use serin_proxy::config::{Config, ConfigSource, ControlPlane, Identity, ProxySettings};
use serin_proxy::identity::{self, IdentitySettings, TokenSource};
use serin_proxy::orig_dst::FromFn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The server pod's address: its inbound listener is bound here (no other test uses it).
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 42);
/// The client pod's address.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 43);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";

/// An HTTP/1.1 app on a free port of 127.0.0.1 answering every request `200 ok`.
async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn registration(pod: &str, service: &str, ip: Ipv4Addr, port: u16) -> v1::RegisterWorkloadRequest {
    v1::RegisterWorkloadRequest {
        workload: Some(v1::Workload {
            pod_name: pod.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_string()],
            service: service.into(),
            version: "v1".into(),
            ports: vec![v1::WorkloadPort {
                name: "http".into(),
                port: u32::from(port),
                protocol: v1::Protocol::Http1 as i32,
            }],
            service_account: service.into(),
            ..Default::default()
        }),
        ttl: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// A sidecar of `service` with a certificate for its registration's `token`, reporting telemetry
/// every 100 ms; every captured connection "was going" to `orig`.
async fn sidecar(
    grpc: SocketAddr,
    service: &str,
    ip: Ipv4Addr,
    inbound: SocketAddr,
    token: String,
    orig: SocketAddr,
) -> Arc<Bound> {
    let settings = ControlPlane {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        telemetry_interval: Some(Duration::from_millis(100)),
        identity: Some(Box::new(IdentitySettings {
            token: TokenSource::Value(token),
            trust_domain: identity::DEFAULT_TRUST_DOMAIN.into(),
            service_account: service.into(),
            cert_ttl: None,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
        })),
        ..ControlPlane::new(format!("http://{grpc}"))
    };
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let config = Config {
        identity: Identity {
            pod_name: format!("{service}-0"),
            namespace: "default".into(),
            pod_ips: vec![ip.into()],
            service: service.into(),
            version: "v1".into(),
        },
        source: ConfigSource::ControlPlane(settings),
        admin_addr: any,
        outbound_addr: any,
        inbound_addr: inbound,
        drain_deadline: Duration::from_secs(1),
        proxy: ProxySettings::default(),
        static_tls: None,
    };
    let lookup = FromFn(move |_: &TcpStream| Ok(orig));
    let bound = Arc::new(Bound::start(&config, Arc::new(lookup)).await.unwrap());
    for task in 0..3 {
        let bound = Arc::clone(&bound);
        tokio::spawn(async move {
            match task {
                0 => bound.discover().await,
                1 => bound.certify().await,
                _ => bound.report().await,
            }
        });
    }
    bound
}

/// `GET /` on a new connection to `addr`: the status line.
async fn get(addr: SocketAddr) -> String {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_owned()
    };
    tokio::time::timeout(LONG, attempt)
        .await
        .expect("an answer in time")
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_request_metrics_and_telemetry_name_the_verified_client() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let cp = ControlPlaneProcess::start(store.path(), free_addr()).await;
    let app = start_app().await;
    // The server's inbound listener is its endpoint: a free port of its address.
    let port = std::net::TcpListener::bind((SERVER_IP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut admin = cp.admin().await;
    let token = |req| {
        let mut admin = admin.clone();
        async move {
            admin
                .register_workload(req)
                .await
                .unwrap()
                .into_inner()
                .bootstrap_token
        }
    };
    let server_token = token(registration("reviews-0", "reviews", SERVER_IP, port)).await;
    let client_token = token(registration("client-0", "client", CLIENT_IP, 8080)).await;
    let vip = control_plane::vip_of(&mut admin, "reviews").await;
    let server_inbound = SocketAddr::new(SERVER_IP.into(), port);
    let server = sidecar(
        cp.grpc,
        "reviews",
        SERVER_IP,
        server_inbound,
        server_token,
        app,
    )
    .await;
    let client = sidecar(
        cp.grpc,
        "client",
        CLIENT_IP,
        SocketAddr::new(CLIENT_IP.into(), 0),
        client_token,
        SocketAddr::new(vip, port),
    )
    .await;
    for (what, bound) in [("client", &client), ("server", &server)] {
        let mut creds = bound.certificates.as_ref().unwrap().subscribe();
        eventually(&format!("the {what} sidecar's certificate"), || {
            let has = creds.borrow_and_update().is_some();
            async move { has.then_some(()) }
        })
        .await;
    }
    let tables = client.config.subscribe();
    eventually("the server endpoint meshed in the client's tables", || {
        let t = tables.borrow().clone();
        async move {
            let d = t.destination(SocketAddr::new(vip, port))?;
            d.backends.first()?.state.pool.peer_identity().map(|_| ())
        }
    })
    .await;

    // Three requests through the client sidecar (mTLS on the hop), two plaintext ones straight
    // to the server sidecar.
    for _ in 0..3 {
        assert_eq!(get(client.outbound_addr).await, "HTTP/1.1 200 OK");
    }
    for _ in 0..2 {
        assert_eq!(get(server.inbound_addr).await, "HTTP/1.1 200 OK");
    }

    let metrics = server.metrics.render();
    let inbound = "direction=\"inbound\"";
    let mtls = format!("source_principal=\"{CLIENT_ID}\"");
    let plain = "source_principal=\"\"";
    for name in [
        "serin_requests_total",
        "serin_request_duration_seconds_count",
    ] {
        assert_eq!(
            sample(&metrics, name, &[inbound, &mtls, "response_code=\"200\""]),
            3,
            "{name} over mTLS: {metrics}"
        );
        assert_eq!(
            sample(&metrics, name, &[inbound, plain, "response_code=\"200\""]),
            2,
            "{name} in plaintext: {metrics}"
        );
    }
    // The contract's labels are all still there.
    let line = metrics
        .lines()
        .find(|l| l.starts_with("serin_requests_total{") && l.contains(&mtls))
        .unwrap();
    for label in [
        "direction=",
        "source_workload=",
        "source_namespace=",
        "source_version=",
        "destination_service=\"reviews\"",
        "destination_namespace=\"default\"",
        "destination_version=\"v1\"",
        "response_code=",
        "grpc_status=",
        "mirror=\"false\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    let outbound = client.metrics.render();
    assert_eq!(
        sample(
            &outbound,
            "serin_requests_total",
            &["direction=\"outbound\"", plain, "response_code=\"200\""]
        ),
        3,
        "the client side names no principal: {outbound}"
    );
    assert!(!outbound.contains(&mtls), "{outbound}");

    // Telemetry: the server's inbound edges into reviews carry the five requests, three of them
    // over mTLS from the client's principal.
    let (requests, secured, principals) = eventually(
        "the server's inbound telemetry with the five requests",
        || {
            let now = Clock::System.now_ms();
            let edges = cp.handles.edges.window(now, 60_000);
            let mut out = (0, 0, Vec::new());
            for (key, stats) in edges {
                if key.direction == Direction::Inbound && key.destination_service == "reviews" {
                    out.0 += stats.counts.requests;
                    out.1 += stats.counts.mtls_requests;
                    out.2.extend(stats.source_principals);
                }
            }
            async move { (out.0 >= 5).then_some(out) }
        },
    )
    .await;
    assert_eq!((requests, secured), (5, 3));
    assert_eq!(principals, [CLIENT_ID]);
}
