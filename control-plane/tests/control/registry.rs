//! The workload registry: services and VIPs, leases, and the policy calls that depend on
//! endpoints (warnings, SetWeights, Promote, Explain).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serin_proto::v1;
use tonic::Code;

use crate::support::*;

async fn register(
    h: &Harness,
    w: v1::Workload,
    ttl: Option<Duration>,
) -> v1::RegisterWorkloadResponse {
    let ttl = ttl.map(|d| prost_types::Duration::try_from(d).unwrap());
    h.admin()
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(w),
            ttl,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn services(h: &Harness) -> Vec<v1::ServiceStatus> {
    h.admin()
        .await
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .services
}

#[tokio::test]
async fn registration_creates_services_with_stable_vips_and_counts_versions() {
    let h = Harness::start().await;
    register(
        &h,
        workload("reviews-v1-0", "reviews", "v1", "10.244.0.11"),
        None,
    )
    .await;
    register(
        &h,
        workload("reviews-v1-1", "reviews", "v1", "10.244.0.12"),
        None,
    )
    .await;
    register(
        &h,
        workload("reviews-v2-0", "reviews", "v2", "10.244.0.13"),
        None,
    )
    .await;
    register(
        &h,
        workload("ratings-v1-0", "ratings", "v1", "10.244.0.14"),
        None,
    )
    .await;
    h.admin()
        .await
        .apply_policy(apply_request(reviews(75, 25)))
        .await
        .unwrap();

    let list = services(&h).await;
    let names: Vec<_> = list
        .iter()
        .map(|s| s.service.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["ratings", "reviews"]);
    let reviews_status = &list[1];
    let svc = reviews_status.service.as_ref().unwrap();
    let vip: Ipv4Addr = svc.vips[0].parse().unwrap();
    assert_eq!(vip.octets()[..2], [10, 96], "VIPs come from 10.96.0.0/16");
    assert_ne!(
        svc.vips,
        list[0].service.as_ref().unwrap().vips,
        "one VIP per service"
    );
    assert_eq!(
        svc.hostnames,
        [
            "reviews",
            "reviews.default",
            "reviews.default.svc.cluster.local"
        ]
    );
    assert_eq!(svc.ports[0].port, 9080);
    let versions: Vec<(&str, u32, u32, f64)> = reviews_status
        .versions
        .iter()
        .map(|v| {
            (
                v.version.as_str(),
                v.ready_endpoints,
                v.total_endpoints,
                v.default_percent,
            )
        })
        .collect();
    assert_eq!(versions, [("v1", 2, 2, 75.0), ("v2", 1, 1, 25.0)]);
    assert_eq!(
        (
            reviews_status.policy_name.as_str(),
            reviews_status.policy_generation
        ),
        ("reviews", 1)
    );

    // A workload that registers again keeps its service's VIP.
    register(
        &h,
        workload("reviews-v1-0", "reviews", "v1", "10.244.0.21"),
        None,
    )
    .await;
    let again = services(&h).await;
    assert_eq!(again[1].service.as_ref().unwrap().vips, svc.vips);

    let err = h
        .admin()
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(workload("bad", "reviews", "v1", "not-an-ip")),
            ttl: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("workload.addresses[0]: "),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_lease_removes_the_workload_and_pushes_a_snapshot() {
    let h = Harness::start().await;
    let mut proxy = Proxy::connect(&h, "watcher").await;
    proxy.next().await;
    let ttl = Duration::from_secs(1);
    let kept = register(
        &h,
        workload("kept-0", "reviews", "v1", "10.244.0.31"),
        Some(ttl),
    )
    .await;
    let registered_at = Instant::now();
    let lease = register(
        &h,
        workload("lapsing-0", "reviews", "v2", "10.244.0.32"),
        Some(ttl),
    )
    .await;
    let granted = Duration::try_from(lease.ttl.unwrap()).unwrap();
    assert_eq!(granted, ttl);
    proxy
        .until("both endpoints", |s| {
            s.endpoints.first().is_some_and(|e| e.endpoints.len() == 2)
        })
        .await;

    // Keep renewing one lease (five times per TTL); let the other lapse.
    let mut admin = h.admin().await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tick.tick() => {
                    admin.renew_lease(v1::RenewLeaseRequest { lease_id: kept.lease_id.clone(), ttl: None, ..Default::default() }).await.unwrap();
                }
            }
        }
    });
    let (msg, _) = proxy
        .until("the lapsed endpoint removed", |s| {
            s.endpoints.first().is_some_and(|e| e.endpoints.len() == 1)
        })
        .await;
    let removed_after = registered_at.elapsed();
    assert!(
        removed_after >= ttl,
        "removed {removed_after:?} after registration, before its ttl {ttl:?} ran out"
    );
    assert!(
        removed_after < ttl + Duration::from_secs(2),
        "removed only {removed_after:?} after registration (ttl {ttl:?})"
    );
    assert_eq!(snapshot(&msg).endpoints[0].endpoints[0].pod_name, "kept-0");
    let _ = stop.send(());
    keeper.await.unwrap();

    let err = h
        .admin()
        .await
        .renew_lease(v1::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::NotFound,
        "an expired lease cannot be renewed: {err}"
    );
    let services = services(&h).await;
    assert_eq!(
        services[0]
            .versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["v1"]
    );
    assert_eq!(
        services[0].service.as_ref().unwrap().name,
        "reviews",
        "the service and its VIP stay"
    );
}

