//! The certificate authority: a root (generated once and kept in the store, or given by the
//! operator) that signs short-lived workload certificates for SPIFFE identities
//! (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`), on a CSR whose only subject
//! alternative name must be the identity the caller is entitled to.
//!
//! Root rotation keeps the old root in the trust bundle for an overlap period: [`Authority::rotate`]
//! makes a new root the signer, and peers trust both until the old one is dropped (after every
//! certificate it signed has expired).

use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// The trust domain when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
/// Lifetime of a workload certificate when the caller asks for none.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest workload certificate lifetime granted.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest workload certificate lifetime granted (tests of renewal ask for seconds).
pub const MIN_CERT_TTL: Duration = Duration::from_secs(2);
/// Lifetime of a generated root.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clock skew tolerated between the control plane and the sidecars.
const BACKDATE: Duration = Duration::from_secs(60);
/// The service account of a workload that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Why the authority could not be set up or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The operator's root (or the stored one) does not load.
    #[error("cannot load the CA root {what}: {reason}")]
    Root {
        /// Which part (certificate, key).
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The CSR does not parse, or its signature does not verify.
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    /// The CSR asks for names other than the granted identity.
    #[error(
        "the certificate signing request must name exactly the identity {expected} (one URI subject alternative name); it names {found}"
    )]
    WrongIdentity {
        /// The identity the caller is entitled to.
        expected: String,
        /// What the CSR asked for.
        found: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A SPIFFE ID of a workload: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    let sa = if service_account.is_empty() {
        DEFAULT_SERVICE_ACCOUNT
    } else {
        service_account
    };
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
}

/// One root as stored: its certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoot {
    /// The self-signed root certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The roots as stored: the signer first, then older roots still trusted (rotation overlap).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRoots {
    /// Roots, the signing one first.
    pub roots: Vec<StoredRoot>,
}

/// One step of a root rotation (see [`Authority::rotate`]).
#[derive(Debug, Clone)]
pub enum RootRotation {
    /// Trust a new root (not signing with it yet).
    Add(StoredRoot),
    /// Sign with the newest root; the previous signer stays trusted.
    Promote,
    /// Trust only the signing root.
    DropOld,
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The identity it carries.
    pub identity: String,
    /// The chain, PEM, leaf first.
    pub chain_pem: Vec<String>,
    /// The roots to trust, PEM.
    pub trust_bundle_pem: Vec<String>,
    /// End of validity.
    pub not_after: SystemTime,
}

/// The signer: a root's issuer, and the roots peers trust.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    trust_bundle: Vec<String>,
}

