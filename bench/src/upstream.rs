//! The upstream every shape calls: a small, fast server run on its own thread inside the server
//! pod's namespace (pinned to the server pod's CPU), with a single-threaded runtime. It answers
//! HTTP/1.1 and h2c (prior knowledge) on the HTTP ports with a 1 KiB body, gRPC-like unary calls
//! on [`GRPC_PATH`] with a 1 KiB message and `grpc-status: 0`, and counts the bytes it swallows on
//! the TCP sink port. A "hanging" port accepts connections and never answers (a stuck mirror
//! target).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serin_local::Pod;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::pinning;
use crate::workload::{BODY_BYTES, GRPC_PATH, Workload, body, grpc_frame};

/// A port that accepts and never answers.
pub const HANG_PORT: u16 = 8090;

/// A running upstream; dropping it stops it.
pub struct Upstream {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    sink_bytes: Arc<AtomicU64>,
    http_requests: Arc<AtomicU64>,
}

impl Upstream {
    /// Binds every port inside `pod` (failing if one is taken), then serves on a thread pinned to
    /// `cpu`.
    pub fn start(pod: &Pod, cpu: Option<usize>) -> anyhow::Result<Upstream> {
        let sink_bytes = Arc::new(AtomicU64::new(0));
        let http_requests = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let pod = pod.clone();
        let sink = Arc::clone(&sink_bytes);
        let requests = Arc::clone(&http_requests);
        let thread = std::thread::Builder::new()
            .name(format!("upstream in {}", pod.name()))
            .spawn(move || {
                let ran = pod.run_in(move || -> anyhow::Result<()> {
                    if let Some(cpu) = cpu {
                        pinning::pin_current_thread(cpu)?;
                    }
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let listeners = match bind_all().await {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return Ok(());
                            }
                        };
                        let _ = bound_tx.send(Ok(()));
                        serve(listeners, sink, requests, stopped).await;
                        Ok(())
                    })
                });
                match ran {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "upstream failed"),
                    Err(e) => tracing::error!(error = %e, "upstream could not enter its pod"),
                }
            })?;
        let upstream = Upstream {
            stop: Some(stop),
            thread: Some(thread),
            sink_bytes,
            http_requests,
        };
        match bound_rx.recv() {
            Ok(Ok(())) => Ok(upstream),
            Ok(Err(e)) => Err(e),
            Err(_) => anyhow::bail!("the upstream thread ended before binding its ports"),
        }
    }

    /// Bytes received on the TCP sink port so far.
    pub fn sink_bytes(&self) -> u64 {
        self.sink_bytes.load(Ordering::Relaxed)
    }

    /// HTTP requests (and gRPC calls) answered so far, on every HTTP port.
    pub fn http_requests(&self) -> u64 {
        self.http_requests.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Listeners {
    http: Vec<TcpListener>,
    tcp: TcpListener,
    hang: TcpListener,
}

async fn bind_all() -> anyhow::Result<Listeners> {
    let bind = |port: u16| async move {
        TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .await
            .map_err(|e| anyhow::anyhow!("upstream cannot bind port {port}: {e}"))
    };
    let mut http = Vec::new();
    for port in [
        Workload::Http1KeepAlive.port(),
        Workload::H2c.port(),
        Workload::Grpc.port(),
    ] {
        http.push(bind(port).await?);
    }
    Ok(Listeners {
        http,
        tcp: bind(Workload::Tcp.port()).await?,
        hang: bind(HANG_PORT).await?,
    })
}

async fn serve(
    listeners: Listeners,
    sink: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    stopped: oneshot::Receiver<()>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners.http {
        tasks.spawn(accept_http(listener, Arc::clone(&requests)));
    }
    tasks.spawn(accept_sink(listeners.tcp, sink));
    tasks.spawn(accept_hanging(listeners.hang));
    let _ = stopped.await;
    tasks.abort_all();
}

async fn accept_http(listener: TcpListener, requests: Arc<AtomicU64>) {
    let response = Responses::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let response = response.clone();
        let requests = Arc::clone(&requests);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = response.clone();
                let requests = Arc::clone(&requests);
                async move {
                    let answer = answer(req, &response).await;
                    requests.fetch_add(1, Ordering::Relaxed);
                    Ok::<_, Infallible>(answer)
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http2()
                .initial_stream_window_size(1 << 20)
                .initial_connection_window_size(16 << 20)
                .max_concurrent_streams(1024);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answers, made once.
#[derive(Clone)]
struct Responses {
    body: Bytes,
    grpc_message: Bytes,
}

impl Responses {
    fn new() -> Responses {
        Responses {
            body: body(),
            grpc_message: grpc_frame(&vec![b'y'; BODY_BYTES]),
        }
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, responses: &Responses) -> Response<Body> {
    let grpc = req.uri().path() == GRPC_PATH;
    // Read the whole request, as a real handler would.
    let read = req.into_body().collect().await;
    if read.is_err() {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::new()).boxed())
            .expect("constant response");
    }
    if grpc {
        let body = Full::new(responses.grpc_message.clone()).with_trailers(async {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            Some(Ok(trailers))
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(body.boxed())
            .expect("constant response");
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(responses.body.clone()).boxed())
        .expect("constant response")
}

async fn accept_sink(listener: TcpListener, sink: Arc<AtomicU64>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
}

async fn accept_hanging(listener: TcpListener) {
    let mut held = Vec::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Keep it open, read nothing, answer nothing. Bounded: the oldest go first.
        if held.len() >= 4096 {
            held.remove(0);
        }
        held.push(stream);
    }
}
