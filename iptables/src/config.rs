//! What to capture: the validated capture configuration, its defaults, and the parsers that turn
//! flag values into it. Every error names the flag and the value that was wrong.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// The uid the sidecar runs as; its traffic is never captured.
pub const DEFAULT_PROXY_UID: u32 = 1337;
/// The gid the sidecar runs as; its traffic is never captured.
pub const DEFAULT_PROXY_GID: u32 = 1337;
/// The sidecar's outbound capture listener.
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The sidecar's inbound capture listener.
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Ports the sidecar and control plane own: never captured inbound, whatever the flags say.
pub const RESERVED_PORTS: PortRange = PortRange {
    first: 15000,
    last: 15099,
};

/// Environment names, one per flag (`SERIN_` prefix).
pub mod env {
    /// `--proxy-uid`
    pub const PROXY_UID: &str = "SERIN_PROXY_UID";
    /// `--proxy-gid`
    pub const PROXY_GID: &str = "SERIN_PROXY_GID";
    /// `--outbound-port`
    pub const OUTBOUND_PORT: &str = "SERIN_OUTBOUND_PORT";
    /// `--inbound-port`
    pub const INBOUND_PORT: &str = "SERIN_INBOUND_PORT";
    /// `--inbound-ports`
    pub const INBOUND_PORTS: &str = "SERIN_INBOUND_PORTS";
    /// `--exclude-inbound-ports`
    pub const EXCLUDE_INBOUND_PORTS: &str = "SERIN_EXCLUDE_INBOUND_PORTS";
    /// `--exclude-outbound-ports`
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "SERIN_EXCLUDE_OUTBOUND_PORTS";
    /// `--exclude-outbound-cidrs`
    pub const EXCLUDE_OUTBOUND_CIDRS: &str = "SERIN_EXCLUDE_OUTBOUND_CIDRS";
    /// `--ipv6`
    pub const IPV6: &str = "SERIN_IPV6";
}

/// A configuration value that cannot be used. Always names the flag and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The value does not parse or is out of range.
    #[error("invalid {flag} `{value}`: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    /// The value is fine alone but contradicts another flag.
    #[error("conflicting flags: {flag} `{value}` {reason}")]
    Conflict {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

impl ConfigError {
    fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            flag,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    fn conflict(flag: &'static str, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError::Conflict {
            flag,
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// An inclusive range of TCP ports; a single port is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (equal to `first` for a single port).
    pub last: u16,
}

impl PortRange {
    /// A range holding one port.
    pub const fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

/// Rendered the way iptables' `--dport` takes it: `80` or `8000:8100`.
impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// Which inbound TCP traffic goes to the inbound listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundCapture {
    /// Every port (`--inbound-ports '*'`) except the reserved ones and these exclusions.
    All { exclude: Vec<PortRange> },
    /// Only these ports (`--inbound-ports 8080,9090`).
    Ports(Vec<PortRange>),
    /// Nothing (`--inbound-ports ''`): no inbound chains at all.
    Off,
}

/// The `--ipv6` setting, before it is resolved against the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Ipv6Mode {
    /// IPv6 rules when the kernel has IPv6 and ip6tables is installed.
    #[default]
    Auto,
    /// Always IPv6 rules (apply fails if the host cannot take them).
    On,
    /// Never IPv6 rules.
    Off,
}

impl Ipv6Mode {
    /// Whether IPv6 rules are wanted, given whether the host can take them.
    pub fn resolve(self, host_has_ipv6: impl FnOnce() -> bool) -> bool {
        match self {
            Ipv6Mode::Auto => host_has_ipv6(),
            Ipv6Mode::On => true,
            Ipv6Mode::Off => false,
        }
    }
}

/// The validated capture configuration: plain data, the planner's only input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Traffic from this uid (the sidecar) is never captured.
    pub proxy_uid: u32,
    /// Traffic from this gid (the sidecar) is never captured.
    pub proxy_gid: u32,
    /// Outbound TCP is redirected to this port.
    pub outbound_port: u16,
    /// Inbound TCP is redirected to this port.
    pub inbound_port: u16,
    /// Which inbound ports are captured.
    pub inbound: InboundCapture,
    /// Outbound destination ports never captured (sorted, no duplicates).
    pub exclude_outbound_ports: Vec<PortRange>,
    /// Outbound destinations never captured, both families (sorted, no duplicates).
    pub exclude_outbound_cidrs: Vec<IpNet>,
    /// Whether IPv6 rules are planned (already resolved from `--ipv6`).
    pub ipv6: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: DEFAULT_PROXY_GID,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            inbound_port: DEFAULT_INBOUND_PORT,
            inbound: InboundCapture::All {
                exclude: Vec::new(),
            },
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
            ipv6: true,
        }
    }
}

