//! `serinctl demo`: the local mesh with Bookinfo in an injection-enabled namespace, a starting
//! policy for `reviews`, bounded traffic from a mix of users, cookies and browsers, and a guide
//! to a gray release with the exact commands; it runs until SIGINT or SIGTERM, then removes what
//! it made (the whole mesh when it brought it up, else only its pods).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serin_local::cluster::bookinfo::{self, Bookinfo};
use serin_local::cluster::{
    Cluster, DEFAULT_NAMESPACE, DEFAULT_STATE_DIR, DEMO_APP_BIN, GRPC_PORT, MESH_BINS,
    demo_app_path,
};
use serin_local::traffic::{TrafficOptions, TrafficReport, USERS};
use serin_proto::v1;
use tokio::signal::unix::{SignalKind, signal};

use super::local::{bin_dir, require_root, up_options, with_sidecar_log, write_pod, write_up};
use crate::cli::DemoArgs;
use crate::connect::{ControlPlane, TokenSource};
use crate::document;
use crate::error::{CliError, one_line};

/// How long each round of traffic lasts (a report is printed after each).
const ROUND: Duration = Duration::from_secs(5);
/// Requests in flight at most.
const CONCURRENCY: usize = 8;
/// Rounds in a row that may fail before the demo gives up.
const MAX_FAILED_ROUNDS: u32 = 3;
/// The exit code of a demo interrupted before it was ready (as a shell reports SIGINT).
const INTERRUPTED: u8 = 130;

/// Where `reviews` starts: everything on v1, a user's choice sticky by the `uid` cookie.
fn starting_policy(namespace: &str) -> String {
    format!(
        "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {{name: reviews, namespace: {namespace}}}
spec:
  service: reviews
  default:
    route: [{{version: v1, weight: 100}}]
  stickiness: {{cookie: uid}}
"
    )
}

/// Set once SIGINT or SIGTERM arrives.
#[derive(Debug, Clone)]
struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Catches SIGINT and SIGTERM from now on (so neither kills serinctl before it cleans up).
    fn on_signals() -> Result<Stop, CliError> {
        let install = |kind| {
            signal(kind).map_err(|e| {
                CliError::Input(format!("cannot install the demo's signal handlers: {e}"))
            })
        };
        let (mut int, mut term) = (
            install(SignalKind::interrupt())?,
            install(SignalKind::terminate())?,
        );
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        tokio::spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            set.store(true, Ordering::SeqCst);
        });
        Ok(Stop(flag))
    }

    fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs a blocking serin-local call off the runtime thread, so that signals are still seen.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CliError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| CliError::Input(format!("a demo step failed unexpectedly: {e}")))
}

/// What the demo made, so that it removes exactly that.
#[derive(Debug)]
struct Made {
    cluster: Cluster,
    /// Whether the demo brought the mesh up (then `down` removes it all).
    mesh: bool,
    /// The pods it started, in order.
    pods: Vec<String>,
}

/// `demo`: Bookinfo goes in `namespace`.
pub async fn demo(namespace: &str, args: &DemoArgs, out: &mut impl Write) -> Result<(), CliError> {
    require_root("demo")?;
    let mut bins = MESH_BINS.to_vec();
    bins.push(DEMO_APP_BIN);
    let bin_dir = bin_dir(&bins)?;
    let demo_app = demo_app_path(&bin_dir)?;
    let stop = Stop::on_signals()?;

    // 1. The mesh (or the one already up there). From here on, whatever fails (even writing
    //    to a closed stdout), what was made is removed before serinctl exits.
    let options = up_options(&args.mesh, &args.ports, &bin_dir);
    let up = blocking(move || Cluster::up(&options)).await??;
    let shown = write_up(&up, &args.ports, out).and_then(|()| Ok(out.flush()?));
    let mut made = Made {
        cluster: up.cluster,
        mesh: up.created,
        pods: Vec::new(),
    };

    // 2. Bookinfo, the starting policy, the guide, then traffic until a signal.
    let outcome = match shown {
        Ok(()) => run(&mut made, namespace, args, &demo_app, &stop, out).await,
        Err(e) => Err(e),
    };

    // 3. Remove what the demo made, whatever happened above.
    let _ = writeln!(out, "cleaning up");
    let _ = out.flush();
    match (outcome, clean_up(made, out).await) {
        (Ok(()), cleaned) => cleaned,
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(cleanup)) => Err(CliError::Input(format!(
            "{e}; then removing what the demo made failed too: {cleanup}"
        ))),
    }
}

