//! The admin credential contract shared by `serin-control`, `serinctl` and the local mesh: the
//! two roles, the tokens file (`role secret` per line) and the `authorization: Bearer` metadata
//! a client sends.
//!
//! The file format, one credential per line:
//!
//! ```text
//! # comments and blank lines are ignored
//! write 3f1c...          # a token given as is
//! read  sha256:9a0b...   # or the hex SHA-256 of a token, so the file holds no secret
//! write spiffe://cluster.local/ns/ci/sa/deployer   # a client certificate's SPIFFE ID
//! ```
//!
//! An identity line grants its role to a caller on the control plane's mTLS port whose client
//! certificate (verified against the mesh's CA) carries that SPIFFE ID; it is no secret.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::v1::admin_client::AdminClient;

/// The metadata key (and HTTP header) carrying the credential.
pub const AUTHORIZATION: &str = "authorization";
/// Name of the tokens file a control plane generates in its store directory.
pub const TOKENS_FILE: &str = "admin-tokens";

/// What a credential allows: `write` implies `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads: policies, services, proxies, topology, explain.
    Read,
    /// Reads and changes: apply, weights, promote, rollback, delete, workload registration.
    Write,
}

impl Role {
    /// Whether a credential with this role may do what `needed` asks.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    /// The word used in the tokens file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            other => Err(format!("unknown role {other:?}: use read or write")),
        }
    }
}

/// A credential's secret as the file gives it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// The token itself.
    Plain(String),
    /// The SHA-256 of the token.
    Sha256([u8; 32]),
    /// Not a token: the SPIFFE ID of a client certificate presented on the mTLS port.
    Identity(String),
}

impl fmt::Debug for Secret {
    // Never print a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(_) => f.write_str("Plain(..)"),
            Secret::Sha256(_) => f.write_str("Sha256(..)"),
            Secret::Identity(id) => write!(f, "Identity({id})"),
        }
    }
}

/// One line of a tokens file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// What it allows.
    pub role: Role,
    /// The secret.
    pub secret: Secret,
}

/// Why a tokens file cannot be used.
#[derive(Debug)]
pub enum TokensError {
    /// The file cannot be read.
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `role secret`.
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No credential at all.
    Empty {
        /// The file.
        path: String,
    },
}

impl fmt::Display for TokensError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokensError::Read { path, source } => {
                write!(f, "cannot read the admin tokens file {path}: {source}")
            }
            TokensError::Line { path, line, reason } => write!(
                f,
                "admin tokens file {path}, line {line}: {reason} (each line is `read TOKEN`, \
                 `write TOKEN`, `ROLE sha256:HEX` or `ROLE spiffe://TRUST-DOMAIN/ns/NS/sa/SA`)"
            ),
            TokensError::Empty { path } => write!(
                f,
                "admin tokens file {path} holds no credential: add a line `write TOKEN`"
            ),
        }
    }
}

impl std::error::Error for TokensError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokensError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The credentials of a tokens file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Every credential.
    pub credentials: Vec<Credential>,
}

impl Tokens {
    /// Parses the text of a tokens file; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Tokens, TokensError> {
        let mut credentials = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let bad = |reason: String| TokensError::Line {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(secret), None) = (words.next(), words.next(), words.next())
            else {
                return Err(bad("expected two words, a role and a token".into()));
            };
            let role = role.parse::<Role>().map_err(bad)?;
            let secret = match secret.strip_prefix("sha256:") {
                _ if secret.starts_with("spiffe://") => {
                    Secret::Identity(spiffe_id(secret).map_err(bad)?.to_owned())
                }
                Some(hex) => Secret::Sha256(
                    decode_hex32(hex)
                        .ok_or_else(|| bad("sha256: must be followed by 64 hex digits".into()))?,
                ),
                None if secret.len() < 16 => {
                    return Err(bad("a token must be at least 16 characters long".into()));
                }
                None if !secret.bytes().all(|b| b.is_ascii_graphic()) => {
                    return Err(bad("a token must be printable ASCII".into()));
                }
                None => Secret::Plain(secret.to_owned()),
            };
            credentials.push(Credential { role, secret });
        }
        if credentials.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Tokens { credentials })
    }

    /// Reads and parses the tokens file at `path`.
    pub fn read(path: &Path) -> Result<Tokens, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: shown.clone(),
            source,
        })?;
        Tokens::parse(&shown, &text)
    }

    /// The first token given as is with role `role` (a client's credential).
    pub fn plain(&self, role: Role) -> Option<&str> {
        self.credentials.iter().find_map(|c| match &c.secret {
            Secret::Plain(token) if c.role == role => Some(token.as_str()),
            _ => None,
        })
    }
}

