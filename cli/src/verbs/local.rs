//! The local-mesh verbs: `up`, `down`, `namespace create`, `run`, `exec`, `pods`, `logs`. Each is
//! one call of serin-local's [`Cluster`]; this file adds the privilege and binary checks that come
//! first, and the wording of what was done.

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal as _, Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serin_local::cluster::{
    CONTROL_PLANE_POD, Cluster, LogStream, MESH_BINS, PodRecord, PodSpec, StateDir, Up, UpOptions,
    default_bin_dir, pods_table,
};

use super::pairs;
use crate::cli::{
    ExecArgs, HostPortArgs, Injection, LogsArgs, MeshArgs, NamespaceAction, NamespaceArgs,
    NamespaceCreateArgs, RunArgs, UpArgs,
};
use crate::error::{CliError, one_line};

/// How often `logs -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often `logs -f` checks that the pod is still there.
const FOLLOW_CHECK: Duration = Duration::from_secs(1);

/// Fails with the one line of a verb that needs root, before anything is made.
pub fn require_root(verb: &'static str) -> Result<(), CliError> {
    if serin_local::is_privileged() {
        Ok(())
    } else {
        Err(CliError::NeedsRoot { verb })
    }
}

/// serinctl's own directory, which must hold `names` (they are built and installed together).
pub fn bin_dir(names: &[&str]) -> Result<PathBuf, CliError> {
    let dir = default_bin_dir()?;
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            // A debug serinctl needs debug siblings: say the build that puts them beside it.
            let build = if dir.ends_with("debug") {
                "cargo build --workspace --bins"
            } else {
                "cargo build --release --workspace --bins"
            };
            return Err(CliError::Input(format!(
                "{name} not found at {}: serinctl runs the binaries beside it; build them all with `{build}`",
                path.display()
            )));
        }
    }
    Ok(dir)
}

/// The options of `up` (and `demo`) from the command line.
pub fn up_options(mesh: &MeshArgs, ports: &HostPortArgs, bin_dir: &Path) -> UpOptions {
    let mut options = UpOptions::new(&mesh.state_dir, bin_dir);
    options.grpc_port = ports.grpc_port;
    options.http_port = ports.http_port;
    options
}

/// `up`: brings the local mesh up, or says it already is.
pub fn up(args: &UpArgs, out: &mut impl Write) -> Result<(), CliError> {
    require_root("up")?;
    let bin_dir = bin_dir(&MESH_BINS)?;
    let up = Cluster::up(&up_options(&args.mesh, &args.ports, &bin_dir))?;
    write_up(&up, &args.ports, out)
}

/// What `up` made (or found), with the URLs to use.
pub fn write_up(up: &Up, ports: &HostPortArgs, out: &mut impl Write) -> Result<(), CliError> {
    let record = up.cluster.record();
    writeln!(out, "{up}")?;
    if up.created {
        writeln!(
            out,
            "  node namespace {} with bridge {} for pods in {}",
            record.node_netns,
            serin_local::GATEWAY,
            serin_local::POD_SUBNET
        )?;
        let cp_ip = record
            .control_plane_ip
            .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
        let cp_pid = record
            .control_plane_pid
            .map_or_else(String::new, |pid| format!(", pid {pid}"));
        writeln!(
            out,
            "  pod {CONTROL_PLANE_POD} at {cp_ip}{cp_pid}: gRPC 127.0.0.1:{} -> :{}, dashboard 127.0.0.1:{} -> :{}",
            record.grpc_port,
            serin_local::cluster::GRPC_PORT,
            record.http_port,
            serin_local::cluster::HTTP_PORT
        )?;
        writeln!(
            out,
            "  admin tokens in {} (root only): serinctl on this host sends the write token; the dashboard asks for it before a change",
            up.cluster.admin_tokens_path().display()
        )?;
    } else if (record.grpc_port, record.http_port) != (ports.grpc_port, ports.http_port) {
        writeln!(
            out,
            "  it keeps its ports {} and {} (serinctl down first to change them)",
            record.grpc_port, record.http_port
        )?;
    }
    for ns in &record.namespaces {
        writeln!(
            out,
            "  namespace {} (injection {})",
            ns.name,
            injection_word(ns.injection)
        )?;
    }
    if !up.created {
        writeln!(out, "  {} pod(s) running", record.pods.len())?;
    }
    writeln!(
        out,
        "  logs in {}",
        StateDir(up.cluster.state_dir().to_owned())
            .log_dir()
            .display()
    )?;
    Ok(())
}

