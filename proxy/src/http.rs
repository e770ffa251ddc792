//! HTTP proxying: serving a downstream connection with hyper (HTTP/1.1 with upgrades, or HTTP/2),
//! and forwarding each request to an endpoint over its pool, streaming bodies both ways.
//!
//! Outbound requests to a service are routed one by one (each HTTP/2 stream on its own) by the
//! service's traffic policy ([`crate::tables::Destination::route`]), and copied to the mirror
//! version when the policy samples them ([`crate::mirror`]).
//!
//! Failures never hang the client: no ready endpoint or a failed connect gives 503, an upstream
//! that resets or breaks before answering gives 502, each with a one-line reason body and the
//! request counted under that code. A request that an idle pooled HTTP/1 connection could not
//! even start (the upstream had closed it) is retried once on a fresh connection: nothing of it
//! was sent, so that is safe for any method. Beyond that, an idempotent request without a body
//! that failed before any response is retried once on another endpoint of the same version,
//! within the service's retry budget ([`crate::retry`]).
//!
//! Before anything else a request is admitted under its listener's in-flight limit (503 beyond,
//! [`crate::overload`]), its path is normalised ([`path`]; 400 for a refused path), and spoofable
//! internal headers are removed ([`headers::strip_internal`]; inbound keeps a mirrored copy's
//! mark). Downstream HTTP/2 connections run with the rapid-reset, CONTINUATION-flood and
//! send-buffer limits of [`ProxySettings`].

pub mod body;
pub mod guard;
pub mod headers;
pub mod path;
pub mod tee;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::config::ProxySettings;
use crate::detect::Prefixed;
use crate::drain;
use crate::metrics::{EdgeMetrics, RequestProtocol, RetryOutcome};
use crate::mirror::Mirrors;
use crate::overload::Admission;
use crate::pool::ConnectError;
use crate::retry;
use crate::tables::{Destination, EndpointState, Routed, Tables};
use crate::tls::MeshIo;
use body::{Meter, ProxyBody};
use guard::{HeadGuard, Verdicts};
use tee::RequestBody;

/// Window sizes of downstream HTTP/2 connections (large enough to stream at full speed).
const H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// Connection window of downstream HTTP/2 connections.
const H2_CONN_WINDOW: u32 = 4 * 1024 * 1024;
/// How often an idle downstream HTTP/2 connection is pinged.
const H2_KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
const H2_KEEP_ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// hyper's own default for the most headers; setting it explicitly costs an allocation per
/// request, so it is only set when configured otherwise.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Which HTTP the downstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2.
    Http2,
}

/// Where a downstream connection's requests go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Outbound: to an endpoint of the service at this VIP:port, chosen per request.
    Service {
        /// The VIP:port the app connected to.
        orig_dst: SocketAddr,
        /// The config the connection started with is refreshed from here per request.
        tables: tokio::sync::watch::Receiver<Arc<Tables>>,
        /// Where mirrored copies are started.
        mirrors: Arc<Mirrors>,
    },
    /// Inbound: to the app.
    Fixed {
        /// The app's address and pool.
        endpoint: Arc<EndpointState>,
        /// The inbound edge of the peer.
        metrics: Arc<EdgeMetrics>,
        /// Inbound: the peer's edge for mirrored copies (`x-serin-mirror: 1` to a `-shadow`
        /// host), counted apart from its primary traffic.
        mirror: Option<Arc<EdgeMetrics>>,
    },
}

