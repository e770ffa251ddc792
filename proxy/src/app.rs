//! The binary's start-up script: flags into a [`Config`], then bind, load config, serve, and
//! drain on SIGTERM. [`Bound`] is the same proxy for tests and benchmarks, in-process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use crate::admin::{Admin, AdminState};
use crate::config::*;
use crate::discovery::{self, Discovery};
use crate::drain;
use crate::identity::{CertManager, IdentitySettings, TokenSource};
use crate::metrics::Metrics;
use crate::orig_dst::{Kernel, OrigDstLookup};
use crate::pool::PoolTls;
use crate::proxy::{BindError, Listener, ProxyInputs, Side};
use crate::snapshot::file;
use crate::tables::{self, ConfigWriter};
use crate::telemetry::{self, Reporter};

/// `serin-proxy`: the sidecar. Every flag also reads its `SERIN_*` environment variable.
#[derive(Debug, Parser)]
// `--version` is the pod's version label (DESIGN.md), so clap's own version flag is off.
#[command(name = "serin-proxy", about = "The Serin sidecar proxy")]
pub struct Cli {
    /// `wait-ready`: instead of proxying, wait for the sidecar on `--admin-port` to be ready.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// URL of the control plane's Discovery service (e.g. `http://10.244.0.1:15010`); needs
    /// `--pod-name` and `--pod-ip`. Cannot be combined with `--config`.
    #[arg(long, env = ENV_CONTROL_PLANE, conflicts_with = "config")]
    pub control_plane: Option<String>,
    /// The control plane's mTLS port (e.g. `https://10.244.0.1:15012`): subscribe there with
    /// the workload certificate instead of on `--control-plane` (needs an identity token; the
    /// control plane is verified by its SPIFFE ID
    /// spiffe://<trust-domain>/ns/serin-system/sa/serin-control).
    #[arg(long, env = "SERIN_CONTROL_PLANE_TLS", requires = "control_plane")]
    pub control_plane_tls: Option<String>,
    /// The control plane's roots (PEM file; the serin-control `--trust-bundle-out` file): the
    /// first certificate request then goes to `--control-plane-tls` too, with the server
    /// checked, so the bootstrap token never crosses the network in the clear.
    #[arg(
        long,
        env = "SERIN_CONTROL_PLANE_CA",
        requires = "control_plane_tls",
        conflicts_with = "control_plane_ca_pem"
    )]
    pub control_plane_ca: Option<PathBuf>,
    /// The control plane's roots as PEM text (what the injector puts in an injected sidecar's
    /// environment); as `--control-plane-ca`.
    #[arg(
        long,
        env = "SERIN_CONTROL_PLANE_CA_PEM",
        requires = "control_plane_tls",
        hide_env_values = true
    )]
    pub control_plane_ca_pem: Option<String>,
    /// Service account of the pod (sent to the control plane).
    #[arg(long, env = ENV_SERVICE_ACCOUNT, default_value = "")]
    pub service_account: String,
    /// Node that runs the pod (sent to the control plane).
    #[arg(long, env = ENV_NODE_NAME, default_value = "")]
    pub node_name: String,
    /// How often per-edge traffic deltas go to the control plane's Telemetry service (with
    /// `--control-plane`), between 100ms and 60s.
    #[arg(long, env = ENV_TELEMETRY_INTERVAL, default_value = "1s", value_parser = humantime::parse_duration)]
    pub telemetry_interval: Duration,
    /// Send no telemetry to the control plane (the dashboard then shows no traffic of this pod).
    #[arg(long, env = ENV_NO_TELEMETRY)]
    pub no_telemetry: bool,
    /// The bootstrap token of the pod's registration: with it the sidecar gets a workload
    /// certificate from the control plane and speaks mTLS to meshed peers (with
    /// `--control-plane`).
    #[arg(long, env = ENV_IDENTITY_TOKEN, conflicts_with = "identity_token_file")]
    pub identity_token: Option<String>,
    /// A file holding the bootstrap token, read at each attempt (it may appear later).
    #[arg(long, env = ENV_IDENTITY_TOKEN_FILE)]
    pub identity_token_file: Option<PathBuf>,
    /// Trust domain of SPIFFE identities (as the control plane's `--trust-domain`).
    #[arg(long, env = ENV_TRUST_DOMAIN, default_value = crate::identity::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Requested lifetime of the workload certificate (default: the control plane's, 24h);
    /// renewed at 70 % of it.
    #[arg(long, env = ENV_CERT_TTL, value_parser = humantime::parse_duration)]
    pub cert_ttl: Option<Duration>,
    /// A fixed workload certificate chain (PEM), instead of one from the control plane: for
    /// `--config` and benchmarks; not renewed. Needs `--tls-key` and `--tls-roots`.
    #[arg(long, env = ENV_TLS_CERT, requires_all = ["tls_key", "tls_roots"], conflicts_with_all = ["identity_token", "identity_token_file"])]
    pub tls_cert: Option<PathBuf>,
    /// The PKCS#8 private key (PEM) of `--tls-cert`.
    #[arg(long, env = ENV_TLS_KEY, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The roots (PEM) peers' certificates must chain to, with `--tls-cert`.
    #[arg(long, env = ENV_TLS_ROOTS, requires = "tls_cert")]
    pub tls_roots: Option<PathBuf>,
    /// A static snapshot (YAML or JSON, the proto3 JSON shape of serin.v1.Snapshot).
    #[arg(long, env = ENV_CONFIG)]
    pub config: Option<PathBuf>,
    /// Name of the pod this sidecar serves.
    #[arg(long, env = ENV_POD_NAME, default_value = "")]
    pub pod_name: String,
    /// Namespace of the pod.
    #[arg(long, env = ENV_NAMESPACE, default_value = "default")]
    pub namespace: String,
    /// The pod's IPs (comma-separated, one per family).
    #[arg(long, env = ENV_POD_IP, value_delimiter = ',')]
    pub pod_ip: Vec<IpAddr>,
    /// Service the pod belongs to.
    #[arg(long, env = ENV_SERVICE, default_value = "")]
    pub service: String,
    /// The pod's version label.
    #[arg(long, env = ENV_VERSION, default_value = "")]
    pub version: String,
    /// Admin server port.
    #[arg(long, env = ENV_ADMIN_PORT, default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Outbound capture port.
    #[arg(long, env = ENV_OUTBOUND_PORT, default_value_t = DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Inbound capture port.
    #[arg(long, env = ENV_INBOUND_PORT, default_value_t = DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// How long SIGTERM waits for in-flight requests (e.g. `5s`, `500ms`).
    #[arg(long, env = ENV_DRAIN_DEADLINE, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_deadline: Duration,
    /// Upstream connect timeout.
    #[arg(long, env = ENV_CONNECT_TIMEOUT, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Concurrent downstream connections per capture listener.
    #[arg(long, env = ENV_MAX_CONNECTIONS, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// HTTP requests in flight per capture listener (beyond: 503).
    #[arg(long, env = ENV_MAX_REQUESTS, default_value_t = DEFAULT_MAX_REQUESTS)]
    pub max_requests: usize,
    /// Streams one downstream HTTP/2 connection may have open at once.
    #[arg(long, env = ENV_H2_MAX_CONCURRENT_STREAMS, default_value_t = DEFAULT_H2_MAX_CONCURRENT_STREAMS)]
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams a client may reset before they are accepted, before GOAWAY (rapid reset).
    #[arg(long, env = ENV_H2_MAX_PENDING_ACCEPT_RESET_STREAMS, default_value_t = DEFAULT_H2_MAX_PENDING_ACCEPT_RESET_STREAMS)]
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the proxy may reset for client protocol errors, before GOAWAY.
    #[arg(long, env = ENV_H2_MAX_LOCAL_ERROR_RESET_STREAMS, default_value_t = DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS)]
    pub h2_max_local_error_reset_streams: usize,
    /// Bytes buffered for sending per HTTP/2 stream.
    #[arg(long, env = ENV_H2_MAX_SEND_BUFFER, default_value_t = DEFAULT_H2_MAX_SEND_BUFFER)]
    pub h2_max_send_buffer: usize,
    /// Log filter (`info`, `debug`, `serin_proxy=debug,access=info`); the access log
    /// (target `access`) is off unless named.
    #[arg(long, env = ENV_LOG_LEVEL, default_value = "info")]
    pub log_level: String,
}

