//! The embedded store (redb, one file in `--store DIR`): the last [`HISTORY_KEPT`] revisions of
//! every policy (older ones are pruned as new ones are stored, so a store does not grow without
//! bound under automated weight changes), the
//! registered workloads with their leases, and the services with their VIPs. Every change is one
//! atomic, durable write transaction, so the store survives restarts and `kill -9`.
//!
//! Values are JSON of the domain types (readable with any redb tool, and the policy part is the
//! YAML schema of DESIGN.md, which is a contract already); keys are tuples so that one policy's
//! history is one key range.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::model::{PolicyKey, Registration, Revision, ServiceKey, ServiceRecord, WorkloadKey};

/// Revisions kept per policy: storing generation `g` drops generations `..= g - HISTORY_KEPT`
/// (rollback and history reach that far back).
pub const HISTORY_KEPT: u64 = 1000;

/// Every revision kept: (namespace, name, generation) → [`Revision`].
const REVISIONS: TableDefinition<'_, (&str, &str, u64), &[u8]> =
    TableDefinition::new("policy_revisions");
/// Registered workloads: (namespace, pod name) → [`Registration`].
const WORKLOADS: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("workloads");
/// Services: (namespace, name) → [`ServiceRecord`].
const SERVICES: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("services");

/// Mesh-wide settings: name → JSON value ([`CA_ROOTS`]: the certificate authority's roots,
/// [`MTLS_MODES`]: the mTLS modes).
const SETTINGS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("settings");
/// Settings key of the certificate authority's roots ([`crate::ca::StoredRoots`]).
pub const CA_ROOTS: &str = "ca_roots";
/// Settings key of the mTLS modes ([`crate::model::MtlsModes`]).
pub const MTLS_MODES: &str = "mtls_modes";
/// Settings key of the private namespaces ([`crate::model::MeshView::private_namespaces`]).
pub const PRIVATE_NAMESPACES: &str = "private_namespaces";

/// File name of the database inside the store directory.
pub const FILE_NAME: &str = "serin.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory could not be created.
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be opened.
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: redb::DatabaseError,
    },
    /// A read or write failed.
    #[error("store {op} failed: {source}")]
    Db {
        /// What was being done.
        op: &'static str,
        /// Why.
        source: redb::Error,
    },
    /// A stored value does not decode.
    #[error("store value of {what} does not decode: {source}")]
    Decode {
        /// Which record.
        what: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// Wraps a redb error with what was being done.
fn db_err<E: Into<redb::Error>>(op: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        source: e.into(),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("domain types serialize to JSON")
}

fn decode<T: DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        what: what(),
        source,
    })
}

/// Everything the store holds that the writer keeps in memory.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The latest revision of every policy ever stored (deletion records included).
    pub latest: Vec<Revision>,
    /// Registered workloads.
    pub registrations: Vec<Registration>,
    /// Services.
    pub services: Vec<ServiceRecord>,
}

