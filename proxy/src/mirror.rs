//! Mirroring (DESIGN.md, FAULTS 26): a copy of a request the policy samples goes to an endpoint
//! of the mirror version on its own task, with `Host`/`:authority` set to `<host>-shadow` and
//! `x-serin-mirror: 1`; its response is drained and discarded. The primary request never waits:
//! its body is teed as it streams ([`crate::http::tee`]) and the copy leaves only once the body
//! has ended within [`MIRROR_BODY_LIMIT`]. Copies in flight are bounded by a semaphore; when it
//! is full the copy is dropped and counted. A copy is never retried, and every copy ends within
//! the mirror timeout.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Request, Version, header};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serin_policy::MIRROR_BODY_LIMIT;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::body::Meter;
use crate::http::headers;
use crate::http::tee::{RequestBody, Tee, Teed};
use crate::metrics::{EdgeMetrics, MirrorOutcome, RequestProtocol};
use crate::routing::PolicyRouting;
use crate::tables::{EndpointState, MirrorTo};

/// The header every mirrored copy carries.
pub const MIRROR_HEADER: &str = "x-serin-mirror";

/// The mirroring runtime of one proxy: the in-flight bound and the timeout.
#[derive(Debug)]
pub struct Mirrors {
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// What a copy's task needs to count its outcome.
struct Counting {
    metrics: Arc<EdgeMetrics>,
    policy: Arc<PolicyRouting>,
    /// The copied request's protocol (the copy's edge in telemetry is keyed by it).
    protocol: RequestProtocol,
}

impl Counting {
    fn count(&self, outcome: MirrorOutcome) {
        self.metrics.record_mirror(self.protocol, outcome);
        self.policy.count_mirror(outcome);
    }
}

impl Mirrors {
    /// At most `max_in_flight` copies at once, each ended after `timeout`.
    pub fn new(max_in_flight: usize, timeout: Duration) -> Mirrors {
        Mirrors {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            timeout,
        }
    }

    /// Copies in flight now.
    pub fn in_flight(&self, max_in_flight: usize) -> usize {
        max_in_flight.saturating_sub(self.permits.available_permits())
    }

