//! Root end-to-end tests of the data plane: a client pod calls a service VIP, and the call goes
//! through the client's outbound sidecar and the server pod's inbound sidecar, both real
//! `serin-proxy` processes running as uid 1337 with a `--config` file, behind real capture rules
//! (`serin-iptables`, applied with the host's iptables tools). Skipped, with a printed reason,
//! without root.
//!
//! The servers run in this test process, bound inside the server pod's namespace; the clients
//! connect from inside the client pod's namespace as root (uid 0), which the capture rules
//! redirect like any app.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::{Mesh, Pod, Process, Redirect, Signal};
use serin_tests::echo::{EchoClient, EchoRequest, EchoServer, EchoService};
use serin_tests::pods::{admin_get, apply_capture, built_binary, channel_in, connect_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The sidecar's uid and gid.
const PROXY_UID: u32 = 1337;
/// The VIP of service `echo`.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// The IPv6 VIP of service `echo`.
const VIP6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x20);
/// The VIP of `blackhole`, whose only endpoint is an address no pod has.
const BLACKHOLE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
/// The VIP of `refused`, whose endpoint's port has no listener.
const REFUSED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
/// An address in the pod subnet that no pod has.
const NOBODY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 250);
/// HTTP (undeclared: detected), also h2c.
const HTTP_PORT: u16 = 8080;
/// WebSocket (undeclared).
const WS_PORT: u16 = 8081;
/// A raw server that resets mid-response (declared HTTP/1).
const RESET_PORT: u16 = 8082;
/// gRPC (declared).
const GRPC_PORT: u16 = 9090;
/// Bulk transfers (declared HTTP/1).
const BULK_PORT: u16 = 9000;
/// TCP echo (declared TCP).
const TCP_PORT: u16 = 7000;
/// A port of `refused` where nothing listens.
const REFUSED_PORT: u16 = 7001;
/// HTTP served on the server pod's IP only, not on loopback (undeclared).
const POD_IP_PORT: u16 = 8090;
/// A server-speaks-first service (undeclared: must not wait out a long detection).
const BANNER_PORT: u16 = 2525;
/// Generous bound for things that should happen promptly.
const LONG: Duration = Duration::from_secs(20);
/// Size of each bulk transfer.
const BULK_BYTES: u64 = 200 * 1024 * 1024;
/// The sidecar's RSS must stay under this while bulk transfers flow.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

/// The snapshot both sidecars load.
fn snapshot(client: &Pod, server: &Pod) -> String {
    // Every address of a pod, IPv4 first.
    let addresses = |pod: &Pod| match pod.ipv6() {
        Some(v6) => format!("\"{}\", \"{v6}\"", pod.ip()),
        None => format!("\"{}\"", pod.ip()),
    };
    let (c, s) = (addresses(client), addresses(server));
    let s4 = server.ip();
    format!(
        r#"services:
  - name: echo
    namespace: default
    vips: ["{VIP}", "{VIP6}"]
    hostnames: [echo, echo.default]
    ports:
      - {{port: {HTTP_PORT}, name: http}}
      - {{port: {WS_PORT}, name: ws}}
      - {{port: {RESET_PORT}, name: reset, protocol: PROTOCOL_HTTP1}}
      - {{port: {GRPC_PORT}, name: grpc, protocol: PROTOCOL_GRPC}}
      - {{port: {BULK_PORT}, name: bulk, protocol: PROTOCOL_HTTP1}}
      - {{port: {TCP_PORT}, name: tcp, protocol: PROTOCOL_TCP}}
      - {{port: {BANNER_PORT}, name: banner}}
      - {{port: {POD_IP_PORT}, name: pod-ip}}
  - {{name: client, namespace: default}}
  - {{name: blackhole, namespace: default, vips: ["{BLACKHOLE_VIP}"], ports: [{{port: 80, protocol: PROTOCOL_HTTP1}}]}}
  - {{name: refused, namespace: default, vips: ["{REFUSED_VIP}"], ports: [{{port: {REFUSED_PORT}, protocol: PROTOCOL_HTTP1}}]}}
endpoints:
  - service: echo
    namespace: default
    endpoints: [{{addresses: [{s}], podName: echo-v1, version: v1, ready: true}}]
  - service: client
    namespace: default
    endpoints: [{{addresses: [{c}], podName: client, version: v7, ready: true}}]
  - service: blackhole
    namespace: default
    endpoints: [{{addresses: ["{NOBODY}"], podName: ghost, version: v1, ready: true}}]
  - service: refused
    namespace: default
    endpoints: [{{addresses: ["{s4}"], podName: echo-v1, version: v1, ready: true}}]
"#
    )
}

