//! The mesh: an isolated node namespace with a bridge, pods as namespaces wired to it by veth
//! pairs, their hosts files, and the guard that removes all of it on drop.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::Error;
use crate::hosts::{self, HostEntry};
use crate::ip;
use crate::naming::{self, MAX_POD_INDEX, RunId};
use crate::netns::{Exec, Netns};
use crate::poll::poll_until;
use crate::privileges::require_root;
use crate::process::{Process, ProcessTable};
use crate::state::{self, Owner};

/// The pod subnet (the bridge holds its first address).
pub const POD_SUBNET: &str = "10.244.0.0/16";
/// The pods' default gateway: the bridge in the node namespace.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const POD_PREFIX_LEN: u8 = 16;
/// The service VIP range: never on an interface, reachable only through the default route, so
/// that a pod's iptables OUTPUT rules see (and can redirect) connections to it.
pub const SERVICE_SUBNET: &str = "10.96.0.0/16";
/// The IPv6 pod subnet (a ULA), used when the mesh has IPv6.
pub const POD_SUBNET_V6: &str = "fd00:10:244::/64";
/// The pods' IPv6 default gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 1);
const POD_PREFIX_LEN_V6: u8 = 64;

/// How long teardown keeps killing processes that linger in a namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// How a mesh is built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshOptions {
    /// Whether the bridge and every pod get an address in [`POD_SUBNET_V6`] too.
    pub ipv6: Ipv6,
}

/// IPv6 in the mesh, as `serin-iptables --ipv6` takes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ipv6 {
    /// On when the kernel has IPv6 and the node namespace accepts an IPv6 address; otherwise off,
    /// with a warning.
    #[default]
    Auto,
    /// On; building the mesh fails if IPv6 does not work.
    On,
    /// IPv4 only.
    Off,
}

/// A local mesh, and the guard of everything it created.
///
/// Dropping it (also while a panic unwinds) kills every process it spawned and every other process
/// still in its namespaces, deletes its veths, bridge and namespaces, and removes its
/// `/etc/netns/<ns>` directories and state file. Failures there are logged, never raised; call
/// [`Mesh::teardown`] to get them as an error instead.
///
/// `Mesh` is `Send + Sync`: pods can be added and used from several threads.
#[derive(Debug)]
pub struct Mesh {
    shared: Arc<Shared>,
    node: Netns,
}

/// What the mesh and its pod handles share.
#[derive(Debug)]
struct Shared {
    run_id: RunId,
    /// Settled while the node namespace is set up, before any pod exists.
    ipv6: AtomicBool,
    processes: Arc<ProcessTable>,
    torn_down: AtomicBool,
    state: Mutex<State>,
}

/// What exists right now; teardown works from these lists, which are filled in as each
/// resource is created, so that a half-built mesh is cleaned up too.
#[derive(Debug, Default)]
struct State {
    pods: BTreeMap<String, Pod>,
    next_index: u32,
    /// Entries every namespace's hosts file carries (services, typically).
    mesh_hosts: Vec<HostEntry>,
    /// Pod namespaces first, in creation order; the node namespace is kept apart.
    pod_namespaces: Vec<String>,
    /// Node ends of the pods' veth pairs.
    veths: Vec<String>,
    bridge: Option<String>,
    node_netns: Option<String>,
}

impl Mesh {
    /// Builds a mesh with the default options: the node namespace and its bridge, no pods yet.
    pub fn create() -> Result<Mesh, Error> {
        Mesh::create_with(MeshOptions::default())
    }

    /// Builds a mesh with `options`.
    pub fn create_with(options: MeshOptions) -> Result<Mesh, Error> {
        require_root()?;
        let run_id = claim_run_id()?;
        let processes = Arc::new(ProcessTable::default());
        let mesh = Mesh {
            node: Netns::new(run_id.node_netns(), Arc::clone(&processes)),
            shared: Arc::new(Shared {
                run_id,
                ipv6: AtomicBool::new(false),
                processes,
                torn_down: AtomicBool::new(false),
                state: Mutex::new(State {
                    next_index: 2,
                    ..State::default()
                }),
            }),
        };
        // On error `mesh` drops here and removes whatever was already made.
        mesh.set_up_node(options.ipv6)?;
        tracing::info!(run_id = %mesh.shared.run_id, ipv6 = mesh.has_ipv6(), "mesh created");
        Ok(mesh)
    }

