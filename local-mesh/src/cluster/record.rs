//! The state directory of a persistent local mesh and its state file (`cluster.json`): what the
//! agent made (namespaces, pods, VIPs, pids, log files), read by every later `serinctl` process.
//!
//! Only the agent writes the file, whole (temporary file, then rename); readers never see half of
//! it.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "cluster.json";
/// A file holding only the run id, written once before anything else, so that `down` can
/// remove the run even when the state file is damaged.
pub const RUN_ID_FILE: &str = "run-id";
/// The agent's control socket inside the state directory.
pub const SOCKET: &str = "agent.sock";
/// The directory of every app's and sidecar's log.
pub const LOG_DIR: &str = "logs";
/// The control plane's store directory.
pub const STORE_DIR: &str = "store";
/// The agent's own log.
pub const AGENT_LOG: &str = "agent.log";
/// The control plane's pod.
pub const CONTROL_PLANE_POD: &str = "serin-control";

/// Which output of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The app's stdout and stderr.
    App,
    /// The sidecar's stdout and stderr.
    Sidecar,
}

/// Paths inside a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.0.join(STATE_FILE)
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.0.join(SOCKET)
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.0.join(LOG_DIR)
    }

    /// The agent's log.
    pub fn agent_log(&self) -> PathBuf {
        self.log_dir().join(AGENT_LOG)
    }

    /// The log of `pod`'s `stream`.
    pub fn log(&self, pod: &str, stream: LogStream) -> PathBuf {
        let kind = match stream {
            LogStream::App => "app",
            LogStream::Sidecar => "sidecar",
        };
        self.log_dir().join(format!("{pod}.{kind}.log"))
    }

    /// The file holding `pod`'s bootstrap token (read by its sidecar for its certificate).
    pub fn identity_token(&self, pod: &str) -> PathBuf {
        self.0.join("tokens").join(pod)
    }

    /// The CA's trust bundle, written by the control plane at start (public; sidecars check
    /// its mTLS port by it).
    pub fn trust_bundle(&self) -> PathBuf {
        self.0.join("trust-bundle.pem")
    }

    /// The control plane's store.
    pub fn store(&self) -> PathBuf {
        self.0.join(STORE_DIR)
    }

    /// The control plane's admin tokens file (generated in its store at first start, mode 0600).
    pub fn admin_tokens(&self) -> PathBuf {
        self.store().join(serin_proto::auth::TOKENS_FILE)
    }

    /// The control plane's write token, from [`StateDir::admin_tokens`].
    pub fn admin_token(&self) -> Result<String, Error> {
        let path = self.admin_tokens();
        let tokens = serin_proto::auth::Tokens::read(&path).map_err(|e| Error::ControlPlane {
            call: "read the admin token",
            message: e.to_string(),
        })?;
        tokens
            .plain(serin_proto::auth::Role::Write)
            .map(str::to_owned)
            .ok_or_else(|| Error::ControlPlane {
                call: "read the admin token",
                message: format!("{} holds no plain write token", path.display()),
            })
    }

    /// Reads the state file; `Ok(None)` when there is none.
    pub fn read(&self) -> Result<Option<ClusterRecord>, Error> {
        let path = self.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::StateFile {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes the state file atomically.
    pub fn write(&self, record: &ClusterRecord) -> Result<(), Error> {
        let path = self.state_file();
        let tmp = self.0.join(format!(".{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(record).map_err(|e| Error::StateFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&tmp, text).map_err(|e| Error::io("write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("replace", &path, e))
    }

    /// Records the run id (see [`RUN_ID_FILE`]).
    pub fn write_run_id(&self, run_id: &str) -> Result<(), Error> {
        let path = self.0.join(RUN_ID_FILE);
        fs::write(&path, format!("{run_id}\n")).map_err(|e| Error::io("write", path, e))
    }

    /// The recorded run id, if any.
    pub fn read_run_id(&self) -> Option<String> {
        let text = fs::read_to_string(self.0.join(RUN_ID_FILE)).ok()?;
        Some(text.trim().to_owned()).filter(|id| !id.is_empty())
    }

    /// Creates the directory and its log directory.
    pub fn create(&self) -> Result<(), Error> {
        let logs = self.log_dir();
        fs::create_dir_all(&logs).map_err(|e| Error::io("create directory", logs, e))
    }

    /// Removes the whole directory; a missing one is not an error.
    pub fn remove(&self) -> Result<bool, Error> {
        match fs::remove_dir_all(&self.0) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", &self.0, e)),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Takes the lock that serialises `up` and `down` on this directory, waiting for it. The
    /// lock file sits beside the directory (`<dir>.lock`), since `down` removes the directory.
    pub fn lock(&self) -> Result<Flock<File>, Error> {
        let mut name = self.0.file_name().unwrap_or_default().to_owned();
        name.push(".lock");
        let path = self.0.with_file_name(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open lock file", &path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::io("lock", &path, errno.into()))
    }
}

/// Everything a persistent local mesh is made of, as its state file records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The run id in every namespace and link name of the mesh.
    pub run_id: String,
    /// The agent process that owns the mesh.
    pub agent_pid: u32,
    /// The agent's start time (clock ticks since boot), so a reused pid is not mistaken for it.
    pub agent_start_time: u64,
    /// Whether the agent finished setting up (control plane running, ports forwarded).
    pub ready: bool,
    /// Host port (on 127.0.0.1) forwarded to the control plane's gRPC port.
    pub grpc_port: u16,
    /// Host port (on 127.0.0.1) forwarded to the control plane's HTTP port.
    pub http_port: u16,
    /// The node namespace.
    pub node_netns: String,
    /// The control plane's pod address.
    pub control_plane_ip: Option<Ipv4Addr>,
    /// The control plane's pid.
    pub control_plane_pid: Option<u32>,
    /// Namespaces, by name.
    pub namespaces: Vec<NamespaceRecord>,
    /// Pods other than the control plane's, in creation order.
    pub pods: Vec<PodRecord>,
    /// Services and their VIPs, as the control plane allocated them.
    pub services: Vec<ServiceRecord>,
}

impl ClusterRecord {
    /// The namespace called `name`.
    pub fn namespace(&self, name: &str) -> Option<&NamespaceRecord> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<&PodRecord> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The URL of the control plane's gRPC port as forwarded to the host.
    pub fn control_plane_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The URL of the control plane's HTTP port (dashboard) as forwarded to the host.
    pub fn dashboard_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

/// A namespace of the local mesh (a name and whether pods in it get a sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// The namespace's name.
    pub name: String,
    /// Whether pods created in it get capture rules and a sidecar.
    pub injection: bool,
}

/// A service and the VIP the control plane gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Service name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its VIP.
    pub vip: Ipv4Addr,
}

/// A pod the agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Pod name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Service it serves.
    pub service: String,
    /// Its version label.
    pub version: String,
    /// The app's port.
    pub port: u16,
    /// The app's command line.
    pub command: Vec<String>,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its network namespace (`ip netns exec NETNS ...`).
    pub netns: String,
    /// The app's pid.
    pub app_pid: u32,
    /// The sidecar's pid, when the pod was injected.
    pub sidecar_pid: Option<u32>,
    /// The service's VIP.
    pub vip: Ipv4Addr,
    /// The control plane lease that keeps it registered.
    pub lease_id: String,
    /// The app's log.
    pub app_log: PathBuf,
    /// The sidecar's log, when injected.
    pub sidecar_log: Option<PathBuf>,
    /// How the app ended, once it exited (the pod is then deregistered, and stays listed until
    /// removed).
    #[serde(default)]
    pub exited: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir(dir.path().to_owned());
        assert_eq!(state.read().unwrap(), None);
        let record = ClusterRecord {
            run_id: "a1b2c3".into(),
            agent_pid: 42,
            agent_start_time: 7,
            ready: true,
            grpc_port: 15010,
            http_port: 15080,
            node_netns: "srn-a1b2c3-node".into(),
            control_plane_ip: Some(Ipv4Addr::new(10, 244, 0, 2)),
            control_plane_pid: Some(43),
            namespaces: vec![NamespaceRecord {
                name: "default".into(),
                injection: true,
            }],
            pods: vec![],
            services: vec![],
        };
        state.write(&record).unwrap();
        assert_eq!(state.read().unwrap(), Some(record));
        fs::write(state.state_file(), "{").unwrap();
        let err = state.read().unwrap_err().to_string();
        assert!(err.contains("cluster.json is unusable"), "{err}");
    }
}
