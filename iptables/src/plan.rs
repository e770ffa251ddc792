//! The pure planner: a [`Config`] in, the capture rules for each address family out. No I/O.
//!
//! Every rule lives in the `nat` table:
//!
//! ```text
//! PREROUTING -p tcp ─► SERIN_INBOUND ─► SERIN_IN_REDIRECT ─► REDIRECT :15006   (inbound)
//! OUTPUT     -p tcp ─► SERIN_OUTPUT  ─► SERIN_REDIRECT    ─► REDIRECT :15001   (outbound)
//!                         └─(own pod IP over lo)─► SERIN_INBOUND
//! ```
//!
//! Loopback is where a sidecar's rules get subtle. A packet the pod sends to itself crosses the nat
//! table once, in OUTPUT, never in PREROUTING, so the inbound decision for it has to be made in
//! SERIN_OUTPUT:
//! - to `127.0.0.0/8` / `::1`: never captured (apps talking to localhost, the sidecar's admin port);
//! - to the pod's own IP over `lo`, from the app *or* from the sidecar: through SERIN_INBOUND, so the
//!   app reaches itself by its pod IP the way a peer pod would, through the inbound listener (the
//!   sidecar's outbound side connecting to its own pod's endpoint lands there too);
//! - from `127.0.0.6` / `::6`: never captured. That is the source the inbound listener binds when it
//!   forwards a connection to the app on the pod IP; without the exception the forwarded connection
//!   would be captured again, forever. (The inbound listener may also forward to `127.0.0.1`.)
//!
//! Only then do the proxy uid and gid owner matches return the sidecar's own traffic uncaptured,
//! which is why the loopback rules come before them.

use std::fmt;

use crate::config::{Config, InboundCapture, PortRange, RESERVED_PORTS};

/// Every chain Serin creates starts with this; everything starting with it is Serin's.
pub const CHAIN_PREFIX: &str = "SERIN_";
/// Inbound TCP: decides which ports go to the inbound listener.
pub const INBOUND: &str = "SERIN_INBOUND";
/// Redirects to the inbound listener.
pub const IN_REDIRECT: &str = "SERIN_IN_REDIRECT";
/// Outbound TCP: decides what goes to the outbound listener.
pub const OUTPUT: &str = "SERIN_OUTPUT";
/// Redirects to the outbound listener.
pub const REDIRECT: &str = "SERIN_REDIRECT";
/// The only table the planner uses.
pub const NAT: &str = "nat";

/// An address family: one set of rules each, installed by its own tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4, `iptables`.
    V4,
    /// IPv6, `ip6tables`.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The loopback range: traffic to it is never captured.
    pub fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }

    /// The source the inbound listener binds when it forwards to the app on the pod IP.
    pub fn inbound_passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    /// The tool's name prefix: `iptables` or `ip6tables`.
    pub fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One rule: appended to `chain` with the match and target in `spec`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The chain the rule is appended to.
    pub chain: &'static str,
    /// Matches and target, as `iptables-restore` takes them after `-A CHAIN`.
    pub spec: String,
}

impl Rule {
    fn new(chain: &'static str, spec: impl Into<String>) -> Self {
        Rule {
            chain,
            spec: spec.into(),
        }
    }

    /// A jump from a chain that is not Serin's (PREROUTING, OUTPUT) into one of Serin's.
    pub fn is_jump_into_serin(&self) -> bool {
        !self.chain.starts_with(CHAIN_PREFIX)
    }
}

/// Rendered as an `iptables-restore` line.
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec)
    }
}

/// Serin's chains and rules in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// The table (`nat`).
    pub table: &'static str,
    /// Serin's chains in this table, in the order they are declared.
    pub chains: Vec<&'static str>,
    /// The jumps into Serin's chains first, then each chain's rules in order.
    pub rules: Vec<Rule>,
}

/// The rules of one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    /// The family these rules are for.
    pub family: Family,
    /// One entry per table used.
    pub tables: Vec<TablePlan>,
}

/// The planner's output: IPv4 rules, and IPv6 rules unless IPv6 is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// One entry per planned family, IPv4 first.
    pub families: Vec<FamilyPlan>,
}

