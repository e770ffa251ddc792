//! One pod: inject it or leave it alone (and why), and the JSONPatch that injects it. The webhook
//! returns the patch to the API server; `serinctl inject` applies the same patch to the pod
//! template of a manifest.

use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use serin_iptables::config as iptables;

use super::config::{
    EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_CIDRS, EXCLUDE_OUTBOUND_PORTS, INCLUDE_INBOUND_PORTS,
    INIT_CONTAINER_NAME, InjectConfig, POD_LABEL, PROXY_ADMIN_PORT, PROXY_CONTAINER_NAME,
    PROXY_UID, Resources, STATUS_ANNOTATION, STATUS_INJECTED, SYSTEM_NAMESPACES,
    TOKEN_EXPIRATION_SECONDS, TOKEN_FILE, TOKEN_MOUNT_PATH, TOKEN_VOLUME_NAME,
};

/// Annotation that makes `kubectl logs`/`exec` pick the app, not a classic sidecar listed first.
const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

/// What the namespace says, as far as the caller knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceInjection {
    /// The namespace is labelled `serin-injection=enabled` (or the caller assumes so: the webhook
    /// is only called for such namespaces and for pods that opt in).
    Enabled,
    /// It is not: only pods labelled `sidecar.serin.io/inject: "true"` are injected.
    Disabled,
}

/// Why a pod is left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// It already has the sidecar (the status annotation or a Serin container).
    AlreadyInjected,
    /// It uses the node's network namespace: capture rules would capture the node's traffic.
    HostNetwork,
    /// It runs in a system namespace such as kube-system.
    SystemNamespace(String),
    /// Its label `sidecar.serin.io/inject` is `"false"`.
    OptedOut,
    /// Its namespace does not have injection on and the pod does not opt in.
    NamespaceDisabled,
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::AlreadyInjected => f.write_str("already injected"),
            Skip::HostNetwork => f.write_str("hostNetwork pod"),
            Skip::SystemNamespace(ns) => write!(f, "system namespace {ns}"),
            Skip::OptedOut => write!(f, "label {POD_LABEL}=false"),
            Skip::NamespaceDisabled => f.write_str("injection not enabled for the namespace"),
        }
    }
}

/// The decision for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Inject: apply these operations to the pod (paths from the pod's root).
    Inject(Vec<PatchOperation>),
    /// Leave the pod as it is.
    Skip(Skip),
}

/// A pod that cannot be injected as written.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The injection label has a value other than true or false.
    #[error("label {POD_LABEL} is {0:?}: expected \"true\" or \"false\"")]
    BadLabel(String),
    /// An exclusion annotation does not parse.
    #[error("annotation {annotation}: {reason}")]
    BadAnnotation {
        /// The annotation's name.
        annotation: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The object is not a pod Kubernetes would accept.
    #[error("not a valid pod: {0}")]
    InvalidPod(String),
}

/// Decides whether to inject `pod`, which runs (or will run) in `namespace`, and builds the patch.
///
/// Order: system namespaces and hostNetwork pods are never injected; an injected pod is never
/// injected again; then the pod's label, then the namespace.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_injection: NamespaceInjection,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return Ok(Outcome::Skip(Skip::SystemNamespace(namespace.to_owned())));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return Ok(Outcome::Skip(Skip::HostNetwork));
    }
    if already_injected(pod) {
        return Ok(Outcome::Skip(Skip::AlreadyInjected));
    }
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(POD_LABEL));
    match (label.map(|v| v.trim()), namespace_injection) {
        (Some("false"), _) => return Ok(Outcome::Skip(Skip::OptedOut)),
        (Some("true"), _) | (None, NamespaceInjection::Enabled) => {}
        (None, NamespaceInjection::Disabled) => {
            return Ok(Outcome::Skip(Skip::NamespaceDisabled));
        }
        (Some(other), _) => return Err(InjectError::BadLabel(other.to_owned())),
    }
    if spec.containers.is_empty() {
        return Err(InjectError::InvalidPod(
            "spec.containers is empty".to_owned(),
        ));
    }
    let capture = CaptureSettings::from_annotations(pod.metadata.annotations.as_ref())?;
    Ok(Outcome::Inject(patch(pod, &capture, config)))
}

