//! Kubernetes mode put together: the API client, the registry, policy and settings watchers,
//! and the [`MeshView`] merged from them that the snapshot publisher, the Admin API and the
//! dashboard read as they read the embedded store's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;

use super::objects::PolicyObjects;
use super::policies::{ClusterPolicies, PolicyWatcher};
use super::settings::{SettingsObjects, SettingsWatcher};
use super::view::mesh_view;
use super::watch::ClusterRegistry;
use crate::config::KubernetesConfig;
use crate::mesh::Mesh;
use crate::model::MeshView;

/// The running watchers and the merged view; dropping it stops them.
pub struct KubernetesMode {
    client: kube::Client,
    registry: ClusterRegistry,
    policies: PolicyWatcher,
    settings: SettingsWatcher,
    /// The control plane's namespace (where the ConfigMap `serin-mesh` is).
    namespace: String,
    view: watch::Receiver<Arc<MeshView>>,
    merge: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for KubernetesMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesMode")
            .field("registry", &self.registry)
            .field("policies", &self.policies)
            .field("settings", &self.settings)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for KubernetesMode {
    fn drop(&mut self) {
        self.merge.abort();
    }
}

/// The API client of `config`: its kubeconfig file, else inferred (in-cluster service account,
/// `KUBECONFIG`, ~/.kube/config).
pub async fn client(config: &KubernetesConfig) -> anyhow::Result<kube::Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("cannot use the kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "cannot find the Kubernetes API server (no in-cluster service account, KUBECONFIG or ~/.kube/config; or pass --kubeconfig FILE)",
        )?,
    };
    kube::Client::try_from(kube_config).context("cannot build the Kubernetes API client")
}

impl KubernetesMode {
    /// Starts the watchers and returns once Services, EndpointSlices, Pods, TrafficPolicies,
    /// Namespaces and the ConfigMap `serin-mesh` of `namespace` (the control plane's) have all
    /// been listed, so that the first snapshot a proxy gets is the whole cluster with its mTLS
    /// modes, never an empty or a less strict mesh.
    /// Injected pods' endpoints carry identities in `trust_domain`.
    pub async fn start(
        client: kube::Client,
        namespace: String,
        debounce: Duration,
        trust_domain: String,
    ) -> KubernetesMode {
        let registry = ClusterRegistry::start(&client, debounce);
        let policies = PolicyWatcher::start(&client, debounce);
        let settings = SettingsWatcher::start(&client, &namespace, debounce);
        tracing::info!(
            %namespace,
            "listing Services, EndpointSlices, Pods, TrafficPolicies, Namespaces and the ConfigMap {}",
            super::settings::MESH_CONFIGMAP
        );
        tokio::join!(registry.listed(), policies.listed(), settings.listed());
        let mut cluster_rx = registry.watch();
        let mut policies_rx = policies.watch();
        let mut settings_rx = settings.watch();
        let first = mesh_view(
            &cluster_rx.borrow_and_update(),
            &policies_rx.borrow_and_update(),
            &settings_rx.borrow_and_update(),
            &trust_domain,
        );
        tracing::info!(
            services = first.services.len(),
            endpoints = first.workloads.len(),
            policies = first.policies.len(),
            "cluster listed"
        );
        let (tx, view) = watch::channel(Arc::new(first));
        let merge = tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = cluster_rx.changed() => if changed.is_err() { return },
                    changed = policies_rx.changed() => if changed.is_err() { return },
                    changed = settings_rx.changed() => if changed.is_err() { return },
                }
                let next = mesh_view(
                    &cluster_rx.borrow_and_update(),
                    &policies_rx.borrow_and_update(),
                    &settings_rx.borrow_and_update(),
                    &trust_domain,
                );
                tx.send_if_modified(|current| {
                    if **current == next {
                        return false;
                    }
                    *current = Arc::new(next);
                    true
                });
            }
        });
        KubernetesMode {
            client,
            registry,
            policies,
            settings,
            namespace,
            view,
            merge,
        }
    }

    /// The Admin API's handle: reads the merged view, writes TrafficPolicy objects, Namespace
    /// annotations and the ConfigMap `serin-mesh`.
    pub fn mesh(&self) -> Mesh {
        Mesh::kubernetes(
            PolicyObjects::new(
                self.client.clone(),
                self.view.clone(),
                self.policies.watch(),
            ),
            SettingsObjects::new(
                self.client.clone(),
                self.namespace.clone(),
                self.view.clone(),
            ),
            self.view.clone(),
        )
    }

    /// The policies as read from the API server (valid or not).
    pub fn policies(&self) -> watch::Receiver<Arc<ClusterPolicies>> {
        self.policies.watch()
    }

    /// Starts writing the proxies-in-sync status (see [`super::status`]).
    pub fn write_status(&mut self, source: super::status::StatusSource) {
        self.policies.write_status(source);
    }

    /// The API client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The registry's watchers.
    pub fn registry(&self) -> &ClusterRegistry {
        &self.registry
    }
}
