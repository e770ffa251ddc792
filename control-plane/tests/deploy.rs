//! `deploy/`: every plain manifest parses into its k8s-openapi type with nothing dropped, the
//! CRD is the one generated from the policy types (`UPDATE_GOLDEN=1` rewrites it), sample
//! policies pass the CRD's schema and typos do not, the Helm chart renders to the plain
//! manifests, and the control plane's arguments in the Deployment are ones it accepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every document of every file in `dir`, with its file name.
fn manifests(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            documents(&std::fs::read_to_string(p).unwrap())
                .into_iter()
                .map(move |d| (name.clone(), d))
        })
        .collect()
}

/// Parses `doc` as `T` and back: a field the type does not know would be dropped, and fail here.
fn round_trips<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: not a valid {}: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(&back, doc, "{file}: {} lost or changed fields", doc["kind"]);
    typed
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type() {
    let mut kinds = BTreeMap::new();
    let mut typed_deployment = None;
    let mut typed_webhook = None;
    let mut typed_service = None;
    let mut typed_role = None;
    let mut typed_cluster_role = None;
    for (file, doc) in manifests(&deploy_dir().join("manifests")) {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => drop(round_trips::<Namespace>(&file, &doc)),
            "ServiceAccount" => drop(round_trips::<ServiceAccount>(&file, &doc)),
            "ClusterRole" => typed_cluster_role = Some(round_trips::<ClusterRole>(&file, &doc)),
            "ClusterRoleBinding" => drop(round_trips::<ClusterRoleBinding>(&file, &doc)),
            "Role" => typed_role = Some(round_trips::<Role>(&file, &doc)),
            "RoleBinding" => drop(round_trips::<RoleBinding>(&file, &doc)),
            "Service" => typed_service = Some(round_trips::<Service>(&file, &doc)),
            "Deployment" => typed_deployment = Some(round_trips::<Deployment>(&file, &doc)),
            "MutatingWebhookConfiguration" => {
                typed_webhook = Some(round_trips::<MutatingWebhookConfiguration>(&file, &doc));
            }
            "CustomResourceDefinition" => {
                drop(round_trips::<CustomResourceDefinition>(&file, &doc))
            }
            // cert-manager's kinds have no k8s-openapi type: their metadata must still be valid.
            "Issuer" | "Certificate" => {
                assert_eq!(doc["apiVersion"], "cert-manager.io/v1", "{file}");
                let _: ObjectMeta = serde_json::from_value(doc["metadata"].clone()).unwrap();
                assert!(doc["spec"].is_object(), "{file}: {kind} has no spec");
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        }
        *kinds.entry(kind).or_insert(0) += 1;
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "MutatingWebhookConfiguration",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains_key(kind), "no {kind} in deploy/manifests");
    }

    // The RBAC lets the control plane patch Namespaces (the serin.io/mtls and
    // serin.io/visibility annotations) and own the ConfigMap serin-mesh of its namespace.
    let can = |rules: &[k8s_openapi::api::rbac::v1::PolicyRule], resource: &str, verb: &str| {
        rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|res| res.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
        })
    };
    let cluster_rules = typed_cluster_role.unwrap().rules.unwrap();
    for verb in ["get", "list", "watch", "patch"] {
        assert!(can(&cluster_rules, "namespaces", verb), "namespaces {verb}");
    }
    let role = typed_role.unwrap();
    assert_eq!(role.metadata.namespace.as_deref(), Some("serin-system"));
    let role_rules = role.rules.unwrap();
    for verb in ["get", "list", "watch", "create", "patch"] {
        assert!(can(&role_rules, "configmaps", verb), "configmaps {verb}");
    }
    assert!(
        !can(&cluster_rules, "configmaps", "get"),
        "configmaps only in the control plane's namespace"
    );

    // The Deployment: 2 replicas, and arguments serin-control accepts.
    let deployment = typed_deployment.unwrap();
    let spec = deployment.spec;
    assert_eq!(spec.replicas, Some(2));
    let container = &spec.template.spec.unwrap().containers[0];
    // Its own namespace, where the ConfigMap serin-mesh is, from the downward API.
    let namespace_env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "SERIN_CONTROL_PLANE_NAMESPACE")
        .expect("SERIN_CONTROL_PLANE_NAMESPACE in the Deployment");
    assert_eq!(
        namespace_env
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str()),
        Some("metadata.namespace")
    );
    let mut argv = vec!["serin-control".to_owned()];
    argv.extend(container.args.clone().unwrap());
    let args =
        serin_control::config::Args::try_parse_from(&argv).expect("valid serin-control arguments");
    let config = serin_control::config::Config::try_from(&args).unwrap();
    let webhook = config.webhook.expect("the webhook is on");
    assert_eq!(webhook.addr.port(), 15017);

    // The webhook configuration reaches that port through the Service.
    let service = typed_service.unwrap().spec.unwrap();
    let port = service
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.port == 443)
        .expect("a Service port 443");
    assert_eq!(
        port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15017))
    );
    let hooks = typed_webhook.unwrap().webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    for hook in &hooks {
        assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(hook.side_effects, "None");
        assert_eq!(hook.admission_review_versions, ["v1"]);
        let svc = hook.client_config.service.as_ref().unwrap();
        assert_eq!(
            (svc.name.as_str(), svc.path.as_deref(), svc.port),
            ("serin-control", Some("/inject"), Some(443))
        );
        let selector = serde_json::to_string(&hook.namespace_selector).unwrap();
        assert!(
            selector.contains("serin-injection") && selector.contains("kube-system"),
            "{selector}"
        );
    }
}

