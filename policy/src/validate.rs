//! Validation: every problem of a policy at once, each naming its field path
//! (`spec.rules[1].match[0].headers.end-user.regex`) and the reason; warnings for versions with no
//! pods yet. A policy that validates comes out compiled, so regexes are compiled exactly once.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use http::HeaderName;

use crate::compile::{
    CompiledBlock, CompiledMirror, CompiledPolicy, CompiledRule, NameTable, StickyKey, ValueMatcher,
};
use crate::cookie;
use crate::model::{
    API_VERSION, KIND, MatchBlock, StringMatch, TrafficPolicy, UriMatch, VersionWeight, WeightError,
};
use crate::os::{OsClass, OsSet};
use crate::split::{Split, service_seed};

/// One problem that makes a policy unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ValidationError {
    /// The field, e.g. `spec.rules[1].match[0].headers.end-user.regex`.
    pub path: String,
    /// What is wrong with it.
    pub kind: ErrorKind,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ErrorKind {
    /// `apiVersion` is not [`API_VERSION`].
    #[error("unsupported apiVersion {found:?}; expected \"serin.io/v1\"")]
    UnsupportedApiVersion {
        /// What was written.
        found: String,
    },
    /// `kind` is not [`KIND`].
    #[error("kind {found:?} is not a traffic policy; expected \"TrafficPolicy\"")]
    WrongKind {
        /// What was written.
        found: String,
    },
    /// A required name is the empty string.
    #[error("{what} is empty")]
    Empty {
        /// Which name (`rule name`, `version`, ...).
        what: &'static str,
    },
    /// `spec.service` is empty.
    #[error("service is empty; name the service whose versions this policy routes")]
    EmptyService,
    /// `spec.service` is not a DNS name.
    #[error(
        "invalid service name {name:?}: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
    )]
    InvalidServiceName {
        /// What was written.
        name: String,
    },
    /// A version is not a valid `version` label value.
    #[error(
        "invalid version {version:?}: versions are pod label values (letters, digits, '-', '_', '.', starting and ending with a letter or digit, at most 63 characters)"
    )]
    InvalidVersion {
        /// What was written.
        version: String,
    },
    /// A route lists no version.
    #[error("route has no versions")]
    EmptyRoute,
    /// Every weight of a route is zero.
    #[error("all weights are zero; at least one version must have a positive weight")]
    AllWeightsZero,
    /// A weight is negative, fractional or too large.
    #[error(transparent)]
    Weight(#[from] WeightError),
    /// A route lists the same version twice.
    #[error("version {version:?} is listed twice in this route (first at {first})")]
    DuplicateVersion {
        /// The version.
        version: String,
        /// Path of the first entry.
        first: String,
    },
    /// Two rules have the same name.
    #[error("duplicate rule name {name:?} (first used by {first})")]
    DuplicateRuleName {
        /// The name.
        name: String,
        /// Path of the first rule with it.
        first: String,
    },
    /// A rule has no match block.
    #[error("rule has no match blocks; a rule that takes every request belongs in spec.default")]
    NoMatchBlocks,
    /// A match block has no condition.
    #[error("match block has no conditions; it would take every request")]
    EmptyMatchBlock,
    /// A matcher sets none or several of its kinds.
    #[error("exactly one of {allowed} must be set, found {found}")]
    MatcherKinds {
        /// The kinds this matcher takes.
        allowed: &'static str,
        /// `none`, or the kinds that were set.
        found: String,
    },
    /// `ignoreCase` together with `present`.
    #[error("ignoreCase has no meaning with present")]
    IgnoreCaseWithPresent,
    /// A regex that does not compile.
    #[error("invalid regex {pattern:?}{}: {message}", column.map(|c| format!(" at column {c}")).unwrap_or_default())]
    InvalidRegex {
        /// The pattern as written.
        pattern: String,
        /// 1-based column (in characters) in the pattern, when the parser knows it.
        column: Option<usize>,
        /// The regex parser's reason.
        message: String,
    },
    /// A header name that HTTP does not allow.
    #[error("invalid header name {name:?}")]
    InvalidHeaderName {
        /// What was written.
        name: String,
    },
    /// A cookie name that RFC 6265 does not allow.
    #[error("invalid cookie name {name:?}: cookie names are RFC 7230 tokens")]
    InvalidCookieName {
        /// What was written.
        name: String,
    },
    /// A method that is not an HTTP token.
    #[error("invalid HTTP method {method:?}")]
    InvalidMethod {
        /// What was written.
        method: String,
    },
    /// `os: []`.
    #[error("os list is empty; it would never match")]
    EmptyOsList,
    /// An OS name that is not one of the classes.
    #[error(
        "unknown os {name:?}; expected one of android, ios, ipados, macos, windows, linux, chromeos, harmonyos, other"
    )]
    UnknownOs {
        /// What was written.
        name: String,
    },
    /// Mirror percent outside `(0, 100]`.
    #[error("mirror percent {percent} is outside (0, 100]")]
    MirrorPercent {
        /// What was written.
        percent: f64,
    },
    /// Stickiness sets none or both of `cookie` and `header`.
    #[error("stickiness needs exactly one of cookie or header, found {found}")]
    StickinessKinds {
        /// `none` or `cookie and header`.
        found: &'static str,
    },
}

