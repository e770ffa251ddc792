//! The connection to serin-control, with the admin credential it asks for: a token, or on its
//! mTLS port (an https:// URL) a client certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serin_proto::auth::{AuthorizedAdmin, BearerToken, Role, Tokens, admin_client};
use tonic::codegen::http::Uri;
use tonic::transport::Endpoint;

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
    /// The client (sending the admin token, if one was found).
    pub admin: AuthorizedAdmin,
}

/// Where serinctl finds its admin credential: the token (first match wins) and, for an https://
/// control plane, the roots to check it by and a client certificate.
#[derive(Debug, Clone, Default)]
pub struct TokenSource {
    /// `--token` / `SERIN_TOKEN`.
    pub token: Option<String>,
    /// `--token-file` / `SERIN_TOKEN_FILE`.
    pub file: Option<PathBuf>,
    /// The local mesh's state directory: its tokens file is used for a control plane on
    /// loopback when neither of the above is given.
    pub local_state_dir: Option<PathBuf>,
    /// `--client-cert` and `--client-key`: the client certificate to present on the mTLS port.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `--control-plane-ca`: the roots an https:// control plane's certificate must chain to.
    pub control_plane_ca: Option<PathBuf>,
}

impl TokenSource {
    /// The token to send for `url`, if any; an unreadable `--token-file` is an error.
    pub fn resolve(&self, url: &str) -> Result<Option<String>, CliError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.trim().to_owned()));
        }
        if let Some(file) = &self.file {
            return read_token_file(file).map(Some);
        }
        // The local mesh's token, only for a control plane on this host: never send it away.
        if let Some(dir) = &self.local_state_dir
            && is_loopback(url)
        {
            let path = serin_local::cluster::StateDir(dir.clone()).admin_tokens();
            if let Ok(tokens) = Tokens::read(&path) {
                return Ok(tokens.plain(Role::Write).map(str::to_owned));
            }
        }
        Ok(None)
    }
}

/// A token file: a tokens file (its first write token, else its first read one) or a bare token.
fn read_token_file(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Input(format!(
            "cannot read the token file {} (--token-file / SERIN_TOKEN_FILE): {e}",
            path.display()
        ))
    })?;
    let words: Vec<&str> = text.split_whitespace().collect();
    if let [token] = words[..] {
        return Ok(token.to_owned());
    }
    let tokens = Tokens::parse(&path.display().to_string(), &text)
        .map_err(|e| CliError::Input(e.to_string()))?;
    tokens
        .plain(Role::Write)
        .or_else(|| tokens.plain(Role::Read))
        .map(str::to_owned)
        .ok_or_else(|| {
            CliError::Input(format!(
                "the token file {} holds only sha256: hashes, no token to send",
                path.display()
            ))
        })
}

/// Whether `url` names this host's loopback.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a PEM file given by `flag`, or says which one could not be read.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path)
        .map_err(|e| CliError::Input(format!("cannot read {flag} {}: {e}", path.display())))
}

/// The control plane's roots (`--control-plane-ca`): the file's text and its certificates (at
/// least one, each parsed).
pub fn read_roots(path: &Path) -> Result<(String, Vec<CertificateDer<'static>>), CliError> {
    let bad = |reason: String| {
        CliError::Input(format!("--control-plane-ca {}: {reason}", path.display()))
    };
    let text =
        String::from_utf8(read_pem("--control-plane-ca", path)?).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    Ok((text, certs))
}