#[test]
fn the_crd_is_generated_from_the_policy_types() {
    let generated = serin_policy::schema::crd();
    let text = format!(
        "# Generated from the policy types (serin-policy, feature `schema`): do not edit.\n# UPDATE_GOLDEN=1 cargo test -p serin-control --test deploy rewrites it.\n{}",
        serde_yaml_ng::to_string(&generated).unwrap()
    );
    let paths = [
        deploy_dir().join("manifests/crd.yaml"),
        deploy_dir().join("helm/serin/crds/trafficpolicies.serin.io.yaml"),
    ];
    for path in &paths {
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
        assert_eq!(
            on_disk,
            text,
            "{} is stale: run with UPDATE_GOLDEN=1",
            path.display()
        );
    }
}

/// A small structural-schema check (the subset the CRD uses): types, required fields, unknown
/// fields (rejected, as `kubectl apply` with strict field validation does), bounds, items.
fn check(schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    if value.is_null() && schema["nullable"] == Value::Bool(true) {
        return Ok(());
    }
    let ty = schema["type"].as_str();
    let ok = match (ty, value) {
        (Some("object"), Value::Object(_))
        | (Some("array"), Value::Array(_))
        | (Some("string"), Value::String(_))
        | (Some("boolean"), Value::Bool(_))
        | (Some("number"), Value::Number(_))
        | (None, _) => true,
        (Some("integer"), Value::Number(n)) => n.is_i64() || n.is_u64(),
        _ => false,
    };
    if !ok {
        return Err(format!(
            "{path}: {value} is not of type {}",
            ty.unwrap_or("?")
        ));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < min
    {
        return Err(format!("{path}: {n} below {min}"));
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), value.as_f64())
        && n > max
    {
        return Err(format!("{path}: {n} above {max}"));
    }
    if let Value::Object(map) = value {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !map.contains_key(name) {
                return Err(format!("{path}: missing required {name}"));
            }
        }
        for (k, v) in map {
            let sub = match (
                schema["properties"].get(k),
                schema.get("additionalProperties"),
            ) {
                (Some(sub), _) => sub,
                (None, Some(sub)) if sub.is_object() => sub,
                _ if schema.get("properties").is_none()
                    && schema.get("additionalProperties").is_none() =>
                {
                    continue;
                }
                _ => return Err(format!("{path}: unknown field {k}")),
            };
            check(sub, v, &format!("{path}.{k}"))?;
        }
    }
    if let Value::Array(items) = value {
        for (i, item) in items.iter().enumerate() {
            check(&schema["items"], item, &format!("{path}[{i}]"))?;
        }
    }
    Ok(())
}

