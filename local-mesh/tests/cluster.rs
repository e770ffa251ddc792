//! Root tests of the persistent local mesh (`serinctl up/run/exec/pods/logs/down` as library
//! calls) with the real binaries: the agent, `serin-control` in its pod, `serin-demo-app` pods,
//! `serin-iptables` and `serin-proxy` for injected pods. Each test uses its own state directory
//! and its own host ports, so tests run in parallel and never collide with a developer's mesh on
//! 15010/15080. Skipped, with a printed reason, without root.
//!
//! The binaries come from the target directory next to this test executable (`cargo build
//! --bins` first, as `scripts/test` does).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use serin_local::cluster::bookinfo::{self, Bookinfo};
use serin_local::cluster::{Cluster, LogStream, PodSpec, UpOptions, pods_table};
use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::traffic::TrafficOptions;
use serin_proto::v1::ListServicesRequest;
use serin_proto::v1::admin_client::AdminClient;

/// The directory holding the workspace's binaries (`target/debug`).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_owned();
    for bin in [
        "serin-local-agent",
        "serin-control",
        "serin-proxy",
        "serin-iptables",
        "serin-demo-app",
    ] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} is missing from {}: run `cargo build --bins -p serin-control -p serin-proxy -p serin-iptables -p serin-local` first",
            dir.display()
        );
    }
    dir
}

fn demo_app() -> String {
    bin_dir().join("serin-demo-app").display().to_string()
}

/// A mesh in its own state directory that is brought down when the test ends, even by a panic.
struct TestCluster {
    cluster: Cluster,
    dir: tempfile::TempDir,
}

impl TestCluster {
    fn up(ports: u16) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::up(&options(dir.path(), ports))
            .expect("up")
            .cluster;
        TestCluster { cluster, dir }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("mesh")
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = Cluster::down(self.state_dir()) {
            tracing::error!(error = %e, "down in the test guard failed");
        }
    }
}

fn options(base: &Path, ports: u16) -> UpOptions {
    let mut options = UpOptions::new(base.join("mesh"), bin_dir());
    options.grpc_port = ports;
    options.http_port = ports + 1;
    options.sidecar_ready_timeout = Duration::from_secs(5);
    options.app_ready_timeout = Duration::from_secs(20);
    options
}

fn demo_pod(name: &str, namespace: &str, service: &str, version: &str, calls: &[&str]) -> PodSpec {
    let mut command = vec![demo_app(), "--port".into(), "9080".into()];
    for call in calls {
        command.push("--call".into());
        command.push((*call).to_owned());
    }
    PodSpec::new(name, namespace, service, version, 9080, command)
}

/// Namespaces and links whose name carries `run_id`.
fn leftovers(run_id: &str) -> Vec<String> {
    let tag = format!("srn-{run_id}");
    let mut found = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let out = Command::new("ip").args(args).output().unwrap();
        found.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(&tag))
                .map(str::to_owned),
        );
    }
    if Path::new("/etc/netns").exists() {
        for entry in std::fs::read_dir("/etc/netns").unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(&tag) {
                found.push(format!("/etc/netns/{name}"));
            }
        }
    }
    found
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            != Some("Z")
    })
}

/// `GET path` over HTTP/1.0 from the host; the status code.
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0))
}

/// A service as the control plane lists it.
#[derive(Debug)]
struct Listed {
    /// "namespace/name".
    key: String,
    /// (version, ready endpoints).
    versions: Vec<(String, u32)>,
    vips: Vec<String>,
}

/// The services the control plane lists.
fn list_services(url: &str) -> Vec<Listed> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = AdminClient::connect(url.to_owned()).await.unwrap();
        client
            .list_services(ListServicesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .services
            .into_iter()
            .map(|s| {
                let service = s.service.unwrap_or_default();
                Listed {
                    key: format!("{}/{}", service.namespace, service.name),
                    versions: s
                        .versions
                        .into_iter()
                        .map(|v| (v.version, v.ready_endpoints))
                        .collect(),
                    vips: service.vips,
                }
            })
            .collect()
    })
}

