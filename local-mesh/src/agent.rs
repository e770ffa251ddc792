//! `serin-local-agent`: the long-lived owner of a persistent local mesh (see [`crate::cluster`]).
//!
//! It holds the [`Mesh`] guard (so stopping it, by `down` or SIGTERM, removes everything), runs
//! the control plane in its pod, forwards the control plane's ports to 127.0.0.1 on the host,
//! starts pods (capture rules and sidecar first when their namespace has injection), registers
//! them and renews their leases, keeps the node's service rules and every hosts file current,
//! writes the state file, and answers [`Request`]s on its Unix socket.

mod control;
mod forward;
mod services;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::cluster::{
    CONTROL_PLANE_POD, ClusterRecord, DEFAULT_NAMESPACE, GRPC_PORT, GRPC_TLS_PORT, HTTP_PORT,
    LogStream, NamespaceRecord, PodRecord, PodSpec, RESERVED_PORTS, Removed, Request, Response,
    ServiceRecord, StateDir,
};
use crate::poll::poll_until;
use crate::state::Owner;
use crate::{Error, Ipv6, Mesh, MeshOptions, Pod, Process, Redirect, hosts, naming};

pub use control::{ControlPlane, LEASE_TTL};

/// The sidecar's uid and gid (never captured).
pub const PROXY_UID: u32 = 1337;
/// The sidecar's admin port, where `/ready` answers.
pub const SIDECAR_ADMIN_PORT: u16 = 15000;
/// Largest request line the control socket accepts.
const MAX_REQUEST: u64 = 1 << 20;
/// How long the control plane may take to listen.
const CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an app, then a sidecar (whose drain deadline is 5 s), may take to exit after
/// SIGTERM before they are killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(6);
/// How often the agent checks that each app, and the control plane, still runs.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How many times the agent restarts a control plane that died, before giving up.
const MAX_CONTROL_PLANE_RESTARTS: u32 = 5;

/// The agent's command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "serin-local-agent",
    about = "Owner of a persistent serin local mesh (started by `serinctl up`)"
)]
pub struct AgentArgs {
    /// The state directory.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Directory of serin-control, serin-proxy and serin-iptables.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Host port on 127.0.0.1 for the control plane's gRPC.
    #[arg(long, default_value_t = GRPC_PORT)]
    pub grpc_port: u16,
    /// Host port on 127.0.0.1 for the control plane's HTTP.
    #[arg(long, default_value_t = HTTP_PORT)]
    pub http_port: u16,
    /// IPv6 in the mesh: auto, on or off.
    #[arg(long, default_value = "auto")]
    pub ipv6: String,
    /// How long a sidecar may take to be ready (ms).
    #[arg(long, default_value_t = 30_000)]
    pub sidecar_ready_timeout_ms: u64,
    /// How long an app may take to listen (ms).
    #[arg(long, default_value_t = 30_000)]
    pub app_ready_timeout_ms: u64,
}

/// What the agent keeps running for one pod (the mesh tracks the processes too, to kill them).
#[derive(Debug)]
struct PodProcesses {
    /// The app.
    app: Arc<Process>,
    /// The sidecar, when injected.
    sidecar: Option<Arc<Process>>,
    /// The task renewing its lease.
    renewal: tokio::task::JoinHandle<()>,
}

/// The agent's state.
#[derive(Debug)]
struct Agent {
    dir: StateDir,
    bin_dir: PathBuf,
    mesh: Mesh,
    control_plane: ControlPlane,
    control_plane_ip: Ipv4Addr,
    record: Mutex<ClusterRecord>,
    pods: Mutex<HashMap<String, PodProcesses>>,
    /// Serialises changes (run, remove, down).
    changes: tokio::sync::Mutex<()>,
    /// The control plane's pod and its current process (replaced when it is restarted).
    control_plane_pod: Pod,
    control_plane_process: Mutex<Arc<Process>>,
    /// Set when teardown starts, so that the control plane's exit is not mistaken for a crash.
    stopping: AtomicBool,
    sidecar_timeout: Duration,
    app_timeout: Duration,
    stop: Notify,
}

/// Runs the agent until `down` or SIGTERM/SIGINT; on the way out everything is removed.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let dir = StateDir(args.state_dir.clone());
    let ipv6 = match args.ipv6.as_str() {
        "auto" => Ipv6::Auto,
        "on" => Ipv6::On,
        "off" => Ipv6::Off,
        other => anyhow::bail!("--ipv6 {other:?}: expected auto, on or off"),
    };
    let result = start_and_serve(&args, &dir, ipv6).await;
    if result.is_err() {
        // Nothing half made: the mesh guard already went with the error; the state file too.
        let _ = std::fs::remove_file(dir.state_file());
    }
    let _ = std::fs::remove_file(dir.socket());
    result
}

