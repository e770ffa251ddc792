//! Upstream connections to one endpoint: TCP connects with a timeout, a LIFO stack of idle
//! HTTP/1.1 connections (kept alive, reused warmest first) and one shared, multiplexed HTTP/2
//! connection. Locks are held only to push or pop, never across an await.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

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
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// How long an idle HTTP/1 connection is kept.
    pub idle_timeout: Duration,
    /// Most idle HTTP/1 connections kept.
    pub max_idle: usize,
}

/// An idle HTTP/1 connection.
#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Incoming>,
    since: Instant,
}

/// The connections to one endpoint.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    settings: PoolSettings,
    http1: Mutex<Vec<Idle>>,
    http2: Mutex<Option<http2::SendRequest<Incoming>>>,
    http2_connecting: tokio::sync::Mutex<()>,
}

/// Connects to `addr` within `timeout`, with Nagle off (the proxy writes whole messages).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout { addr, timeout })?
        .map_err(|source| ConnectError::Io { addr, source })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Pool {
        Pool {
            addr,
            settings,
            http1: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            http2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// The endpoint.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new TCP connection to the endpoint.
    pub async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        connect(self.addr, self.settings.connect_timeout).await
    }

    /// An idle HTTP/1 connection ready for a request, if one is kept.
    pub fn idle_http1(&self) -> Option<http1::SendRequest<Incoming>> {
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
    pub async fn new_http1(&self) -> Result<http1::SendRequest<Incoming>, ConnectError> {
        let stream = self.connect_tcp().await?;
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
    pub fn release_http1(self: &Arc<Self>, mut sender: http1::SendRequest<Incoming>) {
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
    pub async fn http2(&self) -> Result<http2::SendRequest<Incoming>, ConnectError> {
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        // One connect at a time; whoever waited finds the new connection.
        let _connecting = self.http2_connecting.lock().await;
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        let stream = self.connect_tcp().await?;
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

    fn live_http2(&self) -> Option<http2::SendRequest<Incoming>> {
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
