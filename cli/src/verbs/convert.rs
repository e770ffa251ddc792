//! `serinctl convert -f ingress.yaml`: ingress-nginx and Higress canary Ingresses as
//! TrafficPolicies with the same routing.
//!
//! ingress-nginx pairs a stable Ingress with a canary Ingress (`canary: "true"`) for the same host
//! and path, each naming its own Service. Serin has one Service whose versions are the pods'
//! `version` label, so the pair becomes one policy for the stable Service's name (or the common
//! stem of both names: `reviews-v1` + `reviews-v2` → service `reviews`, versions `v1`, `v2`).
//!
//! The canary rules keep ingress-nginx's semantics and precedence (header > cookie > weight), as
//! rule order:
//! - `canary-by-header: H`: `H: always` → canary, `H: never` → stable, any other value falls
//!   through to the next rule.
//! - with `canary-by-header-value: V`: `H: V` → canary (and nothing else: `never` is not special).
//! - with `canary-by-header-pattern: P` (ignored when a value is given): a value in which the
//!   regex `P` finds a match → canary (nginx searches; Serin regexes match whole values, so `P`
//!   becomes `.*(?:P).*`).
//! - `canary-by-cookie: C`: cookie `C=always` → canary, `C=never` → stable.
//! - `canary-weight: W` of `canary-weight-total: T` (default 100): the default route,
//!   `stable T-W, canary W`; without a weight, all to stable.
//!
//! `higress.io/...` annotations are read like `nginx.ingress.kubernetes.io/...` and win where both
//! are set.

use std::collections::BTreeMap;
use std::io::Write;

use k8s_openapi::api::networking::v1::Ingress;
use serde::Deserialize;
use serin_policy::edit::nginx_canary_rules;
use serin_policy::{
    MatchBlock, Metadata, PolicySpec, Route, Rule, StringMatch, TrafficPolicy, VersionWeight,
};

use crate::cli::ConvertArgs;
use crate::error::CliError;

/// The annotation prefixes read, the later one winning.
const PREFIXES: [&str; 2] = ["nginx.ingress.kubernetes.io/", "higress.io/"];

/// Writes one TrafficPolicy document per canary, each under a comment naming its source.
pub fn convert(namespace: &str, args: &ConvertArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (source, text) = super::read_input(&args.file)?;
    let converted =
        convert_text(&text, namespace).map_err(|e| CliError::Input(format!("{source}: {e}")))?;
    if converted.is_empty() {
        return Err(CliError::Input(format!(
            "{source}: no canary Ingress (annotation nginx.ingress.kubernetes.io/canary or higress.io/canary: \"true\")"
        )));
    }
    let mut text = String::new();
    for (i, c) in converted.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&format!("# {}\n", c.source));
        let yaml = serde_yaml_ng::to_string(&c.policy)
            .map_err(|e| CliError::Input(format!("cannot encode YAML: {e}")))?;
        text.push_str(&yaml);
    }
    out.write_all(text.as_bytes())
        .map_err(|e| CliError::Input(format!("cannot write the output: {e}")))
}

/// One converted canary.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// Where it came from, in words.
    pub source: String,
    /// The policy.
    pub policy: TrafficPolicy,
}

/// The canary annotations of one Ingress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Canary {
    by_header: Option<String>,
    header_value: Option<String>,
    header_pattern: Option<String>,
    by_cookie: Option<String>,
    weight: Option<u32>,
    weight_total: Option<u32>,
}

/// An Ingress backend: host, path and Service name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Backend {
    host: String,
    path: String,
    service: String,
}

