//! The control-plane scenarios: apply → every proxy acked with 1, 100 and 1000 simulated
//! proxies (tonic clients of `serin.v1.Discovery` that ACK every push at once), and
//! `serin-control`'s RSS with 10 000 subscribers. The control plane runs as its own process on
//! loopback, pinned to the server CPU; the simulated proxies run on the client CPU. Weight flips
//! under load run real sidecars fed by the control plane ([`crate::flips`]).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use serin_proto::auth::{BearerToken, Role, TOKENS_FILE, Tokens, admin_client};
use serin_proto::v1;
use serin_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::flips::{self, FlipPlan};
use crate::histogram::Latencies;
use crate::pinning::{self, Pinning};
use crate::report::{mib, ms};
use crate::resources;
use crate::shape::Scratch;

/// Subscribers per HTTP/2 connection to the control plane.
const STREAMS_PER_CHANNEL: usize = 100;
/// Pause before each apply of the propagation runs (longer than serin-control's push interval).
const APPLY_SPACING: Duration = Duration::from_millis(100);
/// How long one push may take to reach every proxy before the round fails.
const PUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// The sizes of the control-plane runs.
#[derive(Debug, Clone)]
pub struct ControlPlan {
    /// Simulated proxy counts for propagation.
    pub proxies: Vec<usize>,
    /// Applies per count.
    pub rounds: usize,
    /// Subscribers for the memory figure.
    pub subscribers: usize,
    /// Weight flips under load.
    pub flips: FlipPlan,
}

impl ControlPlan {
    /// The full run's.
    pub fn full() -> ControlPlan {
        ControlPlan {
            proxies: vec![1, 100, 1000],
            rounds: 100,
            subscribers: 10_000,
            flips: FlipPlan::full(),
        }
    }

    /// The quick run's (fewer rounds and subscribers, said so in the report).
    pub fn quick() -> ControlPlan {
        ControlPlan {
            proxies: vec![1, 100, 1000],
            rounds: 3,
            subscribers: 1000,
            flips: FlipPlan::quick(),
        }
    }
}

const PROPAGATION: &str =
    "apply → every proxy acked, 1 / 100 / 1000 simulated proxies (target p99 ≤ 100 ms with 1000)";
const MEMORY: &str = "serin-control RSS with 10 000 subscribed proxies (target ≤ 1 GiB)";
/// Why flips under load are not measured without a serin-proxy.
const NO_PROXY: &str = "skipped: no serin-proxy next to serin-bench (build it: cargo build \
    --release --bins -p serin-proxy, or pass --serin-proxy FILE)";

/// Each scenario with why it was not measured: `control` is where `serin-control` was found,
/// `why` what went wrong when it ran.
pub fn skipped(
    control: Option<&Path>,
    why: Option<&str>,
    plan: &ControlPlan,
) -> Vec<(String, String)> {
    let why = match (control, why) {
        (_, Some(why)) => format!("not measured: {why}"),
        (None, None) => "skipped: no serin-control binary next to serin-bench (build it: cargo \
                         build --release -p serin-control)"
            .to_owned(),
        (Some(path), None) => format!("skipped: {} was not run (interrupted)", path.display()),
    };
    vec![
        (PROPAGATION.to_owned(), why.clone()),
        (MEMORY.to_owned(), why.clone()),
        (flips::name(&plan.flips), why),
    ]
}

/// Runs the scenarios against the `serin-control` at `binary`; weight flips under load also
/// need `serin_proxy` (a copy uid 1337 may run).
pub fn run(
    binary: &Path,
    serin_proxy: Option<&Path>,
    plan: &ControlPlan,
    pinning: Pinning,
) -> Vec<(String, String)> {
    let mut rows = match measure(binary, plan, pinning.client, pinning.server) {
        Ok(rows) => rows,
        Err(e) => {
            let mut rows = skipped(Some(binary), Some(&format!("{e:#}")), plan);
            rows.pop();
            rows
        }
    };
    let flipped = match serin_proxy {
        Some(proxy) => match flips::run(binary, proxy, &plan.flips, pinning) {
            Ok(flipped) => flipped.describe(),
            Err(e) => format!("not measured: {e:#}"),
        },
        None => NO_PROXY.to_owned(),
    };
    rows.push((flips::name(&plan.flips), flipped));
    rows
}

/// The control plane process; killed on drop.
struct ControlPlane {
    child: Child,
    grpc: SocketAddr,
    /// The admin tokens file serin-control generates in its store.
    tokens: PathBuf,
    _store: Scratch,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?)
}

fn start(binary: &Path, cpu: usize) -> anyhow::Result<ControlPlane> {
    let store = Scratch::new("control-store")?;
    let (grpc, http) = (free_port()?, free_port()?);
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(binary)
        .args(["--grpc", &grpc.to_string(), "--http", &http.to_string()])
        .arg("--store")
        .arg(store.path().join("store"))
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    Ok(ControlPlane {
        child,
        grpc,
        tokens: store.path().join("store").join(TOKENS_FILE),
        _store: store,
    })
}

