//! `Admin.Explain`: which rule and version would take a described request, and why.
//!
//! The decision itself is serin-policy's (`CompiledPolicy::select`/`resolve`), exactly what the
//! sidecar runs. The "why not" of each block is found by asking serin-policy about each condition
//! alone (a one-condition policy per condition), so that even the explanation uses the sidecar's
//! matching semantics (cookie parsing, query decoding, anchored regexes, OS classes) instead of a
//! second implementation here.

use std::collections::BTreeMap;

use serin_policy::os::classify;
use serin_policy::{
    Choice, CompiledPolicy, MatchBlock, Route, Rule, StringMatch, TakenBy, Target, TrafficPolicy,
    VersionWeight,
};

use crate::model::{MeshView, VersionCounts};

/// The request to explain, as routing sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttributes {
    /// Method ("" is GET).
    pub method: String,
    /// Path, possibly with `?query`.
    pub path: String,
    /// Headers by name.
    pub headers: BTreeMap<String, String>,
    /// Cookies by name.
    pub cookies: BTreeMap<String, String>,
    /// Query parameters by name (decoded).
    pub query: BTreeMap<String, String>,
    /// User-Agent, overriding `headers["user-agent"]`.
    pub user_agent: String,
}

/// Why a request cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// A request attribute is not valid HTTP.
    #[error("{field}: {reason}")]
    InvalidRequest {
        /// Which attribute.
        field: String,
        /// Why.
        reason: String,
    },
    /// The service has neither a policy nor endpoints.
    #[error("service {0} has no policy and no registered endpoints")]
    UnknownService(String),
}

/// A version's share of the request.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// Version.
    pub version: String,
    /// Percent, 0..=100.
    pub percent: f64,
    /// Its ready endpoints now.
    pub ready_endpoints: u32,
}

/// One rule's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleVerdict {
    /// Index in spec.rules.
    pub index: usize,
    /// Rule name.
    pub name: String,
    /// Whether a block matched.
    pub matched: bool,
    /// Why (or why not).
    pub reason: String,
}

/// The explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// The policy (name, generation), if the service has one.
    pub policy: Option<(String, u64)>,
    /// The taking rule (index, name, block), if a rule took it.
    pub rule: Option<(usize, String, usize)>,
    /// The route that applies.
    pub route: Vec<VersionWeight>,
    /// Where the request may go.
    pub outcomes: Vec<Share>,
    /// The version when deterministic.
    pub version: Option<String>,
    /// The sticky bucket when stickiness decided.
    pub sticky_bucket: Option<u16>,
    /// Classified OS, when some rule asks for it.
    pub client_os: Option<String>,
    /// The chosen version had no ready endpoint and the request falls back.
    pub fell_back: bool,
    /// Mirror version and percent.
    pub mirror: Option<(String, f64)>,
    /// Rules in order up to the taking one.
    pub trace: Vec<RuleVerdict>,
    /// One line for people.
    pub summary: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ExplainError {
    ExplainError::InvalidRequest {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A percentage without trailing zeros: `75`, `12.5`, `33.33`.
fn percent(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Percent-encodes a query component.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request as an `http::Request`, the form serin-policy matches.
pub fn build_request(a: &RequestAttributes) -> Result<http::Request<()>, ExplainError> {
    let method = if a.method.is_empty() {
        "GET"
    } else {
        a.method.as_str()
    };
    let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| {
        invalid(
            "request.method",
            format!("{method:?} is not an HTTP method"),
        )
    })?;
    let mut uri = if a.path.is_empty() {
        "/".to_owned()
    } else {
        a.path.clone()
    };
    if !uri.starts_with('/') {
        return Err(invalid(
            "request.path",
            format!("{:?} must start with '/'", a.path),
        ));
    }
    if !a.query.is_empty() {
        let extra: Vec<String> = a
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect();
        uri.push(if uri.contains('?') { '&' } else { '?' });
        uri.push_str(&extra.join("&"));
    }
    let uri: http::Uri = uri.parse().map_err(|e| {
        invalid(
            "request.path",
            format!("{:?} is not a valid path: {e}", a.path),
        )
    })?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in &a.headers {
        if name.eq_ignore_ascii_case("user-agent") && !a.user_agent.is_empty() {
            continue;
        }
        let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                format!("request.headers[{name:?}]"),
                "not a valid header name",
            )
        })?;
        let v = http::HeaderValue::from_str(value).map_err(|_| {
            invalid(
                format!("request.headers[{name:?}]"),
                "not a valid header value",
            )
        })?;
        builder = builder.header(n, v);
    }
    if !a.user_agent.is_empty() {
        let v = http::HeaderValue::from_str(&a.user_agent)
            .map_err(|_| invalid("request.user_agent", "not a valid header value"))?;
        builder = builder.header(http::header::USER_AGENT, v);
    }
    if !a.cookies.is_empty() {
        let line: Vec<String> = a.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let v = http::HeaderValue::from_str(&line.join("; "))
            .map_err(|_| invalid("request.cookies", "not valid in a Cookie header"))?;
        builder = builder.header(http::header::COOKIE, v);
    }
    builder
        .body(())
        .map_err(|e| invalid("request", e.to_string()))
}

