//! In-process tests of routing by traffic policy through one proxy on loopback: header rules,
//! weighted splits, per-stream decisions on HTTP/2, fallback to a ready version, mirroring (the
//! copy's host and marker header, a hanging mirror that must not touch the primary, bodies over
//! the limit) and retries of idempotent requests.

#[path = "support/harness.rs"]
mod harness;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use harness::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serin_proxy::config::ProxySettings;

/// A server that answers every request with its version's name.
async fn version_server(version: &'static str) -> Server {
    http_server(move |req: Request<Incoming>| async move {
        // Read the body so that uploads complete.
        let _ = req.into_body().collect().await;
        Response::new(full(version))
    })
    .await
}

/// What a mirror-version server saw: each request's host, marker header and body.
type Seen = Arc<Mutex<Vec<(String, String, Bytes)>>>;

async fn recording_server(version: &'static str) -> (Server, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let server = http_server(move |req: Request<Incoming>| {
        let s = Arc::clone(&s);
        async move {
            let header = |name: &str| {
                req.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            let (host, marker) = (header("host"), header("x-serin-mirror"));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            s.lock().unwrap().push((host, marker, body));
            Response::new(full(version))
        }
    })
    .await;
    (server, seen)
}

/// A server that accepts requests and never answers.
async fn hanging_server() -> Server {
    http_server(|_req: Request<Incoming>| async move {
        std::future::pending::<()>().await;
        Response::new(full(""))
    })
    .await
}

/// `service_config` with `policy` (the `spec` of a policy for reviews, YAML, indented 6).
fn config_with_policy(endpoints: &[(std::net::SocketAddr, &str)], spec: &str) -> String {
    let mut yaml = service_config(9080, "PROTOCOL_HTTP1", endpoints);
    yaml.push_str(&format!(
        "policies:\n  - metadata: {{name: reviews, namespace: default}}\n    spec:\n      service: reviews\n{spec}"
    ));
    yaml
}

