//! Version routing by traffic policy: the per-service routing state (the compiled policy and its
//! hit counters) and the `/routes` view of it.
//!
//! The request path asks [`crate::tables::Destination::route`]; this module holds what that
//! decision counts. Counters are atomics owned by a [`PolicyRouting`]: they are carried over to
//! the next config while the policy's `spec` is unchanged (endpoint changes, other services'
//! policies, a new generation with the same spec), and start from zero when the spec changes
//! (any rule, weight, mirror or stickiness edit), since the old counts would then describe
//! routes that no longer exist.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serin_policy::{Decision, MatchBlock, Split, StringMatch, TakenBy};

use crate::metrics::MirrorOutcome;
use crate::snapshot::Policy;

/// A counter that only goes up.
#[derive(Debug, Default)]
struct Count(AtomicU64);

impl Count {
    fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Hits of one route, per entry of its split (in the order the policy lists them).
#[derive(Debug)]
struct RouteHits(Vec<Count>);

impl RouteHits {
    fn new(split: &Split) -> RouteHits {
        RouteHits((0..split.len()).map(|_| Count::default()).collect())
    }
}

/// What the routing of one policy counted.
#[derive(Debug)]
pub struct RouteCounters {
    rules: Vec<RouteHits>,
    default: RouteHits,
    fallbacks: Count,
    unavailable: Count,
    mirror: [Count; MirrorOutcome::ALL.len()],
}

impl RouteCounters {
    fn new(policy: &Policy) -> RouteCounters {
        let c = &policy.compiled;
        RouteCounters {
            rules: (0..c.rule_count())
                .map(|i| RouteHits::new(c.rule_split(i)))
                .collect(),
            default: RouteHits::new(c.default_split()),
            fallbacks: Count::default(),
            unavailable: Count::default(),
            mirror: Default::default(),
        }
    }
}

/// The routing state of one service's policy, shared by every VIP:port of the service.
#[derive(Debug)]
pub struct PolicyRouting {
    /// The policy, compiled.
    pub policy: Policy,
    counters: Arc<RouteCounters>,
}

impl PolicyRouting {
    /// The state for `policy`, keeping the counters of `previous` when its spec is the same.
    pub fn new(policy: Policy, previous: Option<&PolicyRouting>) -> PolicyRouting {
        let counters = match previous {
            Some(p) if p.policy.policy.spec == policy.policy.spec => Arc::clone(&p.counters),
            _ => Arc::new(RouteCounters::new(&policy)),
        };
        PolicyRouting { policy, counters }
    }

    /// Counts the decision of one request: the hit of the route entry the split chose, and a
    /// fallback or an unavailable outcome.
    pub fn count(&self, decision: &Decision<'_>) {
        let c = &self.policy.compiled;
        let (split, hits) = match decision.taken_by {
            TakenBy::Rule { index, .. } => (c.rule_split(index), &self.counters.rules[index]),
            TakenBy::Default => (c.default_split(), &self.counters.default),
        };
        if let Some(i) = (0..split.len()).find(|&i| split.version(i) == decision.chosen) {
            hits.0[i].inc();
        }
        match decision.target {
            serin_policy::Target::Version(_) => {}
            serin_policy::Target::FellBack(_) => self.counters.fallbacks.inc(),
            serin_policy::Target::Unavailable => self.counters.unavailable.inc(),
        }
    }

    /// Counts a connection routed by the default route's entry `index` (opaque TCP).
    pub fn count_default(&self, index: usize, fell_back: bool, unavailable: bool) {
        if let Some(hit) = self.counters.default.0.get(index) {
            hit.inc();
        }
        if fell_back {
            self.counters.fallbacks.inc();
        }
        if unavailable {
            self.counters.unavailable.inc();
        }
    }

    /// Counts what became of a mirrored copy.
    pub fn count_mirror(&self, outcome: MirrorOutcome) {
        self.counters.mirror[outcome as usize].inc();
    }

    /// Whether `other` counts into the same counters as this state (the same spec, carried
    /// over): readings of both can then be subtracted entry by entry.
    pub fn shares_counters(&self, other: &PolicyRouting) -> bool {
        Arc::ptr_eq(&self.counters, &other.counters)
    }

    /// The hits of every route entry now, in a fixed order (each rule's split, then the default
    /// route's) that is the same for every state sharing these counters.
    pub fn entry_hits(&self) -> Vec<EntryHits<'_>> {
        let c = &self.policy.compiled;
        let mut out = Vec::new();
        let routes = (0..c.rule_count())
            .map(|i| {
                (
                    Some(c.rule_name(i)),
                    c.rule_split(i),
                    &self.counters.rules[i],
                )
            })
            .chain([(None, c.default_split(), &self.counters.default)]);
        for (rule, split, hits) in routes {
            out.extend((0..split.len()).map(|i| EntryHits {
                rule,
                version: split.version(i),
                hits: hits.0[i].get(),
            }));
        }
        out
    }