/// Something worth telling the user that does not stop the policy from working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {kind}")]
pub struct ValidationWarning {
    /// The field.
    pub path: String,
    /// What to know about it.
    pub kind: WarningKind,
}

/// What a warning is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WarningKind {
    /// A routed version has no pods (yet).
    #[error(
        "version {version:?} of service {service:?} has no pods yet; requests will fall back to the default route"
    )]
    RouteVersionWithoutPods {
        /// The version.
        version: String,
        /// The service.
        service: String,
    },
    /// The mirror version has no pods (yet).
    #[error(
        "version {version:?} of service {service:?} has no pods yet; mirrored copies will be dropped until it has"
    )]
    MirrorVersionWithoutPods {
        /// The version.
        version: String,
        /// The service.
        service: String,
    },
    /// A method that is not uppercase: methods are case-sensitive and clients send uppercase.
    #[error(
        "method {method:?} is not uppercase; HTTP methods are case-sensitive, so this matches only clients that send it exactly so"
    )]
    MethodNotUppercase {
        /// What was written.
        method: String,
    },
}

/// A policy that passed validation: its compiled form and the warnings.
#[derive(Debug, Clone)]
pub struct Validated {
    compiled: CompiledPolicy,
    warnings: Vec<ValidationWarning>,
}

impl Validated {
    /// Things worth telling the user (e.g. versions with no pods yet).
    pub fn warnings(&self) -> &[ValidationWarning] {
        &self.warnings
    }

    /// The compiled policy.
    pub fn compiled(&self) -> &CompiledPolicy {
        &self.compiled
    }

    /// The compiled policy, for the request path.
    pub fn into_compiled(self) -> CompiledPolicy {
        self.compiled
    }
}

impl CompiledPolicy {
    /// Validates and compiles `policy` (no version warnings).
    pub fn new(policy: &TrafficPolicy) -> Result<CompiledPolicy, Vec<ValidationError>> {
        validate(policy, None).map(Validated::into_compiled)
    }
}

/// Checks everything in `policy` and compiles it. `known_versions`, when given, is the set of
/// versions of the service that have pods; routed or mirrored versions outside it are warnings.
pub fn validate(
    policy: &TrafficPolicy,
    known_versions: Option<&BTreeSet<String>>,
) -> Result<Validated, Vec<ValidationError>> {
    let spec = &policy.spec;
    let mut v = Validator {
        errors: Vec::new(),
        warnings: Vec::new(),
        known_versions,
        service: &spec.service,
        cookie_names: NameTable::default(),
        query_names: NameTable::default(),
        needs_os: false,
    };

    if policy.api_version != API_VERSION {
        v.error(
            "apiVersion",
            ErrorKind::UnsupportedApiVersion {
                found: policy.api_version.clone(),
            },
        );
    }
    if policy.kind != KIND {
        v.error(
            "kind",
            ErrorKind::WrongKind {
                found: policy.kind.clone(),
            },
        );
    }
    if policy.metadata.name.is_empty() {
        v.error("metadata.name", ErrorKind::Empty { what: "name" });
    }
    if policy.metadata.namespace.is_empty() {
        v.error("metadata.namespace", ErrorKind::Empty { what: "namespace" });
    }
    if spec.service.is_empty() {
        v.error("spec.service", ErrorKind::EmptyService);
    } else if !is_dns_name(&spec.service) {
        v.error(
            "spec.service",
            ErrorKind::InvalidServiceName {
                name: spec.service.clone(),
            },
        );
    }

    let mut rules = Vec::with_capacity(spec.rules.len());
    let mut rule_names: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        if rule.name.is_empty() {
            v.error(
                format!("{path}.name"),
                ErrorKind::Empty { what: "rule name" },
            );
        } else if let first = *rule_names.entry(&rule.name).or_insert(i)
            && first != i
        {
            v.error(
                format!("{path}.name"),
                ErrorKind::DuplicateRuleName {
                    name: rule.name.clone(),
                    first: format!("spec.rules[{first}]"),
                },
            );
        }
        if rule.matches.is_empty() {
            v.error(format!("{path}.match"), ErrorKind::NoMatchBlocks);
        }
        let blocks: Vec<_> = rule
            .matches
            .iter()
            .enumerate()
            .filter_map(|(j, block)| v.block(&format!("{path}.match[{j}]"), block))
            .collect();
        let split = v.route(&format!("{path}.route"), &rule.route);
        if let Some(split) = split {
            rules.push(CompiledRule {
                name: rule.name.clone(),
                blocks,
                split,
            });
        }
    }

    let default = v.route("spec.default.route", &spec.default.route);

    let mirror = spec.mirror.as_ref().and_then(|m| {
        let ok_version = v.version("spec.mirror.version", &m.version);
        if !(m.percent > 0.0 && m.percent <= 100.0) {
            v.error(
                "spec.mirror.percent",
                ErrorKind::MirrorPercent { percent: m.percent },
            );
            return None;
        }
        if ok_version && !v.has_pods(&m.version) {
            v.warn(
                "spec.mirror.version",
                WarningKind::MirrorVersionWithoutPods {
                    version: m.version.clone(),
                    service: spec.service.clone(),
                },
            );
        }
        ok_version.then(|| CompiledMirror::new(m.version.clone(), m.percent))
    });

    let sticky = spec
        .stickiness
        .as_ref()
        .and_then(|s| match (&s.cookie, &s.header) {
            (Some(name), None) => {
                if cookie::is_valid_name(name) {
                    Some(StickyKey::Cookie(v.cookie_names.intern(name.as_bytes())))
                } else {
                    v.error(
                        "spec.stickiness.cookie",
                        ErrorKind::InvalidCookieName { name: name.clone() },
                    );
                    None
                }
            }
            (None, Some(name)) => v
                .header_name("spec.stickiness.header", name)
                .map(StickyKey::Header),
            (None, None) => {
                v.error(
                    "spec.stickiness",
                    ErrorKind::StickinessKinds { found: "none" },
                );
                None
            }
            (Some(_), Some(_)) => {
                v.error(
                    "spec.stickiness",
                    ErrorKind::StickinessKinds {
                        found: "cookie and header",
                    },
                );
                None
            }
        });

    let Validator {
        errors,
        warnings,
        cookie_names,
        query_names,
        needs_os,
        ..
    } = v;
    match default {
        Some(default) if errors.is_empty() => Ok(Validated {
            compiled: CompiledPolicy {
                name: policy.metadata.name.clone(),
                namespace: policy.metadata.namespace.clone(),
                service: spec.service.clone(),
                generation: policy.metadata.generation,
                rules,
                default,
                mirror,
                sticky,
                service_seed: service_seed(&spec.service),
                cookie_names,
                query_names,
                needs_os,
            },
            warnings,
        }),
        _ => Err(errors),
    }
}

