//! One captured connection, once we know where it goes: settle the protocol (declared, or
//! detected from the first bytes), then forward it as opaque TCP or serve it as HTTP.

use std::sync::Arc;

use bytes::BytesMut;

use crate::detect::{self, Detected, Prefixed};
use crate::http::{self, Flavor, Upstream};
use crate::metrics::EdgeMetrics;
use crate::proxy::{ProxyInputs, Side};
use crate::snapshot::Protocol;
use crate::tables::EndpointState;
use crate::tcp;
use crate::tls::MeshIo;

/// Room for the first bytes of a connection (detection, then the first request head).
pub const FIRST_READ_CAPACITY: usize = 4096;

/// Where an opaque TCP connection goes: an endpoint and the edge it is counted on; `None` when
/// no endpoint is ready.
pub type TcpTarget = Option<(Arc<EndpointState>, Arc<EdgeMetrics>)>;

/// Serves `stream` (accepted on the `side` listener; `buf` holds bytes already read from it) as
/// `protocol` says: `tcp_target` is asked only if it turns out opaque, `http` says where HTTP
/// requests go.
pub async fn dispatch(
    inputs: &ProxyInputs,
    side: Side,
    mut stream: MeshIo,
    mut buf: BytesMut,
    protocol: Protocol,
    tcp_target: impl FnOnce() -> TcpTarget,
    http: Upstream,
) {
    let settings = &inputs.settings;
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
        Detected::Tcp => forward_tcp(inputs, stream, buf, tcp_target()).await,
        Detected::Http2 => {
            http::serve(
                Prefixed::new(buf, stream),
                Flavor::Http2,
                settings,
                http,
                inputs.admission(side).clone(),
                inputs.drain.clone(),
            )
            .await;
        }
        Detected::Http1 => {
            http::serve(
                Prefixed::new(buf, stream),
                Flavor::Http1,
                settings,
                http,
                inputs.admission(side).clone(),
                inputs.drain.clone(),
            )
            .await;
        }
    }
}

/// Forwards an opaque connection; a failed connect resets the downstream (a RST, as the app
/// would have seen from an unreachable server).
async fn forward_tcp(inputs: &ProxyInputs, stream: MeshIo, prefix: BytesMut, target: TcpTarget) {
    let Some((endpoint, metrics)) = target else {
        tracing::debug!("no ready endpoint, resetting");
        stream.set_zero_linger();
        return;
    };
    let upstream = match endpoint.pool.connect_opaque().await {
        Ok(upstream) => upstream,
        Err(e) => {
            tracing::debug!(error = %e, "upstream connect failed, resetting");
            stream.set_zero_linger();
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
    metrics.tcp_closed();
    tracing::debug!(?ended, "tcp connection ended");
}
