//! Channels to the control plane, for the three clients that talk to it: Discovery, Telemetry
//! and the certificate requests.
//!
//! Without `--control-plane-tls` everything goes in plaintext to `--control-plane` (15010).
//! With it, the sidecar lives on the mTLS port (15012):
//! - Discovery and Telemetry present the current workload certificate (they wait for the first
//!   one) and check that the server is the control plane's SPIFFE ID, chained to the roots the
//!   certificate came with;
//! - a certificate renewal goes there the same way;
//! - the first certificate request (no certificate yet) goes there too when the sidecar was given
//!   the control plane's roots (`--control-plane-ca` or `--control-plane-ca-pem`): TLS without a
//!   client certificate, the server checked the same way, so the bootstrap token never crosses
//!   the network in the clear. Without those roots it falls back to the plaintext
//!   `--control-plane` (the bootstrap token is then readable on the path to the control plane).

use std::sync::Arc;

use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::config::{CaSource, ControlPlane};
use crate::discovery::{CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT, chain};
use crate::identity::CredentialsWatch;
use crate::tls::Credentials;

/// ALPN of gRPC over TLS.
const ALPN_H2: &[u8] = b"h2";

/// Why no channel could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot connect to the control plane at {url}: {reason}")]
pub struct ChannelError {
    /// The URL dialled.
    pub url: String,
    /// What went wrong, with its causes.
    pub reason: String,
}

/// `https://host:port` as the `http://` URI tonic dials (the TLS is done here).
pub(crate) fn plain_form(tls_url: &str) -> String {
    match tls_url.strip_prefix("https://") {
        Some(rest) => format!("http://{rest}"),
        None => tls_url.to_owned(),
    }
}

/// The SPIFFE ID the control plane's serving certificate must carry.
pub fn control_plane_identity(settings: &ControlPlane) -> String {
    let trust_domain = settings
        .identity
        .as_ref()
        .map_or(crate::identity::DEFAULT_TRUST_DOMAIN, |i| &i.trust_domain);
    format!(
        "spiffe://{trust_domain}/ns/{CONTROL_PLANE_NAMESPACE}/sa/{CONTROL_PLANE_SERVICE_ACCOUNT}"
    )
}

/// The URL the long-lived streams (Discovery, Telemetry) use: the mTLS port when there is one.
pub fn stream_url(settings: &ControlPlane) -> &str {
    settings.tls_url.as_deref().unwrap_or(&settings.url)
}

/// Dials `url` with the settings' timeouts; with `tls`, over TLS made with it (the server is
/// checked by the config's verifier, not by its name).
async fn dial(
    settings: &ControlPlane,
    url: &str,
    tls: Option<ClientConfig>,
) -> Result<Channel, ChannelError> {
    let error = |reason: String| ChannelError {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(plain_form(url))
        .map_err(|e| error(chain(&e)))?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .keep_alive_while_idle(true);
    let Some(config) = tls else {
        return endpoint.connect().await.map_err(|e| error(chain(&e)));
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: http::Uri| {
            let connector = connector.clone();
            async move {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port = uri.port_u16().unwrap_or(15012);
                let tcp = tokio::net::TcpStream::connect((host, port)).await?;
                tcp.set_nodelay(true)?;
                // The server is checked by its SPIFFE ID, not by this name.
                let name = rustls::pki_types::ServerName::try_from("serin-control")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| error(chain(&e)))
}

/// A channel for Discovery and Telemetry: plaintext to `--control-plane`, or mTLS to
/// `--control-plane-tls` with the current workload certificate (waiting for the first).
pub async fn stream_channel(
    settings: &ControlPlane,
    credentials: &CredentialsWatch,
) -> Result<Channel, ChannelError> {
    let Some(tls_url) = &settings.tls_url else {
        return dial(settings, &settings.url, None).await;
    };
    let error = |reason: String| ChannelError {
        url: tls_url.clone(),
        reason,
    };
    let mut watch = credentials.clone();
    if watch.borrow().is_none() {
        tracing::info!(control_plane = %tls_url, "waiting for the workload certificate to connect on the mTLS port");
    }
    let current = watch
        .wait_for(Option::is_some)
        .await
        .map_err(|_| error("no workload certificate will come".into()))?
        .clone()
        .ok_or_else(|| error("no workload certificate".into()))?;
    let config = current
        .client_config(&control_plane_identity(settings), ALPN_H2)
        .map_err(|e| error(format!("cannot make the TLS client: {e}")))?;
    dial(settings, tls_url, Some(config)).await
}

/// A channel for a certificate request, and the URL it goes to: see the module's doc.
pub async fn certificate_channel(
    settings: &ControlPlane,
    current: Option<&Credentials>,
) -> Result<(Channel, String), ChannelError> {
    let Some(tls_url) = &settings.tls_url else {
        return Ok((
            dial(settings, &settings.url, None).await?,
            settings.url.clone(),
        ));
    };
    let error = |reason: String| ChannelError {
        url: tls_url.clone(),
        reason,
    };
    let expected = control_plane_identity(settings);
    let config = match (current, settings.control_plane_ca.as_deref()) {
        (Some(credentials), _) => credentials.client_config(&expected, ALPN_H2),
        (None, Some(ca)) => {
            let pem = read_ca(ca).map_err(error)?;
            crate::tls::server_checked_client_config(&pem, &expected, ALPN_H2)
        }
        (None, None) => {
            return Ok((
                dial(settings, &settings.url, None).await?,
                settings.url.clone(),
            ));
        }
    }
    .map_err(|e| error(format!("cannot make the TLS client: {e}")))?;
    Ok((
        dial(settings, tls_url, Some(config)).await?,
        tls_url.clone(),
    ))
}

/// The control plane's roots, PEM (a file is read at each use: it may be replaced).
pub fn read_ca(ca: &CaSource) -> Result<String, String> {
    match ca {
        CaSource::Pem(pem) => Ok(pem.clone()),
        CaSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
            format!(
                "cannot read the control plane's roots (--control-plane-ca) {}: {e}",
                path.display()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_url_is_dialled_as_http_and_streams_prefer_it() {
        assert_eq!(plain_form("https://cp:15012"), "http://cp:15012");
        assert_eq!(plain_form("http://cp:15010"), "http://cp:15010");
        let mut settings = ControlPlane::new("http://cp:15010");
        assert_eq!(stream_url(&settings), "http://cp:15010");
        settings.tls_url = Some("https://cp:15012".into());
        assert_eq!(stream_url(&settings), "https://cp:15012");
        assert_eq!(
            control_plane_identity(&settings),
            "spiffe://cluster.local/ns/serin-system/sa/serin-control"
        );
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = read_ca(&CaSource::File("/nonexistent/ca.pem".into())).unwrap_err();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert_eq!(read_ca(&CaSource::Pem("PEM".into())).unwrap(), "PEM");
    }
}
