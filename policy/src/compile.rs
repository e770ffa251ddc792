//! The compiled form of a policy, built once when config arrives: anchored regexes, parsed header
//! names, interned cookie and query names, precomputed splits and the `needs_*` flags, so that the
//! request path only compares bytes.

use std::collections::HashMap;

use http::HeaderName;
use regex::bytes::{Regex, RegexBuilder};

use crate::os::OsSet;
use crate::split::Split;
use crate::validate::ErrorKind;

/// Largest compiled size of one regex (the `regex` crate's size limit), to bound memory per policy.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A policy ready for the request path. Build it with [`crate::validate()`] (which also reports
/// every problem) or [`CompiledPolicy::new`].
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) service: String,
    pub(crate) generation: Option<u64>,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) default: Split,
    pub(crate) mirror: Option<CompiledMirror>,
    pub(crate) sticky: Option<StickyKey>,
    pub(crate) service_seed: u64,
    pub(crate) cookie_names: NameTable,
    pub(crate) query_names: NameTable,
    pub(crate) needs_os: bool,
}

impl CompiledPolicy {
    /// The policy's `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy's `metadata.namespace`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service this policy routes.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The policy's `metadata.generation`, when the control plane set one.
    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// Number of rules; rule indexes in decisions are `0..rule_count()` (for hit counters).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The name of rule `index`.
    pub fn rule_name(&self, index: usize) -> &str {
        &self.rules[index].name
    }

    /// The split of rule `index`.
    pub fn rule_split(&self, index: usize) -> &Split {
        &self.rules[index].split
    }

    /// The default route's split.
    pub fn default_split(&self) -> &Split {
        &self.default
    }

    /// Some rule has an `os` condition: requests need classifying (at most once each).
    pub fn needs_os(&self) -> bool {
        self.needs_os
    }

    /// Some rule or the stickiness key reads cookies.
    pub fn needs_cookies(&self) -> bool {
        !self.cookie_names.is_empty()
    }

    /// Some rule reads query parameters.
    pub fn needs_query(&self) -> bool {
        !self.query_names.is_empty()
    }

    /// The mirror version and its share in percent, if mirroring is on.
    pub fn mirror_policy(&self) -> Option<(&str, f64)> {
        self.mirror
            .as_ref()
            .map(|m| (m.version.as_str(), m.percent))
    }

    /// Every version the policy names (routes and mirror), each once, in first-seen order.
    pub fn versions(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        let splits = self.rules.iter().map(|r| &r.split).chain([&self.default]);
        let routed = splits.flat_map(|s| (0..s.len()).map(move |i| s.version(i)));
        for v in routed.chain(self.mirror.as_ref().map(|m| m.version.as_str())) {
            if !seen.contains(&v) {
                seen.push(v);
            }
        }
        seen
    }
}

/// A rule ready for matching.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRule {
    pub(crate) name: String,
    pub(crate) blocks: Vec<CompiledBlock>,
    pub(crate) split: Split,
}

/// One match block; every present condition must hold. Conditions are checked cheapest first.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledBlock {
    pub(crate) method: Option<Box<str>>,
    pub(crate) uri: Option<ValueMatcher>,
    pub(crate) headers: Vec<(HeaderName, ValueMatcher)>,
    /// Cookie conditions by index into the policy's cookie [`NameTable`].
    pub(crate) cookies: Vec<(usize, ValueMatcher)>,
    /// Query conditions by index into the policy's query [`NameTable`].
    pub(crate) query: Vec<(usize, ValueMatcher)>,
    pub(crate) os: Option<OsSet>,
}

/// Mirroring, with the percent turned into a threshold on a random `u32`.
#[derive(Debug, Clone)]
pub(crate) struct CompiledMirror {
    pub(crate) version: String,
    pub(crate) percent: f64,
    /// A request is mirrored when `random < threshold` (`2^32` = always).
    pub(crate) threshold: u64,
}

impl CompiledMirror {
    pub(crate) fn new(version: String, percent: f64) -> Self {
        let threshold = ((percent / 100.0) * 4_294_967_296.0).round() as u64;
        Self {
            version,
            percent,
            threshold: threshold.min(1 << 32),
        }
    }
}

/// Where the sticky key comes from.
#[derive(Debug, Clone)]
pub(crate) enum StickyKey {
    /// A cookie, by index into the cookie [`NameTable`].
    Cookie(usize),
    /// A header (its first value).
    Header(HeaderName),
}

