//! Root end-to-end tests of workload identity and mTLS between sidecars (issue #10, FAULTS 22),
//! in a local mesh: a real `serin-control` (the CA) in its own pod, a `reviews` server pod and a
//! `client` pod, each registered (the registration's bootstrap token goes to its sidecar) with
//! real capture rules and a real `serin-proxy` as uid 1337, and a `plain` pod with neither
//! capture rules nor sidecar. The wire between the pods is read with a packet socket in the
//! server pod's namespace (what arrives on its interface, before the capture rules).
//!
//! Shown: traffic between the meshed pods is a TLS handshake on the wire, never HTTP; the server
//! sidecar reports the client's SPIFFE ID (`source_principal`); the plain pod is served in
//! permissive mode and refused in strict mode (set through the Admin API) while the meshed client
//! still is; certificates renew under load with no failed request; the CA stopped for longer
//! than a renewal period breaks nothing before expiry; what answers on a meshed endpoint's
//! address with the mesh certificate of another workload, or with a certificate from a root of
//! its own, is refused by the client sidecar before any request is sent (503), and a client
//! with a certificate from a root of its own is refused by the server sidecar (UnknownCA).
//!
//! Needs the binaries: `cargo build --bins -p serin-proxy -p serin-control`. Skipped, with a
//! printed reason, without root. One scenario at a time (one lock).

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::{Mesh, Pod, Process};
use serin_proto::v1;
use serin_tests::pods::{
    self, Files, admin, admin_get, apply_capture, service_vip, start_control_plane,
    start_sidecar_with, workload,
};

/// The port of the reviews app (and of its service).
const PORT: u16 = 9080;
const ADMIN_PORT: u16 = 15000;
const LONG: Duration = Duration::from_secs(30);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";

static SERIAL: Mutex<()> = Mutex::new(());

fn note(line: &str) {
    let _ = io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A TCP payload seen on the server pod's interface: from where, and its bytes.
#[derive(Debug, Clone)]
struct Segment {
    source: Ipv4Addr,
    payload: Vec<u8>,
}

/// Reads every frame arriving on the server pod's interfaces with a packet socket (made inside
/// its namespace) and keeps the TCP payloads sent to `port` from other pods.
struct Wire {
    segments: Arc<Mutex<Vec<Segment>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Wire {
    fn watch(pod: &Pod, port: u16) -> Wire {
        use socket2::{Domain, Protocol, Socket, Type};
        // ETH_P_ALL in network byte order.
        let socket = pod
            .run_in(|| {
                Socket::new(
                    Domain::PACKET,
                    Type::RAW,
                    Some(Protocol::from(i32::from(0x0003u16.to_be()))),
                )
            })
            .unwrap()
            .expect("a packet socket in the server pod");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let segments = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (segments, stop) = (Arc::clone(&segments), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut socket = socket;
                let mut frame = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(n) = socket.read(&mut frame) else {
                        continue;
                    };
                    if let Some(segment) = tcp_payload(&frame[..n], port) {
                        segments.lock().unwrap().push(segment);
                    }
                }
            })
        };
        Wire {
            segments,
            stop,
            thread: Some(thread),
        }
    }

    fn from(&self, source: Ipv4Addr) -> Vec<Vec<u8>> {
        self.segments
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.source == source)
            .map(|s| s.payload.clone())
            .collect()
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The payload of an Ethernet/IPv4/TCP frame to `port` that carries data (not from loopback).
fn tcp_payload(frame: &[u8], port: u16) -> Option<Segment> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let source = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let tcp = ip.get(ihl..total)?;
    if u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]) != port || source.is_loopback() {
        return None;
    }
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = tcp.get(offset..)?;
    (!payload.is_empty()).then(|| Segment {
        source,
        payload: payload.to_vec(),
    })
}

