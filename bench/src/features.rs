//! The feature-cost scenarios: Serin forwarding HTTP/1.1 with 100 rules, a 90/10 split and 10 %
//! mirroring, and the same with the mirror target hanging. They need a sidecar that routes by
//! TrafficPolicy; until it does (its admin API answers `/routes` once it does), they are
//! reported as skipped with the reason, never with figures of a proxy that ignores the rules.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::peers::VIP;
use crate::upstream::HANG_PORT;
use crate::workload::Workload;

/// Rules in the policy: each matches a header value no request carries, so every request is
/// checked against all of them before the default split takes it (the worst case).
pub const RULES: usize = 100;

/// One feature-cost scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 100 rules, a 90/10 v1/v2 split and 10 % mirroring to v2, every target answering.
    Policies,
    /// The same, with the mirror version's endpoint accepting and never answering.
    MirrorHangs,
}

impl Scenario {
    /// Both, in report order.
    pub const ALL: [Scenario; 2] = [Scenario::Policies, Scenario::MirrorHangs];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Policies => {
                "HTTP/1.1, Serin 1 hop, 100 rules + 90/10 split + 10 % mirror (target: capacity ≥ 90 % of plain forwarding)"
            }
            Scenario::MirrorHangs => {
                "same, mirror target hangs (target: primary p99 within ±10 % of the line above)"
            }
        }
    }
}

/// The snapshot of `scenario`: service `bench` with versions v1 and v2 on the server pod (v2 on
/// the hanging port when the mirror target hangs) and the policy.
pub fn snapshot(scenario: Scenario, client: IpAddr, server: IpAddr) -> String {
    let port = Workload::Http1KeepAlive.port();
    let v2_port = match scenario {
        Scenario::Policies => port,
        Scenario::MirrorHangs => HANG_PORT,
    };
    let mut rules = String::new();
    for i in 0..RULES {
        let _ = writeln!(
            rules,
            "          - {{name: rule-{i}, match: [{{headers: {{x-bench-user: {{exact: user-{i}}}}}}}], route: [{{version: v2, weight: 100}}]}}"
        );
    }
    format!(
        "# serin-bench: feature cost, {scenario:?}
services:
  - name: bench
    namespace: default
    vips: [\"{VIP}\"]
    ports:
      - {{port: {port}, name: p{port}, protocol: PROTOCOL_HTTP1}}
  - name: bench-client
    namespace: default
endpoints:
  - service: bench
    namespace: default
    endpoints:
      - {{addresses: [\"{server}\"], podName: server-v1, version: v1, ready: true}}
      - {{addresses: [\"{server}\"], podName: server-v2, version: v2, ready: true, ports: [{{name: p{port}, port: {v2_port}}}]}}
  - service: bench-client
    namespace: default
    endpoints: [{{addresses: [\"{client}\"], podName: client, version: v1, ready: true}}]
policies:
  - metadata: {{name: bench, namespace: default}}
    spec:
      service: bench
      rules:
{rules}      default:
        route: [{{version: v1, weight: 90}}, {{version: v2, weight: 10}}]
      mirror: {{version: v2, percent: 10}}
"
    )
}

/// Why the scenarios cannot run against a sidecar whose admin API answered `/routes` with
/// `status` (200 means it routes by policy).
pub fn unsupported_reason(status: Option<u16>) -> Option<String> {
    match status {
        Some(200) => None,
        Some(code) => Some(format!(
            "skipped: this serin-proxy does not route by TrafficPolicy yet (its admin API answers \
             /routes with {code}; policies in its snapshot are counted, not applied — routing and \
             mirroring land in a later issue). Figures of a proxy that ignores the rules would be \
             fake, so there are none"
        )),
        None => Some(
            "skipped: could not ask serin-proxy whether it routes by policy (no Serin 1-hop stage ran)"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::golden;

    #[test]
    fn scenario_snapshots_match_their_golden_files() {
        let client = "10.244.0.2".parse().unwrap();
        let server = "10.244.0.3".parse().unwrap();
        let text = snapshot(Scenario::Policies, client, server);
        assert_eq!(text.matches("name: rule-").count(), RULES);
        golden::check("serin-snapshot-policies.yaml", &text);
        let hanging = snapshot(Scenario::MirrorHangs, client, server);
        assert!(hanging.contains(&format!("port: {HANG_PORT}")));
        golden::check("serin-snapshot-mirror-hangs.yaml", &hanging);
    }

    #[test]
    fn only_a_routing_sidecar_runs_them() {
        assert_eq!(unsupported_reason(Some(200)), None);
        assert!(unsupported_reason(Some(404)).unwrap().contains("404"));
        assert!(unsupported_reason(None).unwrap().starts_with("skipped"));
    }
}
