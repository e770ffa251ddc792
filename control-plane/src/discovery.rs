//! `serin.v1.Discovery.Subscribe`: one long-lived stream per proxy (protocol in
//! proto/serin/v1/discovery.proto).
//!
//! Each stream reads the latest snapshot from a `watch` of `Arc<EncodedSnapshot>`: no per-proxy
//! queue exists, so a proxy that reads slowly (or not at all) only ever gets the newest snapshot
//! when it catches up, and never delays the others or grows memory. Answers (ACK/NACK) are read
//! on a task of their own and recorded in the [`ProxyTable`].
//!
//! On the mTLS port (a [`TlsPeer`] in the request's extensions) a stream needs a workload
//! certificate, its hello must name the certificate's namespace, and it gets that namespace's
//! view (its own namespace and the public ones), built per stream.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serin_proto::v1;
use serin_proto::v1::subscribe_request::Kind;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::snapshot::EncodedSnapshot;
use crate::tls::TlsPeer;

pub mod codec;
pub mod proxies;

pub use codec::{DiscoveryServer, Push};
pub use proxies::{Answer, ProxyIdentity, ProxyState, ProxyTable, Rejection, Session};

/// How long a new stream may take to send its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a stream ends from the control plane's side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The proxy went away or half-closed: finish quietly.
    ClientGone,
    /// The proxy broke the protocol: end with this status.
    Error(tonic::Code, String),
}

/// The Discovery service.
#[derive(Debug, Clone)]
pub struct Discovery {
    snapshots: watch::Receiver<Arc<EncodedSnapshot>>,
    proxies: Arc<ProxyTable>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    require_client_certs: bool,
}

impl Discovery {
    /// A service pushing `snapshots`, recording state in `proxies`, ending every stream when
    /// `shutdown` turns true (so that a graceful shutdown does not wait on streams that never end).
    pub fn new(
        snapshots: watch::Receiver<Arc<EncodedSnapshot>>,
        proxies: Arc<ProxyTable>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            snapshots,
            proxies,
            metrics,
            shutdown,
            require_client_certs: false,
        }
    }

    /// Refuses Subscribe from callers without a verified workload certificate, i.e. on the
    /// plaintext port (`--require-client-certs`).
    pub fn require_client_certs(mut self, require: bool) -> Self {
        self.require_client_certs = require;
        self
    }

    /// Handles one Subscribe stream.
    pub async fn subscribe(
        &self,
        request: Request<Streaming<v1::SubscribeRequest>>,
    ) -> Result<Response<BoxStream<'static, Result<Push, Status>>>, Status> {
        let tls_peer = request.extensions().get::<TlsPeer>().cloned();
        let scope =
            crate::tls::caller_scope(tls_peer.as_ref(), self.require_client_certs, "Subscribe")?;
        let peer = request
            .remote_addr()
            .or_else(|| tls_peer.as_ref().and_then(|p| p.remote));
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no hello within {HELLO_TIMEOUT:?} of opening Subscribe"
                ))
            })?;
        let hello = match first? {
            Some(v1::SubscribeRequest {
                kind: Some(Kind::Hello(hello)),
            }) => hello,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "the first message of Subscribe must be hello",
                ));
            }
            None => return Err(Status::invalid_argument("the stream ended before hello")),
        };
        let identity = ProxyIdentity::try_from(hello.proxy.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(format!("hello.{e}")))?;
        if let Some(ns) = &scope
            && identity.namespace != *ns
        {
            return Err(Status::permission_denied(format!(
                "hello.proxy.namespace: {:?} is not the namespace of the client certificate ({:?}, identity {})",
                identity.namespace,
                ns,
                tls_peer
                    .as_ref()
                    .and_then(|p| p.identity.as_deref())
                    .unwrap_or_default()
            )));
        }
        let span = tracing::info_span!("subscribe", proxy = %format_args!("{}/{}", identity.namespace, identity.pod_name));
        tracing::info!(parent: &span, ?peer, applied_version = %hello.applied_version, "proxy connected");
        let session =
            self.proxies
                .connect(identity, hello.capabilities, hello.applied_version, peer);
        self.metrics
            .proxies_connected
            .set(self.proxies.len() as i64);

        let (end_tx, end_rx) = watch::channel(None::<End>);
        // Answers: record ACK/NACKs until the proxy goes away, then tell the push side.
        let (proxies, metrics) = (self.proxies.clone(), self.metrics.clone());
        let answers_session = session.clone();
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            let end = loop {
                // On shutdown the request side is dropped too, so that the stream completes and
                // the server's graceful shutdown does not wait for proxies to hang up.
                let next = tokio::select! {
                    () = crate::http::stopped(&mut stop) => break End::ClientGone,
                    next = inbound.message() => next,
                };
                match next {
                    Ok(Some(msg)) => {
                        if let Some(end) = answer(&proxies, &metrics, &answers_session, msg) {
                            break end;
                        }
                    }
                    Ok(None) => break End::ClientGone,
                    Err(status) => {
                        tracing::debug!(parent: &span, %status, "subscribe stream broke");
                        break End::ClientGone;
                    }
                }
            };
            if proxies.disconnect(&answers_session) {
                metrics.proxies_connected.set(proxies.len() as i64);
            }
            tracing::info!(parent: &span, "proxy disconnected");
            let _ = end_tx.send(Some(end));
        });

        let pusher = Pusher {
            snapshots: self.snapshots.clone(),
            end: end_rx,
            shutdown: self.shutdown.clone(),
            nonce: 0,
            session,
            proxies: self.proxies.clone(),
            metrics: self.metrics.clone(),
            done: false,
            scope,
            last_version: None,
        };
        let stream = futures::stream::unfold(pusher, |mut p| async move {
            p.next().await.map(|item| (item, p))
        });
        Ok(Response::new(stream.boxed()))
    }
}

