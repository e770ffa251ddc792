//! Every verb through the real binaries, and how failures read.

use crate::support::*;

#[test]
fn apply_multi_document_and_get_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    let file = dir.path().join("policies.yaml");
    std::fs::write(&file, TWO_POLICIES).unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        cp.ok(&["apply", "-f", file]),
        "policy/reviews created (generation 1)\npolicy/ratings created (generation 1)\n"
    );
    assert_eq!(
        cp.ok(&["apply", "-f", file]),
        "policy/reviews unchanged (generation 1)\npolicy/ratings unchanged (generation 1)\n"
    );
    let changed = TWO_POLICIES.replace(
        "weight: 80}, {version: v2, weight: 20",
        "weight: 70}, {version: v2, weight: 30",
    );
    let out = cp.ctl_stdin(&["apply", "-f", "-"], &changed);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "policy/reviews configured (generation 2)\npolicy/ratings unchanged (generation 1)\n"
    );

    let table = cp.ok(&["get", "policies"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("NAMESPACE  NAME     SERVICE  GENERATION  DEFAULT"),
        "{table}"
    );
    assert!(
        lines[2].contains("reviews") && lines[2].contains("v1:70 v2:30"),
        "{table}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&cp.ok(&["get", "policies", "-o", "json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["metadata"]["generation"], 2);
    assert_eq!(
        json[1]["spec"]["rules"][0]["match"][0]["headers"]["end-user"]["exact"],
        "jason"
    );

    // YAML output is what apply takes: applying it back changes nothing.
    let yaml = cp.ok(&["get", "policies", "reviews", "-o", "yaml"]);
    assert!(
        yaml.starts_with("apiVersion: serin.io/v1\nkind: TrafficPolicy\n"),
        "{yaml}"
    );
    let out = cp.ctl_stdin(&["apply", "-f", "-"], &yaml);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "policy/reviews unchanged (generation 2)\n"
    );
    let all = cp.ok(&["get", "policies", "-o", "yaml"]);
    assert_eq!(all.matches("---\n").count(), 2, "{all}");

    assert_eq!(cp.ok(&["get", "proxies"]), "no proxies connected\n");
    assert_eq!(cp.ok(&["get", "services"]), "no services registered\n");
    assert_eq!(
        cp.ok(&["-n", "other", "get", "policies"]),
        "no policies in namespace other\n"
    );
}