#[test]
fn pods_run_register_and_serve_by_name_and_down_removes_everything() {
    init_tracing();
    if skip_unless_root("pods_run_register_and_serve_by_name_and_down_removes_everything") {
        return;
    }
    let mesh = TestCluster::up(25110);
    let cluster = &mesh.cluster;
    let run_id = cluster.record().run_id.clone();
    assert!(!leftovers(&run_id).is_empty());

    cluster.create_namespace("shop", false).unwrap();
    cluster
        .run(&demo_pod("details-v1", "shop", "details", "v1", &[]))
        .unwrap();
    cluster
        .run(&demo_pod("reviews-v1", "shop", "reviews", "v1", &[]))
        .unwrap();
    cluster
        .run(&demo_pod("reviews-v2", "shop", "reviews", "v2", &[]))
        .unwrap();
    let productpage = cluster
        .run(&demo_pod(
            "productpage-v1",
            "shop",
            "productpage",
            "v1",
            &["details:9080", "reviews.shop:9080"],
        ))
        .unwrap();
    cluster
        .run(&demo_pod("client", "shop", "client", "v1", &[]))
        .unwrap();
    let pods = cluster.pods().unwrap();
    let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "details-v1",
            "reviews-v1",
            "reviews-v2",
            "productpage-v1",
            "client"
        ]
    );
    let reviews_vip = pods[1].vip;
    assert_eq!(pods[2].vip, reviews_vip, "one VIP per service");
    assert_ne!(productpage.vip, reviews_vip);

    // Names resolve to the VIP the control plane gave, in a pod started before the service.
    let resolved = cluster
        .exec(
            "details-v1",
            ["getent", "hosts", "reviews.shop.svc.cluster.local"],
        )
        .unwrap()
        .output()
        .unwrap();
    let resolved = String::from_utf8_lossy(&resolved.stdout);
    assert!(
        resolved.starts_with(&format!("{reviews_vip} ")),
        "{resolved}"
    );

    // The control plane, reached from the host through the forwarder, lists the workloads.
    let services = list_services(&cluster.control_plane_url());
    let reviews = services
        .iter()
        .find(|s| s.key == "shop/reviews")
        .expect("reviews listed");
    assert_eq!(
        reviews.versions,
        [("v1".to_owned(), 1), ("v2".to_owned(), 1)]
    );
    assert_eq!(reviews.vips, [reviews_vip.to_string()]);
    assert!(services.iter().any(|s| s.key == "shop/productpage"));
    let http = SocketAddr::from(([127, 0, 0, 1], cluster.record().http_port));
    assert_eq!(http_status(http, "/ready").unwrap(), 200);

    // Traffic from the client pod by service name reaches productpage, details and both reviews.
    let out = cluster
        .exec(
            "client",
            [
                demo_app().as_str(),
                "traffic",
                "--url",
                "http://productpage:9080/productpage",
                "--rate",
                "50",
                "--duration",
                "2s",
            ],
        )
        .unwrap()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = report["sent"].as_u64().unwrap();
    let versions = &report["versions"];
    assert!(sent >= 20, "{report}");
    assert_eq!(report["ok"].as_u64(), Some(sent), "{report}");
    assert_eq!(versions["productpage v1"].as_u64(), Some(sent), "{report}");
    assert_eq!(versions["details v1"].as_u64(), Some(sent), "{report}");
    let v1 = versions["reviews v1"].as_u64().unwrap_or(0);
    let v2 = versions["reviews v2"].as_u64().unwrap_or(0);
    assert_eq!(v1 + v2, sent, "{report}");
    assert!(v1 > 0 && v2 > 0, "both reviews versions answer: {report}");

    // Every app's output is in its log.
    let log = cluster.log_path("productpage-v1", LogStream::App).unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("request method=GET path=/productpage host=productpage:9080"),
        "{text}"
    );
    let err = cluster
        .log_path("productpage-v1", LogStream::Sidecar)
        .unwrap_err();
    assert!(err.to_string().contains("has no sidecar"), "{err}");

    // The control plane's pod has a log and takes exec too.
    let log = cluster
        .log_path(serin_local::cluster::CONTROL_PLANE_POD, LogStream::App)
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("serin-control serving"), "{text}");
    let out = cluster
        .exec(
            serin_local::cluster::CONTROL_PLANE_POD,
            ["ip", "-o", "-4", "addr", "show", "eth0"],
        )
        .unwrap()
        .output()
        .unwrap();
    let addr = cluster.record().control_plane_ip.unwrap().to_string();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&addr));

    // Removing a pod deregisters it.
    cluster.remove_pod("reviews-v2").unwrap();
    assert_eq!(cluster.pods().unwrap().len(), 4);
    eventually(
        "reviews v2 to leave the registry",
        Duration::from_secs(10),
        || {
            let services = list_services(&cluster.control_plane_url());
            let reviews = services.into_iter().find(|s| s.key == "shop/reviews")?;
            (!reviews.versions.iter().any(|(v, n)| v == "v2" && *n > 0)).then_some(())
        },
    );

    // Down removes every namespace, link, process and the state directory, and says so.
    let pids: Vec<u32> = cluster
        .pods()
        .unwrap()
        .iter()
        .map(|p| p.app_pid)
        .chain([cluster.record().agent_pid])
        .chain(cluster.record().control_plane_pid)
        .collect();
    let removed = Cluster::down(mesh.state_dir()).unwrap();
    tracing::info!(%removed, "down");
    assert!(!removed.after_crash);
    assert!(
        removed.namespaces.iter().any(|n| n.ends_with("-node")),
        "{removed}"
    );
    assert_eq!(
        removed.namespaces.len(),
        6,
        "5 pods and the control plane's: {removed}"
    );
    assert!(!removed.links.is_empty());
    assert_eq!(removed.registrations.len(), 4, "{removed}");
    assert!(removed.to_string().contains("state directory"), "{removed}");
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
    for pid in pids {
        assert!(!is_running(pid), "pid {pid} survived down");
    }
    assert!(!mesh.state_dir().exists());
    std::net::TcpListener::bind(("127.0.0.1", 25110)).expect("the forwarded port is free again");
    let again = Cluster::down(mesh.state_dir()).unwrap();
    assert!(again.is_empty(), "{again}");
    assert_eq!(again.to_string(), "no mesh was up; nothing to remove");
}

