//! The one writer: a thread that owns every change to the store and publishes an immutable
//! [`MeshView`] after each one. Callers send it closures and await the answer; readers take the
//! latest view from a `watch` without ever waiting for a write.
//!
//! One thread makes the order of changes total (the in-memory view can never disagree with the
//! store about which generation is the latest), keeps blocking redb commits off the async
//! runtime, and doubles as the lease timer: it sleeps until the next lease runs out.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serin_policy::{TrafficPolicy, VersionWeight};
use tokio::sync::{oneshot, watch};

use crate::model::{
    MeshView, MtlsMode, MtlsModes, PolicyDraft, PolicyKey, Registration, Revision, ServiceKey,
    ServicePort, ServiceRecord, StoredPolicy, Workload, WorkloadKey, namespace_or_default,
};
use crate::store::{Change, Store, StoreError};

mod policies;
mod registry;

pub use policies::{Applied, Outcome, PolicyWarning, invalid};
pub(crate) use policies::{checked, promoted, require_ready, require_weights, with_weights};
pub use registry::{Lease, allocate_vip};

/// Why a change was refused or failed. Each message is one lowercase line naming the resource.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The request or the resulting policy does not validate (one `field: problem` per line).
    #[error("{0}")]
    Invalid(String),
    /// The named policy, service, generation or lease does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Another policy already governs the service.
    #[error("{0}")]
    AlreadyExists(String),
    /// `if_generation` did not match.
    #[error("{0}")]
    Aborted(String),
    /// The mesh is not in a state that allows the change (e.g. promoting a version with no pods).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer thread could not be started.
    #[error("cannot start the store writer thread: {0}")]
    Thread(std::io::Error),
    /// The writer thread is gone (shutting down).
    #[error("the control plane's store writer has stopped")]
    Stopped,
    /// Kubernetes mode: the API server could not be reached or failed the request.
    #[error("{0}")]
    Kubernetes(String),
}

/// Lease lengths the registry grants.
#[derive(Debug, Clone, Copy)]
pub struct LeaseLimits {
    /// Used when a registration asks for none.
    pub default_ttl: Duration,
    /// Shorter requests are raised to this.
    pub min_ttl: Duration,
    /// Longer requests are cut to this.
    pub max_ttl: Duration,
}

impl Default for LeaseLimits {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(30),
            min_ttl: Duration::from_millis(100),
            max_ttl: Duration::from_secs(3600),
        }
    }
}

type Command = Box<dyn FnOnce(&mut Writer) + Send>;

/// Handle to the writer; cheap to clone. The writer thread stops when the last handle is dropped.
///
/// In Kubernetes mode ([`Mesh::kubernetes`]) the same handle writes TrafficPolicy objects (and
/// the mTLS modes and visibility as Namespace annotations and a ConfigMap) on the API server
/// instead, its view follows the API server, and workload registration is refused (the registry
/// is the cluster's).
#[derive(Clone)]
pub struct Mesh {
    backend: Backend,
    view: watch::Receiver<Arc<MeshView>>,
}

#[derive(Clone)]
enum Backend {
    Embedded {
        commands: mpsc::Sender<Command>,
        store: Arc<Store>,
    },
    Kubernetes {
        policies: Arc<crate::kubernetes::objects::PolicyObjects>,
        settings: Arc<crate::kubernetes::settings::SettingsObjects>,
    },
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Embedded { store, .. } => f
                .debug_struct("Mesh")
                .field("store", &store.path())
                .finish_non_exhaustive(),
            Backend::Kubernetes { .. } => f
                .debug_struct("Mesh")
                .field("store", &"kubernetes")
                .finish_non_exhaustive(),
        }
    }
}

/// Why a registration call fails in Kubernetes mode.
fn no_registration() -> MeshError {
    MeshError::FailedPrecondition(
        "this control plane runs in Kubernetes mode: its registry is the API server's Services and EndpointSlices, workloads cannot be registered".into(),
    )
}