    fn set_up_node(&self, ipv6: Ipv6) -> Result<(), Error> {
        let run_id = &self.shared.run_id;
        let node = run_id.node_netns();
        let bridge = run_id.bridge();
        let mut state = self.shared.lock();
        ip::netns_add(&node)?;
        state.node_netns = Some(node.clone());
        ip::ip_in(&node, &["link", "set", "lo", "up"])?;
        ip::ip_in(&node, &["link", "add", &bridge, "type", "bridge"])?;
        state.bridge = Some(bridge.clone());
        let gateway = format!("{GATEWAY}/{POD_PREFIX_LEN}");
        ip::ip_in(&node, &["addr", "add", &gateway, "dev", &bridge])?;
        let kernel_has_ipv6 = Path::new("/proc/sys/net/ipv6").exists();
        if ipv6 == Ipv6::On || (ipv6 == Ipv6::Auto && kernel_has_ipv6) {
            // nodad: the address is usable at once; nobody else on this bridge can claim it.
            let gateway = format!("{GATEWAY_V6}/{POD_PREFIX_LEN_V6}");
            match ip::ip_in(
                &node,
                &["-6", "addr", "add", &gateway, "dev", &bridge, "nodad"],
            ) {
                Ok(_) => self.shared.ipv6.store(true, Ordering::SeqCst),
                Err(e) if ipv6 == Ipv6::Auto => {
                    tracing::warn!(error = %e, "IPv6 unavailable, the mesh is IPv4 only");
                }
                Err(e) => return Err(e),
            }
        }
        ip::ip_in(&node, &["link", "set", &bridge, "up"])?;
        self.shared.write_hosts(&state, &node, None)
    }

    /// The run id in every name this mesh made.
    pub fn run_id(&self) -> &str {
        self.shared.run_id.as_str()
    }

    /// The node namespace: it holds the bridge (whose address is [`GATEWAY`]) and is where the
    /// control plane runs, reachable from every pod.
    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// The pods' default gateway, the bridge's address in the node namespace.
    pub fn gateway(&self) -> Ipv4Addr {
        GATEWAY
    }

    /// Whether pods get IPv6 addresses too.
    pub fn has_ipv6(&self) -> bool {
        self.shared.ipv6.load(Ordering::SeqCst)
    }

    /// Adds pod `name`: its own namespace with loopback up, `eth0` (the pod end of a veth pair
    /// whose other end is on the bridge) with the next free address in [`POD_SUBNET`], a default
    /// route via [`GATEWAY`], and a hosts file.
    ///
    /// `name` must be a DNS label of at most 40 characters, other than `node`.
    pub fn add_pod(&self, name: &str) -> Result<Pod, Error> {
        naming::validate_pod_name(name)?;
        let shared = &self.shared;
        let mut state = shared.lock();
        shared.check_alive()?;
        if state.pods.contains_key(name) {
            return Err(Error::DuplicatePod {
                name: name.to_owned(),
                run_id: shared.run_id.to_string(),
            });
        }
        let index = state.next_index;
        if index > MAX_POD_INDEX {
            return Err(Error::AddressesExhausted {
                subnet: POD_SUBNET,
                name: name.to_owned(),
            });
        }
        state.next_index += 1;
        let pod = Pod {
            inner: Arc::new(PodInner {
                name: name.to_owned(),
                ip: pod_ipv4(index),
                ipv6: shared.ipv6.load(Ordering::SeqCst).then(|| pod_ipv6(index)),
                veth: shared.run_id.veth(index),
                netns: Netns::new(shared.run_id.pod_netns(name), Arc::clone(&shared.processes)),
                hosts: Mutex::new(Vec::new()),
            }),
            shared: Arc::clone(shared),
        };
        match shared.set_up_pod(&mut state, &pod) {
            Ok(()) => {
                tracing::info!(run_id = %shared.run_id, pod = name, ip = %pod.ip(), netns = pod.netns().name(), "pod added");
                state.pods.insert(name.to_owned(), pod.clone());
                Ok(pod)
            }
            Err(e) => {
                // Leave the mesh as it was before this call.
                for cleanup_error in shared.tear_down_pod(&mut state, &pod) {
                    tracing::warn!(error = %cleanup_error, pod = name, "cleanup after a failed add_pod");
                }
                Err(e)
            }
        }
    }

