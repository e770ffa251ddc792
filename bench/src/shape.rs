//! The shapes under test and the stage each one is measured on: a fresh mesh (client pod and
//! server pod), the upstream in the server pod, the capture rules the shape needs
//! (`serin-iptables`' real rules, the mesh's own), and the proxies of one workload as processes
//! running as uid 1337, pinned with `taskset`. Everything is removed when the stage drops, on
//! error and panic too (the mesh's guard kills every process it started, nginx and HAProxy
//! included).

use std::fmt;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serin_iptables::config::Config as CaptureConfig;
use serin_iptables::executor::SystemExecutor;
use serin_iptables::install;
use serin_iptables::plan::plan;
use serin_local::{Ipv6, Mesh, MeshOptions, Pod, Process, Redirect};

use crate::peers::{self, ADMIN_PORT, Side, VIP};
use crate::pinning::Pinning;
use crate::upstream::Upstream;
use crate::workload::Workload;

/// The sidecar uid and gid; the capture rules never redirect its traffic.
pub const PROXY_UID: u32 = 1337;
/// How long a proxy may take to become ready (long enough for one started under valgrind).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a proxy may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A proxy implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proxy {
    /// `serin-proxy` with a static `--config` snapshot.
    Serin,
    /// nginx (Debian package).
    Nginx,
    /// HAProxy (Debian package).
    Haproxy,
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proxy::Serin => "Serin",
            Proxy::Nginx => "nginx",
            Proxy::Haproxy => "HAProxy",
        })
    }
}

/// Where the proxies sit between the load generator and the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// No proxy: the physical limit.
    Direct,
    /// A client-side proxy only (outbound capture in the client pod).
    OneHop(Proxy),
    /// Client-side and server-side proxies (the mesh shape; capture in both pods).
    TwoHops(Proxy),
}

impl Shape {
    /// Every shape, in report order.
    pub const ALL: [Shape; 7] = [
        Shape::Direct,
        Shape::OneHop(Proxy::Serin),
        Shape::OneHop(Proxy::Nginx),
        Shape::OneHop(Proxy::Haproxy),
        Shape::TwoHops(Proxy::Serin),
        Shape::TwoHops(Proxy::Nginx),
        Shape::TwoHops(Proxy::Haproxy),
    ];

    /// Its name on the command line (`--shape`).
    pub fn slug(self) -> String {
        match self {
            Shape::Direct => "direct".to_owned(),
            Shape::OneHop(p) => format!("{}-1", p.to_string().to_lowercase()),
            Shape::TwoHops(p) => format!("{}-2", p.to_string().to_lowercase()),
        }
    }

    /// Proxies a request passes through.
    pub fn hops(self) -> u32 {
        match self {
            Shape::Direct => 0,
            Shape::OneHop(_) => 1,
            Shape::TwoHops(_) => 2,
        }
    }

    /// The proxy, if any.
    pub fn proxy(self) -> Option<Proxy> {
        match self {
            Shape::Direct => None,
            Shape::OneHop(p) | Shape::TwoHops(p) => Some(p),
        }
    }

    /// The same hop count with another proxy.
    pub fn with_proxy(self, proxy: Proxy) -> Shape {
        match self {
            Shape::Direct => Shape::Direct,
            Shape::OneHop(_) => Shape::OneHop(proxy),
            Shape::TwoHops(_) => Shape::TwoHops(proxy),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Direct => f.write_str("direct (no proxy)"),
            Shape::OneHop(p) => write!(f, "{p}, 1 hop"),
            Shape::TwoHops(p) => write!(f, "{p}, 2 hops"),
        }
    }
}

/// Programs the stages start.
#[derive(Debug, Clone)]
pub struct Programs {
    /// `serin-proxy`, copied where uid 1337 can run it.
    pub serin_proxy: Option<PathBuf>,
    /// A command every proxy runs under (a profiler: `valgrind --tool=callgrind`).
    pub wrapper: Vec<String>,
    /// `nginx`.
    pub nginx: Option<PathBuf>,
    /// nginx's dynamic stream module.
    pub nginx_stream_module: PathBuf,
    /// `haproxy`.
    pub haproxy: Option<PathBuf>,
}

impl Programs {
    /// The program of `proxy`, or why it is missing.
    pub fn of(&self, proxy: Proxy) -> Option<&Path> {
        match proxy {
            Proxy::Serin => self.serin_proxy.as_deref(),
            Proxy::Nginx => self.nginx.as_deref(),
            Proxy::Haproxy => self.haproxy.as_deref(),
        }
    }
}

