//! The binary's start-up script: check privileges, make sure the peers are installed, find the
//! programs, measure every shape, then print the report and (with `--write`) write
//! BENCHMARKS.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::Parser;

use crate::control::{self, ControlPlan};
use crate::machine::{self, Install};
use crate::pinning::Pinning;
use crate::report::Report;
use crate::run::{self, Env, Plan};
use crate::shape::{Programs, Proxy, Scratch, Shape};
use crate::workload::Workload;

/// Environment variable naming the `serin-proxy` binary to measure.
pub const ENV_SERIN_PROXY: &str = "SERIN_BENCH_PROXY";
/// A one-minute load average above this before the run marks the figures as preliminary (the
/// load after it is the run's own: it keeps both cores busy).
const QUIET_LOAD: f64 = 0.5;

/// `serin-bench`: Serin side by side with nginx, HAProxy and no proxy, on this machine. Needs
/// root (it builds network namespaces); installs nginx and HAProxy with apt-get when missing.
#[derive(Debug, Parser)]
#[command(name = "serin-bench", version)]
pub struct Cli {
    /// A short smoke run of every shape, workload and table (CI): checks the harness end to end,
    /// its figures mean nothing.
    #[arg(long)]
    pub quick: bool,
    /// Also write the report, with the method, to this file (BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// The serin-proxy binary to measure (default: next to serin-bench, or in the release
    /// directory beside it).
    #[arg(long, env = ENV_SERIN_PROXY, value_name = "FILE")]
    pub serin_proxy: Option<PathBuf>,
    /// Run only these shapes (repeatable): direct, serin-1, nginx-1, haproxy-1, serin-2,
    /// nginx-2, haproxy-2. Ratios need direct and the peers in the same run.
    #[arg(long = "shape", value_name = "SHAPE", value_parser = parse_shape)]
    pub shapes: Vec<Shape>,
    /// Run only these workloads (repeatable): http1, http1-new, h2c, grpc, tcp.
    #[arg(long = "workload", value_name = "WORKLOAD", value_parser = parse_workload)]
    pub workloads: Vec<Workload>,
    /// Start every proxy under this command, split on spaces (profiling: `--wrapper 'valgrind
    /// --tool=callgrind --trace-children=yes --callgrind-out-file=/tmp/%p.cg'`). The figures
    /// then describe the profiler, not the proxies.
    #[arg(long, value_name = "COMMAND")]
    pub wrapper: Option<String>,
    /// Measure only the control plane (propagation, memory, and weight flips under load through
    /// real serin-proxy sidecars; no peers). With `--write`, only the "Control plane" table of
    /// that file is replaced.
    #[arg(long, conflicts_with_all = ["shapes", "workloads", "wrapper"])]
    pub control_plane_only: bool,
}

