//! Helpers the root end-to-end tests share for pods with sidecars: the workspace's built
//! binaries (and copies every uid can run), `serin-control` and `serin-proxy` started in pods,
//! the real capture rules, plain HTTP/1.1 GETs on a pod's loopback (a sidecar's admin port),
//! connections and gRPC channels opened inside a pod, and the control plane's Admin API.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serin_iptables::config::Config as CaptureConfig;
use serin_iptables::executor::SystemExecutor;
use serin_iptables::install;
use serin_iptables::plan::plan;
use serin_local::{Pod, Process, Redirect};
use serin_proto::auth::{AuthorizedAdmin, BearerToken, admin_client};
use serin_proto::v1;
use tonic::transport::{Channel, Endpoint};

/// The uid and gid sidecars run as (the capture rules let their traffic out unredirected).
pub const PROXY_UID: u32 = 1337;
/// The control plane's gRPC port in its pod.
pub const CONTROL_PLANE_PORT: u16 = 15010;
/// How long the control plane may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection from inside a pod may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A binary of the workspace, built by `cargo build --workspace --bins` into the calling test's
/// target directory (the test command builds them before it runs the tests).
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} not found: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Applies the default capture rules in `pod` with the real serin-iptables code and tools
/// (IPv6 rules too when the pod has an IPv6 address and the host has ip6tables).
pub fn apply_capture(pod: &Pod) {
    let executor = pod
        .run_in(SystemExecutor::detect)
        .expect("enter the pod")
        .expect("iptables tools");
    let config = CaptureConfig {
        ipv6: executor.ipv6_available() && pod.ipv6().is_some(),
        ..CaptureConfig::default()
    };
    let rules = plan(&config);
    pod.run_in(|| install::apply(&rules, &executor))
        .expect("enter the pod")
        .expect("apply capture rules");
}

/// `GET path` on `127.0.0.1:port` inside `pod` (e.g. a sidecar's admin port): status and body.
pub fn admin_get(pod: &Pod, port: u16, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    pod.run_in(|| {
        let mut stream =
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        let code = out
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {out:?}")))?;
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    })
    .expect("enter the pod")
}

/// A directory every uid can read: copies of the binaries (the build directory may be closed to
/// uid 1337), the control plane's store, policies, logs. Shows the logs' tails when the test
/// panics, then goes.
/// The write token [`start_control_plane`] gives the control plane (for serinctl's `--token` and
/// Admin clients).
pub const ADMIN_TOKEN: &str = "serin-test-admin-token-0001";

pub struct Files {
    /// The directory, `$TMPDIR/serin-NAME-PID`.
    pub dir: PathBuf,
    next_policy: AtomicUsize,
}

impl Files {
    /// A fresh directory for test `name` with copies of `serin-proxy`, `serin-control` and
    /// `serinctl` (see [`built_binary`]) and an empty `store/`.
    pub fn new(name: &str) -> Files {
        let dir = std::env::temp_dir().join(format!("serin-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("store"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        // The control plane's admin credential, given as an operator would.
        let tokens = dir.join("admin-tokens");
        fs::write(&tokens, format!("write {ADMIN_TOKEN}\n"))
            .unwrap_or_else(|e| panic!("write {}: {e}", tokens.display()));
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tokens.display()));
        for bin in ["serin-proxy", "serin-control", "serinctl"] {
            let copy = dir.join(bin);
            fs::copy(built_binary(bin), &copy)
                .unwrap_or_else(|e| panic!("copy {bin} to {}: {e}", copy.display()));
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", copy.display()));
        }
        Files {
            dir,
            next_policy: AtomicUsize::new(0),
        }
    }

