//! Conversions between the `serin.v1` wire policy and the policy model (cargo feature `proto`),
//! shared by the control plane (what clients send, what it stores and pushes) and the sidecar
//! (what it is pushed, or reads from its `--config` file). Generated types stop here.
//!
//! Only what the model cannot hold is refused here, with the field path in the YAML spelling of
//! DESIGN.md (`spec.rules[0].match[1].uri.ignoreCase`). Everything the model can hold but that is
//! wrong (empty names, unset matchers, bad regexes, unknown OS values, zero weights) converts
//! unchanged, so that [`crate::validate()`] reports it with the policy's other problems.

use std::collections::BTreeMap;

use serin_proto::v1;

use crate::model::{
    API_VERSION, KIND, MatchBlock, Metadata, MirrorPolicy, PolicySpec, Route, Rule, Stickiness,
    StringMatch, TrafficPolicy, UriMatch, VersionWeight,
};

/// A wire field that cannot be turned into a model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// Path of the field, e.g. `spec.rules[0].match[1].uri.ignoreCase`.
    pub field: String,
    /// Why it is refused, one lowercase line.
    pub reason: String,
}

impl InvalidField {
    /// An error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl TryFrom<v1::TrafficPolicy> for TrafficPolicy {
    type Error = InvalidField;

    /// The model of a wire policy. `apiVersion` and `kind` are implied by the message type;
    /// `metadata.generation` 0 means unset; annotations and times are not part of the model (the
    /// control plane keeps them apart).
    fn try_from(p: v1::TrafficPolicy) -> Result<Self, InvalidField> {
        let meta = p.metadata.unwrap_or_default();
        let spec = p.spec.unwrap_or_default();
        let rules = spec
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule_from_proto(&format!("spec.rules[{i}]"), r))
            .collect::<Result<_, _>>()?;
        Ok(TrafficPolicy {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: Metadata {
                name: meta.name,
                namespace: meta.namespace,
                generation: (meta.generation != 0).then_some(meta.generation),
                labels: (!meta.labels.is_empty()).then(|| meta.labels.into_iter().collect()),
            },
            spec: PolicySpec {
                service: spec.service,
                rules,
                default: Route {
                    route: spec
                        .default
                        .map(|d| weights_from_proto(d.route))
                        .unwrap_or_default(),
                },
                mirror: spec.mirror.map(|m| MirrorPolicy {
                    version: m.version,
                    percent: m.percent,
                }),
                stickiness: spec.stickiness.map(|s| match s.key {
                    Some(v1::stickiness::Key::Cookie(c)) => Stickiness {
                        cookie: Some(c),
                        header: None,
                    },
                    Some(v1::stickiness::Key::Header(h)) => Stickiness {
                        cookie: None,
                        header: Some(h),
                    },
                    None => Stickiness::default(),
                }),
            },
        })
    }
}

fn rule_from_proto(path: &str, r: v1::Rule) -> Result<Rule, InvalidField> {
    let matches = r
        .r#match
        .into_iter()
        .enumerate()
        .map(|(j, b)| block_from_proto(&format!("{path}.match[{j}]"), b))
        .collect::<Result<_, _>>()?;
    Ok(Rule {
        name: r.name,
        matches,
        route: weights_from_proto(r.route),
    })
}

fn block_from_proto(path: &str, b: v1::MatchBlock) -> Result<MatchBlock, InvalidField> {
    let uri = match b.uri {
        None => None,
        Some(u) => {
            if u.ignore_case {
                return Err(InvalidField::new(
                    format!("{path}.uri.ignoreCase"),
                    "ignoreCase on uri is not supported by the policy model; \
                     use a regex with (?i) instead",
                ));
            }
            let mut m = UriMatch::default();
            match u.kind {
                Some(v1::uri_match::Kind::Exact(s)) => m.exact = Some(s),
                Some(v1::uri_match::Kind::Prefix(s)) => m.prefix = Some(s),
                Some(v1::uri_match::Kind::Regex(s)) => m.regex = Some(s),
                None => {}
            }
            Some(m)
        }
    };
    let os: Vec<String> = b.os.iter().map(|&o| os_name(o)).collect();
    Ok(MatchBlock {
        headers: string_matches(b.headers),
        cookies: string_matches(b.cookies),
        uri,
        query: string_matches(b.query),
        method: (!b.method.is_empty()).then_some(b.method),
        os: (!os.is_empty()).then_some(os),
    })
}

/// The policy name of a wire OS value (`CLIENT_OS_IOS` → `ios`); values the policy crate does
/// not know (`CLIENT_OS_UNSPECIFIED`, numbers outside the enum) come out as names its validation
/// rejects, naming the field.
pub fn os_name(value: i32) -> String {
    match v1::ClientOs::try_from(value) {
        Ok(os) => os
            .as_str_name()
            .trim_start_matches("CLIENT_OS_")
            .to_ascii_lowercase(),
        Err(_) => format!("os-enum-{value}"),
    }
}

