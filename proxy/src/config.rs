//! The sidecar's settings: every environment variable's name and every default as a constant,
//! and one documented [`Config`]. Parsed once at start (see `app.rs`); nothing deeper reads the
//! environment.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Prefix of every environment variable the binary reads.
pub const ENV_PREFIX: &str = "SERIN_";
/// `--control-plane URL`.
pub const ENV_CONTROL_PLANE: &str = "SERIN_CONTROL_PLANE";
/// `--config FILE`.
pub const ENV_CONFIG: &str = "SERIN_CONFIG";
/// `--pod-name`.
pub const ENV_POD_NAME: &str = "SERIN_POD_NAME";
/// `--namespace`.
pub const ENV_NAMESPACE: &str = "SERIN_NAMESPACE";
/// `--pod-ip`.
pub const ENV_POD_IP: &str = "SERIN_POD_IP";
/// `--service`.
pub const ENV_SERVICE: &str = "SERIN_SERVICE";
/// `--version`.
pub const ENV_VERSION: &str = "SERIN_VERSION";
/// `--admin-port`.
pub const ENV_ADMIN_PORT: &str = "SERIN_ADMIN_PORT";
/// `--outbound-port`.
pub const ENV_OUTBOUND_PORT: &str = "SERIN_OUTBOUND_PORT";
/// `--inbound-port`.
pub const ENV_INBOUND_PORT: &str = "SERIN_INBOUND_PORT";
/// `--drain-deadline`.
pub const ENV_DRAIN_DEADLINE: &str = "SERIN_DRAIN_DEADLINE";
/// `--connect-timeout`.
pub const ENV_CONNECT_TIMEOUT: &str = "SERIN_CONNECT_TIMEOUT";
/// `--max-connections`.
pub const ENV_MAX_CONNECTIONS: &str = "SERIN_MAX_CONNECTIONS";
/// `--max-requests`.
pub const ENV_MAX_REQUESTS: &str = "SERIN_MAX_REQUESTS";
/// `--h2-max-concurrent-streams`.
pub const ENV_H2_MAX_CONCURRENT_STREAMS: &str = "SERIN_H2_MAX_CONCURRENT_STREAMS";
/// `--h2-max-pending-accept-reset-streams`.
pub const ENV_H2_MAX_PENDING_ACCEPT_RESET_STREAMS: &str =
    "SERIN_H2_MAX_PENDING_ACCEPT_RESET_STREAMS";
/// `--h2-max-local-error-reset-streams`.
pub const ENV_H2_MAX_LOCAL_ERROR_RESET_STREAMS: &str = "SERIN_H2_MAX_LOCAL_ERROR_RESET_STREAMS";
/// `--h2-max-send-buffer`.
pub const ENV_H2_MAX_SEND_BUFFER: &str = "SERIN_H2_MAX_SEND_BUFFER";
/// `--log-level`.
pub const ENV_LOG_LEVEL: &str = "SERIN_LOG_LEVEL";
/// `--service-account` (sent to the control plane in the Discovery hello).
pub const ENV_SERVICE_ACCOUNT: &str = "SERIN_SERVICE_ACCOUNT";
/// `--node-name` (sent to the control plane in the Discovery hello).
pub const ENV_NODE_NAME: &str = "SERIN_NODE_NAME";
/// `--telemetry-interval`.
pub const ENV_TELEMETRY_INTERVAL: &str = "SERIN_TELEMETRY_INTERVAL";
/// `--no-telemetry`.
pub const ENV_NO_TELEMETRY: &str = "SERIN_NO_TELEMETRY";
/// `--identity-token` (the bootstrap token of the workload's registration).
pub const ENV_IDENTITY_TOKEN: &str = "SERIN_IDENTITY_TOKEN";
/// `--identity-token-file`.
pub const ENV_IDENTITY_TOKEN_FILE: &str = "SERIN_IDENTITY_TOKEN_FILE";
/// `--trust-domain`.
pub const ENV_TRUST_DOMAIN: &str = "SERIN_TRUST_DOMAIN";
/// `--cert-ttl`.
pub const ENV_CERT_TTL: &str = "SERIN_CERT_TTL";
/// `--tls-cert` (a fixed workload certificate chain, PEM).
pub const ENV_TLS_CERT: &str = "SERIN_TLS_CERT";
/// `--tls-key` (its PKCS#8 key, PEM).
pub const ENV_TLS_KEY: &str = "SERIN_TLS_KEY";
/// `--tls-roots` (the roots to trust, PEM).
pub const ENV_TLS_ROOTS: &str = "SERIN_TLS_ROOTS";

