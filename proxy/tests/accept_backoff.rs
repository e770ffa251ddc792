//! FAULTS.md 16: when the process runs out of file descriptors, the accept loop backs off
//! instead of spinning, and serves the waiting connections once descriptors are free again.
//!
//! Alone in its test binary (so in its own process): it lowers this process's descriptor limit.

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::*;
use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_SELF).unwrap();
    let tv =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

/// Descriptors open now (not counting the one that lists them).
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64 - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_descriptors_run_out_and_recovers() {
    let server = tcp_echo_server().await;
    let proxy = TestProxy::start().await;
    proxy.apply(&service_config(
        7000,
        "PROTOCOL_TCP",
        &[(server.addr, "v1")],
    ));
    // Client sockets made while descriptors are still available; connected later.
    let sources: Vec<_> = (0..8).map(|_| proxy.route(vip(7000))).collect();
    let sockets: Vec<socket2::Socket> = sources
        .iter()
        .map(|ip| {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.bind(&SocketAddr::new(*ip, 0).into()).unwrap();
            s
        })
        .collect();

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Not one descriptor left (a limit below what is open is allowed, and leaves no room for a
    // descriptor that closes meanwhile): every accept fails with EMFILE.
    setrlimit(Resource::RLIMIT_NOFILE, open_fds() - 4, hard).unwrap();
    let outbound = proxy.bound.outbound_addr;
    let sockets = tokio::task::spawn_blocking(move || {
        for s in &sockets {
            // The kernel completes the handshake into the accept queue.
            s.connect(&outbound.into()).unwrap();
        }
        sockets
    })
    .await
    .unwrap();
    let (cpu, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu, wall) = (cpu_time() - cpu, wall.elapsed());
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    // A spinning accept loop would burn a whole core for the whole wait.
    assert!(
        cpu < wall / 4,
        "{cpu:?} of CPU in {wall:?} while out of descriptors"
    );

    // With descriptors back, the queued connections are served.
    for s in sockets {
        let std: std::net::TcpStream = s.into();
        std.set_nonblocking(true).unwrap();
        let mut stream = tokio::net::TcpStream::from_std(std).unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"again").await.unwrap();
        let mut buf = [0u8; 5];
        tokio::time::timeout(LONG, stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"again");
    }
}
