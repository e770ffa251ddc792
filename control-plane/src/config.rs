//! Every flag, environment variable and default of `serin-control`, and the one [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::identity::{CaConfig, RotationStep};
use crate::inject::config::{
    DEFAULT_CONTROL_PLANE, DEFAULT_PROXY_IMAGE, InjectConfig, KubernetesVersion,
};
use crate::inject::webhook::{DEFAULT_DNS_NAMES, DEFAULT_MAX_BODY, TlsSource, WebhookConfig};
use crate::mesh::LeaseLimits;
use crate::telemetry::Clock;
use crate::tls::TlsPortConfig;

/// Default gRPC address (Discovery, Admin, Telemetry).
pub const DEFAULT_GRPC: &str = "0.0.0.0:15010";
/// Default HTTP address (dashboard, `/api/...`, `/ready`, `/metrics`).
pub const DEFAULT_HTTP: &str = "0.0.0.0:15080";
/// Default store directory.
pub const DEFAULT_STORE: &str = "serin-store";
/// Default shortest interval between snapshot pushes.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

/// How often the gRPC server pings an idle HTTP/2 connection.
pub const GRPC_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long it waits for the answer before closing the connection.
pub const GRPC_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Command line of `serin-control` (each flag also reads `SERIN_*` from the environment).
#[derive(Debug, Clone, Parser)]
#[command(name = "serin-control", version, about = "The Serin control plane")]
pub struct Args {
    /// gRPC address: Discovery, Admin and Telemetry.
    #[arg(long, env = "SERIN_GRPC", default_value = DEFAULT_GRPC)]
    pub grpc: SocketAddr,
    /// The mTLS gRPC address (Discovery, Admin, Telemetry, Identity over TLS 1.3 with client
    /// certificates), `off`, or `auto`: the IP of --grpc with port 15012 when --grpc uses the
    /// standard 15010, else any free port (logged), so that control planes started on other
    /// ports side by side do not collide.
    #[arg(long, env = "SERIN_GRPC_TLS", default_value = "auto")]
    pub grpc_tls: String,
    /// Names of the control plane's serving certificate on the mTLS port: the DNS names and IP
    /// addresses sidecars reach it by (comma-separated); its URI name is always
    /// spiffe://<trust-domain>/ns/serin-system/sa/serin-control.
    #[arg(long, env = "SERIN_TLS_SAN", value_delimiter = ',', default_value = crate::tls::DEFAULT_TLS_SANS)]
    pub tls_san: Vec<String>,
    /// Refuse Discovery on the plaintext gRPC port: sidecars must subscribe on the mTLS port
    /// with their workload certificate (what production should use). Bootstrap calls
    /// (RegisterWorkload, SignCertificate) and the admin API stay on both ports.
    #[arg(long, env = "SERIN_REQUIRE_CLIENT_CERTS")]
    pub require_client_certs: bool,
    /// HTTP address: the dashboard, /api/..., /ready and /metrics.
    #[arg(long, env = "SERIN_HTTP", default_value = DEFAULT_HTTP)]
    pub http: SocketAddr,
    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "SERIN_STORE", default_value = DEFAULT_STORE)]
    pub store: PathBuf,
    /// The admin API's credentials: one `read TOKEN`, `write TOKEN` or `ROLE sha256:HEX` per
    /// line. Without it, `admin-tokens` in the store directory (generated at first start).
    #[arg(long, env = "SERIN_ADMIN_TOKENS")]
    pub admin_tokens: Option<PathBuf>,
    /// Serve the admin API's reads (gRPC and the dashboard's /api/) without a credential;
    /// writes still need a write token.
    #[arg(long, env = "SERIN_ADMIN_READ_ANONYMOUS")]
    pub admin_read_anonymous: bool,
    /// Take the registry (Services, EndpointSlices, Pods) and the policies (TrafficPolicy
    /// objects) from a Kubernetes API server instead of the embedded store.
    #[arg(long, env = "SERIN_KUBERNETES")]
    pub kubernetes: bool,
    /// Kubernetes mode: the kubeconfig to use; without it the in-cluster service account (or
    /// `KUBECONFIG`, or ~/.kube/config) is used.
    #[arg(long, env = "SERIN_KUBECONFIG", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: this replica's name in the TrafficPolicy status (its pod name; default:
    /// the host name).
    #[arg(long, env = "SERIN_REPLICA", requires = "kubernetes")]
    pub replica: Option<String>,
    /// Kubernetes mode: the control plane's own namespace, where the mesh-wide settings are kept
    /// (the ConfigMap serin-mesh); default: the in-cluster service account's namespace, else the
    /// kubeconfig context's, else `default`.
    #[arg(long, env = "SERIN_CONTROL_PLANE_NAMESPACE", requires = "kubernetes")]
    pub control_plane_namespace: Option<String>,
    /// Kubernetes mode: the audience the sidecars' projected service-account tokens must be for
    /// (checked with a TokenReview when a sidecar asks for its workload certificate); the
    /// webhook's injected token volume asks the kubelet for it.
    #[arg(long, env = "SERIN_TOKEN_AUDIENCE", default_value = DEFAULT_TOKEN_AUDIENCE)]
    pub token_audience: String,
    /// The shortest time between two pushes (ms): a change after a quiet period is pushed at
    /// once, later ones within this interval are coalesced into one push at its end.
    #[arg(long, env = "SERIN_PUSH_DEBOUNCE_MS", default_value_t = DEFAULT_DEBOUNCE.as_millis() as u64)]
    pub push_debounce_ms: u64,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "SERIN_LOG", default_value = "info")]
    pub log: String,
    /// Serve the sidecar-injection admission webhook (HTTPS) on this address, e.g. 0.0.0.0:15017.
    #[arg(long, env = "SERIN_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,
    /// The webhook's certificate chain (PEM); without it a self-signed one is generated.
    #[arg(long, env = "SERIN_WEBHOOK_CERT", requires = "webhook_key")]
    pub webhook_cert: Option<PathBuf>,
    /// The webhook's private key (PEM).
    #[arg(long, env = "SERIN_WEBHOOK_KEY", requires = "webhook_cert")]
    pub webhook_key: Option<PathBuf>,
    /// DNS names of a generated webhook certificate (comma-separated).
    #[arg(long, env = "SERIN_WEBHOOK_DNS_NAMES", value_delimiter = ',', default_values = DEFAULT_DNS_NAMES)]
    pub webhook_dns_names: Vec<String>,
    /// Write a generated webhook certificate (PEM, the caBundle to trust) to this file.
    #[arg(long, env = "SERIN_WEBHOOK_CERT_OUT")]
    pub webhook_cert_out: Option<PathBuf>,
    /// Image of the injected sidecar and init container.
    #[arg(long, env = "SERIN_SIDECAR_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    pub sidecar_image: String,
    /// The control-plane URL injected sidecars follow.
    #[arg(long, env = "SERIN_SIDECAR_CONTROL_PLANE", default_value = DEFAULT_CONTROL_PLANE)]
    pub sidecar_control_plane: String,
    /// The cluster's Kubernetes version: 1.29 and later get native sidecars.
    #[arg(long, env = "SERIN_KUBERNETES_VERSION", default_value = "1.29")]
    pub kubernetes_version: KubernetesVersion,
    /// Trust domain of workload identities (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
    #[arg(long, env = "SERIN_TRUST_DOMAIN", default_value = crate::ca::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The CA root certificate (PEM) to sign workload certificates with; without it a root is
    /// generated once and kept in the store.
    #[arg(long, env = "SERIN_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The CA root's private key (PEM).
    #[arg(long, env = "SERIN_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Take one step of a CA root rotation at start: `add` (trust a new root), then after one
    /// certificate lifetime `promote` (sign with it), then after another `drop-old`.
    #[arg(long, env = "SERIN_CA_ROOT_ROTATION", conflicts_with = "ca_cert")]
    pub ca_root_rotation: Option<RotationStep>,
    /// Lifetime of workload certificates when a sidecar asks for none (e.g. `24h`).
    #[arg(long, env = "SERIN_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub cert_ttl: Duration,
    /// Write the CA's trust bundle (PEM, the roots sidecars trust) to this file at start: what a
    /// sidecar's `--control-plane-ca` reads to check the mTLS port before it has a certificate.
    #[arg(long, env = "SERIN_TRUST_BUNDLE_OUT")]
    pub trust_bundle_out: Option<PathBuf>,
    /// The mTLS URL injected sidecars subscribe on (with their certificate; `off`: they stay
    /// on --sidecar-control-plane).
    #[arg(long, env = "SERIN_SIDECAR_CONTROL_PLANE_TLS", default_value = crate::inject::config::DEFAULT_CONTROL_PLANE_TLS)]
    pub sidecar_control_plane_tls: String,
}

