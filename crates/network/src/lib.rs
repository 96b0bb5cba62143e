//! Instance networking: every instance and job task gets a network namespace of its own with
//! an interface on a host bridge, an address from the instance subnet, a default route through
//! the bridge's address (the *gateway*), NAT to the host's uplink, the platform's DNS resolver
//! and the metadata server, and nothing else of the host.
//!
//! - [`Network`] owns the bridge (`skiff<id>`), the nftables tables (`skiff_<id>`, see
//!   [`firewall`]) and the address allocator, where `<id>` comes from the data dir, so two
//!   servers with different data dirs never touch each other's links or rules.
//! - [`Sandbox`]es (a network namespace with loopback up, `eth0` with its address and route)
//!   are made ahead of demand, off the request path, and handed out by [`Network::acquire`];
//!   the [`Lease`] that comes back holds the namespace until the instance ends, then deletes
//!   its interface and returns the address.
//! - [`dns`] answers the instances' DNS queries; [`metadata`] is the metadata server.
//!
//! The design follows Docker's bridge network (a veth pair into a bridge, masquerade to the
//! uplink), with Cloud Run's contract on top: `metadata.google.internal` and
//! `169.254.169.254` (Cloud Run's container runtime contract, "Metadata server").

pub mod dns;
pub mod firewall;
pub mod metadata;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use nix::sched::{setns, unshare, CloneFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Errors of instance networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A netlink request failed (`what` says which).
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call failed (`what` says which).
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused the rules, or is missing.
    #[error("firewall: {0}")]
    Firewall(String),
    /// The configuration cannot work on this host (a subnet that collides, say).
    #[error("{0}")]
    Config(String),
    /// Every address of the subnet is in use, and none was handed back within
    /// [`ADDRESS_WAIT`] of a start asking for one.
    #[error("no free address left in the instance subnet {0}: give a larger --network-subnet")]
    Exhausted(Ipv4Net),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Sys { what, source }
}

/// What the server asks of instance networking.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The instance subnet: the gateway takes its first address, instances the others.
    pub subnet: Ipv4Net,
    /// Extra destinations instances may not reach (beyond the host itself, other instances,
    /// loopback, link-local and multicast, which are always denied).
    pub deny: Vec<Ipv4Net>,
    /// TCP ports on the gateway address that instances may open besides DNS and metadata:
    /// the ingress, so that a service calls another by its URL.
    pub host_ports: Vec<u16>,
    /// How many sandboxes to keep made ahead of demand.
    pub prepared: usize,
}

/// The default instance subnet, `10.213.0.0/16`.
pub fn default_subnet() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 213, 0, 0), 16).expect("valid prefix")
}

/// Who an instance address belongs to: what the metadata server tells the instance about
/// itself, and whose identity its tokens carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The project (Skiff namespace).
    pub project: String,
    /// The project's number (`/computeMetadata/v1/project/numeric-project-id`).
    pub project_number: u64,
    /// The instance's unique id (`/computeMetadata/v1/instance/id`).
    pub instance_id: String,
    /// The service account email the instance runs as.
    pub service_account: String,
}

impl Owner {
    /// The owner of an instance of `project` that runs as `service_account`, or as the
    /// project's default service account (Cloud Run's: the Compute Engine default) when none.
    pub fn new(project: &str, instance_id: &str, service_account: Option<&str>) -> Owner {
        Owner {
            project: project.to_string(),
            project_number: skiff_model::project_number(project),
            instance_id: instance_id.to_string(),
            service_account: service_account
                .map(str::to_string)
                .unwrap_or_else(|| skiff_model::default_service_account(project)),
        }
    }
}

/// A network namespace made ahead of demand: loopback up, `eth0` with `ip` and a default
/// route through the gateway, the host end `host_if` on the bridge.
pub struct Sandbox {
    netns: OwnedFd,
    ip: Ipv4Addr,
    host_if: String,
}