/// What the binary does instead of proxying.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Wait until the sidecar of this pod (`127.0.0.1:<admin-port>/ready`) answers 200, then exit
    /// 0; exit 1 if it has not by the timeout. Start the app after it (FAULTS 24: an app starts
    /// only once its sidecar is ready).
    WaitReady {
        /// How long to wait.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// Why `wait-ready` gave up.
#[derive(Debug, thiserror::Error)]
#[error("sidecar at {addr} not ready after {timeout:?}: {last}")]
pub struct NotReady {
    /// The admin address asked.
    pub addr: SocketAddr,
    /// How long it waited.
    pub timeout: Duration,
    /// The last answer or error.
    pub last: String,
}

/// How often `wait-ready` asks.
const WAIT_READY_INTERVAL: Duration = Duration::from_millis(50);

/// Asks `admin/ready` until it answers 200 or `timeout` passes.
pub async fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<(), NotReady> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(admin).await?;
            stream
                .write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(answer)) if answer.starts_with("HTTP/1.1 200") => return Ok(()),
            Ok(Ok(answer)) => last = answer.lines().next().unwrap_or_default().to_owned(),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {}
        }
        if tokio::time::Instant::now() + WAIT_READY_INTERVAL > deadline {
            return Err(NotReady {
                addr: admin,
                timeout,
                last,
            });
        }
        tokio::time::sleep(WAIT_READY_INTERVAL).await;
    }
}