/// A directory any uid can read, with a copy of `serin-proxy` (the build directory may be
/// closed to uid 1337) and the config; removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(config: &str) -> Files {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("serin-sidecars-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::copy(built_binary("serin-proxy"), dir.join("serin-proxy")).unwrap();
        fs::set_permissions(dir.join("serin-proxy"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("mesh.yaml"), config).unwrap();
        fs::set_permissions(dir.join("mesh.yaml"), fs::Permissions::from_mode(0o644)).unwrap();
        Files { dir }
    }

    fn proxy(&self) -> PathBuf {
        self.dir.join("serin-proxy")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Show the sidecars' logs of a failed test.
            for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let text = fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(80).collect();
                    eprintln!("----- {} (last lines) -----", entry.path().display());
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The mesh: a client pod and a server pod (`echo-v1`), capture rules and sidecars in both,
/// the servers running on `rt`.
struct Sidecars {
    rt: tokio::runtime::Runtime,
    client: Pod,
    server: Pod,
    client_proxy: Process,
    server_proxy: Process,
    files: Files,
    /// The guard: declared last, dropped last; removes everything, also on panic.
    _mesh: Mesh,
}

impl Sidecars {
    fn new(test: &str) -> Option<Sidecars> {
        if skip_unless_root(test) {
            return None;
        }
        init_tracing();
        let mesh = Mesh::create().expect("create mesh");
        let client = mesh.add_pod("client").expect("add pod client");
        let server = mesh.add_pod("echo-v1").expect("add pod echo-v1");
        mesh.add_service(VIP.into(), "echo", "default").unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        start_servers(&rt, &server);
        let files = Files::new(&snapshot(&client, &server));
        for pod in [&client, &server] {
            apply_capture(pod);
        }
        let client_proxy = start_sidecar(&files, &client, "client", "v7", &[]);
        let server_proxy = start_sidecar(&files, &server, "echo", "v1", &[]);
        for pod in [&client, &server] {
            eventually(&format!("sidecar of {} ready", pod.name()), LONG, || {
                (admin_get(pod, 15000, "/ready", LONG).ok()?.0 == 200).then_some(())
            });
        }
        Some(Sidecars {
            rt,
            client,
            server,
            client_proxy,
            server_proxy,
            files,
            _mesh: mesh,
        })
    }

    /// A connection from the client pod to `ip:port` (captured by its outbound rules).
    async fn connect_to(&self, ip: Ipv4Addr, port: u16) -> TcpStream {
        connect_from(&self.client, SocketAddr::new(ip.into(), port)).await
    }

    async fn connect(&self, port: u16) -> TcpStream {
        self.connect_to(VIP, port).await
    }
}

/// Connects to `addr` from inside `pod`, panicking if it cannot.
async fn connect_from(pod: &Pod, addr: SocketAddr) -> TcpStream {
    connect_in(pod, addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr} from {}: {e}", pod.name()))
}

/// Starts `serin-proxy` in `pod` as uid 1337 with the config file and `extra` flags.
fn start_sidecar(
    files: &Files,
    pod: &Pod,
    service: &str,
    version: &str,
    extra: &[&str],
) -> Process {
    let mut argv: Vec<String> = vec![
        files.proxy().display().to_string(),
        "--config".into(),
        files.dir.join("mesh.yaml").display().to_string(),
        "--pod-name".into(),
        pod.name().into(),
        "--namespace".into(),
        "default".into(),
        "--pod-ip".into(),
        pod.ip().to_string(),
        "--service".into(),
        service.into(),
        "--version".into(),
        version.into(),
        "--connect-timeout".into(),
        "1s".into(),
        "--log-level".into(),
        "info,serin_proxy=debug".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    pod.exec(&argv)
        .user(PROXY_UID, PROXY_UID)
        .stdout(Redirect::Append(files.log(pod.name())))
        .stderr(Redirect::Append(files.log(pod.name())))
        .spawn()
        .expect("spawn serin-proxy")
}

/// The value of the sample of `name` whose labels include every `labels` item.
fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(bytes: impl Into<Bytes>) -> BoxBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// One MiB of the same bytes, shared by every chunk of a bulk transfer.
fn chunk() -> Bytes {
    Bytes::from(vec![b's'; 1024 * 1024])
}

/// `n` bytes of chunks as a streaming body.
fn bulk_body(n: u64) -> BoxBody {
    let chunk = chunk();
    let count = n / chunk.len() as u64;
    let stream = futures::stream::iter(
        (0..count).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
    );
    BodyExt::boxed(StreamBody::new(stream))
}

/// How many `/slow` requests the servers of this process have started.
static SLOW_STARTED: AtomicU64 = AtomicU64::new(0);

/// The HTTP servers' handler: `/bulk` counts an upload, `/download` streams [`BULK_BYTES`],
/// `/trailers` answers in chunks with a trailer, `/slow` answers after a second, anything else
/// echoes method, path and version, then the body.
async fn handle(req: Request<Incoming>) -> Response<BoxBody> {
    match req.uri().path() {
        "/upload" => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                total += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Response::new(full(total.to_string()))
        }
        "/download" => Response::new(bulk_body(BULK_BYTES)),
        "/trailers" => {
            let frames = vec![
                Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"first,"))),
                Ok(Frame::data(Bytes::from_static(b"second"))),
                Ok(Frame::trailers({
                    let mut t = hyper::HeaderMap::new();
                    t.insert("x-checksum", "42".parse().unwrap());
                    t
                })),
            ];
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(
                futures::stream::iter(frames),
            )));
            response
                .headers_mut()
                .insert("trailer", "x-checksum".parse().unwrap());
            response
        }
        "/slow" => {
            SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            Response::new(full("slow"))
        }
        _ => {
            let head = format!(
                "{} {} {:?}\n",
                req.method(),
                req.uri().path(),
                req.version()
            );
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut out = head.into_bytes();
            out.extend_from_slice(&body);
            Response::new(full(out))
        }
    }
}

