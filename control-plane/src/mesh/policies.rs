//! Policy changes on the writer thread: generations, preconditions, history records.
//!
//! Generation rules (admin.proto, policy.proto): 1 on creation, +1 on every stored change
//! including deletes, never reused for a (namespace, name); an identical apply stores nothing;
//! `if_generation` absent = unconditional, 0 = must not exist, N = must be at N.

use std::sync::Arc;
use std::time::SystemTime;

use serin_policy::{TrafficPolicy, ValidationError, VersionWeight, validate};

use super::{MeshError, Writer, policy_for};
use crate::model::{ChangeCause, MeshView, PolicyDraft, PolicyKey, Revision, StoredPolicy};
use crate::store::Change;

/// What an apply (or another policy change) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The policy did not exist and was created.
    Created,
    /// It existed and changed.
    Updated,
    /// It existed and is identical: nothing stored or pushed.
    Unchanged,
}

/// A valid-but-suspicious finding about a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    /// Path of the field, e.g. `spec.default.route[1].version`.
    pub field: String,
    /// One lowercase line.
    pub message: String,
}

/// The result of a policy change.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The policy as stored (or as it would be, for a dry run).
    pub policy: Arc<StoredPolicy>,
    /// What happened.
    pub outcome: Outcome,
    /// Findings of validation.
    pub warnings: Vec<PolicyWarning>,
}