/// `down`: removes the local mesh and says what went.
pub fn down(args: &MeshArgs, out: &mut impl Write) -> Result<(), CliError> {
    require_root("down")?;
    let removed = Cluster::down(&args.state_dir)?;
    let text = removed.to_string();
    write!(out, "{text}")?;
    if !text.ends_with('\n') {
        writeln!(out)?;
    }
    Ok(())
}

/// `namespace create`.
pub fn namespace(args: &NamespaceArgs, out: &mut impl Write) -> Result<(), CliError> {
    match &args.action {
        NamespaceAction::Create(create) => namespace_create(create, out),
    }
}

fn namespace_create(args: &NamespaceCreateArgs, out: &mut impl Write) -> Result<(), CliError> {
    require_root("namespace create")?;
    let cluster = Cluster::open(&args.mesh.state_dir)?;
    let before = cluster
        .record()
        .namespace(&args.name)
        .map(|ns| ns.injection);
    let ns = cluster.create_namespace(&args.name, args.injection == Injection::Enabled)?;
    let what = match before {
        None => "created",
        Some(injection) if injection == ns.injection => "unchanged",
        Some(_) => "configured",
    };
    writeln!(
        out,
        "namespace/{} {what} (injection {})",
        ns.name,
        injection_word(ns.injection)
    )?;
    Ok(())
}

fn injection_word(enabled: bool) -> &'static str {
    if enabled { "enabled" } else { "disabled" }
}

/// `run`: starts a pod in `namespace`.
pub fn run(namespace: &str, args: &RunArgs, out: &mut impl Write) -> Result<(), CliError> {
    require_root("run")?;
    let cluster = Cluster::open(&args.mesh.state_dir)?;
    let mut spec = PodSpec::new(
        &args.name,
        namespace,
        &args.service,
        &args.version,
        args.port,
        &args.command,
    );
    spec.env = pairs("--env", &args.env)?;
    spec.wait_for_port = !args.no_wait;
    let pod = cluster
        .run(&spec)
        .map_err(|e| with_sidecar_log(cluster.state_dir(), &args.name, e))?;
    write_pod(&pod, out)
}

/// One line about a pod that just started.
pub fn write_pod(pod: &PodRecord, out: &mut impl Write) -> Result<(), CliError> {
    let sidecar = pod.sidecar_pid.map_or_else(
        || "no sidecar".to_owned(),
        |pid| format!("sidecar pid {pid}"),
    );
    writeln!(
        out,
        "pod/{} running in namespace {}: {} {} at {}:{} (service VIP {}), app pid {}, {sidecar}",
        pod.name, pod.namespace, pod.service, pod.version, pod.ip, pod.port, pod.vip, pod.app_pid
    )?;
    Ok(())
}

/// A failed `run`, with the sidecar's last complaint when its sidecar is what failed: the agent's
/// message names the sidecar's log file but not what it said.
pub fn with_sidecar_log(state_dir: &Path, pod: &str, e: serin_local::Error) -> CliError {
    let message = e.to_string();
    if !message.contains(&format!("sidecar of pod {pod:?} not ready")) {
        return e.into();
    }
    let log = StateDir(state_dir.to_owned()).log(pod, LogStream::Sidecar);
    match last_complaint(&log) {
        Some(line) => CliError::Input(format!(
            "{}; the sidecar's last complaint: {line}",
            one_line(&message)
        )),
        None => e.into(),
    }
}

/// The last ERROR line of a log, else its last WARN line, without colours.
fn last_complaint(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .map(|l| strip_ansi(&l))
        .collect();
    ["ERROR", "WARN"].iter().find_map(|level| {
        lines
            .iter()
            .rev()
            .find(|l| l.contains(level))
            .map(|l| l.trim().to_owned())
    })
}

