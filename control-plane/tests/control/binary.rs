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
fn kubernetes_mode_is_refused_clearly() {
    tracing();
    let out = bin().arg("--kubernetes").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--kubernetes is not supported yet"),
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
