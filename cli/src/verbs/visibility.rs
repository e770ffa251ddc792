//! `serinctl visibility`: which namespaces are private (their services, endpoints and policies
//! reach only the sidecars of the same namespace, connected on the control plane's mTLS port)
//! and which public (the default: every sidecar sees them).

use std::io::Write;

use serin_proto::v1;

use crate::cli::{VisibilityArg, VisibilityArgs};
use crate::connect::ControlPlane;
use crate::error::CliError;

/// Shows the private namespaces, or makes `namespace` private or public and shows the result.
pub async fn visibility(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &VisibilityArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let private = match args.visibility {
        None => {
            cp.admin
                .get_namespace_visibility(v1::GetNamespaceVisibilityRequest {})
                .await
                .map_err(|s| cp.error("reading the namespace visibility", &s))?
                .into_inner()
                .private_namespaces
        }
        Some(visibility) => {
            let word = match visibility {
                VisibilityArg::Private => "private",
                VisibilityArg::Public => "public",
            };
            let private = cp
                .admin
                .set_namespace_visibility(v1::SetNamespaceVisibilityRequest {
                    namespace: namespace.to_owned(),
                    private: visibility == VisibilityArg::Private,
                })
                .await
                .map_err(|s| cp.error(format!("making namespace {namespace} {word}"), &s))?
                .into_inner()
                .private_namespaces;
            writeln!(out, "namespace {namespace} is now {word}")?;
            private
        }
    };
    let mut private = private;
    private.sort();
    for ns in &private {
        writeln!(out, "namespace {ns}: private")?;
    }
    if private.is_empty() {
        writeln!(out, "every namespace is public")?;
    } else {
        writeln!(out, "every other namespace: public")?;
    }
    Ok(())
}
