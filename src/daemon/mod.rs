//! `mpvr run`: the thin Linux shell around the core.
//!
//! Tasks: one reads the TUN, one per link reads that link's socket; each
//! feeds what it read to the [`Node`] (behind a mutex: the core is one state
//! machine, and the lock is held only for the core call) and sends or
//! delivers what the node returns. The main task watches netlink, runs the
//! node's timers and handles signals. No protocol decision is taken here.
//!
//! Start-up order keeps "a bad config changes nothing": privileges, NICs
//! named in the config, keys and node settings are all checked before the
//! TUN is created. On SIGINT/SIGTERM every route and rule mpvr added is
//! removed and the TUN is closed (the kernel deletes it with its addresses
//! and routes).

mod control;
pub mod plan;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{FutureExt, StreamExt};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proto::{self, BundleConfig, Event, HostId, LinkId, NextHop, Node, Received, Time, Transmits};
use crate::status;
use crate::sys::LinkIo;
use crate::sys::netlink::{self, Installed, Netlink, NetlinkError, Nic};
use crate::sys::privilege::missing_capabilities;
use crate::sys::tun::{self, AsyncDevice};
use crate::sys::udp::{RECV_BATCH, RecvBatch};
use ring::rand::{SecureRandom, SystemRandom};

/// Priority of the policy rules mpvr adds (one per link with a `gateway`);
/// rules with this priority are mpvr's and are flushed at start.
pub const RULE_PRIORITY: u32 = 5182;
/// Routing table of link with interface index `i` is `TABLE_BASE + i`.
pub const TABLE_BASE: u32 = 0x6d70_0000;
/// How often the NIC list is re-read even without netlink events.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Largest datagram read from a socket or packet read from the TUN.
const BUF_LEN: usize = 65_536;

/// Why `mpvr run` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Missing capabilities.
    #[error(
        "mpvr run needs {0}: run it as root, or grant the capabilities \
         (for example AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW in its systemd unit)"
    )]
    Privilege(String),
    /// NICs named in the config do not exist.
    #[error(
        "the config names network interfaces that do not exist: {}; check the names with `ip link`, \
         or remove them from the config",
        .0.join(", ")
    )]
    MissingNics(Vec<String>),
    /// The node refused its settings.
    #[error("invalid settings: {0}")]
    Node(#[from] proto::SetupError),
    /// The TUN could not be created.
    #[error("cannot create the TUN device {name}: {source} (is the tun module loaded, and is the name free?)")]
    Tun {
        /// Its name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A socket or the netlink connection could not be opened.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        source: io::Error,
    },
    /// A task reported a fatal error.
    #[error("{0}")]
    Fatal(String),
}

/// I/O outcomes the core cannot see, counted by the shell.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Copies not sent because the link's socket buffer was full.
    pub send_would_block: AtomicU64,
    /// Copies the kernel refused (no route, link gone, ...).
    pub send_errors: AtomicU64,
    /// Copies for a link that has no socket (removed meanwhile).
    pub send_no_socket: AtomicU64,
    /// Packets the TUN refused.
    pub tun_write_errors: AtomicU64,
    /// Socket receive errors.
    pub recv_errors: AtomicU64,
}

/// What the tasks share.
struct Shared {
    node: Mutex<Node>,
    sockets: RwLock<HashMap<LinkId, Arc<LinkIo>>>,
    tun: Arc<AsyncDevice>,
    epoch: std::time::Instant,
    io: IoCounters,
    error_logged: Mutex<HashMap<LinkId, std::time::Instant>>,
    rejection_logged: Mutex<HashMap<HostId, std::time::Instant>>,
    /// Interface names of the links seen (kept after a link goes, for logs and status).
    names: RwLock<HashMap<LinkId, String>>,
    /// The TUN's name.
    tun_name: String,
}

