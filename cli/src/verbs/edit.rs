//! The gray-release verbs: `canary`, `route`, `mirror`, `promote`, `rollback`, `delete policy`.
//!
//! `route` and `mirror` are read-modify-write: read the service's policy, edit it with
//! serin-policy's pure edit functions, send it back with `if_generation`; when someone else
//! changed the policy in between (ABORTED) they start over, a bounded number of times.

use std::future::Future;
use std::io::Write;

use serin_control::model::PolicyDraft;
use serin_policy::edit::{self, RouteMatch};
use serin_policy::{EditError, VersionWeight};
use serin_proto::v1;

use super::{MAX_ATTEMPTS, pairs, service_policy};
use crate::cli::{CanaryArgs, DeleteArgs, MirrorArgs, PromoteArgs, RollbackArgs, RouteArgs};
use crate::connect::ControlPlane;
use crate::error::CliError;
use crate::render;

fn edit_error(service: &str, e: EditError) -> CliError {
    let message = match e {
        EditError::Invalid(errors) => errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    CliError::Input(format!("service {service}: {message}"))
}

fn no_policy(namespace: &str, service: &str) -> CliError {
    CliError::Input(format!(
        "service {namespace}/{service} has no policy to edit: create one with `serinctl apply -f FILE` or `serinctl canary`"
    ))
}

/// Runs `attempt` until it does not end in ABORTED, at most [`MAX_ATTEMPTS`] times.
async fn retrying<T, F, Fut>(service: &str, mut attempt: F) -> Result<T, CliError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CliError>>,
{
    for _ in 0..MAX_ATTEMPTS {
        match attempt().await {
            Err(CliError::Refused {
                code: tonic::Code::Aborted,
                ..
            }) => continue,
            other => return other,
        }
    }
    Err(CliError::Input(format!(
        "gave up on service {service} after {MAX_ATTEMPTS} attempts: its policy kept changing while this command ran"
    )))
}

fn configured(out: &mut impl Write, policy: Option<&v1::TrafficPolicy>) -> Result<(), CliError> {
    let p = policy.cloned().unwrap_or_default();
    let m = p.metadata.unwrap_or_default();
    let s = p.spec.unwrap_or_default();
    writeln!(
        out,
        "policy/{} configured (generation {}): default {}; {} rule(s){}",
        m.name,
        m.generation,
        render::shares(&s.default.unwrap_or_default().route),
        s.rules.len(),
        s.mirror.map_or(String::new(), |mi| format!(
            "; mirror {} {}%",
            mi.version,
            render::trim_float(mi.percent)
        )),
    )?;
    Ok(())
}

fn warn(policy: Option<&v1::TrafficPolicy>, warnings: &[v1::PolicyWarning]) {
    let name = policy
        .and_then(|p| p.metadata.as_ref())
        .map_or("", |m| m.name.as_str());
    for w in warnings {
        eprintln!(
            "serinctl: warning: policy/{name}: {}: {}",
            w.field, w.message
        );
    }
}

/// `canary SERVICE VERSION --weight PCT`: the default route becomes stable (100-PCT) and VERSION
/// (PCT); with no policy yet, the stable version is the service's only other version.
pub async fn canary(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &CanaryArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let resp = retrying(&args.service, || {
        let mut cp = cp.clone();
        async move {
            let (weights, generation) = match service_policy(&mut cp, namespace, &args.service)
                .await?
            {
                Some((draft, generation)) => {
                    let edited = edit::set_canary_weight(&draft.policy, &args.version, args.weight)
                        .map_err(|e| edit_error(&args.service, e))?;
                    (edited.spec.default.route, generation)
                }
                None => (
                    vec![
                        VersionWeight::new(
                            stable_version(&mut cp, namespace, args).await?,
                            100 - args.weight,
                        ),
                        VersionWeight::new(&args.version, args.weight),
                    ],
                    0,
                ),
            };
            let req = v1::SetWeightsRequest {
                namespace: namespace.to_owned(),
                service: args.service.clone(),
                weights: serin_control::proto::weights_to_proto(&weights),
                if_generation: Some(generation),
            };
            cp.admin
                .set_weights(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| cp.error(format!("canary of service {}", args.service), &s))
        }
    })
    .await?;
    warn(resp.policy.as_ref(), &resp.warnings);
    configured(out, resp.policy.as_ref())
}

/// The one version of a service other than the canary, for a canary on a service without policy.
async fn stable_version(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &CanaryArgs,
) -> Result<String, CliError> {
    let services = cp
        .admin
        .list_services(v1::ListServicesRequest {
            namespace: namespace.to_owned(),
        })
        .await
        .map_err(|s| cp.error("listing services", &s))?
        .into_inner()
        .services;
    let versions: Vec<String> = services
        .into_iter()
        .filter(|s| {
            s.service
                .as_ref()
                .is_some_and(|svc| svc.name == args.service)
        })
        .flat_map(|s| s.versions)
        .map(|v| v.version)
        .filter(|v| *v != args.version && !v.is_empty())
        .collect();
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::Input(format!(
            "service {namespace}/{} has no policy and no version other than {} to split with: apply a policy first",
            args.service, args.version
        ))),
        many => Err(CliError::Input(format!(
            "service {namespace}/{} has no policy and several versions ({}): apply a policy that names the stable one first",
            args.service,
            many.join(", ")
        ))),
    }
}