struct State {
    /// Offsets into the subnet never handed out yet start at `next`.
    next: u32,
    /// Offsets handed back, reused oldest first.
    released: VecDeque<u32>,
    ready: VecDeque<Sandbox>,
    owners: HashMap<Ipv4Addr, Owner>,
    /// 1 while the maker is making a sandbox, else 0.
    making: usize,
    /// Making one ahead of demand failed: none is made ahead until a start asks for one.
    ahead_failed: bool,
    /// Starts waiting for a sandbox, oldest first, when none was ready.
    waiting: VecDeque<tokio::sync::oneshot::Sender<Result<Sandbox, NetworkError>>>,
    /// Set by [`Network::stop`]: no sandbox is made after it.
    stopped: bool,
    /// Every address is in use and starts wait for one: the maker sleeps until one is
    /// released.
    exhausted: bool,
}

/// The server's instance network: the bridge, its rules and the sandboxes.
pub struct Network {
    bridge: String,
    table: String,
    veth_prefix: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    bridge_index: u32,
    prepared: usize,
    handle: Handle,
    state: Mutex<State>,
    seq: AtomicU32,
    /// The egress counters as last read, and when: one `nft` call serves every instance's
    /// reading within [`EGRESS_READ_EVERY`].
    egress: Mutex<Option<(std::time::Instant, HashMap<Ipv4Addr, u64>)>>,
    /// Wakes the sandbox maker's thread.
    wake: Arc<tokio::sync::Notify>,
}

impl Drop for Network {
    fn drop(&mut self) {
        // The maker's thread finds the network gone and ends.
        self.wake.notify_one();
    }
}

/// The short id that names this server's bridge, veths and tables: 8 hex digits of the
/// SHA-256 of the data dir's canonical path.
pub fn server_id(data_dir: &Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..4])
}

/// This server's names: its bridge `skiff<id>`, its nftables tables `skiff_<id>`, and the prefix
/// `sk<first 6 of id>` of its instances' host-side interfaces.
pub fn names(data_dir: &Path) -> (String, String, String) {
    let id = server_id(data_dir);
    (
        format!("skiff{id}"),
        format!("skiff_{id}"),
        format!("sk{}", &id[..6]),
    )
}

const FORWARDING: &str = "/proc/sys/net/ipv4/ip_forward";
/// `ip_forward`'s value from before the first Skiff server on the machine turned it on.
const FORWARDING_SAVED: &str = "/run/skiff/ip_forward.before";

/// How long background network work (refilling sandboxes, letting an ended instance's sandbox
/// go) waits, so that it does not compete with the instance start that set it off.
const BACKGROUND_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a start waits for a sandbox when every address of the subnet is in use, for an
/// instance that is stopping to hand one back, before it fails with
/// [`NetworkError::Exhausted`]. In a burst of deploys or starts, instances stop while others
/// start, and an address is handed back within a second or two of its instance's stop.
const ADDRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The bridge's MAC address, set when it is made, as Docker sets its bridge's: a bridge without
/// one takes the lowest of its ports' addresses, so each new instance's veth would make it
/// recompute its address (and could change it, which every instance's ARP entry for the gateway
/// then misses). Locally administered (`02:42`), then the gateway's IPv4 address.
fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0x42, a, b, c, d]
}

/// The loopback interface's index in every network namespace (the kernel's `LOOPBACK_IFINDEX`).
const LOOPBACK_IFINDEX: u32 = 1;

/// How often, and how many times, a let-go sandbox's interface is looked for before its
/// address is handed out again (10 s in all).
const LINK_GONE_POLL: std::time::Duration = std::time::Duration::from_millis(50);
const LINK_GONE_POLLS: u32 = 200;

