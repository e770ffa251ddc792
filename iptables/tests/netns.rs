//! Root tests of the `serin-iptables` binary itself in a fresh network namespace (`ip netns`):
//! `apply` twice, `clean`, and the backend the namespace already uses (nft or legacy). Traffic
//! tests live in the `serin-tests` crate. Skipped, with a printed reason, without root.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace of our own, deleted on drop (also when a test panics).
struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace; `None` (after printing why) when this process is not root.
    fn create(test: &str) -> Option<Netns> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .unwrap_or("unknown");
        if euid != "0" {
            println!("skipping {test}: needs root (network namespaces), running as uid {euid}");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("serin-ipt-{}-{n}", std::process::id());
        let netns = Netns { name };
        let out = Command::new("ip")
            .args(["netns", "add", &netns.name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(netns)
    }

    /// Runs `program args` inside the namespace.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Runs `program args` inside the namespace and returns stdout; panics unless it succeeds.
    fn ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `serin-iptables ARGS` inside the namespace.
    fn serin(&self, args: &[&str]) -> String {
        self.ok(env!("CARGO_BIN_EXE_serin-iptables"), args)
    }

    /// A `*-save` tool's output without comments.
    fn saved(&self, tool: &str) -> String {
        let text = self.ok(tool, &[]);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn has_program(name: &str) -> bool {
    serin_iptables::executor::find_program(name).is_some()
}

#[test]
fn apply_twice_then_clean_with_the_binary() {
    let Some(ns) = Netns::create("apply_twice_then_clean_with_the_binary") else {
        return;
    };
    ns.ok(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.9.9.9/32",
            "-j",
            "ACCEPT",
        ],
    );
    let before = ns.saved("iptables-save");
    let args = [
        "apply",
        "--exclude-outbound-ports",
        "22",
        "--exclude-outbound-cidrs",
        "10.0.0.0/8",
    ];
    ns.serin(&args);
    let first = ns.saved("iptables-save");
    ns.serin(&args);
    assert_eq!(
        first,
        ns.saved("iptables-save"),
        "second apply changed the rules"
    );
    assert_eq!(first.matches("-j SERIN_OUTPUT").count(), 1, "{first}");
    assert!(
        first.contains("-A SERIN_OUTPUT -d 10.0.0.0/8 -j RETURN"),
        "{first}"
    );
    assert!(
        first.contains("-A OUTPUT -d 10.9.9.9/32 -j ACCEPT"),
        "{first}"
    );

    // A changed config converges: inbound capture off removes its chains and jump.
    ns.serin(&["apply", "--inbound-ports", ""]);
    let off = ns.saved("iptables-save");
    assert!(
        !off.contains("SERIN_INBOUND") && !off.contains("SERIN_IN_REDIRECT"),
        "{off}"
    );
    assert!(off.contains("-A OUTPUT -p tcp -j SERIN_OUTPUT"), "{off}");

    ns.serin(&["clean"]);
    assert_eq!(
        before,
        ns.saved("iptables-save"),
        "clean left something or took too much"
    );
    if has_program("ip6tables-save") {
        assert!(!ns.saved("ip6tables-save").contains("SERIN_"));
    }
}

#[test]
fn follows_the_legacy_backend_when_the_namespace_uses_it() {
    let Some(ns) = Netns::create("follows_the_legacy_backend_when_the_namespace_uses_it") else {
        return;
    };
    if !has_program("iptables-legacy") || !has_program("iptables-nft-save") {
        println!("skipping: needs both iptables-legacy and iptables-nft");
        return;
    }
    ns.ok(
        "iptables-legacy",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            "10.9.9.9/32",
            "-j",
            "ACCEPT",
        ],
    );
    let before = ns.saved("iptables-legacy-save");
    ns.serin(&["apply", "--ipv6", "off"]);
    ns.serin(&["apply", "--ipv6", "off"]);
    let legacy = ns.saved("iptables-legacy-save");
    assert_eq!(
        legacy.matches("-A OUTPUT -p tcp -j SERIN_OUTPUT").count(),
        1,
        "{legacy}"
    );
    assert!(
        !ns.saved("iptables-nft-save").contains("SERIN_"),
        "rules went to nft"
    );
    ns.serin(&["clean", "--ipv6", "off"]);
    assert_eq!(before, ns.saved("iptables-legacy-save"));
}

#[test]
fn plan_touches_nothing() {
    let Some(ns) = Netns::create("plan_touches_nothing") else {
        return;
    };
    let before = ns.saved("iptables-save");
    let plan = ns.serin(&["plan"]);
    assert!(plan.contains("-A OUTPUT -p tcp -j SERIN_OUTPUT"), "{plan}");
    assert_eq!(before, ns.saved("iptables-save"));
}
