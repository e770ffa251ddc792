//! `serinctl inject -f FILE|-`: offline sidecar injection of Kubernetes manifests, with the same
//! decision and patch as the control plane's admission webhook.

use std::io::Write;

use serin_control::inject::config::InjectConfig;
use serin_control::inject::manifest::{ManifestOptions, inject_manifests};
use serin_control::inject::pod::NamespaceInjection;

use crate::cli::{InjectArgs, NamespaceInjectionArg};
use crate::error::CliError;

/// Writes the manifests with every pod (template) injected; other documents unchanged.
pub fn inject(namespace: &str, args: &InjectArgs, out: &mut impl Write) -> Result<(), CliError> {
    let (source, text) = super::read_input(&args.file)?;
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
            kubernetes_version: args.kubernetes_version,
            ..InjectConfig::default()
        },
    };
    let injected =
        inject_manifests(&text, &options).map_err(|e| CliError::Input(format!("{source}: {e}")))?;
    out.write_all(injected.as_bytes())
        .map_err(|e| CliError::Input(format!("cannot write the output: {e}")))
}
