//! Direct vs one sidecar on loopback, in-process: HTTP/1.1 keep-alive requests (one at a time,
//! and 64 in flight over 16 connections) and TCP echo round trips; and one sidecar routing by a
//! policy of 100 header rules (none matching), a 90/10 split and 10 % mirroring (the copies go to
//! the same server). The proxy is the real one
//! (`Bound::start`) with an injected original-destination lookup; everything shares one tokio
//! runtime on this machine's cores, so the figures compare, they do not measure a deployment.
//!
//! `cargo bench -p serin-proxy --bench forward`

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serin_proxy::app::Bound;
use serin_proxy::config::{Config, ConfigSource, Identity, ProxySettings};
use serin_proxy::orig_dst::FromFn;
use serin_proxy::snapshot::file;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The pretend VIP every proxied connection was going to.
const VIP: &str = "10.96.0.10";
/// The pretend VIP of the service routed by policy.
const ROUTED_VIP: &str = "10.96.0.11";
/// Connections of the concurrent HTTP case.
const CONNECTIONS: usize = 16;
/// Requests per measured batch of the concurrent case (HTTP/1: one in flight per connection).
const BATCH: usize = 64;
/// Rules of the routed case's policy.
const RULES: usize = 100;

struct Setup {
    http_direct: SocketAddr,
    tcp_direct: SocketAddr,
    proxy: SocketAddr,
    _bound: Bound,
}

/// The policy of the routed case: `RULES` header rules no request matches, then 90/10, 10 %
/// mirrored.
fn routed_policy() -> String {
    let mut rules = String::new();
    for i in 0..RULES {
        rules.push_str(&format!(
            "        - {{name: rule-{i}, match: [{{headers: {{x-rule-{i}: {{exact: \"yes\"}}}}}}], route: [{{version: v2, weight: 100}}]}}\n"
        ));
    }
    format!(
        "policies:\n  - metadata: {{name: routed, namespace: default}}\n    spec:\n      service: routed\n      rules:\n{rules}      default: {{route: [{{version: v1, weight: 90}}, {{version: v2, weight: 10}}]}}\n      mirror: {{version: v2, percent: 10}}\n"
    )
}

async fn setup() -> Setup {
    // An HTTP server answering "ok" and a TCP echo server.
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_direct = http.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = http.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_direct = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let any = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let config = Config {
        identity: Identity::default(),
        source: ConfigSource::None,
        admin_addr: any,
        outbound_addr: any,
        inbound_addr: any,
        drain_deadline: Duration::from_secs(1),
        proxy: ProxySettings::default(),
        static_tls: None,
    };
    // Connections from 127.0.0.2 go to the HTTP port, from 127.0.0.4 to the routed service,
    // others to the TCP port.
    let lookup = FromFn(|s: &TcpStream| {
        let (vip, port) = match s.peer_addr()?.ip() {
            ip if ip == Ipv4Addr::new(127, 0, 0, 2) => (VIP, 8080),
            ip if ip == Ipv4Addr::new(127, 0, 0, 4) => (ROUTED_VIP, 8080),
            _ => (VIP, 7000),
        };
        Ok(SocketAddr::new(vip.parse().unwrap(), port))
    });
    let bound = Bound::start(&config, Arc::new(lookup)).await.unwrap();
    let yaml = format!(
        "services: [{{name: bench, namespace: default, vips: [\"{VIP}\"], ports: [{{port: 8080, name: http, protocol: PROTOCOL_HTTP1}}, {{port: 7000, name: tcp, protocol: PROTOCOL_TCP}}]}},\
                    {{name: routed, namespace: default, vips: [\"{ROUTED_VIP}\"], ports: [{{port: 8080, name: http, protocol: PROTOCOL_HTTP1}}]}}]\n\
         endpoints: [{{service: bench, namespace: default, endpoints: [{{addresses: [\"127.0.0.1\"], ports: [{{name: http, port: {http}}}, {{name: tcp, port: {tcp}}}], version: v1, ready: true}}]}},\
                     {{service: routed, namespace: default, endpoints: [{{addresses: [\"127.0.0.1\"], ports: [{{name: http, port: {http}}}], version: v1, ready: true}}, {{addresses: [\"127.0.0.1\"], ports: [{{name: http, port: {http}}}], version: v2, ready: true}}]}}]\n{policy}",
        http = http_direct.port(),
        tcp = tcp_direct.port(),
        policy = routed_policy(),
    );
    bound
        .config
        .apply(file::parse(&yaml, "bench".into()).unwrap());
    Setup {
        http_direct,
        tcp_direct,
        proxy: bound.outbound_addr,
        _bound: bound,
    }
}

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
    let stream = socket.connect(to).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_client(to: SocketAddr) -> Sender {
    http_client_from(Ipv4Addr::new(127, 0, 0, 2), to).await
}

async fn http_client_from(source: Ipv4Addr, to: SocketAddr) -> Sender {
    let stream = connect_from(source, to).await;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(sender: &mut Sender) {
    sender.ready().await.unwrap();
    let req = Request::get("/")
        .header("host", "bench")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let setup = rt.block_on(setup());

    let mut group = c.benchmark_group("http1_sequential");
    group.throughput(Throughput::Elements(1));
    let plain = Ipv4Addr::new(127, 0, 0, 2);
    let routed = Ipv4Addr::new(127, 0, 0, 4);
    for (name, from, to) in [
        ("direct", plain, setup.http_direct),
        ("one_sidecar", plain, setup.proxy),
        ("one_sidecar_100_rules_90_10_mirror_10", routed, setup.proxy),
    ] {
        let sender = rt.block_on(http_client_from(from, to));
        let sender = Arc::new(tokio::sync::Mutex::new(sender));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let sender = Arc::clone(&sender);
                async move {
                    let mut sender = sender.lock().await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        request(&mut sender).await;
                    }
                    start.elapsed()
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("http1_16_connections");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, to) in [("direct", setup.http_direct), ("one_sidecar", setup.proxy)] {
        let senders: Vec<Sender> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..CONNECTIONS {
                v.push(http_client(to).await);
            }
            v
        });
        let senders = Arc::new(tokio::sync::Mutex::new(senders));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let senders = Arc::clone(&senders);
                async move {
                    let mut senders = senders.lock().await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        let per_conn = BATCH / CONNECTIONS;
                        let tasks = senders.drain(..).map(|mut s| {
                            tokio::spawn(async move {
                                for _ in 0..per_conn {
                                    request(&mut s).await;
                                }
                                s
                            })
                        });
                        let tasks: Vec<_> = tasks.collect();
                        for t in tasks {
                            senders.push(t.await.unwrap());
                        }
                    }
                    start.elapsed()
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("tcp_echo_round_trip");
    group.throughput(Throughput::Elements(1));
    for (name, to) in [("direct", setup.tcp_direct), ("one_sidecar", setup.proxy)] {
        let stream = rt.block_on(connect_from(Ipv4Addr::new(127, 0, 0, 3), to));
        let stream = Arc::new(tokio::sync::Mutex::new(stream));
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let stream = Arc::clone(&stream);
                async move {
                    let mut stream = stream.lock().await;
                    let mut buf = [0u8; 64];
                    let start = Instant::now();
                    for _ in 0..iters {
                        stream.write_all(&[7u8; 64]).await.unwrap();
                        stream.read_exact(&mut buf).await.unwrap();
                    }
                    start.elapsed()
                }
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