/// The mesh of one scenario.
struct Fixture {
    runtime: Option<tokio::runtime::Runtime>,
    cp_pod: Pod,
    server: Pod,
    client: Pod,
    plain: Pod,
    vip: Ipv4Addr,
    cp: Option<Process>,
    sidecars: Vec<Process>,
    /// Its logs are shown if the test fails; removed when it drops.
    _files: Files,
    /// The guard: removes every namespace, link and process, also on panic.
    _mesh: Mesh,
    _serial: MutexGuard<'static, ()>,
}

impl Fixture {
    /// The mesh, with the sidecars' certificates lasting `client_ttl` and `server_ttl`; `None`
    /// without root.
    fn new(test: &str, client_ttl: &str, server_ttl: &str) -> Option<Fixture> {
        if skip_unless_root(test) {
            return None;
        }
        init_tracing();
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let files = Files::new(&format!("mtls-{test}"));
        let mesh = Mesh::create().expect("create mesh");
        let cp_pod = mesh.add_pod("serin-control").expect("add pod");
        let server = mesh.add_pod("reviews-v1").expect("add pod");
        let client = mesh.add_pod("client").expect("add pod");
        let plain = mesh.add_pod("plain").expect("add pod");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cp = start_control_plane(&cp_pod, &files);
        start_app(&rt, &server);
        let server_token = rt.block_on(register(&cp_pod, &server, "reviews", PORT));
        let client_token = rt.block_on(register(&cp_pod, &client, "client", 8080));
        let vip = rt.block_on(service_vip(&cp_pod, "reviews"));
        mesh.add_service(vip.into(), "reviews", "default").unwrap();
        apply_capture(&server);
        apply_capture(&client);
        let sidecars = vec![
            start_sidecar(
                &files,
                &server,
                cp_pod.ip(),
                "reviews",
                &server_token,
                server_ttl,
            ),
            start_sidecar(
                &files,
                &client,
                cp_pod.ip(),
                "client",
                &client_token,
                client_ttl,
            ),
        ];
        let fixture = Fixture {
            runtime: Some(rt),
            cp_pod,
            server,
            client,
            plain,
            vip,
            cp: Some(cp),
            sidecars,
            _files: files,
            _mesh: mesh,
            _serial: serial,
        };
        for pod in [&fixture.server, &fixture.client] {
            eventually(&format!("sidecar of {} ready", pod.name()), LONG, || {
                (admin_get(pod, ADMIN_PORT, "/ready", LONG).ok()?.0 == 200).then_some(())
            });
            eventually(&format!("certificate of {}", pod.name()), LONG, || {
                let metrics = admin_get(pod, ADMIN_PORT, "/metrics", LONG).ok()?.1;
                (sample(
                    &metrics,
                    "serin_identity_certificate_requests_total",
                    &["outcome=\"ok\""],
                ) >= 1)
                    .then_some(())
            });
        }
        eventually(
            "the server endpoint meshed in the client sidecar",
            LONG,
            || {
                let dump = admin_get(&fixture.client, ADMIN_PORT, "/config_dump", LONG)
                    .ok()?
                    .1;
                dump.contains(SERVER_ID).then_some(())
            },
        );
        Some(fixture)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// `GET /` from inside `pod` to the reviews VIP on a new connection: the status line.
    fn get(&self, pod: &Pod) -> Result<String, String> {
        get_from(pod, SocketAddr::from((self.vip, PORT)))
    }

    /// `GET /` from the plain pod straight to the server pod (no sidecar on its side).
    fn get_plain(&self) -> Result<String, String> {
        get_from(&self.plain, SocketAddr::from((self.server.ip(), PORT)))
    }

    fn metrics(&self, pod: &Pod) -> String {
        admin_get(pod, ADMIN_PORT, "/metrics", LONG)
            .expect("sidecar /metrics")
            .1
    }

    fn set_mode(&self, mode: v1::MtlsMode) {
        self.rt().block_on(async {
            admin(&self.cp_pod)
                .await
                .set_mtls_mode(v1::SetMtlsModeRequest {
                    namespace: "default".into(),
                    mode: mode as i32,
                })
                .await
                .expect("SetMtlsMode")
        });
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
        for process in self.sidecars.drain(..).chain(self.cp.take()) {
            let _ = process.kill();
        }
    }
}

/// A sidecar of `service` (service account of the same name) in `pod` with the bootstrap
/// `token` of its registration, asking for certificates lasting `cert_ttl`.
fn start_sidecar(
    files: &Files,
    pod: &Pod,
    cp: Ipv4Addr,
    service: &str,
    token: &str,
    cert_ttl: &str,
) -> Process {
    let extra = ["--identity-token", token, "--cert-ttl", cert_ttl];
    start_sidecar_with(files, pod, cp, service, "v1", service, &extra)
}

/// `GET /` from inside `pod` to `addr` on a new connection: the status line.
fn get_from(pod: &Pod, addr: SocketAddr) -> Result<String, String> {
    pod.run_in(move || -> io::Result<String> {
        let mut stream = StdTcpStream::connect_timeout(&addr, LONG)?;
        stream.set_read_timeout(Some(LONG))?;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        stream.read_to_string(&mut out)?;
        Ok(out.lines().next().unwrap_or_default().to_owned())
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
    .and_then(|line| {
        if line.is_empty() {
            Err("closed without an answer".into())
        } else {
            Ok(line)
        }
    })
}

/// An HTTP/1.1 app on `PORT` in `pod` answering `200 ok` (a plain loop, one connection at a
/// time per task).
fn start_app(rt: &tokio::runtime::Runtime, pod: &Pod) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let std = pod
        .run_in(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .unwrap()
        .expect("bind the app");
    std.set_nonblocking(true).unwrap();
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std).unwrap();
    rt.spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// Registers `pod` as service `service` (service account of the same name): its bootstrap token.
async fn register(cp_pod: &Pod, pod: &Pod, service: &str, port: u16) -> String {
    let port = v1::WorkloadPort {
        name: "http".into(),
        port: u32::from(port),
        protocol: v1::Protocol::Http1 as i32,
    };
    let workload = v1::Workload {
        service_account: service.to_owned(),
        ..workload(pod, service, "v1", port)
    };
    pods::register(cp_pod, workload).await
}

/// The sum of the samples of `name` whose labels contain each of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn meshed_pods_speak_mtls_and_plain_clients_follow_the_mode() {
    let Some(f) = Fixture::new("modes", "1h", "1h") else {
        return;
    };
    let wire = Wire::watch(&f.server, PORT);
    for _ in 0..5 {
        assert_eq!(f.get(&f.client).unwrap(), "HTTP/1.1 200 OK");
    }
    // Permissive (the default): the pod without a sidecar is served.
    assert_eq!(f.get_plain().unwrap(), "HTTP/1.1 200 OK");
    std::thread::sleep(Duration::from_millis(300));

    // On the wire: from the client pod a TLS handshake and records only, from the plain pod HTTP.
    let meshed = wire.from(f.client.ip());
    assert!(
        !meshed.is_empty(),
        "the client's traffic was seen on the wire"
    );
    assert_eq!(
        &meshed[0][..3],
        &[0x16, 0x03, 0x01],
        "a TLS ClientHello record first"
    );
    for payload in &meshed {
        let text = String::from_utf8_lossy(payload);
        assert!(
            !text.contains("HTTP/1.1") && !text.contains("GET /"),
            "no plaintext HTTP from the meshed client: {text:?}"
        );
    }
    let plain = wire.from(f.plain.ip());
    assert!(
        plain.iter().any(|p| p.starts_with(b"GET / HTTP/1.1")),
        "the plain pod's request is HTTP on the wire"
    );
    note(&format!(
        "wire: {} segments from the meshed client (first bytes {:02x?}), {} from the plain pod",
        meshed.len(),
        &meshed[0][..5],
        plain.len()
    ));

    // The server sidecar names the client by its SPIFFE ID.
    let metrics = f.metrics(&f.server);
    let principal = format!("source_principal=\"{CLIENT_ID}\"");
    assert!(
        sample(
            &metrics,
            "serin_inbound_connections_total",
            &["security=\"mtls\"", &principal]
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "serin_inbound_connections_total",
            &["security=\"plain\""]
        ),
        1,
        "{metrics}"
    );

    // Strict: the plain pod is refused, the meshed client still served.
    f.set_mode(v1::MtlsMode::Strict);
    eventually("the plain pod refused in strict mode", LONG, || {
        f.get_plain().is_err().then_some(())
    });
    for _ in 0..5 {
        assert_eq!(f.get(&f.client).unwrap(), "HTTP/1.1 200 OK");
    }
    let metrics = f.metrics(&f.server);
    assert!(
        sample(
            &metrics,
            "serin_inbound_connections_refused_total",
            &["reason=\"plaintext_in_strict_mode\""]
        ) >= 1,
        "{metrics}"
    );
    // Back to permissive.
    f.set_mode(v1::MtlsMode::Permissive);
    eventually("the plain pod served again", LONG, || {
        f.get_plain().ok().filter(|l| l == "HTTP/1.1 200 OK")
    });
}

#[test]
fn certificates_renew_under_load_without_a_failed_request() {
    // 3 s certificates: renewed every 2.1 s.
    let Some(f) = Fixture::new("renewal", "3s", "3s") else {
        return;
    };
    let start = Instant::now();
    let (mut ok, mut failed) = (0u64, Vec::new());
    while start.elapsed() < Duration::from_secs(8) && ok < 200_000 {
        match f.get(&f.client) {
            Ok(line) if line == "HTTP/1.1 200 OK" => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
    }
    note(&format!(
        "renewal under load: {ok} requests ok, {} failed in {:?}",
        failed.len(),
        start.elapsed()
    ));
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    for pod in [&f.client, &f.server] {
        let metrics = f.metrics(pod);
        let renewals = sample(
            &metrics,
            "serin_identity_certificate_requests_total",
            &["outcome=\"ok\""],
        );
        assert!(
            renewals >= 4,
            "{}: {renewals} certificates\n{metrics}",
            pod.name()
        );
    }
}

#[test]
fn the_ca_stopped_longer_than_a_renewal_period_breaks_nothing_before_expiry() {
    // The client's certificates last 10 s (renewed at 7 s), the server's an hour.
    let Some(mut f) = Fixture::new("ca-down", "10s", "1h") else {
        return;
    };
    // Right after a renewal of the client's certificate, the control plane goes away.
    let renewals = |f: &Fixture| {
        sample(
            &f.metrics(&f.client),
            "serin_identity_certificate_requests_total",
            &["outcome=\"ok\""],
        )
    };
    let before = renewals(&f);
    eventually("a renewal of the client's certificate", LONG, || {
        (renewals(&f) > before).then_some(())
    });
    let renewed = Instant::now();
    let _ = f.cp.take().expect("the control plane runs").kill();
    // Past the renewal time (7 s), short of the expiry (10 s): every request is served.
    let mut ok = 0u64;
    while renewed.elapsed() < Duration::from_millis(9_000) {
        assert_eq!(f.get(&f.client).unwrap(), "HTTP/1.1 200 OK");
        ok += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = f.metrics(&f.client);
    let failed = sample(
        &metrics,
        "serin_identity_certificate_requests_total",
        &["outcome=\"failed\""],
    );
    note(&format!(
        "CA down for 9 s: {ok} requests ok, {failed} renewal attempts failed"
    ));
    assert!(
        failed >= 1,
        "renewal was attempted while the CA was down\n{metrics}"
    );
    let server = f.metrics(&f.server);
    assert_eq!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"plain\""]
        ),
        0,
        "every connection mTLS\n{server}"
    );
}

/// A certificate chain (PEM, leaf first) and its PKCS#8 key (DER).
struct Issued {
    chain: String,
    key: Vec<u8>,
}

/// A certificate for `identity` from the mesh's CA (in `cp_pod`), asked for with a
/// registration's bootstrap `token`; with the mesh's trust bundle (PEM).
async fn mesh_certificate(cp_pod: &Pod, token: &str, identity: &str) -> (Issued, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], pods::CONTROL_PLANE_PORT));
    let channel = pods::channel_in(cp_pod, addr).await.unwrap();
    let signed = v1::identity_client::IdentityClient::new(channel)
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr,
            bootstrap_token: token.into(),
            ttl: None,
        })
        .await
        .unwrap_or_else(|e| panic!("SignCertificate for {identity}: {e}"))
        .into_inner();
    let issued = Issued {
        chain: signed.cert_chain_pem.concat(),
        key: key.serialize_der(),
    };
    (issued, signed.trust_bundle_pem.concat())
}

