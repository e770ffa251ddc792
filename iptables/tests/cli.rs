//! The binary's edges: bad input gives one clear line and a non-zero exit; `plan` touches nothing.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_serin-iptables"))
        .args(args)
        .env("SERIN_IPV6", "on")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Runs with bad input and returns the single stderr line, checking the exit code and stdout.
fn one_line_error(args: &[&str]) -> String {
    let output = run(args);
    assert!(!output.status.success(), "{args:?} should fail");
    assert!(
        output.stdout.is_empty(),
        "{args:?} printed rules despite the error"
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got:\n{stderr}"
    );
    assert!(lines[0].starts_with("serin-iptables: "), "{}", lines[0]);
    lines[0].to_owned()
}

#[test]
fn invalid_cidr_names_flag_and_value() {
    let line = one_line_error(&["plan", "--exclude-outbound-cidrs", "10.0.0.0/33"]);
    assert_eq!(
        line,
        "serin-iptables: invalid --exclude-outbound-cidrs `10.0.0.0/33`: prefix length must be 0-32"
    );
}

#[test]
fn bad_port_names_flag_and_value() {
    let line = one_line_error(&["plan", "--exclude-outbound-ports", "80,70000"]);
    assert_eq!(
        line,
        "serin-iptables: invalid --exclude-outbound-ports `70000`: port must be 1-65535"
    );
}

#[test]
fn bad_list_names_flag_and_value() {
    let line = one_line_error(&["plan", "--inbound-ports", "80,,x"]);
    assert_eq!(
        line,
        "serin-iptables: invalid --inbound-ports `80,,x`: entry 2 is empty"
    );
}

#[test]
fn conflicting_flags_are_named() {
    let line = one_line_error(&[
        "plan",
        "--inbound-ports",
        "8080",
        "--exclude-inbound-ports",
        "22",
    ]);
    assert!(line.contains("--exclude-inbound-ports `22`"), "{line}");
    assert!(line.contains("--inbound-ports '*'"), "{line}");
    let line = one_line_error(&["apply", "--inbound-ports", "15000"]);
    assert!(line.contains("--inbound-ports `15000`"), "{line}");
    let line = one_line_error(&["plan", "--inbound-port", "15001"]);
    assert!(line.contains("--inbound-port `15001`"), "{line}");
}

#[test]
fn clap_errors_are_one_line_too() {
    let line = one_line_error(&["plan", "--proxy-uid", "root"]);
    assert!(line.contains("--proxy-uid"), "{line}");
    let line = one_line_error(&["plan", "--outbound-port", "70000"]);
    assert!(line.contains("70000"), "{line}");
    let line = one_line_error(&["plan", "--ipv6", "maybe"]);
    assert!(line.contains("maybe"), "{line}");
    let line = one_line_error(&["explode"]);
    assert!(line.contains("explode"), "{line}");
}

#[test]
fn environment_variables_stand_in_for_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_serin-iptables"))
        .args(["plan", "--ipv6", "off"])
        .env("SERIN_EXCLUDE_OUTBOUND_PORTS", "5432")
        .env("SERIN_PROXY_UID", "4242")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.contains("-A SERIN_OUTPUT -p tcp --dport 5432 -j RETURN\n"),
        "{stdout}"
    );
    assert!(stdout.contains("--uid-owner 4242 -j RETURN\n"), "{stdout}");
    let line = {
        let output = Command::new(env!("CARGO_BIN_EXE_serin-iptables"))
            .arg("plan")
            .env("SERIN_EXCLUDE_OUTBOUND_CIDRS", "fd00::/200")
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8(output.stderr).unwrap()
    };
    assert!(line.contains("`fd00::/200`"), "{line}");
}

#[test]
fn flags_may_come_before_the_command() {
    let output = run(&["--exclude-outbound-ports", "25", "plan"]);
    assert!(output.status.success());
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .contains("--dport 25 -j RETURN")
    );
}
