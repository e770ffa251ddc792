//! The capture listeners and what their connections share: [`ProxyInputs`] (settings, identity,
//! the config watch, metrics, the original-destination lookup, the drain watch), and the accept
//! loop ([`Listener`]) that closes connections beyond the listener's limit ([`Admission`]) and
//! backs off when the process runs out of file descriptors.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{Identity, ProxySettings};
use crate::drain;
use crate::inbound;
use crate::metrics::Metrics;
use crate::mirror::Mirrors;
use crate::orig_dst::OrigDstLookup;
use crate::outbound;
use crate::overload::Admission;
use crate::pool::{Fallback, Pool, PoolSettings, PoolTls};
use crate::tables::{EndpointState, Tables};

/// Source address of inbound connections to the app's pod IP: the capture rules return
/// traffic from it on `lo` untouched (see `serin-iptables`).
pub const PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// First pause of the accept loop after an error such as EMFILE.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause of the accept loop after repeated errors.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("failed to bind {what} listener on {addr}: {source}")]
pub struct BindError {
    /// Which listener.
    pub what: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// The OS error (`address already in use`, ...).
    pub source: io::Error,
}

/// Binds a TCP listener, naming it in the error.
pub async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { what, addr, source })
}

/// What every connection handler needs, shared as `Arc`.
#[derive(Debug)]
pub struct ProxyInputs {
    /// Limits and timeouts.
    pub settings: ProxySettings,
    /// Who we are.
    pub identity: Identity,
    /// The current lookup tables.
    pub tables: watch::Receiver<Arc<Tables>>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Original destination lookup.
    pub orig_dst: Arc<dyn OrigDstLookup>,
    /// Signalled on SIGTERM.
    pub drain: drain::Watch,
    /// Mirrored copies: the in-flight bound and timeout.
    pub mirrors: Arc<Mirrors>,
    /// Ports of our own capture listeners: connections "to" them would loop.
    pub own_ports: Mutex<Vec<u16>>,
    /// Connection and request limits of the outbound listener.
    outbound_admission: Admission,
    /// Connection and request limits of the inbound listener.
    inbound_admission: Admission,
    /// Pools to the app's local ports (inbound).
    apps: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
    /// Our workload certificate, when we have an identity: mTLS out to meshed endpoints, and
    /// terminated on the inbound listener.
    pub tls: Option<PoolTls>,
}

impl ProxyInputs {
    /// Inputs for a proxy with `settings`, reading config from `tables`.
    pub fn new(
        settings: ProxySettings,
        identity: Identity,
        tables: watch::Receiver<Arc<Tables>>,
        metrics: Arc<Metrics>,
        orig_dst: Arc<dyn OrigDstLookup>,
        drain: drain::Watch,
        tls: Option<PoolTls>,
    ) -> ProxyInputs {
        let admission = |listener| {
            Admission::new(
                listener,
                settings.max_connections,
                settings.max_requests,
                Arc::clone(&metrics),
            )
        };
        ProxyInputs {
            outbound_admission: admission("outbound"),
            inbound_admission: admission("inbound"),
            settings,
            identity,
            tables,
            metrics,
            orig_dst,
            drain,
            mirrors: Arc::new(Mirrors::new(
                settings.mirror_max_in_flight,
                settings.mirror_timeout,
            )),
            own_ports: Mutex::new(Vec::new()),
            apps: Mutex::new(HashMap::new()),
            tls,
        }
    }

    /// The connection and request limits of the `side` listener.
    pub fn admission(&self, side: Side) -> &Admission {
        match side {
            Side::Outbound => &self.outbound_admission,
            Side::Inbound => &self.inbound_admission,
        }
    }

    /// Settings of new upstream pools.
    pub fn pool_settings(&self) -> PoolSettings {
        PoolSettings {
            connect_timeout: self.settings.connect_timeout,
            idle_timeout: self.settings.pool_idle_timeout,
            max_idle: self.settings.pool_max_idle,
            tls: self.tls.clone(),
        }
    }

