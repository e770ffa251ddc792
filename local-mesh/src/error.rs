//! The crate's error type: every message says what failed, where, and (for commands) the exact
//! command line and what it printed on stderr.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while building, using or tearing down a local mesh.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process lacks the privileges to create network namespaces.
    #[error("needs root or CAP_NET_ADMIN+CAP_SYS_ADMIN: {reason}")]
    Privileges {
        /// Why the check failed (which capability is missing, for which uid).
        reason: String,
    },

    /// A tool the mesh shells out to is not installed.
    #[error("`{tool}` not found in PATH: {hint}")]
    MissingTool {
        /// The program name.
        tool: &'static str,
        /// How to install it.
        hint: &'static str,
    },

    /// A command could not be started at all.
    #[error("failed to start `{command}`: {source}")]
    Spawn {
        /// The full command line.
        command: String,
        /// The OS error.
        source: io::Error,
    },

    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The full command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },

    /// Waiting for (or signalling) a spawned process failed.
    #[error("failed to {action} process {pid} (`{command}`): {source}")]
    Process {
        /// What was attempted: "wait for", "kill", "read output of".
        action: &'static str,
        /// The process id.
        pid: u32,
        /// The command line it was started with.
        command: String,
        /// The OS error.
        source: io::Error,
    },

    /// A file or directory operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What was attempted: "write", "create directory", "remove", ...
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// Entering a network namespace from a thread failed.
    #[error("failed to enter network namespace {netns} ({path}): {source}")]
    Setns {
        /// The namespace name.
        netns: String,
        /// The namespace file that was opened.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// A pod name cannot be used (it becomes part of a namespace name and host names).
    #[error("invalid pod name {name:?}: {reason}")]
    InvalidPodName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A pod with this name already exists in the mesh.
    #[error("pod {name:?} already exists in mesh {run_id}")]
    DuplicatePod {
        /// The pod name.
        name: String,
        /// The mesh's run id.
        run_id: String,
    },

    /// The mesh has no pod of that name.
    #[error("no pod {name:?} in mesh {run_id}")]
    NoSuchPod {
        /// The pod name.
        name: String,
        /// The mesh's run id.
        run_id: String,
    },

    /// Something did not happen within its deadline.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: std::time::Duration,
    },

    /// The mesh was already torn down.
    #[error("mesh {run_id} is torn down")]
    TornDown {
        /// The mesh's run id.
        run_id: String,
    },

    /// The pod subnet is used up.
    #[error("no address left in {subnet} for pod {name:?}")]
    AddressesExhausted {
        /// The pod subnet.
        subnet: &'static str,
        /// The pod that needed an address.
        name: String,
    },

    /// A host name for a hosts file is not usable.
    #[error("invalid host name {name:?}: {reason}")]
    InvalidHostName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// No local mesh is up in this state directory.
    #[error("no local mesh is up in {state_dir} (run `serinctl up` first)")]
    NotUp {
        /// The state directory that was looked in.
        state_dir: PathBuf,
    },

    /// A binary the local mesh runs is not where it was looked for.
    #[error(
        "{name} not found at {path}: build it (cargo build --bins) or point the mesh at the directory holding it"
    )]
    MissingBinary {
        /// The binary's name.
        name: &'static str,
        /// Where it was expected.
        path: PathBuf,
    },

    /// The local mesh's agent process did not come up.
    #[error("the local mesh agent failed to start: {reason} (log: {log})")]
    AgentStart {
        /// What went wrong (the agent's last log line when it exited).
        reason: String,
        /// The agent's log file.
        log: PathBuf,
    },

    /// The local mesh's agent refused or failed a request; the message says why.
    #[error("{message}")]
    Agent {
        /// The agent's one-line reason.
        message: String,
    },

    /// Talking to the agent over its socket failed.
    #[error("cannot talk to the local mesh agent at {socket}: {source}")]
    AgentSocket {
        /// The agent's socket.
        socket: PathBuf,
        /// The OS error.
        source: io::Error,
    },

    /// The state file of a local mesh is unreadable.
    #[error("state file {path} is unusable: {reason}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// `run` named a namespace that was never created.
    #[error(
        "namespace {name:?} does not exist (create it with `serinctl namespace create {name}`)"
    )]
    UnknownNamespace {
        /// The namespace.
        name: String,
    },

    /// A pod's app port collides with a port the mesh reserves.
    #[error("port {port} of pod {pod:?} is taken: {reason}")]
    PortTaken {
        /// The pod.
        pod: String,
        /// The port asked for.
        port: u16,
        /// Who holds it.
        reason: String,
    },

    /// A pod's command cannot be found or executed.
    #[error("command {command:?} of pod {pod:?} not found: {reason}")]
    CommandNotFound {
        /// The pod.
        pod: String,
        /// The program.
        command: String,
        /// Why it is unusable.
        reason: String,
    },

    /// A request is malformed (an empty name, no command, ...).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        reason: String,
    },

    /// A pod's process (app or sidecar) did not become ready.
    #[error("{what} of pod {pod:?} not ready: {reason} (log: {log})")]
    NotReady {
        /// "sidecar" or "app".
        what: &'static str,
        /// The pod.
        pod: String,
        /// Why: a timeout or an exit.
        reason: String,
        /// Its log file.
        log: PathBuf,
    },

    /// A call to the control plane failed.
    #[error("control plane {call} failed: {message}")]
    ControlPlane {
        /// The RPC.
        call: &'static str,
        /// The gRPC status message or transport error.
        message: String,
    },

    /// Tearing a mesh down hit one or more errors (each one was also logged).
    #[error("teardown of mesh {run_id} hit {count} error(s), first: {first}")]
    Teardown {
        /// The mesh's run id.
        run_id: String,
        /// How many steps failed.
        count: usize,
        /// The first failure.
        first: Box<Error>,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