#[test]
fn up_twice_is_harmless() {
    init_tracing();
    if skip_unless_root("up_twice_is_harmless") {
        return;
    }
    // Two racing `up`s make one mesh.
    let dir = tempfile::tempdir().unwrap();
    let ups: Vec<_> = (0..2)
        .map(|_| {
            let options = options(dir.path(), 25120);
            std::thread::spawn(move || Cluster::up(&options))
        })
        .collect();
    let ups: Vec<_> = ups
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let mesh = TestCluster {
        cluster: ups[0].cluster.clone(),
        dir,
    };
    assert_eq!(ups.iter().filter(|u| u.created).count(), 1);
    assert_eq!(ups[0].cluster.record(), ups[1].cluster.record());
    let again = Cluster::up(&options(mesh.dir.path(), 25120)).unwrap();
    assert!(!again.created);
    assert!(again.to_string().contains("already up"), "{again}");
    assert_eq!(again.cluster.record(), mesh.cluster.record());
    let opened = Cluster::open(mesh.state_dir()).unwrap();
    assert_eq!(opened.record().run_id, mesh.cluster.record().run_id);
}

#[test]
fn down_after_a_crash_removes_the_leftovers() {
    init_tracing();
    if skip_unless_root("down_after_a_crash_removes_the_leftovers") {
        return;
    }
    let mesh = TestCluster::up(25130);
    let cluster = &mesh.cluster;
    let pod = cluster.run(&demo_pod(
        "reviews-v1",
        "default-plain",
        "reviews",
        "v1",
        &[],
    ));
    assert!(
        pod.unwrap_err()
            .to_string()
            .contains("namespace \"default-plain\" does not exist")
    );
    cluster.create_namespace("plain", false).unwrap();
    let pod = cluster
        .run(&demo_pod("reviews-v1", "plain", "reviews", "v1", &[]))
        .unwrap();
    let record = cluster.record().clone();

    // The agent dies without a chance to clean up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record.agent_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the agent to die", Duration::from_secs(5), || {
        (!is_running(record.agent_pid)).then_some(())
    });
    assert!(is_running(pod.app_pid), "the app outlives the agent");
    let err = Cluster::open(mesh.state_dir()).unwrap_err().to_string();
    assert!(err.contains("is gone: run `serinctl down`"), "{err}");

    let removed = Cluster::down(mesh.state_dir()).unwrap();
    tracing::info!(%removed, "down after crash");
    assert!(removed.after_crash, "{removed}");
    assert_eq!(
        removed.namespaces.len(),
        3,
        "node, control plane, reviews-v1: {removed}"
    );
    assert!(removed.errors.is_empty(), "{removed}");
    assert_eq!(leftovers(&record.run_id), Vec::<String>::new());
    assert!(!is_running(pod.app_pid));
    if let Some(pid) = record.control_plane_pid {
        assert!(!is_running(pid));
    }
    assert!(!mesh.state_dir().exists());
    assert!(
        !Path::new("/run/serin-local")
            .join(format!("{}.owner", record.run_id))
            .exists()
    );
    // And a new mesh comes up in the same directory.
    let up = Cluster::up(&options(mesh.dir.path(), 25130)).unwrap();
    assert!(up.created);
}

