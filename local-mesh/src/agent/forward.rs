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