impl Cli {
    /// The proxy's config, listening on all addresses (dual-stack when the host has IPv6).
    pub fn into_config(self) -> Config {
        let any: IpAddr = if std::path::Path::new("/proc/net/if_inet6").exists() {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let source = match (self.config, self.control_plane) {
            (Some(path), _) => ConfigSource::File(path),
            (None, Some(url)) => ConfigSource::ControlPlane(ControlPlane {
                identity: self
                    .identity_token
                    .map(TokenSource::Value)
                    .or(self.identity_token_file.map(TokenSource::File))
                    .map(|token| {
                        Box::new(IdentitySettings {
                            token,
                            trust_domain: self.trust_domain,
                            service_account: self.service_account.clone(),
                            cert_ttl: self.cert_ttl,
                            backoff_initial: crate::identity::DEFAULT_BACKOFF_INITIAL,
                            backoff_max: crate::identity::DEFAULT_BACKOFF_MAX,
                        })
                    }),
                service_account: self.service_account,
                node_name: self.node_name,
                tls_url: self.control_plane_tls,
                control_plane_ca: self
                    .control_plane_ca
                    .map(CaSource::File)
                    .or(self.control_plane_ca_pem.map(CaSource::Pem))
                    .map(Box::new),
                telemetry_interval: (!self.no_telemetry).then_some(self.telemetry_interval),
                ..ControlPlane::new(url)
            }),
            (None, None) => ConfigSource::None,
        };
        let static_tls = match (self.tls_cert, self.tls_key, self.tls_roots) {
            (Some(cert), Some(key), Some(roots)) => Some(StaticTls { cert, key, roots }),
            _ => None,
        };
        Config {
            static_tls,
            identity: Identity {
                pod_name: self.pod_name,
                namespace: self.namespace,
                pod_ips: self.pod_ip,
                service: self.service,
                version: self.version,
            },
            source,
            admin_addr: SocketAddr::new(any, self.admin_port),
            outbound_addr: SocketAddr::new(any, self.outbound_port),
            inbound_addr: SocketAddr::new(any, self.inbound_port),
            drain_deadline: self.drain_deadline,
            proxy: ProxySettings {
                connect_timeout: self.connect_timeout,
                max_connections: self.max_connections,
                max_requests: self.max_requests,
                h2_max_concurrent_streams: self.h2_max_concurrent_streams,
                h2_max_pending_accept_reset_streams: self.h2_max_pending_accept_reset_streams,
                h2_max_local_error_reset_streams: self.h2_max_local_error_reset_streams,
                h2_max_send_buffer: self.h2_max_send_buffer,
                ..ProxySettings::default()
            },
        }
    }
}

/// The log filter for `--log-level`: as given, with the access log (target `access`) off unless
/// the directive names it.
pub fn log_filter(level: &str) -> String {
    if level.contains("access") {
        level.to_owned()
    } else {
        format!("{level},access=off")
    }
}

/// Starts logging to stderr with the filter for `level` (see [`log_filter`]).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(log_filter(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,access=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The `--tls-*` files could not be used.
    #[error("cannot use the --tls-cert/--tls-key/--tls-roots files: {0}")]
    Tls(String),
}