#[test]
fn run_rejects_bad_input_and_leaves_nothing_half_made() {
    init_tracing();
    if skip_unless_root("run_rejects_bad_input_and_leaves_nothing_half_made") {
        return;
    }
    let mesh = TestCluster::up(25140);
    let cluster = &mesh.cluster;
    cluster.create_namespace("plain", false).unwrap();
    cluster
        .run(&demo_pod("ok", "plain", "reviews", "v1", &[]))
        .unwrap();
    let run_id = cluster.record().run_id.clone();
    let before = leftovers(&run_id);

    let mut reserved = demo_pod("bad", "plain", "reviews", "v2", &[]);
    reserved.port = 15001;
    let mut zero = reserved.clone();
    zero.port = 0;
    let mut missing_path = demo_pod("bad", "plain", "reviews", "v2", &[]);
    missing_path.command = vec!["/nonexistent/app".into()];
    let mut missing_name = missing_path.clone();
    missing_name.command = vec!["no-such-command-serin".into()];
    let mut empty = missing_path.clone();
    empty.command.clear();
    let mut exits = missing_path.clone();
    exits.command = vec!["false".into()];
    let mut bad_service = demo_pod("bad", "plain", "Reviews_2", "v2", &[]);
    bad_service.port = 9080;
    let cases = [
        (
            reserved,
            "port 15001 of pod \"bad\" is taken: ports 15000-15099 belong to the sidecar",
        ),
        (zero, "port 0 of pod \"bad\" is taken"),
        (
            demo_pod("bad", "nowhere", "reviews", "v2", &[]),
            "namespace \"nowhere\" does not exist",
        ),
        (
            missing_path,
            "command \"/nonexistent/app\" of pod \"bad\" not found: no executable file",
        ),
        (
            missing_name,
            "command \"no-such-command-serin\" of pod \"bad\" not found: not in PATH",
        ),
        (empty, "pod \"bad\" has no command to run"),
        (exits, "app of pod \"bad\" not ready: it exited"),
        (
            demo_pod("ok", "plain", "reviews", "v2", &[]),
            "pod \"ok\" already exists",
        ),
        (
            demo_pod("serin-control", "plain", "reviews", "v2", &[]),
            "pod \"serin-control\" already exists",
        ),
        (
            demo_pod("Bad_Name", "plain", "reviews", "v2", &[]),
            "invalid pod name",
        ),
        (bad_service, "invalid service name"),
    ];
    for (spec, expected) in cases {
        let err = cluster.run(&spec).unwrap_err().to_string();
        assert!(err.contains(expected), "{spec:?}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
        assert_eq!(cluster.pods().unwrap().len(), 1, "{spec:?} left a pod");
        assert_eq!(leftovers(&run_id), before, "{spec:?} left something");
    }
    let err = cluster.exec("nope", ["true"]).unwrap_err().to_string();
    assert!(err.contains("no pod \"nope\""), "{err}");
    let err = cluster
        .log_path("nope", LogStream::App)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no pod \"nope\""), "{err}");
    let err = cluster.remove_pod("nope").unwrap_err().to_string();
    assert!(err.contains("no pod \"nope\""), "{err}");
    let err = cluster
        .exec("ok", Vec::<String>::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no command given"), "{err}");

    // An app that dies later is deregistered and shown as exited.
    let ok = cluster.pod("ok").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ok.app_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let exited = eventually(
        "the pod to be marked exited",
        Duration::from_secs(10),
        || cluster.pod("ok").unwrap().exited,
    );
    assert!(exited.contains("signal: 9"), "{exited}");
    let services = list_services(&cluster.control_plane_url());
    let reviews = services.iter().find(|s| s.key == "plain/reviews").unwrap();
    assert!(
        reviews.versions.iter().all(|(_, ready)| *ready == 0),
        "{reviews:?}"
    );
    assert!(pods_table(&cluster.pods().unwrap()).contains("exited: signal: 9"));
    cluster.remove_pod("ok").unwrap();
    assert!(cluster.pods().unwrap().is_empty());

    // An app that serves nothing runs when asked not to wait for its port.
    let mut idle = PodSpec::new("idle", "plain", "idle", "v1", 8080, ["sleep", "600"]);
    idle.wait_for_port = false;
    let pod = cluster.run(&idle).unwrap();
    assert!(is_running(pod.app_pid));
    assert_eq!(cluster.pods().unwrap().len(), 1);
}

