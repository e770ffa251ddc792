//! Policies through the Admin API: generations, preconditions, concurrency, rollback, validation.

use std::collections::BTreeSet;
use std::sync::Arc;

use serin_proto::v1;
use tonic::Code;

use crate::support::*;

#[tokio::test]
async fn apply_get_list_delete_with_generations() {
    let h = Harness::start().await;
    let mut admin = h.admin().await;

    let created = admin
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.outcome, v1::ApplyOutcome::Created as i32);
    assert_eq!(generation(created.policy.as_ref().unwrap()), 1);

    let same = admin
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.outcome, v1::ApplyOutcome::Unchanged as i32);
    assert_eq!(
        generation(same.policy.as_ref().unwrap()),
        1,
        "an identical apply stores nothing"
    );

    let updated = admin
        .apply_policy(apply_request(reviews(80, 20)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.outcome, v1::ApplyOutcome::Updated as i32);
    assert_eq!(generation(updated.policy.as_ref().unwrap()), 2);

    let got = admin
        .get_policy(v1::GetPolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            generation: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(generation(&got), 2);
    assert_eq!(
        got.spec.as_ref().unwrap().default.as_ref().unwrap().route[1].weight,
        20
    );
    let old = admin
        .get_policy(v1::GetPolicyRequest {
            namespace: "default".into(),
            name: "reviews".into(),
            generation: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(
        old.spec.as_ref().unwrap().default.as_ref().unwrap().route[1].weight,
        10,
        "past generations come from history"
    );

    admin
        .apply_policy(apply_request(simple("ratings", "v1")))
        .await
        .unwrap();
    let list = admin
        .list_policies(v1::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policies;
    let names: Vec<_> = list
        .iter()
        .map(|p| p.metadata.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["ratings", "reviews"], "sorted by (namespace, name)");
    let only = admin
        .list_policies(v1::ListPoliciesRequest {
            namespace: String::new(),
            service: "reviews".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(only.len(), 1);

    let deleted = admin
        .delete_policy(v1::DeletePolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            if_generation: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        deleted.deleted_generation, 3,
        "a delete takes a generation of its own"
    );
    let err = admin
        .get_policy(v1::GetPolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            generation: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("default/reviews"), "{err}");

    let again = admin
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, v1::ApplyOutcome::Created as i32);
    assert_eq!(
        generation(again.policy.as_ref().unwrap()),
        4,
        "numbers are never reused after a delete"
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
    let seen: Vec<(u64, i32)> = history.iter().map(|r| (r.generation, r.cause)).collect();
    let apply = v1::ChangeCause::Apply as i32;
    assert_eq!(
        seen,
        [
            (4, apply),
            (3, v1::ChangeCause::Delete as i32),
            (2, apply),
            (1, apply)
        ]
    );
    let limited = admin
        .policy_history(v1::PolicyHistoryRequest {
            namespace: String::new(),
            name: "reviews".into(),
            limit: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(limited.len(), 2);
}

#[tokio::test]
async fn if_generation_preconditions() {
    let h = Harness::start().await;
    let mut admin = h.admin().await;
    let req = |p, g| v1::ApplyPolicyRequest {
        policy: Some(p),
        if_generation: g,
        dry_run: false,
    };

    admin
        .apply_policy(req(reviews(90, 10), Some(0)))
        .await
        .expect("0 creates");
    let err = admin
        .apply_policy(req(reviews(80, 20), Some(0)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().contains("generation 1"),
        "names the current generation: {err}"
    );

    let err = admin
        .apply_policy(req(reviews(80, 20), Some(7)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("is at generation 1, not 7"), "{err}");

    let ok = admin
        .apply_policy(req(reviews(80, 20), Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(generation(ok.policy.as_ref().unwrap()), 2);

    let dry = admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(reviews(70, 30)),
            if_generation: None,
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        generation(dry.policy.as_ref().unwrap()),
        3,
        "a dry run says what would be stored"
    );
    let current = admin
        .get_policy(v1::GetPolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            generation: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        generation(current.policy.as_ref().unwrap()),
        2,
        "and stores nothing"
    );

    let err = admin
        .delete_policy(v1::DeletePolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            if_generation: Some(1),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err}");
}

/// Ten writers race read-modify-write cycles with if_generation: every attempt either lands or
/// is refused with ABORTED, and the history holds exactly the writes that landed.
#[tokio::test]
async fn concurrent_writers_race_with_if_generation() {
    let h = Arc::new(Harness::start().await);
    let mut admin = h.admin().await;
    admin
        .apply_policy(apply_request(reviews(100, 0)))
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for writer in 0..10u32 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut admin = h.admin().await;
            let mut aborted = 0;
            for _ in 0..100 {
                let current = admin
                    .get_policy(v1::GetPolicyRequest {
                        namespace: String::new(),
                        name: "reviews".into(),
                        generation: 0,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .policy
                    .unwrap();
                // Each writer's change is recognisable: its own weight for v2.
                let mut p = reviews(100, writer + 1);
                p.metadata
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("writer".into(), writer.to_string());
                let req = v1::ApplyPolicyRequest {
                    policy: Some(p),
                    if_generation: Some(generation(&current)),
                    dry_run: false,
                };
                match admin.apply_policy(req).await {
                    Ok(r) => {
                        return (
                            writer,
                            generation(r.into_inner().policy.as_ref().unwrap()),
                            aborted,
                        );
                    }
                    Err(e) if e.code() == Code::Aborted => aborted += 1,
                    Err(e) => panic!("writer {writer}: neither landed nor ABORTED: {e}"),
                }
            }
            panic!("writer {writer} never landed in 100 attempts");
        }));
    }
    let mut landed = Vec::new();
    let mut aborted_total = 0;
    for t in tasks {
        let (writer, generation, aborted) = t.await.unwrap();
        landed.push((writer, generation));
        aborted_total += aborted;
    }
    let generations: BTreeSet<u64> = landed.iter().map(|(_, g)| *g).collect();
    assert_eq!(
        generations,
        (2..=11).collect(),
        "each landed write got its own generation: {landed:?}"
    );
    assert!(
        aborted_total > 0,
        "ten writers from the same generation must collide"
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
    assert_eq!(
        history.len(),
        11,
        "the creation and exactly the ten writes that landed"
    );
    for (writer, g) in landed {
        let rev = history.iter().find(|r| r.generation == g).unwrap();
        let p = rev.policy.as_ref().unwrap();
        assert_eq!(
            p.metadata.as_ref().unwrap().labels["writer"],
            writer.to_string(),
            "generation {g} holds writer {writer}'s change"
        );
        assert_eq!(
            p.spec.as_ref().unwrap().default.as_ref().unwrap().route[1].weight,
            writer + 1
        );
    }
}

#[tokio::test]
async fn rollback_restores_the_exact_previous_spec() {
    let h = Harness::start().await;
    let mut admin = h.admin().await;
    let mut first = reviews(90, 10);
    first.spec.as_mut().unwrap().mirror = Some(v1::Mirror {
        version: "v2".into(),
        percent: 12.5,
    });
    first
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .insert("owner".into(), "team-a".into());
    admin.apply_policy(apply_request(first)).await.unwrap();
    admin
        .apply_policy(apply_request(reviews(50, 50)))
        .await
        .unwrap();
    let spec_of = |p: &v1::TrafficPolicy| p.spec.clone().unwrap();
    let get = |g| v1::GetPolicyRequest {
        namespace: String::new(),
        name: "reviews".into(),
        generation: g,
    };

    let rolled = admin
        .rollback(v1::RollbackRequest {
            namespace: String::new(),
            service: "reviews".into(),
            to_generation: None,
            if_generation: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rolled.restored_generation, 1);
    let now = rolled.policy.unwrap();
    assert_eq!(generation(&now), 3, "a rollback is a new generation");
    let gen1 = admin
        .get_policy(get(1))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(spec_of(&now), spec_of(&gen1), "exactly the previous spec");
    assert_eq!(
        now.metadata.as_ref().unwrap().annotations["owner"],
        "team-a"
    );

    let to2 = admin
        .rollback(v1::RollbackRequest {
            namespace: String::new(),
            service: "reviews".into(),
            to_generation: Some(2),
            if_generation: None,
        })
        .await
        .unwrap()
        .into_inner();
    let gen2 = admin
        .get_policy(get(2))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(spec_of(to2.policy.as_ref().unwrap()), spec_of(&gen2));
    assert_eq!(generation(to2.policy.as_ref().unwrap()), 4);

    // A deleted policy comes back with the content it had before the deletion.
    admin
        .delete_policy(v1::DeletePolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            if_generation: None,
        })
        .await
        .unwrap();
    let err = admin
        .rollback(v1::RollbackRequest {
            namespace: String::new(),
            service: "reviews".into(),
            to_generation: Some(5),
            if_generation: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "naming a deletion record: {err}"
    );
    let restored = admin
        .rollback(v1::RollbackRequest {
            namespace: String::new(),
            service: "reviews".into(),
            to_generation: None,
            if_generation: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(restored.restored_generation, 4);
    assert_eq!(generation(restored.policy.as_ref().unwrap()), 6);
    assert_eq!(spec_of(restored.policy.as_ref().unwrap()), spec_of(&gen2));
    let history = admin
        .policy_history(v1::PolicyHistoryRequest {
            namespace: String::new(),
            name: "reviews".into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .revisions;
    assert_eq!(
        (history[0].cause, history[0].restored_generation),
        (v1::ChangeCause::Rollback as i32, 4)
    );

    let err = admin
        .rollback(v1::RollbackRequest {
            namespace: String::new(),
            service: "nothing".into(),
            to_generation: None,
            if_generation: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
}

#[tokio::test]
async fn validation_error_names_the_field_and_the_previous_policy_stays_served() {
    let h = Harness::start().await;
    let mut admin = h.admin().await;
    admin
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap();
    let mut proxy = Proxy::connect(&h, "productpage-v1-0").await;
    let (before, _) = proxy
        .until("the reviews policy", |s| policy_names(s) == ["reviews"])
        .await;

    let mut bad = reviews(90, 10);
    let rule = &mut bad.spec.as_mut().unwrap().rules[0];
    rule.r#match[0].headers.insert(
        "end-user".into(),
        v1::StringMatch {
            kind: Some(v1::string_match::Kind::Regex("(unclosed".into())),
            ignore_case: false,
        },
    );
    bad.spec.as_mut().unwrap().default.as_mut().unwrap().route[1].weight = 0;
    bad.spec.as_mut().unwrap().default.as_mut().unwrap().route[0].weight = 0;
    let err = admin.apply_policy(apply_request(bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("spec.rules[0].match[0].headers"),
        "names the field: {err}"
    );
    assert!(err.message().contains("regex"), "and the reason: {err}");
    assert!(
        err.message().contains("spec.default.route"),
        "every problem at once: {err}"
    );

    let current = admin
        .get_policy(v1::GetPolicyRequest {
            namespace: String::new(),
            name: "reviews".into(),
            generation: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap();
    assert_eq!(generation(&current), 1, "the previous policy is kept");
    // A later change pushes a snapshot that still carries generation 1 of reviews.
    admin
        .apply_policy(apply_request(simple("ratings", "v1")))
        .await
        .unwrap();
    let (after, _) = proxy
        .until("ratings", |s| {
            policy_names(s).contains(&"ratings".to_owned())
        })
        .await;
    let served = snapshot(&after)
        .policies
        .iter()
        .find(|p| p.metadata.as_ref().unwrap().name == "reviews")
        .unwrap();
    assert_eq!(served, snapshot(&before).policies.first().unwrap());

    let mut uri = reviews(90, 10);
    uri.spec.as_mut().unwrap().rules[0].r#match[0].uri = Some(v1::UriMatch {
        kind: Some(v1::uri_match::Kind::Prefix("/b".into())),
        ignore_case: true,
    });
    let err = admin.apply_policy(apply_request(uri)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("spec.rules[0].match[0].uri.ignoreCase: "),
        "{err}"
    );

    let err = admin
        .apply_policy(v1::ApplyPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "policy: is required")
    );
}

#[tokio::test]
async fn one_policy_per_service() {
    let h = Harness::start().await;
    let mut admin = h.admin().await;
    admin
        .apply_policy(apply_request(reviews(90, 10)))
        .await
        .unwrap();
    let mut other = reviews(90, 10);
    other.metadata.as_mut().unwrap().name = "reviews-2".into();
    let err = admin.apply_policy(apply_request(other)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(err.message().contains("default/reviews"), "{err}");
}
