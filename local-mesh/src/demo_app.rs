//! `serin-demo-app`: the sample service of the local mesh demo (Bookinfo's shape: productpage →
//! details, productpage → reviews v1/v2/v3 → ratings).
//!
//! It serves HTTP/1.1 and h2c (prior knowledge) on one port and answers every request with JSON
//! naming its service, version, pod and what it received; for each `--call HOST:PORT` it calls
//! that downstream service by name (so the call goes through the VIP and the sidecar), passing on
//! `end-user`, cookies, `traceparent` (same trace, its own span), `x-request-id` and the
//! User-Agent, and nests the answers. It logs one line per request with the Host and the
//! `x-serin-mirror` header it got, so mirroring can be checked in its log. It can be told to be
//! slow or fail, by flags or at run time with `POST /admin/fault {"delay_ms":..,"error_rate":..}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// Headers passed on to every downstream call.
pub const PROPAGATED: [&str; 5] = [
    "end-user",
    "cookie",
    "x-request-id",
    "user-agent",
    "traceparent",
];
/// How long a downstream call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read (fault settings).
const MAX_BODY: usize = 64 * 1024;

/// Who the app is and what it calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DemoConfig {
    /// Service name.
    pub service: String,
    /// Version label.
    pub version: String,
    /// Pod name.
    pub pod: String,
    /// Namespace.
    pub namespace: String,
    /// Downstream services, `HOST:PORT`, called on every request.
    pub calls: Vec<String>,
    /// The fault at start.
    pub fault: Fault,
}

/// How slow and how unreliable the app is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Delay before every answer, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Fraction 0..=1 of requests answered with 503.
    #[serde(default)]
    pub error_rate: f64,
}

impl Fault {
    fn validate(self) -> Result<Fault, String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate {} is not within 0..=1",
                self.error_rate
            ));
        }
        if self.delay_ms > 600_000 {
            return Err(format!("delay_ms {} is over 600000", self.delay_ms));
        }
        Ok(self)
    }
}

