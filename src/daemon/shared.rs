//! What the daemon's tasks share: the node behind its lock, the link
//! sockets, the TUN, the shell's own I/O counters, and the rate-limited
//! logging of what the core reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::links::Links;
use crate::proto::{Event, HostId, LinkId, Node, Time};
use crate::status;
use crate::sys::LinkIo;
use crate::sys::tun::Tun;

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
    /// Packets read from each TUN queue (a super-packet counts as its
    /// segments): queue 0 holds TCP when TCP has a queue of its own
    /// (everything otherwise), queue 1 everything else.
    pub tun_read: [AtomicU64; 2],
    /// Datagrams read from each link socket, summed over the links (a GRO
    /// train counts as its datagrams): socket 0 holds bulk data when bulk
    /// has a socket of its own (everything otherwise), socket 1 the rest.
    pub link_read: [AtomicU64; 2],
}

impl IoCounters {
    /// Every outcome counter by name, for status and the exit summary (the
    /// per-queue reads are counts of work, not outcomes: [`Shared::tun_reads`]).
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("send_would_block", self.send_would_block.load(Ordering::Relaxed)),
            ("send_errors", self.send_errors.load(Ordering::Relaxed)),
            ("send_no_socket", self.send_no_socket.load(Ordering::Relaxed)),
            ("recv_errors", self.recv_errors.load(Ordering::Relaxed)),
            ("tun_write_errors", self.tun_write_errors.load(Ordering::Relaxed)),
        ]
    }
}

/// A log line at most once per [`LOG_INTERVAL`] per key: a dead link fails
/// every copy, a wrong key every initiation, and logs are per state
/// change, not per packet.
pub(super) struct LogLimiter<K> {
    last: Mutex<HashMap<K, Instant>>,
}

impl<K> Default for LogLimiter<K> {
    fn default() -> LogLimiter<K> {
        LogLimiter { last: Mutex::new(HashMap::new()) }
    }
}

impl<K: std::hash::Hash + Eq> LogLimiter<K> {
    /// Whether a line for `key` may be logged now (then it is counted as logged).
    pub(super) fn ready(&self, key: K) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.get(&key).is_some_and(|t| now.duration_since(*t) < LOG_INTERVAL) {
            return false;
        }
        last.insert(key, now);
        true
    }
}

/// How often a repeated failure is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The config file in use, for status.
pub(super) struct ConfigState {
    pub(super) file: String,
    pub(super) loaded: Instant,
    pub(super) reloads: u64,
    pub(super) last_error: Option<String>,
}

impl ConfigState {
    pub(super) fn new(file: &std::path::Path) -> ConfigState {
        ConfigState { file: file.display().to_string(), loaded: Instant::now(), reloads: 0, last_error: None }
    }

    fn snap(&self) -> status::ConfigSnap {
        status::ConfigSnap {
            file: self.file.clone(),
            loaded_s_ago: self.loaded.elapsed().as_secs_f64(),
            reloads: self.reloads,
            last_error: self.last_error.clone(),
        }
    }
}

/// What the tasks share.
pub(super) struct Shared {
    pub(super) node: Mutex<Node>,
    pub(super) sockets: RwLock<HashMap<LinkId, Arc<LinkIo>>>,
    pub(super) tun: Arc<Tun>,
    pub(super) epoch: std::time::Instant,
    /// The TUN's MTU now, and its bounds when it follows the paths
    /// (`host.mtu = "auto"`; `None`: fixed).
    pub(super) tun_mtu: std::sync::atomic::AtomicU16,
    pub(super) tun_mtu_bounds: Option<(u16, u16)>,
    /// The internet exit's state, for status (set by the main loop).
    pub(super) exit: Mutex<Option<status::ExitSnap>>,
    pub(super) io: IoCounters,
    /// Send errors are logged once per interval and link.
    pub(super) send_error_log: LogLimiter<LinkId>,
    /// Refused handshakes are logged once per interval and peer.
    pub(super) rejection_log: LogLimiter<HostId>,
    /// Refused adverts are logged once per interval and origin.
    pub(super) advert_log: LogLimiter<HostId>,
    /// The node time (ns) the main loop sleeps until; a reader that makes
    /// the node's timer earlier wakes it through `timer_changed`.
    pub(super) wake_ns: AtomicU64,
    /// Wakes the main loop to re-read the node's timer.
    pub(super) timer_changed: tokio::sync::Notify,
    /// Interface names of the links seen (kept after a link goes, for logs and status).
    pub(super) names: RwLock<HashMap<LinkId, String>>,
    /// The TUN's name.
    pub(super) tun_name: String,
    /// The config file in use (set at start and by reloads).
    pub(super) config: Mutex<ConfigState>,
    /// Prefixes whose kernel route another program holds (set by the main loop).
    pub(super) held_routes: Mutex<Vec<String>>,
    /// Samples of the paths' data counts (recent loss in status).
    pub(super) loss_window: Mutex<status::LossWindow>,
}

impl Shared {
    /// After a reader's batch, under the node's lock: whether the node now
    /// wants its timer earlier than the main loop sleeps. The reader then
    /// wakes the main loop with [`Shared::wake_main`] once its sends are out
    /// (a stall deadline set by data must be met to the millisecond, as in
    /// the simulator; the packet that set it goes first).
    pub(super) fn timer_moved(&self, node: &Node) -> bool {
        node.poll_timeout().is_some_and(|t| t.as_nanos() < self.wake_ns.load(Ordering::Relaxed))
    }

