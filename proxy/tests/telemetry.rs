//! In-process loopback test of the telemetry reporter: a real proxy (`Bound`, following the
//! control plane and reporting to it) forwards real HTTP/1.1 requests to two versions of a
//! service on 127.0.0.1 and 127.0.0.2, and the real control plane (the serin-control library) must
//! hold exactly those requests in its telemetry windows, edge by edge; with a traffic policy
//! applied it must hold exactly the hits of each rule and of the default route per version, and
//! the fallbacks on the edge of the version that served them; with the control plane
//! stopped the proxy keeps serving and counts the reports it drops, and reports again once it is
//! back. No root: the original destination is injected.

#[path = "support/control_plane.rs"]
mod control_plane;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use control_plane::{ControlPlaneProcess, LONG, eventually, free_addr, init_tracing, serve_app};
use serin_control::telemetry::{Direction, EdgeKey};
use serin_proto::v1;
use serin_proxy::app::Bound;
use serin_proxy::config::{Config, ConfigSource, ControlPlane, Identity, ProxySettings};
use serin_proxy::orig_dst::FromFn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

impl ControlPlaneProcess {
    /// Requests per edge held in the telemetry windows (the last minute).
    fn requests(&self) -> Vec<(EdgeKey, u64)> {
        let now = serin_control::telemetry::Clock::System.now_ms();
        self.handles
            .edges
            .window(now, 60_000)
            .into_iter()
            .map(|(k, s)| (k, s.counts.requests))
            .collect()
    }
}

/// An HTTP/1.1 app on `ip:port` answering every request `200` with `body`.
async fn start_app(ip: Ipv4Addr, port: u16, body: &'static str) -> tokio::task::JoinHandle<()> {
    serve_app(TcpListener::bind((ip, port)).await.unwrap(), body)
}

/// One `GET /` through the proxy's outbound listener: the body of a 200.
async fn call(outbound: SocketAddr) -> String {
    call_with(outbound, "").await
}

/// One `GET /` with `headers` (each line ending in CRLF) through the proxy's outbound listener:
/// the body of a 200.
async fn call_with(outbound: SocketAddr, headers: &str) -> String {
    let mut stream = TcpStream::connect(outbound).await.unwrap();
    let request = format!("GET / HTTP/1.1\r\nHost: reviews\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(LONG, stream.read_to_string(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn workload(pod: &str, version: &str, ip: Ipv4Addr, port: u16) -> v1::RegisterWorkloadRequest {
    v1::RegisterWorkloadRequest {
        workload: Some(v1::Workload {
            pod_name: pod.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_string()],
            service: "reviews".into(),
            version: version.into(),
            ports: vec![v1::WorkloadPort {
                name: "http".into(),
                port: u32::from(port),
                protocol: v1::Protocol::Http1 as i32,
            }],
            ..Default::default()
        }),
        ttl: None,
        ..Default::default()
    }
}

/// The outbound edge productpage v1 → reviews `version` over HTTP/1.
fn edge(version: &str) -> EdgeKey {
    EdgeKey {
        direction: Direction::Outbound,
        source_workload: "productpage".into(),
        source_namespace: "default".into(),
        source_version: "v1".into(),
        destination_service: "reviews".into(),
        destination_namespace: "default".into(),
        destination_version: version.into(),
        protocol: serin_control::model::Protocol::Http1,
        mirror: false,
    }
}

/// reviews: `x-canary` → v2, `end-user: jason` → v3 (which has no endpoint), the rest 50/50.
const POLICY: &str = r#"
apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews-release, namespace: default}
spec:
  service: reviews
  rules:
    - name: canary
      match: [{headers: {x-canary: {present: true}}}]
      route: [{version: v2, weight: 100}]
    - name: jason
      match: [{headers: {end-user: {exact: jason}}}]
      route: [{version: v3, weight: 100}]
  default:
    route: [{version: v1, weight: 50}, {version: v2, weight: 50}]
"#;

