//! The connection to serin-control.

use std::time::Duration;

use serin_proto::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CliError, root_cause};

/// How long to try to connect before saying the control plane is unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An Admin client of the control plane at `url`.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// Where it is.
    pub url: String,
    /// The client.
    pub admin: AdminClient<Channel>,
}

impl ControlPlane {
    /// Connects, or says why not in one line.
    pub async fn connect(url: &str) -> Result<ControlPlane, CliError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| CliError::BadUrl {
                url: url.to_owned(),
                reason: root_cause(&e),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CliError::BadUrl {
                url: url.to_owned(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                url: url.to_owned(),
                reason: root_cause(&e),
            })?;
        Ok(ControlPlane {
            url: url.to_owned(),
            admin: AdminClient::new(channel),
        })
    }

    /// A status of a request made for `context`, as a CliError.
    pub fn error(&self, context: impl Into<String>, status: &tonic::Status) -> CliError {
        CliError::status(&self.url, context, status)
    }
}
