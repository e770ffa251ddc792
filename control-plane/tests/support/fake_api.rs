//! A fake Kubernetes API server on loopback (plain HTTP), shared by the Kubernetes-mode tests of
//! serin-control (`tests/kubernetes.rs`) and serinctl (`cli/tests/serinctl/cluster.rs`, through
//! `#[path]`): lists and chunked watch streams of Services, EndpointSlices, Pods,
//! TrafficPolicies, Namespaces and ConfigMaps (all or one namespace's, with a
//! `metadata.name=` field selector) with resourceVersions, the test driving what it says
//! (events, watches that end or expire with 410 Gone); GET/POST/PUT/DELETE of TrafficPolicy
//! objects as the API server answers them; merge-patched status; GET and merge PATCH of
//! Namespaces and ConfigMaps, POST of ConfigMaps; TokenReviews of the tokens the test issued;
//! every request and write recorded.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::broadcast;

pub const SERVICES: &str = "/api/v1/services";
pub const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
pub const PODS: &str = "/api/v1/pods";
pub const POLICIES: &str = "/apis/serin.io/v1/trafficpolicies";
pub const NAMESPACES: &str = "/api/v1/namespaces";
/// Every ConfigMap; a namespace's are served at `/api/v1/namespaces/NS/configmaps`.
pub const CONFIGMAPS: &str = "/api/v1/configmaps";
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// A service-account token the fake API server authenticates.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub audiences: Vec<String>,
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
}

