//! The static `--config` file: a `serin.v1.Snapshot` in the proto3 JSON mapping (lowerCamelCase
//! field names, enums by name or number, omitted fields at their defaults), written as JSON or
//! YAML. It is read into the wire types and converted like a pushed snapshot, so a file and the
//! control plane go through one validation path.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer, de};
use serin_proto::v1;

use super::Snapshot;
use super::proto::InvalidSnapshot;

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a snapshot in JSON or YAML.
    #[error("failed to parse config file {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        reason: String,
    },
    /// The snapshot parsed but a field is unusable.
    #[error("config file {path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The field at fault.
        source: InvalidSnapshot,
    },
}

/// Reads and converts the snapshot in `path`. JSON when the file starts with `{`, else YAML
/// (which also reads JSON, but with less precise errors).
pub fn load(path: &Path) -> Result<Snapshot, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    let version = format!("file:{shown}");
    parse(&text, version).map_err(|e| match e {
        ParseError::Syntax(reason) => FileError::Parse {
            path: shown,
            reason,
        },
        ParseError::Invalid(source) => FileError::Invalid {
            path: shown,
            source,
        },
    })
}

/// Why a text is not a usable snapshot.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON/YAML of the snapshot's shape.
    Syntax(String),
    /// A field's value is unusable.
    Invalid(InvalidSnapshot),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Syntax(reason) => f.write_str(reason),
            ParseError::Invalid(e) => e.fmt(f),
        }
    }
}

/// Parses a snapshot text (JSON or YAML) and converts it, giving it `version`.
pub fn parse(text: &str, version: String) -> Result<Snapshot, ParseError> {
    let file: SnapshotFile = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| ParseError::Syntax(e.to_string()))?
    };
    let wire = v1::Snapshot::try_from(file).map_err(ParseError::Syntax)?;
    Snapshot::from_proto(version, wire).map_err(ParseError::Invalid)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct SnapshotFile {
    services: Vec<ServiceFile>,
    endpoints: Vec<ServiceEndpointsFile>,
    policies: Vec<PolicyFile>,
    mtls: Option<MeshTlsFile>,
}

/// `serin.v1.MeshTls`: modes by enum name (`MTLS_MODE_STRICT`) or short name (`strict`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct MeshTlsFile {
    #[serde(alias = "default_mode", deserialize_with = "mtls_mode")]
    default_mode: i32,
    #[serde(deserialize_with = "mtls_modes")]
    namespaces: HashMap<String, i32>,
}

/// An mTLS mode by name: `MTLS_MODE_STRICT` or `strict`.
fn mtls_mode_named(name: &str) -> Option<i32> {
    let upper = name.to_ascii_uppercase();
    v1::MtlsMode::from_str_name(&upper)
        .or_else(|| v1::MtlsMode::from_str_name(&format!("MTLS_MODE_{upper}")))
        .map(|m| m as i32)
}

fn mtls_mode<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    let name = String::deserialize(d)?;
    mtls_mode_named(&name).ok_or_else(|| {
        de::Error::custom(format!(
            "unknown mtls mode {name:?} (expected permissive or strict)"
        ))
    })
}

fn mtls_modes<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<String, i32>, D::Error> {
    HashMap::<String, String>::deserialize(d)?
        .into_iter()
        .map(|(ns, name)| match mtls_mode_named(&name) {
            Some(mode) => Ok((ns, mode)),
            None => Err(de::Error::custom(format!(
                "unknown mtls mode {name:?} for namespace {ns} (expected permissive or strict)"
            ))),
        })
        .collect()
}

