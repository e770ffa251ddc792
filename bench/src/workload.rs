//! What is sent: the five kinds of load, the upstream port each one uses, and the client side of
//! each exchange (HTTP/1.1 over kept-alive or fresh connections, h2c streams multiplexed on one
//! connection, gRPC unary calls, raw TCP bulk writes).

use std::fmt;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::load::Exchange;

/// Size of request and response bodies.
pub const BODY_BYTES: usize = 1024;
/// The gRPC-like unary method the upstream answers.
pub const GRPC_PATH: &str = "/serin.bench.Echo/Unary";

/// One kind of load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// HTTP/1.1 POSTs with 1 KiB bodies, connections kept alive.
    Http1KeepAlive,
    /// HTTP/1.1 POSTs with 1 KiB bodies, a new connection per request (`Connection: close`).
    Http1NewConnections,
    /// h2c (prior knowledge) POSTs, every stream multiplexed on one connection.
    H2c,
    /// gRPC unary calls (HTTP/2, length-prefixed message, `grpc-status` trailer) on one
    /// connection.
    Grpc,
    /// Raw TCP: bulk writes to a sink; throughput, not requests.
    Tcp,
}

impl Workload {
    /// All of them, in report order.
    pub const ALL: [Workload; 5] = [
        Workload::Http1KeepAlive,
        Workload::Http1NewConnections,
        Workload::H2c,
        Workload::Grpc,
        Workload::Tcp,
    ];

    /// Its name on the command line (`--workload`).
    pub fn slug(self) -> &'static str {
        match self {
            Workload::Http1KeepAlive => "http1",
            Workload::Http1NewConnections => "http1-new",
            Workload::H2c => "h2c",
            Workload::Grpc => "grpc",
            Workload::Tcp => "tcp",
        }
    }

    /// The upstream port serving it (and the service port the proxies declare for it).
    pub fn port(self) -> u16 {
        match self {
            Workload::Http1KeepAlive | Workload::Http1NewConnections => 8080,
            Workload::H2c => 8081,
            Workload::Grpc => 8082,
            Workload::Tcp => 9000,
        }
    }

    /// Whether it is measured in requests (else in bytes).
    pub fn is_requests(self) -> bool {
        self != Workload::Tcp
    }

    /// Whether its streams share one HTTP/2 connection.
    pub fn is_http2(self) -> bool {
        matches!(self, Workload::H2c | Workload::Grpc)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Http1KeepAlive => "HTTP/1.1 keep-alive",
            Workload::Http1NewConnections => "HTTP/1.1 new connection per request",
            Workload::H2c => "h2c multiplexed",
            Workload::Grpc => "gRPC unary",
            Workload::Tcp => "raw TCP throughput",
        })
    }
}

/// A 1 KiB body.
pub fn body() -> Bytes {
    Bytes::from(vec![b'x'; BODY_BYTES])
}

/// A gRPC message frame: uncompressed flag, big-endian length, then `message`.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

fn request(workload: Workload, target: SocketAddr, body: &Bytes) -> Request<Full<Bytes>> {
    let builder = Request::builder()
        .method(Method::POST)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let builder = match workload {
        Workload::Grpc => Request::builder()
            .method(Method::POST)
            .uri(format!("http://{target}{GRPC_PATH}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers"),
        Workload::H2c => builder.uri(format!("http://{target}/")),
        Workload::Http1NewConnections => builder
            .uri("/")
            .header(header::HOST, target.to_string())
            .header(header::CONNECTION, "close"),
        Workload::Http1KeepAlive | Workload::Tcp => {
            builder.uri("/").header(header::HOST, target.to_string())
        }
    };
    builder
        .body(Full::new(body.clone()))
        .expect("a constant request is valid")
}

async fn connect(target: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect to {target}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// An HTTP/1.1 connection (re-made when lost, or for every request without keep-alive).
pub struct Http1Client {
    target: SocketAddr,
    keep_alive: bool,
    body: Bytes,
    sender: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Http1Client {
    /// A client of `target`; nothing is connected until the first exchange.
    pub fn new(target: SocketAddr, keep_alive: bool) -> Http1Client {
        Http1Client {
            target,
            keep_alive,
            body: body(),
            sender: None,
        }
    }
}

impl Exchange for Http1Client {
    async fn exchange(&mut self) -> Result<(), String> {
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => {
                let stream = connect(self.target).await?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/1 handshake: {e}"))?;
                tokio::spawn(conn);
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|e| format!("HTTP/1 connection: {e}"))?;
        let workload = if self.keep_alive {
            Workload::Http1KeepAlive
        } else {
            Workload::Http1NewConnections
        };
        let response = sender
            .send_request(request(workload, self.target, &self.body))
            .await
            .map_err(|e| format!("HTTP/1 request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP/1 response body: {e}"))?
            .to_bytes();
        if self.keep_alive {
            self.sender = Some(sender);
        }
        check(status, body.len())
    }
}

fn check(status: StatusCode, len: usize) -> Result<(), String> {
    if status != StatusCode::OK {
        return Err(format!("status {status}"));
    }
    if len != BODY_BYTES {
        return Err(format!("response body of {len} bytes, not {BODY_BYTES}"));
    }
    Ok(())
}

/// Opens the one HTTP/2 connection that every stream of an h2c or gRPC run shares.
pub async fn http2_connection(
    target: SocketAddr,
) -> Result<http2::SendRequest<Full<Bytes>>, String> {
    let stream = connect(target).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One stream slot on a shared HTTP/2 connection: h2c POSTs or gRPC unary calls.
pub struct Http2Client {
    target: SocketAddr,
    grpc: bool,
    body: Bytes,
    sender: http2::SendRequest<Full<Bytes>>,
}

impl Http2Client {
    /// A slot on `sender`'s connection; `grpc` picks gRPC calls over plain POSTs.
    pub fn new(target: SocketAddr, grpc: bool, sender: http2::SendRequest<Full<Bytes>>) -> Self {
        let body = if grpc {
            grpc_frame(&vec![b'x'; BODY_BYTES])
        } else {
            body()
        };
        Http2Client {
            target,
            grpc,
            body,
            sender,
        }
    }
}

impl Exchange for Http2Client {
    async fn exchange(&mut self) -> Result<(), String> {
        let workload = if self.grpc {
            Workload::Grpc
        } else {
            Workload::H2c
        };
        self.sender
            .ready()
            .await
            .map_err(|e| format!("HTTP/2 connection: {e}"))?;
        let response = self
            .sender
            .send_request(request(workload, self.target, &self.body))
            .await
            .map_err(|e| format!("HTTP/2 request: {e}"))?;
        let status = response.status();
        let collected = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("HTTP/2 response body: {e}"))?;
        if !self.grpc {
            return check(status, collected.to_bytes().len());
        }
        let grpc_status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let len = collected.to_bytes().len();
        match grpc_status.as_deref() {
            Some("0") if status == StatusCode::OK && len == BODY_BYTES + 5 => Ok(()),
            Some("0") => check(status, len.saturating_sub(5)),
            Some(other) => Err(format!("grpc-status {other}")),
            None => Err(format!("status {status}, no grpc-status trailer")),
        }
    }
}
