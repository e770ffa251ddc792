//! Running `ip` (iproute2) and other commands with errors that quote the exact command line and
//! its stderr, plus the few `ip` queries the mesh and `sweep` need.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

use crate::Error;
use crate::state::STATE_DIR;

/// Where iproute2 keeps the files that name network namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Where iproute2 looks for per-namespace files bind-mounted over `/etc` by `ip netns exec`.
pub const NETNS_ETC_DIR: &str = "/etc/netns";

/// Renders a command as a shell-like line for logs and errors.
pub fn render(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| {
            let part = part.to_string_lossy();
            if part.is_empty() || part.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", part.replace('\'', r"'\''"))
            } else {
                part.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Maps a failure to start `cmd` to an error, naming the missing tool when that is the cause.
pub fn spawn_error(cmd: &Command, source: io::Error) -> Error {
    if source.kind() == io::ErrorKind::NotFound {
        match cmd.get_program().to_str() {
            Some("ip") => {
                return Error::MissingTool {
                    tool: "ip",
                    hint: "install iproute2 (Debian: apt-get install iproute2)",
                };
            }
            Some("iptables") => {
                return Error::MissingTool {
                    tool: "iptables",
                    hint: "install iptables (Debian: apt-get install iptables)",
                };
            }
            _ => {}
        }
    }
    Error::Spawn {
        command: render(cmd),
        source,
    }
}

/// Runs `cmd` to completion; fails unless it exits 0. Returns its stdout.
pub fn run(cmd: &mut Command) -> Result<String, Error> {
    let line = render(cmd);
    tracing::debug!(command = %line, "run");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").args(args))
}

/// Runs `ip -n NETNS ARGS...`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<String, Error> {
    run(Command::new("ip").arg("-n").arg(netns).args(args))
}

/// Serialises `ip netns add/del` across threads and processes: the first `ip netns add` on a host
/// turns /run/netns into a shared mount, and racing first calls can stack mounts there.
fn with_netns_lock<T>(f: impl FnOnce() -> T) -> Result<T, Error> {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    fs::create_dir_all(STATE_DIR).map_err(|e| Error::io("create directory", STATE_DIR, e))?;
    let path = Path::new(STATE_DIR).join("netns.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| Error::io("lock", &path, errno.into()))?;
    Ok(f())
}

/// `ip netns add NAME`.
pub fn netns_add(name: &str) -> Result<(), Error> {
    with_netns_lock(|| ip(&["netns", "add", name]))?.map(drop)
}

/// `ip netns del NAME`; a namespace that is already gone is not an error.
pub fn netns_del(name: &str) -> Result<(), Error> {
    if !netns_path(name).exists() {
        return Ok(());
    }
    with_netns_lock(|| ip(&["netns", "del", name]))?.map(drop)
}

/// The file that names namespace `name` (what `setns` opens).
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// The directory whose files `ip netns exec` bind-mounts over `/etc` for namespace `name`.
pub fn netns_etc_dir(name: &str) -> PathBuf {
    Path::new(NETNS_ETC_DIR).join(name)
}

/// The names of all named network namespaces (`ip netns list`).
pub fn netns_list() -> Result<Vec<String>, Error> {
    // Lines look like `name (id: 3)` or just `name`.
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The pids of the processes in namespace `name` (`ip netns pids`), without this process.
pub fn netns_pids(name: &str) -> Result<Vec<u32>, Error> {
    let me = std::process::id();
    Ok(ip(&["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .filter(|&pid| pid != me)
        .collect())
}

/// The link names in namespace `netns`, or in this process's namespace when `None`.
pub fn links(netns: Option<&str>) -> Result<Vec<String>, Error> {
    let out = match netns {
        Some(ns) => ip_in(ns, &["-o", "link", "show"])?,
        None => ip(&["-o", "link", "show"])?,
    };
    // Lines look like `3: srn-a1b2c3v2@if2: <BROADCAST,...> ...`.
    Ok(out
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect())
}

/// Whether `tool` is an executable file in one of `$PATH`'s directories.
pub fn in_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_command_lines_quoting_what_needs_it() {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", "srn-a1b2c3-a", "sh", "-c", "echo it's"]);
        assert_eq!(
            render(&cmd),
            r"ip netns exec srn-a1b2c3-a sh -c 'echo it'\''s'"
        );
    }
}