/// The store: cheap to share, reads never block the writer (redb is MVCC).
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        // Create the tables so that read transactions never meet a missing table.
        let txn = db.begin_write().map_err(db_err("begin"))?;
        txn.open_table(REVISIONS).map_err(db_err("open table"))?;
        txn.open_table(WORKLOADS).map_err(db_err("open table"))?;
        txn.open_table(SERVICES).map_err(db_err("open table"))?;
        txn.open_table(SETTINGS).map_err(db_err("open table"))?;
        txn.commit().map_err(db_err("commit"))?;
        Ok(Store { db, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads everything the writer keeps in memory.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(db_err("begin read"))?;
        let mut loaded = Loaded::default();
        let revisions = txn.open_table(REVISIONS).map_err(db_err("open table"))?;
        for entry in revisions.iter().map_err(db_err("scan"))? {
            let (key, value) = entry.map_err(db_err("scan"))?;
            let (ns, name, generation) = key.value();
            let rev: Revision = decode(
                || format!("policy {ns}/{name} generation {generation}"),
                value.value(),
            )?;
            // Keys sort by generation within a policy: the last one seen is the latest.
            match loaded.latest.last_mut() {
                Some(last) if last.policy.key() == rev.policy.key() => *last = rev,
                _ => loaded.latest.push(rev),
            }
        }
        let workloads = txn.open_table(WORKLOADS).map_err(db_err("open table"))?;
        for entry in workloads.iter().map_err(db_err("scan"))? {
            let (key, value) = entry.map_err(db_err("scan"))?;
            let (ns, pod) = key.value();
            loaded
                .registrations
                .push(decode(|| format!("workload {ns}/{pod}"), value.value())?);
        }
        let services = txn.open_table(SERVICES).map_err(db_err("open table"))?;
        for entry in services.iter().map_err(db_err("scan"))? {
            let (key, value) = entry.map_err(db_err("scan"))?;
            let (ns, name) = key.value();
            loaded
                .services
                .push(decode(|| format!("service {ns}/{name}"), value.value())?);
        }
        Ok(loaded)
    }

    /// Revisions of one policy, newest first, at most `limit` (0 = all).
    pub fn history(&self, key: &PolicyKey, limit: usize) -> Result<Vec<Revision>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err("begin read"))?;
        let table = txn.open_table(REVISIONS).map_err(db_err("open table"))?;
        let range = (key.namespace.as_str(), key.name.as_str(), 0)
            ..=(key.namespace.as_str(), key.name.as_str(), u64::MAX);
        let mut out = Vec::new();
        for entry in table.range(range).map_err(db_err("range"))?.rev() {
            let (k, v) = entry.map_err(db_err("range"))?;
            out.push(decode(
                || format!("policy {key} generation {}", k.value().2),
                v.value(),
            )?);
            if limit != 0 && out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// One revision of one policy.
    pub fn revision(
        &self,
        key: &PolicyKey,
        generation: u64,
    ) -> Result<Option<Revision>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err("begin read"))?;
        let table = txn.open_table(REVISIONS).map_err(db_err("open table"))?;
        let got = table
            .get((key.namespace.as_str(), key.name.as_str(), generation))
            .map_err(db_err("get"))?;
        got.map(|v| {
            decode(
                || format!("policy {key} generation {generation}"),
                v.value(),
            )
        })
        .transpose()
    }

    /// One setting (see [`SETTINGS`]), `None` when never stored.
    pub fn setting<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err("begin read"))?;
        let table = txn.open_table(SETTINGS).map_err(db_err("open table"))?;
        let got = table.get(name).map_err(db_err("get"))?;
        got.map(|v| decode(|| format!("setting {name}"), v.value()))
            .transpose()
    }

    /// Stores one setting durably, on its own.
    pub fn put_setting<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let mut change = self.change()?;
        change.put_setting(name, value)?;
        change.commit()
    }

    /// Starts the one atomic change of a write: nothing is visible until [`Change::commit`].
    pub fn change(&self) -> Result<Change, StoreError> {
        Ok(Change {
            txn: self.db.begin_write().map_err(db_err("begin write"))?,
        })
    }
}

/// One write transaction, with typed operations.
pub struct Change {
    txn: redb::WriteTransaction,
}

