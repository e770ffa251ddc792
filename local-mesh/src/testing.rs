//! Helpers for tests that build meshes: skip politely without root, start tracing, and wait for a
//! condition with a deadline.

use std::io::Write as _;
use std::time::Duration;

use crate::poll::poll_until;
use crate::privileges::require_root;

/// Starts a tracing subscriber that writes through the test harness (so output shows only for
/// failing tests). Honours `RUST_LOG`; defaults to debug for serin crates. Safe to call repeatedly.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,serin=debug,serin_local=debug")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Returns `true` (after printing `skipping <test>: needs root (network namespaces)` and why)
/// when this process may not build meshes; the test should then return at once.
///
/// ```no_run
/// # fn demo() {
/// if serin_local::testing::skip_unless_root("two_pods_talk") {
///     return;
/// }
/// # }
/// ```
pub fn skip_unless_root(test: &str) -> bool {
    match require_root() {
        Ok(()) => false,
        Err(e) => {
            // Straight to stderr, not `eprintln!`: the harness captures the print macros of
            // passing tests, and a skip should show in every log.
            // One write, so lines of tests running in parallel do not interleave.
            let line = format!("skipping {test}: needs root (network namespaces): {e}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            true
        }
    }
}

/// Polls `check` until it returns `Some` and returns the value; panics naming `what` once
/// `timeout` has passed.
pub fn eventually<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}
