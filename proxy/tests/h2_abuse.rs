//! HTTP/2 abuse against the inbound listener (FAULTS.md items 5 and 6), with raw frames written
//! by the test: rapid reset and CONTINUATION flood (→ GOAWAY), an HPACK bomb (→ 431 / reset,
//! nothing forwarded), SETTINGS and PING floods from a client that never reads the answers, and
//! a zero-window stall over large responses. Each flood is bounded in count and time; the
//! assertions are on counts and on the growth of this process's resident memory (the proxy runs
//! in it), never on timings. A well-behaved client on other connections must be served while
//! each flood runs. The CPU time each flood cost is measured from /proc/self/stat and logged.
//!
//! The floods run one at a time (a lock), so that one's memory does not count as another's.

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use harness::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Growth of the test process's resident memory a flood may cause; an unbounded buffer (of
/// decoded headers, queued ACKs or response bodies) would exceed it by far.
const MEMORY_BOUND_BYTES: u64 = 64 * 1024 * 1024;
/// Streams the HPACK bomb opens, each decoding to about 60 MB if nothing bounded it.
const BOMB_STREAMS: u32 = 200;
/// Most control frames the SETTINGS and PING floods write (30 MB and more).
const CONTROL_FLOOD_MAX_FRAMES: usize = 2_000_000;
/// Streams of the zero-window stall, each asking for [`BIG_BODY`] bytes.
const STALL_STREAMS: usize = 50;
/// A large response: 50 of them (200 MB) must not be buffered.
const BIG_BODY: usize = 4 * 1024 * 1024;
/// One chunk of a large response.
const CHUNK: usize = 64 * 1024;
/// Most requests the well-behaved client makes during one flood.
const BYSTANDER_MAX_REQUESTS: usize = 2_000;

/// One flood at a time in this test binary.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_RST_STREAM: u8 = 0x3;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_PING: u8 = 0x6;
const FRAME_GOAWAY: u8 = 0x7;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame: payload length, type, flags, stream, payload.
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

/// The frames of `bytes` (a server's side of a connection): (type, flags, stream, payload).
fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        let Some(payload) = bytes.get(at + 9..at + 9 + len) else {
            break;
        };
        let stream =
            u32::from_be_bytes([bytes[at + 5], bytes[at + 6], bytes[at + 7], bytes[at + 8]])
                & 0x7fff_ffff;
        out.push((bytes[at + 3], bytes[at + 4], stream, payload));
        at += 9 + len;
    }
    out
}

/// The GOAWAY error codes among `bytes`' frames.
fn goaway_codes(bytes: &[u8]) -> Vec<u32> {
    frames(bytes)
        .into_iter()
        .filter(|(kind, _, _, p)| *kind == FRAME_GOAWAY && p.len() >= 8)
        .map(|(_, _, _, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
        .collect()
}

/// Resident memory of this process, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// CPU time (user + system) this process has used, in clock ticks, from `/proc/self/stat`.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').expect("(comm) in /proc/self/stat").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    utime + stime
}

/// The application behind the inbound listener: `/big` streams [`BIG_BODY`] bytes (counting
/// what the proxy has taken), `/flood...` counts requests that should never arrive, anything
/// else answers `ok`.
struct App {
    server: Server,
    flood_requests: Arc<AtomicUsize>,
    big_bytes_taken: Arc<AtomicU64>,
}

async fn app() -> App {
    let flood_requests = Arc::new(AtomicUsize::new(0));
    let big_bytes_taken = Arc::new(AtomicU64::new(0));
    let (flood, taken) = (Arc::clone(&flood_requests), Arc::clone(&big_bytes_taken));
    let server = http_server(move |req: Request<Incoming>| {
        let (flood, taken) = (Arc::clone(&flood), Arc::clone(&taken));
        async move {
            let path = req.uri().path().to_owned();
            if path.starts_with("/flood") {
                flood.fetch_add(1, Ordering::SeqCst);
            }
            if path == "/big" {
                let chunks = futures::stream::iter(0..BIG_BODY / CHUNK).map(move |_| {
                    taken.fetch_add(CHUNK as u64, Ordering::SeqCst);
                    Ok::<_, hyper::Error>(Frame::data(Bytes::from(vec![b'x'; CHUNK])))
                });
                return Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            }
            Response::new(full("ok"))
        }
    })
    .await;
    App {
        server,
        flood_requests,
        big_bytes_taken,
    }
}

/// The proxy, and the inbound address ("a pod IP") the app is reached at.
struct Setup {
    proxy: TestProxy,
    app: App,
    dst: SocketAddr,
}

async fn setup() -> Setup {
    let app = app().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(9080, "PROTOCOL_UNSPECIFIED", &[]));
    let dst = SocketAddr::new("10.244.0.7".parse().unwrap(), app.server.addr.port());
    Setup { proxy, app, dst }
}

