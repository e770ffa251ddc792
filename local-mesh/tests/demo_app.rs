//! In-process tests of `serin-demo-app` on 127.0.0.1:0 (no root): its answers over HTTP/1.1 and
//! h2c, the headers it passes downstream, and fault injection by flag and at run time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use serin_local::demo_app::{DemoApp, DemoConfig, Fault};
use serin_local::testing::init_tracing;
use serin_local::traffic::{TrafficOptions, run};

async fn start(service: &str, version: &str, calls: Vec<String>, fault: Fault) -> SocketAddr {
    let app = DemoApp::bind(
        "127.0.0.1:0".parse().unwrap(),
        DemoConfig {
            service: service.into(),
            version: version.into(),
            pod: format!("{service}-{version}"),
            namespace: "default".into(),
            calls,
            fault,
        },
    )
    .await
    .unwrap();
    let addr = app.local_addr().unwrap();
    tokio::spawn(app.serve());
    addr
}

async fn send(req: Request<Full<Bytes>>, http2: bool) -> (StatusCode, http::HeaderMap, Value) {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(http2)
        .build_http::<Full<Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, serde_json::from_slice(&body).unwrap())
}

fn get(addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::get(format!("http://{addr}{path}"))
}

#[tokio::test]
async fn answers_with_its_identity_over_http1_and_h2c() {
    init_tracing();
    let addr = start("details", "v1", vec![], Fault::default()).await;
    for http2 in [false, true] {
        let (status, _, body) = send(
            get(addr, "/details/0").body(Full::default()).unwrap(),
            http2,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["service"], "details");
        assert_eq!(body["version"], "v1");
        assert_eq!(body["pod"], "details-v1");
        assert_eq!(body["path"], "/details/0");
        assert_eq!(body["mirror"], false);
        let protocol = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
        assert_eq!(body["protocol"], protocol);
    }
}

