//! Root end-to-end test of the telemetry pipeline: a local mesh (`serin-local`'s `Cluster`: the
//! control plane in its pod, injected pods with real capture rules and real `serin-proxy`
//! sidecars reporting telemetry) in Bookinfo's shape — loadgen → productpage v1 → reviews v1 and
//! v2, every app a `serin-demo-app` — with traffic at a known rate for a bounded time. The
//! control plane's `/api/topology` (10 s window), fed only by the sidecars' reports, must show
//! the edges between version-level nodes at rates within ±20 % of the generated rate. With a
//! 70/30 split of reviews applied through the dashboard API first, `/api/services/reviews` must
//! show the default route's hits per version exactly as the versions answered.
//! Skipped, with a printed reason, without root.
//!
//! Needs the binaries first: `cargo build --bins -p serin-control -p serin-proxy -p
//! serin-iptables -p serin-local` into the same target directory.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use serin_local::cluster::{Cluster, PodSpec, UpOptions};
use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::traffic::TrafficOptions;
use serin_tests::pods::built_binary;

/// Host ports forwarded to the control plane (gRPC, then HTTP), apart from every other test's.
const GRPC_PORT: u16 = 25410;
const HTTP_PORT: u16 = GRPC_PORT + 1;
/// The port every app serves.
const PORT: u16 = 9080;
const NAMESPACE: &str = "shop";
/// The generated traffic: requests per second, for how long.
const RATE: u32 = 50;
const DURATION: Duration = Duration::from_secs(12);

/// A mesh in its own state directory, brought down when the test ends, also by a panic.
struct TestCluster {
    cluster: Cluster,
    dir: PathBuf,
}

