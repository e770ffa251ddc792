//! A local mesh for root end-to-end tests (`serin-local`'s `Cluster`: the control plane in its
//! pod, injected pods with real capture rules and real `serin-proxy` sidecars), brought down when
//! the test ends, also by a panic; pods running `serin-demo-app`; the control plane's dashboard
//! HTTP API on the host; a sidecar's admin port from inside its pod.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use serin_local::cluster::{Cluster, PodSpec, UpOptions};

use crate::pods::built_binary;

/// The port every demo app serves.
pub const APP_PORT: u16 = 9080;

/// A mesh in its own state directory, brought down on drop (printing the logs' tails when the
/// test panicked).
pub struct TestCluster {
    /// The mesh.
    pub cluster: Cluster,
    dir: PathBuf,
    http_port: u16,
}

impl TestCluster {
    /// Brings a mesh up for test `name` with the control plane's gRPC port forwarded to
    /// `grpc_port` on the host and its HTTP port to `grpc_port + 1` (pick ports apart from every
    /// other test's). Needs the binaries built (see [`built_binary`]).
    pub fn up(name: &str, grpc_port: u16) -> TestCluster {
        let dir = std::env::temp_dir().join(format!("serin-{name}-{}", std::process::id()));
        let bin_dir = built_binary("serin-proxy")
            .parent()
            .expect("the binaries' directory")
            .to_owned();
        for bin in [
            "serin-local-agent",
            "serin-control",
            "serin-iptables",
            "serin-demo-app",
        ] {
            built_binary(bin);
        }
        let mut options = UpOptions::new(dir.join("mesh"), bin_dir);
        options.grpc_port = grpc_port;
        options.http_port = grpc_port + 1;
        options.app_ready_timeout = Duration::from_secs(20);
        let cluster = Cluster::up(&options).expect("local mesh up").cluster;
        TestCluster {
            cluster,
            dir,
            http_port: grpc_port + 1,
        }
    }

    /// The mesh's state directory (for [`Cluster::open`] from another thread).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("mesh")
    }

    /// The dashboard's HTTP API on the host.
    pub fn dashboard(&self) -> Dashboard {
        Dashboard {
            addr: SocketAddr::from(([127, 0, 0, 1], self.http_port)),
            token: self
                .cluster
                .admin_token()
                .unwrap_or_else(|e| panic!("the local mesh's write token: {e}")),
        }
    }

    /// `path` on the admin port of `pod`'s sidecar (fetched from inside the pod by the demo
    /// app): the body.
    pub fn sidecar_get(&self, pod: &str, path: &str) -> String {
        let out = self
            .cluster
            .exec(
                pod,
                [
                    demo_app().display().to_string(),
                    "get".into(),
                    format!("http://127.0.0.1:15000{path}"),
                ],
            )
            .expect("exec in the pod")
            .output()
            .expect("serin-demo-app get");
        assert!(out.status.success(), "{pod}: GET {path}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The sidecars' and the control plane's logs say what went wrong.
            let logs = self.dir.join("mesh/logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("----- {} (last lines) -----", entry.path().display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if let Err(e) = Cluster::down(self.dir.join("mesh")) {
            eprintln!("down in the test guard failed: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The built `serin-demo-app`.
pub fn demo_app() -> PathBuf {
    built_binary("serin-demo-app")
}

/// Pod `SERVICE-VERSION` in `namespace` running the demo app on [`APP_PORT`], calling each of
/// `calls` (service names) on every request.
pub fn demo_pod(namespace: &str, service: &str, version: &str, calls: &[&str]) -> PodSpec {
    let mut command = vec![
        demo_app().display().to_string(),
        "--port".into(),
        APP_PORT.to_string(),
    ];
    for call in calls {
        command.push("--call".into());
        command.push(format!("{call}:{APP_PORT}"));
    }
    PodSpec::new(
        &format!("{service}-{version}"),
        namespace,
        service,
        version,
        APP_PORT,
        command,
    )
}

/// The control plane's dashboard HTTP API, forwarded to the host.
#[derive(Debug, Clone)]
pub struct Dashboard {
    /// Its address on the host.
    pub addr: SocketAddr,
    /// The mesh's write token (the dashboard's reads are open in the local mesh; writes need it).
    pub token: String,
}

impl Dashboard {
    /// The headers a write to the dashboard's API needs, for [`Dashboard::send`] and for a
    /// browser page (every request it makes carries them): the write token.
    pub fn write_headers(&self) -> Vec<(String, String)> {
        vec![("authorization".to_owned(), format!("Bearer {}", self.token))]
    }

    /// The page's URL.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `GET path`: the JSON body of a 200 (panics otherwise).
    pub fn get(&self, path: &str) -> Value {
        self.request("GET", path, None)
    }

    /// `METHOD path` with JSON `body` and [`Dashboard::write_headers`]: the JSON answer of a 200 (panics
    /// otherwise).
    pub fn send(&self, method: &str, path: &str, body: &str) -> Value {
        self.request(method, path, Some(body))
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the dashboard at {}: {e}", self.addr));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("set a read timeout");
        let mut head =
            format!("{method} {path} HTTP/1.1\r\nHost: dashboard\r\nConnection: close\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
            for (name, value) in self.write_headers() {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or_default());
        stream
            .write_all(head.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let mut out = String::new();
        stream
            .read_to_string(&mut out)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(out.starts_with("HTTP/1.1 200"), "{method} {path}: {out}");
        let answer = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{method} {path}: {e}: {answer}"))
    }
}

/// The primary (not mirrored) edge from node `source` to node `destination` of a topology, if
/// shown.
pub fn edge<'a>(graph: &'a Value, source: &str, destination: &str) -> Option<&'a Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["destination"] == destination && e["mirror"] == false)
}

/// An edge's requests per second (0 when there is no edge).
pub fn rps(edge: Option<&Value>) -> f64 {
    edge.and_then(|e| e["rps"].as_f64()).unwrap_or(0.0)
}
