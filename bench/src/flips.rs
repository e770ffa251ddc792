//! Weight flips under load: real sidecars following a real control plane while the split of a
//! service flips back and forth, and every request of a continuous open-loop load must succeed.
//!
//! The mesh: `serin-control` in its own pod; a client pod and two server pods (`bench-v1`,
//! `bench-v2`, each with serin-bench's upstream), registered through the Admin API as versions
//! v1 and v2 of service `bench`; the harness's capture rules in the three workload pods and a
//! `serin-proxy --control-plane` sidecar (uid 1337) in each: the 2-hop shape. Pinning as
//! everywhere: the load generator and the client sidecar on the client CPU; the upstreams, their
//! sidecars, the control plane and the flipper on the server CPU.
//!
//! The flipper calls `ApplyPolicy` with the default split alternating 90/10 and 10/90 and, after
//! each call, waits until the client sidecar has ACKed a newer snapshot (`ListProxies`, polled
//! every 2 ms), keeps that split for 10 ms and flips again: every flip reaches the data plane
//! (flipping faster would only let the control plane coalesce them). Each upstream counts the
//! requests it answers; the counts during those 10 ms are the traffic of the split the ACK put
//! in force, which gives the share per version in each half (90/10 and 10/90).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serin_local::{Ipv6, Mesh, MeshOptions, Pod, Process, Redirect};
use serin_proto::auth::{AuthorizedAdmin, BearerToken, Role, TOKENS_FILE, Tokens, admin_client};
use serin_proto::v1;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::control;
use crate::drive::{self, Mode, Spec};
use crate::histogram::Latencies;
use crate::pinning::{self, Pinning};
use crate::report::ms;
use crate::shape::{self, PROXY_UID, Scratch};
use crate::upstream::Upstream;
use crate::workload::Workload;

/// The control plane's gRPC port in its pod.
const CP_PORT: u16 = 15010;
/// How long the client sidecar may take to ACK a flip before it counts as not acked.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two `ListProxies` polls while waiting for an ACK.
const POLL: Duration = Duration::from_millis(2);
/// How long the mesh may take to come up (sidecars ready, first policy routed).
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest load run, whatever happens to the flipper: the load stops itself then.
const LOAD_CAP: Duration = Duration::from_secs(600);
/// How long each split is kept once the client sidecar ACKed it; the requests the upstreams
/// answer in that window are that split's (the window starts after the sidecar switched and
/// ends before the next flip, so no request of another split falls in it but a straggler).
const DWELL: Duration = Duration::from_millis(10);
/// Flips not applied or not ACKed in a row after which the run stops flipping (a control plane
/// or sidecar that stopped answering would otherwise take `ACK_TIMEOUT` per remaining flip).
const GIVE_UP_AFTER: usize = 3;
/// Longest time the flips may take; half the load's cap, so the load always outlasts them.
const FLIP_BUDGET: Duration = Duration::from_secs(300);
/// Load after the last flip, so that requests routed by it complete within the run.
const COOL_DOWN: Duration = Duration::from_millis(300);

/// The sizes of the flips run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlipPlan {
    /// `ApplyPolicy` calls, alternating the split.
    pub flips: usize,
    /// Open-loop rate of the load, requests per second.
    pub rate: u32,
    /// Connections of the load.
    pub connections: u32,
    /// Load before the first flip.
    pub warmup: Duration,
}

impl FlipPlan {
    /// The full run's: DESIGN.md's 1000 flips.
    pub fn full() -> FlipPlan {
        FlipPlan {
            flips: 1000,
            rate: 1000,
            connections: 16,
            warmup: Duration::from_secs(1),
        }
    }

    /// The quick run's.
    pub fn quick() -> FlipPlan {
        FlipPlan {
            flips: 20,
            rate: 1000,
            connections: 16,
            warmup: Duration::from_millis(300),
        }
    }
}

/// The row's name.
pub fn name(plan: &FlipPlan) -> String {
    let quick = if plan.flips < 1000 {
        " (quick run: fewer flips than the target's 1000)"
    } else {
        ""
    };
    format!(
        "failed requests over {} weight flips under load (target 0){quick}",
        plan.flips
    )
}

/// Requests the upstreams answered while one split was in force.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Half {
    /// Answered by v1.
    pub v1: u64,
    /// Answered by v2.
    pub v2: u64,
}

