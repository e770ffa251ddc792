//! The real control plane (the serin-control library) in the test process, for the loopback
//! tests of the sidecar's clients of it (Discovery, Telemetry, Identity): start on a fixed
//! address, stop, start again on the same store; and a small app to put behind a sidecar.

#![allow(
    dead_code,
    reason = "each test file uses a different part of the support code"
)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serin_control::app::{App, Handles};
use serin_proto::auth::{AuthorizedAdmin, BearerToken, Role, Tokens, admin_client};
use serin_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Generous bound for what should happen promptly.
pub const LONG: Duration = Duration::from_secs(15);

/// Starts tracing for the test binary (later calls do nothing).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,serin_proxy=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Polls `check` every 10 ms until it returns `Some`, failing with `what` after [`LONG`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LONG:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap()
}

/// An HTTP/1.1 app on `listener` answering every request `200` with `body` (keep-alive).
pub fn serve_app(listener: TcpListener, body: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    })
}

/// A control plane running in this process on a fixed address, its store in `store`.
pub struct ControlPlaneProcess {
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its mTLS gRPC address, when the test turned that port on.
    pub grpc_tls: Option<SocketAddr>,
    /// Its state (telemetry windows, mesh, proxies).
    pub handles: Handles,
    /// The write token it generated in its store.
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl ControlPlaneProcess {
    /// Starts it on `grpc` with its store in `store`.
    pub async fn start(store: &Path, grpc: SocketAddr) -> ControlPlaneProcess {
        Self::start_with(store, grpc, |_| {}).await
    }

    /// Starts it on `grpc` with its store in `store`, its config changed by `tweak` first.
    pub async fn start_with(
        store: &Path,
        grpc: SocketAddr,
        tweak: impl FnOnce(&mut serin_control::config::Config),
    ) -> ControlPlaneProcess {
        let mut config = serin_control::config::Config::new(store.to_owned());
        tweak(&mut config);
        config.grpc = grpc;
        config.http = "127.0.0.1:0".parse().unwrap();
        // A stopped control plane's writer thread lets go of the store a moment after its server
        // stopped: retry the open (only that) until the lock is free.
        let deadline = Instant::now() + LONG;
        let app = loop {
            match App::new(config.clone()).await {
                Ok(app) => break app,
                Err(e)
                    if format!("{e:#}").contains("already open") && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("start the control plane: {e:#}"),
            }
        };
        let grpc = app.grpc_addr();
        let grpc_tls = app.grpc_tls_addr();
        let token = Tokens::read(app.admin_tokens_path())
            .unwrap()
            .plain(Role::Write)
            .expect("a generated write token")
            .to_owned();
        let (stop, stopped) = oneshot::channel::<()>();
        let (handles, run) = app
            .start(async move {
                let _ = stopped.await;
            })
            .unwrap();
        ControlPlaneProcess {
            grpc,
            grpc_tls,
            handles,
            token,
            stop: Some(stop),
            task: tokio::spawn(run),
        }
    }

    /// Stops it (its streams end, its port closes) and waits until it has.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(LONG, &mut self.task)
            .await
            .expect("the control plane stops in time")
            .unwrap()
            .unwrap();
    }

    /// The proxies subscribed to it (Admin.ListProxies).
    #[allow(dead_code)] // not every test binary including this file lists proxies
    pub async fn proxies(&self) -> Vec<v1::ProxyStatus> {
        self.admin()
            .await
            .list_proxies(v1::ListProxiesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .proxies
    }

    /// A client of its Admin API, with the write token.
    pub async fn admin(&self) -> AuthorizedAdmin {
        admin_client(
            Channel::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap(),
            BearerToken::new(&self.token).unwrap(),
        )
    }
}

impl Drop for ControlPlaneProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The first VIP of `service` (as the control plane allocated it on registration).
pub async fn vip_of(admin: &mut AuthorizedAdmin, service: &str) -> IpAddr {
    admin
        .list_services(v1::ListServicesRequest::default())
        .await
        .expect("ListServices")
        .into_inner()
        .services
        .iter()
        .filter_map(|s| s.service.as_ref())
        .find(|s| s.name == service)
        .unwrap_or_else(|| panic!("service {service} is registered"))
        .vips[0]
        .parse()
        .expect("a VIP is an IP address")
}
