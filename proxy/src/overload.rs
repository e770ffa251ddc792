//! Per-listener admission limits: concurrent downstream connections and in-flight HTTP requests.
//! Work beyond a limit is turned away at once rather than queued, so an overloaded sidecar
//! answers quickly and its memory stays bounded: a connection over the limit is closed as soon
//! as it is accepted (before a byte is read, so it is closed whatever its protocol), a request
//! over the limit gets `503 serin: overloaded: ...`. Each is counted in
//! `serin_overload_rejections_total{listener, reason}`.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{Metrics, OverloadReason};

/// The limits of one capture listener.
#[derive(Debug, Clone)]
pub struct Admission {
    listener: &'static str,
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

/// Holds a connection's or a request's place under a limit until dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// Limits for the listener named `listener` (`outbound`, `inbound`).
    pub fn new(
        listener: &'static str,
        max_connections: usize,
        max_requests: usize,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            listener,
            connections: Arc::new(Semaphore::new(max_connections)),
            requests: Arc::new(Semaphore::new(max_requests)),
            metrics,
        }
    }

    /// A place for a new connection, or `None` (counted) when the listener is full.
    pub fn connection(&self) -> Option<Admitted> {
        self.admit(&self.connections, OverloadReason::Connections)
    }

    /// A place for a new request, or `None` (counted) when the listener is full.
    pub fn request(&self) -> Option<Admitted> {
        self.admit(&self.requests, OverloadReason::Requests)
    }

    fn admit(&self, limit: &Arc<Semaphore>, reason: OverloadReason) -> Option<Admitted> {
        match Arc::clone(limit).try_acquire_owned() {
            Ok(permit) => Some(Admitted { _permit: permit }),
            Err(_) => {
                self.metrics.overload_rejection(self.listener, reason);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn over_the_limit_is_refused_and_counted_until_a_place_frees() {
        let metrics = Arc::new(Metrics::new());
        let admission = Admission::new("inbound", 1, 2, Arc::clone(&metrics));
        let c = admission.connection().expect("first connection");
        assert!(admission.connection().is_none());
        let r1 = admission.request().expect("first request");
        let _r2 = admission.request().expect("second request");
        assert!(admission.request().is_none());
        assert!(admission.request().is_none());
        drop((c, r1));
        assert!(admission.connection().is_some());
        assert!(admission.request().is_some());
        let text = metrics.render();
        assert!(
            text.contains(
                "serin_overload_rejections_total{listener=\"inbound\",reason=\"connections\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "serin_overload_rejections_total{listener=\"inbound\",reason=\"requests\"} 2"
            ),
            "{text}"
        );
    }
}
