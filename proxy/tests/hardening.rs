//! In-process hardening tests (FAULTS.md items 5, 6, 8, 9): HTTP/2 rapid reset and CONTINUATION
//! flood against the downstream HTTP/2 server, per-listener connection and request limits, path
//! normalisation before policy matching, and spoofed internal headers. Every flood is bounded in
//! count and time, and another client must keep being served while it runs.

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use harness::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serin_proxy::config::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

/// Most streams the rapid-reset client opens (it stops earlier when the proxy sends GOAWAY).
const RAPID_RESET_MAX_STREAMS: usize = 10_000;
/// Most CONTINUATION frames the flood sends (it stops earlier when the proxy closes).
const CONTINUATION_MAX_FRAMES: usize = 200_000;
/// Growth of the test process's resident memory a flood may cause (the proxy runs in-process);
/// an unbounded buffer would exceed it by far.
const MEMORY_BOUND_BYTES: u64 = 64 * 1024 * 1024;

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "reviews:9080")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn status_and_body(response: Response<Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Resident memory of this process (the proxy runs in it), from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// One plain request on a fresh HTTP/1 connection: the proxy is still serving others.
async fn another_client_is_served(proxy: &TestProxy) {
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    let response = tokio::time::timeout(LONG, client.send_request(get("/other")))
        .await
        .expect("another client answered in time")
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn http2_rapid_reset_gets_goaway_and_other_clients_are_still_served() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let before = resident_bytes();
    let stream = proxy.connect_outbound(vip(9080)).await;
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    // Open a stream and reset it at once, again and again (CVE-2023-44487).
    let deadline = tokio::time::Instant::now() + LONG;
    let mut sent = 0;
    while sent < RAPID_RESET_MAX_STREAMS && tokio::time::Instant::now() < deadline {
        client = match client.ready().await {
            Ok(client) => client,
            Err(_) => break,
        };
        let request = Request::get("http://reviews:9080/reset").body(()).unwrap();
        let Ok((_response, mut body)) = client.send_request(request, false) else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let ended = tokio::time::timeout(LONG, connection)
        .await
        .expect("the rapid-reset connection is closed")
        .unwrap();
    let error = ended.expect_err("the connection ends in GOAWAY");
    assert!(error.is_go_away(), "{error:?}");
    assert_eq!(
        error.reason(),
        Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{error:?}"
    );
    assert!(
        sent < RAPID_RESET_MAX_STREAMS,
        "the client could open all {sent} streams"
    );
    let forwarded = server.requests.load(Ordering::SeqCst);
    tracing::info!(
        sent,
        forwarded,
        "rapid reset: streams opened and reset, requests forwarded"
    );
    assert!(
        forwarded < sent,
        "{forwarded} of {sent} reset streams were forwarded"
    );
    another_client_is_served(&proxy).await;
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < MEMORY_BOUND_BYTES, "memory grew by {grown} bytes");
}

#[tokio::test]
async fn downstream_http2_advertises_the_configured_stream_limit() {
    let server = echo_server().await;
    let settings = ProxySettings {
        h2_max_concurrent_streams: 7,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP2",
        &[(server.addr, "v1")],
    ));
    let stream = proxy.connect_outbound(vip(9080)).await;
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = Request::get("http://reviews:9080/").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(LONG, response).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    // The server's SETTINGS arrived before its answer.
    assert_eq!(client.current_max_send_streams(), 7);
}