async fn run(
    made: &mut Made,
    namespace: &str,
    args: &DemoArgs,
    demo_app: &Path,
    stop: &Stop,
    out: &mut impl Write,
) -> Result<(), CliError> {
    set_up(made, namespace, demo_app, stop, out).await?;
    write_guide(namespace, args, demo_app, &made.cluster, out)?;
    send_traffic(&made.cluster, demo_app, args.rate, stop, out).await
}

async fn set_up(
    made: &mut Made,
    namespace: &str,
    demo_app: &Path,
    stop: &Stop,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let cluster = made.cluster.clone();
    let name = namespace.to_owned();
    let ns = blocking(move || cluster.create_namespace(&name, true)).await??;
    writeln!(out, "namespace/{} with injection enabled", ns.name)?;
    for spec in Bookinfo::new(namespace, demo_app).pods() {
        if stop.requested() {
            writeln!(out, "interrupted")?;
            return Err(CliError::Exit(INTERRUPTED));
        }
        let cluster = made.cluster.clone();
        let name = spec.name.clone();
        let pod = blocking(move || cluster.run(&spec))
            .await?
            .map_err(|e| with_sidecar_log(made.cluster.state_dir(), &name, e))?;
        made.pods.push(pod.name.clone());
        write_pod(&pod, out)?;
        out.flush()?;
    }
    let tokens = TokenSource {
        local_state_dir: Some(made.cluster.state_dir().to_owned()),
        ..TokenSource::default()
    };
    apply_starting_policy(&made.cluster.control_plane_url(), &tokens, namespace, out).await
}

async fn apply_starting_policy(
    url: &str,
    tokens: &TokenSource,
    namespace: &str,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut cp = ControlPlane::connect(url, tokens).await?;
    let docs = document::parse(&starting_policy(namespace))
        .map_err(|e| CliError::Input(format!("the demo's starting policy: {e}")))?;
    for (_, doc) in docs {
        let draft = doc.into_draft(namespace);
        let req = v1::ApplyPolicyRequest {
            policy: Some(v1::TrafficPolicy::from(&draft)),
            if_generation: None,
            dry_run: false,
        };
        let name = draft.policy.metadata.name.clone();
        let resp = cp
            .admin
            .apply_policy(req)
            .await
            .map_err(|s| cp.error(format!("applying the demo's policy/{name}"), &s))?
            .into_inner();
        let generation = resp
            .policy
            .as_ref()
            .and_then(|p| p.metadata.as_ref())
            .map_or(0, |m| m.generation);
        writeln!(
            out,
            "policy/{name} applied (generation {generation}): reviews v1 100%, sticky by the uid cookie"
        )?;
    }
    Ok(())
}

/// The serinctl command line prefix that reaches this demo's mesh and namespace.
fn serinctl_prefix(namespace: &str, args: &DemoArgs) -> (String, String) {
    let mut admin = String::from("serinctl");
    if args.ports.grpc_port != GRPC_PORT {
        admin.push_str(&format!(
            " --control-plane http://127.0.0.1:{}",
            args.ports.grpc_port
        ));
    }
    if namespace != DEFAULT_NAMESPACE {
        admin.push_str(&format!(" -n {namespace}"));
    }
    let mut local = String::from("serinctl");
    if args.mesh.state_dir != Path::new(DEFAULT_STATE_DIR)
        && std::env::var_os(serin_local::cluster::ENV_STATE_DIR).is_none()
    {
        local.push_str(&format!(" --state-dir {}", args.mesh.state_dir.display()));
    }
    (admin, local)
}

