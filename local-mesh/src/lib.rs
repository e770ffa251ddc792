//! A mesh of pods as network namespaces on one Linux host (`serin-local`).
//!
//! A [`Mesh`] is one isolated "node" network namespace holding a Linux bridge (10.244.0.1/16, and
//! fd00:10:244::1/64 when the kernel has IPv6); each [`Pod`] is its own namespace with loopback up,
//! `eth0` (a veth whose peer sits on the bridge) with the next address of 10.244.0.0/16, and a
//! default route via the bridge, so that service VIPs from 10.96.0.0/16, which no interface holds,
//! have a route and can be captured by iptables OUTPUT rules in the pod. Each pod has a hosts file
//! ([`Mesh::add_service`], [`Pod::add_host`]). Because every mesh's node namespace is isolated,
//! several meshes (in one process or in parallel test processes) reuse the same subnets.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serin_local::Mesh;
//! let mesh = Mesh::create()?;
//! let a = mesh.add_pod("a")?;
//! let b = mesh.add_pod("b")?;
//! mesh.add_service("10.96.0.10".parse().unwrap(), "reviews", "default")?;
//! let listener = b.run_in(|| std::net::TcpListener::bind((b.ip(), 8080)))??;
//! let uid = a.exec(["id", "-u"]).user(1337, 1337).run()?;
//! let rules = a.exec(["iptables-save"]).run()?;
//! # drop((listener, uid, rules)); Ok(()) }
//! ```
//!
//! # Names and cleanup
//! Everything a mesh creates is named `srn-<run id>...` ([`naming`]); its creator's pid and start
//! time are in `/run/serin-local/<run id>.owner`. Dropping the [`Mesh`] (also during a panic)
//! kills its processes and removes all of it; [`sweep`] removes what crashed runs left.
//!
//! # Mechanism: the `ip` command, not netlink
//! The mesh drives iproute2's `ip` rather than a netlink crate such as rtnetlink:
//! - `ip netns exec` bind-mounts `/etc/netns/<ns>/hosts` over `/etc/hosts`: that is how names
//!   resolve inside a pod, and no netlink call gives it;
//! - later code runs `iptables`, `iptables-save` and `serin-iptables` inside pods, which are
//!   processes anyway, started with the same `ip netns exec`;
//! - operators know `ip netns` and `ip link`, so a failing step is a command line they can rerun:
//!   every error quotes the exact command and its stderr;
//! - it needs no async runtime and no unsafe code; building a mesh takes a few dozen short
//!   commands, which is fast enough for tests and `serinctl up`.
//!
//! In-process code enters a namespace with `setns` on a dedicated thread ([`Netns::run_in`]).
//!
//! # The persistent mesh of `serinctl`
//! [`cluster`] keeps a mesh alive past the process that made it: a small agent process
//! ([`agent`], bin `serin-local-agent`) owns the [`Mesh`], runs the control plane in its pod,
//! forwards its ports to the host, starts pods (with a sidecar when their namespace has
//! injection) and records everything in a state directory. [`demo_app`] (bin `serin-demo-app`)
//! is the sample app of `serinctl demo`, and [`traffic`] the load generator that measures splits.
//!
//! All functions need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN): see [`require_root`] and
//! [`testing::skip_unless_root`].

#![forbid(unsafe_code)]

pub mod agent;
pub mod cluster;
pub mod demo_app;
mod error;
pub mod hosts;
mod ip;
mod mesh;
pub mod naming;
mod netns;
mod poll;
mod privileges;
mod process;
mod state;
mod sweep;
pub mod testing;
pub mod traffic;

pub use error::Error;
pub use hosts::{HostEntry, service_names};
pub use mesh::{
    GATEWAY, GATEWAY_V6, Ipv6, Mesh, MeshOptions, POD_SUBNET, POD_SUBNET_V6, Pod, SERVICE_SUBNET,
};
pub use netns::{Exec, Netns, Redirect};
pub use poll::poll_until;
pub use privileges::{is_privileged, require_root};
pub use process::Process;
pub use sweep::{SweepReport, sweep, sweep_run};

/// Signals for [`Process::signal`].
pub use nix::sys::signal::Signal;
