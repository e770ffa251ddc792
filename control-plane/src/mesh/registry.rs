//! The workload registry on the writer thread: registrations under leases, services created on
//! first registration with a VIP from 10.96.0.0/16, and lease expiry.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{MeshError, Writer, merged_ports, new_lease_id, new_service, registration};
use crate::model::{ServiceKey, Workload, WorkloadKey};

/// First address of the service VIP range (10.96.0.0/16, as in Kubernetes and the local mesh).
pub const VIP_RANGE_START: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);
/// Size of the VIP range.
const VIP_RANGE_SIZE: u32 = 1 << 16;
/// Offsets never handed out: the network address, 10.96.0.1 (the API server's VIP in
/// Kubernetes) and the broadcast address.
const VIP_FIRST_OFFSET: u32 = 2;
const VIP_SLOTS: u32 = VIP_RANGE_SIZE - VIP_FIRST_OFFSET - 1;

/// The VIP of a new service: a hash of "namespace/name" into the range, probing upwards past the
/// addresses in `used`. Deterministic: the same services registered in the same order get the
/// same VIPs on every control plane; stored, so a service keeps its VIP for good.
pub fn allocate_vip(key: &ServiceKey, used: &BTreeSet<Ipv4Addr>) -> Ipv4Addr {
    let start = u32::from(VIP_RANGE_START);
    let hash = xxhash_rust::xxh3::xxh3_64(format!("{}/{}", key.namespace, key.name).as_bytes());
    let first = (hash % u64::from(VIP_SLOTS)) as u32;
    (0..VIP_SLOTS)
        .map(|i| Ipv4Addr::from(start + VIP_FIRST_OFFSET + (first + i) % VIP_SLOTS))
        .find(|ip| !used.contains(ip))
        .expect("the VIP range has room for 65533 services")
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Opaque id.
    pub id: String,
    /// The workload it keeps registered.
    pub key: WorkloadKey,
    /// Length granted.
    pub ttl: Duration,
    /// When it runs out unless renewed.
    pub expires_at: SystemTime,
    /// The secret the workload's sidecar presents for its certificate.
    pub bootstrap_token: String,
}

/// Leases by id and by expiry time.
#[derive(Debug, Default)]
pub(super) struct Leases {
    by_id: HashMap<String, Lease>,
    by_key: HashMap<WorkloadKey, String>,
    by_expiry: BTreeSet<(SystemTime, String)>,
}

impl Leases {
    pub(super) fn insert(&mut self, lease: Lease) {
        self.remove_key(&lease.key);
        self.by_expiry.insert((lease.expires_at, lease.id.clone()));
        self.by_key.insert(lease.key.clone(), lease.id.clone());
        self.by_id.insert(lease.id.clone(), lease);
    }

    fn remove_id(&mut self, id: &str) -> Option<Lease> {
        let lease = self.by_id.remove(id)?;
        self.by_expiry.remove(&(lease.expires_at, lease.id.clone()));
        self.by_key.remove(&lease.key);
        Some(lease)
    }

    fn remove_key(&mut self, key: &WorkloadKey) -> Option<Lease> {
        let id = self.by_key.get(key)?.clone();
        self.remove_id(&id)
    }

    pub(super) fn next_expiry(&self) -> Option<SystemTime> {
        self.by_expiry.first().map(|(t, _)| *t)
    }

    fn expired(&self, now: SystemTime) -> Vec<Lease> {
        self.by_expiry
            .iter()
            .take_while(|(t, _)| *t <= now)
            .filter_map(|(_, id)| self.by_id.get(id).cloned())
            .collect()
    }
}

impl Writer {
    fn clamp_ttl(&self, ttl: Option<Duration>) -> Duration {
        ttl.unwrap_or(self.limits.default_ttl)
            .clamp(self.limits.min_ttl, self.limits.max_ttl)
    }

    pub(super) fn register(
        &mut self,
        workload: Workload,
        ttl: Option<Duration>,
    ) -> Result<Lease, MeshError> {
        let ttl = self.clamp_ttl(ttl);
        let lease = Lease {
            id: new_lease_id(),
            key: workload.key(),
            ttl,
            expires_at: SystemTime::now() + ttl,
            bootstrap_token: new_lease_id(),
        };
        let service_key = workload.service_key();
        let service = match self.view.services.get(&service_key) {
            None => Some(new_service(&self.view, &workload)),
            Some(s) => {
                let ports = merged_ports(&s.ports, &workload);
                (ports != s.ports).then(|| crate::model::ServiceRecord {
                    ports,
                    ..(**s).clone()
                })
            }
        };
        let mut change = self.change()?;
        if let Some(s) = &service {
            change.put_service(s)?;
        }
        change.put_registration(&registration(&workload, &lease))?;
        change.commit()?;
        if let Some(s) = service {
            tracing::info!(service = %service_key, vips = ?s.vips, "service registered");
            self.view.services.insert(service_key, Arc::new(s));
        }
        // Registering a registered workload again replaces it and revokes its previous lease.
        self.leases.insert(lease.clone());
        tracing::info!(workload = %format_args!("{}/{}", lease.key.namespace, lease.key.pod_name), ttl = ?ttl, "workload registered");
        let workload = Arc::new(workload);
        if let Some(old) = self.registered.insert(lease.key.clone(), workload.clone()) {
            self.view.workloads.remove(&old.endpoint_key());
        }
        self.view
            .workloads
            .insert(workload.endpoint_key(), workload);
        self.dirty = true;
        Ok(lease)
    }