/// How long one reading of the egress counters serves.
const EGRESS_READ_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl Network {
    /// Sets the network up: removes whatever a previous run with the same data dir left
    /// (bridge, veths, tables), checks that the subnet collides with no route of the host,
    /// creates the bridge with the gateway address, turns IPv4 forwarding on, applies the
    /// rules and starts making sandboxes.
    ///
    /// Errors: a subnet too small (fewer than 2 instance addresses) or overlapping one of the
    /// host's routes ([`NetworkError::Config`]), netlink or `nft` failures.
    pub async fn start(data_dir: &Path, cfg: NetworkConfig) -> Result<Arc<Network>, NetworkError> {
        if cfg.subnet.prefix_len() > 29 {
            return Err(NetworkError::Config(format!(
                "--network-subnet {} is too small: give a /29 or larger",
                cfg.subnet
            )));
        }
        let (bridge, table, veth_prefix) = names(data_dir);
        let (conn, handle, _) = rtnetlink::new_connection().map_err(sys("netlink socket"))?;
        tokio::spawn(conn);
        sweep_links(&handle, &bridge, &veth_prefix).await?;
        firewall::apply(&firewall::Rules::delete_batch(&table))?;
        check_routes(&handle, cfg.subnet).await?;

        let gateway = cfg.subnet.hosts().next().expect("a /29 has hosts");
        handle
            .link()
            .add(
                rtnetlink::LinkBridge::new(&bridge)
                    .address(bridge_mac(gateway).to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("creating the bridge {bridge}")))?;
        let bridge_index = link_index(&handle, &bridge).await?;
        handle
            .address()
            .add(bridge_index, gateway.into(), cfg.subnet.prefix_len())
            .execute()
            .await
            .map_err(netlink(format!("adding {gateway} to {bridge}")))?;

        // The value from before any Skiff server turned forwarding on is kept machine-wide
        // (under /run, which a reboot clears as it resets the setting), so that the last
        // server to stop restores it, even after runs that were killed.
        let saved = std::path::PathBuf::from(FORWARDING_SAVED);
        if !saved.exists() {
            if let Ok(v) = std::fs::read_to_string(FORWARDING) {
                if v.trim() != "1" {
                    if let Some(dir) = saved.parent() {
                        std::fs::create_dir_all(dir).map_err(sys("creating /run/skiff"))?;
                    }
                    std::fs::write(&saved, v.trim()).map_err(sys("saving ip_forward"))?;
                }
            }
        }
        std::fs::write(FORWARDING, "1").map_err(sys("turning IPv4 forwarding on"))?;
        let rules = firewall::Rules {
            table: &table,
            bridge: &bridge,
            veth_prefix: &veth_prefix,
            subnet: cfg.subnet,
            gateway,
            host_ports: cfg.host_ports.clone(),
            deny: &cfg.deny,
        }
        .batch();
        let network = Arc::new(Network {
            bridge: bridge.clone(),
            table: table.clone(),
            veth_prefix: veth_prefix.clone(),
            subnet: cfg.subnet,
            gateway,
            bridge_index,
            prepared: cfg.prepared,
            handle,
            state: Mutex::new(State {
                next: 2,
                released: VecDeque::new(),
                ready: VecDeque::new(),
                owners: HashMap::new(),
                making: 0,
                ahead_failed: false,
                waiting: VecDeque::new(),
                stopped: false,
                exhausted: false,
            }),
            seq: AtomicU32::new(0),
            egress: Mutex::new(None),
            wake: Arc::new(tokio::sync::Notify::new()),
        });
        if let Err(e) = firewall::apply(&rules) {
            network.stop().await;
            return Err(e);
        }
        if let Err(e) = Network::start_maker(&network) {
            network.stop().await;
            return Err(e);
        }
        network.refill();
        Ok(network)
    }

    /// The bridge's address, where instances find DNS, the metadata server and the ingress.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The instance subnet.
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Whether a connection from `peer` to `local` comes from one of Skiff's instances or job
    /// tasks: from the instance subnet to the gateway, the bridge's own address, which only the
    /// bridge's members reach with a source in that subnet (the firewall drops spoofed ones
    /// from elsewhere).
    pub fn from_instance(&self, local: std::net::IpAddr, peer: std::net::IpAddr) -> bool {
        let (std::net::IpAddr::V4(local), std::net::IpAddr::V4(peer)) = (local, peer) else {
            return false;
        };
        local == self.gateway && peer != self.gateway && self.subnet.contains(&peer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands out a sandbox for an instance that `owner` describes: one made ahead when there
    /// is one, else a new one now. Its address answers to `owner` at the metadata server
    /// until the lease is dropped.
    pub async fn acquire(self: &Arc<Self>, owner: Owner) -> Result<Lease, NetworkError> {
        let ready = {
            let mut st = self.lock();
            if st.stopped {
                return Err(NetworkError::Config("the server is stopping".into()));
            }
            st.ahead_failed = false;
            st.ready.pop_front().ok_or_else(|| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                st.waiting.push_back(tx);
                rx
            })
        };
        let sandbox = match ready {
            Ok(s) => s,
            Err(rx) => {
                self.refill();
                match tokio::time::timeout(ADDRESS_WAIT, rx).await {
                    Ok(sandbox) => sandbox
                        .map_err(|_| NetworkError::Config("the server is stopping".into()))??,
                    Err(_) => return Err(NetworkError::Exhausted(self.subnet)),
                }
            }
        };
        // Making a namespace is CPU-heavy for the kernel: while sandboxes are left, the refill
        // waits until the start that took this one is likely done, not to slow it down.
        let left = !self.lock().ready.is_empty();
        if left {
            let this = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(BACKGROUND_DELAY).await;
                if let Some(net) = this.upgrade() {
                    net.refill();
                }
            });
        } else {
            self.refill();
        }
        self.lock().owners.insert(sandbox.ip, owner);
        Ok(Lease {
            network: Arc::downgrade(self),
            sandbox: Some(sandbox),
        })
    }

    /// Who the instance at `ip` is, for the metadata server.
    pub fn owner_of(&self, ip: Ipv4Addr) -> Option<Owner> {
        self.lock().owners.get(&ip).cloned()
    }

    /// Bytes the address `ip` has sent to the internet since it was handed out.
    fn egress_bytes(&self, ip: Ipv4Addr) -> u64 {
        let mut cache = self.egress.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = cache
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < EGRESS_READ_EVERY);
        if !fresh {
            match firewall::egress_counters(&self.table) {
                Ok(c) => *cache = Some((std::time::Instant::now(), c)),
                Err(e) => tracing::debug!("reading egress counters: {e}"),
            }
        }
        cache
            .as_ref()
            .and_then(|(_, c)| c.get(&ip).copied())
            .unwrap_or(0)
    }

    /// Wakes the sandbox maker (see [`Network::start_maker`]).
    fn refill(&self) {
        self.wake.notify_one();
    }

    /// Starts the thread that makes every sandbox: one after another, each given to the oldest
    /// start waiting for one, and while none waits until `prepared` are ready. The kernel
    /// makes namespaces and links one at a time anyway (under the routing netlink lock): two
    /// hundred made at once queued there and on the CPU for more than a second each, where
    /// one after another take about 2 ms each and the first start waiting gets the first.
    /// The thread has a runtime and a netlink connection of its own, so that in a burst of
    /// starts its steps do not wait behind the server's other tasks, and it runs at a higher
    /// priority than the server's other threads (nice -5), since every start from zero waits
    /// for it. It ends when the network stops or is dropped.
    fn start_maker(net: &Arc<Network>) -> Result<(), NetworkError> {
        let weak = Arc::downgrade(net);
        let wake = net.wake.clone();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(sys("opening a netlink socket"))?;
        std::thread::Builder::new()
            .name("skiff-sandboxes".into())
            .spawn(move || {
                // SAFETY: plain system calls on this thread's own id.
                unsafe {
                    libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -5);
                }
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("the network sandbox maker cannot start: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    tokio::spawn(conn);
                    loop {
                        wake.notified().await;
                        loop {
                            let Some(net) = weak.upgrade() else { return };
                            match net.wanted() {
                                None => return,
                                Some(false) => break,
                                Some(true) => net.make_one(&handle).await,
                            }
                        }
                    }
                });
            })
            .map_err(sys("starting the network sandbox maker"))?;
        Ok(())
    }

    /// Whether the maker has a sandbox to make; `None` once the network stops.
    fn wanted(&self) -> Option<bool> {
        let mut st = self.lock();
        if st.stopped {
            return None;
        }
        let wanted = !st.exhausted
            && (!st.waiting.is_empty() || (!st.ahead_failed && st.ready.len() < self.prepared));
        st.making = usize::from(wanted);
        Some(wanted)
    }

    /// Makes a sandbox and gives it to the oldest start waiting, or to the ready ones; a
    /// failure goes to the oldest start waiting, or to the log (and the maker waits for the
    /// next wake-up, not to fail in a loop). With no address left, the starts waiting wait on,
    /// and the maker sleeps until an address is handed back ([`Network::release`]).
    async fn make_one(&self, handle: &Handle) {
        let made = self.make(handle).await;
        let mut st = self.lock();
        st.making = 0;
        match made {
            Ok(sandbox) => {
                let mut sandbox = Some(sandbox);
                // A start that stopped waiting leaves its sender behind: the next one.
                while let Some(tx) = st.waiting.pop_front() {
                    match tx.send(Ok(sandbox.take().expect("kept until sent"))) {
                        Ok(()) => break,
                        Err(back) => sandbox = back.ok(),
                    }
                }
                if let Some(s) = sandbox {
                    st.ready.push_back(s);
                }
            }
            // No address left, and starts waiting: they wait on for one to be released (the
            // maker tries again at once if one was while this one was being made).
            Err(NetworkError::Exhausted(_)) if !st.waiting.is_empty() => {
                st.exhausted = st.released.is_empty();
            }
            Err(e) => match st.waiting.pop_front() {
                Some(tx) => {
                    let _ = tx.send(Err(e));
                }
                None => {
                    tracing::warn!("preparing a network sandbox: {e}");
                    // None is made ahead again until a start asks for one.
                    st.ahead_failed = true;
                }
            },
        }
    }

    fn allocate(&self) -> Result<u32, NetworkError> {
        let mut st = self.lock();
        if let Some(off) = st.released.pop_front() {
            return Ok(off);
        }
        // The last address is the broadcast address.
        let size = 1u32 << (32 - self.subnet.prefix_len());
        if st.next >= size - 1 {
            return Err(NetworkError::Exhausted(self.subnet));
        }
        st.next += 1;
        Ok(st.next - 1)
    }

    fn release(&self, offset: u32) {
        let mut st = self.lock();
        st.released.push_back(offset);
        if std::mem::take(&mut st.exhausted) {
            drop(st);
            self.wake.notify_one();
        }
    }

    fn offset(&self, ip: Ipv4Addr) -> u32 {
        u32::from(ip) - u32::from(self.subnet.network())
    }

    /// Makes one sandbox: a new network namespace (with a netlink connection of its own
    /// inside), a veth pair whose peer is created straight inside it as `eth0`, then loopback
    /// up, the address and the default route, configured from inside.
    async fn make(&self, handle: &Handle) -> Result<Sandbox, NetworkError> {
        let offset = self.allocate()?;
        let ip = Ipv4Addr::from(u32::from(self.subnet.network()) + offset);
        let host_if = format!(
            "{}{:07x}",
            self.veth_prefix,
            self.seq.fetch_add(1, Ordering::Relaxed) & 0x0fff_ffff
        );
        let result = self.configure(handle, ip, &host_if).await;
        if result.is_err() {
            let _ = delete_link(handle, &host_if).await;
            self.release(offset);
        }
        result
    }

    async fn configure(
        &self,
        handle: &Handle,
        ip: Ipv4Addr,
        host_if: &str,
    ) -> Result<Sandbox, NetworkError> {
        // On the maker's own thread: it leaves the namespace before anything else runs there.
        let (netns, inner) = new_netns()?;
        // One queue each way on both ends, said outright: a veth made without these gets one
        // queue per CPU, then cut down to one, and each cut waits for an expedited RCU grace
        // period, which in a burst of starts (every CPU busy) took most of the time a sandbox
        // took to make.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".to_string())
            .setns_by_fd(netns.as_raw_fd())
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .build();
        let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_if.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .controller(self.bridge_index)
            .up()
            .build();
        handle
            .link()
            .add(veth)
            .execute()
            .await
            .map_err(netlink(format!("creating the veth pair {host_if}")))?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(LOOPBACK_IFINDEX).up().build())
            .execute()
            .await
            .map_err(netlink("bringing up loopback"))?;
        let eth0 = link_index(&inner, "eth0").await?;
        inner
            .address()
            .add(eth0, ip.into(), self.subnet.prefix_len())
            .execute()
            .await
            .map_err(netlink(format!("adding {ip} to eth0")))?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(eth0).up().build())
            .execute()
            .await
            .map_err(netlink("bringing up eth0"))?;
        inner
            .route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .gateway(self.gateway)
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink("adding the default route"))?;
        Ok(Sandbox {
            netns,
            ip,
            host_if: host_if.to_string(),
        })
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetworkError> {
        delete_link(&self.handle, name).await
    }

    /// Removes the bridge, every veth of this server, the rules, and the sandboxes made ahead;
    /// puts IPv4 forwarding back as it was before any Skiff server turned it on, unless another
    /// server's bridge is left.
    pub async fn stop(&self) {
        {
            let mut st = self.lock();
            st.stopped = true;
            // Starts still waiting learn that the server is stopping.
            st.waiting.clear();
        }
        self.refill();
        // Sandboxes being made finish first (a few milliseconds), so that the sweep below
        // sees their interfaces.
        for _ in 0..200 {
            if self.lock().making == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let ready: Vec<Sandbox> = self.lock().ready.drain(..).collect();
        for s in ready {
            let _ = self.delete_link(&s.host_if).await;
        }
        // The bridge, and the interface of every lease still being let go of.
        if let Err(e) = sweep_links(&self.handle, &self.bridge, &self.veth_prefix).await {
            tracing::warn!("{e}");
        }
        if let Err(e) = firewall::apply(&firewall::Rules::delete_batch(&self.table)) {
            tracing::warn!("{e}");
        }
        if let Ok(old) = std::fs::read_to_string(FORWARDING_SAVED) {
            let others = self.handle.link().get().execute();
            let names: Vec<String> = others
                .try_filter_map(|m| async move {
                    Ok(m.attributes.into_iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n),
                        _ => None,
                    }))
                })
                .try_collect()
                .await
                .unwrap_or_default();
            // Another server's bridge: it still needs forwarding, and restores it when it
            // stops last.
            let other_bridge = names
                .iter()
                .any(|n| n.starts_with("skiff") && *n != self.bridge);
            if !other_bridge {
                let _ = std::fs::write(FORWARDING, old.trim());
                let _ = std::fs::remove_file(FORWARDING_SAVED);
            }
        }
    }
}

