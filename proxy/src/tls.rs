//! mTLS between sidecars (TLS 1.3 only, rustls): the workload's [`Credentials`] (its key, its
//! certificate chain and the roots it trusts) give the client config a meshed client sidecar
//! originates with — checking that the server presents exactly the SPIFFE ID the snapshot says
//! its endpoint has — and the server config the inbound listener terminates with, which asks
//! for and verifies the client's certificate. ALPN tells mesh traffic from an app's own TLS:
//! a sidecar offers only the `serin.*` protocols below, and the inbound side looks at the
//! ClientHello (without consuming it) before deciding to terminate.
//!
//! [`MeshIo`] is a connection as the forwarding path sees it: plain TCP, or TLS on TCP, either
//! side.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// ALPN of HTTP/2 inside mesh mTLS.
pub const ALPN_H2: &[u8] = b"serin.h2";
/// ALPN of HTTP/1.1 inside mesh mTLS.
pub const ALPN_HTTP1: &[u8] = b"serin.http1";
/// ALPN of opaque TCP inside mesh mTLS.
pub const ALPN_TCP: &[u8] = b"serin.tcp";
/// Every mesh ALPN.
pub const MESH_ALPNS: [&[u8]; 3] = [ALPN_H2, ALPN_HTTP1, ALPN_TCP];
/// The server name a client sidecar sends: the check is on the SPIFFE ID, not on a DNS name.
const SERVER_NAME: &str = "serin.mesh";

/// Why credentials could not be built, or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM block does not decode.
    #[error("bad {what}: {reason}")]
    Pem {
        /// Which part.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate, the key or the configuration.
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. no roots).
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server presented a valid certificate for another identity than the endpoint's.
#[derive(Debug, thiserror::Error)]
#[error("peer presented identity {found}, expected {expected}")]
pub struct WrongIdentity {
    /// The identity the snapshot gives the endpoint.
    pub expected: String,
    /// What the certificate says ("none" without a SPIFFE ID).
    pub found: String,
}

/// The crypto provider of every config (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SPIFFE ID (a `spiffe://` URI subject alternative name) of a DER certificate.
pub fn spiffe_id(cert: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
        _ => None,
    })
}

/// The certificates of a PEM text, in order.
pub fn certs_from_pem(
    what: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            reason: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// A workload's mTLS credentials, with the server config built once.
pub struct Credentials {
    /// Our SPIFFE ID.
    pub identity: String,
    /// When our certificate stops being valid.
    pub not_after: SystemTime,
    /// When it was obtained (renewal is scheduled from here).
    pub issued_at: SystemTime,
    server: Arc<ServerConfig>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Credentials from a PKCS#8 key (DER), a PEM chain (leaf first) and PEM roots.
    pub fn new(
        key_pkcs8: Vec<u8>,
        chain_pem: &str,
        roots_pem: &str,
        not_after: SystemTime,
    ) -> Result<Credentials, TlsError> {
        let provider = provider();
        let chain = certs_from_pem("certificate chain", chain_pem)?;
        let identity = spiffe_id(&chain[0]).ok_or_else(|| TlsError::Pem {
            what: "certificate chain",
            reason: "the first certificate has no spiffe:// URI".into(),
        })?;
        let roots = Arc::new(root_store("trust bundle", roots_pem)?);
        let key = PrivateKeyDer::Pkcs8(key_pkcs8.into());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()?;
        let mut server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        server.alpn_protocols = MESH_ALPNS.iter().map(|a| a.to_vec()).collect();
        Ok(Credentials {
            identity,
            not_after,
            issued_at: SystemTime::now(),
            server: Arc::new(server),
            chain,
            key,
            roots,
            provider,
        })
    }

    /// The server config of the inbound listener.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// A client config for a connection to a server that must present `expected`, offering
    /// `alpn`.
    pub fn client_config(&self, expected: &str, alpn: &[u8]) -> Result<ClientConfig, TlsError> {
        spiffe_client_config(
            Arc::clone(&self.roots),
            Arc::clone(&self.provider),
            expected,
            Some((self.chain.clone(), self.key.clone_key())),
            alpn,
        )
    }

    /// Opens mTLS on `tcp` to a server that must present `expected`.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        expected: &str,
        alpn: &[u8],
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = self
            .client_config(expected, alpn)
            .map_err(io::Error::other)?;
        let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }
}

/// A client config without a client certificate that checks the server against `roots_pem` and
/// for the SPIFFE ID `expected`: a sidecar's first certificate request to the control plane's
/// mTLS port, before it has a certificate of its own.
pub fn server_checked_client_config(
    roots_pem: &str,
    expected: &str,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let roots = Arc::new(root_store("control plane roots", roots_pem)?);
    spiffe_client_config(roots, provider(), expected, None, alpn)
}

/// The certificates of `pem` (named `what` in errors) as a root store.
fn root_store(what: &'static str, pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for root in certs_from_pem(what, pem)? {
        roots.add(root)?;
    }
    Ok(roots)
}

