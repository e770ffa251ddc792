//! The service around the APIs: health, reflection, HTTP, telemetry intake.

use std::time::Duration;

use serin_proto::v1;
use serin_proto::v1::telemetry_client::TelemetryClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

async fn get(h: &Harness, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(h.http).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn http_ready_metrics_and_the_dashboard_page() {
    let h = Harness::start().await;
    assert_eq!(get(&h, "/ready").await.0, 200);
    let (status, body) = get(&h, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("serin_control_proxies_connected"), "{body}");
    h.admin()
        .await
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap();
    let (_, body) = get(&h, "/metrics").await;
    assert!(
        body.contains("serin_control_policy_changes_total{op=\"apply\",outcome=\"created\"} 1"),
        "{body}"
    );
    // The page and its assets come from the binary itself.
    let (status, body) = get(&h, "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("<script src=\"/app.js\">"), "{body}");
    assert_eq!(get(&h, "/app.js").await.0, 200);
    assert_eq!(get(&h, "/style.css").await.0, 200);
    let (status, body) = get(&h, "/nothing").await;
    assert_eq!(status, 404);
    assert!(body.contains("/api/topology"), "{body}");
}

#[tokio::test]
async fn a_taken_port_fails_at_start_naming_the_address() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = serin_control::config::Config::new(dir.path().to_owned());
    config.grpc = h.grpc;
    config.http = "127.0.0.1:0".parse().unwrap();
    let err = serin_control::app::App::new(config).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("cannot listen for gRPC on {}", h.grpc)),
        "{message}"
    );
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    let h = Harness::start().await;
    let mut health = HealthClient::new(h.channel().await);
    for service in ["", "serin.v1.Admin", "serin.v1.Discovery"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(h.channel().await);
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "serin.v1.Admin",
        "serin.v1.Discovery",
        "serin.v1.Telemetry",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn telemetry_reports_are_acknowledged_and_summed() {
    let h = Harness::start().await;
    let mut client = TelemetryClient::new(h.channel().await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let edge = |count: u64| v1::EdgeStats {
        direction: v1::TrafficDirection::Inbound as i32,
        source_workload: "productpage".into(),
        source_namespace: "default".into(),
        source_version: "v1".into(),
        destination_service: "reviews".into(),
        destination_namespace: "default".into(),
        destination_version: "v2".into(),
        protocol: v1::Protocol::Http1 as i32,
        responses: vec![v1::ResponseCount {
            response_code: 200,
            grpc_status: None,
            count,
        }],
        received_bytes: 100 * count,
        ..Default::default()
    };
    let identity = match hello("productpage-v1-0").kind {
        Some(v1::subscribe_request::Kind::Hello(h)) => h.proxy,
        _ => unreachable!(),
    };
    tx.send(v1::ReportRequest {
        reporter: identity,
        sequence: 1,
        edges: vec![edge(3)],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = client
        .report(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.sequence, first.edges_accepted, first.edges_dropped),
        (1, 1, 0)
    );
    let malformed = v1::EdgeStats {
        direction: 0,
        ..edge(1)
    };
    tx.send(v1::ReportRequest {
        reporter: None,
        sequence: 2,
        edges: vec![edge(4), malformed],
        ..Default::default()
    })
    .await
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.sequence, second.edges_accepted, second.edges_dropped),
        (2, 1, 1)
    );

    let edges = h.handles.edges.window(h.handles.clock.now_ms(), 60_000);
    assert_eq!(edges.len(), 1);
    let counts = &edges[0].1.counts;
    assert_eq!(counts.responses, vec![((200, None), 7)]);
    assert_eq!(counts.received_bytes, 700);

    // A stream whose first report does not say who reports is refused.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::ReportRequest {
        reporter: None,
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
    let err = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
}
