//! TrafficPolicies as custom resources (`trafficpolicies.serin.io`, v1): a kube-rs watcher keeps
//! every policy object of the cluster, each is validated by serin-policy (a bad one is kept as its
//! error, not dropped silently), and the control plane writes back what it made of it in the
//! status subresource (`observedGeneration`, `lastError`). The API server is the store: several
//! control-plane replicas watch the same objects and write the same status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use serin_policy::{CompiledPolicy, TrafficPolicy};
use tokio::sync::{Notify, watch};

use crate::model::{ChangeCause, PolicyKey, Revision};

/// The field manager named in status writes.
pub const FIELD_MANAGER: &str = "serin-control";
/// The annotation that keeps a policy's earlier generations (JSON, newest first, at most
/// [`HISTORY_LIMIT`]): what `serinctl rollback` restores, kept on the object itself so that it
/// survives control-plane restarts and is the same for every replica.
pub const HISTORY_ANNOTATION: &str = "serin.io/history";
/// The annotation that says which call made the current generation (JSON [`ChangeNote`]).
pub const CHANGE_ANNOTATION: &str = "serin.io/change";
/// kubectl's record of the last applied object: kept on writes, not shown as a user annotation.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// Earlier generations kept in [`HISTORY_ANNOTATION`].
pub const HISTORY_LIMIT: usize = 10;

/// Which call made a generation, written with it by the control plane.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChangeNote {
    /// The generation the write made (a spec change raises `metadata.generation` by one).
    pub generation: i64,
    /// The call.
    pub cause: ChangeCause,
    /// When.
    pub time: SystemTime,
    /// For a rollback, the generation restored; 0 otherwise.
    #[serde(default)]
    pub restored_generation: u64,
}

/// True for annotations the control plane or kubectl keep, which are no user annotations.
pub fn is_system_annotation(name: &str) -> bool {
    matches!(
        name,
        HISTORY_ANNOTATION | CHANGE_ANNOTATION | LAST_APPLIED_ANNOTATION
    )
}

/// The custom resource's type.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: "serin.io".to_owned(),
        version: "v1".to_owned(),
        api_version: "serin.io/v1".to_owned(),
        kind: "TrafficPolicy".to_owned(),
        plural: "trafficpolicies".to_owned(),
    }
}

