//! `serin.v1.Admin`: what serinctl (and later the dashboard) asks of the control plane. Each rpc
//! converts its request into domain types, asks the [`Mesh`] (writes) or reads the latest view,
//! and converts back; errors become gRPC statuses with one lowercase line naming what and where.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use serin_proto::v1;
use serin_proto::v1::admin_server::Admin;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::discovery::ProxyTable;
use crate::mesh::{Mesh, MeshError, Outcome, PolicyWarning};
use crate::metrics::Metrics;
use crate::model::{MeshView, PolicyDraft, PolicyKey, Workload, namespace_or_default};
use crate::proto::{duration, timestamp, to_duration, weights_from_proto, weights_to_proto};
use crate::telemetry::{Clock, EdgeTable, RuleHitTable};
use crate::topology;

pub mod explain;

/// Longest topology window this control plane reports (the telemetry windows' longest).
pub const MAX_TOPOLOGY_WINDOW: Duration =
    Duration::from_millis(crate::telemetry::LONGEST_WINDOW_MS);
/// Shortest topology update interval.
pub const MIN_TOPOLOGY_INTERVAL: Duration = Duration::from_millis(100);

/// The Admin service.
#[derive(Debug, Clone)]
pub struct AdminService {
    mesh: Mesh,
    proxies: Arc<ProxyTable>,
    metrics: Arc<Metrics>,
    telemetry: Telemetry,
    shutdown: watch::Receiver<bool>,
}

/// Where the topology's edges come from: the telemetry windows and the clock they run on.
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The edges' windows.
    pub edges: Arc<EdgeTable>,
    /// The rule hits' windows.
    pub rule_hits: Arc<RuleHitTable>,
    /// The clock.
    pub clock: Clock,
}

impl AdminService {
    /// Serves `mesh`; topology streams end when `shutdown` turns true.
    pub fn new(
        mesh: Mesh,
        proxies: Arc<ProxyTable>,
        metrics: Arc<Metrics>,
        telemetry: Telemetry,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            mesh,
            proxies,
            metrics,
            telemetry,
            shutdown,
        }
    }

    /// The traffic graph of `namespace` ("" = all) over `window`, now.
    pub fn graph(&self, namespace: &str, window: Duration) -> topology::Graph {
        let now = self.telemetry.clock.now_ms();
        let window_ms = (window.as_millis() as u64).min(crate::telemetry::LONGEST_WINDOW_MS);
        let windows = self.telemetry.edges.window(now, window_ms);
        topology::build(
            &self.view(),
            &self.proxies.list(),
            windows,
            namespace,
            now,
            window_ms / 1000,
        )
    }

    /// The hits of policy `namespace/policy` at `generation` over `window`, now, per rule (""
    /// for the default route) and version.
    pub fn rule_hits(
        &self,
        namespace: &str,
        policy: &str,
        generation: u64,
        window: Duration,
    ) -> Vec<crate::telemetry::hits::RouteHits> {
        let now = self.telemetry.clock.now_ms();
        let window_ms = (window.as_millis() as u64).min(crate::telemetry::LONGEST_WINDOW_MS);
        self.telemetry
            .rule_hits
            .policy(now, window_ms, namespace, policy, generation)
    }

    /// The mesh writer.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The connected proxies.
    pub fn proxies(&self) -> &Arc<ProxyTable> {
        &self.proxies
    }
}

impl From<MeshError> for Status {
    fn from(e: MeshError) -> Status {
        match e {
            MeshError::Invalid(m) => Status::invalid_argument(m),
            MeshError::NotFound(m) => Status::not_found(m),
            MeshError::AlreadyExists(m) => Status::already_exists(m),
            MeshError::Aborted(m) => Status::aborted(m),
            MeshError::FailedPrecondition(m) => Status::failed_precondition(m),
            MeshError::Store(e) => Status::internal(e.to_string()),
            MeshError::Kubernetes(m) => Status::unavailable(m),
            e @ (MeshError::Stopped | MeshError::Thread(_)) => Status::unavailable(e.to_string()),
        }
    }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field}: is required")))
    } else {
        Ok(())
    }
}

