//! Root tests: nothing of a mesh is left once its guard drops (also when a test panics), and
//! `sweep` removes a crashed run's leftovers while sparing a live mesh.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::{Mesh, sweep};

/// What a mesh made, recorded while it lived, to check afterwards that all of it is gone.
#[derive(Debug, Clone, Default)]
struct Footprint {
    run_id: String,
    namespaces: Vec<String>,
    links: Vec<String>,
    pids: Vec<u32>,
}

impl Footprint {
    fn of(mesh: &Mesh, extra_pids: &[u32]) -> Self {
        let namespaces = mesh.namespaces();
        let links = mesh.links();
        // While the mesh lives, everything it lists exists.
        let listed = ip(&["netns", "list"]);
        for ns in &namespaces {
            assert!(listed.contains(ns.as_str()), "{ns} missing from: {listed}");
            assert!(etc_dir(ns).join("hosts").is_file());
        }
        let node_links = ip(&["-n", &mesh.node().to_string(), "-o", "link", "show"]);
        for link in &links {
            assert!(
                node_links.contains(link.as_str()),
                "{link} missing: {node_links}"
            );
        }
        let mut pids = mesh.processes();
        pids.extend(extra_pids);
        for &pid in &pids {
            assert!(
                is_running(pid),
                "process {pid} should run while the mesh lives"
            );
        }
        assert!(state_file(mesh.run_id()).is_file());
        Footprint {
            run_id: mesh.run_id().to_owned(),
            namespaces,
            links,
            pids,
        }
    }

