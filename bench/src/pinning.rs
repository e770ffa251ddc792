//! Which CPU each side runs on. On this project's 2-core machines the client pod (load generator
//! and client-side proxy) gets one core and the server pod (upstream and server-side proxy) the
//! other, as two pods on two nodes' worth of CPU would: a proxy competes for CPU with the workload
//! in its own pod, as a sidecar does.

use std::fmt;

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs of the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinning {
    /// Load generator and client-side proxy.
    pub client: usize,
    /// Upstream and server-side proxy.
    pub server: usize,
}

impl Pinning {
    /// The first two CPUs this process may run on (the same one twice on a single CPU).
    pub fn detect() -> anyhow::Result<Pinning> {
        let allowed = sched_getaffinity(Pid::from_raw(0))?;
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|&cpu| allowed.is_set(cpu).unwrap_or(false))
            .collect();
        Ok(Pinning::from_allowed(&cpus))
    }

    /// The plan for a set of allowed CPUs.
    pub fn from_allowed(cpus: &[usize]) -> Pinning {
        let client = cpus.first().copied().unwrap_or(0);
        let server = cpus.get(1).copied().unwrap_or(client);
        Pinning { client, server }
    }
}

impl fmt::Display for Pinning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "load generator and client-side proxy on CPU {} (`taskset -c {}`), upstream and \
             server-side proxy on CPU {} (`taskset -c {}`)",
            self.client, self.client, self.server, self.server
        )
    }
}

/// Pins the calling thread (and the threads it starts later) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_cpus_split_the_sides_one_cpu_shares() {
        assert_eq!(
            Pinning::from_allowed(&[0, 1]),
            Pinning {
                client: 0,
                server: 1
            }
        );
        assert_eq!(
            Pinning::from_allowed(&[3]),
            Pinning {
                client: 3,
                server: 3
            }
        );
    }
}
