//! The mTLS gRPC port (15012): the same services as the plaintext port, over TLS 1.3 with the
//! control plane's own certificate (signed by its CA, renewed at 70 % of its lifetime), asking
//! every caller for a client certificate and verifying one against the CA's roots. A caller
//! without a certificate is let in (a sidecar bootstrapping calls `SignCertificate` with its
//! token); the Discovery service refuses it. The caller's SPIFFE ID reaches every request as a
//! [`TlsPeer`] in its extensions.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::ca::Authority;

/// Default address of the mTLS gRPC port.
pub const DEFAULT_GRPC_TLS: &str = "0.0.0.0:15012";
/// Namespace of the control plane's own identity.
pub const CONTROL_PLANE_NAMESPACE: &str = "serin-system";
/// Service account of the control plane's own identity.
pub const CONTROL_PLANE_SERVICE_ACCOUNT: &str = "serin-control";
/// Default names of the serving certificate besides the SPIFFE ID (comma-separated).
pub const DEFAULT_TLS_SANS: &str = "serin-control,serin-control.serin-system,serin-control.serin-system.svc,localhost,127.0.0.1,::1";
/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The mTLS port's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPortConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// DNS names and IP addresses of the serving certificate (its URI name is the control
    /// plane's SPIFFE ID).
    pub sans: Vec<String>,
}

/// Who called, on the mTLS port (in each request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The SPIFFE ID of the verified client certificate; `None`: the client sent none.
    pub identity: Option<String>,
}

impl TlsPeer {
    /// The namespace of the identity (`spiffe://<td>/ns/<namespace>/sa/<sa>`).
    pub fn namespace(&self) -> Option<&str> {
        let path = self.identity.as_deref()?.strip_prefix("spiffe://")?;
        let mut parts = path.split('/').skip(1);
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if !ns.is_empty() && !sa.is_empty() =>
            {
                Some(ns)
            }
            _ => None,
        }
    }
}

/// Who may call a workload RPC (`Subscribe`, `Report`), and for which namespace: on the mTLS
/// port a caller with a workload certificate acts for its certificate's namespace
/// (`Some(namespace)`), one without is refused; on the plaintext port anyone may (`None`: no
/// restriction) unless client certificates are required.
pub fn caller_scope(
    peer: Option<&TlsPeer>,
    require_client_certs: bool,
    rpc: &str,
) -> Result<Option<String>, tonic::Status> {
    match peer {
        Some(peer) => match (&peer.identity, peer.namespace()) {
            (Some(_), Some(ns)) => Ok(Some(ns.to_owned())),
            (Some(id), None) => Err(tonic::Status::permission_denied(format!(
                "the client certificate's identity {id} is not spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
            ))),
            (None, _) => Err(tonic::Status::unauthenticated(format!(
                "{rpc} on the mTLS port needs a workload certificate (get one with Identity.SignCertificate)"
            ))),
        },
        None if require_client_certs => Err(tonic::Status::unauthenticated(format!(
            "this control plane refuses {rpc} on its plaintext port (--require-client-certs): connect to the mTLS port with a workload certificate"
        ))),
        None => Ok(None),
    }
}

/// The SPIFFE ID (a `spiffe://` URI subject alternative name) of a DER certificate.
pub fn spiffe_id(cert: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    })
}

/// One accepted mTLS connection, with who is on the other end.
#[derive(Debug)]
pub struct TlsConnection {
    inner: TlsStream<TcpStream>,
    peer: TlsPeer,
}