/// The wire OS value of a policy name (`ios` → `CLIENT_OS_IOS`; unknown → unspecified).
pub fn os_value(name: &str) -> v1::ClientOs {
    v1::ClientOs::from_str_name(&format!("CLIENT_OS_{}", name.to_ascii_uppercase()))
        .unwrap_or(v1::ClientOs::Unspecified)
}

fn string_matches(
    map: impl IntoIterator<Item = (String, v1::StringMatch)>,
) -> BTreeMap<String, StringMatch> {
    map.into_iter()
        .map(|(k, m)| {
            let mut s = StringMatch {
                ignore_case: m.ignore_case,
                ..StringMatch::default()
            };
            match m.kind {
                Some(v1::string_match::Kind::Exact(v)) => s.exact = Some(v),
                Some(v1::string_match::Kind::Prefix(v)) => s.prefix = Some(v),
                Some(v1::string_match::Kind::Regex(v)) => s.regex = Some(v),
                Some(v1::string_match::Kind::Present(v)) => s.present = Some(v),
                None => {}
            }
            (k, s)
        })
        .collect()
}

/// Wire weights as model weights.
pub fn weights_from_proto(list: Vec<v1::VersionWeight>) -> Vec<VersionWeight> {
    list.into_iter()
        .map(|w| VersionWeight::new(w.version, w.weight))
        .collect()
}

/// Model weights on the wire. The wire holds whole numbers only: a weight that is not one
/// (validation rejects those) goes out as 0.
pub fn weights_to_proto(list: &[VersionWeight]) -> Vec<v1::VersionWeight> {
    list.iter()
        .map(|w| v1::VersionWeight {
            version: w.version.clone(),
            weight: w.weight.get().unwrap_or(0),
        })
        .collect()
}

impl From<&TrafficPolicy> for v1::TrafficPolicy {
    /// The wire form of a policy: no annotations and no times (the model has none), the
    /// generation when set.
    fn from(p: &TrafficPolicy) -> Self {
        let spec = &p.spec;
        v1::TrafficPolicy {
            metadata: Some(v1::PolicyMetadata {
                name: p.metadata.name.clone(),
                namespace: p.metadata.namespace.clone(),
                generation: p.metadata.generation.unwrap_or(0),
                labels: p
                    .metadata
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                annotations: Default::default(),
                create_time: None,
                update_time: None,
            }),
            spec: Some(v1::TrafficPolicySpec {
                service: spec.service.clone(),
                rules: spec.rules.iter().map(rule_to_proto).collect(),
                default: Some(v1::DefaultRoute {
                    route: weights_to_proto(&spec.default.route),
                }),
                mirror: spec.mirror.as_ref().map(|m| v1::Mirror {
                    version: m.version.clone(),
                    percent: m.percent,
                }),
                stickiness: spec.stickiness.as_ref().map(|s| v1::Stickiness {
                    key: match (&s.cookie, &s.header) {
                        (Some(c), _) => Some(v1::stickiness::Key::Cookie(c.clone())),
                        (None, Some(h)) => Some(v1::stickiness::Key::Header(h.clone())),
                        (None, None) => None,
                    },
                }),
            }),
        }
    }
}

fn rule_to_proto(r: &Rule) -> v1::Rule {
    v1::Rule {
        name: r.name.clone(),
        r#match: r.matches.iter().map(block_to_proto).collect(),
        route: weights_to_proto(&r.route),
    }
}

fn block_to_proto(b: &MatchBlock) -> v1::MatchBlock {
    let sm = |map: &BTreeMap<String, StringMatch>| {
        map.iter()
            .map(|(k, m)| (k.clone(), string_match_to_proto(m)))
            .collect()
    };
    v1::MatchBlock {
        headers: sm(&b.headers),
        cookies: sm(&b.cookies),
        uri: b.uri.as_ref().map(|u| v1::UriMatch {
            kind: if let Some(s) = &u.exact {
                Some(v1::uri_match::Kind::Exact(s.clone()))
            } else if let Some(s) = &u.prefix {
                Some(v1::uri_match::Kind::Prefix(s.clone()))
            } else {
                u.regex.clone().map(v1::uri_match::Kind::Regex)
            },
            ignore_case: false,
        }),
        query: sm(&b.query),
        method: b.method.clone().unwrap_or_default(),
        os: b.os.iter().flatten().map(|o| os_value(o) as i32).collect(),
    }
}

