//! The workload certificate: the sidecar makes a key (kept in memory only), sends a CSR for its
//! SPIFFE ID with the bootstrap token of its registration to the control plane's Identity
//! service, and publishes the [`Credentials`] it gets. It asks again at
//! [`RENEW_FRACTION`] of the certificate's lifetime; when the control plane does not answer it
//! keeps the current certificate and retries with jittered exponential backoff (never waiting
//! past the expiry), so a CA outage shorter than the remaining lifetime breaks nothing.
//!
//! Connections already open keep the certificate they were made with; new ones use the newest.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serin_proto::v1;
use tokio::sync::watch;

use crate::tls::Credentials;

/// Share of a certificate's lifetime after which it is renewed.
pub const RENEW_FRACTION: f64 = 0.7;
/// First retry delay after a failed request (before jitter).
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest retry delay (before jitter).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a certificate request may take once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The trust domain when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Where the bootstrap token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Given on the command line.
    Value(String),
    /// Read from a file at each attempt (it may appear after the sidecar starts, and a
    /// projected service-account token is rotated by the kubelet).
    File(PathBuf),
}

impl TokenSource {
    /// The token as of now: the file is read again on every call.
    pub fn read(&self) -> Result<String, IdentityError> {
        match self {
            TokenSource::Value(token) => Ok(token.clone()),
            TokenSource::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| IdentityError::Token(format!("cannot read {}: {e}", path.display())))
                .and_then(|t| {
                    if t.is_empty() {
                        Err(IdentityError::Token(format!("{} is empty", path.display())))
                    } else {
                        Ok(t)
                    }
                }),
        }
    }
}

/// How the sidecar gets its workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySettings {
    /// The bootstrap token of the workload's registration.
    pub token: TokenSource,
    /// The trust domain of SPIFFE IDs.
    pub trust_domain: String,
    /// The service account ("" = "default").
    pub service_account: String,
    /// Requested certificate lifetime; `None`: the control plane's default.
    pub cert_ttl: Option<Duration>,
    /// First retry delay.
    pub backoff_initial: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
}

impl IdentitySettings {
    /// The SPIFFE ID of a workload in `namespace`.
    pub fn spiffe_id(&self, namespace: &str) -> String {
        let sa = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        format!("spiffe://{}/ns/{namespace}/sa/{sa}", self.trust_domain)
    }
}

/// When to renew a certificate obtained at `issued_at` that expires at `not_after`.
pub fn renew_at(issued_at: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(issued_at)
        .unwrap_or(Duration::ZERO);
    issued_at + lifetime.mul_f64(RENEW_FRACTION)
}

/// The delay before the next attempt after a failure: `backoff` with jitter (a random share of
/// 50-100 %), and never past `expiry` when a certificate is held (so the last attempts come
/// before it runs out). Returns the delay and the next backoff (doubled, bounded by `max`).
pub fn retry_delay(
    backoff: Duration,
    max: Duration,
    now: SystemTime,
    expiry: Option<SystemTime>,
    random: f64,
) -> (Duration, Duration) {
    let jittered = backoff.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0));
    let delay = match expiry.and_then(|e| e.duration_since(now).ok()) {
        // Near the end: try at least every tenth of what is left, but not in a busy loop.
        Some(left) => jittered.min((left / 10).max(Duration::from_millis(100))),
        None => jittered,
    };
    (delay, (backoff * 2).min(max))
}

