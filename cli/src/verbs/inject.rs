//! `serinctl inject -f FILE|-`: offline sidecar injection of Kubernetes manifests, with the same
//! decision and patch as the control plane's admission webhook.

use std::io::Write;
use std::path::Path;

use serin_control::inject::config::InjectConfig;
use serin_control::inject::manifest::{ManifestOptions, inject_manifests};
use serin_control::inject::pod::NamespaceInjection;

use crate::cli::{InjectArgs, NamespaceInjectionArg};
use crate::error::CliError;

/// Writes the manifests with every pod (template) injected; other documents unchanged. With
/// `control_plane_ca` (the control plane's roots, PEM), the sidecars get them.
pub fn inject(
    namespace: &str,
    args: &InjectArgs,
    control_plane_ca: Option<&Path>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (source, text) = super::read_input(&args.file)?;
    let control_plane_tls =
        (args.sidecar_control_plane_tls != "off").then(|| args.sidecar_control_plane_tls.clone());
    let control_plane_ca_pem = match control_plane_ca {
        None => String::new(),
        Some(_) if control_plane_tls.is_none() => {
            return Err(CliError::Input(
                "--control-plane-ca with --sidecar-control-plane-tls off: the roots are only \
                 for the mTLS port"
                    .into(),
            ));
        }
        Some(path) => crate::connect::read_roots(path)?.0,
    };
    let options = ManifestOptions {
        default_namespace: namespace.to_owned(),
        namespace_injection: match args.namespace_injection {
            NamespaceInjectionArg::Enabled => NamespaceInjection::Enabled,
            NamespaceInjectionArg::Disabled => NamespaceInjection::Disabled,
        },
        config: InjectConfig {
            proxy_image: args.sidecar_image.clone(),
            init_image: args.sidecar_image.clone(),
            control_plane: args.sidecar_control_plane.clone(),
            control_plane_tls,
            control_plane_ca_pem,
            kubernetes_version: args.kubernetes_version,
            ..InjectConfig::default()
        },
    };
    let injected =
        inject_manifests(&text, &options).map_err(|e| CliError::Input(format!("{source}: {e}")))?;
    out.write_all(injected.as_bytes())
        .map_err(|e| CliError::Input(format!("cannot write the output: {e}")))
}
