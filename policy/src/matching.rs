//! Request matching: the [`RequestView`] the proxy feeds from `http` types without copying, and
//! rule evaluation (rules in order, blocks ORed, conditions ANDed, first rule wins).
//!
//! Matching semantics, each tested below:
//! - header names are case-insensitive; a header sent several times matches if *any* of its values
//!   matches (each field line is one value: values are not split at commas); `present: false`
//!   holds only when the header is not sent at all;
//! - cookies are looked up by name in all `Cookie` headers together (see [`crate::cookie`]); the
//!   first cookie of a name wins; a cookie matcher never sees the whole header;
//! - `uri` compares the path as sent (no percent-decoding, no normalisation), query excluded;
//! - query parameters are percent-decoded with `+` as space; the first of a name wins (see
//!   [`crate::query`]);
//! - `method` is compared exactly;
//! - `os` classifies the client at most once per request, and only if a block asks.

use std::borrow::Cow;

use http::HeaderName;
use http::header::{COOKIE, USER_AGENT};

use crate::compile::{CompiledBlock, CompiledPolicy, NameTable, StickyKey};
use crate::os::{OsClass, classify};
use crate::split::{Split, sticky_bucket};
use crate::{cookie, query};

/// The `Sec-CH-UA-Platform` client hint header.
pub const SEC_CH_UA_PLATFORM: HeaderName = HeaderName::from_static("sec-ch-ua-platform");

/// What the policy reads from a request. Implemented for `http::request::Parts`,
/// `http::Request<B>` and [`RequestHead`]; all borrow, nothing is copied.
pub trait RequestView {
    /// The method (`GET`, ...).
    fn method(&self) -> &str;
    /// The path, without the query string.
    fn path(&self) -> &str;
    /// The query string without `?`, if any.
    fn query(&self) -> Option<&str>;
    /// Every value of header `name` (already lowercase), in the order received.
    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]>;
}

/// A request seen through borrowed `http` parts, for callers that hold them separately.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The URI (origin-form or absolute-form).
    pub uri: &'a http::Uri,
    /// The headers.
    pub headers: &'a http::HeaderMap,
}

impl RequestView for RequestHead<'_> {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }
}

impl RequestView for http::request::Parts {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }

    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }
}

impl<B> RequestView for http::Request<B> {
    fn method(&self) -> &str {
        self.method().as_str()
    }

    fn path(&self) -> &str {
        self.uri().path()
    }

    fn query(&self) -> Option<&str> {
        self.uri().query()
    }

    fn header_values<'a>(&'a self, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.headers()
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }
}

/// What took a request: a rule (and which of its blocks matched) or the default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TakenBy<'p> {
    /// Rule `index` (from 0, in policy order) named `name`; block `block` of it matched.
    Rule {
        /// Index of the rule.
        index: usize,
        /// Name of the rule.
        name: &'p str,
        /// Index of the matching block in the rule's `match` list.
        block: usize,
    },
    /// No rule matched.
    Default,
}

/// Facts about one request, each computed at most once and only when a condition asks.
pub(crate) struct Facts<'r, R: RequestView + ?Sized> {
    req: &'r R,
    os: Option<OsClass>,
    cookies: Option<Vec<Option<&'r [u8]>>>,
    query: Option<Vec<Option<Cow<'r, [u8]>>>>,
}

impl<'r, R: RequestView + ?Sized> Facts<'r, R> {
    pub(crate) fn new(req: &'r R) -> Self {
        Self {
            req,
            os: None,
            cookies: None,
            query: None,
        }
    }

    fn os(&mut self) -> OsClass {
        let req = self.req;
        *self.os.get_or_insert_with(|| {
            let hint = req.header_values(&SEC_CH_UA_PLATFORM).next();
            classify(hint, req.header_values(&USER_AGENT).next())
        })
    }

