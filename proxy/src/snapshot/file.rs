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
    Snapshot::from_proto(version, file.into()).map_err(ParseError::Invalid)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
struct SnapshotFile {
    services: Vec<ServiceFile>,
    endpoints: Vec<ServiceEndpointsFile>,
    /// Kept opaque until the proxy routes by policy (the policy crate owns their schema).
    policies: Vec<serde_json::Value>,
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

impl From<SnapshotFile> for v1::Snapshot {
    fn from(f: SnapshotFile) -> Self {
        v1::Snapshot {
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
                        })
                        .collect(),
                })
                .collect(),
            // Counted only (see `Snapshot::policies`); the policy model decodes them later.
            policies: f
                .policies
                .iter()
                .map(|_| v1::TrafficPolicy::default())
                .collect(),
        }
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
            "endpoints":[],"policies":[{"metadata":{"name":"x"}}]}"#;
        let s = parse(json, "1".into()).unwrap();
        assert_eq!(s.services[0].ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.policies, 1);
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