    /// The pool and balancer state of the app on local port `port`: `127.0.0.1:port`, or, for
    /// an app that listens only on the pod IP, the pod's IPv4 address from [`PASSTHROUGH_SOURCE`]
    /// (the capture rules let that source through to the pod IP).
    pub fn app(&self, port: u16) -> Arc<EndpointState> {
        let mut apps = self.apps.lock().unwrap_or_else(|p| p.into_inner());
        let loopback = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let fallback = self
            .identity
            .pod_ips
            .iter()
            .find(|ip| ip.is_ipv4())
            .map(|ip| Fallback {
                addr: SocketAddr::new(*ip, port),
                source: PASSTHROUGH_SOURCE.into(),
            });
        Arc::clone(apps.entry(loopback).or_insert_with(|| {
            Arc::new(EndpointState {
                lb: Default::default(),
                pool: Arc::new(Pool::with_fallback(
                    loopback,
                    fallback,
                    self.pool_settings(),
                )),
            })
        }))
    }

    /// Whether `dst` is one of our own listeners (a loop if forwarded).
    pub fn is_self(&self, dst: SocketAddr) -> bool {
        let own = self.own_ports.lock().unwrap_or_else(|p| p.into_inner());
        own.contains(&dst.port()) && self.is_local(dst.ip())
    }

    fn is_local(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_loopback() || ip.is_unspecified() || self.identity.pod_ips.contains(&ip)
    }
}

/// Which capture listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// App → mesh (15001).
    Outbound,
    /// Mesh → app (15006).
    Inbound,
}

/// A bound capture listener.
#[derive(Debug)]
pub struct Listener {
    side: Side,
    listener: TcpListener,
    inputs: Arc<ProxyInputs>,
}

impl Listener {
    /// Binds the `side` listener on `addr` (failing loudly when the port is taken).
    pub async fn new(
        side: Side,
        addr: SocketAddr,
        inputs: Arc<ProxyInputs>,
    ) -> Result<Listener, BindError> {
        let what = match side {
            Side::Outbound => "outbound",
            Side::Inbound => "inbound",
        };
        let listener = bind(what, addr).await?;
        let port = listener
            .local_addr()
            .map_err(|source| BindError { what, addr, source })?
            .port();
        inputs
            .own_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(port);
        Ok(Listener {
            side,
            listener,
            inputs,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts until a drain starts; each connection runs on its own task holding a drain watch.
    /// A connection beyond the listener's limit is closed at once and counted.
    pub async fn run(self) {
        let drain = self.inputs.drain.clone();
        let admission = self.inputs.admission(self.side).clone();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = drain.signaled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    accepted
                }
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: retrying at once would spin; wait for resources.
                    tracing::warn!(side = ?self.side, error = %e, pause = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            };
            // Over the limit: closed before a byte is read (whatever the protocol), so the
            // client learns at once instead of waiting in the backlog.
            let Some(admitted) = admission.connection() else {
                tracing::debug!(side = ?self.side, %peer, "connection limit reached, closing");
                drop(stream);
                continue;
            };
            let inputs = Arc::clone(&self.inputs);
            let side = self.side;
            tokio::spawn(async move {
                let _admitted = admitted;
                handle(side, inputs, stream, peer).await;
            });
        }
        tracing::info!(side = ?self.side, "listener stopped accepting");
    }
}

async fn handle(side: Side, inputs: Arc<ProxyInputs>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let orig_dst = match inputs.orig_dst.original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no original destination, closing");
            return;
        }
    };
    if inputs.is_self(orig_dst) {
        tracing::warn!(%peer, %orig_dst, "connection addressed to the proxy itself, refusing (loop)");
        let _ = stream.set_zero_linger();
        return;
    }
    let span = tracing::debug_span!("conn", ?side, %peer, %orig_dst);
    async move {
        match side {
            Side::Outbound => outbound::handle(&inputs, stream, peer, orig_dst).await,
            Side::Inbound => inbound::handle(&inputs, stream, peer, orig_dst).await,
        }
    }
    .instrument(span)
    .await;
}