    /// Starts the copy of `req` to `to`. Returns the tee the primary body must be wrapped in
    /// when the copy waits for the body; `None` when there is nothing to tee (no body, or no
    /// copy: dropped, too large, no endpoint; each counted).
    pub fn start<B: Body>(&self, req: &Request<B>, to: MirrorTo<'_>) -> Option<Tee> {
        let counting = Counting {
            metrics: Arc::clone(to.metrics),
            policy: Arc::clone(to.policy),
            protocol: crate::http::request_protocol(req),
        };
        let Some(backend) = to.backend else {
            counting.count(MirrorOutcome::NoEndpoint);
            return None;
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MIRROR_BODY_LIMIT as u64) {
            counting.count(MirrorOutcome::TooLarge);
            return None;
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            counting.count(MirrorOutcome::Dropped);
            return None;
        };
        let head = copy_head(req);
        let endpoint = Arc::clone(&backend.state);
        let timeout = self.timeout;
        if req.body().is_end_stream() {
            tokio::spawn(send(
                head,
                RequestBody::empty(),
                endpoint,
                counting,
                timeout,
                permit,
            ));
            return None;
        }
        let (tee, teed) = Tee::new(MIRROR_BODY_LIMIT);
        tokio::spawn(async move {
            match teed.await {
                Ok(Teed::Complete { body, trailers }) => {
                    let body = RequestBody::buffered(body, trailers);
                    send(head, body, endpoint, counting, timeout, permit).await;
                }
                Ok(Teed::TooLarge) => counting.count(MirrorOutcome::TooLarge),
                Ok(Teed::Aborted) | Err(_) => counting.count(MirrorOutcome::Aborted),
            }
        });
        Some(tee)
    }
}

/// The head of the copy: method, URI, version and headers of `req`, hop-by-hop headers removed,
/// the host renamed `<host>-shadow` (before any port) and `x-serin-mirror: 1` added.
pub fn copy_head<B>(req: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    headers::strip_hop_by_hop(head.headers_mut(), false);
    let h = head.headers_mut();
    h.remove(header::CONTENT_LENGTH);
    // The copy's body is complete when it leaves: nothing to wait for.
    h.remove(header::EXPECT);
    h.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    if let Some(host) = h.get(header::HOST).and_then(|v| shadow(v.as_bytes())) {
        h.insert(header::HOST, host);
    }
    let mut uri = req.uri().clone();
    if let Some(authority) = uri.authority()
        && let Some(shadowed) = shadow(authority.as_str().as_bytes())
    {
        let mut parts = uri.clone().into_parts();
        parts.authority = shadowed.to_str().ok().and_then(|a| a.parse().ok());
        if let Ok(u) = http::Uri::from_parts(parts) {
            uri = u;
        }
    }
    *head.uri_mut() = uri;
    head
}

/// `host[:port]` → `host-shadow[:port]` (an IPv6 literal's brackets are kept whole).
fn shadow(host: &[u8]) -> Option<HeaderValue> {
    let text = std::str::from_utf8(host).ok()?;
    let (name, port) = match text.rfind(':') {
        Some(i)
            if !text[i..].contains(']') && text[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            text.split_at(i)
        }
        _ => (text, ""),
    };
    HeaderValue::from_str(&format!("{name}-shadow{port}")).ok()
}

/// Sends the copy, drains and discards the answer, counts the outcome; all within `timeout`.
async fn send(
    head: Request<()>,
    body: RequestBody,
    endpoint: Arc<EndpointState>,
    counting: Counting,
    timeout: Duration,
    _permit: OwnedSemaphorePermit,
) {
    let start = Instant::now();
    let mut meter = Meter::new(Arc::clone(&counting.metrics), start, counting.protocol);
    meter.hold(Arc::clone(&endpoint));
    let req = head.map(|()| body);
    let exchange = async {
        let pool = &endpoint.pool;
        let response = if req.version() == Version::HTTP_2 {
            let mut sender = pool.http2().await.map_err(|e| e.to_string())?;
            sender.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let mut sender = match pool.idle_http1() {
                Some(sender) => sender,
                None => pool.new_http1().await.map_err(|e| e.to_string())?,
            };
            let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = response.status();
            let (parts, body) = response.into_parts();
            let trailers = drain(body).await?;
            pool.release_http1(sender);
            return Ok((status, parts.headers, trailers));
        };
        let status = response.status();
        let (parts, body) = response.into_parts();
        let trailers = drain(body).await?;
        Ok::<_, String>((status, parts.headers, trailers))
    };
    let outcome = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, headers, trailers))) => {
            meter.response(status.as_u16(), &headers);
            if let Some(t) = trailers {
                meter.response(status.as_u16(), &t);
            }
            MirrorOutcome::Sent
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "mirror copy failed");
            meter.response(502, &HeaderMap::new());
            MirrorOutcome::Failed
        }
        Err(_) => {
            tracing::debug!(?timeout, "mirror copy timed out");
            meter.response(504, &HeaderMap::new());
            MirrorOutcome::Failed
        }
    };
    counting.count(outcome);
}

/// Reads a response body to its end, keeping only its trailers.
async fn drain(mut body: Incoming) -> Result<Option<HeaderMap>, String> {
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_keep_their_port() {
        assert_eq!(shadow(b"reviews").unwrap(), "reviews-shadow");
        assert_eq!(shadow(b"reviews:9080").unwrap(), "reviews-shadow:9080");
        assert_eq!(
            shadow(b"reviews.default.svc:9080").unwrap(),
            "reviews.default.svc-shadow:9080"
        );
        assert_eq!(shadow(b"[fd00::1]:80").unwrap(), "[fd00::1]-shadow:80");
        assert_eq!(shadow(b"[fd00::1]").unwrap(), "[fd00::1]-shadow");
    }

    #[test]
    fn the_copy_is_marked_and_goes_to_the_shadow_host() {
        let req = Request::post("http://reviews:9080/r?x=1")
            .header("host", "reviews:9080")
            .header("content-length", "3")
            .header("connection", "keep-alive")
            .header("end-user", "jason")
            .body(())
            .unwrap();
        let head = copy_head(&req);
        assert_eq!(head.method(), "POST");
        assert_eq!(head.uri(), "http://reviews-shadow:9080/r?x=1");
        assert_eq!(head.headers()["host"], "reviews-shadow:9080");
        assert_eq!(head.headers()[MIRROR_HEADER], "1");
        assert_eq!(head.headers()["end-user"], "jason");
        assert!(!head.headers().contains_key("connection"));
        assert!(!head.headers().contains_key("content-length"));
    }
}
