//! Helpers the root end-to-end tests share for pods with sidecars: the workspace's built
//! binaries (and copies every uid can run), `serin-control` and `serin-proxy` started in pods,
//! the real capture rules, and plain HTTP/1.1 GETs on a pod's loopback (a sidecar's admin port).

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serin_iptables::config::Config as CaptureConfig;
use serin_iptables::executor::SystemExecutor;
use serin_iptables::install;
use serin_iptables::plan::plan;
use serin_local::{Pod, Process, Redirect};

/// The uid and gid sidecars run as (the capture rules let their traffic out unredirected).
pub const PROXY_UID: u32 = 1337;
/// The control plane's gRPC port in its pod.
pub const CONTROL_PLANE_PORT: u16 = 15010;
/// How long the control plane may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

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
/// `version` of `service` in namespace `default`; its log is `files.log(pod name)`.
pub fn start_sidecar(
    files: &Files,
    pod: &Pod,
    cp: Ipv4Addr,
    service: &str,
    version: &str,
) -> Process {
    pod.exec([
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
        "default",
        "--node-name",
        "serin-test",
        "--log-level",
        "info,serin_proxy=debug",
    ])
    .user(PROXY_UID, PROXY_UID)
    .stdout(Redirect::Append(files.log(pod.name())))
    .stderr(Redirect::Append(files.log(pod.name())))
    .spawn()
    .expect("spawn serin-proxy")
}
