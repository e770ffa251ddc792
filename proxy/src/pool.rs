//! Upstream connections to one endpoint: TCP connects with a timeout (and, for the app behind
//! the inbound listener, a fallback address), a LIFO stack of idle
//! HTTP/1.1 connections (kept alive, reused warmest first) and one shared, multiplexed HTTP/2
//! connection. Locks are held only to push or pop, never across an await.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpSocket, TcpStream};

use crate::http::tee::RequestBody;
use crate::identity::{CredentialsWatch, IdentityMetrics};
use crate::tls::{ALPN_H2, ALPN_HTTP1, ALPN_TCP, MeshIo};

/// Stream window of upstream HTTP/2 connections: large enough for full-speed streaming on a LAN.
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection window of upstream HTTP/2 connections.
const H2_CONN_WINDOW: u32 = 4 * 1024 * 1024;

/// Why no connection to the endpoint could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No answer within the connect timeout (black-holed, or the host is down).
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The endpoint.
        addr: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The connect failed (refused, unreachable).
    #[error("connect to {addr} failed: {source}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The TCP connection opened but the mTLS handshake failed (wrong identity, untrusted
    /// root, or the peer refused ours).
    #[error("mtls handshake with {addr} (expecting {expected}) failed: {source}")]
    Tls {
        /// The endpoint.
        addr: SocketAddr,
        /// The identity the endpoint must present.
        expected: String,
        /// What failed.
        source: io::Error,
    },
    /// The TCP connection opened but the HTTP handshake failed.
    #[error("http handshake with {addr} failed: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// What hyper said.
        source: hyper::Error,
    },
}

/// Settings shared by every pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an idle HTTP/1 connection is kept.
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept.
    pub max_idle: usize,
    /// Our workload certificate, for mTLS to meshed endpoints; `None`: always plain.
    pub tls: Option<PoolTls>,
}

/// What a pool needs to originate mTLS.
#[derive(Debug, Clone)]
pub struct PoolTls {
    /// The current credentials.
    pub credentials: CredentialsWatch,
    /// Where handshakes are counted.
    pub metrics: IdentityMetrics,
}

/// An idle HTTP/1 connection.
#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// A second address to try when the first refuses, and the source address to connect from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fallback {
    /// Where to connect instead.
    pub addr: SocketAddr,
    /// The local address to bind first.
    pub source: IpAddr,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    settings: PoolSettings,
    fallback: Option<Fallback>,
    /// Set once the fallback answered where the first address refused: used from then on.
    use_fallback: AtomicBool,
    http1: Mutex<Vec<Idle>>,
    http2: Mutex<Option<http2::SendRequest<RequestBody>>>,
    http2_connecting: tokio::sync::Mutex<()>,
    /// The SPIFFE ID the endpoint's sidecar presents when it is meshed (then connections are
    /// mTLS); `None`: plain.
    peer_identity: Mutex<Option<Arc<str>>>,
}

