//! What a proxy costs the machine, read from `/proc`: CPU time (utime + stime) and resident
//! memory of its whole process tree (nginx's master and worker, a single process for Serin and
//! HAProxy), and a sampler that keeps the peak RSS while load runs.

use std::collections::HashMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the sampler reads RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// One process's line of `/proc/PID/stat`, the fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Parent pid.
    pub ppid: u32,
    /// User CPU, clock ticks.
    pub utime: u64,
    /// System CPU, clock ticks.
    pub stime: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat` text (the command name may hold spaces and parentheses: fields are
/// counted from the last `)`).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15) ... rss(24), numbered from 1.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        rss_pages: field(24)?,
    })
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The pids of `root` and all its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if let Some(stat) = read_stat(pid) {
            children.entry(stat.ppid).or_default().push(pid);
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        out.extend(children.get(&out[i]).into_iter().flatten());
        i += 1;
    }
    out
}

/// CPU time and RSS of a process tree at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// utime + stime of every process, in microseconds.
    pub cpu_us: u64,
    /// The stime part: time in the kernel (syscalls, the network stack), in microseconds.
    pub system_us: u64,
    /// Sum of the processes' RSS, in bytes.
    pub rss_bytes: u64,
}

fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096)
}

/// The usage of the trees rooted at `roots`, summed.
pub fn usage(roots: &[u32]) -> Usage {
    let (tck, page) = (ticks_per_second(), page_size());
    let mut total = Usage::default();
    for &root in roots {
        for pid in tree(root) {
            if let Some(stat) = read_stat(pid) {
                total.cpu_us += (stat.utime + stat.stime) * 1_000_000 / tck;
                total.system_us += stat.stime * 1_000_000 / tck;
                total.rss_bytes += stat.rss_pages * page;
            }
        }
    }
    total
}

/// Samples the RSS of some process trees on a thread until stopped; keeps the peak.
pub struct PeakSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl PeakSampler {
    /// Starts sampling `roots`.
    pub fn start(roots: Vec<u32>) -> PeakSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(usage(&roots).rss_bytes, Ordering::Relaxed);
                    std::thread::sleep(SAMPLE_EVERY);
                }
            })
        };
        PeakSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// Stops and returns the peak RSS seen, in bytes.
    pub fn finish(mut self) -> u64 {
        self.stop_thread();
        self.peak.load(Ordering::Relaxed)
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for PeakSampler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        let text = "4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 1490 0 0 0 \
                    17 5 0 0 20 0 1 0 123456 11223344 2048 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!(
            stat,
            Stat {
                ppid: 4241,
                utime: 17,
                stime: 5,
                rss_pages: 2048
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_usage_is_visible() {
        let me = std::process::id();
        let u = usage(&[me]);
        assert!(u.rss_bytes > 0);
        assert!(tree(me).contains(&me));
    }
}