/// How one value (header, cookie, query parameter or path) is compared.
#[derive(Debug, Clone)]
pub(crate) enum ValueMatcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// `ignoreCase` exact or prefix: an ASCII fast path when pattern and value are ASCII (where
    /// ASCII folding equals Unicode simple folding), else the case-insensitive regex.
    Folded {
        ascii_pattern: Option<Box<[u8]>>,
        prefix: bool,
        regex: Regex,
    },
    Regex(Regex),
    Present(bool),
}

impl ValueMatcher {
    /// `exact` with or without `ignoreCase`.
    pub(crate) fn exact(value: &str, ignore_case: bool) -> Self {
        if ignore_case {
            Self::folded(value, false)
        } else {
            Self::Exact(value.as_bytes().into())
        }
    }

    /// `prefix` with or without `ignoreCase`.
    pub(crate) fn prefix(value: &str, ignore_case: bool) -> Self {
        if ignore_case {
            Self::folded(value, true)
        } else {
            Self::Prefix(value.as_bytes().into())
        }
    }

    fn folded(value: &str, prefix: bool) -> Self {
        let end = if prefix { "" } else { "$" };
        let pattern = format!("^(?i:{}){end}", regex::escape(value));
        let regex = RegexBuilder::new(&pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .expect("an escaped literal always compiles");
        let ascii_pattern = value.is_ascii().then(|| value.as_bytes().into());
        Self::Folded {
            ascii_pattern,
            prefix,
            regex,
        }
    }

    /// A full-match regex (RE2 syntax), with the user's pattern checked on its own first so that
    /// the error position refers to what the user wrote.
    pub(crate) fn regex(pattern: &str, ignore_case: bool) -> Result<Self, ErrorKind> {
        compile_full_match(pattern, ignore_case).map(Self::Regex)
    }

    /// True if one present value matches (for `present`, a value being there is enough).
    pub(crate) fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(p) => value == &**p,
            Self::Prefix(p) => value.starts_with(p),
            Self::Folded {
                ascii_pattern: Some(p),
                prefix,
                ..
            } if value.is_ascii() => {
                if *prefix {
                    value.len() >= p.len() && value[..p.len()].eq_ignore_ascii_case(p)
                } else {
                    value.eq_ignore_ascii_case(p)
                }
            }
            Self::Folded { regex, .. } | Self::Regex(regex) => regex.is_match(value),
            Self::Present(yes) => *yes,
        }
    }

    /// For single-valued inputs (a cookie, a query parameter): `None` means absent.
    pub(crate) fn matches_optional(&self, value: Option<&[u8]>) -> bool {
        match (self, value) {
            (Self::Present(yes), v) => *yes == v.is_some(),
            (_, Some(v)) => self.matches(v),
            (_, None) => false,
        }
    }

    /// For headers, which may have several values: true if any value matches; `present: false`
    /// holds only when there is no value at all.
    pub(crate) fn matches_any<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            Self::Present(yes) => *yes == values.next().is_some(),
            _ => values.any(|v| self.matches(v)),
        }
    }
}

fn compile_full_match(pattern: &str, ignore_case: bool) -> Result<Regex, ErrorKind> {
    let invalid = |column: Option<usize>, message: String| ErrorKind::InvalidRegex {
        pattern: pattern.to_owned(),
        column,
        message,
    };
    // regex::bytes semantics: Unicode on, but the pattern may match non-UTF-8 bytes.
    regex_syntax::ParserBuilder::new()
        .utf8(false)
        .case_insensitive(ignore_case)
        .build()
        .parse(pattern)
        .map_err(|e| match &e {
            regex_syntax::Error::Parse(e) => {
                invalid(Some(e.span().start.column), e.kind().to_string())
            }
            regex_syntax::Error::Translate(e) => {
                invalid(Some(e.span().start.column), e.kind().to_string())
            }
            other => invalid(None, other.to_string()),
        })?;
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .case_insensitive(ignore_case)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => invalid(
                None,
                format!("compiled regex exceeds the size limit of {limit} bytes"),
            ),
            other => invalid(None, other.to_string()),
        })
}

/// Names (cookies or query parameters) that some condition reads, interned to dense indexes so a
/// request is parsed once into a table of first values.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameTable {
    names: Vec<Box<[u8]>>,
    /// Built for larger tables; small ones are scanned (faster than hashing).
    index: Option<HashMap<Box<[u8]>, usize>>,
}

const NAME_TABLE_SCAN_MAX: usize = 8;