/// A sandbox in use by one instance. Dropping it deletes the interface (the namespace goes
/// when its last process does) and returns the address.
pub struct Lease {
    network: Weak<Network>,
    sandbox: Option<Sandbox>,
}

impl Lease {
    fn sandbox(&self) -> &Sandbox {
        self.sandbox.as_ref().expect("present until drop")
    }

    /// The network namespace, to hand to the instance's shim.
    pub fn netns(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sandbox().netns.as_fd()
    }

    /// The instance's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.sandbox().ip
    }

    /// The host end of the instance's veth pair.
    pub fn host_interface(&self) -> &str {
        &self.sandbox().host_if
    }

    /// `/etc/resolv.conf` for the instance: the gateway's resolver only.
    pub fn resolv_conf(&self) -> String {
        let gw = self.network.upgrade().map(|n| n.gateway);
        match gw {
            Some(gw) => format!("nameserver {gw}\noptions ndots:0\n"),
            None => String::new(),
        }
    }

    /// A reader of the instance's network usage for its meter: what its interface sent and
    /// received (the host end's counters, read from sysfs) and what it sent to the internet
    /// (the firewall's counter for its address). Zeros once the lease is gone.
    pub fn net_reader(&self) -> skiff_metering::NetReader {
        let host_if = self.sandbox().host_if.clone();
        let ip = self.sandbox().ip;
        let network = self.network.clone();
        Box::new(move || {
            let Some(net) = network.upgrade() else {
                return skiff_metering::NetStats::default();
            };
            if net.owner_of(ip).is_none() {
                return skiff_metering::NetStats::default();
            }
            let (sent_bytes, received_bytes) = interface_counters(&host_if);
            skiff_metering::NetStats {
                sent_bytes,
                received_bytes,
                egress_bytes: net.egress_bytes(ip),
            }
        })
    }
}