#[derive(Debug)]
struct AppState {
    config: DemoConfig,
    fault: RwLock<Fault>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A bound demo app, not serving yet.
#[derive(Debug)]
pub struct DemoApp {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl DemoApp {
    /// Binds `addr` (a taken port fails here) with `config`.
    pub async fn bind(addr: SocketAddr, config: DemoConfig) -> std::io::Result<DemoApp> {
        Fault::validate(config.fault).map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(addr).await?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        // Every call on a fresh connection: without a sidecar, a VIP is balanced per connection
        // (DNAT in the node), and a pooled connection would pin every call to one version.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        Ok(DemoApp {
            listener,
            state: Arc::new(AppState {
                fault: RwLock::new(config.fault),
                config,
                client,
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn serve(self) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&self.state);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let state = Arc::clone(&state);
                    async move { Ok::<_, Infallible>(handle(&state, req, peer).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    }
}

fn json_response(
    status: StatusCode,
    body: &Value,
    request_id: Option<&HeaderValue>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = request_id {
        response.headers_mut().insert("x-request-id", id.clone());
    }
    response
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// The `traceparent` to send downstream: the same trace with this hop as the parent, or a new
/// trace when the request had none (or a malformed one).
pub fn child_traceparent(incoming: Option<&str>) -> String {
    let trace = incoming.and_then(|t| {
        let parts: Vec<&str> = t.split('-').collect();
        (parts.len() == 4
            && parts[1].len() == 32
            && parts[1].bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (parts[1].to_owned(), parts[3].to_owned()))
    });
    let (trace_id, flags) = trace.unwrap_or_else(|| (random_hex(16), "01".to_owned()));
    format!("00-{trace_id}-{}-{flags}", random_hex(8))
}

async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if path == "/admin/fault" {
        return admin_fault(state, req).await;
    }
    if path == "/healthz" {
        return json_response(StatusCode::OK, &json!({"status": "ok"}), None);
    }
    let config = &state.config;
    let headers = req.headers().clone();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header(&headers, "host").map(str::to_owned))
        .unwrap_or_default();
    let mirror = header(&headers, "x-serin-mirror").unwrap_or("");
    let request_id = headers
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&random_hex(16)).expect("hex is a valid header"));
    let protocol = format!("{:?}", req.version());
    // The log line a mirroring check greps for.
    println!(
        "request method={} path={} host={host} x-serin-mirror={mirror:?} end-user={:?} x-request-id={:?} peer={peer} protocol={protocol}",
        req.method(),
        path,
        header(&headers, "end-user").unwrap_or(""),
        request_id.to_str().unwrap_or(""),
    );
    let fault = *state.fault.read().unwrap_or_else(|p| p.into_inner());
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    let identity = json!({
        "service": config.service,
        "version": config.version,
        "pod": config.pod,
        "namespace": config.namespace,
    });
    if fault.error_rate > 0.0 && rand::rng().random_bool(fault.error_rate) {
        let mut body = identity;
        body["error"] = json!("injected fault");
        return json_response(StatusCode::SERVICE_UNAVAILABLE, &body, Some(&request_id));
    }
    let mut outgoing = HeaderMap::new();
    for name in PROPAGATED {
        for value in headers.get_all(name) {
            outgoing.append(name, value.clone());
        }
    }
    outgoing.insert("x-request-id", request_id.clone());
    let traceparent = child_traceparent(header(&headers, "traceparent"));
    outgoing.insert(
        "traceparent",
        HeaderValue::from_str(&traceparent).expect("hex is a valid header"),
    );
    // Concurrently, answers kept in the order of the flags.
    let calls = futures::future::join_all(
        config
            .calls
            .iter()
            .map(|target| call(state, target, &path, &outgoing)),
    )
    .await;
    let received: serde_json::Map<String, Value> = PROPAGATED
        .iter()
        .filter_map(|name| header(&headers, name).map(|v| ((*name).to_owned(), json!(v))))
        .collect();
    let mut body = identity;
    body["host"] = json!(host);
    body["path"] = json!(path);
    body["protocol"] = json!(protocol);
    body["mirror"] = json!(!mirror.is_empty());
    body["headers"] = Value::Object(received);
    body["calls"] = Value::Array(calls);
    json_response(StatusCode::OK, &body, Some(&request_id))
}

async fn call(state: &AppState, target: &str, path: &str, headers: &HeaderMap) -> Value {
    let uri = format!("http://{target}{path}");
    let mut request = match Request::builder()
        .method(Method::GET)
        .uri(&uri)
        .body(Full::new(Bytes::new()))
    {
        Ok(r) => r,
        Err(e) => return json!({"target": target, "error": format!("bad target: {e}")}),
    };
    *request.headers_mut() = headers.clone();
    let outcome = tokio::time::timeout(CALL_TIMEOUT, async {
        let response = state
            .client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    })
    .await;
    match outcome {
        Ok(Ok((status, body))) => {
            let body = serde_json::from_slice(&body)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
            json!({"target": target, "status": status.as_u16(), "response": body})
        }
        Ok(Err(e)) => json!({"target": target, "error": e}),
        Err(_) => json!({"target": target, "error": format!("timed out after {CALL_TIMEOUT:?}")}),
    }
}

async fn admin_fault(state: &AppState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match *req.method() {
        Method::GET => {}
        Method::POST | Method::PUT => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &json!({"error": e.to_string()}),
                        None,
                    );
                }
            };
            let fault = serde_json::from_slice::<Fault>(&body)
                .map_err(|e| format!("expected {{\"delay_ms\": N, \"error_rate\": 0..1}}: {e}"))
                .and_then(Fault::validate);
            match fault {
                Ok(f) => {
                    *state.fault.write().unwrap_or_else(|p| p.into_inner()) = f;
                    println!(
                        "fault set delay_ms={} error_rate={}",
                        f.delay_ms, f.error_rate
                    );
                }
                Err(e) => {
                    return json_response(StatusCode::BAD_REQUEST, &json!({"error": e}), None);
                }
            }
        }
        _ => {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "use GET or POST"}),
                None,
            );
        }
    }
    let fault = *state.fault.read().unwrap_or_else(|p| p.into_inner());
    json_response(StatusCode::OK, &json!(fault), None)
}
