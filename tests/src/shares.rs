//! Traffic splits checked statistically: a measured share of calls against the binomial of its
//! configured weight, within 3σ, measured once more when outside (see [`assert_shares`]).

use std::io::Write as _;

/// Writes a line straight to stderr, so that the measured numbers show even for passing tests.
fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A measured share: `hits` of `n` calls, expected with probability `p`.
pub struct Share {
    /// What was measured, e.g. "bookinfo 80/20: v2".
    pub what: &'static str,
    /// Calls that landed where measured.
    pub hits: u64,
    /// Calls in all.
    pub n: u64,
    /// The expected probability of landing there.
    pub p: f64,
}

/// A [`Share`].
pub fn share(what: &'static str, hits: u64, n: u64, p: f64) -> Share {
    Share { what, hits, n, p }
}

impl Share {
    /// Whether `hits` is within 3σ of the binomial's mean; prints the numbers.
    pub fn within_3_sigma(&self) -> bool {
        let Share { what, hits, n, p } = *self;
        let mean = n as f64 * p;
        let three_sigma = 3.0 * (n as f64 * p * (1.0 - p)).sqrt();
        note(&format!(
            "share: {what}: {hits} of {n} ({:.1}%), expected {mean:.0} ± {three_sigma:.0} (3σ)",
            100.0 * hits as f64 / n as f64
        ));
        (hits as f64 - mean).abs() <= three_sigma
    }
}

/// Asserts that the shares `measure` returns are within 3σ of the binomial. A correct split
/// still lands outside 3σ 0.27 % of the time per share, and a test file may check ten or more: so a
/// measurement with a share outside is repeated once with fresh requests, and the second one
/// decides. A wrong split fails both; a correct one fails both about once in 140 000 runs.
pub fn assert_shares(mut measure: impl FnMut() -> Vec<Share>) {
    let first = measure();
    let outside: Vec<_> = first.iter().filter(|s| !s.within_3_sigma()).collect();
    if outside.is_empty() {
        return;
    }
    let names: Vec<_> = outside.iter().map(|s| s.what).collect();
    note(&format!(
        "share: outside 3σ: {names:?}; measuring once more, the second measurement decides"
    ));
    for s in measure() {
        assert!(
            s.within_3_sigma(),
            "{}: {} of {}, expected {:.0} ± {:.0} (3σ of the binomial, p = {}), twice in a row",
            s.what,
            s.hits,
            s.n,
            s.n as f64 * s.p,
            3.0 * (s.n as f64 * s.p * (1.0 - s.p)).sqrt(),
            s.p
        );
    }
}