/// Records one answer; returns how the stream must end if the answer breaks the protocol.
fn answer(
    proxies: &ProxyTable,
    metrics: &Metrics,
    session: &Session,
    msg: v1::SubscribeRequest,
) -> Option<End> {
    match msg.kind {
        Some(Kind::Ack(ack)) => {
            let Ok(nonce) = ack.nonce.parse::<u64>() else {
                return Some(End::Error(
                    tonic::Code::InvalidArgument,
                    format!("ack.nonce: {:?} was never sent", ack.nonce),
                ));
            };
            if proxies.ack(session, &ack.version, nonce) == Answer::Accepted {
                metrics.acks.inc();
            }
            None
        }
        Some(Kind::Nack(nack)) => {
            let Ok(nonce) = nack.nonce.parse::<u64>() else {
                return Some(End::Error(
                    tonic::Code::InvalidArgument,
                    format!("nack.nonce: {:?} was never sent", nack.nonce),
                ));
            };
            if nack.errors.is_empty() {
                return Some(End::Error(
                    tonic::Code::InvalidArgument,
                    "nack.errors: a NACK names at least one rejected resource".into(),
                ));
            }
            let errors: Vec<Rejection> = nack.errors.into_iter().map(Rejection::from).collect();
            for e in &errors {
                tracing::warn!(kind = ?e.kind, resource = %format_args!("{}/{}", e.namespace, e.name), field = %e.field, reason = %e.reason, version = %nack.version, "proxy rejected a resource");
            }
            if proxies.nack(session, &nack.version, nonce, errors) == Answer::Accepted {
                metrics.nacks.inc();
            }
            None
        }
        Some(Kind::Hello(_)) => Some(End::Error(
            tonic::Code::InvalidArgument,
            "hello: sent twice on one stream".into(),
        )),
        None => Some(End::Error(
            tonic::Code::InvalidArgument,
            "SubscribeRequest: no message kind set".into(),
        )),
    }
}

/// The push side of one stream.
struct Pusher {
    snapshots: watch::Receiver<Arc<EncodedSnapshot>>,
    end: watch::Receiver<Option<End>>,
    shutdown: watch::Receiver<bool>,
    nonce: u64,
    session: Session,
    proxies: Arc<ProxyTable>,
    metrics: Arc<Metrics>,
    done: bool,
    /// The namespace whose view this stream gets; `None`: the whole mesh.
    scope: Option<String>,
    /// The version last pushed (a scoped view may not change when the mesh does).
    last_version: Option<String>,
}

impl Pusher {
    /// The next push: the current snapshot at once, then the latest one after each change.
    async fn next(&mut self) -> Option<Result<Push, Status>> {
        if self.done {
            return None;
        }
        loop {
            if self.nonce != 0 {
                tokio::select! {
                    biased;
                    () = crate::http::stopped(&mut self.shutdown) => {
                        self.done = true;
                        return None;
                    }
                    _ = self.end.changed() => {
                        self.done = true;
                        return match self.end.borrow().clone() {
                            Some(End::Error(code, message)) => Some(Err(Status::new(code, message))),
                            _ => None,
                        };
                    }
                    changed = self.snapshots.changed() => {
                        if changed.is_err() {
                            self.done = true;
                            return None;
                        }
                    }
                }
            }
            let mut snapshot = self.snapshots.borrow_and_update().clone();
            if let Some(ns) = &self.scope {
                let view = Arc::new(snapshot.view.visible_to(ns));
                snapshot = Arc::new(EncodedSnapshot::from_view(view));
                if self.last_version.as_deref() == Some(snapshot.version.as_str()) {
                    // The change was outside what this namespace sees.
                    continue;
                }
                self.last_version = Some(snapshot.version.clone());
            }
            self.nonce += 1;
            self.proxies.sent(
                &self.session,
                &snapshot.version,
                &snapshot.policy_generations,
                self.nonce,
            );
            self.metrics.pushes.inc();
            return Some(Ok(Push {
                snapshot,
                nonce: self.nonce,
            }));
        }
    }
}