impl Config {
    /// Checks what no single flag can check alone; call once after building a `Config`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.outbound_port == 0 {
            return Err(ConfigError::invalid(
                "--outbound-port",
                "0",
                "must be 1-65535",
            ));
        }
        if self.inbound_port == 0 {
            return Err(ConfigError::invalid(
                "--inbound-port",
                "0",
                "must be 1-65535",
            ));
        }
        if self.inbound != InboundCapture::Off && self.inbound_port == self.outbound_port {
            return Err(ConfigError::conflict(
                "--inbound-port",
                self.inbound_port,
                "is also --outbound-port: the listeners need different ports",
            ));
        }
        if let InboundCapture::Ports(ports) = &self.inbound
            && let Some(reserved) = ports.iter().find(|p| p.overlaps(&RESERVED_PORTS))
        {
            return Err(ConfigError::conflict(
                "--inbound-ports",
                reserved,
                format!("is in the reserved range {RESERVED_PORTS}, which is never captured"),
            ));
        }
        Ok(())
    }
}

/// Parses `--inbound-ports`: `*` (all), empty (capture off) or a port list. `exclude` is the
/// parsed `--exclude-inbound-ports`, which only makes sense with `*`.
pub fn parse_inbound(ports: &str, exclude: Vec<PortRange>) -> Result<InboundCapture, ConfigError> {
    const FLAG: &str = "--inbound-ports";
    let inbound = match ports.trim() {
        "*" => return Ok(InboundCapture::All { exclude }),
        "" => InboundCapture::Off,
        list => InboundCapture::Ports(parse_port_list(FLAG, list)?),
    };
    if let Some(first) = exclude.first() {
        return Err(ConfigError::conflict(
            "--exclude-inbound-ports",
            first,
            format!("needs --inbound-ports '*' (got `{}`)", ports.trim()),
        ));
    }
    Ok(inbound)
}

/// Parses a comma-separated list of ports and ranges (`80,443,8000-8100` or `8000:8100`).
/// The empty string is the empty list. The result is sorted, without duplicates.
pub fn parse_port_list(flag: &'static str, value: &str) -> Result<Vec<PortRange>, ConfigError> {
    parse_list(flag, value, parse_port_range)
}

/// Parses one port (`80`) or inclusive range (`8000-8100`, `8000:8100`).
pub fn parse_port_range(flag: &'static str, value: &str) -> Result<PortRange, ConfigError> {
    let range = match value.split_once(['-', ':']) {
        None => PortRange::single(parse_port(flag, value)?),
        Some((first, last)) => {
            let bounds = parse_port(flag, first.trim())
                .and_then(|first| parse_port(flag, last.trim()).map(|last| (first, last)));
            let (first, last) = bounds.map_err(|_| {
                ConfigError::invalid(flag, value, "a range is FIRST-LAST, both ports 1-65535")
            })?;
            if first > last {
                return Err(ConfigError::invalid(
                    flag,
                    value,
                    format!("range starts after it ends ({first} > {last})"),
                ));
            }
            PortRange { first, last }
        }
    };
    Ok(range)
}

/// Parses one TCP port, 1-65535.
pub fn parse_port(flag: &'static str, value: &str) -> Result<u16, ConfigError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::invalid(flag, value, "not a port number"));
    }
    match value.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(ConfigError::invalid(flag, value, "port must be 1-65535")),
    }
}

/// Parses a comma-separated list of CIDRs of either family; a bare address is a host route.
/// Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`, as iptables would store it). The result
/// is sorted, without duplicates.
pub fn parse_cidr_list(flag: &'static str, value: &str) -> Result<Vec<IpNet>, ConfigError> {
    parse_list(flag, value, parse_cidr)
}

/// Parses a comma-separated list with `parse_one`: the empty string is the empty list, an empty
/// entry is an error naming its position, and the result is sorted without duplicates.
fn parse_list<T: Ord>(
    flag: &'static str,
    value: &str,
    parse_one: fn(&'static str, &str) -> Result<T, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut items = Vec::new();
    for (index, entry) in value.split(',').enumerate() {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(ConfigError::invalid(
                flag,
                value,
                format!("entry {} is empty", index + 1),
            ));
        }
        items.push(parse_one(flag, entry)?);
    }
    items.sort();
    items.dedup();
    Ok(items)
}