impl Mesh {
    /// Loads the store into memory and starts the writer thread.
    pub fn start(store: Arc<Store>, limits: LeaseLimits) -> Result<Mesh, MeshError> {
        let loaded = store.load()?;
        let now = SystemTime::now();
        let mut view = MeshView::default();
        for rev in loaded.latest {
            if !rev.is_delete() {
                view.policies.insert(rev.policy.key(), Arc::new(rev.policy));
            }
        }
        for s in loaded.services {
            view.services.insert(
                ServiceKey {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                },
                Arc::new(s),
            );
        }
        view.mtls = store.setting(crate::store::MTLS_MODES)?.unwrap_or_default();
        view.private_namespaces = store
            .setting(crate::store::PRIVATE_NAMESPACES)?
            .unwrap_or_default();
        let mut leases = registry::Leases::default();
        let mut registered = HashMap::new();
        for r in loaded.registrations {
            // Workloads could not renew while the control plane was down: give each a full lease
            // from now rather than emptying the mesh on a restart.
            let expires_at = r.expires_at.max(now + r.ttl);
            leases.insert(Lease {
                id: r.lease_id,
                key: r.workload.key(),
                ttl: r.ttl,
                expires_at,
                bootstrap_token: r.bootstrap_token,
            });
            let workload = Arc::new(r.workload);
            view.workloads
                .insert(workload.endpoint_key(), workload.clone());
            registered.insert(workload.key(), workload);
        }
        let (view_tx, view_rx) = watch::channel(Arc::new(view.clone()));
        let (tx, rx) = mpsc::channel::<Command>();
        let mut writer = Writer {
            store: store.clone(),
            view,
            view_tx,
            dirty: false,
            leases,
            registered,
            limits,
        };
        std::thread::Builder::new()
            .name("serin-store-writer".into())
            .spawn(move || writer.run(&rx))
            .map_err(MeshError::Thread)?;
        Ok(Mesh {
            backend: Backend::Embedded {
                commands: tx,
                store,
            },
            view: view_rx,
        })
    }

    /// Kubernetes mode: the view is `view` (built from the API server's objects), policy changes
    /// are written by `policies`, the mTLS modes and visibility by `settings`.
    pub fn kubernetes(
        policies: crate::kubernetes::objects::PolicyObjects,
        settings: crate::kubernetes::settings::SettingsObjects,
        view: watch::Receiver<Arc<MeshView>>,
    ) -> Mesh {
        Mesh {
            backend: Backend::Kubernetes {
                policies: Arc::new(policies),
                settings: Arc::new(settings),
            },
            view,
        }
    }

    /// The latest view.
    pub fn view(&self) -> Arc<MeshView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new view.
    pub fn watch(&self) -> watch::Receiver<Arc<MeshView>> {
        self.view.clone()
    }

    /// The embedded store, for reads (history, past generations); `None` in Kubernetes mode.
    pub fn store(&self) -> Option<&Arc<Store>> {
        match &self.backend {
            Backend::Embedded { store, .. } => Some(store),
            Backend::Kubernetes { .. } => None,
        }
    }

