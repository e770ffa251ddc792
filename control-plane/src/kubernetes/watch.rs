//! Watches the API server (kube-rs watchers and reflectors) for Services, EndpointSlices and
//! Pods in every namespace and publishes a new [`ClusterView`] after each change. Watches that
//! end are resumed from their last resourceVersion; an expired one (410 Gone) lists again, and
//! the reflector's store then drops what was deleted meanwhile. Errors back off (kube's default:
//! exponential with jitter) and are logged; the last good view stays published.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use super::cluster::{ClusterView, build};

/// How long a burst of events is gathered before the view is rebuilt.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(20);

/// The registry from the API server: a view that follows the cluster.
#[derive(Debug)]
pub struct ClusterRegistry {
    view: watch::Receiver<Arc<ClusterView>>,
    listed: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterRegistry {
    /// Starts the three watchers and the task that rebuilds the view. The first view is published
    /// once every resource has been listed.
    pub fn start(client: &kube::Client, debounce: Duration) -> ClusterRegistry {
        let changed = Arc::new(Notify::new());
        let (services, services_task) = reflect(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            &changed,
        );
        let (slices, slices_task) = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
            &changed,
        );
        let (pods, pods_task) = reflect(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            &changed,
        );
        let (tx, view) = watch::channel(Arc::new(ClusterView::default()));
        let (listed_tx, listed) = watch::channel(false);
        let builder = tokio::spawn(async move {
            for store in [
                services.wait_until_ready().await,
                slices.wait_until_ready().await,
                pods.wait_until_ready().await,
            ] {
                if store.is_err() {
                    return;
                }
            }
            loop {
                let next = build(&services.state(), &slices.state(), &pods.state());
                tx.send_if_modified(|current| {
                    if **current == next {
                        return false;
                    }
                    tracing::debug!(services = next.services.len(), "cluster registry changed");
                    *current = Arc::new(next);
                    true
                });
                listed_tx.send_replace(true);
                changed.notified().await;
                tokio::time::sleep(debounce).await;
            }
        });
        ClusterRegistry {
            view,
            listed,
            tasks: vec![services_task, slices_task, pods_task, builder],
        }
    }

    /// The current view and every later one.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// Returns once the three kinds have been listed and the view shows them.
    pub async fn listed(&self) {
        let _ = self.listed.clone().wait_for(|l| *l).await;
    }
}

impl Drop for ClusterRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A reflector for `api` (the objects `config` selects) on its own task, waking `changed` after
/// every event.
pub(crate) fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (store, writer) = reflector::store::<K>();
    let changed = changed.clone();
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let task = tokio::spawn(async move {
        let events = reflector::reflector(writer, watcher(api, config).default_backoff());
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying"),
            }
        }
    });
    (store, task)
}
