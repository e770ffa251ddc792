//! The admin API's credentials: gRPC Admin and the dashboard's `/api/` refuse a missing or
//! unknown token (UNAUTHENTICATED / 401) and a read token on a write (PERMISSION_DENIED / 403);
//! Discovery and Telemetry (the sidecars') need none.

use std::os::unix::fs::PermissionsExt as _;

use serin_proto::auth::Role;
use serin_proto::v1;
use tonic::Code;

use crate::dashboard::http_raw;
use crate::support::{Harness, apply_request, hello, simple, workload};

fn register() -> v1::RegisterWorkloadRequest {
    v1::RegisterWorkloadRequest {
        workload: Some(workload("reviews-v1-0", "reviews", "v1", "10.244.0.11")),
        ttl: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn admin_rpcs_need_a_token_and_writes_a_write_token() {
    let h = Harness::start().await;
    let read = h.token(Role::Read).to_owned();
    let write = h.token(Role::Write).to_owned();

    // No credential: reads and writes are refused, saying what is missing.
    let e = h
        .admin_as(None)
        .await
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("no admin token"), "{}", e.message());
    let e = h
        .admin_as(None)
        .await
        .apply_policy(apply_request(simple("reviews", "v1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A token of no line of the file.
    let e = h
        .admin_as(Some("not-a-token-of-this-control-plane"))
        .await
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains("not valid"), "{}", e.message());

    // A read token reads, but neither changes a policy nor registers a workload.
    let mut reader = h.admin_as(Some(&read)).await;
    reader
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap();
    reader
        .list_proxies(v1::ListProxiesRequest::default())
        .await
        .unwrap();
    let e = reader
        .apply_policy(apply_request(simple("reviews", "v1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message()
            .contains("role read; ApplyPolicy needs a token with role write"),
        "{}",
        e.message()
    );
    let e = reader.register_workload(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    // A write token does both; nothing was stored by the refused calls.
    let mut writer = h.admin_as(Some(&write)).await;
    let listed = writer
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.policies.is_empty(), "{listed:?}");
    writer.register_workload(register()).await.unwrap();
    writer
        .apply_policy(apply_request(simple("reviews", "v1")))
        .await
        .unwrap();
}

#[tokio::test]
async fn discovery_needs_no_admin_token() {
    let h = Harness::start().await;
    let mut discovery = h.discovery().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("reviews-v1-0")).await.unwrap();
    let mut stream = discovery
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("a first snapshot");
}

#[tokio::test]
async fn anonymous_reads_leave_writes_closed() {
    let h = Harness::start_with(|c| c.admin_read_anonymous = true).await;
    let mut anonymous = h.admin_as(None).await;
    anonymous
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap();
    let e = anonymous.register_workload(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let (status, _) = http_raw(h.http, "", "GET", "/api/topology", None).await;
    assert_eq!(status, 200);
    let (status, _) = http_raw(h.http, "", "POST", "/api/services/reviews/rollback", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn an_operator_tokens_file_with_hashed_tokens_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    // sha256("dashboard-viewer-0001"): the file need not hold a reader's secret.
    let digest = "sha256:09332fb946e547aa53a5897b3dbe47f7d7b8c41d4f1c6f075fb17a97daba90f1";
    std::fs::write(
        &file,
        format!("# ci\nwrite ci-pipeline-token-0001\nread {digest}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let given = file.clone();
    let h = Harness::start_with(move |c| c.admin_tokens = Some(given)).await;
    assert_eq!(h.token(Role::Write), "ci-pipeline-token-0001");
    h.admin().await.register_workload(register()).await.unwrap();
    let mut viewer = h.admin_as(Some("dashboard-viewer-0001")).await;
    viewer
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap();
    let e = viewer.register_workload(register()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = h
        .admin_as(Some("some-other-token-000001"))
        .await
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn dashboard_writes_need_a_write_token_in_the_header() {
    let h = Harness::start().await;
    h.admin().await.register_workload(register()).await.unwrap();
    let read = h.token(Role::Read).to_owned();
    let write = h.token(Role::Write).to_owned();
    let weights = Some(r#"{"weights":[{"version":"v1","weight":100}]}"#);
    let path = "/api/services/reviews/weights";

    // The page itself is open; its data needs a read token (header or cookie).
    let (status, _) = http_raw(h.http, "", "GET", "/", None).await;
    assert_eq!(status, 200);
    let (status, body) = http_raw(h.http, "", "GET", "/api/topology", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("no admin token"), "{body}");
    let cookie = format!("cookie: serin-token={read}\r\n");
    let (status, body) = http_raw(h.http, &cookie, "GET", "/api/topology", None).await;
    assert_eq!(status, 200, "{body}");

    // Writes: none, unknown, read-only, and a cookie (even a write token's) are refused.
    let (status, body) = http_raw(h.http, "", "POST", path, weights).await;
    assert_eq!(status, 401, "{body}");
    let bad = "authorization: Bearer not-a-token-of-this-cp\r\n";
    let (status, _) = http_raw(h.http, bad, "POST", path, weights).await;
    assert_eq!(status, 401);
    let reader = format!("authorization: Bearer {read}\r\n");
    let (status, body) = http_raw(h.http, &reader, "POST", path, weights).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("needs a token with role write"), "{body}");
    let cookie = format!("cookie: serin-token={write}\r\n");
    let (status, _) = http_raw(h.http, &cookie, "POST", path, weights).await;
    assert_eq!(status, 401, "a cookie never authorizes a change");
    let none = h
        .admin()
        .await
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.policies.is_empty(), "{none:?}");

    // The write token in the header changes the split.
    let writer = format!("authorization: Bearer {write}\r\n");
    let (status, body) = http_raw(h.http, &writer, "POST", path, weights).await;
    assert_eq!(status, 200, "{body}");
}