    pub(super) fn renew(
        &mut self,
        lease_id: &str,
        ttl: Option<Duration>,
        ready: bool,
    ) -> Result<Lease, MeshError> {
        let Some(old) = self.leases.by_id.get(lease_id).cloned() else {
            return Err(MeshError::NotFound(format!(
                "lease {lease_id} not found: it expired or was revoked; register the workload again"
            )));
        };
        let ttl = match ttl {
            Some(t) => self.clamp_ttl(Some(t)),
            None => old.ttl,
        };
        let lease = Lease {
            expires_at: SystemTime::now() + ttl,
            ttl,
            ..old
        };
        let workload = self.registered.get(&lease.key).cloned().ok_or_else(|| {
            MeshError::NotFound(format!(
                "lease {lease_id} has no workload; register it again"
            ))
        })?;
        // A starting workload becomes ready: its endpoint takes traffic from now on.
        let became_ready = ready && !workload.ready;
        let workload = if became_ready {
            Arc::new(Workload {
                ready: true,
                ..(*workload).clone()
            })
        } else {
            workload
        };
        let mut change = self.change()?;
        change.put_registration(&registration(&workload, &lease))?;
        change.commit()?;
        self.leases.remove_id(lease_id);
        self.leases.insert(lease.clone());
        if became_ready {
            tracing::info!(workload = %format_args!("{}/{}", lease.key.namespace, lease.key.pod_name), "workload ready");
            self.registered.insert(lease.key.clone(), workload.clone());
            self.view
                .workloads
                .insert(workload.endpoint_key(), workload);
            self.dirty = true;
        }
        // Otherwise only the expiry changed: nothing readers see, so the view is not republished.
        Ok(lease)
    }

    /// The workload whose live lease holds `token`.
    pub(super) fn workload_for_token(&self, token: &str) -> Result<Arc<Workload>, MeshError> {
        let lease = self
            .leases
            .by_id
            .values()
            .find(|l| !token.is_empty() && l.bootstrap_token == token)
            .ok_or_else(|| {
                MeshError::NotFound(
                    "bootstrap token not found: its registration ended or never existed; register the workload again".into(),
                )
            })?;
        self.registered.get(&lease.key).cloned().ok_or_else(|| {
            MeshError::NotFound("bootstrap token has no workload; register it again".into())
        })
    }

    /// Records that the workload's sidecar holds a certificate for `identity` (its endpoint is
    /// meshed from now on).
    pub(super) fn set_identity(
        &mut self,
        key: &WorkloadKey,
        identity: &str,
    ) -> Result<(), MeshError> {
        let (Some(workload), Some(id)) = (self.registered.get(key), self.leases.by_key.get(key))
        else {
            return Err(MeshError::NotFound(format!(
                "workload {}/{} is not registered",
                key.namespace, key.pod_name
            )));
        };
        if workload.identity == identity {
            return Ok(());
        }
        let workload = Workload {
            identity: identity.to_owned(),
            ..(**workload).clone()
        };
        let lease = self.leases.by_id[id].clone();
        let mut change = self.change()?;
        change.put_registration(&registration(&workload, &lease))?;
        change.commit()?;
        let workload = Arc::new(workload);
        self.registered.insert(key.clone(), workload.clone());
        self.view
            .workloads
            .insert(workload.endpoint_key(), workload);
        self.dirty = true;
        Ok(())
    }

    pub(super) fn deregister(&mut self, lease_id: &str) -> Result<bool, MeshError> {
        let Some(lease) = self.leases.by_id.get(lease_id).cloned() else {
            return Ok(false);
        };
        self.remove_workloads(std::slice::from_ref(&lease))?;
        tracing::info!(workload = %format_args!("{}/{}", lease.key.namespace, lease.key.pod_name), "workload deregistered");
        Ok(true)
    }

    /// Removes every workload whose lease ran out by `now`, in one transaction.
    pub(super) fn expire_leases(&mut self, now: SystemTime) -> Result<(), MeshError> {
        let expired = self.leases.expired(now);
        if expired.is_empty() {
            return Ok(());
        }
        self.remove_workloads(&expired)?;
        for lease in &expired {
            tracing::info!(workload = %format_args!("{}/{}", lease.key.namespace, lease.key.pod_name), "lease expired; workload removed");
        }
        Ok(())
    }

    fn remove_workloads(&mut self, leases: &[Lease]) -> Result<(), MeshError> {
        let mut change = self.change()?;
        for lease in leases {
            change.remove_registration(&lease.key)?;
        }
        change.commit()?;
        for lease in leases {
            self.leases.remove_id(&lease.id);
            if let Some(old) = self.registered.remove(&lease.key) {
                self.view.workloads.remove(&old.endpoint_key());
            }
        }
        self.dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_are_deterministic_in_range_and_skip_used_ones() {
        crate::test_tracing();
        let key = ServiceKey {
            namespace: "default".into(),
            name: "reviews".into(),
        };
        let a = allocate_vip(&key, &BTreeSet::new());
        assert_eq!(a, allocate_vip(&key, &BTreeSet::new()));
        assert_eq!(a.octets()[..2], [10, 96]);
        assert_ne!(a, Ipv4Addr::new(10, 96, 0, 0));
        assert_ne!(a, Ipv4Addr::new(10, 96, 0, 1));
        let b = allocate_vip(&key, &[a].into());
        assert_ne!(a, b);
        assert_eq!(b.octets()[..2], [10, 96]);
    }
}