/// Connects to `addr` (from `source`, if given) within `timeout`, with Nagle off (the proxy
/// writes whole messages).
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(source) = source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        socket.connect(addr).await
    };
    let stream = tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Io { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Pool {
        Pool::with_fallback(addr, None, settings)
    }

    /// An empty pool for `addr` that connects to `fallback` when `addr` refuses.
    pub fn with_fallback(
        addr: SocketAddr,
        fallback: Option<Fallback>,
        settings: PoolSettings,
    ) -> Pool {
        Pool {
            addr,
            settings,
            fallback,
            use_fallback: AtomicBool::new(false),
            http1: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            http2_connecting: tokio::sync::Mutex::new(()),
            peer_identity: Mutex::new(None),
        }
    }

    /// Sets the identity the endpoint's sidecar presents ("" = not meshed). When it changes,
    /// pooled connections are let go (live requests finish on them) so that new requests use the
    /// new security.
    pub fn set_peer_identity(&self, identity: &str) {
        let mut peer = self.peer_identity.lock().unwrap_or_else(|p| p.into_inner());
        if peer.as_deref().unwrap_or("") == identity {
            return;
        }
        *peer = (!identity.is_empty()).then(|| identity.into());
        drop(peer);
        self.http1.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.forget_http2();
    }

    /// The identity the endpoint must present, when it is meshed.
    pub fn peer_identity(&self) -> Option<Arc<str>> {
        self.peer_identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new connection to the endpoint carrying `alpn`: mTLS when the endpoint is meshed and
    /// we hold a certificate, else plain TCP.
    pub async fn connect_io(&self, alpn: &[u8]) -> Result<MeshIo, ConnectError> {
        let tcp = self.connect_tcp().await?;
        let (Some(tls), Some(expected)) = (&self.settings.tls, self.peer_identity()) else {
            return Ok(MeshIo::Plain(tcp));
        };
        let credentials = tls.credentials.borrow().clone();
        let Some(credentials) = credentials else {
            return Ok(MeshIo::Plain(tcp));
        };
        match credentials.connect(tcp, &expected, alpn).await {
            Ok(stream) => {
                tls.metrics.outbound(true);
                Ok(MeshIo::Client(Box::new(stream)))
            }
            Err(source) => {
                tls.metrics.outbound(false);
                tracing::debug!(addr = %self.addr, %expected, error = %source, "mtls handshake failed");
                Err(ConnectError::Tls {
                    addr: self.addr,
                    expected: expected.to_string(),
                    source,
                })
            }
        }
    }

    /// A new opaque connection (mTLS to a meshed endpoint).
    pub async fn connect_opaque(&self) -> Result<MeshIo, ConnectError> {
        self.connect_io(ALPN_TCP).await
    }

    /// The endpoint.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new TCP connection to the endpoint (or to its fallback, once the endpoint refused and
    /// the fallback answered).
    pub async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let Some(fallback) = self.fallback else {
            return connect(self.addr, None, timeout).await;
        };
        if self.use_fallback.load(Ordering::Relaxed) {
            return connect(fallback.addr, Some(fallback.source), timeout).await;
        }
        match connect(self.addr, None, timeout).await {
            Err(ConnectError::Io { source, .. })
                if source.kind() == io::ErrorKind::ConnectionRefused =>
            {
                let stream = connect(fallback.addr, Some(fallback.source), timeout).await?;
                tracing::info!(refused = %self.addr, using = %fallback.addr, "endpoint answers on its fallback address");
                self.use_fallback.store(true, Ordering::Relaxed);
                Ok(stream)
            }
            other => other,
        }
    }

    /// An idle HTTP/1 connection ready for a request, if one is kept.
    pub fn idle_http1(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.http1.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < self.settings.idle_timeout
                && conn.sender.is_ready()
                && !conn.sender.is_closed()
            {
                return Some(conn.sender);
            }
        }
        None
    }

    /// A new HTTP/1 connection (upgrades allowed, so a 101 answer can become a tunnel).
    pub async fn new_http1(&self) -> Result<http1::SendRequest<RequestBody>, ConnectError> {
        let stream = self.connect_io(ALPN_HTTP1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream http/1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Takes `sender` back once its response is fully read (HTTP/1 carries one at a time).
    pub fn release_http1(self: &Arc<Self>, mut sender: http1::SendRequest<RequestBody>) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = pool.http1.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < pool.settings.max_idle {
                    idle.push(Idle {
                        sender,
                        since: Instant::now(),
                    });
                }
            }
        });
    }

    /// The shared HTTP/2 connection, made on first use and remade when it closed.
    pub async fn http2(&self) -> Result<http2::SendRequest<RequestBody>, ConnectError> {
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        // One connect at a time; whoever waited finds the new connection.
        let _connecting = self.http2_connecting.lock().await;
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        let stream = self.connect_io(ALPN_H2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONN_WINDOW)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake {
                addr: self.addr,
                source,
            })?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "upstream http/2 connection ended");
            }
        });
        *self.http2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Forgets the shared HTTP/2 connection (it refused a stream it never started, e.g. after a
    /// GOAWAY), so the next [`Pool::http2`] makes a new one.
    pub fn forget_http2(&self) {
        *self.http2.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The shared HTTP/2 connection if it is open (no connect: see [`Pool::http2`]).
    pub fn live_http2(&self) -> Option<http2::SendRequest<RequestBody>> {
        let mut shared = self.http2.lock().unwrap_or_else(|p| p.into_inner());
        match &*shared {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }
}
