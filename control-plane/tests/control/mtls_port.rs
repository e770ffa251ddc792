//! The mTLS gRPC port (15012): a sidecar with a CA-signed workload certificate subscribes and
//! gets only what its namespace may see; a hello claiming another namespace is refused; an
//! untrusted certificate fails the handshake; a caller without a certificate can bootstrap
//! (SignCertificate) but not subscribe; `require_client_certs` closes Discovery on the
//! plaintext port.

use std::time::Duration;

use serin_control::ca::{Authority, DEFAULT_TRUST_DOMAIN, StoredRoots, generate_root};
use serin_control::tls::TlsPortConfig;
use serin_proto::v1;
use serin_proto::v1::discovery_client::DiscoveryClient;
use serin_proto::v1::identity_client::IdentityClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::mtls_support::{client_config, csr, tls_channel};
use crate::support::{Harness, apply_request, eventually, policy, snapshot, workload};

/// A control plane with the mTLS port on 127.0.0.1:0.
async fn start(require_client_certs: bool) -> Harness {
    Harness::start_with(|c| {
        c.grpc_tls = Some(TlsPortConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
        });
        c.require_client_certs = require_client_certs;
    })
    .await
}

/// A workload certificate and its key, PEM, with the roots to trust.
struct Cert {
    chain: Vec<String>,
    key: String,
    trust: Vec<String>,
}

/// The trust bundle, read from the authority through a bootstrap call's answer.
async fn register(h: &Harness, namespace: &str, pod: &str, service: &str, ip: &str) -> String {
    let mut w = workload(pod, service, "v1", ip);
    w.namespace = namespace.into();
    w.service_account = service.into();
    h.admin()
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(w),
            ttl: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .bootstrap_token
}

/// Bootstraps a certificate for `namespace`/`service` over the mTLS port, without a client
/// certificate (trusting the server on first use is what a sidecar does with its bundle; the
/// test trusts the control plane's root, read from a first answer over plaintext).
async fn certificate(h: &Harness, namespace: &str, pod: &str, service: &str, ip: &str) -> Cert {
    let token = register(h, namespace, pod, service, ip).await;
    let identity = format!("spiffe://{DEFAULT_TRUST_DOMAIN}/ns/{namespace}/sa/{service}");
    // The roots: a first signing on the plaintext port with a throwaway key tells them.
    let (probe_csr, _) = csr(&identity);
    let trust = IdentityClient::new(h.channel().await)
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: probe_csr,
            bootstrap_token: token.clone(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner()
        .trust_bundle_pem;
    // The certificate itself over the mTLS port, with no client certificate.
    let (csr_pem, key) = csr(&identity);
    let channel = tls_channel(h.grpc_tls.unwrap(), client_config(&trust, None))
        .await
        .unwrap();
    let signed = IdentityClient::new(channel)
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem,
            bootstrap_token: token,
            ttl: None,
        })
        .await
        .expect("a caller without a certificate can bootstrap on the mTLS port")
        .into_inner();
    assert_eq!(signed.identity, identity);
    Cert {
        chain: signed.cert_chain_pem,
        key,
        trust,
    }
}

fn hello(namespace: &str, pod: &str, ip: &str) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello {
            proxy: Some(v1::ProxyIdentity {
                pod_name: pod.into(),
                namespace: namespace.into(),
                pod_ips: vec![ip.into()],
                service: "x".into(),
                version: "v1".into(),
                proxy_version: "test".into(),
                ..Default::default()
            }),
            capabilities: vec!["snapshot.full".into()],
            applied_version: String::new(),
        })),
    }
}

/// An open Subscribe stream.
#[derive(Debug)]
struct Sub {
    _tx: mpsc::Sender<v1::SubscribeRequest>,
    stream: tonic::Streaming<v1::SubscribeResponse>,
    /// The first push, not looked at yet.
    first: Option<v1::Snapshot>,
}

impl Sub {
    /// Reads pushes until one satisfies `check` (within 5 s).
    async fn until(&mut self, what: &str, check: impl Fn(&v1::Snapshot) -> bool) -> v1::Snapshot {
        if let Some(first) = self.first.take()
            && check(&first)
        {
            return first;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.message())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap()
                .expect("the stream is open");
            let s = snapshot(&msg).clone();
            if check(&s) {
                return s;
            }
        }
    }
}