/// Loads a fixed workload certificate from its files.
fn load_static_tls(files: &StaticTls) -> Result<crate::tls::Credentials, StartError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path)
            .map_err(|e| StartError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let key = match PrivateKeyDer::from_pem_slice(read(&files.key)?.as_bytes()) {
        Ok(PrivateKeyDer::Pkcs8(key)) => key.secret_pkcs8_der().to_vec(),
        Ok(_) => {
            return Err(StartError::Tls(format!(
                "{}: the key must be PKCS#8 (BEGIN PRIVATE KEY)",
                files.key.display()
            )));
        }
        Err(e) => return Err(StartError::Tls(format!("{}: {e}", files.key.display()))),
    };
    crate::tls::Credentials::new(
        key,
        &read(&files.cert)?,
        &read(&files.roots)?,
        std::time::SystemTime::now() + Duration::from_secs(365 * 24 * 3600),
    )
    .map_err(|e| StartError::Tls(e.to_string()))
}

/// A running proxy: its addresses, its config writer, and the drain trigger.
#[derive(Debug)]
pub struct Bound {
    /// Admin server address.
    pub admin_addr: SocketAddr,
    /// Outbound listener address.
    pub outbound_addr: SocketAddr,
    /// Inbound listener address.
    pub inbound_addr: SocketAddr,
    /// Publishes config to the running proxy.
    pub config: ConfigWriter,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The Discovery client, when the config comes from a control plane (run by
    /// [`Bound::discover`]).
    pub discovery: Option<Arc<Discovery>>,
    /// The telemetry reporter, when the config comes from a control plane and telemetry is on
    /// (run by [`Bound::report`]).
    pub telemetry: Option<Arc<Reporter>>,
    /// The workload certificate manager, when the sidecar has an identity (run by
    /// [`Bound::certify`]).
    pub certificates: Option<Arc<CertManager>>,
    trigger: drain::Trigger,
}

impl Bound {
    /// Binds every listener of `config` (failing on the first taken port), then serves them on
    /// the current runtime. No config is applied yet: the proxy is not ready until one is.
    pub async fn start(
        config: &Config,
        orig_dst: Arc<dyn OrigDstLookup>,
    ) -> Result<Bound, StartError> {
        // 1. Metrics, the config channel (empty: not ready), the drain trigger.
        let metrics = Arc::new(Metrics::new());
        let (inputs_trigger, drain_watch) = drain::new();
        // The workload certificate (mTLS), when the sidecar has an identity to claim.
        let certificates = match &config.source {
            ConfigSource::ControlPlane(cp) => cp.identity.clone().map(|settings| {
                Arc::new(CertManager::new(
                    cp.clone(),
                    config.identity.namespace.clone(),
                    *settings,
                    metrics.identity.clone(),
                ))
            }),
            _ => None,
        };
        let tls = match (&config.static_tls, &certificates) {
            (Some(files), _) => Some(PoolTls {
                credentials: tokio::sync::watch::channel(Some(Arc::new(load_static_tls(files)?))).1,
                metrics: metrics.identity.clone(),
            }),
            (None, Some(c)) => Some(PoolTls {
                credentials: c.subscribe(),
                metrics: metrics.identity.clone(),
            }),
            (None, None) => None,
        };
        let (writer, tables) = ConfigWriter::new(tables_builder(config, &metrics, tls.clone()));
        let inputs = Arc::new(ProxyInputs::new(
            config.proxy,
            config.identity.clone(),
            tables,
            Arc::clone(&metrics),
            orig_dst,
            drain_watch,
            tls,
        ));

        let discovery = match &config.source {
            ConfigSource::ControlPlane(settings) => Some(Arc::new(
                Discovery::new(settings.clone(), &config.identity, &metrics).with_credentials(
                    certificates
                        .as_ref()
                        .map_or_else(crate::identity::none, |c| c.subscribe()),
                ),
            )),
            _ => None,
        };
        // Telemetry goes to the same control plane, under the same identity.
        let telemetry = match (&config.source, &discovery) {
            (ConfigSource::ControlPlane(settings), Some(client)) => {
                settings.telemetry_interval.map(|interval| {
                    Arc::new(
                        Reporter::new(
                            settings.clone(),
                            interval,
                            client.identity().clone(),
                            Arc::clone(&metrics),
                            writer.subscribe(),
                        )
                        .with_credentials(
                            certificates
                                .as_ref()
                                .map_or_else(crate::identity::none, |c| c.subscribe()),
                        ),
                    )
                })
            }
            _ => None,
        };

        // 2. Bind everything before serving anything: a taken port fails the start.
        let admin = Admin::new(
            config.admin_addr,
            AdminState {
                tables: writer.subscribe(),
                metrics: Arc::clone(&metrics),
                draining: inputs_trigger.draining(),
                identity: config.identity.clone(),
                discovery: discovery.as_ref().map(|d| Arc::clone(d.status())),
            },
        )
        .await?;
        let outbound =
            Listener::new(Side::Outbound, config.outbound_addr, Arc::clone(&inputs)).await?;
        let inbound =
            Listener::new(Side::Inbound, config.inbound_addr, Arc::clone(&inputs)).await?;
        let bound = Bound {
            admin_addr: admin.local_addr(),
            outbound_addr: outbound.local_addr(),
            inbound_addr: inbound.local_addr(),
            config: writer,
            metrics,
            discovery,
            telemetry,
            certificates,
            trigger: inputs_trigger,
        };

        // 3. Serve. The listeners' tasks hold drain watches (through `inputs`) until they stop.
        tokio::spawn(admin.run());
        tokio::spawn(outbound.run());
        tokio::spawn(inbound.run());
        drop(inputs);
        tracing::info!(admin = %bound.admin_addr, outbound = %bound.outbound_addr, inbound = %bound.inbound_addr, "listening");
        Ok(bound)
    }