/// The certificate authority.
pub struct Authority {
    trust_domain: String,
    signer: RwLock<Signer>,
    roots: RwLock<StoredRoots>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// A new self-signed root for `trust_domain`.
pub fn generate_root(trust_domain: &str) -> Result<StoredRoot, CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "serin");
    dn.push(
        DnType::CommonName,
        format!("serin root CA for {trust_domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + ROOT_TTL).into();
    // Distinct serials, so that two roots generated the same second never look alike.
    params.serial_number = Some(rand::random::<u64>().into());
    let cert = params.self_signed(&key)?;
    Ok(StoredRoot {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn signer(roots: &StoredRoots) -> Result<Signer, CaError> {
    let active = roots.roots.first().ok_or(CaError::Root {
        what: "list",
        reason: "no root".into(),
    })?;
    let key = KeyPair::from_pem(&active.key_pem).map_err(|e| CaError::Root {
        what: "key",
        reason: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&active.cert_pem, key).map_err(|e| CaError::Root {
        what: "certificate",
        reason: e.to_string(),
    })?;
    Ok(Signer {
        issuer,
        root_pem: active.cert_pem.clone(),
        trust_bundle: roots.roots.iter().map(|r| r.cert_pem.clone()).collect(),
    })
}

impl Authority {
    /// An authority for `trust_domain` signing with the first of `roots`.
    pub fn new(trust_domain: &str, roots: StoredRoots) -> Result<Authority, CaError> {
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            signer: RwLock::new(signer(&roots)?),
            roots: RwLock::new(roots),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The SPIFFE ID of a workload of this trust domain.
    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        spiffe_id(&self.trust_domain, namespace, service_account)
    }

    /// The roots peers trust, PEM.
    pub fn trust_bundle(&self) -> Vec<String> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .trust_bundle
            .clone()
    }

    /// The roots as they should be stored.
    pub fn stored(&self) -> StoredRoots {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One step of a root rotation; returns the roots to store. Each step must wait one
    /// workload certificate lifetime before the next, so that every sidecar has renewed (and got
    /// the new trust bundle) in between: [`RootRotation::Add`] trusts a new root without signing
    /// with it, [`RootRotation::Promote`] makes it the signer (the old one stays trusted),
    /// [`RootRotation::DropOld`] keeps only the signer.
    pub fn rotate(&self, step: RootRotation) -> Result<StoredRoots, CaError> {
        let mut roots = self.roots.write().unwrap_or_else(|p| p.into_inner());
        let mut next = roots.clone();
        match step {
            RootRotation::Add(new) => next.roots.push(new),
            RootRotation::Promote => {
                if next.roots.len() < 2 {
                    return Err(CaError::Root {
                        what: "rotation",
                        reason: "no added root to promote: add one first".into(),
                    });
                }
                let newest = next.roots.remove(next.roots.len() - 1);
                next.roots.insert(0, newest);
            }
            RootRotation::DropOld => next.roots.truncate(1),
        }
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = signer(&next)?;
        *roots = next.clone();
        Ok(next)
    }

    /// A serving certificate for the control plane itself, with a new key: the URI name
    /// `identity` plus `names` (DNS names, or IP addresses when they parse as one), valid for
    /// `ttl` (clamped like workload certificates). Returns the chain (leaf first) and the key,
    /// PEM.
    pub fn issue_serving(
        &self,
        identity: &str,
        names: &[String],
        ttl: Duration,
    ) -> Result<(Vec<String>, String, SystemTime), CaError> {
        let key = KeyPair::generate()?;
        let mut sans = vec![SanType::URI(identity.try_into()?)];
        for name in names {
            sans.push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.as_str().try_into()?),
            });
        }
        let ttl = ttl.clamp(MIN_CERT_TTL, MAX_CERT_TTL);
        let now = SystemTime::now();
        let not_after = now + ttl;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(rand::random::<u64>().into());
        let signer = self.signer.read().unwrap_or_else(|p| p.into_inner());
        let cert = params.signed_by(&key, &signer.issuer)?;
        Ok((
            vec![cert.pem(), signer.root_pem.clone()],
            key.serialize_pem(),
            not_after,
        ))
    }

    /// Checks that `csr_pem` is a well-signed request whose only subject alternative name is
    /// the URI `identity`, and signs a certificate for it valid for `ttl` (clamped to
    /// [`MIN_CERT_TTL`]..=[`MAX_CERT_TTL`]). Nothing of the request but its public key and that
    /// name goes into the certificate.
    pub fn sign(&self, csr_pem: &str, identity: &str, ttl: Duration) -> Result<Signed, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let names = &csr.params.subject_alt_names;
        let matches = matches!(names.as_slice(), [SanType::URI(uri)] if uri.as_str() == identity);
        if !matches {
            let found = names
                .iter()
                .map(|n| match n {
                    SanType::URI(uri) => format!("URI {}", uri.as_str()),
                    SanType::DnsName(name) => format!("DNS {}", name.as_str()),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>();
            return Err(CaError::WrongIdentity {
                expected: identity.to_owned(),
                found: if found.is_empty() {
                    "none".to_owned()
                } else {
                    found.join(", ")
                },
            });
        }
        let ttl = ttl.clamp(MIN_CERT_TTL, MAX_CERT_TTL);
        let now = SystemTime::now();
        let not_after = now + ttl;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = names.clone();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = not_after.into();
        params.serial_number = Some(rand::random::<u64>().into());
        let signer = self.signer.read().unwrap_or_else(|p| p.into_inner());
        let cert = params.signed_by(&csr.public_key, &signer.issuer)?;
        Ok(Signed {
            identity: identity.to_owned(),
            chain_pem: vec![cert.pem(), signer.root_pem.clone()],
            trust_bundle_pem: signer.trust_bundle.clone(),
            not_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    const ID: &str = "spiffe://cluster.local/ns/shop/sa/reviews";

    fn authority() -> Authority {
        let root = generate_root(DEFAULT_TRUST_DOMAIN).unwrap();
        Authority::new(DEFAULT_TRUST_DOMAIN, StoredRoots { roots: vec![root] }).unwrap()
    }

    fn csr(names: &[SanType]) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names.to_vec();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn der(pem_text: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
        pem.contents
    }

    #[test]
    fn spiffe_ids_default_the_service_account() {
        assert_eq!(
            spiffe_id("cluster.local", "shop", ""),
            "spiffe://cluster.local/ns/shop/sa/default"
        );
        assert_eq!(spiffe_id("td", "a", "b"), "spiffe://td/ns/a/sa/b");
    }

    #[test]
    fn signs_a_short_lived_certificate_for_the_identity_only() {
        let ca = authority();
        let signed = ca
            .sign(&csr(&[uri(ID)]), ID, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(signed.chain_pem.len(), 2);
        assert_eq!(signed.trust_bundle_pem, ca.trust_bundle());
        let leaf = der(&signed.chain_pem[0]);
        let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => (*u).to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, [ID]);
        assert!(!cert.is_ca());
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + BACKDATE.as_secs() as i64);
        // Signed by the root.
        let root = der(&ca.trust_bundle()[0]);
        let (_, root) = X509Certificate::from_der(&root).unwrap();
        cert.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn a_csr_for_another_identity_or_extra_names_is_refused() {
        let ca = authority();
        let other = "spiffe://cluster.local/ns/shop/sa/admin";
        for names in [
            vec![uri(other)],
            vec![uri(ID), uri(other)],
            vec![uri(ID), SanType::DnsName("reviews".try_into().unwrap())],
            vec![],
        ] {
            let err = ca.sign(&csr(&names), ID, DEFAULT_CERT_TTL).unwrap_err();
            assert!(matches!(err, CaError::WrongIdentity { .. }), "{err}");
            assert!(err.to_string().contains(ID), "{err}");
        }
        let err = ca.sign("garbage", ID, DEFAULT_CERT_TTL).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    }

    #[test]
    fn a_tampered_csr_is_refused() {
        let ca = authority();
        let pem_text = csr(&[uri(ID)]);
        let mut bytes = der(&pem_text);
        // Flip a bit in the signature (the last bytes).
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
        );
        let err = ca.sign(&tampered, ID, DEFAULT_CERT_TTL).unwrap_err();
        assert!(matches!(err, CaError::BadCsr(_)), "{err}");
    }

    #[test]
    fn lifetimes_are_clamped() {
        let ca = authority();
        let signed = ca.sign(&csr(&[uri(ID)]), ID, Duration::ZERO).unwrap();
        let left = signed.not_after.duration_since(SystemTime::now()).unwrap();
        assert!(left <= MIN_CERT_TTL && left > MIN_CERT_TTL / 2, "{left:?}");
    }

    #[test]
    fn rotation_trusts_first_then_signs_then_drops_the_old_root() {
        let ca = authority();
        let old = ca.trust_bundle();
        assert!(
            ca.rotate(RootRotation::Promote).is_err(),
            "nothing to promote"
        );
        // Add: trusted by everyone who renews, not used to sign yet.
        ca.rotate(RootRotation::Add(
            generate_root(DEFAULT_TRUST_DOMAIN).unwrap(),
        ))
        .unwrap();
        let bundle = ca.trust_bundle();
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[0], old[0]);
        let signed = ca.sign(&csr(&[uri(ID)]), ID, DEFAULT_CERT_TTL).unwrap();
        assert_eq!(signed.chain_pem[1], old[0], "still signed by the old root");
        // Promote: the new root signs, both are trusted.
        let roots = ca.rotate(RootRotation::Promote).unwrap();
        assert_eq!(roots.roots.len(), 2);
        let signed = ca.sign(&csr(&[uri(ID)]), ID, DEFAULT_CERT_TTL).unwrap();
        assert_eq!(signed.chain_pem[1], bundle[1], "signed by the new root");
        assert_eq!(signed.trust_bundle_pem.len(), 2);
        // The stored form loads back.
        let again = Authority::new(DEFAULT_TRUST_DOMAIN, ca.stored()).unwrap();
        assert_eq!(again.trust_bundle(), ca.trust_bundle());
        // Drop the old one.
        ca.rotate(RootRotation::DropOld).unwrap();
        assert_eq!(ca.trust_bundle(), [bundle[1].clone()]);
    }
}
