//! In-process tests of every protocol path through one proxy on loopback: the proxy's
//! original-destination lookup is injected (see `support/harness.rs`), so no root is needed.

#[path = "support/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use harness::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn body_text(response: Response<Incoming>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "reviews")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn ready_only_once_a_config_is_applied() {
    let proxy = TestProxy::start().await;
    assert_eq!(proxy.admin("/ready").await.0, 503);
    assert_eq!(proxy.admin("/live").await.0, 200);
    proxy.apply(&service_config(80, "PROTOCOL_HTTP1", &[]));
    assert_eq!(proxy.admin("/ready").await.0, 200);
    let (code, dump) = proxy.admin("/config_dump").await;
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["snapshot"]["services"][0]["name"], "reviews");
    assert_eq!(dump["proxy"]["service"], "productpage");
    assert_eq!(proxy.admin("/nope").await.0, 404);
}

#[tokio::test]
async fn wait_ready_returns_once_a_config_arrives_and_gives_up_at_its_timeout() {
    let proxy = TestProxy::start().await;
    let admin = proxy.bound.admin_addr;
    let err = serin_proxy::app::wait_ready(admin, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let mut waiting = tokio::spawn(serin_proxy::app::wait_ready(admin, LONG));
    // Not ready, so still waiting a while later.
    let early = tokio::time::timeout(Duration::from_millis(150), &mut waiting).await;
    assert!(
        early.is_err(),
        "wait-ready returned before a config: {early:?}"
    );
    proxy.apply(&service_config(80, "PROTOCOL_HTTP1", &[]));
    tokio::time::timeout(LONG, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn http1_keep_alive_reuses_one_upstream_connection_and_close_is_honoured() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    for i in 0..5 {
        let req = Request::post(format!("/echo/{i}"))
            .header("host", "reviews")
            .body(Full::new(Bytes::from(format!("body {i}"))))
            .unwrap();
        let response = client.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = body_text(response).await;
        assert!(
            text.starts_with(&format!("POST /echo/{i} HTTP/1.1\n")),
            "{text}"
        );
        assert!(text.contains("host: reviews\n"), "{text}");
        assert!(text.ends_with(&format!("body {i}")), "{text}");
    }
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    // `Connection: close`: answered, then the proxy closes the client connection.
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(b"GET /bye HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = String::from_utf8(read_to_end(&mut stream).await.unwrap()).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("GET /bye HTTP/1.1\n"), "{out}");
    // Hop-by-hop: `Connection: close` went no further than the proxy.
    assert!(!out.contains("connection: close\n"), "{out}");

    let labels = [
        "direction=\"outbound\"",
        "source_workload=\"productpage\"",
        "source_version=\"v1\"",
        "destination_service=\"reviews\"",
        "destination_version=\"v1\"",
        "response_code=\"200\"",
        "grpc_status=\"\"",
        "mirror=\"false\"",
    ];
    assert_eq!(
        proxy.metric("serin_requests_total", &labels).await,
        Some(6.0)
    );
    assert_eq!(
        proxy
            .metric("serin_request_duration_seconds_count", &labels)
            .await,
        Some(6.0)
    );
}

#[tokio::test]
async fn hop_by_hop_and_h2c_upgrade_headers_are_stripped() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(
            b"GET /h HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade, HTTP2-Settings, X-Private\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nX-Private: secret\r\n\
              Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-Kept: yes\r\n\r\n",
        )
        .await
        .unwrap();
    let mut out = vec![0; 4096];
    let n = tokio::time::timeout(LONG, stream.read(&mut out))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&out[..n]).to_lowercase();
    assert!(
        out.starts_with("http/1.1 200 ok"),
        "not upgraded to h2c: {out}"
    );
    for stripped in [
        "upgrade:",
        "http2-settings:",
        "x-private:",
        "keep-alive:",
        "proxy-connection:",
        "te:",
    ] {
        assert!(
            !out.contains(&format!("\n{stripped}")),
            "{stripped} reached the server: {out}"
        );
    }
    assert!(out.contains("\nx-kept: yes"), "{out}");
}

#[tokio::test]
async fn http1_streams_chunked_bodies_and_trailers_both_ways() {
    let server = http_server(|req: Request<Incoming>| async move {
        // Read the (chunked) body, then answer in chunks with a trailer holding its length.
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
        tokio::spawn(async move {
            for half in [body.slice(..body.len() / 2), body.slice(body.len() / 2..)] {
                let _ = tx.send(Ok(Frame::data(half))).await;
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-total", body.len().to_string().parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        let stream = tokio_stream_from(rx);
        // HTTP/1 sends only the trailer fields the head announces.
        let mut response = Response::new(StreamBody::new(stream).boxed());
        response
            .headers_mut()
            .insert("trailer", "x-total".parse().unwrap());
        response
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: reviews\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + LONG;
    while !String::from_utf8_lossy(&out).contains("x-total: 11\r\n\r\n") {
        assert!(
            Instant::now() < deadline,
            "no trailer: {}",
            String::from_utf8_lossy(&out)
        );
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(LONG, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("stalled after {}", String::from_utf8_lossy(&out)))
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    let out = String::from_utf8_lossy(&out).to_lowercase();
    assert!(out.contains("transfer-encoding: chunked"), "{out}");
    assert!(out.contains("hello") && out.contains(" world"), "{out}");
}

/// A `Stream` of the frames sent on `rx`.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, hyper::Error>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, hyper::Error>> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn h2c_prior_knowledge_multiplexes_streams_over_a_pooled_connection() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    // Undeclared: detected from the preface.
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v2")],
    ));
    let client = http2(proxy.connect_outbound(vip(9080)).await).await;
    let requests = (0..20).map(|i| {
        let mut client = client.clone();
        async move {
            let req = Request::post(format!("http://reviews:9080/s/{i}"))
                .body(Full::new(Bytes::from(vec![b'x'; 1000 * i])))
                .unwrap();
            let response = client.send_request(req).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.version(), http::Version::HTTP_2);
            let text = body_text(response).await;
            assert!(
                text.starts_with(&format!("POST http://reviews:9080/s/{i} HTTP/2.0\n")),
                "{text}"
            );
            assert!(text.ends_with(&"x".repeat(1000 * i)), "body {i} mangled");
        }
    });
    join_all(requests).await;
    assert_eq!(
        server.connections.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    let labels = ["destination_version=\"v2\"", "response_code=\"200\""];
    assert_eq!(
        proxy.metric("serin_requests_total", &labels).await,
        Some(20.0)
    );
}

/// A gRPC-shaped server: answers `/ok` with grpc-status 0 and `/fail` with 14, in trailers,
/// after echoing the request's data frames (a bidirectional stream).
async fn grpc_like_server() -> Server {
    http_server(|req: Request<Incoming>| async move {
        let status = if req.uri().path() == "/fail" {
            "14"
        } else {
            "0"
        };
        let mut body = req.into_body();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    let _ = tx.send(Ok(Frame::data(data.clone()))).await;
                }
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", status.parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        let mut response = Response::new(StreamBody::new(tokio_stream_from(rx)).boxed());
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        response
    })
    .await
}

#[tokio::test]
async fn grpc_streams_both_ways_and_trailers_set_grpc_status() {
    let server = grpc_like_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9090,
        "PROTOCOL_GRPC",
        &[(server.addr, "v1")],
    ));
    let mut client = http2(proxy.connect_outbound(vip(9090)).await).await;

    // A bidirectional stream: each message sent comes back before the next is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
    let body = StreamBody::new(tokio_stream_from(rx));
    let req = Request::post("http://reviews:9090/ok")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let mut h2 = http2_generic(proxy.connect_outbound(vip(9090)).await).await;
    let response = h2.send_request(req).await.unwrap();
    let mut response_body = response.into_body();
    for i in 0..3 {
        tx.send(Ok(Frame::data(Bytes::from(format!("message {i}")))))
            .await
            .unwrap();
        let frame = tokio::time::timeout(LONG, response_body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            Bytes::from(format!("message {i}"))
        );
    }
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = response_body.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(trailers.unwrap()["grpc-status"], "0");

    let req = Request::post("http://reviews:9090/fail")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let response = client.send_request(req).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");

    let ok = [
        "destination_service=\"reviews\"",
        "response_code=\"200\"",
        "grpc_status=\"0\"",
    ];
    let fail = [
        "destination_service=\"reviews\"",
        "response_code=\"200\"",
        "grpc_status=\"14\"",
    ];
    assert_eq!(proxy.metric("serin_requests_total", &ok).await, Some(1.0));
    assert_eq!(proxy.metric("serin_requests_total", &fail).await, Some(1.0));
}

/// An HTTP/2 client connection for any body type.
async fn http2_generic<B>(stream: TcpStream) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn websocket_style_upgrade_becomes_a_tunnel() {
    let server = http_server(|mut req: Request<Incoming>| async move {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = upgrade.await.unwrap();
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            loop {
                let n = io.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                io.write_all(&buf[..n]).await.unwrap();
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(full(""))
            .unwrap()
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: reviews\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            tokio::time::timeout(LONG, stream.read(&mut b))
                .await
                .unwrap()
                .unwrap(),
            1
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in [&b"ping"[..], b"pong pong"] {
        stream.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(LONG, stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg);
    }
}

#[tokio::test]
async fn connect_tunnels_pass_through() {
    let server = http_server(|mut req: Request<Incoming>| async move {
        assert_eq!(req.method(), hyper::Method::CONNECT);
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let mut io = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
        Response::new(full(""))
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(b"CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(
            tokio::time::timeout(LONG, stream.read(&mut b))
                .await
                .unwrap()
                .unwrap(),
            1
        );
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream.write_all(b"tunnelled bytes").await.unwrap();
    let mut buf = [0u8; 15];
    tokio::time::timeout(LONG, stream.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"tunnelled bytes");
}

#[tokio::test]
async fn tcp_echo_with_half_close_in_each_direction() {
    let server = tcp_echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        7000,
        "PROTOCOL_TCP",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(7000)).await;
    stream.write_all(b"hello over tcp").await.unwrap();
    // Half-close: the echo server sees EOF, sends the rest, and closes its side.
    stream.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut stream).await.unwrap(), b"hello over tcp");
    let labels = ["destination_service=\"reviews\"", "direction=\"outbound\""];
    assert_eq!(
        proxy
            .metric("serin_tcp_connections_opened_total", &labels)
            .await,
        Some(1.0)
    );
    assert_eq!(
        proxy.metric("serin_tcp_sent_bytes_total", &labels).await,
        Some(14.0)
    );
    assert_eq!(
        proxy
            .metric("serin_tcp_received_bytes_total", &labels)
            .await,
        Some(14.0)
    );

    // The other direction: the server closes its side first, the client still sends.
    let server = tcp_server(|mut stream: TcpStream| async move {
        stream.write_all(b"bye first").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        stream.into_std().unwrap();
        assert_eq!(rest, b"late words");
    })
    .await;
    proxy.apply(&service_config(
        7000,
        "PROTOCOL_TCP",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(7000)).await;
    let mut first = [0u8; 9];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"bye first");
    assert_eq!(
        stream.read(&mut [0u8; 8]).await.unwrap(),
        0,
        "FIN passed on"
    );
    stream.write_all(b"late words").await.unwrap();
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn upstream_reset_is_forwarded_as_reset() {
    let server = tcp_server(|stream: TcpStream| async move {
        let mut stream = stream;
        let mut b = [0u8; 4];
        let _ = stream.read_exact(&mut b).await;
        stream.set_zero_linger().unwrap();
        drop(stream);
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        7000,
        "PROTOCOL_TCP",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(7000)).await;
    stream.write_all(b"boom").await.unwrap();
    let mut buf = [0u8; 8];
    let err = tokio::time::timeout(LONG, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn downstream_reset_is_forwarded_as_reset() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let server = tcp_server(move |mut stream: TcpStream| {
        let tx = tx.lock().unwrap().take();
        async move {
            let mut buf = [0u8; 16];
            let first = stream.read(&mut buf).await.map(|n| n > 0);
            let second = stream.read(&mut buf).await;
            if let Some(tx) = tx {
                let _ = tx.send((first.ok(), second.map_err(|e| e.kind())));
            }
        }
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        7000,
        "PROTOCOL_TCP",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(7000)).await;
    stream.write_all(b"hi").await.unwrap();
    // Wait until the bytes went through, then abort the connection.
    let deadline = Instant::now() + LONG;
    let labels = ["destination_service=\"reviews\""];
    while proxy.metric("serin_tcp_sent_bytes_total", &labels).await != Some(2.0) {
        assert!(Instant::now() < deadline, "bytes never forwarded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream.set_zero_linger().unwrap();
    drop(stream);
    let (first, second) = tokio::time::timeout(LONG, rx).await.unwrap().unwrap();
    assert_eq!(first, Some(true));
    assert_eq!(
        second,
        Err(std::io::ErrorKind::ConnectionReset),
        "a RST must arrive as a RST"
    );
}

#[tokio::test]
async fn server_speaks_first_on_an_undeclared_port_without_waiting() {
    let server = tcp_server(|mut stream: TcpStream| async move {
        let _ = stream.write_all(b"220 banner ready\r\n").await;
        let mut buf = [0u8; 16];
        let _ = stream.read(&mut buf).await;
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        25,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let start = Instant::now();
    let mut stream = proxy.connect_outbound(vip(25)).await;
    let mut banner = [0u8; 18];
    tokio::time::timeout(LONG, stream.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"220 banner ready\r\n");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "banner took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn garbage_and_partial_prefaces_on_undeclared_ports_go_opaque() {
    let server = tcp_echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        443,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    // A TLS ClientHello split across two writes, and a preface that stops short.
    for pieces in [
        &[&b"\x16\x03\x01"[..], b"\x02\x00\x01\x00"][..],
        &[&b"PRI * HTTP/2.0\r\n"[..]][..],
    ] {
        let mut stream = proxy.connect_outbound(vip(443)).await;
        let mut sent = Vec::new();
        for piece in pieces {
            stream.write_all(piece).await.unwrap();
            sent.extend_from_slice(piece);
        }
        let mut echoed = vec![0u8; sent.len()];
        tokio::time::timeout(LONG, stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, sent);
    }
}

#[tokio::test]
async fn destinations_outside_the_mesh_pass_through_unchanged() {
    let server = tcp_echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9080, "PROTOCOL_HTTP1", &[]));
    let mut stream = proxy.connect_outbound(server.addr).await;
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    stream.shutdown().await.unwrap();
    assert_eq!(
        read_to_end(&mut stream).await.unwrap(),
        b"GET / HTTP/1.1\r\n\r\n"
    );
    let labels = ["destination_service=\"passthrough\""];
    assert_eq!(
        proxy
            .metric("serin_tcp_connections_opened_total", &labels)
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn inbound_forwards_to_the_app_on_loopback_with_the_peer_as_source() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    // The peer 127.0.9.9 is an endpoint of `reviews` v3; we serve `productpage`.
    let config = service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[("127.0.9.9:1".parse().unwrap(), "v3")],
    );
    proxy.apply(&config);
    let pod_ip_dst = std::net::SocketAddr::new("10.244.0.7".parse().unwrap(), server.addr.port());
    let stream = proxy
        .connect_inbound("127.0.9.9".parse().unwrap(), pod_ip_dst)
        .await;
    let mut client = http1(stream).await;
    let response = client.send_request(get("/in")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(body_text(response).await.starts_with("GET /in HTTP/1.1"));
    let labels = [
        "direction=\"inbound\"",
        "source_workload=\"reviews\"",
        "source_version=\"v3\"",
        "destination_service=\"productpage\"",
        "destination_version=\"v1\"",
        "response_code=\"200\"",
    ];
    assert_eq!(
        proxy.metric("serin_requests_total", &labels).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn inbound_reaches_an_app_bound_to_the_pod_ip_only_from_the_passthrough_source() {
    // The "pod IP" is 127.0.0.5 here; 127.0.0.1 on the same port is bound but not listening, so
    // a connect there is refused, as for an app that listens on its pod IP only.
    let (app, port, _loopback_taken) = {
        let mut found = None;
        for _ in 0..10 {
            let app = tokio::net::TcpListener::bind("127.0.0.5:0").await.unwrap();
            let port = app.local_addr().unwrap().port();
            let taken =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            if taken
                .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
                .is_ok()
            {
                found = Some((app, port, taken));
                break;
            }
        }
        found.expect("a port free on both 127.0.0.5 and 127.0.0.1")
    };
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = app.accept().await {
            let _ = stream
                .write_all(format!("peer={}", peer.ip()).as_bytes())
                .await;
        }
    });
    let identity = serin_proxy::config::Identity {
        pod_ips: vec!["127.0.0.5".parse().unwrap()],
        ..identity()
    };
    let proxy = TestProxy::start_as(identity, serin_proxy::config::ProxySettings::default()).await;
    proxy.apply(&service_config(9080, "PROTOCOL_HTTP1", &[]));
    let pod_ip_dst = std::net::SocketAddr::from(([127, 0, 0, 5], port));
    let mut stream = proxy
        .connect_inbound("127.0.9.8".parse().unwrap(), pod_ip_dst)
        .await;
    stream.write_all(b"hello").await.unwrap();
    let mut out = [0u8; 14];
    tokio::time::timeout(LONG, stream.read_exact(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&out, b"peer=127.0.0.6");
}

#[tokio::test]
async fn absolute_uris_http10_without_host_and_h2_without_authority_route_by_destination() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    // An absolute URI naming another host, and HTTP/1.0 without Host: both reach `reviews`.
    for request in [
        &b"GET http://elsewhere.example/x HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"[..],
        b"GET /old HTTP/1.0\r\n\r\n",
    ] {
        let mut stream = proxy.connect_outbound(vip(9080)).await;
        stream.write_all(request).await.unwrap();
        let out = String::from_utf8(read_to_end(&mut stream).await.unwrap()).unwrap();
        assert!(out.contains(" 200 OK\r\n"), "{out}");
    }
    // HTTP/2 without :authority gets the service's.
    let mut client = http2(proxy.connect_outbound(vip(9080)).await).await;
    let response = client
        .send_request(
            Request::get("/no-authority")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = body_text(response).await;
    assert!(
        text.starts_with("GET http://reviews:9080/no-authority HTTP/2.0"),
        "{text}"
    );
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// A log sink for one test's subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one request through a proxy while `level` (a `--log-level`) filters this thread's logs,
/// and returns what was logged. A current-thread runtime: every task runs on this thread.
async fn logged_with(level: &str) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            serin_proxy::app::log_filter(level),
        ))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    let response = client.send_request(get("/logged")).await.unwrap();
    body_text(response).await;
    drop(client);
    // The access line is written right after the request is counted (when the response body is
    // done or dropped): once the count shows, the line is there or never will be.
    let deadline = Instant::now() + LONG;
    while proxy
        .metric("serin_requests_total", &["response_code=\"200\""])
        .await
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "request never counted");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned()
}

#[tokio::test]
async fn access_log_is_off_by_default_and_on_when_asked() {
    let default = logged_with("info").await;
    assert!(default.contains("config applied"), "{default}");
    assert!(!default.contains(" access:"), "{default}");
    let on = logged_with("info,access=info").await;
    let line = on
        .lines()
        .find(|l| l.contains(" access:"))
        .unwrap_or_else(|| panic!("no access line: {on}"));
    for field in [
        "direction=\"outbound\"",
        "destination=reviews",
        "destination_version=v1",
        "code=200",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
}