    /// Removes pod `name`: kills its processes, deletes its veth, namespace and hosts file.
    pub fn remove_pod(&self, name: &str) -> Result<(), Error> {
        let mut state = self.shared.lock();
        let pod = state.pods.remove(name).ok_or_else(|| Error::NoSuchPod {
            name: name.to_owned(),
            run_id: self.shared.run_id.to_string(),
        })?;
        let errors = self.shared.tear_down_pod(&mut state, &pod);
        self.shared.collect_errors(errors)
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> Option<Pod> {
        self.shared.lock().pods.get(name).cloned()
    }

    /// All pods, by name.
    pub fn pods(&self) -> Vec<Pod> {
        self.shared.lock().pods.values().cloned().collect()
    }

    /// Adds a hosts-file entry to every namespace of the mesh, now and for pods added later.
    pub fn add_host<S: AsRef<str>>(&self, ip: IpAddr, names: &[S]) -> Result<(), Error> {
        let entry = HostEntry::new(ip, names)?;
        let mut state = self.shared.lock();
        self.shared.check_alive()?;
        state.mesh_hosts.push(entry);
        self.shared.write_all_hosts(&state)
    }

    /// Makes a service's names (`svc`, `svc.ns`, `svc.ns.svc.cluster.local`) resolve to `vip` in
    /// every namespace of the mesh.
    pub fn add_service(&self, vip: IpAddr, service: &str, namespace: &str) -> Result<(), Error> {
        self.add_host(vip, &hosts::service_names(service, namespace))
    }

    /// The names of the mesh's namespaces: pods first, then the node.
    pub fn namespaces(&self) -> Vec<String> {
        let state = self.shared.lock();
        state
            .pod_namespaces
            .iter()
            .chain(&state.node_netns)
            .cloned()
            .collect()
    }

    /// The names of the links the mesh made (all inside the node namespace): veths, then bridge.
    pub fn links(&self) -> Vec<String> {
        let state = self.shared.lock();
        state.veths.iter().chain(&state.bridge).cloned().collect()
    }

    /// The pids of the processes the mesh spawned that still run.
    pub fn processes(&self) -> Vec<u32> {
        self.shared.processes.live_pids()
    }

    /// Tears the mesh down now (what drop does), returning the failures instead of logging them.
    pub fn teardown(self) -> Result<(), Error> {
        self.shared.teardown()
    }

    /// Tears the mesh down now through a shared handle (an owner that keeps the mesh in an
    /// `Arc`); afterwards every call on it fails with [`Error::TornDown`] and drop does nothing.
    pub fn close(&self) -> Result<(), Error> {
        self.shared.teardown()
    }

    /// The bridge's name (in the node namespace).
    pub fn bridge(&self) -> String {
        self.shared.run_id.bridge()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Err(e) = self.shared.teardown() {
            tracing::error!(error = %e, "mesh teardown left something behind");
        }
    }
}

/// A pod: a network namespace with `eth0` on the mesh's bridge.
///
/// Cheap to clone; handles stay valid while the mesh lives (after teardown, commands fail).
#[derive(Debug, Clone)]
pub struct Pod {
    inner: Arc<PodInner>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct PodInner {
    name: String,
    ip: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    veth: String,
    netns: Netns,
    /// Entries of this pod's hosts file only; they come before the mesh-wide ones.
    hosts: Mutex<Vec<HostEntry>>,
}

impl Pod {
    /// The pod's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address of its `eth0`.
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.ip
    }

    /// Its IPv6 address, when the mesh has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.inner.ipv6
    }

    /// Its network namespace (`pod.netns().name()` is what `ip netns exec` takes).
    pub fn netns(&self) -> &Netns {
        &self.inner.netns
    }

    /// The node end of its veth pair, on the bridge in the node namespace.
    pub fn veth(&self) -> &str {
        &self.inner.veth
    }