/// Serves one downstream HTTP connection until it ends, or until a drain asks it to finish
/// (HTTP/2 GOAWAY, HTTP/1 `Connection: close` on the next response / close when idle).
pub async fn serve(
    io: Prefixed<MeshIo>,
    flavor: Flavor,
    settings: &ProxySettings,
    upstream: Upstream,
    admission: Admission,
    drain: drain::Watch,
) {
    let upstream = Arc::new(Downstream {
        upstream,
        admission,
        kept: KeptConnection::default(),
    });
    // HTTP/1: every request head is checked for framing conflicts as hyper reads it.
    let verdicts = (flavor == Flavor::Http1).then(|| Arc::new(Verdicts::default()));
    let service = {
        let verdicts = verdicts.clone();
        service_fn(move |req| {
            let upstream = Arc::clone(&upstream);
            let verdict = verdicts.as_ref().and_then(|v| v.next());
            async move {
                Ok::<_, Infallible>(match verdict {
                    Some(Err(malformed)) => reject_malformed(malformed),
                    _ => route(req, &upstream).await,
                })
            }
        })
    };
    let result = match flavor {
        Flavor::Http1 => {
            let verdicts = verdicts.unwrap_or_default();
            let io = TokioIo::new(HeadGuard::new(io, settings.max_header_bytes, verdicts));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(settings.header_read_timeout)
                .max_header_size(settings.max_header_bytes)
                .max_buf_size(settings.max_header_bytes.max(8192) + 8192);
            if settings.max_headers != HYPER_DEFAULT_MAX_HEADERS {
                builder.max_headers(settings.max_headers);
            }
            let conn = builder.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = drain.signaled_in_task() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Flavor::Http2 => {
            let io = TokioIo::new(io);
            let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                // Pings find peers that vanished without a FIN.
                .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
                .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
                // Bounds the request head, and with it how many CONTINUATION frames h2 accepts
                // before it answers GOAWAY (the CONTINUATION flood).
                .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
                .max_concurrent_streams(settings.h2_max_concurrent_streams)
                // Rapid reset (CVE-2023-44487): streams opened and reset before they are served,
                // and streams the proxy itself had to reset, are bounded per connection; beyond
                // either the connection gets GOAWAY.
                .max_pending_accept_reset_streams(settings.h2_max_pending_accept_reset_streams)
                .max_local_error_reset_streams(settings.h2_max_local_error_reset_streams)
                .max_send_buf_size(settings.h2_max_send_buffer)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONN_WINDOW);
            // Each stream's future is boxed where it starts: hyper runs every stream as a task
            // of its own, and tokio moves a task's future (several KiB unboxed) a few times
            // between spawn and completion; an HTTP/1 request's is polled in place instead.
            let service = service_fn(move |req| Box::pin(service.call(req)));
            let conn = builder.serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                () = drain.signaled_in_task() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "downstream http connection ended with an error");
    }
}

/// What a downstream connection's requests share.
#[derive(Debug)]
struct Downstream {
    upstream: Upstream,
    admission: Admission,
    kept: KeptConnection,
}

/// The upstream HTTP/1 connection the last request of a downstream HTTP/1 connection used. The
/// next request (HTTP/1 requests on a connection come one after another) takes it back directly
/// when it goes to the same endpoint: no pool lock, no task to return it. It goes back to the
/// endpoint's pool when another endpoint takes its place or the downstream connection ends.
#[derive(Debug, Default)]
struct KeptConnection(
    std::sync::Mutex<Option<(Arc<EndpointState>, http1::SendRequest<RequestBody>)>>,
);

impl KeptConnection {
    /// The kept connection, if it is to `endpoint` and ready for a request.
    fn take(&self, endpoint: &Arc<EndpointState>) -> Option<http1::SendRequest<RequestBody>> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some((kept, sender)) if Arc::ptr_eq(&kept, endpoint) && sender.is_ready() => {
                Some(sender)
            }
            Some((kept, sender)) => {
                kept.pool.release_http1(sender);
                None
            }
            None => None,
        }
    }

    /// Keeps `sender` (to `endpoint`) for the next request.
    fn keep(&self, endpoint: &Arc<EndpointState>, sender: http1::SendRequest<RequestBody>) {
        let previous = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace((Arc::clone(endpoint), sender));
        if let Some((kept, sender)) = previous {
            kept.pool.release_http1(sender);
        }
    }
}

impl Drop for KeptConnection {
    fn drop(&mut self) {
        let slot = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((kept, sender)) = slot.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            kept.pool.release_http1(sender);
        }
    }
}

/// Admits `req` under its listener's in-flight limit, and routes it; the request holds its
/// place until its response body has been sent (or dropped).
async fn route(req: Request<Incoming>, downstream: &Downstream) -> Response<ProxyBody> {
    let Some(admitted) = downstream.admission.request() else {
        return overloaded();
    };
    route_admitted(req, downstream)
        .await
        .map(|body| body.holding(admitted))
}

