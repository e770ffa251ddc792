//! The real `serin-control` binary: start-up failures and SIGTERM.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_serin-control"));
    cmd.env("SERIN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn kubernetes_mode_without_an_api_server_fails_clearly() {
    tracing();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    // The replicas have no store to generate tokens in: the operator's file is required.
    let out = bin()
        .args([
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--kubernetes",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Kubernetes mode needs --admin-tokens FILE"),
        "{stderr}"
    );
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, "write serin-test-kubernetes-write-token-0001\n").unwrap();
    // Nor can the replicas generate a CA root each: the operator's root is required.
    let out = bin()
        .args([
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--kubernetes",
        ])
        .arg("--admin-tokens")
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Kubernetes mode needs --ca-cert FILE --ca-key FILE"),
        "{stderr}"
    );
    let root = serin_control::ca::generate_root(serin_control::ca::DEFAULT_TRUST_DOMAIN).unwrap();
    let (ca_cert, ca_key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&ca_cert, &root.cert_pem).unwrap();
    std::fs::write(&ca_key, &root.key_pem).unwrap();
    let out = bin()
        .args([
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--kubernetes",
            "--kubeconfig",
        ])
        .arg(&missing)
        .arg("--admin-tokens")
        .arg(&tokens)
        .arg("--ca-cert")
        .arg(&ca_cert)
        .arg("--ca-key")
        .arg(&ca_key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot read the kubeconfig {}", missing.display())),
        "{stderr}"
    );
    let out = bin()
        .args(["--kubernetes", "--replica", "Not_A_Label"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--replica \"Not_A_Label\": must be a DNS label"),
        "{stderr}"
    );
}

#[test]
fn a_taken_port_fails_loudly_with_its_address() {
    tracing();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["--grpc", "127.0.0.1:0", "--http", &addr, "--store"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("serin-control: cannot listen for HTTP on {addr}")),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_with_a_subscribed_proxy_stops_cleanly() {
    tracing();
    let dir = tempfile::tempdir().unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = bin()
        .args([
            "--grpc",
            &grpc.to_string(),
            "--http",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(dir.path())
        .spawn()
        .unwrap();
    let channel = eventually(
        "serin-control accepting",
        Duration::from_secs(10),
        || async {
            tonic::transport::Channel::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
                .ok()
        },
    )
    .await;
    let mut client = serin_proto::v1::discovery_client::DiscoveryClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("p")).await.unwrap();
    let mut stream = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("a first snapshot");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "serin-control still running 10 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    drop(tx);
}

#[test]
fn a_store_in_use_by_another_control_plane_is_refused() {
    tracing();
    let dir = tempfile::tempdir().unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut first = bin()
        .args([
            "--grpc",
            &grpc.to_string(),
            "--http",
            "127.0.0.1:0",
            "--store",
        ])
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The store is opened before the ports are bound: once gRPC accepts, the store is held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(grpc).is_err() {
        assert!(
            Instant::now() < deadline,
            "the first control plane never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = bin()
        .args(["--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--store"])
        .arg(dir.path())
        .output()
        .unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = dir.path().join("serin.redb");
    assert!(
        stderr.contains(&format!("cannot open the store {}", file.display())),
        "{stderr}"
    );
}

/// Kills the child when the test ends, even on panic.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `POST /inject` over TLS that trusts only `ca_pem`; the status line and body.
async fn post_review(addr: std::net::SocketAddr, ca_pem: &str, body: &str) -> (String, String) {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("serin-control.serin-system.svc").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the webhook");
    let request = format!(
        "POST /inject HTTP/1.1\r\nHost: serin-control.serin-system.svc\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap_or_default();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

const REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b1d2","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"shop","operation":"CREATE","object":{"apiVersion":"v1","kind":"Pod","metadata":{"generateName":"web-","labels":{"app":"web"}},"spec":{"containers":[{"name":"web","image":"nginx"}]}}}}"#;

#[tokio::test]
async fn the_webhook_serves_with_a_generated_or_a_given_certificate() {
    tracing();
    let dir = tempfile::tempdir().unwrap();
    // Generated: the certificate written to --webhook-cert-out is the one to trust.
    let webhook = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cert_out = dir.path().join("generated.pem");
    let _child = Killed(
        bin()
            .args([
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--webhook-addr",
            ])
            .arg(webhook.to_string())
            .arg("--webhook-cert-out")
            .arg(&cert_out)
            .arg("--store")
            .arg(dir.path().join("store1"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = eventually(
        "the generated certificate",
        Duration::from_secs(10),
        || async {
            let ca = std::fs::read_to_string(&cert_out).ok()?;
            std::net::TcpStream::connect(webhook).ok().map(|_| ca)
        },
    )
    .await;
    let (status, body) = post_review(webhook, &ca, REVIEW).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(
        body.contains(r#""uid":"b1d2""#) && body.contains(r#""patchType":"JSONPatch""#),
        "{body}"
    );

    // Given: a certificate and key from files (as cert-manager's Secret mounts them).
    let generated =
        rcgen::generate_simple_self_signed(vec!["serin-control.serin-system.svc".to_owned()])
            .unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let webhook = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _child = Killed(
        bin()
            .args([
                "--grpc",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--webhook-addr",
            ])
            .arg(webhook.to_string())
            .arg("--webhook-cert")
            .arg(&cert)
            .arg("--webhook-key")
            .arg(&key)
            .arg("--store")
            .arg(dir.path().join("store2"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the webhook listening", Duration::from_secs(10), || async {
        std::net::TcpStream::connect(webhook).ok()
    })
    .await;
    let (status, body) = post_review(webhook, &generated.cert.pem(), REVIEW).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");

    // A key file that is not a key: one line naming the file.
    let out = bin()
        .args([
            "--grpc",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .arg("--webhook-cert")
        .arg(&cert)
        .arg("--webhook-key")
        .arg(&cert)
        .arg("--store")
        .arg(dir.path().join("store3"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read the webhook private key from"),
        "{stderr}"
    );
}