/// `text` without terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `exec`: runs the command in the pod with this terminal, and exits with its exit code.
pub fn exec(args: &ExecArgs, out: &mut impl Write) -> Result<(), CliError> {
    require_root("exec")?;
    let cluster = Cluster::open(&args.mesh.state_dir)?;
    let mut cmd = cluster.exec(&args.pod, &args.command)?;
    out.flush()?;
    // Ctrl-C is for the command (it is in the same process group): serinctl waits for it to
    // exit instead of dying first. Registering the handler is what keeps SIGINT from killing us.
    let _sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    let status = cmd.status().map_err(|e| {
        CliError::Input(format!(
            "cannot run `ip netns exec` for pod {}: {e}",
            args.pod
        ))
    })?;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(code), _) => Err(CliError::Exit(u8::try_from(code).unwrap_or(u8::MAX))),
        // As a shell reports a command killed by a signal.
        (None, Some(signal)) => Err(CliError::Exit(
            u8::try_from(128 + signal).unwrap_or(u8::MAX),
        )),
        (None, None) => Err(CliError::Exit(1)),
    }
}

/// Opens the mesh for a reading verb, which needs no root when the state directory is readable.
fn open_for_reading(state_dir: &Path, verb: &'static str) -> Result<Cluster, CliError> {
    Cluster::open(state_dir).map_err(|e| denied_as_root(e, verb))
}

fn denied_as_root(e: serin_local::Error, verb: &'static str) -> CliError {
    match &e {
        serin_local::Error::Io { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            CliError::NeedsRoot { verb }
        }
        _ => e.into(),
    }
}

/// `pods`: the table of the mesh's pods.
pub fn pods(args: &MeshArgs, out: &mut impl Write) -> Result<(), CliError> {
    let cluster = open_for_reading(&args.state_dir, "pods")?;
    let pods = cluster.pods().map_err(|e| denied_as_root(e, "pods"))?;
    if pods.is_empty() {
        writeln!(
            out,
            "no pods in local mesh {} (start one with `serinctl run`)",
            cluster.record().run_id
        )?;
    } else {
        write!(out, "{}", pods_table(&pods))?;
    }
    Ok(())
}

/// `logs`: prints a pod's log file, then (with `-f`) what is appended to it. A reader that stops
/// reading (`| head`) ends it quietly.
pub fn logs(args: &LogsArgs, out: &mut impl Write) -> Result<(), CliError> {
    match print_logs(args, out) {
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn print_logs(args: &LogsArgs, out: &mut impl Write) -> Result<(), CliError> {
    let cluster = open_for_reading(&args.mesh.state_dir, "logs")?;
    let stream = if args.sidecar {
        LogStream::Sidecar
    } else {
        LogStream::App
    };
    let path = cluster
        .log_path(&args.pod, stream)
        .map_err(|e| denied_as_root(e, "logs"))?;
    let unreadable = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            CliError::NeedsRoot { verb: "logs" }
        } else {
            CliError::Input(format!(
                "cannot read the log of pod {} at {}: {e}",
                args.pod,
                path.display()
            ))
        }
    };
    let mut file = File::open(&path).map_err(unreadable)?;
    // Sidecar logs are coloured for terminals: into a file or a pipe they go plain.
    let mut printer = LogPrinter::new(!std::io::stdout().is_terminal());
    let mut chunk = Vec::new();
    file.read_to_end(&mut chunk).map_err(unreadable)?;
    printer.print(&chunk, out)?;
    if !args.follow {
        return printer.finish(out);
    }
    out.flush()?;
    let mut checked = Instant::now();
    loop {
        chunk.clear();
        file.read_to_end(&mut chunk).map_err(unreadable)?;
        if chunk.is_empty() {
            if checked.elapsed() >= FOLLOW_CHECK {
                checked = Instant::now();
                if !pod_still_there(&cluster, &args.pod) {
                    printer.finish(out)?;
                    eprintln!("serinctl: pod {} is gone: stopped following", args.pod);
                    return Ok(());
                }
                // A log rewritten from the start (never today, but cheap to notice).
                let len = file.metadata().map_err(unreadable)?.len();
                if len < file.stream_position().map_err(unreadable)? {
                    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
                }
            }
            std::thread::sleep(FOLLOW_POLL);
        } else {
            printer.print(&chunk, out)?;
            out.flush()?;
        }
    }
}

/// Copies log bytes to the output, whole lines without colours when `plain`.
#[derive(Debug)]
struct LogPrinter {
    plain: bool,
    /// The start of a line whose end has not been read yet (plain only).
    pending: Vec<u8>,
}