fn write_guide(
    namespace: &str,
    args: &DemoArgs,
    demo_app: &Path,
    cluster: &Cluster,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (ctl, local) = serinctl_prefix(namespace, args);
    let named: Vec<&str> = USERS.iter().filter_map(|u| *u).collect();
    let anonymous = if USERS.contains(&None) {
        " and anonymous visitors"
    } else {
        ""
    };
    let app = demo_app.display();
    let steps: Vec<(&str, String, &str)> = vec![
        (
            "watch",
            format!("{ctl} top"),
            "live requests between service versions",
        ),
        (
            "",
            format!("{ctl} status"),
            "every sidecar and the config it acked",
        ),
        (
            "",
            format!("{ctl} get policies reviews -o yaml"),
            "the policy as apply takes it",
        ),
        (
            "canary 20%",
            format!("{ctl} canary reviews v2 --weight 20"),
            "v1 80, v2 20; a user stays on their version",
        ),
        (
            "canary 80%",
            format!("{ctl} canary reviews v2 --weight 80"),
            "users already on v2 stay there",
        ),
        (
            "by cookie",
            format!("{ctl} route reviews v3 --cookie uid=alice"),
            "alice's requests go to v3",
        ),
        (
            "by header",
            format!("{ctl} route reviews v3 --header end-user=jason"),
            "jason's too",
        ),
        (
            "by URL",
            format!("{ctl} route reviews v3 --uri-prefix /beta"),
            "then, from inside the mesh:",
        ),
        (
            "",
            format!(
                "{local} exec {} -- {app} get http://productpage:9080/beta/productpage",
                bookinfo::LOADGEN_POD
            ),
            "",
        ),
        (
            "by OS",
            format!("{ctl} route reviews v3 --os ios,ipados,android"),
            "phones and tablets",
        ),
        (
            "why",
            format!("{ctl} explain reviews --header end-user=jason"),
            "which rule takes a request",
        ),
        (
            "mirror",
            format!("{ctl} mirror reviews v3 --percent 50"),
            "copies to v3; answers still from the route",
        ),
        (
            "",
            format!("{local} logs reviews-v3"),
            "mirrored requests say x-serin-mirror",
        ),
        (
            "take over",
            format!("{ctl} promote reviews v2"),
            "v2 100%, rules and mirror removed",
        ),
        (
            "roll back",
            format!("{ctl} rollback reviews"),
            "the generation before",
        ),
        ("pods, logs", format!("{local} pods"), ""),
        ("", format!("{local} logs productpage-v1 --sidecar -f"), ""),
    ];
    writeln!(out)?;
    writeln!(
        out,
        "Bookinfo is up in namespace {namespace}: productpage calls details and reviews; reviews v2 and v3 call ratings."
    )?;
    writeln!(
        out,
        "Traffic: {} requests/s from pod {} to {}, as {}{anonymous} (end-user header and uid cookie), from desktop and mobile browsers.",
        args.rate,
        bookinfo::LOADGEN_POD,
        bookinfo::ENTRY_URL,
        named.join(", ")
    )?;
    writeln!(out)?;
    writeln!(out, "Dashboard: {}", cluster.dashboard_url())?;
    writeln!(
        out,
        "  (changes made in the page ask for the write token: sudo grep ^write {})",
        cluster.admin_tokens_path().display()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "A gray release of reviews, step by step (in another terminal):"
    )?;
    // Commands without a comment (the long ones) do not widen the column.
    let width = steps
        .iter()
        .filter(|(_, _, what)| !what.is_empty())
        .map(|(_, c, _)| c.len())
        .max()
        .unwrap_or(0);
    for (step, command, what) in &steps {
        let line = if what.is_empty() {
            format!("  {step:<11} {command}")
        } else {
            format!("  {step:<11} {command:<width$}  # {what}")
        };
        writeln!(out, "{}", line.trim_end())?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "Every {}s a line below counts the answers per service version. Ctrl-C stops the traffic and removes what the demo made.",
        ROUND.as_secs()
    )?;
    out.flush()?;
    Ok(())
}

