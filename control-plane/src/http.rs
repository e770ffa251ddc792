//! The HTTP port (:15080): the dashboard (`/` and its assets, embedded in the binary), its JSON
//! API (`/api/...`, see [`crate::dashboard`]), `/ready` and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminService;
use crate::auth::{AdminAuth, Denied};
use crate::dashboard::{self, ApiError, Query};
use crate::metrics::Metrics;
use crate::telemetry::EdgeTable;
use serin_proto::auth::Role;

/// Largest JSON body the API takes.
const MAX_BODY: usize = 64 * 1024;

/// A response body: a whole buffer or a stream (server-sent events).
pub type Body = BoxBody<Bytes, Infallible>;

/// What the HTTP handlers read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// True once the store is open and gRPC is serving.
    pub ready: Arc<AtomicBool>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The admin service: the API's reads and writes go through the same code as gRPC's.
    pub admin: AdminService,
    /// Who may read and write through `/api/`.
    pub auth: AdminAuth,
    /// The telemetry windows (for `/metrics`).
    pub edges: Arc<EdgeTable>,
    /// Turns true at shutdown: live streams end.
    pub shutdown: watch::Receiver<bool>,
}

/// A whole response.
pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(Full::new(body.into()).boxed())
        .expect("static response parts are valid")
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// Answers one request.
pub async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    if method == Method::POST {
        if !path.starts_with("/api/") {
            return not_allowed();
        }
        // Writes take the credential from the Authorization header only, never from a cookie:
        // a cross-site page cannot set that header.
        if let Err(denied) = state.auth.check(
            header(&req, hyper::header::AUTHORIZATION),
            None,
            Role::Write,
            &format!("POST {path}"),
        ) {
            return refused(&denied);
        }
        // Only JSON: a cross-site form cannot send it without a CORS preflight, which this
        // server never grants.
        let json = req
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json {
            return api_error(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as application/json",
            ));
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return api_error(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
                ));
            }
        };
        return match dashboard::post(&state.admin, &path, &query, &body).await {
            Ok(v) => json_response(&v),
            Err(e) => api_error(e),
        };
    }
    if method != Method::GET && method != Method::HEAD {
        return not_allowed();
    }
    if let Some(asset) = dashboard::asset(&path) {
        return full(StatusCode::OK, asset.content_type, asset.body);
    }
    if path.starts_with("/api/") {
        // Reads also take the page's cookie: EventSource cannot send a header.
        let cookie = cookie_token(&req).map(|t| format!("Bearer {t}"));
        let authorization = header(&req, hyper::header::AUTHORIZATION).or(cookie.as_deref());
        if let Err(denied) =
            state
                .auth
                .check(authorization, None, Role::Read, &format!("GET {path}"))
        {
            return refused(&denied);
        }
    }
    match path.as_str() {
        "/ready" if state.ready.load(Ordering::Acquire) => full(StatusCode::OK, PLAIN, "ready\n"),
        "/ready" => full(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "not ready\n"),
        "/metrics" => {
            state.metrics.telemetry_edges.set(state.edges.len() as i64);
            full(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.encode(),
            )
        }
        "/api/stream" => match dashboard::stream(state, &query) {
            Ok(r) => r,
            Err(e) => api_error(e),
        },
        _ if path.starts_with("/api/") => match dashboard::get(&state.admin, &path, &query).await {
            Ok(v) => json_response(&v),
            Err(e) => api_error(e),
        },
        _ => full(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; this port serves the dashboard at /, /api/topology, /api/stream, \
             /api/services/NAME, /ready and /metrics\n",
        ),
    }
}

/// The cookie the dashboard page sets for its reads.
pub const TOKEN_COOKIE: &str = "serin-token";

fn header<B>(req: &Request<B>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn cookie_token<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == TOKEN_COOKIE && !value.is_empty()).then_some(value)
        })
}

/// 401 (with `WWW-Authenticate`) for a missing or unknown token, 403 for a read-only one.
fn refused(denied: &Denied) -> Response<Body> {
    let status = match denied {
        Denied::Missing | Denied::Invalid | Denied::UnknownIdentity(_) => StatusCode::UNAUTHORIZED,
        Denied::ReadOnly { .. } => StatusCode::FORBIDDEN,
    };
    let mut response = api_error(ApiError::new(status, denied.to_string()));
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer realm=\"serin-admin\""),
        );
    }
    response
}

fn not_allowed() -> Response<Body> {
    full(
        StatusCode::METHOD_NOT_ALLOWED,
        PLAIN,
        "only GET and HEAD are served here, and POST under /api/\n",
    )
}

fn json_response(v: &serde_json::Value) -> Response<Body> {
    full(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(v).expect("a JSON value serializes"),
    )
}

fn api_error(e: ApiError) -> Response<Body> {
    let ApiError { status, message } = e;
    let body = serde_json::json!({ "error": message });
    full(
        status,
        "application/json",
        serde_json::to_vec(&body).expect("a JSON value serializes"),
    )
}

/// Completes once `shutdown` is true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves HTTP on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: HttpState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let mut conn_stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "http connection ended with an error");
                    }
                }
                // Live streams never end on their own: close the connection at shutdown.
                () = stopped(&mut conn_stop) => {}
            }
        });
    }
}