/// `before` (requests per edge) plus `more` requests on the v1 and v2 edges.
fn want_sum(before: &[(EdgeKey, u64)], more: [u64; 2]) -> Vec<(EdgeKey, u64)> {
    let mut want: Vec<(EdgeKey, u64)> = before.to_vec();
    for (version, n) in [("v1", more[0]), ("v2", more[1])] {
        match want.iter_mut().find(|(k, _)| *k == edge(version)) {
            Some((_, total)) => *total += n,
            None if n > 0 => want.push((edge(version), n)),
            None => {}
        }
    }
    want.sort();
    want
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_receives_exactly_the_requests_the_proxy_forwarded() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let grpc = free_addr();
    let cp = ControlPlaneProcess::start(store.path(), grpc).await;

    // reviews v1 on 127.0.0.1 and v2 on 127.0.0.2, same port, registered with the control plane.
    let port = free_addr().port();
    let v1_ip = Ipv4Addr::new(127, 0, 0, 1);
    let v2_ip = Ipv4Addr::new(127, 0, 0, 2);
    let _apps = [
        start_app(v1_ip, port, "v1").await,
        start_app(v2_ip, port, "v2").await,
    ];
    let mut admin = cp.admin().await;
    for (pod, version, ip) in [("reviews-v1-0", "v1", v1_ip), ("reviews-v2-0", "v2", v2_ip)] {
        admin
            .register_workload(workload(pod, version, ip, port))
            .await
            .unwrap();
    }
    let vip = control_plane::vip_of(&mut admin, "reviews").await;

    // The proxy: productpage v1, every outbound connection "was going" to the reviews VIP.
    let orig = Arc::new(OnceLock::new());
    orig.set(SocketAddr::new(vip, port)).unwrap();
    let lookup = {
        let orig = Arc::clone(&orig);
        FromFn(move |_: &TcpStream| Ok(*orig.get().unwrap()))
    };
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let settings = ControlPlane {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        telemetry_interval: Some(Duration::from_millis(200)),
        ..ControlPlane::new(format!("http://{grpc}"))
    };
    let config = Config {
        identity: Identity {
            pod_name: "productpage-v1-0".into(),
            namespace: "default".into(),
            pod_ips: vec!["10.244.0.9".parse().unwrap()],
            service: "productpage".into(),
            version: "v1".into(),
        },
        source: ConfigSource::ControlPlane(settings),
        admin_addr: any,
        outbound_addr: any,
        inbound_addr: any,
        drain_deadline: Duration::from_secs(1),
        proxy: ProxySettings::default(),
        static_tls: None,
    };
    let bound = Arc::new(Bound::start(&config, Arc::new(lookup)).await.unwrap());
    assert!(bound.telemetry.is_some(), "telemetry is on by default");
    let tasks = [
        tokio::spawn({
            let bound = Arc::clone(&bound);
            async move { bound.discover().await }
        }),
        tokio::spawn({
            let bound = Arc::clone(&bound);
            async move { bound.report().await }
        }),
    ];
    let tables = bound.config.subscribe();
    eventually("both versions of reviews in the tables", || {
        let t = tables.borrow().clone();
        async move {
            let d = t.destination(SocketAddr::new(vip, port))?;
            (d.backends.len() == 2).then_some(())
        }
    })
    .await;

    // Real requests through the proxy: every one is counted once on its version's edge.
    const N: u64 = 40;
    let mut answered = [0u64; 2];
    for _ in 0..N {
        match call(bound.outbound_addr).await.as_str() {
            "v1" => answered[0] += 1,
            "v2" => answered[1] += 1,
            other => panic!("answered by {other:?}"),
        }
    }
    let want = |answered: [u64; 2]| {
        let mut want: Vec<(EdgeKey, u64)> = [("v1", answered[0]), ("v2", answered[1])]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(v, n)| (edge(v), n))
            .collect();
        want.sort();
        want
    };
    let expected = want(answered);
    eventually("the control plane holds every forwarded request", || {
        let matches = cp.requests() == expected;
        async move { matches.then_some(()) }
    })
    .await;
    // Histograms and byte counters arrived too: the p99 of the edge is known.
    let now = serin_control::telemetry::Clock::System.now_ms();
    for (key, stats) in cp.handles.edges.window(now, 60_000) {
        assert!(stats.p99_ms.is_some(), "{key:?}: {stats:?}");
        assert_eq!(stats.error_rate, 0.0);
    }

    // A policy: `x-canary` → v2, `end-user: jason` → v3 (no endpoint: falls back to v1), the
    // rest 50/50. Every request's rule hit arrives, per rule and version, exactly once; the
    // fallbacks arrive on the edge of the version that served them.
    let policy = serin_policy::parse_policy(POLICY).unwrap();
    let applied = admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(v1::TrafficPolicy::from(&policy)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let generation = applied.policy.unwrap().metadata.unwrap().generation;
    eventually("the policy in the proxy's tables", || {
        let t = tables.borrow().clone();
        async move {
            let p = t
                .policies()
                .first()
                .map(|p| p.policy.policy.metadata.generation)?;
            (p == Some(generation)).then_some(())
        }
    })
    .await;
    let before = cp.requests();
    const CANARY: u64 = 7;
    const JASON: u64 = 3;
    const SPLIT: u64 = 30;
    for _ in 0..CANARY {
        assert_eq!(
            call_with(bound.outbound_addr, "x-canary: 1\r\n").await,
            "v2"
        );
    }
    for _ in 0..JASON {
        assert_eq!(
            call_with(bound.outbound_addr, "end-user: jason\r\n").await,
            "v1"
        );
    }
    let mut split = [0u64; 2];
    for _ in 0..SPLIT {
        match call(bound.outbound_addr).await.as_str() {
            "v1" => split[0] += 1,
            _ => split[1] += 1,
        }
    }
    let mut want_hits = vec![
        ("canary".to_owned(), "v2".to_owned(), CANARY),
        ("jason".to_owned(), "v3".to_owned(), JASON),
    ];
    for (version, n) in [("v1", split[0]), ("v2", split[1])] {
        if n > 0 {
            want_hits.push((String::new(), version.to_owned(), n));
        }
    }
    want_hits.sort();
    eventually("the control plane holds every rule hit", || {
        let now = serin_control::telemetry::Clock::System.now_ms();
        let mut got: Vec<_> = cp
            .handles
            .rule_hits
            .policy(now, 60_000, "default", "reviews-release", generation)
            .into_iter()
            .map(|h| (h.rule, h.version, h.hits))
            .collect();
        got.sort();
        let matches = got == want_hits;
        async move { matches.then_some(()) }
    })
    .await;
    let fallbacks = |edges: &[(EdgeKey, serin_control::telemetry::WindowStats)], v: &str| {
        edges
            .iter()
            .find(|(k, _)| *k == edge(v))
            .map_or(0, |(_, s)| s.counts.version_fallbacks)
    };
    eventually("the fallbacks on the v1 edge, and every request", || {
        let now = serin_control::telemetry::Clock::System.now_ms();
        let edges = cp.handles.edges.window(now, 60_000);
        let want = want_sum(&before, [JASON + split[0], CANARY + split[1]]);
        let ok = fallbacks(&edges, "v1") == JASON
            && fallbacks(&edges, "v2") == 0
            && cp.requests() == want;
        async move { ok.then_some(()) }
    })
    .await;

    let metrics = admin_get(bound.admin_addr, "/metrics").await;
    assert!(metric(&metrics, "serin_telemetry_reports_sent_total") >= 1);
    assert_eq!(metric(&metrics, "serin_telemetry_connections_total"), 1);
    let dropped_before = metric(&metrics, "serin_telemetry_reports_dropped_total");

    // The control plane goes away: requests are still served, their reports dropped and counted.
    cp.stop().await;
    let mut later = [0u64; 2];
    for _ in 0..10 {
        match call(bound.outbound_addr).await.as_str() {
            "v1" => later[0] += 1,
            _ => later[1] += 1,
        }
    }
    // Two intervals closing after the last request: the second took its delta (and dropped it).
    let m = admin_get(bound.admin_addr, "/metrics").await;
    let intervals = metric(&m, "serin_telemetry_intervals_total");
    eventually("two more report intervals", || async {
        let m = admin_get(bound.admin_addr, "/metrics").await;
        (metric(&m, "serin_telemetry_intervals_total") >= intervals + 2).then_some(())
    })
    .await;
    let m = admin_get(bound.admin_addr, "/metrics").await;
    assert!(
        metric(&m, "serin_telemetry_reports_dropped_total") > dropped_before,
        "reports dropped while the control plane is away: {m}"
    );

    // It comes back (empty windows: a new process): the proxy reconnects and reports new
    // traffic only; what happened meanwhile is not resent.
    let cp = ControlPlaneProcess::start(store.path(), grpc).await;
    eventually("the telemetry stream reopened", || async {
        let m = admin_get(bound.admin_addr, "/metrics").await;
        (metric(&m, "serin_telemetry_connections_total") >= 2).then_some(())
    })
    .await;
    let mut third = [0u64; 2];
    for _ in 0..N {
        match call(bound.outbound_addr).await.as_str() {
            "v1" => third[0] += 1,
            _ => third[1] += 1,
        }
    }
    let expected = want(third);
    eventually(
        "the control plane holds the requests sent after its restart",
        || {
            let matches = cp.requests() == expected;
            async move { matches.then_some(()) }
        },
    )
    .await;

    for task in tasks {
        task.abort();
    }
    cp.stop().await;
}