async fn send_traffic(
    cluster: &Cluster,
    demo_app: &Path,
    rate: u32,
    stop: &Stop,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let mut traffic = TrafficOptions::new(bookinfo::ENTRY_URL);
    traffic.rate = rate;
    traffic.duration = ROUND;
    traffic.concurrency = CONCURRENCY;
    let started = Instant::now();
    let mut failed_rounds = 0;
    while !stop.requested() {
        let (cluster, app, options) = (cluster.clone(), PathBuf::from(demo_app), traffic.clone());
        let round =
            blocking(move || cluster.traffic(bookinfo::LOADGEN_POD, &app, &options)).await?;
        // A Ctrl-C reaches the generator too: its round ends early, and that is no failure.
        if stop.requested() {
            break;
        }
        match round {
            Ok(report) => {
                failed_rounds = 0;
                writeln!(
                    out,
                    "[{:>4}s] {}",
                    started.elapsed().as_secs(),
                    summary(&report)
                )?;
            }
            Err(e) => {
                failed_rounds += 1;
                let e = one_line(&e.to_string());
                if failed_rounds >= MAX_FAILED_ROUNDS {
                    return Err(CliError::Input(format!(
                        "the traffic generator failed {failed_rounds} times in a row, last: {e}"
                    )));
                }
                eprintln!("serinctl: warning: a round of traffic failed: {e}");
            }
        }
        out.flush()?;
    }
    writeln!(out, "stopping")?;
    Ok(())
}

/// One round on one line: totals, then the answers per service version, callers first.
fn summary(report: &TrafficReport) -> String {
    let mut services: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for (key, count) in &report.versions {
        let (service, version) = key.split_once(' ').unwrap_or((key.as_str(), ""));
        services.entry(service).or_default().push((version, *count));
    }
    let order = ["productpage", "details", "reviews", "ratings"];
    let mut names: Vec<&str> = services.keys().copied().collect();
    names.sort_by_key(|s| order.iter().position(|o| o == s).unwrap_or(order.len()));
    let mut line = format!(
        "{} sent, {} ok, {} failed",
        report.sent, report.ok, report.failed
    );
    for service in names {
        let versions: Vec<String> = services[service]
            .iter()
            .map(|(v, n)| format!("{v} {n}"))
            .collect();
        line.push_str(&format!(" | {service} {}", versions.join(", ")));
    }
    if !report.failures.is_empty() {
        let failures: Vec<String> = report
            .failures
            .iter()
            .map(|(why, n)| format!("{why} x{n}"))
            .collect();
        line.push_str(&format!(" | failures: {}", failures.join(", ")));
    }
    line
}

/// Removes what the demo made: the mesh it brought up, or else the pods it started (all of them,
/// even when one fails; the first failure is returned). What it says goes out last and may be
/// lost (a closed stdout): the removal is what counts.
async fn clean_up(made: Made, out: &mut impl Write) -> Result<(), CliError> {
    if made.mesh {
        let dir = made.cluster.state_dir().to_owned();
        let removed = blocking(move || Cluster::down(dir)).await??;
        let _ = write!(out, "{removed}");
        return Ok(());
    }
    let mut said = String::new();
    let mut first_failure = None;
    for pod in made.pods.iter().rev() {
        let (cluster, name) = (made.cluster.clone(), pod.clone());
        match blocking(move || cluster.remove_pod(&name)).await {
            Ok(Ok(())) => said.push_str(&format!("removed pod/{pod}\n")),
            Ok(Err(e)) => {
                first_failure.get_or_insert(CliError::from(e));
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    said.push_str(
        "the local mesh stays up, as it was before the demo (serinctl down removes it)\n",
    );
    let _ = write!(out, "{said}");
    first_failure.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starting_policy_is_valid() {
        crate::test_tracing();
        let docs = document::parse(&starting_policy("shop")).unwrap();
        assert_eq!(docs.len(), 1);
        let draft = docs.into_iter().next().unwrap().1.into_draft("shop");
        assert_eq!(draft.policy.metadata.namespace, "shop");
        serin_policy::validate(&draft.policy, None).unwrap();
    }

    #[test]
    fn a_round_reads_as_one_line_per_service_version() {
        crate::test_tracing();
        let report = TrafficReport {
            sent: 50,
            ok: 49,
            failed: 1,
            versions: [
                ("details v1", 49),
                ("productpage v1", 49),
                ("ratings v1", 10),
                ("reviews v1", 39),
                ("reviews v2", 10),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            failures: [("status 503".to_owned(), 1)].into_iter().collect(),
            ..TrafficReport::default()
        };
        assert_eq!(
            summary(&report),
            "50 sent, 49 ok, 1 failed | productpage v1 49 | details v1 49 | reviews v1 39, v2 10 | ratings v1 10 | failures: status 503 x1"
        );
    }
}
