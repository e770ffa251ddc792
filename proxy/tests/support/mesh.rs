//! Two meshed sidecars on loopback for the mTLS tests: the real control plane (CA, Identity,
//! registry) in the test process, a server workload (an app behind its sidecar, with a relay on
//! its endpoint address that keeps the bytes on the wire) and a client workload, each
//! registered (the bootstrap token goes to its sidecar). [`Mesh::builder`] states what differs:
//! namespace, service accounts, mTLS mode, certificate lifetime, the control plane's config.
//!
//! Needs `support/control_plane.rs` as module `control_plane` of the test crate:
//!
//! ```ignore
//! #[path = "support/control_plane.rs"]
//! mod control_plane;
//! #[path = "support/mesh.rs"]
//! mod mesh;
//! ```

#![allow(
    dead_code,
    reason = "each test file uses a different part of the support code"
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serin_proto::auth::AuthorizedAdmin;
use serin_proto::v1;
use serin_proxy::app::Bound;
use serin_proxy::config::{CaSource, Config, ConfigSource, ControlPlane, Identity, ProxySettings};
use serin_proxy::identity::{self, IdentitySettings, TokenSource};
use serin_proxy::orig_dst::FromFn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::control_plane::{
    self, ControlPlaneProcess, LONG, eventually, free_addr, init_tracing, serve_app,
};

/// The server pod's address (its endpoint): the relay listens here.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where the server sidecar's inbound listener is.
pub const SERVER_INBOUND_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// The port the client workload registers (nothing listens there).
pub const CLIENT_PORT: u16 = 8080;

/// A workload as the tests register it: pod `<service>-0`, version `v1`, one HTTP/1.1 port.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The pod's name.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service.
    pub service: String,
    /// Its service account (in its SPIFFE ID).
    pub service_account: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Its HTTP/1.1 port.
    pub port: u16,
}

impl Workload {
    /// Pod `<service>-0` of `service` in namespace `default`, service account `service`.
    pub fn new(service: &str, ip: Ipv4Addr, port: u16) -> Workload {
        Workload {
            pod: format!("{service}-0"),
            namespace: "default".into(),
            service: service.into(),
            service_account: service.into(),
            ip,
            port,
        }
    }

    /// This workload in `namespace`.
    pub fn in_namespace(self, namespace: &str) -> Workload {
        Workload {
            namespace: namespace.into(),
            ..self
        }
    }

    /// This workload with service account `service_account`.
    pub fn with_service_account(self, service_account: &str) -> Workload {
        Workload {
            service_account: service_account.into(),
            ..self
        }
    }