#[tokio::test]
async fn deregister_removes_at_once_and_is_idempotent() {
    let h = Harness::start().await;
    let lease = register(&h, workload("r-0", "reviews", "v1", "10.244.0.41"), None).await;
    let mut admin = h.admin().await;
    let first = admin
        .deregister_workload(v1::DeregisterWorkloadRequest {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .unwrap();
    assert!(first.into_inner().removed);
    let second = admin
        .deregister_workload(v1::DeregisterWorkloadRequest {
            lease_id: lease.lease_id,
        })
        .await
        .unwrap();
    assert!(!second.into_inner().removed);
    assert!(services(&h).await[0].versions.is_empty());
}

#[tokio::test]
async fn set_weights_promote_and_warnings_follow_the_registry() {
    let h = Harness::start().await;
    register(
        &h,
        workload("reviews-v1-0", "reviews", "v1", "10.244.0.51"),
        None,
    )
    .await;
    let mut admin = h.admin().await;

    // SetWeights creates a policy named after the service; v2 has no pods yet: a warning.
    let set = admin
        .set_weights(v1::SetWeightsRequest {
            namespace: String::new(),
            service: "reviews".into(),
            weights: vec![
                v1::VersionWeight {
                    version: "v1".into(),
                    weight: 90,
                },
                v1::VersionWeight {
                    version: "v2".into(),
                    weight: 10,
                },
            ],
            if_generation: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        set.policy.as_ref().unwrap().metadata.as_ref().unwrap().name,
        "reviews"
    );
    assert_eq!(generation(set.policy.as_ref().unwrap()), 1);
    assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
    assert_eq!(set.warnings[0].field, "spec.default.route[1].version");
    assert!(set.warnings[0].message.contains("v2"), "{:?}", set.warnings);

    // Promote refuses a version without endpoints unless forced.
    let err = admin
        .promote(v1::PromoteRequest {
            namespace: String::new(),
            service: "reviews".into(),
            version: "v2".into(),
            if_generation: None,
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    register(
        &h,
        workload("reviews-v2-0", "reviews", "v2", "10.244.0.52"),
        None,
    )
    .await;
    let mut with_rules = reviews(90, 10);
    with_rules.spec.as_mut().unwrap().mirror = Some(v1::Mirror {
        version: "v2".into(),
        percent: 5.0,
    });
    with_rules.spec.as_mut().unwrap().stickiness = Some(v1::Stickiness {
        key: Some(v1::stickiness::Key::Cookie("uid".into())),
    });
    admin.apply_policy(apply_request(with_rules)).await.unwrap();
    let promoted = admin
        .promote(v1::PromoteRequest {
            namespace: String::new(),
            service: "reviews".into(),
            version: "v2".into(),
            if_generation: Some(2),
            force: false,
        })
        .await
        .unwrap()
        .into_inner();
    let spec = promoted.policy.as_ref().unwrap().spec.clone().unwrap();
    assert!(
        spec.rules.is_empty() && spec.mirror.is_none(),
        "rules and mirror removed"
    );
    assert!(spec.stickiness.is_some(), "stickiness kept");
    assert_eq!(
        spec.default.unwrap().route,
        [v1::VersionWeight {
            version: "v2".into(),
            weight: 100
        }]
    );
    let history = admin
        .policy_history(v1::PolicyHistoryRequest {
            namespace: String::new(),
            name: "reviews".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    let causes: Vec<i32> = history.iter().map(|r| r.cause).collect();
    assert_eq!(
        causes,
        [
            v1::ChangeCause::Promote as i32,
            v1::ChangeCause::Apply as i32,
            v1::ChangeCause::SetWeights as i32
        ]
    );
}

#[tokio::test]
async fn explain_says_which_rule_and_version_and_why() {
    let h = Harness::start().await;
    for (pod, version, ip) in [
        ("r1", "v1", "10.244.0.61"),
        ("r2", "v2", "10.244.0.62"),
        ("r3", "v3", "10.244.0.63"),
    ] {
        register(&h, workload(pod, "reviews", version, ip), None).await;
    }
    let mut p = policy(
        "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules:
    - name: ios-beta
      match:
        - uri: {prefix: /beta}
          os: [ios]
    - name: testers
      match:
        - cookies: {canary: {exact: always}}
        - headers: {end-user: {exact: jason}}
      route: [{version: v3, weight: 100}]
  default:
    route: [{version: v1, weight: 80}, {version: v2, weight: 20}]
  stickiness: {cookie: uid}
",
    );
    p.spec.as_mut().unwrap().rules[0].route = vec![v1::VersionWeight {
        version: "v2".into(),
        weight: 100,
    }];
    h.admin()
        .await
        .apply_policy(apply_request(p))
        .await
        .unwrap();
    let explain = |headers: &[(&str, &str)], cookies: &[(&str, &str)], path: &str, ua: &str| {
        v1::ExplainRequest {
            namespace: String::new(),
            service: "reviews".into(),
            request: Some(v1::RequestAttributes {
                method: String::new(),
                path: path.into(),
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                cookies: cookies
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                query: BTreeMap::new().into_iter().collect(),
                user_agent: ua.into(),
            }),
        }
    };
    let mut admin = h.admin().await;
    let jason = admin
        .explain(explain(&[("End-User", "jason")], &[], "/", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            jason.rule_index,
            jason.rule_name.as_str(),
            jason.match_block_index
        ),
        (Some(1), "testers", Some(1))
    );
    assert_eq!(jason.version, "v3");
    assert_eq!(jason.outcomes.len(), 1);
    assert_eq!(
        (jason.outcomes[0].percent, jason.outcomes[0].ready_endpoints),
        (100.0, 1)
    );
    assert_eq!(jason.trace.len(), 2);
    assert!(!jason.trace[0].matched);
    assert!(
        jason.trace[0]
            .reason
            .contains("path \"/\" is not prefix \"/beta\""),
        "{:?}",
        jason.trace[0]
    );
    assert!(jason.trace[1].matched);
    assert!(
        jason.trace[1]
            .reason
            .contains("header end-user exact \"jason\""),
        "{:?}",
        jason.trace[1]
    );
    assert!(
        jason.summary.contains("testers") && jason.summary.ends_with("-> v3"),
        "{}",
        jason.summary
    );
    assert_eq!(
        jason.client_os,
        v1::ClientOs::Other as i32,
        "no user agent: other"
    );

    let bob = admin
        .explain(explain(
            &[("end-user", "bob")],
            &[("canary", "never")],
            "/",
            "",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.rule_index, None, "the default route takes it");
    assert_eq!(bob.version, "", "random between v1 and v2");
    let shares: Vec<(&str, f64)> = bob
        .outcomes
        .iter()
        .map(|s| (s.version.as_str(), s.percent))
        .collect();
    assert_eq!(shares, [("v1", 80.0), ("v2", 20.0)]);
    assert_eq!(
        bob.trace[1].reason,
        "block 0: cookie canary \"never\" is not exact \"always\"; block 1: header end-user \"bob\" is not exact \"jason\""
    );

    let sticky = admin
        .explain(explain(&[], &[("uid", "user-42")], "/", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(sticky.sticky);
    assert!(sticky.sticky_bucket.is_some_and(|b| b < 10_000));
    assert!(
        ["v1", "v2"].contains(&sticky.version.as_str()),
        "{sticky:?}"
    );

    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    let ios = admin
        .explain(explain(&[], &[], "/beta/x", iphone))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (ios.rule_name.as_str(), ios.version.as_str()),
        ("ios-beta", "v2")
    );
    assert_eq!(ios.client_os, v1::ClientOs::Ios as i32);

    let err = admin
        .explain(v1::ExplainRequest {
            namespace: String::new(),
            service: "nothing".into(),
            request: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn a_starting_registration_takes_no_traffic_until_marked_ready() {
    let h = Harness::start().await;
    let versions = |services: Vec<v1::ServiceStatus>| -> Vec<(u32, u32)> {
        services
            .iter()
            .filter(|s| s.service.as_ref().is_some_and(|s| s.name == "reviews"))
            .flat_map(|s| &s.versions)
            .map(|v| (v.ready_endpoints, v.total_endpoints))
            .collect()
    };
    let started = h
        .admin()
        .await
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(workload("reviews-v1-0", "reviews", "v1", "10.244.0.11")),
            ttl: None,
            starting: true,
        })
        .await
        .unwrap()
        .into_inner();
    // Registered (its token works for a certificate) but not ready.
    assert!(!started.bootstrap_token.is_empty());
    assert_eq!(versions(services(&h).await), vec![(0, 1)]);
    // A plain renewal keeps it as it is.
    let renew = |ready: bool| v1::RenewLeaseRequest {
        lease_id: started.lease_id.clone(),
        ttl: None,
        ready,
    };
    h.admin().await.renew_lease(renew(false)).await.unwrap();
    assert_eq!(versions(services(&h).await), vec![(0, 1)]);
    // Marked ready: it takes traffic; a later plain renewal does not take it back.
    h.admin().await.renew_lease(renew(true)).await.unwrap();
    assert_eq!(versions(services(&h).await), vec![(1, 1)]);
    h.admin().await.renew_lease(renew(false)).await.unwrap();
    assert_eq!(versions(services(&h).await), vec![(1, 1)]);
}