/// A certificate for `identity` signed by a root of its own (not the mesh's).
fn foreign_certificate(identity: &str) -> Issued {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let root_pem = root.self_signed(&root_key).unwrap().pem();
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Issued {
        chain: format!("{}{root_pem}", cert.pem()),
        key: key.serialize_der(),
    }
}

/// What an impostor's TLS server on `PORT` of its pod went through.
#[derive(Default)]
struct ImpostorCounts {
    handshakes_failed: std::sync::atomic::AtomicU64,
    served: std::sync::atomic::AtomicU64,
}

/// A TLS server on `PORT` in `pod` presenting whatever `config` holds at each accept (it asks
/// for the client's certificate, as a sidecar does), answering every request it can read
/// `200 impostor`.
fn start_impostor(
    rt: &tokio::runtime::Runtime,
    pod: &Pod,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
) -> Arc<ImpostorCounts> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let counts = Arc::new(ImpostorCounts::default());
    let std = pod
        .run_in(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .unwrap()
        .expect("bind the impostor");
    std.set_nonblocking(true).unwrap();
    let _guard = rt.enter();
    let listener = tokio::net::TcpListener::from_std(std).unwrap();
    let seen = Arc::clone(&counts);
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.lock().unwrap().clone());
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    seen.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                while let Ok(n) = tls.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        seen.served.fetch_add(1, Ordering::Relaxed);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nimpostor";
                        if tls.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    counts
}

