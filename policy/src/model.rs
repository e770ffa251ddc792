//! The TrafficPolicy schema as users write it (YAML or JSON), with serde matching DESIGN.md exactly.
//!
//! These types hold what was written, not what is valid: weights keep any number and OS names any
//! string, so that [`crate::validate()`] can name the field and the reason instead of a parser error.
//! Unknown fields are rejected everywhere so a typo is an error, not a silently ignored condition.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The only `apiVersion` this crate understands.
pub const API_VERSION: &str = "serin.io/v1";
/// The `kind` of a traffic policy document.
pub const KIND: &str = "TrafficPolicy";

/// One traffic policy: how requests to one service are spread over its versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// Name, namespace and bookkeeping.
    pub metadata: Metadata,
    /// What the policy does.
    pub spec: PolicySpec,
}

/// Identity of a policy, Kubernetes style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    /// The policy's name (usually the service's).
    pub name: String,
    /// The namespace of the service.
    pub namespace: String,
    /// Set by the control plane: increases with every change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The routing part of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PolicySpec {
    /// The service whose versions this policy routes between.
    pub service: String,
    /// Rules in order: the first rule with a matching block takes the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Where requests go that no rule takes.
    pub default: Route,
    /// Copy a share of the requests to a version (responses discarded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorPolicy>,
    /// The request key that keeps a user on one version of a weighted split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Stickiness>,
}

/// A named rule: if any of its match blocks matches, its route takes the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Rule {
    /// Unique within the policy; shown by `explain` and `/routes`. (Defaults to empty only so
    /// that validation, not the parser, reports it with the other problems of the rule.)
    #[serde(default)]
    pub name: String,
    /// Blocks are ORed; the conditions inside one block are ANDed. Written `match:`.
    #[serde(rename = "match", default)]
    pub matches: Vec<MatchBlock>,
    /// The weighted versions this rule sends to.
    #[serde(default)]
    pub route: Vec<VersionWeight>,
}

/// The default route of a policy: `default: {route: [...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Route {
    /// The weighted versions.
    #[serde(default)]
    pub route: Vec<VersionWeight>,
}

/// One entry of a weighted split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VersionWeight {
    /// A version of the service (the pods' `version` label).
    pub version: String,
    /// Relative weight: this entry gets `weight / sum of weights` of the requests.
    pub weight: Weight,
}

impl VersionWeight {
    /// An entry with a whole-number weight.
    pub fn new(version: impl Into<String>, weight: u32) -> Self {
        Self {
            version: version.into(),
            weight: Weight::from(weight),
        }
    }
}

/// A condition block: every condition given must hold (AND). Absent conditions are not checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MatchBlock {
    /// Request headers by name (names are case-insensitive).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Cookies by name, parsed per RFC 6265 from every `Cookie` header.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, StringMatch>,
    /// The request path (the query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<UriMatch>,
    /// Query parameters by (percent-decoded) name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, StringMatch>,
    /// The HTTP method, compared exactly (methods are case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Client OS classes (see [`crate::os::OsClass`]); the request matches if it is any of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<Vec<String>>,
}

impl MatchBlock {
    /// True if the block has no condition at all (validation rejects such a block).
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
            && self.cookies.is_empty()
            && self.uri.is_none()
            && self.query.is_empty()
            && self.method.is_none()
            && self.os.is_none()
    }
}

/// How a header, cookie or query value is matched: exactly one of `exact`, `prefix`, `regex`,
/// `present`, optionally with `ignoreCase`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StringMatch {
    /// The whole value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole value matches this RE2-syntax regex (anchored: full match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the value is there (any value); `false`: it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// Compare without regard to case (Unicode simple case folding).
    #[serde(default, skip_serializing_if = "is_false")]
    pub ignore_case: bool,
}

impl StringMatch {
    /// `{exact: value}`.
    pub fn exact(value: impl Into<String>) -> Self {
        Self {
            exact: Some(value.into()),
            ..Self::default()
        }
    }

    /// `{prefix: value}`.
    pub fn prefix(value: impl Into<String>) -> Self {
        Self {
            prefix: Some(value.into()),
            ..Self::default()
        }
    }

