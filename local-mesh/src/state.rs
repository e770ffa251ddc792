//! The small state file each mesh keeps under `/run/serin-local/`: which process owns the run, so
//! that `sweep` can tell a crashed run's leftovers from a live mesh's resources.
//!
//! A pid alone is not enough (pids are reused), so the file also records the process's start time
//! from `/proc/<pid>/stat`. The file is created exclusively before anything else of the run, and
//! removed after everything else, so a resource with a run id but no live owner is a leftover.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::naming::RunId;

/// The directory holding one state file per live (or crashed) run.
pub const STATE_DIR: &str = "/run/serin-local";

/// The process that created a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
}

impl Owner {
    /// This process.
    pub fn current() -> Result<Self, Error> {
        let pid = std::process::id();
        let start_time = start_time(pid)
            .map_err(|e| Error::io("read", format!("/proc/{pid}/stat"), e))?
            .unwrap_or_default();
        Ok(Owner { pid, start_time })
    }

    /// Whether the owner still runs: the pid exists, is not a zombie, and started when recorded.
    pub fn is_alive(&self) -> bool {
        matches!(stat(self.pid), Ok(Some((state, start))) if state != 'Z' && state != 'X' && start == self.start_time)
    }

    fn render(&self) -> String {
        format!("pid {}\nstart_time {}\n", self.pid, self.start_time)
    }

    fn parse(text: &str) -> Option<Self> {
        let mut pid = None;
        let mut start_time = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => pid = v.trim().parse().ok(),
                Some(("start_time", v)) => start_time = v.trim().parse().ok(),
                _ => {}
            }
        }
        Some(Owner {
            pid: pid?,
            start_time: start_time?,
        })
    }
}

/// The state file of run `id`.
pub fn path(id: &RunId) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{id}.owner"))
}

/// Claims run id `id` for `owner`; `Ok(false)` when another run already holds it.
pub fn claim(id: &RunId, owner: Owner) -> Result<bool, Error> {
    fs::create_dir_all(STATE_DIR).map_err(|e| Error::io("create directory", STATE_DIR, e))?;
    let path = path(id);
    let mut file = match fs::File::options().write(true).create_new(true).open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(Error::io("create state file", path, e)),
    };
    file.write_all(owner.render().as_bytes())
        .map_err(|e| Error::io("write state file", &path, e))?;
    Ok(true)
}

/// The owner recorded for run `id`, if its state file exists and is readable.
pub fn read(id: &RunId) -> Option<Owner> {
    Owner::parse(&fs::read_to_string(path(id)).ok()?)
}

/// Removes run `id`'s state file; a missing file is not an error.
pub fn remove(id: &RunId) -> Result<(), Error> {
    let path = path(id);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// The run ids that have a state file.
pub fn list() -> Vec<RunId> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            RunId::parse(name.to_str()?.strip_suffix(".owner")?)
        })
        .collect()
}

/// Process state letter and start time of `pid`, `None` if there is no such process.
fn stat(pid: u32) -> io::Result<Option<(char, u64)>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may contain spaces: parse after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); start time is field 22.
    let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
    let start = fields
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no start time in stat"))?;
    Ok(Some((state, start)))
}

/// The start time of `pid`, `None` if there is no such process.
pub fn start_time(pid: u32) -> io::Result<Option<u64>> {
    Ok(stat(pid)?.map(|(_, start)| start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = Owner::current().unwrap();
        assert!(me.is_alive());
        let impostor = Owner {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_alive());
    }

    #[test]
    fn owner_round_trips_through_text() {
        let owner = Owner {
            pid: 4242,
            start_time: 987_654,
        };
        assert_eq!(Owner::parse(&owner.render()), Some(owner));
        assert_eq!(Owner::parse("pid 1\n"), None);
    }
}
