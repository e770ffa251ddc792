//! Root tests of traffic capture: `serin-iptables` rules applied with the real executor (the
//! host's iptables tools) inside a fresh pod of a local mesh, and real connections checked
//! against listeners standing in for the sidecar. Skipped, with a printed reason, without root.
//!
//! In each test pod `app`: listeners on 15001 (outbound capture), 15006 (inbound capture) and
//! 8080 (the app itself), all in-process; connects come from `serin-netprobe` run as a chosen
//! uid/gid inside the pod, because iptables owner matches look at the sending process.

use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serin_iptables::config::{Config, DEFAULT_INBOUND_PORT, DEFAULT_OUTBOUND_PORT, PortRange};
use serin_iptables::executor::{Executor, SystemExecutor};
use serin_iptables::install::{self, Changes};
use serin_iptables::plan::{Family, plan};
use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::{Mesh, Pod};
use serin_proxy::socket::original_dst;
use serin_tests::netprobe::{self, Outcome};

/// An app's uid and gid: anything but the proxy's.
const APP_UID: u32 = 1000;
/// The sidecar's uid and gid.
const PROXY_UID: u32 = 1337;
/// A service VIP: on no interface, reachable only through the pod's default route.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The same service's IPv6 VIP.
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0x10);
/// The service's port.
const SERVICE_PORT: u16 = 9080;
/// An outbound port the rules exclude.
const EXCLUDED_PORT: u16 = 9443;
/// The app's own port.
const APP_PORT: u16 = 8080;
/// How long a connect that must not be captured may take to fail (it gets no answer or an ICMP
/// error: nothing listens on the VIP).
const SHORT: Duration = Duration::from_millis(300);
/// How long a connect that must succeed may take, and how long a listener waits for it.
const LONG: Duration = Duration::from_secs(5);

/// A mesh with the pod `app` (rules applied, listeners bound) and the pod `peer` (no rules).
struct Capture {
    app: Pod,
    peer: Pod,
    outbound: Listener,
    inbound: Listener,
    server: Listener,
    probe: ProbeCopy,
    config: Config,
    executor: SystemExecutor,
    /// The guard: declared last, so dropped after the listeners; it removes every namespace,
    /// link and process of the mesh, also when a test panics.
    _mesh: Mesh,
}

impl Capture {
    /// Builds the mesh and pods, binds the listeners and applies the default rules (outbound port
    /// 9443 excluded). `None` (and a printed reason) without root.
    fn new(test: &str) -> Option<Capture> {
        if skip_unless_root(test) {
            return None;
        }
        init_tracing();
        let mesh = Mesh::create().expect("create mesh");
        let app = mesh.add_pod("app").expect("add pod app");
        let peer = mesh.add_pod("peer").expect("add pod peer");
        let executor = app
            .run_in(SystemExecutor::detect)
            .unwrap()
            .expect("iptables tools");
        let config = Config {
            exclude_outbound_ports: vec![PortRange::single(EXCLUDED_PORT)],
            ipv6: mesh.has_ipv6() && executor.ipv6_available(),
            ..Config::default()
        };
        let capture = Capture {
            outbound: Listener::bind(&app, DEFAULT_OUTBOUND_PORT, config.ipv6, "outbound 15001"),
            inbound: Listener::bind(&app, DEFAULT_INBOUND_PORT, config.ipv6, "inbound 15006"),
            server: Listener::bind(&app, APP_PORT, config.ipv6, "app 8080"),
            probe: ProbeCopy::new(),
            app,
            peer,
            config,
            executor,
            _mesh: mesh,
        };
        capture.apply();
        tracing::info!(ipv6 = capture.config.ipv6, backend = ?capture.executor.backend(), "capture rules applied in pod app");
        Some(capture)
    }

    /// Applies the rules of `self.config` in the app pod.
    fn apply(&self) -> Vec<(Family, Changes)> {
        let rules = plan(&self.config);
        self.app
            .run_in(|| install::apply(&rules, &self.executor))
            .unwrap()
            .expect("apply")
    }

    /// Removes the rules from the app pod.
    fn clean(&self) -> Vec<(Family, Changes)> {
        let families: &[Family] = if self.config.ipv6 {
            &Family::ALL
        } else {
            &[Family::V4]
        };
        self.app
            .run_in(|| install::clean(families, &self.executor))
            .unwrap()
            .expect("clean")
    }

