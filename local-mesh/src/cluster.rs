//! The persistent local mesh behind `serinctl up/run/exec/pods/logs/down`: unlike [`Mesh`], which
//! lives as long as its guard, a cluster outlives the process that started it.
//!
//! `Cluster::up` starts `serin-local-agent`, a small long-lived process that owns the [`Mesh`]
//! (so the existing guard still removes everything when the agent stops), runs the control plane
//! in its own pod, forwards its ports to 127.0.0.1 on the host, keeps every pod's registration
//! lease alive and serves requests on a Unix socket. Everything it made is written to a state
//! file in the state directory (default `/run/serin-local/mesh`, or `$SERIN_STATE_DIR`), next to
//! the logs of every app and sidecar. Later processes [`Cluster::open`] that directory: reading
//! verbs (`pods`, `logs`, `exec`) use the state file alone, changing ones ask the agent.
//! [`Cluster::down`] asks the agent to tear down; when the agent is gone (a crash, `kill -9`), it
//! removes what the state file's run left, with [`sweep_run`](crate::sweep_run).
//!
//! Each `serinctl` verb is one call:
//!
//! ```no_run
//! # fn demo() -> Result<(), serin_local::Error> {
//! use serin_local::cluster::{Cluster, PodSpec, UpOptions, default_state_dir};
//! let dir = default_state_dir();
//! let up = Cluster::up(&UpOptions::new(&dir, "/usr/local/bin"))?;        // serinctl up
//! let cluster = Cluster::open(&dir)?;
//! cluster.create_namespace("shop", true)?;                              // namespace create
//! cluster.run(&PodSpec::new("reviews-v1", "shop", "reviews", "v1", 9080,
//!     ["serin-demo-app", "--port", "9080"]))?;                           // run
//! for pod in cluster.pods()? { println!("{} {}", pod.name, pod.ip); }   // pods
//! let status = cluster.exec("reviews-v1", ["ip", "addr"])?.status();    // exec
//! let log = cluster.log_path("reviews-v1", serin_local::cluster::LogStream::App)?; // logs
//! println!("{}", Cluster::down(&dir)?);                                  // down
//! # drop((up, status, log)); Ok(()) }
//! ```

pub mod bookinfo;
mod protocol;
mod record;

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::mesh::Ipv6;
use crate::poll::poll_until;
use crate::privileges::require_root;
use crate::state::Owner;
use crate::sweep::sweep_run;
use crate::traffic::{TrafficOptions, TrafficReport};

pub use protocol::{Request, Response, call};
pub use record::{
    CONTROL_PLANE_POD, ClusterRecord, LogStream, NamespaceRecord, PodRecord, ServiceRecord,
    StateDir,
};

/// Where the state directory is unless `$SERIN_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/serin-local/mesh";
/// The environment variable naming the state directory.
pub const ENV_STATE_DIR: &str = "SERIN_STATE_DIR";
/// The control plane's gRPC port, inside its pod and (by default) on the host.
pub const GRPC_PORT: u16 = 15010;
/// The control plane's mTLS gRPC port inside its pod (sidecars subscribe there).
pub const GRPC_TLS_PORT: u16 = 15012;
/// The control plane's HTTP (dashboard) port, inside its pod and (by default) on the host.
pub const HTTP_PORT: u16 = 15080;
/// The namespace every mesh starts with (injection enabled).
pub const DEFAULT_NAMESPACE: &str = "default";
/// The agent binary.
pub const AGENT_BIN: &str = "serin-local-agent";
/// The binaries the agent runs, looked for in [`UpOptions::bin_dir`].
pub const MESH_BINS: [&str; 4] = [AGENT_BIN, "serin-control", "serin-proxy", "serin-iptables"];
/// The ports a pod's app may not use: the sidecar's and the control plane's (15000-15099).
pub const RESERVED_PORTS: std::ops::RangeInclusive<u16> = 15000..=15099;

/// How long a request to the agent may take (a `run` waits for its sidecar and app).
const CALL_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `down` waits for the agent to exit after it answered.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The demo app binary (`serinctl demo` runs it in every Bookinfo pod).
pub const DEMO_APP_BIN: &str = "serin-demo-app";

/// The directory of the running executable: where `serinctl` finds the binaries it ships with
/// (they are built and installed side by side).
pub fn default_bin_dir() -> Result<PathBuf, Error> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("locate", "the running executable", e))?;
    Ok(exe
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned))
}

