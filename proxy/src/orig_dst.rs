//! Where a captured connection was going: the kernel's answer (`SO_ORIGINAL_DST`) in
//! production, or any function in tests, which then need neither root nor iptables.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::socket;

/// Finds the original destination of an accepted connection.
pub trait OrigDstLookup: Send + Sync + fmt::Debug + 'static {
    /// The address the peer connected to before it was redirected to us.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// The kernel's conntrack answer (IPv4 and IPv6).
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl OrigDstLookup for Kernel {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        socket::original_dst(stream)
    }
}

/// A lookup made of a function (tests).
pub struct FromFn<F>(pub F);

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

impl<F> OrigDstLookup for FromFn<F>
where
    F: Fn(&TcpStream) -> io::Result<SocketAddr> + Send + Sync + 'static,
{
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        (self.0)(stream)
    }
}
