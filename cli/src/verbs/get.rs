//! `serinctl get policies|services|proxies [NAME] [-o table|yaml|json]`.

use std::io::Write;

use serde::Serialize;
use serin_control::model::PolicyDraft;
use serin_proto::v1;

use crate::cli::{GetArgs, Output, Resource};
use crate::connect::ControlPlane;
use crate::document::Document;
use crate::error::CliError;
use crate::render;

/// Lists or shows one resource kind.
pub async fn get(
    cp: &mut ControlPlane,
    namespace: &str,
    args: &GetArgs,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let ns = if args.all_namespaces {
        String::new()
    } else {
        namespace.to_owned()
    };
    let text = match args.resource {
        Resource::Policies => policies(cp, &ns, args).await?,
        Resource::Services => services(cp, &ns, args).await?,
        Resource::Proxies => proxies(cp, &ns, args).await?,
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

fn emit<T: Serialize>(
    items: &[T],
    single: bool,
    output: Output,
    table: impl FnOnce() -> String,
) -> Result<String, CliError> {
    match output {
        Output::Table => Ok(table()),
        Output::Yaml => render::yaml(items, single),
        Output::Json => render::json(items, single),
    }
}

fn not_found(what: &str, name: &str, ns: &str) -> CliError {
    let place = if ns.is_empty() {
        "any namespace".to_owned()
    } else {
        format!("namespace {ns}")
    };
    CliError::Input(format!("{what} {name} not found in {place}"))
}

async fn policies(cp: &mut ControlPlane, ns: &str, args: &GetArgs) -> Result<String, CliError> {
    let list = match &args.name {
        Some(name) => {
            let req = v1::GetPolicyRequest {
                namespace: ns.to_owned(),
                name: name.clone(),
                generation: 0,
            };
            vec![
                cp.admin
                    .get_policy(req)
                    .await
                    .map_err(|s| cp.error(format!("getting policy {name}"), &s))?
                    .into_inner()
                    .policy
                    .unwrap_or_default(),
            ]
        }
        None => {
            let req = v1::ListPoliciesRequest {
                namespace: ns.to_owned(),
                service: String::new(),
            };
            cp.admin
                .list_policies(req)
                .await
                .map_err(|s| cp.error("listing policies", &s))?
                .into_inner()
                .policies
        }
    };
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|p| {
            let m = p.metadata.clone().unwrap_or_default();
            let s = p.spec.clone().unwrap_or_default();
            vec![
                m.namespace,
                m.name,
                s.service,
                m.generation.to_string(),
                render::route(&s.default.unwrap_or_default().route),
                s.rules.len().to_string(),
                s.mirror.map_or("-".into(), |m| {
                    format!("{} {}%", m.version, render::trim_float(m.percent))
                }),
                render::age(m.update_time.as_ref()),
            ]
        })
        .collect();
    let docs = list
        .into_iter()
        .map(|p| {
            let m = p.metadata.clone().unwrap_or_default();
            let times = (
                render::time(m.create_time.as_ref()),
                render::time(m.update_time.as_ref()),
            );
            PolicyDraft::try_from(p)
                .map(|d| Document::from_draft(d, m.generation, times))
                .map_err(|e| {
                    CliError::Input(format!(
                        "the control plane sent a policy this serinctl cannot read: {e}"
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if docs.is_empty() && args.output == Output::Table {
        return Ok(format!(
            "no policies{}\n",
            if ns.is_empty() {
                String::new()
            } else {
                format!(" in namespace {ns}")
            }
        ));
    }
    emit(&docs, args.name.is_some(), args.output, || {
        render::table(
            &[
                "NAMESPACE",
                "NAME",
                "SERVICE",
                "GENERATION",
                "DEFAULT",
                "RULES",
                "MIRROR",
                "UPDATED",
            ],
            &rows,
        )
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceOut {
    namespace: String,
    name: String,
    vips: Vec<String>,
    hostnames: Vec<String>,
    ports: Vec<PortOut>,
    versions: Vec<VersionOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    policy_generation: u64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PortOut {
    port: u32,
    name: String,
    protocol: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionOut {
    version: String,
    ready_endpoints: u32,
    total_endpoints: u32,
    default_percent: f64,
}

fn protocol(p: i32) -> String {
    v1::Protocol::try_from(p)
        .map_or("unknown", |p| match p {
            v1::Protocol::Unspecified => "detect",
            v1::Protocol::Http1 => "http",
            v1::Protocol::Http2 => "http2",
            v1::Protocol::Grpc => "grpc",
            v1::Protocol::Tcp => "tcp",
        })
        .to_owned()
}

async fn services(cp: &mut ControlPlane, ns: &str, args: &GetArgs) -> Result<String, CliError> {
    let list = cp
        .admin
        .list_services(v1::ListServicesRequest {
            namespace: ns.to_owned(),
        })
        .await
        .map_err(|s| cp.error("listing services", &s))?
        .into_inner()
        .services;
    let items: Vec<ServiceOut> = list
        .into_iter()
        .filter(|s| {
            args.name
                .as_ref()
                .is_none_or(|n| s.service.as_ref().is_some_and(|svc| &svc.name == n))
        })
        .map(|s| {
            let svc = s.service.unwrap_or_default();
            ServiceOut {
                namespace: svc.namespace,
                name: svc.name,
                vips: svc.vips,
                hostnames: svc.hostnames,
                ports: svc
                    .ports
                    .iter()
                    .map(|p| PortOut {
                        port: p.port,
                        name: p.name.clone(),
                        protocol: protocol(p.protocol),
                    })
                    .collect(),
                versions: s
                    .versions
                    .into_iter()
                    .map(|v| VersionOut {
                        version: v.version,
                        ready_endpoints: v.ready_endpoints,
                        total_endpoints: v.total_endpoints,
                        default_percent: v.default_percent,
                    })
                    .collect(),
                policy: (!s.policy_name.is_empty()).then_some(s.policy_name),
                policy_generation: s.policy_generation,
            }
        })
        .collect();
    if let Some(name) = &args.name {
        if items.is_empty() {
            return Err(not_found("service", name, ns));
        }
    } else if items.is_empty() && args.output == Output::Table {
        return Ok("no services registered\n".into());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let versions = s
                .versions
                .iter()
                .map(|v| {
                    format!(
                        "{} {}/{} {}%",
                        v.version,
                        v.ready_endpoints,
                        v.total_endpoints,
                        render::trim_float(v.default_percent)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                s.namespace.clone(),
                s.name.clone(),
                s.vips.join(","),
                s.ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol))
                    .collect::<Vec<_>>()
                    .join(","),
                if versions.is_empty() {
                    "-".into()
                } else {
                    versions
                },
                s.policy.as_ref().map_or("-".into(), |p| {
                    format!("{p} (generation {})", s.policy_generation)
                }),
            ]
        })
        .collect();
    emit(&items, args.name.is_some(), args.output, || {
        render::table(
            &[
                "NAMESPACE",
                "NAME",
                "VIP",
                "PORTS",
                "VERSIONS (READY/TOTAL DEFAULT%)",
                "POLICY",
            ],
            &rows,
        )
    })
}

/// A proxy's sync state, for output.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyOut {
    namespace: String,
    pod: String,
    service: String,
    version: String,
    pod_ips: Vec<String>,
    proxy_version: String,
    peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    connected_since: Option<String>,
    sent_version: String,
    acked_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    acked_at: Option<String>,
    in_sync: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    nack: Option<NackOut>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NackOut {
    version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<String>,
    errors: Vec<String>,
}

impl ProxyOut {
    /// From the wire.
    pub fn new(p: v1::ProxyStatus) -> ProxyOut {
        let id = p.proxy.unwrap_or_default();
        ProxyOut {
            namespace: id.namespace,
            pod: id.pod_name,
            service: id.service,
            version: id.version,
            pod_ips: id.pod_ips,
            proxy_version: id.proxy_version,
            peer: p.peer_address,
            connected_since: render::time(p.connected_since.as_ref()),
            sent_version: p.sent_version,
            acked_version: p.acked_version,
            acked_at: render::time(p.acked_at.as_ref()),
            in_sync: p.in_sync,
            nack: (!p.nacked_version.is_empty()).then(|| NackOut {
                version: p.nacked_version,
                at: render::time(p.nacked_at.as_ref()),
                errors: p.nack_errors.iter().map(rejection).collect(),
            }),
        }
    }

    /// One word or line for the SYNC column.
    pub fn sync(&self) -> String {
        if self.in_sync {
            "in sync".into()
        } else if let Some(n) = self
            .nack
            .as_ref()
            .filter(|n| n.version == self.sent_version)
        {
            format!("NACK {}: {}", n.version, n.errors.join("; "))
        } else if self.sent_version.is_empty() {
            "connecting".into()
        } else {
            format!("pending (sent {})", self.sent_version)
        }
    }

    /// A row of the proxy table.
    pub fn row(&self) -> Vec<String> {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        vec![
            self.namespace.clone(),
            self.pod.clone(),
            dash(&self.service),
            dash(&self.version),
            dash(&self.acked_version),
            self.sync(),
        ]
    }
}

/// `TRAFFIC_POLICY default/reviews spec.rules[0]: reason`.
fn rejection(e: &v1::ResourceError) -> String {
    let kind = v1::ResourceKind::try_from(e.kind).map_or("RESOURCE", |k| {
        k.as_str_name().trim_start_matches("RESOURCE_KIND_")
    });
    let field = if e.field.is_empty() {
        String::new()
    } else {
        format!(" {}", e.field)
    };
    format!(
        "{} {}/{}{field}: {}",
        kind.to_ascii_lowercase(),
        e.namespace,
        e.name,
        e.reason
    )
}

/// The proxy table's headers.
pub const PROXY_HEADERS: [&str; 6] = ["NAMESPACE", "POD", "SERVICE", "VERSION", "ACKED", "SYNC"];

async fn proxies(cp: &mut ControlPlane, ns: &str, args: &GetArgs) -> Result<String, CliError> {
    let list = cp
        .admin
        .list_proxies(v1::ListProxiesRequest {
            namespace: ns.to_owned(),
            service: String::new(),
        })
        .await
        .map_err(|s| cp.error("listing proxies", &s))?
        .into_inner()
        .proxies;
    let items: Vec<ProxyOut> = list
        .into_iter()
        .map(ProxyOut::new)
        .filter(|p| args.name.as_ref().is_none_or(|n| &p.pod == n))
        .collect();
    if let Some(name) = &args.name {
        if items.is_empty() {
            return Err(not_found("proxy of pod", name, ns));
        }
    } else if items.is_empty() && args.output == Output::Table {
        return Ok("no proxies connected\n".into());
    }
    let rows: Vec<Vec<String>> = items.iter().map(ProxyOut::row).collect();
    emit(&items, args.name.is_some(), args.output, || {
        render::table(&PROXY_HEADERS, &rows)
    })
}
