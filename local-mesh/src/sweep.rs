//! Removing what crashed runs left behind: namespaces, links, `/etc/netns` directories and state
//! files whose run's owner process is gone. A live mesh's resources are never touched.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use crate::Error;
use crate::ip;
use crate::mesh::{kill_lingering, remove_etc_dir};
use crate::naming::RunId;
use crate::privileges::require_root;
use crate::state;

/// What [`sweep`] removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    /// The run ids whose leftovers were removed.
    pub runs: Vec<String>,
    /// Network namespaces deleted.
    pub namespaces: Vec<String>,
    /// Links deleted from this process's (the host's) namespace.
    pub links: Vec<String>,
    /// `/etc/netns/<ns>` directories removed.
    pub etc_dirs: Vec<PathBuf>,
    /// State files removed.
    pub state_files: Vec<PathBuf>,
    /// Processes killed because they still ran in a leftover namespace.
    pub processes: Vec<u32>,
    /// Steps that failed (also logged); the sweep goes on past them.
    pub errors: Vec<Error>,
}

impl SweepReport {
    /// Whether nothing was found to remove and nothing failed.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.errors.is_empty()
    }
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "removed {} dead run(s): {} namespace(s), {} link(s), {} /etc/netns dir(s), \
             {} state file(s), {} process(es); {} error(s)",
            self.runs.len(),
            self.namespaces.len(),
            self.links.len(),
            self.etc_dirs.len(),
            self.state_files.len(),
            self.processes.len(),
            self.errors.len()
        )
    }
}

/// Removes the leftovers of runs whose owner process no longer runs; returns what it removed.
///
/// A run's owner is read from its state file at the moment of deciding, and a mesh writes that
/// file before it creates anything, so a mesh being built concurrently is never mistaken for a
/// leftover. Call it where a run starts (`serinctl up`, a test harness's set-up), not from
/// `Mesh::create`: a test that checks what a sweep found must be the only one sweeping.
pub fn sweep() -> Result<SweepReport, Error> {
    require_root()?;
    let found = Found::list()?;
    let runs: BTreeSet<RunId> = found
        .namespaces
        .iter()
        .chain(&found.links)
        .chain(&found.etc_dirs)
        .filter_map(|name| RunId::owner_of(name))
        .chain(state::list())
        .collect();
    let mut report = SweepReport::default();
    for run in runs {
        found.sweep_run(&run, &mut report);
    }
    for e in &report.errors {
        tracing::warn!(error = %e, "sweep step failed");
    }
    Ok(report)
}

/// Removes the leftovers of run `run_id` only, if its owner no longer runs (a live run is left
/// alone and the report is empty). `serinctl down` uses it for the run its state directory names,
/// so that it never touches another mesh.
pub fn sweep_run(run_id: &str) -> Result<SweepReport, Error> {
    require_root()?;
    let mut report = SweepReport::default();
    let Some(run) = RunId::parse(run_id) else {
        return Ok(report);
    };
    Found::list()?.sweep_run(&run, &mut report);
    for e in &report.errors {
        tracing::warn!(error = %e, "sweep step failed");
    }
    Ok(report)
}

/// The names on this host that may belong to a run.
struct Found {
    namespaces: Vec<String>,
    links: Vec<String>,
    etc_dirs: Vec<String>,
}

impl Found {
    fn list() -> Result<Found, Error> {
        let etc_dirs = fs::read_dir(ip::NETNS_ETC_DIR)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        Ok(Found {
            namespaces: ip::netns_list()?,
            links: ip::links(None)?,
            etc_dirs,
        })
    }

    /// Removes what `run` left, unless its owner still runs.
    fn sweep_run(&self, run: &RunId, report: &mut SweepReport) {
        if state::read(run).is_some_and(|owner| owner.is_alive()) {
            tracing::debug!(run_id = %run, "run is live, sweep leaves it alone");
            return;
        }
        let ours = |name: &&String| RunId::owner_of(name).as_ref() == Some(run);
        let state_file = state::path(run);
        let anything = self.namespaces.iter().any(|n| ours(&n))
            || self.links.iter().any(|n| ours(&n))
            || self.etc_dirs.iter().any(|n| ours(&n))
            || state_file.exists();
        if !anything {
            return;
        }
        tracing::info!(run_id = %run, "sweeping leftovers of a dead run");
        // Pods before the node, as teardown does.
        let mut run_namespaces: Vec<&String> = self.namespaces.iter().filter(ours).collect();
        run_namespaces.sort_by_key(|ns| ns.ends_with("-node"));
        for ns in &run_namespaces {
            match kill_lingering(ns) {
                Ok(pids) => report.processes.extend(pids),
                Err(e) => report.errors.push(e),
            }
        }
        for link in self.links.iter().filter(ours) {
            match ip::ip(&["link", "del", link]) {
                Ok(_) => report.links.push(link.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        for ns in run_namespaces {
            match ip::netns_del(ns) {
                Ok(()) => report.namespaces.push(ns.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        for dir in self.etc_dirs.iter().filter(ours) {
            match remove_etc_dir(dir) {
                Ok(()) => report.etc_dirs.push(ip::netns_etc_dir(dir)),
                Err(e) => report.errors.push(e),
            }
        }
        if state_file.exists() {
            match state::remove(run) {
                Ok(()) => report.state_files.push(state_file),
                Err(e) => report.errors.push(e),
            }
        }
        report.runs.push(run.to_string());
    }
}
