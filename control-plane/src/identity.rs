//! The Identity gRPC service: a sidecar presents the bootstrap token of its workload's
//! registration and a CSR, and gets a workload certificate for the identity that registration
//! grants (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`). The workload's
//! endpoint is marked meshed with that identity, so that client sidecars originate mTLS to it.
//! In Kubernetes mode the token is the pod's projected service-account token instead, checked
//! with a TokenReview ([`crate::kubernetes::tokens`]); endpoints there are meshed when their pod
//! carries the injected sidecar.
//! Also where the authority is loaded from the store (or from the operator's files).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serin_proto::v1;
use tonic::{Request, Response, Status};

use crate::ca::{self, Authority, CaError, RootRotation, StoredRoot, StoredRoots};
use crate::kubernetes::tokens::{TokenError, TokenReviewer};
use crate::mesh::Mesh;
use crate::proto::{timestamp, to_duration};
use crate::store::{CA_ROOTS, Store};

/// Where the authority's root comes from, and what it signs.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The trust domain of every identity.
    pub trust_domain: String,
    /// The operator's root certificate and key (PEM files); `None`: generated once and kept in
    /// the store.
    pub root_files: Option<(PathBuf, PathBuf)>,
    /// A root rotation step to take at start.
    pub rotation: Option<RotationStep>,
    /// Lifetime of a workload certificate when the sidecar asks for none.
    pub default_ttl: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            trust_domain: ca::DEFAULT_TRUST_DOMAIN.to_owned(),
            root_files: None,
            rotation: None,
            default_ttl: ca::DEFAULT_CERT_TTL,
        }
    }
}

/// A root rotation step, one per start of `serin-control` (`--ca-root-rotation`), each one
/// workload certificate lifetime after the previous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RotationStep {
    /// Generate a new root and trust it, still signing with the current one.
    Add,
    /// Sign with the added root; the previous one stays trusted.
    Promote,
    /// Trust only the signing root.
    DropOld,
}

/// Loads the authority: the operator's root, else the stored one, else a new one (stored).
/// Without a store and without the operator's root, a root is generated in memory: it lasts as
/// long as the process, and replicas do not share it (so [`crate::app::App`] refuses Kubernetes
/// mode without `--ca-cert`/`--ca-key`).
pub fn load_authority(store: Option<&Store>, config: &CaConfig) -> anyhow::Result<Authority> {
    use anyhow::Context as _;
    if let Some((cert, key)) = &config.root_files {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the CA root file {}", path.display()))
        };
        let root = StoredRoot {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        let authority = Authority::new(&config.trust_domain, StoredRoots { roots: vec![root] })?;
        tracing::info!(cert = %cert.display(), trust_domain = %config.trust_domain, "CA root from the operator's files");
        return Ok(authority);
    }
    let Some(store) = store else {
        tracing::warn!("no store and no --ca-cert/--ca-key: the CA root lives in memory only");
        let roots = StoredRoots {
            roots: vec![ca::generate_root(&config.trust_domain)?],
        };
        return Ok(Authority::new(&config.trust_domain, roots)?);
    };
    let stored: Option<StoredRoots> = store.setting(CA_ROOTS)?;
    let authority = match stored {
        Some(roots) if !roots.roots.is_empty() => {
            let authority = Authority::new(&config.trust_domain, roots)?;
            if let Some(step) = config.rotation {
                let rotation = match step {
                    RotationStep::Add => {
                        RootRotation::Add(ca::generate_root(&config.trust_domain)?)
                    }
                    RotationStep::Promote => RootRotation::Promote,
                    RotationStep::DropOld => RootRotation::DropOld,
                };
                let roots = authority.rotate(rotation)?;
                store.put_setting(CA_ROOTS, &roots)?;
                tracing::info!(step = ?step, roots = roots.roots.len(), "CA root rotation step taken");
            }
            authority
        }
        _ => {
            let roots = StoredRoots {
                roots: vec![ca::generate_root(&config.trust_domain)?],
            };
            store.put_setting(CA_ROOTS, &roots)?;
            tracing::info!(trust_domain = %config.trust_domain, "CA root generated and stored");
            Authority::new(&config.trust_domain, roots)?
        }
    };
    Ok(authority)
}

/// The Identity service.
#[derive(Debug, Clone)]
pub struct IdentityService {
    ca: Arc<Authority>,
    mesh: Mesh,
    default_ttl: Duration,
    tokens: Option<TokenReviewer>,
}

