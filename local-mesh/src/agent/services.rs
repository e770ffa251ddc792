//! Service VIPs for pods without a sidecar, as kube-proxy does it: in the node namespace, a nat
//! chain `SERIN_SERVICES` DNATs each VIP:port to one of the service's pods (chosen at random,
//! evenly) and the node masquerades what it DNATed, so replies come back through it. A meshed
//! pod's sidecar captures VIP traffic before it leaves the pod and never reaches these rules.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;

use crate::cluster::PodRecord;
use crate::{Error, Netns};

/// The chain holding one DNAT rule per (VIP, port, endpoint).
pub const SERVICES_CHAIN: &str = "SERIN_SERVICES";
/// The chain masquerading DNATed connections.
pub const MASQUERADE_CHAIN: &str = "SERIN_MASQUERADE";

/// The endpoints of each (VIP, port), from the pods.
pub fn endpoints(pods: &[PodRecord]) -> BTreeMap<(Ipv4Addr, u16), Vec<Ipv4Addr>> {
    let mut table: BTreeMap<(Ipv4Addr, u16), Vec<Ipv4Addr>> = BTreeMap::new();
    for pod in pods {
        table.entry((pod.vip, pod.port)).or_default().push(pod.ip);
    }
    table
}

/// The `iptables-restore --noflush` text that replaces the services chain.
pub fn render(table: &BTreeMap<(Ipv4Addr, u16), Vec<Ipv4Addr>>) -> String {
    let mut out = format!("*nat\n:{SERVICES_CHAIN} - [0:0]\n");
    for ((vip, port), pods) in table {
        let n = pods.len();
        for (i, pod) in pods.iter().enumerate() {
            let _ = write!(
                out,
                "-A {SERVICES_CHAIN} -d {vip}/32 -p tcp -m tcp --dport {port} "
            );
            // Rule i of n takes 1/(n-i) of what reaches it: every endpoint gets 1/n.
            if i + 1 < n {
                let _ = write!(
                    out,
                    "-m statistic --mode random --probability {:.6} ",
                    1.0 / (n - i) as f64
                );
            }
            let _ = writeln!(out, "-j DNAT --to-destination {pod}:{port}");
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// Makes the node namespace a router for VIPs: forwarding on, no ICMP redirects (which would
/// teach pods to bypass the DNAT), the chains and their jumps.
pub fn set_up(node: &Netns, bridge: &str) -> Result<(), Error> {
    node.run_in(|| {
        for (key, value) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/all/send_redirects", "0"),
            ("net/ipv4/conf/default/send_redirects", "0"),
            (&format!("net/ipv4/conf/{bridge}/send_redirects"), "0"),
        ] {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value).map_err(|e| Error::io("write", path, e))?;
        }
        Ok(())
    })??;
    restore(
        node,
        &format!(
            "*nat\n:{SERVICES_CHAIN} - [0:0]\n:{MASQUERADE_CHAIN} - [0:0]\n\
             -A {MASQUERADE_CHAIN} -m conntrack --ctstate DNAT -j MASQUERADE\n\
             -A PREROUTING -j {SERVICES_CHAIN}\n-A POSTROUTING -j {MASQUERADE_CHAIN}\nCOMMIT\n"
        ),
    )
}

/// Replaces the services chain with `text` (from [`render`]).
pub fn apply(node: &Netns, text: &str) -> Result<(), Error> {
    restore(node, text)
}

fn restore(node: &Netns, text: &str) -> Result<(), Error> {
    let mut cmd = node.command("iptables-restore");
    cmd.arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let line = crate::ip::render(&cmd);
    let mut child = cmd.spawn().map_err(|e| crate::ip::spawn_error(&cmd, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes()).map_err(|e| Error::Spawn {
            command: line.clone(),
            source: e,
        })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Spawn {
        command: line.clone(),
        source: e,
    })?;
    if !out.status.success() {
        return Err(Error::CommandFailed {
            command: line,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_gets_an_even_share() {
        let vip = Ipv4Addr::new(10, 96, 3, 4);
        let table = BTreeMap::from([(
            (vip, 9080),
            vec![
                Ipv4Addr::new(10, 244, 0, 3),
                Ipv4Addr::new(10, 244, 0, 4),
                Ipv4Addr::new(10, 244, 0, 5),
            ],
        )]);
        assert_eq!(
            render(&table),
            "*nat\n:SERIN_SERVICES - [0:0]\n\
             -A SERIN_SERVICES -d 10.96.3.4/32 -p tcp -m tcp --dport 9080 -m statistic --mode random --probability 0.333333 -j DNAT --to-destination 10.244.0.3:9080\n\
             -A SERIN_SERVICES -d 10.96.3.4/32 -p tcp -m tcp --dport 9080 -m statistic --mode random --probability 0.500000 -j DNAT --to-destination 10.244.0.4:9080\n\
             -A SERIN_SERVICES -d 10.96.3.4/32 -p tcp -m tcp --dport 9080 -j DNAT --to-destination 10.244.0.5:9080\n\
             COMMIT\n"
        );
        assert_eq!(
            render(&BTreeMap::new()),
            "*nat\n:SERIN_SERVICES - [0:0]\nCOMMIT\n"
        );
    }
}