/// Binds `port` on all IPv4 addresses inside `pod`.
fn listen(rt: &tokio::runtime::Runtime, pod: &Pod, port: u16) -> tokio::net::TcpListener {
    let std = pod
        .run_in(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap()
        .unwrap_or_else(|e| panic!("bind {port} in {}: {e}", pod.name()));
    std.set_nonblocking(true).unwrap();
    let _guard = rt.enter();
    tokio::net::TcpListener::from_std(std).unwrap()
}

/// Starts every server of the `echo` service in `pod`.
fn start_servers(rt: &tokio::runtime::Runtime, pod: &Pod) {
    for port in [HTTP_PORT, BULK_PORT] {
        let listener = listen(rt, pod, port);
        rt.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req| async move {
                        Ok::<_, std::convert::Infallible>(handle(req).await)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }
    // An app that listens on its pod IP only.
    let std = pod
        .run_in(|| std::net::TcpListener::bind((pod.ip(), POD_IP_PORT)))
        .unwrap()
        .unwrap();
    std.set_nonblocking(true).unwrap();
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(std).unwrap()
    };
    rt.spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(Response::new(full(format!(
                        "from {}",
                        peer.ip()
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let listener = listen(rt, pod, GRPC_PORT);
    rt.spawn(async move {
        let incoming = futures::stream::unfold(listener, |listener| async move {
            let accepted = listener.accept().await.map(|(stream, _)| stream);
            Some((accepted, listener))
        });
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    let listener = listen(rt, pod, WS_PORT);
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
        }
    });
    let listener = listen(rt, pod, TCP_PORT);
    rt.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let listener = listen(rt, pod, BANNER_PORT);
    rt.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"220 serin banner\r\n").await;
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let listener = listen(rt, pod, RESET_PORT);
    rt.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\npartial")
                    .await;
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = stream.set_zero_linger();
            });
        }
    });
}

/// An HTTP/1 client connection that waits for the previous exchange to finish before sending.
struct Http1Client(hyper::client::conn::http1::SendRequest<BoxBody>);

impl Http1Client {
    async fn send_request(&mut self, req: Request<BoxBody>) -> hyper::Result<Response<Incoming>> {
        self.0.ready().await?;
        self.0.send_request(req).await
    }
}

async fn http1_client(stream: TcpStream) -> Http1Client {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    Http1Client(sender)
}