/// A directory every uid may use; removed on drop.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// Makes `/tmp/serin-bench-<pid>-<name>`.
    pub fn new(name: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("serin-bench-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        Ok(Scratch { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `name` readable by everyone.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?;
        Ok(path)
    }

    /// A subdirectory every uid may write.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One shape's mesh, upstream and capture rules. Proxies come and go per workload.
pub struct Stage {
    shape: Shape,
    client: Pod,
    server: Pod,
    pinning: Pinning,
    scratch: Scratch,
    upstream: Upstream,
    /// The guard: last, so it drops after the upstream thread has left the server pod.
    _mesh: Mesh,
}

impl Stage {
    /// Builds the mesh of `shape`: pods, upstream, capture rules.
    pub fn new(shape: Shape, pinning: Pinning) -> anyhow::Result<Stage> {
        let mesh = Mesh::create_with(MeshOptions { ipv6: Ipv6::Off })
            .context("create the benchmark's mesh")?;
        let client = mesh.add_pod("client")?;
        let server = mesh.add_pod("server")?;
        mesh.add_service(VIP.parse()?, "bench", "default")?;
        let upstream = Upstream::start(&server, Some(pinning.server))?;
        let capture: &[&Pod] = match shape {
            Shape::Direct => &[],
            Shape::OneHop(_) => &[&client],
            Shape::TwoHops(_) => &[&client, &server],
        };
        for pod in capture {
            apply_capture(pod)?;
        }
        let scratch = Scratch::new(mesh.run_id())?;
        Ok(Stage {
            shape,
            client,
            server,
            pinning,
            scratch,
            upstream,
            _mesh: mesh,
        })
    }

    /// The client pod, where the load generator runs.
    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// The server pod, where the upstream runs.
    pub fn server(&self) -> &Pod {
        &self.server
    }

    /// The upstream.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Where the load generator connects for `workload`: the upstream itself when direct, else
    /// the service VIP (which the capture rules redirect to the client-side proxy).
    pub fn target(&self, workload: Workload) -> SocketAddr {
        match self.shape {
            Shape::Direct => SocketAddr::new(self.server.ip().into(), workload.port()),
            _ => SocketAddr::new(
                VIP.parse::<IpAddr>().expect("constant VIP"),
                workload.port(),
            ),
        }
    }

    /// Starts the shape's proxies for `workload` and waits until they are ready.
    /// Serin loads `serin_snapshot` when given, else the plain snapshot of
    /// [`peers::serin_snapshot`].
    pub fn start_proxies(
        &self,
        workload: Workload,
        programs: &Programs,
        serin_snapshot: Option<&str>,
        serin_tls: Option<&crate::mtls::Certs>,
    ) -> anyhow::Result<Proxies> {
        let Some(proxy) = self.shape.proxy() else {
            return Ok(Proxies::default());
        };
        let program = programs
            .of(proxy)
            .with_context(|| format!("{proxy} is not available"))?;
        let mut sides = vec![(Side::Client, &self.client, self.pinning.client)];
        if self.shape.hops() == 2 {
            sides.push((Side::Server, &self.server, self.pinning.server));
        }
        let mut proxies = Proxies::default();
        for (side, pod, cpu) in sides {
            let upstream = match side {
                Side::Client => SocketAddr::new(self.server.ip().into(), workload.port()),
                Side::Server => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), workload.port()),
            };
            let name = format!("{proxy}-{}", side.port()).to_lowercase();
            let dir = self.scratch.subdir(&name)?;
            let log = dir.join("output.log");
            let mut argv: Vec<String> = vec!["taskset".into(), "-c".into(), cpu.to_string()];
            argv.extend(programs.wrapper.iter().cloned());
            argv.push(program.display().to_string());
            match proxy {
                Proxy::Serin => {
                    let snapshot = match serin_snapshot {
                        Some(text) => text.to_owned(),
                        None => {
                            peers::serin_snapshot(self.client.ip().into(), self.server.ip().into())
                        }
                    };
                    let config = self.scratch.write("mesh.yaml", &snapshot)?;
                    let (service, pod_ip) = match side {
                        Side::Client => ("bench-client", self.client.ip()),
                        Side::Server => ("bench", self.server.ip()),
                    };
                    argv.extend(
                        [
                            "--config",
                            &config.display().to_string(),
                            "--pod-name",
                            pod.name(),
                            "--pod-ip",
                            &pod_ip.to_string(),
                            "--service",
                            service,
                            "--version",
                            "v1",
                            "--log-level",
                            "warn",
                        ]
                        .map(str::to_owned),
                    );
                    if let Some(certs) = serin_tls {
                        argv.extend(certs.args(side));
                    }
                }
                Proxy::Nginx => {
                    let conf = peers::nginx(
                        workload,
                        side,
                        upstream,
                        &dir,
                        &programs.nginx_stream_module,
                    );
                    let conf = self.scratch.write(&format!("{name}.conf"), &conf)?;
                    argv.extend([
                        "-p".into(),
                        dir.display().to_string(),
                        "-e".into(),
                        dir.join("error.log").display().to_string(),
                        "-c".into(),
                        conf.display().to_string(),
                    ]);
                }
                Proxy::Haproxy => {
                    let conf = peers::haproxy(workload, side, upstream);
                    let conf = self.scratch.write(&format!("{name}.cfg"), &conf)?;
                    argv.extend(["-db".into(), "-f".into(), conf.display().to_string()]);
                }
            }
            let process = pod
                .exec(&argv)
                .user(PROXY_UID, PROXY_UID)
                .current_dir(&dir)
                .stdout(Redirect::File(log.clone()))
                .stderr(Redirect::Append(log.clone()))
                .spawn()
                .with_context(|| format!("start {proxy} in pod {}", pod.name()))?;
            let started = RunningProxy {
                process,
                log,
                what: format!("{proxy} ({} side)", side_name(side)),
            };
            let ready = match proxy {
                Proxy::Serin => wait_ready(pod, &started),
                Proxy::Nginx | Proxy::Haproxy => wait_listening(pod, &started, side.port()),
            };
            if let Err(e) = ready {
                return Err(e.context(format!(
                    "{} did not start: {}",
                    started.what,
                    started.log_tail()
                )));
            }
            proxies.running.push(started);
        }
        Ok(proxies)
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

/// Applies the default capture rules in `pod` with the real serin-iptables code and tools.
pub fn apply_capture(pod: &Pod) -> anyhow::Result<()> {
    let executor = pod.run_in(SystemExecutor::detect)?.context(
        "the iptables tools are needed for the proxied shapes (Debian: apt-get install iptables)",
    )?;
    let config = CaptureConfig {
        ipv6: false,
        ..CaptureConfig::default()
    };
    let rules = plan(&config);
    pod.run_in(|| install::apply(&rules, &executor))?
        .with_context(|| format!("apply capture rules in pod {}", pod.name()))?;
    Ok(())
}

/// Polls Serin's `/ready` from inside `pod`.
fn wait_ready(pod: &Pod, proxy: &RunningProxy) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = proxy.process.try_wait() {
            anyhow::bail!("exited with {status}");
        }
        if admin_get(pod, "/ready").is_ok_and(|(code, _)| code == 200) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("not ready after {READY_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `proxy` listens on `port` inside `pod`, failing at once if it exits.
fn wait_listening(pod: &Pod, proxy: &RunningProxy, port: u16) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    loop {
        if let Ok(Some(status)) = proxy.process.try_wait() {
            anyhow::bail!("exited with {status}");
        }
        match pod.wait_for_tcp(addr, Duration::from_millis(100)) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
            Err(_) => {}
        }
    }
}

