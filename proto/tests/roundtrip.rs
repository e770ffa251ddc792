//! Round trips through the protobuf encoding: a full snapshot and a policy that uses every field
//! come back equal, and defaults stay the safe reading the .proto comments promise.

use prost::Message;
use prost_types::Timestamp;
use serin_proto::v1::{
    ClientOs, DefaultRoute, Endpoint, EndpointPort, MatchBlock, Mirror, PolicyMetadata, Protocol,
    Rule, Service, ServiceEndpoints, ServicePort, Snapshot, Stickiness, StringMatch,
    SubscribeResponse, TrafficPolicy, TrafficPolicySpec, UriMatch, VersionWeight, stickiness,
    string_match, subscribe_response, uri_match,
};

fn exact(value: &str) -> StringMatch {
    StringMatch {
        kind: Some(string_match::Kind::Exact(value.to_owned())),
        ignore_case: false,
    }
}

fn split(pairs: &[(&str, u32)]) -> Vec<VersionWeight> {
    pairs
        .iter()
        .map(|&(version, weight)| VersionWeight {
            version: version.to_owned(),
            weight,
        })
        .collect()
}

/// The DESIGN.md example policy, with every optional part set.
fn reviews_policy() -> TrafficPolicy {
    let block = MatchBlock {
        headers: [
            ("end-user".to_owned(), exact("jason")),
            (
                "x-debug".to_owned(),
                StringMatch {
                    kind: Some(string_match::Kind::Present(false)),
                    ignore_case: false,
                },
            ),
            (
                "x-team".to_owned(),
                StringMatch {
                    kind: Some(string_match::Kind::Regex("qa-[0-9]+".to_owned())),
                    ignore_case: true,
                },
            ),
        ]
        .into(),
        cookies: [("canary".to_owned(), exact("always"))].into(),
        uri: Some(UriMatch {
            kind: Some(uri_match::Kind::Prefix("/beta".to_owned())),
            ignore_case: false,
        }),
        query: [(
            "beta".to_owned(),
            StringMatch {
                kind: Some(string_match::Kind::Prefix("1".to_owned())),
                ignore_case: false,
            },
        )]
        .into(),
        method: "GET".to_owned(),
        os: vec![ClientOs::Ios as i32, ClientOs::Android as i32],
    };
    TrafficPolicy {
        metadata: Some(PolicyMetadata {
            name: "reviews".to_owned(),
            namespace: "default".to_owned(),
            generation: 7,
            labels: [("team".to_owned(), "books".to_owned())].into(),
            annotations: [("note".to_owned(), "spring sale".to_owned())].into(),
            create_time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            update_time: Some(Timestamp {
                seconds: 1_700_000_100,
                nanos: 500,
            }),
        }),
        spec: Some(TrafficPolicySpec {
            service: "reviews".to_owned(),
            rules: vec![Rule {
                name: "testers".to_owned(),
                r#match: vec![block, MatchBlock::default()],
                route: split(&[("v3", 100)]),
            }],
            default: Some(DefaultRoute {
                route: split(&[("v1", 80), ("v2", 20), ("v4", 0)]),
            }),
            mirror: Some(Mirror {
                version: "v2".to_owned(),
                percent: 10.5,
            }),
            stickiness: Some(Stickiness {
                key: Some(stickiness::Key::Cookie("uid".to_owned())),
            }),
        }),
    }
}

