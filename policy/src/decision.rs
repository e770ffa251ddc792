//! The routing decision for one request: which rule took it, which version the split chose (sticky
//! or random), where it goes given which versions have ready endpoints, and whether to mirror it.

use std::fmt;

use crate::compile::CompiledPolicy;
use crate::matching::{Facts, RequestView, TakenBy};
use crate::split::Split;

/// Largest request body that is mirrored; larger bodies are not mirrored (and are counted).
pub const MIRROR_BODY_LIMIT: usize = 64 * 1024;

/// How the split picked its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Only one version of the route has a non-zero weight.
    Single,
    /// The stickiness key hashed to `bucket` (`0..10_000`).
    Sticky {
        /// The key's bucket.
        bucket: u16,
    },
    /// No stickiness key (or none configured): chosen by the caller's random number.
    Random,
}

/// Which rule took the request and the version its split chose, before looking at endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'p> {
    /// The rule that matched, or the default route.
    pub taken_by: TakenBy<'p>,
    /// How the version was picked.
    pub choice: Choice,
    /// The version the split picked.
    pub version: &'p str,
    default: &'p Split,
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target<'p> {
    /// The chosen version has ready endpoints.
    Version(&'p str),
    /// The chosen version had none; this is the first version of the default route (with a
    /// non-zero weight) that has. The proxy counts it.
    FellBack(&'p str),
    /// Neither the chosen version nor any version of the default route has a ready endpoint: the
    /// proxy answers 503 at once.
    Unavailable,
}

/// The full decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision<'p> {
    /// The rule that matched, or the default route.
    pub taken_by: TakenBy<'p>,
    /// How the split picked its version.
    pub choice: Choice,
    /// The version the split picked.
    pub chosen: &'p str,
    /// Where the request goes.
    pub target: Target<'p>,
}

impl<'p> Decision<'p> {
    /// The version to send to, unless the outcome is [`Target::Unavailable`].
    pub fn version(&self) -> Option<&'p str> {
        match self.target {
            Target::Version(v) | Target::FellBack(v) => Some(v),
            Target::Unavailable => None,
        }
    }

    /// True if the chosen version had no ready endpoint and the request fell back.
    pub fn fell_back(&self) -> bool {
        matches!(self.target, Target::FellBack(_))
    }
}

/// One line for `serinctl explain` and logs, e.g.
/// `rule "testers" (rules[0], match[0]), only version with traffic: v3`.
impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.taken_by {
            TakenBy::Rule { index, name, block } => {
                write!(f, "rule {name:?} (rules[{index}], match[{block}])")?
            }
            TakenBy::Default => f.write_str("default route (no rule matched)")?,
        }
        match self.choice {
            Choice::Single => f.write_str(", only version with traffic: ")?,
            Choice::Sticky { bucket } => write!(f, ", sticky bucket {bucket}: ")?,
            Choice::Random => f.write_str(", random by weight: ")?,
        }
        match self.target {
            Target::Version(v) => f.write_str(v),
            Target::FellBack(v) => write!(
                f,
                "{} has no ready endpoint, fell back to {v} (first ready version of the default route)",
                self.chosen
            ),
            Target::Unavailable => write!(
                f,
                "{} has no ready endpoint and neither has any version of the default route (503)",
                self.chosen
            ),
        }
    }
}

impl<'p> Selection<'p> {
    /// Applies endpoint readiness: `ready(version)` says whether a version has ready endpoints.
    /// A chosen version without any falls back to the first version of the default route that
    /// has them, skipping weight-0 entries (weight 0 never gets traffic).
    pub fn resolve(self, mut ready: impl FnMut(&str) -> bool) -> Decision<'p> {
        let target = if ready(self.version) {
            Target::Version(self.version)
        } else {
            (0..self.default.len())
                .filter(|&i| self.default.weight(i) > 0)
                .map(|i| self.default.version(i))
                .find(|v| *v != self.version && ready(v))
                .map_or(Target::Unavailable, Target::FellBack)
        };
        Decision {
            taken_by: self.taken_by,
            choice: self.choice,
            chosen: self.version,
            target,
        }
    }
}

