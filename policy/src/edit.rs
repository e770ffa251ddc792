//! Canary edits as pure functions on the model (what `serinctl canary|route|mirror|promote` send),
//! each returning a policy that has passed validation. `metadata.generation` is left alone: the
//! control plane owns it.

use std::fmt;

use crate::model::{
    MatchBlock, MirrorPolicy, Route, Rule, StringMatch, TrafficPolicy, VersionWeight,
};
use crate::validate::{ValidationError, validate};

/// Why an edit could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EditError {
    /// A canary weight above 100.
    #[error("canary weight {weight} is not a percentage from 0 to 100")]
    Percent {
        /// What was asked.
        weight: u32,
    },
    /// The default route has no other version to split with.
    #[error(
        "service {service:?} has no stable version to split with {version:?}: the default route lists no other version"
    )]
    NoStableVersion {
        /// The service.
        service: String,
        /// The canary version.
        version: String,
    },
    /// The edited policy does not validate.
    #[error("the edited policy is invalid: {}", Joined(.0))]
    Invalid(Vec<ValidationError>),
}

struct Joined<'a>(&'a [ValidationError]);

impl fmt::Display for Joined<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

fn checked(policy: TrafficPolicy) -> Result<TrafficPolicy, EditError> {
    validate(&policy, None).map_err(EditError::Invalid)?;
    Ok(policy)
}

/// `serinctl canary SERVICE VERSION --weight PCT`: the default route becomes exactly two entries,
/// the stable version with `100 - percent` and `version` with `percent`.
///
/// The stable version is the default route's version with the largest weight other than `version`
/// (the first such on a tie). The two keep their order in the route (`version` goes last if it
/// was not there), so that moving the weight in steps keeps sticky users where they were (see
/// [`crate::split`]). Other versions of the default route are dropped.
pub fn set_canary_weight(
    policy: &TrafficPolicy,
    version: &str,
    percent: u32,
) -> Result<TrafficPolicy, EditError> {
    if percent > 100 {
        return Err(EditError::Percent { weight: percent });
    }
    let route = &policy.spec.default.route;
    let weight_of = |e: &VersionWeight| e.weight.get().unwrap_or(0);
    let stable = route
        .iter()
        .enumerate()
        .filter(|(_, e)| e.version != version)
        .max_by_key(|(i, e)| (weight_of(e), std::cmp::Reverse(*i)))
        .map(|(i, e)| (i, e.version.clone()))
        .ok_or_else(|| EditError::NoStableVersion {
            service: policy.spec.service.clone(),
            version: version.to_owned(),
        })?;
    let canary_index = route
        .iter()
        .position(|e| e.version == version)
        .unwrap_or(usize::MAX);
    let stable_entry = VersionWeight::new(stable.1, 100 - percent);
    let canary_entry = VersionWeight::new(version, percent);
    let new_route = if canary_index < stable.0 {
        vec![canary_entry, stable_entry]
    } else {
        vec![stable_entry, canary_entry]
    };
    let mut out = policy.clone();
    out.spec.default = Route { route: new_route };
    checked(out)
}

/// The conditions of `serinctl route SERVICE VERSION [--header K=V] [--cookie K=V] [--uri-prefix P]
/// [--os LIST] [--query K=V]`, all exact matches, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteMatch {
    /// `--header K=V`.
    pub headers: Vec<(String, String)>,
    /// `--cookie K=V`.
    pub cookies: Vec<(String, String)>,
    /// `--uri-prefix P`.
    pub uri_prefix: Option<String>,
    /// `--os LIST`.
    pub os: Vec<String>,
    /// `--query K=V`.
    pub query: Vec<(String, String)>,
}

impl RouteMatch {
    /// The match block these conditions make.
    pub fn to_block(&self) -> MatchBlock {
        let exact = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.clone(), StringMatch::exact(v.clone())))
                .collect()
        };
        MatchBlock {
            headers: exact(&self.headers),
            cookies: exact(&self.cookies),
            uri: self.uri_prefix.as_ref().map(|p| crate::model::UriMatch {
                prefix: Some(p.clone()),
                ..Default::default()
            }),
            query: exact(&self.query),
            method: None,
            os: (!self.os.is_empty()).then(|| self.os.clone()),
        }
    }
}

