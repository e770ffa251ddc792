//! `serin-control` wired together, step by step: open the store, bind both ports (a taken port
//! fails here, naming the address), then serve until shutdown. In Kubernetes mode there is no
//! store: the ports are bound, then the cluster is listed, and the API server is the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use serin_proto::v1::admin_server::AdminServer;
use serin_proto::v1::identity_server::IdentityServer;
use serin_proto::v1::telemetry_server::TelemetryServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;

use crate::admin::{AdminService, Telemetry};
use crate::auth::{AdminAuth, Authorized};
use crate::ca::Authority;
use crate::config::{Config, GRPC_KEEPALIVE_INTERVAL, GRPC_KEEPALIVE_TIMEOUT};
use crate::discovery::{Discovery, DiscoveryServer, ProxyTable};
use crate::http::HttpState;
use crate::identity::IdentityService;
use crate::inject::webhook::Webhook;
use crate::kubernetes::mode::KubernetesMode;
use crate::mesh::Mesh;
use crate::metrics::Metrics;
use crate::snapshot::Publisher;
use crate::store::Store;
use crate::telemetry::{Clock, EdgeTable, RuleHitTable, TelemetryService};
use crate::tls::TlsPort;

/// A control plane with its store open and its ports bound, not serving yet.
pub struct App {
    config: Config,
    auth: AdminAuth,
    source: Source,
    ca: Arc<Authority>,
    grpc: TcpListener,
    grpc_tls: Option<TlsPort>,
    http: TcpListener,
    webhook: Option<Webhook>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .field("grpc", &self.grpc)
            .field("grpc_tls", &self.grpc_tls)
            .field("http", &self.http)
            .field("webhook", &self.webhook.as_ref().map(Webhook::local_addr))
            .finish_non_exhaustive()
    }
}

/// Where the registry and the policies live.
enum Source {
    /// The embedded store.
    Store(Arc<Store>),
    /// The Kubernetes API server, listed and watched.
    Kubernetes(Box<KubernetesMode>),
}

/// Handles a running control plane shares (for in-process tests).
#[derive(Debug, Clone)]
pub struct Handles {
    /// The writer.
    pub mesh: Mesh,
    /// Connected proxies.
    pub proxies: Arc<ProxyTable>,
    /// Telemetry windows.
    pub edges: Arc<EdgeTable>,
    /// Rule-hit windows.
    pub rule_hits: Arc<RuleHitTable>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The clock the telemetry windows read.
    pub clock: Clock,
}

impl App {
    /// Opens the store (or, in Kubernetes mode, lists the cluster) and binds the listeners.
    pub async fn new(config: Config) -> anyhow::Result<App> {
        // 1. The store: everything else starts from what it holds.
        let store = match &config.kubernetes {
            None => {
                let dir = config.store.clone();
                let store = tokio::task::spawn_blocking(move || Store::open(&dir)).await??;
                tracing::info!(path = %store.path().display(), "store open");
                Some(store)
            }
            Some(_) => None,
        };
        // 1b. The admin credentials: the operator's file, or the store's (generated once). The
        // replicas of Kubernetes mode have no store: they share the operator's file.
        if config.kubernetes.is_some() && config.admin_tokens.is_none() {
            anyhow::bail!(
                "Kubernetes mode needs --admin-tokens FILE (the replicas share one tokens file, \
                 e.g. mounted from the Secret serin-admin-tokens)"
            );
        }
        // The replicas of Kubernetes mode share one CA root, else a sidecar would not trust the
        // certificates another replica signed: the operator's files are required.
        if config.kubernetes.is_some() && config.ca.root_files.is_none() {
            anyhow::bail!(
                "Kubernetes mode needs --ca-cert FILE --ca-key FILE (the replicas share one CA \
                 root so that every sidecar trusts every other, e.g. mounted from the Secret \
                 serin-ca)"
            );
        }
        let auth = AdminAuth::load(
            config.admin_tokens.as_deref(),
            &config.store,
            config.admin_read_anonymous,
        )?;
        // 1c. The certificate authority: the operator's root, the stored one, or a new one (kept
        //     in the store; Kubernetes mode has none: the operator's root, else one in memory).
        let ca = crate::identity::load_authority(store.as_ref(), &config.ca)
            .context("cannot set up the certificate authority")?;
        if let Some(path) = &config.trust_bundle_out {
            write_public_file(path, &ca.trust_bundle().concat())
                .with_context(|| format!("cannot write the trust bundle to {}", path.display()))?;
        }
        // 2. The ports, now, so that a taken one fails at start with its address.
        let grpc = TcpListener::bind(config.grpc)
            .await
            .with_context(|| format!("cannot listen for gRPC on {}", config.grpc))?;
        let http = TcpListener::bind(config.http)
            .await
            .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
        let ca = Arc::new(ca);
        // 2a. The mTLS port, with the control plane's certificate from its own CA.
        let grpc_tls = match &config.grpc_tls {
            Some(tls) => Some(TlsPort::bind(tls, ca.clone(), config.ca.default_ttl).await?),
            None => None,
        };
        // 2b. The admission webhook (Kubernetes): its certificate, then its port.
        let webhook = match config.webhook.clone() {
            Some(mut webhook_config) => {
                // Injected sidecars check the mTLS port by the CA's roots from their first
                // request on (a pod created before a root rotation keeps the roots of its day;
                // restart pods between `promote` and `drop-old`).
                webhook_config.inject.control_plane_ca_pem = ca.trust_bundle().concat();
                let webhook = Webhook::bind(webhook_config).await?;
                if let Some(path) = &config.webhook_cert_out {
                    std::fs::write(path, webhook.certificate_pem()).with_context(|| {
                        format!("cannot write the webhook certificate to {}", path.display())
                    })?;
                }
                Some(webhook)
            }
            None => None,
        };
        // 2c. Kubernetes mode: the API server, with everything listed before anything is served.
        let source = match (store, &config.kubernetes) {
            (Some(store), _) => Source::Store(Arc::new(store)),
            (None, k) => {
                let k = k.as_ref().context("neither a store nor Kubernetes mode")?;
                let client = crate::kubernetes::mode::client(k).await?;
                // The mesh-wide settings live in the control plane's own namespace.
                let namespace = k
                    .namespace
                    .clone()
                    .unwrap_or_else(|| client.default_namespace().to_owned());
                Source::Kubernetes(Box::new(
                    KubernetesMode::start(
                        client,
                        namespace,
                        config.debounce,
                        config.ca.trust_domain.clone(),
                    )
                    .await,
                ))
            }
        };
        Ok(App {
            config,
            auth,
            source,
            ca,
            grpc,
            grpc_tls,
            http,
            webhook,
        })
    }