/// Whether the pod already carries the sidecar.
pub fn already_injected(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
    let ours = |c: &Container| c.name == PROXY_CONTAINER_NAME || c.name == INIT_CONTAINER_NAME;
    let spec = pod.spec.as_ref();
    annotated
        || spec.is_some_and(|s| s.containers.iter().any(ours))
        || spec
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|c| c.iter().any(ours))
}

/// The pod's capture settings, from its annotations, validated as `serin-iptables` would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CaptureSettings {
    include_inbound_ports: Option<String>,
    exclude_inbound_ports: Option<String>,
    exclude_outbound_ports: Option<String>,
    exclude_outbound_cidrs: Option<String>,
}

impl CaptureSettings {
    fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, InjectError> {
        let get = |name: &str| {
            annotations
                .and_then(|a| a.get(name))
                .map(|v| v.split_whitespace().collect::<String>())
        };
        let bad = |annotation: &'static str| {
            move |e: iptables::ConfigError| InjectError::BadAnnotation {
                annotation,
                reason: e.to_string(),
            }
        };
        let settings = CaptureSettings {
            include_inbound_ports: get(INCLUDE_INBOUND_PORTS),
            exclude_inbound_ports: get(EXCLUDE_INBOUND_PORTS),
            exclude_outbound_ports: get(EXCLUDE_OUTBOUND_PORTS),
            exclude_outbound_cidrs: get(EXCLUDE_OUTBOUND_CIDRS),
        };
        let exclude_in = match &settings.exclude_inbound_ports {
            Some(v) => iptables::parse_port_list(EXCLUDE_INBOUND_PORTS, v)
                .map_err(bad(EXCLUDE_INBOUND_PORTS))?,
            None => Vec::new(),
        };
        iptables::parse_inbound(
            settings.include_inbound_ports.as_deref().unwrap_or("*"),
            exclude_in,
        )
        .map_err(bad(INCLUDE_INBOUND_PORTS))?;
        if let Some(v) = &settings.exclude_outbound_ports {
            iptables::parse_port_list(EXCLUDE_OUTBOUND_PORTS, v)
                .map_err(bad(EXCLUDE_OUTBOUND_PORTS))?;
        }
        if let Some(v) = &settings.exclude_outbound_cidrs {
            iptables::parse_cidr_list(EXCLUDE_OUTBOUND_CIDRS, v)
                .map_err(bad(EXCLUDE_OUTBOUND_CIDRS))?;
        }
        Ok(settings)
    }

    /// The `serin-iptables apply` arguments.
    fn iptables_args(&self) -> Vec<String> {
        let uid = PROXY_UID.to_string();
        let mut args: Vec<String> = ["apply", "--proxy-uid", &uid, "--proxy-gid", &uid]
            .map(str::to_owned)
            .to_vec();
        let flags = [
            ("--inbound-ports", &self.include_inbound_ports),
            ("--exclude-inbound-ports", &self.exclude_inbound_ports),
            ("--exclude-outbound-ports", &self.exclude_outbound_ports),
            ("--exclude-outbound-cidrs", &self.exclude_outbound_cidrs),
        ];
        for (flag, value) in flags {
            if let Some(value) = value {
                args.push(flag.to_owned());
                args.push(value.clone());
            }
        }
        args
    }
}