/// `(sent by the instance, received by the instance)` from the host end's sysfs counters;
/// zeros once the interface is gone.
pub fn interface_counters(host_if: &str) -> (u64, u64) {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{host_if}/statistics/{what}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    (read("rx_bytes"), read("tx_bytes"))
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(sandbox) = self.sandbox.take() else {
            return;
        };
        let Some(net) = self.network.upgrade() else {
            return;
        };
        net.lock().owners.remove(&sandbox.ip);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(BACKGROUND_DELAY).await;
            // Closing the namespace deletes the veth pair with it once its last process is
            // gone: the kernel tears dead namespaces down in batches, each batch waiting once
            // for RCU, where deleting the interface here would hold the routing netlink lock
            // (and so every other sandbox being made) for one such wait per instance. The
            // interface goes before the address is handed out again; one that outlives the
            // wait (a process still in the namespace) is deleted here.
            let host_if = sandbox.host_if.clone();
            let ip = sandbox.ip;
            drop(sandbox);
            let gone = || !Path::new("/sys/class/net").join(&host_if).exists();
            for _ in 0..LINK_GONE_POLLS {
                if gone() {
                    break;
                }
                tokio::time::sleep(LINK_GONE_POLL).await;
            }
            if !gone() {
                if let Err(e) = net.delete_link(&host_if).await {
                    tracing::warn!("{e}");
                }
            }
            // The counter exists only if the instance sent something out (deleting a missing
            // element is an error that nft reports on its standard error).
            let counted = firewall::egress_counters(&net.table)
                .map(|c| c.contains_key(&ip))
                .unwrap_or(true);
            if counted {
                if let Err(e) = firewall::forget_egress(&net.table, ip) {
                    tracing::warn!("forgetting the egress counter of {ip}: {e}");
                }
            }
            net.release(net.offset(ip));
        });
    }
}