impl Shared {
    fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    /// Log what the core reports: new sessions (one line each), refused
    /// handshakes (at most once per interval and peer), given-up handshakes.
    fn log_events(&self, node: &mut Node) {
        while let Some(e) = node.poll_event() {
            match e {
                Event::SessionEstablished { peer, initiator } => {
                    info!(
                        peer = peer.get(),
                        role = if initiator { "initiator" } else { "responder" },
                        "session established"
                    )
                }
                Event::HandshakeRejected { peer, reason } => {
                    let mut last = self.rejection_logged.lock().unwrap_or_else(|e| e.into_inner());
                    let now = std::time::Instant::now();
                    if last.get(&peer).is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_INTERVAL) {
                        last.insert(peer, now);
                        warn!(peer = peer.get(), %reason, "handshake refused (check the peer's public key in the config and its private key); counted as handshake_* drops");
                    }
                }
                Event::HandshakeTimedOut { peer } => {
                    warn!(peer = peer.get(), "no answer to handshakes for 90 s; waiting packets dropped, still trying")
                }
                Event::RouteChanged { dest, next, cost } => match next {
                    Some(n) => {
                        info!("route to host {}: via host {} (cost {:.1} ms)", dest.get(), n.get(), cost as f64 / 1e3)
                    }
                    None => info!("route to host {}: none from the mesh (configured routes apply)", dest.get()),
                },
                Event::PathChanged(pc) => {
                    let link = self.link_name(pc.path.link);
                    let (peer, remote, to, reason) = (pc.peer.get(), pc.path.remote, pc.change.to, pc.change.reason);
                    info!("path {link} -> host {peer} ({remote}): {to}, {reason}");
                }
            }
        }
    }

    /// What `mpvr status` shows, now.
    fn snapshot(&self) -> status::Snapshot {
        let io = &self.io;
        let shell = status::ShellInfo {
            tun: &self.tun_name,
            uptime: self.epoch.elapsed(),
            link_name: &|l| self.link_name(l),
            io: vec![
                ("send_would_block", io.send_would_block.load(Ordering::Relaxed)),
                ("send_errors", io.send_errors.load(Ordering::Relaxed)),
                ("send_no_socket", io.send_no_socket.load(Ordering::Relaxed)),
                ("recv_errors", io.recv_errors.load(Ordering::Relaxed)),
                ("tun_write_errors", io.tun_write_errors.load(Ordering::Relaxed)),
            ],
        };
        let now = self.now();
        let node = self.node();
        status::snapshot(&node, now, &shell)
    }

    /// The interface name of `link` (its index if never seen).
    fn link_name(&self, link: LinkId) -> String {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names.get(&link).cloned().unwrap_or_else(|| format!("#{}", link.0))
    }

    fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug; the state is still the
        // last consistent one, so keep going rather than cascade.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put every copy in `out` on its link's socket, without waiting.
    /// Consecutive datagrams of one size for the same paths go to each path
    /// in one system call (UDP GSO): a batch read from the TUN costs a few
    /// sends per path, not one per packet.
    fn send(&self, out: &Transmits) {
        if out.is_empty() {
            return;
        }
        let sockets = self.sockets.read().unwrap_or_else(|e| e.into_inner());
        for_each_run(out, |r| self.send_run(&sockets, out.bytes(), r));
    }

    fn send_run(&self, sockets: &HashMap<LinkId, Arc<LinkIo>>, bytes: &[u8], r: &Run<'_>) {
        for p in r.paths {
            let Some(s) = sockets.get(&p.link) else {
                self.io.send_no_socket.fetch_add(r.count as u64, Ordering::Relaxed);
                continue;
            };
            let contents = &bytes[r.start..r.end];
            let result = if r.count == 1 {
                s.try_send(contents, None, p.remote)
            } else if s.max_segments() >= r.count {
                s.try_send(contents, Some(r.size), p.remote)
            } else {
                contents.chunks(r.size).try_for_each(|d| s.try_send(d, None, p.remote))
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.io.send_would_block.fetch_add(r.count as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let n = self.io.send_errors.fetch_add(r.count as u64, Ordering::Relaxed) + r.count as u64;
                    self.note_send_error(p.link, &e, n);
                }
            }
        }
    }
}

