//! Golden files: the planned rules of each scenario, both families, one file per scenario in
//! `tests/golden/`. The library's rendering and the binary's `plan` output must both equal the
//! file. `UPDATE_GOLDEN=1 cargo test -p serin-iptables --test golden` rewrites the files.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serin_iptables::app::{Cli, Command as Subcommand};
use serin_iptables::plan::plan;
use serin_iptables::restore::render_plan;

/// Each scenario: its file name and the flags that give it. `--ipv6 auto` counts as a host with
/// IPv6, so every scenario shows both families unless it turns IPv6 off.
const SCENARIOS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("include-list", &["--inbound-ports", "9080,8080,9000-9010"]),
    (
        "exclude-inbound-ports",
        &["--exclude-inbound-ports", "22,8443,9000:9100"],
    ),
    (
        "exclude-outbound-ports",
        &["--exclude-outbound-ports", "3306,6379,8000-8100"],
    ),
    (
        "exclude-outbound-cidrs",
        &[
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,169.254.169.254,fd00::/8,2001:db8::1/32",
        ],
    ),
    ("ipv6-on", &["--ipv6", "on"]),
    (
        "ipv6-off",
        &[
            "--ipv6",
            "off",
            "--exclude-outbound-cidrs",
            "10.0.0.0/8,fd00::/8",
        ],
    ),
    (
        "custom-uid-gid",
        &["--proxy-uid", "2000", "--proxy-gid", "3000"],
    ),
    (
        "custom-ports",
        &["--outbound-port", "16001", "--inbound-port", "16006"],
    ),
    ("inbound-off", &["--inbound-ports", ""]),
    (
        "combined",
        &[
            "--proxy-uid",
            "101",
            "--proxy-gid",
            "102",
            "--exclude-inbound-ports",
            "22",
            "--exclude-outbound-ports",
            "53",
            "--exclude-outbound-cidrs",
            "192.168.0.0/16,fd00::/8",
            "--ipv6",
            "on",
        ],
    ),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden_path(name: &str) -> PathBuf {
    golden_dir().join(format!("{name}.rules"))
}

/// The plan text for a scenario, through the library (no host lookups).
fn planned(args: &[&str]) -> String {
    let cli = Cli::try_parse_from(["serin-iptables", "plan"].iter().chain(args)).unwrap();
    assert_eq!(cli.command, Subcommand::Plan);
    let config = cli.capture.config(|| true).unwrap();
    render_plan(&plan(&config))
}

/// Compares `actual` with the golden file, or rewrites it under `UPDATE_GOLDEN=1`.
fn check_golden(name: &str, actual: &str) -> Result<(), String> {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    Err(format!(
        "golden file {} is stale (rerun with UPDATE_GOLDEN=1 if the change is meant):\n{}",
        path.display(),
        pretty_assertions::StrComparison::new(&expected, actual)
    ))
}

#[test]
fn plans_match_golden_files() {
    let failures: Vec<String> = SCENARIOS
        .iter()
        .filter_map(|(name, args)| check_golden(name, &planned(args)).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn every_golden_file_has_a_scenario() {
    let orphans: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|file| {
            !SCENARIOS
                .iter()
                .any(|(name, _)| *file == format!("{name}.rules"))
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "golden files without a scenario: {orphans:?}"
    );
}

#[test]
fn golden_files_cover_both_families() {
    for (name, args) in SCENARIOS {
        let text = planned(args);
        assert!(text.contains("# IPv4: iptables-restore"), "{name}");
        assert!(
            text.contains("# IPv6: "),
            "{name}: the IPv6 part is labelled, even when off"
        );
        assert!(text.ends_with("\n"), "{name}");
    }
}

#[test]
fn binary_plan_output_equals_golden_files() {
    for (name, args) in SCENARIOS {
        // `auto` would ask this host; the environment variable stands in for the flag.
        let output = Command::new(env!("CARGO_BIN_EXE_serin-iptables"))
            .arg("plan")
            .args(*args)
            .env("SERIN_IPV6", "on")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name}: {stderr}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        // Golden files are written by the library test; here they are only compared.
        let expected = std::fs::read_to_string(golden_path(name)).unwrap();
        if stdout != expected {
            panic!(
                "`serin-iptables plan {}` differs from {name}.rules:\n{}",
                args.join(" "),
                pretty_assertions::StrComparison::new(&expected, &stdout)
            );
        }
    }
}