/// One TrafficPolicy object as the control plane reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyObject {
    /// Its generation (`metadata.generation`): bumped by the API server on every spec change.
    pub generation: i64,
    /// The valid policy (with its labels, without a generation), or why it is not one (the
    /// field and the reason).
    pub policy: Result<TrafficPolicy, String>,
    /// User annotations (the control plane's and kubectl's own left out).
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`.
    pub created: Option<SystemTime>,
    /// Which call made the current generation, when the control plane wrote it.
    pub change: Option<ChangeNote>,
    /// Earlier generations, newest first (from [`HISTORY_ANNOTATION`]; empty when it is absent
    /// or unreadable).
    pub history: Vec<Revision>,
}

/// Every TrafficPolicy object of the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterPolicies {
    /// By namespace and name.
    pub by_key: BTreeMap<PolicyKey, PolicyObject>,
}

/// Reads one object: its spec through serin-policy's parser and validation.
pub fn read(object: &DynamicObject) -> Option<(PolicyKey, PolicyObject)> {
    let name = object.metadata.name.clone()?;
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let document = json!({
        "apiVersion": serin_policy::model::API_VERSION,
        "kind": serin_policy::model::KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": object.data.get("spec").cloned().unwrap_or(Value::Null),
    });
    let policy = serde_json::from_value::<TrafficPolicy>(document)
        .map_err(|e| format!("spec: {e}"))
        .and_then(|policy| match CompiledPolicy::new(&policy) {
            Ok(_) => Ok(policy),
            Err(errors) => Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")),
        });
    let labels = object.metadata.labels.clone().filter(|l| !l.is_empty());
    let policy = policy.map(|mut p| {
        p.metadata.labels = labels;
        p
    });
    let all = object.metadata.annotations.clone().unwrap_or_default();
    let key = PolicyKey::new(&namespace, &name);
    let history = match all.get(HISTORY_ANNOTATION) {
        None => Vec::new(),
        Some(text) => serde_json::from_str(text).unwrap_or_else(|e| {
            tracing::warn!(policy = %key, error = %e, "unreadable {HISTORY_ANNOTATION} annotation; no history");
            Vec::new()
        }),
    };
    let change = all
        .get(CHANGE_ANNOTATION)
        .and_then(|text| serde_json::from_str(text).ok());
    let annotations = all
        .into_iter()
        .filter(|(k, _)| !is_system_annotation(k))
        .collect();
    let generation = object.metadata.generation.unwrap_or(0);
    Some((
        key,
        PolicyObject {
            generation,
            policy,
            annotations,
            created: object
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| SystemTime::from(t.0)),
            change,
            history,
        },
    ))
}

/// The status the control plane writes for `object`, or `None` when it already says that.
pub fn status_patch(object: &DynamicObject, read: &PolicyObject) -> Option<Value> {
    let last_error = read.policy.as_ref().err().cloned().unwrap_or_default();
    let status = object.data.get("status");
    let current_generation = status
        .and_then(|s| s.get("observedGeneration"))
        .and_then(Value::as_i64);
    let current_error = status
        .and_then(|s| s.get("lastError"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if current_generation == Some(read.generation) && current_error == last_error {
        return None;
    }
    Some(json!({"status": {"observedGeneration": read.generation, "lastError": last_error}}))
}

/// The policies from the API server, kept current, with their status written back.
pub struct PolicyWatcher {
    view: watch::Receiver<Arc<ClusterPolicies>>,
    listed: watch::Receiver<bool>,
    client: kube::Client,
    store: Store<DynamicObject>,
    /// Set once [`PolicyWatcher::write_status`] took the status over.
    full_status: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl PolicyWatcher {
    /// Starts watching every namespace; the first view is published once the objects are listed.
    pub fn start(client: &kube::Client, debounce: Duration) -> PolicyWatcher {
        let resource = api_resource();
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
        let store = writer.as_reader();
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        let watch_task = tokio::spawn(async move {
            let events = reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).default_backoff(),
            );
            futures::pin_mut!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(_) => notify.notify_one(),
                    Err(e) => tracing::warn!(error = %e, "TrafficPolicy watch failed; retrying"),
                }
            }
        });
        let (tx, view) = watch::channel(Arc::new(ClusterPolicies::default()));
        let (listed_tx, listed) = watch::channel(false);
        let full_status = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = store.clone();
        let (status_client, full) = (client.clone(), full_status.clone());
        let builder = tokio::spawn(async move {
            if store.wait_until_ready().await.is_err() {
                return;
            }
            let mut written = BTreeMap::new();
            loop {
                let next = publish(&store, &tx);
                listed_tx.send_replace(true);
                if !full.load(std::sync::atomic::Ordering::Acquire) {
                    write_status(&status_client, &resource, &store, &next, &mut written).await;
                }
                changed.notified().await;
                tokio::time::sleep(debounce).await;
            }
        });
        PolicyWatcher {
            view,
            listed,
            client: client.clone(),
            store: reader,
            full_status,
            tasks: vec![watch_task, builder],
        }
    }

    /// The current policies and every later set.
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterPolicies>> {
        self.view.clone()
    }

    /// From now on the status also counts the proxies in sync, per replica (see
    /// [`super::status`]), written by its own task; before this only `observedGeneration` and
    /// `lastError` are written.
    pub fn write_status(&mut self, source: super::status::StatusSource) {
        self.full_status
            .store(true, std::sync::atomic::Ordering::Release);
        self.tasks.push(tokio::spawn(super::status::run(
            self.client.clone(),
            api_resource(),
            self.store.clone(),
            self.view.clone(),
            source,
        )));
    }

    /// Returns once the policies have been listed and the view shows them.
    pub async fn listed(&self) {
        let _ = self.listed.clone().wait_for(|l| *l).await;
    }
}

impl std::fmt::Debug for PolicyWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyWatcher")
            .field("policies", &self.view.borrow().by_key.len())
            .finish_non_exhaustive()
    }
}

impl Drop for PolicyWatcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn publish(
    store: &Store<DynamicObject>,
    tx: &watch::Sender<Arc<ClusterPolicies>>,
) -> Arc<ClusterPolicies> {
    let next = ClusterPolicies {
        by_key: store.state().iter().filter_map(|o| read(o)).collect(),
    };
    tx.send_if_modified(|current| {
        if **current == next {
            return false;
        }
        tracing::debug!(policies = next.by_key.len(), "cluster policies changed");
        *current = Arc::new(next);
        true
    });
    tx.borrow().clone()
}

/// Writes `observedGeneration` and `lastError` where they differ from what the object says,
/// once per change: `written` remembers the last status written per policy, because the store
/// may not have seen our own write yet when the next change arrives. A failed write is logged
/// and tried again on the next change.
async fn write_status(
    client: &kube::Client,
    resource: &ApiResource,
    store: &Store<DynamicObject>,
    policies: &ClusterPolicies,
    written: &mut BTreeMap<PolicyKey, Value>,
) {
    written.retain(|key, _| policies.by_key.contains_key(key));
    for object in store.state() {
        let (Some(name), Some(namespace)) = (&object.metadata.name, &object.metadata.namespace)
        else {
            continue;
        };
        let key = PolicyKey::new(namespace, name);
        let Some(read) = policies.by_key.get(&key) else {
            continue;
        };
        let Some(patch) = status_patch(&object, read) else {
            continue;
        };
        if written.get(&key) == Some(&patch) {
            continue;
        }
        let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, resource);
        let params = PatchParams::apply(FIELD_MANAGER);
        match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                written.insert(key, patch);
            }
            Err(e) => {
                tracing::warn!(policy = %key, error = %e, "cannot write the TrafficPolicy status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(spec: &Value, status: Option<Value>) -> DynamicObject {
        let mut v = json!({"apiVersion": "serin.io/v1", "kind": "TrafficPolicy",
            "metadata": {"name": "reviews", "namespace": "shop", "generation": 3}, "spec": spec});
        if let Some(s) = status {
            v["status"] = s;
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn objects_are_validated_and_errors_kept() {
        let good = object(
            &json!({"service": "reviews", "default": {"route": [{"version": "v1", "weight": 100}]}}),
            None,
        );
        let (key, read_good) = read(&good).unwrap();
        assert_eq!(key, PolicyKey::new("shop", "reviews"));
        assert_eq!(read_good.generation, 3);
        assert!(read_good.policy.is_ok());
        assert_eq!(
            status_patch(&good, &read_good).unwrap(),
            json!({"status": {"observedGeneration": 3, "lastError": ""}})
        );
        let settled = object(
            &json!({"service": "reviews", "default": {"route": [{"version": "v1", "weight": 100}]}}),
            Some(json!({"observedGeneration": 3, "lastError": ""})),
        );
        assert_eq!(
            status_patch(&settled, &read_good),
            None,
            "nothing to write twice"
        );

        let bad = object(
            &json!({"service": "reviews", "default": {"route": [{"version": "v1", "weight": -5}]}}),
            None,
        );
        let (_, read_bad) = read(&bad).unwrap();
        let error = read_bad.policy.clone().unwrap_err();
        assert!(error.contains("weight"), "{error}");
        assert_eq!(
            status_patch(&bad, &read_bad).unwrap()["status"]["lastError"],
            error
        );
        let typo = object(&json!({"service": "reviews", "defualt": {}}), None);
        assert!(
            read(&typo)
                .unwrap()
                .1
                .policy
                .unwrap_err()
                .starts_with("spec: ")
        );
    }
}
