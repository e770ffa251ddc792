//! What injection adds to a pod: images, the control plane's address, resources and the cluster's
//! Kubernetes version, as one plain struct with defaults.

use std::fmt;
use std::str::FromStr;

/// Namespace label that turns injection on for every pod in the namespace.
pub const NAMESPACE_LABEL: &str = "serin-injection";
/// The value of [`NAMESPACE_LABEL`] that enables injection.
pub const NAMESPACE_LABEL_ENABLED: &str = "enabled";
/// Pod label that overrides the namespace: `"true"` injects, `"false"` never does.
pub const POD_LABEL: &str = "sidecar.serin.io/inject";
/// Pod annotation written by injection; its presence means "already injected".
pub const STATUS_ANNOTATION: &str = "sidecar.serin.io/status";
/// The value of [`STATUS_ANNOTATION`].
pub const STATUS_INJECTED: &str = "injected";
/// Pod annotation: inbound ports never captured (`serin-iptables --exclude-inbound-ports`).
pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.serin.io/exclude-inbound-ports";
/// Pod annotation: outbound ports never captured (`--exclude-outbound-ports`).
pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.serin.io/exclude-outbound-ports";
/// Pod annotation: outbound destinations never captured (`--exclude-outbound-cidrs`).
pub const EXCLUDE_OUTBOUND_CIDRS: &str = "traffic.serin.io/exclude-outbound-cidrs";
/// Pod annotation: the inbound ports to capture (`--inbound-ports`, `*` = all, the default).
pub const INCLUDE_INBOUND_PORTS: &str = "traffic.serin.io/include-inbound-ports";
/// Namespaces whose pods are never injected, whatever their labels say.
pub const SYSTEM_NAMESPACES: &[&str] = &["kube-system", "kube-public", "kube-node-lease"];

/// Name of the init container that installs the capture rules.
pub const INIT_CONTAINER_NAME: &str = "serin-init";
/// Name of the sidecar container.
pub const PROXY_CONTAINER_NAME: &str = "serin-proxy";
/// The sidecar's uid and gid: its own traffic is never captured.
pub const PROXY_UID: i64 = 1337;
/// The audience of the projected service-account token the sidecar presents to the control
/// plane's Identity service (the control plane's `--token-audience`).
pub const TOKEN_AUDIENCE: &str = "serin";
/// Lifetime of that token; the kubelet rotates it at 80 % of it.
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// Name of the projected token volume.
pub const TOKEN_VOLUME_NAME: &str = "serin-token";
/// Where the sidecar mounts it (read-only).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/serin.io/token";
/// The token file in that directory (`SERIN_IDENTITY_TOKEN_FILE`).
pub const TOKEN_FILE: &str = "/var/run/secrets/serin.io/token/token";
/// The sidecar's admin port (`/ready`).
pub const PROXY_ADMIN_PORT: i32 = 15000;
/// The default control-plane gRPC address the sidecars follow.
pub const DEFAULT_CONTROL_PLANE: &str = "http://serin-control.serin-system.svc:15010";
/// The mTLS URL injected sidecars subscribe on by default.
pub const DEFAULT_CONTROL_PLANE_TLS: &str = "https://serin-control.serin-system.svc:15012";
/// The default image of the sidecar (it also holds `serin-iptables` for the init container).
pub const DEFAULT_PROXY_IMAGE: &str = "ghcr.io/serin-mesh/serin-proxy:0.1.0";

/// A Kubernetes `major.minor` version: decides native sidecars (1.29 and later) or classic ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubernetesVersion {
    /// Major version (1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl KubernetesVersion {
    /// The first version with native sidecars on by default (`SidecarContainers`, beta in 1.29).
    pub const NATIVE_SIDECARS: KubernetesVersion = KubernetesVersion {
        major: 1,
        minor: 29,
    };

    /// Whether the sidecar goes in as an init container with `restartPolicy: Always`.
    pub fn native_sidecars(self) -> bool {
        self >= Self::NATIVE_SIDECARS
    }
}

impl Default for KubernetesVersion {
    fn default() -> Self {
        Self::NATIVE_SIDECARS
    }
}