/// A snapshot with a dual-stack service, endpoints of two versions and a policy.
fn full_snapshot() -> SubscribeResponse {
    let endpoint = |ip: &str, pod: &str, version: &str, ready: bool| Endpoint {
        addresses: vec![
            ip.to_owned(),
            format!("fd00::{}", ip.rsplit('.').next().unwrap()),
        ],
        ports: vec![
            EndpointPort {
                name: "http".to_owned(),
                port: 9080,
            },
            EndpointPort {
                name: "grpc".to_owned(),
                port: 9090,
            },
        ],
        pod_name: pod.to_owned(),
        version: version.to_owned(),
        labels: [
            ("app".to_owned(), "reviews".to_owned()),
            ("version".to_owned(), version.to_owned()),
        ]
        .into(),
        ready,
        weight: 2,
        service_account: "reviews".to_owned(),
        node_name: "node-1".to_owned(),
        ..Default::default()
    };
    SubscribeResponse {
        version: "42".to_owned(),
        nonce: "n-42-1".to_owned(),
        payload: Some(subscribe_response::Payload::Snapshot(Snapshot {
            services: vec![Service {
                name: "reviews".to_owned(),
                namespace: "default".to_owned(),
                vips: vec!["10.96.0.12".to_owned(), "fd00:96::c".to_owned()],
                hostnames: vec![
                    "reviews".to_owned(),
                    "reviews.default".to_owned(),
                    "reviews.default.svc.cluster.local".to_owned(),
                ],
                ports: vec![
                    ServicePort {
                        port: 80,
                        name: "http".to_owned(),
                        protocol: Protocol::Http1 as i32,
                        target_port: 9080,
                    },
                    ServicePort {
                        port: 9090,
                        name: "grpc".to_owned(),
                        protocol: Protocol::Grpc as i32,
                        target_port: 0,
                    },
                    ServicePort {
                        port: 5432,
                        name: "db".to_owned(),
                        protocol: Protocol::Tcp as i32,
                        target_port: 5432,
                    },
                ],
                labels: [("app".to_owned(), "reviews".to_owned())].into(),
            }],
            endpoints: vec![ServiceEndpoints {
                service: "reviews".to_owned(),
                namespace: "default".to_owned(),
                endpoints: vec![
                    endpoint("10.244.0.7", "reviews-v1-a", "v1", true),
                    endpoint("10.244.0.8", "reviews-v2-a", "v2", true),
                    endpoint("10.244.0.9", "reviews-v3-a", "v3", false),
                ],
            }],
            policies: vec![reviews_policy()],
            ..Default::default()
        })),
    }
}

#[test]
fn full_snapshot_round_trips() {
    let original = full_snapshot();
    let bytes = original.encode_to_vec();
    let decoded = SubscribeResponse::decode(bytes.as_slice()).expect("snapshot decodes");
    assert_eq!(decoded, original);
    // Re-encoding is stable, so versions computed from encoded bytes are reproducible.
    assert_eq!(decoded.encode_to_vec().len(), bytes.len());
}

#[test]
fn policy_round_trips_with_every_matcher() {
    let original = reviews_policy();
    let decoded = TrafficPolicy::decode(original.encode_to_vec().as_slice()).expect("decodes");
    assert_eq!(decoded, original);

    let spec = decoded.spec.expect("spec");
    let block = &spec.rules[0].r#match[0];
    assert_eq!(
        block.headers["x-debug"].kind,
        Some(string_match::Kind::Present(false)),
        "present: false survives although false is the proto3 default of a plain bool"
    );
    assert_eq!(
        block
            .os
            .iter()
            .map(|&os| ClientOs::try_from(os).expect("known os"))
            .collect::<Vec<_>>(),
        [ClientOs::Ios, ClientOs::Android]
    );
    assert_eq!(spec.default.expect("default route").route[2].weight, 0);
}

#[test]
fn empty_messages_decode_to_safe_defaults() {
    let port = ServicePort::decode(&[][..]).expect("empty decodes");
    assert_eq!(
        port.protocol(),
        Protocol::Unspecified,
        "unset protocol means detect"
    );
    let matcher = StringMatch::decode(&[][..]).expect("empty decodes");
    assert_eq!(
        matcher.kind, None,
        "an unset matcher is distinguishable (and invalid)"
    );
    let response = SubscribeResponse::decode(&[][..]).expect("empty decodes");
    assert_eq!(response.payload, None);
}

#[test]
fn optional_scalars_keep_presence() {
    use serin_proto::v1::{ApplyPolicyRequest, ResponseCount};

    let create_only = ApplyPolicyRequest {
        policy: Some(reviews_policy()),
        if_generation: Some(0),
        dry_run: false,
    };
    let decoded = ApplyPolicyRequest::decode(create_only.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        decoded.if_generation,
        Some(0),
        "if_generation = 0 is not 'absent'"
    );

    let unconditional = ApplyPolicyRequest {
        if_generation: None,
        ..create_only
    };
    let decoded = ApplyPolicyRequest::decode(unconditional.encode_to_vec().as_slice()).unwrap();
    assert_eq!(decoded.if_generation, None);

    let grpc_ok = ResponseCount {
        response_code: 200,
        grpc_status: Some(0),
        count: 3,
    };
    let decoded = ResponseCount::decode(grpc_ok.encode_to_vec().as_slice()).unwrap();
    assert_eq!(
        decoded.grpc_status,
        Some(0),
        "gRPC OK differs from a non-gRPC request"
    );
}
