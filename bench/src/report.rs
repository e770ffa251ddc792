//! The results of a run and their Markdown rendering: one table per workload with absolute
//! figures and ratios to direct, nginx and HAProxy from the same run, the resources table, the
//! connection sweep, the design's targets checked against the figures, the skipped scenarios
//! with their reasons, and the machine and command. Pure: unit tests render fixed figures.

use std::fmt::Write as _;
use std::time::Duration;

use crate::histogram::Summary;
use crate::shape::{Proxy, Shape};
use crate::workload::Workload;

/// What one shape did under one workload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Closed-loop capacity: requests per second, or MiB/s for raw TCP.
    pub capacity: f64,
    /// Failed requests during the capacity run.
    pub capacity_errors: u64,
    /// Open-loop latency at the fixed rate (request workloads).
    pub latency: Option<Summary>,
    /// Failed requests during the latency run.
    pub latency_errors: u64,
    /// Requests of the latency run never sent because the rate was not sustained.
    pub missed: u64,
    /// Proxy CPU per request (per MiB for raw TCP) per hop, µs.
    pub cpu_us_per_hop: Option<f64>,
    /// The share of that CPU spent in the kernel (stime), 0 to 1.
    pub kernel_share: Option<f64>,
    /// Proxy memory.
    pub rss: Option<Rss>,
    /// The first failure seen, to explain errors.
    pub first_error: Option<String>,
}

/// Resident memory of the shape's proxies (all of them, summed), bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// Just started and ready.
    pub idle: u64,
    /// After the warm-up.
    pub warm: u64,
    /// Highest sample during the measured runs.
    pub peak: u64,
}

/// A shape's row: figures, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The shape.
    pub shape: Shape,
    /// Figures, or the reason it was skipped or failed.
    pub result: Result<Figures, String>,
}

/// One point of the connection sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPoint {
    /// Connections.
    pub connections: u32,
    /// Capacity (rps) and latency at the fixed rate, or why not.
    pub result: Result<(f64, Summary), String>,
}

/// Everything a run produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The command that produced it.
    pub command: String,
    /// The machine.
    pub machine: Vec<(String, String)>,
    /// How the load was applied (one line each).
    pub method: Vec<String>,
    /// Set when the figures are not to be trusted as results (quick run, busy machine).
    pub caveat: Option<String>,
    /// Rows per workload.
    pub workloads: Vec<(Workload, Vec<Row>)>,
    /// Connection sweep (HTTP/1.1 keep-alive) per shape.
    pub sweep: Vec<(Shape, Vec<SweepPoint>)>,
    /// Rate of the open-loop runs.
    pub rate: u32,
    /// Connections of the main runs.
    pub connections: u32,
    /// Feature-cost scenarios: name and what happened (skip reasons included).
    pub features: Vec<(String, String)>,
    /// Control-plane scenarios: name and what happened.
    pub control_plane: Vec<(String, String)>,
}

/// `a / b`, rendered as `1.23×`, or `—` when either is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "—".to_owned(),
    }
}

