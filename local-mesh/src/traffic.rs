//! A traffic generator for the local mesh: requests at a bounded rate for a bounded time, from a
//! mix of users (`end-user` header, a `uid` cookie, some anonymous) and real desktop and mobile
//! User-Agents, counting which version of each service answered (read from the demo app's JSON,
//! nested calls included) and what failed. Tests measure splits with it; `serinctl demo` runs it
//! as `serin-demo-app traffic`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Semaphore};

/// Users the generator acts as; `None` is an anonymous visitor (no `end-user`, no cookie).
pub const USERS: [Option<&str>; 6] = [
    Some("jason"),
    Some("alice"),
    Some("bob"),
    Some("chen"),
    Some("priya"),
    None,
];

/// Real User-Agent strings, desktop and mobile, one per common client OS.
pub const USER_AGENTS: [(&str, &str); 8] = [
    (
        "windows",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    ),
    (
        "macos",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    ),
    (
        "linux",
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    ),
    (
        "chromeos",
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36",
    ),
    (
        "ios",
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    ),
    (
        "ipados",
        "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    ),
    (
        "android",
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.82 Mobile Safari/537.36",
    ),
    (
        "harmonyos",
        "Mozilla/5.0 (Linux; Android 12; HarmonyOS; NOH-AN00) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/114.0.0.0 Mobile Safari/537.36",
    ),
];

/// How much traffic to send, and where.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    /// The URL every request goes to, e.g. `http://productpage:9080/`.
    pub url: String,
    /// Requests per second (at least 1).
    pub rate: u32,
    /// How long to send.
    pub duration: Duration,
    /// Requests in flight at most.
    pub concurrency: usize,
    /// How long one request may take.
    pub timeout: Duration,
    /// HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    pub http2: bool,
    /// The users to act as, picked at random per request ("" is an anonymous visitor); empty
    /// means the built-in mix ([`USERS`]).
    pub users: Vec<String>,
}

impl TrafficOptions {
    /// 20 requests per second for 5 seconds, 8 at a time, 5 s per request.
    pub fn new(url: impl Into<String>) -> Self {
        TrafficOptions {
            url: url.into(),
            rate: 20,
            duration: Duration::from_secs(5),
            concurrency: 8,
            timeout: Duration::from_secs(5),
            http2: false,
            users: Vec::new(),
        }
    }
}

/// What the traffic got back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficReport {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed (non-2xx, transport error, timeout).
    pub failed: u64,
    /// Answers by "service version", counting every service in the call tree.
    pub versions: BTreeMap<String, u64>,
    /// Failures by reason ("status 503", "timeout", a transport error), nested calls included.
    pub failures: BTreeMap<String, u64>,
    /// Requests by the User-Agent's OS.
    pub client_os: BTreeMap<String, u64>,
    /// Answers by user (`anonymous` for none), then by "service version".
    #[serde(default)]
    pub by_user: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The name a user is reported under.
fn user_key(user: &str) -> &str {
    if user.is_empty() { "anonymous" } else { user }
}

impl TrafficReport {
    /// How many answers came from `version` of `service`.
    pub fn count(&self, service: &str, version: &str) -> u64 {
        self.versions
            .get(&format!("{service} {version}"))
            .copied()
            .unwrap_or(0)
    }

    /// How many of `user`'s requests (`""` for anonymous ones) `version` of `service` answered.
    pub fn count_for(&self, user: &str, service: &str, version: &str) -> u64 {
        self.by_user
            .get(user_key(user))
            .and_then(|versions| versions.get(&format!("{service} {version}")))
            .copied()
            .unwrap_or(0)
    }

    fn record_tree(&mut self, body: &Value, user: &str) {
        if let (Some(service), Some(version)) = (
            body.get("service").and_then(Value::as_str),
            body.get("version").and_then(Value::as_str),
        ) {
            *self
                .by_user
                .entry(user_key(user).to_owned())
                .or_default()
                .entry(format!("{service} {version}"))
                .or_default() += 1;
            *self
                .versions
                .entry(format!("{service} {version}"))
                .or_default() += 1;
        }
        for call in body
            .get("calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let target = call.get("target").and_then(Value::as_str).unwrap_or("?");
            if let Some(error) = call.get("error").and_then(Value::as_str) {
                *self
                    .failures
                    .entry(format!("call to {target}: {error}"))
                    .or_default() += 1;
            }
            if let Some(status) = call
                .get("status")
                .and_then(Value::as_u64)
                .filter(|s| *s >= 500)
            {
                *self
                    .failures
                    .entry(format!("call to {target}: status {status}"))
                    .or_default() += 1;
            }
            if let Some(response) = call.get("response") {
                self.record_tree(response, user);
            }
        }
    }
}

