//! One TCP connect attempt and what came of it, as one line of text: what the `serin-netprobe`
//! binary prints (it runs inside pods as an app's uid) and what the tests parse back.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// What one connect attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handshake completed; `local` is our end.
    Connected {
        /// The local address of the connected socket.
        local: SocketAddr,
    },
    /// A RST came back: nothing listens there.
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// The network said no (ICMP unreachable, no route).
    Unreachable,
    /// Anything else.
    Error(String),
}

impl Outcome {
    /// Whether the handshake completed.
    pub fn is_connected(&self) -> bool {
        matches!(self, Outcome::Connected { .. })
    }
}

/// Connects to `addr` (from `bind`, if given, port chosen by the kernel) within `timeout`. The
/// connection is closed again at once: only the attempt matters.
pub fn connect(addr: SocketAddr, bind: Option<IpAddr>, timeout: Duration) -> Outcome {
    let attempt = || -> io::Result<SocketAddr> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        if let Some(ip) = bind {
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.connect_timeout(&addr.into(), timeout)?;
        socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("local address is not an IP address"))
    };
    match attempt() {
        Ok(local) => Outcome::Connected { local },
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => Outcome::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                Outcome::Unreachable
            }
            _ => Outcome::Error(e.to_string()),
        },
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Connected { local } => write!(f, "connected local={local}"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Unreachable => f.write_str("unreachable"),
            Outcome::Error(message) => write!(f, "error {message}"),
        }
    }
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, Self::Err> {
        let line = line.trim();
        let outcome = match line {
            "refused" => Outcome::Refused,
            "timeout" => Outcome::Timeout,
            "unreachable" => Outcome::Unreachable,
            _ => {
                if let Some(local) = line.strip_prefix("connected local=") {
                    let local = local.parse().map_err(|e| format!("`{line}`: {e}"))?;
                    Outcome::Connected { local }
                } else if let Some(message) = line.strip_prefix("error ") {
                    Outcome::Error(message.to_owned())
                } else {
                    return Err(format!("not a netprobe outcome: `{line}`"));
                }
            }
        };
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn outcomes_round_trip_through_text() {
        let outcomes = [
            Outcome::Connected {
                local: "10.244.0.2:40000".parse().unwrap(),
            },
            Outcome::Connected {
                local: "[fd00:10:244::2]:40000".parse().unwrap(),
            },
            Outcome::Refused,
            Outcome::Timeout,
            Outcome::Unreachable,
            Outcome::Error("permission denied".to_owned()),
        ];
        for outcome in outcomes {
            assert_eq!(outcome.to_string().parse::<Outcome>(), Ok(outcome.clone()));
        }
        assert!("maybe".parse::<Outcome>().is_err());
    }

    #[test]
    fn connects_and_is_refused_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let outcome = connect(
            addr,
            Some("127.0.0.1".parse().unwrap()),
            Duration::from_secs(2),
        );
        assert!(outcome.is_connected(), "{outcome}");
        drop(listener);
        assert_eq!(
            connect(addr, None, Duration::from_secs(2)),
            Outcome::Refused
        );
    }
}