impl IdentityService {
    /// The service signing with `ca` for the workloads registered in `mesh`.
    pub fn new(ca: Arc<Authority>, mesh: Mesh, default_ttl: Duration) -> IdentityService {
        IdentityService {
            ca,
            mesh,
            default_ttl,
            tokens: None,
        }
    }

    /// Kubernetes mode: tokens are projected service-account tokens, reviewed by `tokens`.
    pub fn with_token_review(mut self, tokens: TokenReviewer) -> IdentityService {
        self.tokens = Some(tokens);
        self
    }
}

#[tonic::async_trait]
impl v1::identity_server::Identity for IdentityService {
    async fn sign_certificate(
        &self,
        request: Request<v1::SignCertificateRequest>,
    ) -> Result<Response<v1::SignCertificateResponse>, Status> {
        // A renewal on the mTLS port presents the current certificate: it must be the same
        // workload's (a stolen token does not let another workload's sidecar swap identities).
        let presented = request
            .extensions()
            .get::<crate::tls::TlsPeer>()
            .and_then(|p| p.identity.clone());
        let req = request.into_inner();
        if req.bootstrap_token.is_empty() {
            return Err(Status::unauthenticated("bootstrap_token: is required"));
        }
        let ttl = req
            .ttl
            .map(|d| to_duration("ttl", d))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .unwrap_or(self.default_ttl);
        if let Some(tokens) = &self.tokens {
            // Kubernetes mode: the pod's projected service-account token.
            let owner = tokens
                .review(&req.bootstrap_token)
                .await
                .map_err(|e| match e {
                    TokenError::Unauthenticated { .. } => Status::unauthenticated(e.to_string()),
                    TokenError::NotServiceAccount(_) => Status::permission_denied(e.to_string()),
                    TokenError::Api(_) => Status::unavailable(e.to_string()),
                })?;
            let identity = self.ca.identity(&owner.namespace, &owner.service_account);
            same_workload(presented.as_deref(), &identity)?;
            let signed = self.sign(req.csr_pem, identity, ttl).await?;
            tracing::info!(pod = %format_args!("{}/{}", owner.namespace, owner.pod_name), identity = %signed.identity, ttl = ?ttl, "workload certificate signed for a service-account token");
            return Ok(Response::new(response(signed)));
        }
        let workload = self
            .mesh
            .workload_for_token(req.bootstrap_token)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let identity = self
            .ca
            .identity(&workload.namespace, &workload.service_account);
        same_workload(presented.as_deref(), &identity)?;
        let signed = self.sign(req.csr_pem, identity, ttl).await?;
        self.mesh
            .set_identity(workload.key(), signed.identity.clone())
            .await?;
        tracing::info!(workload = %format_args!("{}/{}", workload.namespace, workload.pod_name), identity = %signed.identity, ttl = ?ttl, "workload certificate signed");
        Ok(Response::new(response(signed)))
    }
}

impl IdentityService {
    /// Signs `csr` for `identity`, off the runtime. A CSR for another identity than the token's
    /// is refused naming both: PERMISSION_DENIED in Kubernetes mode (the token belongs to
    /// another service account), INVALID_ARGUMENT in the local mesh.
    async fn sign(
        &self,
        csr: String,
        identity: String,
        ttl: Duration,
    ) -> Result<ca::Signed, Status> {
        let kubernetes = self.tokens.is_some();
        let ca = Arc::clone(&self.ca);
        tokio::task::spawn_blocking(move || ca.sign(&csr, &identity, ttl))
            .await
            .map_err(|e| Status::internal(format!("signing task failed: {e}")))?
            .map_err(|e| match e {
                CaError::WrongIdentity { .. } if kubernetes => {
                    Status::permission_denied(e.to_string())
                }
                other => Status::invalid_argument(other.to_string()),
            })
    }
}

/// Refuses a request whose client certificate (on the mTLS port) names another identity than
/// the one its token grants.
fn same_workload(presented: Option<&str>, identity: &str) -> Result<(), Status> {
    match presented {
        Some(presented) if presented != identity => Err(Status::permission_denied(format!(
            "the client certificate is for {presented} but the bootstrap token is for {identity}"
        ))),
        _ => Ok(()),
    }
}

fn response(signed: ca::Signed) -> v1::SignCertificateResponse {
    v1::SignCertificateResponse {
        identity: signed.identity,
        cert_chain_pem: signed.chain_pem,
        trust_bundle_pem: signed.trust_bundle_pem,
        not_after: Some(timestamp(signed.not_after)),
    }
}
