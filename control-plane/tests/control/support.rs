//! The test harness: a control plane on 127.0.0.1:0, clients, policies, polling with deadlines.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serin_control::app::{App, Handles};
use serin_control::config::Config;
use serin_proto::auth::{AuthorizedAdmin, BearerToken, Role, Tokens, admin_client};
use serin_proto::v1;
use serin_proto::v1::discovery_client::DiscoveryClient;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Starts tracing once per test binary, into the test's captured output.
pub fn tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
}

/// Polls `check` every 10 ms until it returns Some, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running control plane.
pub struct Harness {
    pub grpc: SocketAddr,
    /// The mTLS gRPC port, when the test turned it on.
    pub grpc_tls: Option<SocketAddr>,
    pub http: SocketAddr,
    /// The credentials the control plane generated in its store.
    pub tokens: Tokens,
    pub handles: Handles,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A control plane with a fresh store and the default settings.
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    /// A control plane with a fresh store, settings changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Harness {
        tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().to_owned());
        config.grpc = "127.0.0.1:0".parse().unwrap();
        config.http = "127.0.0.1:0".parse().unwrap();
        tweak(&mut config);
        let app = App::new(config).await.unwrap();
        let (grpc, http) = (app.grpc_addr(), app.http_addr());
        let grpc_tls = app.grpc_tls_addr();
        let tokens = Tokens::read(app.admin_tokens_path()).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (handles, run) = app
            .start(async move {
                let _ = stopped.await;
            })
            .unwrap();
        let task = tokio::spawn(run);
        Harness {
            grpc,
            grpc_tls,
            http,
            tokens,
            handles,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }

    /// Stops the server (as SIGTERM would) and waits for it to finish.
    pub async fn stop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("the control plane stops within 10 s")
            .unwrap()
            .unwrap();
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// The generated token of `role`.
    pub fn token(&self, role: Role) -> &str {
        self.tokens
            .plain(role)
            .expect("a generated token of each role")
    }

    /// The proxies subscribed to it (Admin.ListProxies).
    pub async fn proxies(&self) -> Vec<v1::ProxyStatus> {
        self.admin()
            .await
            .list_proxies(v1::ListProxiesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .proxies
    }

    /// An Admin client with the write token.
    pub async fn admin(&self) -> AuthorizedAdmin {
        self.admin_as(Some(self.token(Role::Write))).await
    }

    /// An Admin client sending `token` (none: no credential).
    pub async fn admin_as(&self, token: Option<&str>) -> AuthorizedAdmin {
        let bearer = token.map_or_else(BearerToken::none, |t| BearerToken::new(t).unwrap());
        admin_client(self.channel().await, bearer)
    }

    pub async fn discovery(&self) -> DiscoveryClient<Channel> {
        DiscoveryClient::new(self.channel().await)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A YAML policy of the DESIGN.md shape, converted the way serinctl does (serin-policy parses,
/// then the wire form).
pub fn policy(yaml: &str) -> v1::TrafficPolicy {
    let p = serin_policy::parse_policy(yaml).unwrap();
    let spec = &p.spec;
    let sm = |m: &serin_policy::StringMatch| v1::StringMatch {
        kind: if let Some(v) = &m.exact {
            Some(v1::string_match::Kind::Exact(v.clone()))
        } else if let Some(v) = &m.prefix {
            Some(v1::string_match::Kind::Prefix(v.clone()))
        } else if let Some(v) = &m.regex {
            Some(v1::string_match::Kind::Regex(v.clone()))
        } else {
            m.present.map(v1::string_match::Kind::Present)
        },
        ignore_case: m.ignore_case,
    };
    let weights = |r: &[serin_policy::VersionWeight]| {
        r.iter()
            .map(|w| v1::VersionWeight {
                version: w.version.clone(),
                weight: w.weight.get().unwrap(),
            })
            .collect()
    };
    v1::TrafficPolicy {
        metadata: Some(v1::PolicyMetadata {
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            labels: p
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            ..Default::default()
        }),
        spec: Some(v1::TrafficPolicySpec {
            service: spec.service.clone(),
            rules: spec
                .rules
                .iter()
                .map(|r| v1::Rule {
                    name: r.name.clone(),
                    r#match: r
                        .matches
                        .iter()
                        .map(|b| v1::MatchBlock {
                            headers: b.headers.iter().map(|(k, m)| (k.clone(), sm(m))).collect(),
                            cookies: b.cookies.iter().map(|(k, m)| (k.clone(), sm(m))).collect(),
                            uri: b.uri.as_ref().map(|u| v1::UriMatch {
                                kind: if let Some(v) = &u.exact {
                                    Some(v1::uri_match::Kind::Exact(v.clone()))
                                } else if let Some(v) = &u.prefix {
                                    Some(v1::uri_match::Kind::Prefix(v.clone()))
                                } else {
                                    u.regex.clone().map(v1::uri_match::Kind::Regex)
                                },
                                ignore_case: false,
                            }),
                            query: b.query.iter().map(|(k, m)| (k.clone(), sm(m))).collect(),
                            method: b.method.clone().unwrap_or_default(),
                            os: b
                                .os
                                .iter()
                                .flatten()
                                .map(|o| {
                                    v1::ClientOs::from_str_name(&format!(
                                        "CLIENT_OS_{}",
                                        o.to_uppercase()
                                    ))
                                    .unwrap() as i32
                                })
                                .collect(),
                        })
                        .collect(),
                    route: weights(&r.route),
                })
                .collect(),
            default: Some(v1::DefaultRoute {
                route: weights(&spec.default.route),
            }),
            mirror: spec.mirror.as_ref().map(|m| v1::Mirror {
                version: m.version.clone(),
                percent: m.percent,
            }),
            stickiness: spec.stickiness.as_ref().map(|s| v1::Stickiness {
                key: s
                    .cookie
                    .clone()
                    .map(v1::stickiness::Key::Cookie)
                    .or_else(|| s.header.clone().map(v1::stickiness::Key::Header)),
            }),
        }),
    }
}

/// The reviews policy of DESIGN.md with a default split of `v1`/`v2` weights.
pub fn reviews(v1_weight: u32, v2_weight: u32) -> v1::TrafficPolicy {
    policy(&format!(
        "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {{name: reviews, namespace: default}}
spec:
  service: reviews
  rules:
    - name: testers
      match:
        - headers: {{end-user: {{exact: jason}}}}
      route: [{{version: v3, weight: 100}}]
  default:
    route: [{{version: v1, weight: {v1_weight}}}, {{version: v2, weight: {v2_weight}}}]
"
    ))
}

/// A minimal policy for `service`, default route to `version`.
pub fn simple(service: &str, version: &str) -> v1::TrafficPolicy {
    policy(&format!(
        "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {{name: {service}, namespace: default}}
spec:
  service: {service}
  default:
    route: [{{version: {version}, weight: 100}}]
"
    ))
}

pub fn apply_request(p: v1::TrafficPolicy) -> v1::ApplyPolicyRequest {
    v1::ApplyPolicyRequest {
        policy: Some(p),
        if_generation: None,
        dry_run: false,
    }
}

/// A workload of `service` at `version` with one HTTP port.
pub fn workload(pod: &str, service: &str, version: &str, ip: &str) -> v1::Workload {
    v1::Workload {
        pod_name: pod.into(),
        namespace: "default".into(),
        addresses: vec![ip.into()],
        service: service.into(),
        version: version.into(),
        ports: vec![v1::WorkloadPort {
            name: "http".into(),
            port: 9080,
            protocol: v1::Protocol::Http1 as i32,
        }],
        ..Default::default()
    }
}

/// The generation of a wire policy.
pub fn generation(p: &v1::TrafficPolicy) -> u64 {
    p.metadata.as_ref().unwrap().generation
}

/// A subscribed proxy: sends hello, then whatever the test sends; receives snapshots.
pub struct Proxy {
    pub tx: mpsc::Sender<v1::SubscribeRequest>,
    pub rx: tonic::Streaming<v1::SubscribeResponse>,
}

impl Proxy {
    pub async fn connect(h: &Harness, pod: &str) -> Proxy {
        let mut client = h.discovery().await;
        let (tx, requests) = mpsc::channel(16);
        tx.send(hello(pod)).await.unwrap();
        let rx = client
            .subscribe(ReceiverStream::new(requests))
            .await
            .unwrap()
            .into_inner();
        Proxy { tx, rx }
    }

    /// The next snapshot, within 5 s.
    pub async fn next(&mut self) -> v1::SubscribeResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a snapshot within 5 s")
            .unwrap()
            .expect("the stream is open")
    }

    /// Reads snapshots until one satisfies `check`, within 5 s; returns it and how many were read.
    pub async fn until(
        &mut self,
        what: &str,
        check: impl Fn(&v1::Snapshot) -> bool,
    ) -> (v1::SubscribeResponse, usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut count = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.rx.message())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for a snapshot with {what}"))
                .unwrap()
                .expect("the stream is open");
            count += 1;
            if check(snapshot(&msg)) {
                return (msg, count);
            }
        }
    }

    pub async fn ack(&self, msg: &v1::SubscribeResponse) {
        let ack = v1::SnapshotAck {
            version: msg.version.clone(),
            nonce: msg.nonce.clone(),
        };
        self.tx
            .send(v1::SubscribeRequest {
                kind: Some(v1::subscribe_request::Kind::Ack(ack)),
            })
            .await
            .unwrap();
    }
}

pub fn snapshot(msg: &v1::SubscribeResponse) -> &v1::Snapshot {
    match &msg.payload {
        Some(v1::subscribe_response::Payload::Snapshot(s)) => s,
        None => panic!("a response without a snapshot"),
    }
}

pub fn hello(pod: &str) -> v1::SubscribeRequest {
    v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello {
            proxy: Some(v1::ProxyIdentity {
                pod_name: pod.into(),
                namespace: "default".into(),
                pod_ips: vec!["10.244.0.9".into()],
                service: "productpage".into(),
                version: "v1".into(),
                proxy_version: "test".into(),
                ..Default::default()
            }),
            capabilities: vec!["snapshot.full".into()],
            applied_version: String::new(),
        })),
    }
}

/// Names of the policies in a snapshot.
pub fn policy_names(s: &v1::Snapshot) -> Vec<String> {
    s.policies
        .iter()
        .map(|p| p.metadata.as_ref().unwrap().name.clone())
        .collect()
}