impl RuleSet {
    /// The plan for `family`, if that family is planned.
    pub fn family(&self, family: Family) -> Option<&FamilyPlan> {
        self.families.iter().find(|plan| plan.family == family)
    }
}

/// Plans the capture rules for `config` (assumed validated: see [`Config::validate`]).
pub fn plan(config: &Config) -> RuleSet {
    let mut families = vec![plan_family(config, Family::V4)];
    if config.ipv6 {
        families.push(plan_family(config, Family::V6));
    }
    RuleSet { families }
}

fn plan_family(config: &Config, family: Family) -> FamilyPlan {
    let inbound_on = config.inbound != InboundCapture::Off;
    let mut chains = Vec::new();
    let mut rules = Vec::new();

    // Jumps from the built-in chains; only TCP is ever captured.
    if inbound_on {
        chains.extend([INBOUND, IN_REDIRECT]);
        rules.push(Rule::new("PREROUTING", format!("-p tcp -j {INBOUND}")));
    }
    chains.extend([OUTPUT, REDIRECT]);
    rules.push(Rule::new("OUTPUT", format!("-p tcp -j {OUTPUT}")));

    if inbound_on {
        rules.extend(inbound_rules(&config.inbound));
        rules.push(Rule::new(
            IN_REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", config.inbound_port),
        ));
    }
    rules.extend(output_rules(config, family));
    rules.push(Rule::new(
        REDIRECT,
        format!("-p tcp -j REDIRECT --to-ports {}", config.outbound_port),
    ));

    FamilyPlan {
        family,
        tables: vec![TablePlan {
            table: NAT,
            chains,
            rules,
        }],
    }
}

fn inbound_rules(inbound: &InboundCapture) -> Vec<Rule> {
    let dport = |ports: &PortRange, target: &str| {
        Rule::new(INBOUND, format!("-p tcp --dport {ports} -j {target}"))
    };
    match inbound {
        InboundCapture::All { exclude } => {
            let mut rules = vec![dport(&RESERVED_PORTS, "RETURN")];
            rules.extend(exclude.iter().map(|ports| dport(ports, "RETURN")));
            rules.push(Rule::new(INBOUND, format!("-p tcp -j {IN_REDIRECT}")));
            rules
        }
        // Ports not listed fall off the end of the chain: back to the caller, uncaptured.
        InboundCapture::Ports(ports) => ports
            .iter()
            .map(|ports| dport(ports, IN_REDIRECT))
            .collect(),
        InboundCapture::Off => Vec::new(),
    }
}

