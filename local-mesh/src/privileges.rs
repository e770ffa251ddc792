//! The privilege check every mesh operation starts with: creating network namespaces, veths and
//! bind mounts needs CAP_SYS_ADMIN and CAP_NET_ADMIN (in practice, root).

use std::fs;

use crate::Error;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;

/// Fails with a clear error unless this process may create network namespaces and links.
pub fn require_root() -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| Error::Privileges {
        reason: format!("cannot read /proc/self/status to check capabilities: {e}"),
    })?;
    let cap_eff = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| Error::Privileges {
            reason: "no CapEff line in /proc/self/status".to_owned(),
        })?;
    let missing: Vec<&str> = [
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| cap_eff & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Privileges {
        reason: format!(
            "process {} (uid {}) lacks {}; run as root (e.g. sudo)",
            std::process::id(),
            nix::unistd::geteuid(),
            missing.join(" and ")
        ),
    })
}

/// Whether [`require_root`] would pass.
pub fn is_privileged() -> bool {
    require_root().is_ok()
}
