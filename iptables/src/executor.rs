//! Running the iptables tools, behind [`Executor`] so that everything above it is testable
//! without root: [`SystemExecutor`] shells out to the host's tools, [`RecordingExecutor`] records.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::plan::Family;

/// What the installer needs from the host's iptables: read the rules, write a batch of them.
pub trait Executor {
    /// The output of `iptables-save` (or `ip6tables-save`): every table.
    fn save(&self, family: Family) -> Result<String, ExecError>;
    /// Feeds `input` to `iptables-restore --noflush` (or `ip6tables-restore`): all or nothing.
    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError>;
}

/// A tool could not be run, or it failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No iptables tools on this host.
    #[error("iptables not found: install it (Debian: apt-get install iptables)")]
    NotFound,
    /// One of the tools is missing (say ip6tables while iptables is there).
    #[error("{program} not found: install iptables (Debian: apt-get install iptables)")]
    Missing {
        /// The program looked for.
        program: String,
    },
    /// The tool exists but could not be started.
    #[error("failed to run {program}: {source}")]
    Spawn {
        /// The program that was started.
        program: String,
        /// Why it could not be.
        source: std::io::Error,
    },
    /// The tool ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program that failed.
        program: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
}

/// Which flavour of the tools to run. A host should use one: rules written by one are invisible
/// to the other's `save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-nft-*`: the nf_tables kernel API (Debian's default since 10).
    Nft,
    /// `iptables-legacy-*`: the old x_tables kernel API.
    Legacy,
    /// Plain `iptables-*`, on hosts without the suffixed names.
    Unsuffixed,
}

impl Backend {
    /// The program for `family` and `action` (`save` or `restore`), e.g. `ip6tables-nft-restore`.
    pub fn program(self, family: Family, action: &str) -> String {
        let tool = family.tool();
        match self {
            Backend::Nft => format!("{tool}-nft-{action}"),
            Backend::Legacy => format!("{tool}-legacy-{action}"),
            Backend::Unsuffixed => format!("{tool}-{action}"),
        }
    }
}

/// Runs the host's iptables tools in the calling thread's network namespace.
#[derive(Debug, Clone, Copy)]
pub struct SystemExecutor {
    backend: Backend,
}

impl SystemExecutor {
    /// Uses `backend` without looking at the host.
    pub fn with_backend(backend: Backend) -> Self {
        SystemExecutor { backend }
    }

    /// Picks the backend the host already uses: legacy when only the legacy tables hold rules,
    /// otherwise nft; whichever is installed when only one is.
    pub fn detect() -> Result<Self, ExecError> {
        let nft = find_program(&Backend::Nft.program(Family::V4, "restore")).is_some();
        let legacy = find_program(&Backend::Legacy.program(Family::V4, "restore")).is_some();
        let backend = match (nft, legacy) {
            (true, true) => {
                let rules = |backend: Backend| {
                    SystemExecutor::with_backend(backend)
                        .save(Family::V4)
                        .map(|saved| saved.lines().filter(|l| l.starts_with("-A ")).count())
                        .unwrap_or(0)
                };
                if rules(Backend::Nft) == 0 && rules(Backend::Legacy) > 0 {
                    Backend::Legacy
                } else {
                    Backend::Nft
                }
            }
            (true, false) => Backend::Nft,
            (false, true) => Backend::Legacy,
            (false, false) if find_program("iptables-restore").is_some() => Backend::Unsuffixed,
            (false, false) => return Err(ExecError::NotFound),
        };
        tracing::debug!(?backend, "iptables backend detected");
        Ok(SystemExecutor { backend })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether IPv6 rules can be installed: the kernel has IPv6 in this network namespace and the
    /// ip6tables tools are installed.
    pub fn ipv6_available(&self) -> bool {
        Path::new("/proc/net/if_inet6").exists()
            && find_program(&self.backend.program(Family::V6, "restore")).is_some()
    }

    fn run(
        &self,
        family: Family,
        action: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, ExecError> {
        let name = self.backend.program(family, action);
        let path = find_program(&name).ok_or_else(|| ExecError::Missing {
            program: name.clone(),
        })?;
        let spawn_error = |source| ExecError::Spawn {
            program: name.clone(),
            source,
        };
        let mut child = Command::new(&path)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // A tool that dies early closes its stdin; its stderr says why, so report that.
            let _ = stdin.write_all(input.as_bytes());
        }
        let output = child.wait_with_output().map_err(spawn_error)?;
        if !output.status.success() {
            return Err(ExecError::Failed {
                program: name,
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        tracing::trace!(program = %name, ?args, "ran");
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Executor for SystemExecutor {
    fn save(&self, family: Family) -> Result<String, ExecError> {
        self.run(family, "save", &[], None)
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError> {
        self.run(family, "restore", &["--noflush"], Some(input))
            .map(drop)
    }
}

/// Finds `name` in `PATH`, then in the sbin directories a non-login root shell may lack.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A fake for tests: `save` answers what it was given, `restore` records its input (or fails
/// with the stderr it was given).
#[derive(Debug, Default)]
pub struct RecordingExecutor {
    saved: Mutex<BTreeMap<Family, String>>,
    restores: Mutex<Vec<(Family, String)>>,
    restore_failure: Mutex<Option<String>>,
}

impl RecordingExecutor {
    /// A fake whose tables are empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `save(family)` return `text`.
    pub fn set_saved(&self, family: Family, text: &str) {
        self.saved.lock().unwrap().insert(family, text.to_owned());
    }

    /// Makes every `restore` fail with this stderr.
    pub fn fail_restores_with(&self, stderr: &str) {
        *self.restore_failure.lock().unwrap() = Some(stderr.to_owned());
    }

    /// Every `restore` input so far, in order.
    pub fn restores(&self) -> Vec<(Family, String)> {
        self.restores.lock().unwrap().clone()
    }
}

impl Executor for RecordingExecutor {
    fn save(&self, family: Family) -> Result<String, ExecError> {
        Ok(self
            .saved
            .lock()
            .unwrap()
            .get(&family)
            .cloned()
            .unwrap_or_default())
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ExecError> {
        self.restores
            .lock()
            .unwrap()
            .push((family, input.to_owned()));
        match self.restore_failure.lock().unwrap().clone() {
            Some(stderr) => Err(ExecError::Failed {
                program: format!("{}-restore", family.tool()),
                status: "exit status: 1".to_owned(),
                stderr,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names() {
        assert_eq!(
            Backend::Nft.program(Family::V6, "save"),
            "ip6tables-nft-save"
        );
        assert_eq!(
            Backend::Legacy.program(Family::V4, "restore"),
            "iptables-legacy-restore"
        );
        assert_eq!(
            Backend::Unsuffixed.program(Family::V4, "save"),
            "iptables-save"
        );
    }

    #[test]
    fn not_found_says_how_to_install() {
        assert_eq!(
            ExecError::NotFound.to_string(),
            "iptables not found: install it (Debian: apt-get install iptables)"
        );
    }
}
