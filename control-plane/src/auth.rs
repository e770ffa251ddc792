//! Who may use the Admin API: bearer tokens with a role (`read`, or `write` which implies read),
//! checked on every Admin rpc (a tower layer in front of the generated server) and on the
//! dashboard's `/api/` requests; on the mTLS port also client certificates, by the SPIFFE ID the
//! tokens file names (`write spiffe://…`). The tokens come from the operator's file
//! (`--admin-tokens`) or, without one, from `admin-tokens` in the store directory, generated at
//! first start (mode 0600).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use serin_proto::auth::{Role, Secret, TOKENS_FILE, Tokens, TokensError, bearer};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No `authorization: Bearer` credential (and no client certificate).
    #[error(
        "no admin token: send `authorization: Bearer TOKEN` with a token of the control plane's \
         admin tokens file (or, on the mTLS port, a client certificate whose SPIFFE ID it names)"
    )]
    Missing,
    /// A client certificate whose identity no line of the tokens file names (and no token).
    #[error(
        "the client certificate's identity {0} is not in the control plane's admin tokens file \
         (add a line `read {0}` or `write {0}`), and no admin token was sent"
    )]
    UnknownIdentity(String),
    /// A credential no line of the tokens file matches.
    #[error(
        "the admin token is not valid: it matches no line of the control plane's admin tokens file"
    )]
    Invalid,
    /// A read credential (token or client certificate) on a write.
    #[error("the admin token has role read; {what} needs a token with role write")]
    ReadOnly {
        /// What was asked ("SetWeights", "POST /api/...").
        what: String,
    },
}

impl Denied {
    /// The gRPC status.
    pub fn status(&self) -> tonic::Status {
        match self {
            Denied::Missing | Denied::Invalid | Denied::UnknownIdentity(_) => {
                tonic::Status::unauthenticated(self.to_string())
            }
            Denied::ReadOnly { .. } => tonic::Status::permission_denied(self.to_string()),
        }
    }
}

/// Why the credentials cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The operator's or the stored file is wrong.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The generated file cannot be written.
    #[error("cannot write the generated admin tokens to {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The credentials a control plane accepts.
#[derive(Clone)]
pub struct AdminAuth {
    /// Each credential as the SHA-256 of its token, with its role.
    digests: Arc<Vec<(Role, [u8; 32])>>,
    /// Client certificate identities (SPIFFE IDs), with their roles.
    identities: Arc<Vec<(Role, String)>>,
    /// Reads need no credential.
    read_anonymous: bool,
    /// Where the tokens came from.
    path: PathBuf,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("credentials", &self.digests.len())
            .field("identities", &self.identities)
            .field("read_anonymous", &self.read_anonymous)
            .field("path", &self.path)
            .finish()
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Equal in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new random token: 32 bytes from the thread's CSPRNG, in hex.
fn generate_token() -> String {
    rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl AdminAuth {
    /// Accepts the credentials of `tokens`.
    pub fn new(tokens: &Tokens, read_anonymous: bool, path: PathBuf) -> AdminAuth {
        let digests = tokens
            .credentials
            .iter()
            .filter_map(|c| match &c.secret {
                Secret::Plain(token) => Some((c.role, sha256(token.as_bytes()))),
                Secret::Sha256(d) => Some((c.role, *d)),
                Secret::Identity(_) => None,
            })
            .collect();
        let identities = tokens
            .credentials
            .iter()
            .filter_map(|c| match &c.secret {
                Secret::Identity(id) => Some((c.role, id.clone())),
                _ => None,
            })
            .collect();
        AdminAuth {
            digests: Arc::new(digests),
            identities: Arc::new(identities),
            read_anonymous,
            path,
        }
    }

    /// The operator's file when given, else `admin-tokens` in `store`, generated (one write and
    /// one read token, mode 0600) when missing.
    pub fn load(
        file: Option<&Path>,
        store: &Path,
        read_anonymous: bool,
    ) -> Result<AdminAuth, AuthError> {
        let path = match file {
            Some(path) => path.to_owned(),
            None => {
                let path = store.join(TOKENS_FILE);
                if !path.exists() {
                    write_generated(&path)?;
                    tracing::info!(path = %path.display(), "generated admin tokens (roles write and read)");
                }
                path
            }
        };
        // A warning, not a refusal: Kubernetes mounts Secrets 0644 unless told otherwise (and
        // group-readable for the pod's fsGroup is how a non-root container reads one).
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o007 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the admin tokens file is readable by other users: chmod 600 it"
            );
        }
        let tokens = Tokens::read(&path)?;
        tracing::info!(
            path = %path.display(),
            credentials = tokens.credentials.len(),
            read_anonymous,
            "admin API credentials loaded"
        );
        Ok(AdminAuth::new(&tokens, read_anonymous, path))
    }