/// Errors of one certificate request.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No bootstrap token yet.
    #[error("no bootstrap token: {0}")]
    Token(String),
    /// The control plane could not be reached.
    #[error("cannot reach the control plane at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The control plane refused or failed.
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
    /// The key or CSR could not be made.
    #[error("cannot make the key or CSR: {0}")]
    Csr(#[from] rcgen::Error),
    /// The answer could not be used.
    #[error("unusable certificate from the control plane: {0}")]
    Credentials(#[from] crate::tls::TlsError),
}

/// `serin_identity_*` metrics.
#[derive(Debug, Default, Clone)]
pub struct IdentityMetrics {
    /// Certificate requests by outcome.
    pub requests: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Expiry of the current certificate, seconds since the epoch (0: none).
    pub expiry: Gauge,
    /// Inbound connections by security (`mtls`, `plain`) and the client's SPIFFE ID.
    pub inbound: Family<Vec<(&'static str, String)>, Counter>,
    /// Inbound connections refused, by reason.
    pub refused: Family<Vec<(&'static str, &'static str)>, Counter>,
    /// Outbound mTLS handshakes, by outcome.
    pub outbound: Family<Vec<(&'static str, &'static str)>, Counter>,
}

impl IdentityMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> IdentityMetrics {
        let m = IdentityMetrics::default();
        registry.register(
            "serin_identity_certificate_requests",
            "Workload certificate requests to the control plane, by outcome",
            m.requests.clone(),
        );
        registry.register(
            "serin_identity_certificate_expiry_timestamp_seconds",
            "When the current workload certificate expires (0: none yet)",
            m.expiry.clone(),
        );
        registry.register(
            "serin_inbound_connections",
            "Inbound connections by security (mtls, plain) and the client's SPIFFE ID (source_principal)",
            m.inbound.clone(),
        );
        registry.register(
            "serin_inbound_connections_refused",
            "Inbound connections refused, by reason (plaintext_in_strict_mode, handshake_failed)",
            m.refused.clone(),
        );
        registry.register(
            "serin_outbound_mtls_handshakes",
            "mTLS handshakes to meshed endpoints, by outcome (ok, failed)",
            m.outbound.clone(),
        );
        m
    }

    /// Counts an inbound connection.
    pub fn inbound(&self, principal: Option<&str>) {
        let security = if principal.is_some() { "mtls" } else { "plain" };
        self.inbound
            .get_or_create(&vec![
                ("security", security.to_owned()),
                ("source_principal", principal.unwrap_or_default().to_owned()),
            ])
            .inc();
    }

    /// Counts a refused inbound connection.
    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&vec![("reason", reason)]).inc();
    }

    /// Counts an outbound handshake.
    pub fn outbound(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.outbound
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }
}

/// The current credentials, `None` until the first certificate.
pub type CredentialsWatch = watch::Receiver<Option<Arc<Credentials>>>;

/// A source of credentials that never has any (no identity configured).
pub fn none() -> CredentialsWatch {
    watch::channel(None).1
}

/// Obtains and renews the workload certificate.
#[derive(Debug)]
pub struct CertManager {
    control_plane: crate::config::ControlPlane,
    namespace: String,
    settings: IdentitySettings,
    metrics: IdentityMetrics,
    tx: watch::Sender<Option<Arc<Credentials>>>,
}

impl CertManager {
    /// A manager for the workload in `namespace`, asking the control plane of `control_plane`
    /// (see [`crate::control_channel::certificate_channel`] for which port).
    pub fn new(
        control_plane: crate::config::ControlPlane,
        namespace: String,
        settings: IdentitySettings,
        metrics: IdentityMetrics,
    ) -> CertManager {
        let (tx, _) = watch::channel(None);
        CertManager {
            control_plane,
            namespace,
            settings,
            metrics,
            tx,
        }
    }

    /// The current credentials, as they change.
    pub fn subscribe(&self) -> CredentialsWatch {
        self.tx.subscribe()
    }