impl CompiledPolicy {
    /// Matches `req` against the rules and picks a version of the taking route: by the sticky key
    /// when the route has a choice to make and the request carries the key, else with `random`
    /// (a uniformly random `u32` from the caller).
    pub fn select<R: RequestView + ?Sized>(&self, req: &R, random: u32) -> Selection<'_> {
        let mut facts = Facts::new(req);
        let (taken_by, split) = self.take(&mut facts);
        let (choice, index) = match split.single() {
            Some(index) => (Choice::Single, index),
            None => match self.sticky_bucket(&mut facts) {
                Some(bucket) => (Choice::Sticky { bucket }, split.pick_bucket(bucket)),
                None => (Choice::Random, split.pick_random(random)),
            },
        };
        Selection {
            taken_by,
            choice,
            version: split.version(index),
            default: &self.default,
        }
    }

    /// [`select`](Self::select) then [`resolve`](Selection::resolve): the whole decision.
    pub fn decide<R: RequestView + ?Sized>(
        &self,
        req: &R,
        random: u32,
        ready: impl FnMut(&str) -> bool,
    ) -> Decision<'_> {
        self.select(req, random).resolve(ready)
    }

    /// The version to mirror this request to, if any: mirroring is on, `random` (a uniformly
    /// random `u32` from the caller) falls in the mirrored share, and the request is not already
    /// going to the mirror version (a copy to where the original goes would only duplicate it).
    pub fn mirror(&self, decision: &Decision<'_>, random: u32) -> Option<&str> {
        let m = self.mirror.as_ref()?;
        let sampled = u64::from(random) < m.threshold;
        (sampled && decision.version() != Some(m.version.as_str())).then_some(m.version.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_policy;

    const POLICY: &str = "
apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  rules:
  - name: testers
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{version: v3, weight: 100}]
  - name: split
    match: [{headers: {x-split: {present: true}}}]
    route: [{version: v1, weight: 1}, {version: v2, weight: 1}]
  default:
    route: [{version: v1, weight: 80}, {version: v2, weight: 20}, {version: v0, weight: 0}]
  mirror: {version: v2, percent: 10}
  stickiness: {cookie: uid}
";

    fn compiled() -> CompiledPolicy {
        CompiledPolicy::new(&parse_policy(POLICY).unwrap()).unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().uri("/");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn rule_with_one_version_is_single() {
        let p = compiled();
        let d = p.decide(&request(&[("end-user", "jason")]), 0, |_| true);
        assert_eq!(
            d.taken_by,
            TakenBy::Rule {
                index: 0,
                name: "testers",
                block: 0
            }
        );
        assert_eq!(d.choice, Choice::Single);
        assert_eq!(d.target, Target::Version("v3"));
    }

    #[test]
    fn sticky_key_decides_and_is_stable() {
        let p = compiled();
        for user in ["alice", "bob", "carol", "dave", "erin"] {
            let cookie = format!("uid={user}");
            let req = request(&[("cookie", &cookie)]);
            let first = p.decide(&req, 0, |_| true);
            assert!(matches!(first.choice, Choice::Sticky { .. }));
            for random in [1, u32::MAX / 3, u32::MAX] {
                assert_eq!(
                    p.decide(&req, random, |_| true),
                    first,
                    "random is ignored when sticky"
                );
            }
        }
    }

    #[test]
    fn without_key_random_decides() {
        let p = compiled();
        let req = request(&[]);
        assert_eq!(p.decide(&req, 0, |_| true).target, Target::Version("v1"));
        assert_eq!(
            p.decide(&req, u32::MAX, |_| true).target,
            Target::Version("v2")
        );
        assert_eq!(p.decide(&req, 0, |_| true).choice, Choice::Random);
        let empty_key = request(&[("cookie", "uid=")]);
        assert_eq!(
            p.decide(&empty_key, 0, |_| true).choice,
            Choice::Random,
            "empty key is no key"
        );
    }

    #[test]
    fn falls_back_to_first_ready_default_version() {
        let p = compiled();
        let d = p.decide(&request(&[("end-user", "jason")]), 0, |v| v != "v3");
        assert_eq!(d.chosen, "v3");
        assert_eq!(d.target, Target::FellBack("v1"));
        assert!(d.fell_back());
        let d = p.decide(&request(&[("end-user", "jason")]), 0, |v| v == "v2");
        assert_eq!(d.target, Target::FellBack("v2"));
        assert_eq!(d.version(), Some("v2"));
    }

    #[test]
    fn no_ready_version_is_unavailable_and_weight_zero_is_not_a_fallback() {
        let p = compiled();
        let d = p.decide(&request(&[("end-user", "jason")]), 0, |v| v == "v0");
        assert_eq!(d.target, Target::Unavailable);
        assert_eq!(d.version(), None);
        assert!(!d.fell_back());
    }

    #[test]
    fn mirror_samples_and_skips_requests_already_on_the_mirror_version() {
        let p = compiled();
        let d = p.decide(&request(&[("end-user", "jason")]), 0, |_| true);
        assert_eq!(p.mirror(&d, 0), Some("v2"));
        let tenth = (u64::from(u32::MAX) / 10) as u32;
        assert_eq!(p.mirror(&d, tenth - 1000), Some("v2"));
        assert_eq!(p.mirror(&d, tenth + 1000), None);
        assert_eq!(p.mirror(&d, u32::MAX), None);
        let on_v2 = p.decide(&request(&[]), u32::MAX, |_| true);
        assert_eq!(on_v2.version(), Some("v2"));
        assert_eq!(p.mirror(&on_v2, 0), None);
    }

    #[test]
    fn decisions_explain_themselves() {
        let p = compiled();
        let jason = request(&[("end-user", "jason")]);
        assert_eq!(
            p.decide(&jason, 0, |_| true).to_string(),
            "rule \"testers\" (rules[0], match[0]), only version with traffic: v3"
        );
        assert_eq!(
            p.decide(&jason, 0, |v| v == "v2").to_string(),
            "rule \"testers\" (rules[0], match[0]), only version with traffic: v3 has no ready endpoint, \
             fell back to v2 (first ready version of the default route)"
        );
        assert_eq!(
            p.decide(&request(&[]), 0, |_| false).to_string(),
            "default route (no rule matched), random by weight: v1 has no ready endpoint and neither has \
             any version of the default route (503)"
        );
        let sticky = p
            .decide(&request(&[("cookie", "uid=alice")]), 0, |_| true)
            .to_string();
        assert!(
            sticky.starts_with("default route (no rule matched), sticky bucket "),
            "{sticky}"
        );
    }

    #[test]
    fn mirror_at_100_percent_always() {
        let text = POLICY.replace("percent: 10", "percent: 100");
        let p = CompiledPolicy::new(&parse_policy(&text).unwrap()).unwrap();
        let d = p.decide(&request(&[("end-user", "jason")]), 0, |_| true);
        assert_eq!(p.mirror(&d, u32::MAX), Some("v2"));
        assert_eq!(MIRROR_BODY_LIMIT, 65_536);
    }
}