/// Why the command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--replica` is empty or not a DNS label.
    #[error("--replica {0:?}: must be a DNS label (lowercase letters, digits and '-', at most 63)")]
    BadReplica(String),
    /// `--control-plane-namespace` is not a namespace name.
    #[error(
        "--control-plane-namespace {0:?}: must be a namespace name (lowercase letters, digits and '-', at most 63)"
    )]
    BadNamespace(String),
    /// `--grpc-tls` is neither an address nor `off`.
    #[error("--grpc-tls {0:?}: must be an address such as 0.0.0.0:15012, or off")]
    BadGrpcTls(String),
    /// `--require-client-certs` without the mTLS port.
    #[error("--require-client-certs needs the mTLS port (--grpc-tls is off)")]
    ClientCertsWithoutTls,
}

/// Kubernetes mode: where the API server is and who this replica is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// A kubeconfig file; `None`: inferred (in-cluster, `KUBECONFIG`, ~/.kube/config).
    pub kubeconfig: Option<PathBuf>,
    /// This replica's name (its entry in TrafficPolicy status).
    pub replica: String,
    /// The shortest time between two status writes of one policy by this replica.
    pub status_interval: Duration,
    /// The audience of the sidecars' projected service-account tokens.
    pub token_audience: String,
    /// The control plane's namespace (the ConfigMap `serin-mesh` is there); `None`: the
    /// client's default namespace.
    pub namespace: Option<String>,
}