/// Converts every canary Ingress in `text` (multi-document YAML; other kinds are skipped).
pub fn convert_text(text: &str, default_namespace: &str) -> Result<Vec<Converted>, String> {
    let mut ingresses = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc)
            .map_err(|e| format!("document {}: not valid YAML: {e}", i + 1))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some("Ingress") {
            continue;
        }
        let ingress: Ingress = serde_json::from_value(value)
            .map_err(|e| format!("document {}: not a valid Ingress: {e}", i + 1))?;
        ingresses.push(ingress);
    }
    let namespace_of = |ing: &Ingress| {
        ing.metadata
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| default_namespace.to_owned())
    };
    let mut out: Vec<Converted> = Vec::new();
    for canary_ingress in &ingresses {
        let name = canary_ingress.metadata.name.clone().unwrap_or_default();
        let namespace = namespace_of(canary_ingress);
        let annotations = annotations(canary_ingress);
        if annotations.get("canary").map(String::as_str) != Some("true") {
            continue;
        }
        let what = format!("Ingress {namespace}/{name}");
        let canary = canary_annotations(&annotations).map_err(|e| format!("{what}: {e}"))?;
        let canary_backends = backends(canary_ingress);
        if canary_backends.is_empty() {
            return Err(format!("{what}: has no backend Service"));
        }
        for backend in canary_backends {
            let stable = ingresses
                .iter()
                .filter(|i| namespace_of(i) == namespace)
                .filter(|i| annotations_of_is_stable(i))
                .flat_map(backends)
                .find(|b| b.host == backend.host && b.path == backend.path)
                .ok_or_else(|| {
                    format!(
                        "{what}: no stable Ingress in the input for host {:?} path {:?}: give both Ingresses",
                        backend.host, backend.path
                    )
                })?;
            let (service, stable_version, canary_version) =
                versions(&stable.service, &backend.service);
            let policy = policy(
                &namespace,
                &service,
                &stable_version,
                &canary_version,
                &canary,
            )
            .map_err(|e| format!("{what}: {e}"))?;
            let source = format!(
                "from {what} (host {:?}, path {:?}): Service {} is version {stable_version}, Service {} is version {canary_version} of service {service}",
                backend.host, backend.path, stable.service, backend.service
            );
            match out.iter().find(|c| {
                c.policy.metadata.namespace == namespace && c.policy.spec.service == service
            }) {
                Some(existing) if existing.policy == policy => {}
                Some(existing) => {
                    return Err(format!(
                        "{what}: service {namespace}/{service} already has different canary rules ({})",
                        existing.source
                    ));
                }
                None => out.push(Converted { source, policy }),
            }
        }
    }
    Ok(out)
}

fn annotations_of_is_stable(ingress: &Ingress) -> bool {
    annotations(ingress).get("canary").map(String::as_str) != Some("true")
}

/// The canary-related annotations by short name (`canary-weight`), higress.io winning.
fn annotations(ingress: &Ingress) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let all = ingress.metadata.annotations.clone().unwrap_or_default();
    for prefix in PREFIXES {
        for (k, v) in &all {
            if let Some(short) = k.strip_prefix(prefix) {
                out.insert(short.to_owned(), v.trim().to_owned());
            }
        }
    }
    out
}

fn canary_annotations(a: &BTreeMap<String, String>) -> Result<Canary, String> {
    let number = |key: &str| -> Result<Option<u32>, String> {
        a.get(key)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| format!("annotation {key} {v:?} is not a whole number"))
            })
            .transpose()
    };
    let text = |key: &str| a.get(key).filter(|v| !v.is_empty()).cloned();
    let canary = Canary {
        by_header: text("canary-by-header"),
        header_value: text("canary-by-header-value"),
        header_pattern: text("canary-by-header-pattern"),
        by_cookie: text("canary-by-cookie"),
        weight: number("canary-weight")?,
        weight_total: number("canary-weight-total")?,
    };
    if canary.by_header.is_none()
        && (canary.header_value.is_some() || canary.header_pattern.is_some())
    {
        return Err(
            "canary-by-header-value and canary-by-header-pattern need canary-by-header".to_owned(),
        );
    }
    let total = canary.weight_total.unwrap_or(100);
    if total == 0 {
        return Err("canary-weight-total is 0".to_owned());
    }
    if canary.weight.is_some_and(|w| w > total) {
        return Err(format!(
            "canary-weight {} is more than canary-weight-total {total}",
            canary.weight.unwrap_or_default()
        ));
    }
    Ok(canary)
}

