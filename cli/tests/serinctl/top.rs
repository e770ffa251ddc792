//! `serinctl top --once` against the real binary, fed by a simulated sidecar's telemetry.

use std::time::Duration;

use serin_proto::v1;
use serin_proto::v1::telemetry_client::TelemetryClient;

use crate::support::{ControlPlane, runtime};

fn edge(source: (&str, &str, &str), destination: (&str, &str), requests: u64) -> v1::EdgeStats {
    v1::EdgeStats {
        direction: v1::TrafficDirection::Inbound as i32,
        source_workload: source.1.into(),
        source_namespace: source.0.into(),
        source_version: source.2.into(),
        destination_service: destination.0.into(),
        destination_namespace: "default".into(),
        destination_version: destination.1.into(),
        protocol: v1::Protocol::Http1 as i32,
        responses: vec![v1::ResponseCount {
            response_code: 200,
            grpc_status: None,
            count: requests,
        }],
        ..Default::default()
    }
}

#[test]
fn top_once_prints_the_edges_busiest_first() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    let rt = runtime();
    // No traffic yet.
    let empty = cp.ok(&["top", "--once"]);
    assert!(empty.contains("no traffic in the window"), "{empty}");

    // One report from a reviews sidecar: outside callers reach frontend, frontend reaches reviews.
    let url = cp.url();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let answer = rt.block_on(async {
        let mut client = TelemetryClient::connect(url).await.unwrap();
        tx.send(v1::ReportRequest {
            reporter: Some(v1::ProxyIdentity {
                pod_name: "reviews-v2-0".into(),
                namespace: "default".into(),
                pod_ips: vec!["10.244.0.30".into()],
                service: "reviews".into(),
                version: "v2".into(),
                ..Default::default()
            }),
            sequence: 1,
            edges: vec![
                edge(("default", "frontend", "v1"), ("reviews", "v2"), 10),
                edge(("unknown", "unknown", "unknown"), ("frontend", "v1"), 100),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
        let mut answers = client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    });
    assert_eq!(answer.edges_accepted, 2);

    let text = cp.ok(&["top", "--once", "--window", "1m"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("2 edges") && lines[0].contains("last 60s"),
        "{text}"
    );
    assert!(lines[1].starts_with("SOURCE"), "{text}");
    assert!(
        lines[2].starts_with("(outside the mesh)") && lines[2].contains("default/frontend/v1"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("default/frontend/v1") && lines[3].contains("default/reviews/v2"),
        "{text}"
    );
    // Another namespace has none of it; -A has all.
    let other = cp.ok(&["top", "--once", "-n", "shop"]);
    assert!(other.contains("no traffic in the window"), "{other}");
    assert!(cp.ok(&["top", "--once", "-A"]).contains("2 edges"));

    // A window the control plane does not keep is refused in one line.
    let out = cp.ctl(&["top", "--once", "--window", "2h"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--window \"2h\""), "{err}");
    drop(tx);
}
