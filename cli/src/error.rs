//! What can go wrong in serinctl, each as one line saying what was wrong and where.

use std::error::Error as _;

/// A failure of a serinctl command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The control plane address is not a URL.
    #[error(
        "invalid control plane URL {url:?}: {reason} (set --control-plane or SERIN_CONTROL_PLANE)"
    )]
    BadUrl {
        /// What was given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The control plane cannot be reached.
    #[error(
        "cannot reach the control plane at {url}: {reason} (is serin-control running? set --control-plane or SERIN_CONTROL_PLANE)"
    )]
    Unreachable {
        /// Where it was looked for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The control plane refused or failed a request.
    #[error("{context}: {message}")]
    Refused {
        /// What was being done.
        context: String,
        /// The control plane's message, on one line.
        message: String,
        /// The gRPC code.
        code: tonic::Code,
    },
    /// Input from the user is not usable.
    #[error("{0}")]
    Input(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    /// A local-mesh verb was run without the privileges it needs.
    #[error("{verb} needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo")]
    NeedsRoot {
        /// The verb.
        verb: &'static str,
    },
    /// The local mesh refused or failed a request (serin-local's reason, on one line).
    #[error("{}", one_line(&.0.to_string()))]
    LocalMesh(#[from] serin_local::Error),
    /// A command `exec` ran ended with this exit code; it said why itself, so serinctl says
    /// nothing more and exits with the same code.
    #[error("the command exited with code {0}")]
    Exit(u8),
}

/// Folds a multi-line message onto one line.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The innermost cause of a transport error, worded for people.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = last.source() {
        last = next;
    }
    if let Some(io) = last.downcast_ref::<std::io::Error>() {
        return match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
            std::io::ErrorKind::TimedOut => "connection timed out".into(),
            std::io::ErrorKind::ConnectionReset => "connection reset".into(),
            _ => one_line(&io.to_string()),
        };
    }
    one_line(&last.to_string())
}

impl CliError {
    /// A gRPC status as an error of `context` against the control plane at `url`.
    pub fn status(url: &str, context: impl Into<String>, status: &tonic::Status) -> CliError {
        if status.code() == tonic::Code::Unavailable && status.source().is_some() {
            return CliError::Unreachable {
                url: url.to_owned(),
                reason: root_cause(status),
            };
        }
        let message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            one_line(status.message())
        };
        // Say how to give serinctl a credential.
        let message = match status.code() {
            tonic::Code::Unauthenticated => format!(
                "{message} (give serinctl the token with --token, SERIN_TOKEN or --token-file)"
            ),
            tonic::Code::PermissionDenied => format!(
                "{message} (give serinctl a write token with --token, SERIN_TOKEN or --token-file)"
            ),
            _ => message,
        };
        CliError::Refused {
            context: context.into(),
            message,
            code: status.code(),
        }
    }
}