/// Split `out` into [`Run`]s, in order.
fn for_each_run<'a>(out: &'a Transmits, mut f: impl FnMut(&Run<'a>)) {
    let mut run: Option<Run<'a>> = None;
    for t in out.iter() {
        if let Some(r) = &mut run
            && r.extend(&t)
        {
            continue;
        }
        if let Some(r) = run.take() {
            f(&r);
        }
        run = Some(Run::new(&t));
    }
    if let Some(r) = run {
        f(&r);
    }
}

/// Most datagrams sent in one GSO call.
const MAX_RUN: usize = 64;

/// Datagrams contiguous in a [`Transmits`], all of `size` bytes (the last
/// may be shorter), all for the same paths.
struct Run<'a> {
    paths: &'a [proto::PathAddr],
    size: usize,
    start: usize,
    end: usize,
    count: usize,
    closed: bool,
}

impl<'a> Run<'a> {
    fn new(t: &proto::Transmit<'a>) -> Run<'a> {
        let len = t.datagram.len();
        Run { paths: t.paths, size: len, start: t.offset, end: t.offset + len, count: 1, closed: false }
    }

    /// Take `t` into the run if it fits; a shorter datagram ends the run.
    fn extend(&mut self, t: &proto::Transmit<'a>) -> bool {
        let len = t.datagram.len();
        let fits = !self.closed
            && self.count < MAX_RUN
            && t.offset == self.end
            && len <= self.size
            && len > 0
            && t.paths == self.paths;
        if fits {
            self.end += len;
            self.count += 1;
            self.closed = len < self.size;
        }
        fits
    }
}

impl Shared {
    /// Log a send error at most once per [`ERROR_LOG_INTERVAL`] per link:
    /// a dead link fails every copy, and logs are per state change, not per packet.
    fn note_send_error(&self, link: LinkId, e: &io::Error, total: u64) {
        let mut last = self.error_logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.get(&link).is_none_or(|t| now.duration_since(*t) >= ERROR_LOG_INTERVAL) {
            last.insert(link, now);
            warn!(%link, error = %e, send_errors_total = total, "sending on this link fails");
        }
    }
}

/// How often a failing link's send errors are logged.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The node with neighbours and routes from the config. `wall_epoch_ns`
/// is the wall clock at the node's time zero (handshake timestamps).
fn build_node(cfg: &Config, max_packet: usize, wall_epoch_ns: u64) -> Result<Node, RunError> {
    let mut rng_seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut rng_seed)
        .map_err(|_| RunError::Fatal("the system random generator failed".into()))?;
    let nc = cfg.node_config(max_packet, wall_epoch_ns, rng_seed);
    let mut node = Node::new(nc)?;
    for p in cfg.peers.iter().filter(|p| p.via.is_none()) {
        let public_key = p.public_key.expect("config check: a neighbour has a public key");
        node.add_bundle(BundleConfig { host: p.id, public_key, psk: p.psk, endpoints: Vec::new() })?;
        node.set_policy(p.id, p.policy)?;
    }
    for a in &cfg.addresses {
        node.add_route(IpNet::from(a.addr()), NextHop::Local)?;
    }
    for p in &cfg.advertise {
        node.add_route(*p, NextHop::Local)?;
    }
    for p in &cfg.peers {
        let next = NextHop::Host(p.via.unwrap_or(p.id));
        for prefix in &p.prefixes {
            node.add_route(*prefix, next)?;
        }
    }
    Ok(node)
}

struct LinkEntry {
    nic: Nic,
    reader: JoinHandle<()>,
    installed: Vec<Installed>,
}

/// The links in use and how to change them.
struct Links {
    cfg: Arc<Config>,
    nl: Netlink,
    shared: Arc<Shared>,
    tun_index: u32,
    up: BTreeMap<u32, LinkEntry>,
    fatal: mpsc::UnboundedSender<String>,
}