#[test]
fn gray_release_verbs_from_canary_to_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    register(
        &cp,
        &[
            ("reviews-v1-0", "reviews", "v1", "10.244.0.11"),
            ("reviews-v2-0", "reviews", "v2", "10.244.0.12"),
            ("reviews-v3-0", "reviews", "v3", "10.244.0.13"),
        ],
    );
    // No policy yet and three versions: canary cannot tell which one is stable.
    let err = one_error_line(&cp.ctl(&["canary", "reviews", "v2", "--weight", "10"]));
    assert!(err.contains("several versions (v1, v3)"), "{err}");
    let out = cp.ctl_stdin(&["apply", "-f", "-"], TWO_POLICIES);
    assert!(out.status.success());

    let canary = cp.ok(&["canary", "reviews", "v2", "--weight", "25"]);
    assert_eq!(
        canary,
        "policy/reviews configured (generation 2): default v1 75%, v2 25%; 1 rule(s)\n"
    );
    let route = cp.ok(&[
        "route",
        "reviews",
        "v3",
        "--header",
        "x-user=qa",
        "--cookie",
        "beta=1",
        "--os",
        "ios,android",
        "--name",
        "qa",
    ]);
    assert!(
        route.contains("(generation 3)") && route.contains("2 rule(s)"),
        "{route}"
    );
    let mirror = cp.ok(&["mirror", "reviews", "v3", "--percent", "12.5"]);
    assert!(mirror.ends_with("; mirror v3 12.5%\n"), "{mirror}");

    let services = cp.ok(&["get", "services"]);
    assert!(
        services.contains("v1 1/1 75%, v2 1/1 25%, v3 1/1 0%"),
        "{services}"
    );
    assert!(services.contains("reviews (generation 4)"), "{services}");
    let svc: serde_json::Value =
        serde_json::from_str(&cp.ok(&["get", "services", "reviews", "-o", "json"])).unwrap();
    assert!(
        svc["vips"][0].as_str().unwrap().starts_with("10.96."),
        "{svc}"
    );

    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
    let explain = cp.ok(&[
        "explain",
        "reviews",
        "--header",
        "x-user=qa",
        "--cookie",
        "beta=1",
        "--user-agent",
        iphone,
    ]);
    let first = explain.lines().next().unwrap();
    assert!(
        first.starts_with("rule qa (block 0: ") && first.ends_with("-> v3"),
        "{explain}"
    );
    assert!(explain.contains("client os: ios"), "{explain}");
    assert!(explain.contains("mirror: 12.5% copied to v3"), "{explain}");
    let other = cp.ok(&["explain", "reviews", "--header", "end-user=bob"]);
    assert!(
        other.starts_with("default route (no rule matched) -> v1 75%, v2 25% (random)"),
        "{other}"
    );
    assert!(
        other.contains(
            "rule 1 testers: no match: block 0: header end-user \"bob\" is not exact \"jason\""
        ),
        "{other}"
    );

    let promote = cp.ok(&["promote", "reviews", "v2"]);
    assert_eq!(
        promote,
        "policy/reviews configured (generation 5): default v2 100%; 0 rule(s)\n"
    );
    let rollback = cp.ok(&["rollback", "reviews"]);
    assert_eq!(
        rollback,
        "policy/reviews rolled back to the content of generation 4 (now generation 6)\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cp.ok(&["get", "policies", "reviews", "-o", "json"])).unwrap();
    assert_eq!(json["spec"]["mirror"]["percent"], 12.5);
    assert_eq!(json["spec"]["rules"][0]["name"], "qa");
    let to1 = cp.ok(&["rollback", "reviews", "--to-generation", "1"]);
    assert!(
        to1.contains("content of generation 1 (now generation 7)"),
        "{to1}"
    );
    assert_eq!(
        cp.ok(&["mirror", "reviews", "v3", "--percent", "0"]),
        "policy/reviews configured (generation 7): default v1 80%, v2 20%; 1 rule(s)\n",
        "generation 7 has no mirror: unchanged"
    );

    let status = cp.ok(&["status"]);
    assert!(
        status.starts_with(&format!(
            "control plane {}: 0 proxies connected, 0 in sync",
            cp.url()
        )),
        "{status}"
    );
    assert_eq!(
        cp.ok(&["delete", "policy", "ratings"]),
        "policy/ratings deleted (generation 2)\n"
    );
    let completion = cp.ok(&["completion", "bash"]);
    assert!(
        completion.contains("serinctl") && completion.contains("canary"),
        "completion script"
    );
}