/// The container's `/etc/hosts` and `/etc/resolv.conf`: its own name at its address and the
/// platform's resolver when it has a sandbox; localhost only and no resolver when it has none.
pub fn etc_files(lease: Option<&Lease>, hostname: &str) -> (String, String) {
    (
        hosts_file(hostname, lease.map(Lease::ip)),
        lease.map(Lease::resolv_conf).unwrap_or_default(),
    )
}

/// `/etc/hosts` for an instance, as Docker writes it: localhost, and the instance's own name
/// at its address (at loopback when it has no interface).
pub fn hosts_file(hostname: &str, ip: Option<Ipv4Addr>) -> String {
    let me = ip.map_or_else(|| "127.0.1.1".to_string(), |ip| ip.to_string());
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{me}\t{hostname}\n")
}

/// Runs on a blocking-pool thread: enters a new network namespace, takes a handle on it and a
/// netlink connection inside it, and returns to the host's namespace before anything else
/// runs on the thread.
fn new_netns() -> Result<(OwnedFd, Handle), NetworkError> {
    let host = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(sys("opening the host namespace"))?;
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Sys {
        what: "unshare(CLONE_NEWNET)".into(),
        source: e.into(),
    })?;
    let inside = (|| {
        // Interfaces registered in the namespace from now on (its `eth0`) get no IPv6: an
        // instance's network is IPv4, and IPv6's link-local address, duplicate address
        // detection, router solicitations and multicast listener reports would be flooded by
        // the bridge to every other instance. Loopback exists already and keeps `::1`.
        // Without IPv6 in the kernel the file is missing, and there is nothing to turn off.
        disable_ipv6("/proc/sys/net/ipv6/conf/default/disable_ipv6")?;
        let ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(sys("opening the new namespace"))?
            .into();
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(sys("netlink socket in the new namespace"))?;
        tokio::spawn(conn);
        Ok((ns, handle))
    })();
    if let Err(e) = setns(host.as_fd(), CloneFlags::CLONE_NEWNET) {
        // The thread would go on serving the runtime from inside an instance's namespace.
        eprintln!("fatal: cannot return to the host network namespace: {e}");
        std::process::abort();
    }
    inside
}

