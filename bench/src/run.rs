//! The measurement itself: for every shape a fresh stage, for every workload fresh proxies, then
//! warm-up, closed-loop capacity (with the proxies' CPU read before and after), open-loop
//! latency at the fixed rate, and (HTTP/1.1 keep-alive) the connection sweep; RSS is read when
//! idle, after the warm-up, and sampled for its peak throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::drive::{self, Mode, Spec};
use crate::features::{self, Scenario};
use crate::load::Outcome;
use crate::pinning::Pinning;
use crate::report::{Figures, Row, Rss, SweepPoint};
use crate::resources::{self, PeakSampler, Usage};
use crate::shape::{self, Programs, Proxy, Shape, Stage};
use crate::workload::Workload;

/// Why a row has no figures after SIGINT or SIGTERM.
const INTERRUPTED: &str = "interrupted (SIGINT or SIGTERM) before it ran";

/// Durations and sizes of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Whether this is the CI smoke run.
    pub quick: bool,
    /// Load before measuring (discarded).
    pub warmup: Duration,
    /// Closed-loop capacity run.
    pub capacity: Duration,
    /// Open-loop latency run.
    pub latency: Duration,
    /// Rate of the open-loop runs, requests per second.
    pub rate: u32,
    /// Connections of the main runs.
    pub connections: u32,
    /// Connection counts of the sweep.
    pub sweep: Vec<u32>,
    /// Length of each sweep run (capacity and latency each).
    pub sweep_run: Duration,
}

impl Plan {
    /// The run that writes BENCHMARKS.md.
    pub fn full() -> Plan {
        Plan {
            quick: false,
            warmup: Duration::from_secs(2),
            capacity: Duration::from_secs(8),
            latency: Duration::from_secs(8),
            rate: 1000,
            connections: 16,
            sweep: vec![1, 4, 16, 64],
            sweep_run: Duration::from_secs(3),
        }
    }

    /// The CI smoke run: every shape, workload and table, briefly.
    pub fn quick() -> Plan {
        Plan {
            quick: true,
            warmup: Duration::from_millis(150),
            capacity: Duration::from_millis(400),
            latency: Duration::from_millis(400),
            rate: 1000,
            connections: 16,
            sweep: vec![1, 64],
            sweep_run: Duration::from_millis(250),
        }
    }

    /// The method, one line each, for the report.
    pub fn describe(&self, pinning: Pinning) -> Vec<String> {
        vec![
            format!(
                "Per shape and workload: fresh proxies, {:?} warm-up (discarded), {:?} \
                 closed-loop capacity, {:?} open-loop latency at {} rps over {} connections.",
                self.warmup, self.capacity, self.latency, self.rate, self.connections
            ),
            format!(
                "Connection sweep: {:?} connections, {:?} capacity and {:?} latency runs each.",
                self.sweep, self.sweep_run, self.sweep_run
            ),
            format!(
                "Pinning: {pinning}. Every proxy runs one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, Serin's tokio runtime sized to its one CPU)."
            ),
            "Shapes: each in a fresh mesh of two pods (network namespaces on a bridge). Proxied \
             shapes use the same real capture rules (serin-iptables, REDIRECT to 15001 outbound \
             and 15006 inbound) whatever the proxy, so nginx and HAProxy pay the same netfilter \
             cost as Serin; direct connects to the upstream pod with no rules."
                .to_owned(),
            "Upstream: serin-bench's own server (hyper, one thread, pinned) answering 1 KiB to \
             1 KiB POSTs over HTTP/1.1 and h2c, gRPC-like unary calls, and a TCP sink."
                .to_owned(),
        ]
    }
}

