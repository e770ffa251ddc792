//! `serinctl apply -f FILE|-`.

use std::io::{Read, Write};

use serin_proto::v1;

use crate::cli::ApplyArgs;
use crate::connect::ControlPlane;
use crate::document;
use crate::error::CliError;

/// Applies every document in order; stops at the first one the control plane refuses.
///
/// Every document is validated here first, with the same code the control plane uses, so a bad
/// document in a file applies nothing, and values the wire cannot carry (a negative weight) are
/// reported as written instead of as what they would become on the wire.
pub async fn apply(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &ApplyArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (source, text) = if args.file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Input(format!("cannot read standard input: {e}")))?;
        ("<stdin>".to_owned(), text)
    } else {
        let text = std::fs::read_to_string(&args.file).map_err(|e| {
            CliError::Input(format!(
                "cannot read {}: {}",
                args.file,
                crate::error::one_line(&e.to_string())
            ))
        })?;
        (args.file.clone(), text)
    };
    let docs = document::parse(&text).map_err(|e| CliError::Input(format!("{source}: {e}")))?;
    if docs.is_empty() {
        return Err(CliError::Input(format!("{source}: no policy documents")));
    }
    let drafts: Vec<_> = docs
        .into_iter()
        .map(|(index, doc)| (index, doc.into_draft(namespace)))
        .collect();
    for (index, draft) in &drafts {
        if let Err(errors) = serin_policy::validate(&draft.policy, None) {
            let reasons: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return Err(CliError::Input(format!(
                "{source}: document {} (policy/{}): {}",
                index + 1,
                draft.policy.metadata.name,
                reasons.join("; ")
            )));
        }
    }
    for (index, draft) in drafts {
        let name = format!("policy/{}", draft.policy.metadata.name);
        let req = v1::ApplyPolicyRequest {
            policy: Some(v1::TrafficPolicy::from(&draft)),
            if_generation: None,
            dry_run: false,
        };
        let resp = cp
            .admin
            .apply_policy(req)
            .await
            .map_err(|s| cp.error(format!("{source}: document {} ({name})", index + 1), &s))?
            .into_inner();
        let generation = resp
            .policy
            .as_ref()
            .and_then(|p| p.metadata.as_ref())
            .map_or(0, |m| m.generation);
        let what = match v1::ApplyOutcome::try_from(resp.outcome) {
            Ok(v1::ApplyOutcome::Created) => "created",
            Ok(v1::ApplyOutcome::Unchanged) => "unchanged",
            _ => "configured",
        };
        writeln!(out, "{name} {what} (generation {generation})")?;
        for w in &resp.warnings {
            eprintln!("serinctl: warning: {name}: {}: {}", w.field, w.message);
        }
    }
    Ok(())
}