impl Links {
    /// Bring the links in line with `nics`, then the neighbours' endpoints.
    async fn reconcile(&mut self, nics: Vec<Nic>) {
        let wanted: BTreeMap<u32, Nic> = nics
            .into_iter()
            .filter(|n| plan::classify(n, &self.cfg, Some(self.tun_index)).is_ok())
            .map(|n| (n.index, n))
            .collect();
        let gone: Vec<u32> = self.up.keys().filter(|i| !wanted.contains_key(i)).copied().collect();
        for index in gone {
            if let Some(entry) = self.up.remove(&index) {
                self.remove_link(entry).await;
            }
        }
        for (index, nic) in wanted {
            match self.up.get_mut(&index) {
                Some(entry) if entry.nic == nic => {}
                Some(entry) => {
                    info!(link = %nic.name, addrs = ?nic.addrs, "link changed");
                    let old = std::mem::take(&mut entry.installed);
                    entry.nic = nic.clone();
                    for i in &old {
                        let _ = self.nl.remove(i).await;
                    }
                    let installed = self.policy_routes(&nic).await;
                    if let Some(entry) = self.up.get_mut(&index) {
                        entry.installed = installed;
                    }
                }
                None => self.add_link(nic).await,
            }
        }
        self.update_endpoints();
    }

    /// Give the neighbours the endpoints the links up now reach.
    fn update_endpoints(&self) {
        let nics: Vec<&Nic> = self.up.values().map(|e| &e.nic).collect();
        let mut node = self.shared.node();
        for p in self.cfg.peers.iter().filter(|p| p.via.is_none()) {
            let _ = node.set_endpoints(p.id, plan::endpoints(p, &self.cfg, &nics));
        }
    }

    async fn add_link(&mut self, nic: Nic) {
        let socket = match LinkIo::bind(&nic.name, self.cfg.listen_port, self.cfg.transport) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                warn!(link = %nic.name, error = %e, port = self.cfg.listen_port, "cannot open the link's socket; will retry on the next change");
                return;
            }
        };
        let link = LinkId(nic.index);
        self.shared.sockets.write().unwrap_or_else(|e| e.into_inner()).insert(link, socket.clone());
        self.shared.names.write().unwrap_or_else(|e| e.into_inner()).insert(link, nic.name.clone());
        self.shared.node().add_link(self.shared.now(), link);
        let reader = tokio::spawn(read_link(self.shared.clone(), link, socket, self.fatal.clone()));
        let installed = self.policy_routes(&nic).await;
        info!(link = %nic.name, index = nic.index, addrs = ?nic.addrs, mtu = nic.mtu, "link up");
        self.up.insert(nic.index, LinkEntry { nic, reader, installed });
        // Its paths at once: its socket already reads, and an answer to a
        // handshake goes on every path known when it is sent.
        self.update_endpoints();
    }

    async fn remove_link(&mut self, entry: LinkEntry) {
        entry.reader.abort();
        let link = LinkId(entry.nic.index);
        self.shared.sockets.write().unwrap_or_else(|e| e.into_inner()).remove(&link);
        self.shared.node().remove_link(self.shared.now(), link);
        for i in &entry.installed {
            if let Err(e) = self.nl.remove(i).await {
                warn!(link = %entry.nic.name, error = %e, "cannot remove a policy route");
            }
        }
        info!(link = %entry.nic.name, index = entry.nic.index, "link down");
    }

    /// A link with a `gateway` gets its own table (its subnets and a default
    /// route through the gateway) and a rule sending its socket's packets
    /// there: without it the kernel would find no route for a link that has
    /// no default route of its own.
    async fn policy_routes(&self, nic: &Nic) -> Vec<Installed> {
        let Some(gw) = self.cfg.links.options.get(&nic.name).and_then(|o| o.gateway) else {
            return Vec::new();
        };
        let table = TABLE_BASE + nic.index;
        let mut done = Vec::new();
        let default: IpNet = if gw.is_ipv4() { "0.0.0.0/0".parse() } else { "::/0".parse() }.expect("literal");
        let subnets = nic.addrs.iter().filter(|a| plan::usable_addr(&a.addr())).map(|a| a.trunc());
        let mut result: Result<(), NetlinkError> = Ok(());
        for s in subnets {
            match self.nl.add_route(s, nic.index, None, Some(table)).await {
                Ok(i) => done.push(i),
                Err(e) => result = Err(e),
            }
        }
        match self.nl.add_route(default, nic.index, Some(gw), Some(table)).await {
            Ok(i) => done.push(i),
            Err(e) => result = Err(e),
        }
        match self.nl.add_oif_rule(&nic.name, table, RULE_PRIORITY).await {
            Ok(is) => done.extend(is),
            Err(e) => result = Err(e),
        }
        match result {
            Ok(()) => info!(link = %nic.name, gateway = %gw, table, "policy routing installed"),
            Err(e) => {
                warn!(link = %nic.name, gateway = %gw, error = %e, "policy routing incomplete")
            }
        }
        if rp_filter_strict(&nic.name) {
            warn!(
                link = %nic.name,
                "rp_filter is strict (1) on this link: replies arriving on it may be dropped; set it to 2 (loose): \
                 sysctl -w net.ipv4.conf.{}.rp_filter=2",
                nic.name
            );
        }
        done
    }

    async fn shutdown(&mut self) {
        let entries: Vec<LinkEntry> = std::mem::take(&mut self.up).into_values().collect();
        for e in entries {
            self.remove_link(e).await;
        }
    }
}

