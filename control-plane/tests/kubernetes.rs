//! The registry from the API server against a fake API server on loopback: kube-rs lists and
//! watches Services, EndpointSlices and Pods over plain HTTP on 127.0.0.1, and the test drives
//! what the "API server" says: events, a watch that ends (resumed from its resourceVersion), and
//! a watch that expires (410 Gone: listed again, and what changed unseen is picked up).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use serin_control::kubernetes::cluster::ClusterView;
use serin_control::kubernetes::watch::ClusterRegistry;
use serin_control::model::ServiceKey;
use tokio::sync::broadcast;

const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const PODS: &str = "/api/v1/pods";
const POLICIES: &str = "/apis/serin.io/v1/trafficpolicies";

fn tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug,hyper=info,kube_client=info")
        .try_init();
}

/// What the fake API server holds.
#[derive(Default)]
struct State {
    resource_version: u64,
    /// Objects by collection path, then by namespace/name.
    items: HashMap<&'static str, BTreeMap<String, Value>>,
    /// Every event sent, for watches that resume from an older resourceVersion.
    log: Vec<(u64, &'static str, Bytes)>,
    /// Every request, `path?query`.
    requests: Vec<String>,
    /// Every status patch: (namespace/name, body).
    patches: Vec<(String, Value)>,
}

#[derive(Clone, Debug)]
enum Live {
    Event(u64, &'static str, Bytes),
    /// Every open watch ends (as when the API server's timeout passes).
    End,
    /// Every open watch gets 410 Gone (its resourceVersion is too old) and ends.
    Expire,
}

#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    live: broadcast::Sender<Live>,
}

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap()
    )
}

impl FakeApi {
    async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (live, _) = broadcast::channel(256);
        let fake = FakeApi {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State::default())),
            live,
        };
        for path in [SERVICES, SLICES, PODS, POLICIES] {
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

    fn handle(&self, req: &Request<hyper::body::Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let params: HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let mut state = self.state.lock().unwrap();
        state.requests.push(format!("{path}?{query}"));
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
                .filter(|(rv, p, _)| *rv > since && *p == collection)
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
                        Some((p == collection && rv > replayed_up_to).then_some(line))
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
                "items": items.values().cloned().collect::<Vec<_>>(),
            }),
        )
    }

    /// Stores `object` (a new resourceVersion) and sends the event to open watches, if `tell`.
    fn change(&self, collection: &'static str, kind: &str, mut object: Value, tell: bool) {
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
    fn patch_status(&self, path: &str, body: &[u8]) -> Response<BoxBody<Bytes, Infallible>> {
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
        object["status"] = patch["status"].clone();
        self.apply(POLICIES, object.clone());
        json_response(200, &object)
    }

    fn patches(&self, key: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state
            .patches
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn apply(&self, collection: &'static str, object: Value) {
        self.change(collection, "APPLY", object, true);
    }

    fn requests(&self, what: impl Fn(&str) -> bool) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| what(r))
            .count()
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

fn json_response(code: u16, value: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .unwrap()
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 9080, "targetPort": 9080}]}})
}

fn pod(name: &str, version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "labels": {"app": "reviews", "version": version}},
           "spec": {"containers": [{"name": "app", "image": "reviews"}]}})
}

/// The EndpointSlice of `reviews` with these (pod, address, ready) endpoints.
fn slice(endpoints: &[(&str, &str, bool)]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "reviews-abcde", "namespace": "shop", "labels": {"kubernetes.io/service-name": "reviews"}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
           "endpoints": endpoints.iter().map(|(pod, ip, ready)| json!({
               "addresses": [ip], "conditions": {"ready": ready},
               "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})).collect::<Vec<_>>()})
}

/// Waits (up to 20 s) until the view passes `check`.
async fn until(
    view: &mut tokio::sync::watch::Receiver<Arc<ClusterView>>,
    what: &str,
    check: impl Fn(&ClusterView) -> bool,
) {
    let reached = tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| check(v)))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "timed out waiting for {what}; the view is {:#?}",
        *view.borrow()
    );
}

