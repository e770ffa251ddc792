//! Runs load from inside the client pod: a thread enters the pod's namespace, pins itself to the
//! client CPU and drives the connections on a single-threaded tokio runtime, so the load
//! generator never uses more than its one core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serin_local::Pod;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::load::{self, Exchange, Outcome, Schedule};
use crate::pinning;
use crate::workload::{Http1Client, Http2Client, Workload, http2_connection};

/// Closed loop (capacity) or open loop at a fixed total rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// As fast as answers come back.
    Closed,
    /// This many requests per second in total.
    Open(u32),
}

/// One run of load.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// What to send.
    pub workload: Workload,
    /// Where.
    pub target: SocketAddr,
    /// Connections (streams, for HTTP/2 workloads).
    pub connections: u32,
    /// How long.
    pub duration: Duration,
    /// How.
    pub mode: Mode,
}

/// Runs `spec` from inside `pod` on CPU `cpu`.
pub fn run(pod: &Pod, cpu: usize, spec: Spec) -> anyhow::Result<Outcome> {
    run_until(pod, cpu, spec, Arc::new(AtomicBool::new(false)))
}

/// [`run`], ending early once `stop` is set (open loop: no request starts after that; closed
/// loop: `spec.duration` only).
pub fn run_until(
    pod: &Pod,
    cpu: usize,
    spec: Spec,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    pod.run_in(move || -> anyhow::Result<Outcome> {
        pinning::pin_current_thread(cpu)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(requests(spec, stop)))
    })?
}

/// Runs raw TCP writers from inside `pod` for `duration`; returns failed connections and the
/// first error.
pub fn run_tcp(
    pod: &Pod,
    cpu: usize,
    target: SocketAddr,
    connections: u32,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    pod.run_in(move || -> anyhow::Result<Outcome> {
        pinning::pin_current_thread(cpu)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(runtime.block_on(tcp(target, connections, duration)))
    })?
}

async fn requests(spec: Spec, stop: Arc<AtomicBool>) -> Outcome {
    let connections = spec.connections.max(1);
    let mut tasks = JoinSet::new();
    if spec.workload.is_http2() {
        let sender = match http2_connection(spec.target).await {
            Ok(sender) => sender,
            Err(e) => {
                return Outcome {
                    errors: 1,
                    first_error: Some(e),
                    ..Outcome::default()
                };
            }
        };
        let start = Instant::now();
        for i in 0..connections {
            let client =
                Http2Client::new(spec.target, spec.workload == Workload::Grpc, sender.clone());
            tasks.spawn(one(client, spec, start, i, Arc::clone(&stop)));
        }
    } else {
        let start = Instant::now();
        for i in 0..connections {
            let keep_alive = spec.workload != Workload::Http1NewConnections;
            tasks.spawn(one(
                Http1Client::new(spec.target, keep_alive),
                spec,
                start,
                i,
                Arc::clone(&stop),
            ));
        }
    }
    let mut total = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(outcome) => total.merge(&outcome),
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("load task failed: {e}"));
            }
        }
    }
    total
}

async fn one<E: Exchange>(
    mut client: E,
    spec: Spec,
    start: Instant,
    index: u32,
    stop: Arc<AtomicBool>,
) -> Outcome {
    let end = start + spec.duration;
    match spec.mode {
        Mode::Closed => load::closed_loop(&mut client, end).await,
        Mode::Open(rate) => {
            let schedule = Schedule::new(start, rate, spec.connections.max(1), index);
            load::open_loop_until(&mut client, schedule, end, &stop).await
        }
    }
}

async fn tcp(target: SocketAddr, connections: u32, duration: Duration) -> Outcome {
    let end = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..connections.max(1) {
        tasks.spawn(async move {
            let chunk = vec![b't'; 64 * 1024];
            let mut stream = TcpStream::connect(target)
                .await
                .map_err(|e| format!("connect to {target}: {e}"))?;
            while Instant::now() < end {
                match tokio::time::timeout_at(end + load::GRACE, stream.write_all(&chunk)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("write: {e}")),
                    Err(_) => return Err("write stalled past the end of the run".to_owned()),
                }
            }
            let _ = stream.shutdown().await;
            Ok(())
        });
    }
    let mut total = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => total.ok += 1,
            Ok(Err(e)) => {
                total.errors += 1;
                total.first_error.get_or_insert(e);
            }
            Err(e) => {
                total.errors += 1;
                total
                    .first_error
                    .get_or_insert_with(|| format!("writer task failed: {e}"));
            }
        }
    }
    total
}