fn warnings(list: &[PolicyWarning]) -> Vec<v1::PolicyWarning> {
    list.iter()
        .map(|w| v1::PolicyWarning {
            field: w.field.clone(),
            message: w.message.clone(),
        })
        .collect()
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Created => "created",
        Outcome::Updated => "updated",
        Outcome::Unchanged => "unchanged",
    }
}

impl AdminService {
    fn counted<T>(&self, op: &str, result: &Result<T, MeshError>, outcome: impl Fn(&T) -> Outcome) {
        let outcome = match result {
            Ok(a) => outcome_name(outcome(a)),
            Err(MeshError::Invalid(_)) => "invalid",
            Err(MeshError::Aborted(_)) => "aborted",
            Err(_) => "failed",
        };
        self.metrics.policy_change(op, outcome);
    }

    fn view(&self) -> Arc<MeshView> {
        self.mesh.view()
    }
}

type TopologyStream = Pin<Box<dyn Stream<Item = Result<v1::TopologyUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply_policy(
        &self,
        request: Request<v1::ApplyPolicyRequest>,
    ) -> Result<Response<v1::ApplyPolicyResponse>, Status> {
        let req = request.into_inner();
        let policy = req
            .policy
            .ok_or_else(|| Status::invalid_argument("policy: is required"))?;
        let draft =
            PolicyDraft::try_from(policy).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let result = self.mesh.apply(draft, req.if_generation, req.dry_run).await;
        if !req.dry_run {
            self.counted("apply", &result, |a| a.outcome);
        }
        let applied = result?;
        let outcome = match applied.outcome {
            Outcome::Created => v1::ApplyOutcome::Created,
            Outcome::Updated => v1::ApplyOutcome::Updated,
            Outcome::Unchanged => v1::ApplyOutcome::Unchanged,
        };
        Ok(Response::new(v1::ApplyPolicyResponse {
            policy: Some(v1::TrafficPolicy::from(&*applied.policy)),
            outcome: outcome as i32,
            warnings: warnings(&applied.warnings),
        }))
    }

    async fn get_policy(
        &self,
        request: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::GetPolicyResponse>, Status> {
        let req = request.into_inner();
        required("name", &req.name)?;
        let key = PolicyKey::new(&req.namespace, &req.name);
        let policy = if req.generation == 0 {
            let view = self.view();
            let p = view
                .policies
                .get(&key)
                .ok_or_else(|| Status::not_found(format!("policy {key} not found")))?;
            v1::TrafficPolicy::from(&**p)
        } else {
            let g = req.generation;
            let rev =
                self.mesh.revision(key.clone(), g).await?.ok_or_else(|| {
                    Status::not_found(format!("policy {key} has no generation {g}"))
                })?;
            if rev.is_delete() {
                return Err(Status::not_found(format!(
                    "generation {g} of policy {key} is its deletion record"
                )));
            }
            v1::TrafficPolicy::from(&rev.policy)
        };
        Ok(Response::new(v1::GetPolicyResponse {
            policy: Some(policy),
        }))
    }

    async fn list_policies(
        &self,
        request: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesResponse>, Status> {
        let req = request.into_inner();
        let view = self.view();
        let policies = view
            .policies
            .values()
            .filter(|p| req.namespace.is_empty() || p.policy.metadata.namespace == req.namespace)
            .filter(|p| req.service.is_empty() || p.service() == req.service)
            .map(|p| v1::TrafficPolicy::from(&**p))
            .collect();
        Ok(Response::new(v1::ListPoliciesResponse { policies }))
    }

    async fn delete_policy(
        &self,
        request: Request<v1::DeletePolicyRequest>,
    ) -> Result<Response<v1::DeletePolicyResponse>, Status> {
        let req = request.into_inner();
        required("name", &req.name)?;
        let result = self
            .mesh
            .delete(PolicyKey::new(&req.namespace, &req.name), req.if_generation)
            .await;
        self.metrics
            .policy_change("delete", if result.is_ok() { "deleted" } else { "failed" });
        let (before, deleted_generation) = result?;
        Ok(Response::new(v1::DeletePolicyResponse {
            policy: Some(v1::TrafficPolicy::from(&*before)),
            deleted_generation,
        }))
    }

    async fn set_weights(
        &self,
        request: Request<v1::SetWeightsRequest>,
    ) -> Result<Response<v1::SetWeightsResponse>, Status> {
        let req = request.into_inner();
        required("service", &req.service)?;
        let result = self
            .mesh
            .set_weights(
                &req.namespace,
                &req.service,
                weights_from_proto(req.weights),
                req.if_generation,
            )
            .await;
        self.counted("set_weights", &result, |a| a.outcome);
        let applied = result?;
        Ok(Response::new(v1::SetWeightsResponse {
            policy: Some(v1::TrafficPolicy::from(&*applied.policy)),
            warnings: warnings(&applied.warnings),
        }))
    }

    async fn promote(
        &self,
        request: Request<v1::PromoteRequest>,
    ) -> Result<Response<v1::PromoteResponse>, Status> {
        let req = request.into_inner();
        required("service", &req.service)?;
        required("version", &req.version)?;
        let result = self
            .mesh
            .promote(
                &req.namespace,
                &req.service,
                &req.version,
                req.if_generation,
                req.force,
            )
            .await;
        self.counted("promote", &result, |a| a.outcome);
        let applied = result?;
        Ok(Response::new(v1::PromoteResponse {
            policy: Some(v1::TrafficPolicy::from(&*applied.policy)),
            warnings: warnings(&applied.warnings),
        }))
    }

    async fn rollback(
        &self,
        request: Request<v1::RollbackRequest>,
    ) -> Result<Response<v1::RollbackResponse>, Status> {
        let req = request.into_inner();
        required("service", &req.service)?;
        let result = self
            .mesh
            .rollback(
                &req.namespace,
                &req.service,
                req.to_generation,
                req.if_generation,
            )
            .await;
        self.counted("rollback", &result, |(a, _)| a.outcome);
        let (applied, restored_generation) = result?;
        Ok(Response::new(v1::RollbackResponse {
            policy: Some(v1::TrafficPolicy::from(&*applied.policy)),
            restored_generation,
            warnings: warnings(&applied.warnings),
        }))
    }

    async fn policy_history(
        &self,
        request: Request<v1::PolicyHistoryRequest>,
    ) -> Result<Response<v1::PolicyHistoryResponse>, Status> {
        let req = request.into_inner();
        required("name", &req.name)?;
        let key = PolicyKey::new(&req.namespace, &req.name);
        let revisions = self.mesh.history(key.clone(), req.limit as usize).await?;
        if revisions.is_empty() {
            return Err(Status::not_found(format!("policy {key} has no history")));
        }
        Ok(Response::new(v1::PolicyHistoryResponse {
            revisions: revisions.iter().map(v1::PolicyRevision::from).collect(),
        }))
    }

    async fn explain(
        &self,
        request: Request<v1::ExplainRequest>,
    ) -> Result<Response<v1::ExplainResponse>, Status> {
        let req = request.into_inner();
        required("service", &req.service)?;
        let attrs = req.request.unwrap_or_default();
        let attrs = explain::RequestAttributes {
            method: attrs.method,
            path: attrs.path,
            headers: attrs
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            cookies: attrs.cookies.into_iter().collect(),
            query: attrs.query.into_iter().collect(),
            user_agent: attrs.user_agent,
        };
        let namespace = namespace_or_default(&req.namespace);
        let e =
            explain::explain(&self.view(), &namespace, &req.service, &attrs).map_err(
                |e| match e {
                    explain::ExplainError::InvalidRequest { .. } => {
                        Status::invalid_argument(e.to_string())
                    }
                    explain::ExplainError::UnknownService(_) => Status::not_found(e.to_string()),
                },
            )?;
        Ok(Response::new(v1::ExplainResponse {
            policy_name: e.policy.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
            policy_generation: e.policy.as_ref().map_or(0, |p| p.1),
            rule_index: e.rule.as_ref().map(|r| r.0 as u32),
            rule_name: e.rule.as_ref().map(|r| r.1.clone()).unwrap_or_default(),
            match_block_index: e.rule.as_ref().map(|r| r.2 as u32),
            route: weights_to_proto(&e.route),
            outcomes: e
                .outcomes
                .iter()
                .map(|s| v1::VersionShare {
                    version: s.version.clone(),
                    percent: s.percent,
                    ready_endpoints: s.ready_endpoints,
                })
                .collect(),
            version: e.version.clone().unwrap_or_default(),
            sticky: e.sticky_bucket.is_some(),
            sticky_bucket: e.sticky_bucket.map(u32::from),
            client_os: e
                .client_os
                .as_deref()
                .map_or(v1::ClientOs::Unspecified, crate::proto::os_value)
                as i32,
            fell_back: e.fell_back,
            mirror: e.mirror.as_ref().map(|(v, p)| v1::Mirror {
                version: v.clone(),
                percent: *p,
            }),
            trace: e
                .trace
                .iter()
                .map(|t| v1::RuleTrace {
                    rule_index: t.index as u32,
                    rule_name: t.name.clone(),
                    matched: t.matched,
                    reason: t.reason.clone(),
                })
                .collect(),
            summary: e.summary,
        }))
    }

    async fn list_services(
        &self,
        request: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let req = request.into_inner();
        let view = self.view();
        let services = view
            .services
            .values()
            .filter(|s| req.namespace.is_empty() || s.namespace == req.namespace)
            .map(|s| {
                let policy = view.policy_for_service(&s.namespace, &s.name);
                let route = policy
                    .map(|p| p.policy.spec.default.route.clone())
                    .unwrap_or_default();
                let total: u64 = route
                    .iter()
                    .map(|w| u64::from(w.weight.get().unwrap_or(0)))
                    .sum();
                let versions = view
                    .versions(&s.namespace, &s.name)
                    .into_iter()
                    .map(|(version, c)| {
                        let weight: u64 = route
                            .iter()
                            .filter(|w| w.version == version)
                            .map(|w| u64::from(w.weight.get().unwrap_or(0)))
                            .sum();
                        v1::VersionStatus {
                            default_percent: if total == 0 {
                                0.0
                            } else {
                                100.0 * weight as f64 / total as f64
                            },
                            version,
                            ready_endpoints: c.ready,
                            total_endpoints: c.total,
                        }
                    })
                    .collect();
                v1::ServiceStatus {
                    service: Some(v1::Service::from(&**s)),
                    versions,
                    policy_name: policy
                        .map(|p| p.policy.metadata.name.clone())
                        .unwrap_or_default(),
                    policy_generation: policy.map_or(0, |p| p.generation()),
                }
            })
            .collect();
        Ok(Response::new(v1::ListServicesResponse { services }))
    }

    async fn list_proxies(
        &self,
        request: Request<v1::ListProxiesRequest>,
    ) -> Result<Response<v1::ListProxiesResponse>, Status> {
        let req = request.into_inner();
        let proxies = self
            .proxies
            .list()
            .iter()
            .filter(|p| req.namespace.is_empty() || p.identity.namespace == req.namespace)
            .filter(|p| req.service.is_empty() || p.identity.service == req.service)
            .map(v1::ProxyStatus::from)
            .collect();
        Ok(Response::new(v1::ListProxiesResponse { proxies }))
    }

    async fn register_workload(
        &self,
        request: Request<v1::RegisterWorkloadRequest>,
    ) -> Result<Response<v1::RegisterWorkloadResponse>, Status> {
        let req = request.into_inner();
        let workload = req
            .workload
            .ok_or_else(|| Status::invalid_argument("workload: is required"))?;
        let mut workload =
            Workload::try_from(workload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A starting workload is known (its sidecar may get a certificate) but takes no traffic.
        workload.ready = !req.starting;
        let ttl = req
            .ttl
            .map(|d| to_duration("ttl", d))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let lease = self.mesh.register(workload, ttl).await?;
        Ok(Response::new(v1::RegisterWorkloadResponse {
            lease_id: lease.id,
            expires_at: Some(timestamp(lease.expires_at)),
            ttl: Some(duration(lease.ttl)),
            bootstrap_token: lease.bootstrap_token,
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<v1::RenewLeaseRequest>,
    ) -> Result<Response<v1::RenewLeaseResponse>, Status> {
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        let ttl = req
            .ttl
            .map(|d| to_duration("ttl", d))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let lease = self.mesh.renew(req.lease_id, ttl, req.ready).await?;
        Ok(Response::new(v1::RenewLeaseResponse {
            expires_at: Some(timestamp(lease.expires_at)),
            ttl: Some(duration(lease.ttl)),
        }))
    }

    async fn deregister_workload(
        &self,
        request: Request<v1::DeregisterWorkloadRequest>,
    ) -> Result<Response<v1::DeregisterWorkloadResponse>, Status> {
        let req = request.into_inner();
        required("lease_id", &req.lease_id)?;
        let removed = self.mesh.deregister(req.lease_id).await?;
        Ok(Response::new(v1::DeregisterWorkloadResponse { removed }))
    }

    async fn set_mtls_mode(
        &self,
        request: Request<v1::SetMtlsModeRequest>,
    ) -> Result<Response<v1::SetMtlsModeResponse>, Status> {
        let req = request.into_inner();
        let mode = crate::proto::mtls_mode_from_proto(req.mode)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let modes = self.mesh.set_mtls_mode(req.namespace, mode).await?;
        Ok(Response::new(v1::SetMtlsModeResponse {
            mtls: Some(v1::MeshTls::from(&modes)),
        }))
    }

    async fn set_namespace_visibility(
        &self,
        request: Request<v1::SetNamespaceVisibilityRequest>,
    ) -> Result<Response<v1::SetNamespaceVisibilityResponse>, Status> {
        let req = request.into_inner();
        if req.namespace.is_empty() {
            return Err(Status::invalid_argument("namespace: is required"));
        }
        let private = self
            .mesh
            .set_namespace_visibility(req.namespace, req.private)
            .await?;
        Ok(Response::new(v1::SetNamespaceVisibilityResponse {
            private_namespaces: private.into_iter().collect(),
        }))
    }

    async fn get_namespace_visibility(
        &self,
        _request: Request<v1::GetNamespaceVisibilityRequest>,
    ) -> Result<Response<v1::GetNamespaceVisibilityResponse>, Status> {
        Ok(Response::new(v1::GetNamespaceVisibilityResponse {
            private_namespaces: self.view().private_namespaces.iter().cloned().collect(),
        }))
    }

    async fn get_mtls_modes(
        &self,
        _request: Request<v1::GetMtlsModesRequest>,
    ) -> Result<Response<v1::GetMtlsModesResponse>, Status> {
        Ok(Response::new(v1::GetMtlsModesResponse {
            mtls: Some(v1::MeshTls::from(&self.mesh.view().mtls)),
        }))
    }

    type WatchTopologyStream = TopologyStream;

    /// Streams the graph: nodes (service versions from the registry, with their ready endpoints
    /// and connected proxies, plus every caller seen in telemetry) and edges from the telemetry
    /// windows, the same graph `/api/topology` serves.
    async fn watch_topology(
        &self,
        request: Request<v1::WatchTopologyRequest>,
    ) -> Result<Response<Self::WatchTopologyStream>, Status> {
        let req = request.into_inner();
        let window = req
            .window
            .map(|d| to_duration("window", d))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let window = window
            .unwrap_or(Duration::from_secs(10))
            .min(MAX_TOPOLOGY_WINDOW);
        let interval = req
            .interval
            .map(|d| to_duration("interval", d))
            .transpose()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let interval = interval
            .unwrap_or(Duration::from_secs(1))
            .max(MIN_TOPOLOGY_INTERVAL);
        let state = (
            self.clone(),
            req.namespace,
            tokio::time::interval(interval),
            false,
        );
        let stream = futures::stream::unfold(
            state,
            move |(svc, namespace, mut ticker, done)| async move {
                if done {
                    return None;
                }
                let mut shutdown = svc.shutdown.clone();
                tokio::select! {
                    () = crate::http::stopped(&mut shutdown) => return None,
                    _ = ticker.tick() => {}
                }
                let update = v1::TopologyUpdate::from(&svc.graph(&namespace, window));
                Some((Ok(update), (svc, namespace, ticker, false)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}