/// `serinctl route`: sends requests matching `block` to `version` (weight 100).
///
/// If a rule already consists of exactly this block, its route is replaced (running the same
/// command twice changes nothing more). Otherwise a rule named `route-VERSION` (`-2`, `-3`, ...
/// when taken) is inserted *first*, so that it takes effect even if an older, broader rule would
/// also match.
pub fn add_route_rule(
    policy: &TrafficPolicy,
    version: &str,
    block: MatchBlock,
) -> Result<TrafficPolicy, EditError> {
    let mut out = policy.clone();
    let route = vec![VersionWeight::new(version, 100)];
    if let Some(rule) = out
        .spec
        .rules
        .iter_mut()
        .find(|r| r.matches == [block.clone()])
    {
        rule.route = route;
        return checked(out);
    }
    let taken = |name: &str| policy.spec.rules.iter().any(|r| r.name == name);
    let base = format!("route-{version}");
    let name = std::iter::once(base.clone())
        .chain((2..).map(|n| format!("{base}-{n}")))
        .find(|n| !taken(n))
        .expect("an unbounded sequence of names has a free one");
    out.spec.rules.insert(
        0,
        Rule {
            name,
            matches: vec![block],
            route,
        },
    );
    checked(out)
}

/// `serinctl mirror SERVICE VERSION --percent P`.
pub fn set_mirror(
    policy: &TrafficPolicy,
    version: &str,
    percent: f64,
) -> Result<TrafficPolicy, EditError> {
    let mut out = policy.clone();
    out.spec.mirror = Some(MirrorPolicy {
        version: version.to_owned(),
        percent,
    });
    checked(out)
}

/// Turns mirroring off.
pub fn clear_mirror(policy: &TrafficPolicy) -> Result<TrafficPolicy, EditError> {
    let mut out = policy.clone();
    out.spec.mirror = None;
    checked(out)
}

/// `serinctl promote SERVICE VERSION`: `version` takes over. The default route becomes 100% to
/// it; rules and mirror are removed; stickiness is kept (it does nothing with one version, and is
/// ready for the next canary).
pub fn promote(policy: &TrafficPolicy, version: &str) -> Result<TrafficPolicy, EditError> {
    let mut out = policy.clone();
    out.spec.default = Route {
        route: vec![VersionWeight::new(version, 100)],
    };
    out.spec.rules.clear();
    out.spec.mirror = None;
    checked(out)
}