/// Admin HTTP port (`/ready`, `/live`, `/metrics`, `/config_dump`).
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// Outbound capture port.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// The uid and gid the sidecar runs as; the capture rules exempt them.
pub const PROXY_UID: u32 = 1337;
/// How long SIGTERM waits for in-flight work before exiting.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// How long a connect to an upstream may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long protocol detection waits for the client's first bytes before going opaque: short,
/// so that server-speaks-first protocols are not delayed noticeably.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a client may take to send a request's headers (slowloris bound); also the idle
/// timeout of a kept-alive HTTP/1 client connection.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an opaque TCP connection may carry no byte in either direction.
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a pooled upstream connection may sit idle before it is closed.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1 connections kept per upstream endpoint.
pub const DEFAULT_POOL_MAX_IDLE: usize = 256;
/// Concurrent downstream connections per listener; a connection beyond that is closed at once
/// (and counted).
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// HTTP requests in flight per listener (from head received to response body sent); a request
/// beyond that is answered 503 (and counted).
pub const DEFAULT_MAX_REQUESTS: usize = 10_000;
/// Streams one downstream HTTP/2 client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS);
/// a client that opens more gets its extra streams refused.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Streams a downstream HTTP/2 client may open and reset before the proxy has even accepted
/// them; beyond that the connection gets GOAWAY (the rapid-reset defence, CVE-2023-44487).
pub const DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the proxy may reset on one downstream HTTP/2 connection because the client broke
/// protocol; beyond that the connection gets GOAWAY (server-provoked resets).
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
/// Bytes buffered per downstream HTTP/2 stream for sending when the client does not read
/// (a zero-window stall holds at most this much per stream).
pub const DEFAULT_H2_MAX_SEND_BUFFER: usize = 400 * 1024;
/// Most request headers accepted (HTTP/1: more gives 431).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Largest request head, start line and headers, in bytes (more gives 431 / a stream reset).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 60 * 1024;
/// Mirrored copies in flight at once per proxy; beyond that copies are dropped (and counted).
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: usize = 128;
/// How long a mirrored copy may take, sending to draining its answer.
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay to the control plane (before jitter); doubles up to the maximum.
pub const DEFAULT_DISCOVERY_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest reconnect delay to the control plane (before jitter).
pub const DEFAULT_DISCOVERY_BACKOFF_MAX: Duration = Duration::from_secs(15);
/// How long a connect to the control plane may take.
pub const DEFAULT_DISCOVERY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 ping interval on the Discovery connection, so that a control plane that vanished
/// without closing the connection is noticed.
pub const DEFAULT_DISCOVERY_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
pub const DEFAULT_DISCOVERY_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the sidecar reports per-edge deltas to the control plane.
pub const DEFAULT_TELEMETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Who this sidecar serves: the identity its metrics and (later) discovery carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// Pod name.
    pub pod_name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod IPs.
    pub pod_ips: Vec<IpAddr>,
    /// Service the pod belongs to, "" for a pure client.
    pub service: String,
    /// The pod's version label.
    pub version: String,
}

impl Identity {
    /// The workload name in metrics: the service, else the pod name.
    pub fn workload(&self) -> &str {
        if self.service.is_empty() {
            &self.pod_name
        } else {
            &self.service
        }
    }
}

/// Where the mesh configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A static snapshot file (YAML or JSON).
    File(PathBuf),
    /// A control plane's Discovery service.
    ControlPlane(ControlPlane),
    /// Nothing: the proxy runs, not ready.
    None,
}