    /// `iptables-save` in the app pod without comments and with counters zeroed.
    fn saved(&self, family: Family) -> String {
        let text = self
            .app
            .run_in(|| self.executor.save(family))
            .unwrap()
            .expect("save");
        normalise_save(&text)
    }

    /// The families the rules cover.
    fn families(&self) -> &'static [Family] {
        if self.config.ipv6 {
            &Family::ALL
        } else {
            &[Family::V4]
        }
    }

    /// The app pod's address in `family`.
    fn app_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.app.ip().into(),
            Family::V6 => self.app.ipv6().expect("pod has IPv6").into(),
        }
    }

    /// Runs `serin-netprobe connect addr` in the app pod as `uid`/`gid`.
    fn probe_as(&self, uid: u32, gid: u32, addr: SocketAddr, timeout: Duration) -> Outcome {
        self.probe_from(uid, gid, addr, None, timeout)
    }

    /// Like [`Capture::probe_as`], from a chosen local address.
    fn probe_from(
        &self,
        uid: u32,
        gid: u32,
        addr: SocketAddr,
        bind: Option<IpAddr>,
        timeout: Duration,
    ) -> Outcome {
        let mut argv = vec![
            self.probe.path.display().to_string(),
            "connect".to_owned(),
            addr.to_string(),
            "--timeout-ms".to_owned(),
            timeout.as_millis().to_string(),
        ];
        if let Some(ip) = bind {
            argv.extend(["--bind".to_owned(), ip.to_string()]);
        }
        let stdout = self
            .app
            .exec(&argv)
            .user(uid, gid)
            .run()
            .expect("run serin-netprobe");
        let outcome = stdout.parse().expect("serin-netprobe output");
        tracing::info!(uid, gid, %addr, ?bind, %outcome, "probe");
        outcome
    }
}

/// The VIP of `family` at `port`.
fn vip(family: Family, port: u16) -> SocketAddr {
    match family {
        Family::V4 => SocketAddr::new(VIP.into(), port),
        Family::V6 => SocketAddr::new(VIP6.into(), port),
    }
}

/// Drops comment lines and zeroes the `[packets:bytes]` counters of `iptables-save` output.
fn normalise_save(text: &str) -> String {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(at)) => format!("{} [0:0]", &line[..at]),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A listener bound inside a pod (sockets keep their namespace), polled without blocking.
struct Listener {
    what: &'static str,
    inner: TcpListener,
}

impl Listener {
    /// Binds all addresses at `port` in `pod`: dual-stack `[::]` when IPv6 is on.
    fn bind(pod: &Pod, port: u16, ipv6: bool, what: &'static str) -> Listener {
        let addr: SocketAddr = if ipv6 {
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)
        } else {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)
        };
        let inner = pod.run_in(|| TcpListener::bind(addr)).unwrap().expect(what);
        inner.set_nonblocking(true).unwrap();
        Listener { what, inner }
    }

    /// The connection already waiting, if any.
    fn try_accept(&self) -> Option<TcpStream> {
        match self.inner.accept() {
            Ok((stream, _)) => Some(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("accept on {}: {e}", self.what),
        }
    }

    /// Waits for a connection and returns its original destination.
    fn expect_connection(&self, why: &str) -> SocketAddr {
        let stream = eventually(
            &format!("{why}: a connection on {}", self.what),
            LONG,
            || self.try_accept(),
        );
        original_dst(&stream)
            .unwrap_or_else(|e| panic!("{why}: original_dst on {}: {e}", self.what))
    }

    /// Checks that no connection is waiting. Called after the probe returned: a connection that
    /// was redirected here would be in the accept queue by then.
    fn expect_idle(&self, why: &str) {
        if let Some(stream) = self.try_accept() {
            let dst = original_dst(&stream);
            panic!(
                "{why}: unexpected connection on {} (original destination {dst:?})",
                self.what
            );
        }
    }
}

/// A copy of `serin-netprobe` that any uid can run: the build directory may sit under a path
/// other users cannot enter. Removed on drop.
struct ProbeCopy {
    dir: PathBuf,
    path: PathBuf,
}

