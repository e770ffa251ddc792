//! The TrafficPolicy status in Kubernetes mode, written by every replica without a leader.
//!
//! Each replica knows only the sidecars connected to it, so each keeps its own entry under
//! `status.replicas.<replica>` (`proxiesInSync`, `proxiesTotal`, `lastError`, `heartbeat`) and
//! every replica writes the same totals: `proxiesInSync`/`proxiesTotal` are the sums of the live
//! entries, `lastError` the validation error, else the first NACK of any entry (by replica name),
//! `observedGeneration` the object's generation. Writes are JSON merge patches of the status
//! subresource that touch only the writer's own entry (others' entries are kept by the merge),
//! made only when what the object says differs from what this replica computes, and at most once
//! per policy per interval (one pass over the policies per interval). Two replicas writing at once
//! may each sum a stale copy of the other's entry; each sees the other's write through the watch
//! and corrects the totals on its next pass, so they converge instead of fighting. An entry is
//! refreshed (its `heartbeat`, unix seconds) at least every [`HEARTBEAT`]; an entry older than
//! [`STALE_AFTER`] (a replica that is gone) is left out of the sums and removed by the next write.
//!
//! "In sync" for a sidecar of the policy's service (same namespace, `service` in its hello): the
//! last snapshot it ACKed holds the policy at the object's current generation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::policies::{ClusterPolicies, FIELD_MANAGER};
use super::view::effective;
use crate::discovery::ProxyTable;
use crate::discovery::proxies::{ProxyState, ResourceKind};
use crate::model::PolicyKey;

/// A replica refreshes its entry at least this often.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// Entries not refreshed for this long are a gone replica's.
pub const STALE_AFTER: Duration = Duration::from_secs(90);

/// What this replica knows about the sidecars.
#[derive(Debug, Clone)]
pub struct StatusSource {
    /// This replica's name (its entry).
    pub replica: String,
    /// The sidecars connected to this replica.
    pub proxies: Arc<ProxyTable>,
    /// One pass over the policies per interval.
    pub interval: Duration,
}

/// This replica's entry for one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    /// Sidecars of the service that ACKed the current generation.
    pub in_sync: u64,
    /// Sidecars of the service.
    pub total: u64,
    /// A NACK of the policy by one of them ("pod: field: reason"), else "".
    pub last_error: String,
}