fn measure(
    binary: &Path,
    plan: &ControlPlan,
    client_cpu: usize,
    server_cpu: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut control = start(binary, server_cpu)?;
    let pid = control.child.id();
    let grpc = control.grpc;
    let tokens = control.tokens.clone();
    let rows = std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<Vec<(String, String)>> {
                pinning::pin_current_thread(client_cpu)?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(scenarios(grpc, &tokens, pid, plan))
            })
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the control-plane driver panicked")))
    });
    if let Ok(Some(status)) = control.child.try_wait() {
        anyhow::bail!("serin-control exited with {status}");
    }
    rows
}

async fn channel(grpc: SocketAddr) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{grpc}"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match endpoint.connect().await {
            Ok(channel) => return Ok(channel),
            Err(e) if Instant::now() > deadline => {
                anyhow::bail!("cannot reach serin-control on {grpc}: {e}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn scenarios(
    grpc: SocketAddr,
    tokens: &Path,
    pid: u32,
    plan: &ControlPlan,
) -> anyhow::Result<Vec<(String, String)>> {
    // Connected: serin-control wrote its tokens before it listened.
    let channel = channel(grpc).await?;
    let token = Tokens::read(tokens)?
        .plain(Role::Write)
        .context("no write token in serin-control's admin tokens file")?
        .to_owned();
    let mut admin = admin_client(
        channel,
        BearerToken::new(&token).map_err(anyhow::Error::msg)?,
    );
    let mut rows = Vec::new();
    let mut generation = 0u32;
    for &n in &plan.proxies {
        let fleet = Fleet::connect(grpc, n, &format!("p{n}")).await?;
        let mut each = Latencies::new();
        let mut all = Latencies::new();
        let mut after_return = Latencies::new();
        for _ in 0..plan.rounds {
            // Applies spaced like a person's or a pipeline's, not a burst: serin-control pushes
            // a change after a quiet period at once and coalesces changes that come within its
            // push interval (20 ms) of the last push, by design.
            tokio::time::sleep(APPLY_SPACING).await;
            generation += 1;
            let start = Instant::now();
            fleet.expect_push(start);
            admin
                .apply_policy(v1::ApplyPolicyRequest {
                    policy: Some(policy(generation)),
                    if_generation: None,
                    dry_run: false,
                })
                .await
                .context("ApplyPolicy")?;
            let returned = start.elapsed();
            let arrivals = fleet.wait_all(n).await?;
            let last = arrivals.iter().max().copied().unwrap_or_default();
            all.record(last);
            after_return.record(last.saturating_sub(returned));
            for a in arrivals {
                each.record(a);
            }
        }
        let (s, a, r) = (each.summary(), all.summary(), after_return.summary());
        rows.push((
            format!(
                "apply → every proxy acked, {n} simulated proxies ({} applies)",
                plan.rounds
            ),
            format!(
                "last of {n} ACKs after ApplyPolicy returned: p50 {} ms, p99 {} ms, max {} ms; \
                 from the call: p50 {} ms, p99 {} ms; each proxy's ACK from the call: p50 {} ms, \
                 p99 {} ms",
                ms(r.p50),
                ms(r.p99),
                ms(r.max),
                ms(a.p50),
                ms(a.p99),
                ms(s.p50),
                ms(s.p99)
            ),
        ));
    }
    let idle = resources::usage(&[pid]).rss_bytes;
    let fleet = Fleet::connect(grpc, plan.subscribers, "rss").await?;
    let with = resources::usage(&[pid]).rss_bytes;
    drop(fleet);
    let note = if plan.subscribers < 10_000 {
        " (quick run: fewer subscribers than the target's 10 000)"
    } else {
        ""
    };
    rows.push((
        format!(
            "serin-control RSS with {} subscribed proxies",
            plan.subscribers
        ),
        format!(
            "{} MiB, {} MiB before they subscribed{note}",
            mib(with),
            mib(idle)
        ),
    ));
    Ok(rows)
}

/// v1's weight in the split of [`policy`]: 90 for even generations, 10 for odd ones.
pub(crate) fn v1_weight(generation: u32) -> u32 {
    if generation.is_multiple_of(2) { 90 } else { 10 }
}

/// A policy for service `bench` whose default split (v1/v2) flips between 90/10 and 10/90 with
/// `generation`, so every apply is a new snapshot.
pub(crate) fn policy(generation: u32) -> v1::TrafficPolicy {
    let v1_weight = v1_weight(generation);
    v1::TrafficPolicy {
        metadata: Some(v1::PolicyMetadata {
            name: "bench".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        spec: Some(v1::TrafficPolicySpec {
            service: "bench".into(),
            default: Some(v1::DefaultRoute {
                route: vec![
                    v1::VersionWeight {
                        version: "v1".into(),
                        weight: v1_weight,
                    },
                    v1::VersionWeight {
                        version: "v2".into(),
                        weight: 100 - v1_weight,
                    },
                ],
            }),
            ..Default::default()
        }),
    }
}

/// Simulated proxies: each subscribes, ACKs every push at once, and reports how long after the
/// round's start a push arrived.
struct Fleet {
    tasks: JoinSet<()>,
    round: watch::Sender<Option<Instant>>,
    arrivals: tokio::sync::Mutex<mpsc::UnboundedReceiver<Duration>>,
}

impl Fleet {
    async fn connect(grpc: SocketAddr, n: usize, prefix: &str) -> anyhow::Result<Fleet> {
        let (round, _) = watch::channel(None::<Instant>);
        let (arrived_tx, arrivals) = mpsc::unbounded_channel();
        let (ready_tx, mut ready) = mpsc::unbounded_channel::<Result<(), String>>();
        let mut tasks = JoinSet::new();
        let mut client = None;
        for i in 0..n {
            if i % STREAMS_PER_CHANNEL == 0 {
                client = Some(DiscoveryClient::new(channel(grpc).await?));
            }
            let mut client = client.clone().expect("made above");
            let arrived = arrived_tx.clone();
            let ready_tx = ready_tx.clone();
            let mut round = round.subscribe();
            let pod = format!("{prefix}-{i}");
            tasks.spawn(async move {
                let (tx, requests) = mpsc::channel(4);
                let _ = tx.send(hello(&pod)).await;
                let mut stream = match client.subscribe(ReceiverStream::new(requests)).await {
                    Ok(s) => s.into_inner(),
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("Subscribe: {e}")));
                        return;
                    }
                };
                let mut first = true;
                while let Ok(Some(push)) = stream.message().await {
                    let at = Instant::now();
                    let ack = v1::SubscribeRequest {
                        kind: Some(v1::subscribe_request::Kind::Ack(v1::SnapshotAck {
                            version: push.version.clone(),
                            nonce: push.nonce.clone(),
                        })),
                    };
                    let _ = tx.send(ack).await;
                    if first {
                        first = false;
                        let _ = ready_tx.send(Ok(()));
                    } else if let Some(start) = *round.borrow_and_update() {
                        let _ = arrived.send(at - start);
                    }
                }
            });
        }
        for _ in 0..n {
            match tokio::time::timeout(PUSH_TIMEOUT, ready.recv()).await {
                Ok(Some(Ok(()))) => {}
                Ok(Some(Err(e))) => anyhow::bail!("a simulated proxy could not subscribe: {e}"),
                Ok(None) | Err(_) => anyhow::bail!(
                    "{n} simulated proxies did not all get a first snapshot within {PUSH_TIMEOUT:?}"
                ),
            }
        }
        Ok(Fleet {
            tasks,
            round,
            arrivals: tokio::sync::Mutex::new(arrivals),
        })
    }

    fn expect_push(&self, start: Instant) {
        self.round.send_replace(Some(start));
    }

    async fn wait_all(&self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut arrivals = self.arrivals.lock().await;
        let mut out = Vec::with_capacity(n);
        let deadline = Instant::now() + PUSH_TIMEOUT;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, arrivals.recv()).await {
                Ok(Some(d)) => out.push(d),
                Ok(None) | Err(_) => anyhow::bail!(
                    "only {} of {n} simulated proxies got the push within {PUSH_TIMEOUT:?}",
                    out.len()
                ),
            }
        }
        Ok(out)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

