//! Inbound (port 15006): connections from other pods to this pod's app. Each is forwarded to the
//! app on `127.0.0.1:<port>`, or, when that refuses (an app bound to the pod IP only), to the pod
//! IP from 127.0.0.6: the capture rules let both through, so this cannot loop. Metrics are recorded
//! on the inbound edge of the calling workload, recognised by its address. `x-serin-*` headers
//! are removed, except the mark of a mirrored copy (see `http::headers::strip_internal_inbound`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::connection;
use crate::http::Upstream;
use crate::proxy::{ProxyInputs, Side};

/// Handles one connection from `peer` that was going to `orig_dst` (our pod IP and the app's
/// port).
pub async fn handle(
    inputs: &ProxyInputs,
    stream: TcpStream,
    peer: SocketAddr,
    orig_dst: SocketAddr,
) {
    let tables = Arc::clone(&inputs.tables.borrow());
    let app = inputs.app(orig_dst.port());
    let edges = Arc::clone(tables.inbound_edge(peer.ip()));
    let metrics = Arc::clone(&edges.primary);
    let protocol = tables.inbound_protocol(orig_dst.port());
    let target = Some((Arc::clone(&app), Arc::clone(&metrics)));
    let upstream = Upstream::Fixed {
        endpoint: app,
        metrics,
        mirror: Some(Arc::clone(&edges.mirror)),
    };
    connection::dispatch(inputs, Side::Inbound, stream, protocol, || target, upstream).await;
}
