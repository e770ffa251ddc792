//! The load generator's two loops, independent of the protocol spoken:
//! - **open loop** (fixed rate): every request has an *intended* send time fixed in advance by a
//!   [`Schedule`]; a request is sent at its intended time or, when the connection is still busy
//!   with an earlier one, as soon as it is free, and its latency is measured *from the intended
//!   time*. A stall therefore shows in the latencies of every request that should have been sent
//!   during it, not only in the one request that was stuck (the coordinated-omission correction
//!   of wrk2 and HdrHistogram).
//! - **closed loop** (capacity): every connection sends its next request as soon as the previous
//!   answer is in; completions per second is the capacity.
//!
//! Both stop by themselves: no request starts after the deadline, and one still in flight is
//! given up at the deadline plus a grace period and counted as an error.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::histogram::Latencies;

/// How long after the end of a run an unfinished request is waited for.
pub const GRACE: Duration = Duration::from_secs(2);
/// Closed loop: pause after a failed exchange, so a dead connection is not hammered.
const ERROR_PAUSE: Duration = Duration::from_millis(1);

/// One connection's (or one stream's) way of doing a request-response exchange.
pub trait Exchange {
    /// Sends one request and reads its whole answer; `Err` describes a failure (transport error,
    /// unexpected status).
    fn exchange(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// When each request of one connection should be sent: `connections` connections share a total
/// `rate`, each sending every `connections / rate` seconds, offset from each other by
/// `1 / rate` so that the sends of the whole run are evenly spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    start: Instant,
    interval: Duration,
}

impl Schedule {
    /// The schedule of connection `index` of `connections` sharing `rate` requests per second,
    /// starting at `start`.
    pub fn new(start: Instant, rate: u32, connections: u32, index: u32) -> Schedule {
        let rate = f64::from(rate.max(1));
        let connections = connections.max(1);
        Schedule {
            start: start + Duration::from_secs_f64(f64::from(index % connections) / rate),
            interval: Duration::from_secs_f64(f64::from(connections) / rate),
        }
    }

    /// The intended send time of this connection's `n`th request.
    pub fn intended(&self, n: u32) -> Instant {
        self.start + self.interval * n
    }
}

/// What one connection did during a run.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Latencies of the requests that got an answer or failed (open loop: from the intended
    /// time).
    pub latencies: Latencies,
    /// Successful exchanges.
    pub ok: u64,
    /// Failed exchanges (including those given up at the deadline).
    pub errors: u64,
    /// Open loop: requests whose intended time fell inside the run but that were never sent
    /// because earlier ones had not finished by the end (the rate was not sustained).
    pub missed: u64,
    /// The first failure, to explain the errors.
    pub first_error: Option<String>,
}

impl Outcome {
    /// Adds another connection's outcome.
    pub fn merge(&mut self, other: &Outcome) {
        self.latencies.merge(&other.latencies);
        self.ok += other.ok;
        self.errors += other.errors;
        self.missed += other.missed;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why);
        }
    }
}

/// Runs `conn` at its `schedule` until `end` (no request is intended at or after `end`).
pub async fn open_loop<E: Exchange>(conn: &mut E, schedule: Schedule, end: Instant) -> Outcome {
    open_loop_until(conn, schedule, end, &AtomicBool::new(false)).await
}

/// [`open_loop`], also ending (no new request) once `stop` is set: a run whose length is not
/// known in advance, bounded by `end` all the same.
pub async fn open_loop_until<E: Exchange>(
    conn: &mut E,
    schedule: Schedule,
    end: Instant,
    stop: &AtomicBool,
) -> Outcome {
    let mut outcome = Outcome::default();
    let give_up = end + GRACE;
    let mut n = 0;
    loop {
        let intended = schedule.intended(n);
        if intended >= end {
            break;
        }
        if Instant::now() >= give_up {
            // Everything still due was never sent: count it, do not invent latencies for it.
            while schedule.intended(n) < end {
                outcome.missed += 1;
                n += 1;
            }
            break;
        }
        tokio::time::sleep_until(intended).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match tokio::time::timeout_at(give_up, conn.exchange()).await {
            Ok(Ok(())) => outcome.ok += 1,
            Ok(Err(why)) => outcome.fail(why),
            Err(_) => outcome.fail(format!("no answer within {GRACE:?} after the run ended")),
        }
        outcome.latencies.record(Instant::now() - intended);
        n += 1;
    }
    outcome
}

