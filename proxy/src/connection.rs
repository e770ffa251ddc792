//! One captured connection, once we know where it goes: settle the protocol (declared, or
//! detected from the first bytes), then forward it as opaque TCP or serve it as HTTP.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::detect::{self, Detected, Prefixed};
use crate::http::{self, Flavor, Upstream, headers};
use crate::metrics::EdgeMetrics;
use crate::proxy::ProxyInputs;
use crate::snapshot::Protocol;
use crate::tables::EndpointState;
use crate::tcp;

/// Room for the first bytes of a connection (detection, then the first request head).
const FIRST_READ_CAPACITY: usize = 4096;

/// Where an opaque TCP connection goes: an endpoint and the edge it is counted on; `None` when
/// no endpoint is ready.
pub type TcpTarget = Option<(Arc<EndpointState>, Arc<EdgeMetrics>)>;

/// Serves `stream` as `protocol` says: `tcp_target` is asked only if it turns out opaque, `http`
/// says where HTTP requests go.
pub async fn dispatch(
    inputs: &ProxyInputs,
    mut stream: TcpStream,
    protocol: Protocol,
    tcp_target: impl FnOnce() -> TcpTarget,
    http: Upstream,
) {
    let settings = &inputs.settings;
    let mut buf = BytesMut::with_capacity(FIRST_READ_CAPACITY);
    let detected = match protocol {
        Protocol::Tcp => Ok(Detected::Tcp),
        Protocol::Http2 | Protocol::Grpc => Ok(Detected::Http2),
        Protocol::Http1 => {
            detect::detect(
                &mut stream,
                &mut buf,
                settings.header_read_timeout,
                detect::classify_http,
                Detected::Http1,
            )
            .await
        }
        Protocol::Detect => {
            detect::detect(
                &mut stream,
                &mut buf,
                settings.detect_timeout,
                detect::classify,
                Detected::Tcp,
            )
            .await
        }
    };
    let detected = match detected {
        Ok(detected) => detected,
        Err(e) => {
            tracing::debug!(error = %e, "downstream failed during detection");
            return;
        }
    };
    tracing::debug!(?protocol, ?detected, "protocol");
    match detected {
        Detected::Tcp => forward_tcp(inputs, stream, &buf, tcp_target()).await,
        Detected::Http2 => {
            http::serve(
                Prefixed::new(buf, stream),
                Flavor::Http2,
                settings,
                http,
                inputs.drain.clone(),
            )
            .await;
        }
        Detected::Http1 => {
            match read_first_head(
                &mut stream,
                &mut buf,
                settings.max_header_bytes,
                settings.header_read_timeout,
            )
            .await
            {
                FirstHead::Complete(end) => {
                    if let Err(malformed) = headers::check_head(&buf[..end]) {
                        tracing::debug!(reason = malformed.reason(), "malformed request refused");
                        http::reject_malformed(stream, malformed.reason()).await;
                        return;
                    }
                }
                // Too large: hyper answers 431. Cut short: hyper sees the EOF.
                FirstHead::Incomplete => {}
                FirstHead::TimedOut => {
                    tracing::debug!("request head not received in time, closing");
                    return;
                }
            }
            http::serve(
                Prefixed::new(buf, stream),
                Flavor::Http1,
                settings,
                http,
                inputs.drain.clone(),
            )
            .await;
        }
    }
}

enum FirstHead {
    /// The head ends at this index of the buffer.
    Complete(usize),
    /// The peer stopped sending or the head exceeds the limit.
    Incomplete,
    /// Not complete within the header read timeout.
    TimedOut,
}

/// Reads until the first request head is in `buf`, so its framing can be checked before hyper
/// parses it.
async fn read_first_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    limit: usize,
    timeout: Duration,
) -> FirstHead {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(end) = headers::head_end(buf) {
            return FirstHead::Complete(end);
        }
        if buf.len() > limit {
            return FirstHead::Incomplete;
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return FirstHead::Incomplete,
            Ok(Ok(_)) => {}
            Err(_) => return FirstHead::TimedOut,
        }
    }
}

/// Forwards an opaque connection; a failed connect resets the downstream (a RST, as the app
/// would have seen from an unreachable server).
async fn forward_tcp(inputs: &ProxyInputs, stream: TcpStream, prefix: &[u8], target: TcpTarget) {
    let Some((endpoint, metrics)) = target else {
        tracing::debug!("no ready endpoint, resetting");
        let _ = stream.set_zero_linger();
        return;
    };
    let upstream = match endpoint.pool.connect_tcp().await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(error = %e, "upstream connect failed, resetting");
            let _ = stream.set_zero_linger();
            return;
        }
    };
    let handles = metrics.tcp();
    handles.opened.inc();
    endpoint.lb.begin();
    let ended = tcp::forward(
        stream,
        prefix,
        upstream,
        handles,
        inputs.settings.tcp_idle_timeout,
    )
    .await;
    endpoint.lb.end();
    tracing::debug!(?ended, "tcp connection ended");
}
