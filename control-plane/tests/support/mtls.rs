//! Clients of the control plane's mTLS port (15012), shared by the embedded-mode tests
//! (`tests/control/mtls_port.rs`) and the Kubernetes-mode ones (`tests/kubernetes.rs`) through
//! `#[path]`: a rustls client configuration with or without a workload certificate, a tonic
//! channel over it, and a CSR for an identity.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::net::SocketAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

/// A client configuration trusting `trust`, presenting `cert` (chain, key; PEM) when given.
pub fn client_config(trust: &[String], cert: Option<(&[String], &str)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for pem in trust {
        roots
            .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
            .unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                chain
                    .iter()
                    .map(|c| CertificateDer::from_pem_slice(c.as_bytes()).unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A channel to `addr` over TLS (server name `localhost`).
pub async fn tls_channel(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
}

/// A PEM CSR whose one URI SAN is `identity`, and its private key (PEM).
pub fn csr(identity: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (csr, key.serialize_pem())
}