#[tokio::test]
async fn calls_downstream_and_propagates_user_cookies_trace_and_request_id() {
    init_tracing();
    let ratings = start("ratings", "v1", vec![], Fault::default()).await;
    let reviews = start("reviews", "v2", vec![ratings.to_string()], Fault::default()).await;
    let details = start("details", "v1", vec![], Fault::default()).await;
    let productpage = start(
        "productpage",
        "v1",
        vec![details.to_string(), reviews.to_string()],
        Fault::default(),
    )
    .await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = get(productpage, "/productpage")
        .header("end-user", "jason")
        .header("cookie", "uid=jason; canary=always")
        .header("traceparent", trace)
        .header("x-request-id", "req-42")
        .header("x-serin-mirror", "1")
        .header(
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
        )
        .body(Full::default())
        .unwrap();
    let (status, headers, body) = send(req, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-request-id"], "req-42");
    assert_eq!(body["mirror"], true);
    let calls = body["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["response"]["service"], "details");
    let reviews_answer = &calls[1]["response"];
    assert_eq!(reviews_answer["version"], "v2");
    let ratings_answer = &reviews_answer["calls"][0]["response"];
    assert_eq!(ratings_answer["service"], "ratings");
    // Two hops down, the user, cookies, request id and UA arrived unchanged; the trace is the
    // same trace with another parent span.
    let received = &ratings_answer["headers"];
    assert_eq!(received["end-user"], "jason");
    assert_eq!(received["cookie"], "uid=jason; canary=always");
    assert_eq!(received["x-request-id"], "req-42");
    assert!(received["user-agent"].as_str().unwrap().contains("iPhone"));
    let downstream_trace = received["traceparent"].as_str().unwrap();
    assert!(
        downstream_trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{downstream_trace}"
    );
    assert_ne!(downstream_trace, trace, "each hop is its own span");
    // The mirror marker is the mesh's to set, not the app's to pass on.
    assert_eq!(reviews_answer["mirror"], false);
}

#[tokio::test]
async fn a_request_without_id_or_trace_gets_new_ones() {
    init_tracing();
    let leaf = start("ratings", "v1", vec![], Fault::default()).await;
    let top = start("reviews", "v1", vec![leaf.to_string()], Fault::default()).await;
    let (_, headers, body) = send(get(top, "/").body(Full::default()).unwrap(), false).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);
    let received = &body["calls"][0]["response"]["headers"];
    assert_eq!(received["x-request-id"], id);
    assert_eq!(received["traceparent"].as_str().unwrap().len(), 55);
}

#[tokio::test]
async fn faults_by_flag_and_at_run_time() {
    init_tracing();
    let failing = start(
        "ratings",
        "v1",
        vec![],
        Fault {
            delay_ms: 0,
            error_rate: 1.0,
        },
    )
    .await;
    let (status, _, body) = send(get(failing, "/").body(Full::default()).unwrap(), false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "injected fault");

    let app = start("reviews", "v3", vec![], Fault::default()).await;
    let set = |json: &str| {
        Request::post(format!("http://{app}/admin/fault"))
            .body(Full::new(Bytes::from(json.to_owned())))
            .unwrap()
    };
    let (status, _, body) = send(set(r#"{"delay_ms": 300}"#), false).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["delay_ms"], 300);
    let started = Instant::now();
    let (status, _, _) = send(get(app, "/").body(Full::default()).unwrap(), false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );

    let (status, _, body) = send(set(r#"{"error_rate": 2}"#), false).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("error_rate"),
        "{body}"
    );
    let (status, _, _) = send(set(r#"{"error_rate": 1.0}"#), false).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(get(app, "/").body(Full::default()).unwrap(), false).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (_, _, body) = send(
        get(app, "/admin/fault").body(Full::default()).unwrap(),
        false,
    )
    .await;
    assert_eq!(body["error_rate"], 1.0);
    assert_eq!(body["delay_ms"], 0);
}

#[tokio::test]
async fn traffic_reports_versions_failures_and_client_oses() {
    init_tracing();
    let ratings = start(
        "ratings",
        "v1",
        vec![],
        Fault {
            delay_ms: 0,
            error_rate: 1.0,
        },
    )
    .await;
    let reviews = start("reviews", "v2", vec![ratings.to_string()], Fault::default()).await;
    let report = run(&TrafficOptions {
        rate: 100,
        duration: Duration::from_millis(500),
        ..TrafficOptions::new(format!("http://{reviews}/"))
    })
    .await
    .unwrap();
    assert!(report.sent >= 10, "{report:?}");
    assert_eq!(report.ok, report.sent, "{report:?}");
    assert_eq!(report.count("reviews", "v2"), report.sent);
    assert_eq!(report.count("ratings", "v1"), report.sent);
    // reviews answers 200 with its failed call to ratings inside: a failure one level down.
    assert_eq!(
        report
            .failures
            .get(&format!("call to {ratings}: status 503")),
        Some(&report.sent),
        "{report:?}"
    );
    assert!(report.client_os.len() > 2, "{report:?}");
    let users: u64 = report
        .by_user
        .values()
        .map(|versions| versions.get("reviews v2").copied().unwrap_or(0))
        .sum();
    assert_eq!(users, report.sent, "every answer is counted under its user");

    // A fixed set of users.
    let report = run(&TrafficOptions {
        rate: 100,
        duration: Duration::from_millis(200),
        users: vec!["jason".into(), String::new()],
        ..TrafficOptions::new(format!("http://{reviews}/"))
    })
    .await
    .unwrap();
    assert_eq!(
        report.count_for("jason", "reviews", "v2") + report.count_for("", "reviews", "v2"),
        report.sent,
        "{report:?}"
    );
    assert!(
        report
            .by_user
            .keys()
            .all(|u| u == "jason" || u == "anonymous"),
        "{report:?}"
    );
}

#[tokio::test]
async fn the_grpc_service_answers_on_the_same_port_and_fails_on_fault() {
    use serin_local::demo_app::proto::HelloRequest;
    use serin_local::demo_app::proto::demo_client::DemoClient;
    init_tracing();
    let addr = start("reviews", "v2", vec![], Fault::default()).await;
    let mut client = DemoClient::connect(format!("http://{addr}")).await.unwrap();
    let reply = client
        .hello(HelloRequest {
            name: "jason".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.service, "reviews");
    assert_eq!(reply.version, "v2");
    assert_eq!(reply.pod, "reviews-v2");
    assert_eq!(reply.message, "hello jason from reviews v2");
    // HTTP still answers on the same port.
    let (status, _, body) = send(get(addr, "/").body(Full::default()).unwrap(), true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], "v2");

    let failing = start(
        "ratings",
        "v1",
        vec![],
        Fault {
            delay_ms: 0,
            error_rate: 1.0,
        },
    )
    .await;
    let mut client = DemoClient::connect(format!("http://{failing}"))
        .await
        .unwrap();
    let status = client.hello(HelloRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "injected fault");
}