/// Explains how `req` to `service` in `namespace` is routed, using the current view.
pub fn explain(
    view: &MeshView,
    namespace: &str,
    service: &str,
    attrs: &RequestAttributes,
) -> Result<Explanation, ExplainError> {
    let req = build_request(attrs)?;
    let versions = view.versions(namespace, service);
    let ready_of = |v: &str| versions.get(v).map_or(0, |c: &VersionCounts| c.ready);
    let Some(stored) = view.policy_for_service(namespace, service) else {
        if versions.is_empty() {
            return Err(ExplainError::UnknownService(format!(
                "{namespace}/{service}"
            )));
        }
        return Ok(without_policy(&versions));
    };
    let policy = &stored.policy;
    let compiled =
        CompiledPolicy::new(policy).expect("stored policies were validated when they were stored");
    let selection = compiled.select(&req, 0);
    let decision = selection.resolve(|v| ready_of(v) > 0);
    let (route, split) = match decision.taken_by {
        TakenBy::Rule { index, .. } => (
            policy.spec.rules[index].route.clone(),
            compiled.rule_split(index),
        ),
        TakenBy::Default => (policy.spec.default.route.clone(), compiled.default_split()),
    };
    let fallback_of = |v: &str| -> Option<String> {
        let d = compiled.default_split();
        (0..d.len())
            .filter(|&i| d.weight(i) > 0)
            .map(|i| d.version(i))
            .find(|x| *x != v && ready_of(x) > 0)
            .map(str::to_owned)
    };
    let mut outcomes: Vec<Share> = Vec::new();
    let mut add =
        |version: String, percent: f64| match outcomes.iter_mut().find(|s| s.version == version) {
            Some(s) => s.percent += percent,
            None => outcomes.push(Share {
                ready_endpoints: ready_of(&version),
                version,
                percent,
            }),
        };
    let mut sticky_bucket = None;
    let (version, fell_back) = match decision.choice {
        Choice::Single | Choice::Sticky { .. } => {
            if let Choice::Sticky { bucket } = decision.choice {
                sticky_bucket = Some(bucket);
            }
            add(
                decision.version().unwrap_or(decision.chosen).to_owned(),
                100.0,
            );
            (decision.version().map(str::to_owned), decision.fell_back())
        }
        Choice::Random => {
            let total: u64 = (0..split.len()).map(|i| u64::from(split.weight(i))).sum();
            for i in (0..split.len()).filter(|&i| split.weight(i) > 0) {
                let v = split.version(i);
                let target = if ready_of(v) > 0 {
                    v.to_owned()
                } else {
                    fallback_of(v).unwrap_or_else(|| v.to_owned())
                };
                add(target, 100.0 * f64::from(split.weight(i)) / total as f64);
            }
            let only = (outcomes.len() == 1).then(|| outcomes[0].version.clone());
            (only, false)
        }
    };
    let client_os = compiled.needs_os().then(|| {
        let hint = req
            .headers()
            .get("sec-ch-ua-platform")
            .map(http::HeaderValue::as_bytes);
        let ua = req
            .headers()
            .get(http::header::USER_AGENT)
            .map(http::HeaderValue::as_bytes);
        classify(hint, ua).as_str().to_owned()
    });
    let last = match decision.taken_by {
        TakenBy::Rule { index, .. } => index + 1,
        TakenBy::Default => policy.spec.rules.len(),
    };
    let trace: Vec<RuleVerdict> = policy.spec.rules[..last]
        .iter()
        .enumerate()
        .map(|(i, rule)| verdict(policy, i, rule, &req, client_os.as_deref()))
        .collect();
    let rule = match decision.taken_by {
        TakenBy::Rule { index, name, block } => Some((index, name.to_owned(), block)),
        TakenBy::Default => None,
    };
    let taker = match &rule {
        Some((index, name, _)) => {
            let why = trace
                .get(*index)
                .map(|t| t.reason.clone())
                .unwrap_or_default();
            format!("rule {name} ({why})")
        }
        None if policy.spec.rules.is_empty() => "default route".to_owned(),
        None => "default route (no rule matched)".to_owned(),
    };
    let target = match (decision.choice, decision.target) {
        (_, Target::Unavailable) => format!(
            "{}: no ready endpoints in it or the default route, the sidecar answers 503",
            decision.chosen
        ),
        (Choice::Random, _) => {
            outcomes
                .iter()
                .map(|s| format!("{} {}%", s.version, percent(s.percent)))
                .collect::<Vec<_>>()
                .join(", ")
                + " (random)"
        }
        (Choice::Sticky { bucket }, t) => format!(
            "{} (sticky bucket {bucket}){}",
            target_version(t),
            fell_back_note(decision.chosen, t)
        ),
        (Choice::Single, t) => format!(
            "{}{}",
            target_version(t),
            fell_back_note(decision.chosen, t)
        ),
    };
    let summary = format!("{taker} -> {target}");
    Ok(Explanation {
        policy: Some((policy.metadata.name.clone(), stored.generation())),
        rule,
        route,
        outcomes,
        version,
        sticky_bucket,
        client_os,
        fell_back,
        mirror: compiled.mirror_policy().map(|(v, p)| (v.to_owned(), p)),
        trace,
        summary,
    })
}

