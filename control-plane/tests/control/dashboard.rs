//! The dashboard's API in process: simulated sidecars (Telemetry.Report clients) report known
//! rates while the test drives the control plane's clock; `/api/topology`, the live stream,
//! `/api/services/NAME`, the POST actions and `Admin.WatchTopology` show them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;
use serin_control::telemetry::Clock;
use serin_proto::auth::Role;
use serin_proto::v1;
use serin_proto::v1::telemetry_client::TelemetryClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::{Harness, workload};

/// The histogram bounds the simulated sidecars use (seconds).
pub const BOUNDS: [f64; 6] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.5];

/// A simulated sidecar: one Telemetry.Report stream; each `report` waits for its answer, so the
/// control plane has recorded it when `report` returns.
pub struct Sidecar {
    tx: mpsc::Sender<v1::ReportRequest>,
    responses: tonic::Streaming<v1::ReportResponse>,
    identity: Option<v1::ProxyIdentity>,
    sequence: u64,
}

/// One edge of traffic to report: `ok` and `failed` (HTTP 503) requests, all in histogram
/// bucket `bucket`; over mTLS from `principal` when it is set, else plaintext.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub direction: v1::TrafficDirection,
    pub source: (&'static str, &'static str),
    pub destination: (&'static str, &'static str),
    pub ok: u64,
    pub failed: u64,
    pub bucket: usize,
    pub mirror: bool,
    pub principal: Option<&'static str>,
}

impl Traffic {
    pub fn inbound(
        source: (&'static str, &'static str),
        destination: (&'static str, &'static str),
        ok: u64,
    ) -> Traffic {
        Traffic {
            direction: v1::TrafficDirection::Inbound,
            source,
            destination,
            ok,
            failed: 0,
            bucket: 2,
            mirror: false,
            principal: None,
        }
    }

    fn stats(&self) -> v1::EdgeStats {
        let mut counts = vec![0; BOUNDS.len() + 1];
        counts[self.bucket] = self.ok + self.failed;
        v1::EdgeStats {
            direction: self.direction as i32,
            source_workload: self.source.0.into(),
            source_namespace: if self.source.0 == "unknown" {
                "unknown"
            } else {
                "default"
            }
            .into(),
            source_version: self.source.1.into(),
            destination_service: self.destination.0.into(),
            destination_namespace: "default".into(),
            destination_version: self.destination.1.into(),
            protocol: v1::Protocol::Http1 as i32,
            mirror: self.mirror,
            responses: [(200, self.ok), (503, self.failed)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(code, count)| v1::ResponseCount {
                    response_code: code,
                    grpc_status: None,
                    count,
                })
                .collect(),
            duration: Some(v1::DurationHistogram {
                bucket_bounds_seconds: BOUNDS.to_vec(),
                bucket_counts: counts,
                sum_seconds: 0.02 * (self.ok + self.failed) as f64,
                count: self.ok + self.failed,
            }),
            tcp_connections_opened: 1,
            received_bytes: 200 * (self.ok + self.failed),
            sent_bytes: 1000 * (self.ok + self.failed),
            mtls: self.principal.is_some(),
            source_principal: self.principal.unwrap_or_default().into(),
            ..Default::default()
        }
    }
}

