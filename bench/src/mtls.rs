//! The mTLS row: Serin in the 2-hop shape with mutual TLS between the two sidecars (TLS 1.3,
//! SPIFFE identities, the handshake once per pooled upstream connection), beside the same shape
//! in plaintext measured in the same run. The sidecars run with `--config` and fixed
//! certificates (`--tls-cert`, `--tls-key`, `--tls-roots`) made here: a root and one workload
//! certificate per side, as serin-control's CA makes them; the snapshot gives the server's
//! endpoint its identity, so the client sidecar originates mTLS to it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::peers;
use crate::peers::Side;

/// The client sidecar's identity.
pub const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/bench-client";
/// The server sidecar's identity.
pub const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/bench";

/// The row's name in the report.
pub const NAME: &str = "HTTP/1.1 keep-alive, Serin 2 hops with mTLS between the sidecars";

/// The certificate files of both sides.
#[derive(Debug, Clone)]
pub struct Certs {
    roots: PathBuf,
    client: (PathBuf, PathBuf),
    server: (PathBuf, PathBuf),
}

impl Certs {
    /// Makes a root and both workload certificates in `dir`.
    pub fn write(dir: &Path) -> anyhow::Result<Certs> {
        let root_key = KeyPair::generate()?;
        let mut root = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "serin-bench root");
        root.distinguished_name = dn;
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let root_cert = root.self_signed(&root_key)?;
        let issuer = Issuer::new(root, root_key);
        let roots = dir.join("roots.pem");
        std::fs::write(&roots, root_cert.pem())?;
        let leaf = |name: &str, id: &str| -> anyhow::Result<(PathBuf, PathBuf)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = DistinguishedName::new();
            params.subject_alt_names = vec![SanType::URI(id.try_into()?)];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer)?;
            let (cert_path, key_path) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            std::fs::write(&cert_path, format!("{}{}", cert.pem(), root_cert.pem()))?;
            std::fs::write(&key_path, key.serialize_pem())?;
            Ok((cert_path, key_path))
        };
        Ok(Certs {
            client: leaf("client", CLIENT_ID)?,
            server: leaf("server", SERVER_ID)?,
            roots,
        })
    }

    /// The `serin-proxy` flags of `side`.
    pub fn args(&self, side: Side) -> Vec<String> {
        let (cert, key) = match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        };
        vec![
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-roots".into(),
            self.roots.display().to_string(),
        ]
    }
}

/// The plaintext snapshot with the server's endpoint meshed (its identity set).
pub fn snapshot(client: IpAddr, server: IpAddr) -> String {
    peers::serin_snapshot(client, server).replace(
        "podName: server, version: v1, ready: true}",
        &format!("podName: server, version: v1, ready: true, identity: \"{SERVER_ID}\"}}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_endpoint_carries_its_identity() {
        let text = snapshot("10.244.0.2".parse().unwrap(), "10.244.0.3".parse().unwrap());
        assert!(
            text.contains(&format!("identity: \"{SERVER_ID}\"")),
            "{text}"
        );
        assert_eq!(text.matches("identity:").count(), 1, "{text}");
    }

    #[test]
    fn certificates_name_their_side() {
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::write(dir.path()).unwrap();
        let client = std::fs::read_to_string(&certs.client.0).unwrap();
        assert_eq!(client.matches("BEGIN CERTIFICATE").count(), 2);
        let args = certs.args(Side::Server);
        assert_eq!(args[0], "--tls-cert");
        assert!(args[1].ends_with("server.pem"));
    }
}
