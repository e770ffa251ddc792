//! Linux socket details the sidecar needs, kept in one place. For now: the original destination
//! of a connection that iptables redirected to one of the capture listeners.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::sockopt::{Ip6tOriginalDst, OriginalDst};
use nix::sys::socket::{
    SockaddrIn, SockaddrIn6, SockaddrLike, SockaddrStorage, getsockname, getsockopt,
};

/// The address the peer connected to before an iptables `REDIRECT` sent the connection to us:
/// `SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6, chosen by the socket's local
/// address (an IPv4-mapped address on a dual-stack socket is IPv4). `stream` is an accepted
/// connection (a `std` or `tokio` `TcpStream`). A connection that was not redirected reports its
/// own local address; one conntrack does not know fails with `ENOENT`.
pub fn original_dst(stream: &impl AsFd) -> io::Result<SocketAddr> {
    let local: SockaddrStorage = getsockname(stream.as_fd().as_raw_fd())?;
    let is_ipv4 = match local.as_sockaddr_in6() {
        Some(v6) => v6.ip().to_ipv4_mapped().is_some(),
        None if local.as_sockaddr_in().is_some() => true,
        None => {
            let family = local.family();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("original destination needs a TCP/IP socket, not {family:?}"),
            ));
        }
    };
    if is_ipv4 {
        let addr = getsockopt(stream, OriginalDst)?;
        Ok(SocketAddrV4::from(SockaddrIn::from(addr)).into())
    } else {
        let addr = getsockopt(stream, Ip6tOriginalDst)?;
        Ok(SocketAddrV6::from(SockaddrIn6::from(addr)).into())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use nix::errno::Errno;

    use super::*;

    /// Without a REDIRECT, conntrack still knows the connection: the original destination is
    /// simply where it was going. Loopback needs no privileges.
    #[test]
    fn unredirected_connection_reports_its_own_destination() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        match original_dst(&accepted) {
            Ok(dst) => assert_eq!(dst, addr),
            // Without the conntrack module loaded there is nothing to ask.
            Err(e) => {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or_default());
                assert!(matches!(errno, Errno::ENOENT | Errno::ENOPROTOOPT), "{e}");
            }
        }
    }

    #[test]
    fn non_ip_sockets_are_refused_clearly() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = original_dst(&a).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("TCP/IP socket"), "{err}");
    }
}