struct Validator<'p> {
    errors: Vec<ValidationError>,
    warnings: Vec<ValidationWarning>,
    known_versions: Option<&'p BTreeSet<String>>,
    service: &'p str,
    cookie_names: NameTable,
    query_names: NameTable,
    needs_os: bool,
}

impl Validator<'_> {
    fn error(&mut self, path: impl Into<String>, kind: ErrorKind) {
        self.errors.push(ValidationError {
            path: path.into(),
            kind,
        });
    }

    fn warn(&mut self, path: impl Into<String>, kind: WarningKind) {
        self.warnings.push(ValidationWarning {
            path: path.into(),
            kind,
        });
    }

    fn has_pods(&self, version: &str) -> bool {
        self.known_versions
            .is_none_or(|known| known.contains(version))
    }

    /// Checks a version name; true if it is valid.
    fn version(&mut self, path: &str, version: &str) -> bool {
        if version.is_empty() {
            self.error(path, ErrorKind::Empty { what: "version" });
            false
        } else if !is_label_value(version) {
            self.error(
                path,
                ErrorKind::InvalidVersion {
                    version: version.to_owned(),
                },
            );
            false
        } else {
            true
        }
    }

    fn route(&mut self, path: &str, route: &[VersionWeight]) -> Option<Split> {
        if route.is_empty() {
            self.error(path, ErrorKind::EmptyRoute);
            return None;
        }
        let mut ok = true;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut entries = Vec::with_capacity(route.len());
        for (k, entry) in route.iter().enumerate() {
            let version_path = format!("{path}[{k}].version");
            if !self.version(&version_path, &entry.version) {
                ok = false;
            } else if let first = *seen.entry(&entry.version).or_insert(k)
                && first != k
            {
                ok = false;
                self.error(
                    &*version_path,
                    ErrorKind::DuplicateVersion {
                        version: entry.version.clone(),
                        first: format!("{path}[{first}]"),
                    },
                );
            }
            match entry.weight.get() {
                Ok(weight) => {
                    if weight > 0
                        && is_label_value(&entry.version)
                        && !self.has_pods(&entry.version)
                    {
                        let (version, service) = (entry.version.clone(), self.service.to_owned());
                        self.warn(
                            version_path,
                            WarningKind::RouteVersionWithoutPods { version, service },
                        );
                    }
                    entries.push((entry.version.as_str(), weight));
                }
                Err(e) => {
                    ok = false;
                    self.error(format!("{path}[{k}].weight"), e.into());
                }
            }
        }
        if entries.len() == route.len() && entries.iter().all(|(_, w)| *w == 0) {
            self.error(path, ErrorKind::AllWeightsZero);
            return None;
        }
        if !ok {
            return None;
        }
        Split::new(entries)
    }

    fn block(&mut self, path: &str, block: &MatchBlock) -> Option<CompiledBlock> {
        if block.is_empty() {
            self.error(path, ErrorKind::EmptyMatchBlock);
            return None;
        }
        let errors_before = self.errors.len();
        let mut out = CompiledBlock::default();

        if let Some(method) = &block.method {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                self.error(
                    format!("{path}.method"),
                    ErrorKind::InvalidMethod {
                        method: method.clone(),
                    },
                );
            } else if method.bytes().any(|b| b.is_ascii_lowercase()) {
                self.warn(
                    format!("{path}.method"),
                    WarningKind::MethodNotUppercase {
                        method: method.clone(),
                    },
                );
            }
            out.method = Some(method.as_str().into());
        }
        if let Some(uri) = &block.uri {
            out.uri = self.uri(&format!("{path}.uri"), uri);
        }
        for (name, m) in &block.headers {
            let field = format!("{path}.headers{}", key_segment(name));
            let header = self.header_name(&field, name);
            if let (Some(header), Some(m)) = (header, self.string_match(&field, m)) {
                out.headers.push((header, m));
            }
        }
        for (name, m) in &block.cookies {
            let field = format!("{path}.cookies{}", key_segment(name));
            if !cookie::is_valid_name(name) {
                self.error(&*field, ErrorKind::InvalidCookieName { name: name.clone() });
            }
            if let Some(m) = self.string_match(&field, m) {
                out.cookies
                    .push((self.cookie_names.intern(name.as_bytes()), m));
            }
        }
        for (name, m) in &block.query {
            let field = format!("{path}.query{}", key_segment(name));
            if name.is_empty() {
                self.error(
                    &*field,
                    ErrorKind::Empty {
                        what: "query parameter name",
                    },
                );
            }
            if let Some(m) = self.string_match(&field, m) {
                out.query
                    .push((self.query_names.intern(name.as_bytes()), m));
            }
        }
        if let Some(names) = &block.os {
            if names.is_empty() {
                self.error(format!("{path}.os"), ErrorKind::EmptyOsList);
            }
            let mut set = OsSet::default();
            for (k, name) in names.iter().enumerate() {
                match OsClass::from_name(name) {
                    Some(class) => set.insert(class),
                    None => self.error(
                        format!("{path}.os[{k}]"),
                        ErrorKind::UnknownOs { name: name.clone() },
                    ),
                }
            }
            self.needs_os = true;
            out.os = Some(set);
        }
        (self.errors.len() == errors_before).then_some(out)
    }

    fn header_name(&mut self, path: &str, name: &str) -> Option<HeaderName> {
        // HeaderName lowercases: names match case-insensitively.
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                self.error(
                    path,
                    ErrorKind::InvalidHeaderName {
                        name: name.to_owned(),
                    },
                );
                None
            }
        }
    }

    fn string_match(&mut self, path: &str, m: &StringMatch) -> Option<ValueMatcher> {
        let kinds = [
            ("exact", m.exact.is_some()),
            ("prefix", m.prefix.is_some()),
            ("regex", m.regex.is_some()),
            ("present", m.present.is_some()),
        ];
        if !self.one_kind(path, "exact, prefix, regex, present", &kinds) {
            return None;
        }
        if m.present.is_some() && m.ignore_case {
            self.error(
                format!("{path}.ignoreCase"),
                ErrorKind::IgnoreCaseWithPresent,
            );
            return None;
        }
        if let Some(v) = &m.exact {
            Some(ValueMatcher::exact(v, m.ignore_case))
        } else if let Some(v) = &m.prefix {
            Some(ValueMatcher::prefix(v, m.ignore_case))
        } else if let Some(p) = &m.regex {
            self.regex(&format!("{path}.regex"), p, m.ignore_case)
        } else {
            m.present.map(ValueMatcher::Present)
        }
    }

    fn uri(&mut self, path: &str, m: &UriMatch) -> Option<ValueMatcher> {
        let kinds = [
            ("exact", m.exact.is_some()),
            ("prefix", m.prefix.is_some()),
            ("regex", m.regex.is_some()),
        ];
        if !self.one_kind(path, "exact, prefix, regex", &kinds) {
            return None;
        }
        if let Some(v) = &m.exact {
            Some(ValueMatcher::exact(v, false))
        } else if let Some(v) = &m.prefix {
            Some(ValueMatcher::prefix(v, false))
        } else {
            self.regex(&format!("{path}.regex"), m.regex.as_deref()?, false)
        }
    }

    fn one_kind(&mut self, path: &str, allowed: &'static str, kinds: &[(&str, bool)]) -> bool {
        let set: Vec<&str> = kinds
            .iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| *k)
            .collect();
        if set.len() == 1 {
            return true;
        }
        let found = if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(" and ")
        };
        self.error(path, ErrorKind::MatcherKinds { allowed, found });
        false
    }

    fn regex(&mut self, path: &str, pattern: &str, ignore_case: bool) -> Option<ValueMatcher> {
        ValueMatcher::regex(pattern, ignore_case)
            .map_err(|kind| self.error(path, kind))
            .ok()
    }
}