/// The operations that add the init container, the sidecar (with its projected token volume) and
/// the status annotation.
fn patch(pod: &Pod, capture: &CaptureSettings, config: &InjectConfig) -> Vec<PatchOperation> {
    let native = config.kubernetes_version.native_sidecars();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ops = Vec::new();

    let mut annotations = vec![(STATUS_ANNOTATION, STATUS_INJECTED.to_owned())];
    let existing = pod.metadata.annotations.clone().unwrap_or_default();
    if !native && !existing.contains_key(DEFAULT_CONTAINER_ANNOTATION) {
        // The classic sidecar goes first (so that the app starts after it is ready): keep
        // `kubectl logs POD` on the app.
        annotations.push((
            DEFAULT_CONTAINER_ANNOTATION,
            spec.containers[0].name.clone(),
        ));
    }
    if pod.metadata.annotations.is_none() {
        let map: serde_json::Map<String, Value> = annotations
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v)))
            .collect();
        ops.push(add(&["metadata", "annotations"], Value::Object(map)));
    } else {
        for (k, v) in annotations {
            ops.push(add(&["metadata", "annotations", k], Value::String(v)));
        }
    }

    let init = to_value(&init_container(capture, config));
    let proxy = to_value(&proxy_container(config, native));
    let mut new_inits = vec![init];
    if native {
        // Right after the capture rules and before the app's own init containers, so that
        // those already have the mesh.
        new_inits.push(proxy.clone());
    }
    match spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], Value::Array(new_inits))),
        Some(_) => {
            for (i, c) in new_inits.into_iter().enumerate() {
                ops.push(add(&["spec", "initContainers", &i.to_string()], c));
            }
        }
    }
    if !native {
        ops.push(add(&["spec", "containers", "0"], proxy));
    }
    let volume = serde_json::to_value(token_volume(config)).unwrap_or(Value::Null);
    match spec.volumes {
        None => ops.push(add(&["spec", "volumes"], Value::Array(vec![volume]))),
        Some(_) => ops.push(add(&["spec", "volumes", "-"], volume)),
    }
    ops
}

