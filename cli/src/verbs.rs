//! The verbs, each a function from parsed arguments to output lines (or one error line).

use serin_control::model::PolicyDraft;
use serin_proto::v1;

use crate::connect::ControlPlane;
use crate::error::CliError;

pub mod apply;
pub mod convert;
pub mod demo;
pub mod edit;
pub mod get;
pub mod inject;
pub mod inspect;
pub mod local;
pub mod mtls;
pub mod top;
pub mod visibility;

/// How often a read-modify-write verb starts over when the policy changed under it.
pub const MAX_ATTEMPTS: usize = 8;

/// The current policy of a service, its generation and its wire form, if it has one.
pub async fn service_policy(
    cp: &mut ControlPlane,
    namespace: &str,
    service: &str,
) -> Result<Option<(PolicyDraft, u64)>, CliError> {
    let req = v1::ListPoliciesRequest {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
    };
    let list = cp
        .admin
        .list_policies(req)
        .await
        .map_err(|s| {
            cp.error(
                format!("reading the policy of service {namespace}/{service}"),
                &s,
            )
        })?
        .into_inner()
        .policies;
    let Some(wire) = list.into_iter().next() else {
        return Ok(None);
    };
    let generation = wire.metadata.as_ref().map_or(0, |m| m.generation);
    let draft = PolicyDraft::try_from(wire).map_err(|e| {
        CliError::Input(format!(
            "the control plane sent a policy this serinctl cannot read: {e}"
        ))
    })?;
    Ok(Some((draft, generation)))
}

/// The text of `-f FILE`, or of standard input for `-`, and the name to use in messages.
pub fn read_input(file: &str) -> Result<(String, String), CliError> {
    use std::io::Read as _;
    if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Input(format!("cannot read standard input: {e}")))?;
        Ok(("<stdin>".to_owned(), text))
    } else {
        let text = std::fs::read_to_string(file).map_err(|e| {
            CliError::Input(format!(
                "cannot read {file}: {}",
                crate::error::one_line(&e.to_string())
            ))
        })?;
        Ok((file.to_owned(), text))
    }
}

/// `K=V` as a pair, or an error naming the flag.
pub fn pair(flag: &str, text: &str) -> Result<(String, String), CliError> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(CliError::Input(format!(
            "{flag} {text:?}: expected NAME=VALUE"
        ))),
    }
}

/// Every `K=V` of a repeated flag.
pub fn pairs(flag: &str, list: &[String]) -> Result<Vec<(String, String)>, CliError> {
    list.iter().map(|t| pair(flag, t)).collect()
}
