//! Processes started inside a mesh's namespaces, and the table the mesh keeps of them so that its
//! guard can kill every one on teardown.
//!
//! Every reap of a child goes through its `std::process::Child` under one mutex, so a pid is never
//! signalled after it was reaped (when the kernel may give it to someone else). Blocking waits use
//! `waitid(WNOWAIT)` first, which waits without reaping and so without holding that mutex.

use std::io::Read;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Output};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::Pid;

use crate::Error;
use crate::ip;

/// A process started in one of the mesh's namespaces.
///
/// Dropping the handle does not stop the process: the mesh's guard kills it on teardown. Use
/// [`Process::kill`] to stop it earlier.
#[derive(Debug)]
pub struct Process {
    pid: u32,
    command: String,
    netns: String,
    child: Arc<Mutex<Child>>,
}

impl Process {
    /// The process id (of the program itself: `ip netns exec` and `setpriv` exec, not fork).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The namespace it was started in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The full command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, Error> {
        self.lock()
            .try_wait()
            .map_err(|e| self.error("wait for", e))
    }

    /// Waits for it to exit.
    pub fn wait(&self) -> Result<ExitStatus, Error> {
        // Wait without reaping (so without the lock); ECHILD means someone else reaped it already.
        loop {
            match waitid(
                Id::Pid(Pid::from_raw(self.pid as i32)),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
            ) {
                Err(Errno::EINTR) => continue,
                Ok(_) | Err(Errno::ECHILD) => break,
                Err(errno) => return Err(self.error("wait for", errno.into())),
            }
        }
        self.lock().wait().map_err(|e| self.error("wait for", e))
    }

    /// Sends `signal` (e.g. `SIGTERM` to let a proxy drain) if it still runs.
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        let mut child = self.lock();
        if child
            .try_wait()
            .map_err(|e| self.error("wait for", e))?
            .is_none()
        {
            signal::kill(Pid::from_raw(self.pid as i32), signal)
                .map_err(|errno| self.error("signal", errno.into()))?;
        }
        Ok(())
    }

    /// Kills it (`SIGKILL`) if it still runs, and reaps it.
    pub fn kill(&self) -> Result<ExitStatus, Error> {
        kill_and_reap(&mut self.lock()).map_err(|e| self.error("kill", e))
    }

    /// Takes its stdin pipe, if it was started with one.
    pub fn take_stdin(&self) -> Option<ChildStdin> {
        self.lock().stdin.take()
    }

    /// Takes its stdout pipe, if it was started with one.
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.lock().stdout.take()
    }

    /// Takes its stderr pipe, if it was started with one.
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.lock().stderr.take()
    }

    /// Waits for it to exit, collecting whatever it writes to the pipes it still has.
    pub fn wait_with_output(self) -> Result<Output, Error> {
        let stdout = self.take_stdout();
        let stderr = self.take_stderr();
        // Read stderr on its own thread: a child blocked writing one pipe never fills the other.
        let stderr_reader = std::thread::spawn(move || read_all(stderr));
        let stdout = read_all(stdout).map_err(|e| self.error("read output of", e))?;
        let stderr = stderr_reader
            .join()
            .unwrap_or_else(|_| Ok(Vec::new()))
            .map_err(|e| self.error("read output of", e))?;
        let status = self.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(&self, action: &'static str, source: std::io::Error) -> Error {
        Error::Process {
            action,
            pid: self.pid,
            command: self.command.clone(),
            source,
        }
    }
}

fn read_all<R: Read>(pipe: Option<R>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut buf)?;
    }
    Ok(buf)
}

fn kill_and_reap(child: &mut Child) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    child.kill()?;
    child.wait()
}

/// The processes a mesh started, so that teardown can kill them.
#[derive(Debug, Default)]
pub(crate) struct ProcessTable {
    entries: Mutex<Vec<Process>>,
}

impl ProcessTable {
    /// Spawns `cmd` (already wrapped to run in `netns`) and tracks it.
    pub fn spawn(&self, netns: &str, cmd: &mut Command) -> Result<Process, Error> {
        let command = ip::render(cmd);
        let child = cmd.spawn().map_err(|e| ip::spawn_error(cmd, e))?;
        let process = Process {
            pid: child.id(),
            command,
            netns: netns.to_owned(),
            child: Arc::new(Mutex::new(child)),
        };
        tracing::debug!(pid = process.pid, netns, command = %process.command, "spawned");
        let mut entries = self.lock();
        // Forget (and reap) the ones that have exited, so a long-lived mesh does not pile them up.
        entries.retain(|p| matches!(p.try_wait(), Ok(None)));
        entries.push(Process {
            pid: process.pid,
            command: process.command.clone(),
            netns: process.netns.clone(),
            child: Arc::clone(&process.child),
        });
        Ok(process)
    }

    /// The pids of the tracked processes that still run.
    pub fn live_pids(&self) -> Vec<u32> {
        self.lock()
            .iter()
            .filter(|p| matches!(p.try_wait(), Ok(None)))
            .map(|p| p.pid)
            .collect()
    }

    /// Kills and reaps every tracked process (in `netns` only, when given); returns the failures.
    pub fn kill_all(&self, netns: Option<&str>) -> Vec<Error> {
        let mut entries = self.lock();
        let mut errors = Vec::new();
        entries.retain(|p| {
            if netns.is_some_and(|ns| ns != p.netns) {
                return true;
            }
            match p.kill() {
                Ok(status) => {
                    tracing::debug!(pid = p.pid, %status, command = %p.command, "stopped")
                }
                Err(e) => errors.push(e),
            }
            false
        });
        errors
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Process>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