#[test]
fn status_shows_connected_proxies() {
    use serin_proto::v1;
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    let rt = runtime();
    let url = cp.url();
    // A proxy that subscribes and ACKs its first snapshot.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut stream = rt.block_on(async {
        let mut client = v1::discovery_client::DiscoveryClient::connect(url)
            .await
            .unwrap();
        let hello = v1::Hello {
            proxy: Some(v1::ProxyIdentity {
                pod_name: "productpage-v1-0".into(),
                namespace: "default".into(),
                pod_ips: vec!["10.244.0.20".into()],
                service: "productpage".into(),
                version: "v1".into(),
                ..Default::default()
            }),
            capabilities: vec!["snapshot.full".into()],
            applied_version: String::new(),
        };
        tx.send(v1::SubscribeRequest {
            kind: Some(v1::subscribe_request::Kind::Hello(hello)),
        })
        .await
        .unwrap();
        client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner()
    });
    let first = rt.block_on(stream.message()).unwrap().unwrap();
    let ack = v1::SnapshotAck {
        version: first.version.clone(),
        nonce: first.nonce.clone(),
    };
    rt.block_on(tx.send(v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Ack(ack)),
    }))
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let status = cp.ok(&["status"]);
        if status.contains("1 in sync") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ACK never showed: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        status.contains("productpage-v1-0")
            && status.contains(&first.version)
            && status.contains("in sync"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cp.ok(&["get", "proxies", "productpage-v1-0", "-o", "json"]))
            .unwrap();
    assert_eq!(json["inSync"], true);
    assert_eq!(json["ackedVersion"], first.version.as_str());
    // A second proxy rejects a policy: status names the resource and the reason.
    let (tx2, rx2) = tokio::sync::mpsc::channel(4);
    let url = cp.url();
    let mut second = rt.block_on(async {
        let mut client = v1::discovery_client::DiscoveryClient::connect(url)
            .await
            .unwrap();
        let hello = v1::Hello {
            proxy: Some(v1::ProxyIdentity {
                pod_name: "reviews-v2-0".into(),
                namespace: "default".into(),
                pod_ips: vec!["10.244.0.21".into()],
                service: "reviews".into(),
                version: "v2".into(),
                ..Default::default()
            }),
            capabilities: vec!["snapshot.full".into()],
            applied_version: String::new(),
        };
        tx2.send(v1::SubscribeRequest {
            kind: Some(v1::subscribe_request::Kind::Hello(hello)),
        })
        .await
        .unwrap();
        client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx2))
            .await
            .unwrap()
            .into_inner()
    });
    let pushed = rt.block_on(second.message()).unwrap().unwrap();
    let nack = v1::SnapshotNack {
        version: pushed.version.clone(),
        nonce: pushed.nonce.clone(),
        errors: vec![v1::ResourceError {
            kind: v1::ResourceKind::TrafficPolicy as i32,
            namespace: "default".into(),
            name: "reviews".into(),
            field: "spec.rules[0].match[0].os".into(),
            reason: "unknown os class".into(),
        }],
    };
    rt.block_on(tx2.send(v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Nack(nack)),
    }))
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let status = cp.ok(&["status"]);
        if status.contains("NACK") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the NACK never showed: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let line = status.lines().find(|l| l.contains("reviews-v2-0")).unwrap();
    let expected = format!(
        "NACK {}: traffic_policy default/reviews spec.rules[0].match[0].os: unknown os class",
        pushed.version
    );
    assert!(line.ends_with(&expected), "{status}");
    assert!(
        status.contains("2 proxies connected, 1 in sync"),
        "{status}"
    );
    drop(tx2);
    drop(tx);
}