async fn start_and_serve(args: &AgentArgs, dir: &StateDir, ipv6: Ipv6) -> anyhow::Result<()> {
    // 1. The mesh: node namespace and bridge, owned (and removed on exit) by this process.
    let mesh =
        tokio::task::spawn_blocking(move || Mesh::create_with(MeshOptions { ipv6 })).await??;
    let owner = Owner::current()?;
    let mut record = ClusterRecord {
        run_id: mesh.run_id().to_owned(),
        agent_pid: owner.pid,
        agent_start_time: owner.start_time,
        ready: false,
        grpc_port: args.grpc_port,
        http_port: args.http_port,
        node_netns: mesh.node().name().to_owned(),
        control_plane_ip: None,
        control_plane_pid: None,
        namespaces: vec![NamespaceRecord {
            name: DEFAULT_NAMESPACE.to_owned(),
            injection: true,
        }],
        pods: Vec::new(),
        services: Vec::new(),
    };
    // Written as soon as the run id exists, so `down` finds the run if we crash from here on.
    dir.write_run_id(&record.run_id)?;
    dir.write(&record)?;

    // 2. The host ports, before the control plane starts, so a taken port fails fast.
    let grpc_listener = bind_host(args.grpc_port, "gRPC").await?;
    let http_listener = bind_host(args.http_port, "HTTP").await?;

    // 3. The node as a router for VIPs of pods without a sidecar.
    let mesh = Arc::new(mesh);
    {
        let mesh = Arc::clone(&mesh);
        tokio::task::spawn_blocking(move || services::set_up(mesh.node(), &mesh.bridge()))
            .await?
            .context("cannot set up service rules in the node namespace")?;
    }

    // 4. The control plane in its own pod, with its store in the state directory.
    let control_log = dir.log(CONTROL_PLANE_POD, LogStream::App);
    let (cp_pod, cp_process) = {
        let mesh = Arc::clone(&mesh);
        let bin = args.bin_dir.join("serin-control");
        let (store, bundle) = (dir.store(), dir.trust_bundle());
        let log = control_log.clone();
        tokio::task::spawn_blocking(move || start_control_plane(&mesh, &bin, &store, &bundle, &log))
            .await??
    };
    record.control_plane_ip = Some(cp_pod.ip());
    record.control_plane_pid = Some(cp_process.id());
    dir.write(&record)?;

    // 5. Forward 127.0.0.1:{grpc,http} on the host into the control plane's pod.
    let dialer = forward::Dialer::start(&cp_pod.netns().path())
        .context("cannot enter the control plane's namespace")?;
    let loopback = Ipv4Addr::LOCALHOST;
    tokio::spawn(forward::serve(
        grpc_listener,
        dialer.clone(),
        SocketAddr::from((loopback, GRPC_PORT)),
    ));
    tokio::spawn(forward::serve(
        http_listener,
        dialer,
        SocketAddr::from((loopback, HTTP_PORT)),
    ));

    // 6. The control socket.
    let socket_path = dir.socket();
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixListener::bind(&socket_path)
        .with_context(|| format!("cannot listen on {}", socket_path.display()))?;

    let agent = Arc::new(Agent {
        dir: dir.clone(),
        bin_dir: args.bin_dir.clone(),
        // The control plane generated its tokens in the store before listening.
        control_plane: ControlPlane::new(
            &format!("http://127.0.0.1:{}", args.grpc_port),
            &dir.admin_token()?,
        )?,
        control_plane_ip: cp_pod.ip(),
        mesh: Arc::try_unwrap(mesh).map_err(|_| anyhow::anyhow!("mesh still shared"))?,
        record: Mutex::new(record),
        pods: Mutex::new(HashMap::new()),
        changes: tokio::sync::Mutex::new(()),
        control_plane_pod: cp_pod.clone(),
        control_plane_process: Mutex::new(Arc::new(cp_process)),
        stopping: AtomicBool::new(false),
        sidecar_timeout: Duration::from_millis(args.sidecar_ready_timeout_ms),
        app_timeout: Duration::from_millis(args.app_ready_timeout_ms),
        stop: Notify::new(),
    });

    // 7. Ready: later `serinctl` processes may use the mesh now; the control plane is watched.
    agent.update(|r| r.ready = true)?;
    let supervisor = tokio::spawn(Arc::clone(&agent).supervise_control_plane());
    tracing::info!(run_id = %agent.mesh.run_id(), grpc = args.grpc_port, http = args.http_port, "local mesh up");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let accept = {
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            loop {
                match socket.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(Arc::clone(&agent).serve_connection(stream));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };
    // 8. Until `down` (which has torn down already) or a signal (then tear down here).
    let signal = tokio::select! {
        () = agent.stop.notified() => None,
        _ = term.recv() => Some("SIGTERM"),
        _ = tokio::signal::ctrl_c() => Some("SIGINT"),
    };
    if let Some(signal) = signal {
        tracing::info!(signal, "tearing the mesh down");
        let removed = agent.down().await;
        tracing::info!(%removed, "torn down");
        let _ = std::fs::remove_file(dir.state_file());
    }
    accept.abort();
    supervisor.abort();
    Ok(())
}

async fn bind_host(port: u16, what: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot forward the control plane's {what} port: 127.0.0.1:{port} is taken")
    })
}