/// What the measuring needs.
#[derive(Debug, Clone)]
pub struct Env {
    /// The proxies' programs.
    pub programs: Programs,
    /// CPUs.
    pub pinning: Pinning,
    /// Why a proxy cannot be measured, if it cannot.
    pub unavailable: Vec<(Proxy, String)>,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Measured {
    /// Rows per workload.
    pub workloads: Vec<(Workload, Vec<Row>)>,
    /// Sweep per shape.
    pub sweep: Vec<(Shape, Vec<SweepPoint>)>,
    /// Feature-cost scenarios and their outcome.
    pub features: Vec<(String, String)>,
}

/// Runs `plan` over `shapes` and `workloads`.
/// Once `stop` is set (SIGINT, SIGTERM) no new measurement starts; the rest is reported as
/// interrupted and everything made so far is removed as usual.
pub fn run(
    plan: &Plan,
    env: &Env,
    shapes: &[Shape],
    workloads: &[Workload],
    stop: &AtomicBool,
) -> Measured {
    let mut measured = Measured {
        workloads: workloads.iter().map(|w| (*w, Vec::new())).collect(),
        ..Measured::default()
    };
    let mut routes_status = None;
    let mut baseline = None;
    let mut two_hops_plain = None;
    let mut mtls_row = None;
    for &shape in shapes {
        let unavailable = shape.proxy().and_then(|p| {
            env.unavailable
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, why)| why.clone())
        });
        let unavailable = if stop.load(Ordering::SeqCst) {
            Some(INTERRUPTED.to_owned())
        } else {
            unavailable
        };
        let stage = match unavailable {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Stage::new(shape, env.pinning).with_context(|| format!("set up {shape}")),
        };
        let stage = match stage {
            Ok(stage) => stage,
            Err(e) => {
                let why = format!("{e:#}");
                eprintln!("serin-bench: {shape}: not measured: {why}");
                for (_, rows) in &mut measured.workloads {
                    rows.push(Row {
                        shape,
                        result: Err(why.clone()),
                    });
                }
                measured.sweep.push((shape, vec![]));
                continue;
            }
        };
        for (workload, rows) in &mut measured.workloads {
            let result = if stop.load(Ordering::SeqCst) {
                Err(anyhow::anyhow!(INTERRUPTED))
            } else {
                measure(plan, env, &stage, shape, *workload)
            };
            let (figures, sweep) = match result {
                Ok(ok) => ok,
                Err(e) => {
                    let why = format!("{e:#}");
                    eprintln!("serin-bench: {shape}, {workload}: failed: {why}");
                    (Err(why.clone()), None)
                }
            };
            if let (Ok(f), Workload::Http1KeepAlive) = (&figures, *workload) {
                eprintln!(
                    "serin-bench: {shape}, {workload}: {:.0} rps, p99 {:?}",
                    f.capacity,
                    f.latency.map(|l| l.p99)
                );
            }
            if shape == Shape::OneHop(Proxy::Serin) && *workload == Workload::Http1KeepAlive {
                routes_status = probe_routes(env, &stage);
                baseline = figures.as_ref().ok().cloned();
            }
            if shape == Shape::TwoHops(Proxy::Serin) && *workload == Workload::Http1KeepAlive {
                two_hops_plain = figures.as_ref().ok().cloned();
            }
            if let Some(points) = sweep {
                measured.sweep.push((shape, points));
            }
            rows.push(Row {
                shape,
                result: figures,
            });
        }
        if shape == Shape::OneHop(Proxy::Serin) {
            measured.features = feature_costs(plan, env, &stage, routes_status, baseline.as_ref());
        }
        if shape == Shape::TwoHops(Proxy::Serin) {
            let text = if stop.load(Ordering::SeqCst) {
                INTERRUPTED.to_owned()
            } else {
                match mtls_cost(plan, env, &stage, two_hops_plain.as_ref()) {
                    Ok(text) => text,
                    Err(e) => format!("failed: {e:#}"),
                }
            };
            eprintln!("serin-bench: {}: {text}", crate::mtls::NAME);
            mtls_row = Some((crate::mtls::NAME.to_owned(), text));
        }
    }
    if measured.features.is_empty() {
        let why = features::unsupported_reason(None).unwrap_or_default();
        measured.features = Scenario::ALL
            .iter()
            .map(|s| (s.name().to_owned(), why.clone()))
            .collect();
    }
    measured.features.extend(mtls_row);
    measured
}