/// Validation errors as one `field: problem` line each.
pub fn invalid(errors: &[ValidationError]) -> MeshError {
    MeshError::Invalid(
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// SetWeights' request check (both backends).
pub(crate) fn require_weights(weights: &[VersionWeight]) -> Result<(), MeshError> {
    if weights.is_empty() {
        return Err(MeshError::Invalid(
            "weights: at least one version is required".into(),
        ));
    }
    Ok(())
}

/// The policy SetWeights makes: `current` with `weights` as its default route, or a new policy
/// of the service with only that route.
pub(crate) fn with_weights(
    current: Option<&TrafficPolicy>,
    namespace: &str,
    service: &str,
    weights: Vec<VersionWeight>,
) -> TrafficPolicy {
    match current {
        Some(p) => {
            let mut p = p.clone();
            p.spec.default.route = weights;
            p
        }
        None => policy_for(namespace, service, weights),
    }
}

/// Promote's precondition (both backends): the version has a ready endpoint, unless `force`.
pub(crate) fn require_ready(
    view: &MeshView,
    namespace: &str,
    service: &str,
    version: &str,
    force: bool,
) -> Result<(), MeshError> {
    let ready = view
        .versions(namespace, service)
        .get(version)
        .map_or(0, |c| c.ready);
    if ready == 0 && !force {
        return Err(MeshError::FailedPrecondition(format!(
            "version {version} of service {namespace}/{service} has no ready endpoints; promoting it would leave no version to serve (set force, `serinctl promote --force`, to promote anyway)"
        )));
    }
    Ok(())
}

/// The policy Promote makes: `current` taken over by `version`, or a new policy of the service
/// sending it everything.
pub(crate) fn promoted(
    current: Option<&TrafficPolicy>,
    namespace: &str,
    service: &str,
    version: &str,
) -> Result<TrafficPolicy, MeshError> {
    match current {
        Some(p) => serin_policy::edit::promote(p, version).map_err(|e| match e {
            serin_policy::EditError::Invalid(errors) => invalid(&errors),
            other => MeshError::Invalid(other.to_string()),
        }),
        None => Ok(policy_for(
            namespace,
            service,
            vec![VersionWeight::new(version, 100)],
        )),
    }
}

/// Validates `policy` against the service's known versions; returns its warnings.
pub(crate) fn checked(
    view: &MeshView,
    policy: &TrafficPolicy,
) -> Result<Vec<PolicyWarning>, MeshError> {
    let known = view.known_versions(&policy.metadata.namespace, &policy.spec.service);
    let validated = validate(policy, Some(&known)).map_err(|e| invalid(&e))?;
    Ok(validated
        .warnings()
        .iter()
        .map(|w| PolicyWarning {
            field: w.path.clone(),
            message: w.kind.to_string(),
        })
        .collect())
}

/// The live generation (0 when absent or deleted) and a precondition check against it.
fn precondition(
    key: &PolicyKey,
    latest: Option<&Revision>,
    if_generation: Option<u64>,
) -> Result<(), MeshError> {
    let live = latest
        .filter(|r| !r.is_delete())
        .map_or(0, |r| r.generation);
    match if_generation {
        None => Ok(()),
        Some(n) if n == live => Ok(()),
        Some(n) => Err(MeshError::Aborted(match (live, latest) {
            (0, Some(deleted)) => format!(
                "policy {key} does not exist (deleted at generation {}), but if_generation is {n}; re-read and retry",
                deleted.generation
            ),
            (0, None) => {
                format!("policy {key} does not exist, but if_generation is {n}; re-read and retry")
            }
            (current, _) if n == 0 => format!(
                "policy {key} already exists at generation {current}, but if_generation 0 asks to create it; re-read and retry"
            ),
            (current, _) => format!(
                "policy {key} is at generation {current}, not {n} (if_generation); re-read and retry"
            ),
        })),
    }
}

impl Writer {
    /// Fails when another live policy governs the same service.
    fn check_service_free(&self, key: &PolicyKey, policy: &TrafficPolicy) -> Result<(), MeshError> {
        match self
            .view
            .policy_for_service(&key.namespace, &policy.spec.service)
        {
            Some(other) if other.key() != *key => Err(MeshError::AlreadyExists(format!(
                "service {}/{} is already governed by policy {}; edit that policy or delete it first",
                key.namespace,
                policy.spec.service,
                other.key()
            ))),
            _ => Ok(()),
        }
    }

    /// Stores `policy` as the next generation after `latest`, commits and updates the view.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per cause, each naming what it stores"
    )]
    fn store_generation(
        &mut self,
        mut change: Change,
        latest: Option<&Revision>,
        mut policy: TrafficPolicy,
        annotations: std::collections::BTreeMap<String, String>,
        cause: ChangeCause,
        restored_generation: u64,
        dry_run: bool,
    ) -> Result<Arc<StoredPolicy>, MeshError> {
        let now = SystemTime::now();
        let generation = latest.map_or(0, |r| r.generation) + 1;
        policy.metadata.generation = Some(generation);
        let stored = StoredPolicy {
            policy,
            annotations,
            create_time: latest.map_or(now, |r| r.policy.create_time),
            update_time: now,
        };
        if dry_run {
            return Ok(Arc::new(stored));
        }
        change.put_revision(&Revision {
            generation,
            cause,
            time: now,
            restored_generation,
            policy: stored.clone(),
        })?;
        change.commit()?;
        let stored = Arc::new(stored);
        self.view.policies.insert(stored.key(), stored.clone());
        self.dirty = true;
        tracing::info!(policy = %stored.key(), generation, ?cause, "policy stored");
        Ok(stored)
    }

    pub(super) fn apply(
        &mut self,
        draft: PolicyDraft,
        if_generation: Option<u64>,
        dry_run: bool,
    ) -> Result<Applied, MeshError> {
        let key = draft.key();
        let warnings = checked(&self.view, &draft.policy)?;
        let change = self.change()?;
        let latest = change.latest_revision(&key)?;
        precondition(&key, latest.as_ref(), if_generation)?;
        self.check_service_free(&key, &draft.policy)?;
        let live = latest.as_ref().filter(|r| !r.is_delete());
        if let Some(current) = live
            && current.policy.same_content(&draft)
        {
            return Ok(Applied {
                policy: Arc::new(current.policy.clone()),
                outcome: Outcome::Unchanged,
                warnings,
            });
        }
        let outcome = if live.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        let policy = self.store_generation(
            change,
            latest.as_ref(),
            draft.policy,
            draft.annotations,
            ChangeCause::Apply,
            0,
            dry_run,
        )?;
        Ok(Applied {
            policy,
            outcome,
            warnings,
        })
    }

    pub(super) fn delete(
        &mut self,
        key: &PolicyKey,
        if_generation: Option<u64>,
    ) -> Result<(Arc<StoredPolicy>, u64), MeshError> {
        if if_generation == Some(0) {
            return Err(MeshError::Invalid(
                "if_generation: must be greater than 0 for a delete".into(),
            ));
        }
        let mut change = self.change()?;
        let latest = change.latest_revision(key)?;
        let Some(current) = latest.as_ref().filter(|r| !r.is_delete()) else {
            return Err(MeshError::NotFound(format!("policy {key} not found")));
        };
        precondition(key, latest.as_ref(), if_generation)?;
        let generation = current.generation + 1;
        let before = current.policy.clone();
        change.put_revision(&Revision {
            generation,
            cause: ChangeCause::Delete,
            time: SystemTime::now(),
            restored_generation: 0,
            policy: before.clone(),
        })?;
        change.commit()?;
        self.view.policies.remove(key);
        self.dirty = true;
        tracing::info!(policy = %key, generation, "policy deleted");
        Ok((Arc::new(before), generation))
    }

    /// The key of the policy of a service: its live policy, else one named after the service.
    fn key_for_service(&self, namespace: &str, service: &str) -> PolicyKey {
        self.view
            .policy_for_service(namespace, service)
            .map_or_else(|| PolicyKey::new(namespace, service), |p| p.key())
    }

    /// Read-modify-write of a service's policy (SetWeights, Promote): `edit` gets the current
    /// policy (None when the service has none) and returns the new one.
    fn edit_service_policy(
        &mut self,
        namespace: &str,
        service: &str,
        if_generation: Option<u64>,
        cause: ChangeCause,
        edit: impl FnOnce(Option<&TrafficPolicy>) -> Result<TrafficPolicy, MeshError>,
    ) -> Result<Applied, MeshError> {
        let key = self.key_for_service(namespace, service);
        let change = self.change()?;
        let latest = change.latest_revision(&key)?;
        precondition(&key, latest.as_ref(), if_generation)?;
        let live = latest.as_ref().filter(|r| !r.is_delete());
        let mut policy = edit(live.map(|r| &r.policy.policy))?;
        policy.metadata.generation = None;
        let warnings = checked(&self.view, &policy)?;
        let annotations = live
            .map(|r| r.policy.annotations.clone())
            .unwrap_or_default();
        if let Some(current) = live
            && current.policy.same_content(&PolicyDraft {
                policy: policy.clone(),
                annotations: annotations.clone(),
            })
        {
            return Ok(Applied {
                policy: Arc::new(current.policy.clone()),
                outcome: Outcome::Unchanged,
                warnings,
            });
        }
        self.check_service_free(&key, &policy)?;
        let outcome = if live.is_some() {
            Outcome::Updated
        } else {
            Outcome::Created
        };
        let policy = self.store_generation(
            change,
            latest.as_ref(),
            policy,
            annotations,
            cause,
            0,
            false,
        )?;
        Ok(Applied {
            policy,
            outcome,
            warnings,
        })
    }

    pub(super) fn set_weights(
        &mut self,
        namespace: &str,
        service: &str,
        weights: Vec<VersionWeight>,
        if_generation: Option<u64>,
    ) -> Result<Applied, MeshError> {
        require_weights(&weights)?;
        self.edit_service_policy(
            namespace,
            service,
            if_generation,
            ChangeCause::SetWeights,
            |current| Ok(with_weights(current, namespace, service, weights)),
        )
    }

    pub(super) fn promote(
        &mut self,
        namespace: &str,
        service: &str,
        version: &str,
        if_generation: Option<u64>,
        force: bool,
    ) -> Result<Applied, MeshError> {
        require_ready(&self.view, namespace, service, version, force)?;
        self.edit_service_policy(
            namespace,
            service,
            if_generation,
            ChangeCause::Promote,
            |current| promoted(current, namespace, service, version),
        )
    }

    pub(super) fn rollback(
        &mut self,
        namespace: &str,
        service: &str,
        to_generation: Option<u64>,
        if_generation: Option<u64>,
    ) -> Result<(Applied, u64), MeshError> {
        let change = self.change()?;
        let key = match self.view.policy_for_service(namespace, service) {
            Some(p) => p.key(),
            None => change
                .deleted_in(namespace)?
                .into_iter()
                .rev()
                .find(|r| r.policy.service() == service)
                .map(|r| r.policy.key())
                .ok_or_else(|| {
                    MeshError::NotFound(format!(
                        "service {namespace}/{service} has no policy, live or deleted, to roll back"
                    ))
                })?,
        };
        let latest = change.latest_revision(&key)?;
        precondition(&key, latest.as_ref(), if_generation)?;
        let Some(latest) = latest else {
            return Err(MeshError::NotFound(format!("policy {key} has no history")));
        };
        let source = match to_generation {
            Some(g) => {
                let rev = change.revision(&key, g)?.ok_or_else(|| {
                    MeshError::NotFound(format!(
                        "policy {key} has no generation {g} (the store keeps the last {} generations of each policy)",
                        crate::store::HISTORY_KEPT
                    ))
                })?;
                if rev.is_delete() {
                    return Err(MeshError::Invalid(format!(
                        "to_generation: generation {g} of policy {key} is a deletion record; name a generation with content"
                    )));
                }
                rev
            }
            // A deletion record holds the policy as it was just before: that is the one to restore.
            None if latest.is_delete() => {
                let g = latest.policy.generation();
                change.revision(&key, g)?.ok_or_else(|| {
                    MeshError::NotFound(format!("policy {key} has no generation {g}"))
                })?
            }
            None => {
                let mut g = latest.generation;
                loop {
                    if g <= 1 {
                        return Err(MeshError::NotFound(format!(
                            "policy {key} has no generation before {} to roll back to",
                            latest.generation
                        )));
                    }
                    g -= 1;
                    if let Some(rev) = change.revision(&key, g)?
                        && !rev.is_delete()
                    {
                        break rev;
                    }
                }
            }
        };
        let restored = source.generation;
        let annotations = source.policy.annotations;
        let policy = source.policy.policy;
        let warnings = checked(&self.view, &policy)?;
        self.check_service_free(&key, &policy)?;
        let outcome = if latest.is_delete() {
            Outcome::Created
        } else {
            Outcome::Updated
        };
        let stored = self.store_generation(
            change,
            Some(&latest),
            policy,
            annotations,
            ChangeCause::Rollback,
            restored,
            false,
        )?;
        Ok((
            Applied {
                policy: stored,
                outcome,
                warnings,
            },
            restored,
        ))
    }
}
