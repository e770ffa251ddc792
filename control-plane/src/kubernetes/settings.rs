//! The mesh settings in Kubernetes mode, kept in the API server so that they survive restarts and
//! every replica serves the same ones: each namespace's mTLS mode and visibility are annotations
//! of its Namespace object (`serin.io/mtls: strict|permissive`, `serin.io/visibility:
//! private|public`, which users may also set with kubectl), and the mesh-wide mTLS default is the
//! `mtls` key of the ConfigMap `serin-mesh` in the control plane's namespace. Watched like the
//! registry ([`SettingsWatcher`]); written by the Admin API as merge patches ([`SettingsObjects`]),
//! each waiting until the watch shows it. A value that is neither of the two words (a kubectl
//! typo) is logged once and ignored: that namespace keeps the default, the rest is served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::{Notify, watch};

use super::policies::FIELD_MANAGER;
use super::watch::reflect;
use crate::mesh::MeshError;
use crate::model::{MeshView, MtlsMode, MtlsModes};

/// The Namespace annotation that holds the namespace's mTLS mode.
pub const MTLS_ANNOTATION: &str = "serin.io/mtls";
/// The Namespace annotation that makes the namespace private.
pub const VISIBILITY_ANNOTATION: &str = "serin.io/visibility";
/// The ConfigMap (in the control plane's namespace) that holds the mesh-wide settings.
pub const MESH_CONFIGMAP: &str = "serin-mesh";
/// Its key holding the mesh-wide mTLS mode.
pub const MTLS_KEY: &str = "mtls";
/// How long a write waits for the watch to show it.
const READ_YOUR_WRITE: Duration = Duration::from_secs(5);

/// The settings as the API server holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshSettings {
    /// The mTLS modes: the ConfigMap's default and the annotated namespaces'.
    pub mtls: MtlsModes,
    /// Namespaces annotated private.
    pub private_namespaces: BTreeSet<String>,
    /// Values that were ignored, by the object that holds them ("namespace shop", "configmap
    /// serin-system/serin-mesh"): one line each saying what and why.
    pub ignored: BTreeMap<String, String>,
}

/// An mTLS mode as written in an annotation or the ConfigMap; `None` for anything else.
fn mtls_mode(value: &str) -> Option<MtlsMode> {
    match value.trim().to_ascii_lowercase().as_str() {
        "strict" => Some(MtlsMode::Strict),
        "permissive" => Some(MtlsMode::Permissive),
        _ => None,
    }
}

/// The word of an mTLS mode.
fn mtls_word(mode: MtlsMode) -> &'static str {
    match mode {
        MtlsMode::Strict => "strict",
        MtlsMode::Permissive => "permissive",
    }
}

/// Reads the settings from the Namespaces and the `serin-mesh` ConfigMap (of `namespace`).
pub fn read(
    namespaces: &[Arc<Namespace>],
    configmaps: &[Arc<ConfigMap>],
    namespace: &str,
) -> MeshSettings {
    let mut settings = MeshSettings::default();
    let mesh = configmaps.iter().find(|c| {
        c.metadata.name.as_deref() == Some(MESH_CONFIGMAP)
            && c.metadata.namespace.as_deref() == Some(namespace)
    });
    if let Some(value) = mesh
        .and_then(|c| c.data.as_ref())
        .and_then(|d| d.get(MTLS_KEY))
        .filter(|v| !v.trim().is_empty())
    {
        match mtls_mode(value) {
            Some(mode) => settings.mtls.default = Some(mode),
            None => {
                settings.ignored.insert(
                    format!("configmap {namespace}/{MESH_CONFIGMAP}"),
                    format!("key {MTLS_KEY} is {value:?}, not strict or permissive; ignored (the mesh-wide default is unset: permissive)"),
                );
            }
        }
    }
    for ns in namespaces {
        let (Some(name), Some(annotations)) = (&ns.metadata.name, &ns.metadata.annotations) else {
            continue;
        };
        let mut problems = Vec::new();
        if let Some(value) = annotations.get(MTLS_ANNOTATION) {
            match mtls_mode(value) {
                Some(mode) => {
                    settings.mtls.namespaces.insert(name.clone(), mode);
                }
                None => problems.push(format!(
                    "annotation {MTLS_ANNOTATION} is {value:?}, not strict or permissive; ignored (the namespace follows the mesh-wide default)"
                )),
            }
        }
        if let Some(value) = annotations.get(VISIBILITY_ANNOTATION) {
            match value.trim().to_ascii_lowercase().as_str() {
                "private" => {
                    settings.private_namespaces.insert(name.clone());
                }
                "public" => {}
                _ => problems.push(format!(
                    "annotation {VISIBILITY_ANNOTATION} is {value:?}, not private or public; ignored (the namespace stays public)"
                )),
            }
        }
        if !problems.is_empty() {
            settings
                .ignored
                .insert(format!("namespace {name}"), problems.join("; "));
        }
    }
    settings
}