/// Runs the CLI and turns the result into an exit code.
pub fn main(cli: &Cli) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("serin-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    // 1. Root, or a clear skip: the shapes are network namespaces.
    if let Err(e) = serin_local::require_root() {
        eprintln!("serin-bench: skipping: needs root (network namespaces, iptables): {e}");
        return Ok(ExitCode::SUCCESS);
    }
    let plan = if cli.quick {
        Plan::quick()
    } else {
        Plan::full()
    };
    if cli.control_plane_only {
        return control_plane_only(cli, &plan);
    }
    let load_before = machine::load_average();

    // 2. The peers: installed when missing; their shapes are skipped, with the reason, if not.
    let mut unavailable = Vec::new();
    if let Install::Failed(why) = machine::ensure_peers() {
        eprintln!("serin-bench: nginx and HAProxy shapes will be skipped: {why}");
    }
    let nginx = machine::find_program("nginx");
    let haproxy = machine::find_program("haproxy");
    for (proxy, program) in [(Proxy::Nginx, &nginx), (Proxy::Haproxy, &haproxy)] {
        if program.is_none() {
            unavailable.push((
                proxy,
                format!(
                    "{proxy} is not installed and could not be (apt-get install {})",
                    machine::PEER_PACKAGES.join(" ")
                ),
            ));
        }
    }

    // 3. serin-proxy, copied where uid 1337 may run it (a build directory may be closed to it).
    let bin_dir = Scratch::new("bin")?;
    let serin_proxy = copy_serin_proxy(cli, &bin_dir)?;
    match &serin_proxy {
        Some(_) => {}
        None => {
            unavailable.push((
                Proxy::Serin,
                "serin-proxy not found next to serin-bench (build it: cargo build --release \
                 --bins -p serin-proxy, or pass --serin-proxy FILE)"
                    .to_owned(),
            ));
        }
    }
    let pinning = Pinning::detect()?;
    let env = Env {
        programs: Programs {
            serin_proxy: serin_proxy.as_ref().map(|(_, copy)| copy.clone()),
            wrapper: cli
                .wrapper
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            nginx: nginx.clone(),
            nginx_stream_module: PathBuf::from(machine::NGINX_STREAM_MODULE),
            haproxy: haproxy.clone(),
        },
        pinning,
        unavailable,
    };

    // 4. Measure.
    let shapes = if cli.shapes.is_empty() {
        Shape::ALL.to_vec()
    } else {
        Shape::ALL
            .into_iter()
            .filter(|s| cli.shapes.contains(s))
            .collect()
    };
    let workloads = if cli.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        Workload::ALL
            .into_iter()
            .filter(|w| cli.workloads.contains(w))
            .collect()
    };
    eprintln!(
        "serin-bench: {} run of {} shapes × {} workloads",
        if plan.quick { "quick" } else { "full" },
        shapes.len(),
        workloads.len()
    );
    let stop = stop_on_signals()?;
    let measured = run::run(&plan, &env, &shapes, &workloads, &stop);
    let control = find_sibling("serin-control");
    let control_plan = if plan.quick {
        ControlPlan::quick()
    } else {
        ControlPlan::full()
    };
    let control_plane = match &control {
        Some(binary) if !stop.load(Ordering::SeqCst) => {
            eprintln!("serin-bench: control plane: {}", binary.display());
            let proxy = serin_proxy.as_ref().map(|(_, copy)| copy.as_path());
            control::run(binary, proxy, &control_plan, pinning)
        }
        _ => control::skipped(control.as_deref(), None, &control_plan),
    };
    let load_after = machine::load_average();

    // 5. Report.
    let mut machine_lines =
        machine::describe(&[("nginx", nginx, &["-v"]), ("HAProxy", haproxy, &["-v"])]);
    machine_lines.push((
        "serin-proxy".into(),
        match &serin_proxy {
            Some((found, _)) => format!(
                "{} (source tree at git {})",
                found.display(),
                machine::source_revision().unwrap_or_else(|| "unknown".into())
            ),
            None => "not available".into(),
        },
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    machine_lines.push((
        "load average (1 min) before / after".into(),
        format!(
            "{} / {} on {cores} cores",
            fmt_load(load_before),
            fmt_load(load_after)
        ),
    ));
    let caveat = if let Some(wrapper) = &cli.wrapper {
        Some(format!(
            "The proxies ran under `{wrapper}`: the figures describe the profiler, not them."
        ))
    } else if plan.quick {
        Some(
            "Quick run (--quick): a smoke test of the harness. Its runs are far too short for \
             the figures to mean anything."
                .to_owned(),
        )
    } else {
        // Other work on the machine shows in the load average before the run; afterwards it
        // is mostly the run's own load generator, upstream and proxies.
        let before = load_before.unwrap_or(0.0);
        (before > QUIET_LOAD).then(|| {
            format!(
                "Preliminary: the machine was not quiet (1-minute load average {before:.2} on \
                 {cores} cores before the run). Treat these figures as noise, not results."
            )
        })
    };
    let report = Report {
        command: command_line(),
        machine: machine_lines,
        method: plan.describe(pinning),
        caveat,
        workloads: measured.workloads,
        sweep: measured.sweep,
        rate: plan.rate,
        connections: plan.connections,
        features: measured.features,
        control_plane,
    };
    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &cli.write {
        // Findings are written by people: a rewrite of the figures keeps them.
        let findings = fs::read_to_string(path)
            .ok()
            .and_then(|old| findings_section(&old).map(str::to_owned))
            .unwrap_or_default();
        fs::write(path, document(&markdown, &findings))
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("serin-bench: wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--control-plane-only`: the control-plane scenarios, printed and, with `--write`, spliced
/// into the existing report in place of its "Control plane" table.
fn control_plane_only(cli: &Cli, plan: &Plan) -> anyhow::Result<ExitCode> {
    let Some(binary) = find_sibling("serin-control") else {
        anyhow::bail!(
            "serin-control not found next to serin-bench (build it: cargo build --release --bins \
             -p serin-control -p serin-bench)"
        );
    };
    let pinning = Pinning::detect()?;
    let control_plan = if plan.quick {
        ControlPlan::quick()
    } else {
        ControlPlan::full()
    };
    eprintln!("serin-bench: control plane only: {}", binary.display());
    let bin_dir = Scratch::new("bin")?;
    let serin_proxy = copy_serin_proxy(cli, &bin_dir)?;
    let load_before = machine::load_average();
    let proxy = serin_proxy.as_ref().map(|(_, copy)| copy.as_path());
    let mut scenarios = control::run(&binary, proxy, &control_plan, pinning);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    scenarios.push((
        "load average (1 min) before / after this table's run".into(),
        format!(
            "{} / {} on {cores} cores (measured alone with --control-plane-only, git {})",
            fmt_load(load_before),
            fmt_load(machine::load_average()),
            machine::source_revision().unwrap_or_else(|| "unknown".into())
        ),
    ));
    let mut table = String::new();
    crate::report::scenario_table(&mut table, CONTROL_PLANE_TITLE, &scenarios);
    println!("{table}");
    if let Some(path) = &cli.write {
        let old = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let new = replace_section(&old, &format!("### {CONTROL_PLANE_TITLE}"), &table)
            .with_context(|| {
                format!(
                    "{} has no \"### {CONTROL_PLANE_TITLE}\" table to replace: run the full \
                     benchmark with --write first",
                    path.display()
                )
            })?;
        fs::write(path, new).with_context(|| format!("write {}", path.display()))?;
        eprintln!(
            "serin-bench: replaced the control-plane table of {}",
            path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Title of the control-plane table in the report.
pub const CONTROL_PLANE_TITLE: &str = "Control plane";

/// `text` with the section that starts at the line `heading` (up to the next heading of the same
/// or a higher level) replaced by `section`; `None` when there is no such line.
pub fn replace_section(text: &str, heading: &str, section: &str) -> Option<String> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut offset = 0;
    let mut start = None;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        match start {
            None if trimmed == heading => start = Some(offset),
            Some(begin) => {
                let hashes = trimmed.chars().take_while(|c| *c == '#').count();
                if hashes > 0 && hashes <= level && trimmed[hashes..].starts_with(' ') {
                    return Some(format!(
                        "{}{}\n\n{}",
                        &text[..begin],
                        section.trim_end(),
                        &text[offset..]
                    ));
                }
            }
            None => {}
        }
        offset += line.len();
    }
    let begin = start?;
    Some(format!("{}{}\n", &text[..begin], section.trim_end()))
}

/// The heading of BENCHMARKS.md's hand-written part, kept across `--write`.
pub const FINDINGS_HEADING: &str = "## Findings";

/// The hand-written findings of an existing BENCHMARKS.md, from their heading to the end.
pub fn findings_section(text: &str) -> Option<&str> {
    let at = text.find(&format!("\n{FINDINGS_HEADING}\n"))?;
    Some(&text[at + 1..])
}

/// BENCHMARKS.md: the method, this run's results, then the kept findings.
pub fn document(results: &str, findings: &str) -> String {
    let mut doc = format!("{INTRO}\n{}\n", results.trim_end());
    if !findings.is_empty() {
        doc.push('\n');
        doc.push_str(findings);
    }
    doc
}

fn parse_shape(text: &str) -> Result<Shape, String> {
    Shape::ALL
        .into_iter()
        .find(|s| s.slug() == text)
        .ok_or_else(|| {
            let names: Vec<String> = Shape::ALL.iter().map(|s| s.slug()).collect();
            format!(
                "unknown shape {text:?} (expected one of {})",
                names.join(", ")
            )
        })
}

fn parse_workload(text: &str) -> Result<Workload, String> {
    Workload::ALL
        .into_iter()
        .find(|w| w.slug() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = Workload::ALL.iter().map(|w| w.slug()).collect();
            format!(
                "unknown workload {text:?} (expected one of {})",
                names.join(", ")
            )
        })
}

/// A flag set on SIGINT or SIGTERM, so that an interrupted run stops between measurements and
/// still removes its namespaces and proxies (the default action would kill the process before
/// any guard runs).
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let handlers = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                );
                let (mut int, mut term) = match handlers {
                    (Ok(int), Ok(term)) => (int, term),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    flag.store(true, Ordering::SeqCst);
                    eprintln!(
                        "serin-bench: stopping after the current measurement, then cleaning up"
                    );
                }
            });
        })?;
    ready_rx
        .recv()
        .context("the signal thread ended before installing its handlers")?
        .context("install SIGINT and SIGTERM handlers")?;
    Ok(stop)
}