    /// Where the tokens came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The role of a presented `authorization` value and, on the mTLS port, of the client
    /// certificate's `identity`: the higher of the two. A token that matches nothing is refused
    /// even with a known identity (a wrong credential is never silently ignored).
    pub fn role_of(
        &self,
        authorization: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Role, Denied> {
        let by_identity = identity.and_then(|id| {
            self.identities
                .iter()
                .filter(|(_, known)| known == id)
                .map(|(role, _)| *role)
                .max()
        });
        let Some(token) = authorization.and_then(bearer) else {
            return match (by_identity, identity) {
                (Some(role), _) => Ok(role),
                (None, Some(id)) => Err(Denied::UnknownIdentity(id.to_owned())),
                (None, None) => Err(Denied::Missing),
            };
        };
        let presented = sha256(token.as_bytes());
        // Every credential is compared, so the time does not say which one matched.
        let mut best: Option<Role> = None;
        for (role, digest) in self.digests.iter() {
            if same(digest, &presented) {
                best = best.max(Some(*role));
            }
        }
        best.map(|role| role.max(by_identity.unwrap_or(role)))
            .ok_or(Denied::Invalid)
    }

    /// Whether `authorization` (and the client certificate's `identity`, on the mTLS port) may
    /// do `what`, which needs `needed`.
    pub fn check(
        &self,
        authorization: Option<&str>,
        identity: Option<&str>,
        needed: Role,
        what: &str,
    ) -> Result<(), Denied> {
        if needed == Role::Read && self.read_anonymous {
            return Ok(());
        }
        match self.role_of(authorization, identity)? {
            role if role.allows(needed) => Ok(()),
            _ => Err(Denied::ReadOnly {
                what: what.to_owned(),
            }),
        }
    }
}

/// Writes a new tokens file at `path`, readable by its owner only.
fn write_generated(path: &Path) -> Result<(), AuthError> {
    let err = |source| AuthError::Write {
        path: path.to_owned(),
        source,
    };
    let text = format!(
        "# serin-control admin tokens, generated at first start. One `role token` per line;\n\
         # role write implies read. A token may also be given as `role sha256:HEX`.\n\
         write {}\nread {}\n",
        generate_token(),
        generate_token()
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    file.write_all(text.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// The role each Admin rpc needs: reads need `read`; every other rpc, known or not, `write`.
pub fn rpc_role(method: &str) -> Role {
    match method {
        "GetPolicy"
        | "ListPolicies"
        | "PolicyHistory"
        | "Explain"
        | "ListServices"
        | "ListProxies"
        | "WatchTopology"
        | "GetMtlsModes"
        | "GetNamespaceVisibility" => Role::Read,
        _ => Role::Write,
    }
}

/// The Admin server behind the credential check.
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: AdminAuth,
}

impl<S> Authorized<S> {
    /// Checks every request to `inner` against `auth`.
    pub fn new(inner: S, auth: AdminAuth) -> Self {
        Authorized { inner, auth }
    }
}

impl<S: NamedService> NamedService for Authorized<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<http::Response<Body>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().rsplit('/').next().unwrap_or("");
        let authorization = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let identity = req
            .extensions()
            .get::<crate::tls::TlsPeer>()
            .and_then(|peer| peer.identity.as_deref());
        match self
            .auth
            .check(authorization, identity, rpc_role(method), method)
        {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(denied) => {
                tracing::debug!(rpc = method, reason = %denied, "admin rpc refused");
                Either::Right(ready(Ok(denied.status().into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(read_anonymous: bool) -> AdminAuth {
        let tokens = Tokens::parse(
            "t",
            &format!(
                "write writer-token-0000001\nread reader-token-0000001\nread sha256:{}\n",
                sha256(b"hashed-reader-00001")
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ),
        )
        .unwrap();
        AdminAuth::new(&tokens, read_anonymous, PathBuf::from("t"))
    }

    #[test]
    fn roles_are_checked_per_need() {
        let a = auth(false);
        let w = Some("Bearer writer-token-0000001");
        let r = Some("Bearer reader-token-0000001");
        let h = Some("Bearer hashed-reader-00001");
        assert_eq!(a.check(w, None, Role::Write, "x"), Ok(()));
        assert_eq!(a.check(w, None, Role::Read, "x"), Ok(()));
        assert_eq!(a.check(r, None, Role::Read, "x"), Ok(()));
        assert_eq!(a.check(h, None, Role::Read, "x"), Ok(()));
        assert_eq!(
            a.check(r, None, Role::Write, "SetWeights"),
            Err(Denied::ReadOnly {
                what: "SetWeights".into()
            })
        );
        assert_eq!(a.check(None, None, Role::Read, "x"), Err(Denied::Missing));
        assert_eq!(
            a.check(Some("Basic abc"), None, Role::Read, "x"),
            Err(Denied::Missing)
        );
        assert_eq!(
            a.check(Some("Bearer writer-token-0000002"), None, Role::Read, "x"),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn client_certificate_identities_have_their_roles() {
        let tokens = Tokens::parse(
            "t",
            "write writer-token-0000001\nwrite spiffe://td/ns/ci/sa/deployer\nread spiffe://td/ns/ops/sa/viewer\n",
        )
        .unwrap();
        let a = AdminAuth::new(&tokens, false, PathBuf::from("t"));
        let deployer = Some("spiffe://td/ns/ci/sa/deployer");
        let viewer = Some("spiffe://td/ns/ops/sa/viewer");
        assert_eq!(a.check(None, deployer, Role::Write, "x"), Ok(()));
        assert_eq!(a.check(None, viewer, Role::Read, "x"), Ok(()));
        assert!(matches!(
            a.check(None, viewer, Role::Write, "x"),
            Err(Denied::ReadOnly { .. })
        ));
        let stranger = "spiffe://td/ns/shop/sa/reviews";
        let denied = a.check(None, Some(stranger), Role::Read, "x").unwrap_err();
        assert_eq!(denied, Denied::UnknownIdentity(stranger.into()));
        assert_eq!(denied.status().code(), tonic::Code::Unauthenticated);
        assert!(
            denied
                .to_string()
                .contains("write spiffe://td/ns/shop/sa/reviews")
        );
        // A token and an identity: the higher role; a wrong token is refused all the same.
        let writer = Some("Bearer writer-token-0000001");
        assert_eq!(a.check(writer, viewer, Role::Write, "x"), Ok(()));
        assert_eq!(
            a.check(
                Some("Bearer no-such-token-000001"),
                deployer,
                Role::Read,
                "x"
            ),
            Err(Denied::Invalid)
        );
        // An identity is not a token: sending it as one matches nothing.
        assert_eq!(
            a.check(
                Some("Bearer spiffe://td/ns/ci/sa/deployer"),
                None,
                Role::Read,
                "x"
            ),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn anonymous_reads_never_open_writes() {
        let a = auth(true);
        assert_eq!(a.check(None, None, Role::Read, "x"), Ok(()));
        assert_eq!(a.check(None, None, Role::Write, "x"), Err(Denied::Missing));
        assert!(matches!(
            a.check(Some("Bearer reader-token-0000001"), None, Role::Write, "x"),
            Err(Denied::ReadOnly { .. })
        ));
    }

    #[test]
    fn denials_map_to_grpc_codes() {
        assert_eq!(
            Denied::Missing.status().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            Denied::Invalid.status().code(),
            tonic::Code::Unauthenticated
        );
        let ro = Denied::ReadOnly {
            what: "Promote".into(),
        };
        assert_eq!(ro.status().code(), tonic::Code::PermissionDenied);
        assert!(
            ro.to_string()
                .contains("Promote needs a token with role write")
        );
    }

    #[test]
    fn only_reads_are_read_rpcs() {
        for m in [
            "GetPolicy",
            "ListServices",
            "WatchTopology",
            "Explain",
            "GetMtlsModes",
            "GetNamespaceVisibility",
        ] {
            assert_eq!(rpc_role(m), Role::Read, "{m}");
        }
        for m in [
            "ApplyPolicy",
            "SetWeights",
            "Promote",
            "Rollback",
            "DeletePolicy",
            "RegisterWorkload",
            "RenewLease",
            "DeregisterWorkload",
            "SetMtlsMode",
            "SetNamespaceVisibility",
            "SomethingNew",
        ] {
            assert_eq!(rpc_role(m), Role::Write, "{m}");
        }
    }

    #[test]
    fn a_missing_file_is_generated_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = AdminAuth::load(None, dir.path(), false).unwrap();
        let path = dir.path().join(TOKENS_FILE);
        assert_eq!(first.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let tokens = Tokens::read(&path).unwrap();
        let write = format!("Bearer {}", tokens.plain(Role::Write).unwrap());
        let read = format!("Bearer {}", tokens.plain(Role::Read).unwrap());
        assert_ne!(write, read);
        let again = AdminAuth::load(None, dir.path(), false).unwrap();
        assert_eq!(again.check(Some(&write), None, Role::Write, "x"), Ok(()));
        assert!(again.check(Some(&read), None, Role::Write, "x").is_err());
    }

    #[test]
    fn an_operator_file_is_used_as_is_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "write operator-token-000001\n").unwrap();
        let auth = AdminAuth::load(Some(&file), dir.path(), false).unwrap();
        let token = Some("Bearer operator-token-000001");
        assert_eq!(auth.check(token, None, Role::Write, "x"), Ok(()));
        assert!(
            !dir.path().join(TOKENS_FILE).exists(),
            "nothing generated beside an operator file"
        );
        std::fs::write(&file, "writer x\n").unwrap();
        let e = AdminAuth::load(Some(&file), dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: unknown role"), "{e}");
    }
}