/// Normalises the path of `req` in place ([`path`]).
fn normalize_path<B>(req: &mut Request<B>) -> Result<(), path::BadPath> {
    if let Some(uri) = path::normalize_uri(req.uri())? {
        tracing::trace!(from = %req.uri(), to = %uri, "path normalised");
        *req.uri_mut() = uri;
    }
    Ok(())
}

/// Picks the endpoint for `req` and forwards it.
async fn route_admitted(req: Request<Incoming>, downstream: &Downstream) -> Response<ProxyBody> {
    let start = Instant::now();
    let kept = &downstream.kept;
    let mut req = req;
    match &downstream.upstream {
        Upstream::Fixed {
            endpoint,
            metrics,
            mirror,
        } => {
            if let Err(bad) = normalize_path(&mut req) {
                let meter = Meter::new(Arc::clone(metrics), start, request_protocol(&req));
                return bad_path(bad, meter);
            }
            headers::strip_internal_inbound(&mut req);
            // What strip_internal_inbound kept is a mirroring sidecar's copy.
            let metrics = match mirror {
                Some(mirror) if headers::is_mirror_copy(&req) => mirror,
                _ => metrics,
            };
            let req = req.map(RequestBody::stream);
            forward(req, endpoint, Arc::clone(metrics), start, kept).await
        }
        Upstream::Service {
            orig_dst,
            tables,
            mirrors,
        } => {
            // The current config for every request: endpoint and policy changes apply to live
            // connections, and the request keeps the tables it started with to its end.
            let tables = Arc::clone(&tables.borrow());
            let Some(destination) = tables.destination(*orig_dst) else {
                let meter = Meter::new(
                    Arc::clone(tables.passthrough()),
                    start,
                    request_protocol(&req),
                );
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service no longer in the mesh config",
                    meter,
                );
            };
            if let Err(bad) = normalize_path(&mut req) {
                let meter = Meter::new(
                    Arc::clone(&destination.metrics),
                    start,
                    request_protocol(&req),
                );
                return bad_path(bad, meter);
            }
            // The app may not pose as a sidecar: a mirror copy gets its `x-serin-mirror` below,
            // after this.
            headers::strip_internal(req.headers_mut());
            if req.version() == Version::HTTP_2 && req.uri().authority().is_none() {
                set_authority(&mut req, &destination.authority);
            }
            destination.retry_budget.deposit();
            let Some(routed) = destination.route(&req) else {
                let meter = Meter::new(
                    Arc::clone(&destination.metrics),
                    start,
                    request_protocol(&req),
                );
                return error(StatusCode::SERVICE_UNAVAILABLE, "no ready endpoint", meter);
            };
            if routed.fell_back {
                routed
                    .backend
                    .metrics
                    .record_fallback(Some(request_protocol(&req)));
            }
            // Tunnels (WebSocket, CONNECT) are not mirrored: a copy could only be a plain request.
            let tunnel = req.method() == Method::CONNECT
                || headers::upgrade_requested(req.headers()).is_some();
            let tee = routed
                .mirror
                .filter(|_| !tunnel)
                .and_then(|to| mirrors.start(&req, to));
            // A copy for a retry only when there is another endpoint to retry on: the header
            // clone is the one cost retries add to a request that succeeds.
            let eligible = retry::eligible(&req);
            let retry = (eligible && routed.candidates.len() > 1).then(|| copy_for_retry(&req));
            let req = req.map(|body| match tee {
                Some(tee) => RequestBody::teed(body, tee),
                None => RequestBody::stream(body),
            });
            let backend = routed.backend;
            let metrics = Arc::clone(&backend.metrics);
            match attempt(req, &backend.state, metrics, start, kept).await {
                Ok(response) => response,
                Err(failed) => match retry {
                    // Boxed: a rare path, which would otherwise double the size of every
                    // request's future (it holds a second `attempt`).
                    Some(again) => {
                        Box::pin(retry_elsewhere(again, failed, destination, &routed, kept)).await
                    }
                    None => {
                        if eligible {
                            destination.metrics.registry().retry(
                                &destination.service,
                                &destination.namespace,
                                RetryOutcome::NoOtherEndpoint,
                            );
                        }
                        failed.into_response()
                    }
                },
            }
        }
    }
}