    /// The first value of cookie `index` of `names`; all `Cookie` headers parsed once.
    pub(crate) fn cookie(&mut self, names: &NameTable, index: usize) -> Option<&'r [u8]> {
        let req = self.req;
        let slots = self.cookies.get_or_insert_with(|| {
            let mut slots = vec![None; names.len()];
            for header in req.header_values(&COOKIE) {
                for (name, value) in cookie::pairs(header) {
                    if let Some(i) = names.find(name) {
                        slots[i].get_or_insert(value);
                    }
                }
            }
            slots
        });
        slots[index]
    }

    /// The decoded first value of query parameter `index` of `names`; the query parsed once.
    fn query(&mut self, names: &NameTable, index: usize) -> Option<&[u8]> {
        let req = self.req;
        let slots = self.query.get_or_insert_with(|| {
            let mut slots: Vec<Option<Cow<'r, [u8]>>> = (0..names.len()).map(|_| None).collect();
            for (raw_name, raw_value) in query::raw_pairs(req.query().unwrap_or("")) {
                if let Some(i) = names.find(&query::decode(raw_name))
                    && slots[i].is_none()
                {
                    slots[i] = Some(query::decode(raw_value));
                }
            }
            slots
        });
        slots[index].as_deref()
    }
}

impl CompiledPolicy {
    /// The rule (or default) that takes the request, and its split.
    pub(crate) fn take<R: RequestView + ?Sized>(
        &self,
        facts: &mut Facts<'_, R>,
    ) -> (TakenBy<'_>, &Split) {
        for (index, rule) in self.rules.iter().enumerate() {
            if let Some(block) = rule
                .blocks
                .iter()
                .position(|b| self.block_matches(b, facts))
            {
                return (
                    TakenBy::Rule {
                        index,
                        name: &rule.name,
                        block,
                    },
                    &rule.split,
                );
            }
        }
        (TakenBy::Default, &self.default)
    }