/// A TLS 1.3 client config offering `alpn`, without SNI, accepting only a server chained to
/// `roots` that presents the SPIFFE ID `expected`; presenting `client` (chain and key) if given.
fn spiffe_client_config(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: &str,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<ClientConfig, TlsError> {
    let verifier = Arc::new(SpiffeVerifier {
        roots,
        expected: expected.to_owned(),
        provider: Arc::clone(&provider),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// Verifies a server's chain against the mesh roots, then that it is the expected workload.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match spiffe_id(end_entity) {
            Some(found) if found == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(WrongIdentity {
                    expected: self.expected.clone(),
                    found: found.unwrap_or_else(|| "none".into()),
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What the first bytes of an inbound connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not a TLS handshake.
    NotTls,
    /// A ClientHello offering a mesh ALPN: a sidecar's mTLS.
    Mesh,
    /// A ClientHello without a mesh ALPN: the app's own TLS, passed through.
    OtherTls,
    /// More bytes are needed to tell.
    Incomplete,
}

/// Classifies the first bytes of an inbound connection, without consuming them.
pub fn classify_hello(buf: &[u8]) -> Hello {
    // A TLS record: type 22 (handshake), version 3.x.
    match buf {
        [] => return Hello::Incomplete,
        [0x16] | [0x16, 0x03] => return Hello::Incomplete,
        [0x16, 0x03, ..] => {}
        _ => return Hello::NotTls,
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut cursor = io::Cursor::new(buf);
    while (cursor.position() as usize) < buf.len() {
        if acceptor.read_tls(&mut cursor).is_err() {
            return Hello::OtherTls;
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            let mesh = hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| MESH_ALPNS.contains(&p)));
            if mesh { Hello::Mesh } else { Hello::OtherTls }
        }
        Ok(None) => Hello::Incomplete,
        Err(_) => Hello::OtherTls,
    }
}

/// A connection on the forwarding path: plain TCP, or mTLS on TCP (either side).
#[derive(Debug)]
pub enum MeshIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// mTLS we originated.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// mTLS we terminated (the TCP stream may start with bytes read for detection).
    Server(Box<tokio_rustls::server::TlsStream<crate::detect::Prefixed<TcpStream>>>),
}

impl MeshIo {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MeshIo::Plain(tcp) => tcp,
            MeshIo::Client(tls) => tls.get_ref().0,
            MeshIo::Server(tls) => tls.get_ref().0.inner(),
        }
    }

    /// Closes with a RST (zero linger) when the connection is dropped.
    pub fn set_zero_linger(&self) {
        let _ = self.tcp().set_zero_linger();
    }
}

impl AsyncRead for MeshIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshIo::Client(s) => Pin::new(s).poll_read(cx, buf),
            MeshIo::Server(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MeshIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshIo::Client(s) => Pin::new(s).poll_write(cx, buf),
            MeshIo::Server(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MeshIo::Client(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MeshIo::Server(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MeshIo::Plain(s) => s.is_write_vectored(),
            MeshIo::Client(s) => s.is_write_vectored(),
            MeshIo::Server(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshIo::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshIo::Client(s) => Pin::new(s).poll_flush(cx),
            MeshIo::Server(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshIo::Client(s) => Pin::new(s).poll_shutdown(cx),
            MeshIo::Server(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first bytes a rustls client sends offering `alpn`.
    fn client_hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let name = ServerName::try_from("example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn a_mesh_client_hello_is_told_from_plain_bytes_and_other_tls() {
        let mesh = client_hello(&[ALPN_HTTP1]);
        assert_eq!(classify_hello(&mesh), Hello::Mesh);
        assert_eq!(
            classify_hello(&client_hello(&[ALPN_TCP, b"h2"])),
            Hello::Mesh
        );
        // The app's own TLS (no mesh ALPN, or none at all) is not ours.
        assert_eq!(classify_hello(&client_hello(&[b"h2"])), Hello::OtherTls);
        assert_eq!(classify_hello(&client_hello(&[])), Hello::OtherTls);
        // Plain bytes.
        assert_eq!(classify_hello(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(classify_hello(b"PRI * HTTP/2.0"), Hello::NotTls);
        // Partial: more bytes needed.
        assert_eq!(classify_hello(b""), Hello::Incomplete);
        assert_eq!(classify_hello(&mesh[..2]), Hello::Incomplete);
        assert_eq!(classify_hello(&mesh[..mesh.len() / 2]), Hello::Incomplete);
    }

    #[test]
    fn the_spiffe_id_is_read_from_the_uri_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![
            rcgen::SanType::DnsName("reviews".try_into().unwrap()),
            rcgen::SanType::URI("spiffe://cluster.local/ns/a/sa/b".try_into().unwrap()),
        ];
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            spiffe_id(cert.der()).as_deref(),
            Some("spiffe://cluster.local/ns/a/sa/b")
        );
        let plain = rcgen::CertificateParams::new(vec!["reviews".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(spiffe_id(plain.der()), None);
        assert_eq!(spiffe_id(b"not a certificate"), None);
    }
}
