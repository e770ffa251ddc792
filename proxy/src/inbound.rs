//! Inbound (port 15006): connections from other pods to this pod's app. Each is forwarded to the
//! app on `127.0.0.1:<port>`, or, when that refuses (an app bound to the pod IP only), to the pod
//! IP from 127.0.0.6: the capture rules let both through, so this cannot loop. Metrics are recorded
//! on the inbound edge of the calling workload, recognised by its address. `x-serin-*` headers
//! are removed, except the mark of a mirrored copy (see `http::headers::strip_internal_inbound`).
//!
//! When the sidecar holds a workload certificate, the first bytes are looked at (not consumed):
//! a TLS ClientHello offering a mesh ALPN is a client sidecar's mTLS, terminated here with the
//! client's certificate verified; its SPIFFE ID (the connection's *principal*) is counted as
//! `source_principal` of `serin_inbound_connections_total`, and every request and opaque
//! connection served on it is recorded on the peer's inbound edge of that principal
//! (`source_principal` of the request and TCP metrics, `mtls`/`source_principal` in telemetry).
//! Anything else (plain bytes, or the app's own TLS) is served as before in `permissive` mode
//! (on the plaintext edge, `source_principal=""`) and refused in `strict` mode.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::connection::{self, FIRST_READ_CAPACITY};
use crate::detect::Prefixed;
use crate::http::Upstream;
use crate::proxy::{ProxyInputs, Side};
use crate::snapshot::MtlsMode;
use crate::tls::{self, Hello, MeshIo};

/// Most bytes read while waiting for a whole ClientHello.
const MAX_HELLO: usize = 64 * 1024;

/// Handles one connection from `peer` that was going to `orig_dst` (our pod IP and the app's
/// port).
pub async fn handle(
    inputs: &ProxyInputs,
    stream: TcpStream,
    peer: SocketAddr,
    orig_dst: SocketAddr,
) {
    let tables = Arc::clone(&inputs.tables.borrow());
    let strict = tables.mtls_mode == MtlsMode::Strict;
    let mut buf = BytesMut::with_capacity(FIRST_READ_CAPACITY);
    let Some((stream, principal)) = secure(inputs, stream, &mut buf, strict).await else {
        return;
    };
    let app = inputs.app(orig_dst.port());
    let edges = tables.inbound_edges(peer.ip(), principal.as_deref());
    let metrics = Arc::clone(&edges.primary);
    let protocol = tables.inbound_protocol(orig_dst.port());
    let target = Some((Arc::clone(&app), Arc::clone(&metrics)));
    let upstream = Upstream::Fixed {
        endpoint: app,
        metrics,
        mirror: Some(Arc::clone(&edges.mirror)),
    };
    connection::dispatch(
        inputs,
        Side::Inbound,
        stream,
        buf,
        protocol,
        || target,
        upstream,
    )
    .await;
}

/// Terminates a client sidecar's mTLS, or lets a plain connection through (`permissive`), or
/// refuses it (`strict`, closed with a RST). `buf` keeps what was read of a plain connection.
/// Returns the connection and, for mTLS, the client's principal (its certificate's SPIFFE ID, ""
/// when it has none); `None` for plaintext.
async fn secure(
    inputs: &ProxyInputs,
    mut stream: TcpStream,
    buf: &mut BytesMut,
    strict: bool,
) -> Option<(MeshIo, Option<String>)> {
    let refuse = |stream: TcpStream, reason: &'static str| {
        tracing::debug!(reason, "inbound connection refused");
        let _ = stream.set_zero_linger();
        None
    };
    let Some(tls) = &inputs.tls else {
        // No identity: no mTLS to offer; strict refuses everything.
        return if strict {
            inputs.metrics.identity.refused("plaintext_in_strict_mode");
            refuse(stream, "plaintext in strict mode")
        } else {
            Some((MeshIo::Plain(stream), None))
        };
    };
    let credentials = tls.credentials.borrow().clone();
    let hello = match &credentials {
        Some(_) => peek_hello(&mut stream, buf, inputs.settings.detect_timeout).await,
        None => Hello::NotTls,
    };
    match (hello, credentials) {
        (Hello::Mesh, Some(credentials)) => {
            let prefixed = Prefixed::new(std::mem::take(buf), stream);
            let acceptor = tokio_rustls::TlsAcceptor::from(credentials.server_config());
            match acceptor.accept(prefixed).await {
                Ok(tls_stream) => {
                    let principal = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .and_then(|cert| tls::spiffe_id(cert))
                        .unwrap_or_default();
                    tracing::debug!(source_principal = %principal, "mtls connection");
                    tls.metrics.inbound(Some(&principal));
                    Some((MeshIo::Server(Box::new(tls_stream)), Some(principal)))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "inbound mtls handshake failed");
                    tls.metrics.refused("handshake_failed");
                    None
                }
            }
        }
        _ if strict => {
            tls.metrics.refused("plaintext_in_strict_mode");
            refuse(stream, "plaintext in strict mode")
        }
        _ => {
            tls.metrics.inbound(None);
            Some((MeshIo::Plain(stream), None))
        }
    }
}

/// Reads until the first bytes tell a mesh ClientHello from anything else, or the detection
/// window passes (a silent client: plain).
async fn peek_hello(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    window: std::time::Duration,
) -> Hello {
    let deadline = tokio::time::Instant::now() + window;
    loop {
        match tls::classify_hello(buf) {
            Hello::Incomplete if buf.len() < MAX_HELLO => {}
            Hello::Incomplete => return Hello::OtherTls,
            decided => return decided,
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => {
                return if buf.is_empty() {
                    Hello::NotTls
                } else {
                    tls::classify_hello(buf)
                };
            }
        }
    }
}