/// How the sidecar talks to the control plane (`--control-plane URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// URL of the Discovery service, e.g. `http://10.244.0.1:15010`.
    pub url: String,
    /// The control plane's mTLS port, e.g. `https://10.244.0.1:15012`: Discovery, Telemetry and
    /// certificate renewals go there with the workload certificate (the streams wait for one)
    /// instead of to `url`; the first certificate request too when `control_plane_ca` is given
    /// (else it goes to `url` with the bootstrap token). `None`: plaintext.
    pub tls_url: Option<String>,
    /// Service account of the pod ("" when unknown), for the hello.
    pub service_account: String,
    /// Node that runs the pod ("" when unknown), for the hello.
    pub node_name: String,
    /// First reconnect delay; doubles per failed attempt, each delay drawn at random below it.
    pub backoff_initial: Duration,
    /// Bound of the reconnect delay.
    pub backoff_max: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
    /// How often telemetry is reported to the control plane; `None`: not at all.
    pub telemetry_interval: Option<Duration>,
    /// How to get a workload certificate (mTLS between sidecars); `None`: no identity, all
    /// traffic plain.
    pub identity: Option<Box<crate::identity::IdentitySettings>>,
    /// The roots the control plane's mTLS port is checked against before the sidecar has a
    /// certificate (its first certificate request goes there instead of to `url`).
    pub control_plane_ca: Option<Box<CaSource>>,
}

/// Where the control plane's roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A PEM file, read at each use.
    File(PathBuf),
    /// PEM text (e.g. from the environment of an injected sidecar).
    Pem(String),
}

impl ControlPlane {
    /// The control plane at `url` with the default timings.
    pub fn new(url: impl Into<String>) -> ControlPlane {
        ControlPlane {
            url: url.into(),
            tls_url: None,
            service_account: String::new(),
            node_name: String::new(),
            backoff_initial: DEFAULT_DISCOVERY_BACKOFF_INITIAL,
            backoff_max: DEFAULT_DISCOVERY_BACKOFF_MAX,
            connect_timeout: DEFAULT_DISCOVERY_CONNECT_TIMEOUT,
            keepalive_interval: DEFAULT_DISCOVERY_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_DISCOVERY_KEEPALIVE_TIMEOUT,
            telemetry_interval: Some(DEFAULT_TELEMETRY_INTERVAL),
            identity: None,
            control_plane_ca: None,
        }
    }
}

/// Everything the proxy needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Who we are.
    pub identity: Identity,
    /// Where the mesh config comes from.
    pub source: ConfigSource,
    /// Address the admin server binds.
    pub admin_addr: std::net::SocketAddr,
    /// Address the outbound capture listener binds.
    pub outbound_addr: std::net::SocketAddr,
    /// Address the inbound capture listener binds.
    pub inbound_addr: std::net::SocketAddr,
    /// SIGTERM drain deadline.
    pub drain_deadline: Duration,
    /// Forwarding limits and timeouts.
    pub proxy: ProxySettings,
    /// A fixed workload certificate from files (no renewal; for `--config` and benchmarks);
    /// `None`: from the control plane with a bootstrap token, or none.
    pub static_tls: Option<StaticTls>,
}

/// A workload certificate, its key and the roots to trust, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticTls {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its PKCS#8 private key.
    pub key: PathBuf,
    /// The roots peers' chains must end at.
    pub roots: PathBuf,
}

/// Limits and timeouts of the forwarding path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySettings {
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Protocol detection window.
    pub detect_timeout: Duration,
    /// Request header read timeout (and HTTP/1 keep-alive idle timeout).
    pub header_read_timeout: Duration,
    /// Opaque TCP idle timeout.
    pub tcp_idle_timeout: Duration,
    /// Pooled connection idle timeout.
    pub pool_idle_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint.
    pub pool_max_idle: usize,
    /// Concurrent downstream connections per listener (beyond: closed, counted).
    pub max_connections: usize,
    /// In-flight HTTP requests per listener (beyond: 503, counted).
    pub max_requests: usize,
    /// HTTP/2 streams one downstream connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they are accepted, before GOAWAY.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the proxy may reset for protocol errors on one connection, before GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
    /// Bytes buffered for sending per HTTP/2 stream.
    pub h2_max_send_buffer: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Mirrored copies in flight at once (excess dropped and counted).
    pub mirror_max_in_flight: usize,
    /// Time bound of one mirrored copy.
    pub mirror_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            detect_timeout: DEFAULT_DETECT_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle: DEFAULT_POOL_MAX_IDLE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_requests: DEFAULT_MAX_REQUESTS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_accept_reset_streams: DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS,
            h2_max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            h2_max_send_buffer: DEFAULT_H2_MAX_SEND_BUFFER,
            max_headers: DEFAULT_MAX_HEADERS,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            mirror_max_in_flight: DEFAULT_MIRROR_MAX_IN_FLIGHT,
            mirror_timeout: DEFAULT_MIRROR_TIMEOUT,
        }
    }
}
