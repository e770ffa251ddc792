//! serinctl against `serin-control --kubernetes`: the real binaries, the control plane's kubeconfig
//! naming a fake API server on loopback (shared with serin-control's tests). Each verb must end
//! in the right TrafficPolicy object write, recorded by the fake.

use serde_json::{Value, json};

use crate::support::*;

#[path = "../../../control-plane/tests/support/fake_api.rs"]
mod fake_api;
use fake_api::*;

/// The last write of a TrafficPolicy object: (method, namespace/name, body).
fn last_write(fake: &FakeApi) -> (String, String, Value) {
    fake.writes().last().cloned().expect("a write")
}

fn route(body: &Value) -> &Value {
    &body["spec"]["default"]["route"]
}

#[test]
fn serinctl_verbs_write_traffic_policy_objects_in_kubernetes_mode() {
    tracing();
    // The fake runs on its own runtime: the test below blocks on processes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let fake = runtime.block_on(FakeApi::start());
    fake.apply(SERVICES, service("reviews", "10.96.0.10"));
    fake.apply(PODS, pod("reviews-v1-a", "v1"));
    fake.apply(PODS, pod("reviews-v2-b", "v2"));
    fake.apply(NAMESPACES, namespace("shop", &[]));
    fake.apply(
        SLICES,
        slice(&[
            ("reviews-v1-a", "10.244.0.7", true),
            ("reviews-v2-b", "10.244.0.8", true),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            fake.addr
        ),
    )
    .unwrap();
    let cp = ControlPlane::start_kubernetes(&kubeconfig, "serin-control-0");

    // apply: a new object (POST).
    let file = dir.path().join("reviews.yaml");
    std::fs::write(
        &file,
        "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews, namespace: shop}\nspec:\n  service: reviews\n  default: {route: [{version: v1, weight: 100}]}\n",
    )
    .unwrap();
    cp.ok(&["apply", "-f", file.to_str().unwrap()]);
    let (method, key, body) = last_write(&fake);
    assert_eq!((method.as_str(), key.as_str()), ("POST", "shop/reviews"));
    assert_eq!(route(&body), &json!([{"version": "v1", "weight": 100}]));

    // canary: the object replaced at the resourceVersion it was read at, generation 1 kept in
    // the history annotation.
    cp.ok(&["-n", "shop", "canary", "reviews", "v2", "--weight", "20"]);
    let (method, _, body) = last_write(&fake);
    assert_eq!(method, "PUT");
    assert_eq!(
        route(&body),
        &json!([{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}])
    );
    assert!(body["metadata"]["resourceVersion"].is_string(), "{body}");
    let history: Value = serde_json::from_str(
        body["metadata"]["annotations"]["serin.io/history"]
            .as_str()
            .expect("the history annotation"),
    )
    .unwrap();
    assert_eq!(history[0]["generation"], 1);

    // promote, then rollback to the canary.
    cp.ok(&["-n", "shop", "promote", "reviews", "v2"]);
    let (method, _, body) = last_write(&fake);
    assert_eq!(method, "PUT");
    assert_eq!(route(&body), &json!([{"version": "v2", "weight": 100}]));
    cp.ok(&["-n", "shop", "rollback", "reviews"]);
    let (method, _, body) = last_write(&fake);
    assert_eq!(method, "PUT");
    assert_eq!(
        route(&body),
        &json!([{"version": "v1", "weight": 80}, {"version": "v2", "weight": 20}])
    );
    assert_eq!(
        fake.stored("shop/reviews")["metadata"]["generation"],
        4,
        "create, canary, promote, rollback"
    );

    // get reads the watched cache: the rollback's generation.
    let got = cp.ok(&["-n", "shop", "get", "policies", "reviews", "-o", "json"]);
    let got: Value = serde_json::from_str(&got).unwrap_or_else(|e| panic!("{e}: {got}"));
    let text = got.to_string();
    assert!(text.contains("\"generation\":4"), "{text}");

    // delete: the object goes.
    cp.ok(&["-n", "shop", "delete", "policy", "reviews"]);
    let (method, key, _) = last_write(&fake);
    assert_eq!((method.as_str(), key.as_str()), ("DELETE", "shop/reviews"));
    assert_eq!(
        fake.writes().len(),
        5,
        "one write per verb: {:?}",
        fake.writes()
    );

    // mtls and visibility: annotations of the Namespace, and the ConfigMap serin-mesh in the
    // control plane's namespace (here the kubeconfig context's: default).
    assert_eq!(
        cp.ok(&["-n", "shop", "mtls", "strict"]),
        "mtls mode of the namespace shop set to strict\nmesh-wide default: permissive (unset)\nnamespace shop: strict\n"
    );
    let (method, path, body) = fake.core_writes().last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("PATCH", "/api/v1/namespaces/shop")
    );
    assert_eq!(
        body,
        json!({"metadata": {"annotations": {"serin.io/mtls": "strict"}}})
    );
    cp.ok(&["mtls", "--mesh-wide", "strict"]);
    let (method, path, body) = fake.core_writes().last().cloned().unwrap();
    assert_eq!(
        (method.as_str(), path.as_str()),
        ("POST", "/api/v1/namespaces/default/configmaps")
    );
    assert_eq!(body["data"], json!({"mtls": "strict"}));
    assert_eq!(
        cp.ok(&["-n", "shop", "visibility", "private"]),
        "namespace shop is now private\nnamespace shop: private\nevery other namespace: public\n"
    );
    assert_eq!(
        fake.stored_in(NAMESPACES, "/shop")["metadata"]["annotations"],
        json!({"serin.io/mtls": "strict", "serin.io/visibility": "private"})
    );
    // kubectl annotate namespace shop serin.io/visibility=public --overwrite: serinctl shows it.
    fake.apply(
        NAMESPACES,
        namespace(
            "shop",
            &[
                ("serin.io/mtls", "strict"),
                ("serin.io/visibility", "public"),
            ],
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cp.ok(&["visibility"]) != "every namespace is public\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "kubectl's edit not shown within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(cp);
    drop(runtime);
}