#[test]
fn a_peer_with_the_wrong_identity_or_an_untrusted_root_is_refused_both_ways() {
    // The endpoint of service payments is meshed as spiffe://…/sa/payments (its registration's
    // token got that certificate), but what answers on its address presents (1) the mesh's
    // certificate of another workload (sa/ratings), then (2) a certificate for sa/payments from
    // a root of its own, then (3) the right one. The client sidecar must refuse (1) and (2)
    // before sending any request, and serve (3).
    let Some(f) = Fixture::new("impostor", "1h", "1h") else {
        return;
    };
    let impostor = f._mesh.add_pod("payments").expect("add pod");
    let port = v1::WorkloadPort {
        name: "http".into(),
        port: u32::from(PORT),
        protocol: v1::Protocol::Http1 as i32,
    };
    let payments = v1::Workload {
        service_account: "payments".into(),
        ..workload(&impostor, "payments", "v1", port.clone())
    };
    let ratings = v1::Workload {
        service_account: "ratings".into(),
        ..workload(&f.plain, "ratings", "v1", port)
    };
    let payments_id = "spiffe://cluster.local/ns/default/sa/payments";
    let ratings_id = "spiffe://cluster.local/ns/default/sa/ratings";
    let (right, roots, wrong) = f.rt().block_on(async {
        let token = pods::register(&f.cp_pod, payments).await;
        let (right, roots) = mesh_certificate(&f.cp_pod, &token, payments_id).await;
        let token = pods::register(&f.cp_pod, ratings).await;
        let (wrong, _) = mesh_certificate(&f.cp_pod, &token, ratings_id).await;
        (right, roots, wrong)
    });
    let vip = f.rt().block_on(service_vip(&f.cp_pod, "payments"));
    f._mesh
        .add_service(vip.into(), "payments", "default")
        .unwrap();
    let server_config = |issued: &Issued| {
        serin_proxy::tls::Credentials::new(
            issued.key.clone(),
            &issued.chain,
            &roots,
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .unwrap()
        .server_config()
    };
    let presented = Arc::new(Mutex::new(server_config(&wrong)));
    let counts = start_impostor(f.rt(), &impostor, Arc::clone(&presented));
    eventually("payments meshed in the client sidecar", LONG, || {
        let dump = admin_get(&f.client, ADMIN_PORT, "/config_dump", LONG)
            .ok()?
            .1;
        dump.contains(payments_id).then_some(())
    });
    let refused = || {
        sample(
            &f.metrics(&f.client),
            "serin_outbound_mtls_handshakes_total",
            &["outcome=\"failed\""],
        )
    };
    let get = || get_from(&f.client, SocketAddr::from((vip, PORT)));

    for (case, issued) in [
        ("a mesh certificate of another workload", &wrong),
        (
            "a certificate from a root of its own",
            &foreign_certificate(payments_id),
        ),
    ] {
        *presented.lock().unwrap() = server_config(issued);
        let before = refused();
        let answer = get();
        note(&format!("impostor with {case}: {answer:?}"));
        assert!(
            answer.as_deref().is_ok_and(|l| l.starts_with("HTTP/1.1 5")),
            "{case}: {answer:?}"
        );
        assert!(refused() > before, "{case}: no failed handshake counted");
        assert_eq!(
            counts.served.load(Ordering::Relaxed),
            0,
            "{case}: a request got through"
        );
    }
    assert!(counts.handshakes_failed.load(Ordering::Relaxed) >= 2);

    // The right certificate: served, over mTLS.
    *presented.lock().unwrap() = server_config(&right);
    assert_eq!(get().as_deref(), Ok("HTTP/1.1 200 OK"));
    assert!(counts.served.load(Ordering::Relaxed) >= 1);

    // The other way round: a client in the plain pod speaking the mesh's mTLS to the reviews
    // sidecar with a certificate from a root of its own is refused by the server sidecar; with
    // a mesh certificate (payments') it is served.
    let handshakes_refused = || {
        sample(
            &f.metrics(&f.server),
            "serin_inbound_connections_refused_total",
            &["reason=\"handshake_failed\""],
        )
    };
    let before = handshakes_refused();
    let mtls_get = |issued: &Issued| -> Result<String, String> {
        let credentials = serin_proxy::tls::Credentials::new(
            issued.key.clone(),
            &issued.chain,
            &roots,
            std::time::SystemTime::now() + Duration::from_secs(3600),
        )
        .map_err(|e| e.to_string())?;
        f.rt().block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = pods::connect_in(&f.plain, SocketAddr::from((f.server.ip(), PORT)))
                .await
                .map_err(|e| e.to_string())?;
            let mut tls = credentials
                .connect(tcp, SERVER_ID, b"serin.http1")
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tls.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut out = Vec::new();
            tokio::time::timeout(LONG, tls.read_to_end(&mut out))
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|e| format!("read: {e}"))?;
            let out = String::from_utf8_lossy(&out).into_owned();
            Ok(out.lines().next().unwrap_or_default().to_owned())
        })
    };
    let foreign = mtls_get(&foreign_certificate(CLIENT_ID));
    note(&format!("client with a foreign root: {foreign:?}"));
    assert!(foreign.is_err(), "{foreign:?}");
    eventually(
        "the server sidecar to count the refused handshake",
        LONG,
        || (handshakes_refused() > before).then_some(()),
    );
    assert_eq!(mtls_get(&right).as_deref(), Ok("HTTP/1.1 200 OK"));
}