/// The settings from the API server, kept current.
#[derive(Debug)]
pub struct SettingsWatcher {
    view: watch::Receiver<Arc<MeshSettings>>,
    listed: watch::Receiver<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SettingsWatcher {
    /// Watches every Namespace and the ConfigMap `serin-mesh` of `namespace` (the control
    /// plane's); the first settings are published once both are listed. Each ignored value is
    /// logged when it appears (not again on every change).
    pub fn start(client: &kube::Client, namespace: &str, debounce: Duration) -> SettingsWatcher {
        let changed = Arc::new(Notify::new());
        let (namespaces, namespaces_task) = reflect(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
            &changed,
        );
        let (configmaps, configmaps_task) = reflect(
            Api::<ConfigMap>::namespaced(client.clone(), namespace),
            watcher::Config::default().fields(&format!("metadata.name={MESH_CONFIGMAP}")),
            &changed,
        );
        let (tx, view) = watch::channel(Arc::new(MeshSettings::default()));
        let (listed_tx, listed) = watch::channel(false);
        let namespace = namespace.to_owned();
        let builder = tokio::spawn(async move {
            for store in [
                namespaces.wait_until_ready().await,
                configmaps.wait_until_ready().await,
            ] {
                if store.is_err() {
                    return;
                }
            }
            loop {
                let next = read(&namespaces.state(), &configmaps.state(), &namespace);
                let before = tx.borrow().ignored.clone();
                for (object, problem) in &next.ignored {
                    if before.get(object) != Some(problem) {
                        tracing::warn!(%object, "{problem}");
                    }
                }
                tx.send_if_modified(|current| {
                    if **current == next {
                        return false;
                    }
                    let private = &next.private_namespaces;
                    tracing::debug!(mtls = ?next.mtls, ?private, "mesh settings changed");
                    *current = Arc::new(next);
                    true
                });
                listed_tx.send_replace(true);
                changed.notified().await;
                tokio::time::sleep(debounce).await;
            }
        });
        SettingsWatcher {
            view,
            listed,
            tasks: vec![namespaces_task, configmaps_task, builder],
        }
    }

    /// The current settings and every later one.
    pub fn watch(&self) -> watch::Receiver<Arc<MeshSettings>> {
        self.view.clone()
    }

    /// Returns once the Namespaces and the ConfigMap have been listed and the settings show them.
    pub async fn listed(&self) {
        let _ = self.listed.clone().wait_for(|l| *l).await;
    }
}

impl Drop for SettingsWatcher {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Writes the settings: merge patches of Namespace annotations and of the ConfigMap.
#[derive(Clone)]
pub struct SettingsObjects {
    client: kube::Client,
    /// The control plane's namespace (where `serin-mesh` is).
    namespace: String,
    view: watch::Receiver<Arc<MeshView>>,
}

impl std::fmt::Debug for SettingsObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SettingsObjects")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// An API error of a settings write as the Admin API reports it.
fn api_error(what: &str, e: &kube::Error) -> MeshError {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            MeshError::NotFound(format!("{what}: it does not exist in the cluster"))
        }
        kube::Error::Api(s) if s.code == 403 => MeshError::FailedPrecondition(format!(
            "the API server forbids {what} (check the serin-control RBAC in deploy/): {}",
            s.message
        )),
        kube::Error::Api(s) if s.code == 422 || s.code == 400 => {
            MeshError::Invalid(format!("the API server refused {what}: {}", s.message))
        }
        _ => MeshError::Kubernetes(format!("cannot do {what} on the API server: {e}")),
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl SettingsObjects {
    /// Writes through `client`; `namespace` is the control plane's, `view` the merged view.
    pub fn new(
        client: kube::Client,
        namespace: String,
        view: watch::Receiver<Arc<MeshView>>,
    ) -> Self {
        Self {
            client,
            namespace,
            view,
        }
    }

    fn params() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        }
    }

