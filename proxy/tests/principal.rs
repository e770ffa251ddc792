//! In-process loopback test of the verified peer identity on inbound traffic (issue 10): the
//! real control plane (the serin-control library: CA, Identity, registry, Telemetry), a client
//! sidecar and a server sidecar, both with certificates. A request through the client sidecar
//! reaches the server sidecar over mTLS; a request straight to the server's inbound listener is
//! plaintext (permissive mode). The server sidecar must label its inbound request metrics with
//! the client's SPIFFE ID (`source_principal`) for the first and "" for the second, the client
//! sidecar its outbound ones with "", and the server's telemetry must tell the control plane
//! which of its inbound requests came over mTLS and from which principal. No root: the original
//! destinations are injected.

#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/mesh.rs"]
mod mesh;

use std::time::Duration;

use mesh::{Mesh, get, sample};
use serin_control::telemetry::{Clock, Direction};

use control_plane::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_request_metrics_and_telemetry_name_the_verified_client() {
    let mesh = Mesh::builder()
        .telemetry(Duration::from_millis(100))
        .start()
        .await;
    let (client, server) = (&mesh.client, &mesh.server);
    let client_id = mesh.client_workload.spiffe_id();

    // Three requests through the client sidecar (mTLS on the hop), two plaintext ones straight
    // to the server sidecar.
    for _ in 0..3 {
        assert_eq!(get(client.outbound_addr).await.unwrap(), "HTTP/1.1 200 OK");
    }
    for _ in 0..2 {
        assert_eq!(get(server.inbound_addr).await.unwrap(), "HTTP/1.1 200 OK");
    }

    let metrics = server.metrics.render();
    let inbound = "direction=\"inbound\"";
    let mtls = format!("source_principal=\"{client_id}\"");
    let plain = "source_principal=\"\"";
    for name in [
        "serin_requests_total",
        "serin_request_duration_seconds_count",
    ] {
        assert_eq!(
            sample(&metrics, name, &[inbound, &mtls, "response_code=\"200\""]),
            3,
            "{name} over mTLS: {metrics}"
        );
        assert_eq!(
            sample(&metrics, name, &[inbound, plain, "response_code=\"200\""]),
            2,
            "{name} in plaintext: {metrics}"
        );
    }
    // The contract's labels are all still there.
    let line = metrics
        .lines()
        .find(|l| l.starts_with("serin_requests_total{") && l.contains(&mtls))
        .unwrap();
    for label in [
        "direction=",
        "source_workload=",
        "source_namespace=",
        "source_version=",
        "destination_service=\"reviews\"",
        "destination_namespace=\"default\"",
        "destination_version=\"v1\"",
        "response_code=",
        "grpc_status=",
        "mirror=\"false\"",
    ] {
        assert!(line.contains(label), "{label} in {line}");
    }
    let outbound = client.metrics.render();
    assert_eq!(
        sample(
            &outbound,
            "serin_requests_total",
            &["direction=\"outbound\"", plain, "response_code=\"200\""]
        ),
        3,
        "the client side names no principal: {outbound}"
    );
    assert!(!outbound.contains(&mtls), "{outbound}");

    // Telemetry: the server's inbound edges into reviews carry the five requests, three of them
    // over mTLS from the client's principal.
    let (requests, secured, principals) = eventually(
        "the server's inbound telemetry with the five requests",
        || {
            let now = Clock::System.now_ms();
            let edges = mesh.cp.as_ref().unwrap().handles.edges.window(now, 60_000);
            let mut out = (0, 0, Vec::new());
            for (key, stats) in edges {
                if key.direction == Direction::Inbound && key.destination_service == "reviews" {
                    out.0 += stats.counts.requests;
                    out.1 += stats.counts.mtls_requests;
                    out.2.extend(stats.source_principals);
                }
            }
            async move { (out.0 >= 5).then_some(out) }
        },
    )
    .await;
    assert_eq!((requests, secured), (5, 3));
    assert_eq!(principals, [client_id]);
}