/// What the fake API server holds.
#[derive(Default)]
pub struct State {
    pub resource_version: u64,
    /// Objects by collection path, then by namespace/name.
    pub items: HashMap<&'static str, BTreeMap<String, Value>>,
    /// Every event sent, for watches that resume from an older resourceVersion.
    pub log: Vec<(u64, &'static str, Bytes)>,
    /// Every request, `path?query`.
    pub requests: Vec<String>,
    /// Every status patch: (namespace/name, body).
    pub patches: Vec<(String, Value)>,
    /// Every write of a TrafficPolicy object: (method, namespace/name, body).
    pub writes: Vec<(String, String, Value)>,
    /// Every write of a Namespace or ConfigMap: (method, path, body).
    pub core_writes: Vec<(String, String, Value)>,
    /// The next PUT loses a race: another writer changes the object first, and the PUT gets
    /// 409 Conflict.
    pub race_next_put: bool,
    /// The tokens it authenticates.
    pub tokens: HashMap<String, IssuedToken>,
    /// Every TokenReview POSTed (its body).
    pub token_reviews: Vec<Value>,
}

#[derive(Clone, Debug)]
pub enum Live {
    Event(u64, &'static str, Bytes),
    /// Every open watch ends (as when the API server's timeout passes).
    End,
    /// Every open watch gets 410 Gone (its resourceVersion is too old) and ends.
    Expire,
}

#[derive(Clone)]
pub struct FakeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    pub live: broadcast::Sender<Live>,
}

pub fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap()
    )
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (live, _) = broadcast::channel(256);
        let fake = FakeApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State::default())),
            live,
        };
        for path in [SERVICES, SLICES, PODS, POLICIES, NAMESPACES, CONFIGMAPS] {
            fake.state
                .lock()
                .unwrap()
                .items
                .insert(path, BTreeMap::new());
        }
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let server = server.clone();
                        async move {
                            if let Some(object) =
                                core_object_path(req.method().as_str(), req.uri().path())
                            {
                                let method = req.method().to_string();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                return Ok::<_, Infallible>(
                                    server.core_object(&method, &object, &body),
                                );
                            }
                            let object_path = req
                                .uri()
                                .path()
                                .starts_with("/apis/serin.io/v1/namespaces/");
                            if object_path && req.method() != hyper::Method::PATCH {
                                let method = req.method().to_string();
                                let path = req.uri().path().to_owned();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                return Ok::<_, Infallible>(server.object(&method, &path, &body));
                            }
                            if req.uri().path() == TOKEN_REVIEWS
                                && req.method() == hyper::Method::POST
                            {
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                return Ok::<_, Infallible>(server.token_review(&body));
                            }
                            if req.method() == hyper::Method::PATCH {
                                let path = req.uri().path().to_owned();
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                return Ok::<_, Infallible>(server.patch_status(&path, &body));
                            }
                            Ok::<_, Infallible>(server.handle(&req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        fake
    }

    pub fn handle(
        &self,
        req: &Request<hyper::body::Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let mut state = self.state.lock().unwrap();
        state.requests.push(format!("{path}?{query}"));
        // A namespace's ConfigMaps, and objects picked by name: a filter on the collection.
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (path, namespace) = match parts[..] {
            ["api", "v1", "namespaces", ns, "configmaps"] => {
                (CONFIGMAPS.to_owned(), Some(ns.to_owned()))
            }
            _ => (path.clone(), None),
        };
        let name = params
            .get("fieldSelector")
            .map(|f| f.replace("%3D", "=").replace("%3d", "="))
            .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_owned));
        let selects = move |object: &Value| {
            namespace
                .as_deref()
                .is_none_or(|ns| object["metadata"]["namespace"] == ns)
                && name
                    .as_deref()
                    .is_none_or(|n| object["metadata"]["name"] == n)
        };
        let selects_line = {
            let selects = selects.clone();
            move |line: &Bytes| {
                serde_json::from_slice::<Value>(line).is_ok_and(|event| selects(&event["object"]))
            }
        };
        let Some((&collection, items)) = state.items.get_key_value(path.as_str()) else {
            return json_response(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            );
        };
        if params
            .get("watch")
            .is_some_and(|w| *w == "true" || *w == "1")
        {
            let since: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Subscribe first, then replay what the log has after `since`: nothing is missed.
            let live = self.live.subscribe();
            let replay: Vec<Bytes> = state
                .log
                .iter()
                .filter(|(rv, p, line)| *rv > since && *p == collection && selects_line(line))
                .map(|(_, _, line)| line.clone())
                .collect();
            let replayed_up_to = state.resource_version;
            let live = tokio_stream::wrappers::BroadcastStream::new(live)
                .filter_map(|m| async move { m.ok() })
                .take_while(|m| {
                    let go_on = !matches!(m, Live::End);
                    async move { go_on }
                })
                .scan(false, move |expired, m| {
                    let out = if *expired {
                        None
                    } else if let Live::Expire = m {
                        *expired = true;
                        Some(Some(Bytes::from_static(b"{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"too old resource version\",\"reason\":\"Expired\",\"code\":410}}\n")))
                    } else if let Live::Event(rv, p, line) = m {
                        Some(
                            (p == collection && rv > replayed_up_to && selects_line(&line))
                                .then_some(line),
                        )
                    } else {
                        Some(None)
                    };
                    async move { out }
                })
                .filter_map(|line| async move { line });
            let body = futures::stream::iter(replay)
                .chain(live)
                .map(|line| Ok::<_, Infallible>(Frame::data(line)));
            return Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(body)))
                .unwrap();
        }
        let list_kind = match collection {
            SERVICES => "ServiceList",
            SLICES => "EndpointSliceList",
            NAMESPACES => "NamespaceList",
            CONFIGMAPS => "ConfigMapList",
            _ => "PodList",
        };
        let api_version = if collection == SLICES {
            "discovery.k8s.io/v1"
        } else {
            "v1"
        };
        json_response(
            200,
            &json!({
                "apiVersion": api_version,
                "kind": list_kind,
                "metadata": {"resourceVersion": state.resource_version.to_string()},
                "items": items.values().filter(|o| selects(o)).cloned().collect::<Vec<_>>(),
            }),
        )
    }

    /// Stores `object` (a new resourceVersion) and sends the event to open watches, if `tell`.
    pub fn change(&self, collection: &'static str, kind: &str, mut object: Value, tell: bool) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let items = state.items.get_mut(collection).unwrap();
        // Status is a subresource: writing the object keeps the status it has.
        if collection == POLICIES
            && object.get("status").is_none()
            && let Some(status) = items.get(&key).and_then(|o| o.get("status"))
        {
            object["status"] = status.clone();
        }
        let event_type = match kind {
            "DELETED" => {
                items.remove(&key);
                "DELETED"
            }
            _ if items.insert(key, object.clone()).is_some() => "MODIFIED",
            _ => "ADDED",
        };
        if !tell {
            return;
        }
        let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap();
        line.push(b'\n');
        let line = Bytes::from(line);
        state.log.push((rv, collection, line.clone()));
        let _ = self.live.send(Live::Event(rv, collection, line));
    }

    /// `PATCH .../namespaces/NS/trafficpolicies/NAME/status` with a merge patch: the status is
    /// merged into the stored object, which is sent to the watches as MODIFIED.
    pub fn patch_status(&self, path: &str, body: &[u8]) -> Response<BoxBody<Bytes, Infallible>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [
            "apis",
            "serin.io",
            "v1",
            "namespaces",
            ns,
            "trafficpolicies",
            name,
            "status",
        ] = parts[..]
        else {
            return json_response(
                404,
                &json!({"kind": "Status", "apiVersion": "v1", "code": 404}),
            );
        };
        let patch: Value = serde_json::from_slice(body).unwrap();
        let key = format!("{ns}/{name}");
        let mut object = {
            let mut state = self.state.lock().unwrap();
            state.patches.push((key.clone(), patch.clone()));
            state.items[POLICIES]
                .get(&key)
                .cloned()
                .expect("a stored policy")
        };
        // A JSON merge patch (RFC 7386), as the API server applies it.
        if object.get("status").is_none() {
            object["status"] = json!({});
        }
        json_patch::merge(&mut object["status"], &patch["status"]);
        self.apply(POLICIES, object.clone());
        json_response(200, &object)
    }

    /// GET, POST, PUT and DELETE of TrafficPolicy objects, as the API server answers them:
    /// `metadata.generation` 1 on create and +1 on each spec change, resourceVersion checked on
    /// replace and delete (409 Conflict), 409 AlreadyExists on a second create, status kept.
    pub fn object(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (ns, name) = match parts[..] {
            [
                "apis",
                "serin.io",
                "v1",
                "namespaces",
                ns,
                "trafficpolicies",
            ] => (ns, None),
            [
                "apis",
                "serin.io",
                "v1",
                "namespaces",
                ns,
                "trafficpolicies",
                name,
            ] => (ns, Some(name)),
            _ => return status(404, "NotFound", "no such path"),
        };
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).unwrap()
        };
        let key = format!(
            "{ns}/{}",
            name.unwrap_or_else(|| body["metadata"]["name"].as_str().unwrap_or(""))
        );
        let (stored, race) = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(format!("{method} {path}"));
            if method != "GET" {
                state
                    .writes
                    .push((method.to_owned(), key.clone(), body.clone()));
            }
            let race = method == "PUT" && std::mem::take(&mut state.race_next_put);
            (state.items[POLICIES].get(&key).cloned(), race)
        };
        match (method, stored) {
            ("GET", Some(object)) => json_response(200, &object),
            ("GET" | "PUT" | "DELETE", None) => {
                status(404, "NotFound", &format!("{key} not found"))
            }
            ("POST", Some(_)) => status(409, "AlreadyExists", &format!("{key} already exists")),
            ("POST", None) => {
                let mut object = body;
                object["metadata"]["generation"] = json!(1);
                object["metadata"]["uid"] = json!(format!("uid-{key}"));
                object["metadata"]["creationTimestamp"] = json!("2026-11-26T12:00:00Z");
                self.apply(POLICIES, object);
                json_response(201, &self.stored(&key))
            }
            ("PUT", Some(old)) => {
                if race {
                    let mut other = old;
                    other["metadata"]["labels"] = json!({"touched-by": "another-writer"});
                    self.apply(POLICIES, other);
                }
                let current = self.stored(&key);
                if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(
                        409,
                        "Conflict",
                        &format!("the object {key} has been modified"),
                    );
                }
                let mut object = body;
                let bump = i64::from(object["spec"] != current["spec"]);
                object["metadata"]["generation"] =
                    json!(current["metadata"]["generation"].as_i64().unwrap_or(0) + bump);
                object["metadata"]["uid"] = current["metadata"]["uid"].clone();
                object["metadata"]["creationTimestamp"] =
                    current["metadata"]["creationTimestamp"].clone();
                self.apply(POLICIES, object);
                json_response(200, &self.stored(&key))
            }
            ("DELETE", Some(old)) => {
                let wanted = &body["preconditions"]["resourceVersion"];
                if !wanted.is_null() && *wanted != old["metadata"]["resourceVersion"] {
                    return status(
                        409,
                        "Conflict",
                        &format!("the object {key} has been modified"),
                    );
                }
                self.change(POLICIES, "DELETED", old.clone(), true);
                json_response(200, &old)
            }
            _ => status(405, "MethodNotAllowed", method),
        }
    }

    /// GET and merge PATCH of a Namespace or ConfigMap, POST of a ConfigMap, as the API server
    /// answers them: 404 for a missing object, 409 AlreadyExists on a second create; the change
    /// goes to the watches.
    pub fn core_object(
        &self,
        method: &str,
        object: &CoreObject,
        body: &[u8],
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &format!("the body is no JSON: {e}")),
            }
        };
        let (collection, key, path) = match object {
            CoreObject::Namespace(name) => (
                NAMESPACES,
                format!("/{name}"),
                format!("{NAMESPACES}/{name}"),
            ),
            CoreObject::ConfigMaps(ns) => {
                let name = body["metadata"]["name"].as_str().unwrap_or("");
                (
                    CONFIGMAPS,
                    format!("{ns}/{name}"),
                    format!("/api/v1/namespaces/{ns}/configmaps"),
                )
            }
            CoreObject::ConfigMap(ns, name) => (
                CONFIGMAPS,
                format!("{ns}/{name}"),
                format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
            ),
        };
        let stored = {
            let mut state = self.state.lock().unwrap();
            state.requests.push(format!("{method} {path}"));
            if method != "GET" {
                state
                    .core_writes
                    .push((method.to_owned(), path, body.clone()));
            }
            state.items[collection].get(&key).cloned()
        };
        match (method, object, stored) {
            ("GET", CoreObject::Namespace(_) | CoreObject::ConfigMap(..), Some(o)) => {
                json_response(200, &o)
            }
            ("PATCH", CoreObject::Namespace(_) | CoreObject::ConfigMap(..), Some(mut o)) => {
                // A JSON merge patch (RFC 7386): null removes a key.
                json_patch::merge(&mut o, &body);
                self.apply(collection, o);
                json_response(200, &self.stored_in(collection, &key))
            }
            ("GET" | "PATCH", _, None) => status(404, "NotFound", &format!("{key} not found")),
            ("POST", CoreObject::ConfigMaps(ns), None) => {
                let mut o = body;
                o["metadata"]["namespace"] = json!(ns);
                o["metadata"]["uid"] = json!(format!("uid-{key}"));
                self.apply(collection, o);
                json_response(201, &self.stored_in(collection, &key))
            }
            ("POST", CoreObject::ConfigMaps(_), Some(_)) => {
                status(409, "AlreadyExists", &format!("{key} already exists"))
            }
            _ => status(405, "MethodNotAllowed", method),
        }
    }

    /// The Namespace and ConfigMap writes so far: (method, path, body).
    pub fn core_writes(&self) -> Vec<(String, String, Value)> {
        self.state.lock().unwrap().core_writes.clone()
    }

    /// The stored object `key` (namespace/name; `/name` for a cluster-scoped one) of `collection`.
    pub fn stored_in(&self, collection: &str, key: &str) -> Value {
        self.state.lock().unwrap().items[collection][key].clone()
    }

    /// Issues a token for `namespace/service_account`, bound to `pod_name`, for `audiences`.
    pub fn issue_token(
        &self,
        token: &str,
        audiences: &[&str],
        namespace: &str,
        service_account: &str,
        pod_name: &str,
    ) {
        self.state.lock().unwrap().tokens.insert(
            token.to_owned(),
            IssuedToken {
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                pod_name: pod_name.to_owned(),
            },
        );
    }

    /// A TokenReview as the API server answers it: authenticated when the token was issued for
    /// one of the audiences asked for (the API server's default audience when none is asked).
    pub fn token_review(&self, body: &[u8]) -> Response<BoxBody<Bytes, Infallible>> {
        let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
            return status(400, "BadRequest", "the body is no JSON");
        };
        let mut state = self.state.lock().unwrap();
        state.requests.push(TOKEN_REVIEWS.to_owned());
        state.token_reviews.push(review.clone());
        let token = review["spec"]["token"].as_str().unwrap_or("").to_owned();
        let wanted: Vec<String> = review["spec"]["audiences"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_else(|| vec!["https://kubernetes.default.svc".to_owned()]);
        review["status"] = match state.tokens.get(&token) {
            None => {
                json!({"authenticated": false, "user": {}, "error": "[invalid bearer token, token lookup failed]"})
            }
            Some(t) if !t.audiences.iter().any(|a| wanted.contains(a)) => json!({
                "authenticated": false, "user": {},
                "error": format!("[invalid bearer token, token audiences {:?} is invalid for the target audiences {:?}]", t.audiences, wanted)}),
            Some(t) => json!({
                "authenticated": true,
                "audiences": wanted,
                "user": {
                    "username": format!("system:serviceaccount:{}:{}", t.namespace, t.service_account),
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", t.namespace), "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": [t.pod_name]}}}),
        };
        json_response(201, &review)
    }

    pub fn stored(&self, key: &str) -> Value {
        self.state.lock().unwrap().items[POLICIES][key].clone()
    }

    /// The writes of TrafficPolicy objects so far: (method, namespace/name, body).
    pub fn writes(&self) -> Vec<(String, String, Value)> {
        self.state.lock().unwrap().writes.clone()
    }

    pub fn patches(&self, key: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .patches
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, p)| p.clone())
            .collect()
    }

    pub fn apply(&self, collection: &'static str, object: Value) {
        self.change(collection, "APPLY", object, true);
    }

    pub fn requests(&self, what: impl Fn(&str) -> bool) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| what(r))
            .count()
    }
}