fn start_control_plane(
    mesh: &Mesh,
    bin: &Path,
    store: &Path,
    trust_bundle: &Path,
    log: &Path,
) -> anyhow::Result<(Pod, Process)> {
    let pod = mesh.add_pod(CONTROL_PLANE_POD)?;
    let process = spawn_control_plane(&pod, bin, store, trust_bundle, log)?;
    Ok((pod, process))
}

/// Starts `serin-control` in its pod and waits until its three ports listen.
fn spawn_control_plane(
    pod: &Pod,
    bin: &Path,
    store: &Path,
    trust_bundle: &Path,
    log: &Path,
) -> Result<Process, Error> {
    let process = pod
        .exec([bin.as_os_str()])
        .args(["--grpc", &format!("0.0.0.0:{GRPC_PORT}")])
        .args(["--http", &format!("0.0.0.0:{HTTP_PORT}")])
        .arg("--store")
        .arg(store)
        // Sidecars get their configuration only on the mTLS port (15012), each seeing what its
        // namespace may; they check that port by the trust bundle written here.
        .arg("--require-client-certs")
        .arg("--trust-bundle-out")
        .arg(trust_bundle)
        // Reads are open on the host's loopback forward (the dashboard needs no token to look);
        // writes need the write token generated in the store, which only root can read.
        .arg("--admin-read-anonymous")
        .stdout(Redirect::Append(log.to_owned()))
        .stderr(Redirect::Append(log.to_owned()))
        .spawn()?;
    for port in [GRPC_PORT, GRPC_TLS_PORT, HTTP_PORT] {
        wait_listening(pod, &process, port, CONTROL_PLANE_TIMEOUT).map_err(|reason| {
            Error::NotReady {
                what: "control plane",
                pod: CONTROL_PLANE_POD.to_owned(),
                reason,
                log: log.to_owned(),
            }
        })?;
    }
    Ok(process)
}

/// Polls until `process` listens on `port` of `pod` (connecting from inside the pod); the
/// error says whether it exited or the time ran out.
fn wait_listening(
    pod: &Pod,
    process: &Process,
    port: u16,
    timeout: Duration,
) -> Result<(), String> {
    let addr = SocketAddr::from((pod.ip(), port));
    let outcome = pod
        .run_in(|| {
            poll_until(timeout, || {
                if let Ok(Some(status)) = process.try_wait() {
                    return Some(Err(format!(
                        "it exited ({status}) before listening on port {port}"
                    )));
                }
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| Ok(()))
            })
        })
        .map_err(|e| e.to_string())?;
    outcome.unwrap_or_else(|| Err(format!("nothing listens on port {port} after {timeout:?}")))
}

/// Polls the sidecar's `/ready` from inside the pod until it answers 200.
fn wait_sidecar_ready(pod: &Pod, process: &Process, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, SIDECAR_ADMIN_PORT));
    let mut last = String::from("no answer yet");
    let outcome = pod
        .run_in(|| {
            poll_until(timeout, || {
                if let Ok(Some(status)) = process.try_wait() {
                    return Some(Err(format!("the sidecar exited ({status})")));
                }
                match http_status(addr, "/ready") {
                    Ok(200) => Some(Ok(())),
                    Ok(code) => {
                        last = format!("/ready answered {code}");
                        None
                    }
                    Err(e) => {
                        last = format!("/ready: {e}");
                        None
                    }
                }
            })
        })
        .map_err(|e| e.to_string())?;
    outcome.unwrap_or_else(|| {
        Err(format!(
            "its /ready on port {SIDECAR_ADMIN_PORT} did not answer 200 within {timeout:?} (last: {last})"
        ))
    })
}

/// The pod's addresses as `serin-proxy --pod-ip` takes them (comma-separated).
fn pod_ips(pod: &Pod) -> String {
    match pod.ipv6() {
        Some(v6) => format!("{},{v6}", pod.ip()),
        None => pod.ip().to_string(),
    }
}