/// Applies an edited policy with the generation it was read at.
async fn send_edit(
    cp: &mut ControlPlane,
    draft: &PolicyDraft,
    generation: u64,
    what: &str,
) -> Result<v1::ApplyPolicyResponse, CliError> {
    let req = v1::ApplyPolicyRequest {
        policy: Some(v1::TrafficPolicy::from(draft)),
        if_generation: Some(generation),
        dry_run: false,
    };
    cp.admin
        .apply_policy(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| cp.error(what.to_owned(), &s))
}

/// `route SERVICE VERSION [conditions]`: a rule, first, sending matching requests to VERSION.
pub async fn route(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &RouteArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let conditions = RouteMatch {
        headers: pairs("--header", &args.headers)?,
        cookies: pairs("--cookie", &args.cookies)?,
        uri_prefix: args.uri_prefix.clone(),
        os: args
            .os
            .iter()
            .map(|o| o.trim().to_owned())
            .filter(|o| !o.is_empty())
            .collect(),
        query: pairs("--query", &args.query)?,
    };
    if conditions == RouteMatch::default() {
        return Err(CliError::Input(
            "route needs at least one condition: --header, --cookie, --uri-prefix, --os or --query"
                .into(),
        ));
    }
    let block = conditions.to_block();
    let resp = retrying(&args.service, || {
        let mut cp = cp.clone();
        let block = block.clone();
        async move {
            let (mut draft, generation) = service_policy(&mut cp, namespace, &args.service)
                .await?
                .ok_or_else(|| no_policy(namespace, &args.service))?;
            let mut edited = edit::add_route_rule(&draft.policy, &args.version, block.clone())
                .map_err(|e| edit_error(&args.service, e))?;
            if let Some(name) = &args.rule_name
                && let Some(rule) = edited
                    .spec
                    .rules
                    .iter_mut()
                    .find(|r| r.matches == [block.clone()])
            {
                rule.name = name.clone();
            }
            draft.policy = edited;
            send_edit(
                &mut cp,
                &draft,
                generation,
                &format!("route of service {}", args.service),
            )
            .await
        }
    })
    .await?;
    warn(resp.policy.as_ref(), &resp.warnings);
    configured(out, resp.policy.as_ref())
}

/// `mirror SERVICE VERSION --percent P` (0 turns mirroring off).
pub async fn mirror(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &MirrorArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let resp = retrying(&args.service, || {
        let mut cp = cp.clone();
        async move {
            let (mut draft, generation) = service_policy(&mut cp, namespace, &args.service)
                .await?
                .ok_or_else(|| no_policy(namespace, &args.service))?;
            draft.policy = if args.percent == 0.0 {
                edit::clear_mirror(&draft.policy)
            } else {
                edit::set_mirror(&draft.policy, &args.version, args.percent)
            }
            .map_err(|e| edit_error(&args.service, e))?;
            send_edit(
                &mut cp,
                &draft,
                generation,
                &format!("mirror of service {}", args.service),
            )
            .await
        }
    })
    .await?;
    warn(resp.policy.as_ref(), &resp.warnings);
    configured(out, resp.policy.as_ref())
}

/// `promote SERVICE VERSION [--force]`.
pub async fn promote(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &PromoteArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let req = v1::PromoteRequest {
        namespace: namespace.to_owned(),
        service: args.service.clone(),
        version: args.version.clone(),
        if_generation: None,
        force: args.force,
    };
    let resp = cp
        .admin
        .promote(req)
        .await
        .map_err(|s| {
            cp.error(
                format!("promote of {} in service {}", args.version, args.service),
                &s,
            )
        })?
        .into_inner();
    warn(resp.policy.as_ref(), &resp.warnings);
    configured(out, resp.policy.as_ref())
}

/// `rollback SERVICE [--to-generation N]`.
pub async fn rollback(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &RollbackArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let req = v1::RollbackRequest {
        namespace: namespace.to_owned(),
        service: args.service.clone(),
        to_generation: args.to_generation,
        if_generation: None,
    };
    let resp = cp
        .admin
        .rollback(req)
        .await
        .map_err(|s| cp.error(format!("rollback of service {}", args.service), &s))?
        .into_inner();
    warn(resp.policy.as_ref(), &resp.warnings);
    let m = resp
        .policy
        .as_ref()
        .and_then(|p| p.metadata.clone())
        .unwrap_or_default();
    writeln!(
        out,
        "policy/{} rolled back to the content of generation {} (now generation {})",
        m.name, resp.restored_generation, m.generation
    )?;
    Ok(())
}

/// `delete policy NAME`.
pub async fn delete(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &DeleteArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let req = v1::DeletePolicyRequest {
        namespace: namespace.to_owned(),
        name: args.name.clone(),
        if_generation: None,
    };
    let resp = cp
        .admin
        .delete_policy(req)
        .await
        .map_err(|s| cp.error(format!("deleting policy {}", args.name), &s))?
        .into_inner();
    writeln!(
        out,
        "policy/{} deleted (generation {})",
        args.name, resp.deleted_generation
    )?;
    Ok(())
}
