//! The control-plane scenarios: apply → all-ACK propagation with 1, 100 and 1000 simulated
//! proxies, control-plane RSS with 10 000 subscribers, and zero failed requests over 1000 weight
//! flips under load. They need the `serin-control` binary and a simulated-proxy driver (tonic
//! clients of `serin.v1.Discovery`); until both exist they are listed with the reason.

use std::path::Path;

/// The scenarios, in report order.
pub const SCENARIOS: [&str; 5] = [
    "apply → every proxy acked, 1 simulated proxy",
    "apply → every proxy acked, 100 simulated proxies (target p99 ≤ 100 ms with 1000)",
    "apply → every proxy acked, 1000 simulated proxies (target p99 ≤ 100 ms)",
    "serin-control RSS with 10 000 subscribed proxies (target ≤ 1 GiB)",
    "failed requests over 1000 weight flips under load (target 0)",
];

/// Each scenario with why it was not measured, given where `serin-control` would be.
pub fn skipped(control: Option<&Path>) -> Vec<(String, String)> {
    let why = match control {
        None => "skipped: no serin-control binary next to serin-bench (the control plane is \
                 being built; build it with `cargo build --release -p serin-control`). The \
                 simulated-proxy driver (tonic clients of serin.v1.Discovery) is not part of \
                 serin-bench yet either"
            .to_owned(),
        Some(path) => format!(
            "skipped: {} exists, but serin-bench has no simulated-proxy driver (tonic clients of \
             serin.v1.Discovery) yet, and the sidecar's discovery client is not implemented, so \
             weight flips cannot reach a real sidecar either",
            path.display()
        ),
    };
    SCENARIOS
        .iter()
        .map(|s| ((*s).to_owned(), why.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_says_why_it_was_skipped() {
        let none = skipped(None);
        assert_eq!(none.len(), SCENARIOS.len());
        assert!(
            none.iter()
                .all(|(_, why)| why.starts_with("skipped: no serin-control"))
        );
        let some = skipped(Some(Path::new("/x/serin-control")));
        assert!(some[0].1.contains("/x/serin-control exists"));
    }
}
