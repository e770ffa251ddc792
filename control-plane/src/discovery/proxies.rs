//! The table of connected proxies and their config sync state (what `Admin.ListProxies` and
//! `serinctl status` show). Short critical sections only: nothing awaits while holding the lock.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Who a proxy is, from its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyIdentity {
    /// Pod the proxy serves.
    pub pod_name: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// The pod's IPs.
    pub pod_ips: Vec<IpAddr>,
    /// Service of the pod ("" when none).
    pub service: String,
    /// Version label of the pod.
    pub version: String,
    /// Service account.
    pub service_account: String,
    /// Node.
    pub node_name: String,
    /// serin-proxy build version.
    pub proxy_version: String,
    /// Random id per proxy process.
    pub instance_id: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
}

/// Kind of a resource a proxy rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// Not said.
    Unspecified,
    /// A service.
    Service,
    /// Endpoints of a service.
    Endpoints,
    /// A traffic policy.
    TrafficPolicy,
}

/// One resource a proxy rejected, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Kind of resource.
    pub kind: ResourceKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Offending field.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// The latest NACK of a proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// Version rejected in part.
    pub version: String,
    /// Nonce of that push.
    pub nonce: u64,
    /// What was rejected.
    pub errors: Vec<Rejection>,
    /// When the NACK arrived.
    pub at: SystemTime,
}

/// Sync state of one connected proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyState {
    /// Identity from the hello.
    pub identity: ProxyIdentity,
    /// Capabilities announced.
    pub capabilities: Vec<String>,
    /// Version it said it was serving when it connected.
    pub hello_version: String,
    /// When the current stream opened.
    pub connected_since: SystemTime,
    /// Where the stream came from.
    pub peer: Option<SocketAddr>,
    /// Version of the latest push.
    pub sent_version: String,
    /// Nonce of the latest push (0 before the first).
    pub sent_nonce: u64,
    /// The generation of each policy in the latest push (a scoped stream's snapshot has only
    /// the policies its namespace sees, and a version of its own).
    pub sent_policy_generations: PolicyGenerations,
    /// Version of the latest accepted ACK.
    pub acked_version: String,
    /// The generation of each policy in the ACKed snapshot (what the proxy applies).
    pub acked_policy_generations: PolicyGenerations,
    /// Nonce of that ACK.
    pub acked_nonce: u64,
    /// When it arrived.
    pub acked_at: Option<SystemTime>,
    /// The latest accepted NACK, kept after later ACKs.
    pub nack: Option<Nack>,
}

impl ProxyState {
    /// The latest push was ACKed.
    pub fn in_sync(&self) -> bool {
        self.sent_nonce != 0 && self.acked_nonce == self.sent_nonce
    }
}

/// What an answer from a proxy was taken as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Recorded.
    Accepted,
    /// Ignored: it answers a superseded push (or the stream was replaced).
    Stale,
}

/// (namespace, pod name).
type ProxyKey = (String, String);

/// The generation of each policy in one snapshot.
pub type PolicyGenerations = Arc<BTreeMap<crate::model::PolicyKey, u64>>;

/// One open stream's place in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    key: ProxyKey,
    stream: u64,
}

/// Every connected proxy.
#[derive(Debug, Default)]
pub struct ProxyTable {
    proxies: Mutex<HashMap<ProxyKey, (u64, ProxyState)>>,
    next_stream: AtomicU64,
}

impl ProxyTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProxyKey, (u64, ProxyState)>> {
        self.proxies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a new stream; a proxy that reconnects (or a second one claiming the same pod)
    /// replaces the previous entry.
    pub fn connect(
        &self,
        identity: ProxyIdentity,
        capabilities: Vec<String>,
        hello_version: String,
        peer: Option<SocketAddr>,
    ) -> Session {
        let key = (identity.namespace.clone(), identity.pod_name.clone());
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        let state = ProxyState {
            identity,
            capabilities,
            hello_version,
            connected_since: SystemTime::now(),
            peer,
            sent_version: String::new(),
            sent_nonce: 0,
            sent_policy_generations: PolicyGenerations::default(),
            acked_version: String::new(),
            acked_policy_generations: PolicyGenerations::default(),
            acked_nonce: 0,
            acked_at: None,
            nack: None,
        };
        self.lock().insert(key.clone(), (stream, state));
        Session { key, stream }
    }

    /// Removes the stream's entry (unless a newer stream of the same pod replaced it); true if
    /// it was removed.
    pub fn disconnect(&self, session: &Session) -> bool {
        let mut table = self.lock();
        if table
            .get(&session.key)
            .is_some_and(|(s, _)| *s == session.stream)
        {
            table.remove(&session.key);
            true
        } else {
            false
        }
    }

    fn with<R>(&self, session: &Session, f: impl FnOnce(&mut ProxyState) -> R) -> Option<R> {
        let mut table = self.lock();
        match table.get_mut(&session.key) {
            Some((s, state)) if *s == session.stream => Some(f(state)),
            _ => None,
        }
    }

    /// Records a push of a snapshot `version` holding the policies at `generations`.
    pub fn sent(
        &self,
        session: &Session,
        version: &str,
        generations: &PolicyGenerations,
        nonce: u64,
    ) {
        self.with(session, |s| {
            s.sent_version = version.to_owned();
            s.sent_nonce = nonce;
            s.sent_policy_generations = Arc::clone(generations);
        });
    }

    /// Records an ACK if it answers the latest push.
    pub fn ack(&self, session: &Session, version: &str, nonce: u64) -> Answer {
        self.with(session, |s| {
            if nonce != s.sent_nonce || version != s.sent_version {
                return Answer::Stale;
            }
            s.acked_version = version.to_owned();
            s.acked_policy_generations = Arc::clone(&s.sent_policy_generations);
            s.acked_nonce = nonce;
            s.acked_at = Some(SystemTime::now());
            Answer::Accepted
        })
        .unwrap_or(Answer::Stale)
    }

    /// Records a NACK if it answers the latest push.
    pub fn nack(
        &self,
        session: &Session,
        version: &str,
        nonce: u64,
        errors: Vec<Rejection>,
    ) -> Answer {
        self.with(session, |s| {
            if nonce != s.sent_nonce || version != s.sent_version {
                return Answer::Stale;
            }
            s.nack = Some(Nack {
                version: version.to_owned(),
                nonce,
                errors,
                at: SystemTime::now(),
            });
            Answer::Accepted
        })
        .unwrap_or(Answer::Stale)
    }

    /// Every connected proxy, sorted by (namespace, pod name).
    pub fn list(&self) -> Vec<ProxyState> {
        let mut out: Vec<ProxyState> = self.lock().values().map(|(_, s)| s.clone()).collect();
        out.sort_by(|a, b| {
            (&a.identity.namespace, &a.identity.pod_name)
                .cmp(&(&b.identity.namespace, &b.identity.pod_name))
        });
        out
    }

    /// Number of connected proxies.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no proxy is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
