//! Waiting for a condition with a deadline instead of a fixed sleep.

use std::time::{Duration, Instant};

/// How long to pause between two checks.
const INTERVAL: Duration = Duration::from_millis(10);

/// Calls `check` until it returns `Some` or `timeout` has passed; returns the last answer.
///
/// The condition is always checked at least once, and once more after the deadline, so a slow
/// machine that is late to check never turns a met condition into a timeout.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(INTERVAL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut calls = 0;
        let got = poll_until(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(got, Some(3));
    }

    #[test]
    fn gives_up_after_the_deadline() {
        assert_eq!(poll_until(Duration::from_millis(30), || None::<()>), None);
    }
}