/// `id` if it is `spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT`, else why not.
fn spiffe_id(id: &str) -> Result<&str, String> {
    let path = id.strip_prefix("spiffe://").unwrap_or_default();
    match path.split('/').collect::<Vec<_>>()[..] {
        [td, "ns", ns, "sa", sa]
            if [td, ns, sa]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_graphic() && b != b'/')) =>
        {
            Ok(id)
        }
        _ => Err(format!(
            "{id:?} is not spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT"
        )),
    }
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The token of an `authorization: Bearer TOKEN` value, if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A client interceptor adding `authorization: Bearer TOKEN` to every request (none without a
/// token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "BearerToken(..)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl BearerToken {
    /// Sends `token`; fails when it cannot be a header value (control characters).
    pub fn new(token: &str) -> Result<BearerToken, String> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the admin token holds characters a header cannot carry".to_owned())?;
        value.set_sensitive(true);
        Ok(BearerToken(Some(value)))
    }

    /// Sends no credential.
    pub fn none() -> BearerToken {
        BearerToken(None)
    }
}

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// An Admin client sending a credential.
pub type AuthorizedAdmin = AdminClient<InterceptedService<Channel, BearerToken>>;

/// An Admin client of `channel` sending `token`.
pub fn admin_client(channel: Channel, token: BearerToken) -> AuthorizedAdmin {
    AdminClient::with_interceptor(channel, token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_order_write_above_read() {
        assert!(Role::Write.allows(Role::Read));
        assert!(Role::Write.allows(Role::Write));
        assert!(Role::Read.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write));
    }

    #[test]
    fn a_tokens_file_parses_plain_and_hashed_lines() {
        let hash = "ab".repeat(32);
        let text = format!(
            "# operators\n\nwrite 0123456789abcdef0123  # ci\nread sha256:{hash}\nread   viewer-token-0000001\n"
        );
        let tokens = Tokens::parse("t", &text).unwrap();
        assert_eq!(tokens.credentials.len(), 3);
        let with_id = format!("{text}write spiffe://cluster.local/ns/ci/sa/deployer\n");
        let tokens_and_id = Tokens::parse("t", &with_id).unwrap();
        assert_eq!(
            tokens_and_id.credentials[3].secret,
            Secret::Identity("spiffe://cluster.local/ns/ci/sa/deployer".into())
        );
        assert_eq!(
            tokens_and_id.plain(Role::Write),
            Some("0123456789abcdef0123"),
            "an identity is no token to send"
        );
        assert_eq!(tokens.credentials[0].role, Role::Write);
        assert_eq!(tokens.credentials[1].secret, Secret::Sha256([0xab; 32]));
        assert_eq!(tokens.plain(Role::Write), Some("0123456789abcdef0123"));
        assert_eq!(tokens.plain(Role::Read), Some("viewer-token-0000001"));
    }

    #[test]
    fn bad_lines_name_the_file_and_line() {
        for (text, want) in [
            ("admin 0123456789abcdef", "line 1: unknown role \"admin\""),
            ("write", "line 1: expected two words"),
            ("\nwrite a b", "line 2: expected two words"),
            ("read short", "line 1: a token must be at least 16"),
            (
                "read sha256:abc",
                "line 1: sha256: must be followed by 64 hex",
            ),
            (
                "write spiffe://cluster.local/ns/ci",
                "line 1: \"spiffe://cluster.local/ns/ci\" is not spiffe://",
            ),
            (
                "write spiffe:///ns/ci/sa/x",
                "is not spiffe://TRUST-DOMAIN/ns/NAMESPACE/sa/SERVICE-ACCOUNT",
            ),
        ] {
            let e = Tokens::parse("/etc/serin/tokens", text)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("admin tokens file /etc/serin/tokens"), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = Tokens::parse("f", "# nothing\n").unwrap_err().to_string();
        assert!(e.contains("holds no credential"), "{e}");
    }

    #[test]
    fn bearer_values_are_recognised() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn the_interceptor_adds_the_header_only_with_a_token() {
        let mut with = BearerToken::new("tok").unwrap();
        let r = with.call(tonic::Request::new(())).unwrap();
        assert_eq!(r.metadata().get(AUTHORIZATION).unwrap(), "Bearer tok");
        let r = BearerToken::none().call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get(AUTHORIZATION).is_none());
        assert!(BearerToken::new("a\nb").is_err());
    }
}