/// `bin_dir/serin-demo-app`, or the error naming where it was looked for.
pub fn demo_app_path(bin_dir: &Path) -> Result<PathBuf, Error> {
    let path = bin_dir.join(DEMO_APP_BIN);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary {
            name: DEMO_APP_BIN,
            path,
        })
    }
}

/// The state directory: `$SERIN_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
pub fn default_state_dir() -> PathBuf {
    std::env::var_os(ENV_STATE_DIR).map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
}

/// How `up` builds the mesh.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The state directory (state file, socket, store, logs).
    pub state_dir: PathBuf,
    /// The directory holding `serin-local-agent`, `serin-control`, `serin-proxy` and
    /// `serin-iptables` (`serinctl` passes its own directory).
    pub bin_dir: PathBuf,
    /// Host port on 127.0.0.1 forwarded to the control plane's gRPC port.
    pub grpc_port: u16,
    /// Host port on 127.0.0.1 forwarded to the control plane's HTTP port.
    pub http_port: u16,
    /// IPv6 in the mesh.
    pub ipv6: Ipv6,
    /// How long a pod's sidecar may take to answer `/ready` with 200.
    pub sidecar_ready_timeout: Duration,
    /// How long a pod's app may take to listen on its port.
    pub app_ready_timeout: Duration,
    /// How long the agent may take to come up.
    pub start_timeout: Duration,
}

impl UpOptions {
    /// Defaults: ports 15010 and 15080, IPv6 auto, 30 s for sidecars and apps, 60 s to start.
    pub fn new(state_dir: impl Into<PathBuf>, bin_dir: impl Into<PathBuf>) -> Self {
        UpOptions {
            state_dir: state_dir.into(),
            bin_dir: bin_dir.into(),
            grpc_port: GRPC_PORT,
            http_port: HTTP_PORT,
            ipv6: Ipv6::Auto,
            sidecar_ready_timeout: Duration::from_secs(30),
            app_ready_timeout: Duration::from_secs(30),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// What to run in a new pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Pod name (a DNS label of at most 40 characters).
    pub name: String,
    /// Namespace (must exist).
    pub namespace: String,
    /// Service the pod serves.
    pub service: String,
    /// Version label.
    pub version: String,
    /// The app's port (not in 15000-15099).
    pub port: u16,
    /// The app's program and arguments.
    pub command: Vec<String>,
    /// Extra environment of the app.
    pub env: Vec<(String, String)>,
    /// Whether `run` waits for the app to listen on its port before registering it.
    pub wait_for_port: bool,
}

impl PodSpec {
    /// A pod spec that waits for the app's port, with no extra environment.
    pub fn new<I, S>(
        name: &str,
        namespace: &str,
        service: &str,
        version: &str,
        port: u16,
        command: I,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        PodSpec {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            version: version.to_owned(),
            port,
            command: command.into_iter().map(|s| s.as_ref().to_owned()).collect(),
            env: Vec::new(),
            wait_for_port: true,
        }
    }
}

/// What `down` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// The run id of the mesh, when there was one.
    pub run_id: Option<String>,
    /// Whether the agent was gone and the leftovers were swept.
    pub after_crash: bool,
    /// Network namespaces deleted.
    pub namespaces: Vec<String>,
    /// Links deleted.
    pub links: Vec<String>,
    /// Processes stopped, as "pid N (what)".
    pub processes: Vec<String>,
    /// iptables rules removed (with the namespaces holding them).
    pub rules: Vec<String>,
    /// Workloads deregistered from the control plane.
    pub registrations: Vec<String>,
    /// The state directory, when it was removed.
    pub state_dir: Option<PathBuf>,
    /// Steps that failed.
    pub errors: Vec<String>,
    /// The agent that tore the mesh down (it exits right after answering).
    #[serde(default)]
    pub agent_pid: Option<u32>,
}

impl Removed {
    /// Whether nothing was there to remove.
    pub fn is_empty(&self) -> bool {
        self.run_id.is_none() && self.state_dir.is_none() && self.errors.is_empty()
    }
}

impl fmt::Display for Removed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(run_id) = &self.run_id else {
            return match &self.state_dir {
                Some(dir) => write!(f, "no mesh was up; removed {}", dir.display()),
                None => f.write_str("no mesh was up; nothing to remove"),
            };
        };
        let how = if self.after_crash {
            " (its agent was gone: swept the leftovers)"
        } else {
            ""
        };
        writeln!(f, "removed local mesh {run_id}{how}:")?;
        let mut list = |what: &str, items: &[String]| {
            if items.is_empty() {
                Ok(())
            } else {
                writeln!(f, "  {} {what}: {}", items.len(), items.join(", "))
            }
        };
        list("namespace(s)", &self.namespaces)?;
        list("link(s)", &self.links)?;
        list("process(es)", &self.processes)?;
        list("iptables rule set(s)", &self.rules)?;
        list("registration(s)", &self.registrations)?;
        list("error(s)", &self.errors)?;
        if let Some(dir) = &self.state_dir {
            writeln!(f, "  state directory {}", dir.display())?;
        }
        Ok(())
    }
}