impl ProbeCopy {
    fn new() -> ProbeCopy {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("serin-netprobe-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("serin-netprobe");
        fs::copy(Path::new(env!("CARGO_BIN_EXE_serin-netprobe")), &path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        ProbeCopy { dir, path }
    }
}

impl Drop for ProbeCopy {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn app_outbound_lands_on_15001_with_original_destination() {
    let Some(c) = Capture::new("app_outbound_lands_on_15001_with_original_destination") else {
        return;
    };
    for &family in c.families() {
        let target = vip(family, SERVICE_PORT);
        let outcome = c.probe_as(APP_UID, APP_UID, target, LONG);
        assert!(
            outcome.is_connected(),
            "{family}: app → {target}: {outcome}"
        );
        assert_eq!(
            c.outbound.expect_connection("app → VIP"),
            target,
            "{family}"
        );
        c.inbound.expect_idle("app → VIP");
    }
}

#[test]
fn proxy_uid_and_gid_are_not_redirected() {
    let Some(c) = Capture::new("proxy_uid_and_gid_are_not_redirected") else {
        return;
    };
    for &family in c.families() {
        let target = vip(family, SERVICE_PORT);
        // The sidecar itself; then an app process that only shares the sidecar's gid.
        for (uid, gid) in [
            (PROXY_UID, PROXY_UID),
            (APP_UID, PROXY_UID),
            (PROXY_UID, APP_UID),
        ] {
            let outcome = c.probe_as(uid, gid, target, SHORT);
            assert!(
                !outcome.is_connected(),
                "{family}: {uid}:{gid} → {target}: {outcome}"
            );
            c.outbound.expect_idle(&format!("{uid}:{gid} → VIP"));
        }
    }
}

#[test]
fn excluded_outbound_port_is_not_redirected() {
    let Some(c) = Capture::new("excluded_outbound_port_is_not_redirected") else {
        return;
    };
    for &family in c.families() {
        let target = vip(family, EXCLUDED_PORT);
        let outcome = c.probe_as(APP_UID, APP_UID, target, SHORT);
        assert!(
            !outcome.is_connected(),
            "{family}: app → {target}: {outcome}"
        );
        c.outbound.expect_idle("app → excluded port");
    }
}

#[test]
fn peer_inbound_lands_on_15006_with_original_destination() {
    let Some(c) = Capture::new("peer_inbound_lands_on_15006_with_original_destination") else {
        return;
    };
    for &family in c.families() {
        let target = SocketAddr::new(c.app_ip(family), APP_PORT);
        let outcome = c
            .peer
            .run_in(|| netprobe::connect(target, None, LONG))
            .unwrap();
        assert!(
            outcome.is_connected(),
            "{family}: peer → {target}: {outcome}"
        );
        assert_eq!(
            c.inbound.expect_connection("peer → app"),
            target,
            "{family}"
        );
        c.server
            .expect_idle("peer → app must pass the inbound listener");
        // Reserved ports are never captured inbound: 15000 has no listener, so it is refused.
        let admin = SocketAddr::new(c.app_ip(family), 15000);
        let outcome = c
            .peer
            .run_in(|| netprobe::connect(admin, None, LONG))
            .unwrap();
        assert_eq!(outcome, Outcome::Refused, "{family}: peer → {admin}");
        c.inbound.expect_idle("peer → reserved port");
    }
}

#[test]
fn app_to_own_pod_ip_goes_through_the_inbound_path() {
    let Some(c) = Capture::new("app_to_own_pod_ip_goes_through_the_inbound_path") else {
        return;
    };
    for &family in c.families() {
        let own = SocketAddr::new(c.app_ip(family), APP_PORT);
        // The app calling itself by pod IP, and the sidecar's outbound side calling its own pod:
        // both through the inbound listener, as a peer would.
        for uid in [APP_UID, PROXY_UID] {
            let outcome = c.probe_as(uid, uid, own, LONG);
            assert!(outcome.is_connected(), "{family}: {uid} → {own}: {outcome}");
            assert_eq!(
                c.inbound.expect_connection("pod → own IP"),
                own,
                "{family} uid {uid}"
            );
            c.server.expect_idle("pod → own IP");
        }
        // Localhost is never captured, whoever calls.
        let localhost = match family {
            Family::V4 => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), APP_PORT),
            Family::V6 => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), APP_PORT),
        };
        for uid in [APP_UID, PROXY_UID] {
            let outcome = c.probe_as(uid, uid, localhost, LONG);
            assert!(
                outcome.is_connected(),
                "{family}: {uid} → {localhost}: {outcome}"
            );
            c.server.expect_connection("localhost");
            c.inbound.expect_idle("localhost");
            c.outbound.expect_idle("localhost");
        }
        // The inbound listener forwarding to the app on the pod IP binds the passthrough source,
        // so its connection is not captured again.
        let source: IpAddr = match family {
            Family::V4 => Ipv4Addr::new(127, 0, 0, 6).into(),
            Family::V6 => continue, // ::6 needs an address on lo, which only the sidecar adds
        };
        let outcome = c.probe_from(PROXY_UID, PROXY_UID, own, Some(source), LONG);
        assert!(
            outcome.is_connected(),
            "{family}: sidecar from {source} → {own}: {outcome}"
        );
        c.server.expect_connection("inbound passthrough");
        c.inbound.expect_idle("inbound passthrough");
    }
}