impl TestCluster {
    fn up() -> TestCluster {
        let dir = std::env::temp_dir().join(format!("serin-telemetry-{}", std::process::id()));
        let bin_dir = built_binary("serin-proxy")
            .parent()
            .expect("the binaries' directory")
            .to_owned();
        for bin in [
            "serin-local-agent",
            "serin-control",
            "serin-iptables",
            "serin-demo-app",
        ] {
            built_binary(bin);
        }
        let mut options = UpOptions::new(dir.join("mesh"), bin_dir);
        options.grpc_port = GRPC_PORT;
        options.http_port = HTTP_PORT;
        options.app_ready_timeout = Duration::from_secs(20);
        let cluster = Cluster::up(&options).expect("up").cluster;
        TestCluster { cluster, dir }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The sidecars' and the control plane's logs say what went wrong.
            let logs = self.dir.join("mesh/logs");
            for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("----- {} (last lines) -----", entry.path().display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        if let Err(e) = Cluster::down(self.dir.join("mesh")) {
            tracing::error!(error = %e, "down in the test guard failed");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn demo_app() -> PathBuf {
    built_binary("serin-demo-app")
}

fn pod(service: &str, version: &str, calls: &[&str]) -> PodSpec {
    let mut command = vec![
        demo_app().display().to_string(),
        "--port".into(),
        PORT.to_string(),
    ];
    for call in calls {
        command.push("--call".into());
        command.push(format!("{call}:{PORT}"));
    }
    PodSpec::new(
        &format!("{service}-{version}"),
        NAMESPACE,
        service,
        version,
        PORT,
        command,
    )
}

/// `GET path` on the control plane's HTTP port forwarded to the host: the JSON body.
fn api_get(path: &str) -> Value {
    let addr = SocketAddr::from(([127, 0, 0, 1], HTTP_PORT));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: dashboard\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// `METHOD path` with a JSON `body` and the write `token` on the control plane's HTTP port: the
/// JSON answer of a 200.
fn api_send(token: &str, method: &str, path: &str, body: &str) -> Value {
    let addr = SocketAddr::from(([127, 0, 0, 1], HTTP_PORT));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: dashboard\r\nConnection: close\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{method} {path}: {out}");
    let answer = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    serde_json::from_str(answer).unwrap_or_else(|e| panic!("{path}: {e}: {answer}"))
}

/// The primary (not mirrored) edge from node `source` to node `destination`, if shown.
fn edge<'a>(graph: &'a Value, source: &str, destination: &str) -> Option<&'a Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["source"] == source && e["destination"] == destination && e["mirror"] == false)
}

fn rps(edge: Option<&Value>) -> f64 {
    edge.and_then(|e| e["rps"].as_f64()).unwrap_or(0.0)
}

fn within(value: f64, target: f64) -> bool {
    (value - target).abs() <= 0.2 * target
}

#[test]
fn the_topology_shows_the_bookinfo_edges_at_the_generated_rate() {
    init_tracing();
    let test = "the_topology_shows_the_bookinfo_edges_at_the_generated_rate";
    if skip_unless_root(test) {
        return;
    }
    let mesh = TestCluster::up();
    let cluster = &mesh.cluster;
    cluster.create_namespace(NAMESPACE, true).unwrap();
    let mut loadgen = pod("loadgen", "v1", &[]);
    loadgen.name = "loadgen".into();
    cluster
        .deploy(&[
            pod("reviews", "v1", &[]),
            pod("reviews", "v2", &[]),
            pod("productpage", "v1", &["reviews"]),
            loadgen,
        ])
        .expect("deploy");

    // A 70/30 split of reviews, through the dashboard's API, in productpage's sidecar (the one
    // that routes reviews and counts the hits) before any traffic.
    // The dashboard's reads are open in the local mesh; a change needs the write token.
    let token = cluster.admin_token().expect("the local mesh's admin token");
    let changed = api_send(
        &token,
        "POST",
        &format!("/api/services/reviews/weights?namespace={NAMESPACE}"),
        r#"{"weights":[{"version":"v1","weight":70},{"version":"v2","weight":30}]}"#,
    );
    let generation = changed["generation"].as_u64().expect("a generation");
    eventually(
        "the reviews policy in productpage's sidecar",
        Duration::from_secs(10),
        || {
            let routes = sidecar_get(cluster, "productpage-v1", "/routes");
            routes
                .contains(&format!("\"generation\": {generation}"))
                .then_some(())
        },
    );

    // Bounded traffic at a known rate from inside the mesh (through loadgen's own sidecar).
    let mut traffic = TrafficOptions::new(format!("http://productpage:{PORT}/productpage"));
    traffic.rate = RATE;
    traffic.duration = DURATION;
    let report = cluster
        .traffic("loadgen", &demo_app(), &traffic)
        .expect("traffic");
    tracing::info!(?report, "traffic");
    assert_eq!(report.ok, report.sent, "{report:?}");
    let generated = report.sent as f64 / DURATION.as_secs_f64();
    assert!(
        report.count("reviews", "v1") > 0 && report.count("reviews", "v2") > 0,
        "both reviews versions answered: {report:?}"
    );

    // The last second's reports may still be on their way: poll briefly (the 10 s window
    // still covers the traffic for a few seconds after it stopped).
    let loadgen_id = format!("{NAMESPACE}/loadgen/v1");
    let productpage_id = format!("{NAMESPACE}/productpage/v1");
    let [v1_id, v2_id] = ["v1", "v2"].map(|v| format!("{NAMESPACE}/reviews/{v}"));
    let graph = eventually(
        "the bookinfo edges at the generated rate in /api/topology",
        Duration::from_secs(4),
        || {
            let graph = api_get("/api/topology?window=10s");
            let entry = rps(edge(&graph, &loadgen_id, &productpage_id));
            let v1 = rps(edge(&graph, &productpage_id, &v1_id));
            let v2 = rps(edge(&graph, &productpage_id, &v2_id));
            tracing::info!(entry, v1, v2, generated, "topology rates");
            // The balancer may leave one version idle for seconds: its share is checked below
            // over the minute, exactly.
            let ok = within(entry, generated) && within(v1 + v2, generated);
            ok.then_some(graph)
        },
    );

    // Over the minute (all the traffic) every request is on its edge, exactly once.
    let requests = |graph: &Value, source: &str, destination: &str| {
        edge(graph, source, destination).map_or(0, |e| e["requests"].as_u64().unwrap_or(0))
    };
    eventually(
        "every request on its edge in the 1 minute window",
        Duration::from_secs(4),
        || {
            let minute = api_get("/api/topology?window=1m");
            let got = [
                requests(&minute, &loadgen_id, &productpage_id),
                requests(&minute, &productpage_id, &v1_id),
                requests(&minute, &productpage_id, &v2_id),
            ];
            let want = [
                report.sent,
                report.count("reviews", "v1"),
                report.count("reviews", "v2"),
            ];
            let edges: Vec<String> = minute["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    format!(
                        "{} -> {} {} by {}: {}",
                        e["source"],
                        e["destination"],
                        e["protocol"],
                        e["reported_by"],
                        e["requests"]
                    )
                })
                .collect();
            tracing::info!(?got, ?want, ?edges, "requests per edge over the minute");
            (got == want).then_some(())
        },
    );

    // The default route's hits: every request productpage sent to reviews, on the version the
    // split chose (both versions ready: the one that answered), exactly once.
    let want_hits = [report.count("reviews", "v1"), report.count("reviews", "v2")];
    let service = eventually(
        "the default route's hits in /api/services/reviews",
        Duration::from_secs(4),
        || {
            let s = api_get(&format!(
                "/api/services/reviews?namespace={NAMESPACE}&window=1m"
            ));
            let hits = &s["policy"]["default_hits"];
            let got = [0, 1].map(|i| hits["versions"][i]["hits"].as_u64().unwrap_or(0));
            tracing::info!(?got, ?want_hits, "default route hits over the minute");
            (got == want_hits && s["rule_hits"]["generation"] == generation).then_some(s)
        },
    );
    let hits = &service["policy"]["default_hits"];
    assert_eq!(hits["versions"][0]["version"], "v1", "{service}");
    assert_eq!(hits["versions"][0]["configured_percent"], 70.0, "{service}");
    assert_eq!(hits["total"], want_hits[0] + want_hits[1], "{service}");

    // Version-level nodes, and the numbers beside the rates.
    let nodes: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for id in [&loadgen_id, &productpage_id, &v1_id, &v2_id] {
        assert!(nodes.contains(&id.as_str()), "node {id} in {nodes:?}");
    }
    for (source, destination) in [
        (&loadgen_id, &productpage_id),
        (&productpage_id, &v1_id),
        (&productpage_id, &v2_id),
    ] {
        let e = edge(&graph, source, destination).unwrap();
        assert_eq!(e["protocol"], "http1", "{e}");
        // Both sidecars report the hop; the callee's inbound report is the one shown.
        assert_eq!(e["reported_by"], "inbound", "{e}");
        assert_eq!(e["error_rate"], 0.0, "{e}");
        assert!(e["p99_ms"].as_f64().is_some_and(|p| p > 0.0), "{e}");
    }

    // Every sidecar reported over one stream and dropped nothing.
    for pod in ["loadgen", "productpage-v1", "reviews-v1", "reviews-v2"] {
        let metrics = sidecar_metrics(cluster, pod);
        let value = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {pod}'s metrics: {metrics}"))
        };
        assert!(value("serin_telemetry_reports_sent_total") > 0, "{pod}");
        assert_eq!(value("serin_telemetry_reports_dropped_total"), 0, "{pod}");
        assert_eq!(value("serin_telemetry_connections_total"), 1, "{pod}");
    }
    tracing::info!(%graph, "topology");
}

/// The `/metrics` text of `pod`'s sidecar (fetched from inside the pod by the demo app).
fn sidecar_metrics(cluster: &Cluster, pod: &str) -> String {
    sidecar_get(cluster, pod, "/metrics")
}

/// `path` on the admin port of `pod`'s sidecar (fetched from inside the pod by the demo app).
fn sidecar_get(cluster: &Cluster, pod: &str, path: &str) -> String {
    let out = cluster
        .exec(
            pod,
            [
                demo_app().display().to_string(),
                "get".into(),
                format!("http://127.0.0.1:15000{path}"),
            ],
        )
        .expect("exec in the pod")
        .output()
        .expect("serin-demo-app get");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
