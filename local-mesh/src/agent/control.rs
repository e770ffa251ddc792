//! The agent's client of the control plane's Admin API: register a pod as a workload under a
//! lease, renew it, deregister it, and read the VIP the control plane gave its service.

use std::net::Ipv4Addr;
use std::time::Duration;

use serin_proto::auth::{AuthorizedAdmin, BearerToken, admin_client};
use serin_proto::v1;
use tonic::transport::Channel;

use crate::Error;
use crate::cluster::PodSpec;

/// Lease length asked for each pod; the agent renews at a third of what is granted.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How long one Admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A granted registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The lease id.
    pub lease_id: String,
    /// The lease length granted.
    pub ttl: Duration,
    /// The secret the pod's sidecar presents for its workload certificate.
    pub bootstrap_token: String,
}

/// An Admin client.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    client: AuthorizedAdmin,
}

impl ControlPlane {
    /// A client of `url` sending the write token `token`; connects on first use.
    pub fn new(url: &str, token: &str) -> Result<ControlPlane, Error> {
        let token = BearerToken::new(token).map_err(|message| Error::ControlPlane {
            call: "connect",
            message,
        })?;
        let channel = Channel::from_shared(url.to_owned())
            .map_err(|e| Error::ControlPlane {
                call: "connect",
                message: e.to_string(),
            })?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        Ok(ControlPlane {
            client: admin_client(channel, token),
        })
    }

    /// The workload a pod stands for.
    pub fn workload(spec: &PodSpec, ip: Ipv4Addr) -> v1::Workload {
        v1::Workload {
            pod_name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            addresses: vec![ip.to_string()],
            service: spec.service.clone(),
            version: spec.version.clone(),
            ports: vec![v1::WorkloadPort {
                name: String::new(),
                port: u32::from(spec.port),
                protocol: 0,
            }],
            node_name: "serin-local".to_owned(),
            ..v1::Workload::default()
        }
    }

    /// Registers `workload` under a lease; `starting`: not ready (no traffic) until
    /// [`ControlPlane::mark_ready`].
    pub async fn register(
        &self,
        workload: v1::Workload,
        starting: bool,
    ) -> Result<Registration, Error> {
        let response = self
            .client
            .clone()
            .register_workload(v1::RegisterWorkloadRequest {
                workload: Some(workload),
                ttl: Some(proto_duration(LEASE_TTL)),
                starting,
            })
            .await
            .map_err(|s| status("RegisterWorkload", &s))?
            .into_inner();
        let ttl = response
            .ttl
            .map_or(LEASE_TTL, |d| Duration::new(d.seconds.max(1) as u64, 0));
        Ok(Registration {
            lease_id: response.lease_id,
            ttl,
            bootstrap_token: response.bootstrap_token,
        })
    }

    /// Marks a workload registered as starting ready: its endpoint takes traffic from now on.
    pub async fn mark_ready(&self, lease_id: &str) -> Result<(), Error> {
        self.client
            .clone()
            .renew_lease(v1::RenewLeaseRequest {
                lease_id: lease_id.to_owned(),
                ttl: None,
                ready: true,
            })
            .await
            .map_err(|s| status("RenewLease", &s))?;
        Ok(())
    }

    /// Extends a lease; `Ok(false)` when the control plane no longer knows it.
    pub async fn renew(&self, lease_id: &str) -> Result<bool, Error> {
        match self
            .client
            .clone()
            .renew_lease(v1::RenewLeaseRequest {
                lease_id: lease_id.to_owned(),
                ttl: None,
                ready: false,
            })
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(status("RenewLease", &s)),
        }
    }

    /// Removes a registration now.
    pub async fn deregister(&self, lease_id: &str) -> Result<bool, Error> {
        Ok(self
            .client
            .clone()
            .deregister_workload(v1::DeregisterWorkloadRequest {
                lease_id: lease_id.to_owned(),
            })
            .await
            .map_err(|s| status("DeregisterWorkload", &s))?
            .into_inner()
            .removed)
    }

    /// The IPv4 VIP of `service` in `namespace`, as ListServices reports it.
    pub async fn vip(&self, service: &str, namespace: &str) -> Result<Ipv4Addr, Error> {
        let services = self
            .client
            .clone()
            .list_services(v1::ListServicesRequest {
                namespace: namespace.to_owned(),
            })
            .await
            .map_err(|s| status("ListServices", &s))?
            .into_inner()
            .services;
        services
            .iter()
            .filter_map(|s| s.service.as_ref())
            .find(|s| s.name == service && s.namespace == namespace)
            .and_then(|s| s.vips.iter().find_map(|v| v.parse::<Ipv4Addr>().ok()))
            .ok_or_else(|| Error::ControlPlane {
                call: "ListServices",
                message: format!("service {namespace}/{service} has no IPv4 VIP"),
            })
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn status(call: &'static str, s: &tonic::Status) -> Error {
    Error::ControlPlane {
        call,
        message: format!("{}: {}", s.code(), s.message()),
    }
}