    /// Runs `f` on the writer thread and returns its result.
    async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> Result<R, MeshError> + Send + 'static,
    ) -> Result<R, MeshError> {
        let Backend::Embedded { commands, .. } = &self.backend else {
            return Err(no_registration());
        };
        let (tx, rx) = oneshot::channel();
        let command: Command = Box::new(move |w: &mut Writer| {
            let result = f(w);
            // Publish before answering, so that a caller reads its own write in the view.
            w.publish();
            let _ = tx.send(result);
        });
        commands.send(command).map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    /// Creates or replaces a policy (see admin.proto ApplyPolicy).
    pub async fn apply(
        &self,
        draft: PolicyDraft,
        if_generation: Option<u64>,
        dry_run: bool,
    ) -> Result<Applied, MeshError> {
        if let Backend::Kubernetes { policies: k, .. } = &self.backend {
            return k.apply(draft, if_generation, dry_run).await;
        }
        self.call(move |w| w.apply(draft, if_generation, dry_run))
            .await
    }

    /// Deletes a policy; returns it as it was and the generation of the deletion record.
    pub async fn delete(
        &self,
        key: PolicyKey,
        if_generation: Option<u64>,
    ) -> Result<(Arc<StoredPolicy>, u64), MeshError> {
        if let Backend::Kubernetes { policies: k, .. } = &self.backend {
            return k.delete(key, if_generation).await;
        }
        self.call(move |w| w.delete(&key, if_generation)).await
    }

    /// Replaces a service's default split.
    pub async fn set_weights(
        &self,
        namespace: &str,
        service: &str,
        weights: Vec<VersionWeight>,
        if_generation: Option<u64>,
    ) -> Result<Applied, MeshError> {
        let (ns, service) = (namespace_or_default(namespace), service.to_owned());
        if let Backend::Kubernetes { policies: k, .. } = &self.backend {
            return k.set_weights(&ns, &service, weights, if_generation).await;
        }
        self.call(move |w| w.set_weights(&ns, &service, weights, if_generation))
            .await
    }

    /// Makes one version take over a service.
    pub async fn promote(
        &self,
        namespace: &str,
        service: &str,
        version: &str,
        if_generation: Option<u64>,
        force: bool,
    ) -> Result<Applied, MeshError> {
        let (ns, service, version) = (
            namespace_or_default(namespace),
            service.to_owned(),
            version.to_owned(),
        );
        if let Backend::Kubernetes { policies: k, .. } = &self.backend {
            return k
                .promote(&ns, &service, &version, if_generation, force)
                .await;
        }
        self.call(move |w| w.promote(&ns, &service, &version, if_generation, force))
            .await
    }

    /// Restores an earlier generation's content as a new generation; returns the restored
    /// generation too.
    pub async fn rollback(
        &self,
        namespace: &str,
        service: &str,
        to_generation: Option<u64>,
        if_generation: Option<u64>,
    ) -> Result<(Applied, u64), MeshError> {
        let (ns, service) = (namespace_or_default(namespace), service.to_owned());
        if let Backend::Kubernetes { policies: k, .. } = &self.backend {
            return k
                .rollback(&ns, &service, to_generation, if_generation)
                .await;
        }
        self.call(move |w| w.rollback(&ns, &service, to_generation, if_generation))
            .await
    }

    /// Registers a workload under a new lease.
    pub async fn register(
        &self,
        workload: Workload,
        ttl: Option<Duration>,
    ) -> Result<Lease, MeshError> {
        self.call(move |w| w.register(workload, ttl)).await
    }

    /// Extends a lease; `ready` marks a workload registered as starting ready.
    pub async fn renew(
        &self,
        lease_id: String,
        ttl: Option<Duration>,
        ready: bool,
    ) -> Result<Lease, MeshError> {
        self.call(move |w| w.renew(&lease_id, ttl, ready)).await
    }

    /// Removes a registered workload now; false when the lease was already gone.
    pub async fn deregister(&self, lease_id: String) -> Result<bool, MeshError> {
        self.call(move |w| w.deregister(&lease_id)).await
    }

    /// The registered workload whose bootstrap token is `token` (NOT_FOUND when none).
    pub async fn workload_for_token(&self, token: String) -> Result<Arc<Workload>, MeshError> {
        self.call(move |w| w.workload_for_token(&token)).await
    }

    /// Marks a registered workload as meshed with `identity` (its sidecar got a certificate).
    pub async fn set_identity(&self, key: WorkloadKey, identity: String) -> Result<(), MeshError> {
        self.call(move |w| w.set_identity(&key, &identity)).await
    }

    /// Sets (or clears) the mTLS mode of `namespace` ("" = mesh-wide); returns every mode.
    pub async fn set_mtls_mode(
        &self,
        namespace: String,
        mode: Option<MtlsMode>,
    ) -> Result<MtlsModes, MeshError> {
        if let Backend::Kubernetes { settings, .. } = &self.backend {
            return settings.set_mtls_mode(&namespace, mode).await;
        }
        self.call(move |w| {
            let mut modes = w.view.mtls.clone();
            modes.set(&namespace, mode);
            if modes != w.view.mtls {
                let mut change = w.change()?;
                change.put_setting(crate::store::MTLS_MODES, &modes)?;
                change.commit()?;
                w.view.mtls = modes.clone();
                w.dirty = true;
            }
            Ok(modes)
        })
        .await
    }

    /// Makes `namespace` private (or public again); returns every private namespace.
    pub async fn set_namespace_visibility(
        &self,
        namespace: String,
        private: bool,
    ) -> Result<BTreeSet<String>, MeshError> {
        if let Backend::Kubernetes { settings, .. } = &self.backend {
            return settings.set_visibility(&namespace, private).await;
        }
        self.call(move |w| {
            let mut private_namespaces = w.view.private_namespaces.clone();
            if private {
                private_namespaces.insert(namespace);
            } else {
                private_namespaces.remove(&namespace);
            }
            if private_namespaces != w.view.private_namespaces {
                let mut change = w.change()?;
                change.put_setting(crate::store::PRIVATE_NAMESPACES, &private_namespaces)?;
                change.commit()?;
                w.view.private_namespaces = private_namespaces.clone();
                w.dirty = true;
            }
            Ok(private_namespaces)
        })
        .await
    }

    /// Revisions of a policy, newest first (a blocking store read, off the runtime).
    pub async fn history(&self, key: PolicyKey, limit: usize) -> Result<Vec<Revision>, MeshError> {
        let store = match &self.backend {
            Backend::Embedded { store, .. } => store.clone(),
            Backend::Kubernetes { policies: k, .. } => return Ok(k.history(&key, limit)),
        };
        tokio::task::spawn_blocking(move || store.history(&key, limit))
            .await
            .map_err(|_| MeshError::Stopped)?
            .map_err(MeshError::from)
    }

    /// One revision of a policy.
    pub async fn revision(
        &self,
        key: PolicyKey,
        generation: u64,
    ) -> Result<Option<Revision>, MeshError> {
        let store = match &self.backend {
            Backend::Embedded { store, .. } => store.clone(),
            Backend::Kubernetes { policies: k, .. } => return Ok(k.revision(&key, generation)),
        };
        tokio::task::spawn_blocking(move || store.revision(&key, generation))
            .await
            .map_err(|_| MeshError::Stopped)?
            .map_err(MeshError::from)
    }
}

