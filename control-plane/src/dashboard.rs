//! The dashboard's HTTP API and its page. The page (`/`, `/app.js`, `/style.css`) is plain
//! JavaScript and SVG embedded in the binary: no build step, no CDN, works offline. The API:
//!
//! - `GET /api/topology?window=10s&namespace=NS`: the traffic graph (see [`crate::topology`]);
//! - `GET /api/stream?window=…&namespace=…`: the same graph as server-sent events
//!   (`event: topology`), one per [`STREAM_INTERVAL`];
//! - `GET /api/services/NAME?namespace=NS&window=…`: the release state of one service;
//! - `POST /api/services/NAME/weights|promote|rollback?namespace=NS` (JSON bodies): the admin
//!   rpcs `SetWeights`, `Promote` and `Rollback`, through the same code as gRPC.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::StatusCode;
use hyper::body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};
use serin_proto::v1;
use serin_proto::v1::admin_server::Admin;
use tonic::{Code, Request, Status};

use crate::admin::AdminService;
use crate::http::{Body, HttpState};
use crate::model::{ChangeCause, PolicyDraft, PolicyKey, ServiceKey, namespace_or_default};
use crate::telemetry::LONGEST_WINDOW_MS;
use crate::telemetry::hits::RouteHits;
use serin_policy::VersionWeight;

/// How often the live stream sends the graph.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);
/// The window when a request names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// An embedded file of the page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its media type.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static str,
}

/// The page's file at `path`, if it is one.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_str!("../dashboard/index.html"),
        ),
        "/app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("../dashboard/app.js"),
        ),
        "/style.css" => (
            "text/css; charset=utf-8",
            include_str!("../dashboard/style.css"),
        ),
        _ => return None,
    };
    Some(Asset { content_type, body })
}

/// A failed API call: the status and one line saying what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What was wrong.
    pub message: String,
}

impl ApiError {
    /// An error.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, s.message())
    }
}

/// Query parameters, percent-decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(Vec<(String, String)>);

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    /// Parses `a=1&b=2`.
    pub fn parse(text: &str) -> Self {
        Query(
            text.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `namespace`, default "default".
    pub fn namespace(&self) -> String {
        namespace_or_default(self.get("namespace").unwrap_or(""))
    }

    /// `window` (`10s`, `1m`, `10m`, or seconds), default 10 s, at most ten minutes.
    pub fn window(&self) -> Result<Duration, ApiError> {
        let Some(text) = self.get("window").filter(|t| !t.is_empty()) else {
            return Ok(DEFAULT_WINDOW);
        };
        parse_window(text).ok_or_else(|| {
            ApiError::bad(format!(
                "window {text:?}: expected seconds or minutes between 1s and 10m, e.g. 10s, 1m, 10m"
            ))
        })
    }
}

/// `10s`, `1m`, `90` (seconds): 1 s ..= 10 min.
pub fn parse_window(text: &str) -> Option<Duration> {
    let (digits, unit) = match text.strip_suffix('m') {
        Some(d) => (d, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    let secs = digits.parse::<u64>().ok()?.checked_mul(unit)?;
    (1..=LONGEST_WINDOW_MS / 1000)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

/// `/api/services/NAME[/ACTION]` → (NAME, ACTION).
fn service_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/api/services/")?;
    let mut parts = rest.split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let action = parts.next();
    if parts.next().is_some() {
        return None;
    }
    Some((name, action))
}

/// Answers a GET under `/api/` (but `/api/stream`).
pub async fn get(admin: &AdminService, path: &str, query: &Query) -> Result<Value, ApiError> {
    if path == "/api/topology" {
        let ns = query.get("namespace").unwrap_or("");
        let graph = admin.graph(ns, query.window()?);
        return Ok(serde_json::to_value(&graph).expect("the graph serializes"));
    }
    match service_path(path) {
        Some((name, None)) => service(admin, &query.namespace(), name, query.window()?).await,
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no API at {path}: try /api/topology, /api/stream or /api/services/NAME"),
        )),
    }
}

/// `GET /api/stream`: the graph as server-sent events until the client leaves or the server
/// stops.
pub fn stream(state: &HttpState, query: &Query) -> Result<hyper::Response<Body>, ApiError> {
    let window = query.window()?;
    let ns = query.get("namespace").unwrap_or("").to_owned();
    let admin = state.admin.clone();
    let ticker = tokio::time::interval(STREAM_INTERVAL);
    let events = futures::stream::unfold(
        (admin, ns, ticker, state.shutdown.clone()),
        move |(admin, ns, mut ticker, mut stop)| async move {
            tokio::select! {
                () = crate::http::stopped(&mut stop) => return None,
                _ = ticker.tick() => {}
            }
            let graph = admin.graph(&ns, window);
            let json = serde_json::to_string(&graph).expect("the graph serializes");
            let event = Bytes::from(format!("event: topology\ndata: {json}\n\n"));
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(event)),
                (admin, ns, ticker, stop),
            ))
        },
    );
    Ok(hyper::Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/event-stream")
        .header(hyper::header::CACHE_CONTROL, "no-store")
        .body(StreamBody::new(events).boxed())
        .expect("static response parts are valid"))
}