/// Runs `conn` back to back until `end`; latencies are from each send.
pub async fn closed_loop<E: Exchange>(conn: &mut E, end: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    let give_up = end + GRACE;
    while Instant::now() < end {
        let sent = Instant::now();
        let failed = match tokio::time::timeout_at(give_up, conn.exchange()).await {
            Ok(Ok(())) => {
                outcome.ok += 1;
                false
            }
            Ok(Err(why)) => {
                outcome.fail(why);
                true
            }
            Err(_) => {
                outcome.fail(format!("no answer within {GRACE:?} after the run ended"));
                true
            }
        };
        outcome.latencies.record(Instant::now() - sent);
        if failed {
            // A dead connection fails at once: do not spin on it.
            tokio::time::sleep(ERROR_PAUSE).await;
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An exchange that takes `normal`, except the `stall_at`th call which takes `stall`; time is
    /// tokio's paused clock, so the test is exact and instant.
    struct Fake {
        calls: u32,
        normal: Duration,
        stall_at: u32,
        stall: Duration,
        sent_at: Arc<Mutex<Vec<Instant>>>,
    }

    impl Exchange for Fake {
        fn exchange(&mut self) -> impl Future<Output = Result<(), String>> + Send {
            self.calls += 1;
            self.sent_at.lock().unwrap().push(Instant::now());
            let took = if self.calls == self.stall_at {
                self.stall
            } else {
                self.normal
            };
            async move {
                tokio::time::sleep(took).await;
                Ok(())
            }
        }
    }

    fn fake(stall: Duration) -> Fake {
        Fake {
            calls: 0,
            normal: Duration::from_millis(1),
            stall_at: 101,
            stall,
            sent_at: Arc::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_shows_in_every_request_it_delayed() {
        // 100 rps on one connection for 10 s; the 101st request takes 1 s instead of 1 ms.
        let start = Instant::now();
        let mut conn = fake(Duration::from_secs(1));
        let out = open_loop(
            &mut conn,
            Schedule::new(start, 100, 1, 0),
            start + Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.ok, 1000);
        assert_eq!((out.errors, out.missed), (0, 0));
        let s = out.latencies.summary();
        // The stall delayed the ~100 requests due during it (10 % of the run): the 90th
        // percentile is still fast, but everything above it saw the backlog.
        assert!(s.p50 <= Duration::from_micros(1001), "{s:?}");
        assert!(s.p99 >= Duration::from_millis(900), "{s:?}");
        assert!(s.max >= Duration::from_secs(1), "{s:?}");
        // Uncorrected, only one sample in 1000 would be slow and p99 would be 1 ms.
        let mut naive = Latencies::new();
        for _ in 0..999 {
            naive.record(Duration::from_millis(1));
        }
        naive.record(Duration::from_secs(1));
        assert!(naive.summary().p99 <= Duration::from_micros(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_leave_at_their_intended_times_when_the_server_keeps_up() {
        let start = Instant::now();
        let mut conn = fake(Duration::from_millis(1));
        let sent_at = Arc::clone(&conn.sent_at);
        // Connection 1 of 4 sharing 1000 rps: every 4 ms, offset by 1 ms.
        let schedule = Schedule::new(start, 1000, 4, 1);
        let out = open_loop(&mut conn, schedule, start + Duration::from_millis(100)).await;
        assert_eq!(out.ok, 25);
        let sent = sent_at.lock().unwrap();
        // The timer wheel ticks in milliseconds: each send is within one tick of its time.
        for (n, at) in sent.iter().enumerate() {
            let due = start + Duration::from_millis(1 + 4 * n as u64);
            assert!(
                *at >= due && *at - due < Duration::from_millis(1),
                "send {n}"
            );
        }
        assert!(out.latencies.summary().max < Duration::from_millis(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_exchange_ends_the_run_at_the_grace_deadline() {
        let start = Instant::now();
        let mut conn = fake(Duration::from_secs(3600));
        conn.stall_at = 1;
        let end = start + Duration::from_secs(1);
        let out = open_loop(&mut conn, Schedule::new(start, 10, 1, 0), end).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(1) + GRACE);
        assert_eq!(out.errors, 1);
        assert_eq!(out.missed, 9);
        assert!(out.first_error.unwrap().contains("no answer"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopped_open_loop_sends_nothing_more() {
        let start = Instant::now();
        let mut conn = fake(Duration::from_millis(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(95)).await;
            flag.store(true, Ordering::Relaxed);
        });
        // 100 rps for up to an hour; stopped after 95 ms: the ten requests due before, none
        // missed, and the loop ends when the next one is due.
        let schedule = Schedule::new(start, 100, 1, 0);
        let end = start + Duration::from_secs(3600);
        let out = open_loop_until(&mut conn, schedule, end, &stop).await;
        assert_eq!((out.ok, out.errors, out.missed), (10, 0, 0));
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_counts_back_to_back_exchanges() {
        let start = Instant::now();
        let mut conn = fake(Duration::from_millis(1));
        let out = closed_loop(&mut conn, start + Duration::from_millis(50)).await;
        assert_eq!(out.ok, 50);
        let mut merged = Outcome::default();
        merged.merge(&out);
        merged.merge(&out);
        assert_eq!(merged.ok, 100);
        assert_eq!(merged.latencies.count(), 100);
    }
}
