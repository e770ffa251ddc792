//! Sidecar injection end to end: golden files through both paths (the webhook's AdmissionReview
//! answer applied to the pod, and the offline manifest injection `serinctl inject` runs), and
//! the webhook over real HTTPS on loopback.
//!
//! `tests/golden/inject/NAME.in.yaml` is an input; `NAME.out.yaml` the expected output of
//! `serinctl inject` (byte for byte) and, parsed, of the webhook path. A first line
//! `# flags: ...` gives the scenario's `serinctl inject` flags (`--namespace-injection`,
//! `--kubernetes-version`, `-n`). `UPDATE_GOLDEN=1 cargo test -p serin-control --test inject`
//! rewrites the outputs; a stale or missing output fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use serin_control::inject::config::{InjectConfig, KubernetesVersion};
use serin_control::inject::manifest::{ManifestOptions, inject_manifests, pod_template_pointer};
use serin_control::inject::pod::NamespaceInjection;
use serin_control::inject::review::{AdmissionReview, decoded_patch, review};
use serin_control::inject::webhook::{DEFAULT_MAX_BODY, TlsSource, Webhook, WebhookConfig};
use tokio::sync::watch;

fn test_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug")
        .try_init();
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

/// Every scenario: its name and input text, sorted by name.
fn scenarios() -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = std::fs::read_dir(golden_dir())
        .expect("tests/golden/inject exists")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".in.yaml")?
                .to_owned();
            Some((
                name,
                std::fs::read_to_string(&path).expect("readable input"),
            ))
        })
        .collect();
    found.sort();
    found
}

/// The options a scenario's `# flags:` line asks for.
fn options(input: &str) -> ManifestOptions {
    let mut options = ManifestOptions {
        default_namespace: "default".to_owned(),
        namespace_injection: NamespaceInjection::Enabled,
        config: InjectConfig::default(),
    };
    let flags = input
        .lines()
        .find_map(|l| l.strip_prefix("# flags:"))
        .unwrap_or("");
    let words: Vec<&str> = flags.split_whitespace().collect();
    for pair in words.chunks(2) {
        match pair {
            ["--namespace-injection", "disabled"] => {
                options.namespace_injection = NamespaceInjection::Disabled;
            }
            ["--namespace-injection", "enabled"] => {}
            ["--kubernetes-version", v] => {
                options.config.kubernetes_version = v.parse::<KubernetesVersion>().unwrap();
            }
            ["-n", ns] => options.default_namespace = (*ns).to_owned(),
            other => panic!("unknown flags {other:?}"),
        }
    }
    options
}

fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The AdmissionReview the API server would send for `pod` created in `namespace`.
fn admission_review(pod: &Value, namespace: &str) -> Value {
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": "0df28fbd-5f5f-11e8-bc74-36e6bb280816",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "a7e0ab33-5f29-11e8-a0c3-36e6bb280816",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The webhook path: every pod (template) of `text` goes through an AdmissionReview as the API
/// server would send it; the returned JSONPatch is applied to it.
fn through_webhook(text: &str, options: &ManifestOptions) -> Vec<Value> {
    let mut docs = documents(text);
    for doc in &mut docs {
        let is_list = doc["kind"].as_str().is_some_and(|k| k.ends_with("List"));
        match doc.get_mut("items").and_then(Value::as_array_mut) {
            Some(items) if is_list => items
                .iter_mut()
                .for_each(|item| webhook_object(item, options)),
            _ => webhook_object(doc, options),
        }
    }
    docs
}

/// One object of [`through_webhook`]: its pod (template), if any, through the webhook.
fn webhook_object(doc: &mut Value, options: &ManifestOptions) {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let Some(pointer) = pod_template_pointer(&api_version, &kind) else {
        return;
    };
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .unwrap_or(&options.default_namespace)
        .to_owned();
    let template = doc.pointer_mut(pointer).expect("pod template");
    // What a controller creates from a template: a Pod with its metadata and spec.
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
        "spec": template["spec"].clone(),
    });
    let body = serde_json::to_vec(&admission_review(&pod, &namespace)).unwrap();
    let answer = review(&body, &options.config, options.namespace_injection).unwrap();
    let response = answer.response.expect("a response");
    assert!(response.allowed, "refused: {:?}", response.status);
    assert_eq!(response.uid, "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    if response.patch.is_none() {
        return;
    }
    assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
    json_patch::patch(&mut pod, &decoded_patch(&response).unwrap()).unwrap();
    let object = template.as_object_mut().unwrap();
    object.insert("metadata".to_owned(), pod["metadata"].take());
    object.insert("spec".to_owned(), pod["spec"].take());
}