/// An HTTP/2 frame header: payload length, type, flags, stream.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The GOAWAY error codes in the frames of `bytes` (a server's side of a connection).
fn goaway_codes(bytes: &[u8]) -> Vec<u32> {
    let mut codes = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let payload = bytes.get(at + 9..at + 9 + len);
        if bytes[at + 3] == FRAME_GOAWAY
            && let Some(p) = payload
            && p.len() >= 8
        {
            codes.push(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    codes
}

#[tokio::test]
async fn http2_continuation_flood_gets_goaway_and_other_clients_are_still_served() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let before = resident_bytes();
    let stream = proxy.connect_outbound(vip(9080)).await;
    let (mut read, mut write) = stream.into_split();
    // Everything the proxy sends, until it closes.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(LONG, read.read_to_end(&mut got)).await;
        got
    });
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    start.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    // A request head that never ends: HEADERS without END_HEADERS (:method GET, :scheme http,
    // :path /), then CONTINUATION frames, each with one more header and never END_HEADERS.
    start.extend(frame(
        FRAME_HEADERS,
        FLAG_END_STREAM,
        1,
        &[0x82, 0x86, 0x84],
    ));
    write.write_all(&start).await.unwrap();
    // A literal header without indexing, new name: `x-flood: aaaaaaaa`.
    let header: &[u8] = b"\x00\x07x-flood\x08aaaaaaaa";
    let batch: Vec<u8> = (0..100)
        .flat_map(|_| frame(FRAME_CONTINUATION, 0, 1, header))
        .collect();
    let deadline = tokio::time::Instant::now() + LONG;
    let mut sent = 0;
    while sent < CONTINUATION_MAX_FRAMES && tokio::time::Instant::now() < deadline {
        if write.write_all(&batch).await.is_err() {
            break;
        }
        sent += 100;
        if reader.is_finished() {
            break;
        }
    }
    let got = tokio::time::timeout(LONG, reader)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    tracing::info!(sent, answered = got.len(), "continuation flood");
    assert!(
        sent < CONTINUATION_MAX_FRAMES,
        "the proxy took all {sent} CONTINUATION frames"
    );
    assert_eq!(goaway_codes(&got), [ENHANCE_YOUR_CALM]);
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
    another_client_is_served(&proxy).await;
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < MEMORY_BOUND_BYTES, "memory grew by {grown} bytes");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let server = tcp_echo_server().await;
    let settings = ProxySettings {
        max_connections: 1,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    proxy.apply(&service_config(
        7000,
        "PROTOCOL_TCP",
        &[(server.addr, "v1")],
    ));
    let mut first = proxy.connect_outbound(vip(7000)).await;
    first.write_all(b"1").await.unwrap();
    let mut one = [0u8; 1];
    first.read_exact(&mut one).await.unwrap();
    // The second is accepted and closed before a byte is read: EOF (or a reset) at once.
    let mut second = proxy.connect_outbound(vip(7000)).await;
    let _ = second.write_all(b"2").await;
    match tokio::time::timeout(LONG, second.read(&mut one)).await {
        Ok(Ok(0)) => {}
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(Ok(n)) => panic!("connection over the limit was served: {:?}", &one[..n]),
        Err(_) => panic!("connection over the limit was neither served nor closed"),
    }
    let labels = ["listener=\"outbound\"", "reason=\"connections\""];
    assert_eq!(
        proxy
            .metric("serin_overload_rejections_total", &labels)
            .await,
        Some(1.0)
    );
    // Once the first is gone its place is free again.
    drop(first);
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let mut next = proxy.connect_outbound(vip(7000)).await;
        let _ = next.write_all(b"3").await;
        if let Ok(Ok(1)) = tokio::time::timeout(LONG, next.read(&mut one)).await {
            assert_eq!(&one, b"3");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_get_503_and_are_counted() {
    let release = Arc::new(Notify::new());
    let server = {
        let release = Arc::clone(&release);
        http_server(move |req: Request<Incoming>| {
            let release = Arc::clone(&release);
            async move {
                if req.uri().path() == "/slow" {
                    release.notified().await;
                }
                Response::new(full("done"))
            }
        })
        .await
    };
    let settings = ProxySettings {
        max_requests: 1,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut slow = http1(proxy.connect_outbound(vip(9080)).await).await;
    let in_flight = tokio::spawn(async move {
        status_and_body(slow.send_request(get("/slow")).await.unwrap()).await
    });
    // Wait until the slow request holds the one place (it reached the server).
    let deadline = tokio::time::Instant::now() + LONG;
    while server.requests.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut other = http1(proxy.connect_outbound(vip(9080)).await).await;
    let (code, body) = status_and_body(other.send_request(get("/fast")).await.unwrap()).await;
    assert_eq!(code, 503);
    assert!(body.contains("overloaded"), "{body}");
    let labels = ["listener=\"outbound\"", "reason=\"requests\""];
    assert_eq!(
        proxy
            .metric("serin_overload_rejections_total", &labels)
            .await,
        Some(1.0)
    );
    release.notify_one();
    let (code, body) = tokio::time::timeout(LONG, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "done"));
    // The place is free again once the slow response has ended.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (code, _) = status_and_body(other.send_request(get("/fast")).await.unwrap()).await;
        if code == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "place never freed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server answering `<version> <path>`.
async fn path_server(version: &'static str) -> Server {
    http_server(move |req: Request<Incoming>| async move {
        Response::new(full(format!("{version} {}", req.uri())))
    })
    .await
}

#[tokio::test]
async fn the_policy_matches_the_normalised_path_and_that_path_is_forwarded() {
    let (v1, v2) = (path_server("v1").await, path_server("v2").await);
    let proxy = TestProxy::start().await;
    let mut yaml = service_config(9080, "PROTOCOL_HTTP1", &[(v1.addr, "v1"), (v2.addr, "v2")]);
    yaml.push_str(
        "policies:\n  - metadata: {name: reviews, namespace: default}\n    spec:\n      service: reviews\n      rules:\n        - name: beta\n          match: [{uri: {prefix: /beta}}]\n          route: [{version: v2, weight: 100}]\n      default: {route: [{version: v1, weight: 100}]}\n",
    );
    proxy.apply(&yaml);
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    for (sent, answer) in [
        ("/beta/../admin", "v1 /admin"),
        ("/beta/%2E%2E/admin", "v1 /admin"),
        ("/beta//x", "v2 /beta/x"),
        ("//beta/./x?q=/../", "v2 /beta/x?q=/../"),
        ("/beta", "v2 /beta"),
        ("/../../beta", "v2 /beta"),
    ] {
        let (code, body) = status_and_body(client.send_request(get(sent)).await.unwrap()).await;
        assert_eq!((code, body.as_str()), (200, answer), "{sent}");
    }
    for (sent, reason) in [
        ("/beta%2F..%2Fadmin", "%2F"),
        ("/beta/x%5c..", "%5C"),
        ("/beta/x%00", "NUL"),
        ("/beta/x%252F", "%2F"),
    ] {
        let (code, body) = status_and_body(client.send_request(get(sent)).await.unwrap()).await;
        assert_eq!(code, 400, "{sent}: {body}");
        assert!(
            body.contains("bad path") && body.contains(reason),
            "{sent}: {body}"
        );
    }
    assert_eq!(
        proxy
            .metric(
                "serin_requests_total",
                &["destination_service=\"reviews\"", "response_code=\"400\""]
            )
            .await,
        Some(4.0)
    );
}

#[tokio::test]
async fn inbound_paths_are_normalised_too() {
    let app = path_server("app").await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9080, "PROTOCOL_HTTP1", &[]));
    let dst = SocketAddr::new("10.244.0.7".parse().unwrap(), app.addr.port());
    let stream = proxy
        .connect_inbound("127.0.9.20".parse().unwrap(), dst)
        .await;
    let mut client = http1(stream).await;
    let (code, body) = status_and_body(client.send_request(get("/a//b/../c")).await.unwrap()).await;
    assert_eq!((code, body.as_str()), (200, "app /a/c"));
    let (code, _) = status_and_body(client.send_request(get("/a%2fb")).await.unwrap()).await;
    assert_eq!(code, 400);
}

/// The lines of an echo server's answer that name `x-serin-*` or `x-forwarded-client-cert`.
fn internal_headers(echo: &str) -> Vec<&str> {
    echo.lines()
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("x-serin-") || l.starts_with("x-forwarded-client-cert"))
        .collect()
}

