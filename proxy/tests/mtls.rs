//! In-process loopback tests of mTLS between sidecars (FAULTS 22): the real control plane (the
//! serin-control library: CA, Identity service, registry), a client sidecar and a server
//! sidecar (`Bound`, following it, each with the bootstrap token of its registration). The
//! server's inbound listener sits behind a small relay on the endpoint address that records
//! the bytes on the wire (the fixture `Mesh` of `support/mesh.rs`). No root: the original
//! destinations are injected.
//!
//! Shown here: the hop is TLS on the wire and the server counts the client's SPIFFE ID
//! (`source_principal`); a plain client is served in permissive mode and refused in strict mode;
//! a server with the wrong identity or an untrusted root is refused by the client sidecar, and a
//! client with an untrusted root by the server sidecar; certificates renew under load with no
//! failed request; the CA stopped for longer than a renewal period breaks nothing; a root
//! rotation (add, promote, drop the old root, each with a restart of the control plane) drops no
//! live connection and new connections work at every step.

#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/mesh.rs"]
mod mesh;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use control_plane::{ControlPlaneProcess, LONG, free_addr, init_tracing};
use mesh::{
    CLIENT_IP, CLIENT_PORT, Mesh, SidecarOptions, Workload, get, sample, start_sidecar,
    until_certified, until_meshed,
};
use serin_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The server pod's address in the test with impostors (no other test binds it).
const IMPOSTOR_TEST_SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/default/sa/reviews";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hop_between_meshed_sidecars_is_mtls_and_names_the_client() {
    let mesh = Mesh::builder().start().await;
    for _ in 0..3 {
        assert_eq!(mesh.call().await.unwrap(), "HTTP/1.1 200 OK");
    }
    // On the wire: a TLS handshake record, no HTTP.
    let wire = mesh.relay.first_bytes();
    assert!(!wire.is_empty(), "the requests went through the relay");
    for first in &wire {
        assert_eq!(
            &first[..2],
            &[0x16, 0x03],
            "a TLS handshake record: {first:?}"
        );
        let text = String::from_utf8_lossy(first);
        assert!(
            !text.contains("GET /"),
            "no plaintext HTTP on the wire: {text}"
        );
    }
    let server = mesh.server_metrics();
    let principal = format!("source_principal=\"{CLIENT_ID}\"");
    assert!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"mtls\"", &principal]
        ) >= 1,
        "{server}"
    );
    assert_eq!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"plain\""]
        ),
        0,
        "{server}"
    );
    let client = mesh.client_metrics();
    assert!(
        sample(
            &client,
            "serin_outbound_mtls_handshakes_total",
            &["outcome=\"ok\""]
        ) >= 1,
        "{client}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_subscribe_on_the_mtls_port_with_their_certificates_and_serve() {
    // The control plane refuses Discovery on its plaintext port: the config that reaches the
    // sidecars (MeshBuilder::start waits for the server's endpoint in the client's tables) came over
    // the mTLS port.
    let mesh = Mesh::builder().control_plane_tls().start().await;
    for _ in 0..3 {
        assert_eq!(mesh.call().await.unwrap(), "HTTP/1.1 200 OK");
    }
    let cp = mesh.cp.as_ref().unwrap();
    let proxies = cp.proxies().await;
    assert_eq!(proxies.len(), 2, "{proxies:?}");
    // The hop is still mTLS between the sidecars, naming the client.
    let server = mesh.server_metrics();
    let principal = format!("source_principal=\"{CLIENT_ID}\"");
    assert!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"mtls\"", &principal]
        ) >= 1,
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_is_served_when_permissive_and_refused_when_strict() {
    let mesh = Mesh::builder().start().await;
    // Permissive (the default): a client without a sidecar is served.
    assert_eq!(get(mesh.endpoint).await.unwrap(), "HTTP/1.1 200 OK");
    let server = mesh.server_metrics();
    assert_eq!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"plain\""]
        ),
        1,
        "{server}"
    );

    mesh.set_mode(v1::MtlsMode::Strict).await;
    let refused = get(mesh.endpoint).await;
    assert!(
        refused.is_err(),
        "a plain client in strict mode: {refused:?}"
    );
    let server = mesh.server_metrics();
    assert_eq!(
        sample(
            &server,
            "serin_inbound_connections_refused_total",
            &["reason=\"plaintext_in_strict_mode\""]
        ),
        1,
        "{server}"
    );
    // The meshed client still is.
    assert_eq!(mesh.call().await.unwrap(), "HTTP/1.1 200 OK");

    mesh.set_mode(v1::MtlsMode::Unspecified).await;
    assert_eq!(get(mesh.endpoint).await.unwrap(), "HTTP/1.1 200 OK");
}