#[test]
fn golden_files_through_both_paths() {
    test_tracing();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let all = scenarios();
    assert!(all.len() >= 15, "only {} scenarios", all.len());
    let mut failures = Vec::new();
    for (name, input) in &all {
        let options = options(input);
        let offline = inject_manifests(input, &options)
            .unwrap_or_else(|e| panic!("{name}: offline injection failed: {e}"));
        let path = golden_dir().join(format!("{name}.out.yaml"));
        if update {
            std::fs::write(&path, &offline).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{name}: {} missing ({e}); run with UPDATE_GOLDEN=1",
                path.display()
            )
        });
        if offline != expected {
            failures.push(format!(
                "{name}: serinctl inject output differs from {}",
                path.display()
            ));
        }
        if through_webhook(input, &options) != documents(&expected) {
            failures.push(format!(
                "{name}: webhook patch applied to the input differs from {}",
                path.display()
            ));
        }
        // Injecting the result again adds nothing, on both paths.
        if inject_manifests(&expected, &options).unwrap() != expected {
            failures.push(format!("{name}: offline re-injection changed the output"));
        }
        if through_webhook(&expected, &options) != documents(&expected) {
            failures.push(format!("{name}: webhook re-injection changed the output"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scenarios_cover_what_they_claim() {
    // Guards the golden files themselves: a scenario that should inject does, and one that
    // should not leaves its input byte for byte.
    let unchanged = [
        "already-injected",
        "opted-out",
        "namespace-disabled",
        "host-network",
        "kube-system",
    ];
    for (name, input) in scenarios() {
        let expected =
            std::fs::read_to_string(golden_dir().join(format!("{name}.out.yaml"))).unwrap();
        if unchanged.contains(&name.as_str()) {
            assert_eq!(expected, input, "{name} should be left alone");
        } else {
            assert!(
                expected.contains("serin-proxy") && expected != input,
                "{name} should be injected"
            );
        }
    }
    let classic = std::fs::read_to_string(golden_dir().join("classic.out.yaml")).unwrap();
    let docs = documents(&classic);
    let spec = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["name"], "serin-proxy");
    assert_eq!(spec["initContainers"][0]["name"], "serin-init");
    assert_eq!(spec["initContainers"][1]["name"], "wait-db");
    let native = documents(
        &std::fs::read_to_string(golden_dir().join("native-with-init.out.yaml")).unwrap(),
    );
    let spec = &native[0]["spec"]["template"]["spec"];
    assert_eq!(spec["initContainers"][1]["name"], "serin-proxy");
    assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(spec["initContainers"][2]["name"], "wait-db");

    // The init container's arguments are ones serin-iptables takes, exclusions included.
    let exclusions =
        documents(&std::fs::read_to_string(golden_dir().join("exclusions.out.yaml")).unwrap());
    let init = &exclusions[0]["spec"]["initContainers"][0];
    assert_eq!(init["command"][0], "serin-iptables");
    let mut argv = vec!["serin-iptables".to_owned()];
    argv.extend(
        init["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned()),
    );
    let cli = <serin_iptables::app::Cli as clap::Parser>::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("serin-iptables refuses {argv:?}: {e}"));
    let rendered = format!("{cli:?}");
    for wanted in ["3306", "6379", "8000", "169.254.169.254", "9090"] {
        assert!(
            rendered.contains(wanted),
            "{wanted} missing from {rendered}"
        );
    }
}

// ---- the webhook over HTTPS ----

struct Running {
    addr: std::net::SocketAddr,
    tls: tokio_rustls::TlsConnector,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_webhook(max_body: usize) -> Running {
    test_tracing();
    let webhook = Webhook::bind(WebhookConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: TlsSource::SelfSigned {
            dns_names: vec!["serin-control.serin-system.svc".to_owned()],
        },
        inject: InjectConfig::default(),
        max_body,
    })
    .await
    .unwrap();
    let addr = webhook.local_addr();
    // Trust exactly the generated certificate, as the API server trusts the caBundle.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(webhook.certificate_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(webhook.serve(stop_rx));
    Running {
        addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(client)),
        stop,
        task,
    }
}

impl Running {
    /// One request over a fresh TLS connection that checks the name `server_name`.
    async fn post(&self, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, String) {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = ServerName::try_from("serin-control.serin-system.svc").unwrap();
        let tls = self.tls.connect(name, tcp).await.expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::post("/inject?timeout=10s");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the webhook stops")
            .unwrap();
    }
}

#[tokio::test]
async fn webhook_over_https_patches_pods_and_allows_the_rest() {
    let webhook = start_webhook(DEFAULT_MAX_BODY).await;
    let pod =
        documents(&std::fs::read_to_string(golden_dir().join("generate-name.in.yaml")).unwrap())
            .remove(0);
    let body = serde_json::to_vec(&admission_review(&pod, "bookinfo")).unwrap();
    let (status, text) = webhook.post(Some("application/json"), body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let answer: AdmissionReview = serde_json::from_str(&text).unwrap();
    assert_eq!(answer.api_version, "admission.k8s.io/v1");
    assert_eq!(answer.kind, "AdmissionReview");
    let response = answer.response.unwrap();
    assert!(response.allowed);
    assert_eq!(response.uid, "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &decoded_patch(&response).unwrap()).unwrap();
    let expected =
        documents(&std::fs::read_to_string(golden_dir().join("generate-name.out.yaml")).unwrap());
    assert_eq!(patched, expected[0]);

    // kube-system: allowed unchanged.
    let body = serde_json::to_vec(&admission_review(&pod, "kube-system")).unwrap();
    let (status, text) = webhook
        .post(Some("application/json; charset=utf-8"), body)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response = serde_json::from_str::<AdmissionReview>(&text)
        .unwrap()
        .response
        .unwrap();
    assert!(response.allowed && response.patch.is_none() && response.patch_type.is_none());

    // Huge managedFields go through within the body limit.
    let pod = documents(
        &std::fs::read_to_string(golden_dir().join("huge-managed-fields.in.yaml")).unwrap(),
    )
    .remove(0);
    let body = serde_json::to_vec(&admission_review(&pod, "shop")).unwrap();
    assert!(body.len() > 100_000);
    let (status, text) = webhook.post(Some("application/json"), body).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        serde_json::from_str::<AdmissionReview>(&text)
            .unwrap()
            .response
            .unwrap()
            .patch
            .is_some()
    );
    webhook.stop().await;
}

#[tokio::test]
async fn webhook_answers_bad_requests_with_reasons_and_keeps_serving() {
    let webhook = start_webhook(64 * 1024).await;
    let (status, text) = webhook.post(Some("text/plain"), b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(text.contains("application/json"), "{text}");
    let (status, _) = webhook.post(None, b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, text) = webhook.post(Some("application/json"), Vec::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("empty body"), "{text}");
    let (status, text) = webhook
        .post(Some("application/json"), b"{\"apiVersion\":".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("not an AdmissionReview"), "{text}");
    let (status, text) = webhook
        .post(
            Some("application/json"),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(text.contains("no request"), "{text}");
    let (status, text) = webhook
        .post(Some("application/json"), vec![b' '; 100 * 1024])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    // A pod that is no pod (containers is a string): refused in the review, not a crash.
    let review = admission_review(
        &json!({"metadata": {"name": "x"}, "spec": {"containers": "nope"}}),
        "shop",
    );
    let (status, text) = webhook
        .post(
            Some("application/json"),
            serde_json::to_vec(&review).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response = serde_json::from_str::<AdmissionReview>(&text)
        .unwrap()
        .response
        .unwrap();
    assert!(!response.allowed);
    assert!(response.status.unwrap().message.contains("not a valid pod"));
    // Still serving a good one afterwards.
    let pod = json!({"metadata": {"name": "ok", "labels": {"app": "ok"}}, "spec": {"containers": [{"name": "ok"}]}});
    let (status, text) = webhook
        .post(
            Some("application/json"),
            serde_json::to_vec(&admission_review(&pod, "shop")).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    webhook.stop().await;
}

/// A TLS handshake with the webhook, trusting only `ca_pem`.
async fn handshake(addr: std::net::SocketAddr, ca_pem: &str) -> std::io::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("serin-control.serin-system.svc").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(name, tcp)
        .await
        .map(drop)
}

#[tokio::test]
async fn a_renewed_certificate_is_served_from_the_next_handshake() {
    test_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    // Files as the kubelet updates a mounted Secret; the modification time is set explicitly so
    // that a renewal within the same clock tick is still seen.
    let write = |text_cert: &str, text_key: &str, later: u64| {
        let when = std::time::SystemTime::now() + Duration::from_secs(later);
        for (path, text) in [(&cert, text_cert), (&key, text_key)] {
            std::fs::write(path, text).unwrap();
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
    };
    let generate = || {
        rcgen::generate_simple_self_signed(vec!["serin-control.serin-system.svc".to_owned()])
            .unwrap()
    };
    let first = generate();
    write(&first.cert.pem(), &first.signing_key.serialize_pem(), 0);
    let webhook = Webhook::bind(WebhookConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: TlsSource::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        inject: InjectConfig::default(),
        max_body: DEFAULT_MAX_BODY,
    })
    .await
    .unwrap();
    let addr = webhook.local_addr();
    assert_eq!(webhook.certificate_pem(), first.cert.pem());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(webhook.serve(stop_rx));
    handshake(addr, &first.cert.pem())
        .await
        .expect("the first certificate");

    let second = generate();
    write(&second.cert.pem(), &second.signing_key.serialize_pem(), 10);
    handshake(addr, &second.cert.pem())
        .await
        .expect("the renewed certificate");
    assert!(
        handshake(addr, &first.cert.pem()).await.is_err(),
        "the old certificate is gone"
    );

    // A broken renewal keeps the last good certificate.
    write("not a certificate", "not a key", 20);
    handshake(addr, &second.cert.pem())
        .await
        .expect("the last good certificate");

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

/// FAULTS.md item 28 over the real HTTPS webhook, each as the API server sends it: a
/// `generateName`-only pod in a request whose namespace is empty (and whose object has none)
/// is injected; the injected pod sent again comes back allowed with no patch (re-injection adds
/// nothing); an already-injected pod, a hostNetwork pod, a DELETE (object null) and an UPDATE
/// are allowed unchanged; huge managedFields, wrong Content-Type and an empty body are in the
/// two tests above.
#[tokio::test]
async fn webhook_edge_cases_of_faults_item_28() {
    let webhook = start_webhook(DEFAULT_MAX_BODY).await;
    let answer = |text: &str| {
        serde_json::from_str::<AdmissionReview>(text)
            .unwrap_or_else(|e| panic!("not an AdmissionReview ({e}): {text}"))
            .response
            .expect("a response")
    };

    // generateName only, no namespace anywhere.
    let mut pod =
        documents(&std::fs::read_to_string(golden_dir().join("generate-name.in.yaml")).unwrap())
            .remove(0);
    if let Some(meta) = pod["metadata"].as_object_mut() {
        meta.remove("namespace");
        meta.remove("name");
    }
    assert!(pod["metadata"]["generateName"].is_string(), "{pod}");
    let mut review = admission_review(&pod, "");
    review["request"]["name"] = json!("");
    let (status, text) = webhook
        .post(
            Some("application/json"),
            serde_json::to_vec(&review).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response = answer(&text);
    assert!(response.allowed, "{text}");
    let mut injected = pod.clone();
    json_patch::patch(&mut injected, &decoded_patch(&response).unwrap()).unwrap();
    let containers = |p: &Value, field: &str| -> Vec<String> {
        p["spec"][field]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        containers(&injected, "initContainers").contains(&"serin-proxy".to_owned()),
        "{injected}"
    );

    // The injected pod again: nothing added.
    let (status, text) = webhook
        .post(
            Some("application/json"),
            serde_json::to_vec(&admission_review(&injected, "")).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let response = answer(&text);
    assert!(
        response.allowed && response.patch.is_none() && response.patch_type.is_none(),
        "re-injection added something: {text}"
    );

    // Already injected (by annotation and containers) and hostNetwork pods: unchanged.
    for (scenario, namespace) in [
        ("already-injected", "bookinfo"),
        ("host-network", "monitoring"),
    ] {
        let doc = documents(
            &std::fs::read_to_string(golden_dir().join(format!("{scenario}.in.yaml"))).unwrap(),
        )
        .remove(0);
        let pod = match pod_template_pointer(
            doc["apiVersion"].as_str().unwrap(),
            doc["kind"].as_str().unwrap(),
        ) {
            Some("") => doc.clone(),
            Some(pointer) => json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": doc.pointer(pointer).unwrap()["metadata"].clone(),
                "spec": doc.pointer(pointer).unwrap()["spec"].clone()}),
            None => panic!("{scenario} has no pod"),
        };
        let (status, text) = webhook
            .post(
                Some("application/json"),
                serde_json::to_vec(&admission_review(&pod, namespace)).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{scenario}: {text}");
        let response = answer(&text);
        assert!(
            response.allowed && response.patch.is_none(),
            "{scenario} should be left alone: {text}"
        );
    }

    // A DELETE (no object, the old one in oldObject) and an UPDATE: allowed unchanged.
    let mut delete = admission_review(&pod, "shop");
    delete["request"]["operation"] = json!("DELETE");
    delete["request"]["oldObject"] = delete["request"]["object"].take();
    let mut update = admission_review(&pod, "shop");
    update["request"]["operation"] = json!("UPDATE");
    update["request"]["oldObject"] = update["request"]["object"].clone();
    for (what, review) in [("DELETE", delete), ("UPDATE", update)] {
        let (status, text) = webhook
            .post(
                Some("application/json"),
                serde_json::to_vec(&review).unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{what}: {text}");
        let response = answer(&text);
        assert!(
            response.allowed && response.patch.is_none(),
            "{what} should be allowed unchanged: {text}"
        );
    }
    webhook.stop().await;
}
