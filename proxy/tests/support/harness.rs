//! In-process test harness: a proxy on 127.0.0.1:0 whose original-destination lookup maps the
//! client's loopback source address (127.0.0.N) to a pretend VIP, upstream servers on loopback,
//! and clients that connect from a chosen source address. No root, no iptables.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serin_proxy::app::Bound;
use serin_proxy::config::{Config, ConfigSource, Identity, ProxySettings};
use serin_proxy::orig_dst::FromFn;
use serin_proxy::snapshot::file;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A long but finite wait for anything that should happen promptly.
pub const LONG: Duration = Duration::from_secs(10);

/// Starts tracing once for the test binary.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,serin_proxy=debug"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Maps client source IPs to original destinations.
pub type Routes = Arc<Mutex<HashMap<IpAddr, SocketAddr>>>;

/// A running in-process proxy and its routing table.
pub struct TestProxy {
    pub bound: Bound,
    pub routes: Routes,
    next_source: AtomicUsize,
}

/// The identity the test proxy has (a client pod `productpage`, v1).
pub fn identity() -> Identity {
    Identity {
        pod_name: "productpage-v1-0".into(),
        namespace: "default".into(),
        pod_ips: vec![],
        service: "productpage".into(),
        version: "v1".into(),
    }
}

impl TestProxy {
    /// A proxy with default settings and no config.
    pub async fn start() -> TestProxy {
        TestProxy::start_with(ProxySettings::default()).await
    }

    /// A proxy with `settings` and no config.
    pub async fn start_with(settings: ProxySettings) -> TestProxy {
        TestProxy::start_as(identity(), settings).await
    }

    /// A proxy for the pod `identity` with `settings` and no config.
    pub async fn start_as(identity: Identity, settings: ProxySettings) -> TestProxy {
        init_tracing();
        let any = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
        let config = Config {
            identity,
            source: ConfigSource::None,
            admin_addr: any,
            outbound_addr: any,
            inbound_addr: any,
            drain_deadline: Duration::from_secs(5),
            proxy: settings,
            static_tls: None,
        };
        let routes: Routes = Arc::default();
        let lookup = {
            let routes = Arc::clone(&routes);
            FromFn(move |stream: &TcpStream| {
                let peer = stream.peer_addr()?;
                let local = stream.local_addr()?;
                // Unknown sources "were going" to the listener itself.
                Ok(routes
                    .lock()
                    .unwrap()
                    .get(&peer.ip())
                    .copied()
                    .unwrap_or(local))
            })
        };
        let bound = Bound::start(&config, Arc::new(lookup))
            .await
            .expect("start proxy");
        TestProxy {
            bound,
            routes,
            next_source: AtomicUsize::new(2),
        }
    }

    /// Applies a YAML snapshot.
    pub fn apply(&self, yaml: &str) {
        self.bound
            .config
            .apply(file::parse(yaml, "test".into()).expect("valid test config"));
    }

    /// A fresh source address whose connections the proxy sees as going to `orig_dst`.
    pub fn route(&self, orig_dst: SocketAddr) -> IpAddr {
        let n = self.next_source.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            (n / 250) as u8 + 1,
            (n % 250) as u8 + 2,
        ));
        self.routes.lock().unwrap().insert(ip, orig_dst);
        ip
    }

    /// A connection to the outbound listener "going to" `orig_dst`.
    pub async fn connect_outbound(&self, orig_dst: SocketAddr) -> TcpStream {
        connect_from(self.route(orig_dst), self.bound.outbound_addr).await
    }

    /// A connection to the inbound listener "going to" `orig_dst`, from `source`.
    pub async fn connect_inbound(&self, source: IpAddr, orig_dst: SocketAddr) -> TcpStream {
        self.routes.lock().unwrap().insert(source, orig_dst);
        connect_from(source, self.bound.inbound_addr).await
    }

    /// GET `path` on the admin server: status and body.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        let stream = TcpStream::connect(self.bound.admin_addr).await.unwrap();
        let mut sender = http1(stream).await;
        let response = sender
            .send_request(
                Request::get(path)
                    .header("host", "admin")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of the metric line that starts with `prefix` and contains every `labels` item.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let (_, text) = self.admin("/metrics").await;
        find_metric(&text, name, labels)
    }
}

/// The value of the sample of `name` whose labels include every `labels` item.
pub fn find_metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Connects to `to` from `source`.
pub async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// An HTTP/1 client connection over `stream`.
pub async fn http1(stream: TcpStream) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
}

/// An HTTP/2 client connection over `stream`.
pub async fn http2(stream: TcpStream) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A server on 127.0.0.1:0 counting its accepted connections and requests.
pub struct Server {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
}

/// An HTTP server (HTTP/1 with upgrades, or HTTP/2, auto-detected) answering with `handler`.
pub async fn http_server<F, Fut>(handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>>
        + Send
        + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        connections,
        requests,
    }
}

/// A boxed body of `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> http_body_util::combinators::BoxBody<Bytes, hyper::Error> {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An HTTP server that answers every request with its method, path, HTTP version and the
/// headers it got (one `name: value` line each), then the request body.
pub async fn echo_server() -> Server {
    http_server(|req: Request<Incoming>| async move {
        let mut head = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
        for (name, value) in req.headers() {
            head.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
        }
        head.push('\n');
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut out = head.into_bytes();
        out.extend_from_slice(&body);
        Response::new(full(out))
    })
    .await
}

/// A TCP server running `serve` on each connection.
pub async fn tcp_server<F, Fut>(serve: F) -> Server
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream));
        }
    });
    Server {
        addr,
        connections,
        requests: Arc::default(),
    }
}

/// A TCP echo server that closes its side (FIN) once the client has.
pub async fn tcp_echo_server() -> Server {
    tcp_server(|mut stream: TcpStream| async move {
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Reads until EOF (bounded by [`LONG`]).
pub async fn read_to_end(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    tokio::time::timeout(LONG, stream.read_to_end(&mut out))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no EOF in time"))??;
    Ok(out)
}

/// A config with service `reviews` (VIP 10.96.0.10, `port` with `protocol`) whose endpoints are
/// `endpoints` (address, version), all ready.
pub fn service_config(port: u16, protocol: &str, endpoints: &[(SocketAddr, &str)]) -> String {
    let mut yaml = format!(
        "services:\n  - name: reviews\n    namespace: default\n    vips: [\"10.96.0.10\"]\n    hostnames: [reviews]\n    ports: [{{port: {port}, name: main, protocol: {protocol}}}]\nendpoints:\n  - service: reviews\n    namespace: default\n    endpoints:\n"
    );
    for (i, (addr, version)) in endpoints.iter().enumerate() {
        yaml.push_str(&format!(
            "      - {{addresses: [\"{}\"], ports: [{{name: main, port: {}}}], podName: reviews-{i}, version: {version}, ready: true}}\n",
            addr.ip(),
            addr.port()
        ));
    }
    yaml
}

/// The pretend VIP of [`service_config`] at `port`.
pub fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(10, 96, 0, 10).into(), port)
}
