//! Per-namespace hosts files: `ip netns exec NS` bind-mounts `/etc/netns/NS/hosts` over
//! `/etc/hosts`, so names like `reviews.default.svc.cluster.local` resolve inside a pod.
//!
//! Each namespace also gets a `resolv.conf` naming only 127.0.0.1: a pod cannot reach the host's
//! DNS server anyway, and a refused query on loopback fails at once where an unreachable server
//! would cost a timeout per lookup (glibc asks DNS for an IPv6 address whenever the hosts file has
//! only an IPv4 one).
//!
//! The first version of the file is written to a temporary file and renamed into place. Later
//! versions are written over the same inode instead: the bind mount of a process already running
//! in the pod pins that inode, and glibc rereads `/etc/hosts` on every lookup, so a service added
//! later (`serinctl run` of a new service) resolves in pods started before it. Entries are only
//! ever appended, so a reader racing the rewrite sees the old file or the old file plus part of
//! the new last line, never a file with entries missing.

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::Error;
use crate::ip::netns_etc_dir;

/// The cluster domain of the `svc.cluster.local` names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// One line of a hosts file: an address and the names that resolve to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// The address the names resolve to.
    pub ip: IpAddr,
    /// The names, first the canonical one.
    pub names: Vec<String>,
}

impl HostEntry {
    /// An entry after checking every name.
    pub fn new<S: AsRef<str>>(ip: IpAddr, names: &[S]) -> Result<Self, Error> {
        let names = names
            .iter()
            .map(|name| {
                let name = name.as_ref();
                validate_host_name(name)?;
                Ok(name.to_owned())
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if names.is_empty() {
            return Err(Error::InvalidHostName {
                name: String::new(),
                reason: "an entry needs at least one name",
            });
        }
        Ok(HostEntry { ip, names })
    }

    /// The entry for a Kubernetes-style service: `svc`, `svc.ns` and `svc.ns.svc.cluster.local`.
    pub fn service(ip: IpAddr, service: &str, namespace: &str) -> Result<Self, Error> {
        HostEntry::new(ip, &service_names(service, namespace))
    }
}

/// The names a service answers to from inside the mesh, shortest first.
pub fn service_names(service: &str, namespace: &str) -> [String; 3] {
    [
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc.{CLUSTER_DOMAIN}"),
    ]
}

/// Checks that `name` is a host name a hosts file can carry: dot-separated labels of letters,
/// digits and `-`, at most 253 characters.
pub fn validate_host_name(name: &str) -> Result<(), Error> {
    let invalid = |reason| {
        Err(Error::InvalidHostName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 253 {
        return invalid("must be 1 to 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return invalid("every dot-separated label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return invalid("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid("a label must not start or end with '-'");
        }
    }
    Ok(())
}

/// Renders a hosts file: loopback names, then `entries` in order (glibc takes the first match, so
/// earlier entries win).
pub(crate) fn render(header: &str, entries: &[&HostEntry]) -> String {
    let mut out =
        format!("# {header}\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for entry in entries {
        let _ = writeln!(out, "{}\t{}", entry.ip, entry.names.join(" "));
    }
    out
}

/// The hosts file of namespace `netns`.
pub(crate) fn path(netns: &str) -> PathBuf {
    netns_etc_dir(netns).join("hosts")
}

/// The `resolv.conf` of every namespace: no reachable DNS server, fail fast.
const RESOLV_CONF: &str = "# serin-local: no DNS in the mesh; names resolve through /etc/hosts\n\
                           nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";

/// Writes the hosts file (and `resolv.conf`) of namespace `netns` atomically, creating
/// `/etc/netns/<netns>/`.
pub(crate) fn write(netns: &str, content: &str) -> Result<(), Error> {
    let dir = netns_etc_dir(netns);
    fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    replace(&dir, "resolv.conf", RESOLV_CONF)?;
    let hosts = dir.join("hosts");
    if hosts.exists() {
        rewrite_in_place(&hosts, content)
    } else {
        replace(&dir, "hosts", content)
    }
}

/// Overwrites `path` from its first byte and cuts it to the new length, keeping its inode.
fn rewrite_in_place(path: &Path, content: &str) -> Result<(), Error> {
    use std::io::Write as _;
    let mut file = fs::File::options()
        .write(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.set_len(content.len() as u64))
        .map_err(|e| Error::io("write", path, e))
}

/// Replaces `dir/name` by writing a temporary file and renaming it over.
fn replace(dir: &Path, name: &str, content: &str) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content).map_err(|e| Error::io("write", &tmp, e))?;
    let target = dir.join(name);
    fs::rename(&tmp, &target).map_err(|e| Error::io("replace", &target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_loopback_then_entries_in_order() {
        let own = HostEntry::new("10.244.0.2".parse().unwrap(), &["a"]).unwrap();
        let svc = HostEntry::service("10.96.0.10".parse().unwrap(), "reviews", "default").unwrap();
        let text = render("pod a", &[&own, &svc]);
        assert_eq!(
            text,
            "# pod a\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.244.0.2\ta\n\
             10.96.0.10\treviews reviews.default reviews.default.svc.cluster.local\n"
        );
    }

    #[test]
    fn rejects_names_a_hosts_file_cannot_carry() {
        for bad in ["", "a b", "a..b", "-a", "a_b", "a\nb", &"x".repeat(64)] {
            assert!(validate_host_name(bad).is_err(), "{bad:?}");
        }
        validate_host_name("reviews.default.svc.cluster.local").unwrap();
        assert!(HostEntry::new::<&str>("10.96.0.1".parse().unwrap(), &[]).is_err());
    }
}