/// Counts the sidecars of `service` in `namespace` and those whose ACKed snapshot holds `key`
/// at `generation` (each proxy's own: a sidecar on the mTLS port gets a snapshot scoped to its
/// namespace, with a version of its own); the first current NACK naming the policy.
pub fn entry(
    proxies: &[ProxyState],
    key: &PolicyKey,
    service: &str,
    generation: u64,
) -> ReplicaEntry {
    let mut out = ReplicaEntry {
        in_sync: 0,
        total: 0,
        last_error: String::new(),
    };
    for p in proxies
        .iter()
        .filter(|p| p.identity.namespace == key.namespace && p.identity.service == service)
    {
        out.total += 1;
        if p.acked_policy_generations.get(key) == Some(&generation) {
            out.in_sync += 1;
        }
        if out.last_error.is_empty()
            && let Some(nack) = p.nack.as_ref().filter(|n| n.version == p.sent_version)
            && let Some(e) = nack.errors.iter().find(|e| {
                e.kind == ResourceKind::TrafficPolicy
                    && e.namespace == key.namespace
                    && e.name == key.name
            })
        {
            out.last_error = format!("{}: {}: {}", p.identity.pod_name, e.field, e.reason);
        }
    }
    out
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The merge patch this replica writes for one object, or `None` when the object already says
/// it. `error` is the policy's own error (validation, or its service governed by another).
pub fn patch(
    status: Option<&Value>,
    replica: &str,
    mine: &ReplicaEntry,
    generation: i64,
    error: Option<&str>,
    now: SystemTime,
) -> Option<Value> {
    let empty = Map::new();
    let replicas = status
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let now_s = unix(now);
    let heartbeat = |v: &Value| v.get("heartbeat").and_then(Value::as_u64).unwrap_or(0);
    let stale: Vec<&String> = replicas
        .iter()
        .filter(|(name, v)| {
            name.as_str() != replica && now_s.saturating_sub(heartbeat(v)) > STALE_AFTER.as_secs()
        })
        .map(|(name, _)| name)
        .collect();
    let mine_json = json!({
        "proxiesInSync": mine.in_sync,
        "proxiesTotal": mine.total,
        "lastError": mine.last_error,
    });
    let current_mine = replicas.get(replica);
    let mine_fresh = current_mine.is_some_and(|c| {
        ["proxiesInSync", "proxiesTotal", "lastError"]
            .iter()
            .all(|f| c.get(*f) == mine_json.get(*f))
            && now_s.saturating_sub(heartbeat(c)) < HEARTBEAT.as_secs()
    });
    // The totals over the live entries, with this replica's as it computes it now.
    let mut live: BTreeMap<&str, (u64, u64, &str)> = replicas
        .iter()
        .filter(|(name, _)| !stale.contains(name))
        .map(|(name, v)| {
            (
                name.as_str(),
                (
                    v.get("proxiesInSync").and_then(Value::as_u64).unwrap_or(0),
                    v.get("proxiesTotal").and_then(Value::as_u64).unwrap_or(0),
                    v.get("lastError").and_then(Value::as_str).unwrap_or(""),
                ),
            )
        })
        .collect();
    live.insert(replica, (mine.in_sync, mine.total, &mine.last_error));
    let in_sync: u64 = live.values().map(|e| e.0).sum();
    let total: u64 = live.values().map(|e| e.1).sum();
    let last_error = error
        .or_else(|| live.values().map(|e| e.2).find(|e| !e.is_empty()))
        .unwrap_or("");
    let top = json!({
        "observedGeneration": generation,
        "lastError": last_error,
        "proxiesInSync": in_sync,
        "proxiesTotal": total,
    });
    let top_right = [
        "observedGeneration",
        "lastError",
        "proxiesInSync",
        "proxiesTotal",
    ]
    .iter()
    .all(|f| status.and_then(|s| s.get(*f)) == top.get(*f));
    if mine_fresh && top_right && stale.is_empty() {
        return None;
    }
    let mut entries = Map::new();
    let mut mine_json = mine_json;
    mine_json["heartbeat"] = json!(now_s);
    entries.insert(replica.to_owned(), mine_json);
    for name in stale {
        entries.insert(name.clone(), Value::Null);
    }
    let mut status = top;
    status["replicas"] = Value::Object(entries);
    Some(json!({ "status": status }))
}

/// Writes the status of every policy object, one pass per interval, until aborted.
pub(crate) async fn run(
    client: kube::Client,
    resource: ApiResource,
    store: Store<DynamicObject>,
    policies: watch::Receiver<Arc<ClusterPolicies>>,
    source: StatusSource,
) {
    let params = PatchParams::apply(FIELD_MANAGER);
    loop {
        let policies = policies.borrow().clone();
        let outcomes = effective(&policies);
        let proxies = source.proxies.list();
        for object in store.state() {
            let (Some(name), Some(namespace)) = (&object.metadata.name, &object.metadata.namespace)
            else {
                continue;
            };
            let key = PolicyKey::new(namespace, name);
            let (Some(read), Some(outcome)) = (policies.by_key.get(&key), outcomes.get(&key))
            else {
                continue;
            };
            let generation = read.generation;
            let mine = match outcome {
                Ok(p) => entry(
                    &proxies,
                    &key,
                    &p.spec.service,
                    u64::try_from(generation).unwrap_or(0),
                ),
                Err(_) => ReplicaEntry {
                    in_sync: 0,
                    total: 0,
                    last_error: String::new(),
                },
            };
            let Some(body) = patch(
                object.data.get("status"),
                &source.replica,
                &mine,
                generation,
                outcome.as_ref().err().map(String::as_str),
                SystemTime::now(),
            ) else {
                continue;
            };
            let api = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource);
            if let Err(e) = api.patch_status(name, &params, &Patch::Merge(&body)).await {
                tracing::warn!(policy = %key, error = %e, "cannot write the TrafficPolicy status; retrying at the next pass");
            }
        }
        tokio::time::sleep(source.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine(in_sync: u64, total: u64) -> ReplicaEntry {
        ReplicaEntry {
            in_sync,
            total,
            last_error: String::new(),
        }
    }

    #[test]
    fn replicas_sum_their_entries_and_write_only_changes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = unix(now);
        // First write: my entry and the totals.
        let first = patch(None, "a", &mine(1, 2), 3, None, now).unwrap();
        assert_eq!(
            first,
            json!({"status": {"observedGeneration": 3, "lastError": "", "proxiesInSync": 1,
                "proxiesTotal": 2, "replicas": {"a": {"proxiesInSync": 1, "proxiesTotal": 2,
                "lastError": "", "heartbeat": t}}}})
        );
        // The object says it: nothing to write.
        assert_eq!(
            patch(Some(&first["status"]), "a", &mine(1, 2), 3, None, now),
            None
        );
        // Replica b sees a's entry and adds its own; the totals are the sums.
        let b = patch(Some(&first["status"]), "b", &mine(4, 4), 3, None, now).unwrap();
        assert_eq!(b["status"]["proxiesInSync"], 5);
        assert_eq!(b["status"]["proxiesTotal"], 6);
        assert_eq!(
            b["status"]["replicas"].as_object().unwrap().len(),
            1,
            "only its own entry"
        );
        let mut merged = first["status"].clone();
        json_patch::merge(&mut merged, &b["status"]);
        assert_eq!(
            patch(Some(&merged), "a", &mine(1, 2), 3, None, now),
            None,
            "a agrees"
        );
        assert_eq!(
            patch(Some(&merged), "b", &mine(4, 4), 3, None, now),
            None,
            "b agrees"
        );
        // A NACK in one replica is the lastError; a validation error comes first.
        let nack = ReplicaEntry {
            last_error: "p: spec.rules[0]: bad".into(),
            ..mine(1, 2)
        };
        let p = patch(Some(&merged), "a", &nack, 3, None, now).unwrap();
        assert_eq!(p["status"]["lastError"], "p: spec.rules[0]: bad");
        let p = patch(Some(&merged), "a", &nack, 3, Some("spec: invalid"), now).unwrap();
        assert_eq!(p["status"]["lastError"], "spec: invalid");
        // A gone replica's entry (no heartbeat for STALE_AFTER) leaves the sums and is removed.
        let later = now + STALE_AFTER + HEARTBEAT;
        let p = patch(Some(&merged), "a", &mine(1, 2), 3, None, later).unwrap();
        assert_eq!(p["status"]["replicas"]["b"], Value::Null);
        assert_eq!(p["status"]["proxiesTotal"], 2);
        // Its own entry is refreshed after HEARTBEAT even when nothing changed.
        let p = patch(
            Some(&first["status"]),
            "a",
            &mine(1, 2),
            3,
            None,
            now + HEARTBEAT,
        )
        .unwrap();
        assert_eq!(
            p["status"]["replicas"]["a"]["heartbeat"],
            t + HEARTBEAT.as_secs()
        );
    }
}