/// A copy of an empty-bodied request, for sending it again.
fn copy_for_retry(req: &Request<Incoming>) -> Request<RequestBody> {
    let mut again = Request::new(RequestBody::empty());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    again
}

/// Sends `again` (a failed request's copy) to another endpoint of the version it was routed to,
/// when the service's retry budget allows; otherwise answers with the first failure.
async fn retry_elsewhere(
    again: Request<RequestBody>,
    failed: Failed,
    destination: &Destination,
    routed: &Routed<'_>,
    kept: &KeptConnection,
) -> Response<ProxyBody> {
    let registry = destination.metrics.registry();
    let count = |outcome| registry.retry(&destination.service, &destination.namespace, outcome);
    let Some(other) = routed.candidates.another(routed.backend.addr) else {
        count(RetryOutcome::NoOtherEndpoint);
        return failed.into_response();
    };
    if !destination.retry_budget.withdraw() {
        count(RetryOutcome::BudgetExhausted);
        return failed.into_response();
    }
    count(RetryOutcome::Retried);
    tracing::debug!(error = %failed.error, retry = %other.addr, "retrying on another endpoint");
    let start = failed.meter.start();
    failed.meter.discard();
    forward(again, &other.state, Arc::clone(&other.metrics), start, kept).await
}

/// Gives an HTTP/2 request without `:authority` the service's, so it can be forwarded.
fn set_authority<B>(req: &mut Request<B>, authority: &http::uri::Authority) {
    let mut parts = req.uri().clone().into_parts();
    if parts.scheme.is_none() {
        parts.scheme = Some(http::uri::Scheme::HTTP);
    }
    parts.authority = Some(authority.clone());
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// gRPC by its content type, else HTTP/2 or HTTP/1 by the request's version.
pub(crate) fn request_protocol<B>(req: &Request<B>) -> RequestProtocol {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        RequestProtocol::Grpc
    } else if req.version() == Version::HTTP_2 {
        RequestProtocol::Http2
    } else {
        RequestProtocol::Http1
    }
}

/// A response the proxy writes itself: `code`, a one-line reason, counted on `meter`.
fn error(code: StatusCode, reason: &str, mut meter: Meter) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(Bytes::new(), None));
    meter.response(code.as_u16(), response.headers());
    *response.body_mut() = ProxyBody::text(format!("serin: {reason}\n"), Some(meter));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to a request over its listener's in-flight limit (counted in
