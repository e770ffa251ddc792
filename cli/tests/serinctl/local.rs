//! The local-mesh verbs through the `serinctl` binary alone: `up`, `namespace create`, `run`,
//! `pods`, `exec`, `logs`, `down` and `demo`, with the real agent, control plane, demo app (and
//! sidecar, for injected pods) from the target directory. Root only (they skip, saying why,
//! otherwise) except the privilege check itself. Each test has its own state directory
//! (`SERIN_STATE_DIR`) and host ports 253x0, so tests run in parallel and never touch a
//! developer's mesh on 15010/15080.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{one_error_line, serinctl_bin, tracing};

/// The serin-demo-app binary, built beside serinctl.
pub(crate) fn demo_app() -> String {
    let path = serinctl_bin().with_file_name("serin-demo-app");
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path.display().to_string()
}

/// Whether this test may run (root), printing why not.
pub(crate) fn skip_unless_root(test: &str) -> bool {
    serin_local::testing::skip_unless_root(test)
}

/// A local mesh in its own state directory, brought down when the test ends (even by a panic).
pub(crate) struct TestMesh {
    dir: tempfile::TempDir,
    run_id: Option<String>,
}

impl TestMesh {
    pub(crate) fn new() -> TestMesh {
        tracing();
        TestMesh {
            dir: tempfile::tempdir().unwrap(),
            run_id: None,
        }
    }

    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir.path().join("mesh")
    }

    /// `serinctl ARGS` with this mesh's state directory.
    pub(crate) fn ctl(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        tracing::info!(
            ?args,
            status = %out.status,
            stdout = %String::from_utf8_lossy(&out.stdout),
            stderr = %String::from_utf8_lossy(&out.stderr),
            "serinctl"
        );
        out
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(serinctl_bin());
        cmd.args(args)
            .env("SERIN_STATE_DIR", self.state_dir())
            .env_remove("SERIN_CONTROL_PLANE")
            .stdin(Stdio::null());
        cmd
    }

    /// `serinctl ARGS`, which must succeed; its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "serinctl {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `serinctl up` on host ports `grpc` and `grpc + 1`; remembers the run id.
    pub(crate) fn up(&mut self, grpc: u16) -> String {
        let (g, h) = (grpc.to_string(), (grpc + 1).to_string());
        let out = self.ok(&["up", "--grpc-port", &g, "--http-port", &h]);
        self.run_id = Some(run_id_of(&out));
        out
    }

    pub(crate) fn run_id(&self) -> &str {
        self.run_id.as_deref().expect("up first")
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        let out = self.command(&["down"]).output();
        if let Ok(out) = out
            && !out.status.success()
        {
            tracing::error!(stderr = %String::from_utf8_lossy(&out.stderr), "down in the test guard failed");
        }
    }
}

/// The run id in `local mesh RUNID up: ...`.
fn run_id_of(up: &str) -> String {
    up.strip_prefix("local mesh ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in {up}"))
        .to_owned()
}

/// Network namespaces, links and hosts-file directories whose name carries `run_id`.
pub(crate) fn leftovers(run_id: &str) -> Vec<String> {
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
    if let Ok(entries) = std::fs::read_dir("/etc/netns") {
        for entry in entries {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(&tag) {
                found.push(format!("/etc/netns/{name}"));
            }
        }
    }
    found
}

