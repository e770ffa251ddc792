//! Outbound (port 15001): the app's connections out. A VIP:port of a mesh service is served as
//! its port declares (or as detected), each request or connection routed by the service's
//! traffic policy (opaque connections by its default route's weights) and balanced over the
//! chosen version's ready endpoints; any other destination passes through to the original address unchanged.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::connection::{self, FIRST_READ_CAPACITY};
use crate::http::Upstream;
use crate::proxy::{ProxyInputs, Side};
use crate::snapshot::Protocol;
use crate::tables::EndpointState;
use crate::tls::MeshIo;

/// Handles one connection the app made to `orig_dst`.
pub async fn handle(
    inputs: &ProxyInputs,
    stream: TcpStream,
    _peer: SocketAddr,
    orig_dst: SocketAddr,
) {
    let tables = Arc::clone(&inputs.tables.borrow());
    let Some(destination) = tables.destination(orig_dst).cloned() else {
        // Outside the mesh: opaque, unbalanced, to where the app was going.
        let endpoint = EndpointState::new(orig_dst, inputs.pool_settings());
        let metrics = Arc::clone(tables.passthrough());
        let target = Some((Arc::clone(&endpoint), Arc::clone(&metrics)));
        let upstream = Upstream::Fixed {
            endpoint,
            metrics,
            mirror: None,
        };
        connection::dispatch(
            inputs,
            Side::Outbound,
            MeshIo::Plain(stream),
            BytesMut::new(),
            Protocol::Tcp,
            || target,
            upstream,
        )
        .await;
        return;
    };
    let tcp_target = || {
        destination
            .pick_tcp()
            .map(|b| (Arc::clone(&b.state), Arc::clone(&b.metrics)))
    };
    let upstream = Upstream::Service {
        orig_dst,
        tables: inputs.tables.clone(),
        mirrors: Arc::clone(&inputs.mirrors),
    };
    connection::dispatch(
        inputs,
        Side::Outbound,
        MeshIo::Plain(stream),
        BytesMut::with_capacity(FIRST_READ_CAPACITY),
        destination.protocol,
        tcp_target,
        upstream,
    )
    .await;
}
