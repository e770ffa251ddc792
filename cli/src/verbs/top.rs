//! `serinctl top`: the live traffic edges in the terminal, busiest first, from
//! `Admin.WatchTopology` (the same windows as the dashboard). `--once` prints one snapshot.

use serin_proto::v1;
use std::io::{IsTerminal, Write};

use crate::cli::TopArgs;
use crate::connect::ControlPlane;
use crate::error::CliError;
use crate::render;

/// Column headers of the table.
pub const HEADERS: [&str; 10] = [
    "SOURCE",
    "DESTINATION",
    "PROTOCOL",
    "RPS",
    "ERRORS",
    "P50",
    "P95",
    "P99",
    "IN",
    "OUT",
];

fn node(id: &str) -> String {
    if id == "unknown/unknown/unknown" {
        "(outside the mesh)".to_owned()
    } else {
        id.to_owned()
    }
}

fn ms(x: f64) -> String {
    if x == 0.0 {
        "-".to_owned()
    } else if x >= 1000.0 {
        format!("{:.2}s", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.0}ms")
    } else {
        format!("{x:.1}ms")
    }
}

fn bytes(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.1}MB/s", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}kB/s", x / 1e3)
    } else {
        format!("{x:.0}B/s")
    }
}

fn protocol(e: &v1::TopologyEdge) -> String {
    let name = match v1::Protocol::try_from(e.protocol) {
        Ok(v1::Protocol::Http1) => "http1",
        Ok(v1::Protocol::Http2) => "http2",
        Ok(v1::Protocol::Grpc) => "grpc",
        Ok(v1::Protocol::Tcp) => "tcp",
        _ => "unknown",
    };
    if e.mirror {
        format!("{name} mirror")
    } else {
        name.to_owned()
    }
}

/// The update as text: a summary line, then the edges busiest first.
pub fn render_update(u: &v1::TopologyUpdate) -> String {
    let mut edges: Vec<&v1::TopologyEdge> = u.edges.iter().collect();
    edges.sort_by(|a, b| {
        b.rps
            .total_cmp(&a.rps)
            .then_with(|| a.source_id.cmp(&b.source_id))
            .then_with(|| a.destination_id.cmp(&b.destination_id))
    });
    let window = u.window.as_ref().map_or(0, |w| w.seconds);
    let total: f64 = u.edges.iter().filter(|e| !e.mirror).map(|e| e.rps).sum();
    let mut out = format!(
        "serinctl top: {} edges, {:.1} rps over the last {window}s ({})\n",
        u.edges.len(),
        total,
        render::time(u.time.as_ref()).unwrap_or_default(),
    );
    if edges.is_empty() {
        out.push_str("no traffic in the window\n");
        return out;
    }
    let rows: Vec<Vec<String>> = edges
        .iter()
        .map(|e| {
            vec![
                node(&e.source_id),
                node(&e.destination_id),
                protocol(e),
                format!("{:.1}", e.rps),
                format!("{:.1}%", e.error_rate * 100.0),
                ms(e.latency_p50_ms),
                ms(e.latency_p95_ms),
                ms(e.latency_p99_ms),
                bytes(e.received_bytes_per_second),
                bytes(e.sent_bytes_per_second),
            ]
        })
        .collect();
    out.push_str(&render::table(&HEADERS, &rows));
    out
}

/// Streams the topology and prints each update (only the first with `--once`).
pub async fn top(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &TopArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let window = serin_control::dashboard::parse_window(&args.window).ok_or_else(|| {
        CliError::Input(format!(
            "--window {:?}: expected seconds or minutes between 1s and 10m, e.g. 10s, 1m, 10m",
            args.window
        ))
    })?;
    let req = v1::WatchTopologyRequest {
        namespace: if args.all_namespaces {
            String::new()
        } else {
            namespace.to_owned()
        },
        window: Some(prost_types::Duration {
            seconds: window.as_secs() as i64,
            nanos: 0,
        }),
        interval: Some(prost_types::Duration {
            seconds: args.interval.max(1) as i64,
            nanos: 0,
        }),
    };
    // The request timeout covers the answer's headers, not the stream: a live table runs until
    // interrupted.
    let mut updates = cp
        .admin
        .watch_topology(req)
        .await
        .map_err(|s| cp.error("watching the topology", &s))?
        .into_inner();
    let redraw = !args.once && std::io::stdout().is_terminal();
    loop {
        let Some(update) = updates
            .message()
            .await
            .map_err(|s| cp.error("watching the topology", &s))?
        else {
            return Err(CliError::Input(format!(
                "the control plane at {} ended the topology stream (is it shutting down?)",
                cp.url
            )));
        };
        if redraw {
            // Home and clear: the table redraws in place.
            out.write_all(b"\x1b[H\x1b[2J")?;
        }
        out.write_all(render_update(&update).as_bytes())?;
        out.flush()?;
        if args.once {
            return Ok(());
        }
        if !redraw {
            out.write_all(b"\n")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(src: &str, dst: &str, rps: f64, mirror: bool) -> v1::TopologyEdge {
        v1::TopologyEdge {
            source_id: src.into(),
            destination_id: dst.into(),
            protocol: v1::Protocol::Http1 as i32,
            mirror,
            rps,
            error_rate: 0.05,
            latency_p99_ms: 45.0,
            ..Default::default()
        }
    }

    #[test]
    fn edges_are_sorted_by_traffic_with_mirror_marked() {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let u = v1::TopologyUpdate {
            window: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            edges: vec![
                edge("default/a/v1", "default/b/v1", 5.0, false),
                edge("unknown/unknown/unknown", "default/a/v1", 50.0, false),
                edge("default/a/v1", "default/b/v2", 1.0, true),
            ],
            ..Default::default()
        };
        let text = render_update(&u);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("serinctl top: 3 edges, 55.0 rps over the last 10s"),
            "{text}"
        );
        assert!(lines[1].starts_with("SOURCE"), "{text}");
        assert!(lines[2].starts_with("(outside the mesh)"), "{text}");
        assert!(
            lines[3].contains("default/b/v1") && lines[3].contains("5.0%"),
            "{text}"
        );
        assert!(
            lines[4].contains("http1 mirror") && lines[4].contains("45ms"),
            "{text}"
        );
        let empty = render_update(&v1::TopologyUpdate::default());
        assert!(empty.contains("no traffic in the window"), "{empty}");
    }
}
