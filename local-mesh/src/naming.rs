//! Names of everything a mesh creates: a fixed prefix, the mesh's run id, then what it is.
//!
//! Namespaces are `srn-<id>-node` and `srn-<id>-<pod>`; links (which Linux limits to 15
//! characters) are `srn-<id>br` (the bridge) and `srn-<id>v<n>` (the node end of pod `n`'s veth;
//! the pod end is always `eth0`). The run id is 6 characters of `[0-9a-z]`, so `sweep` can tell
//! from any name which run made it.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::Error;

/// The prefix of every namespace, link and directory a mesh creates.
pub const PREFIX: &str = "srn-";

/// Length of a run id.
pub const RUN_ID_LEN: usize = 6;

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

/// The longest pod name: it is used in a namespace name and as a host name label.
pub const POD_NAME_MAX: usize = 40;

/// Suffix reserved for the node namespace, so no pod may take it.
const NODE_SUFFIX: &str = "node";

/// The largest pod index that still fits `srn-<id>v<n>` into [`IFNAME_MAX`].
pub const MAX_POD_INDEX: u32 = 9999;

/// A short identifier, unique among the meshes alive on this host.
///
/// Uniqueness is enforced when the mesh claims its state file (created exclusively); this type only
/// proposes candidates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    /// Proposes a candidate run id mixed from the pid, a per-process counter and the clock.
    pub(crate) fn candidate(pid: u32, counter: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        // splitmix64: cheap and good enough to spread nearby inputs over the id space.
        let mut x = (u64::from(pid) << 32) ^ counter.rotate_left(17) ^ nanos;
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let id = (0..RUN_ID_LEN)
            .map(|i| ALPHABET[((x >> (i * 6)) % 36) as usize] as char)
            .collect();
        RunId(id)
    }

    /// Parses a run id from its text form.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == RUN_ID_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase());
        ok.then(|| RunId(s.to_owned()))
    }

    /// The run id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The node namespace's name.
    pub fn node_netns(&self) -> String {
        format!("{PREFIX}{}-{NODE_SUFFIX}", self.0)
    }

    /// A pod namespace's name.
    pub fn pod_netns(&self, pod: &str) -> String {
        format!("{PREFIX}{}-{pod}", self.0)
    }

    /// The bridge's name (inside the node namespace).
    pub fn bridge(&self) -> String {
        format!("{PREFIX}{}br", self.0)
    }

    /// The node end of pod number `index`'s veth pair.
    pub fn veth(&self, index: u32) -> String {
        format!("{PREFIX}{}v{index}", self.0)
    }

    /// The run id that made a namespace, link or directory called `name`, if it is one of ours.
    pub fn owner_of(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?;
        RunId::parse(rest.get(..RUN_ID_LEN)?)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `name` can be a pod name: a DNS label (lowercase letters, digits, `-`, starting and
/// ending alphanumeric), at most [`POD_NAME_MAX`] characters, and not the reserved `node`.
pub fn validate_pod_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidPodName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.len() > POD_NAME_MAX {
        return invalid("must be at most 40 characters");
    }
    if name == NODE_SUFFIX {
        return invalid("`node` is reserved for the node namespace");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_interface_limit() {
        let id = RunId::candidate(4_194_304, u64::MAX);
        assert_eq!(id.as_str().len(), RUN_ID_LEN);
        assert!(id.bridge().len() <= IFNAME_MAX, "{}", id.bridge());
        assert!(
            id.veth(MAX_POD_INDEX).len() <= IFNAME_MAX,
            "{}",
            id.veth(MAX_POD_INDEX)
        );
    }

    #[test]
    fn every_name_leads_back_to_its_run() {
        let id = RunId::parse("a1b2c3").unwrap();
        for name in [
            id.node_netns(),
            id.pod_netns("reviews-v1"),
            id.bridge(),
            id.veth(7),
        ] {
            assert_eq!(RunId::owner_of(&name), Some(id.clone()), "{name}");
        }
        assert_eq!(RunId::owner_of("srn-ABCDEF-node"), None);
        assert_eq!(RunId::owner_of("srn-abc"), None);
        assert_eq!(RunId::owner_of("cni-a1b2c3"), None);
    }

    #[test]
    fn candidates_differ() {
        let a = RunId::candidate(100, 0);
        let b = RunId::candidate(100, 1);
        assert_ne!(a, b);
    }

    #[test]
    fn pod_names_are_dns_labels() {
        for ok in ["a", "reviews-v1", "p0"] {
            validate_pod_name(ok).unwrap();
        }
        for bad in [
            "",
            "node",
            "Reviews",
            "a_b",
            "-a",
            "a-",
            "a.b",
            &"x".repeat(41),
        ] {
            assert!(validate_pod_name(bad).is_err(), "{bad:?}");
        }
    }
}