    /// Its hosts file (seen as `/etc/hosts` by processes started in the pod).
    pub fn hosts_path(&self) -> PathBuf {
        self.inner.netns.hosts_path()
    }

    /// Adds an entry to this pod's hosts file only (it wins over mesh-wide entries).
    pub fn add_host<S: AsRef<str>>(&self, ip: IpAddr, names: &[S]) -> Result<(), Error> {
        let entry = HostEntry::new(ip, names)?;
        let state = self.shared.lock();
        self.shared.check_alive()?;
        self.lock_hosts().push(entry);
        self.shared
            .write_hosts(&state, self.inner.netns.name(), Some(self))
    }

    /// Replaces this pod's own hosts entries (mesh-wide entries and the pod's own name stay).
    pub fn set_hosts(&self, entries: Vec<HostEntry>) -> Result<(), Error> {
        let state = self.shared.lock();
        self.shared.check_alive()?;
        *self.lock_hosts() = entries;
        self.shared
            .write_hosts(&state, self.inner.netns.name(), Some(self))
    }

    /// `ip netns exec NS program`; see [`Netns::command`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.inner.netns.command(program)
    }

    /// `ip netns exec NS setpriv --reuid UID --regid GID --clear-groups -- program`; see
    /// [`Netns::command_as`].
    pub fn command_as(&self, uid: u32, gid: u32, program: impl AsRef<OsStr>) -> Command {
        self.inner.netns.command_as(uid, gid, program)
    }

    /// A process builder for this pod; see [`Netns::exec`].
    pub fn exec<I, S>(&self, argv: I) -> Exec<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.netns.exec(argv)
    }

    /// Spawns `cmd` tracked by the mesh; see [`Netns::spawn`].
    pub fn spawn(&self, cmd: &mut Command) -> Result<Process, Error> {
        self.inner.netns.spawn(cmd)
    }

    /// Spawns `argv` as `uid`/`gid`, tracked; see [`Netns::spawn_as`].
    pub fn spawn_as<I, S>(&self, uid: u32, gid: u32, argv: I) -> Result<Process, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.inner.netns.spawn_as(uid, gid, argv)
    }

    /// Waits until a TCP connect from inside the pod to `addr` succeeds; see
    /// [`Netns::wait_for_tcp`].
    pub fn wait_for_tcp(&self, addr: std::net::SocketAddr, timeout: Duration) -> Result<(), Error> {
        self.inner.netns.wait_for_tcp(addr, timeout)
    }

    /// Runs `f` inside the pod's namespace on a fresh thread; see [`Netns::run_in`].
    pub fn run_in<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        self.inner.netns.run_in(f)
    }

    fn lock_hosts(&self) -> MutexGuard<'_, Vec<HostEntry>> {
        self.inner
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_alive(&self) -> Result<(), Error> {
        if self.torn_down.load(Ordering::SeqCst) {
            return Err(Error::TornDown {
                run_id: self.run_id.to_string(),
            });
        }
        Ok(())
    }

    fn node_netns(&self) -> String {
        self.run_id.node_netns()
    }

    fn set_up_pod(&self, state: &mut State, pod: &Pod) -> Result<(), Error> {
        let node = self.node_netns();
        let bridge = self.run_id.bridge();
        let ns = pod.netns().name();
        let veth = pod.veth();
        // Each resource is recorded once it exists (not before), so that cleanup after a failure
        // never deletes something of the same name that this mesh did not make.
        ip::netns_add(ns)?;
        state.pod_namespaces.push(ns.to_owned());
        // Create the pair in the node namespace with the pod end placed straight into the pod, so
        // no link of ours ever appears in the host's namespace.
        ip::ip_in(
            &node,
            &[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        state.veths.push(veth.to_owned());
        ip::ip_in(&node, &["link", "set", veth, "master", &bridge, "up"])?;
        ip::ip_in(ns, &["link", "set", "lo", "up"])?;
        let address = format!("{}/{POD_PREFIX_LEN}", pod.ip());
        ip::ip_in(ns, &["addr", "add", &address, "dev", "eth0"])?;
        if let Some(ipv6) = pod.ipv6() {
            let address = format!("{ipv6}/{POD_PREFIX_LEN_V6}");
            ip::ip_in(ns, &["-6", "addr", "add", &address, "dev", "eth0", "nodad"])?;
        }
        ip::ip_in(ns, &["link", "set", "eth0", "up"])?;
        // The default route is what gives service VIPs (on no interface) a route, so connects to
        // them reach iptables OUTPUT instead of failing with "network unreachable".
        let gateway = GATEWAY.to_string();
        ip::ip_in(ns, &["route", "add", "default", "via", &gateway])?;
        if pod.ipv6().is_some() {
            let gateway = GATEWAY_V6.to_string();
            ip::ip_in(ns, &["-6", "route", "add", "default", "via", &gateway])?;
        }
        self.write_hosts(state, ns, Some(pod))
    }

    /// Rewrites the hosts file of `netns`: the pod's own name, its own entries, then mesh-wide ones.
    fn write_hosts(&self, state: &State, netns: &str, pod: Option<&Pod>) -> Result<(), Error> {
        let own: Vec<HostEntry> = match pod {
            Some(pod) => {
                let mut own = vec![HostEntry {
                    ip: pod.ip().into(),
                    names: vec![pod.name().to_owned()],
                }];
                if let Some(ipv6) = pod.ipv6() {
                    own.push(HostEntry {
                        ip: ipv6.into(),
                        names: vec![pod.name().to_owned()],
                    });
                }
                own.extend(pod.lock_hosts().iter().cloned());
                own
            }
            None => Vec::new(),
        };
        let entries: Vec<&HostEntry> = own.iter().chain(&state.mesh_hosts).collect();
        let header = match pod {
            Some(pod) => format!("pod {} of serin-local mesh {}", pod.name(), self.run_id),
            None => format!("node of serin-local mesh {}", self.run_id),
        };
        hosts::write(netns, &hosts::render(&header, &entries))
    }

    fn write_all_hosts(&self, state: &State) -> Result<(), Error> {
        self.write_hosts(state, &self.node_netns(), None)?;
        for pod in state.pods.values() {
            self.write_hosts(state, pod.netns().name(), Some(pod))?;
        }
        Ok(())
    }

    /// Removes one pod's processes, veth, namespace and hosts directory; returns the failures.
    /// Only what this mesh recorded as made is touched.
    fn tear_down_pod(&self, state: &mut State, pod: &Pod) -> Vec<Error> {
        let ns = pod.netns().name();
        let mut errors = self.processes.kill_all(Some(ns));
        let owns_netns = state.pod_namespaces.iter().any(|n| n == ns);
        if owns_netns {
            errors.extend(kill_lingering(ns).err());
        }
        if state.veths.iter().any(|v| v == pod.veth()) {
            errors.extend(delete_link(&self.node_netns(), pod.veth()).err());
            state.veths.retain(|v| v != pod.veth());
        }
        if owns_netns {
            errors.extend(ip::netns_del(ns).err());
            errors.extend(remove_etc_dir(ns).err());
            state.pod_namespaces.retain(|n| n != ns);
        }
        errors
    }

    /// Removes everything the mesh made; idempotent.
    fn teardown(&self) -> Result<(), Error> {
        let mut state = self.lock();
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mut errors = self.processes.kill_all(None);
        let node = state.node_netns.clone();
        for ns in state.pod_namespaces.iter().chain(&node) {
            errors.extend(kill_lingering(ns).err());
        }
        if let Some(node) = &node {
            // Delete links explicitly: namespace deletion frees them only once the kernel's
            // asynchronous cleanup runs (or never, while a socket still holds the namespace).
            for link in state.veths.iter().chain(&state.bridge) {
                errors.extend(delete_link(node, link).err());
            }
        }
        state.veths.clear();
        state.bridge = None;
        for ns in state.pod_namespaces.iter().chain(&node) {
            errors.extend(ip::netns_del(ns).err());
            errors.extend(remove_etc_dir(ns).err());
        }
        state.pod_namespaces.clear();
        state.node_netns = None;
        state.pods.clear();
        errors.extend(state::remove(&self.run_id).err());
        drop(state);
        tracing::info!(run_id = %self.run_id, errors = errors.len(), "mesh torn down");
        self.collect_errors(errors)
    }

    /// Logs every error and returns the first one (with the count), if any.
    fn collect_errors(&self, errors: Vec<Error>) -> Result<(), Error> {
        for e in &errors {
            tracing::warn!(run_id = %self.run_id, error = %e, "cleanup step failed");
        }
        let count = errors.len();
        match errors.into_iter().next() {
            None => Ok(()),
            Some(first) => Err(Error::Teardown {
                run_id: self.run_id.to_string(),
                count,
                first: Box::new(first),
            }),
        }
    }
}

/// Picks a run id no live run holds and claims it with a state file owned by this process.
fn claim_run_id() -> Result<RunId, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let owner = Owner::current()?;
    loop {
        let candidate = RunId::candidate(owner.pid, COUNTER.fetch_add(1, Ordering::Relaxed));
        // A leftover namespace of a crashed run may still carry this id: pick another.
        if ip::netns_path(&candidate.node_netns()).exists() {
            continue;
        }
        if state::claim(&candidate, owner)? {
            return Ok(candidate);
        }
    }
}

