//! A handle on one of the mesh's network namespaces (a pod's or the node's): build commands that
//! run inside it, spawn tracked processes in it, or run a closure inside it on a dedicated thread.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::Error;
use crate::hosts;
use crate::ip;
use crate::poll::poll_until;
use crate::process::{Process, ProcessTable};

/// One of the mesh's network namespaces.
///
/// Cheap to clone. Once the mesh is torn down, the namespace is gone and commands in it fail.
#[derive(Debug, Clone)]
pub struct Netns {
    name: Arc<str>,
    processes: Arc<ProcessTable>,
}

impl Netns {
    pub(crate) fn new(name: String, processes: Arc<ProcessTable>) -> Self {
        Netns {
            name: name.into(),
            processes,
        }
    }

    /// The namespace's name, as `ip netns list` shows it (`ip netns exec NAME ...` works).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file naming the namespace, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        ip::netns_path(&self.name)
    }

    /// The hosts file that processes started through `ip netns exec` see as `/etc/hosts`.
    pub fn hosts_path(&self) -> PathBuf {
        hosts::path(&self.name)
    }

    /// A command that runs `program` inside the namespace: `ip netns exec NAME program`.
    ///
    /// Add arguments and stdio as usual; run it with [`Netns::spawn`] to have the mesh track it,
    /// or with `Command::output`/`status` for a short command the caller waits for anyway.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec"]).arg(&*self.name).arg(program);
        cmd
    }

    /// Like [`Netns::command`], but `program` runs as `uid`/`gid` with no supplementary groups:
    /// `ip netns exec NAME setpriv --reuid UID --regid GID --clear-groups -- program`.
    pub fn command_as(&self, uid: u32, gid: u32, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = self.command("setpriv");
        cmd.arg("--reuid")
            .arg(uid.to_string())
            .arg("--regid")
            .arg(gid.to_string())
            .args(["--clear-groups", "--"])
            .arg(program);
        cmd
    }

    /// A builder for a process in this namespace: `netns.exec(["id", "-u"]).user(1337, 1337).run()`.
    pub fn exec<I, S>(&self, argv: I) -> Exec<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Exec {
            netns: self,
            argv: argv.into_iter().map(|a| a.as_ref().to_owned()).collect(),
            user: None,
            envs: Vec::new(),
            current_dir: None,
            stdin_piped: false,
            stdout: Redirect::Inherit,
            stderr: Redirect::Inherit,
        }
    }

    /// Spawns `cmd` (made by [`Netns::command`] or [`Netns::command_as`]) and tracks it, so the
    /// mesh's guard kills it on teardown.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process, Error> {
        self.processes.spawn(&self.name, cmd)
    }

    /// Spawns `argv` as `uid`/`gid`, tracked, with stdout and stderr inherited.
    pub fn spawn_as<I, S>(&self, uid: u32, gid: u32, argv: I) -> Result<Process, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.exec(argv).user(uid, gid).spawn()
    }

    /// Runs `f` inside the namespace on a fresh thread (which `setns`es into it) and returns what
    /// `f` returns; a panic in `f` is resumed on the caller's thread.
    ///
    /// Sockets keep the namespace they were created in: a listener bound inside `f` can be
    /// returned and accepted on from any thread (or handed to tokio with
    /// `tokio::net::TcpListener::from_std` after `set_nonblocking(true)`), and a stream connected
    /// inside `f` keeps talking from the pod. Only the namespace switch is per-thread; name lookups
    /// inside `f` still read the host's `/etc/hosts`, not the pod's (that bind mount exists only
    /// for processes started through `ip netns exec`).
    pub fn run_in<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        let setns_error = |source| Error::Setns {
            netns: self.name.to_string(),
            path: path.clone(),
            source,
        };
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name(format!("netns {}", self.name))
                .spawn_scoped(scope, || {
                    // A new thread, so the namespace switch never leaks into a pooled thread.
                    let file = File::open(&path).map_err(setns_error)?;
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .map_err(|errno| setns_error(errno.into()))?;
                    Ok(f())
                })
                .map_err(setns_error)?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Waits until a TCP connect from inside the namespace to `addr` succeeds (a server started
    /// as a process is listening), polling until `timeout`.
    pub fn wait_for_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), Error> {
        let mut last_error = None;
        let connected = self.run_in(|| {
            poll_until(timeout, || {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                    Ok(_) => Some(()),
                    Err(e) => {
                        last_error = Some(e);
                        None
                    }
                }
            })
        })?;
        connected.ok_or_else(|| Error::Timeout {
            what: format!(
                "a TCP listener on {addr} from {} (last error: {})",
                self.name,
                last_error.map_or_else(|| "none".to_owned(), |e| e.to_string())
            ),
            timeout,
        })
    }
}