fn hello(pod: &str) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello {
            proxy: Some(v1::ProxyIdentity {
                pod_name: pod.into(),
                namespace: "default".into(),
                pod_ips: vec!["10.244.9.9".into()],
                service: "bench-client".into(),
                version: "v1".into(),
                proxy_version: "serin-bench".into(),
                ..Default::default()
            }),
            capabilities: vec!["snapshot.full".into()],
            applied_version: String::new(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_says_why_it_was_skipped() {
        let none = skipped(None, None, &ControlPlan::full());
        assert_eq!(none.len(), 3);
        assert!(none[0].1.starts_with("skipped: no serin-control"));
        assert!(none[2].0.contains("1000 weight flips"));
        assert!(none[2].1.starts_with("skipped: no serin-control"));
        let failed = skipped(
            Some(Path::new("/x/serin-control")),
            Some("it crashed"),
            &ControlPlan::quick(),
        );
        assert_eq!(failed[1].1, "not measured: it crashed");
        assert!(failed[2].0.contains("quick run"));
    }

    #[test]
    fn every_apply_changes_the_split() {
        let weight = |g| policy(g).spec.unwrap().default.unwrap().route[0].weight;
        assert_ne!(weight(1), weight(2));
        assert_eq!(weight(1), weight(3));
    }
}