/// The namespace of pod `pod` of run `run_id`, if it exists.
fn pod_netns_exists(run_id: &str, pod: &str) -> bool {
    Path::new("/run/netns")
        .join(format!("srn-{run_id}-{pod}"))
        .exists()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn walk_through_up_run_pods_exec_logs_down() {
    if skip_unless_root("walk_through_up_run_pods_exec_logs_down") {
        return;
    }
    let mut mesh = TestMesh::new();
    let app = demo_app();

    // up, and up again (harmless).
    let up = mesh.up(25310);
    assert!(
        up.contains(
            "up: control plane http://127.0.0.1:25310, dashboard http://127.0.0.1:25311, state in "
        ),
        "{up}"
    );
    assert!(up.contains("pod serin-control at 10.244."), "{up}");
    assert!(up.contains("namespace default (injection enabled)"), "{up}");
    let again = mesh.ok(&["up", "--grpc-port", "25310", "--http-port", "25311"]);
    assert!(
        again.starts_with(&format!("local mesh {} already up", mesh.run_id())),
        "{again}"
    );
    assert!(again.contains("0 pod(s) running"), "{again}");
    assert_eq!(
        mesh.ok(&["pods"]),
        format!(
            "no pods in local mesh {} (start one with `serinctl run`)\n",
            mesh.run_id()
        )
    );

    // A namespace without injection, then two versions of a service and a client.
    assert_eq!(
        mesh.ok(&["namespace", "create", "shop", "--injection", "disabled"]),
        "namespace/shop created (injection disabled)\n"
    );
    assert_eq!(
        mesh.ok(&["namespace", "create", "shop", "--injection", "disabled"]),
        "namespace/shop unchanged (injection disabled)\n"
    );
    for version in ["v1", "v2"] {
        let name = format!("reviews-{version}");
        let out = mesh.ok(&[
            "run",
            &name,
            "--namespace",
            "shop",
            "--service",
            "reviews",
            "--version",
            version,
            "--port",
            "9080",
            "--",
            &app,
            "--port",
            "9080",
        ]);
        assert!(
            out.starts_with(&format!(
                "pod/{name} running in namespace shop: reviews {version} at 10.244."
            )),
            "{out}"
        );
        assert!(out.contains("no sidecar"), "{out}");
    }
    mesh.ok(&[
        "-n",
        "shop",
        "run",
        "client",
        "--service",
        "client",
        "--version",
        "v1",
        "--port",
        "8080",
        "--",
        &app,
        "--port",
        "8080",
    ]);

    // pods lists them.
    let table = mesh.ok(&["pods"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    for (pod, service, version) in [
        ("reviews-v1", "reviews", "v1"),
        ("reviews-v2", "reviews", "v2"),
        ("client", "client", "v1"),
    ] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(&format!("{pod} ")))
            .unwrap_or_else(|| panic!("{pod} missing: {table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cells[1..4], ["shop", service, version], "{row}");
        assert!(row.ends_with("running"), "{row}");
    }

    // exec: the client reaches the service by name, and both versions answer.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {seen:?} answered within 30 s"
        );
        let out = mesh.ctl(&["exec", "client", "--", &app, "get", "http://reviews:9080/"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `serin-demo-app get` prints the status, then the body.
        let text = stdout(&out);
        let (status, body) = text.split_once('\n').unwrap();
        assert_eq!(status, "200", "{text}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["service"], "reviews", "{body}");
        seen.insert(body["version"].as_str().unwrap().to_owned());
    }
    let full = mesh.ok(&[
        "exec",
        "client",
        "--",
        &app,
        "get",
        "http://reviews.shop.svc.cluster.local:9080/hello",
    ]);
    assert!(full.contains("\"path\":\"/hello\""), "{full}");
    if Command::new("curl").arg("--version").output().is_ok() {
        let out = mesh.ok(&[
            "exec",
            "client",
            "--",
            "curl",
            "-sS",
            "-H",
            "end-user: jason",
            "http://reviews.shop:9080/via-curl",
        ]);
        assert!(out.contains("\"path\":\"/via-curl\""), "{out}");
    } else {
        eprintln!("curl is not installed: exec checked with serin-demo-app's client mode only");
    }
    // exec exits with the command's code and adds nothing to what the command said.
    let out = mesh.ctl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        "echo inside >&2; exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "inside\n");
    // In the pod's network namespace: its own address, not the host's.
    let addr = mesh.ok(&[
        "exec", "client", "--", "ip", "-4", "-o", "addr", "show", "eth0",
    ]);
    assert!(addr.contains("inet 10.244."), "{addr}");

    // logs: the app's log has the requests it served; a pod without sidecar has no sidecar log.
    let log = mesh.ok(&["logs", "reviews-v1"]);
    assert!(log.contains("path=/"), "{log}");
    let err = one_error_line(&mesh.ctl(&["logs", "reviews-v1", "--sidecar"]));
    assert!(err.contains("has no sidecar"), "{err}");
    let control = mesh.ok(&["logs", "serin-control"]);
    assert!(!control.is_empty());

    // logs -f prints what is appended (and, below, stops once the pod is gone).
    let mut follow = mesh
        .command(&["logs", "-f", "reviews-v2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let followed = lines_of(follow.stdout.take().unwrap());
    let mut got = false;
    for _ in 0..40 {
        mesh.ok(&[
            "exec",
            "client",
            "--",
            &app,
            "get",
            "http://reviews:9080/followed",
        ]);
        if std::iter::from_fn(|| followed.recv_timeout(Duration::from_millis(500)).ok())
            .any(|line| line.contains("path=/followed"))
        {
            got = true;
            break;
        }
    }
    assert!(got, "logs -f never printed a request to reviews-v2");

    // down removes every namespace, link and process, and the state directory.
    let run_id = mesh.run_id().to_owned();
    assert!(!leftovers(&run_id).is_empty());
    let down = mesh.ok(&["down"]);
    assert!(
        down.starts_with(&format!("removed local mesh {run_id}:")),
        "{down}"
    );
    assert!(down.contains("namespace(s)"), "{down}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = follow.kill();
            panic!("logs -f still running 10 s after down");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(err, "serinctl: pod reviews-v2 is gone: stopped following\n");
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
    assert!(!mesh.state_dir().exists());
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!stdout(&netns).contains(&run_id), "{}", stdout(&netns));
    assert!(std::net::TcpStream::connect(("127.0.0.1", 25310)).is_err());
    let err = one_error_line(&mesh.ctl(&["pods"]));
    assert!(err.contains("no local mesh is up in"), "{err}");
    assert_eq!(
        mesh.ok(&["down"]),
        "no mesh was up; nothing to remove\n",
        "down twice is harmless"
    );
}

/// The lines a child writes, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn bad_input_fails_in_one_line_and_leaves_nothing_half_made() {
    if skip_unless_root("bad_input_fails_in_one_line_and_leaves_nothing_half_made") {
        return;
    }
    let mut mesh = TestMesh::new();
    let app = demo_app();
    let err = one_error_line(&mesh.ctl(&["pods"]));
    assert!(
        err.contains("no local mesh is up in") && err.contains("run `serinctl up` first"),
        "{err}"
    );
    let err = one_error_line(&mesh.ctl(&[
        "run",
        "web",
        "--service",
        "web",
        "--version",
        "v1",
        "--port",
        "8080",
        "--",
        &app,
    ]));
    assert!(err.contains("no local mesh is up"), "{err}");
    mesh.up(25330);
    let run_id = mesh.run_id().to_owned();
    mesh.ok(&["namespace", "create", "plain", "--injection", "disabled"]);
    let run = |name: &str, ns: &str, port: &str, command: &[&str]| {
        let mut args = vec![
            "run",
            name,
            "-n",
            ns,
            "--service",
            "web",
            "--version",
            "v1",
            "--port",
            port,
            "--",
        ];
        args.extend_from_slice(command);
        mesh.ctl(&args)
    };

    // Ports of the sidecar and the control plane, and port 0.
    for port in ["15000", "15001", "15099", "0"] {
        let err = one_error_line(&run("web", "plain", port, &[&app, "--port", port]));
        assert!(
            err.contains(&format!("port {port} of pod \"web\" is taken")),
            "{err}"
        );
    }
    // An app that exits instead of listening on its port: its last words, and the pod goes.
    let err = one_error_line(&run("web", "plain", "8080", &[&app, "--port", "99999"]));
    assert!(err.contains("app of pod \"web\" not ready"), "{err}");
    // An unknown namespace.
    let err = one_error_line(&run("web", "nowhere", "8080", &[&app, "--port", "8080"]));
    assert_eq!(
        err,
        "serinctl: namespace \"nowhere\" does not exist (create it with `serinctl namespace create nowhere`)"
    );
    // No command, and a command that does not exist.
    let out = run("web", "plain", "8080", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = one_error_line(&out);
    assert!(err.contains("CMD"), "{err}");
    let err = one_error_line(&run("web", "plain", "8080", &["/nonexistent/app"]));
    assert!(
        err.contains("command \"/nonexistent/app\" of pod \"web\" not found"),
        "{err}"
    );
    // A bad pod name, a bad --env.
    let err = one_error_line(&run("Web_1", "plain", "8080", &[&app, "--port", "8080"]));
    assert!(err.contains("invalid pod name \"Web_1\""), "{err}");
    let err = one_error_line(&mesh.ctl(&[
        "run",
        "web",
        "-n",
        "plain",
        "--service",
        "web",
        "--version",
        "v1",
        "--port",
        "8080",
        "--env",
        "NOVALUE",
        "--",
        &app,
    ]));
    assert!(
        err.contains("--env \"NOVALUE\": expected NAME=VALUE"),
        "{err}"
    );
    // None of it left a pod or a namespace behind.
    assert!(stdout(&mesh.ctl(&["pods"])).starts_with("no pods in local mesh"));
    for pod in ["web", "Web_1"] {
        assert!(!pod_netns_exists(&run_id, pod), "{pod} left its namespace");
    }

    // A duplicate pod.
    mesh.ok(&[
        "run",
        "web",
        "-n",
        "plain",
        "--service",
        "web",
        "--version",
        "v1",
        "--port",
        "8080",
        "--",
        &app,
        "--port",
        "8080",
    ]);
    let err = one_error_line(&run("web", "plain", "8081", &[&app, "--port", "8081"]));
    assert!(err.contains("pod \"web\" already exists"), "{err}");
    assert_eq!(stdout(&mesh.ctl(&["pods"])).lines().count(), 2);

    // exec: a missing pod, no command; logs: a missing pod.
    let err = one_error_line(&mesh.ctl(&["exec", "ghost", "--", "true"]));
    assert_eq!(err, format!("serinctl: no pod \"ghost\" in mesh {run_id}"));
    let out = mesh.ctl(&["exec", "web"]);
    assert_eq!(out.status.code(), Some(2));
    one_error_line(&out);
    let err = one_error_line(&mesh.ctl(&["logs", "ghost"]));
    assert_eq!(err, format!("serinctl: no pod \"ghost\" in mesh {run_id}"));
    let err = one_error_line(&mesh.ctl(&["namespace", "create", "Bad_Name"]));
    assert!(err.contains("namespace name"), "{err}");

    // A host port already taken: `up` in another state directory fails and leaves nothing.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 25341)).unwrap();
    let other = TestMesh::new();
    let err = one_error_line(&other.ctl(&["up", "--grpc-port", "25340", "--http-port", "25341"]));
    assert!(err.contains("127.0.0.1:25341 is taken"), "{err}");
    assert!(!other.state_dir().join("cluster.json").exists());
    let log = std::fs::read_to_string(other.state_dir().join("logs/agent.log")).unwrap();
    let other_run = log
        .split("run_id=")
        .nth(1)
        .and_then(|rest| rest.get(..6))
        .expect("the agent's log names its run");
    assert_eq!(leftovers(other_run), Vec::<String>::new(), "{log}");
    drop(taken);

    mesh.ok(&["down"]);
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
}

#[test]
fn verbs_that_need_root_say_so_in_one_line() {
    tracing();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mesh");
    // As root, drop to nobody with setpriv; otherwise this process is already unprivileged.
    let as_nobody = serin_local::is_privileged();
    let bin = if as_nobody {
        // nobody may not be able to traverse the target directory: run a copy it can reach.
        let copy = dir.path().join("serinctl");
        std::fs::copy(serinctl_bin(), &copy).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    } else {
        serinctl_bin()
    };
    let cases: [(&str, Vec<&str>); 6] = [
        ("up", vec!["up"]),
        ("down", vec!["down"]),
        ("namespace create", vec!["namespace", "create", "shop"]),
        (
            "run",
            vec![
                "run",
                "web",
                "--service",
                "web",
                "--version",
                "v1",
                "--port",
                "8080",
                "--",
                "true",
            ],
        ),
        ("exec", vec!["exec", "web", "--", "true"]),
        ("demo", vec!["demo"]),
    ];
    for (verb, args) in cases {
        let mut cmd = if as_nobody {
            let mut cmd = Command::new("setpriv");
            cmd.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ])
            .arg(&bin);
            cmd
        } else {
            Command::new(&bin)
        };
        let out = cmd
            .args(&args)
            .env("SERIN_STATE_DIR", &state)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = one_error_line(&out);
        assert_eq!(
            err,
            format!(
                "serinctl: {verb} needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): run it with sudo"
            )
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty());
    }
    assert!(!state.exists(), "nothing made without root");
}

#[test]
fn a_missing_binary_says_how_to_build_it() {
    if skip_unless_root("a_missing_binary_says_how_to_build_it") {
        return;
    }
    tracing();
    let dir = tempfile::tempdir().unwrap();
    let lonely = dir.path().join("serinctl");
    std::fs::copy(serinctl_bin(), &lonely).unwrap();
    let state = dir.path().join("mesh");
    for verb in ["up", "demo"] {
        let out = Command::new(&lonely)
            .arg(verb)
            .env("SERIN_STATE_DIR", &state)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = one_error_line(&out);
        assert_eq!(
            err,
            format!(
                "serinctl: serin-local-agent not found at {}: serinctl runs the binaries beside it; build them all with `cargo build --release --workspace --bins`",
                dir.path().join("serin-local-agent").display()
            )
        );
    }
    assert!(!state.exists());
}

#[test]
fn injected_pods_get_a_sidecar_and_reach_each_other_through_it() {
    if skip_unless_root("injected_pods_get_a_sidecar_and_reach_each_other_through_it") {
        return;
    }
    let mut mesh = TestMesh::new();
    let app = demo_app();
    mesh.up(25350);
    let run_id = mesh.run_id().to_owned();
    assert_eq!(
        mesh.ok(&["namespace", "create", "meshed"]),
        "namespace/meshed created (injection enabled)\n",
        "injection is on unless --injection disabled"
    );
    for (pod, service) in [("web", "web"), ("caller", "caller")] {
        let line = mesh.ok(&[
            "run",
            pod,
            "-n",
            "meshed",
            "--service",
            service,
            "--version",
            "v1",
            "--port",
            "8080",
            "--",
            &app,
            "--port",
            "8080",
        ]);
        assert!(line.contains(", sidecar pid "), "{line}");
    }
    let table = mesh.ok(&["pods"]);
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l.contains(" pid ") && l.ends_with("running")),
        "{table}"
    );
    // The capture rules are in the pod, and a call by name goes out through the caller's sidecar
    // and in through web's.
    let rules = mesh.ok(&["exec", "web", "--", "iptables-save", "-t", "nat"]);
    assert!(rules.contains("SERIN_OUTPUT"), "{rules}");
    let body = mesh.ok(&[
        "exec",
        "caller",
        "--",
        &app,
        "get",
        "http://web.meshed:8080/meshed",
    ]);
    assert!(body.contains("\"pod\":\"web\""), "{body}");
    let metrics = mesh.ok(&[
        "exec",
        "web",
        "--",
        &app,
        "get",
        "http://127.0.0.1:15000/metrics",
    ]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("serin_requests_total{direction=\"inbound\"")
                && l.contains("source_workload=\"caller\"")
        ),
        "{metrics}"
    );
    let sidecar = mesh.ok(&["logs", "web", "--sidecar"]);
    assert!(sidecar.contains("config applied"), "{sidecar}");
    assert!(
        !sidecar.contains('\u{1b}'),
        "no colours into a pipe: {sidecar}"
    );
    mesh.ok(&["down"]);
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
}

/// A running `serinctl demo`: its stdout so far, the rest to come.
struct RunningDemo {
    child: std::process::Child,
    seen: Vec<String>,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl RunningDemo {
    /// Starts `serinctl demo ARGS` and waits (with a deadline) for its first round of traffic.
    fn start(mesh: &TestMesh, args: &[&str]) -> RunningDemo {
        let mut cmd = mesh.command(&["demo"]);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let errors = lines_of(child.stderr.take().unwrap());
        let mut demo = RunningDemo {
            child,
            seen: Vec::new(),
            lines,
            errors,
        };
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Ok(line) = demo.lines.recv_timeout(Duration::from_millis(200)) {
                let round = line.starts_with('[') && line.contains(" sent, ");
                demo.seen.push(line);
                if round {
                    return demo;
                }
            } else if let Some(status) = demo.child.try_wait().unwrap() {
                let errors: Vec<String> = demo.errors.try_iter().collect();
                panic!(
                    "demo exited with {status} before any traffic: {errors:#?} {:#?}",
                    demo.seen
                );
            }
            if Instant::now() > deadline {
                demo.signal("-INT");
                let _ = demo.child.wait();
                panic!("no traffic from the demo in 240 s: {:#?}", demo.seen);
            }
        }
    }

    fn output(&self) -> String {
        self.seen.join("\n")
    }

    fn signal(&self, signal: &str) {
        Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// Sends `signal`, waits (with a deadline) for the demo to exit and returns the rest of its
    /// stdout, asserting that it exited 0 and printed nothing on stderr.
    fn stop(mut self, signal: &str) -> Vec<String> {
        self.signal(signal);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "demo still running 60 s after {signal}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let rest: Vec<String> = self.lines.iter().collect();
        let errors: Vec<String> = self.errors.iter().collect();
        assert!(status.success(), "{status}: {errors:#?} {rest:#?}");
        assert_eq!(errors, Vec::<String>::new());
        rest
    }
}

#[test]
fn demo_runs_bookinfo_with_traffic_until_interrupted_then_removes_everything() {
    if skip_unless_root("demo_runs_bookinfo_with_traffic_until_interrupted_then_removes_everything")
    {
        return;
    }
    let mesh = TestMesh::new();
    let demo = RunningDemo::start(
        &mesh,
        &[
            "-n",
            "shop",
            "--grpc-port",
            "25360",
            "--http-port",
            "25361",
            "--rate",
            "5",
        ],
    );
    let output = demo.output();
    let run_id = run_id_of(&demo.seen[0]);
    assert!(
        demo.seen[0]
            .contains("up: control plane http://127.0.0.1:25360, dashboard http://127.0.0.1:25361"),
        "{output}"
    );
    assert!(
        output.contains("namespace/shop with injection enabled"),
        "{output}"
    );
    for pod in [
        "ratings-v1",
        "details-v1",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
        "productpage-v1",
        "loadgen",
    ] {
        assert!(
            output.contains(&format!("pod/{pod} running in namespace shop")),
            "{output}"
        );
    }
    assert!(
        output.contains("policy/reviews applied (generation 1)"),
        "{output}"
    );
    assert!(
        output.contains("Dashboard: http://127.0.0.1:25361"),
        "{output}"
    );
    let ctl = "serinctl --control-plane http://127.0.0.1:25360 -n shop";
    for step in [
        format!("{ctl} canary reviews v2 --weight 20"),
        format!("{ctl} canary reviews v2 --weight 80"),
        format!("{ctl} route reviews v3 --cookie uid=alice"),
        format!("{ctl} route reviews v3 --header end-user=jason"),
        format!("{ctl} route reviews v3 --uri-prefix /beta"),
        format!("{ctl} route reviews v3 --os ios,ipados,android"),
        format!("{ctl} mirror reviews v3 --percent 50"),
        format!("{ctl} promote reviews v2"),
        format!("{ctl} rollback reviews"),
        format!("{ctl} top"),
        format!("{ctl} status"),
    ] {
        assert!(output.contains(&step), "no `{step}` in the guide: {output}");
    }
    // A round counts the answers of every service in the call tree; all of them succeed.
    let round = demo.seen.last().unwrap();
    assert!(round.contains(" 0 failed | productpage v1 "), "{round}");
    assert!(
        round.contains("| details v1 ") && round.contains("| reviews v"),
        "{round}"
    );
    let pods = mesh.ok(&["pods"]);
    assert_eq!(pods.lines().count(), 8, "{pods}");
    assert!(
        pods.lines()
            .skip(1)
            .all(|l| l.contains("pid ") && l.ends_with("running")),
        "{pods}"
    );
    // The policy the guide starts from is in the control plane, and the guide's commands work.
    let url = "http://127.0.0.1:25360";
    let canary = mesh.ok(&[
        "--control-plane",
        url,
        "-n",
        "shop",
        "canary",
        "reviews",
        "v2",
        "--weight",
        "20",
    ]);
    assert!(canary.contains("default v1 80%, v2 20%"), "{canary}");

    let rest = demo.stop("-INT");
    assert!(
        rest.iter()
            .any(|l| l.starts_with(&format!("removed local mesh {run_id}:"))),
        "{rest:#?}"
    );
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
    assert!(!mesh.state_dir().exists());
}

#[test]
fn demo_in_a_mesh_already_up_removes_only_its_pods_on_sigterm() {
    if skip_unless_root("demo_in_a_mesh_already_up_removes_only_its_pods_on_sigterm") {
        return;
    }
    let mut mesh = TestMesh::new();
    mesh.up(25370);
    let run_id = mesh.run_id().to_owned();
    let demo = RunningDemo::start(&mesh, &["--grpc-port", "25370", "--http-port", "25371"]);
    assert!(
        demo.seen[0].starts_with(&format!("local mesh {run_id} already up")),
        "{:#?}",
        demo.seen
    );
    let rest = demo.stop("-TERM");
    assert!(
        rest.contains(&"removed pod/productpage-v1".to_owned()),
        "{rest:#?}"
    );
    assert_eq!(
        rest.last().map(String::as_str),
        Some("the local mesh stays up, as it was before the demo (serinctl down removes it)")
    );
    assert_eq!(
        mesh.ok(&["pods"]),
        format!("no pods in local mesh {run_id} (start one with `serinctl run`)\n")
    );
    for pod in ["productpage-v1", "loadgen", "reviews-v3"] {
        assert!(!pod_netns_exists(&run_id, pod), "{pod} is left");
    }
    mesh.ok(&["down"]);
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
}