    /// Runs the Discovery client (subscribe, apply, answer, reconnect) for ever; never completes
    /// when the config does not come from a control plane.
    pub async fn discover(&self) {
        match &self.discovery {
            Some(client) => match client.run(&self.config).await {},
            None => std::future::pending().await,
        }
    }

    /// Reports telemetry to the control plane for ever; never completes when there is no
    /// reporter (no control plane, or `--no-telemetry`).
    pub async fn report(&self) {
        match &self.telemetry {
            Some(reporter) => match reporter.run().await {},
            None => std::future::pending().await,
        }
    }

    /// Obtains and renews the workload certificate for ever; never completes when the sidecar
    /// has no identity.
    pub async fn certify(&self) {
        match &self.certificates {
            Some(manager) => manager.run().await,
            None => std::future::pending().await,
        }
    }

    /// Stops accepting, asks every connection to finish (GOAWAY, `Connection: close`) and waits
    /// up to `deadline`; returns whether everything finished in time.
    pub async fn drain(self, deadline: Duration) -> bool {
        tracing::info!(?deadline, "draining");
        self.trigger.drain(deadline).await
    }
}

fn tables_builder(
    config: &Config,
    metrics: &Arc<Metrics>,
    tls: Option<PoolTls>,
) -> tables::Builder {
    tables::Builder {
        identity: config.identity.clone(),
        metrics: Arc::clone(metrics),
        pool: crate::pool::PoolSettings {
            connect_timeout: config.proxy.connect_timeout,
            idle_timeout: config.proxy.pool_idle_timeout,
            max_idle: config.proxy.pool_max_idle,
            tls,
        },
    }
}

/// Runs the sidecar until SIGTERM (or Ctrl-C), then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // 1. Bind the admin server and the capture listeners; a taken port ends here.
    let bound = Bound::start(&config, Arc::new(Kernel)).await?;