/// `.name` for plain keys, `["odd.name"]` for keys with dots, spaces or other characters.
fn key_segment(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        format!(".{key}")
    } else {
        format!("[{key:?}]")
    }
}

/// A Kubernetes label value (what a pod's `version` label may hold), non-empty.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: how Kubernetes and the local mesh name services.
fn is_dns_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
}

impl fmt::Display for Validated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy {} for service {} is valid",
            self.compiled.name, self.compiled.service
        )?;
        for w in &self.warnings {
            write!(f, "\nwarning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Weight, WeightError};
    use crate::parse::parse_policy;

    /// A policy whose `spec:` body is `spec` (indented by two spaces in the text).
    fn policy(spec: &str) -> TrafficPolicy {
        let text = format!(
            "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata: {{name: reviews, namespace: default}}\nspec:\n{spec}"
        );
        parse_policy(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(spec: &str) -> Vec<(String, ErrorKind)> {
        match validate(&policy(spec), None) {
            Ok(_) => panic!("expected errors for:\n{spec}"),
            Err(errors) => errors.into_iter().map(|e| (e.path, e.kind)).collect(),
        }
    }

    fn single_error(spec: &str) -> (String, ErrorKind) {
        let mut all = errors(spec);
        assert_eq!(all.len(), 1, "{all:?}");
        all.remove(0)
    }

    const DEFAULT: &str = "  default: {route: [{version: v1, weight: 1}]}\n";

    fn with_rule(rule: &str) -> String {
        format!("  service: reviews\n  rules:\n{rule}{DEFAULT}")
    }

    #[test]
    fn the_design_example_parses_and_validates() {
        let design = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/DESIGN.md"
        ))
        .expect("shared/DESIGN.md beside the repo");
        let section = &design[design
            .find("### TrafficPolicy")
            .expect("TrafficPolicy section")..];
        let start = section.find("```yaml\n").expect("yaml block") + "```yaml\n".len();
        let yaml = &section[start..start + section[start..].find("```").unwrap()];
        let policy = parse_policy(yaml).unwrap_or_else(|e| panic!("{e}"));
        let known: BTreeSet<String> = ["v1", "v2", "v3"].map(String::from).into();
        let validated = validate(&policy, Some(&known)).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            validated.warnings().is_empty(),
            "{:?}",
            validated.warnings()
        );
        let compiled = validated.compiled();
        assert_eq!(compiled.service(), "reviews");
        assert_eq!(compiled.rule_count(), 1);
        assert_eq!(compiled.rule_name(0), "testers");
        assert!(compiled.needs_os() && compiled.needs_cookies() && compiled.needs_query());
        assert_eq!(compiled.mirror_policy(), Some(("v2", 10.0)));
        assert_eq!(compiled.versions(), ["v3", "v1", "v2"]);
        // The example's rule needs every condition at once.
        let req = http::Request::builder()
            .method("GET")
            .uri("/beta/x?beta=1")
            .header("end-user", "jason")
            .header("cookie", "canary=always")
            .header(
                "user-agent",
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X)",
            )
            .body(())
            .unwrap();
        assert_eq!(compiled.decide(&req, 0, |_| true).version(), Some("v3"));
    }

    #[test]
    fn all_weights_zero() {
        let spec = "  service: reviews\n  default: {route: [{version: v1, weight: 0}, {version: v2, weight: 0}]}\n";
        assert_eq!(
            single_error(spec),
            ("spec.default.route".into(), ErrorKind::AllWeightsZero)
        );
        let (path, kind) = single_error(spec);
        let shown = ValidationError { path, kind }.to_string();
        assert_eq!(
            shown,
            "spec.default.route: all weights are zero; at least one version must have a positive weight"
        );
    }

    #[test]
    fn negative_fractional_and_too_large_weights() {
        let rule = |w: &str| {
            with_rule(&format!(
                "  - name: r\n    match: [{{method: GET}}]\n    route: [{{version: v2, weight: {w}}}]\n"
            ))
        };
        let path = "spec.rules[0].route[0].weight".to_owned();
        assert_eq!(
            single_error(&rule("-5")),
            (path.clone(), ErrorKind::Weight(WeightError::Negative(-5)))
        );
        assert_eq!(
            single_error(&rule("1.5")),
            (path.clone(), ErrorKind::Weight(WeightError::NotWhole(1.5)))
        );
        assert_eq!(
            single_error(&rule("99999999999")),
            (
                path,
                ErrorKind::Weight(WeightError::TooLarge(99_999_999_999))
            )
        );
        let (_, kind) = single_error(&rule("1e40"));
        assert!(
            matches!(kind, ErrorKind::Weight(WeightError::TooLarge(_))),
            "{kind}"
        );
        assert!(kind.to_string().contains("too large"), "{kind}");
        assert_eq!(
            single_error(&rule("-5")).1.to_string(),
            "weight -5 is negative; weights are whole numbers from 0 to 1000000"
        );
        // 50.0 is a whole number (JSON has no integer type).
        assert!(validate(&policy(&rule("50.0")), None).is_ok());
        assert_eq!(Weight::Whole(50).get(), Ok(50));
    }

    #[test]
    fn mirror_percent_outside_range() {
        for percent in ["0", "-1", "100.5", "250", ".nan"] {
            let spec = format!(
                "  service: reviews\n{DEFAULT}  mirror: {{version: v2, percent: {percent}}}\n"
            );
            let (path, kind) = single_error(&spec);
            assert_eq!(path, "spec.mirror.percent");
            assert!(matches!(kind, ErrorKind::MirrorPercent { .. }), "{kind}");
            assert!(kind.to_string().contains("outside (0, 100]"), "{kind}");
        }
        let spec =
            format!("  service: reviews\n{DEFAULT}  mirror: {{version: v2, percent: 0.5}}\n");
        assert!(validate(&policy(&spec), None).is_ok());
    }

    #[test]
    fn invalid_regex_names_field_and_position() {
        let spec = with_rule(
            "  - name: a\n    match: [{method: GET}]\n    route: [{version: v1, weight: 1}]\n  \
             - name: b\n    match: [{headers: {end-user: {regex: 'ja(son'}}}]\n    route: [{version: v2, weight: 1}]\n",
        );
        let (path, kind) = single_error(&spec);
        assert_eq!(path, "spec.rules[1].match[0].headers.end-user.regex");
        assert_eq!(
            kind,
            ErrorKind::InvalidRegex {
                pattern: "ja(son".into(),
                column: Some(3),
                message: "unclosed group".into()
            }
        );
        assert_eq!(
            kind.to_string(),
            "invalid regex \"ja(son\" at column 3: unclosed group"
        );
        let uri = with_rule(
            "  - name: u\n    match: [{uri: {regex: '/a[z-a]'}}]\n    route: [{version: v1, weight: 1}]\n",
        );
        let (path, kind) = single_error(&uri);
        assert_eq!(path, "spec.rules[0].match[0].uri.regex");
        assert!(kind.to_string().contains("column 4"), "{kind}");
    }

    #[test]
    fn empty_blocks_rules_and_routes() {
        let spec =
            with_rule("  - name: a\n    match: [{}]\n    route: [{version: v1, weight: 1}]\n");
        assert_eq!(
            single_error(&spec),
            ("spec.rules[0].match[0]".into(), ErrorKind::EmptyMatchBlock)
        );
        let spec = with_rule("  - name: a\n    match: []\n    route: [{version: v1, weight: 1}]\n");
        assert_eq!(
            single_error(&spec),
            ("spec.rules[0].match".into(), ErrorKind::NoMatchBlocks)
        );
        let spec = with_rule("  - name: a\n    match: [{method: GET}]\n");
        assert_eq!(
            single_error(&spec),
            ("spec.rules[0].route".into(), ErrorKind::EmptyRoute)
        );
        let spec = with_rule(
            "  - name: ''\n    match: [{method: GET}]\n    route: [{version: v1, weight: 1}]\n",
        );
        assert_eq!(
            single_error(&spec),
            (
                "spec.rules[0].name".into(),
                ErrorKind::Empty { what: "rule name" }
            )
        );
        let spec = "  service: reviews\n  default: {route: []}\n";
        assert_eq!(
            single_error(spec),
            ("spec.default.route".into(), ErrorKind::EmptyRoute)
        );
    }

    #[test]
    fn an_empty_rule_entry_reports_each_missing_part() {
        assert_eq!(
            errors(&with_rule("  - {}\n")),
            vec![
                (
                    "spec.rules[0].name".into(),
                    ErrorKind::Empty { what: "rule name" }
                ),
                ("spec.rules[0].match".into(), ErrorKind::NoMatchBlocks),
                ("spec.rules[0].route".into(), ErrorKind::EmptyRoute),
            ]
        );
    }

    #[test]
    fn duplicate_rule_names_and_versions() {
        let r =
            "  - name: same\n    match: [{method: GET}]\n    route: [{version: v1, weight: 1}]\n";
        let spec = with_rule(&format!("{r}{r}{r}"));
        assert_eq!(
            errors(&spec),
            vec![
                (
                    "spec.rules[1].name".into(),
                    ErrorKind::DuplicateRuleName {
                        name: "same".into(),
                        first: "spec.rules[0]".into()
                    }
                ),
                (
                    "spec.rules[2].name".into(),
                    ErrorKind::DuplicateRuleName {
                        name: "same".into(),
                        first: "spec.rules[0]".into()
                    }
                ),
            ]
        );
        let spec = "  service: reviews\n  default: {route: [{version: v1, weight: 1}, {version: v1, weight: 2}]}\n";
        assert_eq!(
            single_error(spec),
            (
                "spec.default.route[1].version".into(),
                ErrorKind::DuplicateVersion {
                    version: "v1".into(),
                    first: "spec.default.route[0]".into()
                }
            )
        );
    }

    #[test]
    fn unknown_os_and_empty_os_list() {
        let spec = with_rule(
            "  - name: m\n    match: [{os: [ios, darwin]}]\n    route: [{version: v1, weight: 1}]\n",
        );
        let (path, kind) = single_error(&spec);
        assert_eq!(path, "spec.rules[0].match[0].os[1]");
        assert_eq!(
            kind,
            ErrorKind::UnknownOs {
                name: "darwin".into()
            }
        );
        assert!(
            kind.to_string().contains("expected one of android, ios"),
            "{kind}"
        );
        let spec = with_rule(
            "  - name: m\n    match: [{os: []}]\n    route: [{version: v1, weight: 1}]\n",
        );
        assert_eq!(
            single_error(&spec),
            ("spec.rules[0].match[0].os".into(), ErrorKind::EmptyOsList)
        );
    }

    #[test]
    fn empty_or_invalid_service_and_metadata() {
        assert_eq!(
            single_error(&format!("  service: ''\n{DEFAULT}")),
            ("spec.service".into(), ErrorKind::EmptyService)
        );
        let (path, kind) = single_error(&format!("  service: Reviews_V2\n{DEFAULT}"));
        assert_eq!(
            (
                path.as_str(),
                matches!(kind, ErrorKind::InvalidServiceName { .. })
            ),
            ("spec.service", true)
        );
        let mut p = policy(&format!("  service: reviews\n{DEFAULT}"));
        p.api_version = "serin.io/v2".into();
        p.kind = "Policy".into();
        p.metadata.name.clear();
        let paths: Vec<String> = validate(&p, None)
            .unwrap_err()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(paths, ["apiVersion", "kind", "metadata.name"]);
    }

    #[test]
    fn string_match_needs_exactly_one_kind() {
        let rule = |m: &str| {
            with_rule(&format!(
                "  - name: m\n    match: [{{headers: {{x-a: {m}}}}}]\n    route: [{{version: v1, weight: 1}}]\n"
            ))
        };
        let allowed = "exact, prefix, regex, present";
        assert_eq!(
            single_error(&rule("{}")),
            (
                "spec.rules[0].match[0].headers.x-a".into(),
                ErrorKind::MatcherKinds {
                    allowed,
                    found: "none".into()
                }
            )
        );
        let (path, kind) = single_error(&rule("{exact: a, prefix: b, present: true}"));
        assert_eq!(path, "spec.rules[0].match[0].headers.x-a");
        assert_eq!(
            kind.to_string(),
            "exactly one of exact, prefix, regex, present must be set, found exact and prefix and present"
        );
        assert_eq!(
            single_error(&rule("{present: true, ignoreCase: true}")),
            (
                "spec.rules[0].match[0].headers.x-a.ignoreCase".into(),
                ErrorKind::IgnoreCaseWithPresent
            )
        );
        let spec = with_rule(
            "  - name: m\n    match: [{uri: {exact: /a, prefix: /b}}]\n    route: [{version: v1, weight: 1}]\n",
        );
        let (path, kind) = single_error(&spec);
        assert_eq!(path, "spec.rules[0].match[0].uri");
        assert_eq!(
            kind,
            ErrorKind::MatcherKinds {
                allowed: "exact, prefix, regex",
                found: "exact and prefix".into()
            }
        );
    }

    #[test]
    fn invalid_header_cookie_and_query_names() {
        let spec = with_rule(
            "  - name: m\n    match: [{headers: {'bad header': {exact: a}, 'x:y': {exact: b}}, cookies: {'a=b': {present: true}}, query: {'': {exact: c}}}]\n    route: [{version: v1, weight: 1}]\n",
        );
        assert_eq!(
            errors(&spec),
            vec![
                (
                    "spec.rules[0].match[0].headers[\"bad header\"]".into(),
                    ErrorKind::InvalidHeaderName {
                        name: "bad header".into()
                    }
                ),
                (
                    "spec.rules[0].match[0].headers[\"x:y\"]".into(),
                    ErrorKind::InvalidHeaderName { name: "x:y".into() }
                ),
                (
                    "spec.rules[0].match[0].cookies[\"a=b\"]".into(),
                    ErrorKind::InvalidCookieName { name: "a=b".into() }
                ),
                (
                    "spec.rules[0].match[0].query[\"\"]".into(),
                    ErrorKind::Empty {
                        what: "query parameter name"
                    }
                ),
            ]
        );
    }

    #[test]
    fn method_invalid_is_an_error_lowercase_a_warning() {
        let rule = |m: &str| {
            with_rule(&format!(
                "  - name: m\n    match: [{{method: '{m}'}}]\n    route: [{{version: v1, weight: 1}}]\n"
            ))
        };
        assert_eq!(
            single_error(&rule("GE T")),
            (
                "spec.rules[0].match[0].method".into(),
                ErrorKind::InvalidMethod {
                    method: "GE T".into()
                }
            )
        );
        let ok = validate(&policy(&rule("get")), None).unwrap();
        assert_eq!(ok.warnings()[0].path, "spec.rules[0].match[0].method");
        assert!(matches!(
            ok.warnings()[0].kind,
            WarningKind::MethodNotUppercase { .. }
        ));
    }

    #[test]
    fn stickiness_needs_one_valid_key() {
        let sticky = |s: &str| format!("  service: reviews\n{DEFAULT}  stickiness: {s}\n");
        assert_eq!(
            single_error(&sticky("{}")),
            (
                "spec.stickiness".into(),
                ErrorKind::StickinessKinds { found: "none" }
            )
        );
        assert_eq!(
            single_error(&sticky("{cookie: uid, header: x-user}")),
            (
                "spec.stickiness".into(),
                ErrorKind::StickinessKinds {
                    found: "cookie and header"
                }
            )
        );
        assert_eq!(
            single_error(&sticky("{cookie: 'u id'}")),
            (
                "spec.stickiness.cookie".into(),
                ErrorKind::InvalidCookieName {
                    name: "u id".into()
                }
            )
        );
        assert_eq!(
            single_error(&sticky("{header: 'x user'}")),
            (
                "spec.stickiness.header".into(),
                ErrorKind::InvalidHeaderName {
                    name: "x user".into()
                }
            )
        );
        let p = CompiledPolicy::new(&policy(&sticky("{header: X-User-Id}"))).unwrap();
        assert!(!p.needs_cookies(), "a header key reads no cookies");
        assert!(
            CompiledPolicy::new(&policy(&sticky("{cookie: uid}")))
                .unwrap()
                .needs_cookies()
        );
    }

    #[test]
    fn invalid_versions() {
        let spec = "  service: reviews\n  default: {route: [{version: '', weight: 1}, {version: 'v 2', weight: 1}]}\n  mirror: {version: '-v3', percent: 5}\n";
        assert_eq!(
            errors(spec),
            vec![
                (
                    "spec.default.route[0].version".into(),
                    ErrorKind::Empty { what: "version" }
                ),
                (
                    "spec.default.route[1].version".into(),
                    ErrorKind::InvalidVersion {
                        version: "v 2".into()
                    }
                ),
                (
                    "spec.mirror.version".into(),
                    ErrorKind::InvalidVersion {
                        version: "-v3".into()
                    }
                ),
            ]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let spec = "  service: ''\n  rules:\n  - name: a\n    match: [{}, {os: [bsd]}]\n    route: [{version: v1, weight: -1}]\n  \
                    default: {route: [{version: v1, weight: 0}]}\n  mirror: {version: v2, percent: 0}\n";
        let paths: Vec<String> = errors(spec).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "spec.service",
                "spec.rules[0].match[0]",
                "spec.rules[0].match[1].os[0]",
                "spec.rules[0].route[0].weight",
                "spec.default.route",
                "spec.mirror.percent",
            ]
        );
    }

    #[test]
    fn versions_without_pods_are_warnings() {
        let spec = "  service: reviews\n  rules:\n  - name: t\n    match: [{method: GET}]\n    route: [{version: v4, weight: 1}]\n  \
                    default: {route: [{version: v1, weight: 9}, {version: v3, weight: 1}, {version: v5, weight: 0}]}\n  \
                    mirror: {version: v6, percent: 5}\n";
        let known: BTreeSet<String> = ["v1", "v2"].map(String::from).into();
        let validated = validate(&policy(spec), Some(&known)).unwrap();
        let shown: Vec<String> = validated
            .warnings()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "spec.rules[0].route[0].version: version \"v4\" of service \"reviews\" has no pods yet; requests will fall back to the default route",
                "spec.default.route[1].version: version \"v3\" of service \"reviews\" has no pods yet; requests will fall back to the default route",
                "spec.mirror.version: version \"v6\" of service \"reviews\" has no pods yet; mirrored copies will be dropped until it has",
            ]
        );
        assert!(
            validate(&policy(spec), None).unwrap().warnings().is_empty(),
            "no set, no warnings"
        );
    }

    #[test]
    fn key_segments() {
        assert_eq!(key_segment("end-user"), ".end-user");
        assert_eq!(key_segment("a.b"), "[\"a.b\"]");
        assert_eq!(key_segment(""), "[\"\"]");
    }
}