/// Opens Subscribe on `channel` with a hello for `namespace`; a refusal is the error.
async fn subscribe(channel: Channel, namespace: &str) -> Result<Sub, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello(namespace, "probe-0", "10.244.9.9"))
        .await
        .unwrap();
    let mut stream = DiscoveryClient::new(channel)
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an answer within 5 s")?
        .expect("the stream ended without a snapshot");
    Ok(Sub {
        _tx: tx,
        stream,
        first: Some(snapshot(&first).clone()),
    })
}

fn names(s: &v1::Snapshot) -> (Vec<String>, Vec<String>, Vec<String>) {
    let services = s
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    let endpoints = s
        .endpoints
        .iter()
        .map(|e| format!("{}/{}", e.namespace, e.service))
        .collect();
    let policies = s
        .policies
        .iter()
        .map(|p| {
            let m = p.metadata.as_ref().unwrap();
            format!("{}/{}", m.namespace, m.name)
        })
        .collect();
    (services, endpoints, policies)
}

fn namespaced_policy(namespace: &str, service: &str) -> v1::TrafficPolicy {
    policy(&format!(
        "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {{name: {service}, namespace: {namespace}}}
spec:
  service: {service}
  default:
    route: [{{version: v1, weight: 100}}]
"
    ))
}

#[tokio::test]
async fn a_sidecar_on_the_mtls_port_sees_its_namespace_and_public_ones_only() {
    let h = start(false).await;
    let shop = certificate(&h, "shop", "reviews-0", "reviews", "10.244.1.1").await;
    let bank = certificate(&h, "bank", "ledger-0", "ledger", "10.244.2.1").await;
    register(&h, "web", "frontend-0", "frontend", "10.244.3.1").await;
    let admin = h.admin().await;
    for (ns, svc) in [("shop", "reviews"), ("bank", "ledger"), ("web", "frontend")] {
        admin
            .clone()
            .apply_policy(apply_request(namespaced_policy(ns, svc)))
            .await
            .unwrap();
    }
    let private = admin
        .clone()
        .set_namespace_visibility(v1::SetNamespaceVisibilityRequest {
            namespace: "bank".into(),
            private: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(private.private_namespaces, vec!["bank".to_owned()]);

    // The shop sidecar: its own namespace and the public web, not the private bank.
    let channel = tls_channel(
        h.grpc_tls.unwrap(),
        client_config(&shop.trust, Some((&shop.chain, &shop.key))),
    )
    .await
    .unwrap();
    let mut stream = subscribe(channel.clone(), "shop").await.unwrap();
    let want = (
        vec!["shop/reviews".to_owned(), "web/frontend".to_owned()],
        vec!["shop/reviews".to_owned(), "web/frontend".to_owned()],
        vec!["shop/reviews".to_owned(), "web/frontend".to_owned()],
    );
    let seen = stream.until("shop's view", |s| names(s) == want).await;
    assert!(
        !format!("{seen:?}").contains("ledger"),
        "nothing of the private bank reaches shop: {seen:?}"
    );

    // The bank sidecar sees its own namespace (and the public ones).
    let bank_channel = tls_channel(
        h.grpc_tls.unwrap(),
        client_config(&bank.trust, Some((&bank.chain, &bank.key))),
    )
    .await
    .unwrap();
    let mut bank_stream = subscribe(bank_channel, "bank").await.unwrap();
    bank_stream
        .until("bank's view", |s| {
            names(s).0
                == vec![
                    "bank/ledger".to_owned(),
                    "shop/reviews".to_owned(),
                    "web/frontend".to_owned(),
                ]
        })
        .await;

    // The plaintext port (no certificate) still gets the whole mesh, as before.
    let mut plain = subscribe(h.channel().await, "default").await.unwrap();
    plain
        .until("the whole mesh on 15010", |s| names(s).0.len() == 3)
        .await;

    // Public again: the bank's service reaches the shop sidecar.
    admin
        .clone()
        .set_namespace_visibility(v1::SetNamespaceVisibilityRequest {
            namespace: "bank".into(),
            private: false,
        })
        .await
        .unwrap();
    stream
        .until("bank/ledger once bank is public", |s| {
            names(s).0.contains(&"bank/ledger".to_owned())
        })
        .await;

    // A hello claiming another namespace than the certificate's is refused.
    let e = subscribe(channel, "bank").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("\"bank\"") && e.message().contains("\"shop\""),
        "{}",
        e.message()
    );
    // The refused stream is not listed as a proxy: shop, bank and the plaintext one are.
    let proxies = h.proxies().await;
    assert_eq!(proxies.len(), 3, "{proxies:?}");
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_handshake() {
    let h = start(false).await;
    let shop = certificate(&h, "shop", "reviews-0", "reviews", "10.244.1.1").await;
    // The same identity, signed by a root the control plane does not trust.
    let other = Authority::new(
        DEFAULT_TRUST_DOMAIN,
        StoredRoots {
            roots: vec![generate_root(DEFAULT_TRUST_DOMAIN).unwrap()],
        },
    )
    .unwrap();
    let identity = format!("spiffe://{DEFAULT_TRUST_DOMAIN}/ns/shop/sa/reviews");
    let (csr_pem, key) = csr(&identity);
    let forged = other
        .sign(&csr_pem, &identity, Duration::from_secs(3600))
        .unwrap();
    let config = client_config(&shop.trust, Some((&forged.chain_pem, &key)));
    // TLS 1.3: the server checks the client's certificate after the client's handshake ends, so
    // the refusal shows on connecting or on the first call.
    let refused = match tls_channel(h.grpc_tls.unwrap(), config).await {
        Err(_) => true,
        Ok(channel) => subscribe(channel, "shop").await.is_err(),
    };
    assert!(refused, "a certificate of an untrusted root is refused");
    let proxies = h.proxies().await;
    assert!(proxies.is_empty(), "{proxies:?}");
}

#[tokio::test]
async fn without_a_certificate_a_caller_can_bootstrap_but_not_subscribe() {
    let h = start(true).await;
    // `certificate` signs over the mTLS port without a client certificate.
    let shop = certificate(&h, "shop", "reviews-0", "reviews", "10.244.1.1").await;

    // No certificate on the mTLS port: no Subscribe.
    let channel = tls_channel(h.grpc_tls.unwrap(), client_config(&shop.trust, None))
        .await
        .unwrap();
    let e = subscribe(channel, "shop").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("workload certificate"),
        "{}",
        e.message()
    );
    // The plaintext port refuses Discovery when client certificates are required.
    let e = subscribe(h.channel().await, "shop").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("--require-client-certs"),
        "{}",
        e.message()
    );
    // With its certificate the sidecar subscribes.
    let channel = tls_channel(
        h.grpc_tls.unwrap(),
        client_config(&shop.trust, Some((&shop.chain, &shop.key))),
    )
    .await
    .unwrap();
    let _stream = subscribe(channel, "shop").await.unwrap();
    eventually("the shop proxy listed", Duration::from_secs(5), || {
        let h = &h;
        async move {
            let proxies = h.proxies().await;
            (proxies.len() == 1).then_some(())
        }
    })
    .await;
}