    /// The bound webhook address, when the webhook is on.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref().map(Webhook::local_addr)
    }

    /// The admin tokens file in use.
    pub fn admin_tokens_path(&self) -> &std::path::Path {
        self.auth.path()
    }

    /// The bound gRPC address (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound mTLS gRPC address, when that port is on.
    pub fn grpc_tls_addr(&self) -> Option<SocketAddr> {
        self.grpc_tls.as_ref().map(TlsPort::local_addr)
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Starts serving; returns the shared handles at once and a future that runs until
    /// `shutdown` completes and everything has stopped.
    pub fn start(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<(Handles, impl Future<Output = anyhow::Result<()>> + Send)> {
        let App {
            config,
            auth,
            source,
            ca,
            grpc,
            grpc_tls,
            http,
            webhook,
        } = self;
        let grpc_addr = grpc.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let (stop_tx, stop_rx) = watch::channel(false);

        // 3. The writer, loaded from the store (or the cluster's view and its policy writer), and
        //    the snapshots it feeds.
        let (mesh, mut kubernetes) = match source {
            Source::Store(store) => (
                Mesh::start(store, config.leases).context("cannot load the store")?,
                None,
            ),
            Source::Kubernetes(k) => (k.mesh(), Some(k)),
        };
        let snapshots = Publisher {
            debounce: config.debounce,
        }
        .spawn(mesh.watch(), metrics.clone());

        // 4. The gRPC services.
        let proxies = Arc::new(ProxyTable::default());
        // 4b. Kubernetes mode: the TrafficPolicy status counts this replica's proxies in sync.
        if let (Some(k), Some(kc)) = (&mut kubernetes, &config.kubernetes) {
            k.write_status(crate::kubernetes::status::StatusSource {
                replica: kc.replica.clone(),
                proxies: proxies.clone(),
                interval: kc.status_interval,
            });
        }
        let edges = Arc::new(EdgeTable::default());
        let rule_hits = Arc::new(RuleHitTable::default());
        let discovery = DiscoveryServer::new(
            Discovery::new(snapshots, proxies.clone(), metrics.clone(), stop_rx.clone())
                .require_client_certs(config.require_client_certs),
        );
        let admin_service = AdminService::new(
            mesh.clone(),
            proxies.clone(),
            metrics.clone(),
            Telemetry {
                edges: edges.clone(),
                rule_hits: rule_hits.clone(),
                clock: config.clock.clone(),
            },
            stop_rx.clone(),
        );
        let admin = Authorized::new(AdminServer::new(admin_service.clone()), auth.clone());
        let telemetry = TelemetryServer::new(
            TelemetryService::new(
                edges.clone(),
                rule_hits.clone(),
                metrics.clone(),
                config.clock.clone(),
                stop_rx.clone(),
            )
            .require_client_certs(config.require_client_certs),
        );
        let mut identity = IdentityService::new(ca, mesh.clone(), config.ca.default_ttl);
        // Kubernetes mode: sidecars present projected service-account tokens (TokenReview).
        if let (Some(k), Some(kc)) = (&kubernetes, &config.kubernetes) {
            identity = identity.with_token_review(crate::kubernetes::tokens::TokenReviewer::new(
                k.client().clone(),
                kc.token_audience.clone(),
            ));
        }
        let identity = IdentityServer::new(identity);
        let (health_reporter, health) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(serin_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("cannot build the reflection service")?;

        // 5. Serve gRPC and HTTP; ready once both run.
        let ready = Arc::new(AtomicBool::new(false));
        // The same services on both ports (each server gets its own clones).
        let router = || {
            tonic::transport::Server::builder()
                // Pings find proxies whose host vanished without closing the connection, so that
                // ListProxies does not show them connected forever.
                .http2_keepalive_interval(Some(GRPC_KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(GRPC_KEEPALIVE_TIMEOUT))
                .add_service(discovery.clone())
                .add_service(admin.clone())
                .add_service(telemetry.clone())
                .add_service(identity.clone())
                .add_service(health.clone())
                .add_service(reflection.clone())
        };
        let grpc_tls_addr = grpc_tls.as_ref().map(TlsPort::local_addr);
        let grpc_tls_task = grpc_tls.map(|port| {
            let mut stop = stop_rx.clone();
            tokio::spawn(router().serve_with_incoming_shutdown(
                port.incoming(stop_rx.clone()),
                async move {
                    crate::http::stopped(&mut stop).await;
                },
            ))
        });
        let mut grpc_stop = stop_rx.clone();
        let grpc_task = tokio::spawn(router().serve_with_incoming_shutdown(
            no_delay(grpc),
            async move {
                crate::http::stopped(&mut grpc_stop).await;
            },
        ));
        let webhook_task = webhook.map(|w| tokio::spawn(w.serve(stop_rx.clone())));
        let http_task = tokio::spawn(crate::http::serve(
            http,
            HttpState {
                ready: ready.clone(),
                metrics: metrics.clone(),
                admin: admin_service,
                auth,
                edges: edges.clone(),
                shutdown: stop_rx.clone(),
            },
            stop_rx,
        ));
        let handles = Handles {
            mesh,
            proxies,
            edges,
            rule_hits,
            metrics,
            clock: config.clock,
        };

        let run = async move {
            for service in [
                "",
                "serin.v1.Discovery",
                "serin.v1.Admin",
                "serin.v1.Telemetry",
                "serin.v1.Identity",
            ] {
                health_reporter
                    .set_service_status(service, tonic_health::ServingStatus::Serving)
                    .await;
            }
            ready.store(true, Ordering::Release);
            tracing::info!(grpc = %grpc_addr, grpc_tls = ?grpc_tls_addr, "serin-control serving");

            // 6. Wait for the signal, then stop: not ready, end the streams, stop the servers.
            tokio::pin!(shutdown);
            let mut grpc_task = grpc_task;
            tokio::select! {
                () = &mut shutdown => {}
                result = &mut grpc_task => {
                    result.context("the gRPC server task failed")?.context("the gRPC server failed")?;
                    anyhow::bail!("the gRPC server stopped on its own");
                }
            }
            tracing::info!("shutting down");
            ready.store(false, Ordering::Release);
            let _ = stop_tx.send(true);
            grpc_task
                .await
                .context("the gRPC server task failed")?
                .context("the gRPC server failed")?;
            if let Some(task) = grpc_tls_task {
                task.await
                    .context("the mTLS gRPC server task failed")?
                    .context("the mTLS gRPC server failed")?;
            }
            http_task.await.context("the HTTP server task failed")?;
            if let Some(task) = webhook_task {
                task.await.context("the webhook task failed")?;
            }
            // The watchers stop with it.
            drop(kubernetes);
            tracing::info!("stopped");
            Ok(())
        };
        Ok((handles, run))
    }
}

/// The accepted connections of `listener` with Nagle's algorithm off. A gRPC answer is several
/// writes (headers, message, trailers); with Nagle on, the later ones wait for the client's
/// delayed ACK, which added about 20 ms to every unary call (ApplyPolicy took 22 ms on
/// loopback). tonic only sets TCP_NODELAY on listeners it binds itself.
fn no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted
            && let Err(e) = stream.set_nodelay(true)
        {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a gRPC connection");
        }
        accepted
    })
}

/// Writes `text` to `path` readable by everyone (a trust bundle is public), replacing it
/// atomically.
fn write_public_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))?;
    std::fs::rename(&tmp, path)
}