/// The mTLS row: the 2-hop HTTP/1.1 keep-alive workload with mTLS between the sidecars,
/// against `plain` (the same shape and workload in plaintext, this run): capacity, proxy CPU
/// per request per hop, latency at the fixed rate, and the deltas.
fn mtls_cost(
    plan: &Plan,
    env: &Env,
    stage: &Stage,
    plain: Option<&Figures>,
) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("serin-bench-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let certs = crate::mtls::Certs::write(&dir)?;
    let snapshot = crate::mtls::snapshot(stage.client().ip().into(), stage.server().ip().into());
    let workload = Workload::Http1KeepAlive;
    let proxies = stage.start_proxies(workload, &env.programs, Some(&snapshot), Some(&certs))?;
    let runs = keep_alive_runs(plan, env, stage, &proxies.pids())?;
    proxies.check_alive()?;
    // The requests must have gone over mTLS: the server sidecar counts the client's identity.
    let (status, metrics) = shape::admin_get(stage.server(), "/metrics")?;
    if status != 200 {
        anyhow::bail!("the server sidecar's /metrics answered {status}");
    }
    let principal = format!("source_principal=\"{}\"", crate::mtls::CLIENT_ID);
    if !metrics
        .lines()
        .any(|l| l.starts_with("serin_inbound_connections_total") && l.contains(&principal))
    {
        anyhow::bail!(
            "the server sidecar saw no mTLS connection from {}",
            crate::mtls::CLIENT_ID
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    no_failed_requests(&runs.capacity, &runs.latency)?;
    let rps = runs.capacity_rps();
    let (cpu0, cpu1) = runs.cpu;
    let cpu_us = (runs.capacity.ok > 0)
        .then(|| (cpu1.cpu_us - cpu0.cpu_us) as f64 / runs.capacity.ok as f64 / 2.0);
    let summary = runs.latency.latencies.summary();
    let mut text = format!(
        "capacity {rps:.0} rps; CPU {} µs per request per hop; latency at {} rps: p50 {} ms, p99 {} ms",
        cpu_us.map_or("?".into(), |c| format!("{c:.1}")),
        plan.rate,
        crate::report::ms(summary.p50),
        crate::report::ms(summary.p99),
    );
    if let Some(plain) = plain {
        if plain.capacity > 0.0 {
            text += &format!(
                "; vs plaintext 2 hops: {:.2}× capacity",
                rps / plain.capacity
            );
        }
        if let (Some(c), Some(p)) = (cpu_us, plain.cpu_us_per_hop) {
            text += &format!(", {:+.1} µs CPU per request per hop", c - p);
        }
        if let Some(l) = plain.latency {
            let delta = |a: Duration, b: Duration| (a.as_secs_f64() - b.as_secs_f64()) * 1000.0;
            text += &format!(
                ", p50 {:+.3} ms, p99 {:+.3} ms",
                delta(summary.p50, l.p50),
                delta(summary.p99, l.p99)
            );
        }
    }
    Ok(text)
}

type Measurement = (Result<Figures, String>, Option<Vec<SweepPoint>>);

fn measure(
    plan: &Plan,
    env: &Env,
    stage: &Stage,
    shape: Shape,
    workload: Workload,
) -> anyhow::Result<Measurement> {
    let proxies = stage.start_proxies(workload, &env.programs, None, None)?;
    let pids = proxies.pids();
    let cpu = env.pinning.client;
    let target = stage.target(workload);
    let idle = resources::usage(&pids).rss_bytes;
    let spec = |mode, connections, duration| Spec {
        workload,
        target,
        connections,
        duration,
        mode,
    };
    let hops = f64::from(shape.hops().max(1));
    if workload == Workload::Tcp {
        drive::run_tcp(stage.client(), cpu, target, plan.connections, plan.warmup)?;
        let warm = resources::usage(&pids).rss_bytes;
        let sampler = PeakSampler::start(pids.clone());
        let (cpu0, sink0) = (resources::usage(&pids), stage.upstream().sink_bytes());
        let started = std::time::Instant::now();
        let outcome = drive::run_tcp(stage.client(), cpu, target, plan.connections, plan.capacity)?;
        let elapsed = started.elapsed().as_secs_f64();
        let (cpu1, sink1) = (resources::usage(&pids), stage.upstream().sink_bytes());
        let peak = sampler.finish();
        proxies.check_alive()?;
        let mib = (sink1 - sink0) as f64 / (1024.0 * 1024.0);
        let figures = Figures {
            capacity: mib / elapsed,
            capacity_errors: outcome.errors,
            cpu_us_per_hop: (shape != Shape::Direct && mib > 0.0)
                .then(|| (cpu1.cpu_us - cpu0.cpu_us) as f64 / mib / hops),
            kernel_share: kernel_share(cpu0, cpu1),
            rss: (shape != Shape::Direct).then_some(Rss { idle, warm, peak }),
            first_error: outcome.first_error,
            ..Figures::default()
        };
        return Ok((Ok(figures), None));
    }
    let warmup = drive::run(
        stage.client(),
        cpu,
        spec(Mode::Closed, plan.connections, plan.warmup),
    )?;
    let warm = resources::usage(&pids).rss_bytes;
    let sampler = PeakSampler::start(pids.clone());
    let cpu0 = resources::usage(&pids);
    let started = std::time::Instant::now();
    let capacity = drive::run(
        stage.client(),
        cpu,
        spec(Mode::Closed, plan.connections, plan.capacity),
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = resources::usage(&pids);
    let latency = drive::run(
        stage.client(),
        cpu,
        spec(Mode::Open(plan.rate), plan.connections, plan.latency),
    )?;
    let mut served = warmup.ok + capacity.ok + latency.ok;
    let sweep = (workload == Workload::Http1KeepAlive).then(|| {
        plan.sweep
            .iter()
            .map(|&connections| SweepPoint {
                connections,
                result: sweep_point(
                    stage,
                    cpu,
                    spec(Mode::Closed, connections, plan.sweep_run),
                    plan.rate,
                )
                .map(|(rps, summary, requests)| {
                    served += requests;
                    (rps, summary)
                })
                .map_err(|e| format!("{e:#}")),
            })
            .collect()
    });
    let peak = sampler.finish();
    proxies.check_alive()?;
    // For profiles (`--wrapper`): what to divide a run's instruction count by.
    eprintln!(
        "serin-bench: {shape}, {workload}: {served} successful requests in all, {} in the \
         capacity run",
        capacity.ok
    );
    let figures = figures(
        shape,
        &capacity,
        &latency,
        elapsed,
        (cpu0, cpu1),
        Rss { idle, warm, peak },
    );
    Ok((Ok(figures), sweep))
}

/// The kernel's share of the CPU used between two readings.
fn kernel_share(before: Usage, after: Usage) -> Option<f64> {
    let total = after.cpu_us.checked_sub(before.cpu_us)?;
    let kernel = after.system_us.checked_sub(before.system_us)?;
    (total > 0).then(|| kernel as f64 / total as f64)
}

fn figures(
    shape: Shape,
    capacity: &Outcome,
    latency: &Outcome,
    elapsed: f64,
    (cpu0, cpu1): (Usage, Usage),
    rss: Rss,
) -> Figures {
    let hops = f64::from(shape.hops().max(1));
    Figures {
        capacity: capacity.ok as f64 / elapsed,
        capacity_errors: capacity.errors,
        latency: Some(latency.latencies.summary()),
        latency_errors: latency.errors,
        missed: latency.missed,
        cpu_us_per_hop: (shape != Shape::Direct && capacity.ok > 0)
            .then(|| (cpu1.cpu_us - cpu0.cpu_us) as f64 / capacity.ok as f64 / hops),
        kernel_share: (shape != Shape::Direct)
            .then(|| kernel_share(cpu0, cpu1))
            .flatten(),
        rss: (shape != Shape::Direct).then_some(rss),
        first_error: capacity
            .first_error
            .clone()
            .or_else(|| latency.first_error.clone()),
    }
}

fn sweep_point(
    stage: &Stage,
    cpu: usize,
    closed: Spec,
    rate: u32,
) -> anyhow::Result<(f64, crate::histogram::Summary, u64)> {
    let started = std::time::Instant::now();
    let capacity = drive::run(stage.client(), cpu, closed)?;
    let rps = capacity.ok as f64 / started.elapsed().as_secs_f64();
    let latency = drive::run(
        stage.client(),
        cpu,
        Spec {
            mode: Mode::Open(rate),
            ..closed
        },
    )?;
    no_failed_requests(&capacity, &latency)?;
    Ok((rps, latency.latencies.summary(), capacity.ok + latency.ok))
}

/// Asks the running Serin 1-hop sidecar whether it routes by policy: the status of `/routes`.
fn probe_routes(env: &Env, stage: &Stage) -> Option<u16> {
    let proxies = stage
        .start_proxies(Workload::Http1KeepAlive, &env.programs, None, None)
        .ok()?;
    let status = shape::admin_get(stage.client(), "/routes")
        .ok()
        .map(|(code, _)| code);
    drop(proxies);
    status
}

fn feature_costs(
    plan: &Plan,
    env: &Env,
    stage: &Stage,
    routes_status: Option<u16>,
    baseline: Option<&Figures>,
) -> Vec<(String, String)> {
    if let Some(why) = features::unsupported_reason(routes_status) {
        return Scenario::ALL
            .iter()
            .map(|s| (s.name().to_owned(), why.clone()))
            .collect();
    }
    let mut out = Vec::new();
    let mut policies_p99: Option<Duration> = None;
    for scenario in Scenario::ALL {
        let text = match feature_cost(plan, env, stage, scenario) {
            Ok((rps, summary, seen)) => {
                let p99 = summary.p99;
                let capacity = match baseline {
                    Some(b) if b.capacity > 0.0 => {
                        let ratio = rps / b.capacity;
                        let verdict = match scenario {
                            Scenario::Policies => format!(
                                " (target ≥ {:.2}×: {})",
                                features::CAPACITY_TARGET,
                                verdict(ratio >= features::CAPACITY_TARGET)
                            ),
                            Scenario::MirrorHangs => String::new(),
                        };
                        format!("{ratio:.2}× plain forwarding{verdict}")
                    }
                    _ => "plain forwarding not measured".into(),
                };
                let latency = match (scenario, policies_p99) {
                    (Scenario::MirrorHangs, Some(p)) if !p.is_zero() => {
                        let ratio = p99.as_secs_f64() / p.as_secs_f64();
                        format!(
                            " = {ratio:.2}× the line above (target within ±{:.0} %: {})",
                            features::P99_TOLERANCE * 100.0,
                            verdict((ratio - 1.0).abs() <= features::P99_TOLERANCE)
                        )
                    }
                    (Scenario::MirrorHangs, _) => " (the line above has no p99 to compare)".into(),
                    (Scenario::Policies, _) => String::new(),
                };
                if scenario == Scenario::Policies {
                    policies_p99 = Some(p99);
                }
                format!(
                    "capacity {rps:.0} rps = {capacity}; primary latency at {} rps: p50 {} ms, \
                     p99 {} ms{latency}; {}",
                    plan.rate,
                    crate::report::ms(summary.p50),
                    crate::report::ms(p99),
                    seen.describe()
                )
            }
            Err(e) => format!("failed: {e:#}"),
        };
        out.push((scenario.name().to_owned(), text));
    }
    out
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

fn feature_cost(
    plan: &Plan,
    env: &Env,
    stage: &Stage,
    scenario: Scenario,
) -> anyhow::Result<(f64, crate::histogram::Summary, features::RoutesSeen)> {
    let snapshot = features::snapshot(
        scenario,
        stage.client().ip().into(),
        stage.server().ip().into(),
    );
    let workload = Workload::Http1KeepAlive;
    let proxies = stage.start_proxies(workload, &env.programs, Some(&snapshot), None)?;
    let runs = keep_alive_runs(plan, env, stage, &proxies.pids())?;
    proxies.check_alive()?;
    no_failed_requests(&runs.capacity, &runs.latency)?;
    // The path the requests took, from the sidecar's own counts: refused if not the one meant.
    if scenario == Scenario::MirrorHangs {
        std::thread::sleep(features::MIRROR_SETTLE);
    }
    let (status, body) = shape::admin_get(stage.client(), "/routes")?;
    if status != 200 {
        anyhow::bail!("/routes answered {status} after the run");
    }
    let seen = features::check_routes(scenario, &body).map_err(|e| anyhow::anyhow!(e))?;
    Ok((runs.capacity_rps(), runs.latency.latencies.summary(), seen))
}

/// The runs of the HTTP/1.1 keep-alive workload behind a feature or mTLS row.
struct KeepAliveRuns {
    /// The closed-loop capacity run.
    capacity: Outcome,
    /// How long the capacity run took, in seconds.
    elapsed: f64,
    /// The proxies' usage right before and right after the capacity run.
    cpu: (Usage, Usage),
    /// The open-loop run at the plan's rate.
    latency: Outcome,
}

impl KeepAliveRuns {
    /// Successful requests per second of the capacity run.
    fn capacity_rps(&self) -> f64 {
        self.capacity.ok as f64 / self.elapsed
    }
}

/// Warm-up, closed-loop capacity (the CPU of the proxies `pids` read before and after), then
/// open-loop latency at the plan's rate: the HTTP/1.1 keep-alive workload from the client pod
/// through the running proxies.
fn keep_alive_runs(
    plan: &Plan,
    env: &Env,
    stage: &Stage,
    pids: &[u32],
) -> anyhow::Result<KeepAliveRuns> {
    let workload = Workload::Http1KeepAlive;
    let closed = Spec {
        workload,
        target: stage.target(workload),
        connections: plan.connections,
        duration: plan.capacity,
        mode: Mode::Closed,
    };
    drive::run(
        stage.client(),
        env.pinning.client,
        Spec {
            duration: plan.warmup,
            ..closed
        },
    )?;
    let cpu0 = resources::usage(pids);
    let started = std::time::Instant::now();
    let capacity = drive::run(stage.client(), env.pinning.client, closed)?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = resources::usage(pids);
    let latency = drive::run(
        stage.client(),
        env.pinning.client,
        Spec {
            mode: Mode::Open(plan.rate),
            duration: plan.latency,
            ..closed
        },
    )?;
    Ok(KeepAliveRuns {
        capacity,
        elapsed,
        cpu: (cpu0, cpu1),
        latency,
    })
}

/// Fails when a request of `capacity` or `latency` failed, naming how many and the first error.
fn no_failed_requests(capacity: &Outcome, latency: &Outcome) -> anyhow::Result<()> {
    let errors = capacity.errors + latency.errors;
    if errors > 0 {
        anyhow::bail!(
            "{errors} failed requests (first: {})",
            capacity
                .first_error
                .as_deref()
                .or(latency.first_error.as_deref())
                .unwrap_or_default()
        );
    }
    Ok(())
}