fn rp_filter_strict(ifname: &str) -> bool {
    let read = |p: String| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u8>().ok()).unwrap_or(0);
    let all = read("/proc/sys/net/ipv4/conf/all/rp_filter".into());
    let one = read(format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter"));
    all.max(one) == 1
}

/// Read one link's socket until aborted: a batch per system call, the core
/// called for the whole batch under one lock, then deliveries and sends.
async fn read_link(shared: Arc<Shared>, link: LinkId, socket: Arc<LinkIo>, fatal: mpsc::UnboundedSender<String>) {
    let mut batch = RecvBatch::default();
    let mut delivered: Vec<Range<usize>> = Vec::with_capacity(RECV_BATCH);
    let mut ranges: Vec<(SocketAddr, Range<usize>)> = Vec::with_capacity(RECV_BATCH);
    let mut out = Transmits::new();
    loop {
        if let Err(e) = socket.recv(&mut batch).await {
            shared.io.recv_errors.fetch_add(1, Ordering::Relaxed);
            debug!(%link, error = %e, "receive failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        delivered.clear();
        {
            let now = shared.now();
            let mut node = shared.node();
            ranges.clear();
            ranges.extend(batch.datagrams());
            let storage = batch.storage();
            for (from, range) in ranges.drain(..) {
                if let Received::Deliver(r) =
                    node.handle_datagram(now, link, from, &mut storage[range.clone()], &mut out)
                {
                    delivered.push(range.start + r.start..range.start + r.end);
                }
            }
            shared.log_events(&mut node);
        }
        for r in &delivered {
            if shared.tun.send(&batch.storage()[r.clone()]).await.is_err() {
                shared.io.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        shared.send(&out);
        out.clear();
        if fatal.is_closed() {
            return;
        }
    }
}

/// Packets read from the TUN in one go.
const TUN_BATCH: usize = 32;

/// Read the TUN until it fails: wait for one packet, take every other one
/// already queued (up to [`TUN_BATCH`]), run the core once for all of them.
async fn read_tun(shared: Arc<Shared>, fatal: mpsc::UnboundedSender<String>) {
    let mut storage = vec![0u8; TUN_BATCH * BUF_LEN];
    let mut lens = [0usize; TUN_BATCH];
    let mut out = Transmits::new();
    loop {
        let mut slots = storage.chunks_mut(BUF_LEN);
        let first = slots.next().expect("TUN_BATCH slots");
        lens[0] = match shared.tun.recv(first).await {
            Ok(n) => n,
            Err(e) => {
                let _ = fatal.send(format!("reading the TUN failed: {e}"));
                return;
            }
        };
        let mut n = 1;
        for slot in slots {
            match shared.tun.try_recv(slot) {
                Ok(len) => {
                    lens[n] = len;
                    n += 1;
                }
                Err(_) => break,
            }
        }
        {
            let now = shared.now();
            let mut node = shared.node();
            for (slot, len) in storage.chunks(BUF_LEN).zip(&lens[..n]) {
                let _ = node.handle_tun_packet(now, &slot[..*len], &mut out);
            }
            shared.log_events(&mut node);
        }
        shared.send(&out);
        out.clear();
    }
}

/// Fail unless the process has the capabilities `mpvr run` needs. Checked
/// first, before the config (whose key file root alone may read) is loaded.
pub fn check_privileges() -> Result<(), RunError> {
    let missing = missing_capabilities();
    if missing.is_empty() { Ok(()) } else { Err(RunError::Privilege(missing.join(" and "))) }
}

/// Check everything that can be checked without changing the system.
pub async fn preflight(cfg: &Config) -> Result<(Netlink, Vec<Nic>), RunError> {
    check_privileges()?;
    let nl = Netlink::new().map_err(|source| RunError::Io { what: "opening netlink".into(), source })?;
    let nics = nl.nics().await?;
    let missing = plan::missing_nics(cfg, &nics);
    if !missing.is_empty() {
        return Err(RunError::MissingNics(missing));
    }
    Ok((nl, nics))
}

/// Run until SIGINT or SIGTERM. Must be called inside a tokio runtime.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let cfg = Arc::new(cfg);
    let (nl, nics) = preflight(&cfg).await?;
    let mut control = control::ControlSocket::bind(&cfg.control_socket)?;
    let metrics = match cfg.prometheus {
        Some(addr) => Some(control::bind_metrics(addr).await?),
        None => None,
    };
    let initial: Vec<&Nic> = nics.iter().filter(|n| plan::classify(n, &cfg, None).is_ok()).collect();
    let mtu = plan::mtu(&cfg, &initial);
    let epoch = std::time::Instant::now();
    let wall_epoch_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let node = build_node(&cfg, usize::from(mtu), wall_epoch_ns)?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|source| RunError::Io { what: "SIGINT handler".into(), source })?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|source| RunError::Io { what: "SIGTERM handler".into(), source })?;
    let mut watch = netlink::watch().map_err(|source| RunError::Io { what: "netlink events".into(), source })?;

    // From here on the system changes.
    let stale = nl.flush_rules(RULE_PRIORITY).await?;
    if stale > 0 {
        info!(stale, "removed policy rules left by an earlier run");
    }
    let (tun, tun_index) =
        tun::create(&cfg.tun, mtu).map_err(|source| RunError::Tun { name: cfg.tun.clone(), source })?;
    let configured: Result<(), NetlinkError> = async {
        for a in &cfg.addresses {
            nl.add_address(tun_index, *a).await?;
        }
        for p in &cfg.peers {
            for prefix in &p.prefixes {
                nl.add_route(*prefix, tun_index, None, None).await?;
            }
        }
        Ok(())
    }
    .await;
    configured?; // dropping `tun` on this error deletes it with what was added
    info!(host = cfg.host.get(), tun = %cfg.tun, mtu, addresses = ?cfg.addresses, "mpvr running");

    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        sockets: RwLock::new(HashMap::new()),
        tun,
        epoch,
        io: IoCounters::default(),
        error_logged: Mutex::new(HashMap::new()),
        rejection_logged: Mutex::new(HashMap::new()),
        names: RwLock::new(HashMap::new()),
        tun_name: cfg.tun.clone(),
    });
    let control_task = tokio::spawn(control.serve(shared.clone()));
    info!(socket = %cfg.control_socket.display(), "control socket ready (mpvr status)");
    let metrics_task = metrics.map(|l| {
        info!(address = %cfg.prometheus.map(|a| a.to_string()).unwrap_or_default(), "serving Prometheus metrics at /metrics");
        tokio::spawn(control::serve_metrics(l, shared.clone()))
    });
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let mut links = Links {
        cfg: cfg.clone(),
        nl: nl.clone(),
        shared: shared.clone(),
        tun_index,
        up: BTreeMap::new(),
        fatal: fatal_tx.clone(),
    };
    links.reconcile(nics).await;
    let tun_reader = tokio::spawn(read_tun(shared.clone(), fatal_tx));

    let mut out = Transmits::new();
    let mut mesh_routes: BTreeMap<IpNet, Installed> = BTreeMap::new();
    // A full re-read now and then, in case an event was lost (a netlink
    // socket that overflows drops events: ENOBUFS).
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    let result = loop {
        let wake = {
            let next = shared.node().poll_timeout();
            let cap = shared.now() + Duration::from_secs(1);
            let at = next.map_or(cap, |t| t.min(cap));
            shared.epoch + Duration::from_nanos(at.as_nanos())
        };
        tokio::select! {
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            Some(msg) = fatal_rx.recv() => break Err(RunError::Fatal(msg)),
            ev = watch.next() => {
                if ev.is_none() {
                    break Err(RunError::Fatal("the netlink event socket closed".into()));
                }
                // Let a burst of events settle, then read the whole picture once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while let Some(Some(())) = watch.next().now_or_never() {}
                match nl.nics().await {
                    Ok(nics) => links.reconcile(nics).await,
                    Err(e) => warn!(error = %e, "cannot list network interfaces"),
                }
            }
            _ = resync.tick() => {
                match nl.nics().await {
                    Ok(nics) => links.reconcile(nics).await,
                    Err(e) => warn!(error = %e, "cannot list network interfaces"),
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let now = shared.now();
                {
                    let mut node = shared.node();
                    node.handle_timeout(now, &mut out);
                    shared.log_events(&mut node);
                }
                shared.send(&out);
                out.clear();
                sync_mesh_routes(&nl, &shared, &cfg, tun_index, &mut mesh_routes).await;
            }
        }
    };
    tun_reader.abort();
    control_task.abort();
    if let Some(t) = metrics_task {
        t.abort();
    }
    drop(control);
    log_summary(&shared, &links);
    links.shutdown().await;
    info!("mpvr stopped; routes and rules removed");
    result
}