impl Half {
    /// v1's share, percent (0 without requests).
    pub fn v1_percent(&self) -> f64 {
        let total = self.v1 + self.v2;
        if total == 0 {
            0.0
        } else {
            self.v1 as f64 * 100.0 / total as f64
        }
    }

    fn describe(&self, split: &str) -> String {
        format!(
            "while {split}: v1 {:.1} %, v2 {:.1} % of {}",
            self.v1_percent(),
            100.0 - self.v1_percent(),
            self.v1 + self.v2
        )
    }
}

/// What the run observed.
#[derive(Debug, Clone, Default)]
pub struct Flipped {
    /// Requests sent (answered or failed).
    pub requests: u64,
    /// Failed requests: non-2xx answers and transport errors.
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Requests the load could not send on time (the rate was not sustained).
    pub missed: u64,
    /// `ApplyPolicy` calls that succeeded.
    pub applied: usize,
    /// Of those, how many the client sidecar ACKed before the next flip.
    pub acked: usize,
    /// The first `ApplyPolicy` failure.
    pub apply_error: Option<String>,
    /// Why the flips stopped before the planned count, if they did.
    pub stopped: Option<String>,
    /// From each `ApplyPolicy` call to the client sidecar's ACK, as polled.
    pub ack_latency: Latencies,
    /// Traffic while 90/10 (v1/v2) was in force.
    pub v1_heavy: Half,
    /// Traffic while 10/90 was in force.
    pub v2_heavy: Half,
    /// Length of the load run.
    pub elapsed: Duration,
}

impl Flipped {
    /// The row's text.
    pub fn describe(&self) -> String {
        let verdict = if self.failed == 0 {
            "met"
        } else {
            "**missed**"
        };
        let first = self
            .first_error
            .as_ref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default();
        let apply_error = self
            .apply_error
            .as_ref()
            .map(|e| format!(" (first ApplyPolicy failure: {e})"))
            .unwrap_or_default();
        let ack = self.ack_latency.summary();
        let stopped = self
            .stopped
            .as_ref()
            .map(|why| format!(" (then stopped: {why})"))
            .unwrap_or_default();
        format!(
            "{} failed of {} requests{first}: {verdict}; {} flips applied{apply_error}, {} \
             acked{stopped} by the client sidecar (ApplyPolicy call → its ACK: p50 {} ms, p99 \
             {} ms); shares counted at the upstreams in the {DWELL:?} after each ACK: {}; {}; \
             {:.1} s of load at the fixed rate, {} requests not sent on time",
            self.failed,
            self.requests,
            self.applied,
            self.acked,
            ms(ack.p50),
            ms(ack.p99),
            self.v1_heavy.describe("90/10"),
            self.v2_heavy.describe("10/90"),
            self.elapsed.as_secs_f64(),
            self.missed
        )
    }
}