fn get(headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get("/").header("host", "reviews:9080");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// Polls the proxy's metric until it has `value`, for at most [`LONG`].
async fn metric_becomes(proxy: &TestProxy, name: &str, labels: &[&str], value: f64) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let now = proxy.metric(name, labels).await;
        if now == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {now:?}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` until it holds, for at most [`LONG`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_header_rule_routes_to_its_version_over_http1_and_http2() {
    let (v1, v2) = (version_server("v1").await, version_server("v2").await);
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        "      rules:\n        - name: foo\n          match: [{headers: {foo: {exact: bar}}}]\n          route: [{version: v2, weight: 100}]\n      default: {route: [{version: v1, weight: 100}]}\n",
    ));
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    for _ in 0..20 {
        let r = h1.send_request(get(&[("foo", "bar")])).await.unwrap();
        assert_eq!(text(r).await, "v2");
        let r = h1.send_request(get(&[("foo", "baz")])).await.unwrap();
        assert_eq!(text(r).await, "v1");
    }
    // HTTP/2: each stream on one connection is decided on its own.
    let mut h2 = http2(proxy.connect_outbound(vip(9080)).await).await;
    for _ in 0..10 {
        let req = |v: &str| {
            Request::get("http://reviews:9080/")
                .header("foo", v)
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let (a, b) = tokio::join!(h2.send_request(req("bar")), h2.send_request(req("no")));
        assert_eq!(text(a.unwrap()).await, "v2");
        assert_eq!(text(b.unwrap()).await, "v1");
    }
    let (code, routes) = proxy.admin("/routes").await;
    assert_eq!(code, 200);
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let p = &routes["policies"][0];
    assert_eq!(p["rules"][0]["name"], "foo");
    assert_eq!(p["rules"][0]["route"][0]["hits"], 30);
    assert_eq!(p["default"]["route"][0]["hits"], 30);
    let v2_requests = proxy
        .metric(
            "serin_requests_total",
            &["destination_version=\"v2\"", "mirror=\"false\""],
        )
        .await;
    assert_eq!(v2_requests, Some(30.0));
}

#[tokio::test]
async fn a_weighted_split_holds_within_three_sigma_over_2000_requests() {
    let (v1, v2) = (version_server("v1").await, version_server("v2").await);
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        "      default: {route: [{version: v1, weight: 70}, {version: v2, weight: 30}]}\n",
    ));
    let n = 2000;
    let mut on_v2 = 0;
    // A few keep-alive connections: every request is routed on its own.
    for _ in 0..4 {
        let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
        for _ in 0..n / 4 {
            let r = h1.send_request(get(&[])).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            if text(r).await == "v2" {
                on_v2 += 1;
            }
        }
    }
    // Binomial(2000, 0.3): mean 600, sigma ~20.5.
    let sigma = (n as f64 * 0.3 * 0.7).sqrt();
    assert!(
        (f64::from(on_v2) - 600.0).abs() <= 3.0 * sigma,
        "{on_v2} of {n} on v2, expected 600 ± {:.0}",
        3.0 * sigma
    );
}

#[tokio::test]
async fn a_rule_naming_a_version_without_endpoints_falls_back_and_nothing_fails() {
    let v1 = version_server("v1").await;
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1")],
        "      rules:\n        - name: to-v3\n          match: [{headers: {foo: {exact: bar}}}]\n          route: [{version: v3, weight: 100}]\n      default: {route: [{version: v1, weight: 100}]}\n",
    ));
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    for _ in 0..10 {
        let r = h1.send_request(get(&[("foo", "bar")])).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(text(r).await, "v1");
    }
    let fallbacks = proxy
        .metric(
            "serin_route_fallbacks_total",
            &["chosen_version=\"v3\"", "fallback_version=\"v1\""],
        )
        .await;
    assert_eq!(fallbacks, Some(10.0));
    // A policy whose versions have no endpoint at all: 503 at once, not a hang.
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1")],
        "      default: {route: [{version: v9, weight: 100}]}\n",
    ));
    let r = h1.send_request(get(&[])).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(r).await, "serin: no ready endpoint\n");
}

#[tokio::test]
async fn mirror_copies_go_to_the_shadow_host_with_the_marker_and_the_body() {
    let v1 = version_server("v1").await;
    let (v2, seen) = recording_server("v2").await;
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        "      default: {route: [{version: v1, weight: 100}]}\n      mirror: {version: v2, percent: 100}\n",
    ));
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    for i in 0..10 {
        let req = Request::post("/reviews")
            .header("host", "reviews:9080")
            .body(Full::new(Bytes::from(format!("review {i}"))))
            .unwrap();
        let r = h1.send_request(req).await.unwrap();
        assert_eq!(text(r).await, "v1", "clients see only the primary");
    }
    let r = h1.send_request(get(&[])).await.unwrap();
    assert_eq!(text(r).await, "v1");
    eventually("11 copies at v2", || seen.lock().unwrap().len() == 11).await;
    let seen = seen.lock().unwrap().clone();
    for (host, marker, _) in &seen {
        assert_eq!(host, "reviews-shadow:9080");
        assert_eq!(marker, "1");
    }
    let mut bodies: Vec<_> = seen.iter().map(|(_, _, b)| b.clone()).collect();
    bodies.sort();
    assert_eq!(bodies[0], "");
    assert_eq!(bodies[1], "review 0");
    assert_eq!(bodies[10], "review 9");
    metric_becomes(
        &proxy,
        "serin_mirror_requests_total",
        &["destination_version=\"v2\"", "outcome=\"sent\""],
        11.0,
    )
    .await;
    metric_becomes(
        &proxy,
        "serin_requests_total",
        &["destination_version=\"v2\"", "mirror=\"true\""],
        11.0,
    )
    .await;
    // The primary traffic is counted apart, on its own version.
    let primary = proxy
        .metric(
            "serin_requests_total",
            &["destination_version=\"v1\"", "mirror=\"false\""],
        )
        .await;
    assert_eq!(primary, Some(11.0));
}

#[tokio::test]
async fn a_hanging_mirror_neither_delays_nor_fails_the_primary_and_excess_copies_drop() {
    let v1 = version_server("v1").await;
    let v2 = hanging_server().await;
    let settings = ProxySettings {
        mirror_max_in_flight: 4,
        mirror_timeout: Duration::from_secs(60),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        "      default: {route: [{version: v1, weight: 100}]}\n      mirror: {version: v2, percent: 100}\n",
    ));
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    for i in 0..40 {
        let req = Request::post("/")
            .header("host", "reviews:9080")
            .body(Full::new(Bytes::from(format!("{i}"))))
            .unwrap();
        // The bound is a hang detector, not a performance assertion: a primary that waited on
        // its (never answered) copy would never finish.
        let r = tokio::time::timeout(LONG, h1.send_request(req))
            .await
            .expect("the primary must not wait for its copy")
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(text(r).await, "v1");
    }
    let dropped = proxy
        .metric("serin_mirror_requests_total", &["outcome=\"dropped\""])
        .await;
    assert_eq!(
        dropped,
        Some(36.0),
        "4 copies hang in flight, the rest drop"
    );
    let (_, routes) = proxy.admin("/routes").await;
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes["policies"][0]["mirror"]["dropped"], 36);
}

#[tokio::test]
async fn bodies_over_the_mirror_limit_are_not_mirrored_but_reach_the_primary_whole() {
    let (v1, primary_seen) = recording_server("v1").await;
    let (v2, mirror_seen) = recording_server("v2").await;
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        "      default: {route: [{version: v1, weight: 100}]}\n      mirror: {version: v2, percent: 100}\n",
    ));
    // A chunked upload (no content-length): the tee sees it go past 64 KiB while streaming.
    let stream = proxy.connect_outbound(vip(9080)).await;
    type Chunks =
        StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Chunks>(TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    let send = |chunks: usize| {
        let frames: Vec<_> = (0..chunks)
            .map(|_| Ok(Frame::data(chunk.clone())))
            .collect();
        Request::post("/upload")
            .header("host", "reviews:9080")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap()
    };
    let r = sender.send_request(send(5)).await.unwrap();
    assert_eq!(text(r).await, "v1");
    let r = sender.send_request(send(2)).await.unwrap();
    assert_eq!(text(r).await, "v1");
    eventually("the small upload mirrored", || {
        mirror_seen.lock().unwrap().len() == 1
    })
    .await;
    assert_eq!(mirror_seen.lock().unwrap()[0].2.len(), 32 * 1024);
    let primary = primary_seen.lock().unwrap().clone();
    assert_eq!(primary[0].2.len(), 80 * 1024, "the primary got every byte");
    let too_large = proxy
        .metric("serin_mirror_requests_total", &["outcome=\"too_large\""])
        .await;
    assert_eq!(too_large, Some(1.0));
}

#[tokio::test]
async fn idempotent_requests_are_retried_on_another_endpoint_of_the_version() {
    let v1 = version_server("v1").await;
    // An address where nothing listens: connects are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = TestProxy::start().await;
    // The dead endpoint weighs far more, so the balancer tries it first every time.
    let config = config_with_policy(
        &[(dead, "v1"), (v1.addr, "v1")],
        "      default: {route: [{version: v1, weight: 100}]}\n",
    )
    .replace(
        "podName: reviews-0, version: v1, ready: true",
        "podName: reviews-0, version: v1, ready: true, weight: 1000",
    );
    proxy.apply(&config);
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    for _ in 0..30 {
        let r = h1.send_request(get(&[])).await.unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "GET retried on the live endpoint"
        );
    }
    let retried = proxy
        .metric("serin_retries_total", &["outcome=\"retried\""])
        .await;
    assert_eq!(retried, Some(30.0), "every GET hit the dead endpoint first");
    // A POST with a body is never retried: each fails on the dead endpoint.
    let mut failed = 0;
    for _ in 0..10 {
        let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
        let req = Request::post("/")
            .header("host", "reviews:9080")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let r = h1.send_request(req).await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 10,
        "a POST that hit the dead endpoint is not retried"
    );
    let again = proxy
        .metric("serin_retries_total", &["outcome=\"retried\""])
        .await;
    assert_eq!(again, retried, "POSTs are not retry candidates");
}

#[tokio::test]
async fn a_body_cut_off_by_the_client_is_not_mirrored_and_is_counted_aborted() {
    use tokio::io::AsyncWriteExt;
    let v1 = version_server("v1").await;
    let (v2, mirror_seen) = recording_server("v2").await;
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        "      default: {route: [{version: v1, weight: 100}]}\n      mirror: {version: v2, percent: 100}\n",
    ));
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: reviews:9080\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    // Once the request is upstream (its body streaming), go away mid-body.
    eventually("the request reached v1", || {
        v1.requests.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    drop(stream);
    metric_becomes(
        &proxy,
        "serin_mirror_requests_total",
        &["outcome=\"aborted\""],
        1.0,
    )
    .await;
    assert!(mirror_seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_take_over_applies_to_the_next_request_and_the_one_in_flight_completes() {
    let release = Arc::new(tokio::sync::Notify::new());
    let r = Arc::clone(&release);
    // v1 answers only when released, so a request is in flight across the policy change.
    let v1 = http_server(move |_req: Request<Incoming>| {
        let r = Arc::clone(&r);
        async move {
            r.notified().await;
            Response::new(full("v1"))
        }
    })
    .await;
    let v2 = version_server("v2").await;
    let endpoints = [(v1.addr, "v1"), (v2.addr, "v2")];
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &endpoints,
        "      default: {route: [{version: v1, weight: 100}]}\n",
    ));
    let mut h2 = http2(proxy.connect_outbound(vip(9080)).await).await;
    let req = || {
        Request::get("http://reviews:9080/")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let in_flight = tokio::spawn(h2.send_request(req()));
    eventually("the first request reached v1", || {
        v1.requests.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    // Take-over: v2 gets everything, from the next request (same connection) on.
    proxy.apply(&config_with_policy(
        &endpoints,
        "      default: {route: [{version: v2, weight: 100}]}\n",
    ));
    for _ in 0..5 {
        let r = h2.send_request(req()).await.unwrap();
        assert_eq!(text(r).await, "v2");
    }
    release.notify_one();
    let first = in_flight.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        text(first).await,
        "v1",
        "the request in flight was not broken"
    );
}

#[tokio::test]
async fn os_rules_and_sticky_splits_route_through_the_sidecar() {
    let (v1, v2, v3) = (
        version_server("v1").await,
        version_server("v2").await,
        version_server("v3").await,
    );
    let proxy = TestProxy::start().await;
    proxy.apply(&config_with_policy(
        &[(v1.addr, "v1"), (v2.addr, "v2"), (v3.addr, "v3")],
        "      rules:\n        - name: mobile\n          match: [{os: [ios, android]}]\n          route: [{version: v3, weight: 100}]\n      default: {route: [{version: v1, weight: 50}, {version: v2, weight: 50}]}\n      stickiness: {cookie: uid}\n",
    ));
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    let android = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    let desktop = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    for ua in [iphone, android] {
        let r = h1.send_request(get(&[("user-agent", ua)])).await.unwrap();
        assert_eq!(text(r).await, "v3", "{ua}");
    }
    // A desktop user with a uid stays on one version of the 50/50 split, request after request.
    for user in ["alice", "bob", "carol", "dave"] {
        let cookie = format!("uid={user}");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let req = get(&[("user-agent", desktop), ("cookie", &cookie)]);
            let r = h1.send_request(req).await.unwrap();
            seen.insert(text(r).await);
        }
        assert_eq!(seen.len(), 1, "{user} moved between versions: {seen:?}");
        assert!(seen.contains("v1") || seen.contains("v2"), "{seen:?}");
    }
}