#[test]
fn sample_policies_pass_the_crd_schema_and_typos_do_not() {
    let crd = documents(&std::fs::read_to_string(deploy_dir().join("manifests/crd.yaml")).unwrap())
        .remove(0);
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let samples = "
apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules:
    - name: testers
      match:
        - headers: {end-user: {exact: jason}}
          cookies: {canary: {exact: always}}
          uri: {prefix: /beta}
          query: {beta: {exact: \"1\"}}
          method: GET
          os: [ios, android]
        - headers: {x-canary: {regex: \"v[0-9]+\", ignoreCase: true}, x-debug: {present: true}}
      route: [{version: v3, weight: 100}]
  default:
    route: [{version: v1, weight: 80}, {version: v2, weight: 20}]
  mirror: {version: v2, percent: 10.5}
  stickiness: {cookie: uid}
---
apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: ratings, namespace: shop}
spec:
  service: ratings
  default: {route: [{version: v1, weight: 1}]}
  stickiness: {header: x-user-id}
";
    for policy in serin_policy::parse_policies(samples).unwrap() {
        serin_policy::CompiledPolicy::new(&policy).expect("a valid sample");
        // What `serinctl get -o yaml` prints is what the API server must take.
        let value = serde_json::to_value(&policy).unwrap();
        check(schema, &value, "").unwrap_or_else(|e| panic!("{}: {e}", policy.metadata.name));
    }
    // Typos and wrong types the Rust model rejects, the schema rejects too.
    let bad = [
        (
            "spec.rules[0].matchs",
            serde_json::json!({"service": "a", "default": {"route": []}, "rules": [{"name": "r", "matchs": []}]}),
        ),
        (
            "weight",
            serde_json::json!({"service": "a", "default": {"route": [{"version": "v1", "weight": -1}]}}),
        ),
        (
            "weight",
            serde_json::json!({"service": "a", "default": {"route": [{"version": "v1", "weight": 2.5}]}}),
        ),
        ("service", serde_json::json!({"default": {"route": []}})),
        (
            "percent",
            serde_json::json!({"service": "a", "default": {"route": []}, "mirror": {"version": "v2", "percent": "ten"}}),
        ),
    ];
    for (what, spec) in bad {
        let policy = serde_json::json!({"apiVersion": "serin.io/v1", "kind": "TrafficPolicy", "metadata": {"name": "a", "namespace": "b"}, "spec": spec});
        assert!(
            check(schema, &policy, "").is_err(),
            "the schema took a bad {what}"
        );
        let model_takes = serde_json::from_value::<serin_policy::TrafficPolicy>(policy)
            .is_ok_and(|p| serin_policy::CompiledPolicy::new(&p).is_ok());
        assert!(!model_takes, "the model took a bad {what}");
    }
}

/// Renders the chart's templates the way `helm template --namespace serin-system` does for the
/// subset they use: `{{ .Values.a.b }}` and `{{ .Release.Namespace }}`.
fn render(template: &str, values: &Value) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed action") + start;
        let expr = rest[start + 2..end].trim();
        let value = if expr == ".Release.Namespace" {
            "serin-system".to_owned()
        } else if let Some(path) = expr.strip_prefix(".Values.") {
            let v = path.split('.').fold(values, |v, k| &v[k]);
            match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!("{expr}: unsupported value {other}"),
            }
        } else {
            panic!(
                "unsupported template action {{{{ {expr} }}}}: keep the chart in the subset this test renders"
            );
        };
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_helm_chart_renders_to_the_plain_manifests() {
    let chart = deploy_dir().join("helm/serin");
    let values = documents(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).remove(0);
    let mut rendered = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let text = render(&std::fs::read_to_string(file).unwrap(), &values);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let plain = std::fs::read_to_string(deploy_dir().join("manifests").join(&name))
            .unwrap_or_else(|e| panic!("templates/{name} has no plain manifest: {e}"));
        assert_eq!(
            documents(&text),
            documents(&plain),
            "templates/{name} renders differently from manifests/{name}"
        );
        rendered.push(name);
    }
    // Every plain manifest comes from the chart (the namespace is `helm install --create-namespace`,
    // the CRD is in crds/).
    for (file, _) in manifests(&deploy_dir().join("manifests")) {
        assert!(
            rendered.contains(&file) || file == "namespace.yaml" || file == "crd.yaml",
            "manifests/{file} is not rendered by the chart"
        );
    }
}