/// `serin_overload_rejections_total`, not in `serin_requests_total`: it reached no edge).
fn overloaded() -> Response<ProxyBody> {
    let body = "serin: overloaded: too many requests in flight on this listener\n";
    let mut response = Response::new(ProxyBody::text(body, None));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to a request whose path is refused: 400 with the reason, nothing forwarded.
fn bad_path(bad: path::BadPath, meter: Meter) -> Response<ProxyBody> {
    tracing::debug!(reason = %bad, "request path refused");
    error(StatusCode::BAD_REQUEST, &format!("bad path: {bad}"), meter)
}

/// Why a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream {addr} failed before answering: {source}")]
    Upstream {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// A request that could not be forwarded: why, and its meter (not yet recorded).
struct Failed {
    error: ForwardError,
    meter: Meter,
}

impl Failed {
    /// The proxy's answer: 503 when the connect failed, 502 when the upstream failed before
    /// answering.
    fn into_response(self) -> Response<ProxyBody> {
        let code = match self.error {
            ForwardError::Connect(_) => StatusCode::SERVICE_UNAVAILABLE,
            ForwardError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        };
        error(code, &self.error.to_string(), self.meter)
    }
}

/// Forwards `req` to `endpoint` and returns its response (or the proxy's error response).
async fn forward(
    req: Request<RequestBody>,
    endpoint: &Arc<EndpointState>,
    metrics: Arc<EdgeMetrics>,
    start: Instant,
    kept: &KeptConnection,
) -> Response<ProxyBody> {
    attempt(req, endpoint, metrics, start, kept)
        .await
        .unwrap_or_else(Failed::into_response)
}

/// Forwards `req` to `endpoint`: its response, or why it failed before any response.
async fn attempt(
    mut req: Request<RequestBody>,
    endpoint: &Arc<EndpointState>,
    metrics: Arc<EdgeMetrics>,
    start: Instant,
    kept: &KeptConnection,
) -> Result<Response<ProxyBody>, Failed> {
    let mut meter = Meter::new(metrics, start, request_protocol(&req));
    meter.hold(Arc::clone(endpoint));
    let upgrade = headers::upgrade_requested(req.headers()).is_some();
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    // An upgrade (WebSocket) or an HTTP/1 CONNECT becomes a byte tunnel if the upstream agrees.
    let connect = req.method() == Method::CONNECT && req.version() != Version::HTTP_2;
    let downstream_upgrade = (upgrade || connect).then(|| hyper::upgrade::on(&mut req));
    let sent = if req.version() == Version::HTTP_2 {
        send_http2(req, endpoint).await
    } else {
        send_http1(req, endpoint, kept).await
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "forward failed");
            return Err(Failed { error, meter });
        }
    };
    endpoint.lb.observe(start.elapsed());
    meter.response(response.status().as_u16(), response.headers());
    let tunnel = (upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS)
        || (connect && response.status().is_success());
    if tunnel && let Some(downstream) = downstream_upgrade {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((down, up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        return Ok(response.map(|_| ProxyBody::empty(Some(meter))));
    }
    headers::strip_hop_by_hop(response.headers_mut(), false);
    Ok(response.map(|body| ProxyBody::upstream(body, meter)))
}

async fn send_http1(
    req: Request<RequestBody>,
    endpoint: &Arc<EndpointState>,
    kept: &KeptConnection,
) -> Result<Response<Incoming>, ForwardError> {
    let pool = &endpoint.pool;
    let is_connect = req.method() == Method::CONNECT;
    // A new connection's connect and handshake are boxed: kept out of every request's future
    // (moved and copied as the request goes), they cost an allocation only when they happen.
    let (mut sender, reused) = match kept.take(endpoint).or_else(|| pool.idle_http1()) {
        Some(sender) => (sender, true),
        None => (Box::pin(pool.new_http1()).await?, false),
    };
    let response = match sender.try_send_request(req).await {
        Ok(response) => response,
        Err(mut e) => match e.take_message() {
            // The idle connection was closed under us before the request went out.
            Some(req) if reused => {
                tracing::debug!(addr = %pool.addr(), "pooled connection closed, retrying on a new one");
                sender = Box::pin(pool.new_http1()).await?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|source| ForwardError::Upstream {
                        addr: pool.addr(),
                        source,
                    })?
            }
            _ => {
                return Err(ForwardError::Upstream {
                    addr: pool.addr(),
                    source: e.into_error(),
                });
            }
        },
    };
    // A connection that became a tunnel is not reusable; any other stays with this downstream
    // connection for its next request.
    if response.status() != StatusCode::SWITCHING_PROTOCOLS && !is_connect {
        kept.keep(endpoint, sender);
    }
    Ok(response)
}

async fn send_http2(
    req: Request<RequestBody>,
    endpoint: &Arc<EndpointState>,
) -> Result<Response<Incoming>, ForwardError> {
    let pool = &endpoint.pool;
    // The shared connection, or (boxed, as in `send_http1`) a new one.
    let mut sender = match pool.live_http2() {
        Some(sender) => sender,
        None => Box::pin(pool.http2()).await?,
    };
    match sender.try_send_request(req).await {
        Ok(response) => Ok(response),
        Err(mut e) => match e.take_message() {
            Some(req) => {
                // The shared connection went away (GOAWAY) before this stream started.
                pool.forget_http2();
                let mut sender = Box::pin(pool.http2()).await?;
                sender
                    .send_request(req)
                    .await
                    .map_err(|source| ForwardError::Upstream {
                        addr: pool.addr(),
                        source,
                    })
            }
            None => Err(ForwardError::Upstream {
                addr: pool.addr(),
                source: e.into_error(),
            }),
        },
    }
}

/// The answer to a request whose head has conflicting framing: 400, and the connection closes
/// (what followed the head cannot be trusted). Nothing is forwarded.
fn reject_malformed(malformed: headers::Malformed) -> Response<ProxyBody> {
    tracing::debug!(reason = malformed.reason(), "malformed request refused");
    let body = format!("serin: malformed request: {}\n", malformed.reason());
    let mut response = Response::new(ProxyBody::text(body, None));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}