    /// Obtains a certificate, then renews it for ever.
    pub async fn run(&self) {
        let mut backoff = self.settings.backoff_initial;
        loop {
            match self.request().await {
                Ok(credentials) => {
                    self.metrics
                        .requests
                        .get_or_create(&vec![("outcome", "ok")])
                        .inc();
                    let expiry = credentials
                        .not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default();
                    self.metrics.expiry.set(expiry.as_secs() as i64);
                    let next = renew_at(credentials.issued_at, credentials.not_after);
                    tracing::info!(identity = %credentials.identity, not_after = ?credentials.not_after, "workload certificate obtained");
                    self.tx.send_replace(Some(Arc::new(credentials)));
                    backoff = self.settings.backoff_initial;
                    let wait = next
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.metrics
                        .requests
                        .get_or_create(&vec![("outcome", "failed")])
                        .inc();
                    let expiry = self.tx.borrow().as_ref().map(|c| c.not_after);
                    let (delay, next) = retry_delay(
                        backoff,
                        self.settings.backoff_max,
                        SystemTime::now(),
                        expiry,
                        rand::random(),
                    );
                    tracing::warn!(error = %e, retry_in = ?delay, keeping = ?expiry, "workload certificate request failed; keeping the current one");
                    backoff = next;
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn token(&self) -> Result<String, IdentityError> {
        self.settings.token.read()
    }

    /// One request: a fresh key, a CSR for our SPIFFE ID, the signed certificate.
    async fn request(&self) -> Result<Credentials, IdentityError> {
        let token = self.token()?;
        let identity = self.settings.spiffe_id(&self.namespace);
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(identity.as_str().try_into()?)];
        let csr = params.serialize_request(&key)?.pem()?;
        let current = self.tx.borrow().clone();
        let (channel, url) =
            crate::control_channel::certificate_channel(&self.control_plane, current.as_deref())
                .await
                .map_err(|e| IdentityError::Connect {
                    url: e.url,
                    reason: e.reason,
                })?;
        let mut client = v1::identity_client::IdentityClient::new(channel);
        let call = client.sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr,
            bootstrap_token: token,
            ttl: self
                .settings
                .cert_ttl
                .and_then(|t| prost_types::Duration::try_from(t).ok()),
        });
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| IdentityError::Connect {
                url: url.clone(),
                reason: format!("no answer within {REQUEST_TIMEOUT:?}"),
            })?
            .map_err(|s| IdentityError::Refused(format!("{:?}: {}", s.code(), s.message())))?
            .into_inner();
        let not_after = answer
            .not_after
            .and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let credentials = Credentials::new(
            key.serialize_der(),
            &answer.cert_chain_pem.concat(),
            &answer.trust_bundle_pem.concat(),
            not_after,
        )?;
        if credentials.identity != identity {
            return Err(IdentityError::Refused(format!(
                "the certificate names {} instead of {identity}",
                credentials.identity
            )));
        }
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_seventy_percent_of_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(24 * 3600)),
            t0 + Duration::from_secs(24 * 3600 * 7 / 10)
        );
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(10)),
            t0 + Duration::from_secs(7)
        );
        // An expiry in the past renews at once.
        assert_eq!(renew_at(t0, t0 - Duration::from_secs(5)), t0);
    }

    #[test]
    fn backoff_doubles_to_its_bound_with_jitter() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let max = Duration::from_secs(30);
        let mut backoff = Duration::from_millis(500);
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (delay, next) = retry_delay(backoff, max, now, None, 1.0);
            assert_eq!(delay, backoff);
            seen.push(delay);
            backoff = next;
        }
        assert_eq!(seen[1], Duration::from_secs(1));
        assert_eq!(*seen.last().unwrap(), max);
        // Jitter: between half and all of the backoff.
        let (low, _) = retry_delay(Duration::from_secs(4), max, now, None, 0.0);
        assert_eq!(low, Duration::from_secs(2));
    }

    #[test]
    fn retries_come_before_the_certificate_runs_out() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (delay, _) = retry_delay(
            Duration::from_secs(30),
            Duration::from_secs(30),
            now,
            Some(now + Duration::from_secs(20)),
            1.0,
        );
        assert_eq!(delay, Duration::from_secs(2));
        // Expired: the plain backoff.
        let (delay, _) = retry_delay(
            Duration::from_secs(1),
            Duration::from_secs(30),
            now,
            Some(now - Duration::from_secs(1)),
            1.0,
        );
        assert_eq!(delay, Duration::from_secs(1));
    }

    #[test]
    fn a_token_file_is_read_again_at_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let source = TokenSource::File(path.clone());
        assert!(
            source
                .read()
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
        std::fs::write(&path, "first-token\n").unwrap();
        assert_eq!(source.read().unwrap(), "first-token");
        // The kubelet rotates a projected token in place: the next request sends the new one.
        std::fs::write(&path, "rotated-token").unwrap();
        assert_eq!(source.read().unwrap(), "rotated-token");
        std::fs::write(&path, " \n").unwrap();
        assert!(source.read().unwrap_err().to_string().contains("is empty"));
    }

    #[test]
    fn spiffe_ids_follow_the_namespace_and_service_account() {
        let mut s = IdentitySettings {
            token: TokenSource::Value("t".into()),
            trust_domain: "cluster.local".into(),
            service_account: String::new(),
            cert_ttl: None,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        };
        assert_eq!(
            s.spiffe_id("shop"),
            "spiffe://cluster.local/ns/shop/sa/default"
        );
        s.service_account = "reviews".into();
        assert_eq!(
            s.spiffe_id("shop"),
            "spiffe://cluster.local/ns/shop/sa/reviews"
        );
    }
}