    /// Packets read from each of the TUN's queues.
    pub(super) fn tun_reads(&self) -> Vec<u64> {
        self.io.tun_read.iter().take(self.tun.queue_count()).map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Datagrams read from each of the links' sockets (two counts when a
    /// link has bulk data apart).
    pub(super) fn link_reads(&self) -> Vec<u64> {
        let sockets = self.sockets.read().unwrap_or_else(|e| e.into_inner());
        let queues = sockets.values().map(|s| s.queue_count()).max().unwrap_or(1);
        self.io.link_read.iter().take(queues).map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Wake the main loop to re-read the node's timer.
    pub(super) fn wake_main(&self) {
        self.timer_changed.notify_one();
    }

    pub(super) fn now(&self) -> Time {
        Time::from_duration(self.epoch.elapsed())
    }

    /// Log what the core reports: new sessions (one line each), refused
    /// handshakes (at most once per interval and peer), given-up handshakes.
    pub(super) fn log_events(&self, node: &mut Node) {
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
                    if self.rejection_log.ready(peer) {
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
                Event::PathMtu { peer, path, datagram, mtu } => {
                    let link = self.link_name(path.link);
                    let remote = path.remote;
                    info!(
                        "path {link} -> host {} ({remote}): MTU {mtu} (datagrams up to {datagram} bytes)",
                        peer.get()
                    );
                }
                Event::TunnelMtu { mtu } => self.follow_tunnel_mtu(mtu),
                Event::AdvertRefused { origin, from, why } => {
                    if self.advert_log.ready(origin) {
                        warn!(
                            origin = origin.get(),
                            from = from.get(),
                            %why,
                            "route advertisement refused: it changes no route (counted as advert_forged or advert_unowned)"
                        );
                    }
                }
                Event::OriginKeyBound { origin, via, first_use, replaced } => {
                    let key = node.origin_keys().get(&origin).map(|k| crate::keys::encode(&k.key)).unwrap_or_default();
                    match (first_use, replaced) {
                        (true, _) => info!(
                            origin = origin.get(),
                            via = via.get(),
                            key,
                            "advert key of a host that is not a neighbour pinned on first use"
                        ),
                        (false, false) => {
                            info!(origin = origin.get(), key, "advert key bound by the neighbour's session")
                        }
                        (false, true) => warn!(
                            origin = origin.get(),
                            key,
                            "advert key replaced by the one the host's own session brought (the pin before it was wrong)"
                        ),
                    }
                }
                Event::VersionMismatch { from, version } => warn!(
                    %from,
                    version,
                    "a datagram of mpvr wire version {version} came from {from}; this host speaks version {}: \
                     run the same mpvr release on both hosts (datagrams of another version are dropped and \
                     counted as bad_version)",
                    crate::proto::wire::VERSION
                ),
                Event::PathChanged(pc) => {
                    let link = self.link_name(pc.path.link);
                    let (peer, remote, to, reason) = (pc.peer.get(), pc.path.remote, pc.change.to, pc.change.reason);
                    info!("path {link} -> host {peer} ({remote}): {to}, {reason}");
                }
            }
        }
    }

    /// With `host.mtu = "auto"`, set the TUN's MTU to what the paths carry
    /// (within its bounds: IPv6 needs 1280, and never above the links').
    fn follow_tunnel_mtu(&self, mtu: usize) {
        let Some((lo, hi)) = self.tun_mtu_bounds else { return };
        let want = u16::try_from(mtu).unwrap_or(u16::MAX).clamp(lo, hi);
        let was = self.tun_mtu.swap(want, Ordering::Relaxed);
        if was == want {
            return;
        }
        match self.tun.set_mtu(want) {
            Ok(()) => info!(tun = %self.tun_name, mtu = want, was, "TUN MTU follows the paths"),
            Err(e) => {
                self.tun_mtu.store(was, Ordering::Relaxed);
                warn!(tun = %self.tun_name, mtu = want, error = %e, "cannot set the TUN MTU");
            }
        }
    }

    /// What `mpvr status` shows, now.
    pub(super) fn snapshot(&self) -> status::Snapshot {
        let io = &self.io;
        let shell = status::ShellInfo {
            tun: &self.tun_name,
            uptime: self.epoch.elapsed(),
            link_name: &|l| self.link_name(l),
            io: io.named(),
            tun_mtu: Some((self.tun_mtu.load(Ordering::Relaxed), self.tun_mtu_bounds.is_some())),
            tun_offload: Some(self.tun.offload().to_string()),
            tun_queues: Some(self.tun.queues().to_string()),
            tun_queue_reads: self.tun_reads(),
            link_queue_reads: self.link_reads(),
            exit: self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            config: Some(self.config.lock().unwrap_or_else(|e| e.into_inner()).snap()),
            held_routes: self.held_routes.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        let now = self.now();
        let mut snap = {
            let node = self.node();
            status::snapshot(&node, now, &shell)
        };
        self.loss_window.lock().unwrap_or_else(|e| e.into_inner()).fill(&mut snap);
        snap
    }

    /// Sample every path's data counts for the recent loss in status.
    pub(super) fn sample_loss(&self) {
        let snap = self.snapshot();
        let at = self.epoch.elapsed().as_secs_f64();
        self.loss_window.lock().unwrap_or_else(|e| e.into_inner()).record(&snap, at);
    }

    /// The interface name of `link` (its index if never seen).
    pub(super) fn link_name(&self, link: LinkId) -> String {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names.get(&link).cloned().unwrap_or_else(|| format!("#{}", link.0))
    }

    pub(super) fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        // A panic while holding the lock is a bug; the state is still the
        // last consistent one, so keep going rather than cascade.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The counters, logged once at exit: node totals, then one line per link.
pub(super) fn log_summary(shared: &Shared, links: &Links) {
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
        io = %shared.io.named().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        tun_queue_reads = ?shared.tun_reads(),
        link_queue_reads = ?shared.link_reads(),
        "totals"
    );
}