fn output_rules(config: &Config, family: Family) -> Vec<Rule> {
    let mut rules = Vec::new();
    // Excluded ports first: they win over every redirect below, loopback ones included.
    for ports in &config.exclude_outbound_ports {
        rules.push(Rule::new(
            OUTPUT,
            format!("-p tcp --dport {ports} -j RETURN"),
        ));
    }
    if config.inbound != InboundCapture::Off {
        let source = family.inbound_passthrough_source();
        rules.push(Rule::new(OUTPUT, format!("-o lo -s {source} -j RETURN")));
        // The pod's own IP over lo: the inbound port policy decides, as for a peer pod. Ports it
        // does not capture return here and are left alone by the next rule.
        let loopback = family.loopback();
        rules.push(Rule::new(
            OUTPUT,
            format!("-o lo ! -d {loopback} -j {INBOUND}"),
        ));
    }
    // Everything else on lo (localhost) is never captured, whoever sends it.
    rules.push(Rule::new(OUTPUT, "-o lo -j RETURN"));
    // The sidecar's own connections go out as they are.
    rules.push(Rule::new(
        OUTPUT,
        format!("-m owner --uid-owner {} -j RETURN", config.proxy_uid),
    ));
    rules.push(Rule::new(
        OUTPUT,
        format!("-m owner --gid-owner {} -j RETURN", config.proxy_gid),
    ));
    let same_family = |net: &&ipnet::IpNet| match family {
        Family::V4 => matches!(net, ipnet::IpNet::V4(_)),
        Family::V6 => matches!(net, ipnet::IpNet::V6(_)),
    };
    for net in config.exclude_outbound_cidrs.iter().filter(same_family) {
        rules.push(Rule::new(OUTPUT, format!("-d {net} -j RETURN")));
    }
    rules.push(Rule::new(OUTPUT, format!("-j {REDIRECT}")));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;

    fn rules_of(set: &RuleSet, family: Family) -> Vec<String> {
        set.family(family).unwrap().tables[0]
            .rules
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn defaults_capture_both_directions_in_both_families() {
        let set = plan(&Config::default());
        assert_eq!(set.families.len(), 2);
        for family in Family::ALL {
            let rules = rules_of(&set, family);
            assert!(rules.contains(&"-A PREROUTING -p tcp -j SERIN_INBOUND".to_owned()));
            assert!(rules.contains(&"-A OUTPUT -p tcp -j SERIN_OUTPUT".to_owned()));
            assert!(
                rules.contains(&"-A SERIN_REDIRECT -p tcp -j REDIRECT --to-ports 15001".into())
            );
            assert!(
                rules.contains(&"-A SERIN_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006".into())
            );
            assert!(
                rules.contains(&"-A SERIN_INBOUND -p tcp --dport 15000:15099 -j RETURN".into())
            );
        }
    }

    #[test]
    fn loopback_rules_come_before_owner_matches() {
        let rules = rules_of(&plan(&Config::default()), Family::V4);
        let position = |needle: &str| rules.iter().position(|r| r.contains(needle)).unwrap();
        assert!(position("! -d 127.0.0.0/8 -j SERIN_INBOUND") < position("--uid-owner 1337"));
        assert!(position("-o lo -j RETURN") < position("--gid-owner 1337"));
        let output: Vec<&String> = rules
            .iter()
            .filter(|r| r.starts_with("-A SERIN_OUTPUT"))
            .collect();
        assert_eq!(
            output.last().unwrap().as_str(),
            "-A SERIN_OUTPUT -j SERIN_REDIRECT"
        );
        let v6 = rules_of(&plan(&Config::default()), Family::V6);
        assert!(v6.contains(&"-A SERIN_OUTPUT -o lo ! -d ::1/128 -j SERIN_INBOUND".to_owned()));
        assert!(v6.contains(&"-A SERIN_OUTPUT -o lo -s ::6/128 -j RETURN".to_owned()));
    }

    #[test]
    fn cidrs_go_to_their_own_family() {
        let config = Config {
            exclude_outbound_cidrs: crate::config::parse_cidr_list("x", "10.0.0.0/8,fd00::/8")
                .unwrap(),
            ..Config::default()
        };
        let set = plan(&config);
        let v4 = rules_of(&set, Family::V4).join("\n");
        let v6 = rules_of(&set, Family::V6).join("\n");
        assert!(v4.contains("-d 10.0.0.0/8 -j RETURN") && !v4.contains("fd00"));
        assert!(v6.contains("-d fd00::/8 -j RETURN") && !v6.contains("10.0.0.0"));
    }

    #[test]
    fn inbound_off_has_no_inbound_chains() {
        let set = plan(&Config {
            inbound: InboundCapture::Off,
            ipv6: false,
            ..Config::default()
        });
        assert_eq!(set.families.len(), 1);
        let table = &set.families[0].tables[0];
        assert_eq!(table.chains, [OUTPUT, REDIRECT]);
        assert!(
            !table
                .rules
                .iter()
                .any(|r| r.spec.contains("INBOUND") || r.chain == INBOUND)
        );
    }

    #[test]
    fn include_list_redirects_only_listed_ports() {
        let config = Config {
            inbound: InboundCapture::Ports(vec![
                PortRange::single(8080),
                PortRange {
                    first: 9000,
                    last: 9010,
                },
            ]),
            ..Config::default()
        };
        let rules = rules_of(&plan(&config), Family::V4);
        let inbound: Vec<&String> = rules
            .iter()
            .filter(|r| r.starts_with("-A SERIN_INBOUND"))
            .collect();
        assert_eq!(
            inbound,
            [
                "-A SERIN_INBOUND -p tcp --dport 8080 -j SERIN_IN_REDIRECT",
                "-A SERIN_INBOUND -p tcp --dport 9000:9010 -j SERIN_IN_REDIRECT"
            ]
        );
    }

    #[test]
    fn planning_is_deterministic() {
        assert_eq!(plan(&Config::default()), plan(&Config::default()));
    }
}
