//! Opaque TCP forwarding: bytes both ways until both directions end. A FIN from one side is
//! passed on as a FIN (half-close) while the other direction keeps flowing; a RST from one side
//! is passed on as a RST (zero linger); a connection that carries nothing for the idle timeout
//! is closed. Byte counters are updated per chunk, so long transfers show in the metrics as they
//! flow.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::metrics::TcpHandles;
use crate::tls::MeshIo;

/// Size of each direction's copy buffer.
const BUF_SIZE: usize = 32 * 1024;

/// How a forwarded connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both directions closed cleanly.
    Closed,
    /// The downstream reset; the upstream was reset too.
    DownstreamReset,
    /// The upstream reset; the downstream was reset too.
    UpstreamReset,
    /// Nothing flowed for the idle timeout.
    Idle,
    /// Another I/O error (both sides closed).
    Error(io::ErrorKind),
}

/// Forwards between `downstream` and `upstream`, sending `prefix` (bytes already read from
/// downstream for detection) upstream first. Plain TCP on both sides takes the split-socket
/// path; mTLS on either side goes through the TLS streams.
pub async fn forward(
    downstream: MeshIo,
    prefix: BytesMut,
    upstream: MeshIo,
    metrics: &TcpHandles,
    idle_timeout: Duration,
) -> Ended {
    match (downstream, upstream) {
        (MeshIo::Plain(down), MeshIo::Plain(up)) => {
            forward_plain(down, prefix, up, metrics, idle_timeout).await
        }
        (down, up) => forward_io(down, prefix, up, metrics, idle_timeout).await,
    }
}

/// [`forward`] between two streams of which one at least is TLS: a reset is passed on as a
/// reset of the other side's TCP connection.
async fn forward_io(
    downstream: MeshIo,
    prefix: BytesMut,
    upstream: MeshIo,
    metrics: &TcpHandles,
    idle_timeout: Duration,
) -> Ended {
    let (mut dr, mut dw) = tokio::io::split(downstream);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    if !prefix.is_empty() {
        if let Err(e) = uw.write_all(&prefix).await {
            return Ended::Error(e.kind());
        }
        metrics.sent.inc_by(prefix.len() as u64);
    }
    drop(prefix);
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let ended = {
        let up = copy(&mut dr, &mut uw, &metrics.sent, &activity, start);
        let down = copy(&mut ur, &mut dw, &metrics.received, &activity, start);
        run(up, down, &activity, start, idle_timeout).await
    };
    match ended {
        Ended::DownstreamReset => ur.unsplit(uw).set_zero_linger(),
        Ended::UpstreamReset => dr.unsplit(dw).set_zero_linger(),
        _ => {}
    }
    ended
}

/// [`forward`] between two plain TCP connections.
async fn forward_plain(
    downstream: TcpStream,
    prefix: BytesMut,
    upstream: TcpStream,
    metrics: &TcpHandles,
    idle_timeout: Duration,
) -> Ended {
    let (mut dr, mut dw) = downstream.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    if !prefix.is_empty() {
        if let Err(e) = uw.write_all(&prefix).await {
            return Ended::Error(e.kind());
        }
        metrics.sent.inc_by(prefix.len() as u64);
    }
    drop(prefix);
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let ended = {
        let up = copy(&mut dr, &mut uw, &metrics.sent, &activity, start);
        let down = copy(&mut ur, &mut dw, &metrics.received, &activity, start);
        run(up, down, &activity, start, idle_timeout).await
    };
    match ended {
        Ended::DownstreamReset => reset(ur, uw),
        Ended::UpstreamReset => reset(dr, dw),
        _ => {}
    }
    ended
}

/// Closes a connection with a RST instead of a FIN.
fn reset(read: OwnedReadHalf, write: OwnedWriteHalf) {
    if let Ok(stream) = read.reunite(write) {
        let _ = stream.set_zero_linger();
    }
}

/// Which side a copy reads from, for error reports.
#[derive(Debug, Clone, Copy)]
enum Side {
    Downstream,
    Upstream,
}

async fn run(
    up: impl Future<Output = io::Result<()>>,
    down: impl Future<Output = io::Result<()>>,
    activity: &AtomicU64,
    start: Instant,
    idle_timeout: Duration,
) -> Ended {
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let (mut up_done, mut down_done) = (false, false);
    let idle = std::pin::pin!(tokio::time::sleep(idle_timeout));
    let mut idle = idle;
    let failed = |side: Side, e: io::Error| match (side, e.kind()) {
        (Side::Downstream, io::ErrorKind::ConnectionReset) => Ended::DownstreamReset,
        (Side::Upstream, io::ErrorKind::ConnectionReset) => Ended::UpstreamReset,
        (_, kind) => Ended::Error(kind),
    };
    while !(up_done && down_done) {
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => return failed(Side::Downstream, e),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => return failed(Side::Upstream, e),
            },
            () = &mut idle => {
                let last = start + Duration::from_millis(activity.load(Ordering::Relaxed));
                if last.elapsed() >= idle_timeout {
                    return Ended::Idle;
                }
                idle.as_mut().reset(last + idle_timeout);
            }
        }
    }
    Ended::Closed
}

/// Copies `from` → `to` until EOF, then shuts `to` down (a FIN). Read errors keep their kind so
/// that a reset can be told apart; a write error is reported as the other side's reset.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    counter: &Counter,
    activity: &AtomicU64,
    start: Instant,
) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Half-close: the peer may keep sending the other way.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n])
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        counter.inc_by(n as u64);
        activity.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
