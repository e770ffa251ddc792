//! Discovery: snapshots, pushes to every subscriber, ACK/NACK state, slow subscribers, debounce.

use std::time::Duration;

use serin_proto::v1;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn apply_pushes_to_every_subscriber_and_acks_and_nacks_are_recorded() {
    let h = Harness::start().await;
    let mut a = Proxy::connect(&h, "productpage-a").await;
    let mut b = Proxy::connect(&h, "productpage-b").await;
    let first_a = a.next().await;
    let first_b = b.next().await;
    assert!(snapshot(&first_a).policies.is_empty());
    assert_eq!(
        first_a.version, first_b.version,
        "same content, same version"
    );
    assert_ne!(first_a.nonce, "", "every push carries a nonce");

    h.admin()
        .await
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap();
    let (push_a, _) = a.until("reviews", |s| policy_names(s) == ["reviews"]).await;
    let (push_b, _) = b.until("reviews", |s| policy_names(s) == ["reviews"]).await;
    assert_eq!(push_a.version, push_b.version);
    assert_ne!(push_a.version, first_a.version);
    assert_ne!(push_a.nonce, first_a.nonce);

    a.ack(&push_a).await;
    let nack = v1::SnapshotNack {
        version: push_b.version.clone(),
        nonce: push_b.nonce.clone(),
        errors: vec![v1::ResourceError {
            kind: v1::ResourceKind::TrafficPolicy as i32,
            namespace: "default".into(),
            name: "reviews".into(),
            field: "spec.rules[0].match[0].headers.end-user".into(),
            reason: "test rejection".into(),
        }],
    };
    b.tx.send(v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Nack(nack)),
    })
    .await
    .unwrap();

    let version = push_a.version.clone();
    let listed = eventually(
        "the ACK and the NACK in ListProxies",
        Duration::from_secs(5),
        || async {
            let list = h.proxies().await;
            let a = list
                .iter()
                .find(|p| p.proxy.as_ref().unwrap().pod_name == "productpage-a")?;
            let b = list
                .iter()
                .find(|p| p.proxy.as_ref().unwrap().pod_name == "productpage-b")?;
            (a.in_sync && !b.nack_errors.is_empty()).then(|| (a.clone(), b.clone()))
        },
    )
    .await;
    let (sa, sb) = listed;
    assert_eq!(
        (sa.acked_version.as_str(), sa.sent_version.as_str()),
        (version.as_str(), version.as_str())
    );
    assert!(sa.connected_since.is_some() && sa.acked_at.is_some());
    assert_eq!(sa.capabilities, ["snapshot.full"]);
    assert!(
        sa.peer_address.starts_with("127.0.0.1:"),
        "{}",
        sa.peer_address
    );
    assert!(!sb.in_sync, "a NACK of the latest push is not in sync");
    assert_eq!(sb.nacked_version, version);
    assert_eq!(sb.nack_errors[0].reason, "test rejection");
    assert_eq!(sb.acked_version, "", "b never acked");

    // An ACK of a superseded push is ignored.
    h.admin()
        .await
        .apply_policy(apply_request(simple("ratings", "v1")))
        .await
        .unwrap();
    let (newer, _) = a.until("ratings", |s| s.policies.len() == 2).await;
    a.ack(&push_a).await;
    a.ack(&newer).await;
    eventually(
        "a in sync with the newer push",
        Duration::from_secs(5),
        || async {
            let list = h.proxies().await;
            let a = list
                .into_iter()
                .find(|p| p.proxy.as_ref().unwrap().pod_name == "productpage-a")?;
            (a.in_sync && a.acked_version == newer.version).then_some(())
        },
    )
    .await;

    // A proxy that goes away leaves the list.
    drop(b);
    eventually(
        "b gone from ListProxies",
        Duration::from_secs(5),
        || async { (h.proxies().await.len() == 1).then_some(()) },
    )
    .await;
    let metrics = reqwest_metrics(&h).await;
    assert!(metrics.contains("serin_control_acks_total 2"), "{metrics}");
    assert!(metrics.contains("serin_control_nacks_total 1"), "{metrics}");
    assert!(
        metrics.contains("serin_control_proxies_connected 1"),
        "{metrics}"
    );
}