fn versions(view: &ClusterView) -> Vec<(String, bool)> {
    let key = ServiceKey {
        namespace: "shop".into(),
        name: "reviews".into(),
    };
    view.endpoints
        .get(&key)
        .map(|eps| eps.iter().map(|e| (e.version.clone(), e.ready)).collect())
        .unwrap_or_default()
}

/// Polls (up to 20 s) until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_registry_follows_the_api_server_through_watch_restarts() {
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    fake.apply(PODS, pod("reviews-v1-a", "v1"));
    fake.apply(SLICES, slice(&[("reviews-v1-a", "10.244.0.7", true)]));

    let registry = ClusterRegistry::start(&fake.client(), Duration::from_millis(5));
    let mut view = registry.watch();
    until(&mut view, "the listed state", |v| {
        versions(v) == [("v1".to_owned(), true)]
    })
    .await;
    let reviews = ServiceKey {
        namespace: "shop".into(),
        name: "reviews".into(),
    };
    assert_eq!(
        view.borrow().services[&reviews].vips,
        ["10.96.0.10".parse::<std::net::IpAddr>().unwrap()]
    );

    // Events on the open watches: a v2 pod and its endpoint, not ready yet, then ready.
    eventually("three watches open", || {
        fake.requests(|r| r.contains("watch=true")) >= 3
    })
    .await;
    fake.apply(PODS, pod("reviews-v2-b", "v2"));
    fake.apply(
        SLICES,
        slice(&[
            ("reviews-v1-a", "10.244.0.7", true),
            ("reviews-v2-b", "10.244.0.8", false),
        ]),
    );
    until(&mut view, "v2 not ready", |v| {
        versions(v) == [("v1".to_owned(), true), ("v2".to_owned(), false)]
    })
    .await;
    fake.apply(
        SLICES,
        slice(&[
            ("reviews-v1-a", "10.244.0.7", true),
            ("reviews-v2-b", "10.244.0.8", true),
        ]),
    );
    until(&mut view, "v2 ready", |v| {
        versions(v) == [("v1".to_owned(), true), ("v2".to_owned(), true)]
    })
    .await;

    // Every watch ends: they resume from their resourceVersion, without listing again, and a
    // change made while they were away arrives.
    let lists = fake.requests(|r| !r.contains("watch=true"));
    let watches = fake.requests(|r| r.contains("watch=true"));
    let _ = fake.live.send(Live::End);
    fake.apply(SLICES, slice(&[("reviews-v2-b", "10.244.0.8", true)]));
    until(&mut view, "v1 gone after the watch restart", |v| {
        versions(v) == [("v2".to_owned(), true)]
    })
    .await;
    eventually("three new watches", || {
        fake.requests(|r| r.contains("watch=true")) >= watches + 3
    })
    .await;
    assert_eq!(
        fake.requests(|r| !r.contains("watch=true")),
        lists,
        "a resumed watch lists nothing"
    );
    let resumed = fake
        .state
        .lock()
        .unwrap()
        .requests
        .iter()
        .rev()
        .find(|r| r.starts_with(SLICES) && r.contains("watch=true"))
        .cloned()
        .unwrap();
    assert!(
        resumed.contains("resourceVersion=") && !resumed.contains("resourceVersion=0&"),
        "{resumed}"
    );

    // The watches expire (410 Gone) while a Service was deleted without an event reaching them:
    // the watchers list again, and the view loses the Service.
    fake.change(SERVICES, "DELETED", service("reviews", "10.96.0.10"), false);
    fake.apply(SERVICES, service("ratings", "10.96.0.11"));
    until(&mut view, "ratings added", |v| v.services.len() == 2).await;
    let _ = fake.live.send(Live::Expire);
    until(&mut view, "reviews gone after the re-list", |v| {
        v.services
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            == ["ratings"]
    })
    .await;
    assert!(
        fake.requests(|r| !r.contains("watch=true")) > lists,
        "410 Gone lists again"
    );
    drop(registry);
}