/// The `index`th address of the pod subnet (index 1 is the gateway).
fn pod_ipv4(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + index)
}

/// The `index`th address of the IPv6 pod subnet.
fn pod_ipv6(index: u32) -> Ipv6Addr {
    Ipv6Addr::from(
        u128::from(Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0)) + u128::from(index),
    )
}

/// Kills (SIGKILL) every process in namespace `ns` until none is left, or fails at the deadline.
pub(crate) fn kill_lingering(ns: &str) -> Result<Vec<u32>, Error> {
    let mut killed = Vec::new();
    if !ip::netns_path(ns).exists() {
        return Ok(killed);
    }
    let mut last_error = None;
    let done = poll_until(KILL_TIMEOUT, || match ip::netns_pids(ns) {
        Ok(pids) if pids.is_empty() => Some(()),
        Ok(pids) => {
            for pid in pids {
                // ESRCH: it exited between the listing and the signal.
                if signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok()
                    && !killed.contains(&pid)
                {
                    tracing::debug!(pid, netns = ns, "killed lingering process");
                    killed.push(pid);
                }
            }
            None
        }
        Err(e) => {
            last_error = Some(e);
            None
        }
    });
    match (done, last_error) {
        (Some(()), _) => Ok(killed),
        (None, Some(e)) => Err(e),
        (None, None) => Err(Error::Process {
            action: "kill",
            pid: killed.last().copied().unwrap_or_default(),
            command: format!("processes in network namespace {ns}"),
            source: io::Error::new(io::ErrorKind::TimedOut, "still running after SIGKILL"),
        }),
    }
}