fn cause_name(c: ChangeCause) -> &'static str {
    match c {
        ChangeCause::Apply => "apply",
        ChangeCause::SetWeights => "set_weights",
        ChangeCause::Promote => "promote",
        ChangeCause::Rollback => "rollback",
        ChangeCause::Delete => "delete",
    }
}

fn percent(part: f64, total: f64) -> Option<f64> {
    (total > 0.0).then(|| 100.0 * part / total)
}

/// One route's configured split next to what it did: per version its weight and configured
/// share, and the requests the route's split chose it for in the window (the sidecars' rule-hit
/// counts of the policy's current generation, before any fallback) with their share. `rule` is
/// the rule's name, "" for the default route. Versions that hits name but the route does not
/// (none, unless the counts are of another spec) are listed after the route's.
fn route_hits(route: &[VersionWeight], rule: &str, hits: &[RouteHits]) -> Value {
    let mine: Vec<&RouteHits> = hits.iter().filter(|h| h.rule == rule).collect();
    let total: u64 = mine.iter().map(|h| h.hits).sum();
    let total_weight: u32 = route.iter().map(|w| w.weight.get().unwrap_or(0)).sum();
    let mut versions: Vec<&str> = route.iter().map(|w| w.version.as_str()).collect();
    for h in &mine {
        if !versions.contains(&h.version.as_str()) {
            versions.push(&h.version);
        }
    }
    versions.dedup();
    let list: Vec<Value> = versions
        .iter()
        .map(|v| {
            let weight: u32 = route
                .iter()
                .filter(|w| w.version == *v)
                .map(|w| w.weight.get().unwrap_or(0))
                .sum();
            let n: u64 = mine.iter().filter(|h| h.version == *v).map(|h| h.hits).sum();
            json!({
                "version": v,
                "weight": weight,
                "configured_percent": percent(f64::from(weight), f64::from(total_weight)).unwrap_or(0.0),
                "hits": n,
                "observed_percent": percent(n as f64, total as f64),
            })
        })
        .collect();
    json!({"total": total, "versions": list})
}

