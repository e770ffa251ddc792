//! The `serin-iptables` binary, wired together: flags in, config checked, rules planned, then
//! printed, installed or removed.

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{
    self, Config, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, DEFAULT_PROXY_GID,
    DEFAULT_PROXY_UID, Ipv6Mode, env,
};
use crate::executor::{SystemExecutor, find_program};
use crate::install;
use crate::plan::{Family, plan};
use crate::restore::render_plan;

/// Plans, installs and removes the sidecar's traffic capture rules (iptables nat table).
#[derive(Debug, Parser)]
#[command(name = "serin-iptables", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// What to capture (each flag also reads a `SERIN_` environment variable).
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// The three things `serin-iptables` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Print the iptables-restore input for both families; touches nothing.
    Plan,
    /// Install the rules in this network namespace; running it again changes nothing.
    Apply,
    /// Remove every SERIN_ chain and every jump into one; nothing else.
    Clean,
}

/// The capture flags, as typed.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// The sidecar's uid: its traffic is never captured.
    #[arg(long, global = true, env = env::PROXY_UID, default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// The sidecar's gid: its traffic is never captured.
    #[arg(long, global = true, env = env::PROXY_GID, default_value_t = DEFAULT_PROXY_GID)]
    pub proxy_gid: u32,
    /// Where outbound TCP is redirected.
    #[arg(long, global = true, env = env::OUTBOUND_PORT, default_value_t = DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Where inbound TCP is redirected.
    #[arg(long, global = true, env = env::INBOUND_PORT, default_value_t = DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// Inbound ports to capture: '*' (all but 15000-15099), a list (80,8000-8100), or '' (none).
    #[arg(long, global = true, env = env::INBOUND_PORTS, default_value = "*", value_name = "'*'|LIST")]
    pub inbound_ports: String,
    /// Inbound ports never captured (with --inbound-ports '*').
    #[arg(long, global = true, env = env::EXCLUDE_INBOUND_PORTS, default_value = "", value_name = "LIST")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports never captured.
    #[arg(long, global = true, env = env::EXCLUDE_OUTBOUND_PORTS, default_value = "", value_name = "LIST")]
    pub exclude_outbound_ports: String,
    /// Outbound destinations never captured: IPv4 and IPv6 CIDRs, comma-separated.
    #[arg(long, global = true, env = env::EXCLUDE_OUTBOUND_CIDRS, default_value = "", value_name = "LIST")]
    pub exclude_outbound_cidrs: String,
    /// IPv6 rules: auto (when the host has IPv6 and ip6tables), on, or off.
    #[arg(long, global = true, env = env::IPV6, value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,
}

impl CaptureArgs {
    /// Parses and validates every flag; `auto` IPv6 asks `host_has_ipv6`.
    pub fn config(
        &self,
        host_has_ipv6: impl FnOnce() -> bool,
    ) -> Result<Config, config::ConfigError> {
        let exclude_inbound =
            config::parse_port_list("--exclude-inbound-ports", &self.exclude_inbound_ports)?;
        let config = Config {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            outbound_port: self.outbound_port,
            inbound_port: self.inbound_port,
            inbound: config::parse_inbound(&self.inbound_ports, exclude_inbound)?,
            exclude_outbound_ports: config::parse_port_list(
                "--exclude-outbound-ports",
                &self.exclude_outbound_ports,
            )?,
            exclude_outbound_cidrs: config::parse_cidr_list(
                "--exclude-outbound-cidrs",
                &self.exclude_outbound_cidrs,
            )?,
            ipv6: self.ipv6.resolve(host_has_ipv6),
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs one command; returns what `plan` prints (nothing for the others).
pub fn run(cli: &Cli) -> anyhow::Result<String> {
    let Cli { command, capture } = cli;
    if *command == Command::Plan {
        // Plan: check the flags, plan, render. Reads no rules and writes none.
        let config = capture.config(host_can_take_ipv6)?;
        return Ok(render_plan(&plan(&config)));
    }

    // Check the flags before touching anything.
    capture.config(|| false)?;
    // Find the tools, on the backend the host already uses.
    let executor = SystemExecutor::detect()?;
    // Settle IPv6: `on` must be possible, `auto` follows the host.
    let ipv6_available = executor.ipv6_available();
    if capture.ipv6 == Ipv6Mode::On && !ipv6_available {
        bail!(
            "--ipv6 on, but this host cannot take IPv6 rules (no /proc/net/if_inet6 or no {})",
            executor.backend().program(Family::V6, "restore")
        );
    }
    let config = capture.config(|| ipv6_available)?;

    match command {
        Command::Apply => {
            // Plan, then converge each family in one restore batch.
            let rules = plan(&config);
            install::apply(&rules, &executor).context("apply failed")?;
        }
        Command::Clean => {
            // Remove Serin's chains and jumps from every family in use.
            let families: &[Family] = if config.ipv6 {
                &Family::ALL
            } else {
                &[Family::V4]
            };
            install::clean(families, &executor).context("clean failed")?;
        }
        Command::Plan => unreachable!("handled above"),
    }
    Ok(String::new())
}

/// Whether `auto` means IPv6 for `plan`: the kernel has IPv6 here and some ip6tables is installed.
fn host_can_take_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
        && [
            "ip6tables-nft-restore",
            "ip6tables-legacy-restore",
            "ip6tables-restore",
        ]
        .iter()
        .any(|name| find_program(name).is_some())
}