    /// The `/routes` view of this policy.
    pub fn view(&self) -> PolicyView {
        let p = &self.policy.policy;
        let c = &self.policy.compiled;
        let counters = &self.counters;
        let route = |split: &Split, hits: &RouteHits| RouteView {
            hits: hits.0.iter().map(Count::get).sum(),
            route: (0..split.len())
                .map(|i| EntryView {
                    version: split.version(i).to_owned(),
                    weight: split.weight(i),
                    hits: hits.0[i].get(),
                })
                .collect(),
        };
        PolicyView {
            namespace: p.metadata.namespace.clone(),
            service: p.spec.service.clone(),
            name: p.metadata.name.clone(),
            generation: p.metadata.generation,
            rules: p
                .spec
                .rules
                .iter()
                .enumerate()
                .map(|(i, rule)| RuleView {
                    name: rule.name.clone(),
                    matches: rule.matches.iter().map(summary).collect(),
                    route: route(c.rule_split(i), &counters.rules[i]),
                })
                .collect(),
            default: route(c.default_split(), &counters.default),
            fallbacks: counters.fallbacks.get(),
            unavailable: counters.unavailable.get(),
            stickiness: p.spec.stickiness.as_ref().and_then(|s| {
                s.cookie
                    .as_ref()
                    .map(|c| format!("cookie {c}"))
                    .or(s.header.as_ref().map(|h| format!("header {h}")))
            }),
            mirror: c.mirror_policy().map(|(version, percent)| {
                let n = |o: MirrorOutcome| counters.mirror[o as usize].get();
                MirrorView {
                    version: version.to_owned(),
                    percent,
                    sent: n(MirrorOutcome::Sent),
                    failed: n(MirrorOutcome::Failed),
                    dropped: n(MirrorOutcome::Dropped),
                    too_large: n(MirrorOutcome::TooLarge),
                    aborted: n(MirrorOutcome::Aborted),
                    no_endpoint: n(MirrorOutcome::NoEndpoint),
                }
            }),
        }
    }
}

/// The hit total of one route entry (see [`PolicyRouting::entry_hits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHits<'a> {
    /// The rule's name; `None` for the default route.
    pub rule: Option<&'a str>,
    /// The entry's version.
    pub version: &'a str,
    /// Requests (and opaque connections) its split chose it for, since the counters started.
    pub hits: u64,
}

/// One line per match block: its conditions joined by ` && `, e.g.
/// `headers[end-user] exact "jason" && uri prefix "/beta" && os in [ios, android]`.
pub fn summary(block: &MatchBlock) -> String {
    fn string(m: &StringMatch) -> String {
        let case = if m.ignore_case { " (ignore case)" } else { "" };
        let what = if let Some(v) = &m.exact {
            format!("exact {v:?}")
        } else if let Some(v) = &m.prefix {
            format!("prefix {v:?}")
        } else if let Some(v) = &m.regex {
            format!("regex {v:?}")
        } else {
            match m.present {
                Some(true) => "present".to_owned(),
                Some(false) => "absent".to_owned(),
                None => "any".to_owned(),
            }
        };
        format!("{what}{case}")
    }
    let mut parts = Vec::new();
    for (kind, map) in [
        ("headers", &block.headers),
        ("cookies", &block.cookies),
        ("query", &block.query),
    ] {
        for (name, m) in map {
            parts.push(format!("{kind}[{name}] {}", string(m)));
        }
    }
    if let Some(u) = &block.uri {
        if let Some(v) = &u.exact {
            parts.push(format!("uri exact {v:?}"));
        } else if let Some(v) = &u.prefix {
            parts.push(format!("uri prefix {v:?}"));
        } else if let Some(v) = &u.regex {
            parts.push(format!("uri regex {v:?}"));
        }
    }
    if let Some(m) = &block.method {
        parts.push(format!("method {m}"));
    }
    if let Some(os) = &block.os {
        parts.push(format!("os in [{}]", os.join(", ")));
    }
    parts.join(" && ")
}

/// `/routes`: one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    /// Namespace of the policy and its service.
    pub namespace: String,
    /// The routed service.
    pub service: String,
    /// The policy's name.
    pub name: String,
    /// Its generation, when the control plane set one.
    pub generation: Option<u64>,
    /// The rules, in order.
    pub rules: Vec<RuleView>,
    /// The default route.
    pub default: RouteView,
    /// Requests (and connections) whose chosen version had no ready endpoint and went to
    /// another version.
    pub fallbacks: u64,
    /// Requests answered 503 because no version of the route had a ready endpoint.
    pub unavailable: u64,
    /// The stickiness key (`cookie uid`, `header x-user`), if any.
    pub stickiness: Option<String>,
    /// Mirroring, if on.
    pub mirror: Option<MirrorView>,
}

/// `/routes`: one rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleView {
    /// The rule's name.
    pub name: String,
    /// One summary per match block (blocks are ORed).
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    /// Its route and hits.
    #[serde(flatten)]
    pub route: RouteView,
}

/// `/routes`: a weighted route with its hits.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteView {
    /// Requests this route took.
    pub hits: u64,
    /// Its entries.
    pub route: Vec<EntryView>,
}

/// `/routes`: one version of a route.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntryView {
    /// The version.
    pub version: String,
    /// Its relative weight.
    pub weight: u32,
    /// Requests the split chose it for (before any fallback).
    pub hits: u64,
}

/// `/routes`: the mirror and what became of its copies.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MirrorView {
    /// The version receiving copies.
    pub version: String,
    /// The share of requests mirrored, in percent.
    pub percent: f64,
    /// Copies sent and answered.
    pub sent: u64,
    /// Copies sent that failed (connect, reset, timeout).
    pub failed: u64,
    /// Copies dropped because the in-flight bound was reached.
    pub dropped: u64,
    /// Requests not mirrored because their body exceeded 64 KiB.
    pub too_large: u64,
    /// Requests not mirrored because their body ended in an error.
    pub aborted: u64,
    /// Requests not mirrored because the mirror version had no ready endpoint.
    pub no_endpoint: u64,
}
