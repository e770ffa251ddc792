//! `serinctl mtls`: the mTLS modes, mesh-wide and per namespace (`permissive` accepts plain and
//! mTLS connections between pods, `strict` only mTLS from meshed sidecars).

use std::io::Write;

use serin_proto::v1;

use crate::cli::{MtlsArgs, MtlsModeArg};
use crate::connect::ControlPlane;
use crate::error::CliError;

/// Shows the modes, or sets the namespace's (or the mesh-wide) one and shows the result.
pub async fn mtls(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &MtlsArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let modes = match args.mode {
        None => {
            cp.admin
                .get_mtls_modes(v1::GetMtlsModesRequest {})
                .await
                .map_err(|s| cp.error("reading the mtls modes", &s))?
                .into_inner()
                .mtls
        }
        Some(mode) => {
            let mode = match mode {
                MtlsModeArg::Permissive => v1::MtlsMode::Permissive,
                MtlsModeArg::Strict => v1::MtlsMode::Strict,
                MtlsModeArg::Unset => v1::MtlsMode::Unspecified,
            };
            let target = if args.mesh_wide { "" } else { namespace };
            let modes = cp
                .admin
                .set_mtls_mode(v1::SetMtlsModeRequest {
                    namespace: target.to_owned(),
                    mode: mode as i32,
                })
                .await
                .map_err(|s| cp.error("setting the mtls mode", &s))?
                .into_inner()
                .mtls;
            let what = if args.mesh_wide {
                "mesh-wide default".to_owned()
            } else {
                format!("namespace {namespace}")
            };
            writeln!(out, "mtls mode of the {what} set to {}", name(mode as i32))?;
            modes
        }
    }
    .unwrap_or_default();
    let default = match v1::MtlsMode::try_from(modes.default_mode).unwrap_or_default() {
        v1::MtlsMode::Unspecified => "permissive (unset)".to_owned(),
        _ => name(modes.default_mode),
    };
    writeln!(out, "mesh-wide default: {default}")?;
    let mut namespaces: Vec<_> = modes.namespaces.into_iter().collect();
    namespaces.sort();
    for (ns, mode) in namespaces {
        writeln!(out, "namespace {ns}: {}", name(mode))?;
    }
    Ok(())
}

/// The lowercase name of a wire mode.
fn name(mode: i32) -> String {
    match v1::MtlsMode::try_from(mode).unwrap_or_default() {
        v1::MtlsMode::Unspecified => "unset".into(),
        v1::MtlsMode::Permissive => "permissive".into(),
        v1::MtlsMode::Strict => "strict".into(),
    }
}