fn fmt_load(load: Option<f64>) -> String {
    load.map_or("unknown".into(), |l| format!("{l:.2}"))
}

/// The command as typed (arguments quoted when they need it).
fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 {
                Path::new(&a)
                    .file_name()
                    .map_or(a.clone(), |n| n.to_string_lossy().into_owned())
            } else {
                a
            };
            if a.contains(' ') { format!("'{a}'") } else { a }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `name` next to this executable, or in the `release` directory beside its directory (a test
/// binary in `target/debug` finding `target/release/serin-proxy`).
fn find_sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut candidates = vec![dir.join(name)];
    if let Some(target) = dir.parent() {
        candidates.push(target.join("release").join(name));
        // Test binaries live in target/<profile>/deps.
        if let Some(root) = target.parent() {
            candidates.push(root.join("release").join(name));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

/// The serin-proxy to measure (found, and its copy in `bin_dir` that uid 1337 may run: a build
/// directory may be closed to it), if there is one.
fn copy_serin_proxy(cli: &Cli, bin_dir: &Scratch) -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    let Some(found) = find_serin_proxy(cli.serin_proxy.as_deref()) else {
        return Ok(None);
    };
    let copy = bin_dir.path().join("serin-proxy");
    fs::copy(&found, &copy).with_context(|| format!("copy {}", found.display()))?;
    Ok(Some((found, copy)))
}

fn find_serin_proxy(given: Option<&Path>) -> Option<PathBuf> {
    match given {
        Some(path) => path.is_file().then(|| path.to_owned()),
        None => find_sibling("serin-proxy"),
    }
}

/// BENCHMARKS.md's opening: what is measured and how to reproduce it.
pub const INTRO: &str = "# Serin benchmarks

What Serin costs in latency, CPU and memory, measured side by side with nginx, HAProxy and no
proxy at all, in one run on one machine. Reproduce it on yours with one command (as root: it
builds network namespaces; it installs nginx and HAProxy from Debian's packages when missing):

```sh
cargo build --release --bins -p serin-proxy -p serin-control -p serin-bench
sudo target/release/serin-bench --write BENCHMARKS.md     # about 15 minutes on 2 cores
sudo target/release/serin-bench --quick                   # CI smoke run, under 2 minutes
sudo target/release/serin-bench --control-plane-only --write BENCHMARKS.md  # that table only
```

`--control-plane-only` runs the control-plane table alone (propagation, memory, weight flips
under load with real sidecars), without nginx and HAProxy.

## Method

- **Shapes.** *Direct*: the load generator in a client pod calls the upstream in a server pod
  (two network namespaces on a bridge, built by `serin-local`). *1 hop*: a proxy in the client
  pod. *2 hops*: a proxy in each pod, the mesh shape. Every proxied shape uses Serin's real
  capture rules (`serin-iptables`: REDIRECT to 15001 outbound, 15006 inbound), whichever proxy
  listens there, so nginx and HAProxy pay the same netfilter cost as Serin.
- **Proxies.** `serin-proxy --config` (a static snapshot, ports with declared protocols);
  nginx and HAProxy from Debian, each the same way: one worker (`worker_processes 1`,
  `nbthread 1`; Serin's runtime sizes itself to the one CPU it is given), keep-alive to the
  upstream (nginx `keepalive 128`, HAProxy `http-reuse always`), no access log, per-connection
  request limits lifted. The exact configuration files are `bench/golden/*`. All run as uid 1337.
  nginx's proxy module speaks HTTP/1.1 only, so in the h2c rows it forwards HTTP/1.1 upstream;
  gRPC goes through `grpc_pass` (HTTP/2).
- **Pinning** (2 cores): the client pod's load generator and proxy on one CPU, the server pod's
  upstream and proxy on the other (`taskset`), as two pods on two nodes' worth of CPU: a sidecar
  competes with its own pod's work.
- **Load.** A built-in generator (tokio + hyper, one thread). Capacity: closed loop, 16
  connections. Latency: open loop at 1000 rps over 16 connections, each request scheduled at an
  intended send time and its latency measured from that time (coordinated-omission
  correction), into HDR histograms: p50/p90/p99/p99.9/max. 1 KiB request and response bodies.
  Workloads: HTTP/1.1 keep-alive, HTTP/1.1 with a new connection per request, h2c (all streams
  multiplexed on one connection), gRPC unary, raw TCP throughput. A connection sweep (1-64)
  for HTTP/1.1 keep-alive.
- **Upstream.** serin-bench's own: hyper on one thread (HTTP/1.1 and h2c), a gRPC-like unary
  handler, a TCP sink.
- **Resources.** CPU: utime + stime of the proxy processes (`/proc/PID/stat`) over the
  capacity run, per request per hop. RSS: just started, after warm-up, and the peak sampled
  every 20 ms.
- **Feature cost.** Serin 1 hop, HTTP/1.1 keep-alive, the same runs as the plain row, with a
  snapshot whose policy for the service has 100 rules (each on a header value no request
  carries, so every request is checked against all 100 before the default route takes it), a
  90/10 v1/v2 default split and 10 % mirroring to a shadow version v3 that takes no primary
  traffic. Second row: the same with v3's endpoint on a port that accepts and never answers, so
  that the copies hang (until serin-proxy's 5 s mirror timeout, at most 128 in flight) while the
  primary requests must not notice. After each run the sidecar's `/routes` hit counts must show
  the path taken (no rule hit, the default route's split at about 90/10, about 10 % sampled for
  mirroring; none of the copies answered when the target hangs), or the row shows why it was
  refused instead of figures. Verdicts against DESIGN.md: capacity ≥ 0.90× plain forwarding;
  primary p99 with the hanging target within ±10 % of the row above.
- **mTLS.** Serin 2 hops, HTTP/1.1 keep-alive, right after the plain 2-hop row and with the
  same runs, the two sidecars holding fixed workload certificates (`--tls-cert/--tls-key/
  --tls-roots`, a root and two SPIFFE certificates made by serin-bench) and the server's
  endpoint carrying its identity in the snapshot, so the hop between them is mTLS (TLS 1.3, one
  handshake per pooled connection). The row gives capacity, CPU µs per request per hop and
  latency at the fixed rate, and the deltas against the plaintext 2-hop row; it is refused
  unless the server sidecar counted mTLS connections from the client's identity. Run it alone
  with `sudo target/release/serin-bench --shape direct --shape serin-2 --workload http1`.
- **Control plane.** `serin-control` (when built next to serin-bench) on loopback, pinned to
  the server CPU; simulated proxies are tonic clients of `serin.v1.Discovery` on the client CPU
  (100 streams per connection) that ACK every push at once. Propagation: 100 applies, 100 ms
  apart, each flipping a 90/10 split; the time from the `ApplyPolicy` call returning (and from
  its start) to the last proxy's receipt (and ACK) of the new snapshot, with 1, 100 and 1000
  proxies; memory: its RSS with 10 000 subscribers.
- **Weight flips under load.** Real processes in the 2-hop shape: `serin-control` in its own
  pod; a client pod and two server pods (serin-bench's upstream in each), registered through
  the Admin API (`RegisterWorkload`) as versions v1 and v2 of one service; the capture rules and
  a `serin-proxy --control-plane` sidecar in each of the three (pinning as above, the control
  plane on the server CPU). An open-loop HTTP/1.1 load at 1000 rps over 16 connections runs to
  the service's VIP throughout, while 1000 `ApplyPolicy` calls alternate the default split
  between 90/10 and 10/90: after each, the flipper polls `ListProxies` (every 2 ms) until the
  client sidecar has ACKed a newer snapshot, keeps that split 10 ms and flips again, so every
  flip reaches the data plane (flips faster than serin-control's 20 ms push interval would be
  coalesced). Reported: failed requests (any non-2xx or transport error; target 0) of all sent,
  flips applied and ACKed with the call → ACK time, and the share per version in each half,
  counted at the two upstreams during the 10 ms after each ACK. `--quick` does 20 flips.
- **Honesty.** Ratios compare figures of the same run. A run started on a busy machine (1-minute
  load average above 0.5 before it) is labelled preliminary with its load average. Scenarios that cannot run yet say why instead of showing
  figures.

## Profiling a miss

`--shape` and `--workload` narrow a run; `--wrapper` starts the proxies under a profiler (they
are stopped with SIGTERM, so the profiler writes its output), and serin-bench prints how many
requests each run served, to divide by. Instruction counts are stable on a noisy machine:

```sh
sudo target/release/serin-bench --quick --shape serin-1 --workload http1 \
  --wrapper 'valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=/tmp/%p.cg'
callgrind_annotate --inclusive=yes /tmp/<pid>.cg | less
```

For `serin-1` two files appear: the measured proxy's, and that of a proxy started again to ask
its admin API whether it routes by policy, which serves no request: its total is the start-up
and shut-down cost to subtract. nginx writes one file for its master and one for its worker.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewriting_keeps_the_findings() {
        let old = document(
            "## Results\n\nold figures\n",
            "## Findings\n\nwhy it is slow\n",
        );
        assert_eq!(
            findings_section(&old),
            Some("## Findings\n\nwhy it is slow\n")
        );
        let new = document(
            "## Results\n\nnew figures\n",
            findings_section(&old).unwrap(),
        );
        assert!(new.starts_with(INTRO));
        assert!(new.contains("new figures") && !new.contains("old figures"));
        assert!(new.ends_with("## Findings\n\nwhy it is slow\n"));
        assert_eq!(findings_section("no findings here"), None);
    }

    #[test]
    fn benchmarks_md_opens_with_the_method_the_binary_writes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(INTRO),
            "{} does not start with app::INTRO: edit both",
            path.display()
        );
    }

    #[test]
    fn the_control_plane_table_is_replaced_alone() {
        let old = "## Results\n\n### Feature cost\n\nkept\n\n### Control plane\n\n| old |\n\n\
                   ## Findings\n\nmine\n";
        let new =
            replace_section(old, "### Control plane", "### Control plane\n\n| new |\n\n").unwrap();
        assert_eq!(
            new,
            "## Results\n\n### Feature cost\n\nkept\n\n### Control plane\n\n| new |\n\n## Findings\n\nmine\n"
        );
        // Last section of the file.
        let tail =
            replace_section("a\n### Control plane\nold\n", "### Control plane", "X\n").unwrap();
        assert_eq!(tail, "a\nX\n");
        // A deeper heading inside the section does not end it; a missing heading is an error.
        let nested = replace_section(
            "### Control plane\n#### sub\nold\n### Next\n",
            "### Control plane",
            "X",
        );
        assert_eq!(nested.unwrap(), "X\n\n### Next\n");
        assert_eq!(replace_section("nothing", "### Control plane", "X"), None);
    }

    #[test]
    fn shapes_and_workloads_parse_by_their_names() {
        assert_eq!(parse_shape("serin-2"), Ok(Shape::TwoHops(Proxy::Serin)));
        assert_eq!(parse_shape("haproxy-1"), Ok(Shape::OneHop(Proxy::Haproxy)));
        assert!(
            parse_shape("envoy-1")
                .unwrap_err()
                .contains("direct, serin-1")
        );
        assert_eq!(
            parse_workload("http1-new"),
            Ok(Workload::Http1NewConnections)
        );
        assert!(parse_workload("h3").is_err());
    }
}