impl Connected for TlsConnection {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The control plane's serving certificate, re-issued by the CA at 70 % of its lifetime.
#[derive(Debug)]
struct ServingCert {
    ca: Arc<Authority>,
    identity: String,
    sans: Vec<String>,
    ttl: Duration,
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ServingCert {
    fn issue(
        ca: &Authority,
        identity: &str,
        sans: &[String],
        ttl: Duration,
        provider: &rustls::crypto::CryptoProvider,
    ) -> anyhow::Result<Arc<CertifiedKey>> {
        let (chain, key, _) = ca
            .issue_serving(identity, sans, ttl)
            .with_context(|| format!("cannot issue the serving certificate for {sans:?}"))?;
        let certs = chain
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .context("the issued serving certificate does not parse")?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
            .context("the serving certificate's key does not parse")?;
        let signing = provider
            .key_provider
            .load_private_key(key)
            .context("the serving certificate's key cannot sign")?;
        Ok(Arc::new(CertifiedKey::new(certs, signing)))
    }

    fn renew(&self) -> anyhow::Result<()> {
        let next = ServingCert::issue(
            &self.ca,
            &self.identity,
            &self.sans,
            self.ttl,
            &self.provider,
        )?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The mTLS port, bound, with its TLS configuration ready.
pub struct TlsPort {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    cert: Arc<ServingCert>,
}

impl std::fmt::Debug for TlsPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPort")
            .field("listener", &self.listener)
            .field("identity", &self.cert.identity)
            .finish_non_exhaustive()
    }
}

impl TlsPort {
    /// Issues the serving certificate (valid `ttl`) and binds `config.addr`.
    pub async fn bind(
        config: &TlsPortConfig,
        ca: Arc<Authority>,
        ttl: Duration,
    ) -> anyhow::Result<TlsPort> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = ca.identity(CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE_ACCOUNT);
        let first = ServingCert::issue(&ca, &identity, &config.sans, ttl, &provider)?;
        let mut roots = rustls::RootCertStore::empty();
        for pem in ca.trust_bundle() {
            let der = CertificateDer::from_pem_slice(pem.as_bytes())
                .context("a CA root of the trust bundle does not parse")?;
            roots
                .add(der)
                .context("a CA root of the trust bundle is not a valid trust anchor")?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .context("cannot build the client certificate verifier")?;
        let cert = Arc::new(ServingCert {
            ca,
            identity,
            sans: config.sans.clone(),
            ttl,
            provider: provider.clone(),
            current: RwLock::new(first),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 is not available")?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(cert.clone());
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("cannot listen for gRPC over mTLS on {}", config.addr))?;
        Ok(TlsPort {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            cert,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Accepts connections until `stop` turns true: each one's handshake runs on a task of its
    /// own (a slow client holds up nobody), failed handshakes are logged and dropped. Also
    /// renews the serving certificate.
    pub fn incoming(
        self,
        mut stop: watch::Receiver<bool>,
    ) -> impl tokio_stream::Stream<Item = std::io::Result<TlsConnection>> {
        let (tx, rx) = mpsc::channel(64);
        let TlsPort {
            listener,
            acceptor,
            cert,
        } = self;
        let mut renew_stop = stop.clone();
        tokio::spawn(async move {
            let every = cert.ttl.mul_f64(0.7);
            loop {
                tokio::select! {
                    () = crate::http::stopped(&mut renew_stop) => return,
                    () = tokio::time::sleep(every) => {}
                }
                let cert = cert.clone();
                match tokio::task::spawn_blocking(move || cert.renew()).await {
                    Ok(Ok(())) => tracing::info!("control plane serving certificate renewed"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %format!("{e:#}"), "cannot renew the serving certificate")
                    }
                    Err(e) => tracing::warn!(error = %e, "the renewal task failed"),
                }
            }
        });
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    () = crate::http::stopped(&mut stop) => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "mTLS port: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%remote, error = %e, "mTLS port: handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "mTLS port: handshake timed out");
                                return;
                            }
                        };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| spiffe_id(leaf));
                    let peer = TlsPeer {
                        remote: Some(remote),
                        identity,
                    };
                    let _ = tx.send(Ok(TlsConnection { inner: tls, peer })).await;
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_read_from_the_spiffe_id() {
        let peer = |id: Option<&str>| TlsPeer {
            remote: None,
            identity: id.map(str::to_owned),
        };
        assert_eq!(
            peer(Some("spiffe://cluster.local/ns/shop/sa/reviews")).namespace(),
            Some("shop")
        );
        assert_eq!(
            peer(Some("spiffe://cluster.local/ns//sa/x")).namespace(),
            None
        );
        assert_eq!(peer(Some("spiffe://cluster.local/sa/x")).namespace(), None);
        assert_eq!(
            peer(Some("spiffe://cluster.local/ns/a/sa/b/extra")).namespace(),
            None
        );
        assert_eq!(
            peer(Some("https://cluster.local/ns/a/sa/b")).namespace(),
            None
        );
        assert_eq!(peer(None).namespace(), None);
    }
}