/// Keep a kernel route on the TUN for every prefix the mesh routes that
/// the kernel would not send to the TUN already (the configured prefixes
/// and the TUN's own subnets have theirs), and remove those it no longer routes.
async fn sync_mesh_routes(
    nl: &Netlink,
    shared: &Shared,
    cfg: &Config,
    tun_index: u32,
    installed: &mut BTreeMap<IpNet, Installed>,
) {
    let want: std::collections::BTreeSet<IpNet> = {
        let node = shared.node();
        node.routes()
            .iter()
            .filter(|(p, n)| *n != NextHop::Local && node.mesh_origin(*p).is_some())
            .map(|(p, _)| p)
            .filter(|p| !cfg.addresses.iter().any(|a| a.trunc().contains(p)))
            .filter(|p| !cfg.peers.iter().any(|peer| peer.prefixes.contains(p)))
            .collect()
    };
    let gone: Vec<IpNet> = installed.keys().filter(|p| !want.contains(p)).copied().collect();
    for p in gone {
        if let Some(i) = installed.remove(&p)
            && let Err(e) = nl.remove(&i).await
        {
            warn!(prefix = %p, error = %e, "cannot remove a mesh route");
        }
    }
    for p in want {
        if installed.contains_key(&p) {
            continue;
        }
        match nl.add_route(p, tun_index, None, None).await {
            Ok(i) => {
                info!(prefix = %p, "kernel route added for a prefix learned from the mesh");
                installed.insert(p, i);
            }
            Err(e) => warn!(prefix = %p, error = %e, "cannot add a route for a prefix learned from the mesh"),
        }
    }
}