#[test]
fn failures_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());

    // A parse error names the document, its line and the field.
    let bad_yaml = TWO_POLICIES.replace(
        "  service: ratings\n",
        "  service: ratings\n  stickyness: {cookie: uid}\n",
    );
    let err = one_error_line(&cp.ctl_stdin(&["apply", "-f", "-"], &bad_yaml));
    assert!(
        err.starts_with(
            "serinctl: <stdin>: document 2 (line 20, column 3): spec: unknown field `stickyness`"
        ),
        "{err}"
    );

    // A validation error names the document, the policy, the field and the reason, and nothing
    // of the file is applied: every document is validated before any is sent.
    let invalid = TWO_POLICIES.replace("{version: v1, weight: 100}", "{version: v1, weight: 0}");
    let out = cp.ctl_stdin(&["apply", "-f", "-"], &invalid);
    assert_eq!(String::from_utf8(out.stdout.clone()).unwrap(), "");
    let err = one_error_line(&out);
    assert!(
        err.starts_with("serinctl: <stdin>: document 2 (policy/ratings): spec.default.route: "),
        "{err}"
    );
    assert!(err.contains("weights are zero"), "{err}");
    let err = one_error_line(&cp.ctl(&["get", "policies", "reviews"]));
    assert_eq!(
        err,
        "serinctl: getting policy reviews: policy default/reviews not found"
    );

    // A negative weight is reported as written, not as the zero it would become on the wire.
    let negative = TWO_POLICIES.replace("{version: v1, weight: 100}", "{version: v1, weight: -5}");
    let err = one_error_line(&cp.ctl_stdin(&["apply", "-f", "-"], &negative));
    assert!(
        err.starts_with("serinctl: <stdin>: document 2 (policy/ratings): spec.default.route[0].weight: weight -5 is negative"),
        "{err}"
    );

    let err = one_error_line(&cp.ctl(&["apply", "-f", "/nonexistent/policy.yaml"]));
    assert!(
        err.starts_with("serinctl: cannot read /nonexistent/policy.yaml: "),
        "{err}"
    );
    let err = one_error_line(&cp.ctl(&["get", "policies", "nope"]));
    assert_eq!(
        err,
        "serinctl: getting policy nope: policy default/nope not found"
    );
    let err = one_error_line(&cp.ctl(&["canary", "reviews", "v2", "--weight", "101"]));
    assert!(err.contains("--weight"), "{err}");
    let err = one_error_line(&cp.ctl(&["canary", "reviews", "v2", "--wieght", "1"]));
    assert!(err.contains("'--wieght'"), "{err}");
    let err = one_error_line(&cp.ctl(&["route", "reviews", "v2", "--header", "novalue"]));
    assert_eq!(err, "serinctl: --header \"novalue\": expected NAME=VALUE");
    let err = one_error_line(&cp.ctl(&["route", "nothing", "v2", "--header", "a=b"]));
    assert!(
        err.contains("service default/nothing has no policy to edit"),
        "{err}"
    );
    let err = one_error_line(&cp.ctl(&["promote", "reviews", "v9"]));
    assert!(
        err.contains("has no ready endpoints") && err.contains("--force"),
        "{err}"
    );
    let err = one_error_line(&cp.ctl(&["explain", "nothing"]));
    assert!(
        err.contains("service default/nothing has no policy and no registered endpoints"),
        "{err}"
    );

    // The control plane is gone: one line saying where it was looked for.
    let url = cp.url();
    drop(cp);
    let err = one_error_line(&serinctl(&url, &["status"], None));
    assert_eq!(
        err,
        format!(
            "serinctl: cannot reach the control plane at {url}: connection refused (is serin-control running? set --control-plane or SERIN_CONTROL_PLANE)"
        )
    );
    let err = one_error_line(&serinctl("localhost:15010", &["status"], None));
    assert!(
        err.starts_with("serinctl: invalid control plane URL \"localhost:15010\""),
        "{err}"
    );
}

#[test]
fn canary_on_a_service_without_policy_splits_with_its_only_other_version() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    register(
        &cp,
        &[
            ("ratings-v1-0", "ratings", "v1", "10.244.0.31"),
            ("ratings-v2-0", "ratings", "v2", "10.244.0.32"),
        ],
    );
    let out = cp.ok(&["canary", "ratings", "v2", "--weight", "5"]);
    assert_eq!(
        out,
        "policy/ratings configured (generation 1): default v1 95%, v2 5%; 0 rule(s)\n"
    );
    let out = cp.ok(&["canary", "ratings", "v2", "--weight", "10"]);
    assert_eq!(
        out,
        "policy/ratings configured (generation 2): default v1 90%, v2 10%; 0 rule(s)\n"
    );
    let yaml = cp.ok(&["get", "policies", "ratings", "-o", "yaml"]);
    assert!(
        yaml.contains("service: ratings") && yaml.contains("generation: 2"),
        "{yaml}"
    );
}