/// What `up` did.
#[derive(Debug)]
pub struct Up {
    /// The running mesh.
    pub cluster: Cluster,
    /// `false` when a mesh was already up in the state directory (and was left as it was).
    pub created: bool,
}

impl fmt::Display for Up {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.cluster.record();
        let how = if self.created { "up" } else { "already up" };
        write!(
            f,
            "local mesh {} {how}: control plane {}, dashboard {}, state in {}",
            record.run_id,
            record.control_plane_url(),
            record.dashboard_url(),
            self.cluster.state_dir().display()
        )
    }
}

/// A handle on a running persistent local mesh.
#[derive(Debug, Clone)]
pub struct Cluster {
    dir: StateDir,
    record: ClusterRecord,
}

impl Cluster {
    /// Brings a mesh up in `options.state_dir`, or finds the one already up there (then
    /// `created` is false and nothing changes). Leftovers of a crashed mesh in that directory are
    /// removed first. Fails with one line, leaving nothing behind, without root or when a binary
    /// or a port is missing.
    pub fn up(options: &UpOptions) -> Result<Up, Error> {
        require_root()?;
        let dir = StateDir(options.state_dir.clone());
        // One `up` or `down` at a time per state directory: two racing `up`s would start two
        // agents writing one state file.
        let _lock = dir.lock()?;
        let existing = match dir.read() {
            Err(Error::StateFile { .. }) => {
                let removed = Cluster::down_locked(&dir)?;
                tracing::warn!(%removed, "removed a mesh whose state file was damaged before up");
                None
            }
            other => other?,
        };
        if let Some(record) = existing {
            if agent_alive(&record) {
                let cluster = Cluster::wait_ready(&dir, record.agent_pid, options.start_timeout)?;
                return Ok(Up {
                    cluster,
                    created: false,
                });
            }
            let removed = Cluster::down_locked(&dir)?;
            tracing::warn!(%removed, "removed the leftovers of a crashed mesh before up");
        }
        for (tool, hint) in [
            ("ip", "install iproute2 (Debian: apt-get install iproute2)"),
            (
                "iptables-restore",
                "install iptables (Debian: apt-get install iptables)",
            ),
            (
                "setpriv",
                "install util-linux (Debian: apt-get install util-linux)",
            ),
        ] {
            if !crate::ip::in_path(tool) {
                return Err(Error::MissingTool { tool, hint });
            }
        }
        for name in MESH_BINS {
            let path = options.bin_dir.join(name);
            if !path.is_file() {
                return Err(Error::MissingBinary { name, path });
            }
        }
        dir.create()?;
        let log = dir.agent_log();
        let open_log = || {
            File::options()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| Error::io("open", &log, e))
        };
        let mut cmd = Command::new(options.bin_dir.join(AGENT_BIN));
        cmd.arg("--state-dir")
            .arg(dir.path())
            .arg("--bin-dir")
            .arg(&options.bin_dir)
            .args(["--grpc-port", &options.grpc_port.to_string()])
            .args(["--http-port", &options.http_port.to_string()])
            .args(["--ipv6", ipv6_flag(options.ipv6)])
            .args([
                "--sidecar-ready-timeout-ms",
                &options.sidecar_ready_timeout.as_millis().to_string(),
            ])
            .args([
                "--app-ready-timeout-ms",
                &options.app_ready_timeout.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(open_log()?)
            .stderr(open_log()?)
            // Its own process group: a Ctrl-C in the terminal of `serinctl up` does not reach it.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| crate::ip::spawn_error(&cmd, e))?;
        let pid = child.id();
        tracing::info!(pid, state_dir = %dir.path().display(), "agent started");
        let mut exited = None;
        let ready = poll_until(options.start_timeout, || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return Some(None);
            }
            match dir.read() {
                Ok(Some(record)) if record.ready && record.agent_pid == pid => Some(Some(record)),
                _ => None,
            }
        });
        match (ready, exited) {
            (Some(Some(record)), _) => {
                // Reap it whenever it exits, so it never lingers as a zombie of this process.
                std::thread::spawn(move || child.wait());
                Ok(Up {
                    cluster: Cluster { dir, record },
                    created: true,
                })
            }
            (_, Some(status)) => Err(Error::AgentStart {
                reason: last_line(&log)
                    .unwrap_or_else(|| format!("it exited with {status} and logged nothing")),
                log,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let removed = Cluster::down_locked(&dir);
                tracing::warn!(?removed, "removed a mesh that did not come up in time");
                Err(Error::AgentStart {
                    reason: format!("not ready after {:?}", options.start_timeout),
                    log,
                })
            }
        }
    }