/// A duration in milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// `a - b` in milliseconds with a sign.
pub fn added_ms(a: Duration, b: Duration) -> String {
    let delta = a.as_secs_f64() - b.as_secs_f64();
    format!("{:+.3}", delta * 1000.0)
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// Markdown-safe cell text (no pipes, no newlines).
fn cell(text: &str) -> String {
    text.replace('|', "/").replace('\n', " ")
}

fn figures(rows: &[Row], shape: Shape) -> Option<&Figures> {
    rows.iter()
        .find(|r| r.shape == shape)
        .and_then(|r| r.result.as_ref().ok())
}

fn capacity(rows: &[Row], shape: Shape) -> Option<f64> {
    figures(rows, shape).map(|f| f.capacity)
}

impl Report {
    /// The rows of `workload`.
    pub fn rows(&self, workload: Workload) -> &[Row] {
        self.workloads
            .iter()
            .find(|(w, _)| *w == workload)
            .map_or(&[], |(_, rows)| rows)
    }

    /// The whole report as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## Results\n");
        if let Some(caveat) = &self.caveat {
            let _ = writeln!(out, "> **{caveat}**\n");
        }
        let _ = writeln!(out, "Command: `{}`\n", self.command);
        let _ = writeln!(out, "### Machine\n");
        let _ = writeln!(out, "| what | value |\n|---|---|");
        for (k, v) in &self.machine {
            let _ = writeln!(out, "| {} | {} |", cell(k), cell(v));
        }
        let _ = writeln!(out);
        if !self.method.is_empty() {
            let _ = writeln!(out, "### How this run loaded the proxies\n");
            for line in &self.method {
                let _ = writeln!(out, "- {line}");
            }
            let _ = writeln!(out);
        }
        for (workload, rows) in &self.workloads {
            self.workload_table(&mut out, *workload, rows);
        }
        self.resources_table(&mut out);
        self.sweep_table(&mut out);
        self.targets_table(&mut out);
        scenario_table(&mut out, "Feature cost", &self.features);
        scenario_table(
            &mut out,
            crate::app::CONTROL_PLANE_TITLE,
            &self.control_plane,
        );
        out
    }

    fn workload_table(&self, out: &mut String, workload: Workload, rows: &[Row]) {
        let _ = writeln!(out, "### {workload}\n");
        let direct = figures(rows, Shape::Direct);
        if workload.is_requests() {
            let _ = writeln!(
                out,
                "Capacity: closed loop, {c} connections{h2}. Latency: open loop at {r} rps over \
                 {c} connections, measured from each request's intended send time (corrected for \
                 coordinated omission). Latencies in ms; \"added\" is over direct.\n",
                c = self.connections,
                r = self.rate,
                h2 = if workload.is_http2() {
                    " (streams on one HTTP/2 connection)"
                } else {
                    ""
                },
            );
            let _ = writeln!(
                out,
                "| shape | capacity (rps) | × direct | × nginx | × HAProxy | p50 | p90 | p99 | \
                 p99.9 | max | added p50 | added p99 | added p99.9 | errors |"
            );
            let _ = writeln!(
                out,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
            );
        } else {
            let _ = writeln!(
                out,
                "Throughput: {c} connections writing to a sink as fast as they can.\n",
                c = self.connections
            );
            let _ = writeln!(
                out,
                "| shape | throughput (MiB/s) | × direct | × nginx | × HAProxy | errors |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
        }
        for row in rows {
            let f = match &row.result {
                Ok(f) => f,
                Err(why) => {
                    let _ = writeln!(out, "| {} | not measured: {} |", row.shape, cell(why));
                    continue;
                }
            };
            let peer = |p: Proxy| match row.shape {
                Shape::Direct => "—".to_owned(),
                s => ratio(Some(f.capacity), capacity(rows, s.with_proxy(p))),
            };
            let vs_direct = match row.shape {
                Shape::Direct => "1.00×".to_owned(),
                _ => ratio(Some(f.capacity), direct.map(|d| d.capacity)),
            };
            let errors = errors_cell(f);
            if !workload.is_requests() {
                let _ = writeln!(
                    out,
                    "| {} | {:.1} | {} | {} | {} | {} |",
                    row.shape,
                    f.capacity,
                    vs_direct,
                    peer(Proxy::Nginx),
                    peer(Proxy::Haproxy),
                    errors
                );
                continue;
            }
            let (lat, added) = match f.latency {
                Some(l) => {
                    let base = direct.and_then(|d| d.latency);
                    let add = |pick: fn(&Summary) -> Duration| match (&base, row.shape) {
                        (_, Shape::Direct) => "—".to_owned(),
                        (Some(b), _) => added_ms(pick(&l), pick(b)),
                        (None, _) => "—".to_owned(),
                    };
                    (
                        format!(
                            "{} | {} | {} | {} | {}",
                            ms(l.p50),
                            ms(l.p90),
                            ms(l.p99),
                            ms(l.p999),
                            ms(l.max)
                        ),
                        format!(
                            "{} | {} | {}",
                            add(|s| s.p50),
                            add(|s| s.p99),
                            add(|s| s.p999)
                        ),
                    )
                }
                None => ("— | — | — | — | —".to_owned(), "— | — | —".to_owned()),
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                row.shape,
                f.capacity,
                vs_direct,
                peer(Proxy::Nginx),
                peer(Proxy::Haproxy),
                lat,
                added,
                errors
            );
        }
        let _ = writeln!(out);
    }

    fn resources_table(&self, out: &mut String) {
        let _ = writeln!(out, "### Resources of the proxies\n");
        let _ = writeln!(
            out,
            "CPU: utime + stime of the proxy processes (from `/proc/PID/stat`) over the capacity \
             run, divided by the requests (MiB for raw TCP) and by the hops. Memory: RSS of all \
             the shape's proxies together, just started, after the warm-up, and the highest \
             sample during the measured runs.\n"
        );
        let _ = writeln!(
            out,
            "| workload | shape | CPU µs per request per hop | of which kernel | RSS idle (MiB) | RSS warm (MiB) | RSS peak (MiB) |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        for (workload, rows) in &self.workloads {
            for row in rows {
                let Ok(f) = &row.result else { continue };
                if row.shape == Shape::Direct {
                    continue;
                }
                let cpu = f.cpu_us_per_hop.map_or("—".to_owned(), |c| {
                    if workload.is_requests() {
                        format!("{c:.1}")
                    } else {
                        format!("{c:.0} per MiB")
                    }
                });
                let kernel = f
                    .kernel_share
                    .map_or("—".to_owned(), |k| format!("{:.0} %", k * 100.0));
                let (idle, warm, peak) =
                    f.rss.map_or(("—".into(), "—".into(), "—".into()), |r| {
                        (mib(r.idle), mib(r.warm), mib(r.peak))
                    });
                let _ = writeln!(
                    out,
                    "| {workload} | {} | {cpu} | {kernel} | {idle} | {warm} | {peak} |",
                    row.shape
                );
            }
        }
        let _ = writeln!(out);
    }

    fn sweep_table(&self, out: &mut String) {
        let _ = writeln!(out, "### Connection sweep (HTTP/1.1 keep-alive)\n");
        let Some((_, first)) = self.sweep.first() else {
            let _ = writeln!(out, "Not run.\n");
            return;
        };
        let counts: Vec<u32> = first.iter().map(|p| p.connections).collect();
        let _ = writeln!(
            out,
            "Each cell: closed-loop capacity in rps / p99 in ms of an open-loop run at {} rps, \
             with that many connections.\n",
            self.rate
        );
        let mut header = "| shape |".to_owned();
        let mut rule = "|---|".to_owned();
        for c in &counts {
            let _ = write!(header, " {c} conn |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for (shape, points) in &self.sweep {
            let mut line = format!("| {shape} |");
            for p in points {
                match &p.result {
                    Ok((rps, l)) => {
                        let _ = write!(line, " {rps:.0} / {} |", ms(l.p99));
                    }
                    Err(why) => {
                        let _ = write!(line, " not measured: {} |", cell(why));
                    }
                }
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out);
    }

    /// The design's performance targets against this run's figures.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let http1 = self.rows(Workload::Http1KeepAlive);
        let h2 = self.rows(Workload::H2c);
        let serin1 = Shape::OneHop(Proxy::Serin);
        let serin2 = Shape::TwoHops(Proxy::Serin);
        let mut out = Vec::new();
        let mut check = |what: &str, target: &str, got: Option<(String, bool)>| {
            let verdict = match got {
                Some((figure, true)) => format!("{figure}: met"),
                Some((figure, false)) => format!("{figure}: **missed**"),
                None => "not measured in this run".to_owned(),
            };
            out.push((what.to_owned(), target.to_owned(), verdict));
        };
        let vs = |rows: &[Row], a: Shape, b: Shape| Some(capacity(rows, a)? / capacity(rows, b)?);
        check(
            "HTTP/1.1 capacity, 1 hop, vs HAProxy",
            "≥ 1.10×",
            vs(http1, serin1, Shape::OneHop(Proxy::Haproxy))
                .map(|r| (format!("{r:.2}×"), r >= 1.1)),
        );
        check(
            "HTTP/1.1 capacity, 1 hop, vs nginx",
            "≥ 1.10×",
            vs(http1, serin1, Shape::OneHop(Proxy::Nginx)).map(|r| (format!("{r:.2}×"), r >= 1.1)),
        );
        check(
            "HTTP/1.1 capacity, 2 hops, vs direct",
            "≥ 0.30×",
            vs(http1, serin2, Shape::Direct).map(|r| (format!("{r:.2}×"), r >= 0.3)),
        );
        check(
            "h2c capacity, 1 hop, vs direct",
            "≥ 0.60×",
            vs(h2, serin1, Shape::Direct).map(|r| (format!("{r:.2}×"), r >= 0.6)),
        );
        let added = |pick: fn(&Summary) -> Duration| {
            let s = figures(http1, serin2)?.latency?;
            let d = figures(http1, Shape::Direct)?.latency?;
            Some((pick(&s).as_secs_f64() - pick(&d).as_secs_f64()) * 1000.0)
        };
        for (name, pick, limit) in [
            (
                "p50",
                (|s: &Summary| s.p50) as fn(&Summary) -> Duration,
                0.07,
            ),
            ("p99", |s: &Summary| s.p99, 0.20),
            ("p99.9", |s: &Summary| s.p999, 1.0),
        ] {
            check(
                &format!(
                    "added {name} latency, 2 hops, {} rps, {} connections",
                    self.rate, self.connections
                ),
                &format!("≤ +{limit:.2} ms"),
                added(pick).map(|v| (format!("{v:+.3} ms"), v <= limit)),
            );
        }
        check(
            "CPU per request per hop (HTTP/1.1, Serin 2 hops)",
            "≤ 20 µs",
            figures(http1, serin2)
                .and_then(|f| f.cpu_us_per_hop)
                .map(|c| (format!("{c:.1} µs"), c <= 20.0)),
        );
        check(
            "sidecar RSS idle",
            "≤ 10 MiB",
            figures(http1, serin1)
                .and_then(|f| f.rss)
                .map(|r| (format!("{} MiB", mib(r.idle)), r.idle <= 10 << 20)),
        );
        out
    }

    fn targets_table(&self, out: &mut String) {
        let _ = writeln!(out, "### Design targets\n");
        let _ = writeln!(out, "| what | target | this run |\n|---|---|---|");
        for (what, target, verdict) in self.targets() {
            let _ = writeln!(out, "| {what} | {target} | {verdict} |");
        }
        let _ = writeln!(out);
    }
}

fn errors_cell(f: &Figures) -> String {
    let total = f.capacity_errors + f.latency_errors;
    let mut text = total.to_string();
    if f.missed > 0 {
        let _ = write!(text, ", {} not sent (rate not sustained)", f.missed);
    }
    if total > 0
        && let Some(e) = &f.first_error
    {
        let _ = write!(text, " (first: {})", cell(e));
    }
    text
}

/// A two-column table of named scenarios and their results, under `### title`.
pub fn scenario_table(out: &mut String, title: &str, scenarios: &[(String, String)]) {
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(out, "| scenario | result |\n|---|---|");
    for (name, result) in scenarios {
        let _ = writeln!(out, "| {} | {} |", cell(name), cell(result));
    }
    let _ = writeln!(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::golden;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn summary(base: u64) -> Summary {
        Summary {
            count: 1000,
            p50: us(base),
            p90: us(base * 2),
            p99: us(base * 4),
            p999: us(base * 8),
            max: us(base * 20),
        }
    }

    fn row(shape: Shape, capacity: f64, latency_us: u64) -> Row {
        Row {
            shape,
            result: Ok(Figures {
                capacity,
                latency: Some(summary(latency_us)),
                cpu_us_per_hop: (shape != Shape::Direct).then_some(15.5),
                kernel_share: (shape != Shape::Direct).then_some(0.6),
                rss: (shape != Shape::Direct).then_some(Rss {
                    idle: 5 << 20,
                    warm: 8 << 20,
                    peak: 9 << 20,
                }),
                ..Figures::default()
            }),
        }
    }

    fn report() -> Report {
        let http1 = vec![
            row(Shape::Direct, 40_000.0, 100),
            row(Shape::OneHop(Proxy::Serin), 24_000.0, 150),
            row(Shape::OneHop(Proxy::Nginx), 20_000.0, 160),
            row(Shape::OneHop(Proxy::Haproxy), 22_000.0, 155),
            row(Shape::TwoHops(Proxy::Serin), 13_000.0, 200),
            Row {
                shape: Shape::TwoHops(Proxy::Nginx),
                result: Err("nginx could not be installed".into()),
            },
            Row {
                shape: Shape::TwoHops(Proxy::Haproxy),
                result: Ok(Figures {
                    capacity: 12_000.0,
                    capacity_errors: 2,
                    latency: Some(summary(210)),
                    missed: 3,
                    first_error: Some("status 503 | upstream".into()),
                    ..Figures::default()
                }),
            },
        ];
        let tcp = vec![
            Row {
                shape: Shape::Direct,
                result: Ok(Figures {
                    capacity: 2048.0,
                    ..Figures::default()
                }),
            },
            Row {
                shape: Shape::OneHop(Proxy::Serin),
                result: Ok(Figures {
                    capacity: 1024.0,
                    cpu_us_per_hop: Some(300.0),
                    ..Figures::default()
                }),
            },
        ];
        Report {
            command: "serin-bench --write BENCHMARKS.md".into(),
            machine: vec![("cpu".into(), "Test CPU".into())],
            method: vec!["one line of method".into()],
            caveat: Some("preliminary".into()),
            workloads: vec![(Workload::Http1KeepAlive, http1), (Workload::Tcp, tcp)],
            sweep: vec![(
                Shape::Direct,
                vec![
                    SweepPoint {
                        connections: 1,
                        result: Ok((9000.0, summary(90))),
                    },
                    SweepPoint {
                        connections: 64,
                        result: Err("timed out".into()),
                    },
                ],
            )],
            rate: 1000,
            connections: 16,
            features: vec![("100 rules".into(), "skipped: no routing yet".into())],
            control_plane: vec![("propagation".into(), "skipped: no binary".into())],
        }
    }

    #[test]
    fn ratios_and_deltas_format() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(Some(3.0), None), "—");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "—");
        assert_eq!(added_ms(us(250), us(100)), "+0.150");
        assert_eq!(added_ms(us(100), us(250)), "-0.150");
        assert_eq!(ms(us(1234)), "1.234");
        assert_eq!(mib(3 << 20), "3.0");
    }

    #[test]
    fn report_renders_every_table_with_ratios() {
        let text = report().markdown();
        golden::check("report.md", &text);
        // Serin 1 hop against each peer of the same hop count, and against direct.
        assert!(
            text.contains("| Serin, 1 hop | 24000 | 0.60× | 1.20× | 1.09× |"),
            "{text}"
        );
        assert!(text.contains("| nginx, 2 hops | not measured: nginx could not be installed |"));
        assert!(text.contains("2, 3 not sent (rate not sustained) (first: status 503 / upstream)"));
    }

    #[test]
    fn targets_are_checked_against_the_figures() {
        let targets = report().targets();
        let verdict = |what: &str| {
            targets
                .iter()
                .find(|(w, _, _)| w.starts_with(what))
                .map(|(_, _, v)| v.clone())
                .unwrap()
        };
        assert_eq!(
            verdict("HTTP/1.1 capacity, 1 hop, vs HAProxy"),
            "1.09×: **missed**"
        );
        assert_eq!(verdict("HTTP/1.1 capacity, 1 hop, vs nginx"), "1.20×: met");
        assert_eq!(verdict("HTTP/1.1 capacity, 2 hops"), "0.33×: met");
        assert_eq!(verdict("h2c capacity"), "not measured in this run");
        assert_eq!(verdict("added p50"), "+0.100 ms: **missed**");
        assert_eq!(verdict("added p99 "), "+0.400 ms: **missed**");
        assert_eq!(verdict("CPU per request"), "15.5 µs: met");
        assert_eq!(verdict("sidecar RSS idle"), "5.0 MiB: met");
    }
}