/// A minimal `GET path` over HTTP/1.0; returns the status code.
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP status line")
        })
}

/// The last non-empty line of a log file.
fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// Checks that `program` can be executed: a path to an executable file, or a name found in PATH.
fn resolve_command(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        if executable(Path::new(program)) {
            Ok(())
        } else {
            Err("no executable file at that path".to_owned())
        }
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
            Ok(())
        } else {
            Err("not in PATH".to_owned())
        }
    }
}

impl Agent {
    fn lock_record(&self) -> MutexGuard<'_, ClusterRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pods(&self) -> MutexGuard<'_, HashMap<String, PodProcesses>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the record and writes the state file.
    fn update(&self, change: impl FnOnce(&mut ClusterRecord)) -> Result<(), Error> {
        let mut record = self.lock_record();
        change(&mut record);
        self.dir.write(&record)
    }

    async fn serve_connection(self: Arc<Self>, stream: UnixStream) {
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST));
        if let Err(e) = reader.read_line(&mut line).await {
            tracing::warn!(error = %e, "cannot read a request");
            return;
        }
        let request: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let _ = respond(
                    &mut write,
                    &Response::Error {
                        message: format!("malformed request: {e}"),
                    },
                )
                .await;
                return;
            }
        };
        tracing::info!(?request, "request");
        let is_down = matches!(request, Request::Down);
        let response = self.handle(request).await;
        if let Response::Error { message } = &response {
            tracing::warn!(%message, "request failed");
        }
        let _ = respond(&mut write, &response).await;
        if is_down {
            self.stop.notify_one();
        }
    }

    async fn handle(self: &Arc<Self>, request: Request) -> Response {
        let result = match request {
            Request::CreateNamespace { name, injection } => self
                .create_namespace(&name, injection)
                .map(|namespace| Response::Namespace { namespace }),
            Request::Run { spec } => self.run_pod(spec).await.map(|pod| Response::Pod { pod }),
            Request::RemovePod { name } => self.remove_pod(&name).await.map(|()| Response::Done),
            Request::Down => Ok(Response::Removed {
                removed: self.down().await,
            }),
        };
        result.unwrap_or_else(|e| Response::Error {
            message: e.to_string(),
        })
    }

    fn create_namespace(&self, name: &str, injection: bool) -> Result<NamespaceRecord, Error> {
        hosts::validate_host_name(name).map_err(|e| Error::Invalid {
            what: "namespace name",
            reason: e.to_string(),
        })?;
        if name.contains('.') {
            return Err(Error::Invalid {
                what: "namespace name",
                reason: format!("{name:?} must be a single DNS label (no dots)"),
            });
        }
        let namespace = NamespaceRecord {
            name: name.to_owned(),
            injection,
        };
        self.update(|r| match r.namespaces.iter_mut().find(|n| n.name == name) {
            Some(n) => n.injection = injection,
            None => r.namespaces.push(namespace.clone()),
        })?;
        tracing::info!(namespace = name, injection, "namespace set");
        Ok(namespace)
    }

    /// Checks a spec before anything is made; returns whether its namespace has injection.
    fn validate(&self, spec: &PodSpec) -> Result<bool, Error> {
        naming::validate_pod_name(&spec.name)?;
        let record = self.lock_record();
        if spec.name == CONTROL_PLANE_POD || record.pod(&spec.name).is_some() {
            return Err(Error::DuplicatePod {
                name: spec.name.clone(),
                run_id: record.run_id.clone(),
            });
        }
        let namespace =
            record
                .namespace(&spec.namespace)
                .ok_or_else(|| Error::UnknownNamespace {
                    name: spec.namespace.clone(),
                })?;
        for (what, value) in [("service name", &spec.service), ("version", &spec.version)] {
            if what == "version" && value.is_empty() {
                continue;
            }
            hosts::validate_host_name(value)
                .ok()
                .filter(|()| !value.contains('.'))
                .ok_or_else(|| Error::Invalid {
                    what,
                    reason: format!("{value:?} must be a DNS label (letters, digits, '-')"),
                })?;
        }
        if spec.port == 0 {
            return Err(Error::PortTaken {
                pod: spec.name.clone(),
                port: 0,
                reason: "port 0 is not a port an app can serve".to_owned(),
            });
        }
        if RESERVED_PORTS.contains(&spec.port) {
            return Err(Error::PortTaken {
                pod: spec.name.clone(),
                port: spec.port,
                reason: format!(
                    "ports {}-{} belong to the sidecar and the control plane in every pod",
                    RESERVED_PORTS.start(),
                    RESERVED_PORTS.end()
                ),
            });
        }
        let program = spec.command.first().ok_or_else(|| Error::Invalid {
            what: "pod",
            reason: format!("pod {:?} has no command to run", spec.name),
        })?;
        resolve_command(program).map_err(|reason| Error::CommandNotFound {
            pod: spec.name.clone(),
            command: program.clone(),
            reason,
        })?;
        Ok(namespace.injection)
    }

    async fn run_pod(self: &Arc<Self>, spec: PodSpec) -> Result<PodRecord, Error> {
        let _change = self.changes.lock().await;
        let injection = self.validate(&spec)?;
        let pod = {
            let agent = Arc::clone(self);
            let name = spec.name.clone();
            blocking(move || agent.mesh.add_pod(&name)).await?
        };
        // The pod's rules, sidecar, app and registration; on failure the pod goes again.
        match self.start_and_register(&spec, &pod, injection).await {
            Ok(record) => Ok(record),
            Err(e) => {
                let agent = Arc::clone(self);
                let name = spec.name.clone();
                let removed = blocking(move || agent.mesh.remove_pod(&name)).await;
                if let Err(cleanup) = removed {
                    tracing::warn!(error = %cleanup, pod = %spec.name, "cleanup after a failed run");
                }
                Err(e)
            }
        }
    }

    /// Starts `pod`'s processes and registers it. A meshed pod is registered first, as
    /// starting (no traffic): its bootstrap token gets its sidecar a certificate, which the
    /// sidecar needs for its configuration on the control plane's mTLS port before it is ready;
    /// once the app listens the registration is marked ready. A pod without a sidecar is
    /// registered once its app listens.
    async fn start_and_register(
        self: &Arc<Self>,
        spec: &PodSpec,
        pod: &Pod,
        injection: bool,
    ) -> Result<PodRecord, Error> {
        let workload = ControlPlane::workload(spec, pod.ip());
        let early = if injection {
            let registration = self.control_plane.register(workload.clone(), true).await?;
            self.write_identity_token(&spec.name, &registration.bootstrap_token);
            Some(registration)
        } else {
            None
        };
        let started = {
            let agent = Arc::clone(self);
            let (owned, owned_pod) = (spec.clone(), pod.clone());
            blocking(move || agent.start_processes(&owned_pod, &owned, injection)).await
        };
        let registration = match (started, early) {
            (Ok((app, sidecar)), Some(registration)) => {
                match self.control_plane.mark_ready(&registration.lease_id).await {
                    Ok(()) => Ok((app, sidecar, registration)),
                    Err(e) => {
                        self.undo_registration(&spec.name, &registration.lease_id)
                            .await;
                        Err(e)
                    }
                }
            }
            (Ok((app, sidecar)), None) => self
                .control_plane
                .register(workload.clone(), false)
                .await
                .map(|registration| (app, sidecar, registration)),
            (Err(e), Some(registration)) => {
                self.undo_registration(&spec.name, &registration.lease_id)
                    .await;
                Err(e)
            }
            (Err(e), None) => Err(e),
        };
        let (app, sidecar, registration) = registration?;
        let lease_id = registration.lease_id.clone();
        let result = self
            .record_pod(spec, pod, app, sidecar, workload, registration)
            .await;
        if result.is_err() {
            // Undo the registration and the record; the caller removes the pod itself.
            self.undo_registration(&spec.name, &lease_id).await;
            let _ = self.update(|r| r.pods.retain(|p| p.name != spec.name));
        }
        result
    }

    /// Deregisters a pod whose start failed (a failure to do so is logged: its lease expires).
    async fn undo_registration(&self, pod: &str, lease_id: &str) {
        if let Err(e) = self.control_plane.deregister(lease_id).await {
            tracing::warn!(%pod, error = %e, "deregistration after a failed run failed");
        }
    }

    fn start_processes(
        &self,
        pod: &Pod,
        spec: &PodSpec,
        injection: bool,
    ) -> Result<(Process, Option<Process>), Error> {
        let sidecar = if injection {
            // Capture rules, then the sidecar as 1337, then wait for /ready.
            let ipv6 = if self.mesh.has_ipv6() { "auto" } else { "off" };
            pod.exec([self.bin_dir.join("serin-iptables").as_os_str()])
                .args([
                    "apply",
                    "--proxy-uid",
                    "1337",
                    "--proxy-gid",
                    "1337",
                    "--ipv6",
                    ipv6,
                ])
                .run()?;
            let log = self.dir.log(&spec.name, LogStream::Sidecar);
            let sidecar = pod
                .exec([self.bin_dir.join("serin-proxy").as_os_str()])
                .args([
                    "--control-plane",
                    &format!("http://{}:{GRPC_PORT}", self.control_plane_ip),
                ])
                // Configuration, telemetry and certificates on the mTLS port; the first
                // certificate request checks it by the CA's roots the control plane wrote.
                .args([
                    "--control-plane-tls",
                    &format!("https://{}:{GRPC_TLS_PORT}", self.control_plane_ip),
                ])
                .arg("--control-plane-ca")
                .arg(self.dir.trust_bundle())
                .args(["--pod-name", &spec.name, "--namespace", &spec.namespace])
                .args(["--pod-ip", &pod_ips(pod)])
                .args(["--service", &spec.service, "--version", &spec.version])
                // Its certificate comes with the pod's registration (made, as starting, before
                // the sidecar starts).
                .arg("--identity-token-file")
                .arg(self.dir.identity_token(&spec.name))
                .user(PROXY_UID, PROXY_UID)
                .stdout(Redirect::Append(log.clone()))
                .stderr(Redirect::Append(log.clone()))
                .spawn()?;
            wait_sidecar_ready(pod, &sidecar, self.sidecar_timeout).map_err(|reason| {
                Error::NotReady {
                    what: "sidecar",
                    pod: spec.name.clone(),
                    reason,
                    log,
                }
            })?;
            Some(sidecar)
        } else {
            None
        };
        let log = self.dir.log(&spec.name, LogStream::App);
        let mut exec = pod
            .exec(&spec.command)
            .env("SERIN_POD_NAME", &spec.name)
            .env("SERIN_NAMESPACE", &spec.namespace)
            .env("SERIN_SERVICE", &spec.service)
            .env("SERIN_VERSION", &spec.version)
            .env("SERIN_POD_IP", pod.ip().to_string())
            .env("PORT", spec.port.to_string())
            .stdout(Redirect::Append(log.clone()))
            .stderr(Redirect::Append(log.clone()));
        for (k, v) in &spec.env {
            exec = exec.env(k, v);
        }
        let app = exec.spawn()?;
        if spec.wait_for_port {
            wait_listening(pod, &app, spec.port, self.app_timeout).map_err(|reason| {
                let reason = match last_line(&log) {
                    Some(line) => format!("{reason}; its last words: {line}"),
                    None => reason,
                };
                Error::NotReady {
                    what: "app",
                    pod: spec.name.clone(),
                    reason,
                    log,
                }
            })?;
        }
        Ok((app, sidecar))
    }

    /// Writes `pod`'s bootstrap token where its sidecar reads it (readable by the sidecar's uid
    /// only). A failure is logged: the pod then runs without an identity (plain traffic).
    fn write_identity_token(&self, pod: &str, token: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.dir.identity_token(pod);
        let written = (|| -> std::io::Result<()> {
            let dir = path.parent().unwrap_or(&path);
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, token)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
            std::os::unix::fs::chown(&tmp, Some(PROXY_UID), Some(PROXY_UID))?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            tracing::warn!(%pod, path = %path.display(), error = %e, "cannot write the bootstrap token; the pod gets no workload certificate");
        }
    }

    /// Records a registered pod: its VIP's names in every hosts file, the state file, the node's
    /// service rules, and the task that renews its lease.
    async fn record_pod(
        self: &Arc<Self>,
        spec: &PodSpec,
        pod: &Pod,
        app: Process,
        sidecar: Option<Process>,
        workload: serin_proto::v1::Workload,
        registration: control::Registration,
    ) -> Result<PodRecord, Error> {
        let vip = self
            .control_plane
            .vip(&spec.service, &spec.namespace)
            .await?;
        let record = PodRecord {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            service: spec.service.clone(),
            version: spec.version.clone(),
            port: spec.port,
            command: spec.command.clone(),
            ip: pod.ip(),
            netns: pod.netns().name().to_owned(),
            app_pid: app.id(),
            sidecar_pid: sidecar.as_ref().map(Process::id),
            vip,
            lease_id: registration.lease_id.clone(),
            app_log: self.dir.log(&spec.name, LogStream::App),
            sidecar_log: sidecar
                .as_ref()
                .map(|_| self.dir.log(&spec.name, LogStream::Sidecar)),
            exited: None,
        };
        let known = self
            .lock_record()
            .services
            .iter()
            .any(|s| s.name == spec.service && s.namespace == spec.namespace);
        if !known {
            let agent = Arc::clone(self);
            let (service, namespace) = (spec.service.clone(), spec.namespace.clone());
            blocking(move || agent.mesh.add_service(vip.into(), &service, &namespace)).await?;
        }
        self.update(|r| {
            if !known {
                r.services.push(ServiceRecord {
                    name: spec.service.clone(),
                    namespace: spec.namespace.clone(),
                    vip,
                });
            }
            r.pods.push(record.clone());
        })?;
        let agent = Arc::clone(self);
        blocking(move || agent.refresh_services()).await?;
        let app = Arc::new(app);
        let renewal = tokio::spawn(Arc::clone(self).renew(
            spec.name.clone(),
            Arc::clone(&app),
            workload,
            registration,
        ));
        self.lock_pods().insert(
            spec.name.clone(),
            PodProcesses {
                app,
                sidecar: sidecar.map(Arc::new),
                renewal,
            },
        );
        tracing::info!(pod = %spec.name, ip = %record.ip, %vip, lease = %record.lease_id, "pod running");
        Ok(record)
    }

    /// Rewrites the node's service rules from the pods whose app runs.
    fn refresh_services(&self) -> Result<(), Error> {
        let running: Vec<PodRecord> = self
            .lock_record()
            .pods
            .iter()
            .filter(|p| p.exited.is_none())
            .cloned()
            .collect();
        let text = services::render(&services::endpoints(&running));
        services::apply(self.mesh.node(), &text)
    }

    /// Keeps a pod's lease alive until the task is aborted or its app exits (then the pod is
    /// deregistered and marked exited); registers again if the lease was lost.
    async fn renew(
        self: Arc<Self>,
        pod: String,
        app: Arc<Process>,
        workload: serin_proto::v1::Workload,
        mut registration: control::Registration,
    ) {
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        let mut next_renewal = tokio::time::Instant::now() + registration.ttl / 3;
        loop {
            watch.tick().await;
            if let Ok(Some(status)) = app.try_wait() {
                tracing::warn!(%pod, %status, "app exited; deregistering its pod");
                if let Err(e) = self.control_plane.deregister(&registration.lease_id).await {
                    tracing::warn!(%pod, error = %e, "deregistration failed; the lease will expire");
                }
                let _ = self.update(|r| {
                    if let Some(p) = r.pods.iter_mut().find(|p| p.name == pod) {
                        p.exited = Some(status.to_string());
                    }
                });
                let agent = Arc::clone(&self);
                if let Err(e) = blocking(move || agent.refresh_services()).await {
                    tracing::warn!(%pod, error = %e, "cannot update the service rules");
                }
                return;
            }
            if tokio::time::Instant::now() < next_renewal {
                continue;
            }
            next_renewal = tokio::time::Instant::now() + registration.ttl / 3;
            match self.control_plane.renew(&registration.lease_id).await {
                Ok(true) => continue,
                Ok(false) => tracing::warn!(%pod, "lease lost; registering again"),
                Err(e) => {
                    tracing::warn!(%pod, error = %e, "lease renewal failed");
                    continue;
                }
            }
            match self.control_plane.register(workload.clone(), false).await {
                Ok(r) => {
                    registration = r;
                    self.write_identity_token(&pod, &registration.bootstrap_token);
                    let lease = registration.lease_id.clone();
                    let _ = self.update(|rec| {
                        if let Some(p) = rec.pods.iter_mut().find(|p| p.name == pod) {
                            p.lease_id = lease;
                        }
                    });
                }
                Err(e) => tracing::warn!(%pod, error = %e, "registering again failed"),
            }
        }
    }

    /// Restarts the control plane (same pod, same store) when it dies, at most
    /// [`MAX_CONTROL_PLANE_RESTARTS`] times; pods whose lease it no longer knows register again
    /// through their renewal.
    async fn supervise_control_plane(self: Arc<Self>) {
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        let mut restarts = 0;
        loop {
            watch.tick().await;
            let process = Arc::clone(
                &self
                    .control_plane_process
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            let Ok(Some(status)) = process.try_wait() else {
                continue;
            };
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if restarts == MAX_CONTROL_PLANE_RESTARTS {
                tracing::error!(%status, restarts, "the control plane died again; not restarting it (run `serinctl down` and `serinctl up`)");
                return;
            }
            restarts += 1;
            tracing::error!(%status, restarts, "the control plane died; restarting it");
            let agent = Arc::clone(&self);
            let started = blocking(move || {
                spawn_control_plane(
                    &agent.control_plane_pod,
                    &agent.bin_dir.join("serin-control"),
                    &agent.dir.store(),
                    &agent.dir.trust_bundle(),
                    &agent.dir.log(CONTROL_PLANE_POD, LogStream::App),
                )
            })
            .await;
            match started {
                Ok(process) => {
                    let pid = process.id();
                    *self
                        .control_plane_process
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Arc::new(process);
                    let _ = self.update(|r| r.control_plane_pid = Some(pid));
                    tracing::info!(pid, "control plane restarted");
                }
                Err(e) => tracing::error!(error = %e, "cannot restart the control plane"),
            }
        }
    }

    async fn remove_pod(self: &Arc<Self>, name: &str) -> Result<(), Error> {
        let _change = self.changes.lock().await;
        let record = self
            .lock_record()
            .pod(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchPod {
                name: name.to_owned(),
                run_id: self.mesh.run_id().to_owned(),
            })?;
        let processes = self.lock_pods().remove(name);
        if let Some(p) = &processes {
            p.renewal.abort();
        }
        if let Err(e) = self.control_plane.deregister(&record.lease_id).await {
            tracing::warn!(pod = name, error = %e, "deregistration failed; the lease will expire");
        }
        self.update(|r| r.pods.retain(|p| p.name != name))?;
        let agent = Arc::clone(self);
        let name = name.to_owned();
        blocking(move || {
            agent.refresh_services()?;
            // The app first, then its sidecar, which drains what the app still had in flight.
            if let Some(p) = processes {
                stop_gracefully(&[&p.app]);
                if let Some(sidecar) = &p.sidecar {
                    stop_gracefully(&[sidecar]);
                }
            }
            agent.mesh.remove_pod(&name)
        })
        .await
    }

    /// Deregisters every pod and removes the whole mesh; says what it removed.
    async fn down(self: &Arc<Self>) -> Removed {
        let _change = self.changes.lock().await;
        self.stopping.store(true, Ordering::SeqCst);
        let record = self.lock_record().clone();
        let mut removed = Removed {
            run_id: Some(record.run_id.clone()),
            agent_pid: Some(std::process::id()),
            ..Removed::default()
        };
        let processes: Vec<(String, PodProcesses)> = self.lock_pods().drain().collect();
        for (_, p) in &processes {
            p.renewal.abort();
        }
        for pod in &record.pods {
            match self.control_plane.deregister(&pod.lease_id).await {
                Ok(_) => removed.registrations.push(format!(
                    "{}/{} ({} {})",
                    pod.namespace, pod.name, pod.service, pod.version
                )),
                Err(e) => removed.errors.push(e.to_string()),
            }
            removed
                .processes
                .push(format!("pid {} ({} app)", pod.app_pid, pod.name));
            if let Some(pid) = pod.sidecar_pid {
                removed
                    .processes
                    .push(format!("pid {pid} ({} sidecar)", pod.name));
                removed
                    .rules
                    .push(format!("SERIN_* capture chains in pod {}", pod.name));
            }
        }
        let control_plane = Arc::clone(
            &self
                .control_plane_process
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if let Some(pid) = record.control_plane_pid {
            removed.processes.push(format!("pid {pid} (control plane)"));
        }
        removed.rules.push(format!(
            "{} and {} nat chains in the node namespace",
            services::SERVICES_CHAIN,
            services::MASQUERADE_CHAIN
        ));
        removed.namespaces = self.mesh.namespaces();
        removed.links = self.mesh.links();
        let agent = Arc::clone(self);
        let closed = blocking(move || {
            // Apps, then sidecars and the control plane, each group with a deadline; what
            // still runs after it is killed with the namespaces.
            let apps: Vec<&Process> = processes.iter().map(|(_, p)| &*p.app).collect();
            stop_gracefully(&apps);
            let mut rest: Vec<&Process> = processes
                .iter()
                .filter_map(|(_, p)| p.sidecar.as_deref())
                .collect();
            rest.push(&control_plane);
            stop_gracefully(&rest);
            agent.mesh.close()
        })
        .await;
        if let Err(e) = closed {
            removed.errors.push(e.to_string());
        }
        let _ = self.update(|r| {
            r.ready = false;
            r.pods.clear();
        });
        removed
    }
}

/// Runs blocking mesh work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(Error::Agent {
            message: format!("a mesh operation panicked: {e}"),
        })
    })
}

/// Sends SIGTERM to every process and waits up to [`STOP_TIMEOUT`] for all of them to exit.
fn stop_gracefully(processes: &[&Process]) {
    for p in processes {
        if let Err(e) = p.signal(crate::Signal::SIGTERM) {
            tracing::debug!(pid = p.id(), error = %e, "SIGTERM failed");
        }
    }
    let stopped = poll_until(STOP_TIMEOUT, || {
        processes
            .iter()
            .all(|p| !matches!(p.try_wait(), Ok(None)))
            .then_some(())
    });
    if stopped.is_none() {
        tracing::warn!(timeout = ?STOP_TIMEOUT, "processes still ran after SIGTERM; killing them");
    }
}

async fn respond(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut line = serde_json::to_string(response).map_err(std::io::Error::other)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    write.shutdown().await
}