/// The release state of one service: versions with configured and observed split, the policy
/// (rules, mirror, stickiness), proxies in sync, recent generations.
async fn service(
    admin: &AdminService,
    namespace: &str,
    name: &str,
    window: Duration,
) -> Result<Value, ApiError> {
    let view = admin.mesh().view();
    let key = ServiceKey {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let record = view.services.get(&key).cloned();
    let policy = view.policy_for_service(namespace, name).cloned();
    let graph = admin.graph("", window);
    let prefix = format!("{namespace}/{name}/");
    let in_edges: Vec<_> = graph
        .edges
        .iter()
        .filter(|e| e.destination.starts_with(&prefix))
        .collect();
    if record.is_none() && policy.is_none() && in_edges.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("service {namespace}/{name} is not known: no workloads, policy or traffic"),
        ));
    }

    // Versions: registered ones, the policy's, and any that traffic reached.
    let counts = view.versions(namespace, name);
    let mut versions: std::collections::BTreeSet<String> = counts.keys().cloned().collect();
    if let Some(p) = &policy {
        let spec = &p.policy.spec;
        versions.extend(spec.default.route.iter().map(|w| w.version.clone()));
        versions.extend(
            spec.rules
                .iter()
                .flat_map(|r| r.route.iter().map(|w| w.version.clone())),
        );
        versions.extend(spec.mirror.iter().map(|m| m.version.clone()));
    }
    versions.extend(
        in_edges
            .iter()
            .map(|e| e.destination[prefix.len()..].to_owned()),
    );

    let route = policy
        .as_ref()
        .map(|p| p.policy.spec.default.route.clone())
        .unwrap_or_default();
    let weight_of = |v: &str| -> u32 {
        route
            .iter()
            .filter(|w| w.version == v)
            .map(|w| w.weight.get().unwrap_or(0))
            .sum()
    };
    let total_weight: u32 = route.iter().map(|w| w.weight.get().unwrap_or(0)).sum();
    let ready_versions = counts.values().filter(|c| c.ready > 0).count();
    let primary_rps: f64 = in_edges.iter().filter(|e| !e.mirror).map(|e| e.rps).sum();
    let mirror_rps: f64 = in_edges.iter().filter(|e| e.mirror).map(|e| e.rps).sum();
    let version_list: Vec<Value> = versions
        .iter()
        .map(|v| {
            let c = counts.get(v).copied().unwrap_or_default();
            let primary: Vec<_> = in_edges
                .iter()
                .filter(|e| !e.mirror && e.destination[prefix.len()..] == *v)
                .collect();
            let rps: f64 = primary.iter().map(|e| e.rps).sum();
            let requests: u64 = primary.iter().map(|e| e.requests).sum();
            let errors: f64 = primary
                .iter()
                .map(|e| e.error_rate * e.requests as f64)
                .sum();
            let p99 = primary
                .iter()
                .filter_map(|e| e.p99_ms)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            let mirrored: f64 = in_edges
                .iter()
                .filter(|e| e.mirror && e.destination[prefix.len()..] == *v)
                .map(|e| e.rps)
                .sum();
            // Without a policy the service is balanced over its ready versions.
            let configured = if policy.is_some() {
                percent(f64::from(weight_of(v)), f64::from(total_weight)).unwrap_or(0.0)
            } else if c.ready > 0 {
                100.0 / ready_versions as f64
            } else {
                0.0
            };
            json!({
                "version": v,
                "ready_endpoints": c.ready,
                "total_endpoints": c.total,
                "weight": weight_of(v),
                "configured_percent": configured,
                "observed_percent": percent(rps, primary_rps),
                "rps": rps,
                "error_rate": if requests == 0 { 0.0 } else { errors / requests as f64 },
                "p99_ms_max": p99,
                "mirror_rps": mirrored,
            })
        })
        .collect();

    let proxies: Vec<_> = admin
        .proxies()
        .list()
        .into_iter()
        .filter(|p| p.identity.namespace == namespace && p.identity.service == name)
        .collect();
    let in_sync = proxies.iter().filter(|p| p.in_sync()).count();

    let hits = policy
        .as_ref()
        .map(|p| admin.rule_hits(namespace, &p.policy.metadata.name, p.generation(), window));
    let policy_json = match &policy {
        None => Value::Null,
        Some(p) => {
            let spec = &p.policy.spec;
            let hits = hits.as_deref().unwrap_or_default();
            let history = admin
                .mesh()
                .history(PolicyKey::new(namespace, &p.policy.metadata.name), 8)
                .await
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            json!({
                "name": p.policy.metadata.name,
                "generation": p.generation(),
                "default": spec.default.route,
                "default_hits": route_hits(&spec.default.route, "", hits),
                "rules": spec.rules.iter().map(|r| json!({
                    "name": r.name,
                    "match": r.matches,
                    "route": r.route,
                    "hits": route_hits(&r.route, &r.name, hits),
                })).collect::<Vec<_>>(),
                "mirror": spec.mirror,
                "stickiness": spec.stickiness,
                "history": history.iter().map(|r| json!({
                    "generation": r.generation,
                    "cause": cause_name(r.cause),
                    "time_ms": r.time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                    "restored_generation": r.restored_generation,
                    "default": r.policy.policy.spec.default.route,
                })).collect::<Vec<_>>(),
            })
        }
    };
    let rule_hits = match (&policy, &hits) {
        (Some(p), Some(hits)) => json!({
            "available": true,
            "generation": p.generation(),
            "total": hits.iter().map(|h| h.hits).sum::<u64>(),
        }),
        _ => json!({
            "available": false,
            "reason": "no traffic policy: requests are balanced over the ready versions, no rule \
                       or split chooses",
        }),
    };
    Ok(json!({
        "namespace": namespace,
        "service": name,
        "window_seconds": graph.window_seconds,
        "registered": record.is_some(),
        "vip": record.as_ref().and_then(|r| r.vips.first()).map(ToString::to_string),
        "policy": policy_json,
        "rule_hits": rule_hits,
        "observed_rps": primary_rps,
        "mirror_observed_rps": mirror_rps,
        "versions": version_list,
        "proxies": {
            "total": proxies.len(),
            "in_sync": in_sync,
            "list": proxies.iter().map(|p| json!({
                "pod": p.identity.pod_name,
                "version": p.identity.version,
                "in_sync": p.in_sync(),
                "acked_version": p.acked_version,
                "sent_version": p.sent_version,
                "nack": p.nack.as_ref().map(|n| n.errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect::<Vec<_>>().join("; ")),
            })).collect::<Vec<_>>(),
        },
    }))
}

