//! `serinctl status` and `serinctl explain`.

use std::io::Write;

use serin_proto::v1;

use super::get::{PROXY_HEADERS, ProxyOut};
use super::pairs;
use crate::cli::ExplainArgs;
use crate::connect::ControlPlane;
use crate::error::CliError;
use crate::render;

/// Every proxy with its config sync state; a one-line summary first.
pub async fn status(cp: &mut ControlPlane, out: &mut impl Write) -> Result<(), CliError> {
    let list = cp
        .admin
        .list_proxies(v1::ListProxiesRequest::default())
        .await
        .map_err(|s| cp.error("listing proxies", &s))?
        .into_inner()
        .proxies;
    let proxies: Vec<ProxyOut> = list.into_iter().map(ProxyOut::new).collect();
    let in_sync = proxies.iter().filter(|p| p.sync() == "in sync").count();
    writeln!(
        out,
        "control plane {}: {} proxies connected, {in_sync} in sync",
        cp.url,
        proxies.len()
    )?;
    if !proxies.is_empty() {
        let rows: Vec<Vec<String>> = proxies.iter().map(ProxyOut::row).collect();
        out.write_all(render::table(&PROXY_HEADERS, &rows).as_bytes())?;
    }
    Ok(())
}

/// Which rule and version would take the described request, and why.
pub async fn explain(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &ExplainArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let req = v1::ExplainRequest {
        namespace: namespace.to_owned(),
        service: args.service.clone(),
        request: Some(v1::RequestAttributes {
            method: args.method.clone(),
            path: args.path.clone(),
            headers: pairs("--header", &args.headers)?.into_iter().collect(),
            cookies: pairs("--cookie", &args.cookies)?.into_iter().collect(),
            query: pairs("--query", &args.query)?.into_iter().collect(),
            user_agent: args.user_agent.clone().unwrap_or_default(),
        }),
    };
    let e = cp
        .admin
        .explain(req)
        .await
        .map_err(|s| {
            cp.error(
                format!("explaining a request to service {}", args.service),
                &s,
            )
        })?
        .into_inner();
    writeln!(out, "{}", e.summary)?;
    if e.policy_name.is_empty() {
        writeln!(out, "policy: none (every ready version balanced equally)")?;
    } else {
        writeln!(
            out,
            "policy: {} (generation {})",
            e.policy_name, e.policy_generation
        )?;
    }
    let outcomes = e
        .outcomes
        .iter()
        .map(|s| {
            format!(
                "{} {}% ({} ready)",
                s.version,
                render::trim_float(s.percent),
                s.ready_endpoints
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    writeln!(
        out,
        "outcome: {}",
        if outcomes.is_empty() {
            "no version".to_owned()
        } else {
            outcomes
        }
    )?;
    if let Some(bucket) = e.sticky_bucket {
        writeln!(out, "sticky: bucket {bucket} of 10000")?;
    }
    if e.fell_back {
        writeln!(out, "fallback: the chosen version has no ready endpoints")?;
    }
    if let Ok(os) = v1::ClientOs::try_from(e.client_os)
        && os != v1::ClientOs::Unspecified
    {
        let name = os
            .as_str_name()
            .trim_start_matches("CLIENT_OS_")
            .to_ascii_lowercase();
        writeln!(out, "client os: {name}")?;
    }
    if let Some(m) = &e.mirror {
        writeln!(
            out,
            "mirror: {}% copied to {}",
            render::trim_float(m.percent),
            m.version
        )?;
    }
    for t in &e.trace {
        let verdict = if t.matched { "matched" } else { "no match" };
        writeln!(
            out,
            "rule {} {}: {verdict}: {}",
            t.rule_index, t.rule_name, t.reason
        )?;
    }
    Ok(())
}