fn target_version(t: Target<'_>) -> &str {
    match t {
        Target::Version(v) | Target::FellBack(v) => v,
        Target::Unavailable => "",
    }
}

fn fell_back_note(chosen: &str, t: Target<'_>) -> String {
    match t {
        Target::FellBack(_) => format!(" (falls back: {chosen} has no ready endpoints)"),
        _ => String::new(),
    }
}

/// A service without a policy: balanced over the ready endpoints of every version.
fn without_policy(versions: &BTreeMap<String, VersionCounts>) -> Explanation {
    let ready: Vec<(&String, &VersionCounts)> =
        versions.iter().filter(|(_, c)| c.ready > 0).collect();
    let total: u32 = ready.iter().map(|(_, c)| c.ready).sum();
    let outcomes: Vec<Share> = ready
        .iter()
        .map(|(v, c)| Share {
            version: (*v).clone(),
            percent: 100.0 * f64::from(c.ready) / f64::from(total.max(1)),
            ready_endpoints: c.ready,
        })
        .collect();
    let version = (outcomes.len() == 1).then(|| outcomes[0].version.clone());
    let summary = if outcomes.is_empty() {
        "no policy and no ready endpoints: the sidecar answers 503".to_owned()
    } else {
        format!(
            "no policy: balanced over every ready endpoint -> {}",
            outcomes
                .iter()
                .map(|s| format!("{} {}%", s.version, percent(s.percent)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Explanation {
        policy: None,
        rule: None,
        route: ready
            .iter()
            .map(|(v, c)| VersionWeight::new((*v).clone(), c.ready))
            .collect(),
        outcomes,
        version,
        sticky_bucket: None,
        client_os: None,
        fell_back: false,
        mirror: None,
        trace: Vec::new(),
        summary,
    }
}

/// One condition of a block, alone.
struct Condition {
    block: MatchBlock,
    /// What is tested, e.g. `header end-user`.
    what: String,
    /// What it asks, e.g. `exact "jason"`.
    expect: String,
    /// What the request has, e.g. `"bob"`; None when absent.
    actual: Option<String>,
}

impl Condition {
    fn asks(&self) -> String {
        format!("{} {}", self.what, self.expect)
    }

    fn fails(&self) -> String {
        match &self.actual {
            None => format!("{} absent", self.what),
            Some(a) => format!("{} {a} is not {}", self.what, self.expect),
        }
    }
}

fn describe(m: &StringMatch) -> String {
    let base = if let Some(v) = &m.exact {
        format!("exact {v:?}")
    } else if let Some(v) = &m.prefix {
        format!("prefix {v:?}")
    } else if let Some(v) = &m.regex {
        format!("regex {v:?}")
    } else if m.present == Some(false) {
        "absent".to_owned()
    } else {
        "present".to_owned()
    };
    if m.ignore_case {
        format!("{base} ignoring case")
    } else {
        base
    }
}

fn conditions(block: &MatchBlock, req: &http::Request<()>, os: Option<&str>) -> Vec<Condition> {
    let mut out = Vec::new();
    let one = |f: &dyn Fn(&mut MatchBlock)| {
        let mut b = MatchBlock::default();
        f(&mut b);
        b
    };
    let quoted = |v: Option<String>| v.map(|v| format!("{v:?}"));
    if let Some(m) = &block.method {
        out.push(Condition {
            block: one(&|b| b.method = Some(m.clone())),
            what: "method".into(),
            expect: m.clone(),
            actual: Some(req.method().to_string()),
        });
    }
    if let Some(u) = &block.uri {
        let expect = if let Some(v) = &u.exact {
            format!("exact {v:?}")
        } else if let Some(v) = &u.prefix {
            format!("prefix {v:?}")
        } else {
            format!("regex {:?}", u.regex.as_deref().unwrap_or(""))
        };
        out.push(Condition {
            block: one(&|b| b.uri = Some(u.clone())),
            what: "path".into(),
            expect,
            actual: Some(format!("{:?}", req.uri().path())),
        });
    }
    for (name, m) in &block.headers {
        let value = req
            .headers()
            .get(name.to_ascii_lowercase().as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        out.push(Condition {
            block: one(&|b| {
                b.headers.insert(name.clone(), m.clone());
            }),
            what: format!("header {name}"),
            expect: describe(m),
            actual: quoted(value),
        });
    }
    for (name, m) in &block.cookies {
        let headers: Vec<&[u8]> = req
            .headers()
            .get_all(http::header::COOKIE)
            .iter()
            .map(http::HeaderValue::as_bytes)
            .collect();
        let value = serin_policy::cookie::find(headers, name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned());
        out.push(Condition {
            block: one(&|b| {
                b.cookies.insert(name.clone(), m.clone());
            }),
            what: format!("cookie {name}"),
            expect: describe(m),
            actual: quoted(value),
        });
    }
    for (name, m) in &block.query {
        let value = serin_policy::query::find(req.uri().query().unwrap_or(""), name.as_bytes())
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        out.push(Condition {
            block: one(&|b| {
                b.query.insert(name.clone(), m.clone());
            }),
            what: format!("query {name}"),
            expect: describe(m),
            actual: quoted(value),
        });
    }
    if let Some(list) = &block.os {
        out.push(Condition {
            block: one(&|b| b.os = Some(list.clone())),
            what: "os".into(),
            expect: format!("one of [{}]", list.join(", ")),
            actual: Some(os.unwrap_or("other").to_owned()),
        });
    }
    out
}

/// Whether one condition alone matches, by serin-policy's own matching.
fn holds(policy: &TrafficPolicy, block: &MatchBlock, req: &http::Request<()>) -> bool {
    let probe = TrafficPolicy {
        spec: serin_policy::PolicySpec {
            rules: vec![Rule {
                name: "probe".into(),
                matches: vec![block.clone()],
                route: vec![VersionWeight::new("probe", 1)],
            }],
            default: Route {
                route: vec![VersionWeight::new("probe", 1)],
            },
            mirror: None,
            stickiness: None,
            ..policy.spec.clone()
        },
        ..policy.clone()
    };
    CompiledPolicy::new(&probe).is_ok_and(|c| matches!(c.matching_rule(req), TakenBy::Rule { .. }))
}

fn verdict(
    policy: &TrafficPolicy,
    index: usize,
    rule: &Rule,
    req: &http::Request<()>,
    os: Option<&str>,
) -> RuleVerdict {
    let mut failures = Vec::new();
    for (j, block) in rule.matches.iter().enumerate() {
        let conds = conditions(block, req, os);
        match conds.iter().find(|c| !holds(policy, &c.block, req)) {
            None => {
                let asks: Vec<String> = conds.iter().map(Condition::asks).collect();
                return RuleVerdict {
                    index,
                    name: rule.name.clone(),
                    matched: true,
                    reason: format!("block {j}: {} matched", asks.join(", ")),
                };
            }
            Some(c) => failures.push(format!("block {j}: {}", c.fails())),
        }
    }
    RuleVerdict {
        index,
        name: rule.name.clone(),
        matched: false,
        reason: failures.join("; "),
    }
}