impl Sidecar {
    pub async fn connect(grpc: SocketAddr, pod: &str, service: &str, version: &str) -> Sidecar {
        let mut client = TelemetryClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let identity = v1::ProxyIdentity {
            pod_name: pod.into(),
            namespace: "default".into(),
            service: service.into(),
            version: version.into(),
            instance_id: format!("{pod}-sim"),
            pod_ips: vec!["10.244.1.1".into()],
            ..Default::default()
        };
        // The stream opens with the first report, so send it before asking for the answers.
        tx.send(v1::ReportRequest {
            reporter: Some(identity),
            sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut responses = client
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(Duration::from_secs(5), responses.message())
            .await
            .expect("the first report is answered")
            .unwrap()
            .unwrap();
        Sidecar {
            tx,
            responses,
            identity: None,
            sequence: 1,
        }
    }

    /// Sends one interval's edges and waits for the answer.
    pub async fn report(&mut self, edges: &[Traffic]) {
        self.report_with_hits(edges, Vec::new()).await;
    }

    /// Sends one interval's edges and rule hits and waits for the answer.
    pub async fn report_with_hits(&mut self, edges: &[Traffic], rule_hits: Vec<v1::RuleHits>) {
        self.sequence += 1;
        self.tx
            .send(v1::ReportRequest {
                reporter: self.identity.clone(),
                sequence: self.sequence,
                edges: edges.iter().map(Traffic::stats).collect(),
                rule_hits,
                ..Default::default()
            })
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a report is answered within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!(answer.sequence, self.sequence);
        assert_eq!(answer.edges_dropped, 0, "no edge dropped");
        assert_eq!(answer.rule_hits_dropped, 0, "no rule hit dropped");
    }
}

/// `count` hits of route `rule` ("" = default) to `version` under generation `generation` of
/// the policy `default/reviews` (the one the weight changes make).
pub fn reviews_hits(generation: u64, rule: &str, version: &str, count: u64) -> v1::RuleHits {
    v1::RuleHits {
        policy_namespace: "default".into(),
        policy_name: "reviews".into(),
        generation,
        rule: rule.into(),
        version: version.into(),
        count,
    }
}

/// A control plane whose telemetry clock the test moves.
pub async fn harness_with_clock() -> (Harness, Arc<AtomicU64>) {
    let clock = Arc::new(AtomicU64::new(1_800_000_000_000));
    let c = clock.clone();
    let h = Harness::start_with(move |config| config.clock = Clock::Manual(c)).await;
    (h, clock)
}

/// Registers productpage v1 and reviews v1 + v2.
pub async fn register_bookinfo(h: &Harness) {
    let mut admin = h.admin().await;
    for (pod, service, version, ip) in [
        ("productpage-0", "productpage", "v1", "10.244.0.10"),
        ("reviews-v1-0", "reviews", "v1", "10.244.0.11"),
        ("reviews-v2-0", "reviews", "v2", "10.244.0.12"),
    ] {
        admin
            .register_workload(v1::RegisterWorkloadRequest {
                workload: Some(workload(pod, service, version, ip)),
                ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
pub async fn http(h: &Harness, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let auth = format!("authorization: Bearer {}\r\n", h.token(Role::Write));
    http_raw(h.http, &auth, method, path, body).await
}

/// One HTTP/1.1 request with `headers` (each ending in CRLF); returns (status, body).
pub async fn http_raw(
    addr: SocketAddr,
    headers: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // The API answers with Content-Length bodies (no chunking) except the event stream.
    (status, body.to_owned())
}

pub async fn get_json(h: &Harness, path: &str) -> Value {
    let (status, body) = http(h, "GET", path, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn edge<'a>(graph: &'a Value, source: &str, destination: &str, mirror: bool) -> Option<&'a Value> {
    graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == source && e["destination"] == destination && e["mirror"] == mirror)
}

fn assert_close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= want * 0.2,
        "{what}: {got} is not within 20 % of {want}"
    );
}

/// Reports `seconds` seconds of traffic: productpage v1 calls reviews v1 at `v1` and v2 at `v2`
/// requests per second (inbound reports from each reviews sidecar, outbound ones from
/// productpage's, with the default route's hits under generation 1 of the reviews policy), plus
/// 5 rps of mirror traffic to v2; one report per simulated second.
pub async fn drive(clock: &AtomicU64, sidecars: &mut [Sidecar; 3], seconds: u64, v1: u64, v2: u64) {
    let pp = ("productpage", "v1");
    for _ in 0..seconds {
        clock.fetch_add(1000, Ordering::AcqRel);
        let mut failing = Traffic::inbound(pp, ("reviews", "v2"), v2 * 9 / 10);
        failing.failed = v2 - v2 * 9 / 10;
        failing.bucket = 4;
        let mirror = Traffic {
            mirror: true,
            ..Traffic::inbound(pp, ("reviews", "v2"), 5)
        };
        let outbound = |dest, n| Traffic {
            direction: v1::TrafficDirection::Outbound,
            ..Traffic::inbound(pp, dest, n)
        };
        let [page, r1, r2] = sidecars;
        r1.report(&[Traffic::inbound(pp, ("reviews", "v1"), v1)])
            .await;
        r2.report(&[failing, mirror]).await;
        // The caller's side of the same requests: shown only where the callee does not report.
        let hits = [("v1", v1), ("v2", v2)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(version, n)| reviews_hits(1, "", version, n))
            .collect();
        page.report_with_hits(
            &[
                outbound(("reviews", "v1"), v1),
                outbound(("reviews", "v2"), v2),
            ],
            hits,
        )
        .await;
    }
}

pub async fn sidecars(h: &Harness) -> [Sidecar; 3] {
    [
        Sidecar::connect(h.grpc, "productpage-0", "productpage", "v1").await,
        Sidecar::connect(h.grpc, "reviews-v1-0", "reviews", "v1").await,
        Sidecar::connect(h.grpc, "reviews-v2-0", "reviews", "v2").await,
    ]
}

#[tokio::test]
async fn topology_shows_version_edges_at_the_reported_rates() {
    let (h, clock) = harness_with_clock().await;
    register_bookinfo(&h).await;
    let mut cars = sidecars(&h).await;
    drive(&clock, &mut cars, 12, 90, 10).await;

    let g = get_json(&h, "/api/topology?window=10s").await;
    let ids: Vec<&str> = g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "default/productpage/v1",
            "default/reviews/v1",
            "default/reviews/v2"
        ]
    );
    assert_eq!(g["window_seconds"], 10);
    let to_v1 = edge(&g, "default/productpage/v1", "default/reviews/v1", false).unwrap();
    assert_close("rps to v1", to_v1["rps"].as_f64().unwrap(), 90.0);
    assert_eq!(
        to_v1["reported_by"], "inbound",
        "the callee's reports, not twice"
    );
    assert_eq!(to_v1["error_rate"], 0.0);
    // All in (0.01, 0.025]: p50 inside it, p99 near its top.
    let p50 = to_v1["p50_ms"].as_f64().unwrap();
    assert!((10.0..=25.0).contains(&p50), "{p50}");
    assert_close(
        "bytes in",
        to_v1["received_bytes_per_second"].as_f64().unwrap(),
        18_000.0,
    );
    let to_v2 = edge(&g, "default/productpage/v1", "default/reviews/v2", false).unwrap();
    assert_close("rps to v2", to_v2["rps"].as_f64().unwrap(), 10.0);
    assert!((to_v2["error_rate"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    let p99 = to_v2["p99_ms"].as_f64().unwrap();
    assert!((50.0..=100.0).contains(&p99), "{p99}");
    let mirror = edge(&g, "default/productpage/v1", "default/reviews/v2", true).unwrap();
    assert_close("mirror rps", mirror["rps"].as_f64().unwrap(), 5.0);
    assert_eq!(g["edges"].as_array().unwrap().len(), 3);

    // Other windows: the same rates over the edges' 12 s of life; a bad window is refused.
    let g = get_json(&h, "/api/topology?window=10m").await;
    assert_eq!(g["window_seconds"], 600);
    let to_v1 = edge(&g, "default/productpage/v1", "default/reviews/v1", false).unwrap();
    assert_close("10 min rps to v1", to_v1["rps"].as_f64().unwrap(), 90.0);
    let (status, body) = http(&h, "GET", "/api/topology?window=forever", None).await;
    assert_eq!(status, 400, "{body}");

    // The same edges reach Admin.WatchTopology.
    let e = watched_edge(&h, "default/reviews/v1").await;
    assert_close("WatchTopology rps", e.rps, 90.0);
    assert!(e.response_code_counts.get(&200).copied().unwrap_or(0) > 0);

    // A minute without reports: the 10 s window is empty again.
    clock.fetch_add(60_000, Ordering::AcqRel);
    let g = get_json(&h, "/api/topology?window=10s").await;
    assert!(g["edges"].as_array().unwrap().is_empty(), "{g}");
}

/// The client principal of the mTLS traffic in [`mtls_edges_carry_their_principals_to_the_api`].
pub const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/default/sa/productpage";

#[tokio::test]
async fn mtls_edges_carry_their_principals_to_the_api() {
    let (h, clock) = harness_with_clock().await;
    register_bookinfo(&h).await;
    let [mut page, mut r1, mut r2] = sidecars(&h).await;
    let pp = ("productpage", "v1");
    let secured = |dest, n| Traffic {
        principal: Some(PRODUCTPAGE_ID),
        ..Traffic::inbound(pp, dest, n)
    };
    for _ in 0..5 {
        clock.fetch_add(1000, Ordering::AcqRel);
        // v1 takes only mTLS; v2 as much plaintext as mTLS (two entries of one edge, as a
        // sidecar sends them); productpage's own outbound reports say nothing of mTLS.
        r1.report(&[secured(("reviews", "v1"), 40)]).await;
        r2.report(&[
            secured(("reviews", "v2"), 10),
            Traffic::inbound(pp, ("reviews", "v2"), 10),
        ])
        .await;
        page.report(&[Traffic {
            direction: v1::TrafficDirection::Outbound,
            ..Traffic::inbound(pp, ("reviews", "v1"), 40)
        }])
        .await;
    }
    let g = get_json(&h, "/api/topology?window=10s").await;
    let to_v1 = edge(&g, "default/productpage/v1", "default/reviews/v1", false).unwrap();
    assert_eq!(to_v1["reported_by"], "inbound");
    assert_eq!(to_v1["mtls"], true, "{to_v1}");
    assert_eq!(to_v1["mtls_fraction"], 1.0);
    assert_eq!(
        to_v1["source_principals"],
        serde_json::json!([PRODUCTPAGE_ID])
    );
    assert_close("rps to v1", to_v1["rps"].as_f64().unwrap(), 40.0);
    let to_v2 = edge(&g, "default/productpage/v1", "default/reviews/v2", false).unwrap();
    assert_eq!(to_v2["mtls"], false, "partly plaintext: {to_v2}");
    assert_eq!(to_v2["mtls_fraction"], 0.5);
    assert_eq!(
        to_v2["source_principals"],
        serde_json::json!([PRODUCTPAGE_ID])
    );
    assert_close("rps to v2", to_v2["rps"].as_f64().unwrap(), 20.0);

    // Admin.WatchTopology says the same.
    let e = watched_edge(&h, "default/reviews/v1").await;
    assert!(e.mtls && e.mtls_fraction == 1.0, "{e:?}");
    assert_eq!(e.source_principals, [PRODUCTPAGE_ID]);

    // Plaintext from then on: once the mTLS traffic has left the window, so has the padlock.
    for _ in 0..12 {
        clock.fetch_add(1000, Ordering::AcqRel);
        r1.report(&[Traffic::inbound(pp, ("reviews", "v1"), 40)])
            .await;
    }
    let g = get_json(&h, "/api/topology?window=10s").await;
    let to_v1 = edge(&g, "default/productpage/v1", "default/reviews/v1", false).unwrap();
    assert_eq!(
        (&to_v1["mtls"], &to_v1["mtls_fraction"]),
        (&serde_json::json!(false), &serde_json::json!(0.0))
    );
    assert_eq!(to_v1["source_principals"], serde_json::json!([]));
}

#[tokio::test]
async fn the_service_view_shows_configured_and_observed_split_and_changes_it() {
    let (h, clock) = harness_with_clock().await;
    register_bookinfo(&h).await;
    let mut cars = sidecars(&h).await;
    let (status, _) = http(
        &h,
        "POST",
        "/api/services/reviews/weights",
        Some(r#"{"weights":[{"version":"v1","weight":90},{"version":"v2","weight":10}]}"#),
    )
    .await;
    assert_eq!(status, 200);
    drive(&clock, &mut cars, 10, 90, 10).await;

    let s = get_json(&h, "/api/services/reviews?window=10s").await;
    assert_eq!(s["policy"]["generation"], 1);
    // The default route's hits (generation 1): 90 % of 1000 requests chose v1, as configured.
    assert_eq!(s["rule_hits"]["available"], true, "{s}");
    assert_eq!(s["rule_hits"]["generation"], 1);
    assert_eq!(s["rule_hits"]["total"], 1000);
    let hits = &s["policy"]["default_hits"];
    assert_eq!(hits["total"], 1000, "{s}");
    assert_eq!(hits["versions"][0]["version"], "v1");
    assert_eq!(hits["versions"][0]["hits"], 900);
    assert_eq!(hits["versions"][0]["configured_percent"], 90.0);
    assert_eq!(hits["versions"][0]["observed_percent"], 90.0);
    assert_eq!(hits["versions"][1]["hits"], 100);
    assert_eq!(s["policy"]["rules"], serde_json::json!([]));
    let v = s["versions"].as_array().unwrap();
    assert_eq!(v[0]["version"], "v1");
    assert_eq!(v[0]["configured_percent"], 90.0);
    assert_close(
        "observed v1",
        v[0]["observed_percent"].as_f64().unwrap(),
        90.0,
    );
    assert_close(
        "observed v2",
        v[1]["observed_percent"].as_f64().unwrap(),
        10.0,
    );
    assert_close("mirror", v[1]["mirror_rps"].as_f64().unwrap(), 5.0);
    assert_eq!(s["proxies"]["total"], 0, "no Discovery stream in this test");

    // Promote and roll back through the same admin code as gRPC.
    let (status, body) = http(
        &h,
        "POST",
        "/api/services/reviews/promote",
        Some(r#"{"version":"v2"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // A new generation: the hits of the previous one are not shown as its own.
    let s = get_json(&h, "/api/services/reviews?window=10s").await;
    assert_eq!(s["rule_hits"]["generation"], 2, "{s}");
    assert_eq!(s["rule_hits"]["total"], 0, "{s}");
    assert_eq!(s["policy"]["default_hits"]["versions"][0]["hits"], 0, "{s}");
    let mut admin = h.admin().await;
    let p = admin
        .get_policy(v1::GetPolicyRequest {
            name: "reviews".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    let route = &p.spec.unwrap().default.unwrap().route;
    assert_eq!(
        (
            route.len(),
            route[0].version.as_str(),
            p.metadata.unwrap().generation
        ),
        (1, "v2", 2)
    );
    let (status, body) = http(&h, "POST", "/api/services/reviews/rollback", Some("{}")).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            answer["generation"].as_u64(),
            answer["restored_generation"].as_u64()
        ),
        (Some(3), Some(1))
    );

    // Errors name what was wrong, with the right status.
    let (status, body) = http(
        &h,
        "POST",
        "/api/services/reviews/weights",
        Some(r#"{"weights":[{"version":"v1","weight":1}],"if_generation":1}"#),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = http(&h, "POST", "/api/services/reviews/weights", Some("{")).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(&h, "GET", "/api/services/nothing", None).await;
    assert_eq!(status, 404);
    let mut s = TcpStream::connect(h.http).await.unwrap();
    let req = format!(
        "POST /api/services/reviews/rollback HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n{{}}",
        h.token(Role::Write)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
}

#[tokio::test]
async fn the_live_stream_delivers_updates_as_traffic_changes() {
    let (h, clock) = harness_with_clock().await;
    register_bookinfo(&h).await;
    let mut cars = sidecars(&h).await;
    drive(&clock, &mut cars, 10, 90, 10).await;

    let mut s = TcpStream::connect(h.http).await.unwrap();
    // The page's way: the read token in the cookie (EventSource sends no header).
    let req = format!(
        "GET /api/stream?window=10s HTTP/1.1\r\nhost: x\r\ncookie: theme=dark; serin-token={}\r\n\r\n",
        h.token(Role::Read)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut events = Vec::new();
    let mut read_event = async |events: &mut Vec<Value>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(start) = text.find("event: topology\ndata: ") {
                let rest = &text[start + 22..];
                if let Some(end) = rest.find("\n\n") {
                    events.push(serde_json::from_str::<Value>(&rest[..end]).unwrap());
                    let consumed = start + 22 + end + 2;
                    buf.drain(..consumed);
                    return;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                .await
                .expect("an event within 10 s")
                .unwrap();
            assert!(n > 0, "the stream ended");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    read_event(&mut events).await;
    let rate = |g: &Value| {
        edge(g, "default/productpage/v1", "default/reviews/v2", false)
            .map(|e| e["rps"].as_f64().unwrap())
    };
    assert_close("first event", rate(&events[0]).unwrap(), 10.0);
    // Shift traffic to v2; a later event shows it without asking again.
    drive(&clock, &mut cars, 10, 50, 50).await;
    let started = std::time::Instant::now();
    loop {
        read_event(&mut events).await;
        if rate(events.last().unwrap()).is_some_and(|r| (r - 50.0).abs() <= 10.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no event showed the new rate"
        );
    }
    assert!(events.len() >= 2);
    // And the control plane's own metrics still answer.
    let (status, metrics) = http(&h, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    // Five edge keys: two inbound, one inbound mirror, two outbound.
    assert!(
        metrics.contains("serin_control_telemetry_edges 5"),
        "{metrics}"
    );
}

/// The edge into `destination` in the first update of Admin.WatchTopology (within 5 s).
async fn watched_edge(h: &Harness, destination: &str) -> v1::TopologyEdge {
    let mut updates = h
        .admin()
        .await
        .watch_topology(v1::WatchTopologyRequest::default())
        .await
        .unwrap()
        .into_inner();
    let update = tokio::time::timeout(Duration::from_secs(5), updates.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    update
        .edges
        .into_iter()
        .find(|e| e.destination_id == destination)
        .unwrap_or_else(|| panic!("no edge into {destination}"))
}