/// GET /metrics over a plain TCP connection (no HTTP client dependency for one request).
pub async fn reqwest_metrics(h: &Harness) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(h.http).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn hello_must_come_first() {
    let h = Harness::start().await;
    let mut client = h.discovery().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Ack(v1::SnapshotAck::default())),
    })
    .await
    .unwrap();
    let err = client.subscribe(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hello"), "{err}");

    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut bad = hello("p");
    if let Some(v1::subscribe_request::Kind::Hello(h)) = &mut bad.kind {
        h.proxy.as_mut().unwrap().pod_ips.clear();
    }
    tx.send(bad).await.unwrap();
    let err = client.subscribe(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hello.proxy.pod_ips"), "{err}");

    // A second hello ends the stream with INVALID_ARGUMENT.
    let mut proxy = Proxy::connect(&h, "twice").await;
    proxy.next().await;
    proxy.tx.send(hello("twice")).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), proxy.rx.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
}

/// A subscriber that never reads must not hold back the others: pushes are not queued per proxy,
/// each stream takes the latest snapshot when it can send.
#[tokio::test]
async fn a_slow_subscriber_does_not_delay_the_others() {
    let h = Harness::start().await;
    let mut admin = h.admin().await;
    // Make snapshots big (well over HTTP/2's flow-control windows) so the slow stream blocks.
    for i in 0..40 {
        let mut w = workload(&format!("big-{i}"), "big", "v1", &format!("10.244.1.{i}"));
        w.labels.insert("padding".into(), "x".repeat(20_000));
        admin
            .register_workload(v1::RegisterWorkloadRequest {
                workload: Some(w),
                ttl: None,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The slow proxy subscribes and never reads a single message.
    let mut slow_client = h.discovery().await;
    let (slow_tx, slow_rx) = tokio::sync::mpsc::channel(4);
    slow_tx.send(hello("slow")).await.unwrap();
    let _slow = slow_client
        .subscribe(ReceiverStream::new(slow_rx))
        .await
        .unwrap();

    let mut fast = Proxy::connect(&h, "fast").await;
    for round in 1..=10u32 {
        admin
            .apply_policy(apply_request(reviews(100 - round, round)))
            .await
            .unwrap();
        let start = std::time::Instant::now();
        fast.until(&format!("round {round}"), |s| {
            s.policies.first().is_some_and(|p| {
                p.spec.as_ref().unwrap().default.as_ref().unwrap().route[1].weight == round
            })
        })
        .await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "round {round} took {:?}",
            start.elapsed()
        );
    }
    let list = h.proxies().await;
    let slow = list
        .iter()
        .find(|p| p.proxy.as_ref().unwrap().pod_name == "slow")
        .unwrap();
    assert!(!slow.in_sync, "the slow proxy never acked");
}

#[tokio::test]
async fn a_burst_of_applies_is_coalesced_into_few_pushes() {
    let h = Harness::start_with(|c| c.debounce = Duration::from_millis(500)).await;
    let mut proxy = Proxy::connect(&h, "watcher").await;
    proxy.next().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut admin = h.admin().await;
        tasks.push(tokio::spawn(async move {
            admin
                .apply_policy(apply_request(simple(&format!("svc-{i}"), "v1")))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, pushes) = proxy
        .until("all 20 policies", |s| s.policies.len() == 20)
        .await;
    assert!(pushes <= 5, "20 applies made {pushes} pushes");
}

#[tokio::test]
async fn streams_end_cleanly_on_shutdown() {
    let mut h = Harness::start().await;
    let mut proxy = Proxy::connect(&h, "p").await;
    proxy.next().await;
    h.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), proxy.rx.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
}

/// A proxy whose stream broke resubscribes: the new stream takes over its entry at once, and the
/// old stream going away later does not remove it (FAULTS.md 20, the control plane's side).
#[tokio::test]
async fn a_resubscribing_proxy_keeps_its_entry_when_the_old_stream_ends() {
    let h = Harness::start().await;
    let mut old = Proxy::connect(&h, "reviews-v1-0").await;
    let first = old.next().await;
    old.ack(&first).await;
    let mut new = Proxy::connect(&h, "reviews-v1-0").await;
    let again = new.next().await;
    assert_eq!(
        again.version, first.version,
        "a full snapshot of the same content at once"
    );
    drop(old);
    new.ack(&again).await;
    let listed = eventually("the new stream in sync", Duration::from_secs(5), || async {
        let list = h.proxies().await;
        (list.len() == 1 && list[0].in_sync).then_some(list)
    })
    .await;
    assert_eq!(listed[0].proxy.as_ref().unwrap().pod_name, "reviews-v1-0");
}

#[tokio::test]
async fn watch_topology_streams_the_registry_nodes() {
    use tokio_stream::StreamExt as _;
    let h = Harness::start().await;
    let mut admin = h.admin().await;
    for (pod, version, ip) in [
        ("r1", "v1", "10.244.0.71"),
        ("r2", "v1", "10.244.0.72"),
        ("r3", "v2", "10.244.0.73"),
    ] {
        admin
            .register_workload(v1::RegisterWorkloadRequest {
                workload: Some(workload(pod, "reviews", version, ip)),
                ttl: None,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut proxy = Proxy::connect(&h, "p").await;
    proxy.next().await;
    let request = v1::WatchTopologyRequest {
        namespace: String::new(),
        window: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        interval: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
    };
    let mut updates = admin.watch_topology(request).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let nodes: Vec<(&str, u32)> = first
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.ready_endpoints))
        .collect();
    assert_eq!(
        nodes,
        [("default/reviews/v1", 2), ("default/reviews/v2", 1)]
    );
    assert_eq!(
        first.window.unwrap().seconds,
        600,
        "clamped to what the control plane keeps"
    );
    assert!(first.edges.is_empty(), "no telemetry was reported");
    // Updates keep coming at the interval.
    let second = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(second.time.unwrap().seconds >= first.time.unwrap().seconds);
}

#[tokio::test]
async fn one_apply_reaches_a_hundred_subscribers() {
    let h = Harness::start().await;
    let mut proxies = Vec::new();
    for i in 0..100 {
        let mut p = Proxy::connect(&h, &format!("pod-{i}")).await;
        p.next().await;
        proxies.push(p);
    }
    let start = std::time::Instant::now();
    h.admin()
        .await
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap();
    let mut version = None;
    for p in &mut proxies {
        let (msg, _) = p.until("reviews", |s| policy_names(s) == ["reviews"]).await;
        p.ack(&msg).await;
        assert_eq!(
            *version.get_or_insert_with(|| msg.version.clone()),
            msg.version,
            "one version for all"
        );
    }
    tracing::info!(elapsed = ?start.elapsed(), "100 subscribers got the push");
    eventually("all 100 in sync", Duration::from_secs(10), || async {
        let list = h.proxies().await;
        (list.len() == 100 && list.iter().all(|p| p.in_sync)).then_some(())
    })
    .await;
}

/// After a NACK the control plane does not push the rejected version again (no retry loop on a
/// bad version, FAULTS.md 19): the next push the proxy sees is the next change.
#[tokio::test]
async fn a_nacked_version_is_not_pushed_again() {
    let h = Harness::start().await;
    let mut proxy = Proxy::connect(&h, "p").await;
    proxy.next().await;
    h.admin()
        .await
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap();
    let (pushed, _) = proxy
        .until("reviews", |s| policy_names(s) == ["reviews"])
        .await;
    let nack = v1::SnapshotNack {
        version: pushed.version.clone(),
        nonce: pushed.nonce.clone(),
        errors: vec![v1::ResourceError {
            kind: v1::ResourceKind::TrafficPolicy as i32,
            namespace: "default".into(),
            name: "reviews".into(),
            field: String::new(),
            reason: "unsupported".into(),
        }],
    };
    proxy
        .tx
        .send(v1::SubscribeRequest {
            kind: Some(v1::subscribe_request::Kind::Nack(nack)),
        })
        .await
        .unwrap();
    eventually("the NACK recorded", Duration::from_secs(5), || async {
        let list = h.proxies().await;
        (list[0].nacked_version == pushed.version).then_some(())
    })
    .await;
    h.admin()
        .await
        .apply_policy(apply_request(simple("ratings", "v1")))
        .await
        .unwrap();
    let next = proxy.next().await;
    assert_ne!(
        next.version, pushed.version,
        "the rejected version was not resent"
    );
    assert_eq!(policy_names(snapshot(&next)), ["ratings", "reviews"]);
    let list = h.proxies().await;
    assert_eq!(
        list[0].nacked_version, pushed.version,
        "the NACK stays visible after later pushes"
    );
    assert!(!list[0].in_sync);
}