    /// Which rule (or the default) takes `req`, without choosing a version.
    pub fn matching_rule<R: RequestView + ?Sized>(&self, req: &R) -> TakenBy<'_> {
        self.take(&mut Facts::new(req)).0
    }

    fn block_matches<R: RequestView + ?Sized>(
        &self,
        block: &CompiledBlock,
        facts: &mut Facts<'_, R>,
    ) -> bool {
        let req = facts.req;
        if block.method.as_deref().is_some_and(|m| m != req.method()) {
            return false;
        }
        if block
            .uri
            .as_ref()
            .is_some_and(|m| !m.matches(req.path().as_bytes()))
        {
            return false;
        }
        if !block
            .headers
            .iter()
            .all(|(name, m)| m.matches_any(req.header_values(name)))
        {
            return false;
        }
        if !block
            .cookies
            .iter()
            .all(|(i, m)| m.matches_optional(facts.cookie(&self.cookie_names, *i)))
        {
            return false;
        }
        if !block
            .query
            .iter()
            .all(|(i, m)| m.matches_optional(facts.query(&self.query_names, *i)))
        {
            return false;
        }
        block.os.is_none_or(|set| set.contains(facts.os()))
    }

    /// The sticky bucket of the request, when stickiness is on and the key is present and
    /// non-empty (an empty key is treated as absent, so it does not pin everyone to one bucket).
    pub(crate) fn sticky_bucket<R: RequestView + ?Sized>(
        &self,
        facts: &mut Facts<'_, R>,
    ) -> Option<u16> {
        let key = match self.sticky.as_ref()? {
            StickyKey::Cookie(index) => facts.cookie(&self.cookie_names, *index),
            StickyKey::Header(name) => facts.req.header_values(name).next(),
        };
        key.filter(|k| !k.is_empty())
            .map(|k| sticky_bucket(self.service_seed, k))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{
        MatchBlock, Route, Rule, StringMatch, TrafficPolicy, UriMatch, VersionWeight,
    };

    /// A policy whose rules are `(name, block)`, each routing to a version named after the rule.
    fn policy(rules: Vec<(&str, MatchBlock)>) -> CompiledPolicy {
        let rules = rules
            .into_iter()
            .map(|(name, block)| Rule {
                name: name.to_owned(),
                matches: vec![block],
                route: vec![VersionWeight::new(format!("v-{name}"), 1)],
            })
            .collect();
        let p = TrafficPolicy {
            api_version: crate::model::API_VERSION.to_owned(),
            kind: crate::model::KIND.to_owned(),
            metadata: crate::model::Metadata {
                name: "reviews".into(),
                namespace: "default".into(),
                generation: None,
                labels: None,
            },
            spec: crate::model::PolicySpec {
                service: "reviews".into(),
                rules,
                default: Route {
                    route: vec![VersionWeight::new("v1", 1)],
                },
                mirror: None,
                stickiness: None,
            },
        };
        CompiledPolicy::new(&p).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn one(map: &[(&str, StringMatch)]) -> BTreeMap<String, StringMatch> {
        map.iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn headers(map: &[(&str, StringMatch)]) -> MatchBlock {
        MatchBlock {
            headers: one(map),
            ..MatchBlock::default()
        }
    }

    fn cookies(map: &[(&str, StringMatch)]) -> MatchBlock {
        MatchBlock {
            cookies: one(map),
            ..MatchBlock::default()
        }
    }

    fn query_block(map: &[(&str, StringMatch)]) -> MatchBlock {
        MatchBlock {
            query: one(map),
            ..MatchBlock::default()
        }
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn taken(p: &CompiledPolicy, req: &http::Request<()>) -> Option<String> {
        match p.matching_rule(req) {
            TakenBy::Rule { name, .. } => Some(name.to_owned()),
            TakenBy::Default => None,
        }
    }

    fn hit(p: &CompiledPolicy, req: &http::Request<()>) -> bool {
        taken(p, req).is_some()
    }

    #[test]
    fn header_names_are_case_insensitive_values_are_not() {
        let p = policy(vec![(
            "t",
            headers(&[("End-User", StringMatch::exact("jason"))]),
        )]);
        assert!(hit(&p, &request("/", &[("end-user", "jason")])));
        assert!(hit(&p, &request("/", &[("END-USER", "jason")])));
        assert!(!hit(&p, &request("/", &[("end-user", "Jason")])));
        assert!(!hit(&p, &request("/", &[])));
        let p = policy(vec![(
            "t",
            headers(&[("end-user", StringMatch::exact("jason").ignoring_case())]),
        )]);
        assert!(hit(&p, &request("/", &[("end-user", "JaSoN")])));
    }

    #[test]
    fn header_prefix_regex_and_present() {
        let p = policy(vec![(
            "t",
            headers(&[("x-env", StringMatch::prefix("stag"))]),
        )]);
        assert!(hit(&p, &request("/", &[("x-env", "staging")])));
        assert!(!hit(&p, &request("/", &[("x-env", "prestaging")])));
        let p = policy(vec![(
            "t",
            headers(&[("x-env", StringMatch::regex("st[a-z]+"))]),
        )]);
        assert!(hit(&p, &request("/", &[("x-env", "staging")])));
        assert!(
            !hit(&p, &request("/", &[("x-env", "staging-2")])),
            "full match, not substring"
        );
        let p = policy(vec![(
            "t",
            headers(&[("x-debug", StringMatch::present(true))]),
        )]);
        assert!(hit(&p, &request("/", &[("x-debug", "")])));
        assert!(!hit(&p, &request("/", &[])));
        let p = policy(vec![(
            "t",
            headers(&[("x-debug", StringMatch::present(false))]),
        )]);
        assert!(hit(&p, &request("/", &[])));
        assert!(!hit(&p, &request("/", &[("x-debug", "0")])));
    }

    #[test]
    fn several_values_of_one_header_match_if_any_matches() {
        let p = policy(vec![(
            "t",
            headers(&[("x-group", StringMatch::exact("beta"))]),
        )]);
        assert!(hit(
            &p,
            &request("/", &[("x-group", "alpha"), ("x-group", "beta")])
        ));
        assert!(
            !hit(&p, &request("/", &[("x-group", "alpha, beta")])),
            "values are not split at commas"
        );
    }

    #[test]
    fn cookies_by_name_across_headers_first_wins_never_whole_header() {
        let p = policy(vec![(
            "t",
            cookies(&[("canary", StringMatch::exact("always"))]),
        )]);
        assert!(hit(&p, &request("/", &[("cookie", "a=1; canary=always")])));
        assert!(
            hit(
                &p,
                &request("/", &[("cookie", "a=1"), ("cookie", "canary=always")])
            ),
            "HTTP/2 split"
        );
        assert!(
            hit(
                &p,
                &request("/", &[("cookie", "  canary = \"always\" ;b=2")])
            ),
            "whitespace, quotes"
        );
        assert!(
            !hit(
                &p,
                &request(
                    "/",
                    &[("cookie", "canary=never"), ("cookie", "canary=always")]
                )
            ),
            "first wins"
        );
        assert!(
            !hit(
                &p,
                &request("/", &[("cookie", "xcanary=always; canary_2=always")])
            ),
            "substring names"
        );
        assert!(!hit(&p, &request("/", &[("cookie", "canary=always2")])));
        let whole = policy(vec![(
            "t",
            cookies(&[("canary", StringMatch::regex(".*canary=always.*"))]),
        )]);
        assert!(
            !hit(&whole, &request("/", &[("cookie", "a=1; canary=always")])),
            "never the whole header"
        );
        let p = policy(vec![(
            "t",
            cookies(&[("canary", StringMatch::present(false))]),
        )]);
        assert!(hit(&p, &request("/", &[("cookie", "canaryx=1")])));
        assert!(!hit(&p, &request("/", &[("cookie", "canary=")])));
    }

    #[test]
    fn uri_matches_the_path_only() {
        let block = |m: UriMatch| MatchBlock {
            uri: Some(m),
            ..MatchBlock::default()
        };
        let p = policy(vec![(
            "t",
            block(UriMatch {
                exact: Some("/beta".into()),
                ..UriMatch::default()
            }),
        )]);
        assert!(hit(&p, &request("/beta?x=1", &[])), "query excluded");
        assert!(!hit(&p, &request("/beta/", &[])));
        let p = policy(vec![(
            "t",
            block(UriMatch {
                prefix: Some("/beta".into()),
                ..UriMatch::default()
            }),
        )]);
        assert!(hit(&p, &request("/beta/list", &[])));
        assert!(hit(&p, &request("/betamax", &[])), "plain string prefix");
        assert!(!hit(&p, &request("/x?/beta", &[])));
        let p = policy(vec![(
            "t",
            block(UriMatch {
                regex: Some("/items/[0-9]+".into()),
                ..UriMatch::default()
            }),
        )]);
        assert!(hit(&p, &request("/items/42?sort=asc", &[])));
        assert!(!hit(&p, &request("/items/42/x", &[])));
        assert!(!hit(&p, &request("/v1/items/42", &[])));
        let p = policy(vec![(
            "t",
            block(UriMatch {
                exact: Some("/a%20b".into()),
                ..UriMatch::default()
            }),
        )]);
        assert!(
            hit(&p, &request("/a%20b", &[])),
            "path as sent, not decoded"
        );
    }

    #[test]
    fn query_parameters_are_decoded() {
        let p = policy(vec![(
            "t",
            query_block(&[("beta", StringMatch::exact("1"))]),
        )]);
        assert!(hit(&p, &request("/x?a=2&beta=1", &[])));
        assert!(hit(&p, &request("/x?beta=%31", &[])));
        assert!(!hit(&p, &request("/x?beta=1x", &[])));
        assert!(!hit(&p, &request("/x?beta=2&beta=1", &[])), "first wins");
        assert!(!hit(&p, &request("/x", &[])));
        let p = policy(vec![(
            "t",
            query_block(&[("q", StringMatch::exact("a b+c"))]),
        )]);
        assert!(
            hit(&p, &request("/x?q=a+b%2Bc", &[])),
            "+ is a space, %2B a plus"
        );
        let p = policy(vec![(
            "t",
            query_block(&[("beta", StringMatch::present(true))]),
        )]);
        assert!(hit(&p, &request("/x?beta", &[])));
    }

    #[test]
    fn method_is_exact() {
        let p = policy(vec![(
            "t",
            MatchBlock {
                method: Some("POST".into()),
                ..MatchBlock::default()
            },
        )]);
        let post = http::Request::builder()
            .method("POST")
            .uri("/")
            .body(())
            .unwrap();
        assert!(hit(&p, &post));
        assert!(!hit(&p, &request("/", &[])));
    }

    #[test]
    fn os_condition() {
        let os = |names: &[&str]| MatchBlock {
            os: Some(names.iter().map(|s| (*s).to_owned()).collect()),
            ..MatchBlock::default()
        };
        let p = policy(vec![("mobile", os(&["ios", "android"]))]);
        assert!(p.needs_os());
        let ipad = "Mozilla/5.0 (iPad; CPU OS 17_2 like Mac OS X) AppleWebKit/605.1.15";
        assert!(
            hit(&p, &request("/", &[("user-agent", ipad)])),
            "ios takes ipados"
        );
        assert!(hit(
            &p,
            &request(
                "/",
                &[("user-agent", "x"), ("sec-ch-ua-platform", "\"Android\"")]
            )
        ));
        assert!(!hit(
            &p,
            &request("/", &[("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")])
        ));
        assert!(!hit(&p, &request("/", &[])));
        let p = policy(vec![("tablets", os(&["ipados"]))]);
        assert!(hit(&p, &request("/", &[("user-agent", ipad)])));
        assert!(!hit(
            &p,
            &request(
                "/",
                &[("user-agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2)")]
            )
        ));
        let p = policy(vec![("bots", os(&["other"]))]);
        assert!(hit(&p, &request("/", &[])));
    }

    #[test]
    fn conditions_and_blocks_or_rules_in_order() {
        let both = MatchBlock {
            headers: one(&[("x-a", StringMatch::exact("1"))]),
            uri: Some(UriMatch {
                prefix: Some("/a".into()),
                ..UriMatch::default()
            }),
            ..MatchBlock::default()
        };
        let mut p = policy(vec![
            ("first", both),
            ("second", headers(&[("x-b", StringMatch::present(true))])),
        ]);
        assert_eq!(
            taken(&p, &request("/a", &[("x-a", "1")])).as_deref(),
            Some("first")
        );
        assert_eq!(
            taken(&p, &request("/b", &[("x-a", "1")])),
            None,
            "AND inside a block"
        );
        assert_eq!(
            taken(&p, &request("/a", &[("x-a", "1"), ("x-b", "")])).as_deref(),
            Some("first"),
            "first rule wins"
        );
        assert_eq!(
            taken(&p, &request("/b", &[("x-a", "1"), ("x-b", "")])).as_deref(),
            Some("second")
        );
        // Two blocks in one rule: ORed, and the decision says which one matched.
        let extra = p.rules[1].blocks[0].clone();
        p.rules[0].blocks.push(extra);
        match p.matching_rule(&request("/b", &[("x-b", "")])) {
            TakenBy::Rule {
                index: 0,
                name: "first",
                block: 1,
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn facts_are_computed_lazily() {
        let p = policy(vec![
            ("h", headers(&[("x-a", StringMatch::present(true))])),
            ("c", cookies(&[("k", StringMatch::present(true))])),
        ]);
        let req = request("/?a=1", &[("x-a", "1"), ("cookie", "k=1")]);
        let mut facts = Facts::new(&req);
        assert!(matches!(
            p.take(&mut facts).0,
            TakenBy::Rule { index: 0, .. }
        ));
        assert!(facts.cookies.is_none() && facts.query.is_none() && facts.os.is_none());
        let req = request("/", &[("cookie", "k=1")]);
        let mut facts = Facts::new(&req);
        assert!(matches!(
            p.take(&mut facts).0,
            TakenBy::Rule { index: 1, .. }
        ));
        assert!(facts.cookies.is_some() && facts.os.is_none());
    }

    #[test]
    fn parts_and_request_head_views_agree() {
        let p = policy(vec![(
            "t",
            cookies(&[("canary", StringMatch::exact("always"))]),
        )]);
        let req = request("/", &[("cookie", "canary=always")]);
        let (parts, ()) = req.into_parts();
        assert!(matches!(p.matching_rule(&parts), TakenBy::Rule { .. }));
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        assert!(matches!(p.matching_rule(&head), TakenBy::Rule { .. }));
    }
}