/// The TLS client for an https:// control plane: its certificate checked against
/// `--control-plane-ca` and for the URL's host name (the control plane's `--tls-san` names),
/// presenting `--client-cert` when given.
fn tls_config(source: &TokenSource) -> Result<rustls::ClientConfig, CliError> {
    let Some(ca) = &source.control_plane_ca else {
        return Err(CliError::Input(
            "an https:// control plane needs --control-plane-ca FILE (the roots its certificate \
             chains to, e.g. the file of serin-control --trust-bundle-out)"
                .into(),
        ));
    };
    let bad = |flag: &str, path: &Path, e: &dyn std::fmt::Display| {
        CliError::Input(format!("{flag} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_roots(ca)?.1 {
        roots
            .add(cert)
            .map_err(|e| bad("--control-plane-ca", ca, &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| CliError::Input(format!("TLS: {e}")))?
    .with_root_certificates(roots);
    let mut config = match &source.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&read_pem("--client-cert", cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("--client-cert", cert, &e))?;
            let private = PrivateKeyDer::from_pem_slice(&read_pem("--client-key", key)?)
                .map_err(|e| bad("--client-key", key, &e))?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| bad("--client-cert", cert, &e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ControlPlane {
    /// Connects, sending the token `source` finds (and, to an https:// URL, presenting its
    /// client certificate), or says why not in one line.
    pub async fn connect(url: &str, source: &TokenSource) -> Result<ControlPlane, CliError> {
        let tls = match url.strip_prefix("https://") {
            Some(rest) => Some((tls_config(source)?, format!("http://{rest}"))),
            None if source.client_cert.is_some() => {
                return Err(CliError::Input(format!(
                    "--client-cert needs the control plane's mTLS port, an https:// URL (e.g. \
                     https://HOST:15012), not {url}"
                )));
            }
            None => None,
        };
        let dialled = tls.as_ref().map_or(url, |(_, plain)| plain.as_str());
        let endpoint = Endpoint::from_shared(dialled.to_owned())
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
        let token = match source.resolve(url)? {
            Some(token) => BearerToken::new(&token).map_err(CliError::Input)?,
            None => BearerToken::none(),
        };
        let unreachable = |e: tonic::transport::Error| CliError::Unreachable {
            url: url.to_owned(),
            reason: root_cause(&e),
        };
        let channel = match tls {
            None => endpoint.connect().await.map_err(unreachable)?,
            Some((config, _)) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                endpoint
                    .connect_with_connector(tower::service_fn(move |uri: Uri| {
                        let connector = connector.clone();
                        async move {
                            let host = uri.host().unwrap_or_default();
                            let host = host
                                .trim_start_matches('[')
                                .trim_end_matches(']')
                                .to_owned();
                            let port = uri.port_u16().unwrap_or(15012);
                            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
                            let tls = connector.connect(name, tcp).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                        }
                    }))
                    .await
                    .map_err(unreachable)?
            }
        };
        Ok(ControlPlane {
            url: url.to_owned(),
            admin: admin_client(channel, token),
        })
    }

    /// A status of a request made for `context`, as a CliError.
    pub fn error(&self, context: impl Into<String>, status: &tonic::Status) -> CliError {
        CliError::status(&self.url, context, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:15010"));
        assert!(is_loopback("http://localhost:15010"));
        assert!(is_loopback("http://[::1]:15010/"));
        assert!(!is_loopback("http://10.0.0.1:15010"));
        assert!(!is_loopback("https://serin-control.example:15010"));
    }

    #[test]
    fn token_files_may_be_bare_or_tokens_files() {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("bare");
        std::fs::write(&bare, "  abcdef0123456789abcdef\n").unwrap();
        assert_eq!(read_token_file(&bare).unwrap(), "abcdef0123456789abcdef");
        let file = dir.path().join("tokens");
        std::fs::write(
            &file,
            "read reader-0123456789ab\nwrite writer-0123456789ab\n",
        )
        .unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "writer-0123456789ab");
        let e = read_token_file(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read the token file"), "{e}");
    }

    #[test]
    fn the_local_mesh_token_is_only_sent_to_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir(&store).unwrap();
        std::fs::write(store.join("admin-tokens"), "write local-writer-000000001\n").unwrap();
        let source = TokenSource {
            local_state_dir: Some(dir.path().to_owned()),
            ..TokenSource::default()
        };
        assert_eq!(
            source.resolve("http://127.0.0.1:15010").unwrap().as_deref(),
            Some("local-writer-000000001")
        );
        assert_eq!(source.resolve("http://10.1.2.3:15010").unwrap(), None);
        let given = TokenSource {
            token: Some("given".into()),
            ..source
        };
        assert_eq!(
            given.resolve("http://127.0.0.1:15010").unwrap().as_deref(),
            Some("given")
        );
    }
}