impl std::fmt::Display for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Where a spawned process's stdout or stderr goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Discarded.
    Null,
    /// The caller's (the default).
    Inherit,
    /// A pipe: take it with [`Process::take_stdout`] / [`Process::take_stderr`].
    Piped,
    /// A file, created or truncated.
    File(PathBuf),
    /// A file, created or appended to.
    Append(PathBuf),
}

impl Redirect {
    fn to_stdio(&self) -> Result<Stdio, Error> {
        let open = |path: &PathBuf, append: bool| {
            File::options()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(path)
                .map(Stdio::from)
                .map_err(|e| Error::io("open output file", path, e))
        };
        Ok(match self {
            Redirect::Null => Stdio::null(),
            Redirect::Inherit => Stdio::inherit(),
            Redirect::Piped => Stdio::piped(),
            Redirect::File(path) => open(path, false)?,
            Redirect::Append(path) => open(path, true)?,
        })
    }
}

/// A process to start inside a namespace; see [`Netns::exec`]. Stdin is `/dev/null` unless
/// [`Exec::stdin_piped`] is called.
#[derive(Debug)]
#[must_use = "an Exec does nothing until spawn, output or run is called"]
pub struct Exec<'a> {
    netns: &'a Netns,
    argv: Vec<OsString>,
    user: Option<(u32, u32)>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    stdin_piped: bool,
    stdout: Redirect,
    stderr: Redirect,
}

impl Exec<'_> {
    /// Appends an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.argv
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Runs the program as `uid`/`gid` with no supplementary groups (through `setpriv`).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some((uid, gid));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Gives the process a stdin pipe ([`Process::take_stdin`]).
    pub fn stdin_piped(mut self) -> Self {
        self.stdin_piped = true;
        self
    }

    /// Where stdout goes.
    pub fn stdout(mut self, to: Redirect) -> Self {
        self.stdout = to;
        self
    }

    /// Where stderr goes.
    pub fn stderr(mut self, to: Redirect) -> Self {
        self.stderr = to;
        self
    }

    /// The `std::process::Command` this builder stands for, stdio included (output files are
    /// opened here).
    pub fn to_command(&self) -> Result<Command, Error> {
        let mut cmd = self.base_command()?;
        cmd.stdin(if self.stdin_piped {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(self.stdout.to_stdio()?)
        .stderr(self.stderr.to_stdio()?);
        Ok(cmd)
    }

    /// The command without stdio (so nothing is opened yet).
    fn base_command(&self) -> Result<Command, Error> {
        let Some((program, args)) = self.argv.split_first() else {
            return Err(Error::Spawn {
                command: format!("ip netns exec {}", self.netns.name),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no program given"),
            });
        };
        if self.user.is_some() && !ip::in_path("setpriv") {
            return Err(Error::MissingTool {
                tool: "setpriv",
                hint: "install util-linux (Debian: apt-get install util-linux)",
            });
        }
        let mut cmd = match self.user {
            Some((uid, gid)) => self.netns.command_as(uid, gid, program),
            None => self.netns.command(program),
        };
        cmd.args(args).envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        Ok(cmd)
    }

    /// Starts the process, tracked by the mesh.
    pub fn spawn(&self) -> Result<Process, Error> {
        self.netns.spawn(&mut self.to_command()?)
    }

    /// Runs the process to completion (tracked while it runs), capturing stdout and stderr.
    pub fn output(self) -> Result<Output, Error> {
        self.stdout(Redirect::Piped)
            .stderr(Redirect::Piped)
            .spawn()?
            .wait_with_output()
    }

    /// Runs the process to completion and returns its stdout; fails unless it exits 0, with the
    /// command line and its stderr in the error.
    pub fn run(self) -> Result<String, Error> {
        let command = ip::render(&self.base_command()?);
        let out = self.output()?;
        if !out.status.success() {
            return Err(Error::CommandFailed {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