/// The n-th client source address of these tests.
fn source(n: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 10, n as u8))
}

/// A well-behaved client: one request after another, each on a new inbound HTTP/1 connection,
/// until stopped (or [`BYSTANDER_MAX_REQUESTS`]). Counts answers and failures.
struct Bystander {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Bystander {
    async fn start(setup: &Setup) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (s, n) = (Arc::clone(&stop), Arc::clone(&served));
        let addr = setup.proxy.bound.inbound_addr;
        let source = source(200);
        setup.proxy.routes.lock().unwrap().insert(source, setup.dst);
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..BYSTANDER_MAX_REQUESTS {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let outcome = tokio::time::timeout(LONG, async {
                    let mut client = http1(connect_from(source, addr).await).await;
                    let request = Request::get("/bystander")
                        .header("host", "reviews")
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let response = client.send_request(request).await?;
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((status, body))
                })
                .await;
                match outcome {
                    Ok(Ok((status, body))) if status == 200 && body == "ok" => {
                        n.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            failures
        });
        let bystander = Bystander { stop, served, task };
        bystander.wait_served(1).await;
        bystander
    }

    /// Waits until `n` requests have been served in all.
    async fn wait_served(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + LONG;
        while self.served.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the well-behaved client was not served {n} times within {LONG:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks it was served while the flood ran (one more answer than before it) and never
    /// failed, then stops it.
    async fn finish(self, before_flood_ended: usize) -> usize {
        self.wait_served(before_flood_ended + 1).await;
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.unwrap();
        assert!(
            failures.is_empty(),
            "the well-behaved client failed: {failures:?}"
        );
        self.served.load(Ordering::SeqCst)
    }
}

/// What a flood cost: resident memory growth and CPU ticks, logged.
struct Cost {
    rss: u64,
    cpu: u64,
}

impl Cost {
    fn start() -> Cost {
        Cost {
            rss: resident_bytes(),
            cpu: cpu_ticks(),
        }
    }

    /// Logs the cost and checks the memory bound.
    fn check(self, flood: &str) {
        let grown = resident_bytes().saturating_sub(self.rss);
        let cpu_ms = (cpu_ticks() - self.cpu) * 10;
        tracing::info!(
            flood,
            grown_bytes = grown,
            cpu_ms,
            "flood cost (CPU in 10 ms ticks)"
        );
        assert!(
            grown < MEMORY_BOUND_BYTES,
            "{flood}: memory grew by {grown} bytes"
        );
    }
}

/// Reads everything the proxy sends on `read` until it closes (bounded by [`LONG`]).
fn drain(mut read: tokio::net::tcp::OwnedReadHalf) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(LONG, read.read_to_end(&mut got)).await;
        got
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_rapid_reset_gets_goaway_while_others_are_served() {
    init_tracing();
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup().await;
    let bystander = Bystander::start(&s).await;
    let cost = Cost::start();
    let stream = s.proxy.connect_inbound(source(1), s.dst).await;
    let (read, mut write) = stream.into_split();
    let reader = drain(read);
    // HEADERS (a whole request) then RST_STREAM(CANCEL) at once, on stream after stream.
    let mut start = PREFACE.to_vec();
    start.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    write.write_all(&start).await.unwrap();
    let mut stream_id = 1u32;
    let max_streams = 20_000u32;
    while stream_id < 2 * max_streams {
        let mut batch = Vec::new();
        for _ in 0..100 {
            // `:path /flood` as a literal (indexed name :path, index 4).
            let mut head = vec![0x82, 0x86, 0x04, 6];
            head.extend_from_slice(b"/flood");
            batch.extend(frame(
                FRAME_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                stream_id,
                &head,
            ));
            batch.extend(frame(FRAME_RST_STREAM, 0, stream_id, &8u32.to_be_bytes()));
            stream_id += 2;
        }
        let written = tokio::time::timeout(Duration::from_secs(2), write.write_all(&batch)).await;
        if !matches!(written, Ok(Ok(()))) || reader.is_finished() {
            break;
        }
    }
    let served = bystander.served.load(Ordering::SeqCst);
    let got = tokio::time::timeout(LONG, reader)
        .await
        .expect("the rapid-reset connection is closed")
        .unwrap();
    let opened = stream_id / 2;
    let forwarded = s.app.flood_requests.load(Ordering::SeqCst);
    tracing::info!(opened, forwarded, "inbound rapid reset");
    assert_eq!(goaway_codes(&got), [ENHANCE_YOUR_CALM]);
    assert!(
        opened < max_streams,
        "the proxy took all {opened} reset streams"
    );
    assert!(
        forwarded < opened as usize,
        "{forwarded} of {opened} reset streams forwarded"
    );
    bystander.finish(served).await;
    cost.check("rapid reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_continuation_flood_gets_goaway_while_others_are_served() {
    init_tracing();
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup().await;
    let bystander = Bystander::start(&s).await;
    let cost = Cost::start();
    let stream = s.proxy.connect_inbound(source(2), s.dst).await;
    let (read, mut write) = stream.into_split();
    let reader = drain(read);
    let mut start = PREFACE.to_vec();
    start.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end the head.
    let mut head = vec![0x82, 0x86, 0x04, 6];
    head.extend_from_slice(b"/flood");
    start.extend(frame(FRAME_HEADERS, FLAG_END_STREAM, 1, &head));
    write.write_all(&start).await.unwrap();
    let header: &[u8] = b"\x00\x07x-flood\x08aaaaaaaa";
    let batch: Vec<u8> = (0..100)
        .flat_map(|_| frame(FRAME_CONTINUATION, 0, 1, header))
        .collect();
    let max_frames = 200_000;
    let mut sent = 0;
    while sent < max_frames {
        let written = tokio::time::timeout(Duration::from_secs(2), write.write_all(&batch)).await;
        if !matches!(written, Ok(Ok(()))) || reader.is_finished() {
            break;
        }
        sent += 100;
    }
    let served = bystander.served.load(Ordering::SeqCst);
    let got = tokio::time::timeout(LONG, reader)
        .await
        .expect("the flooding connection is closed")
        .unwrap();
    tracing::info!(sent, "inbound continuation flood");
    assert!(
        sent < max_frames,
        "the proxy took all {sent} CONTINUATION frames"
    );
    assert_eq!(goaway_codes(&got), [ENHANCE_YOUR_CALM]);
    assert_eq!(s.app.flood_requests.load(Ordering::SeqCst), 0);
    bystander.finish(served).await;
    cost.check("continuation flood");
}

/// An HPACK integer with an `n`-bit prefix whose other bits are `flags`.
fn hpack_int(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_hpack_bomb_is_refused_and_nothing_is_forwarded() {
    init_tracing();
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup().await;
    let bystander = Bystander::start(&s).await;
    let cost = Cost::start();
    let stream = s.proxy.connect_inbound(source(3), s.dst).await;
    let (read, mut write) = stream.into_split();
    let reader = drain(read);
    let mut out = PREFACE.to_vec();
    out.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    write.write_all(&out).await.unwrap();
    // Stream 1 puts a 4000-byte header into the decoder's table (4038 of its 4096 bytes); then
    // every header block refers to it 15 000 times with one byte each: about 60 MB decoded from
    // a 15 kB frame, on each of the streams.
    let mut sent_streams = 0;
    for n in 0..BOMB_STREAMS {
        let stream_id = 2 * n + 1;
        let mut block = vec![0x82, 0x86, 0x04, 6];
        block.extend_from_slice(b"/flood");
        if n == 0 {
            block.push(0x40);
            hpack_int(0, 7, 6, &mut block);
            block.extend_from_slice(b"x-bomb");
            hpack_int(0, 7, 4000, &mut block);
            block.extend(std::iter::repeat_n(b'a', 4000));
        }
        // Index 62: the newest dynamic-table entry.
        block.extend(std::iter::repeat_n(0x80 | 62, 15_000));
        let bytes = frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            stream_id,
            &block[..block.len().min(16_384)],
        );
        let written = tokio::time::timeout(Duration::from_secs(2), write.write_all(&bytes)).await;
        if !matches!(written, Ok(Ok(()))) || reader.is_finished() {
            break;
        }
        sent_streams += 1;
    }
    // Then a polite end, so that the proxy closes once it has answered.
    let _ = write
        .write_all(&frame(FRAME_GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .await;
    let _ = write.shutdown().await;
    let served = bystander.served.load(Ordering::SeqCst);
    let got = tokio::time::timeout(LONG, reader)
        .await
        .expect("the bomb's connection is closed")
        .unwrap();
    let answered: BTreeSet<u32> = frames(&got)
        .into_iter()
        .filter(|(kind, _, id, _)| (*kind == FRAME_HEADERS || *kind == FRAME_RST_STREAM) && *id > 0)
        .map(|(_, _, id, _)| id)
        .collect();
    let goaways = goaway_codes(&got);
    tracing::info!(
        sent_streams,
        answered = answered.len(),
        ?goaways,
        "inbound hpack bomb"
    );
    assert_eq!(
        s.app.flood_requests.load(Ordering::SeqCst),
        0,
        "a bomb's request reached the app"
    );
    assert!(
        !answered.is_empty() || !goaways.is_empty(),
        "the proxy neither refused the bomb's streams nor closed the connection"
    );
    assert!(
        !frames(&got)
            .iter()
            .any(|(kind, _, _, _)| *kind == FRAME_DATA),
        "the proxy answered a bomb's request with a body"
    );
    bystander.finish(served).await;
    cost.check("hpack bomb");
}

/// Writes `batch` (a run of control frames) until the proxy stops reading (a write makes no
/// progress for 2 s), closes, or `max_frames` are written; returns the frames written.
async fn control_flood(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    batch: &[u8],
    per_batch: usize,
    max_frames: usize,
) -> usize {
    let deadline = tokio::time::Instant::now() + 3 * LONG;
    let mut sent = 0;
    while sent < max_frames && tokio::time::Instant::now() < deadline {
        let written = tokio::time::timeout(Duration::from_secs(2), write.write_all(batch)).await;
        if !matches!(written, Ok(Ok(()))) {
            break;
        }
        sent += per_batch;
    }
    sent
}

/// A SETTINGS or PING flood from a client that never reads what the proxy answers: the proxy
/// must stop reading (or close) instead of queueing its ACKs without bound.
async fn unread_control_flood(name: &str, kind: u8, payload: &[u8], client: u32) {
    init_tracing();
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup().await;
    let bystander = Bystander::start(&s).await;
    let cost = Cost::start();
    let mut stream: TcpStream = s.proxy.connect_inbound(source(client), s.dst).await;
    let mut start = PREFACE.to_vec();
    start.extend(frame(FRAME_SETTINGS, 0, 0, &[]));
    stream.write_all(&start).await.unwrap();
    let (_read, mut write) = stream.into_split();
    let batch: Vec<u8> = (0..1000).flat_map(|_| frame(kind, 0, 0, payload)).collect();
    let sent = control_flood(&mut write, &batch, 1000, CONTROL_FLOOD_MAX_FRAMES).await;
    let served = bystander.served.load(Ordering::SeqCst);
    tracing::info!(flood = name, sent, "unread control-frame flood");
    assert!(
        sent < CONTROL_FLOOD_MAX_FRAMES,
        "{name}: the proxy read all {sent} frames without their answers being read"
    );
    bystander.finish(served).await;
    cost.check(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_settings_flood_is_bounded_while_others_are_served() {
    // SETTINGS_ENABLE_PUSH = 0: valid from a client, answered by an ACK each.
    unread_control_flood("settings flood", FRAME_SETTINGS, &[0, 2, 0, 0, 0, 0], 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_ping_flood_is_bounded_while_others_are_served() {
    unread_control_flood("ping flood", FRAME_PING, &[7; 8], 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_zero_window_stall_buffers_little_while_others_are_served() {
    init_tracing();
    let _one = ONE_AT_A_TIME.lock().await;
    let s = setup().await;
    let bystander = Bystander::start(&s).await;
    let cost = Cost::start();
    let stream = s.proxy.connect_inbound(source(6), s.dst).await;
    // A client that grants no stream window and never reads a body: nothing can be sent to it.
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(stream)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut responses = Vec::new();
    for _ in 0..STALL_STREAMS {
        client = client.ready().await.unwrap();
        let request = Request::get("http://reviews/big").body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        responses.push(response);
    }
    let mut heads = Vec::new();
    for response in responses {
        let response = tokio::time::timeout(LONG, response)
            .await
            .expect("a response head in time")
            .unwrap();
        assert_eq!(response.status(), 200);
        heads.push(response);
    }
    // Wait until the app can hand over no more: what it handed is what the proxy holds.
    let taken = &s.app.big_bytes_taken;
    let deadline = tokio::time::Instant::now() + LONG;
    let mut last = taken.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = taken.load(Ordering::SeqCst);
        if now == last || tokio::time::Instant::now() >= deadline {
            break;
        }
        last = now;
    }
    let total = (STALL_STREAMS * BIG_BODY) as u64;
    tracing::info!(
        taken = last,
        total,
        "zero-window stall: bytes the app handed over"
    );
    assert!(
        last < total / 4,
        "the proxy took {last} of {total} bytes for a client that reads nothing"
    );
    let served = bystander.served.load(Ordering::SeqCst);
    bystander.finish(served).await;
    cost.check("zero-window stall");
    drop(heads);
    drop(client);
    connection.abort();
}
