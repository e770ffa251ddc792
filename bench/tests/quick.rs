//! Root test of the whole harness: `serin-bench --quick` builds every shape with real proxies
//! (serin-proxy, nginx, HAProxy) in real network namespaces and prints every table. It checks
//! that the harness works, never how fast anything is. Skipped, with the reason, without root.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The quick run must fit in CI's budget with room to spare.
const LIMIT: Duration = Duration::from_secs(170);

const TABLES: [&str; 11] = [
    "### Machine",
    "### HTTP/1.1 keep-alive",
    "### HTTP/1.1 new connection per request",
    "### h2c multiplexed",
    "### gRPC unary",
    "### raw TCP throughput",
    "### Resources of the proxies",
    "### Connection sweep (HTTP/1.1 keep-alive)",
    "### Design targets",
    "### Feature cost",
    "### Control plane",
];

const SHAPES: [&str; 7] = [
    "direct (no proxy)",
    "Serin, 1 hop",
    "nginx, 1 hop",
    "HAProxy, 1 hop",
    "Serin, 2 hops",
    "nginx, 2 hops",
    "HAProxy, 2 hops",
];

fn skip_unless_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid0 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
    if !uid0 {
        eprintln!("skipping quick_run_prints_every_table: needs root (network namespaces)");
    }
    !uid0
}

#[test]
fn quick_run_prints_every_table() {
    if skip_unless_root() {
        return;
    }
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_serin-bench"))
        .arg("--quick")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serin-bench");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "serin-bench --quick took longer than {LIMIT:?}; stderr:\n{}",
                err_reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let report = out_reader.join().unwrap();
    let log = err_reader.join().unwrap();
    eprintln!("{log}");
    assert!(status.success(), "serin-bench failed: {status}\n{log}");
    assert!(report.contains("Quick run (--quick)"), "{report}");
    for table in TABLES {
        assert!(report.contains(table), "no {table:?} table in:\n{report}");
    }
    // Every shape has a row in every workload table: measured, or skipped only because a
    // program is missing (never because the harness failed).
    let tables: Vec<&str> = report.split("\n### ").collect();
    for table in tables
        .iter()
        .filter(|t| t.contains("| shape | capacity") || t.contains("| shape | throughput"))
    {
        let title = table.lines().next().unwrap_or_default();
        for shape in SHAPES {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| {shape} |")))
                .unwrap_or_else(|| panic!("no {shape} row in {title}:\n{table}"));
            if let Some(why) = row.split("not measured: ").nth(1) {
                assert!(
                    why.contains("not installed") || why.contains("not found"),
                    "{shape} failed in {title}: {row}"
                );
                continue;
            }
            let errors = row.trim_end_matches('|').rsplit('|').next().unwrap().trim();
            assert!(
                errors == "0",
                "{shape} had failed requests in {title}: {row}"
            );
        }
    }
    // The feature-cost and weight-flip scenarios ran whenever their programs were there: the
    // feature rows show the path `/routes` confirmed, and no request failed across the flips.
    let section = |title: &str| {
        tables
            .iter()
            .find(|t| t.starts_with(title))
            .copied()
            .unwrap_or_default()
    };
    if !report.contains("| serin-proxy | not available |") {
        let features: Vec<&str> = section("Feature cost")
            .lines()
            .filter(|l| l.starts_with("| HTTP/1.1, Serin 1 hop") || l.starts_with("| same,"))
            .collect();
        assert_eq!(features.len(), 2, "{report}");
        for row in features {
            assert!(row.contains("`/routes`: 0 rule hits"), "did not run: {row}");
        }
        let control = section("Control plane");
        if !control.contains("no serin-control") {
            let flips = control
                .lines()
                .find(|l| l.contains("weight flips under load"))
                .unwrap_or_else(|| panic!("no weight-flips row:\n{control}"));
            assert!(flips.contains("| 0 failed of "), "{flips}");
        }
    }
    assert!(started.elapsed() < LIMIT, "took {:?}", started.elapsed());
}