/// Opens Telemetry.Report on `channel` as a proxy of `namespace`; the first answer or refusal.
async fn report(channel: Channel, namespace: &str) -> Result<v1::ReportResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::ReportRequest {
        reporter: Some(v1::ProxyIdentity {
            pod_name: "reviews-0".into(),
            namespace: namespace.into(),
            pod_ips: vec!["10.244.1.1".into()],
            service: "reviews".into(),
            version: "v1".into(),
            proxy_version: "test".into(),
            ..Default::default()
        }),
        sequence: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut answers = v1::telemetry_client::TelemetryClient::new(channel)
        .report(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), answers.message())
        .await
        .expect("an answer within 5 s")?;
    drop(tx);
    Ok(first.expect("the stream ended without an answer"))
}

#[tokio::test]
async fn telemetry_on_the_mtls_port_is_only_for_the_certificates_namespace() {
    let h = start(true).await;
    let shop = certificate(&h, "shop", "reviews-0", "reviews", "10.244.1.1").await;
    let with_cert = || {
        tls_channel(
            h.grpc_tls.unwrap(),
            client_config(&shop.trust, Some((&shop.chain, &shop.key))),
        )
    };
    // Its own namespace: accepted.
    report(with_cert().await.unwrap(), "shop")
        .await
        .expect("a shop sidecar reports as shop");
    // Another namespace's proxy: refused (the dashboard cannot be fed lies about it).
    let e = report(with_cert().await.unwrap(), "bank")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("\"bank\"") && e.message().contains("\"shop\""),
        "{}",
        e.message()
    );
    // No certificate on the mTLS port, or the plaintext port with --require-client-certs.
    let channel = tls_channel(h.grpc_tls.unwrap(), client_config(&shop.trust, None))
        .await
        .unwrap();
    let e = report(channel, "shop").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = report(h.channel().await, "shop").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("--require-client-certs"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn a_renewal_with_another_workloads_certificate_is_refused() {
    let h = start(false).await;
    let shop = certificate(&h, "shop", "reviews-0", "reviews", "10.244.1.1").await;
    let bank = register(&h, "bank", "ledger-0", "ledger", "10.244.2.1").await;
    let channel = || {
        tls_channel(
            h.grpc_tls.unwrap(),
            client_config(&shop.trust, Some((&shop.chain, &shop.key))),
        )
    };
    // shop's sidecar presenting bank's token (stolen) asks for bank's identity: refused.
    let bank_id = format!("spiffe://{DEFAULT_TRUST_DOMAIN}/ns/bank/sa/ledger");
    let e = IdentityClient::new(channel().await.unwrap())
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr(&bank_id).0,
            bootstrap_token: bank,
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("ns/shop/sa/reviews") && e.message().contains(&bank_id),
        "{}",
        e.message()
    );
    // Its own renewal with its certificate works.
    let token = register(&h, "shop", "reviews-0", "reviews", "10.244.1.1").await;
    let shop_id = format!("spiffe://{DEFAULT_TRUST_DOMAIN}/ns/shop/sa/reviews");
    let renewed = IdentityClient::new(channel().await.unwrap())
        .sign_certificate(v1::SignCertificateRequest {
            csr_pem: csr(&shop_id).0,
            bootstrap_token: token,
            ttl: None,
        })
        .await
        .expect("a renewal with the same workload's certificate")
        .into_inner();
    assert_eq!(renewed.identity, shop_id);
}