fn policy(name: &str, generation: i64, weight: i64) -> Value {
    json!({"apiVersion": "serin.io/v1", "kind": "TrafficPolicy",
           "metadata": {"name": name, "namespace": "shop", "generation": generation, "uid": format!("uid-{name}")},
           "spec": {"service": name, "default": {"route": [{"version": "v1", "weight": weight}]}}})
}

#[tokio::test]
async fn traffic_policies_are_read_validated_and_given_a_status() {
    use serin_control::kubernetes::policies::{ClusterPolicies, PolicyWatcher};
    use serin_control::model::PolicyKey;
    tracing();
    let fake = FakeApi::start().await;
    fake.apply(POLICIES, policy("reviews", 1, 100));
    fake.apply(POLICIES, policy("ratings", 1, -5));
    let watcher = PolicyWatcher::start(&fake.client(), Duration::from_millis(5));
    let mut view = watcher.watch();
    let state = |v: &ClusterPolicies, name: &str| {
        v.by_key
            .get(&PolicyKey::new("shop", name))
            .map(|p| (p.generation, p.policy.clone().err()))
    };
    let wait = |view: &mut tokio::sync::watch::Receiver<Arc<ClusterPolicies>>,
                what: &'static str,
                check: Box<dyn Fn(&ClusterPolicies) -> bool + Send + Sync>| {
        let mut view = view.clone();
        async move {
            let reached =
                tokio::time::timeout(Duration::from_secs(20), view.wait_for(|v| check(v)))
                    .await
                    .is_ok_and(|r| r.is_ok());
            assert!(
                reached,
                "timed out waiting for {what}: {:#?}",
                *view.borrow()
            );
        }
    };
    wait(
        &mut view,
        "both policies",
        Box::new(move |v| v.by_key.len() == 2),
    )
    .await;
    assert_eq!(state(&view.borrow(), "reviews"), Some((1, None)));
    let (generation, error) = state(&view.borrow(), "ratings").unwrap();
    assert_eq!(generation, 1);
    assert!(
        error.as_deref().is_some_and(|e| e.contains("weight")),
        "{error:?}"
    );

    // The status says what the control plane made of each object.
    eventually("both statuses written", || {
        !fake.patches("shop/reviews").is_empty() && !fake.patches("shop/ratings").is_empty()
    })
    .await;
    assert_eq!(
        fake.patches("shop/reviews")[0],
        json!({"status": {"observedGeneration": 1, "lastError": ""}})
    );
    let ratings_status = &fake.patches("shop/ratings")[0]["status"];
    assert_eq!(ratings_status["observedGeneration"], 1);
    assert!(
        ratings_status["lastError"]
            .as_str()
            .unwrap()
            .contains("weight"),
        "{ratings_status}"
    );

    // A fix (generation 2) clears the error; the status follows.
    fake.apply(POLICIES, policy("ratings", 2, 100));
    wait(
        &mut view,
        "ratings fixed",
        Box::new(move |v| state(v, "ratings") == Some((2, None))),
    )
    .await;
    eventually("the fixed status", || {
        fake.patches("shop/ratings").len() == 2
    })
    .await;
    assert_eq!(
        fake.patches("shop/ratings")[1],
        json!({"status": {"observedGeneration": 2, "lastError": ""}})
    );

    // The watch ends and a policy is deleted meanwhile: the resumed watch removes it. A status
    // already right is never written again (no write loop through our own MODIFIED events).
    let _ = fake.live.send(Live::End);
    fake.change(POLICIES, "DELETED", policy("ratings", 2, 100), true);
    fake.apply(POLICIES, policy("details", 1, 100));
    wait(
        &mut view,
        "ratings gone, details there",
        Box::new(move |v| {
            v.by_key.keys().map(|k| k.name.as_str()).collect::<Vec<_>>() == ["details", "reviews"]
        }),
    )
    .await;
    eventually("the details status", || {
        fake.patches("shop/details").len() == 1
    })
    .await;
    assert_eq!(
        fake.patches("shop/reviews").len(),
        1,
        "reviews' status was right: not written again"
    );
    drop(watcher);
}