    // 2. Load the mesh config: a static file now, or snapshots from the control plane (run in
    //    step 3; not ready until the first one is applied).
    match &config.source {
        ConfigSource::File(path) => {
            let snapshot =
                file::load(path).with_context(|| "cannot start without a valid --config")?;
            bound.config.apply(snapshot);
        }
        ConfigSource::ControlPlane(settings) => {
            discovery::validate(settings, &config.identity).map_err(anyhow::Error::msg)?;
            if let Some(interval) = settings.telemetry_interval {
                telemetry::validate_interval(interval).map_err(anyhow::Error::msg)?;
            }
            tracing::info!(control_plane = %settings.url, control_plane_tls = ?settings.tls_url, telemetry_interval = ?settings.telemetry_interval, "config from the control plane");
        }
        ConfigSource::None => {
            tracing::warn!("neither --config nor --control-plane given: staying not ready");
        }
    }

    // 3. Follow the control plane (if any) and report telemetry to it until SIGTERM or Ctrl-C.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
        () = bound.discover() => {}
        () = bound.report() => {}
        () = bound.certify() => {}
    }

    // 4. Drain: not ready, stop accepting, finish in-flight requests within the deadline.
    if bound.drain(config.drain_deadline).await {
        tracing::info!("drained, exiting");
    } else {
        tracing::warn!(deadline = ?config.drain_deadline, "drain deadline passed, exiting anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn flags_parse_into_a_config() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "serin-proxy",
            "--config",
            "/etc/serin/mesh.yaml",
            "--pod-name",
            "reviews-v2-0",
            "--pod-ip",
            "10.244.0.7,fd00:10:244::7",
            "--service",
            "reviews",
            "--version",
            "v2",
            "--drain-deadline",
            "750ms",
        ])
        .unwrap();
        let config = cli.into_config();
        assert_eq!(
            config.source,
            ConfigSource::File("/etc/serin/mesh.yaml".into())
        );
        assert_eq!(config.identity.version, "v2");
        assert_eq!(config.identity.pod_ips.len(), 2);
        assert_eq!(config.drain_deadline, Duration::from_millis(750));
        assert_eq!(config.outbound_addr.port(), DEFAULT_OUTBOUND_PORT);
        let both = Cli::try_parse_from([
            "serin-proxy",
            "--config",
            "x",
            "--control-plane",
            "http://cp",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn telemetry_is_on_with_a_control_plane_unless_turned_off() {
        let cp = |extra: &[&str]| {
            let mut args = vec![
                "serin-proxy",
                "--control-plane",
                "http://10.244.0.1:15010",
                "--pod-name",
                "p",
                "--pod-ip",
                "10.244.0.7",
            ];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).unwrap().into_config().source {
                ConfigSource::ControlPlane(cp) => cp,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(cp(&[]).telemetry_interval, Some(Duration::from_secs(1)));
        assert_eq!(
            cp(&["--telemetry-interval", "250ms"]).telemetry_interval,
            Some(Duration::from_millis(250))
        );
        assert_eq!(cp(&["--no-telemetry"]).telemetry_interval, None);
    }
}