/// `serin.v1.TrafficPolicy` in proto3 JSON: the oneofs (`StringMatch`, `UriMatch`,
/// `Stickiness`) are flattened, so this is the YAML shape of DESIGN.md without `apiVersion` and
/// `kind`, with OS values as enum names (`CLIENT_OS_IOS`, the short `ios` is accepted too).
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct PolicyFile {
    metadata: PolicyMetadataFile,
    spec: PolicySpecFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct PolicyMetadataFile {
    name: String,
    namespace: String,
    #[serde(deserialize_with = "uint64")]
    generation: u64,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    /// Informational; not part of the routing model.
    #[serde(alias = "create_time")]
    create_time: Option<String>,
    /// Informational; not part of the routing model.
    #[serde(alias = "update_time")]
    update_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpecFile {
    service: String,
    rules: Vec<RuleFile>,
    default: Option<RouteFile>,
    mirror: Option<MirrorFile>,
    stickiness: Option<StickinessFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(rename = "match")]
    matches: Vec<MatchBlockFile>,
    route: Vec<VersionWeightFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RouteFile {
    route: Vec<VersionWeightFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct VersionWeightFile {
    version: String,
    weight: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MatchBlockFile {
    headers: HashMap<String, StringMatchFile>,
    cookies: HashMap<String, StringMatchFile>,
    uri: Option<UriMatchFile>,
    query: HashMap<String, StringMatchFile>,
    method: String,
    #[serde(deserialize_with = "client_os")]
    os: Vec<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct StringMatchFile {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    present: Option<bool>,
    #[serde(alias = "ignore_case")]
    ignore_case: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct UriMatchFile {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    #[serde(alias = "ignore_case")]
    ignore_case: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct MirrorFile {
    version: String,
    percent: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StickinessFile {
    cookie: Option<String>,
    header: Option<String>,
}

/// A proto3 JSON `uint64`: a number or a decimal string.
fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TextOrNumber {
        Number(u64),
        Text(String),
    }
    match TextOrNumber::deserialize(d)? {
        TextOrNumber::Number(n) => Ok(n),
        TextOrNumber::Text(t) => t
            .parse()
            .map_err(|_| de::Error::custom(format!("{t:?} is not a uint64"))),
    }
}

/// Proto3 JSON `ClientOs` values: enum names (`CLIENT_OS_IOS`), the policy's short names
/// (`ios`) or numbers. An unknown name is refused here, naming what is accepted.
fn client_os<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(i32),
    }
    Vec::<NameOrNumber>::deserialize(d)?
        .into_iter()
        .map(|v| match v {
            NameOrNumber::Number(n) => Ok(n),
            NameOrNumber::Name(name) => v1::ClientOs::from_str_name(&name)
                .or_else(|| {
                    let short = serin_policy::proto::os_value(&name);
                    (short != v1::ClientOs::Unspecified).then_some(short)
                })
                .map(|os| os as i32)
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "unknown client OS {name:?} (expected android, ios, ipados, macos, \
                         windows, linux, chromeos, harmonyos or other, or CLIENT_OS_<NAME>)"
                    ))
                }),
        })
        .collect()
}

/// A flattened oneof with more than one member set.
fn several(what: &str, names: &[&str]) -> String {
    format!("{what}: only one of {} may be set", names.join(", "))
}

impl TryFrom<PolicyFile> for v1::TrafficPolicy {
    type Error = String;

    fn try_from(p: PolicyFile) -> Result<Self, String> {
        let weights = |list: Vec<VersionWeightFile>| {
            list.into_iter()
                .map(|w| v1::VersionWeight {
                    version: w.version,
                    weight: w.weight,
                })
                .collect::<Vec<_>>()
        };
        let string_matches = |map: HashMap<String, StringMatchFile>, path: &str| {
            map.into_iter()
                .map(|(k, m)| {
                    use v1::string_match::Kind;
                    let set = [
                        m.exact.map(Kind::Exact),
                        m.prefix.map(Kind::Prefix),
                        m.regex.map(Kind::Regex),
                        m.present.map(Kind::Present),
                    ];
                    let mut set = set.into_iter().flatten();
                    let kind = set.next();
                    if set.next().is_some() {
                        return Err(several(
                            &format!("{path}.{k}"),
                            &["exact", "prefix", "regex", "present"],
                        ));
                    }
                    Ok((
                        k,
                        v1::StringMatch {
                            kind,
                            ignore_case: m.ignore_case,
                        },
                    ))
                })
                .collect::<Result<HashMap<_, _>, String>>()
        };
        let mut rules = Vec::with_capacity(p.spec.rules.len());
        for (i, r) in p.spec.rules.into_iter().enumerate() {
            let mut blocks = Vec::with_capacity(r.matches.len());
            for (j, b) in r.matches.into_iter().enumerate() {
                let path = format!("spec.rules[{i}].match[{j}]");
                let uri = match b.uri {
                    None => None,
                    Some(u) => {
                        use v1::uri_match::Kind;
                        let set = [
                            u.exact.map(Kind::Exact),
                            u.prefix.map(Kind::Prefix),
                            u.regex.map(Kind::Regex),
                        ];
                        let mut set = set.into_iter().flatten();
                        let kind = set.next();
                        if set.next().is_some() {
                            return Err(several(
                                &format!("{path}.uri"),
                                &["exact", "prefix", "regex"],
                            ));
                        }
                        Some(v1::UriMatch {
                            kind,
                            ignore_case: u.ignore_case,
                        })
                    }
                };
                blocks.push(v1::MatchBlock {
                    headers: string_matches(b.headers, &format!("{path}.headers"))?,
                    cookies: string_matches(b.cookies, &format!("{path}.cookies"))?,
                    uri,
                    query: string_matches(b.query, &format!("{path}.query"))?,
                    method: b.method,
                    os: b.os,
                });
            }
            rules.push(v1::Rule {
                name: r.name,
                r#match: blocks,
                route: weights(r.route),
            });
        }
        let stickiness = match p.spec.stickiness {
            None => None,
            Some(StickinessFile {
                cookie: Some(_),
                header: Some(_),
            }) => return Err(several("spec.stickiness", &["cookie", "header"])),
            Some(s) => Some(v1::Stickiness {
                key: s
                    .cookie
                    .map(v1::stickiness::Key::Cookie)
                    .or(s.header.map(v1::stickiness::Key::Header)),
            }),
        };
        Ok(v1::TrafficPolicy {
            metadata: Some(v1::PolicyMetadata {
                name: p.metadata.name,
                namespace: p.metadata.namespace,
                generation: p.metadata.generation,
                labels: p.metadata.labels,
                annotations: p.metadata.annotations,
                create_time: None,
                update_time: None,
            }),
            spec: Some(v1::TrafficPolicySpec {
                service: p.spec.service,
                rules,
                default: p.spec.default.map(|d| v1::DefaultRoute {
                    route: weights(d.route),
                }),
                mirror: p.spec.mirror.map(|m| v1::Mirror {
                    version: m.version,
                    percent: m.percent,
                }),
                stickiness,
            }),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ServiceFile {
    name: String,
    namespace: String,
    vips: Vec<String>,
    hostnames: Vec<String>,
    ports: Vec<ServicePortFile>,
    labels: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ServicePortFile {
    port: u32,
    name: String,
    #[serde(deserialize_with = "protocol")]
    protocol: i32,
    #[serde(alias = "target_port")]
    target_port: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct ServiceEndpointsFile {
    service: String,
    namespace: String,
    endpoints: Vec<EndpointFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct EndpointFile {
    addresses: Vec<String>,
    ports: Vec<EndpointPortFile>,
    #[serde(alias = "pod_name")]
    pod_name: String,
    version: String,
    labels: HashMap<String, String>,
    ready: bool,
    weight: u32,
    #[serde(alias = "service_account")]
    service_account: String,
    #[serde(alias = "node_name")]
    node_name: String,
    identity: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct EndpointPortFile {
    name: String,
    port: u32,
}

/// A proto3 JSON enum: its value name (`PROTOCOL_HTTP1`) or number.
fn protocol<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrNumber {
        Name(String),
        Number(i32),
    }
    match NameOrNumber::deserialize(d)? {
        NameOrNumber::Number(n) => Ok(n),
        NameOrNumber::Name(name) => v1::Protocol::from_str_name(&name)
            .map(|p| p as i32)
            .ok_or_else(|| {
                de::Error::custom(format!(
                    "unknown protocol {name:?} (expected PROTOCOL_UNSPECIFIED, PROTOCOL_HTTP1, \
                     PROTOCOL_HTTP2, PROTOCOL_GRPC or PROTOCOL_TCP)"
                ))
            }),
    }
}

impl TryFrom<SnapshotFile> for v1::Snapshot {
    type Error = String;

    fn try_from(f: SnapshotFile) -> Result<Self, String> {
        let policies = f
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| v1::TrafficPolicy::try_from(p).map_err(|e| format!("policies[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(v1::Snapshot {
            services: f
                .services
                .into_iter()
                .map(|s| v1::Service {
                    name: s.name,
                    namespace: s.namespace,
                    vips: s.vips,
                    hostnames: s.hostnames,
                    ports: s
                        .ports
                        .into_iter()
                        .map(|p| v1::ServicePort {
                            port: p.port,
                            name: p.name,
                            protocol: p.protocol,
                            target_port: p.target_port,
                        })
                        .collect(),
                    labels: s.labels,
                })
                .collect(),
            endpoints: f
                .endpoints
                .into_iter()
                .map(|e| v1::ServiceEndpoints {
                    service: e.service,
                    namespace: e.namespace,
                    endpoints: e
                        .endpoints
                        .into_iter()
                        .map(|ep| v1::Endpoint {
                            addresses: ep.addresses,
                            ports: ep
                                .ports
                                .into_iter()
                                .map(|p| v1::EndpointPort {
                                    name: p.name,
                                    port: p.port,
                                })
                                .collect(),
                            pod_name: ep.pod_name,
                            version: ep.version,
                            labels: ep.labels,
                            ready: ep.ready,
                            weight: ep.weight,
                            service_account: ep.service_account,
                            node_name: ep.node_name,
                            identity: ep.identity,
                        })
                        .collect(),
                })
                .collect(),
            policies,
            mtls: f.mtls.map(|m| v1::MeshTls {
                default_mode: m.default_mode,
                namespaces: m.namespaces,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Protocol;

    const YAML: &str = r#"
services:
  - name: reviews
    namespace: default
    vips: ["10.96.0.10"]
    hostnames: [reviews, reviews.default]
    ports:
      - {port: 9080, name: http, protocol: PROTOCOL_HTTP1, targetPort: 8080}
      - {port: 9090, protocol: 3}
endpoints:
  - service: reviews
    namespace: default
    endpoints:
      - addresses: ["10.244.0.5"]
        podName: reviews-v1-0
        version: v1
        ready: true
        ports: [{name: http, port: 8081}]
"#;

    #[test]
    fn yaml_in_the_proto3_json_shape_parses() {
        let s = parse(YAML, "1".into()).unwrap();
        let svc = &s.services[0];
        assert_eq!(svc.port(9080).unwrap().protocol, Protocol::Http1);
        assert_eq!(svc.port(9090).unwrap().protocol, Protocol::Grpc);
        let ep = &s.endpoints_of("default", "reviews")[0];
        assert_eq!(ep.pod_name, "reviews-v1-0");
        assert_eq!(ep.port_for(svc.port(9080).unwrap()), 8081);
        assert!(ep.ready);
    }

    #[test]
    fn json_parses_the_same() {
        let json = r#"{"services":[{"name":"reviews","namespace":"default","vips":["10.96.0.10"],
            "ports":[{"port":9080,"protocol":"PROTOCOL_TCP","targetPort":8080}]}],
            "endpoints":[],"policies":[{"metadata":{"name":"x","namespace":"default","generation":"4"},
            "spec":{"service":"reviews","default":{"route":[{"version":"v1","weight":1}]}}}]}"#;
        let s = parse(json, "1".into()).unwrap();
        assert_eq!(s.services[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.policies.len(), 1);
        assert_eq!(s.policies[0].compiled.generation(), Some(4));
    }

    const POLICY: &str = r#"
policies:
  - metadata: {name: reviews, namespace: default}
    spec:
      service: reviews
      rules:
        - name: testers
          match:
            - headers: {end-user: {exact: jason, ignoreCase: true}}
              uri: {prefix: /beta}
              os: [CLIENT_OS_IOS, android, 8]
          route: [{version: v3, weight: 100}]
      default: {route: [{version: v1, weight: 80}, {version: v2, weight: 20}]}
      mirror: {version: v2, percent: 10}
      stickiness: {cookie: uid}
"#;

    #[test]
    fn policies_in_the_proto3_json_shape_are_compiled() {
        let s = parse(POLICY, "1".into()).unwrap();
        let p = s.policy_of("default", "reviews").unwrap();
        assert_eq!(p.compiled.rule_name(0), "testers");
        assert_eq!(p.compiled.mirror_policy(), Some(("v2", 10.0)));
        assert!(p.compiled.needs_os());
        assert_eq!(
            p.policy.spec.rules[0].matches[0].os.as_deref(),
            Some(
                &[
                    "ios".to_owned(),
                    "android".to_owned(),
                    "harmonyos".to_owned()
                ][..]
            )
        );
    }

    #[test]
    fn policy_errors_name_the_policy_and_the_field() {
        let err = parse(&POLICY.replace("percent: 10", "percent: 0"), "1".into()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid policy default/reviews: spec.mirror.percent: "),
            "{err}"
        );
        let err = parse(
            &POLICY.replace("{prefix: /beta}", "{prefix: /beta, exact: /b}"),
            "1".into(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "policies[0]: spec.rules[0].match[0].uri: only one of exact, prefix, regex may be set"
        );
        let err = parse(&POLICY.replace("CLIENT_OS_IOS", "beos"), "1".into()).unwrap_err();
        assert!(
            err.to_string().contains("unknown client OS \"beos\""),
            "{err}"
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = parse("services: [{name: a, namespace: b, vipz: []}]", "1".into()).unwrap_err();
        assert!(err.to_string().contains("unknown field `vipz`"), "{err}");
        let err = parse(
            "services: [{name: a, namespace: b, ports: [{port: 1, protocol: HTTP}]}]",
            "1".into(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown protocol \"HTTP\""),
            "{err}"
        );
        let err = parse(
            "services: [{name: a, namespace: b, vips: [nope]}]",
            "1".into(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid service b/a: vips[0]: \"nope\" is not an IP address"
        );
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/serin.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to read config file /nonexistent/serin.yaml"),
            "{err}"
        );
    }
}
