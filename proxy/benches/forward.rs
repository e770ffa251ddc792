//! Direct vs one sidecar on loopback, in-process: HTTP/1.1 keep-alive requests (one at a time,
//! and 64 in flight over 16 connections) and TCP echo round trips. The proxy is the real one
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
/// Connections of the concurrent HTTP case.
const CONNECTIONS: usize = 16;
/// Requests per measured batch of the concurrent case (HTTP/1: one in flight per connection).
const BATCH: usize = 64;

struct Setup {
    http_direct: SocketAddr,
    tcp_direct: SocketAddr,
    proxy: SocketAddr,
    _bound: Bound,
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
    };
    // Connections from 127.0.0.2 go to the HTTP port, others to the TCP port.
    let lookup = FromFn(|s: &TcpStream| {
        let port = if s.peer_addr()?.ip() == Ipv4Addr::new(127, 0, 0, 2) {
            8080
        } else {
            7000
        };
        Ok(SocketAddr::new(VIP.parse().unwrap(), port))
    });
    let bound = Bound::start(&config, Arc::new(lookup)).await.unwrap();
    let yaml = format!(
        "services: [{{name: bench, namespace: default, vips: [\"{VIP}\"], ports: [{{port: 8080, name: http, protocol: PROTOCOL_HTTP1}}, {{port: 7000, name: tcp, protocol: PROTOCOL_TCP}}]}}]\n\
         endpoints: [{{service: bench, namespace: default, endpoints: [{{addresses: [\"127.0.0.1\"], ports: [{{name: http, port: {}}}, {{name: tcp, port: {}}}], version: v1, ready: true}}]}}]\n",
        http_direct.port(),
        tcp_direct.port()
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
    let stream = connect_from(Ipv4Addr::new(127, 0, 0, 2), to).await;
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
    for (name, to) in [("direct", setup.http_direct), ("one_sidecar", setup.proxy)] {
        let sender = Arc::new(tokio::sync::Mutex::new(rt.block_on(http_client(to))));
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