impl LogPrinter {
    fn new(plain: bool) -> Self {
        LogPrinter {
            plain,
            pending: Vec::new(),
        }
    }

    fn print(&mut self, bytes: &[u8], out: &mut impl Write) -> Result<(), CliError> {
        if !self.plain {
            out.write_all(bytes)?;
            return Ok(());
        }
        self.pending.extend_from_slice(bytes);
        if let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') {
            let lines: Vec<u8> = self.pending.drain(..=end).collect();
            out.write_all(strip_ansi(&String::from_utf8_lossy(&lines)).as_bytes())?;
        }
        Ok(())
    }

    /// Prints a last line that has no end yet.
    fn finish(&mut self, out: &mut impl Write) -> Result<(), CliError> {
        if !self.pending.is_empty() {
            out.write_all(strip_ansi(&String::from_utf8_lossy(&self.pending)).as_bytes())?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn pod_still_there(cluster: &Cluster, pod: &str) -> bool {
    if pod == CONTROL_PLANE_POD {
        Cluster::open(cluster.state_dir()).is_ok()
    } else {
        cluster.pod(pod).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_stripped_from_log_lines() {
        crate::test_tracing();
        assert_eq!(
            strip_ansi("\u{1b}[2m2026-11-26T10:00:00Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m no config"),
            "2026-11-26T10:00:00Z ERROR no config"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn plain_logs_lose_colours_even_across_reads() {
        crate::test_tracing();
        let mut out = Vec::new();
        let mut printer = LogPrinter::new(true);
        printer.print(b"a \x1b[3", &mut out).unwrap();
        assert!(out.is_empty(), "half a line waits for its end");
        printer.print(b"1mERROR\x1b[0m x\nb", &mut out).unwrap();
        assert_eq!(out, b"a ERROR x\n");
        printer.finish(&mut out).unwrap();
        assert_eq!(out, b"a ERROR x\nb");
        let mut coloured = Vec::new();
        LogPrinter::new(false)
            .print(b"\x1b[31mERROR\x1b[0m", &mut coloured)
            .unwrap();
        assert_eq!(coloured, b"\x1b[31mERROR\x1b[0m");
    }

    #[test]
    fn the_last_error_of_a_log_is_its_complaint() {
        crate::test_tracing();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.sidecar.log");
        std::fs::write(
            &log,
            "t INFO starting\nt \u{1b}[31mERROR\u{1b}[0m no discovery\nt WARN late\nt INFO SIGTERM received\n",
        )
        .unwrap();
        assert_eq!(
            last_complaint(&log).as_deref(),
            Some("t ERROR no discovery")
        );
        std::fs::write(&log, "t INFO fine\nt WARN slow\n").unwrap();
        assert_eq!(last_complaint(&log).as_deref(), Some("t WARN slow"));
        std::fs::write(&log, "t INFO fine\n").unwrap();
        assert_eq!(last_complaint(&log), None);
        assert_eq!(last_complaint(&dir.path().join("missing")), None);
    }

    #[test]
    fn a_failed_sidecar_is_explained_with_its_log() {
        crate::test_tracing();
        let dir = tempfile::tempdir().unwrap();
        let logs = StateDir(dir.path().to_owned());
        std::fs::create_dir_all(logs.log_dir()).unwrap();
        std::fs::write(
            logs.log("web", LogStream::Sidecar),
            "t ERROR the discovery client is not implemented yet\nt INFO SIGTERM received\n",
        )
        .unwrap();
        let e = serin_local::Error::Agent {
            message: "sidecar of pod \"web\" not ready: its /ready on port 15000 did not answer 200 within 30s (log: x)".into(),
        };
        assert_eq!(
            with_sidecar_log(dir.path(), "web", e).to_string(),
            "sidecar of pod \"web\" not ready: its /ready on port 15000 did not answer 200 within 30s (log: x); the sidecar's last complaint: t ERROR the discovery client is not implemented yet"
        );
        let other = serin_local::Error::Agent {
            message: "namespace \"x\" does not exist".into(),
        };
        assert_eq!(
            with_sidecar_log(dir.path(), "web", other).to_string(),
            "namespace \"x\" does not exist"
        );
    }
}
