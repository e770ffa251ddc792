//! Graceful shutdown: one [`Trigger`] held by the app, a [`Watch`] cloned into every listener and
//! connection. `Trigger::drain` tells every watcher to wind down, then waits until all of them
//! are dropped or the deadline passes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Starts a drain and waits for it.
#[derive(Debug)]
pub struct Trigger {
    signal: watch::Sender<bool>,
    done: mpsc::Receiver<()>,
}

/// Held by anything that must finish before the process exits.
#[derive(Debug, Clone)]
pub struct Watch {
    signal: watch::Receiver<bool>,
    // Never sent on: the trigger learns that every watch is gone when the channel closes.
    _alive: mpsc::Sender<()>,
}

/// A new trigger and its first watch.
pub fn new() -> (Trigger, Watch) {
    let (signal, signal_rx) = watch::channel(false);
    let (alive, done) = mpsc::channel(1);
    (
        Trigger { signal, done },
        Watch {
            signal: signal_rx,
            _alive: alive,
        },
    )
}

/// Tells whether a drain started without holding it up (for readiness).
#[derive(Debug, Clone)]
pub struct Draining(watch::Receiver<bool>);

impl Draining {
    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }
}

impl Trigger {
    /// A readiness view of this trigger.
    pub fn draining(&self) -> Draining {
        Draining(self.signal.subscribe())
    }

    /// Signals every watch, then waits until all are dropped or `deadline` passes. Returns
    /// whether everything finished in time.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.signal.send(true);
        tokio::time::timeout(deadline, self.done.recv())
            .await
            .is_ok()
    }
}

impl Watch {
    /// Resolves once a drain has started (at once if it already has).
    pub async fn signaled(&self) {
        let mut signal = self.signal.clone();
        // An error means the trigger is gone, which also ends everything.
        let _ = signal.wait_for(|draining| *draining).await;
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// [`Watch::signaled`] for a future polled on every wake of a busy task (a connection): once
    /// the first poll has registered the task's waker, later polls only look whether the channel
    /// changed (an atomic load) instead of registering again (a lock). A drain, or the trigger
    /// going away, wakes the task through the waker registered first, which stays the task's.
    pub fn signaled_in_task(&self) -> Signaled<'_> {
        Signaled {
            watch: self,
            wait: Box::pin(self.signaled()),
            registered: false,
        }
    }
}

/// See [`Watch::signaled_in_task`].
pub struct Signaled<'a> {
    watch: &'a Watch,
    wait: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    registered: bool,
}

impl Future for Signaled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // `has_changed` is `Ok(false)` while nothing was sent and the trigger lives.
        if self.registered && matches!(self.watch.signal.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        self.registered = true;
        self.wait.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_watches_then_returns() {
        let (trigger, watch) = new();
        let worker = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            worker.signaled().await;
            assert!(worker.is_draining());
        });
        assert!(trigger.drain(Duration::from_secs(5)).await);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn signaled_in_task_wakes_on_a_drain_and_when_the_trigger_goes() {
        for drop_trigger in [false, true] {
            let (trigger, watch) = new();
            let worker = watch.clone();
            let task = tokio::spawn(async move {
                // Polled many times before the drain, as a busy connection polls it.
                let mut signaled = std::pin::pin!(worker.signaled_in_task());
                for _ in 0..3 {
                    assert!(futures_poll_once(signaled.as_mut()).await.is_pending());
                }
                signaled.await;
            });
            tokio::task::yield_now().await;
            if drop_trigger {
                drop(trigger);
            } else {
                let _ = trigger.signal.send(true);
            }
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the watch woke its task")
                .unwrap();
            drop(watch);
        }
    }

    /// Polls `fut` once.
    async fn futures_poll_once<F: Future + Unpin>(fut: F) -> Poll<F::Output> {
        let mut fut = fut;
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let (trigger, watch) = new();
        let _stuck = watch;
        assert!(!trigger.drain(Duration::from_millis(20)).await);
    }
}