/// A Namespace or ConfigMap path that names an object (or, for POST, the ConfigMaps of a
/// namespace).
#[derive(Debug, Clone)]
pub enum CoreObject {
    /// `/api/v1/namespaces/NAME`.
    Namespace(String),
    /// `/api/v1/namespaces/NS/configmaps` (POST creates one; GET lists, in `handle`).
    ConfigMaps(String),
    /// `/api/v1/namespaces/NS/configmaps/NAME`.
    ConfigMap(String, String),
}

/// The Namespace or ConfigMap object `method` on `path` is about; `None` for lists and watches
/// (GET of a collection) and every other path.
pub fn core_object_path(method: &str, path: &str) -> Option<CoreObject> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts[..] {
        ["api", "v1", "namespaces", ns, "configmaps"] if method == "POST" => {
            Some(CoreObject::ConfigMaps(ns.to_owned()))
        }
        ["api", "v1", "namespaces", name] => Some(CoreObject::Namespace(name.to_owned())),
        ["api", "v1", "namespaces", ns, "configmaps", name] => {
            Some(CoreObject::ConfigMap(ns.to_owned(), name.to_owned()))
        }
        _ => None,
    }
}

pub fn status(code: u16, reason: &str, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "reason": reason, "message": message, "code": code}),
    )
}