/// Default audience of the sidecars' projected service-account tokens (what injection asks
/// the kubelet for).
pub const DEFAULT_TOKEN_AUDIENCE: &str = crate::inject::config::TOKEN_AUDIENCE;

/// Default shortest interval between two status writes of one policy by one replica.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The host name (the pod name in a cluster), else "serin-control".
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .ok()
        .filter(|h| is_dns_label(h))
        .unwrap_or_else(|| "serin-control".to_owned())
}

/// The control plane's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Store directory.
    pub store: PathBuf,
    /// Push debounce.
    pub debounce: Duration,
    /// Lease lengths.
    pub leases: LeaseLimits,
    /// Where telemetry windows read the time (tests drive a manual clock).
    pub clock: Clock,
    /// The admission webhook, when it is served.
    pub webhook: Option<WebhookConfig>,
    /// Where to write a generated webhook certificate.
    pub webhook_cert_out: Option<PathBuf>,
    /// Where to write the CA's trust bundle at start.
    pub trust_bundle_out: Option<PathBuf>,
    /// The operator's admin tokens file; `None`: `admin-tokens` in the store directory.
    pub admin_tokens: Option<PathBuf>,
    /// Admin reads need no credential.
    pub admin_read_anonymous: bool,
    /// Kubernetes mode (registry and policies from the API server; no store is opened).
    pub kubernetes: Option<KubernetesConfig>,
    /// The certificate authority.
    pub ca: CaConfig,
    /// The mTLS gRPC port; `None`: off.
    pub grpc_tls: Option<TlsPortConfig>,
    /// Refuse Discovery on the plaintext port.
    pub require_client_certs: bool,
}