impl fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A Kubernetes version string that is not `MAJOR.MINOR[.PATCH]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid Kubernetes version {0:?}: expected MAJOR.MINOR such as 1.29 (a leading v, a patch and a + are allowed)"
)]
pub struct InvalidVersion(String);

impl FromStr for KubernetesVersion {
    type Err = InvalidVersion;

    /// Takes `1.29`, `v1.29.3`, `1.29+` (as some providers report the minor) or
    /// `v1.30.2-gke.1`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidVersion(s.to_owned());
        let text = s.trim().trim_start_matches('v');
        let mut parts = text.split('.');
        let number = |p: Option<&str>| -> Result<u32, InvalidVersion> {
            let p = p.ok_or_else(bad)?;
            let digits: &str = &p[..p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len())];
            digits.parse().map_err(|_| bad())
        };
        Ok(KubernetesVersion {
            major: number(parts.next())?,
            minor: number(parts.next())?,
        })
    }
}

/// CPU and memory for one container, as Kubernetes quantities (`"50m"`, `"64Mi"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// `requests.cpu`.
    pub cpu_request: String,
    /// `requests.memory`.
    pub memory_request: String,
    /// `limits.cpu`; `None` leaves CPU unlimited (no throttling of the data path).
    pub cpu_limit: Option<String>,
    /// `limits.memory`.
    pub memory_limit: String,
}

/// Everything injection needs to know besides the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of the sidecar container.
    pub proxy_image: String,
    /// Image of the init container (runs `serin-iptables apply`); the proxy image holds both.
    pub init_image: String,
    /// `imagePullPolicy` of both containers; `None` leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// gRPC URL of the control plane, as the sidecars reach it.
    pub control_plane: String,
    /// The control plane's mTLS URL: sidecars subscribe and report there with their workload
    /// certificate; `None`: they stay on `control_plane`.
    pub control_plane_tls: Option<String>,
    /// The CA's roots (PEM) put in the sidecar's environment, so that its first certificate
    /// request checks the mTLS port too; empty: that request goes to `control_plane`.
    pub control_plane_ca_pem: String,
    /// The cluster's version: native sidecars from 1.29 on.
    pub kubernetes_version: KubernetesVersion,
    /// The sidecar's resources.
    pub proxy_resources: Resources,
    /// The init container's resources.
    pub init_resources: Resources,
    /// The sidecar's log filter (`SERIN_LOG_LEVEL`).
    pub log_level: String,
    /// The audience of the sidecar's projected service-account token (the control plane's
    /// `--token-audience`).
    pub token_audience: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            proxy_image: DEFAULT_PROXY_IMAGE.to_owned(),
            init_image: DEFAULT_PROXY_IMAGE.to_owned(),
            image_pull_policy: Some("IfNotPresent".to_owned()),
            control_plane: DEFAULT_CONTROL_PLANE.to_owned(),
            control_plane_tls: Some(DEFAULT_CONTROL_PLANE_TLS.to_owned()),
            control_plane_ca_pem: String::new(),
            kubernetes_version: KubernetesVersion::default(),
            proxy_resources: Resources {
                cpu_request: "50m".to_owned(),
                memory_request: "32Mi".to_owned(),
                cpu_limit: None,
                memory_limit: "128Mi".to_owned(),
            },
            init_resources: Resources {
                cpu_request: "10m".to_owned(),
                memory_request: "16Mi".to_owned(),
                cpu_limit: Some("100m".to_owned()),
                memory_limit: "64Mi".to_owned(),
            },
            log_level: "info".to_owned(),
            token_audience: TOKEN_AUDIENCE.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_in_the_forms_clusters_report() {
        let v = |s: &str| s.parse::<KubernetesVersion>().unwrap();
        assert_eq!(
            v("1.29"),
            KubernetesVersion {
                major: 1,
                minor: 29
            }
        );
        assert_eq!(
            v("v1.30.2-gke.100"),
            KubernetesVersion {
                major: 1,
                minor: 30
            }
        );
        assert_eq!(
            v("1.28+"),
            KubernetesVersion {
                major: 1,
                minor: 28
            }
        );
        assert!(!v("1.28").native_sidecars());
        assert!(v("1.29").native_sidecars());
        assert!(v("2.0").native_sidecars());
        for bad in ["", "1", "one.two", "1.x"] {
            let err = bad.parse::<KubernetesVersion>().unwrap_err().to_string();
            assert!(err.contains("MAJOR.MINOR"), "{bad}: {err}");
        }
    }
}
