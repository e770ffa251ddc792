//! In-process fault tests: failing upstreams, malformed and abusive requests, limits, loops,
//! drain and start-up failures (FAULTS.md items 1-4, 12-14, 16-17, 23, 25; connection limits are
//! in `hardening.rs`). Every failure must
//! reach the client as a prompt, clear answer, and the proxy must keep serving.

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serin_proxy::config::ProxySettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "reviews")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn status_and_body(response: Response<Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `raw` on a new outbound connection to `dst` and reads the answer until EOF.
async fn raw_exchange(proxy: &TestProxy, dst: SocketAddr, raw: &[u8]) -> String {
    let mut stream = proxy.connect_outbound(dst).await;
    stream.write_all(raw).await.unwrap();
    String::from_utf8_lossy(&read_to_end(&mut stream).await.unwrap_or_default()).into_owned()
}

/// A port on loopback where nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn refused_upstream_gives_a_prompt_503_and_a_metric() {
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(closed_port().await, "v1")],
    ));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    let start = Instant::now();
    let (code, body) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(code, 503);
    assert!(
        body.contains("connect to 127.0.0.1:") && body.contains("failed"),
        "{body}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    // The same client connection still works for the next request (same answer).
    let (code, _) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(code, 503);
    let labels = ["destination_service=\"reviews\"", "response_code=\"503\""];
    assert_eq!(
        proxy.metric("serin_requests_total", &labels).await,
        Some(2.0)
    );
}

#[tokio::test]
async fn service_without_ready_endpoints_gives_503_and_recovers() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9080, "PROTOCOL_HTTP1", &[]));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    let (code, body) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!((code, body.as_str()), (503, "serin: no ready endpoint\n"));
    // Endpoints come back: the same connection now reaches them.
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let (code, _) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(code, 200);
}

/// A listener whose accept queue is full and never drained: further SYNs are dropped, so a
/// connect to it hangs like one to a black-holed address.
fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    // Fill the queue until a connect no longer completes at once.
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    (listener, fillers, addr)
}