    /// Its SPIFFE ID in the default trust domain.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            identity::DEFAULT_TRUST_DOMAIN,
            self.namespace,
            self.service_account
        )
    }

    /// Its registration under a five-minute lease.
    pub fn registration(&self) -> v1::RegisterWorkloadRequest {
        v1::RegisterWorkloadRequest {
            workload: Some(v1::Workload {
                pod_name: self.pod.clone(),
                namespace: self.namespace.clone(),
                addresses: vec![self.ip.to_string()],
                service: self.service.clone(),
                version: "v1".into(),
                ports: vec![v1::WorkloadPort {
                    name: "http".into(),
                    port: u32::from(self.port),
                    protocol: v1::Protocol::Http1 as i32,
                }],
                service_account: self.service_account.clone(),
                ..Default::default()
            }),
            ttl: Some(prost_types::Duration {
                seconds: 300,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    /// Registers it: the bootstrap token of the registration.
    pub async fn register(&self, admin: &mut AuthorizedAdmin) -> String {
        admin
            .register_workload(self.registration())
            .await
            .unwrap_or_else(|e| panic!("RegisterWorkload {}: {e}", self.pod))
            .into_inner()
            .bootstrap_token
    }
}

/// A sidecar of `workload` following `cp` with the bootstrap `token` (on the control plane's
/// mTLS port when it has one), asking for certificates lasting `cert_ttl` (`None`: the control
/// plane's default); inbound on `inbound`, and `orig` is where every captured connection "was
/// going". Its Discovery and certificate tasks run until the test ends.
pub async fn start_sidecar(
    cp: &ControlPlaneProcess,
    workload: &Workload,
    token: String,
    options: SidecarOptions,
    inbound: SocketAddr,
    orig: SocketAddr,
) -> Arc<Bound> {
    let settings = ControlPlane {
        tls_url: cp.grpc_tls.map(|a| format!("https://{a}")),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        telemetry_interval: options.telemetry,
        control_plane_ca: options.control_plane_ca.map(Box::new),
        identity: Some(Box::new(IdentitySettings {
            token: TokenSource::Value(token),
            trust_domain: identity::DEFAULT_TRUST_DOMAIN.into(),
            service_account: workload.service_account.clone(),
            cert_ttl: options.cert_ttl,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
        })),
        ..ControlPlane::new(
            options
                .plaintext_url
                .unwrap_or_else(|| format!("http://{}", cp.grpc)),
        )
    };
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let config = Config {
        identity: Identity {
            pod_name: workload.pod.clone(),
            namespace: workload.namespace.clone(),
            pod_ips: vec![workload.ip.into()],
            service: workload.service.clone(),
            version: "v1".into(),
        },
        source: ConfigSource::ControlPlane(settings),
        admin_addr: any,
        outbound_addr: any,
        inbound_addr: inbound,
        drain_deadline: Duration::from_secs(1),
        proxy: ProxySettings::default(),
        static_tls: None,
    };
    let lookup = FromFn(move |_: &TcpStream| Ok(orig));
    let bound = Arc::new(Bound::start(&config, Arc::new(lookup)).await.unwrap());
    for task in 0..3 {
        let bound = Arc::clone(&bound);
        tokio::spawn(async move {
            match task {
                0 => bound.discover().await,
                1 => bound.certify().await,
                // Never completes, and does nothing, without telemetry.
                _ => bound.report().await,
            }
        });
    }
    bound
}

/// How a test sidecar differs from the default one.
#[derive(Debug, Clone, Default)]
pub struct SidecarOptions {
    /// Lifetime of its certificates; `None`: the control plane's default.
    pub cert_ttl: Option<Duration>,
    /// Telemetry to the control plane every so often; `None`: none.
    pub telemetry: Option<Duration>,
    /// The control plane's roots, for its first certificate request on the mTLS port.
    pub control_plane_ca: Option<CaSource>,
    /// Its `--control-plane` URL instead of the control plane's plaintext port.
    pub plaintext_url: Option<String>,
}

/// Waits until the sidecar `what` holds a certificate.
pub async fn until_certified(what: &str, sidecar: &Bound) {
    let mut creds = sidecar.certificates.as_ref().unwrap().subscribe();
    eventually(&format!("the {what} sidecar's certificate"), || {
        let has = creds.borrow_and_update().is_some();
        async move { has.then_some(()) }
    })
    .await;
}

/// Waits until the first endpoint of `destination` in `sidecar`'s tables is meshed (has a
/// peer identity), and that identity is `peer_id` when given.
pub async fn until_meshed(
    what: &str,
    sidecar: &Bound,
    destination: SocketAddr,
    peer_id: Option<&str>,
) {
    let tables = sidecar.config.subscribe();
    eventually(what, || {
        let t = tables.borrow().clone();
        async move {
            let d = t.destination(destination)?;
            let peer = d.backends.first()?.state.pool.peer_identity()?;
            peer_id.is_none_or(|want| &*peer == want).then_some(())
        }
    })
    .await;
}

/// An HTTP/1.1 app on a free port of 127.0.0.1 answering every request `200 ok`: its address.
pub async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_app(listener, "ok");
    addr
}

/// A TCP relay from `listen` to `to` that keeps the first bytes the client sent on each
/// connection: the wire between the two sidecars.
pub struct Relay {
    first_bytes: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Where it listens (the server's endpoint).
    pub addr: SocketAddr,
}

impl Relay {
    /// A relay on a free port of `ip` to what `to` holds when a connection comes.
    pub async fn start(ip: Ipv4Addr, to: Arc<Mutex<Option<SocketAddr>>>) -> Relay {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&first_bytes);
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                let to = *to.lock().unwrap();
                tokio::spawn(async move {
                    let Some(to) = to else { return };
                    let Ok(mut up) = TcpStream::connect(to).await else {
                        return;
                    };
                    let mut first = vec![0u8; 512];
                    let Ok(n) = down.read(&mut first).await else {
                        return;
                    };
                    first.truncate(n);
                    if up.write_all(&first).await.is_err() {
                        return;
                    }
                    seen.lock().unwrap().push(first);
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        Relay { first_bytes, addr }
    }

    /// The first bytes of every connection so far.
    pub fn first_bytes(&self) -> Vec<Vec<u8>> {
        self.first_bytes.lock().unwrap().clone()
    }
}

/// `GET /` on a new connection to `addr`: the status line, or the error.
pub async fn get(addr: SocketAddr) -> Result<String, String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        stream
            .read_to_string(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        match out.lines().next() {
            Some(line) if !line.is_empty() => Ok(line.to_owned()),
            _ => Err("closed without an answer".to_owned()),
        }
    };
    tokio::time::timeout(LONG, attempt)
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A change to the control plane's config before it starts.
type Tweak = Box<dyn FnOnce(&mut serin_control::config::Config)>;

/// What a [`Mesh`] is made of; [`MeshBuilder::start`] brings it up.
pub struct MeshBuilder {
    namespace: String,
    client_service_account: String,
    server_service_account: String,
    sidecar: SidecarOptions,
    mtls_mode: Option<v1::MtlsMode>,
    tweaks: Vec<Tweak>,
}

impl MeshBuilder {
    /// Both workloads in `namespace` (default: `default`).
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The client's service account (default: `client`).
    pub fn client_service_account(mut self, service_account: &str) -> Self {
        self.client_service_account = service_account.into();
        self
    }

    /// The server's service account (default: `reviews`).
    pub fn server_service_account(mut self, service_account: &str) -> Self {
        self.server_service_account = service_account.into();
        self
    }

    /// The sidecars ask for certificates lasting `ttl` (default: the control plane's).
    pub fn cert_ttl(mut self, ttl: Duration) -> Self {
        self.sidecar.cert_ttl = Some(ttl);
        self
    }

    /// Both sidecars report telemetry every `interval` (default: none).
    pub fn telemetry(mut self, interval: Duration) -> Self {
        self.sidecar.telemetry = Some(interval);
        self
    }

    /// The namespace's mTLS mode, set once the mesh is up (default: permissive, not set).
    pub fn mtls_mode(mut self, mode: v1::MtlsMode) -> Self {
        self.mtls_mode = Some(mode);
        self
    }

    /// The control plane serves its mTLS port and refuses Discovery on the plaintext one; the
    /// sidecars subscribe on the mTLS port with their certificates.
    pub fn control_plane_tls(self) -> Self {
        self.control_plane(|c| {
            c.grpc_tls = Some(serin_control::tls::TlsPortConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                sans: vec!["localhost".into()],
            });
            c.require_client_certs = true;
        })
    }

    /// Changes the control plane's config before it starts (after the changes before).
    pub fn control_plane(
        mut self,
        tweak: impl FnOnce(&mut serin_control::config::Config) + 'static,
    ) -> Self {
        self.tweaks.push(Box::new(tweak));
        self
    }

    /// Starts the control plane, the app, the relay and both sidecars, registered; returns
    /// once both hold certificates and the client's tables have the server's endpoint meshed
    /// with the server's identity (and the server sidecar is in the mode asked for).
    pub async fn start(self) -> Mesh {
        init_tracing();
        let store = tempfile::tempdir().unwrap();
        let tweaks = self.tweaks;
        let cp = ControlPlaneProcess::start_with(store.path(), free_addr(), move |c| {
            for tweak in tweaks {
                tweak(c);
            }
        })
        .await;
        let app_addr = start_app().await;
        // The relay first: its port is the server's endpoint port.
        let target = Arc::new(Mutex::new(None));
        let relay = Relay::start(SERVER_IP, Arc::clone(&target)).await;
        let endpoint = relay.addr;
        let port = endpoint.port();
        let server_workload = Workload::new("reviews", SERVER_IP, port)
            .in_namespace(&self.namespace)
            .with_service_account(&self.server_service_account);
        let client_workload = Workload::new("client", CLIENT_IP, CLIENT_PORT)
            .in_namespace(&self.namespace)
            .with_service_account(&self.client_service_account);
        let mut admin = cp.admin().await;
        let server_token = server_workload.register(&mut admin).await;
        let client_token = client_workload.register(&mut admin).await;
        assert!(!server_token.is_empty() && server_token != client_token);
        let vip = control_plane::vip_of(&mut admin, "reviews").await;

        // The server sidecar: its inbound listener on its own address, the relay in front of it
        // on the endpoint address; it forwards to the app.
        let server = start_sidecar(
            &cp,
            &server_workload,
            server_token,
            self.sidecar.clone(),
            SocketAddr::new(SERVER_INBOUND_IP.into(), 0),
            app_addr,
        )
        .await;
        *target.lock().unwrap() = Some(server.inbound_addr);
        let client = start_sidecar(
            &cp,
            &client_workload,
            client_token,
            self.sidecar,
            SocketAddr::new(CLIENT_IP.into(), 0),
            SocketAddr::new(vip, port),
        )
        .await;
        let mesh = Mesh {
            grpc: cp.grpc,
            cp: Some(cp),
            client,
            server,
            client_workload,
            server_workload,
            relay,
            endpoint,
            store,
        };
        // Both hold certificates, and the client knows the server's endpoint is meshed.
        until_certified("client", &mesh.client).await;
        until_certified("server", &mesh.server).await;
        until_meshed(
            "the server endpoint meshed in the client's tables",
            &mesh.client,
            SocketAddr::new(vip, port),
            Some(&mesh.server_workload.spiffe_id()),
        )
        .await;
        if let Some(mode) = self.mtls_mode {
            mesh.set_mode(mode).await;
        }
        mesh
    }
}

/// Two meshed sidecars with certificates, a control plane, and the wire between them.
pub struct Mesh {
    /// The control plane (`None` once a test stopped it).
    pub cp: Option<ControlPlaneProcess>,
    /// The control plane's gRPC address (the same across restarts).
    pub grpc: SocketAddr,
    /// The client's sidecar.
    pub client: Arc<Bound>,
    /// The server's sidecar.
    pub server: Arc<Bound>,
    /// The client workload as registered.
    pub client_workload: Workload,
    /// The server workload as registered.
    pub server_workload: Workload,
    /// The wire: in front of the server sidecar's inbound listener.
    pub relay: Relay,
    /// The server's endpoint (the relay).
    pub endpoint: SocketAddr,
    store: tempfile::TempDir,
}

impl Mesh {
    /// A client `client` (127.0.0.3) and a server `reviews` (127.0.0.2) in namespace `default`,
    /// service accounts named after their services, certificates of the control plane's
    /// default lifetime, permissive mode, Discovery on the plaintext port.
    pub fn builder() -> MeshBuilder {
        MeshBuilder {
            namespace: "default".into(),
            client_service_account: "client".into(),
            server_service_account: "reviews".into(),
            sidecar: SidecarOptions::default(),
            mtls_mode: None,
            tweaks: Vec::new(),
        }
    }

    /// `GET /` from the client app through both sidecars: the status line, or the error.
    pub async fn call(&self) -> Result<String, String> {
        get(self.client.outbound_addr).await
    }

    /// The server sidecar's metrics.
    pub fn server_metrics(&self) -> String {
        self.server.metrics.render()
    }

    /// The client sidecar's metrics.
    pub fn client_metrics(&self) -> String {
        self.client.metrics.render()
    }

    /// Sets the server's namespace to `mode` through the Admin API and waits until the server
    /// sidecar applies it.
    pub async fn set_mode(&self, mode: v1::MtlsMode) {
        let cp = self.cp.as_ref().expect("the control plane runs");
        cp.admin()
            .await
            .set_mtls_mode(v1::SetMtlsModeRequest {
                namespace: self.server_workload.namespace.clone(),
                mode: mode as i32,
            })
            .await
            .unwrap();
        let want = match mode {
            v1::MtlsMode::Strict => serin_proxy::snapshot::MtlsMode::Strict,
            _ => serin_proxy::snapshot::MtlsMode::Permissive,
        };
        let tables = self.server.config.subscribe();
        eventually("the server sidecar in the new mode", || {
            let mode = tables.borrow().mtls_mode;
            async move { (mode == want).then_some(()) }
        })
        .await;
    }

    /// Restarts the control plane on the same store and address taking `step` of a root
    /// rotation, then waits until both sidecars renewed with the new trust bundle.
    pub async fn rotate(&mut self, step: serin_control::identity::RotationStep) {
        self.cp.take().expect("the control plane runs").stop().await;
        let cp = ControlPlaneProcess::start_with(self.store.path(), self.grpc, |c| {
            c.ca.rotation = Some(step);
        })
        .await;
        self.cp = Some(cp);
        for bound in [&self.client, &self.server] {
            let mut creds = bound.certificates.as_ref().unwrap().subscribe();
            creds.borrow_and_update();
            // Two renewals: the first may have been signed before the restart.
            for _ in 0..2 {
                tokio::time::timeout(LONG, creds.changed())
                    .await
                    .expect("a renewal in time")
                    .unwrap();
            }
        }
    }

    /// A new mTLS connection to the server sidecar (straight to its inbound listener) with the
    /// client sidecar's current certificate.
    pub async fn mtls_connection(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let creds = self.client.certificates.as_ref().unwrap().subscribe();
        let creds = creds.borrow().clone().expect("the client's certificate");
        let tcp = TcpStream::connect(self.server.inbound_addr)
            .await
            .map_err(|e| e.to_string())?;
        creds
            .connect(
                tcp,
                &self.server_workload.spiffe_id(),
                serin_proxy::tls::ALPN_HTTP1,
            )
            .await
            .map_err(|e| e.to_string())
    }
}
