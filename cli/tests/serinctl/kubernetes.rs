//! The offline Kubernetes verbs, through the real binary: `serinctl inject` on every golden file
//! of the injection tests (serin-control's `tests/golden/inject/`, the same files the webhook path
//! is checked against), and `serinctl convert` on canary Ingresses.

use std::path::{Path, PathBuf};

use crate::support::{one_error_line, serinctl};

/// No control plane is needed: the URL must not even be dialled.
const NOWHERE: &str = "http://127.0.0.1:1";

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../control-plane/tests/golden/inject")
}

#[test]
fn inject_writes_every_golden_output() {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 15, "only {} golden inputs", inputs.len());
    for input in inputs {
        let text = std::fs::read_to_string(&input).unwrap();
        let flags: Vec<&str> = text
            .lines()
            .find_map(|l| l.strip_prefix("# flags:"))
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let expected =
            std::fs::read_to_string(input.to_string_lossy().replace(".in.yaml", ".out.yaml"))
                .unwrap();
        // Once from the file, once from standard input.
        let file = input.to_string_lossy().into_owned();
        let mut args = vec!["inject", "-f", file.as_str()];
        args.extend(&flags);
        let out = serinctl(NOWHERE, &args, None);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "{file}");
        let mut args = vec!["inject", "-f", "-"];
        args.extend(&flags);
        let out = serinctl(NOWHERE, &args, Some(&text));
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            expected,
            "{file} from stdin"
        );
    }
}

#[test]
fn inject_errors_are_one_line_naming_the_document() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {traffic.serin.io/exclude-outbound-ports: \"http\"}\nspec:\n  containers: [{name: web}]\n";
    let line = one_error_line(&serinctl(NOWHERE, &["inject", "-f", "-"], Some(text)));
    assert!(line.contains("<stdin>: document 2 (Pod web)"), "{line}");
    assert!(
        line.contains("traffic.serin.io/exclude-outbound-ports"),
        "{line}"
    );
    let line = one_error_line(&serinctl(
        NOWHERE,
        &["inject", "-f", "/nonexistent/x.yaml"],
        None,
    ));
    assert!(line.contains("cannot read /nonexistent/x.yaml"), "{line}");
    let line = one_error_line(&serinctl(
        NOWHERE,
        &["inject", "-f", "-", "--kubernetes-version", "latest"],
        Some(""),
    ));
    assert!(line.contains("MAJOR.MINOR"), "{line}");
}

const INGRESSES: &str = "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: reviews
  namespace: bookinfo
spec:
  ingressClassName: nginx
  rules:
    - host: reviews.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: {name: reviews-v1, port: {number: 9080}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: reviews-canary
  namespace: bookinfo
  annotations:
    nginx.ingress.kubernetes.io/canary: \"true\"
    nginx.ingress.kubernetes.io/canary-by-header: x-canary
    nginx.ingress.kubernetes.io/canary-weight: \"20\"
spec:
  ingressClassName: nginx
  rules:
    - host: reviews.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: {name: reviews-v2, port: {number: 9080}}
";

#[test]
fn convert_prints_policies_that_parse_and_validate() {
    let out = serinctl(NOWHERE, &["convert", "-f", "-"], Some(INGRESSES));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("# from Ingress bookinfo/reviews-canary"),
        "{text}"
    );
    let policies = serin_policy::parse_policies(&text).unwrap();
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(
        (p.metadata.namespace.as_str(), p.spec.service.as_str()),
        ("bookinfo", "reviews")
    );
    let names: Vec<&str> = p.spec.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["canary-by-header-always", "canary-by-header-never"]);
    assert_eq!(
        p.spec.default.route,
        vec![
            serin_policy::VersionWeight::new("v1", 80),
            serin_policy::VersionWeight::new("v2", 20)
        ]
    );
    serin_policy::CompiledPolicy::new(p).expect("valid");

    let only_stable = INGRESSES.split("---\n").next().unwrap();
    let line = one_error_line(&serinctl(
        NOWHERE,
        &["convert", "-f", "-"],
        Some(only_stable),
    ));
    assert!(line.contains("no canary Ingress"), "{line}");
}

#[test]
fn inject_puts_the_mtls_port_and_the_control_planes_roots_into_the_sidecar() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop, labels: {app: web, version: v1}}\nspec:\n  containers: [{name: web, image: web}]\n";
    let dir = tempfile::tempdir().unwrap();
    let roots = serin_control::ca::generate_root("cluster.local")
        .unwrap()
        .cert_pem;
    let ca = dir.path().join("trust-bundle.pem");
    std::fs::write(&ca, &roots).unwrap();
    let ca = ca.to_str().unwrap();

    // By default: the mTLS URL, no roots (the first certificate request goes to 15010).
    let out = serinctl(NOWHERE, &["inject", "-f", "-"], Some(pod));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("SERIN_CONTROL_PLANE_TLS")
            && text.contains("https://serin-control.serin-system.svc:15012"),
        "{text}"
    );
    assert!(!text.contains("SERIN_CONTROL_PLANE_CA_PEM"), "{text}");

    // With the control plane's roots: each sidecar gets them, as from the webhook.
    let out = serinctl(
        NOWHERE,
        &["inject", "-f", "-", "--control-plane-ca", ca],
        Some(pod),
    );
    assert!(out.status.success(), "{out:?}");
    let docs: Vec<serde_json::Value> =
        serde_yaml_ng::Deserializer::from_str(std::str::from_utf8(&out.stdout).unwrap())
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
    let env = docs[0]["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .chain(docs[0]["spec"]["containers"].as_array())
        .flatten()
        .filter(|c| c["name"] == "serin-proxy")
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .find(|e| e["name"] == "SERIN_CONTROL_PLANE_CA_PEM")
        .expect("the roots in the sidecar's environment");
    assert_eq!(env["value"], roots.as_str());

    // Off: neither; roots without the mTLS port, or a file that holds none, fail in one line.
    let out = serinctl(
        NOWHERE,
        &["inject", "-f", "-", "--sidecar-control-plane-tls", "off"],
        Some(pod),
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("SERIN_CONTROL_PLANE_TLS"));
    let line = one_error_line(&serinctl(
        NOWHERE,
        &[
            "inject",
            "-f",
            "-",
            "--sidecar-control-plane-tls",
            "off",
            "--control-plane-ca",
            ca,
        ],
        Some(pod),
    ));
    assert!(line.contains("only for the mTLS port"), "{line}");
    let line = one_error_line(&serinctl(
        NOWHERE,
        &["inject", "-f", "-", "--control-plane-ca", "/etc/hostname"],
        Some(pod),
    ));
    assert!(
        line.contains("--control-plane-ca /etc/hostname: no certificate"),
        "{line}"
    );
}