#[test]
fn a_taken_host_port_fails_up_and_leaves_nothing() {
    init_tracing();
    if skip_unless_root("a_taken_host_port_fails_up_and_leaves_nothing") {
        return;
    }
    let _taken = std::net::TcpListener::bind(("127.0.0.1", 25151)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = Cluster::up(&options(dir.path(), 25150))
        .unwrap_err()
        .to_string();
    assert!(err.contains("127.0.0.1:25151 is taken"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    let state = dir.path().join("mesh");
    assert!(!state.join("cluster.json").exists());
    // The agent's log names the run it made; nothing of it is left.
    let log = std::fs::read_to_string(state.join("logs/agent.log")).unwrap();
    let run_id = log
        .split("run_id=")
        .nth(1)
        .and_then(|rest| rest.get(..6))
        .expect("the log names the run");
    assert_eq!(leftovers(run_id), Vec::<String>::new(), "{log}");
}

#[test]
fn the_agent_refuses_to_start_without_root() {
    init_tracing();
    if skip_unless_root("the_agent_refuses_to_start_without_root") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(bin_dir().join("serin-local-agent"))
        .arg("--state-dir")
        .arg(dir.path().join("mesh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
    assert!(!dir.path().join("mesh").exists());
}

/// The uid of `pid`, from /proc.
fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// What is seen inside an injected pod's namespace while `run` waits for its sidecar.
#[derive(Debug, Default)]
struct Observed {
    capture_rules: bool,
    sidecar_uid: Option<u32>,
    app_seen: bool,
}

#[test]
fn an_injected_pod_gets_capture_rules_and_a_sidecar_before_its_app() {
    init_tracing();
    if skip_unless_root("an_injected_pod_gets_capture_rules_and_a_sidecar_before_its_app") {
        return;
    }
    let mesh = TestCluster::up(25160);
    let cluster = &mesh.cluster;
    cluster.create_namespace("meshed", true).unwrap();
    let netns = format!("srn-{}-reviews-v1", cluster.record().run_id);

    // Watch the pod's namespace from outside while `run` sets it up.
    let watcher = std::thread::spawn(move || {
        let mut seen = Observed::default();
        serin_local::poll_until(Duration::from_secs(20), || {
            if !Path::new("/run/netns").join(&netns).exists() {
                return (seen.sidecar_uid.is_some() && seen.capture_rules).then_some(());
            }
            let rules = Command::new("ip")
                .args(["netns", "exec", &netns, "iptables-save", "-t", "nat"])
                .output()
                .ok()?;
            seen.capture_rules |= String::from_utf8_lossy(&rules.stdout).contains("SERIN_OUTPUT");
            let pids = Command::new("ip")
                .args(["netns", "pids", &netns])
                .output()
                .ok()?;
            for pid in String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let cmdline =
                    std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline.contains("serin-proxy") {
                    seen.sidecar_uid = uid_of(pid);
                }
                if cmdline.contains("serin-demo-app") {
                    seen.app_seen = true;
                }
            }
            None
        });
        seen
    });
    let result = cluster.run(&demo_pod("reviews-v1", "meshed", "reviews", "v1", &[]));
    match result {
        Ok(pod) => {
            // The sidecar got its config from the control plane and said ready.
            drop(watcher);
            let sidecar = pod.sidecar_pid.expect("an injected pod has a sidecar");
            assert_eq!(uid_of(sidecar), Some(1337));
            let rules = cluster
                .exec("reviews-v1", ["iptables-save", "-t", "nat"])
                .unwrap()
                .output()
                .unwrap();
            assert!(String::from_utf8_lossy(&rules.stdout).contains("SERIN_OUTPUT"));
            cluster.create_namespace("plain", false).unwrap();
            cluster
                .run(&demo_pod("client", "plain", "client", "v1", &[]))
                .unwrap();
            let out = cluster
                .exec(
                    "client",
                    [demo_app().as_str(), "get", "http://reviews.meshed:9080/"],
                )
                .unwrap()
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("\"version\":\"v1\""));
            let log = cluster.log_path("reviews-v1", LogStream::Sidecar).unwrap();
            assert!(log.is_file());
            // The sidecar lives on the control plane's mTLS port (its certificate came from
            // the registration made before it started), connected there.
            let dump = cluster
                .exec(
                    "reviews-v1",
                    [
                        demo_app().as_str(),
                        "get",
                        "http://127.0.0.1:15000/config_dump",
                    ],
                )
                .unwrap()
                .output()
                .unwrap();
            // `get` prints the status, then the body.
            let text = String::from_utf8_lossy(&dump.stdout);
            let body = text.split_once('\n').map_or("", |(_, body)| body);
            let dump: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
            let cp_ip = cluster.record().control_plane_ip.unwrap();
            assert_eq!(
                dump["discovery"]["controlPlane"],
                format!("https://{cp_ip}:15012"),
                "{dump:#}"
            );
            assert_eq!(dump["discovery"]["state"], "connected", "{dump:#}");
            // The trust bundle it checks that port by is public; the mesh's sidecars have no
            // other way in: Discovery on the plaintext port is refused.
            let bundle = std::fs::read_to_string(cluster.state_dir().join("trust-bundle.pem"))
                .expect("the control plane wrote its trust bundle");
            assert!(bundle.contains("BEGIN CERTIFICATE"));
            let cp_pid = cluster.record().control_plane_pid.unwrap();
            let cmdline = std::fs::read(format!("/proc/{cp_pid}/cmdline")).unwrap();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(cmdline.contains("--require-client-certs"), "{cmdline}");
        }
        Err(e) => {
            // Today's serin-proxy has no discovery client yet: with --control-plane it stays not
            // ready. That, and only that, is the accepted failure; it must be the clear timeout
            // error, the rules and the sidecar (as 1337) must have been there before any app,
            // and nothing of the pod may be left.
            let message = e.to_string();
            assert!(
                message.contains("sidecar of pod \"reviews-v1\" not ready: its /ready on port 15000 did not answer 200 within 5s"),
                "{message}"
            );
            let log = mesh.state_dir().join("logs/reviews-v1.sidecar.log");
            let sidecar_log = std::fs::read_to_string(&log).unwrap();
            assert!(
                sidecar_log.contains("discovery client is not implemented yet"),
                "the sidecar failed for another reason: {sidecar_log}"
            );
            let seen = watcher.join().unwrap();
            tracing::info!(?seen, "observed");
            assert!(seen.capture_rules, "capture rules were applied: {seen:?}");
            assert_eq!(seen.sidecar_uid, Some(1337), "{seen:?}");
            assert!(
                !seen.app_seen,
                "the app must not start before its sidecar is ready: {seen:?}"
            );
            assert!(
                !mesh.state_dir().join("logs/reviews-v1.app.log").exists(),
                "the app never started"
            );
            assert!(cluster.pods().unwrap().is_empty());
            let netns = format!("srn-{}-reviews-v1", cluster.record().run_id);
            assert!(!Path::new("/run/netns").join(netns).exists());
        }
    }
}

#[test]
fn bookinfo_answers_from_every_version_by_service_name() {
    init_tracing();
    if skip_unless_root("bookinfo_answers_from_every_version_by_service_name") {
        return;
    }
    let mesh = TestCluster::up(25170);
    let cluster = &mesh.cluster;
    cluster.create_namespace("bookinfo", false).unwrap();
    let demo = bin_dir().join("serin-demo-app");
    let pods = cluster
        .deploy(&Bookinfo::new("bookinfo", &demo).pods())
        .unwrap();
    assert_eq!(pods.len(), 7);
    let table = pods_table(&cluster.pods().unwrap());
    assert_eq!(table.lines().count(), 8, "{table}");
    assert!(table.contains("reviews-v3"), "{table}");

    let mut traffic = TrafficOptions::new(bookinfo::ENTRY_URL);
    traffic.rate = 60;
    traffic.duration = Duration::from_secs(3);
    let report = cluster
        .traffic(bookinfo::LOADGEN_POD, &demo, &traffic)
        .unwrap();
    tracing::info!(?report, "bookinfo traffic");
    assert!(report.sent >= 30, "{report:?}");
    assert_eq!(report.ok, report.sent, "{report:?}");
    assert_eq!(report.count("productpage", "v1"), report.sent);
    assert_eq!(report.count("details", "v1"), report.sent);
    let reviews: Vec<u64> = ["v1", "v2", "v3"]
        .iter()
        .map(|v| report.count("reviews", v))
        .collect();
    assert_eq!(reviews.iter().sum::<u64>(), report.sent, "{report:?}");
    assert!(
        reviews.iter().all(|&n| n > 0),
        "every reviews version answers: {report:?}"
    );
    assert_eq!(
        report.count("ratings", "v1"),
        reviews[1] + reviews[2],
        "only v2 and v3 call ratings"
    );
    assert!(report.failures.is_empty(), "{report:?}");

    // The same over h2c.
    traffic.http2 = true;
    traffic.duration = Duration::from_secs(1);
    let h2 = cluster
        .traffic(bookinfo::LOADGEN_POD, &demo, &traffic)
        .unwrap();
    assert!(h2.sent >= 10 && h2.ok == h2.sent, "{h2:?}");
    assert_eq!(h2.count("productpage", "v1"), h2.sent);

    // A deploy that fails half way removes what it started and keeps what ran before.
    let mut broken = Bookinfo::new("bookinfo", &demo).pods();
    for spec in &mut broken {
        spec.name = format!("{}-b", spec.name);
    }
    broken[2].command = vec!["/nonexistent/app".into()];
    let err = cluster.deploy(&broken).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/app"), "{err}");
    assert_eq!(cluster.pods().unwrap().len(), 7);
}

#[test]
fn sigterm_to_the_agent_removes_the_mesh() {
    init_tracing();
    if skip_unless_root("sigterm_to_the_agent_removes_the_mesh") {
        return;
    }
    let mesh = TestCluster::up(25180);
    let cluster = &mesh.cluster;
    cluster.create_namespace("plain", false).unwrap();
    let pod = cluster
        .run(&demo_pod("details-v1", "plain", "details", "v1", &[]))
        .unwrap();
    let record = cluster.record().clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record.agent_pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    eventually("the agent to exit", Duration::from_secs(20), || {
        (!is_running(record.agent_pid)).then_some(())
    });
    assert_eq!(leftovers(&record.run_id), Vec::<String>::new());
    assert!(!is_running(pod.app_pid));
    assert!(!mesh.state_dir().join("cluster.json").exists());
    let agent_log = std::fs::read_to_string(mesh.state_dir().join("logs/agent.log")).unwrap();
    assert!(agent_log.contains("signal=\"SIGTERM\""), "{agent_log}");
    assert!(agent_log.contains("removed local mesh"), "{agent_log}");
    // Nothing is left for down to do but the logs.
    let removed = Cluster::down(mesh.state_dir()).unwrap();
    assert!(removed.run_id.is_none(), "{removed}");
}

#[test]
fn open_without_a_mesh_says_to_run_up() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let err = Cluster::open(dir.path().join("mesh"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "no local mesh is up in {} (run `serinctl up` first)",
            dir.path().join("mesh").display()
        )
    );
}

#[test]
fn a_dead_control_plane_is_restarted_with_its_store() {
    init_tracing();
    if skip_unless_root("a_dead_control_plane_is_restarted_with_its_store") {
        return;
    }
    let mesh = TestCluster::up(25190);
    let cluster = &mesh.cluster;
    cluster.create_namespace("plain", false).unwrap();
    cluster
        .run(&demo_pod("details-v1", "plain", "details", "v1", &[]))
        .unwrap();
    let old = cluster.record().control_plane_pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(old as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut reopened = Cluster::open(mesh.state_dir()).unwrap();
    let new = eventually("a new control plane", Duration::from_secs(30), || {
        let pid = reopened.refresh().ok()?.control_plane_pid?;
        (pid != old && is_running(pid)).then_some(pid)
    });
    assert!(!is_running(old));
    // Through the same forwarded port, the new process serves what the store kept.
    let details = eventually("details listed again", Duration::from_secs(30), || {
        let services = list_services(&cluster.control_plane_url());
        services.into_iter().find(|s| s.key == "plain/details")
    });
    assert_eq!(details.versions, [("v1".to_owned(), 1)], "{details:?}");
    let removed = Cluster::down(mesh.state_dir()).unwrap();
    assert!(
        removed
            .processes
            .contains(&format!("pid {new} (control plane)")),
        "{removed}"
    );
    assert!(!is_running(new));
}

#[test]
fn down_copes_with_a_damaged_state_file() {
    init_tracing();
    if skip_unless_root("down_copes_with_a_damaged_state_file") {
        return;
    }
    // With the agent alive, down still reaches it through its socket.
    let mesh = TestCluster::up(25200);
    let record = mesh.cluster.record().clone();
    std::fs::write(mesh.state_dir().join("cluster.json"), "{damaged").unwrap();
    let removed = Cluster::down(mesh.state_dir()).unwrap();
    assert!(removed.errors[0].contains("was unreadable"), "{removed}");
    assert!(!removed.after_crash, "{removed}");
    eventually("the agent to exit", Duration::from_secs(10), || {
        (!is_running(record.agent_pid)).then_some(())
    });
    assert_eq!(leftovers(&record.run_id), Vec::<String>::new());
    assert!(!mesh.state_dir().exists());

    // With the agent dead too, the run id file names what to sweep.
    let up = Cluster::up(&options(mesh.dir.path(), 25200)).unwrap();
    let record = up.cluster.record().clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(record.agent_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually("the agent to die", Duration::from_secs(5), || {
        (!is_running(record.agent_pid)).then_some(())
    });
    std::fs::write(mesh.state_dir().join("cluster.json"), "").unwrap();
    let removed = Cluster::down(mesh.state_dir()).unwrap();
    assert!(removed.after_crash, "{removed}");
    assert_eq!(removed.run_id.as_deref(), Some(record.run_id.as_str()));
    assert_eq!(
        removed.namespaces.len(),
        2,
        "node and control plane: {removed}"
    );
    assert_eq!(leftovers(&record.run_id), Vec::<String>::new());
    assert!(!mesh.state_dir().exists());

    // And up over a damaged state file cleans up first, then makes a new mesh.
    let up = Cluster::up(&options(mesh.dir.path(), 25200)).unwrap();
    let record = up.cluster.record().clone();
    std::fs::write(mesh.state_dir().join("cluster.json"), "[]").unwrap();
    let again = Cluster::up(&options(mesh.dir.path(), 25200)).unwrap();
    assert!(again.created);
    assert_ne!(again.cluster.record().run_id, record.run_id);
    assert_eq!(leftovers(&record.run_id), Vec::<String>::new());
    assert!(!is_running(record.agent_pid));
}