/// A TLS server on `addr` presenting `chain` (with `key`) to whoever connects, offering the
/// mesh ALPNs, asking no client certificate; counts handshakes that completed.
async fn impostor(
    addr: SocketAddr,
    chain_pem: &str,
    key_der: Vec<u8>,
    completed: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let chain = serin_proxy::tls::certs_from_pem("chain", chain_pem).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into());
    let mut config = rustls::ServerConfig::builder_with_provider(serin_proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = serin_proxy::tls::MESH_ALPNS
        .iter()
        .map(|a| a.to_vec())
        .collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let completed = Arc::clone(&completed);
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    completed.store(true, Ordering::SeqCst);
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nno")
                        .await;
                }
            });
        }
    })
}

/// A key and a CSR for `identity`.
fn key_and_csr(identity: &str) -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(identity.try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

/// A key and a one-hour certificate for `identity` from a new root the mesh does not trust.
fn signed_by_a_foreign_root(identity: &str) -> (rcgen::KeyPair, serin_control::ca::Signed) {
    let foreign = serin_control::ca::Authority::new(
        "cluster.local",
        serin_control::ca::StoredRoots {
            roots: vec![serin_control::ca::generate_root("cluster.local").unwrap()],
        },
    )
    .unwrap();
    let (key, csr) = key_and_csr(identity);
    let signed = foreign
        .sign(&csr, identity, Duration::from_secs(3600))
        .unwrap();
    (key, signed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_identity_or_an_untrusted_root_is_refused() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let cp = ControlPlaneProcess::start(store.path(), free_addr()).await;
    let mut admin = cp.admin().await;
    let mut identity = v1::identity_client::IdentityClient::connect(format!("http://{}", cp.grpc))
        .await
        .unwrap();
    let port = std::net::TcpListener::bind((IMPOSTOR_TEST_SERVER_IP, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // reviews is registered and meshed (a certificate was signed for its token) ...
    let reviews_token = Workload::new("reviews", IMPOSTOR_TEST_SERVER_IP, port)
        .register(&mut admin)
        .await;
    let (_, csr) = key_and_csr(SERVER_ID);
    identity
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr,
            bootstrap_token: reviews_token.clone(),
            ttl: None,
        })
        .await
        .unwrap();
    // ... but its CSR cannot claim another identity.
    let (_, csr) = key_and_csr("spiffe://cluster.local/ns/default/sa/admin");
    let refused = identity
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr,
            bootstrap_token: reviews_token,
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // Nor can an unknown token get anything.
    let (_, csr) = key_and_csr(SERVER_ID);
    let refused = identity
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr,
            bootstrap_token: "not-a-token".into(),
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // An impostor on reviews' address: a valid mesh certificate, but for another workload.
    let impostor_workload = Workload::new("impostor", Ipv4Addr::new(127, 0, 0, 9), 8080);
    let impostor_token = impostor_workload.register(&mut admin).await;
    let impostor_id = &impostor_workload.spiffe_id();
    let (key, csr) = key_and_csr(impostor_id);
    let signed = identity
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr,
            bootstrap_token: impostor_token,
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner();
    let completed = Arc::new(AtomicBool::new(false));
    let endpoint = SocketAddr::new(IMPOSTOR_TEST_SERVER_IP.into(), port);
    let server = impostor(
        endpoint,
        &signed.cert_chain_pem.concat(),
        key.serialize_der(),
        Arc::clone(&completed),
    )
    .await;

    let client_workload = Workload::new("client", CLIENT_IP, CLIENT_PORT);
    let client_token = client_workload.register(&mut admin).await;
    let vip = control_plane::vip_of(&mut admin, "reviews").await;
    let client = start_sidecar(
        &cp,
        &client_workload,
        client_token,
        SidecarOptions::default(),
        SocketAddr::new(CLIENT_IP.into(), 0),
        SocketAddr::new(vip, port),
    )
    .await;
    until_certified("client", &client).await;
    until_meshed(
        "reviews meshed in the client's tables",
        &client,
        SocketAddr::new(vip, port),
        None,
    )
    .await;
    let answer = get(client.outbound_addr).await.unwrap();
    assert_eq!(
        answer, "HTTP/1.1 503 Service Unavailable",
        "wrong identity refused"
    );
    assert!(
        !completed.load(Ordering::SeqCst),
        "the client sidecar aborted the handshake"
    );
    let metrics = client.metrics.render();
    assert!(
        sample(
            &metrics,
            "serin_outbound_mtls_handshakes_total",
            &["outcome=\"failed\""]
        ) >= 1,
        "{metrics}"
    );
    server.abort();

    // The right identity, but from a root the mesh does not trust.
    let (key, signed) = signed_by_a_foreign_root(SERVER_ID);
    // The aborted listener lets go of the port a moment later.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _server = impostor(
        endpoint,
        &signed.chain_pem.concat(),
        key.serialize_der(),
        Arc::clone(&completed),
    )
    .await;
    let answer = get(client.outbound_addr).await.unwrap();
    assert_eq!(
        answer, "HTTP/1.1 503 Service Unavailable",
        "untrusted root refused"
    );
    assert!(!completed.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_an_untrusted_root_is_refused_by_the_server_sidecar() {
    let mesh = Mesh::builder().start().await;
    let (key, signed) = signed_by_a_foreign_root(CLIENT_ID);
    let credentials = serin_proxy::tls::Credentials::new(
        key.serialize_der(),
        &signed.chain_pem.concat(),
        &signed.trust_bundle_pem.concat(),
        signed.not_after,
    )
    .unwrap();
    let tcp = TcpStream::connect(mesh.endpoint).await.unwrap();
    // The client trusts its own (foreign) root only, so it also refuses the server: either side
    // may be the first to fail; the server must not serve it.
    let result = credentials
        .connect(tcp, SERVER_ID, serin_proxy::tls::ALPN_HTTP1)
        .await;
    if let Ok(mut tls) = result {
        let _ = tls
            .write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(LONG, tls.read_to_end(&mut out)).await;
        assert!(out.is_empty(), "served: {}", String::from_utf8_lossy(&out));
    }
    let server = mesh.server_metrics();
    assert!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"mtls\""]
        ) == 0,
        "{server}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_renew_under_load_without_a_failed_request() {
    // 2 s certificates: renewed every 1.4 s, several times during the load.
    let mesh = Mesh::builder()
        .cert_ttl(Duration::from_secs(2))
        .start()
        .await;
    let deadline = Instant::now() + Duration::from_secs(6);
    let (mut ok, mut failed) = (0u64, Vec::new());
    while Instant::now() < deadline && ok + (failed.len() as u64) < 100_000 {
        match mesh.call().await {
            Ok(line) if line == "HTTP/1.1 200 OK" => ok += 1,
            other => failed.push(format!("{other:?}")),
        }
    }
    eprintln!(
        "renewal under load: {ok} requests ok, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(ok > 10, "{ok} requests");
    for (what, metrics) in [
        ("client", mesh.client_metrics()),
        ("server", mesh.server_metrics()),
    ] {
        let renewals = sample(
            &metrics,
            "serin_identity_certificate_requests_total",
            &["outcome=\"ok\""],
        );
        assert!(
            renewals >= 3,
            "{what}: {renewals} certificates in 6 s\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_down_longer_than_a_renewal_period_breaks_nothing_before_expiry() {
    // 6 s certificates, renewed at 4.2 s: the control plane goes away at once and stays away
    // past the renewal time; requests keep working on the certificates held.
    let mut mesh = Mesh::builder()
        .cert_ttl(Duration::from_secs(6))
        .start()
        .await;
    let issued = Instant::now();
    mesh.cp.take().unwrap().stop().await;
    let mut ok = 0u64;
    // Until a moment before the first certificate could expire (issued at the latest just
    // before `issued`).
    while issued.elapsed() < Duration::from_millis(5_200) {
        assert_eq!(mesh.call().await.unwrap(), "HTTP/1.1 200 OK");
        ok += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = mesh.client_metrics();
    let failed = sample(
        &metrics,
        "serin_identity_certificate_requests_total",
        &["outcome=\"failed\""],
    );
    eprintln!("CA down: {ok} requests ok, {failed} failed renewals");
    assert!(
        failed >= 1,
        "renewal was tried while the CA was down\n{metrics}"
    );
    let server = mesh.server_metrics();
    assert!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"mtls\""]
        ) >= 1,
        "{server}"
    );
    assert_eq!(
        sample(
            &server,
            "serin_inbound_connections_total",
            &["security=\"plain\""]
        ),
        0,
        "every request on mTLS\n{server}"
    );
}

/// One keep-alive `GET /` on `conn`: the status line (the app answers `ok`, 2 bytes).
async fn get_on(conn: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Result<String, String> {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        while !out.windows(6).any(|w| w == b"\r\n\r\nok") {
            let n = conn.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed".to_owned());
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(LONG, read)
        .await
        .map_err(|_| "no answer in time".to_owned())??;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_and_renewals_drop_no_live_connection() {
    use serin_control::identity::RotationStep;
    let mut mesh = Mesh::builder()
        .cert_ttl(Duration::from_secs(2))
        .start()
        .await;
    assert_eq!(mesh.call().await.unwrap(), "HTTP/1.1 200 OK");
    // A connection opened with the first certificates (signed by the first root), kept open.
    let mut held = mesh.mtls_connection().await.unwrap();
    assert_eq!(get_on(&mut held).await.unwrap(), "HTTP/1.1 200 OK");
    // Add (trust the new root), promote (sign with it), drop the old one: at every step the
    // held connection still serves, requests through the sidecars work, and so do new
    // connections with the newest certificates.
    for step in [
        RotationStep::Add,
        RotationStep::Promote,
        RotationStep::DropOld,
    ] {
        mesh.rotate(step).await;
        assert_eq!(
            get_on(&mut held).await.unwrap(),
            "HTTP/1.1 200 OK",
            "the live connection after {step:?}"
        );
        for _ in 0..20 {
            assert_eq!(mesh.call().await.unwrap(), "HTTP/1.1 200 OK", "{step:?}");
        }
        let mut fresh = mesh.mtls_connection().await.unwrap();
        assert_eq!(
            get_on(&mut fresh).await.unwrap(),
            "HTTP/1.1 200 OK",
            "a new connection after {step:?}"
        );
    }
}