#[test]
fn mtls_modes_are_set_per_namespace_and_mesh_wide_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    assert_eq!(cp.ok(&["mtls"]), "mesh-wide default: permissive (unset)\n");
    assert_eq!(
        cp.ok(&["mtls", "-n", "shop", "strict"]),
        "mtls mode of the namespace shop set to strict\nmesh-wide default: permissive (unset)\nnamespace shop: strict\n"
    );
    assert_eq!(
        cp.ok(&["mtls", "--mesh-wide", "permissive"]),
        "mtls mode of the mesh-wide default set to permissive\nmesh-wide default: permissive\nnamespace shop: strict\n"
    );
    let store = cp.kill9();
    let cp = ControlPlane::start(&store);
    assert_eq!(
        cp.ok(&["mtls"]),
        "mesh-wide default: permissive\nnamespace shop: strict\n"
    );
    assert_eq!(
        cp.ok(&["mtls", "-n", "shop", "unset"]),
        "mtls mode of the namespace shop set to unset\nmesh-wide default: permissive\n"
    );
    let bad = cp.ctl(&["mtls", "sometimes"]);
    assert!(!bad.status.success());
}

#[test]
fn namespaces_are_made_private_and_public_again_and_it_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path());
    assert_eq!(cp.ok(&["visibility"]), "every namespace is public\n");
    assert_eq!(
        cp.ok(&["visibility", "-n", "bank", "private"]),
        "namespace bank is now private\nnamespace bank: private\nevery other namespace: public\n"
    );
    assert_eq!(
        cp.ok(&["visibility", "--namespace", "shop", "private"]),
        "namespace shop is now private\nnamespace bank: private\nnamespace shop: private\nevery other namespace: public\n"
    );
    // The admin API says the same.
    let private = runtime().block_on(async {
        let channel = tonic::transport::Channel::from_shared(cp.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        serin_proto::auth::admin_client(
            channel,
            serin_proto::auth::BearerToken::new(&cp.token).unwrap(),
        )
        .get_namespace_visibility(serin_proto::v1::GetNamespaceVisibilityRequest {})
        .await
        .unwrap()
        .into_inner()
        .private_namespaces
    });
    assert_eq!(private, ["bank", "shop"]);

    let store = cp.kill9();
    let cp = ControlPlane::start(&store);
    assert_eq!(
        cp.ok(&["visibility"]),
        "namespace bank: private\nnamespace shop: private\nevery other namespace: public\n"
    );
    assert_eq!(
        cp.ok(&["visibility", "-n", "bank", "public"]),
        "namespace bank is now public\nnamespace shop: private\nevery other namespace: public\n"
    );
    // Public twice is no error.
    assert_eq!(
        cp.ok(&["visibility", "-n", "bank", "public"]),
        "namespace bank is now public\nnamespace shop: private\nevery other namespace: public\n"
    );

    // A value that is neither: clap refuses it, one line naming it and the choices, exit 2.
    let bad = cp.ctl(&["visibility", "-n", "bank", "secret"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = one_error_line(&bad);
    assert!(
        err.contains("'secret'") && err.contains("private") && err.contains("public"),
        "{err}"
    );
    // A read token reads the visibility but cannot change it.
    let read = token_of(&store, serin_proto::auth::Role::Read);
    let listed = serinctl_as(&cp.url(), Some(&read), &["visibility"], None);
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        String::from_utf8(listed.stdout).unwrap(),
        "namespace shop: private\nevery other namespace: public\n"
    );
    let err = one_error_line(&serinctl_as(
        &cp.url(),
        Some(&read),
        &["visibility", "-n", "shop", "public"],
        None,
    ));
    assert_eq!(
        err,
        "serinctl: making namespace shop public: the admin token has role read; SetNamespaceVisibility needs a token with role write (give serinctl a write token with --token, SERIN_TOKEN or --token-file)"
    );
    assert_eq!(
        cp.ok(&["visibility"]),
        "namespace shop: private\nevery other namespace: public\n",
        "nothing changed"
    );
}
