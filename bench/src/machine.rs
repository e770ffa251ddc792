//! The machine the run is on (CPU model, cores, kernel, load, proxy versions), and the peers it
//! compares with: nginx and HAProxy from Debian's packages, installed with apt-get when missing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages of the peers (nginx's stream module is a package of its own).
pub const PEER_PACKAGES: [&str; 3] = ["nginx", "libnginx-mod-stream", "haproxy"];
/// Where Debian installs nginx's dynamic stream module.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Makes `invoke-rc.d` refuse to start services while the packages install: their postinst
/// would otherwise start nginx and HAProxy on the host's ports 80 and 8404.
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The first program called `name` on `PATH` (and the sbin directories, which root's PATH may
/// lack under sudo).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// What the peers' installation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// Everything was there.
    Present,
    /// apt-get installed the packages.
    Installed,
    /// It could not be done; the message says why and what to do.
    Failed(String),
}

/// Installs the peers' packages when nginx, its stream module or haproxy is missing.
pub fn ensure_peers() -> Install {
    let missing = find_program("nginx").is_none()
        || find_program("haproxy").is_none()
        || !Path::new(NGINX_STREAM_MODULE).is_file();
    if !missing {
        return Install::Present;
    }
    let hint = format!(
        "install them yourself: apt-get install {}",
        PEER_PACKAGES.join(" ")
    );
    if find_program("apt-get").is_none() {
        return Install::Failed(format!(
            "nginx or HAProxy is missing and there is no apt-get: {hint}"
        ));
    }
    eprintln!(
        "serin-bench: installing {} with apt-get (services are not started)",
        PEER_PACKAGES.join(", ")
    );
    let made_policy = !Path::new(POLICY_RC_D).exists()
        && fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# serin-bench: no service starts while installing\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(POLICY_RC_D, fs::Permissions::from_mode(0o755))
        })
        .is_ok();
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
    };
    let mut result = run(&[
        "install",
        "-y",
        "-q",
        PEER_PACKAGES[0],
        PEER_PACKAGES[1],
        PEER_PACKAGES[2],
    ]);
    if !result.as_ref().is_ok_and(|o| o.status.success()) {
        // A fresh machine may have no package lists yet.
        let _ = run(&["update", "-q"]);
        result = run(&[
            "install",
            "-y",
            "-q",
            PEER_PACKAGES[0],
            PEER_PACKAGES[1],
            PEER_PACKAGES[2],
        ]);
    }
    if made_policy {
        let _ = fs::remove_file(POLICY_RC_D);
    }
    match result {
        Ok(out) if out.status.success() => Install::Installed,
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr.lines().last().unwrap_or("no error output");
            Install::Failed(format!("apt-get install failed ({last}): {hint}"))
        }
        Err(e) => Install::Failed(format!("cannot run apt-get: {e}: {hint}")),
    }
}

/// The first line a program prints for `args` (stdout or stderr).
pub fn version_line(program: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

/// The git revision of the source tree serin-bench was built from (`+changes` when it had
/// uncommitted changes), if that tree is still there.
pub fn source_revision() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).filter(|o| o.status.success())?;
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{head}+changes")
    } else {
        head
    })
}

/// The CPU model from `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// The one-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine's description, one (what, value) pair per line of the report.
pub fn describe(peers: &[(&str, Option<PathBuf>, &[&str])]) -> Vec<(String, String)> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut out = vec![
        (
            "CPU".to_owned(),
            cpu_model(&cpuinfo).unwrap_or_else(|| "unknown".into()),
        ),
        (
            "cores".to_owned(),
            std::thread::available_parallelism().map_or("unknown".into(), |n| n.to_string()),
        ),
        (
            "kernel".to_owned(),
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or("unknown".into(), |s| s.trim().to_owned()),
        ),
    ];
    for (name, program, args) in peers {
        let version = program
            .as_deref()
            .and_then(|p| version_line(p, args))
            .unwrap_or_else(|| "not available".into());
        out.push(((*name).to_owned(), version));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n\
                    processor\t: 1\nmodel name\t: AMD EPYC 7B13\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("nothing"), None);
    }

    #[test]
    fn programs_are_found_on_the_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("no-such-program-serin").is_none());
    }
}