impl Config {
    /// A configuration for `store` with the default ports.
    pub fn new(store: PathBuf) -> Self {
        Config {
            grpc: DEFAULT_GRPC.parse().expect("valid default"),
            http: DEFAULT_HTTP.parse().expect("valid default"),
            store,
            debounce: DEFAULT_DEBOUNCE,
            leases: LeaseLimits::default(),
            clock: Clock::System,
            webhook: None,
            webhook_cert_out: None,
            trust_bundle_out: None,
            admin_tokens: None,
            admin_read_anonymous: false,
            kubernetes: None,
            ca: CaConfig::default(),
            grpc_tls: None,
            require_client_certs: false,
        }
    }
}

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(a: &Args) -> Result<Config, ConfigError> {
        let kubernetes = match (a.kubernetes, &a.replica) {
            (false, _) => None,
            (true, Some(r)) if !is_dns_label(r) => return Err(ConfigError::BadReplica(r.clone())),
            (true, _)
                if a.control_plane_namespace
                    .as_deref()
                    .is_some_and(|n| !is_dns_label(n)) =>
            {
                return Err(ConfigError::BadNamespace(
                    a.control_plane_namespace.clone().unwrap_or_default(),
                ));
            }
            (true, replica) => Some(KubernetesConfig {
                kubeconfig: a.kubeconfig.clone(),
                replica: replica.clone().unwrap_or_else(host_name),
                status_interval: DEFAULT_STATUS_INTERVAL,
                token_audience: a.token_audience.clone(),
                namespace: a.control_plane_namespace.clone(),
            }),
        };
        let grpc_tls = match a.grpc_tls.as_str() {
            "off" => None,
            "auto" => {
                let mut addr = a.grpc;
                let standard: SocketAddr = DEFAULT_GRPC.parse().expect("valid default");
                let tls: SocketAddr = crate::tls::DEFAULT_GRPC_TLS.parse().expect("valid default");
                addr.set_port(if a.grpc.port() == standard.port() {
                    tls.port()
                } else {
                    0
                });
                Some(TlsPortConfig {
                    addr,
                    sans: a.tls_san.clone(),
                })
            }
            addr => Some(TlsPortConfig {
                addr: addr
                    .parse()
                    .map_err(|_| ConfigError::BadGrpcTls(addr.to_owned()))?,
                sans: a.tls_san.clone(),
            }),
        };
        if a.require_client_certs && grpc_tls.is_none() {
            return Err(ConfigError::ClientCertsWithoutTls);
        }
        let webhook = a.webhook_addr.map(|addr| WebhookConfig {
            addr,
            tls: match (&a.webhook_cert, &a.webhook_key) {
                (Some(cert), Some(key)) => TlsSource::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => TlsSource::SelfSigned {
                    dns_names: a.webhook_dns_names.clone(),
                },
            },
            inject: InjectConfig {
                proxy_image: a.sidecar_image.clone(),
                init_image: a.sidecar_image.clone(),
                control_plane: a.sidecar_control_plane.clone(),
                control_plane_tls: (a.sidecar_control_plane_tls != "off")
                    .then(|| a.sidecar_control_plane_tls.clone()),
                kubernetes_version: a.kubernetes_version,
                token_audience: a.token_audience.clone(),
                ..InjectConfig::default()
            },
            max_body: DEFAULT_MAX_BODY,
        });
        Ok(Config {
            grpc: a.grpc,
            http: a.http,
            store: a.store.clone(),
            debounce: Duration::from_millis(a.push_debounce_ms),
            leases: LeaseLimits::default(),
            clock: Clock::System,
            webhook,
            webhook_cert_out: a.webhook_cert_out.clone(),
            trust_bundle_out: a.trust_bundle_out.clone(),
            admin_tokens: a.admin_tokens.clone(),
            admin_read_anonymous: a.admin_read_anonymous,
            kubernetes,
            ca: CaConfig {
                trust_domain: a.trust_domain.clone(),
                root_files: a.ca_cert.clone().zip(a.ca_key.clone()),
                rotation: a.ca_root_rotation,
                default_ttl: a.cert_ttl,
            },
            grpc_tls,
            require_client_certs: a.require_client_certs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("serin-control").chain(args.iter().copied()))
                .expect("the flags parse");
        Config::try_from(&args)
    }

    #[test]
    fn the_mtls_port_follows_the_grpc_port_unless_given_or_off() {
        // The standard plaintext port: the standard mTLS port on the same IP.
        let tls = config(&[]).unwrap().grpc_tls.unwrap();
        assert_eq!(tls.addr, "0.0.0.0:15012".parse().unwrap());
        assert!(
            tls.sans
                .contains(&"serin-control.serin-system.svc".to_owned())
        );
        // Another plaintext port (tests side by side): any free port.
        let tls = config(&["--grpc", "127.0.0.1:40000"])
            .unwrap()
            .grpc_tls
            .unwrap();
        assert_eq!(tls.addr, "127.0.0.1:0".parse().unwrap());
        let tls = config(&["--grpc-tls", "10.0.0.1:9012", "--tls-san", "cp.example"])
            .unwrap()
            .grpc_tls
            .unwrap();
        assert_eq!(tls.addr, "10.0.0.1:9012".parse().unwrap());
        assert_eq!(tls.sans, vec!["cp.example".to_owned()]);
        assert_eq!(config(&["--grpc-tls", "off"]).unwrap().grpc_tls, None);
        assert!(matches!(
            config(&["--grpc-tls", "nowhere"]),
            Err(ConfigError::BadGrpcTls(_))
        ));
        assert!(matches!(
            config(&["--grpc-tls", "off", "--require-client-certs"]),
            Err(ConfigError::ClientCertsWithoutTls)
        ));
        assert!(
            config(&["--require-client-certs"])
                .unwrap()
                .require_client_certs
        );
    }

    #[test]
    fn kubernetes_mode_takes_the_control_plane_namespace() {
        let k = config(&["--kubernetes", "--control-plane-namespace", "serin-system"])
            .unwrap()
            .kubernetes
            .unwrap();
        assert_eq!(k.namespace.as_deref(), Some("serin-system"));
        // Unset: the client's default namespace (in-cluster, the service account's).
        let k = config(&["--kubernetes"]).unwrap().kubernetes.unwrap();
        assert_eq!(k.namespace, None);
        let e = config(&["--kubernetes", "--control-plane-namespace", "Serin_System"]).unwrap_err();
        assert!(matches!(e, ConfigError::BadNamespace(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "--control-plane-namespace \"Serin_System\": must be a namespace name (lowercase letters, digits and '-', at most 63)"
        );
    }
}