/// The counters, logged once at exit: node totals, then one line per link.
fn log_summary(shared: &Shared, links: &Links) {
    let node = shared.node();
    for (id, l) in node.links() {
        let name = links.up.get(&id.0).map_or("?", |e| e.nic.name.as_str());
        let drops: Vec<String> = l.drops.nonzero().map(|(r, n)| format!("{r}={n}")).collect();
        info!(link = name, rx = l.rx.packets, tx = l.tx.packets, drops = %drops.join(" "), "link totals");
    }
    let s = node.stats();
    let drops: Vec<String> = s.drops.nonzero().map(|(r, n)| format!("{r}={n}")).collect();
    info!(
        tun_in = s.tun_in.packets,
        tun_out = s.tun_out.packets,
        copies_out = s.copies_out.packets,
        datagrams_in = s.datagrams_in.packets,
        drops = %drops.join(" "),
        send_would_block = shared.io.send_would_block.load(Ordering::Relaxed),
        send_errors = shared.io.send_errors.load(Ordering::Relaxed),
        send_no_socket = shared.io.send_no_socket.load(Ordering::Relaxed),
        recv_errors = shared.io.recv_errors.load(Ordering::Relaxed),
        tun_write_errors = shared.io.tun_write_errors.load(Ordering::Relaxed),
        "totals"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{EndpointSpec, NodeConfig};
    use crate::sim::traffic::udp_packet;

    #[test]
    fn equal_size_datagrams_for_the_same_paths_form_one_run() {
        let h = |n| HostId::new(n).unwrap();
        let (ea, eb): (SocketAddr, SocketAddr) =
            ("192.0.2.1:51820".parse().unwrap(), "192.0.2.2:51820".parse().unwrap());
        let mut node = Node::new(NodeConfig::new(h(1), [1; 32])).unwrap();
        let mut peer = Node::new(NodeConfig::new(h(2), [2; 32])).unwrap();
        node.add_link(Time::ZERO, LinkId(1));
        node.add_link(Time::ZERO, LinkId(2));
        peer.add_link(Time::ZERO, LinkId(1));
        let endpoints = vec![EndpointSpec { remote: eb, link: None }];
        let public_key = peer.public_key();
        node.add_bundle(BundleConfig { host: h(2), public_key, psk: None, endpoints }).unwrap();
        let endpoints = vec![EndpointSpec { remote: ea, link: None }];
        let public_key = node.public_key();
        peer.add_bundle(BundleConfig { host: h(1), public_key, psk: None, endpoints }).unwrap();
        node.add_route("10.9.0.2/32".parse().unwrap(), NextHop::Host(h(2))).unwrap();
        crate::sim::shake_hands(&mut node, LinkId(1), ea, &mut peer, LinkId(1), eb, Time::ZERO);
        let mut out = Transmits::new();
        let (a, b) = ("10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap());
        for (i, size) in [1400, 1400, 1400, 600, 1400, 1400].into_iter().enumerate() {
            node.handle_tun_packet(Time::ZERO, &udp_packet(a, b, i as u64, size), &mut out).unwrap();
        }
        let mut runs = Vec::new();
        for_each_run(&out, |r| runs.push((r.count, r.size, r.end - r.start, r.paths.len())));
        // 3 x 1400 + the shorter 600 close one run; the last two make another.
        assert_eq!(runs, vec![(4, 1436, 3 * 1436 + 636, 2), (2, 1436, 2 * 1436, 2)]);
    }
}