#[derive(Debug, Deserialize)]
struct WeightsBody {
    weights: Vec<WeightEntry>,
    #[serde(default)]
    if_generation: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct WeightEntry {
    version: String,
    weight: u32,
}

#[derive(Debug, Deserialize)]
struct PromoteBody {
    version: String,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    if_generation: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct RollbackBody {
    #[serde(default)]
    to_generation: Option<u64>,
    #[serde(default)]
    if_generation: Option<u64>,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

/// What a change answers: the stored policy's generation and default route, and warnings.
fn changed(
    policy: Option<v1::TrafficPolicy>,
    warnings: &[v1::PolicyWarning],
) -> Result<Value, ApiError> {
    let policy = policy.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the change returned no policy",
        )
    })?;
    let generation = policy.metadata.as_ref().map_or(0, |m| m.generation);
    let draft = PolicyDraft::try_from(policy)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(json!({
        "policy": draft.policy.metadata.name,
        "generation": generation,
        "default": draft.policy.spec.default.route,
        "warnings": warnings.iter().map(|w| json!({"field": w.field, "message": w.message})).collect::<Vec<_>>(),
    }))
}

/// Answers a POST under `/api/`: the admin rpcs, through the gRPC service's own code.
pub async fn post(
    admin: &AdminService,
    path: &str,
    query: &Query,
    bytes: &Bytes,
) -> Result<Value, ApiError> {
    let namespace = query.namespace();
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no API at POST {path}: try /api/services/NAME/weights, /promote or /rollback"),
        )
    };
    let Some((service, Some(action))) = service_path(path) else {
        return Err(not_found());
    };
    let service = service.to_owned();
    match action {
        "weights" => {
            let b: WeightsBody = body(bytes)?;
            let r = admin
                .set_weights(Request::new(v1::SetWeightsRequest {
                    namespace,
                    service,
                    weights: b
                        .weights
                        .into_iter()
                        .map(|w| v1::VersionWeight {
                            version: w.version,
                            weight: w.weight,
                        })
                        .collect(),
                    if_generation: b.if_generation,
                }))
                .await?
                .into_inner();
            changed(r.policy, &r.warnings)
        }
        "promote" => {
            let b: PromoteBody = body(bytes)?;
            let r = admin
                .promote(Request::new(v1::PromoteRequest {
                    namespace,
                    service,
                    version: b.version,
                    if_generation: b.if_generation,
                    force: b.force,
                }))
                .await?
                .into_inner();
            changed(r.policy, &r.warnings)
        }
        "rollback" => {
            let b: RollbackBody = if bytes.is_empty() {
                RollbackBody::default()
            } else {
                body(bytes)?
            };
            let r = admin
                .rollback(Request::new(v1::RollbackRequest {
                    namespace,
                    service,
                    to_generation: b.to_generation,
                    if_generation: b.if_generation,
                }))
                .await?
                .into_inner();
            let mut v = changed(r.policy, &r.warnings)?;
            v["restored_generation"] = json!(r.restored_generation);
            Ok(v)
        }
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_windows_parse() {
        crate::test_tracing();
        let q = Query::parse("window=1m&namespace=shop%2Dx&x=a+b");
        assert_eq!(q.get("x"), Some("a b"));
        assert_eq!(q.namespace(), "shop-x");
        assert_eq!(q.window().unwrap(), Duration::from_secs(60));
        assert_eq!(Query::parse("").window().unwrap(), DEFAULT_WINDOW);
        assert_eq!(parse_window("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_window("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_window("11m"), None);
        assert_eq!(parse_window("0s"), None);
        assert!(Query::parse("window=soon").window().is_err());
        assert_eq!(decode("%"), "%");
        assert_eq!(decode("a%2"), "a%2");
    }

    #[test]
    fn service_paths_name_the_service_and_action() {
        crate::test_tracing();
        assert_eq!(
            service_path("/api/services/reviews"),
            Some(("reviews", None))
        );
        assert_eq!(
            service_path("/api/services/reviews/weights"),
            Some(("reviews", Some("weights")))
        );
        assert_eq!(service_path("/api/services/"), None);
        assert_eq!(service_path("/api/services/a/b/c"), None);
    }
}