#[test]
fn apply_twice_leaves_identical_rules() {
    let Some(c) = Capture::new("apply_twice_leaves_identical_rules") else {
        return;
    };
    let first: Vec<String> = c.families().iter().map(|&f| c.saved(f)).collect();
    let changes = c.apply();
    let second: Vec<String> = c.families().iter().map(|&f| c.saved(f)).collect();
    assert_eq!(first, second, "a second apply changed the rules");
    for (family, change) in changes {
        assert_eq!(change.jumps_added, 0, "{family}");
        assert_eq!(change.jumps_removed, 0, "{family}");
        assert_eq!(change.chains_removed, 0, "{family}");
    }
    for saved in &first {
        assert_eq!(
            saved.matches("-A OUTPUT -p tcp -j SERIN_OUTPUT").count(),
            1,
            "{saved}"
        );
        assert_eq!(
            saved
                .matches("-A PREROUTING -p tcp -j SERIN_INBOUND")
                .count(),
            1,
            "{saved}"
        );
    }
    // Still working after the second apply.
    let target = vip(Family::V4, SERVICE_PORT);
    assert!(c.probe_as(APP_UID, APP_UID, target, LONG).is_connected());
    assert_eq!(c.outbound.expect_connection("after second apply"), target);
}

#[test]
fn clean_removes_serin_rules_and_keeps_unrelated_ones() {
    let Some(c) = Capture::new("clean_removes_serin_rules_and_keeps_unrelated_ones") else {
        return;
    };
    // Start over from a pod with unrelated rules of its own, then apply on top of them.
    c.clean();
    for &family in c.families() {
        let (nat, filter) = match family {
            Family::V4 => ("10.9.9.9/32", "10.8.8.8/32"),
            Family::V6 => ("fd00:9::9/128", "fd00:8::8/128"),
        };
        let unrelated = format!(
            "*nat\n-A OUTPUT -d {nat} -j ACCEPT\nCOMMIT\n*filter\n-A INPUT -s {filter} -j DROP\nCOMMIT\n"
        );
        c.app
            .run_in(|| c.executor.restore(family, &unrelated))
            .unwrap()
            .expect("unrelated rules");
    }
    let before: Vec<String> = c.families().iter().map(|&f| c.saved(f)).collect();
    c.apply();
    let applied: Vec<String> = c.families().iter().map(|&f| c.saved(f)).collect();
    assert!(
        applied.iter().all(|s| s.contains("SERIN_")),
        "apply installed nothing"
    );

    c.clean();
    let after: Vec<String> = c.families().iter().map(|&f| c.saved(f)).collect();
    for saved in &after {
        assert!(
            !saved.contains("SERIN_"),
            "clean left Serin rules:\n{saved}"
        );
    }
    assert_eq!(before, after, "clean changed rules that are not Serin's");
    // And capture is really off.
    let outcome = c.probe_as(APP_UID, APP_UID, vip(Family::V4, SERVICE_PORT), SHORT);
    assert!(!outcome.is_connected(), "{outcome}");
    c.outbound.expect_idle("after clean");
    // A second clean finds nothing to do.
    for (family, change) in c.clean() {
        assert_eq!(change, Changes::default(), "{family}");
    }
}