    fn wait_ready(dir: &StateDir, pid: u32, timeout: Duration) -> Result<Cluster, Error> {
        let record = poll_until(timeout, || match dir.read() {
            Ok(Some(r)) if r.ready || !agent_alive(&r) => Some(r),
            _ => None,
        });
        match record {
            Some(record) if record.ready => Ok(Cluster {
                dir: dir.clone(),
                record,
            }),
            _ => Err(Error::AgentStart {
                reason: format!(
                    "the agent (pid {pid}) that is bringing the mesh up did not finish"
                ),
                log: dir.agent_log(),
            }),
        }
    }

    /// Opens the mesh that is up in `state_dir`.
    pub fn open(state_dir: impl AsRef<Path>) -> Result<Cluster, Error> {
        let dir = StateDir(state_dir.as_ref().to_owned());
        let not_up = || Error::NotUp {
            state_dir: dir.path().to_owned(),
        };
        let record = dir.read()?.ok_or_else(not_up)?;
        if !agent_alive(&record) {
            return Err(Error::Agent {
                message: format!(
                    "the agent of local mesh {} (pid {}) is gone: run `serinctl down` to remove what is left, then `serinctl up`",
                    record.run_id, record.agent_pid
                ),
            });
        }
        if !record.ready {
            return Err(not_up());
        }
        Ok(Cluster { dir, record })
    }

    /// Tears down the mesh of `state_dir` and says what was removed: through its agent when it
    /// runs, else (after a crash) by sweeping the run its state file names. The state directory
    /// is removed too. With no mesh there, removes nothing and says so.
    pub fn down(state_dir: impl AsRef<Path>) -> Result<Removed, Error> {
        require_root()?;
        let dir = StateDir(state_dir.as_ref().to_owned());
        let _lock = dir.lock()?;
        Cluster::down_locked(&dir)
    }

    fn down_locked(dir: &StateDir) -> Result<Removed, Error> {
        let record = match dir.read() {
            Err(Error::StateFile { path, reason }) => {
                return Cluster::down_without_state(
                    dir,
                    &format!("state file {} was unreadable: {reason}", path.display()),
                );
            }
            other => other?,
        };
        let Some(record) = record else {
            let state_dir = dir.remove()?.then(|| dir.path().to_owned());
            return Ok(Removed {
                state_dir,
                ..Removed::default()
            });
        };
        let owner = Owner {
            pid: record.agent_pid,
            start_time: record.agent_start_time,
        };
        let mut removed = None;
        if owner.is_alive() {
            match call(&dir.socket(), &Request::Down, CALL_TIMEOUT) {
                Ok(Response::Removed { removed: r }) => removed = Some(r),
                Ok(other) => tracing::warn!(?other, "unexpected answer to down"),
                Err(e) => tracing::warn!(error = %e, "the agent did not tear down; killing it"),
            }
            if poll_until(EXIT_TIMEOUT, || (!owner.is_alive()).then_some(())).is_none() {
                let _ = signal::kill(Pid::from_raw(owner.pid as i32), Signal::SIGKILL);
                poll_until(EXIT_TIMEOUT, || (!owner.is_alive()).then_some(()));
            }
        }
        let mut removed = match removed {
            Some(r) => r,
            None => {
                let report = sweep_run(&record.run_id)?;
                let mut processes: Vec<String> = report
                    .processes
                    .iter()
                    .map(|p| format!("pid {p}"))
                    .collect();
                if owner.is_alive() {
                    processes.push(format!("pid {} (agent, still running)", owner.pid));
                }
                Removed {
                    run_id: Some(record.run_id),
                    after_crash: true,
                    namespaces: report.namespaces.clone(),
                    links: report.links.clone(),
                    processes,
                    rules: report
                        .namespaces
                        .iter()
                        .map(|ns| format!("iptables rules in {ns}"))
                        .collect(),
                    errors: report.errors.iter().map(ToString::to_string).collect(),
                    ..Removed::default()
                }
            }
        };
        if dir.remove()? {
            removed.state_dir = Some(dir.path().to_owned());
        }
        Ok(removed)
    }