/// The state only the writer thread touches.
struct Writer {
    store: Arc<Store>,
    view: MeshView,
    view_tx: watch::Sender<Arc<MeshView>>,
    /// The view changed since it was last published.
    dirty: bool,
    leases: registry::Leases,
    /// The registered workloads by (namespace, pod): the view keys them by service too.
    registered: HashMap<WorkloadKey, Arc<Workload>>,
    limits: LeaseLimits,
}

impl Writer {
    fn run(&mut self, commands: &mpsc::Receiver<Command>) {
        loop {
            let wait = self
                .leases
                .next_expiry()
                .map(|t| {
                    t.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(Duration::from_secs(3600));
            match commands.recv_timeout(wait) {
                Ok(command) => command(self),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if let Err(e) = self.expire_leases(SystemTime::now()) {
                tracing::error!(error = %e, "cannot remove expired workloads; retrying at the next change");
            }
            self.publish();
        }
    }

    fn publish(&mut self) {
        if std::mem::take(&mut self.dirty) {
            self.view_tx.send_replace(Arc::new(self.view.clone()));
        }
    }

    fn change(&self) -> Result<Change, MeshError> {
        Ok(self.store.change()?)
    }
}

/// The default route of a policy with only a split, named after its service.
pub(crate) fn policy_for(
    namespace: &str,
    service: &str,
    route: Vec<VersionWeight>,
) -> TrafficPolicy {
    TrafficPolicy {
        api_version: serin_policy::model::API_VERSION.to_owned(),
        kind: serin_policy::model::KIND.to_owned(),
        metadata: serin_policy::Metadata {
            name: service.to_owned(),
            namespace: namespace.to_owned(),
            generation: None,
            labels: None,
        },
        spec: serin_policy::PolicySpec {
            service: service.to_owned(),
            rules: Vec::new(),
            default: serin_policy::Route { route },
            mirror: None,
            stickiness: None,
        },
    }
}

/// The ports of `service` after a workload with `ports` joined: ports it did not declare yet are
/// added (port = target port), declared ones are kept as they are.
fn merged_ports(service: &[ServicePort], workload: &Workload) -> Vec<ServicePort> {
    let mut out = service.to_vec();
    for p in &workload.ports {
        if !out
            .iter()
            .any(|s| s.port == p.port || (!p.name.is_empty() && s.name == p.name))
        {
            out.push(ServicePort {
                port: p.port,
                name: p.name.clone(),
                protocol: p.protocol,
                target_port: 0,
            });
        }
    }
    out.sort();
    out
}

/// The used IPv4 VIPs of a view.
fn used_vips(view: &MeshView) -> BTreeSet<Ipv4Addr> {
    view.services
        .values()
        .flat_map(|s| &s.vips)
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

/// A new service record for the first workload of a service.
fn new_service(view: &MeshView, workload: &Workload) -> ServiceRecord {
    let key = workload.service_key();
    ServiceRecord {
        vips: vec![IpAddr::V4(allocate_vip(&key, &used_vips(view)))],
        namespace: key.namespace,
        name: key.name,
        ports: merged_ports(&[], workload),
    }
}

/// A registration as stored.
fn registration(workload: &Workload, lease: &Lease) -> Registration {
    Registration {
        workload: workload.clone(),
        lease_id: lease.id.clone(),
        ttl: lease.ttl,
        expires_at: lease.expires_at,
        bootstrap_token: lease.bootstrap_token.clone(),
    }
}

/// Lease ids: 128 random bits in hex.
fn new_lease_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}