#[tokio::test]
async fn a_client_certificate_named_in_the_tokens_file_is_an_admin_credential() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(
        &tokens,
        "write writer-token-0000000001\nread reader-token-0000000001\n\
         write spiffe://cluster.local/ns/ci/sa/deployer\n\
         read spiffe://cluster.local/ns/ops/sa/viewer\n",
    )
    .unwrap();
    let h = Harness::start_with(|c| {
        c.grpc_tls = Some(TlsPortConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            sans: vec!["localhost".into(), "127.0.0.1".into()],
        });
        c.admin_tokens = Some(tokens);
    })
    .await;
    // An Admin client on the mTLS port presenting `cert`, with no token.
    let admin_with = |cert: Cert| {
        let addr = h.grpc_tls.unwrap();
        async move {
            let channel = tls_channel(
                addr,
                client_config(&cert.trust, Some((&cert.chain, &cert.key))),
            )
            .await
            .unwrap();
            serin_proto::auth::admin_client(channel, serin_proto::auth::BearerToken::none())
        }
    };
    let list = |mut admin: serin_proto::auth::AuthorizedAdmin| async move {
        admin
            .list_policies(v1::ListPoliciesRequest::default())
            .await
            .map(|r| r.into_inner().policies.len())
    };
    let deployer = certificate(&h, "ci", "deployer-0", "deployer", "10.244.7.1").await;
    let viewer = certificate(&h, "ops", "viewer-0", "viewer", "10.244.7.2").await;
    let stranger = certificate(&h, "shop", "reviews-0", "reviews", "10.244.7.3").await;

    // The deployer's certificate writes.
    let mut admin = admin_with(deployer).await;
    admin
        .apply_policy(apply_request(namespaced_policy("ci", "reviews")))
        .await
        .expect("a write identity applies a policy");
    assert_eq!(list(admin).await.unwrap(), 1);
    // The viewer's reads, and may not write.
    let mut admin = admin_with(viewer).await;
    assert_eq!(list(admin.clone()).await.unwrap(), 1);
    let e = admin
        .apply_policy(apply_request(namespaced_policy("ops", "reviews")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A mesh certificate the file does not name: refused, saying which line would allow it.
    let e = list(admin_with(stranger).await).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message()
            .contains("spiffe://cluster.local/ns/shop/sa/reviews is not in the control plane's admin tokens file"),
        "{}",
        e.message()
    );
    // The plaintext port has no identity: no token, no access.
    let e = list(h.admin_as(None).await).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}
