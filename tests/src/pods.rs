//! Helpers the root end-to-end tests share for pods with sidecars: the workspace's built
//! binaries, the real capture rules, and plain HTTP/1.1 GETs on a pod's loopback (a sidecar's
//! admin port).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serin_iptables::config::Config as CaptureConfig;
use serin_iptables::executor::SystemExecutor;
use serin_iptables::install;
use serin_iptables::plan::plan;
use serin_local::Pod;

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