fn get(path: &str) -> Request<BoxBody> {
    Request::get(path)
        .header("host", "echo")
        .body(full(""))
        .unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[test]
fn every_protocol_through_two_sidecars_with_metrics_on_both() {
    let Some(fx) = Sidecars::new("every_protocol_through_two_sidecars_with_metrics_on_both") else {
        return;
    };
    fx.rt.block_on(async {
        // HTTP/1.1 keep-alive: three requests on one connection.
        let mut h1 = http1_client(fx.connect(HTTP_PORT).await).await;
        for i in 0..3 {
            let req = Request::post(format!("/keep/{i}"))
                .header("host", "echo")
                .body(full(format!("n{i}")))
                .unwrap();
            let response = h1.send_request(req).await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                text(response).await,
                format!("POST /keep/{i} HTTP/1.1\nn{i}")
            );
        }
        // HTTP/1.1 `Connection: close`.
        let mut stream = fx.connect(HTTP_PORT).await;
        stream
            .write_all(b"GET /close HTTP/1.1\r\nHost: echo\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(LONG, stream.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n") && out.ends_with("GET /close HTTP/1.1\n"),
            "{out}"
        );
        // Chunked body with a trailer.
        let response = h1
            .send_request(
                Request::get("/trailers")
                    .header("host", "echo")
                    .header("te", "trailers")
                    .body(full(""))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()["transfer-encoding"], "chunked");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().map(|t| t["x-checksum"].clone()),
            Some("42".parse().unwrap())
        );
        assert_eq!(collected.to_bytes(), "first,second");

        // h2c with prior knowledge, detected: five concurrent streams on one connection.
        let (h2, conn) = hyper::client::conn::http2::handshake(
            TokioExecutor::new(),
            TokioIo::new(fx.connect(HTTP_PORT).await),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let streams = (0..5).map(|i| {
            let mut h2 = h2.clone();
            async move {
                let req = Request::get(format!("http://echo:{HTTP_PORT}/h2/{i}"))
                    .body(full(""))
                    .unwrap();
                text(h2.send_request(req).await.unwrap()).await
            }
        });
        for (i, body) in futures::future::join_all(streams)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(body, format!("GET /h2/{i} HTTP/2.0\n"));
        }

        // gRPC unary (ok and failing) and bidirectional streaming, with tonic.
        let channel = channel_in(&fx.client, SocketAddr::new(VIP.into(), GRPC_PORT))
            .await
            .unwrap();
        let mut grpc = EchoClient::new(channel);
        let reply = grpc
            .unary(EchoRequest {
                text: "hi".into(),
                code: 0,
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().text, "hi");
        let status = grpc
            .unary(EchoRequest {
                text: "nope".into(),
                code: 5,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut replies = grpc
            .chat(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..3 {
            tx.send(EchoRequest {
                text: format!("m{i}"),
                code: 0,
            })
            .await
            .unwrap();
            let reply = tokio::time::timeout(LONG, replies.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(reply.text, format!("m{i}"));
        }
        drop(tx);
        assert!(
            tokio::time::timeout(LONG, replies.next())
                .await
                .unwrap()
                .is_none()
        );

        // WebSocket echo.
        let (mut ws, _) = tokio_tungstenite::client_async(
            format!("ws://{VIP}:{WS_PORT}/ws"),
            fx.connect(WS_PORT).await,
        )
        .await
        .unwrap();
        for m in ["hello", "websocket"] {
            ws.send(tokio_tungstenite::tungstenite::Message::text(m))
                .await
                .unwrap();
            let echoed = tokio::time::timeout(LONG, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(echoed.into_text().unwrap().as_str(), m);
        }
        drop(ws);

        // Raw TCP echo, with half-close.
        let mut tcp = fx.connect(TCP_PORT).await;
        tcp.write_all(b"raw bytes").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        tokio::time::timeout(LONG, tcp.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"raw bytes");

        // Server speaks first on an undeclared port: the banner in well under a second.
        let start = Instant::now();
        let mut banner = fx.connect(BANNER_PORT).await;
        let mut line = [0u8; 18];
        tokio::time::timeout(LONG, banner.read_exact(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&line, b"220 serin banner\r\n");
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "banner after {:?}",
            start.elapsed()
        );
        drop(banner);
    });

    // Metrics on both sides of the edge client v7 → echo v1.
    let edge = [
        "source_workload=\"client\"",
        "source_namespace=\"default\"",
        "source_version=\"v7\"",
        "destination_service=\"echo\"",
        "destination_namespace=\"default\"",
        "destination_version=\"v1\"",
        "mirror=\"false\"",
    ];
    for (pod, direction) in [
        (&fx.client, "direction=\"outbound\""),
        (&fx.server, "direction=\"inbound\""),
    ] {
        let expect = |text: &str, name: &str, extra: &[&str], want: f64| {
            let labels: Vec<&str> = edge
                .iter()
                .chain(extra)
                .chain([&direction])
                .copied()
                .collect();
            // Request metrics are recorded when a response ends: allow the last ones a moment.
            assert_eq!(
                metric(text, name, &labels),
                Some(want),
                "{} {name} {extra:?}:\n{text}",
                pod.name()
            );
        };
        let text = eventually("all requests recorded", LONG, || {
            let (_, text) = admin_get(pod, 15000, "/metrics", LONG).ok()?;
            let labels: Vec<&str> = edge
                .iter()
                .chain(["response_code=\"200\"", "grpc_status=\"\"", direction].iter())
                .copied()
                .collect();
            (metric(&text, "serin_requests_total", &labels) == Some(10.0)).then_some(text)
        });
        // 3 keep-alive + 1 close + 1 trailers + 5 h2c.
        expect(
            &text,
            "serin_request_duration_seconds_count",
            &["response_code=\"200\"", "grpc_status=\"\""],
            10.0,
        );
        expect(
            &text,
            "serin_requests_total",
            &["response_code=\"200\"", "grpc_status=\"0\""],
            2.0,
        );
        expect(
            &text,
            "serin_requests_total",
            &["response_code=\"200\"", "grpc_status=\"5\""],
            1.0,
        );
        expect(
            &text,
            "serin_requests_total",
            &["response_code=\"101\""],
            1.0,
        );
        // TCP echo and the banner connection.
        expect(&text, "serin_tcp_connections_opened_total", &[], 2.0);
        expect(&text, "serin_tcp_sent_bytes_total", &[], 9.0);
    }
}

#[test]
fn bulk_transfers_stream_with_small_sidecar_memory() {
    let Some(fx) = Sidecars::new("bulk_transfers_stream_with_small_sidecar_memory") else {
        return;
    };
    let pids = [fx.client_proxy.id(), fx.server_proxy.id()];
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for pid in pids {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let idle: Vec<u64> = pids.iter().filter_map(|&pid| rss_kib(pid)).collect();
    fx.rt.block_on(async {
        let mut client = http1_client(fx.connect(BULK_PORT).await).await;
        let start = Instant::now();
        let upload = Request::post("/upload")
            .header("host", "echo")
            .body(bulk_body(BULK_BYTES))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(120), client.send_request(upload))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(text(response).await, BULK_BYTES.to_string());
        let up = start.elapsed();
        let start = Instant::now();
        let response = client.send_request(get("/download")).await.unwrap();
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = tokio::time::timeout(LONG, body.frame()).await.unwrap() {
            total += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
        }
        assert_eq!(total, BULK_BYTES);
        tracing::info!(?up, down = ?start.elapsed(), "200 MiB each way through two sidecars");
    });
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    tracing::info!(?idle, peak_kib = peak, "sidecar RSS");
    assert!(peak > 0, "no RSS sample");
    assert!(
        peak < RSS_LIMIT_KIB,
        "a sidecar reached {peak} KiB RSS (idle: {idle:?} KiB)"
    );
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn failing_upstreams_get_prompt_answers_and_the_sidecars_keep_serving() {
    let Some(fx) =
        Sidecars::new("failing_upstreams_get_prompt_answers_and_the_sidecars_keep_serving")
    else {
        return;
    };
    fx.rt.block_on(async {
        // Refused: the server pod's inbound sidecar finds no app on the port.
        let start = Instant::now();
        let mut client = http1_client(fx.connect_to(REFUSED_VIP, REFUSED_PORT).await).await;
        let response = client.send_request(get("/")).await.unwrap();
        assert_eq!(response.status(), 503);
        let body = text(response).await;
        assert!(
            body.contains(&format!(":{REFUSED_PORT} failed: Connection refused")),
            "{body}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "took {:?}",
            start.elapsed()
        );

        // Black-holed: an endpoint address that no pod has.
        let start = Instant::now();
        let mut client = http1_client(fx.connect_to(BLACKHOLE_VIP, 80).await).await;
        let response = tokio::time::timeout(LONG, client.send_request(get("/")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 503);
        let body = text(response).await;
        assert!(body.contains(&format!("connect to {NOBODY}:80")), "{body}");
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "took {:?}",
            start.elapsed()
        );

        // Reset mid-response: the client sees a broken body, not a hang.
        let mut client = http1_client(fx.connect(RESET_PORT).await).await;
        let response = tokio::time::timeout(LONG, client.send_request(get("/")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        let body = tokio::time::timeout(LONG, response.into_body().collect())
            .await
            .unwrap();
        assert!(body.is_err(), "a reset mid-body must not look complete");

        // And everything else still works.
        let mut client = http1_client(fx.connect(HTTP_PORT).await).await;
        let response = client.send_request(get("/after")).await.unwrap();
        assert_eq!(text(response).await, "GET /after HTTP/1.1\n");
    });
    let (_, text) = admin_get(&fx.client, 15000, "/metrics", LONG).unwrap();
    for (service, code) in [("refused", "503"), ("blackhole", "503")] {
        let labels = [
            &format!("destination_service=\"{service}\"")[..],
            &format!("response_code=\"{code}\""),
        ];
        assert_eq!(
            metric(&text, "serin_requests_total", &labels),
            Some(1.0),
            "{service}:\n{text}"
        );
    }
}

#[test]
fn readiness_needs_a_config_taken_ports_fail_and_sigterm_drains() {
    let Some(fx) = Sidecars::new("readiness_needs_a_config_taken_ports_fail_and_sigterm_drains")
    else {
        return;
    };
    // No config, and a control plane the proxy cannot use yet: alive, never ready.
    let ports = [
        "--admin-port",
        "15100",
        "--outbound-port",
        "15101",
        "--inbound-port",
        "15106",
    ];
    let bare = fx
        .client
        .exec(
            [
                &fx.files.proxy().display().to_string(),
                "--pod-name",
                "bare",
            ]
            .into_iter()
            .chain(ports),
        )
        .user(PROXY_UID, PROXY_UID)
        .stderr(Redirect::Append(fx.files.log("bare")))
        .stdout(Redirect::Append(fx.files.log("bare")))
        .spawn()
        .unwrap();
    eventually("bare proxy live", LONG, || {
        (admin_get(&fx.client, 15100, "/live", LONG).ok()?.0 == 200).then_some(())
    });
    assert_eq!(
        admin_get(&fx.client, 15100, "/ready", LONG).unwrap(),
        (503, "no config yet\n".to_owned())
    );
    // `wait-ready`, what a pod runs before starting its app: gives up on the bare proxy, passes on
    // the configured sidecar.
    let wait = |port: &str| {
        let proxy = fx.files.proxy().display().to_string();
        fx.client
            .exec([
                &proxy[..],
                "--admin-port",
                port,
                "wait-ready",
                "--timeout",
                "300ms",
            ])
            .user(PROXY_UID, PROXY_UID)
            .output()
            .unwrap()
    };
    let out = wait("15100");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not ready after 300ms") && stderr.contains("503"),
        "{stderr}"
    );
    assert!(wait("15000").status.success());
    bare.kill().unwrap();
    let cp_ports = [
        "--admin-port",
        "15200",
        "--outbound-port",
        "15201",
        "--inbound-port",
        "15206",
    ];
    // A control plane nobody serves (the bridge address): alive, retrying, not ready.
    let client_ip = fx.client.ip().to_string();
    let _cp = fx
        .client
        .exec(
            [
                &fx.files.proxy().display().to_string(),
                "--control-plane",
                "http://10.244.0.1:15010",
                "--pod-name",
                "client",
                "--pod-ip",
                &client_ip,
            ]
            .into_iter()
            .chain(cp_ports),
        )
        .user(PROXY_UID, PROXY_UID)
        .stderr(Redirect::Append(fx.files.log("control-plane")))
        .spawn()
        .unwrap();
    eventually("control-plane proxy live", LONG, || {
        (admin_get(&fx.client, 15200, "/live", LONG).ok()?.0 == 200).then_some(())
    });
    assert_eq!(admin_get(&fx.client, 15200, "/ready", LONG).unwrap().0, 503);
    eventually(
        "the control-plane proxy says why it is not ready",
        LONG,
        || {
            let log = fs::read_to_string(fx.files.log("control-plane")).ok()?;
            log.contains("cannot connect to the control plane at http://10.244.0.1:15010")
                .then_some(())
        },
    );

    // A second sidecar on the ports the first holds: a loud, immediate failure.
    let out = fx
        .client
        .exec([&fx.files.proxy().display().to_string()])
        .user(PROXY_UID, PROXY_UID)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failed to bind admin listener on") && stderr.contains("in use"),
        "{stderr}"
    );

    // SIGTERM during a slow request: not ready at once, the request completes, exit 0.
    let before = SLOW_STARTED.load(Ordering::SeqCst);
    let slow = fx.rt.spawn({
        let pod = fx.client.clone();
        async move {
            let mut client =
                http1_client(connect_from(&pod, SocketAddr::new(VIP.into(), HTTP_PORT)).await)
                    .await;
            let response = client.send_request(get("/slow")).await.unwrap();
            let close = response.headers().get("connection").cloned();
            (text(response).await, close)
        }
    });
    eventually("slow request at the server", LONG, || {
        (SLOW_STARTED.load(Ordering::SeqCst) > before).then_some(())
    });
    let start = Instant::now();
    fx.client_proxy.signal(Signal::SIGTERM).unwrap();
    eventually("not ready after SIGTERM", LONG, || {
        let (code, _) = admin_get(&fx.client, 15000, "/ready", LONG).ok()?;
        (code == 503).then_some(())
    });
    let (body, close) = fx.rt.block_on(slow).unwrap();
    assert_eq!(body, "slow");
    assert_eq!(close, Some("close".parse().unwrap()));
    let status = fx.client_proxy.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "exit after {:?}",
        start.elapsed()
    );
    let log = fs::read_to_string(fx.files.log("client")).unwrap();
    assert!(log.contains("drained, exiting"), "{log}");
}

#[test]
fn ipv6_vip_goes_through_both_sidecars() {
    let Some(fx) = Sidecars::new("ipv6_vip_goes_through_both_sidecars") else {
        return;
    };
    if fx.server.ipv6().is_none() {
        println!("skipping ipv6_vip_goes_through_both_sidecars: the mesh has no IPv6 on this host");
        return;
    }
    fx.rt.block_on(async {
        let v6 = |port| SocketAddr::new(VIP6.into(), port);
        let mut client = http1_client(connect_from(&fx.client, v6(HTTP_PORT)).await).await;
        let response = client.send_request(get("/six")).await.unwrap();
        assert_eq!(text(response).await, "GET /six HTTP/1.1\n");
        let mut tcp = connect_from(&fx.client, v6(TCP_PORT)).await;
        tcp.write_all(b"over ipv6").await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        tokio::time::timeout(LONG, tcp.read_to_end(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, b"over ipv6");
    });
    // The server's sidecar knew the caller by its IPv6 address.
    let labels = [
        "direction=\"inbound\"",
        "source_workload=\"client\"",
        "response_code=\"200\"",
    ];
    let text = eventually("inbound request recorded", LONG, || {
        let (_, text) = admin_get(&fx.server, 15000, "/metrics", LONG).ok()?;
        (metric(&text, "serin_requests_total", &labels) == Some(1.0)).then_some(text)
    });
    let tcp = ["direction=\"inbound\"", "source_workload=\"client\""];
    assert_eq!(
        metric(&text, "serin_tcp_connections_opened_total", &tcp),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn an_app_bound_to_its_pod_ip_only_is_reached_from_the_passthrough_source() {
    let Some(fx) =
        Sidecars::new("an_app_bound_to_its_pod_ip_only_is_reached_from_the_passthrough_source")
    else {
        return;
    };
    fx.rt.block_on(async {
        let mut client = http1_client(fx.connect(POD_IP_PORT).await).await;
        for _ in 0..2 {
            let response = client.send_request(get("/")).await.unwrap();
            assert_eq!(response.status(), 200);
            // The inbound sidecar connected from 127.0.0.6, which the capture rules let through.
            assert_eq!(text(response).await, "from 127.0.0.6");
        }
    });
}
