//! A sidecar that lives on the control plane's mTLS port (15012) only: given the control
//! plane's roots (`--control-plane-ca`, the file serin-control's `--trust-bundle-out` writes),
//! its first certificate request, its Discovery stream, its telemetry and its renewals all go
//! there; the plaintext `--control-plane` URL points at a port nothing listens on, so nothing
//! can have gone that way. With roots the control plane's certificate does not chain to, the
//! sidecar refuses the control plane: no certificate, no configuration.
//! In-process (the serin-control library and `Bound`), on loopback, no root needed.

#[path = "support/control_plane.rs"]
mod control_plane;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use control_plane::{ControlPlaneProcess, eventually, free_addr, init_tracing};
use serin_proto::v1;
use serin_proxy::app::Bound;
use serin_proxy::config::{CaSource, Config, ConfigSource, ControlPlane, Identity, ProxySettings};
use serin_proxy::identity::{self, IdentitySettings, TokenSource};
use serin_proxy::orig_dst::FromFn;
use tokio::net::TcpStream;

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

/// Registers `reviews-0` as starting (as the local mesh does before the sidecar starts): its
/// bootstrap token.
async fn register(cp: &ControlPlaneProcess) -> String {
    cp.admin()
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(v1::Workload {
                pod_name: "reviews-0".into(),
                namespace: "shop".into(),
                addresses: vec![POD_IP.to_string()],
                service: "reviews".into(),
                version: "v1".into(),
                service_account: "reviews".into(),
                ..Default::default()
            }),
            ttl: None,
            starting: true,
        })
        .await
        .unwrap()
        .into_inner()
        .bootstrap_token
}

/// A sidecar of `reviews-0` whose plaintext URL leads nowhere, on `grpc_tls` with the roots
/// `ca`, its certificates living `cert_ttl`; its Discovery, certificate and telemetry tasks run.
async fn sidecar(
    grpc_tls: SocketAddr,
    ca: CaSource,
    token: String,
    cert_ttl: Duration,
) -> Arc<Bound> {
    let settings = ControlPlane {
        tls_url: Some(format!("https://{grpc_tls}")),
        control_plane_ca: Some(Box::new(ca)),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        telemetry_interval: Some(Duration::from_millis(100)),
        identity: Some(Box::new(IdentitySettings {
            token: TokenSource::Value(token),
            trust_domain: identity::DEFAULT_TRUST_DOMAIN.into(),
            service_account: "reviews".into(),
            cert_ttl: Some(cert_ttl),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
        })),
        // Nothing listens there: whatever works went over the mTLS port.
        ..ControlPlane::new(format!("http://{}", free_addr()))
    };
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let config = Config {
        identity: Identity {
            pod_name: "reviews-0".into(),
            namespace: "shop".into(),
            pod_ips: vec![POD_IP.into()],
            service: "reviews".into(),
            version: "v1".into(),
        },
        source: ConfigSource::ControlPlane(settings),
        admin_addr: any,
        outbound_addr: any,
        inbound_addr: SocketAddr::new(POD_IP.into(), 0),
        drain_deadline: Duration::from_secs(1),
        proxy: ProxySettings::default(),
        static_tls: None,
    };
    let orig = free_addr();
    let lookup = FromFn(move |_: &TcpStream| Ok(orig));
    let bound = Arc::new(Bound::start(&config, Arc::new(lookup)).await.unwrap());
    for task in 0..3 {
        let bound = Arc::clone(&bound);
        tokio::spawn(async move {
            match task {
                0 => bound.discover().await,
                1 => bound.certify().await,
                _ => bound.report().await,
            }
        });
    }
    bound
}

/// The value of the sample of `name` whose labels contain all of `labels` (0 when none).
fn sample(bound: &Bound, name: &str, labels: &[&str]) -> u64 {
    let text = bound.metrics.render();
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
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
    let bound = sidecar(
        cp.grpc_tls.unwrap(),
        CaSource::File(bundle),
        token,
        Duration::from_secs(3),
    )
    .await;

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
            let reported = sample(&bound, "serin_telemetry_connections_total", &[]) >= 1;
            let renewed = sample(
                &bound,
                "serin_identity_certificate_requests_total",
                &["outcome=\"ok\""],
            ) >= 2;
            (reported && renewed).then_some(())
        }
    })
    .await;
    assert_eq!(
        sample(
            &bound,
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
        cp.grpc_tls.unwrap(),
        CaSource::Pem(other.cert_pem),
        token,
        Duration::from_secs(60),
    )
    .await;
    eventually("certificate requests refused", || {
        let bound = Arc::clone(&bound);
        async move {
            (sample(
                &bound,
                "serin_identity_certificate_requests_total",
                &["outcome=\"failed\""],
            ) >= 2)
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        sample(
            &bound,
            "serin_identity_certificate_requests_total",
            &["outcome=\"ok\""]
        ),
        0
    );
    assert!(!bound.config.subscribe().borrow().is_ready());
    let proxies = cp.proxies().await;
    assert!(proxies.is_empty(), "{proxies:?}");
}
