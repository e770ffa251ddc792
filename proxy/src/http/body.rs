//! The response body the proxy hands back: the upstream's, streamed frame by frame, or a short
//! text the proxy wrote itself. Either way the request's metrics are recorded once, when the body
//! ends (gRPC status read from the trailers, or from the headers of a trailers-only answer) or is
//! dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::{EdgeMetrics, RequestProtocol};
use crate::overload::Admitted;
use crate::tables::EndpointState;

/// The gRPC status in `headers`, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|s| s.parse().ok())
}

/// One request's metrics, recorded when dropped.
#[derive(Debug)]
pub struct Meter {
    metrics: Arc<EdgeMetrics>,
    start: Instant,
    protocol: RequestProtocol,
    code: u16,
    /// `Some` for gRPC requests: the status once known (2, UNKNOWN, until then).
    grpc: Option<u16>,
    /// The endpoint whose in-flight count this request holds.
    endpoint: Option<Arc<EndpointState>>,
    /// Set when the attempt is given up for a retry: nothing is recorded.
    discarded: bool,
}

impl Meter {
    /// Starts metering a request carried over `protocol` on `metrics`.
    pub fn new(metrics: Arc<EdgeMetrics>, start: Instant, protocol: RequestProtocol) -> Meter {
        Meter {
            metrics,
            start,
            protocol,
            code: 0,
            grpc: (protocol == RequestProtocol::Grpc).then_some(2),
            endpoint: None,
            discarded: false,
        }
    }

    /// Ends a failed attempt that is retried elsewhere: the in-flight count is released and
    /// nothing is recorded (the retry records the request).
    pub fn discard(mut self) {
        self.discarded = true;
    }

    /// When the request started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Whether this request is a gRPC call.
    pub fn is_grpc(&self) -> bool {
        self.grpc.is_some()
    }

    /// Counts the request in flight at `endpoint` until the meter drops.
    pub fn hold(&mut self, endpoint: Arc<EndpointState>) {
        endpoint.lb.begin();
        self.endpoint = Some(endpoint);
    }

    /// The response's status code, and a gRPC status from its headers (trailers-only answers).
    pub fn response(&mut self, code: u16, headers: &HeaderMap) {
        self.code = code;
        if self.grpc.is_some()
            && let Some(status) = grpc_status(headers)
        {
            self.grpc = Some(status);
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Some(endpoint) = &self.endpoint {
            endpoint.lb.end();
        }
        if self.discarded {
            return;
        }
        let elapsed = self.start.elapsed();
        self.metrics
            .record_request(self.protocol, self.code, self.grpc, elapsed);
        let edge = self.metrics.edge();
        tracing::info!(
            target: "access",
            direction = edge.direction.as_str(),
            source = %edge.source_workload,
            destination = %edge.destination_service,
            destination_version = %edge.destination_version,
            mirror = edge.mirror,
            code = self.code,
            grpc_status = self.grpc,
            duration_us = elapsed.as_micros() as u64,
        );
    }
}

/// A response body: streamed from upstream, or the proxy's own text.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    meter: Option<Meter>,
    /// The request's place under its listener's in-flight limit, freed with the body.
    admitted: Option<Admitted>,
}

#[derive(Debug)]
enum Kind {
    Upstream(Incoming),
    Text(Option<Bytes>),
    Empty,
}

impl ProxyBody {
    /// The upstream's body, metered.
    pub fn upstream(body: Incoming, meter: Meter) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(body),
            meter: Some(meter),
            admitted: None,
        }
    }

    /// A body the proxy writes itself.
    pub fn text(text: impl Into<Bytes>, meter: Option<Meter>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Text(Some(text.into())),
            meter,
            admitted: None,
        }
    }

    /// No body (an upgrade's 101), still metered.
    pub fn empty(meter: Option<Meter>) -> ProxyBody {
        ProxyBody {
            kind: Kind::Empty,
            meter,
            admitted: None,
        }
    }

    /// This body, holding `admitted` until it ends or is dropped.
    pub fn holding(mut self, admitted: Admitted) -> ProxyBody {
        self.admitted = Some(admitted);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
            Kind::Upstream(body) => {
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(trailers), Some(meter)) =
                            (frame.trailers_ref(), &mut this.meter)
                            && meter.grpc.is_some()
                            && let Some(status) = grpc_status(trailers)
                        {
                            meter.grpc = Some(status);
                        }
                    }
                    // The end, or a failure mid-body: either way the request is over.
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                        this.meter = None;
                        this.admitted = None;
                    }
                    Poll::Pending => {}
                }
                polled
            }
            Kind::Text(text) => {
                let frame = text.take().map(|t| Ok(Frame::data(t)));
                if frame.is_none() {
                    this.meter = None;
                    this.admitted = None;
                }
                Poll::Ready(frame)
            }
            Kind::Empty => {
                this.meter = None;
                this.admitted = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Text(text) => text.is_none(),
            Kind::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Text(Some(text)) => SizeHint::with_exact(text.len() as u64),
            Kind::Text(None) | Kind::Empty => SizeHint::with_exact(0),
        }
    }
}