    /// `{regex: pattern}`.
    pub fn regex(pattern: impl Into<String>) -> Self {
        Self {
            regex: Some(pattern.into()),
            ..Self::default()
        }
    }

    /// `{present: yes}`.
    pub fn present(yes: bool) -> Self {
        Self {
            present: Some(yes),
            ..Self::default()
        }
    }

    /// The same matcher with `ignoreCase: true`.
    pub fn ignoring_case(self) -> Self {
        Self {
            ignore_case: true,
            ..self
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// How the request path is matched: exactly one of `exact`, `prefix`, `regex`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UriMatch {
    /// The path equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The path starts with this (plain string prefix: `/beta` also matches `/betamax`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The whole path matches this RE2-syntax regex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Copy a share of the requests to another version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct MirrorPolicy {
    /// The version that receives the copies.
    pub version: String,
    /// Share of requests mirrored, `0 < percent <= 100` (fractions allowed).
    pub percent: f64,
}

/// The key of sticky weighted choice: exactly one of `cookie` or `header`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Stickiness {
    /// The cookie whose value is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The header whose (first) value is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// A route weight as written. Valid weights are whole numbers in `0..=`[`MAX_WEIGHT`]; the model
/// keeps whatever number was written (negative, fractional, huge) so that validation can say which
/// field is wrong and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Weight {
    /// A whole number (saturated to the `i128` range).
    Whole(i128),
    /// A number with a fractional part, or not finite.
    Fraction(f64),
}

/// The largest weight a route entry may have.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Why a written weight is not valid.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum WeightError {
    /// Below zero.
    #[error("weight {0} is negative; weights are whole numbers from 0 to {MAX_WEIGHT}")]
    Negative(i128),
    /// Not a whole number.
    #[error("weight {0} is not a whole number; weights are whole numbers from 0 to {MAX_WEIGHT}")]
    NotWhole(f64),
    /// Above [`MAX_WEIGHT`].
    #[error("weight {0} is too large; weights are whole numbers from 0 to {MAX_WEIGHT}")]
    TooLarge(i128),
}

impl Weight {
    /// The weight as a valid whole number, or why it is not one.
    pub fn get(self) -> Result<u32, WeightError> {
        match self {
            Weight::Whole(w) if w < 0 => Err(WeightError::Negative(w)),
            Weight::Whole(w) if w > i128::from(MAX_WEIGHT) => Err(WeightError::TooLarge(w)),
            Weight::Whole(w) => Ok(w as u32),
            Weight::Fraction(f) => Err(WeightError::NotWhole(f)),
        }
    }
}

impl From<u32> for Weight {
    fn from(w: u32) -> Self {
        Weight::Whole(i128::from(w))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Weight::Whole(w) => write!(f, "{w}"),
            Weight::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Weight::Whole(w) => match i64::try_from(w) {
                Ok(w) => s.serialize_i64(w),
                Err(_) => s.serialize_f64(w as f64),
            },
            Weight::Fraction(x) => s.serialize_f64(x),
        }
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WeightVisitor;

        impl Visitor<'_> for WeightVisitor {
            type Value = Weight;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number weight")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weight, E> {
                Ok(Weight::Whole(i128::from(v)))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weight, E> {
                Ok(Weight::Whole(i128::from(v)))
            }

            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Weight, E> {
                Ok(Weight::Whole(v))
            }

            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Weight, E> {
                Ok(Weight::Whole(i128::try_from(v).unwrap_or(i128::MAX)))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Weight, E> {
                // JSON has no integer type, so `50.0` is accepted as 50; `1e40` saturates.
                if v.is_finite() && v.fract() == 0.0 {
                    Ok(Weight::Whole(v as i128))
                } else {
                    Ok(Weight::Fraction(v))
                }
            }
        }

        d.deserialize_any(WeightVisitor)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Weight {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Weight".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            // Floats: the CRD's schema type (k8s JSONSchemaProps) holds bounds as numbers.
            "minimum": 0.0,
            "maximum": f64::from(MAX_WEIGHT),
            "description": "Relative weight: this entry gets weight / sum of weights of the requests.",
        })
    }
}