/// Sends the traffic and reports.
pub async fn run(options: &TrafficOptions) -> Result<TrafficReport, String> {
    let uri: http::Uri = options
        .url
        .parse()
        .map_err(|e| format!("bad URL {:?}: {e}", options.url))?;
    // A fresh connection per request, so that per-connection balancing (a VIP without a
    // sidecar) spreads the requests too.
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .http2_only(options.http2)
        .build_http();
    let report = Arc::new(Mutex::new(TrafficReport::default()));
    let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let period = Duration::from_secs(1) / options.rate.max(1);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + options.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let users: Vec<String> = if options.users.is_empty() {
        USERS.iter().map(|u| u.unwrap_or("").to_owned()).collect()
    } else {
        options.users.clone()
    };
    let mut n: u64 = 0;
    while Instant::now() < end {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            break;
        };
        n += 1;
        let (user, (os, ua)) = {
            let mut rng = rand::rng();
            (
                users[rng.random_range(0..users.len())].clone(),
                USER_AGENTS[rng.random_range(0..USER_AGENTS.len())],
            )
        };
        let mut builder = Request::get(uri.clone()).header("user-agent", ua);
        if !user.is_empty() {
            builder = builder
                .header("end-user", &user)
                .header("cookie", format!("uid={user}; session=s{n}"));
        }
        let request = builder.body(Empty::new()).map_err(|e| e.to_string())?;
        let client = client.clone();
        let report = Arc::clone(&report);
        let timeout = options.timeout;
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(timeout, async {
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| format!("{e:?}"))?;
                let status = response.status();
                let body = Limited::new(response.into_body(), 1 << 20)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, body))
            })
            .await;
            let mut report = report.lock().await;
            report.sent += 1;
            *report.client_os.entry(os.to_owned()).or_default() += 1;
            match outcome {
                Ok(Ok((status, body))) => {
                    if status.is_success() {
                        report.ok += 1;
                    } else {
                        report.failed += 1;
                        *report
                            .failures
                            .entry(format!("status {}", status.as_u16()))
                            .or_default() += 1;
                    }
                    if let Ok(json) = serde_json::from_slice::<Value>(&body) {
                        report.record_tree(&json, &user);
                    }
                }
                Ok(Err(e)) => {
                    report.failed += 1;
                    *report.failures.entry(e).or_default() += 1;
                }
                Err(_) => {
                    report.failed += 1;
                    *report.failures.entry("timeout".to_owned()).or_default() += 1;
                }
            }
        });
        // Reap finished requests as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let report = report.lock().await.clone();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_every_version_in_the_call_tree_and_nested_failures() {
        let mut report = TrafficReport::default();
        report.record_tree(&json!({
            "service": "productpage", "version": "v1",
            "calls": [
                {"target": "details:9080", "status": 200, "response": {"service": "details", "version": "v1", "calls": []}},
                {"target": "reviews:9080", "status": 200, "response": {"service": "reviews", "version": "v2",
                    "calls": [{"target": "ratings:9080", "status": 503, "response": {"service": "ratings", "version": "v1", "error": "injected fault"}}]}},
                {"target": "gone:9080", "error": "connection refused"}
            ]
        }), "jason");
        assert_eq!(report.count("productpage", "v1"), 1);
        assert_eq!(report.count("reviews", "v2"), 1);
        assert_eq!(report.count("ratings", "v1"), 1);
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert_eq!(report.count_for("jason", "reviews", "v2"), 1);
        assert_eq!(report.count_for("", "reviews", "v2"), 0);
    }

    #[test]
    fn user_agents_cover_desktop_and_mobile() {
        let oses: Vec<&str> = USER_AGENTS.iter().map(|(os, _)| *os).collect();
        for os in ["windows", "macos", "linux", "ios", "android"] {
            assert!(oses.contains(&os), "{os}");
        }
    }
}