fn string_match_to_proto(m: &StringMatch) -> v1::StringMatch {
    use v1::string_match::Kind;
    let kind = if let Some(s) = &m.exact {
        Some(Kind::Exact(s.clone()))
    } else if let Some(s) = &m.prefix {
        Some(Kind::Prefix(s.clone()))
    } else if let Some(s) = &m.regex {
        Some(Kind::Regex(s.clone()))
    } else {
        m.present.map(Kind::Present)
    };
    v1::StringMatch {
        kind,
        ignore_case: m.ignore_case,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_policy() -> v1::TrafficPolicy {
        v1::TrafficPolicy {
            metadata: Some(v1::PolicyMetadata {
                name: "reviews".into(),
                namespace: "default".into(),
                generation: 7,
                labels: [("team".to_owned(), "a".to_owned())].into(),
                ..Default::default()
            }),
            spec: Some(v1::TrafficPolicySpec {
                service: "reviews".into(),
                rules: vec![v1::Rule {
                    name: "testers".into(),
                    r#match: vec![v1::MatchBlock {
                        headers: [(
                            "end-user".to_owned(),
                            v1::StringMatch {
                                kind: Some(v1::string_match::Kind::Exact("jason".into())),
                                ignore_case: true,
                            },
                        )]
                        .into(),
                        cookies: [(
                            "canary".to_owned(),
                            v1::StringMatch {
                                kind: Some(v1::string_match::Kind::Present(true)),
                                ignore_case: false,
                            },
                        )]
                        .into(),
                        uri: Some(v1::UriMatch {
                            kind: Some(v1::uri_match::Kind::Regex("/beta/.*".into())),
                            ignore_case: false,
                        }),
                        os: vec![v1::ClientOs::Ios as i32, v1::ClientOs::Harmonyos as i32],
                        method: "GET".into(),
                        ..Default::default()
                    }],
                    route: vec![v1::VersionWeight {
                        version: "v3".into(),
                        weight: 100,
                    }],
                }],
                default: Some(v1::DefaultRoute {
                    route: vec![
                        v1::VersionWeight {
                            version: "v1".into(),
                            weight: 90,
                        },
                        v1::VersionWeight {
                            version: "v2".into(),
                            weight: 10,
                        },
                    ],
                }),
                mirror: Some(v1::Mirror {
                    version: "v2".into(),
                    percent: 2.5,
                }),
                stickiness: Some(v1::Stickiness {
                    key: Some(v1::stickiness::Key::Header("x-user".into())),
                }),
            }),
        }
    }

    #[test]
    fn a_wire_policy_round_trips_through_the_model() {
        let policy = TrafficPolicy::try_from(wire_policy()).unwrap();
        assert_eq!(policy.metadata.generation, Some(7));
        assert_eq!(
            policy.spec.rules[0].matches[0].os.as_deref(),
            Some(&["ios".to_owned(), "harmonyos".to_owned()][..])
        );
        assert_eq!(
            policy.spec.stickiness.as_ref().unwrap().header.as_deref(),
            Some("x-user")
        );
        crate::validate(&policy, None).unwrap();
        assert_eq!(v1::TrafficPolicy::from(&policy), wire_policy());
    }

    #[test]
    fn uri_ignore_case_is_refused_naming_the_field() {
        let mut p = wire_policy();
        p.spec.as_mut().unwrap().rules[0].r#match[0]
            .uri
            .as_mut()
            .unwrap()
            .ignore_case = true;
        let err = TrafficPolicy::try_from(p).unwrap_err();
        assert_eq!(err.field, "spec.rules[0].match[0].uri.ignoreCase");
        assert!(
            err.to_string()
                .starts_with("spec.rules[0].match[0].uri.ignoreCase: ")
        );
    }

    #[test]
    fn what_the_model_holds_but_is_wrong_reaches_validation_with_its_path() {
        let mut p = wire_policy();
        let spec = p.spec.as_mut().unwrap();
        spec.rules[0].r#match[0].os = vec![0, 99];
        spec.default.as_mut().unwrap().route[0].weight = 0;
        spec.default.as_mut().unwrap().route[1].weight = 0;
        let policy = TrafficPolicy::try_from(p).unwrap();
        assert_eq!(os_name(99), "os-enum-99");
        let errors = crate::validate(&policy, None).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"spec.rules[0].match[0].os[0]"), "{paths:?}");
        assert!(paths.contains(&"spec.rules[0].match[0].os[1]"), "{paths:?}");
        assert!(
            paths.iter().any(|p| p.starts_with("spec.default.route")),
            "{paths:?}"
        );
    }

    #[test]
    fn os_names_and_values_map_both_ways() {
        for name in [
            "android",
            "ios",
            "ipados",
            "macos",
            "windows",
            "linux",
            "chromeos",
            "harmonyos",
            "other",
        ] {
            assert_eq!(os_name(os_value(name) as i32), name);
        }
        assert_eq!(os_value("beos"), v1::ClientOs::Unspecified);
    }
}
