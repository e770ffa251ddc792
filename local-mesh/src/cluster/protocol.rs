//! The agent's control protocol: one JSON request line per connection on the Unix socket in the
//! state directory, answered by one JSON response line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::record::{NamespaceRecord, PodRecord};
use super::{PodSpec, Removed};
use crate::Error;

/// What a client asks of the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create a namespace, or change its injection setting.
    CreateNamespace {
        /// The namespace.
        name: String,
        /// Whether its pods get a sidecar.
        injection: bool,
    },
    /// Start a pod.
    Run {
        /// What to run.
        spec: PodSpec,
    },
    /// Remove a pod.
    RemovePod {
        /// The pod.
        name: String,
    },
    /// Tear the whole mesh down and exit.
    Down,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// A namespace as it now is.
    Namespace {
        /// It.
        namespace: NamespaceRecord,
    },
    /// A pod that now runs.
    Pod {
        /// It.
        pod: PodRecord,
    },
    /// Done, nothing to report.
    Done,
    /// What `Down` removed.
    Removed {
        /// It.
        removed: Removed,
    },
    /// The request failed; one line saying why.
    Error {
        /// Why.
        message: String,
    },
}

/// Sends `request` to the agent listening on `socket` and waits up to `timeout` for its answer.
/// An error answer becomes [`Error::Agent`].
pub fn call(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, Error> {
    let io_error = |source| Error::AgentSocket {
        socket: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io_error)?;
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    let mut line = serde_json::to_string(request).map_err(|e| io_error(e.into()))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io_error)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_error)?;
    if answer.is_empty() {
        return Err(io_error(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the agent closed the connection without answering",
        )));
    }
    match serde_json::from_str(&answer).map_err(|e| io_error(e.into()))? {
        Response::Error { message } => Err(Error::Agent { message }),
        response => Ok(response),
    }
}
