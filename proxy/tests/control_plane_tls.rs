//! A sidecar that lives on the control plane's mTLS port (15012) only: given the control
//! plane's roots (`--control-plane-ca`, the file serin-control's `--trust-bundle-out` writes),
//! its first certificate request, its Discovery stream, its telemetry and its renewals all go
//! there; the plaintext `--control-plane` URL points at a port nothing listens on, so nothing
//! can have gone that way. With roots the control plane's certificate does not chain to, the
//! sidecar refuses the control plane: no certificate, no configuration.
//! In-process (the serin-control library and `Bound`), on loopback, no root needed.

#[path = "support/control_plane.rs"]
mod control_plane;
#[path = "support/mesh.rs"]
mod mesh;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control_plane::{ControlPlaneProcess, eventually, free_addr, init_tracing};
use mesh::{SidecarOptions, Workload, sample, start_sidecar};
use serin_proto::v1;
use serin_proxy::app::Bound;
use serin_proxy::config::CaSource;

const POD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);

/// A control plane with its mTLS port on, Discovery and Telemetry refused on the plaintext
/// port, its trust bundle written to `bundle`.
async fn control_plane(store: &std::path::Path, bundle: PathBuf) -> ControlPlaneProcess {
    ControlPlaneProcess::start_with(store, free_addr(), |c| {
        c.grpc_tls = Some(serin_control::tls::TlsPortConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            sans: vec!["localhost".into()],
        });
        c.require_client_certs = true;
        c.trust_bundle_out = Some(bundle);
    })
    .await
}

/// `reviews-0` of namespace shop, on [`POD_IP`].
fn reviews() -> Workload {
    Workload::new("reviews", POD_IP, 9080).in_namespace("shop")
}

/// Registers `reviews-0` as starting (as the local mesh does before the sidecar starts): its
/// bootstrap token.
async fn register(cp: &ControlPlaneProcess) -> String {
    cp.admin()
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            starting: true,
            ..reviews().registration()
        })
        .await
        .unwrap()
        .into_inner()
        .bootstrap_token
}

/// A sidecar of `reviews-0` whose plaintext URL leads nowhere, on the control plane's mTLS port
/// with the roots `ca`, its certificates living `cert_ttl`, reporting telemetry.
async fn sidecar(
    cp: &ControlPlaneProcess,
    ca: CaSource,
    token: String,
    cert_ttl: Duration,
) -> Arc<Bound> {
    let options = SidecarOptions {
        cert_ttl: Some(cert_ttl),
        telemetry: Some(Duration::from_millis(100)),
        control_plane_ca: Some(ca),
        // Nothing listens there: whatever works went over the mTLS port.
        plaintext_url: Some(format!("http://{}", free_addr())),
    };
    let inbound = SocketAddr::new(POD_IP.into(), 0);
    start_sidecar(cp, &reviews(), token, options, inbound, free_addr()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_control_planes_roots_a_sidecar_needs_only_the_mtls_port() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let bundle = store.path().join("trust-bundle.pem");
    let cp = control_plane(&store.path().join("store"), bundle.clone()).await;
    let pem = std::fs::read_to_string(&bundle).expect("serin-control wrote its trust bundle");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let token = register(&cp).await;
    // 3 s certificates: renewed at ~2.1 s, over the mTLS port with the current certificate.
    let bound = sidecar(&cp, CaSource::File(bundle), token, Duration::from_secs(3)).await;

    // Configuration arrived (over 15012: the plaintext URL is dead).
    let mut tables = bound.config.subscribe();
    tokio::time::timeout(control_plane::LONG, tables.wait_for(|t| t.is_ready()))
        .await
        .expect("the sidecar gets its configuration over the mTLS port")
        .unwrap();
    let proxies = cp.proxies().await;
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    // The telemetry stream is accepted; the certificate is renewed at least once.
    eventually("telemetry reported and the certificate renewed", || {
        let bound = Arc::clone(&bound);
        async move {
            // (Reports are sent only when there is traffic; the stream is accepted or not.)
            let reported = sample(
                &bound.metrics.render(),
                "serin_telemetry_connections_total",
                &[],
            ) >= 1;
            let renewed = sample(
                &bound.metrics.render(),
                "serin_identity_certificate_requests_total",
                &["outcome=\"ok\""],
            ) >= 2;
            (reported && renewed).then_some(())
        }
    })
    .await;
    assert_eq!(
        sample(
            &bound.metrics.render(),
            "serin_identity_certificate_requests_total",
            &["outcome=\"failed\""]
        ),
        0,
        "{}",
        bound.metrics.render()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_roots_the_control_plane_does_not_chain_to_the_sidecar_refuses_it() {
    init_tracing();
    let store = tempfile::tempdir().unwrap();
    let cp = control_plane(
        &store.path().join("store"),
        store.path().join("trust-bundle.pem"),
    )
    .await;
    let token = register(&cp).await;
    let other = serin_control::ca::generate_root("cluster.local").unwrap();
    let bound = sidecar(
        &cp,
        CaSource::Pem(other.cert_pem),
        token,
        Duration::from_secs(60),
    )
    .await;
    eventually("certificate requests refused", || {
        let bound = Arc::clone(&bound);
        async move {
            (sample(
                &bound.metrics.render(),
                "serin_identity_certificate_requests_total",
                &["outcome=\"failed\""],
            ) >= 2)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        sample(
            &bound.metrics.render(),
            "serin_identity_certificate_requests_total",
            &["outcome=\"ok\""]
        ),
        0
    );
    assert!(!bound.config.subscribe().borrow().is_ready());
    let proxies = cp.proxies().await;
    assert!(proxies.is_empty(), "{proxies:?}");
}
