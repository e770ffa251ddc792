//! The admin server (port 15000): `/ready` (200 once a config is applied and no drain has
//! started, else 503), `/live`, `/metrics` (Prometheus text), `/config_dump` (the applied
//! snapshot as JSON) and `/routes` (the traffic policies in force with their hit counts, see
//! [`routes`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Identity;
use crate::drain::Draining;
use crate::metrics::Metrics;
use crate::proxy::{BindError, bind};
use crate::tables::Tables;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The applied config.
    pub tables: watch::Receiver<Arc<Tables>>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Whether a drain started.
    pub draining: Draining,
    /// Who we are.
    pub identity: Identity,
    /// The Discovery client's state, when the config comes from a control plane.
    pub discovery: Option<Arc<crate::discovery::DiscoveryStatus>>,
}

/// The bound admin server.
#[derive(Debug)]
pub struct Admin {
    listener: TcpListener,
    state: Arc<AdminState>,
}

impl Admin {
    /// Binds the admin server on `addr`.
    pub async fn new(addr: SocketAddr, state: AdminState) -> Result<Admin, BindError> {
        Ok(Admin {
            listener: bind("admin", addr).await?,
            state: Arc::new(state),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the process exits (it keeps answering during a drain, so that `/ready`
    /// reports it).
    pub async fn run(self) {
        loop {
            let (stream, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let state = Arc::clone(&self.state);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(respond(&state, &req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

fn text(
    code: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn respond(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n");
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, PLAIN, "live\n"),
        "/ready" => {
            if state.draining.is_draining() {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "draining\n")
            } else if state.tables.borrow().is_ready() {
                text(StatusCode::OK, PLAIN, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "no config yet\n")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.render(),
        ),
        "/config_dump" => {
            let tables = Arc::clone(&state.tables.borrow());
            let id = &state.identity;
            let dump = serde_json::json!({
                "proxy": {
                    "podName": id.pod_name,
                    "namespace": id.namespace,
                    "podIps": id.pod_ips,
                    "service": id.service,
                    "version": id.version,
                },
                "snapshot": tables.snapshot.as_deref(),
                "discovery": state.discovery.as_ref().map(|d| d.view()),
            });
            let body = serde_json::to_vec_pretty(&dump).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        "/routes" => {
            let body =
                serde_json::to_vec_pretty(&routes(&state.tables.borrow())).unwrap_or_default();
            text(StatusCode::OK, "application/json", body)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /ready, /live, /metrics, /config_dump, /routes\n",
        ),
    }
}

/// The `/routes` document: `{"version": <config version or null>, "policies": [...]}`, one
/// [`crate::routing::PolicyView`] per policy in force, ordered by namespace and service.
pub fn routes(tables: &Tables) -> serde_json::Value {
    let policies: Vec<_> = tables.policies().iter().map(|p| p.view()).collect();
    serde_json::json!({
        "version": tables.snapshot.as_ref().map(|s| s.version.clone()),
        "policies": policies,
    })
}
