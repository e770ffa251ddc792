//! The mutating admission webhook: HTTPS (rustls) on :15017, `POST /inject` with an
//! AdmissionReview v1. The certificate comes from files (cert-manager, or a Secret; read again
//! when they change) or, when none are given, is generated at start (a self-signed certificate
//! for the Service's DNS names, whose PEM is the `caBundle` to put in the
//! MutatingWebhookConfiguration).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::config::InjectConfig;
use super::pod::NamespaceInjection;
use super::review::review;

/// Default address of the webhook.
pub const DEFAULT_WEBHOOK_ADDR: &str = "0.0.0.0:15017";
/// The path the MutatingWebhookConfiguration calls.
pub const INJECT_PATH: &str = "/inject";
/// Largest AdmissionReview taken: the API server caps objects near 3 MiB, and a pod with huge
/// `managedFields` comes close.
pub const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
/// DNS names of the generated certificate when none are configured.
pub const DEFAULT_DNS_NAMES: &[&str] = &[
    "serin-control",
    "serin-control.serin-system",
    "serin-control.serin-system.svc",
    "serin-control.serin-system.svc.cluster.local",
    "localhost",
];

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// PEM files: the certificate chain and its private key.
    Files {
        /// Certificate chain (leaf first).
        cert: PathBuf,
        /// Private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
    /// Generate a self-signed certificate for these DNS names (and 127.0.0.1 / ::1).
    SelfSigned {
        /// Subject alternative names.
        dns_names: Vec<String>,
    },
}

/// The webhook's configuration.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// The certificate.
    pub tls: TlsSource,
    /// What injection adds.
    pub inject: InjectConfig,
    /// Largest body taken (413 beyond).
    pub max_body: usize,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A certificate or key file cannot be read.
    #[error("cannot read the webhook {what} from {path}: {reason}")]
    Pem {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot generate the webhook certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("the webhook certificate and key do not make a TLS server: {0}")]
    Tls(#[from] rustls::Error),
    /// The port is taken.
    #[error("cannot bind the webhook on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A bound webhook, ready to serve.
pub struct Webhook {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    certificate_pem: String,
}

struct State {
    inject: InjectConfig,
    max_body: usize,
}

impl Webhook {
    /// Loads or generates the certificate and binds the port.
    pub async fn bind(config: WebhookConfig) -> Result<Webhook, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(CertificateSource::load(&config.tls, provider.clone())?);
        let certificate_pem = resolver.pem();
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| WebhookError::Bind {
                    addr: config.addr,
                    source,
                })?;
        Ok(Webhook {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            state: Arc::new(State {
                inject: config.inject,
                max_body: config.max_body,
            }),
            certificate_pem,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The served certificate (leaf) as PEM: for a generated one, the `caBundle` to trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Serves until `shutdown` turns true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(addr = %self.local_addr(), "admission webhook serving");
        loop {
            let accepted = tokio::select! {
                () = crate::http::stopped(&mut shutdown) => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            let mut conn_stop = shutdown.clone();
            tokio::spawn(async move {
                let tls = tokio::select! {
                    tls = acceptor.accept(stream) => tls,
                    () = crate::http::stopped(&mut conn_stop) => return,
                };
                let tls = match tls {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                };
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
                        }
                    }
                    () = crate::http::stopped(&mut conn_stop) => {}
                }
            });
        }
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{reason}\n"))
}

async fn handle(state: &State, req: Request<Incoming>) -> Reply {
    if req.uri().path() != INJECT_PATH {
        return error(
            StatusCode::NOT_FOUND,
            format!("no such path: use POST {INJECT_PATH}"),
        );
    }
    if req.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{INJECT_PATH} takes POST"),
        );
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {content_type:?}: send the AdmissionReview as application/json"),
        );
    }
    let body = match Limited::new(req.into_body(), state.max_body)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {} bytes", state.max_body),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    match review(&body, &state.inject, NamespaceInjection::Enabled) {
        Ok(answer) => match serde_json::to_vec(&answer) {
            Ok(json) => reply(StatusCode::OK, "application/json", json),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        },
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The serving certificate: generated once, or read from files and read again when they change
/// (cert-manager renews into the Secret, the kubelet swaps the mounted files): each handshake
/// checks the files' modification times and sizes, and a renewal is served from the next
/// handshake on. A file that cannot be read or parsed keeps the previous certificate (logged).
#[derive(Debug)]
struct CertificateSource {
    files: Option<(PathBuf, PathBuf)>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: Option<FileStamp>,
    key: Arc<CertifiedKey>,
    pem: String,
}

/// What tells a changed file: (modified, length) of the certificate and of the key.
type FileStamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<FileStamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl CertificateSource {
    fn load(
        source: &TlsSource,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<CertificateSource, WebhookError> {
        let (files, loaded) = match source {
            TlsSource::Files { cert, key } => {
                let stamp = stamp(cert, key);
                let (key_pair, pem) = read_files(cert, key, &provider)?;
                (
                    Some((cert.clone(), key.clone())),
                    Loaded {
                        stamp,
                        key: Arc::new(key_pair),
                        pem,
                    },
                )
            }
            TlsSource::SelfSigned { dns_names } => {
                let mut names = dns_names.clone();
                names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
                let generated = rcgen::generate_simple_self_signed(names)?;
                let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
                let certified = CertifiedKey::from_der(
                    vec![generated.cert.der().clone()],
                    PrivateKeyDer::Pkcs8(key),
                    &provider,
                )?;
                (
                    None,
                    Loaded {
                        stamp: None,
                        key: Arc::new(certified),
                        pem: generated.cert.pem(),
                    },
                )
            }
        };
        Ok(CertificateSource {
            files,
            provider,
            current: RwLock::new(loaded),
        })
    }

    fn pem(&self) -> String {
        self.current
            .read()
            .map(|l| l.pem.clone())
            .unwrap_or_default()
    }

    /// Reads the files again if they changed since the last read.
    fn refresh(&self, cert: &Path, key: &Path) {
        let now = stamp(cert, key);
        let unchanged = self.current.read().map_or(true, |l| l.stamp == now);
        if unchanged || now.is_none() {
            return;
        }
        match read_files(cert, key, &self.provider) {
            Ok((key_pair, pem)) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Loaded {
                        stamp: now,
                        key: Arc::new(key_pair),
                        pem,
                    };
                    tracing::info!(cert = %cert.display(), "webhook certificate reloaded");
                }
            }
            Err(e) => tracing::warn!(error = %e, "keeping the previous webhook certificate"),
        }
    }
}

impl ResolvesServerCert for CertificateSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some((cert, key)) = &self.files {
            self.refresh(cert, key);
        }
        self.current.read().ok().map(|l| l.key.clone())
    }
}

fn read_files(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(CertifiedKey, String), WebhookError> {
    let pem_error = |what, path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| WebhookError::Pem {
            what,
            path,
            reason: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem_error("certificate", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error("certificate", cert))?;
    if chain.is_empty() {
        return Err(WebhookError::Pem {
            what: "certificate",
            path: cert.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(pem_error("private key", key))?;
    let certified = CertifiedKey::from_der(chain, private_key, provider)?;
    let text = std::fs::read_to_string(cert).unwrap_or_default();
    Ok((certified, text))
}