fn backends(ingress: &Ingress) -> Vec<Backend> {
    let mut out = Vec::new();
    let spec = ingress.spec.clone().unwrap_or_default();
    if let Some(service) = spec.default_backend.and_then(|b| b.service) {
        out.push(Backend {
            host: String::new(),
            path: "/".to_owned(),
            service: service.name,
        });
    }
    for rule in spec.rules.unwrap_or_default() {
        let host = rule.host.unwrap_or_default();
        for path in rule.http.map(|h| h.paths).unwrap_or_default() {
            if let Some(service) = path.backend.service {
                out.push(Backend {
                    host: host.clone(),
                    path: path.path.unwrap_or_else(|| "/".to_owned()),
                    service: service.name,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Serin service and the two versions for a stable and a canary Service name.
fn versions(stable: &str, canary: &str) -> (String, String, String) {
    // reviews-v1 + reviews-v2 → reviews, v1, v2 (the stem up to the last '-' they share).
    if let (Some((s_stem, s_ver)), Some((c_stem, c_ver))) =
        (stable.rsplit_once('-'), canary.rsplit_once('-'))
        && s_stem == c_stem
        && !s_stem.is_empty()
    {
        return (s_stem.to_owned(), s_ver.to_owned(), c_ver.to_owned());
    }
    // echo + echo-canary → echo, stable, canary.
    (stable.to_owned(), "stable".to_owned(), "canary".to_owned())
}

fn policy(
    namespace: &str,
    service: &str,
    stable: &str,
    canary: &str,
    c: &Canary,
) -> Result<TrafficPolicy, String> {
    let mut rules = Vec::new();
    let to_canary = |name: &str, header: &str, m: StringMatch| Rule {
        name: name.to_owned(),
        matches: vec![MatchBlock {
            headers: [(header.to_owned(), m)].into(),
            ..MatchBlock::default()
        }],
        route: vec![VersionWeight::new(canary, 100)],
    };
    if let Some(header) = &c.by_header {
        if let Some(value) = &c.header_value {
            rules.push(to_canary(
                "canary-by-header-value",
                header,
                StringMatch::exact(value),
            ));
        } else if let Some(pattern) = &c.header_pattern {
            rules.push(to_canary(
                "canary-by-header-pattern",
                header,
                StringMatch::regex(format!(".*(?:{pattern}).*")),
            ));
        } else {
            rules.extend(nginx_canary_rules(stable, canary, Some(header), None));
        }
    }
    if let Some(cookie) = &c.by_cookie {
        rules.extend(nginx_canary_rules(stable, canary, None, Some(cookie)));
    }
    let total = c.weight_total.unwrap_or(100);
    let weight = c.weight.unwrap_or(0);
    let route: Vec<VersionWeight> = [(stable, total - weight), (canary, weight)]
        .into_iter()
        .filter(|(_, w)| *w > 0)
        .map(|(v, w)| VersionWeight::new(v, w))
        .collect();
    let policy = TrafficPolicy {
        api_version: serin_policy::model::API_VERSION.to_owned(),
        kind: serin_policy::model::KIND.to_owned(),
        metadata: Metadata {
            name: service.to_owned(),
            namespace: namespace.to_owned(),
            generation: None,
            labels: None,
        },
        spec: PolicySpec {
            service: service.to_owned(),
            rules,
            default: Route { route },
            mirror: None,
            stickiness: None,
        },
    };
    if let Err(errors) = serin_policy::CompiledPolicy::new(&policy) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "the converted policy is not valid: {}",
            text.join("; ")
        ));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serin_policy::CompiledPolicy;

    /// A stable Ingress for `echo-v1` and a canary one for `echo-v2` with `annotations`.
    fn pair(annotations: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: echo
  namespace: web
spec:
  ingressClassName: nginx
  rules:
    - host: echo.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: {{name: echo-v1, port: {{number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: echo-canary
  namespace: web
  annotations:
    nginx.ingress.kubernetes.io/canary: \"true\"
{annotations}
spec:
  ingressClassName: nginx
  rules:
    - host: echo.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend:
              service: {{name: echo-v2, port: {{number: 80}}}}
"
        )
    }

    fn one(annotations: &str) -> TrafficPolicy {
        let mut all = convert_text(&pair(annotations), "default").unwrap();
        assert_eq!(all.len(), 1);
        let p = all.remove(0).policy;
        assert_eq!(
            (p.metadata.namespace.as_str(), p.spec.service.as_str()),
            ("web", "echo")
        );
        p
    }

    /// Which version a request with these headers goes to (`random` picks inside a split).
    fn routed(p: &TrafficPolicy, headers: &[(&str, &str)], random: u32) -> String {
        let compiled = CompiledPolicy::new(p).unwrap();
        let mut req = http::Request::get("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).unwrap();
        compiled.decide(&req, random, |_| true).chosen.to_owned()
    }

    #[test]
    fn header_always_and_never_then_fall_through() {
        let p = one("    nginx.ingress.kubernetes.io/canary-by-header: x-canary");
        assert_eq!(routed(&p, &[("x-canary", "always")], 0), "v2");
        assert_eq!(routed(&p, &[("x-canary", "never")], 0), "v1");
        assert_eq!(routed(&p, &[("x-canary", "maybe")], 0), "v1");
        assert_eq!(routed(&p, &[], 0), "v1");
        assert_eq!(p.spec.default.route, vec![VersionWeight::new("v1", 100)]);
    }

    #[test]
    fn header_value_replaces_always_and_never_is_not_special() {
        let p = one("    nginx.ingress.kubernetes.io/canary-by-header: x-region
    nginx.ingress.kubernetes.io/canary-by-header-value: beijing");
        assert_eq!(routed(&p, &[("x-region", "beijing")], 0), "v2");
        assert_eq!(routed(&p, &[("x-region", "always")], 0), "v1");
        assert_eq!(routed(&p, &[("x-region", "shanghai")], 0), "v1");
        assert_eq!(p.spec.rules.len(), 1);
    }

    #[test]
    fn header_pattern_searches_and_a_value_wins_over_it() {
        let p = one("    nginx.ingress.kubernetes.io/canary-by-header: x-user
    nginx.ingress.kubernetes.io/canary-by-header-pattern: ^(alice|bob)");
        assert_eq!(routed(&p, &[("x-user", "alice-test")], 0), "v2");
        assert_eq!(routed(&p, &[("x-user", "carol")], 0), "v1");
        let p = one("    nginx.ingress.kubernetes.io/canary-by-header: x-user
    nginx.ingress.kubernetes.io/canary-by-header-value: carol
    nginx.ingress.kubernetes.io/canary-by-header-pattern: alice");
        assert_eq!(routed(&p, &[("x-user", "carol")], 0), "v2");
        assert_eq!(routed(&p, &[("x-user", "alice")], 0), "v1");
    }

    #[test]
    fn cookie_always_and_never() {
        let p = one("    nginx.ingress.kubernetes.io/canary-by-cookie: users_from_beijing");
        assert_eq!(
            routed(&p, &[("cookie", "a=1; users_from_beijing=always")], 0),
            "v2"
        );
        assert_eq!(
            routed(&p, &[("cookie", "users_from_beijing=never")], 0),
            "v1"
        );
        assert_eq!(routed(&p, &[("cookie", "users_from_beijing=yes")], 0), "v1");
    }

    #[test]
    fn weight_and_weight_total_split_the_default_route() {
        let p = one("    nginx.ingress.kubernetes.io/canary-weight: \"30\"");
        assert!(p.spec.rules.is_empty());
        assert_eq!(
            p.spec.default.route,
            vec![VersionWeight::new("v1", 70), VersionWeight::new("v2", 30)]
        );
        let p = one("    nginx.ingress.kubernetes.io/canary-weight: \"5\"
    nginx.ingress.kubernetes.io/canary-weight-total: \"1000\"");
        assert_eq!(
            p.spec.default.route,
            vec![VersionWeight::new("v1", 995), VersionWeight::new("v2", 5)]
        );
        let p = one("    nginx.ingress.kubernetes.io/canary-weight: \"100\"");
        assert_eq!(p.spec.default.route, vec![VersionWeight::new("v2", 100)]);
        assert_eq!(routed(&p, &[], 0), "v2");
    }

    #[test]
    fn header_and_weight() {
        let p = one("    nginx.ingress.kubernetes.io/canary-by-header: x-canary
    nginx.ingress.kubernetes.io/canary-weight: \"20\"");
        // The header decides when it says always or never, whatever the weight.
        assert_eq!(routed(&p, &[("x-canary", "always")], 0), "v2");
        assert_eq!(routed(&p, &[("x-canary", "never")], u32::MAX), "v1");
        // Otherwise the 80/20 split: the lowest draw is stable, the highest canary.
        assert_eq!(routed(&p, &[("x-canary", "other")], 0), "v1");
        assert_eq!(routed(&p, &[], u32::MAX), "v2");
        assert_eq!(
            p.spec.default.route,
            vec![VersionWeight::new("v1", 80), VersionWeight::new("v2", 20)]
        );
    }

    #[test]
    fn header_then_cookie_then_weight() {
        let p = one("    nginx.ingress.kubernetes.io/canary-by-header: x-canary
    nginx.ingress.kubernetes.io/canary-by-cookie: canary
    nginx.ingress.kubernetes.io/canary-weight: \"100\"");
        // The header says never: stable, whatever the cookie and the weight say.
        assert_eq!(
            routed(&p, &[("x-canary", "never"), ("cookie", "canary=always")], 0),
            "v1"
        );
        // No header: the cookie decides.
        assert_eq!(routed(&p, &[("cookie", "canary=never")], 0), "v1");
        // Neither: the weight (100% canary).
        assert_eq!(routed(&p, &[("x-canary", "other")], 0), "v2");
    }

    #[test]
    fn higress_annotations_read_alike_and_win() {
        let text = pair(
            "    higress.io/canary-by-header: x-higress
    nginx.ingress.kubernetes.io/canary-by-header: x-nginx
    higress.io/canary-weight: \"10\"",
        );
        let p = convert_text(&text, "default").unwrap().remove(0).policy;
        assert_eq!(routed(&p, &[("x-higress", "always")], 0), "v2");
        assert_eq!(routed(&p, &[("x-nginx", "always")], 0), "v1");
        assert_eq!(p.spec.default.route[1], VersionWeight::new("v2", 10));
    }

    #[test]
    fn problems_are_named() {
        let err = |a: &str| convert_text(&pair(a), "default").unwrap_err();
        assert!(
            err("    nginx.ingress.kubernetes.io/canary-weight: ten")
                .contains("not a whole number")
        );
        assert!(
            err("    nginx.ingress.kubernetes.io/canary-weight: \"120\"").contains("more than")
        );
        assert!(
            err("    nginx.ingress.kubernetes.io/canary-by-header-value: x")
                .contains("need canary-by-header")
        );
        let only_canary = pair("").split("---\n").nth(1).unwrap().to_owned();
        let e = convert_text(&only_canary, "default").unwrap_err();
        assert!(
            e.contains("web/echo-canary") && e.contains("no stable Ingress"),
            "{e}"
        );
    }

    #[test]
    fn service_names_map_to_versions() {
        assert_eq!(
            versions("reviews-v1", "reviews-v2"),
            ("reviews".into(), "v1".into(), "v2".into())
        );
        assert_eq!(
            versions("echo", "echo-canary"),
            ("echo".into(), "stable".into(), "canary".into())
        );
    }
}