    /// Sets (`Some`) or removes (`None`) one annotation of Namespace `namespace`.
    async fn annotate(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), MeshError> {
        let api = Api::<Namespace>::all(self.client.clone());
        let patch = json!({"metadata": {"annotations": {key: value}}});
        api.patch(namespace, &Self::params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| api_error(&format!("annotating namespace {namespace}"), &e))?;
        tracing::info!(%namespace, annotation = key, ?value, "namespace annotated");
        Ok(())
    }

    /// Sets (`Some`) or removes (`None`) the `mtls` key of the ConfigMap `serin-mesh`, creating
    /// it when it is missing.
    async fn set_default(&self, mode: Option<MtlsMode>) -> Result<(), MeshError> {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), &self.namespace);
        let what = format!("writing the configmap {}/{MESH_CONFIGMAP}", self.namespace);
        let value = mode.map(mtls_word);
        let patch = json!({"data": {MTLS_KEY: value}});
        // Patch; create when missing; patch again when another replica created it meanwhile.
        for _ in 0..2 {
            match api
                .patch(MESH_CONFIGMAP, &Self::params(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => break,
                Err(e) if is_code(&e, 404) => {
                    let Some(value) = value else {
                        // No ConfigMap, no mode to remove.
                        break;
                    };
                    let object: ConfigMap = serde_json::from_value(json!({
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": MESH_CONFIGMAP, "namespace": self.namespace,
                                     "labels": {"app.kubernetes.io/part-of": "serin"}},
                        "data": {MTLS_KEY: value},
                    }))
                    .map_err(|e| {
                        MeshError::Kubernetes(format!(
                            "cannot build the configmap {MESH_CONFIGMAP}: {e}"
                        ))
                    })?;
                    let params = PostParams {
                        field_manager: Some(FIELD_MANAGER.to_owned()),
                        ..PostParams::default()
                    };
                    match api.create(&params, &object).await {
                        Ok(_) => break,
                        Err(e) if is_code(&e, 409) => {}
                        Err(e) => return Err(api_error(&what, &e)),
                    }
                }
                Err(e) => return Err(api_error(&what, &e)),
            }
        }
        let configmap = format!("{}/{MESH_CONFIGMAP}", self.namespace);
        tracing::info!(%configmap, ?mode, "mesh-wide mtls mode written");
        Ok(())
    }

    /// Waits until the view passes `shown` (a few seconds at most: the watch is usually quicker).
    async fn wait_for(&self, what: &str, shown: impl Fn(&MeshView) -> bool) {
        let mut view = self.view.clone();
        let seen = tokio::time::timeout(READ_YOUR_WRITE, view.wait_for(|v| shown(v))).await;
        if seen.is_err() {
            tracing::warn!("the watched cache does not show {what} yet");
        }
    }

    /// SetMtlsMode: the namespace's annotation, or ("") the ConfigMap's key; returns every mode.
    pub async fn set_mtls_mode(
        &self,
        namespace: &str,
        mode: Option<MtlsMode>,
    ) -> Result<MtlsModes, MeshError> {
        if namespace.is_empty() {
            self.set_default(mode).await?;
        } else {
            self.annotate(namespace, MTLS_ANNOTATION, mode.map(mtls_word))
                .await?;
        }
        let wanted = |v: &MeshView| {
            if namespace.is_empty() {
                v.mtls.default == mode
            } else {
                v.mtls.namespaces.get(namespace).copied() == mode
            }
        };
        self.wait_for("the mtls mode written", wanted).await;
        let mut modes = self.view.borrow().mtls.clone();
        modes.set(namespace, mode);
        Ok(modes)
    }

    /// SetNamespaceVisibility: the namespace's annotation (`private`, or removed for public);
    /// returns every private namespace.
    pub async fn set_visibility(
        &self,
        namespace: &str,
        private: bool,
    ) -> Result<BTreeSet<String>, MeshError> {
        let value = private.then_some("private");
        self.annotate(namespace, VISIBILITY_ANNOTATION, value)
            .await?;
        self.wait_for("the visibility written", |v| {
            v.private_namespaces.contains(namespace) == private
        })
        .await;
        let mut out = self.view.borrow().private_namespaces.clone();
        if private {
            out.insert(namespace.to_owned());
        } else {
            out.remove(namespace);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, annotations: &[(&str, &str)]) -> Arc<Namespace> {
        Arc::new(
            serde_json::from_value(json!({"metadata": {"name": name, "annotations":
                annotations.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()}}))
            .unwrap(),
        )
    }

    fn configmap(namespace: &str, mtls: &str) -> Arc<ConfigMap> {
        Arc::new(
            serde_json::from_value(
                json!({"metadata": {"name": MESH_CONFIGMAP, "namespace": namespace},
                                          "data": {MTLS_KEY: mtls}}),
            )
            .unwrap(),
        )
    }

    #[test]
    fn annotations_and_the_configmap_make_the_settings() {
        let namespaces = [
            namespace("shop", &[(MTLS_ANNOTATION, "strict")]),
            namespace(
                "bank",
                &[
                    (MTLS_ANNOTATION, " Permissive"),
                    (VISIBILITY_ANNOTATION, "private"),
                ],
            ),
            namespace("web", &[(VISIBILITY_ANNOTATION, "public")]),
            namespace("plain", &[("other", "x")]),
        ];
        let settings = read(
            &namespaces,
            &[configmap("serin-system", "strict")],
            "serin-system",
        );
        assert_eq!(settings.mtls.default, Some(MtlsMode::Strict));
        assert_eq!(
            settings.mtls.namespaces,
            BTreeMap::from([
                ("bank".to_owned(), MtlsMode::Permissive),
                ("shop".to_owned(), MtlsMode::Strict)
            ])
        );
        assert_eq!(
            settings.private_namespaces,
            BTreeSet::from(["bank".to_owned()])
        );
        assert!(settings.ignored.is_empty(), "{:?}", settings.ignored);
        // The ConfigMap of another namespace is not ours.
        assert_eq!(
            read(
                &namespaces,
                &[configmap("default", "strict")],
                "serin-system"
            )
            .mtls
            .default,
            None
        );
    }

    #[test]
    fn a_bad_value_is_ignored_with_a_message_and_the_rest_is_kept() {
        let namespaces = [
            namespace(
                "shop",
                &[
                    (MTLS_ANNOTATION, "sometimes"),
                    (VISIBILITY_ANNOTATION, "private"),
                ],
            ),
            namespace(
                "bank",
                &[
                    (VISIBILITY_ANNOTATION, "secret"),
                    (MTLS_ANNOTATION, "strict"),
                ],
            ),
        ];
        let settings = read(
            &namespaces,
            &[configmap("serin-system", "always")],
            "serin-system",
        );
        assert_eq!(settings.mtls.default, None);
        assert_eq!(
            settings.mtls.namespaces,
            BTreeMap::from([("bank".to_owned(), MtlsMode::Strict)])
        );
        assert_eq!(
            settings.private_namespaces,
            BTreeSet::from(["shop".to_owned()])
        );
        assert_eq!(
            settings.ignored["namespace shop"],
            "annotation serin.io/mtls is \"sometimes\", not strict or permissive; ignored (the namespace follows the mesh-wide default)"
        );
        assert!(
            settings.ignored["namespace bank"]
                .contains("serin.io/visibility is \"secret\", not private or public")
        );
        assert!(
            settings.ignored["configmap serin-system/serin-mesh"]
                .contains("key mtls is \"always\"")
        );
    }
}