    /// The path of the copy of binary `name`.
    pub fn bin(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The log file of `name` (a pod's sidecar, or `serin-control`).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// Writes `yaml` to a new file; its path.
    pub fn policy(&self, yaml: &str) -> String {
        let n = self.next_policy.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("policy-{n}.yaml"));
        fs::write(&path, yaml).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|e| e == "log") {
                    let text = fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(60).collect();
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

/// Starts `serin-control` in `pod` (gRPC on [`CONTROL_PLANE_PORT`], HTTP on 15080) with its store
/// and log in `files`; returns once it listens.
pub fn start_control_plane(pod: &Pod, files: &Files) -> Process {
    let store = files.dir.join("store").display().to_string();
    let process = pod
        .exec([
            &files.bin("serin-control")[..],
            "--grpc",
            &format!("0.0.0.0:{CONTROL_PLANE_PORT}"),
            "--http",
            "0.0.0.0:15080",
            "--store",
            &store,
            "--admin-tokens",
            &files.dir.join("admin-tokens").display().to_string(),
        ])
        .stdout(Redirect::Append(files.log("serin-control")))
        .stderr(Redirect::Append(files.log("serin-control")))
        .spawn()
        .expect("spawn serin-control");
    pod.wait_for_tcp(
        SocketAddr::from(([127, 0, 0, 1], CONTROL_PLANE_PORT)),
        START_TIMEOUT,
    )
    .expect("serin-control listens");
    process
}

/// Starts `serin-proxy` in `pod` as uid [`PROXY_UID`], following the control plane at `cp`, as
/// `version` of `service` in namespace `default` (service account `default`); its log is
/// `files.log(pod name)`.
pub fn start_sidecar(
    files: &Files,
    pod: &Pod,
    cp: Ipv4Addr,
    service: &str,
    version: &str,
) -> Process {
    start_sidecar_with(files, pod, cp, service, version, "default", &[])
}

/// [`start_sidecar`] with service account `service_account` and the `extra` flags appended
/// (e.g. `--identity-token` and `--cert-ttl`).
pub fn start_sidecar_with(
    files: &Files,
    pod: &Pod,
    cp: Ipv4Addr,
    service: &str,
    version: &str,
    service_account: &str,
    extra: &[&str],
) -> Process {
    let args = [
        &files.bin("serin-proxy")[..],
        "--control-plane",
        &format!("http://{cp}:{CONTROL_PLANE_PORT}"),
        "--pod-name",
        pod.name(),
        "--namespace",
        "default",
        "--pod-ip",
        &pod.ip().to_string(),
        "--service",
        service,
        "--version",
        version,
        "--service-account",
        service_account,
        "--node-name",
        "serin-test",
        "--log-level",
        "info,serin_proxy=debug",
    ];
    pod.exec(args.iter().chain(extra))
        .user(PROXY_UID, PROXY_UID)
        .stdout(Redirect::Append(files.log(pod.name())))
        .stderr(Redirect::Append(files.log(pod.name())))
        .spawn()
        .expect("spawn serin-proxy")
}

/// Connects to `addr` from inside `pod` (with TCP_NODELAY): a tokio stream that any task of the
/// runtime can use.
pub async fn connect_in(pod: &Pod, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let pod = pod.clone();
    let stream = tokio::task::spawn_blocking(move || {
        pod.run_in(|| TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
            .map_err(io::Error::other)?
    })
    .await
    .map_err(io::Error::other)??;
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    tokio::net::TcpStream::from_std(stream)
}

/// A gRPC channel to `addr` whose connections [`connect_in`] opens inside `pod`.
pub async fn channel_in(pod: &Pod, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    let pod = pod.clone();
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("http://<socket address> is a valid URI")
        .connect_with_connector(tower::service_fn(move |_| {
            let pod = pod.clone();
            async move { connect_in(&pod, addr).await.map(TokioIo::new) }
        }))
        .await
}

/// A client of the Admin API of the control plane in `cp_pod` (on its loopback, port
/// [`CONTROL_PLANE_PORT`]) with the write token [`ADMIN_TOKEN`].
pub async fn admin(cp_pod: &Pod) -> AuthorizedAdmin {
    let addr = SocketAddr::from(([127, 0, 0, 1], CONTROL_PLANE_PORT));
    let channel = channel_in(cp_pod, addr)
        .await
        .expect("connect to the control plane's Admin API");
    let token = BearerToken::new(ADMIN_TOKEN).expect("ADMIN_TOKEN is a valid bearer token");
    admin_client(channel, token)
}

/// `pod` (its address) as the `version` endpoint of `service` in namespace `default`, serving
/// `port`; the other fields (service account, ...) are left empty.
pub fn workload(pod: &Pod, service: &str, version: &str, port: v1::WorkloadPort) -> v1::Workload {
    v1::Workload {
        pod_name: pod.name().to_owned(),
        namespace: "default".into(),
        addresses: vec![pod.ip().to_string()],
        service: service.to_owned(),
        version: version.to_owned(),
        ports: vec![port],
        ..Default::default()
    }
}

/// Registers `workload` with the control plane in `cp_pod` under a one-hour lease (the test
/// ends long before; the control plane goes with it): the registration's bootstrap token.
pub async fn register(cp_pod: &Pod, workload: v1::Workload) -> String {
    let pod = workload.pod_name.clone();
    admin(cp_pod)
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(workload),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("RegisterWorkload {pod}: {e}"))
        .into_inner()
        .bootstrap_token
}

/// The IPv4 VIP the control plane in `cp_pod` gave `service` of namespace `default`.
pub async fn service_vip(cp_pod: &Pod, service: &str) -> Ipv4Addr {
    let services = admin(cp_pod)
        .await
        .list_services(v1::ListServicesRequest {
            namespace: "default".into(),
        })
        .await
        .expect("ListServices")
        .into_inner()
        .services;
    services
        .iter()
        .filter_map(|s| s.service.as_ref())
        .filter(|s| s.name == service)
        .flat_map(|s| s.vips.iter())
        .find_map(|vip| vip.parse::<Ipv4Addr>().ok())
        .unwrap_or_else(|| panic!("no IPv4 VIP for {service} in {services:?}"))
}