impl NameTable {
    pub(crate) fn intern(&mut self, name: &[u8]) -> usize {
        if let Some(i) = self.find(name) {
            return i;
        }
        self.names.push(name.into());
        let i = self.names.len() - 1;
        if self.names.len() > NAME_TABLE_SCAN_MAX {
            let index = self.index.get_or_insert_with(|| {
                self.names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), i))
                    .collect()
            });
            index.insert(name.into(), i);
        }
        i
    }

    pub(crate) fn find(&self, name: &[u8]) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(name).copied(),
            None => self.names.iter().position(|n| **n == *name),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix_are_case_sensitive_by_default() {
        let m = ValueMatcher::exact("Jason", false);
        assert!(m.matches(b"Jason"));
        assert!(!m.matches(b"jason"));
        assert!(!m.matches(b"Jason "));
        let m = ValueMatcher::prefix("/Beta", false);
        assert!(m.matches(b"/Beta/x") && m.matches(b"/Beta") && !m.matches(b"/beta"));
    }

    #[test]
    fn ignore_case_folds_ascii_and_unicode() {
        let m = ValueMatcher::exact("Jason", true);
        assert!(m.matches(b"jASON"));
        assert!(!m.matches(b"jasonx"));
        let m = ValueMatcher::prefix("straße", true);
        assert!(
            m.matches("STRAẞE-1".as_bytes()),
            "simple folding: ẞ folds to ß"
        );
        assert!(
            !m.matches("STRASSE".as_bytes()),
            "no full folding: ß is not ss"
        );
        assert!(m.matches("Straße-Nord".as_bytes()));
        // Unicode simple folding: KELVIN SIGN folds to k, which ASCII folding alone would miss.
        let m = ValueMatcher::exact("k", true);
        assert!(m.matches("\u{212A}".as_bytes()));
        assert!(m.matches(b"K"));
        let m = ValueMatcher::prefix("ab", true);
        assert!(m.matches(b"ABc") && !m.matches(b"a"));
    }

    #[test]
    fn regex_is_full_match_not_substring() {
        let m = ValueMatcher::regex("ja.on", false).unwrap();
        assert!(m.matches(b"jason"));
        assert!(!m.matches(b"jason2"));
        assert!(!m.matches(b"xjason"));
        // Alternation stays inside the anchors.
        let m = ValueMatcher::regex("a|b", false).unwrap();
        assert!(m.matches(b"a") && !m.matches(b"ab") && !m.matches(b"xa"));
        let m = ValueMatcher::regex("ja.on", true).unwrap();
        assert!(m.matches(b"JASON"));
    }

    #[test]
    fn regex_error_carries_column_of_the_users_pattern() {
        let err = ValueMatcher::regex("ab(c", false).unwrap_err();
        let ErrorKind::InvalidRegex {
            column, message, ..
        } = &err
        else {
            panic!("{err:?}")
        };
        assert_eq!(*column, Some(3), "{err}");
        assert!(message.contains("unclosed group"), "{err}");
        // Would compile inside `^(?:…)$` but is not a regex on its own.
        assert!(ValueMatcher::regex("a)|(b", false).is_err());
        // Backreferences and look-around are not RE2.
        let err = ValueMatcher::regex("(a)\\1", false).unwrap_err();
        assert!(err.to_string().contains("column 4"), "{err}");
    }

    #[test]
    fn oversized_regex_is_rejected() {
        let err = ValueMatcher::regex("\\w{1000}\\w{1000}\\w{1000}", false).unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
    }

    #[test]
    fn present_and_absent() {
        let yes = ValueMatcher::Present(true);
        let no = ValueMatcher::Present(false);
        assert!(yes.matches_optional(Some(b"")) && !yes.matches_optional(None));
        assert!(no.matches_optional(None) && !no.matches_optional(Some(b"x")));
        assert!(yes.matches_any([&b""[..]].into_iter()) && !yes.matches_any(std::iter::empty()));
        assert!(no.matches_any(std::iter::empty()) && !no.matches_any([&b"x"[..]].into_iter()));
        let exact = ValueMatcher::exact("x", false);
        assert!(!exact.matches_optional(None));
        assert!(
            exact.matches_any([&b"y"[..], b"x"].into_iter()),
            "any value may match"
        );
    }

    #[test]
    fn name_table_interns_small_and_large() {
        let mut t = NameTable::default();
        let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.intern(n.as_bytes()), i);
            assert_eq!(
                t.intern(n.as_bytes()),
                i,
                "interning twice gives the same index"
            );
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.find(n.as_bytes()), Some(i));
        }
        assert_eq!(t.find(b"c"), None);
        assert_eq!(t.len(), 20);
    }

    #[test]
    fn compiled_policy_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<CompiledPolicy>();
    }

    #[test]
    fn mirror_threshold() {
        assert_eq!(CompiledMirror::new("v2".into(), 100.0).threshold, 1 << 32);
        assert_eq!(CompiledMirror::new("v2".into(), 50.0).threshold, 1 << 31);
        assert!(CompiledMirror::new("v2".into(), 0.001).threshold > 0);
    }
}