fn spoofed(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .header("x-serin-mirror", "1")
        .header("x-serin-internal", "spoofed")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/x/sa/y",
        )
        .header("x-request-id", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn internal_headers_from_the_app_are_stripped_outbound() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    // Even posing as a mirror copy (a `-shadow` host) the app cannot set them.
    for host in ["reviews:9080", "reviews-shadow:9080"] {
        let response = client.send_request(spoofed("/", host)).await.unwrap();
        let (code, echo) = status_and_body(response).await;
        assert_eq!(code, 200);
        assert_eq!(internal_headers(&echo), Vec::<&str>::new(), "{echo}");
        assert!(echo.contains("x-request-id: kept"), "{echo}");
    }
    // Over HTTP/2 too.
    let mut h2 = http2(proxy.connect_outbound(vip(9080)).await).await;
    let request = Request::get("http://reviews:9080/")
        .header("x-serin-mirror", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (code, echo) = status_and_body(h2.send_request(request).await.unwrap()).await;
    assert_eq!(code, 200);
    assert_eq!(internal_headers(&echo), Vec::<&str>::new(), "{echo}");
}

#[tokio::test]
async fn inbound_keeps_only_the_mark_of_a_mirror_copy() {
    let app = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9080, "PROTOCOL_HTTP1", &[]));
    let dst = SocketAddr::new("10.244.0.7".parse().unwrap(), app.addr.port());
    let stream = proxy
        .connect_inbound("127.0.9.21".parse().unwrap(), dst)
        .await;
    let mut client = http1(stream).await;
    // A mirror copy (as a sidecar sends it): its mark reaches the app, nothing else internal.
    let response = client
        .send_request(spoofed("/", "productpage-shadow:9080"))
        .await
        .unwrap();
    let (_, echo) = status_and_body(response).await;
    assert_eq!(internal_headers(&echo), ["x-serin-mirror: 1"], "{echo}");
    // The mark on a request that is not a copy is a spoof: removed.
    let response = client
        .send_request(spoofed("/", "productpage:9080"))
        .await
        .unwrap();
    let (_, echo) = status_and_body(response).await;
    assert_eq!(internal_headers(&echo), Vec::<&str>::new(), "{echo}");
}
