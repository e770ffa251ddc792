//! A Python grpcio client (stubs generated from proto/ at test time) applies a policy and lists
//! proxies: the API works from a second language, with nothing but the .proto files.
//!
//! Needs a venv with grpcio and grpcio-tools: `scripts/test` creates it in `target/py-venv`;
//! `SERIN_PYTHON` names another interpreter.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SERIN_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py-venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test (it creates the venv), or: python3 -m venv target/py-venv && target/py-venv/bin/pip install grpcio grpcio-tools",
        venv.display()
    );
    venv
}

#[tokio::test]
async fn a_python_grpcio_client_applies_a_policy_and_lists_proxies() {
    let h = Harness::start().await;
    let mut proxy = Proxy::connect(&h, "productpage-v1-0").await;
    let first = proxy.next().await;
    proxy.ack(&first).await;
    eventually("the proxy in sync", Duration::from_secs(5), || async {
        let list = h
            .admin()
            .await
            .list_proxies(serin_proto::v1::ListProxiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        list.proxies
            .first()
            .is_some_and(|p| p.in_sync)
            .then_some(())
    })
    .await;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/python/client.py");
    let protos = root.join("../proto");
    let address = h.grpc.to_string();
    let token = h.token(serin_proto::auth::Role::Write).to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .arg(protos)
            .arg(address)
            .arg(token)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["outcome"], "APPLY_OUTCOME_CREATED");
    assert_eq!(seen["generation"], 1);
    let stale = seen["stale_apply"].as_str().unwrap();
    assert!(
        stale.starts_with("ABORTED: policy default/reviews is at generation 1, not 7"),
        "{stale}"
    );
    assert_eq!(seen["proxies"][0]["pod"], "productpage-v1-0");
    // The apply pushed a newer snapshot, which this proxy has not acked (in_sync may be false);
    // the version it acked before is still reported.
    assert_eq!(seen["proxies"][0]["acked"], first.version.as_str());

    // What Python stored, Rust reads back.
    proxy
        .until("the policy applied from Python", |s| {
            policy_names(s) == ["reviews"]
        })
        .await;
}