/// Writes `1` to an IPv6 `disable_ipv6` sysctl file of the calling thread's namespace; a missing
/// file (a kernel without IPv6) is not an error.
fn disable_ipv6(path: &str) -> Result<(), NetworkError> {
    match std::fs::write(path, "1") {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(sys(format!("writing {path}"))),
    }
}

async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    let Ok(index) = link_index(handle, name).await else {
        return Ok(());
    };
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(netlink(format!("deleting {name}")))
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(NetworkError::Config(format!("no interface named {name}"))),
        Err(e) => Err(NetworkError::Netlink {
            what: format!("looking up {name}"),
            source: e,
        }),
    }
}

/// Deletes the bridge and any veth a previous run with the same data dir left.
async fn sweep_links(handle: &Handle, bridge: &str, veth_prefix: &str) -> Result<(), NetworkError> {
    let links: Vec<_> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing links"))?;
    for m in links {
        let name = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        });
        let Some(name) = name else { continue };
        if name == bridge || name.starts_with(veth_prefix) {
            // A veth whose namespace is dying (its processes were killed with the server) may
            // go away on its own between the listing and this: that is what was wanted. If the
            // bridge stays, creating it again fails below with its own error.
            if let Err(e) = handle.link().del(m.header.index).execute().await {
                tracing::debug!("removing the leftover {name}: {e}");
            }
        }
    }
    Ok(())
}

/// Refuses a subnet that overlaps any of the host's IPv4 routes (but the default route).
async fn check_routes(handle: &Handle, subnet: Ipv4Net) -> Result<(), NetworkError> {
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing routes"))?;
    for r in routes {
        let len = r.header.destination_prefix_length;
        if len == 0 {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let Some(dst) = dst else { continue };
        let Ok(net) = Ipv4Net::new(dst, len) else {
            continue;
        };
        // Local and broadcast routes of the host's own addresses are in other tables; the main
        // table is what matters, but a host address inside the subnet collides as well.
        if net.contains(&subnet.network()) || subnet.contains(&net.network()) {
            return Err(NetworkError::Config(format!(
                "the instance subnet {subnet} overlaps the host's route to {net}: choose another with --network-subnet"
            )));
        }
    }
    Ok(())
}