/// Runs the scenario: `control` and `proxy` are the binaries (`proxy` readable and executable by
/// uid 1337).
pub fn run(
    control: &Path,
    proxy: &Path,
    plan: &FlipPlan,
    pinning: Pinning,
) -> anyhow::Result<Flipped> {
    let mesh = Mesh::create_with(MeshOptions { ipv6: Ipv6::Off })
        .context("create the flips scenario's mesh")?;
    let scratch = Scratch::new(&format!("flips-{}", mesh.run_id()))?;
    let cp_pod = mesh.add_pod("control")?;
    let client = mesh.add_pod("client")?;
    let servers = [mesh.add_pod("bench-v1")?, mesh.add_pod("bench-v2")?];
    let mut processes = Vec::new();
    let result = scenario(
        &scratch,
        &cp_pod,
        &client,
        &servers,
        &mut processes,
        (control, proxy),
        plan,
        pinning,
    );
    // The sidecars and the control plane before the mesh (its guard would kill them too).
    for process in &processes {
        let _ = process.kill();
    }
    result.map_err(|e| {
        let logs: Vec<String> = ["serin-control", "client", "bench-v1", "bench-v2"]
            .iter()
            .filter_map(|name| {
                let text = std::fs::read_to_string(scratch.path().join(format!("{name}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(3).collect();
                (!tail.is_empty()).then(|| {
                    format!(
                        "{name}: {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    )
                })
            })
            .collect();
        if logs.is_empty() {
            e
        } else {
            e.context(format!("logs: {}", logs.join("; ")))
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn scenario(
    scratch: &Scratch,
    cp_pod: &Pod,
    client: &Pod,
    servers: &[Pod; 2],
    processes: &mut Vec<Process>,
    (control, proxy): (&Path, &Path),
    plan: &FlipPlan,
    pinning: Pinning,
) -> anyhow::Result<Flipped> {
    let log = |name: &str| scratch.path().join(format!("{name}.log"));
    let store = scratch.subdir("store")?;
    processes.push(
        cp_pod
            .exec([
                "taskset".to_owned(),
                "-c".to_owned(),
                pinning.server.to_string(),
                control.display().to_string(),
                "--grpc".to_owned(),
                format!("0.0.0.0:{CP_PORT}"),
                "--http".to_owned(),
                "127.0.0.1:15080".to_owned(),
                "--store".to_owned(),
                store.join("store").display().to_string(),
                "--log".to_owned(),
                "warn".to_owned(),
            ])
            .stdout(Redirect::File(log("serin-control")))
            .stderr(Redirect::Append(log("serin-control")))
            .spawn()
            .context("start serin-control")?,
    );
    cp_pod
        .wait_for_tcp(
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), CP_PORT),
            SETUP_TIMEOUT,
        )
        .context("serin-control does not listen")?;
    let upstreams = [
        Upstream::start(&servers[0], Some(pinning.server))?,
        Upstream::start(&servers[1], Some(pinning.server))?,
    ];
    let port = Workload::Http1KeepAlive.port();

    // The operator's side runs inside the control plane's pod, on the server CPU.
    cp_pod.run_in(|| -> anyhow::Result<Flipped> {
        pinning::pin_current_thread(pinning.server)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let channel = Endpoint::from_shared(format!("http://127.0.0.1:{CP_PORT}"))?
                .connect()
                .await
                .context("connect to serin-control")?;
            // Connected: serin-control wrote its tokens before it listened.
            let tokens = Tokens::read(&store.join("store").join(TOKENS_FILE))?;
            let token = tokens
                .plain(Role::Write)
                .context("no write token in serin-control's admin tokens file")?;
            let token = BearerToken::new(token).map_err(anyhow::Error::msg)?;
            let mut admin = admin_client(channel, token);
            for (pod, version) in servers.iter().zip(["v1", "v2"]) {
                register(&mut admin, pod, version, port).await?;
            }
            let vip = service_vip(&mut admin).await?;
            apply(&mut admin, 0).await.context("the first policy")?;

            // The data plane: capture rules and a sidecar in each workload pod.
            let sides = [
                (client, "bench-client", "v1", pinning.client),
                (&servers[0], "bench", "v1", pinning.server),
                (&servers[1], "bench", "v2", pinning.server),
            ];
            for (pod, service, version, cpu) in sides {
                shape::apply_capture(pod)?;
                processes.push(sidecar(
                    pod,
                    proxy,
                    cp_pod.ip(),
                    (service, version),
                    cpu,
                    &log(pod.name()),
                )?);
            }
            for (pod, ..) in sides {
                wait_ready(pod, &processes[..]).await?;
            }
            wait_routing(client).await?;

            // Load in the client pod, flips from here.
            let stop = Arc::new(AtomicBool::new(false));
            let spec = Spec {
                workload: Workload::Http1KeepAlive,
                target: SocketAddr::new(vip.into(), port),
                connections: plan.connections,
                duration: LOAD_CAP,
                mode: Mode::Open(plan.rate),
            };
            let load_stop = Arc::clone(&stop);
            let (load_pod, client_cpu) = (client.clone(), pinning.client);
            let started = std::time::Instant::now();
            let load = std::thread::Builder::new()
                .name("flips load".into())
                .spawn(move || drive::run_until(&load_pod, client_cpu, spec, load_stop))
                .context("start the load generator")?;
            let flipped = flips(&mut admin, plan, &upstreams).await;
            tokio::time::sleep(COOL_DOWN).await;
            stop.store(true, Ordering::SeqCst);
            // The load ends within one request interval (plus the grace for one in flight).
            let outcome = load
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the load generator panicked")));
            let mut flipped = flipped?;
            let outcome = outcome?;
            flipped.elapsed = started.elapsed();
            flipped.requests = outcome.ok + outcome.errors;
            flipped.failed = outcome.errors;
            flipped.first_error = outcome.first_error;
            flipped.missed = outcome.missed;
            for process in processes.iter() {
                if let Ok(Some(status)) = process.try_wait() {
                    anyhow::bail!("a sidecar or the control plane exited with {status}");
                }
            }
            Ok(flipped)
        })
    })?
}

/// The flips themselves, with the load running.
async fn flips(
    admin: &mut AuthorizedAdmin,
    plan: &FlipPlan,
    upstreams: &[Upstream; 2],
) -> anyhow::Result<Flipped> {
    tokio::time::sleep(plan.warmup).await;
    let mut out = Flipped::default();
    let mut acked_version = client_ack(admin).await?.0;
    let began = Instant::now();
    let mut failed_in_a_row = 0;
    for generation in 1..=plan.flips as u32 {
        if failed_in_a_row >= GIVE_UP_AFTER {
            out.stopped = Some(format!(
                "{GIVE_UP_AFTER} flips in a row were not applied or not ACKed within \
                 {ACK_TIMEOUT:?}"
            ));
            break;
        }
        if began.elapsed() > FLIP_BUDGET {
            out.stopped = Some(format!("the flips took longer than {FLIP_BUDGET:?}"));
            break;
        }
        let start = Instant::now();
        let applied = admin
            .apply_policy(v1::ApplyPolicyRequest {
                policy: Some(control::policy(generation)),
                if_generation: None,
                dry_run: false,
            })
            .await;
        if let Err(e) = applied {
            out.apply_error.get_or_insert_with(|| e.to_string());
            failed_in_a_row += 1;
            continue;
        }
        out.applied += 1;
        let deadline = start + ACK_TIMEOUT;
        let acked = loop {
            let (version, in_sync) = client_ack(admin).await?;
            if in_sync && version != acked_version {
                acked_version = version;
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(POLL).await;
        };
        if !acked {
            failed_in_a_row += 1;
            continue;
        }
        failed_in_a_row = 0;
        out.acked += 1;
        out.ack_latency.record(start.elapsed());
        let counts = || [upstreams[0].http_requests(), upstreams[1].http_requests()];
        let before = counts();
        tokio::time::sleep(DWELL).await;
        let after = counts();
        let half = if control::v1_weight(generation) == 90 {
            &mut out.v1_heavy
        } else {
            &mut out.v2_heavy
        };
        half.v1 += after[0] - before[0];
        half.v2 += after[1] - before[1];
    }
    Ok(out)
}

/// The client sidecar's last ACKed snapshot version and whether it is in sync.
async fn client_ack(admin: &mut AuthorizedAdmin) -> anyhow::Result<(String, bool)> {
    let proxies = admin
        .list_proxies(v1::ListProxiesRequest {
            namespace: "default".into(),
            service: "bench-client".into(),
        })
        .await
        .context("ListProxies")?
        .into_inner()
        .proxies;
    let status = proxies
        .first()
        .context("the client sidecar is not connected to serin-control")?;
    Ok((status.acked_version.clone(), status.in_sync))
}

async fn apply(admin: &mut AuthorizedAdmin, generation: u32) -> anyhow::Result<()> {
    admin
        .apply_policy(v1::ApplyPolicyRequest {
            policy: Some(control::policy(generation)),
            if_generation: None,
            dry_run: false,
        })
        .await
        .context("ApplyPolicy")?;
    Ok(())
}

/// Registers `pod` as the `version` endpoint of service `bench` (an hour's lease: the run ends
/// long before, and the control plane with it).
async fn register(
    admin: &mut AuthorizedAdmin,
    pod: &Pod,
    version: &str,
    port: u16,
) -> anyhow::Result<()> {
    admin
        .register_workload(v1::RegisterWorkloadRequest {
            workload: Some(v1::Workload {
                pod_name: pod.name().to_owned(),
                namespace: "default".into(),
                addresses: vec![pod.ip().to_string()],
                service: "bench".into(),
                version: version.to_owned(),
                ports: vec![v1::WorkloadPort {
                    name: "http".into(),
                    port: u32::from(port),
                    protocol: v1::Protocol::Http1 as i32,
                }],
                ..Default::default()
            }),
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .with_context(|| format!("RegisterWorkload {}", pod.name()))?;
    Ok(())
}

/// The IPv4 VIP serin-control gave service `bench`.
async fn service_vip(admin: &mut AuthorizedAdmin) -> anyhow::Result<Ipv4Addr> {
    let services = admin
        .list_services(v1::ListServicesRequest {
            namespace: "default".into(),
        })
        .await
        .context("ListServices")?
        .into_inner()
        .services;
    services
        .iter()
        .filter_map(|s| s.service.as_ref())
        .filter(|s| s.name == "bench")
        .flat_map(|s| s.vips.iter())
        .find_map(|vip| vip.parse::<Ipv4Addr>().ok())
        .context("serin-control gave service bench no IPv4 VIP")
}

/// Starts `serin-proxy --control-plane` in `pod` as uid 1337 on `cpu`.
fn sidecar(
    pod: &Pod,
    proxy: &Path,
    cp: Ipv4Addr,
    (service, version): (&str, &str),
    cpu: usize,
    log: &Path,
) -> anyhow::Result<Process> {
    let argv = [
        "taskset".to_owned(),
        "-c".to_owned(),
        cpu.to_string(),
        proxy.display().to_string(),
        "--control-plane".to_owned(),
        format!("http://{cp}:{CP_PORT}"),
        "--pod-name".to_owned(),
        pod.name().to_owned(),
        "--namespace".to_owned(),
        "default".to_owned(),
        "--pod-ip".to_owned(),
        IpAddr::from(pod.ip()).to_string(),
        "--service".to_owned(),
        service.to_owned(),
        "--version".to_owned(),
        version.to_owned(),
        "--log-level".to_owned(),
        "warn".to_owned(),
    ];
    pod.exec(argv)
        .user(PROXY_UID, PROXY_UID)
        .stdout(Redirect::File(log.to_owned()))
        .stderr(Redirect::Append(log.to_owned()))
        .spawn()
        .with_context(|| format!("start serin-proxy in pod {}", pod.name()))
}

/// Waits until the sidecar of `pod` is ready; fails at once if one of `processes` exited.
async fn wait_ready(pod: &Pod, processes: &[Process]) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if let Some(status) = processes.iter().find_map(|p| p.try_wait().ok().flatten()) {
            anyhow::bail!("a sidecar or the control plane exited with {status} during set-up");
        }
        if shape::admin_get(pod, "/ready").is_ok_and(|(code, _)| code == 200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the sidecar of pod {} was not ready within {SETUP_TIMEOUT:?}",
                pod.name()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the client sidecar's `/routes` shows the policy of service `bench`.
async fn wait_routing(client: &Pod) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if let Ok((200, body)) = shape::admin_get(client, "/routes")
            && routes_bench(&body)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the client sidecar did not route service bench by policy within \
                 {SETUP_TIMEOUT:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a `/routes` answer has a policy for service `bench`.
fn routes_bench(body: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| {
            json["policies"]
                .as_array()
                .map(|ps| ps.iter().any(|p| p["service"] == "bench"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_what_happened() {
        let mut flipped = Flipped {
            requests: 30_000,
            applied: 1000,
            acked: 1000,
            v1_heavy: Half { v1: 9000, v2: 1000 },
            v2_heavy: Half { v1: 1500, v2: 8500 },
            elapsed: Duration::from_secs(30),
            ..Flipped::default()
        };
        flipped.ack_latency.record(Duration::from_millis(20));
        let text = flipped.describe();
        assert!(
            text.starts_with("0 failed of 30000 requests: met"),
            "{text}"
        );
        assert!(text.contains("while 90/10: v1 90.0 %, v2 10.0 % of 10000"));
        assert!(text.contains("while 10/90: v1 15.0 %, v2 85.0 % of 10000"));
        flipped.failed = 3;
        flipped.first_error = Some("status 503".into());
        assert!(
            flipped
                .describe()
                .starts_with("3 failed of 30000 requests (first: status 503): **missed**")
        );
        assert_eq!(Half::default().v1_percent(), 0.0);
        flipped.stopped = Some("3 flips in a row were not ACKed".into());
        assert!(
            flipped
                .describe()
                .contains("1000 acked (then stopped: 3 flips in a row were not ACKed) by")
        );
    }

    #[test]
    fn routing_shows_in_routes() {
        assert!(routes_bench(
            r#"{"version":"3","policies":[{"service":"bench"}]}"#
        ));
        assert!(!routes_bench(r#"{"version":null,"policies":[]}"#));
        assert!(!routes_bench("not json"));
    }

    #[test]
    fn a_quick_run_says_it_flipped_less() {
        assert_eq!(
            name(&FlipPlan::full()),
            "failed requests over 1000 weight flips under load (target 0)"
        );
        assert!(name(&FlipPlan::quick()).contains("quick run"));
    }
}