    /// Checks, the way an operator would, that nothing of the run is left.
    fn assert_gone(&self) {
        let tag = format!("srn-{}", self.run_id);
        let namespaces = ip(&["netns", "list"]);
        assert!(!namespaces.contains(&tag), "namespaces left: {namespaces}");
        for ns in &self.namespaces {
            assert!(
                !Path::new("/run/netns").join(ns).exists(),
                "{ns} left in /run/netns"
            );
            assert!(!etc_dir(ns).exists(), "{} left", etc_dir(ns).display());
        }
        let links = ip(&["-o", "link", "show"]);
        assert!(
            !links.contains(&tag),
            "links left in the host namespace: {links}"
        );
        for &pid in &self.pids {
            assert!(!is_running(pid), "process {pid} still runs");
        }
        assert!(!state_file(&self.run_id).exists(), "state file left");
        assert!(!self.links.is_empty() && !self.namespaces.is_empty());
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn etc_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

fn state_file(run_id: &str) -> PathBuf {
    Path::new("/run/serin-local").join(format!("{run_id}.owner"))
}

/// Whether `pid` exists and is not a zombie.
fn is_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

/// Starts, in `pod`, a shell that runs a `sleep` in the background; returns the sleep's pid (a
/// grandchild the mesh never tracked).
fn spawn_grandchild(pod: &serin_local::Pod) -> u32 {
    let shell = pod
        .exec(["sh", "-c", "sleep 1000 & echo $!; wait"])
        .stdout(serin_local::Redirect::Piped)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(shell.take_stdout().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().parse().unwrap()
}

#[test]
fn dropping_the_mesh_leaves_nothing_behind() {
    init_tracing();
    if skip_unless_root("dropping_the_mesh_leaves_nothing_behind") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let a = mesh.add_pod("a").unwrap();
    let b = mesh.add_pod("b").unwrap();
    let _tracked = b.exec(["sleep", "1000"]).spawn().unwrap();
    let _app = a.spawn_as(1337, 1337, ["sleep", "1000"]).unwrap();
    let grandchild = spawn_grandchild(&a);
    // A process started behind the mesh's back, with plain `ip netns exec`.
    let mut stranger = Command::new("ip")
        .args(["netns", "exec", b.netns().name(), "sleep", "1000"])
        .spawn()
        .unwrap();
    eventually("the stranger to enter b", Duration::from_secs(5), || {
        ip(&["netns", "pids", b.netns().name()])
            .split_whitespace()
            .any(|p| p == stranger.id().to_string())
            .then_some(())
    });
    let footprint = Footprint::of(&mesh, &[grandchild, stranger.id()]);
    assert_eq!(footprint.namespaces.len(), 3);
    assert_eq!(footprint.links.len(), 3);

    drop(mesh);

    // Our own untracked child was killed; reap it before checking.
    let status = stranger.wait().unwrap();
    assert!(!status.success(), "the stranger was killed: {status}");
    footprint.assert_gone();
    assert!(a.exec(["true"]).run().is_err(), "pod handles are dead");
}

#[test]
fn a_panic_half_way_leaves_nothing_behind() {
    init_tracing();
    if skip_unless_root("a_panic_half_way_leaves_nothing_behind") {
        return;
    }
    let footprint = Arc::new(Mutex::new(None));
    let recorded = Arc::clone(&footprint);
    let result = std::panic::catch_unwind(move || {
        let mesh = Mesh::create().unwrap();
        let pod = mesh.add_pod("a").unwrap();
        let _server = pod.exec(["sleep", "1000"]).spawn().unwrap();
        let grandchild = spawn_grandchild(&pod);
        *recorded.lock().unwrap() = Some(Footprint::of(&mesh, &[grandchild]));
        panic!("the test fails half-way");
    });
    assert!(result.is_err(), "the closure panicked");
    let footprint = footprint.lock().unwrap().take().unwrap();
    footprint.assert_gone();
}

#[test]
fn teardown_reports_success_and_is_final() {
    init_tracing();
    if skip_unless_root("teardown_reports_success_and_is_final") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let pod = mesh.add_pod("a").unwrap();
    let _server = pod.exec(["sleep", "1000"]).spawn().unwrap();
    let footprint = Footprint::of(&mesh, &[]);
    mesh.teardown().unwrap();
    footprint.assert_gone();
}

/// The environment variable that turns [`crashed_run`] into the child that builds a mesh and dies.
const CRASH_CHILD: &str = "SERIN_LOCAL_CRASH_CHILD";

/// Run by `sweep_removes_crashed_runs_and_spares_live_ones` in a child process: builds a mesh with
/// a running process, reports it, forgets the guard, and waits to be killed. A no-op otherwise.
#[test]
fn crashed_run() {
    if std::env::var_os(CRASH_CHILD).is_none() {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let pod = mesh.add_pod("a").unwrap();
    let sleeper = pod
        .exec(["sleep", "1000"])
        .stdout(serin_local::Redirect::Null)
        .spawn()
        .unwrap();
    println!("CRASHED-RUN {} {}", mesh.run_id(), sleeper.id());
    std::mem::forget(mesh);
    // Block until the parent kills this process (it never writes to our stdin).
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn sweep_removes_crashed_runs_and_spares_live_ones() {
    init_tracing();
    if skip_unless_root("sweep_removes_crashed_runs_and_spares_live_ones") {
        return;
    }
    let live = Mesh::create().unwrap();
    let live_pod = live.add_pod("a").unwrap();
    let _live_process = live_pod.exec(["sleep", "1000"]).spawn().unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crashed_run", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let report_line = lines
        .map(Result::unwrap)
        .find_map(|l| Some(l.split_once("CRASHED-RUN ")?.1.to_owned()))
        .expect("the child reports its run");
    // libtest prints `test crashed_run ... ` before the line, so it is found by its marker.
    let mut fields = report_line.split_whitespace();
    let crashed_run: String = fields.next().unwrap().to_owned();
    let sleeper: u32 = fields.next().unwrap().parse().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    // The crash left its namespaces, state file and process behind.
    let crashed_namespaces = [
        format!("srn-{crashed_run}-a"),
        format!("srn-{crashed_run}-node"),
    ];
    let listed = ip(&["netns", "list"]);
    for ns in &crashed_namespaces {
        assert!(
            listed.contains(ns.as_str()),
            "{ns} should be left over: {listed}"
        );
    }
    assert!(is_running(sleeper));
    assert!(state_file(&crashed_run).is_file());

    let report = sweep().unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(report.runs.contains(&crashed_run), "{report:?}");
    for ns in &crashed_namespaces {
        assert!(report.namespaces.contains(ns), "{ns} not in {report:?}");
        assert!(report.etc_dirs.contains(&etc_dir(ns)), "{report:?}");
    }
    assert!(report.processes.contains(&sleeper), "{report:?}");
    assert!(report.state_files.contains(&state_file(&crashed_run)));
    Footprint {
        run_id: crashed_run,
        namespaces: crashed_namespaces.to_vec(),
        links: vec!["(inside the deleted node namespace)".to_owned()],
        pids: vec![sleeper],
    }
    .assert_gone();

    // The live mesh is untouched and still works.
    assert!(!report.runs.iter().any(|r| r == live.run_id()));
    let listed = ip(&["netns", "list"]);
    for ns in live.namespaces() {
        assert!(listed.contains(&ns), "sweep removed live {ns}");
    }
    assert!(state_file(live.run_id()).is_file());
    assert_eq!(live.processes().len(), 1);
    assert_eq!(live_pod.exec(["id", "-u"]).run().unwrap(), "0\n");
    let footprint = Footprint::of(&live, &[]);
    drop(live);
    footprint.assert_gone();
}