/// `GET path` on Serin's admin port inside `pod`: status and body.
pub fn admin_get(pod: &Pod, path: &str) -> anyhow::Result<(u16, String)> {
    let answer = pod.run_in(|| -> std::io::Result<String> {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ADMIN_PORT);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out)
    })??;
    let code = answer
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// One proxy process.
pub struct RunningProxy {
    process: Process,
    log: PathBuf,
    what: String,
}

impl RunningProxy {
    /// Its pid (the program's own: `ip netns exec`, `setpriv` and `taskset` exec).
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(10).collect();
        if lines.is_empty() {
            "no output".to_owned()
        } else {
            lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
        }
    }
}

/// The proxies of one workload run; dropping them kills them.
#[derive(Default)]
pub struct Proxies {
    running: Vec<RunningProxy>,
}

impl Proxies {
    /// Their pids (roots of their process trees).
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().map(RunningProxy::pid).collect()
    }

    /// Fails, quoting its output, if one of them has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for p in &self.running {
            if let Ok(Some(status)) = p.process.try_wait() {
                anyhow::bail!("{} exited with {status}: {}", p.what, p.log_tail());
            }
        }
        Ok(())
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        for p in &self.running {
            // SIGTERM first, so that a profiler wrapping the proxy writes its output; then the
            // whole tree: an orphaned nginx worker would keep the port. The root first, so that
            // nginx's master cannot respawn the worker killed after it.
            let tree = crate::resources::tree(p.pid());
            let _ = p.process.signal(serin_local::Signal::SIGTERM);
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while matches!(p.process.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = p.process.kill();
            for pid in tree.into_iter().skip(1) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}
