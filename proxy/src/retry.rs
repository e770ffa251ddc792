//! Retries (FAULTS 27): which failed requests may be sent again, and the retry budget that keeps
//! retries from multiplying load on a failing service.
//!
//! A request may be retried when its method is idempotent (GET, HEAD, OPTIONS, TRACE, PUT,
//! DELETE), it has no body (or an empty one), it is no upgrade or CONNECT, and it failed before
//! any response: the connect failed or the upstream reset the connection. It goes to another
//! ready endpoint of the same version, once, if the service's budget allows: retries may be at
//! most [`RETRY_RATIO`] of the requests of the last [`WINDOW_SECONDS`] seconds, plus
//! [`MIN_RETRIES_PER_SECOND`] per second of the window so that a quiet service can still retry.
//! The budget is kept per service and carried across config updates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{Method, Request};
use http_body::Body;

/// Share of requests that may be retried.
pub const RETRY_RATIO: f64 = 0.2;
/// Retries allowed per second whatever the traffic.
pub const MIN_RETRIES_PER_SECOND: u64 = 10;
/// Length of the sliding window, in one-second buckets.
pub const WINDOW_SECONDS: usize = 10;

/// Whether a request may be retried if it fails before any response.
pub fn eligible<B: Body>(req: &Request<B>) -> bool {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    let empty = req.body().is_end_stream() || req.body().size_hint().upper() == Some(0);
    let upgrade = req.headers().contains_key(http::header::UPGRADE);
    idempotent && empty && !upgrade
}

/// One second of the window: which second it is, and what it counted.
#[derive(Debug, Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The retry budget of one service: lock-free, one-second buckets over a sliding window. Counts
/// may be lost in a race at a bucket's turnover, which only shifts the budget by a request or two.
#[derive(Debug)]
pub struct RetryBudget {
    start: Instant,
    buckets: [Bucket; WINDOW_SECONDS],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new()
    }
}

impl RetryBudget {
    /// An empty budget (only the per-second floor is available).
    pub fn new() -> RetryBudget {
        RetryBudget {
            start: Instant::now(),
            buckets: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        // Second 0 is "never": buckets start at 0, so count from 1.
        self.start.elapsed().as_secs() + 1
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % WINDOW_SECONDS as u64) as usize];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Counts a request (every request to the service, retried or not).
    pub fn deposit(&self) {
        self.deposit_at(self.now());
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(self.now())
    }

    fn window(&self, now: u64) -> (u64, u64) {
        let oldest = now.saturating_sub(WINDOW_SECONDS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| {
                let s = b.second.load(Ordering::Acquire);
                s >= oldest && s <= now
            })
            .fold((0, 0), |(req, ret), b| {
                (
                    req + b.requests.load(Ordering::Relaxed),
                    ret + b.retries.load(Ordering::Relaxed),
                )
            })
    }

    fn deposit_at(&self, second: u64) {
        self.bucket(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    fn withdraw_at(&self, second: u64) -> bool {
        let (requests, retries) = self.window(second);
        let allowed =
            (requests as f64 * RETRY_RATIO) as u64 + MIN_RETRIES_PER_SECOND * WINDOW_SECONDS as u64;
        if retries >= allowed {
            return false;
        }
        self.bucket(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Empty, Full};

    #[test]
    fn only_idempotent_requests_without_a_body_are_eligible() {
        let get = Request::get("/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        assert!(eligible(&get));
        for m in ["HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            let r = Request::builder()
                .method(m)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            assert!(eligible(&r), "{m}");
        }
        let post = Request::post("/")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        assert!(!eligible(&post));
        let put_with_body = Request::put("/")
            .body(Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        assert!(!eligible(&put_with_body));
        let put_empty = Request::put("/")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        assert!(eligible(&put_empty));
        let websocket = Request::get("/")
            .header("upgrade", "websocket")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        assert!(!eligible(&websocket));
    }

    #[test]
    fn retries_are_bounded_by_the_floor_and_the_ratio() {
        let floor = MIN_RETRIES_PER_SECOND * WINDOW_SECONDS as u64;
        let b = RetryBudget::new();
        // No traffic: the floor only.
        let granted = (0..1000).filter(|_| b.withdraw_at(1)).count() as u64;
        assert_eq!(granted, floor);
        // 1000 requests in the window add 20 % of them.
        let b = RetryBudget::new();
        for s in 1..=10 {
            for _ in 0..100 {
                b.deposit_at(s);
            }
        }
        let granted = (0..1000).filter(|_| b.withdraw_at(10)).count() as u64;
        assert_eq!(granted, floor + 200);
    }

    #[test]
    fn the_window_slides() {
        let floor = MIN_RETRIES_PER_SECOND * WINDOW_SECONDS as u64;
        let b = RetryBudget::new();
        let spent = (0..1000).filter(|_| b.withdraw_at(1)).count() as u64;
        assert_eq!(spent, floor);
        assert!(!b.withdraw_at(5), "still inside the window");
        // Ten seconds later the old retries have left the window.
        assert!(b.withdraw_at(11));
        // A bucket reused for a new second starts from zero.
        b.deposit_at(12);
        b.deposit_at(22);
        assert_eq!(b.window(22).0, 1);
    }
}