/// Deletes link `link` in namespace `ns`; an already missing link or namespace is not an error.
pub(crate) fn delete_link(ns: &str, link: &str) -> Result<(), Error> {
    if !ip::netns_path(ns).exists() {
        return Ok(());
    }
    match ip::ip_in(ns, &["link", "del", link]) {
        Err(Error::CommandFailed { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other.map(drop),
    }
}

/// Removes `/etc/netns/<ns>`; a missing directory is not an error.
pub(crate) fn remove_etc_dir(ns: &str) -> Result<(), Error> {
    let dir = ip::netns_etc_dir(ns);
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io("remove", dir, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_be_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Mesh>();
        send_sync::<Pod>();
        send_sync::<Netns>();
        send_sync::<Process>();
    }

    #[test]
    fn pod_addresses_count_up_from_the_gateway() {
        assert_eq!(pod_ipv4(1), GATEWAY);
        assert_eq!(pod_ipv4(2), Ipv4Addr::new(10, 244, 0, 2));
        assert_eq!(pod_ipv4(300), Ipv4Addr::new(10, 244, 1, 44));
        assert_eq!(pod_ipv4(MAX_POD_INDEX), Ipv4Addr::new(10, 244, 39, 15));
        assert_eq!(pod_ipv6(1), GATEWAY_V6);
        assert_eq!(pod_ipv6(300).to_string(), "fd00:10:244::12c");
    }
}
