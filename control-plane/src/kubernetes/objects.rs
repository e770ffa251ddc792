//! The Admin API's policy writes in Kubernetes mode: ApplyPolicy, DeletePolicy, SetWeights,
//! Promote and Rollback become writes of TrafficPolicy objects on the API server, which is the
//! store. Each is a read-modify-write: get the object, check `if_generation` against its
//! `metadata.generation`, build the new object, and replace it with the resourceVersion it was
//! read at (create when absent); a conflict (another replica or kubectl wrote meanwhile) reads
//! again and retries. The generation before each write goes into the object's
//! `serin.io/history` annotation, so `rollback` works after a restart and on every replica.
//! Reads stay on the watched cache: after a write the call waits (a few seconds at most) until
//! the cache shows it, so that a caller reads its own write as in the embedded mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams, Preconditions};
use serde_json::{Value, json};
use serin_policy::{TrafficPolicy, VersionWeight};
use tokio::sync::watch;

use super::policies::{
    CHANGE_ANNOTATION, ChangeNote, ClusterPolicies, HISTORY_ANNOTATION, HISTORY_LIMIT,
    LAST_APPLIED_ANNOTATION, PolicyObject, api_resource, read,
};
use super::view::{current_revision, stored};
use crate::mesh::{
    Applied, MeshError, Outcome, checked, policy_for, promoted, require_ready, require_weights,
    with_weights,
};
use crate::model::{ChangeCause, MeshView, PolicyDraft, PolicyKey, Revision, StoredPolicy};

/// How many times a write that lost a race (409 Conflict) is tried again.
const CONFLICT_RETRIES: usize = 8;
/// How long a write waits for the watched cache to show it.
const READ_YOUR_WRITE: Duration = Duration::from_secs(5);

/// Writes TrafficPolicy objects; reads history from the watched cache.
#[derive(Clone)]
pub struct PolicyObjects {
    client: kube::Client,
    resource: ApiResource,
    view: watch::Receiver<Arc<MeshView>>,
    policies: watch::Receiver<Arc<ClusterPolicies>>,
}

impl std::fmt::Debug for PolicyObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyObjects")
            .field("resource", &self.resource.plural)
            .finish_non_exhaustive()
    }
}

/// What a change wants stored.
struct Desired {
    policy: TrafficPolicy,
    annotations: BTreeMap<String, String>,
    restored: u64,
}