/// Parses one CIDR (`10.0.0.0/8`, `fd00::/8`) or address (`10.0.0.1`).
pub fn parse_cidr(flag: &'static str, value: &str) -> Result<IpNet, ConfigError> {
    let Some((addr, prefix)) = value.split_once('/') else {
        return value
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| ConfigError::invalid(flag, value, "not an IP address or CIDR"));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| ConfigError::invalid(flag, value, format!("`{addr}` is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
        ConfigError::invalid(flag, value, format!("prefix length must be 0-{max}"))
    })?;
    let net =
        IpNet::new(addr, prefix).map_err(|e| ConfigError::invalid(flag, value, e.to_string()))?;
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAG: &str = "--exclude-outbound-ports";

    #[test]
    fn port_lists_parse_sorted_and_deduplicated() {
        let ports = parse_port_list(FLAG, " 443, 80,8000-8100,80, 9000:9001").unwrap();
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["80", "443", "8000:8100", "9000:9001"]);
        assert_eq!(parse_port_list(FLAG, "").unwrap(), []);
    }

    #[test]
    fn bad_port_names_flag_and_value() {
        let err = parse_port_list(FLAG, "80,70000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --exclude-outbound-ports `70000`: port must be 1-65535"
        );
        let err = parse_port_list(FLAG, "0").unwrap_err();
        assert!(err.to_string().contains("`0`"), "{err}");
    }

    #[test]
    fn bad_list_names_flag_and_whole_value() {
        let err = parse_port_list(FLAG, "80,,x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --exclude-outbound-ports `80,,x`: entry 2 is empty"
        );
        let err = parse_port_list(FLAG, "80,x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --exclude-outbound-ports `x`: not a port number"
        );
        let err = parse_port_list(FLAG, "80,").unwrap_err();
        assert!(err.to_string().contains("entry 2 is empty"), "{err}");
    }

    #[test]
    fn bad_range_names_value() {
        let err = parse_port_list(FLAG, "9000-8000").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --exclude-outbound-ports `9000-8000`: range starts after it ends (9000 > 8000)"
        );
        let err = parse_port_list(FLAG, "1-").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --exclude-outbound-ports `1-`: a range is FIRST-LAST, both ports 1-65535"
        );
    }

    #[test]
    fn cidrs_parse_both_families_and_normalise() {
        let flag = "--exclude-outbound-cidrs";
        let nets = parse_cidr_list(flag, "10.1.2.3/8, fd00::1/8,192.168.0.1,10.0.0.0/8").unwrap();
        let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.168.0.1/32", "fd00::/8"]);
    }

    #[test]
    fn bad_cidrs_name_the_value() {
        let flag = "--exclude-outbound-cidrs";
        let err = parse_cidr_list(flag, "10.0.0.0/33").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid --exclude-outbound-cidrs `10.0.0.0/33`: prefix length must be 0-32"
        );
        let err = parse_cidr_list(flag, "fd00::/129").unwrap_err();
        assert!(err.to_string().contains("`fd00::/129`"), "{err}");
        let err = parse_cidr_list(flag, "10.0.0/8").unwrap_err();
        assert!(
            err.to_string()
                .contains("`10.0.0/8`: `10.0.0` is not an IP address"),
            "{err}"
        );
        let err = parse_cidr_list(flag, "10.0.0.0/8,,").unwrap_err();
        assert!(err.to_string().contains("entry 2 is empty"), "{err}");
        let err = parse_cidr_list(flag, "*").unwrap_err();
        assert!(err.to_string().contains("`*`"), "{err}");
    }

    #[test]
    fn inbound_modes() {
        assert_eq!(parse_inbound("", vec![]).unwrap(), InboundCapture::Off);
        assert_eq!(
            parse_inbound("*", vec![PortRange::single(22)]).unwrap(),
            InboundCapture::All {
                exclude: vec![PortRange::single(22)]
            }
        );
        assert_eq!(
            parse_inbound("9080,8080", vec![]).unwrap(),
            InboundCapture::Ports(vec![PortRange::single(8080), PortRange::single(9080)])
        );
    }

    #[test]
    fn exclusions_need_capture_of_all_ports() {
        let err = parse_inbound("8080", vec![PortRange::single(22)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "conflicting flags: --exclude-inbound-ports `22` needs --inbound-ports '*' (got `8080`)"
        );
        assert!(parse_inbound("", vec![PortRange::single(22)]).is_err());
    }

    #[test]
    fn validation_catches_conflicts() {
        assert_eq!(Config::default().validate(), Ok(()));
        let same = Config {
            inbound_port: 15001,
            ..Config::default()
        };
        assert!(
            same.validate()
                .unwrap_err()
                .to_string()
                .contains("--inbound-port `15001`")
        );
        let reserved = Config {
            inbound: InboundCapture::Ports(vec![PortRange {
                first: 14990,
                last: 15010,
            }]),
            ..Config::default()
        };
        assert_eq!(
            reserved.validate().unwrap_err().to_string(),
            "conflicting flags: --inbound-ports `14990:15010` is in the reserved range \
             15000:15099, which is never captured"
        );
        let zero = Config {
            outbound_port: 0,
            ..Config::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .to_string()
                .contains("--outbound-port `0`")
        );
    }
}
