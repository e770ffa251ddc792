//! Starting serin-control, running serinctl, registering workloads.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serin_proto::auth::{BearerToken, Role, TOKENS_FILE, Tokens, admin_client};
use serin_proto::v1;

/// Starts tracing once per test binary, into the test's captured output.
pub fn tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
}

/// The serinctl binary under test.
pub fn serinctl_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_serinctl"))
}

/// The serin-control binary: built next to serinctl (`cargo build --workspace --bins`, which
/// scripts/test runs first, or `cargo test -p serin-control -p serinctl`).
pub fn control_bin() -> PathBuf {
    let path = serinctl_bin().with_file_name("serin-control");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p serin-control, or run cargo test -p serin-control -p serinctl)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; the control plane binds it right after).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running serin-control process, killed on drop.
pub struct ControlPlane {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub child: Child,
    pub store: PathBuf,
    /// The write token serin-control generated in its store.
    pub token: String,
}

impl ControlPlane {
    /// Starts serin-control on `store` and waits (with a deadline) until /ready answers 200.
    pub fn start(store: &Path) -> ControlPlane {
        ControlPlane::start_with(store, &[])
    }

    /// [`ControlPlane::start`] with more flags.
    pub fn start_with(store: &Path, flags: &[&str]) -> ControlPlane {
        tracing();
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(control_bin())
            .args([
                "--grpc",
                &grpc.to_string(),
                "--http",
                &http.to_string(),
                "--store",
            ])
            .arg(store)
            .args(flags)
            .env("SERIN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut cp = ControlPlane {
            grpc,
            http,
            child,
            store: store.to_owned(),
            token: String::new(),
        };
        cp.wait_ready();
        cp.token = token_of(store, Role::Write);
        cp
    }

    /// Starts `serin-control --kubernetes` with `kubeconfig` and waits until /ready answers
    /// 200 (it is ready once the cluster is listed).
    pub fn start_kubernetes(kubeconfig: &Path, replica: &str) -> ControlPlane {
        tracing();
        // The replicas share the operator's tokens file (there is no store to generate one in).
        let dir = kubeconfig.parent().expect("the kubeconfig's directory");
        let token = "serin-test-kubernetes-write-token-0001".to_owned();
        let tokens = dir.join("admin-tokens");
        std::fs::write(&tokens, format!("write {token}\n")).unwrap();
        // ... and one CA root.
        let root =
            serin_control::ca::generate_root(serin_control::ca::DEFAULT_TRUST_DOMAIN).unwrap();
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        std::fs::write(&ca_cert, &root.cert_pem).unwrap();
        std::fs::write(&ca_key, &root.key_pem).unwrap();
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(control_bin())
            .args([
                "--grpc",
                &grpc.to_string(),
                "--http",
                &http.to_string(),
                "--admin-tokens",
                &tokens.display().to_string(),
                "--kubernetes",
                "--replica",
                replica,
                "--kubeconfig",
            ])
            .arg(kubeconfig)
            .arg("--ca-cert")
            .arg(&ca_cert)
            .arg("--ca-key")
            .arg(&ca_key)
            .env("SERIN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut cp = ControlPlane {
            grpc,
            http,
            child,
            store: PathBuf::new(),
            token,
        };
        cp.wait_ready();
        cp
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serin-control exited early with {status}");
            }
            if http_status(self.http, "/ready") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "serin-control not ready within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Runs serinctl against this control plane, with its write token in `SERIN_TOKEN`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        serinctl_as(&self.url(), Some(&self.token), args, None)
    }

    /// Runs serinctl with `stdin` as standard input.
    pub fn ctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        serinctl_as(&self.url(), Some(&self.token), args, Some(stdin))
    }

    /// Runs serinctl and returns its stdout, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "serinctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) -> PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.store.clone()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The token of `role` in the tokens file serin-control generated in `store`.
pub fn token_of(store: &Path, role: Role) -> String {
    Tokens::read(&store.join(TOKENS_FILE))
        .unwrap()
        .plain(role)
        .unwrap()
        .to_owned()
}

/// Runs serinctl with `--control-plane url` and no admin token.
pub fn serinctl(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    serinctl_as(url, None, args, stdin)
}

/// Runs serinctl with `--control-plane url` and `token` (in `SERIN_TOKEN`); never the token of
/// a local mesh that may be up on this host.
pub fn serinctl_as(url: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(serinctl_bin());
    cmd.arg("--control-plane")
        .arg(url)
        .args(args)
        .env_remove("SERIN_CONTROL_PLANE")
        .env_remove("SERIN_TOKEN")
        .env_remove("SERIN_TOKEN_FILE")
        .env("SERIN_STATE_DIR", "/nonexistent/serinctl-test-state");
    if let Some(token) = token {
        cmd.env("SERIN_TOKEN", token);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

/// The single error line of a failed run (asserting it failed with exactly one).
pub fn one_error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    // Warnings about documents applied before the failing one are not part of the failure.
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("serinctl: warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("serinctl: "), "{stderr}");
    lines[0].to_owned()
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

/// Registers workloads through the Admin API (serinctl has no verb for it: the local mesh does it).
pub fn register(cp: &ControlPlane, workloads: &[(&str, &str, &str, &str)]) {
    let url = cp.url();
    let token = BearerToken::new(&cp.token).unwrap();
    let workloads: Vec<v1::Workload> = workloads
        .iter()
        .map(|(pod, service, version, ip)| v1::Workload {
            pod_name: (*pod).into(),
            namespace: "default".into(),
            addresses: vec![(*ip).into()],
            service: (*service).into(),
            version: (*version).into(),
            ports: vec![v1::WorkloadPort {
                name: "http".into(),
                port: 9080,
                protocol: v1::Protocol::Http1 as i32,
            }],
            ..Default::default()
        })
        .collect();
    runtime().block_on(async move {
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut admin = admin_client(channel, token);
        for w in workloads {
            admin
                .register_workload(v1::RegisterWorkloadRequest {
                    workload: Some(w),
                    ttl: None,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    });
}

/// A runtime whose worker keeps connections moving while the test thread runs serinctl.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Two policies in one YAML stream, the second without a namespace.
pub const TWO_POLICIES: &str = "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules:
    - name: testers
      match:
        - headers: {end-user: {exact: jason}}
      route: [{version: v3, weight: 100}]
  default:
    route: [{version: v1, weight: 80}, {version: v2, weight: 20}]
---
# ratings: everything to v1
apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: ratings}
spec:
  service: ratings
  default:
    route: [{version: v1, weight: 100}]
";