impl Change {
    /// The latest revision of a policy, read inside this transaction.
    pub fn latest_revision(&self, key: &PolicyKey) -> Result<Option<Revision>, StoreError> {
        let table = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open table"))?;
        let range = (key.namespace.as_str(), key.name.as_str(), 0)
            ..=(key.namespace.as_str(), key.name.as_str(), u64::MAX);
        let last = table.range(range).map_err(db_err("range"))?.next_back();
        match last {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(db_err("range"))?;
                Ok(Some(decode(
                    || format!("policy {key} generation {}", k.value().2),
                    v.value(),
                )?))
            }
        }
    }

    /// One revision, read inside this transaction.
    pub fn revision(
        &self,
        key: &PolicyKey,
        generation: u64,
    ) -> Result<Option<Revision>, StoreError> {
        let table = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open table"))?;
        let got = table
            .get((key.namespace.as_str(), key.name.as_str(), generation))
            .map_err(db_err("get"))?;
        got.map(|v| {
            decode(
                || format!("policy {key} generation {generation}"),
                v.value(),
            )
        })
        .transpose()
    }

    /// Every revision of every policy in a namespace whose latest revision is a deletion,
    /// newest deletion last (for rolling back a deleted policy by its service).
    pub fn deleted_in(&self, namespace: &str) -> Result<Vec<Revision>, StoreError> {
        let table = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open table"))?;
        let range = (namespace, "", 0)..=(namespace, "\u{10FFFF}", u64::MAX);
        let mut latest: Vec<Revision> = Vec::new();
        for entry in table.range(range).map_err(db_err("range"))? {
            let (k, v) = entry.map_err(db_err("range"))?;
            let (ns, name, generation) = k.value();
            let rev: Revision = decode(
                || format!("policy {ns}/{name} generation {generation}"),
                v.value(),
            )?;
            match latest.last_mut() {
                Some(last) if last.policy.key() == rev.policy.key() => *last = rev,
                _ => latest.push(rev),
            }
        }
        latest.retain(Revision::is_delete);
        latest.sort_by_key(|r| r.time);
        Ok(latest)
    }

    /// Stores a revision, and drops the policy's revisions older than the last
    /// [`HISTORY_KEPT`].
    pub fn put_revision(&mut self, rev: &Revision) -> Result<(), StoreError> {
        let key = rev.policy.key();
        let (namespace, name) = (key.namespace.as_str(), key.name.as_str());
        let mut table = self
            .txn
            .open_table(REVISIONS)
            .map_err(db_err("open table"))?;
        table
            .insert((namespace, name, rev.generation), encode(rev).as_slice())
            .map_err(db_err("insert"))?;
        if let Some(oldest_dropped) = rev.generation.checked_sub(HISTORY_KEPT) {
            table
                .retain_in(
                    (namespace, name, 0)..=(namespace, name, oldest_dropped),
                    |_, _| false,
                )
                .map_err(db_err("prune"))?;
        }
        Ok(())
    }

    /// Stores (or replaces) a registration.
    pub fn put_registration(&mut self, r: &Registration) -> Result<(), StoreError> {
        let w = &r.workload;
        let mut table = self
            .txn
            .open_table(WORKLOADS)
            .map_err(db_err("open table"))?;
        table
            .insert(
                (w.namespace.as_str(), w.pod_name.as_str()),
                encode(r).as_slice(),
            )
            .map_err(db_err("insert"))?;
        Ok(())
    }

    /// Removes a registration.
    pub fn remove_registration(&mut self, key: &WorkloadKey) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(WORKLOADS)
            .map_err(db_err("open table"))?;
        table
            .remove((key.namespace.as_str(), key.pod_name.as_str()))
            .map_err(db_err("remove"))?;
        Ok(())
    }

    /// Stores (or replaces) a service.
    pub fn put_service(&mut self, s: &ServiceRecord) -> Result<(), StoreError> {
        let key = ServiceKey {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        };
        let mut table = self
            .txn
            .open_table(SERVICES)
            .map_err(db_err("open table"))?;
        table
            .insert(
                (key.namespace.as_str(), key.name.as_str()),
                encode(s).as_slice(),
            )
            .map_err(db_err("insert"))?;
        Ok(())
    }

    /// Stores (or replaces) one setting.
    pub fn put_setting<T: Serialize>(&mut self, name: &str, value: &T) -> Result<(), StoreError> {
        let mut table = self
            .txn
            .open_table(SETTINGS)
            .map_err(db_err("open table"))?;
        table
            .insert(name, encode(value).as_slice())
            .map_err(db_err("insert"))?;
        Ok(())
    }

    /// Makes every change of this transaction durable at once.
    pub fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().map_err(db_err("commit"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::model::{ChangeCause, StoredPolicy};

    fn revision(service: &str, generation: u64) -> Revision {
        let mut policy = crate::mesh::policy_for(
            "shop",
            service,
            vec![serin_policy::VersionWeight::new("v1", 100)],
        );
        policy.metadata.generation = Some(generation);
        Revision {
            generation,
            cause: ChangeCause::SetWeights,
            time: SystemTime::UNIX_EPOCH,
            restored_generation: 0,
            policy: StoredPolicy {
                policy,
                annotations: Default::default(),
                create_time: SystemTime::UNIX_EPOCH,
                update_time: SystemTime::UNIX_EPOCH,
            },
        }
    }

    #[test]
    fn each_policy_keeps_its_last_revisions_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut change = store.change().unwrap();
        for g in 1..=HISTORY_KEPT + 5 {
            change.put_revision(&revision("reviews", g)).unwrap();
        }
        change.put_revision(&revision("ratings", 1)).unwrap();
        change.commit().unwrap();
        let key = PolicyKey::new("shop", "reviews");
        let change = store.change().unwrap();
        for g in 1..=5 {
            assert!(
                change.revision(&key, g).unwrap().is_none(),
                "generation {g}"
            );
        }
        for g in [6, 500, HISTORY_KEPT + 5] {
            assert!(
                change.revision(&key, g).unwrap().is_some(),
                "generation {g}"
            );
        }
        let ratings = PolicyKey::new("shop", "ratings");
        assert!(
            change.revision(&ratings, 1).unwrap().is_some(),
            "another policy untouched"
        );
        assert_eq!(
            store.history(&key, usize::MAX).unwrap().len() as u64,
            HISTORY_KEPT
        );
    }
}