fn api_error(what: &str, key: &PolicyKey, e: &kube::Error) -> MeshError {
    match e {
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => MeshError::Invalid(format!(
            "the API server refused {what} policy {key}: {}",
            s.message
        )),
        kube::Error::Api(s) if s.code == 403 => MeshError::FailedPrecondition(format!(
            "the API server forbids {what} policy {key} (check the serin-control ClusterRole): {}",
            s.message
        )),
        _ => MeshError::Kubernetes(format!("cannot {what} policy {key} on the API server: {e}")),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// `if_generation` against the object's generation (0 when absent), with the embedded mode's
/// messages.
fn precondition(
    key: &PolicyKey,
    current: Option<&PolicyObject>,
    if_generation: Option<u64>,
) -> Result<(), MeshError> {
    let live = current.map_or(0, |c| u64::try_from(c.generation).unwrap_or(0));
    match if_generation {
        None => Ok(()),
        Some(n) if n == live => Ok(()),
        Some(n) if live == 0 => Err(MeshError::Aborted(format!(
            "policy {key} does not exist, but if_generation is {n}; re-read and retry"
        ))),
        Some(0) => Err(MeshError::Aborted(format!(
            "policy {key} already exists at generation {live}, but if_generation 0 asks to create it; re-read and retry"
        ))),
        Some(n) => Err(MeshError::Aborted(format!(
            "policy {key} is at generation {live}, not {n} (if_generation); re-read and retry"
        ))),
    }
}

impl PolicyObjects {
    /// Writes through `client`; `view` and `policies` are the watched caches.
    pub fn new(
        client: kube::Client,
        view: watch::Receiver<Arc<MeshView>>,
        policies: watch::Receiver<Arc<ClusterPolicies>>,
    ) -> Self {
        Self {
            client,
            resource: api_resource(),
            view,
            policies,
        }
    }

    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.resource)
    }

    /// The key of the policy of a service: its live policy, else one named after the service.
    fn key_for_service(&self, namespace: &str, service: &str) -> PolicyKey {
        self.view
            .borrow()
            .policy_for_service(namespace, service)
            .map_or_else(|| PolicyKey::new(namespace, service), |p| p.key())
    }

    /// The read-modify-write loop every change goes through.
    async fn write(
        &self,
        key: &PolicyKey,
        if_generation: Option<u64>,
        cause: ChangeCause,
        dry_run: bool,
        edit: impl Fn(Option<&PolicyObject>) -> Result<Desired, MeshError>,
    ) -> Result<(Applied, u64), MeshError> {
        let api = self.api(&key.namespace);
        for _ in 0..CONFLICT_RETRIES {
            let object = api
                .get_opt(&key.name)
                .await
                .map_err(|e| api_error("read", key, &e))?;
            let current = object.as_ref().and_then(read).map(|(_, o)| o);
            precondition(key, current.as_ref(), if_generation)?;
            let mut desired = edit(current.as_ref())?;
            desired.policy.metadata.name = key.name.clone();
            desired.policy.metadata.namespace = key.namespace.clone();
            desired.policy.metadata.generation = None;
            let view = self.view.borrow().clone();
            let warnings = checked(&view, &desired.policy)?;
            if let Some(other) =
                view.policy_for_service(&key.namespace, &desired.policy.spec.service)
                && other.key() != *key
            {
                return Err(MeshError::AlreadyExists(format!(
                    "service {}/{} is already governed by policy {}; edit that policy or delete it first",
                    key.namespace,
                    desired.policy.spec.service,
                    other.key()
                )));
            }
            let live = current
                .as_ref()
                .and_then(|c| c.policy.as_ref().ok().map(|p| (c, p)));
            if let Some((c, p)) = live {
                let now = stored(key, c, p);
                if now.same_content(&PolicyDraft {
                    policy: desired.policy.clone(),
                    annotations: desired.annotations.clone(),
                }) {
                    return Ok((
                        Applied {
                            policy: Arc::new(now),
                            outcome: Outcome::Unchanged,
                            warnings,
                        },
                        desired.restored,
                    ));
                }
            }
            let outcome = if object.is_some() {
                Outcome::Updated
            } else {
                Outcome::Created
            };
            // The API server raises the generation by one on a spec change (and sets 1 on create).
            let generation = match &current {
                None => 1,
                Some(c) if live.is_some_and(|(_, p)| p.spec == desired.policy.spec) => c.generation,
                Some(c) => c.generation + 1,
            };
            let note = ChangeNote {
                generation,
                cause,
                time: SystemTime::now(),
                restored_generation: desired.restored,
            };
            let mut history: Vec<Revision> = current
                .as_ref()
                .map(|c| c.history.clone())
                .unwrap_or_default();
            if let Some(c) = &current
                && c.generation != generation
                && let Some(rev) = current_revision(key, c)
            {
                history.insert(0, rev);
            }
            history.truncate(HISTORY_LIMIT);
            let new_object = self.object(key, object.as_ref(), &desired, &note, &history)?;
            if dry_run {
                let mut policy = desired.policy;
                policy.metadata.generation = Some(u64::try_from(generation).unwrap_or(0));
                let now = SystemTime::now();
                return Ok((
                    Applied {
                        policy: Arc::new(StoredPolicy {
                            policy,
                            annotations: desired.annotations,
                            create_time: current.as_ref().and_then(|c| c.created).unwrap_or(now),
                            update_time: now,
                        }),
                        outcome,
                        warnings,
                    },
                    desired.restored,
                ));
            }
            let written = match &object {
                Some(_) => {
                    api.replace(&key.name, &PostParams::default(), &new_object)
                        .await
                }
                None => api.create(&PostParams::default(), &new_object).await,
            };
            let written = match written {
                Ok(w) => w,
                Err(e) if is_conflict(&e) => {
                    tracing::debug!(policy = %key, "conflicting write; reading the policy again");
                    continue;
                }
                Err(e) => return Err(api_error("write", key, &e)),
            };
            let Some((_, read_back)) = read(&written) else {
                return Err(MeshError::Kubernetes(format!(
                    "the API server answered the write of policy {key} with an object without a name"
                )));
            };
            let policy = match &read_back.policy {
                Ok(p) => stored(key, &read_back, p),
                Err(e) => {
                    return Err(MeshError::Kubernetes(format!(
                        "policy {key} as the API server stored it does not read back: {e}"
                    )));
                }
            };
            tracing::info!(policy = %key, generation = read_back.generation, ?cause, "policy written to the API server");
            self.wait_for(key, Some(read_back.generation)).await;
            return Ok((
                Applied {
                    policy: Arc::new(policy),
                    outcome,
                    warnings,
                },
                desired.restored,
            ));
        }
        Err(MeshError::Aborted(format!(
            "policy {key} kept changing while it was written ({CONFLICT_RETRIES} conflicts); retry"
        )))
    }

    /// The object to write: `desired` over `current` (its resourceVersion, kubectl's annotation).
    fn object(
        &self,
        key: &PolicyKey,
        current: Option<&DynamicObject>,
        desired: &Desired,
        note: &ChangeNote,
        history: &[Revision],
    ) -> Result<DynamicObject, MeshError> {
        let mut annotations: BTreeMap<String, String> = desired.annotations.clone();
        if let Some(last) = current
            .and_then(|c| c.metadata.annotations.as_ref())
            .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
        {
            annotations.insert(LAST_APPLIED_ANNOTATION.to_owned(), last.clone());
        }
        let encode = |what: &str, v: Result<String, serde_json::Error>| {
            v.map_err(|e| {
                MeshError::Kubernetes(format!("cannot encode the {what} of policy {key}: {e}"))
            })
        };
        annotations.insert(
            CHANGE_ANNOTATION.to_owned(),
            encode("change note", serde_json::to_string(note))?,
        );
        if !history.is_empty() {
            annotations.insert(
                HISTORY_ANNOTATION.to_owned(),
                encode("history", serde_json::to_string(history))?,
            );
        }
        let spec = serde_json::to_value(&desired.policy.spec)
            .map_err(|e| MeshError::Kubernetes(format!("cannot encode policy {key}: {e}")))?;
        let mut metadata = json!({
            "name": key.name,
            "namespace": key.namespace,
            "annotations": annotations,
        });
        if let Some(labels) = &desired.policy.metadata.labels {
            metadata["labels"] = json!(labels);
        }
        if let Some(rv) = current.and_then(|c| c.metadata.resource_version.clone()) {
            metadata["resourceVersion"] = Value::String(rv);
        }
        let value = json!({
            "apiVersion": self.resource.api_version,
            "kind": self.resource.kind,
            "metadata": metadata,
            "spec": spec,
        });
        serde_json::from_value(value).map_err(|e| {
            MeshError::Kubernetes(format!("cannot build the object of policy {key}: {e}"))
        })
    }

    /// Waits until the cache shows `key` at `generation` (`None`: gone), a few seconds at most.
    async fn wait_for(&self, key: &PolicyKey, generation: Option<i64>) {
        let mut view = self.view.clone();
        let shown = tokio::time::timeout(
            READ_YOUR_WRITE,
            view.wait_for(|v| match (v.policies.get(key), generation) {
                (None, None) => true,
                (Some(p), Some(g)) => i64::try_from(p.generation()).is_ok_and(|n| n >= g),
                _ => false,
            }),
        )
        .await;
        if shown.is_err() {
            tracing::warn!(policy = %key, "the watched cache does not show the write yet");
        }
    }

    /// ApplyPolicy.
    pub async fn apply(
        &self,
        draft: PolicyDraft,
        if_generation: Option<u64>,
        dry_run: bool,
    ) -> Result<Applied, MeshError> {
        let key = draft.key();
        let (applied, _) = self
            .write(&key, if_generation, ChangeCause::Apply, dry_run, |_| {
                Ok(Desired {
                    policy: draft.policy.clone(),
                    annotations: draft.annotations.clone(),
                    restored: 0,
                })
            })
            .await?;
        Ok(applied)
    }

    /// DeletePolicy: the object goes (with the resourceVersion it was read at); the generation
    /// a deletion would have is returned, as the embedded mode does, though the API server keeps
    /// no record of it.
    pub async fn delete(
        &self,
        key: PolicyKey,
        if_generation: Option<u64>,
    ) -> Result<(Arc<StoredPolicy>, u64), MeshError> {
        if if_generation == Some(0) {
            return Err(MeshError::Invalid(
                "if_generation: must be greater than 0 for a delete".into(),
            ));
        }
        let api = self.api(&key.namespace);
        for _ in 0..CONFLICT_RETRIES {
            let object = api
                .get_opt(&key.name)
                .await
                .map_err(|e| api_error("read", &key, &e))?;
            let Some((object, current)) = object.and_then(|o| read(&o).map(|(_, c)| (o, c))) else {
                return Err(MeshError::NotFound(format!("policy {key} not found")));
            };
            precondition(&key, Some(&current), if_generation)?;
            let before = match &current.policy {
                Ok(p) => stored(&key, &current, p),
                Err(_) => StoredPolicy {
                    policy: policy_for(&key.namespace, &key.name, Vec::new()),
                    annotations: current.annotations.clone(),
                    create_time: current.created.unwrap_or(SystemTime::UNIX_EPOCH),
                    update_time: current.created.unwrap_or(SystemTime::UNIX_EPOCH),
                },
            };
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: object.metadata.resource_version.clone(),
                    uid: object.metadata.uid.clone(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&key.name, &params).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => continue,
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    return Err(MeshError::NotFound(format!("policy {key} not found")));
                }
                Err(e) => return Err(api_error("delete", &key, &e)),
            }
            tracing::info!(policy = %key, "policy deleted from the API server");
            self.wait_for(&key, None).await;
            let generation = u64::try_from(current.generation).unwrap_or(0) + 1;
            return Ok((Arc::new(before), generation));
        }
        Err(MeshError::Aborted(format!(
            "policy {key} kept changing while it was deleted ({CONFLICT_RETRIES} conflicts); retry"
        )))
    }

    /// SetWeights.
    pub async fn set_weights(
        &self,
        namespace: &str,
        service: &str,
        weights: Vec<VersionWeight>,
        if_generation: Option<u64>,
    ) -> Result<Applied, MeshError> {
        require_weights(&weights)?;
        let key = self.key_for_service(namespace, service);
        let (applied, _) = self
            .write(
                &key,
                if_generation,
                ChangeCause::SetWeights,
                false,
                |current| {
                    let (policy, annotations) = current_or_new(current, namespace, service);
                    let policy = with_weights(policy.as_ref(), namespace, service, weights.clone());
                    Ok(Desired {
                        policy,
                        annotations,
                        restored: 0,
                    })
                },
            )
            .await?;
        Ok(applied)
    }

    /// Promote.
    pub async fn promote(
        &self,
        namespace: &str,
        service: &str,
        version: &str,
        if_generation: Option<u64>,
        force: bool,
    ) -> Result<Applied, MeshError> {
        require_ready(&self.view.borrow(), namespace, service, version, force)?;
        let key = self.key_for_service(namespace, service);
        let (applied, _) = self
            .write(
                &key,
                if_generation,
                ChangeCause::Promote,
                false,
                |current| {
                    let (policy, annotations) = current_or_new(current, namespace, service);
                    let policy = promoted(policy.as_ref(), namespace, service, version)?;
                    Ok(Desired {
                        policy,
                        annotations,
                        restored: 0,
                    })
                },
            )
            .await?;
        Ok(applied)
    }

    /// Rollback: the generation before the current one (or `to_generation`) from the object's
    /// history annotation, written as a new generation.
    pub async fn rollback(
        &self,
        namespace: &str,
        service: &str,
        to_generation: Option<u64>,
        if_generation: Option<u64>,
    ) -> Result<(Applied, u64), MeshError> {
        let Some(key) = self
            .view
            .borrow()
            .policy_for_service(namespace, service)
            .map(|p| p.key())
        else {
            return Err(MeshError::NotFound(format!(
                "service {namespace}/{service} has no policy to roll back (in Kubernetes mode a deleted policy's history goes with its object)"
            )));
        };
        self.write(&key, if_generation, ChangeCause::Rollback, false, |current| {
            let Some(current) = current else {
                return Err(MeshError::NotFound(format!("policy {key} not found")));
            };
            let now = u64::try_from(current.generation).unwrap_or(0);
            let source = match to_generation {
                Some(g) => current
                    .history
                    .iter()
                    .find(|r| r.generation == g)
                    .ok_or_else(|| {
                        MeshError::NotFound(format!(
                            "policy {key} has no generation {g} in its history (the last {HISTORY_LIMIT} generations written through serin are kept)"
                        ))
                    })?,
                None => current
                    .history
                    .iter()
                    .find(|r| r.generation < now)
                    .ok_or_else(|| {
                        MeshError::NotFound(format!(
                            "policy {key} has no generation before {now} to roll back to"
                        ))
                    })?,
            };
            Ok(Desired {
                policy: source.policy.policy.clone(),
                annotations: source.policy.annotations.clone(),
                restored: source.generation,
            })
        })
        .await
    }

    /// The policy's generations, newest first: the current one, then its history annotation.
    pub fn history(&self, key: &PolicyKey, limit: usize) -> Vec<Revision> {
        let policies = self.policies.borrow().clone();
        let Some(object) = policies.by_key.get(key) else {
            return Vec::new();
        };
        let limit = if limit == 0 { usize::MAX } else { limit };
        current_revision(key, object)
            .into_iter()
            .chain(object.history.iter().cloned())
            .take(limit)
            .collect()
    }

    /// One generation of a policy, when it is current or in the history.
    pub fn revision(&self, key: &PolicyKey, generation: u64) -> Option<Revision> {
        self.history(key, 0)
            .into_iter()
            .find(|r| r.generation == generation)
    }
}

/// The current valid policy and its annotations (an invalid object is replaced whole).
fn current_or_new(
    current: Option<&PolicyObject>,
    namespace: &str,
    service: &str,
) -> (Option<TrafficPolicy>, BTreeMap<String, String>) {
    match current {
        Some(c) => match &c.policy {
            Ok(p) => (Some(p.clone()), c.annotations.clone()),
            Err(e) => {
                tracing::warn!(%namespace, %service, error = %e, "replacing an invalid TrafficPolicy");
                (None, c.annotations.clone())
            }
        },
        None => (None, BTreeMap::new()),
    }
}
