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
        CliError::Refused {
            context: context.into(),
            message,
            code: status.code(),
        }
    }
}
