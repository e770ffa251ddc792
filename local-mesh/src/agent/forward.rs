//! Port forwarding from the host's 127.0.0.1 into a pod: a listener in the host namespace, and
//! for each accepted connection a socket created inside the pod's namespace (by a thread that
//! entered it once and only makes sockets) and connected from tokio.
//!
//! A socket keeps the namespace it was created in, so the copying needs no namespace switch.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, oneshot};

/// Connections one forwarder carries at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a connect inside the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type SocketRequest = (Domain, oneshot::Sender<io::Result<Socket>>);

/// Makes TCP sockets inside one network namespace.
#[derive(Debug, Clone)]
pub struct Dialer {
    requests: mpsc::Sender<SocketRequest>,
}

impl Dialer {
    /// Starts the thread that enters the namespace at `netns_path` and makes sockets there; it
    /// ends when the last `Dialer` clone is dropped.
    pub fn start(netns_path: &Path) -> io::Result<Dialer> {
        let file = File::open(netns_path)?;
        let (requests, queue) = mpsc::channel::<SocketRequest>();
        let (entered_tx, entered_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("dialer {}", netns_path.display()))
            .spawn(move || {
                let entered = setns(&file, CloneFlags::CLONE_NEWNET).map_err(io::Error::from);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    return;
                }
                for (domain, reply) in queue {
                    let socket = Socket::new(domain, Type::STREAM, None)
                        .and_then(|s| s.set_nonblocking(true).map(|()| s));
                    let _ = reply.send(socket);
                }
            })?;
        entered_rx
            .recv()
            .map_err(|_| io::Error::other("dialer thread died"))??;
        Ok(Dialer { requests })
    }

    /// Connects to `addr` from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let (reply, socket) = oneshot::channel();
        self.requests
            .send((Domain::for_address(addr), reply))
            .map_err(|_| io::Error::other("dialer thread is gone"))?;
        let socket = socket
            .await
            .map_err(|_| io::Error::other("dialer thread is gone"))??;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// Forwards every connection accepted on `listener` to `target`, connected through `dialer`,
/// at most [`MAX_CONNECTIONS`] at a time. Runs until the task is dropped.
pub async fn serve(listener: TcpListener, dialer: Dialer, target: SocketAddr) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let local = listener.local_addr().ok();
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
            return;
        };
        let (mut inbound, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?local, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match dialer.connect(target).await {
                Ok(mut outbound) => {
                    let copied = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    tracing::debug!(%peer, %target, ?copied, "forwarded connection closed");
                }
                Err(e) => {
                    tracing::warn!(%peer, %target, error = %e, "cannot connect inside the pod")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Forwards through a dialer in this process's own namespace (entering it needs root).
    #[tokio::test]
    async fn forwards_both_ways_and_closes_when_the_target_refuses() {
        crate::testing::init_tracing();
        if crate::testing::skip_unless_root("forwards_both_ways_and_closes_when_the_target_refuses")
        {
            return;
        }
        let dialer = Dialer::start(Path::new("/proc/self/ns/net")).unwrap();
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target_addr = target.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = target.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0; 5];
                    if conn.read_exact(&mut buf).await.is_ok() {
                        let _ = conn.write_all(&buf).await;
                    }
                });
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(serve(front, dialer.clone(), target_addr));
        for _ in 0..3 {
            let mut conn = TcpStream::connect(front_addr).await.unwrap();
            conn.write_all(b"hello").await.unwrap();
            let mut buf = [0; 5];
            tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf, b"hello");
        }

        // Nothing listens there: the forwarder closes the client's connection.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused_addr = closed.local_addr().unwrap();
        drop(closed);
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(serve(front, dialer, refused_addr));
        let mut conn = TcpStream::connect(front_addr).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(read.is_ok_and(|n| n == 0) || buf.is_empty());
    }
}