    /// `down` when the state file cannot be read: ask the agent over its socket, else sweep the
    /// run named by the run id file (never another mesh), then drop the directory.
    fn down_without_state(dir: &StateDir, why: &str) -> Result<Removed, Error> {
        tracing::warn!(why, "tearing down without the state file");
        let mut removed = match call(&dir.socket(), &Request::Down, CALL_TIMEOUT) {
            Ok(Response::Removed { removed }) => {
                // Until it has exited, its forwarded ports are still taken.
                if let Some(pid) = removed.agent_pid
                    && let Ok(Some(start_time)) = crate::state::start_time(pid)
                {
                    let agent = Owner { pid, start_time };
                    poll_until(EXIT_TIMEOUT, || (!agent.is_alive()).then_some(()));
                }
                removed
            }
            _ => match dir.read_run_id() {
                Some(run_id) => {
                    let report = sweep_run(&run_id)?;
                    Removed {
                        run_id: Some(run_id),
                        after_crash: true,
                        namespaces: report.namespaces.clone(),
                        links: report.links.clone(),
                        processes: report
                            .processes
                            .iter()
                            .map(|p| format!("pid {p}"))
                            .collect(),
                        errors: report.errors.iter().map(ToString::to_string).collect(),
                        ..Removed::default()
                    }
                }
                None => Removed::default(),
            },
        };
        removed.errors.insert(0, why.to_owned());
        if dir.remove()? {
            removed.state_dir = Some(dir.path().to_owned());
        }
        Ok(removed)
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The state as it was when this handle was made or last refreshed.
    pub fn record(&self) -> &ClusterRecord {
        &self.record
    }

    /// Rereads the state file.
    pub fn refresh(&mut self) -> Result<&ClusterRecord, Error> {
        self.record = self.fresh()?;
        Ok(&self.record)
    }

    fn fresh(&self) -> Result<ClusterRecord, Error> {
        self.dir.read()?.ok_or_else(|| Error::NotUp {
            state_dir: self.dir.path().to_owned(),
        })
    }

    /// The control plane's admin tokens file.
    pub fn admin_tokens_path(&self) -> PathBuf {
        self.dir.admin_tokens()
    }

    /// The control plane's write token (only root can read it).
    pub fn admin_token(&self) -> Result<String, Error> {
        self.dir.admin_token()
    }

    /// The control plane's gRPC URL on the host (`http://127.0.0.1:15010` by default).
    pub fn control_plane_url(&self) -> String {
        self.record.control_plane_url()
    }

    /// The dashboard's URL on the host (`http://127.0.0.1:15080` by default).
    pub fn dashboard_url(&self) -> String {
        self.record.dashboard_url()
    }

    /// Creates namespace `name` (or changes whether its pods get a sidecar); affects pods
    /// created afterwards.
    pub fn create_namespace(&self, name: &str, injection: bool) -> Result<NamespaceRecord, Error> {
        let request = Request::CreateNamespace {
            name: name.to_owned(),
            injection,
        };
        match self.call(&request)? {
            Response::Namespace { namespace } => Ok(namespace),
            other => Err(unexpected(&other)),
        }
    }

    /// Starts a pod: in an injection-enabled namespace its capture rules and its sidecar first
    /// (the app starts once the sidecar's `/ready` answers 200), then the app, which is
    /// registered with the control plane once it listens. On any failure nothing of the pod is
    /// left.
    pub fn run(&self, spec: &PodSpec) -> Result<PodRecord, Error> {
        match self.call(&Request::Run { spec: spec.clone() })? {
            Response::Pod { pod } => Ok(pod),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes a pod: deregisters it, stops its app and sidecar, deletes its namespace.
    pub fn remove_pod(&self, name: &str) -> Result<(), Error> {
        self.call(&Request::RemovePod {
            name: name.to_owned(),
        })
        .map(drop)
    }

    /// The pods now running (from the state file).
    pub fn pods(&self) -> Result<Vec<PodRecord>, Error> {
        Ok(self.fresh()?.pods)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Result<PodRecord, Error> {
        self.fresh()?
            .pod(name)
            .cloned()
            .ok_or_else(|| Error::NoSuchPod {
                name: name.to_owned(),
                run_id: self.record.run_id.clone(),
            })
    }

    /// A command running `argv` inside pod `pod`'s network namespace (`ip netns exec`), so that
    /// it sees the pod's hosts file and addresses; the caller picks stdio and runs it. The
    /// control plane's pod ([`CONTROL_PLANE_POD`]) is one too.
    pub fn exec<I, S>(&self, pod: &str, argv: I) -> Result<Command, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let netns = if pod == CONTROL_PLANE_POD {
            crate::naming::RunId::parse(&self.record.run_id)
                .map(|id| id.pod_netns(CONTROL_PLANE_POD))
                .ok_or_else(|| Error::StateFile {
                    path: self.dir.state_file(),
                    reason: format!("run id {:?} is malformed", self.record.run_id),
                })?
        } else {
            self.pod(pod)?.netns
        };
        let mut argv = argv.into_iter().peekable();
        if argv.peek().is_none() {
            return Err(Error::Invalid {
                what: "exec",
                reason: "no command given".to_owned(),
            });
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns]).args(argv);
        Ok(cmd)
    }

    /// The log file of pod `pod`'s app or sidecar ([`CONTROL_PLANE_POD`]'s app is the control
    /// plane).
    pub fn log_path(&self, pod: &str, stream: LogStream) -> Result<PathBuf, Error> {
        if pod == CONTROL_PLANE_POD && stream == LogStream::App {
            return Ok(self.dir.log(pod, stream));
        }
        let record = self.pod(pod)?;
        match stream {
            LogStream::App => Ok(record.app_log),
            LogStream::Sidecar => record.sidecar_log.ok_or_else(|| Error::Invalid {
                what: "logs request",
                reason: format!(
                    "pod {pod:?} has no sidecar (namespace {:?} has injection disabled)",
                    record.namespace
                ),
            }),
        }
    }

    /// Runs `pods` in order; if one fails, removes the ones this call started and returns that
    /// failure (pods that were already running stay).
    pub fn deploy(&self, pods: &[PodSpec]) -> Result<Vec<PodRecord>, Error> {
        let mut started = Vec::with_capacity(pods.len());
        for spec in pods {
            match self.run(spec) {
                Ok(record) => started.push(record),
                Err(e) => {
                    for record in started.iter().rev() {
                        if let Err(cleanup) = self.remove_pod(&record.name) {
                            tracing::warn!(pod = %record.name, error = %cleanup, "cleanup after a failed deploy");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(started)
    }

    /// Sends `traffic` from inside pod `from` with the `serin-demo-app` at `demo_app` (its
    /// `traffic` subcommand, so names resolve and connections leave from the pod) and returns
    /// what answered.
    pub fn traffic(
        &self,
        from: &str,
        demo_app: &Path,
        traffic: &TrafficOptions,
    ) -> Result<TrafficReport, Error> {
        let mut cmd = self.exec(from, [demo_app.as_os_str()])?;
        cmd.args(["traffic", "--url", &traffic.url])
            .args(["--rate", &traffic.rate.to_string()])
            .args(["--duration", &format!("{}ms", traffic.duration.as_millis())])
            .args(["--concurrency", &traffic.concurrency.to_string()])
            .stdin(Stdio::null());
        if traffic.http2 {
            cmd.arg("--http2");
        }
        for user in &traffic.users {
            cmd.args(["--user", user]);
        }
        let line = crate::ip::render(&cmd);
        let out = cmd.output().map_err(|e| crate::ip::spawn_error(&cmd, e))?;
        if !out.status.success() {
            return Err(Error::CommandFailed {
                command: line,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Invalid {
            what: "traffic report",
            reason: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        })
    }

    fn call(&self, request: &Request) -> Result<Response, Error> {
        call(&self.dir.socket(), request, CALL_TIMEOUT)
    }
}

/// The pods as `serinctl pods` prints them: one aligned row per pod under a header.
pub fn pods_table(pods: &[PodRecord]) -> String {
    let header = [
        "NAME",
        "NAMESPACE",
        "SERVICE",
        "VERSION",
        "IP",
        "PORT",
        "VIP",
        "SIDECAR",
        "STATUS",
    ];
    let rows: Vec<[String; 9]> = pods
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.namespace.clone(),
                p.service.clone(),
                p.version.clone(),
                p.ip.to_string(),
                p.port.to_string(),
                p.vip.to_string(),
                p.sidecar_pid
                    .map_or_else(|| "-".to_owned(), |pid| format!("pid {pid}")),
                p.exited
                    .as_ref()
                    .map_or_else(|| "running".to_owned(), |how| format!("exited: {how}")),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

fn agent_alive(record: &ClusterRecord) -> bool {
    Owner {
        pid: record.agent_pid,
        start_time: record.agent_start_time,
    }
    .is_alive()
}

fn unexpected(response: &Response) -> Error {
    Error::Agent {
        message: format!("unexpected answer from the agent: {response:?}"),
    }
}

/// The `--ipv6` value for `ipv6`.
pub fn ipv6_flag(ipv6: Ipv6) -> &'static str {
    match ipv6 {
        Ipv6::Auto => "auto",
        Ipv6::On => "on",
        Ipv6::Off => "off",
    }
}

/// The last non-empty line of a log file, without the tracing prefix noise.
fn last_line(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_print_as_an_aligned_table() {
        let pod = PodRecord {
            name: "reviews-v1".into(),
            namespace: "default".into(),
            service: "reviews".into(),
            version: "v1".into(),
            port: 9080,
            command: vec!["app".into()],
            ip: "10.244.0.3".parse().unwrap(),
            netns: "srn-a1b2c3-reviews-v1".into(),
            app_pid: 10,
            sidecar_pid: Some(11),
            vip: "10.96.12.7".parse().unwrap(),
            lease_id: "l".into(),
            app_log: PathBuf::from("a"),
            sidecar_log: None,
            exited: None,
        };
        let plain = PodRecord {
            name: "db".into(),
            sidecar_pid: None,
            exited: Some("exit status: 1".into()),
            ..pod.clone()
        };
        assert_eq!(
            pods_table(&[pod, plain]),
            "NAME        NAMESPACE  SERVICE  VERSION  IP          PORT  VIP         SIDECAR  STATUS\n\
             reviews-v1  default    reviews  v1       10.244.0.3  9080  10.96.12.7  pid 11   running\n\
             db          default    reviews  v1       10.244.0.3  9080  10.96.12.7  -        exited: exit status: 1\n"
        );
        assert_eq!(
            pods_table(&[]),
            "NAME  NAMESPACE  SERVICE  VERSION  IP  PORT  VIP  SIDECAR  STATUS\n"
        );
    }

    #[test]
    fn binaries_are_found_beside_the_running_executable() {
        let dir = default_bin_dir().unwrap();
        assert!(
            dir.join(std::env::current_exe().unwrap().file_name().unwrap())
                .is_file()
        );
        let err = demo_app_path(Path::new("/nonexistent"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "serin-demo-app not found at /nonexistent/serin-demo-app: build it (cargo build --bins) or point the mesh at the directory holding it"
        );
    }

    #[test]
    fn removed_says_what_went() {
        let removed = Removed {
            run_id: Some("a1b2c3".into()),
            namespaces: vec!["srn-a1b2c3-node".into()],
            processes: vec!["pid 7 (control plane)".into()],
            state_dir: Some(PathBuf::from("/run/serin-local/mesh")),
            ..Removed::default()
        };
        assert_eq!(
            removed.to_string(),
            "removed local mesh a1b2c3:\n  1 namespace(s): srn-a1b2c3-node\n  \
             1 process(es): pid 7 (control plane)\n  state directory /run/serin-local/mesh\n"
        );
        assert!(Removed::default().is_empty());
    }
}