pub fn json_response(code: u16, value: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .unwrap()
}

pub fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}})
}

/// A Namespace with these annotations.
pub fn namespace(name: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "uid": format!("uid-ns-{name}"), "annotations": annotations}})
}

/// The ConfigMap `serin-mesh` of `namespace` with this `mtls` value.
pub fn mesh_configmap(namespace: &str, mtls: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "serin-mesh", "namespace": namespace, "uid": "uid-serin-mesh"},
           "data": {"mtls": mtls}})
}

pub fn pod(name: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews", "version": version}},
           "spec": {"containers": [{"name": "app", "image": "reviews"}]}})
}

/// The EndpointSlice of `reviews` with these (pod, address, ready) endpoints.
pub fn slice(endpoints: &[(&str, &str, bool)]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "reviews-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "reviews"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
           "endpoints": endpoints.iter().map(|(pod, ip, ready)| json!({
               "addresses": [ip], "conditions": {"ready": ready},
               "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})).collect::<Vec<_>>()})
}

pub fn policy(name: &str, generation: i64, weight: i64) -> Value {
    json!({"apiVersion": "serin.io/v1", "kind": "TrafficPolicy",
           "metadata": {"name": name, "namespace": "shop", "generation": generation, "uid": format!("uid-{name}")},
           "spec": {"service": name, "default": {"route": [{"version": "v1", "weight": weight}]}}})
}
