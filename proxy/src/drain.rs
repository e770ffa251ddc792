//! Graceful shutdown: one [`Trigger`] held by the app, a [`Watch`] cloned into every listener and
//! connection. `Trigger::drain` tells every watcher to wind down, then waits until all of them
//! are dropped or the deadline passes.

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
    async fn gives_up_at_the_deadline() {
        let (trigger, watch) = new();
        let _stuck = watch;
        assert!(!trigger.drain(Duration::from_millis(20)).await);
    }
}