#[tokio::test]
async fn black_holed_upstream_times_out_promptly_and_other_requests_still_work() {
    let (_listener, _fillers, hole) = black_hole();
    let server = echo_server().await;
    let settings = ProxySettings {
        connect_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    let mut config = service_config(9080, "PROTOCOL_HTTP1", &[(hole, "v1")]);
    config.push_str(&format!(
        "  - service: ratings\n    namespace: default\n    endpoints: [{{addresses: [\"127.0.0.1\"], ports: [{{name: main, port: {}}}], version: v1, ready: true}}]\n",
        server.addr.port()
    ));
    let config = config.replacen(
        "services:\n",
        "services:\n  - {name: ratings, namespace: default, vips: [\"10.96.0.11\"], ports: [{port: 9080, name: main, protocol: PROTOCOL_HTTP1}]}\n",
        1,
    );
    proxy.apply(&config);
    let slow = tokio::spawn({
        let stream = proxy.connect_outbound(vip(9080)).await;
        async move {
            let start = Instant::now();
            let mut client = http1(stream).await;
            let (code, body) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
            (code, body, start.elapsed())
        }
    });
    // Meanwhile another service answers.
    let ratings: SocketAddr = "10.96.0.11:9080".parse().unwrap();
    let mut client = http1(proxy.connect_outbound(ratings).await).await;
    let (code, _) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
    assert_eq!(code, 200);
    let (code, body, took) = slow.await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("timed out after 300ms"), "{body}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[tokio::test]
async fn upstream_reset_before_and_during_the_response() {
    // Before: the request is read, then the connection is reset. During: headers and part of
    // the body, then a reset.
    let server = tcp_server(|mut stream: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).into_owned();
        if head.starts_with("GET /during") {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
                .await;
            let _ = stream.flush().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = stream.set_zero_linger();
    })
    .await;
    let healthy = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));

    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    let (code, body) = status_and_body(client.send_request(get("/before")).await.unwrap()).await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("failed before answering"), "{body}");

    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    let response = tokio::time::timeout(LONG, client.send_request(get("/during")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(LONG, response.into_body().collect())
        .await
        .unwrap();
    assert!(body.is_err(), "a truncated body must fail, not end cleanly");

    // The proxy keeps serving.
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(healthy.addr, "v1")],
    ));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    assert_eq!(
        status_and_body(client.send_request(get("/")).await.unwrap())
            .await
            .0,
        200
    );
    let labels = ["destination_service=\"reviews\"", "response_code=\"502\""];
    assert_eq!(
        proxy.metric("serin_requests_total", &labels).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn idle_pooled_connection_closed_by_the_upstream_is_replaced_transparently() {
    // Answers one request per connection with keep-alive promised, then closes.
    let server = tcp_server(|mut stream: TcpStream| async move {
        let mut buf = vec![0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n > 0 {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut client = http1(proxy.connect_outbound(vip(9080)).await).await;
    for i in 0..20 {
        let (code, body) = status_and_body(client.send_request(get("/")).await.unwrap()).await;
        assert_eq!((code, body.as_str()), (200, "ok"), "request {i}");
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn malformed_framing_gets_400_and_is_not_forwarded() {
    let server = echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let cases: [(&[u8], &str); 4] = [
        (
            b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "content-length together with transfer-encoding",
        ),
        (
            b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            "duplicate content-length",
        ),
        (
            // hyper's parser refuses this one itself (a 400 without a reason).
            b"POST / HTTP/1.1\r\nHost: r\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "",
        ),
        (b"POST / HTTP/1.1\r\nHost: r\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx", ""),
    ];
    for (raw, reason) in cases {
        let out = raw_exchange(&proxy, vip(9080), raw).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains(reason), "{out}");
    }
    // The same conflict in the second request of a kept-alive connection, after a body that
    // holds a head-like text: the first is answered, the second refused.
    let out = raw_exchange(
        &proxy,
        vip(9080),
        b"POST /first HTTP/1.1\r\nHost: r\r\nContent-Length: 39\r\n\r\nGET /no HTTP/1.1\r\nContent-Length: 1\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: r\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.contains("POST /first HTTP/1.1\n"), "{out}");
    assert!(out.contains("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(
        out.contains("content-length together with transfer-encoding"),
        "{out}"
    );
    assert!(!out.contains("/second"), "{out}");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "only the first request may pass"
    );
    // Garbage on a port declared HTTP/1: the parser's 400.
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let out = raw_exchange(&proxy, vip(9080), b"\x00\x01garbage garbage\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out:?}");
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        1,
        "a malformed request was forwarded"
    );
}

#[tokio::test]
async fn oversized_heads_get_431_in_http1_and_http2() {
    let server = echo_server().await;
    let settings = ProxySettings {
        max_header_bytes: 16 * 1024,
        max_headers: 20,
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: r\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let out = raw_exchange(&proxy, vip(9080), big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: r\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let out = raw_exchange(&proxy, vip(9080), many.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");
    // HTTP/2: the stream is refused, the connection and other streams live on.
    let mut client = http2(proxy.connect_outbound(vip(9080)).await).await;
    let req = Request::get("http://reviews/big")
        .header("x-big", "a".repeat(32 * 1024))
        .body(Full::new(Bytes::new()))
        .unwrap();
    match client.send_request(req).await {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(e) => assert!(!e.is_closed(), "connection closed: {e}"),
    }
    let ok = client
        .send_request(
            Request::get("http://reviews/ok")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(ok.unwrap().status(), 200);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slowloris_is_cut_off_by_the_header_read_timeout() {
    let server = echo_server().await;
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(500),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_HTTP1",
        &[(server.addr, "v1")],
    ));
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    let start = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: r\r\n")
        .await
        .unwrap();
    let mut closed = false;
    for _ in 0..40 {
        if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "still open after {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn connections_addressed_to_the_proxy_itself_are_refused() {
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9080, "PROTOCOL_HTTP1", &[]));
    for own in [proxy.bound.outbound_addr, proxy.bound.inbound_addr] {
        let mut stream = proxy.connect_outbound(own).await;
        let _ = stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut buf = [0u8; 16];
        match tokio::time::timeout(LONG, stream.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("looped connection answered {:?}", &buf[..n]),
        }
    }
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_closes_keep_alive_and_stops_accepting() {
    // A slow server: answers after 300 ms.
    let server = http_server(|_req: Request<Incoming>| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Response::new(full("slow but sure"))
    })
    .await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        9080,
        "PROTOCOL_UNSPECIFIED",
        &[(server.addr, "v1")],
    ));
    let mut h1 = http1(proxy.connect_outbound(vip(9080)).await).await;
    let h2 = http2(proxy.connect_outbound(vip(9080)).await).await;
    let in_flight_h1 = tokio::spawn(async move {
        let response = h1.send_request(get("/")).await.unwrap();
        let close = response
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap().to_owned());
        let (code, body) = status_and_body(response).await;
        (code, body, close)
    });
    let in_flight_h2 = tokio::spawn({
        let mut h2 = h2.clone();
        async move {
            let req = Request::get("http://reviews/")
                .body(Full::new(Bytes::new()))
                .unwrap();
            status_and_body(h2.send_request(req).await.unwrap()).await
        }
    });
    // Let both requests reach the server before draining.
    let deadline = Instant::now() + LONG;
    while server.requests.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "requests never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let admin = proxy.bound.admin_addr;
    let outbound = proxy.bound.outbound_addr;
    let routes = proxy.routes.clone();
    let drain = tokio::spawn(proxy.bound.drain(Duration::from_secs(5)));
    // Not ready while draining.
    let deadline = Instant::now() + LONG;
    loop {
        let stream = TcpStream::connect(admin).await.unwrap();
        let mut admin_client = http1(stream).await;
        let code = admin_client
            .send_request(get("/ready"))
            .await
            .unwrap()
            .status();
        if code == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, body, close) = in_flight_h1.await.unwrap();
    assert_eq!((code, body.as_str()), (200, "slow but sure"));
    assert_eq!(
        close.as_deref(),
        Some("close"),
        "HTTP/1 response during drain must close"
    );
    assert_eq!(
        in_flight_h2.await.unwrap(),
        (200, "slow but sure".to_owned())
    );
    assert!(
        drain.await.unwrap(),
        "drain did not finish before its deadline"
    );
    // No longer accepting: a new connection is refused or closed unanswered.
    drop(routes);
    if let Ok(mut stream) = TcpStream::connect(outbound).await {
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n").await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        assert!(!matches!(read, Ok(Ok(n)) if n > 0), "answered after drain");
    }
}

#[tokio::test]
async fn a_taken_port_fails_the_start_loudly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = serin_proxy::config::Config {
        identity: identity(),
        source: serin_proxy::config::ConfigSource::None,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        outbound_addr: taken.local_addr().unwrap(),
        inbound_addr: "127.0.0.1:0".parse().unwrap(),
        drain_deadline: Duration::from_secs(1),
        proxy: ProxySettings::default(),
        static_tls: None,
    };
    let err =
        serin_proxy::app::Bound::start(&config, std::sync::Arc::new(serin_proxy::orig_dst::Kernel))
            .await
            .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "failed to bind outbound listener on {}: ",
            taken.local_addr().unwrap()
        )),
        "{text}"
    );
    assert!(text.to_lowercase().contains("in use"), "{text}");
}

#[tokio::test]
async fn idle_connections_are_closed_after_their_idle_timeouts() {
    let http = echo_server().await;
    let tcp = tcp_echo_server().await;
    let settings = ProxySettings {
        header_read_timeout: Duration::from_millis(300),
        tcp_idle_timeout: Duration::from_millis(300),
        ..ProxySettings::default()
    };
    let proxy = TestProxy::start_with(settings).await;
    let mut config = service_config(9080, "PROTOCOL_HTTP1", &[(http.addr, "v1")]);
    config = config.replacen(
        "    ports: [{port: 9080, name: main, protocol: PROTOCOL_HTTP1}]",
        &format!(
            "    ports: [{{port: 9080, name: main, protocol: PROTOCOL_HTTP1}}, {{port: 7000, name: tcp, protocol: PROTOCOL_TCP, targetPort: {}}}]",
            tcp.addr.port()
        ),
        1,
    );
    proxy.apply(&config);

    // A kept-alive HTTP/1 client that goes quiet after one request.
    let mut stream = proxy.connect_outbound(vip(9080)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: r\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let out = read_to_end(&mut stream).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "kept open {:?}",
        start.elapsed()
    );

    // An opaque TCP connection that carries nothing.
    let mut stream = proxy.connect_outbound(vip(7000)).await;
    stream.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await.unwrap();
    let start = Instant::now();
    let rest = read_to_end(&mut stream).await.unwrap();
    assert!(rest.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "kept open {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn an_http2_upstream_that_goes_away_after_each_request_is_replaced_transparently() {
    // Each connection serves one stream, then sends GOAWAY and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (served_tx, served_rx) = tokio::sync::oneshot::channel::<()>();
                let served_tx = std::sync::Mutex::new(Some(served_tx));
                let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    if let Some(tx) = served_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    async { Ok::<_, std::convert::Infallible>(Response::new(full("h2 ok"))) }
                });
                let conn =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = served_rx => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    });
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9090, "PROTOCOL_HTTP2", &[(addr, "v1")]));
    let mut client = http2(proxy.connect_outbound(vip(9090)).await).await;
    for i in 0..10 {
        let req = Request::get("http://reviews/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (code, body) = status_and_body(client.send_request(req).await.unwrap()).await;
        assert_eq!((code, body.as_str()), (200, "h2 ok"), "request {i}");
    }
    assert!(
        connections.load(Ordering::SeqCst) >= 2,
        "the upstream connection was never replaced"
    );
}