/// nginx-ingress canary annotations as rules. `canary-by-header: H` becomes the rules
/// `H: always → canary` and `H: never → stable`; `canary-by-cookie: C` the same on cookie `C`.
/// Header rules come first, so the precedence header > cookie > weight is simply rule order
/// (the weight is the default route's split).
pub fn nginx_canary_rules(
    stable: &str,
    canary: &str,
    by_header: Option<&str>,
    by_cookie: Option<&str>,
) -> Vec<Rule> {
    let rule = |name: String, block: MatchBlock, version: &str| Rule {
        name,
        matches: vec![block],
        route: vec![VersionWeight::new(version, 100)],
    };
    let mut rules = Vec::new();
    if let Some(h) = by_header {
        for (value, version) in [("always", canary), ("never", stable)] {
            let block = MatchBlock {
                headers: [(h.to_owned(), StringMatch::exact(value))].into(),
                ..MatchBlock::default()
            };
            rules.push(rule(format!("canary-by-header-{value}"), block, version));
        }
    }
    if let Some(c) = by_cookie {
        for (value, version) in [("always", canary), ("never", stable)] {
            let block = MatchBlock {
                cookies: [(c.to_owned(), StringMatch::exact(value))].into(),
                ..MatchBlock::default()
            };
            rules.push(rule(format!("canary-by-cookie-{value}"), block, version));
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::CompiledPolicy;
    use crate::parse::parse_policy;
    use crate::split::BUCKETS;
    use crate::validate::ErrorKind;

    const BASE: &str = "
apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules:
  - name: testers
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{version: v3, weight: 100}]
  default:
    route: [{version: v1, weight: 100}]
  mirror: {version: v2, percent: 10}
  stickiness: {cookie: uid}
";

    fn base() -> TrafficPolicy {
        parse_policy(BASE).unwrap()
    }

    fn weights(p: &TrafficPolicy) -> Vec<(String, u32)> {
        p.spec
            .default
            .route
            .iter()
            .map(|e| (e.version.clone(), e.weight.get().unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect()
    }

    #[test]
    fn canary_splits_between_stable_and_version_and_keeps_sticky_users() {
        let five = set_canary_weight(&base(), "v2", 5).unwrap();
        assert_eq!(weights(&five), pairs(&[("v1", 95), ("v2", 5)]));
        let ten = set_canary_weight(&five, "v2", 10).unwrap();
        assert_eq!(weights(&ten), pairs(&[("v1", 90), ("v2", 10)]));
        let (a, b) = (
            CompiledPolicy::new(&five).unwrap(),
            CompiledPolicy::new(&ten).unwrap(),
        );
        for bucket in 0..BUCKETS {
            if a.default_split().pick_bucket(bucket) == 1 {
                assert_eq!(
                    b.default_split().pick_bucket(bucket),
                    1,
                    "bucket {bucket} left v2"
                );
            }
        }
        assert_eq!(ten.spec.rules, base().spec.rules, "rules untouched");
    }

    #[test]
    fn canary_keeps_route_order_and_picks_the_heaviest_stable() {
        let mut p = base();
        p.spec.default.route = vec![
            VersionWeight::new("v2", 10),
            VersionWeight::new("v0", 5),
            VersionWeight::new("v1", 85),
        ];
        let out = set_canary_weight(&p, "v2", 20).unwrap();
        assert_eq!(weights(&out), pairs(&[("v2", 20), ("v1", 80)]));
    }

    #[test]
    fn canary_errors() {
        assert_eq!(
            set_canary_weight(&base(), "v2", 101),
            Err(EditError::Percent { weight: 101 })
        );
        let promoted = promote(&base(), "v2").unwrap();
        let err = set_canary_weight(&promoted, "v2", 10).unwrap_err();
        assert!(matches!(err, EditError::NoStableVersion { .. }), "{err}");
        let err = set_canary_weight(&base(), "bad version!", 10).unwrap_err();
        let EditError::Invalid(errors) = &err else {
            panic!("{err}")
        };
        assert_eq!(errors[0].path, "spec.default.route[1].version");
        assert!(
            err.to_string().starts_with(
                "the edited policy is invalid: spec.default.route[1].version: invalid version"
            ),
            "{err}"
        );
    }

    #[test]
    fn route_rule_is_inserted_first_and_is_idempotent() {
        let m = RouteMatch {
            headers: vec![("x-user".into(), "qa".into())],
            os: vec!["ios".into()],
            ..RouteMatch::default()
        };
        let once = add_route_rule(&base(), "v2", m.to_block()).unwrap();
        assert_eq!(once.spec.rules.len(), 2);
        assert_eq!(once.spec.rules[0].name, "route-v2");
        let again = add_route_rule(&once, "v4", m.to_block()).unwrap();
        assert_eq!(again.spec.rules.len(), 2, "same block: route replaced");
        assert_eq!(
            again.spec.rules[0].route,
            vec![VersionWeight::new("v4", 100)]
        );
        let other = RouteMatch {
            uri_prefix: Some("/beta".into()),
            ..RouteMatch::default()
        };
        let third = add_route_rule(&again, "v2", other.to_block()).unwrap();
        assert_eq!(third.spec.rules[0].name, "route-v2-2", "names stay unique");
    }

    #[test]
    fn route_rule_is_validated() {
        let empty = add_route_rule(&base(), "v2", RouteMatch::default().to_block()).unwrap_err();
        let EditError::Invalid(errors) = &empty else {
            panic!("{empty}")
        };
        assert_eq!(
            (errors[0].path.as_str(), &errors[0].kind),
            ("spec.rules[0].match[0]", &ErrorKind::EmptyMatchBlock)
        );
        let bad = RouteMatch {
            headers: vec![("bad header".into(), "x".into())],
            ..RouteMatch::default()
        };
        let err = add_route_rule(&base(), "v2", bad.to_block()).unwrap_err();
        let EditError::Invalid(errors) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            errors[0].path,
            "spec.rules[0].match[0].headers[\"bad header\"]"
        );
        assert_eq!(
            errors[0].kind,
            ErrorKind::InvalidHeaderName {
                name: "bad header".into()
            }
        );
    }

    #[test]
    fn promote_takes_over() {
        let p = promote(&base(), "v3").unwrap();
        assert_eq!(weights(&p), pairs(&[("v3", 100)]));
        assert!(p.spec.rules.is_empty());
        assert_eq!(p.spec.mirror, None);
        assert_eq!(p.spec.stickiness, base().spec.stickiness);
    }

    #[test]
    fn mirror_edits_are_validated() {
        assert_eq!(
            set_mirror(&base(), "v3", 50.0)
                .unwrap()
                .spec
                .mirror
                .unwrap()
                .percent,
            50.0
        );
        assert!(matches!(
            set_mirror(&base(), "v3", 0.0),
            Err(EditError::Invalid(_))
        ));
        assert!(matches!(
            set_mirror(&base(), "v3", 100.5),
            Err(EditError::Invalid(_))
        ));
        assert_eq!(clear_mirror(&base()).unwrap().spec.mirror, None);
    }

    /// nginx-ingress canary semantics expressed as rules:
    /// `canary-by-header: x-canary` = `x-canary: always → canary`, `x-canary: never → stable`;
    /// `canary-by-cookie: canary` likewise; precedence header > cookie > weight is rule order.
    #[test]
    fn nginx_ingress_canary_semantics() {
        let mut p = base();
        p.spec.mirror = None;
        p.spec.rules = nginx_canary_rules("v1", "v2", Some("x-canary"), Some("canary"));
        p.spec.default.route = vec![VersionWeight::new("v1", 90), VersionWeight::new("v2", 10)];
        let p = CompiledPolicy::new(&p).unwrap();
        let route = |headers: &[(&str, &str)], random: u32| {
            let mut b = http::Request::builder().uri("/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let d = p.decide(&b.body(()).unwrap(), random, |_| true);
            (d.version().unwrap().to_owned(), d.taken_by)
        };
        // Header decides, whatever the cookie says.
        assert_eq!(
            route(&[("x-canary", "always"), ("cookie", "canary=never")], 0).0,
            "v2"
        );
        assert_eq!(
            route(
                &[("x-canary", "never"), ("cookie", "canary=always")],
                u32::MAX
            )
            .0,
            "v1"
        );
        // Any other header value is ignored: the cookie decides.
        assert_eq!(
            route(&[("x-canary", "maybe"), ("cookie", "canary=always")], 0).0,
            "v2"
        );
        assert_eq!(route(&[("cookie", "canary=never")], u32::MAX).0, "v1");
        // Neither: the weight decides (random 0 → first 90%, MAX → last 10%).
        let (v, taken) = route(&[("x-canary", "maybe")], 0);
        assert_eq!((v.as_str(), taken), ("v1", crate::TakenBy::Default));
        assert_eq!(route(&[], u32::MAX).0, "v2");
        let names: Vec<_> = (0..p.rule_count()).map(|i| p.rule_name(i)).collect();
        assert_eq!(
            names,
            [
                "canary-by-header-always",
                "canary-by-header-never",
                "canary-by-cookie-always",
                "canary-by-cookie-never"
            ]
        );
    }
}