/// The projected service-account token the sidecar presents to the Identity service (audience
/// `config.token_audience`, by default [`super::config::TOKEN_AUDIENCE`]); the kubelet rotates it, the sidecar
/// reads it at each renewal.
fn token_volume(config: &InjectConfig) -> Volume {
    Volume {
        name: TOKEN_VOLUME_NAME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(config.token_audience.clone()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".to_owned(),
                    ..ServiceAccountTokenProjection::default()
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

fn to_value(container: &Container) -> Value {
    // A k8s-openapi Container always serialises.
    serde_json::to_value(container).unwrap_or(Value::Null)
}

fn init_container(capture: &CaptureSettings, config: &InjectConfig) -> Container {
    Container {
        name: INIT_CONTAINER_NAME.to_owned(),
        image: Some(config.init_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec!["serin-iptables".to_owned()]),
        args: Some(capture.iptables_args()),
        resources: Some(resources(&config.init_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".to_owned(), "NET_RAW".to_owned()]),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn proxy_container(config: &InjectConfig, native: bool) -> Container {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value = |name: &str, value: &str| EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    };
    let ready = |period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/ready".to_owned()),
            port: IntOrString::Int(PROXY_ADMIN_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Probe::default()
    };
    Container {
        name: PROXY_CONTAINER_NAME.to_owned(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        command: Some(vec!["serin-proxy".to_owned()]),
        env: Some({
            let mut env = vec![value("SERIN_CONTROL_PLANE", &config.control_plane)];
            // The mTLS port, and the roots to check it by before the first certificate.
            if let Some(tls) = &config.control_plane_tls {
                env.push(value("SERIN_CONTROL_PLANE_TLS", tls));
                if !config.control_plane_ca_pem.is_empty() {
                    env.push(value(
                        "SERIN_CONTROL_PLANE_CA_PEM",
                        &config.control_plane_ca_pem,
                    ));
                }
            }
            env.extend([
                field("SERIN_POD_NAME", "metadata.name"),
                field("SERIN_NAMESPACE", "metadata.namespace"),
                field("SERIN_POD_IP", "status.podIPs"),
                field("SERIN_SERVICE_ACCOUNT", "spec.serviceAccountName"),
                field("SERIN_NODE_NAME", "spec.nodeName"),
                field("SERIN_SERVICE", "metadata.labels['app']"),
                field("SERIN_VERSION", "metadata.labels['version']"),
                value("SERIN_LOG_LEVEL", &config.log_level),
                value("SERIN_IDENTITY_TOKEN_FILE", TOKEN_FILE),
            ]);
            env
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME_NAME.to_owned(),
            mount_path: TOKEN_MOUNT_PATH.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("serin-admin".to_owned()),
            container_port: PROXY_ADMIN_PORT,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // A native sidecar must pass its startup probe before the next init container (and so
        // the app) starts; a classic one holds the app back with a postStart hook instead.
        restart_policy: native.then(|| "Always".to_owned()),
        startup_probe: native.then(|| ready(1, 600)),
        readiness_probe: Some(ready(2, 3)),
        lifecycle: (!native).then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(
                        ["serin-proxy", "wait-ready", "--timeout", "120s"]
                            .map(str::to_owned)
                            .to_vec(),
                    ),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(resources(&config.proxy_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn resources(r: &Resources) -> ResourceRequirements {
    let q = |s: &str| Quantity(s.to_owned());
    let mut limits = BTreeMap::from([("memory".to_owned(), q(&r.memory_limit))]);
    if let Some(cpu) = &r.cpu_limit {
        limits.insert("cpu".to_owned(), q(cpu));
    }
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), q(&r.cpu_request)),
            ("memory".to_owned(), q(&r.memory_request)),
        ])),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::config::KubernetesVersion;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn app_pod() -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": "reviews-v1", "labels": {"app": "reviews", "version": "v1"}},
            "spec": {"containers": [{"name": "app", "image": "reviews:1"}]}
        }))
    }

    fn injected(pod: &Pod, config: &InjectConfig) -> Pod {
        let Outcome::Inject(ops) =
            decide(pod, "default", NamespaceInjection::Enabled, config).unwrap()
        else {
            panic!("not injected");
        };
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, &ops).unwrap();
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn native_sidecar_is_an_always_restarting_init_container_after_the_rules() {
        let out = injected(&app_pod(), &InjectConfig::default());
        let spec = out.spec.unwrap();
        let inits = spec.init_containers.unwrap();
        assert_eq!(inits[0].name, INIT_CONTAINER_NAME);
        assert_eq!(inits[1].name, PROXY_CONTAINER_NAME);
        assert_eq!(inits[1].restart_policy.as_deref(), Some("Always"));
        assert!(inits[1].startup_probe.is_some());
        assert_eq!(spec.containers.len(), 1);
        let caps = inits[0]
            .security_context
            .clone()
            .unwrap()
            .capabilities
            .unwrap();
        assert_eq!(caps.add.unwrap(), ["NET_ADMIN", "NET_RAW"]);
        assert_eq!(caps.drop.unwrap(), ["ALL"]);
    }

    #[test]
    fn the_sidecar_reads_a_projected_token_for_the_configured_audience() {
        let config = InjectConfig {
            token_audience: "mesh.example".to_owned(),
            ..InjectConfig::default()
        };
        let out = injected(&app_pod(), &config);
        let spec = out.spec.unwrap();
        let volumes = spec.volumes.unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, TOKEN_VOLUME_NAME);
        let projection = volumes[0].projected.clone().unwrap().sources.unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(projection.audience.as_deref(), Some("mesh.example"));
        assert_eq!(
            projection.expiration_seconds,
            Some(TOKEN_EXPIRATION_SECONDS)
        );
        assert_eq!(
            format!("{TOKEN_MOUNT_PATH}/{}", projection.path),
            TOKEN_FILE
        );
        let inits = spec.init_containers.unwrap();
        let proxy = &inits[1];
        let mounts = proxy.volume_mounts.clone().unwrap();
        assert_eq!(
            (
                mounts[0].name.as_str(),
                mounts[0].mount_path.as_str(),
                mounts[0].read_only
            ),
            (TOKEN_VOLUME_NAME, TOKEN_MOUNT_PATH, Some(true))
        );
        let env = proxy.env.clone().unwrap();
        let file = env
            .iter()
            .find(|e| e.name == "SERIN_IDENTITY_TOKEN_FILE")
            .and_then(|e| e.value.clone());
        assert_eq!(file.as_deref(), Some(TOKEN_FILE));
        assert!(
            inits[0].volume_mounts.is_none() && spec.containers[0].volume_mounts.is_none(),
            "only the sidecar mounts the token"
        );
    }

    #[test]
    fn classic_sidecar_goes_first_with_a_post_start_wait() {
        let config = InjectConfig {
            kubernetes_version: KubernetesVersion {
                major: 1,
                minor: 28,
            },
            ..InjectConfig::default()
        };
        let out = injected(&app_pod(), &config);
        let spec = out.spec.unwrap();
        assert_eq!(spec.init_containers.unwrap().len(), 1);
        assert_eq!(spec.containers[0].name, PROXY_CONTAINER_NAME);
        assert_eq!(spec.containers[0].restart_policy, None);
        assert!(spec.containers[0].lifecycle.is_some());
        let annotations = out.metadata.annotations.unwrap();
        assert_eq!(annotations[DEFAULT_CONTAINER_ANNOTATION], "app");
    }

    #[test]
    fn injecting_twice_adds_nothing() {
        let config = InjectConfig::default();
        let once = injected(&app_pod(), &config);
        assert_eq!(
            decide(&once, "default", NamespaceInjection::Enabled, &config).unwrap(),
            Outcome::Skip(Skip::AlreadyInjected)
        );
    }

    #[test]
    fn labels_override_the_namespace_and_bad_values_are_named() {
        let config = InjectConfig::default();
        let mut p = app_pod();
        let decide = |p: &Pod, ns| decide(p, "default", ns, &config);
        assert_eq!(
            decide(&p, NamespaceInjection::Disabled).unwrap(),
            Outcome::Skip(Skip::NamespaceDisabled)
        );
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert(POD_LABEL.to_owned(), "true".to_owned());
        assert!(matches!(
            decide(&p, NamespaceInjection::Disabled).unwrap(),
            Outcome::Inject(_)
        ));
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert(POD_LABEL.to_owned(), "false".to_owned());
        assert_eq!(
            decide(&p, NamespaceInjection::Enabled).unwrap(),
            Outcome::Skip(Skip::OptedOut)
        );
        let labels = p.metadata.labels.as_mut().unwrap();
        labels.insert(POD_LABEL.to_owned(), "yes".to_owned());
        let err = decide(&p, NamespaceInjection::Enabled)
            .unwrap_err()
            .to_string();
        assert!(err.contains(POD_LABEL) && err.contains("\"yes\""), "{err}");
    }

    #[test]
    fn exclusion_annotations_become_iptables_flags_or_named_errors() {
        let config = InjectConfig::default();
        let mut p = app_pod();
        p.metadata.annotations = Some(BTreeMap::from([
            (EXCLUDE_OUTBOUND_PORTS.to_owned(), "3306, 6379".to_owned()),
            (
                EXCLUDE_OUTBOUND_CIDRS.to_owned(),
                "169.254.169.254/32".to_owned(),
            ),
        ]));
        let out = injected(&p, &config);
        let args = out.spec.unwrap().init_containers.unwrap()[0]
            .args
            .clone()
            .unwrap();
        let joined = args.join(" ");
        assert!(
            joined.contains("--exclude-outbound-ports 3306,6379"),
            "{joined}"
        );
        assert!(
            joined.contains("--exclude-outbound-cidrs 169.254.169.254/32"),
            "{joined}"
        );

        p.metadata.annotations = Some(BTreeMap::from([(
            EXCLUDE_INBOUND_PORTS.to_owned(),
            "http".to_owned(),
        )]));
        let err = decide(&p, "default", NamespaceInjection::Enabled, &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(EXCLUDE_INBOUND_PORTS) && err.contains("http"),
            "{err}"
        );
    }

    #[test]
    fn system_namespaces_and_host_network_are_left_alone() {
        let config = InjectConfig::default();
        let p = app_pod();
        assert_eq!(
            decide(&p, "kube-system", NamespaceInjection::Enabled, &config).unwrap(),
            Outcome::Skip(Skip::SystemNamespace("kube-system".to_owned()))
        );
        let mut p = app_pod();
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(
            decide(&p, "default", NamespaceInjection::Enabled, &config).unwrap(),
            Outcome::Skip(Skip::HostNetwork)
        );
    }
}
