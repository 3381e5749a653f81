//! The node: one host's protocol state machine, free of I/O and clocks.
//!
//! Inputs: packets read from the TUN ([`Node::handle_tun_packet`]), datagrams
//! received on a link ([`Node::handle_datagram`]), timer expiry
//! ([`Node::handle_timeout`]) and link changes ([`Node::add_link`],
//! [`Node::remove_link`]), each with an explicit `now`. Outputs: datagrams to
//! send, written into a caller-owned [`Transmits`] batch, and plaintext to
//! deliver, returned as a range of the caller's own receive buffer. The
//! shell (or the simulator) sends, delivers and arms the timer from
//! [`Node::poll_timeout`]. There is no internal transmit queue to poll:
//! outputs go straight into the caller's batch, which saves a copy per packet.
//!
//! The packet path, in order:
//! - TUN -> [`Node::handle_tun_packet`]: read the destination, longest-prefix
//!   match to a next hop, let the [`Policy`] pick paths, take the next
//!   sequence number of the current session, seal once, queue one datagram
//!   with N paths. With no session yet the packet waits (bounded) while a
//!   Noise IK handshake runs over every path.
//! - link -> [`Node::handle_datagram`]: parse the header, check it is for us
//!   and from a neighbour, check the window (cheap, before any crypto), open,
//!   mark the window (only now), then deliver to the TUN or, on a relay,
//!   re-seal for the next hop and fan out on its paths (hop by hop: every hop
//!   deduplicates).
//!
//! The link monitor ([`super::monitor`]) runs from the timer: every path is
//! probed (probes and replies are sealed like data, on that path only), its
//! estimates and state follow, later copies of data credit their path, and
//! state changes become [`Event::PathChanged`]. The policy ([`Policy`])
//! picks paths from the ranking those states and costs give. The mesh
//! ([`super::mesh`]) advertises this host and its neighbours' costs, floods
//! what it hears, and puts the routes it computes over the configured ones.
//!
//! Sessions come from Noise IK handshakes ([`super::handshake`]) and follow
//! WireGuard's timers ([`super::session`]): rekey after 2 minutes, sessions
//! dropped after 3, initiations resent every 5 s, replayed initiations
//! refused by their timestamp, initiations rate-limited per source address
//! before any public-key work.
//!
//! Guarantees: a packet is delivered at most once per session (first copy
//! wins); nothing that fails authentication is delivered or changes the
//! window, the paths or any other state but the drop counters; every input
//! ends in a delivery, a transmission or exactly one counted [`DropReason`],
//! never a panic. No allocation per packet once the batch has grown.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::handshake::{self, HandshakeError, INIT_LEN, Identity, RESPONSE_LEN};
use super::ids::{HostId, LinkId, PathAddr, Seq};
use super::ip;
use super::mesh::{Advert, MIN_ADVERT_GAP, Mesh, MeshConfig, changed_enough};
use super::monitor::{
    Change, Credit, EXPECT_WITHIN, Health, MonitorConfig, MonitorConfigError, PassiveCounts, PathMonitor, ProbeBody,
    ReplyBody,
};
use super::policy::{Candidate, Policy, Ranking};
use super::route::{NextHop, RouteTable};
use super::session::{MAX_STAGED, Pending, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT, Session, Sessions, Staged};
use super::stats::{Count, DropReason, LinkStats, NodeStats};
use super::time::Time;
use super::transmit::Transmits;
use super::window::{MAX_WINDOW_PACKETS, MIN_WINDOW_PACKETS, Verdict};
use super::wire::{DEFAULT_HOP_LIMIT, HEADER_LEN, Header, MessageType, OVERHEAD, Packet, WireError};

/// Default interval after which a path that sent nothing gets a keepalive
/// (holds NAT mappings; WireGuard's persistent-keepalive value).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(25);
/// Largest inner packet that can be carried: a 65 535-byte IPv4 datagram
/// minus IP (20) and UDP (8) headers minus our overhead.
pub const MAX_PACKET_LIMIT: usize = 65_535 - 20 - 8 - OVERHEAD;
/// Default rate limit of initiations per source address and second.
pub const DEFAULT_HANDSHAKES_PER_SECOND: u32 = 10;
/// Most events kept for [`Node::poll_event`]; older ones are dropped.
const MAX_EVENTS: usize = 256;
/// Path state changes kept for [`Node::recent_changes`].
pub const MAX_RECENT_CHANGES: usize = 64;
/// Source addresses the initiation rate limiter remembers (then it starts over).
const MAX_LIMITED_SOURCES: usize = 4096;
/// Most paths a neighbour can have that were learned rather than configured.
pub const MAX_LEARNED_PATHS: usize = 8;
/// Smallest maximum packet size accepted (IPv4's minimum MTU).
pub const MIN_PACKET_LIMIT: usize = 68;

/// Settings of one node, validated by [`Node::new`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This host.
    pub host: HostId,
    /// Packets the dedup / anti-replay window covers per session.
    pub window_packets: u32,
    /// Hop limit put on packets this host originates.
    pub hop_limit: u8,
    /// Keepalive interval per path; `None` disables keepalives.
    pub keepalive: Option<Duration>,
    /// Largest TUN packet accepted (the TUN MTU).
    pub max_packet: usize,
    /// Duplication policy.
    pub policy: Policy,
    /// This host's X25519 private key.
    pub private_key: [u8; 32],
    /// Seed of the node's random generator (handshake ephemeral keys). The
    /// daemon takes it from the operating system; the simulator from its seed.
    pub rng_seed: [u8; 32],
    /// Wall-clock nanoseconds at `Time::ZERO`: handshake timestamps are
    /// `wall_epoch_ns + now`, and must grow across restarts.
    pub wall_epoch_ns: u64,
    /// Initiations accepted per second from one source address (after a burst of twice that).
    pub handshakes_per_second: u32,
    /// Probes and path states.
    pub monitor: MonitorConfig,
    /// Route advertisements and computed routes (`None`: static routes only).
    pub mesh: Option<MeshConfig>,
}

impl NodeConfig {
    /// Defaults for `host` with `private_key`.
    pub fn new(host: HostId, private_key: [u8; 32]) -> NodeConfig {
        NodeConfig {
            host,
            private_key,
            rng_seed: [0; 32],
            wall_epoch_ns: 0,
            handshakes_per_second: DEFAULT_HANDSHAKES_PER_SECOND,
            window_packets: super::window::DEFAULT_WINDOW_PACKETS,
            hop_limit: DEFAULT_HOP_LIMIT,
            keepalive: Some(DEFAULT_KEEPALIVE),
            max_packet: MAX_PACKET_LIMIT,
            policy: Policy::All,
            monitor: MonitorConfig::default(),
            mesh: Some(MeshConfig::default()),
        }
    }
}

/// A setting or topology change that would make the node wrong. Nothing is
/// changed when one is returned.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Window size out of range.
    #[error("window of {0} packets is out of range: use {MIN_WINDOW_PACKETS} to {MAX_WINDOW_PACKETS} (default 50000)")]
    WindowOutOfRange(u32),
    /// Hop limit 0.
    #[error("hop limit 0 would drop every packet: use 1 to 255 (default {DEFAULT_HOP_LIMIT})")]
    ZeroHopLimit,
    /// Max packet size out of range.
    #[error("maximum packet size {0} is out of range: use {MIN_PACKET_LIMIT} to {MAX_PACKET_LIMIT} bytes")]
    MaxPacketOutOfRange(usize),
    /// Keepalive shorter than a second.
    #[error("keepalive interval {0:?} is too short: use at least 1 s, or disable keepalives")]
    KeepaliveTooShort(Duration),
    /// A neighbour with this host's own id.
    #[error("{0} is this host itself and cannot be its own neighbour")]
    NeighbourIsSelf(HostId),
    /// The same neighbour twice.
    #[error("{0} is already a neighbour")]
    DuplicateNeighbour(HostId),
    /// Probe or path-state settings that cannot work.
    #[error(transparent)]
    Monitor(#[from] MonitorConfigError),
    /// A neighbour that was never added.
    #[error("{0} is not a neighbour")]
    UnknownNeighbour(HostId),
    /// A route whose next hop is not a neighbour.
    #[error("route {prefix} goes to {next}, which is not a neighbour: add it as a neighbour, or route via one")]
    UnknownNextHop {
        /// The route's prefix.
        prefix: IpNet,
        /// Its next hop.
        next: HostId,
    },
}

/// A remote host's UDP endpoint, optionally tied to one local link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where the remote host listens.
    pub remote: SocketAddr,
    /// Reach it only from this local link (`None`: from every link).
    pub link: Option<LinkId>,
}

/// A neighbour: a host this one shares a session with.
#[derive(Clone, Debug)]
pub struct NeighbourConfig {
    /// Its host id.
    pub host: HostId,
    /// Its X25519 public key.
    pub public_key: [u8; 32],
    /// Optional pre-shared key mixed into every handshake with it.
    pub psk: Option<[u8; 32]>,
    /// Its endpoints; paths are these crossed with the local links.
    pub endpoints: Vec<Endpoint>,
}

/// One path toward a neighbour and what was seen on it.
#[derive(Clone, Debug)]
pub struct PathState {
    /// Local link and remote endpoint.
    pub addr: PathAddr,
    /// Its local link is up.
    pub usable: bool,
    /// Learned from an authenticated packet rather than configured.
    pub learned: bool,
    /// Last time a copy was sent on it.
    pub last_tx: Option<Time>,
    /// Last time an authenticated datagram arrived on it.
    pub last_rx: Option<Time>,
    /// Copies sent.
    pub tx: Count,
    /// Authenticated datagrams received that were the first copy of their packet.
    pub first: Count,
    /// Authenticated later copies received (dropped as duplicates).
    pub later: Count,
    /// Last time a data packet (first or later copy) arrived on it.
    pub last_data: Option<Time>,
    /// Probes, estimates, passive counts and state.
    pub monitor: PathMonitor,
}

impl PathState {
    fn new(addr: PathAddr, learned: bool) -> PathState {
        PathState {
            addr,
            usable: true,
            learned,
            last_tx: None,
            last_rx: None,
            tx: Count::default(),
            first: Count::default(),
            later: Count::default(),
            last_data: None,
            monitor: PathMonitor::new(Time::ZERO),
        }
    }

    /// Whether it delivered data within `interval` of `now` (then it is probed less).
    fn busy(&self, now: Time, interval: Duration) -> bool {
        self.last_data.is_some_and(|t| now - t < interval)
    }
}

/// The paths of one neighbour as a passive tracker credits them.
struct PathCredit<'a>(&'a mut [PathState]);

impl Credit for PathCredit<'_> {
    fn paths(&self) -> usize {
        self.0.len()
    }

    fn expected(&self, i: usize, now: Time) -> bool {
        let p = &self.0[i];
        p.usable && p.last_rx.is_some_and(|t| now - t < EXPECT_WITHIN)
    }

    fn counts(&mut self, i: usize) -> &mut PassiveCounts {
        &mut self.0[i].monitor.local
    }
}

/// Per-neighbour counters.
#[derive(Clone, Debug, Default)]
pub struct NeighbourStats {
    /// Packets sealed for this neighbour (once each, whatever the copies).
    pub sealed: Count,
    /// Authenticated packets accepted from it (first copies).
    pub accepted: Count,
    /// Paths learned (or moved, when a NAT changed the source port) from
    /// authenticated packets.
    pub paths_learned: u64,
    /// Handshakes completed (as initiator or responder).
    pub handshakes: u64,
}

/// A neighbour's session and paths.
#[derive(Debug)]
pub struct Neighbour {
    host: HostId,
    public_key: [u8; 32],
    psk: [u8; 32],
    endpoints: Vec<Endpoint>,
    paths: Vec<PathState>,
    sessions: Sessions,
    stats: NeighbourStats,
    /// Its own policy, if not the node's.
    policy: Option<Policy>,
    /// Its paths ranked for `best:N` and `failover`.
    ranking: Ranking,
    /// It has been sent the whole route database on its current session.
    synced: bool,
}

impl Neighbour {
    /// Its host id.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Its paths, usable or not.
    pub fn paths(&self) -> &[PathState] {
        &self.paths
    }

    /// Its counters.
    pub fn stats(&self) -> &NeighbourStats {
        &self.stats
    }

    /// Whether a session with it exists.
    pub fn has_session(&self) -> bool {
        self.sessions.established()
    }

    /// Its paths ranked (for `best:N` and `failover`).
    pub fn ranking(&self) -> &Ranking {
        &self.ranking
    }

    /// Its policy, if set apart from the node's.
    pub fn policy(&self) -> Option<Policy> {
        self.policy
    }

    /// Call `take` for each path its policy (or `default`) copies onto now.
    fn select(&self, default: Policy, take: impl FnMut(usize)) {
        let usable = self.paths.iter().enumerate().filter(|(_, p)| p.usable).map(|(i, _)| i);
        self.policy.unwrap_or(default).select(usable, &self.ranking, take);
    }

    /// Re-rank its paths from their states and costs.
    fn rerank(&mut self) {
        let candidates: Vec<Candidate> = self
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.usable)
            .map(|(index, p)| Candidate { index, health: p.monitor.health(), cost: p.monitor.cost() })
            .collect();
        self.ranking.update(&candidates);
    }

    /// The session being sent on: when it was made, and whether this host started it.
    pub fn session(&self) -> Option<(Time, bool)> {
        self.sessions.current().map(|s| (s.created, s.initiator))
    }

    /// A handshake this host started is waiting for an answer.
    pub fn handshake_pending(&self) -> bool {
        self.sessions.pending.is_some()
    }

    /// Packets waiting for a session with it.
    pub fn staged(&self) -> usize {
        self.sessions.staged.len()
    }

    /// Note an authenticated datagram on the path it came from, learning the
    /// path if it is new; `first` is its length when it was the first copy.
    /// Returns the path's index.
    fn touch_path(&mut self, now: Time, link: LinkId, from: SocketAddr, first: Option<usize>) -> usize {
        let i = match self.paths.iter().position(|p| p.addr.link == link && p.addr.remote == from) {
            Some(i) => i,
            None => self.learn_path(PathAddr { link, remote: from }),
        };
        let p = &mut self.paths[i];
        if let Some(len) = first {
            p.first.add(len);
        }
        p.last_rx = Some(now);
        i
    }

    /// Remember a path an authenticated packet came from (a peer behind NAT,
    /// or one that roamed). One learned path per (local link, remote IP): a
    /// new port on the same pair moves it. At most [`MAX_LEARNED_PATHS`];
    /// past that the one heard from longest ago is replaced.
    fn learn_path(&mut self, addr: PathAddr) -> usize {
        self.stats.paths_learned += 1;
        let same_pair = self
            .paths
            .iter()
            .position(|p| p.learned && p.addr.link == addr.link && p.addr.remote.ip() == addr.remote.ip());
        let learned = self.paths.iter().filter(|p| p.learned).count();
        let slot = same_pair.or_else(|| {
            (learned >= MAX_LEARNED_PATHS)
                .then(|| {
                    self.paths
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.learned)
                        .min_by_key(|(_, p)| p.last_rx)
                        .map(|(i, _)| i)
                })
                .flatten()
        });
        let fresh = PathState::new(addr, true);
        match slot {
            Some(i) => {
                self.paths[i] = fresh;
                i
            }
            None => {
                self.paths.push(fresh);
                self.paths.len() - 1
            }
        }
    }

    /// Add the paths `link` brings for this neighbour's endpoints, and mark
    /// every path on `link` usable or not. Returns the indices of paths that
    /// went down, with their change.
    fn link_changed(&mut self, now: Time, link: LinkId, up: bool, changes: &mut Vec<(usize, Change)>) {
        if up {
            for e in &self.endpoints {
                if e.link.is_none_or(|l| l == link) {
                    let addr = PathAddr { link, remote: e.remote };
                    if !self.paths.iter().any(|p| p.addr == addr) {
                        self.paths.push(PathState::new(addr, false));
                    }
                }
            }
        }
        for (i, p) in self.paths.iter_mut().enumerate().filter(|(_, p)| p.addr.link == link) {
            p.usable = up;
            if !up && let Some(c) = p.monitor.link_down(now) {
                changes.push((i, c));
            }
        }
    }
}

/// What [`Node::handle_tun_packet`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The neighbour it goes to.
    pub next_hop: HostId,
    /// Its sequence number in the current session; `None` when it waits for
    /// a session (then it is sealed when the handshake completes).
    pub seq: Option<Seq>,
    /// How many copies were queued (0 while it waits).
    pub copies: usize,
}

/// Something the shell should log (rate-limited) or show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed: a new session with `peer`.
    SessionEstablished {
        /// The neighbour.
        peer: HostId,
        /// This host started it.
        initiator: bool,
    },
    /// An initiation claiming to be from `peer` was refused.
    HandshakeRejected {
        /// The host id it claimed.
        peer: HostId,
        /// Why.
        reason: HandshakeError,
    },
    /// No answer to initiations for [`REKEY_ATTEMPT_TIME`]: waiting packets dropped.
    HandshakeTimedOut {
        /// The neighbour.
        peer: HostId,
    },
    /// A path changed state.
    PathChanged(PathChange),
    /// The next hop toward a host changed (`None`: no mesh route any more).
    RouteChanged {
        /// The destination host.
        dest: HostId,
        /// Its next hop now.
        next: Option<HostId>,
        /// Cost through it, microseconds.
        cost: u64,
    },
}

/// A path's state change, kept by the node for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathChange {
    /// When.
    pub at: Time,
    /// The neighbour.
    pub peer: HostId,
    /// The path.
    pub path: PathAddr,
    /// From, to and why.
    pub change: Change,
}

/// A token bucket per source address for initiations.
#[derive(Debug, Default)]
struct InitLimiter {
    buckets: HashMap<IpAddr, (f64, Time)>,
}

impl InitLimiter {
    fn allow(&mut self, from: IpAddr, now: Time, per_second: u32) -> bool {
        if self.buckets.len() >= MAX_LIMITED_SOURCES && !self.buckets.contains_key(&from) {
            self.buckets.clear();
        }
        let cap = f64::from(per_second) * 2.0;
        let (tokens, last) = self.buckets.entry(from).or_insert((cap, now));
        *tokens = (*tokens + (now - *last).as_secs_f64() * f64::from(per_second)).min(cap);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What [`Node::handle_datagram`] did with a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Write these bytes of the caller's buffer (the decrypted IP packet) to the TUN.
    Deliver(Range<usize>),
    /// Relayed: re-sealed for `next_hop` and queued on its paths.
    Forwarded {
        /// The neighbour it goes to.
        next_hop: HostId,
        /// Copies queued.
        copies: usize,
    },
    /// A keepalive: it refreshed its path, nothing to deliver.
    Keepalive,
    /// A probe (answered) or a probe reply (measured).
    Probe,
    /// A handshake message, handled (a session may have been established).
    Handshake,
    /// A route advertisement, taken (and flooded on) or already known.
    Advert,
    /// Dropped and counted.
    Dropped(DropReason),
}

#[derive(Debug)]
struct LinkEntry {
    id: LinkId,
    stats: LinkStats,
}

/// One host's protocol state.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    links: Vec<LinkEntry>,
    neighbours: Vec<Neighbour>,
    index: HashMap<HostId, usize>,
    /// The routes in use: the configured ones, with the mesh's on top.
    routes: RouteTable,
    /// The configured routes.
    static_routes: RouteTable,
    /// Prefixes routed by the mesh, with the host that advertised them.
    mesh_prefixes: BTreeMap<IpNet, HostId>,
    mesh: Mesh,
    /// Scratch buffer for encoding adverts.
    advert_buf: Vec<u8>,
    stats: NodeStats,
    /// Scratch list of chosen path indices; reused so sending never allocates.
    chosen: Vec<usize>,
    identity: Identity,
    rng: ChaCha8Rng,
    limiter: InitLimiter,
    events: VecDeque<Event>,
    recent: VecDeque<PathChange>,
    /// The latest `now` any entry point was given (for link changes, which come without one).
    clock: Time,
    /// Scratch list of path changes.
    changes: Vec<(usize, Change)>,
}

fn wire_drop(e: WireError) -> DropReason {
    match e {
        WireError::Truncated => DropReason::Truncated,
        WireError::BadVersion(_) => DropReason::BadVersion,
        WireError::UnknownType(_) => DropReason::UnknownType,
        WireError::BadFlags(_) => DropReason::BadFlags,
        WireError::ZeroHostId => DropReason::ZeroHostId,
    }
}

impl Node {
    /// A node with no links, neighbours or routes.
    pub fn new(cfg: NodeConfig) -> Result<Node, ConfigError> {
        if !(MIN_WINDOW_PACKETS..=MAX_WINDOW_PACKETS).contains(&cfg.window_packets) {
            return Err(ConfigError::WindowOutOfRange(cfg.window_packets));
        }
        if cfg.hop_limit == 0 {
            return Err(ConfigError::ZeroHopLimit);
        }
        if !(MIN_PACKET_LIMIT..=MAX_PACKET_LIMIT).contains(&cfg.max_packet) {
            return Err(ConfigError::MaxPacketOutOfRange(cfg.max_packet));
        }
        if let Some(k) = cfg.keepalive
            && k < Duration::from_secs(1)
        {
            return Err(ConfigError::KeepaliveTooShort(k));
        }
        cfg.monitor.validate()?;
        Ok(Node {
            links: Vec::new(),
            neighbours: Vec::new(),
            index: HashMap::new(),
            routes: RouteTable::new(),
            static_routes: RouteTable::new(),
            mesh_prefixes: BTreeMap::new(),
            mesh: Mesh::default(),
            advert_buf: Vec::new(),
            stats: NodeStats::default(),
            chosen: Vec::new(),
            identity: Identity::new(cfg.private_key),
            rng: ChaCha8Rng::from_seed(cfg.rng_seed),
            limiter: InitLimiter::default(),
            events: VecDeque::new(),
            recent: VecDeque::new(),
            clock: Time::ZERO,
            changes: Vec::new(),
            cfg,
        })
    }

    /// This host.
    pub fn host(&self) -> HostId {
        self.cfg.host
    }

    /// This host's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.identity.public()
    }

    /// The oldest event not yet taken.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The last [`MAX_RECENT_CHANGES`] path state changes, oldest first.
    pub fn recent_changes(&self) -> impl Iterator<Item = &PathChange> {
        self.recent.iter()
    }

    fn tick(&mut self, now: Time) {
        self.clock = self.clock.max(now);
    }

    /// Record and announce the changes in `self.changes` of neighbour `idx`'s paths.
    fn flush_changes(&mut self, idx: usize) {
        let peer = self.neighbours[idx].host;
        let mut changes = std::mem::take(&mut self.changes);
        for (i, change) in changes.drain(..) {
            let path = self.neighbours[idx].paths[i].addr;
            let pc = PathChange { at: self.clock, peer, path, change };
            if self.recent.len() >= MAX_RECENT_CHANGES {
                self.recent.pop_front();
            }
            self.recent.push_back(pc);
            self.event(Event::PathChanged(pc));
        }
        self.changes = changes;
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// The settings it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Node-wide counters.
    pub fn stats(&self) -> &NodeStats {
        &self.stats
    }

    /// Local links that are up, with their counters.
    pub fn links(&self) -> impl Iterator<Item = (LinkId, &LinkStats)> {
        self.links.iter().map(|l| (l.id, &l.stats))
    }

    /// Neighbours in the order they were added.
    pub fn neighbours(&self) -> impl Iterator<Item = &Neighbour> {
        self.neighbours.iter()
    }

    /// One neighbour.
    pub fn neighbour(&self, host: HostId) -> Option<&Neighbour> {
        self.index.get(&host).map(|&i| &self.neighbours[i])
    }

    /// The route table in use.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The mesh: route database and computed next hops.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The host that advertised `prefix`, if the route to it came from the mesh.
    pub fn mesh_origin(&self, prefix: IpNet) -> Option<HostId> {
        self.mesh_prefixes.get(&prefix.trunc()).copied()
    }

    /// The routes in use: the configured ones, then for every host the mesh
    /// reaches, its advertised prefixes through the mesh's next hop (never
    /// over one of this host's own prefixes).
    fn rebuild_routes(&mut self) {
        let mut t = self.static_routes.clone();
        self.mesh_prefixes.clear();
        for (origin, r) in &self.mesh.routes {
            let Some((adv, _)) = self.mesh.db.get(origin) else { continue };
            for p in &adv.prefixes {
                if self.static_routes.get(*p) == Some(NextHop::Local) {
                    continue;
                }
                t.insert(*p, NextHop::Host(r.next));
                self.mesh_prefixes.insert(p.trunc(), *origin);
            }
        }
        self.routes = t;
    }

    /// This host's neighbours reachable now, with the cost of their best
    /// path that is not down (microseconds), by host id.
    fn direct_costs(&self) -> Vec<(HostId, u32)> {
        let mut v: Vec<(HostId, u32)> = self
            .neighbours
            .iter()
            .filter(|n| n.sessions.can_send())
            .filter_map(|n| {
                let best = n
                    .paths
                    .iter()
                    .filter(|p| p.usable && p.monitor.health() != Health::Down)
                    .filter_map(|p| p.monitor.cost())
                    .min()?;
                Some((n.host, u32::try_from(best.as_micros()).unwrap_or(u32::MAX).max(1)))
            })
            .collect();
        v.sort();
        v
    }

    /// Encode `advert` into `self.advert_buf`.
    fn encode_advert(&mut self, advert: &Advert) {
        let mut buf = std::mem::take(&mut self.advert_buf);
        advert.encode(&mut buf);
        self.advert_buf = buf;
    }

    /// Seal the advert in `self.advert_buf` for neighbour `idx` on all its usable paths.
    fn send_advert(&mut self, now: Time, idx: usize, out: &mut Transmits) {
        self.choose_all(idx);
        let buf = std::mem::take(&mut self.advert_buf);
        if self.seal_to_chosen(now, idx, MessageType::RouteAdvert, 1, &buf, out).is_ok() {
            self.stats.adverts_out.add(OVERHEAD + buf.len());
        }
        self.advert_buf = buf;
    }

    /// Send `advert` to every synced neighbour but `except`.
    fn flood(&mut self, now: Time, advert: &Advert, except: Option<HostId>, out: &mut Transmits) {
        self.encode_advert(advert);
        for idx in 0..self.neighbours.len() {
            let n = &self.neighbours[idx];
            if Some(n.host) != except && n.sessions.can_send() && n.synced {
                self.send_advert(now, idx, out);
            }
        }
    }

    /// The mesh's timer work: age the database, send it whole to neighbours
    /// with a new session, advertise this host when due or when its
    /// neighbours changed enough, recompute the routes.
    fn mesh_tick(&mut self, now: Time, out: &mut Transmits) {
        let Some(mc) = self.cfg.mesh else { return };
        let me = self.cfg.host;
        let mut changed = self.mesh.expire(now, mc.max_age, me);
        for idx in 0..self.neighbours.len() {
            let n = &mut self.neighbours[idx];
            if !n.sessions.can_send() {
                n.synced = false;
                continue;
            }
            if !n.synced {
                n.synced = true;
                let adverts: Vec<Advert> =
                    self.mesh.db.values().map(|(a, _)| a.clone()).filter(|a| a.origin != me).collect();
                for a in adverts {
                    self.encode_advert(&a);
                    self.send_advert(now, idx, out);
                }
                // And this host's own, fresh, to everyone.
                self.mesh.last_advert = None;
            }
        }
        let direct = self.direct_costs();
        let due = match self.mesh.last_advert {
            None => true,
            Some(t) => {
                now - t >= mc.refresh || (now - t >= MIN_ADVERT_GAP && changed_enough(&self.mesh.advertised, &direct))
            }
        };
        if due {
            let stamp = self.cfg.wall_epoch_ns.saturating_add(now.as_nanos()) / 1_000_000;
            self.mesh.seq = (self.mesh.seq + 1).max(stamp);
            let prefixes = self.static_routes.iter().filter(|(_, n)| *n == NextHop::Local).map(|(p, _)| p).collect();
            let advert = Advert { origin: me, seq: self.mesh.seq, prefixes, neighbours: direct.clone() };
            self.mesh.db.insert(me, (advert.clone(), now));
            self.mesh.advertised.clone_from(&direct);
            self.mesh.last_advert = Some(now);
            self.flood(now, &advert, None, out);
            changed = true;
        }
        if self.recompute(now, &direct) || changed {
            self.rebuild_routes();
        }
    }

    /// Recompute the mesh routes; announce next-hop changes. True if any.
    fn recompute(&mut self, now: Time, direct: &[(HostId, u32)]) -> bool {
        let before = self.mesh.routes.clone();
        if !self.mesh.compute(self.cfg.host, direct, now) {
            return false;
        }
        let mut events = Vec::new();
        for (dest, r) in &self.mesh.routes {
            if before.get(dest).is_none_or(|b| b.next != r.next) {
                events.push(Event::RouteChanged { dest: *dest, next: Some(r.next), cost: r.cost });
            }
        }
        for dest in before.keys().filter(|d| !self.mesh.routes.contains_key(d)) {
            events.push(Event::RouteChanged { dest: *dest, next: None, cost: 0 });
        }
        for e in events {
            self.event(e);
        }
        true
    }

    /// An authenticated advert from neighbour `idx`: take it if newer, flood
    /// it on to the other neighbours, recompute the routes.
    fn on_advert(&mut self, now: Time, idx: usize, body: &[u8], out: &mut Transmits) -> Result<Received, DropReason> {
        let advert = Advert::decode(body).map_err(|_| DropReason::BadAdvert)?;
        self.stats.adverts_in += 1;
        if self.cfg.mesh.is_none() {
            return Ok(Received::Advert);
        }
        if advert.origin == self.cfg.host {
            // Our own from before a restart: advertise again above it.
            if advert.seq > self.mesh.seq {
                self.mesh.seq = advert.seq;
                self.mesh.last_advert = None;
            }
            return Ok(Received::Advert);
        }
        if self.mesh.accept(advert.clone(), now) {
            let from = self.neighbours[idx].host;
            self.flood(now, &advert, Some(from), out);
            let direct = self.direct_costs();
            self.recompute(now, &direct);
            self.rebuild_routes();
        }
        Ok(Received::Advert)
    }

    /// Add a neighbour (its paths over the links that are up now).
    pub fn add_neighbour(&mut self, n: NeighbourConfig) -> Result<(), ConfigError> {
        if n.host == self.cfg.host {
            return Err(ConfigError::NeighbourIsSelf(n.host));
        }
        if self.index.contains_key(&n.host) {
            return Err(ConfigError::DuplicateNeighbour(n.host));
        }
        let mut neighbour = Neighbour {
            host: n.host,
            public_key: n.public_key,
            psk: n.psk.unwrap_or([0; 32]),
            endpoints: n.endpoints,
            paths: Vec::new(),
            sessions: Sessions::default(),
            stats: NeighbourStats::default(),
            policy: None,
            ranking: Ranking::default(),
            synced: false,
        };
        for l in &self.links {
            neighbour.link_changed(self.clock, l.id, true, &mut self.changes);
        }
        self.index.insert(n.host, self.neighbours.len());
        self.neighbours.push(neighbour);
        Ok(())
    }

    /// Replace a neighbour's endpoints. Paths that remain keep their
    /// counters; paths no endpoint names any more are forgotten.
    pub fn set_endpoints(&mut self, host: HostId, endpoints: Vec<Endpoint>) -> Result<(), ConfigError> {
        let idx = *self.index.get(&host).ok_or(ConfigError::UnknownNeighbour(host))?;
        let n = &mut self.neighbours[idx];
        n.endpoints = endpoints;
        let endpoints = &n.endpoints;
        n.paths.retain(|p| {
            p.learned || endpoints.iter().any(|e| e.remote == p.addr.remote && e.link.is_none_or(|l| l == p.addr.link))
        });
        for l in &self.links {
            n.link_changed(self.clock, l.id, true, &mut self.changes);
        }
        Ok(())
    }

    /// Give neighbour `host` its own policy (`None`: the node's).
    pub fn set_policy(&mut self, host: HostId, policy: Option<Policy>) -> Result<(), ConfigError> {
        let idx = *self.index.get(&host).ok_or(ConfigError::UnknownNeighbour(host))?;
        self.neighbours[idx].policy = policy;
        Ok(())
    }

    /// Route `prefix` to `next`: this host, or a neighbour.
    pub fn add_route(&mut self, prefix: IpNet, next: NextHop) -> Result<Option<NextHop>, ConfigError> {
        if let NextHop::Host(h) = next
            && !self.index.contains_key(&h)
        {
            return Err(ConfigError::UnknownNextHop { prefix, next: h });
        }
        let old = self.static_routes.insert(prefix, next);
        self.rebuild_routes();
        Ok(old)
    }

    /// Remove the route for exactly `prefix`.
    pub fn remove_route(&mut self, prefix: IpNet) -> Option<NextHop> {
        let old = self.static_routes.remove(prefix);
        self.rebuild_routes();
        old
    }

    /// A local link came up at `now` (idempotent): paths over it are used from now on.
    pub fn add_link(&mut self, now: Time, link: LinkId) {
        self.tick(now);
        if !self.links.iter().any(|l| l.id == link) {
            self.links.push(LinkEntry { id: link, stats: LinkStats::default() });
        }
        for n in &mut self.neighbours {
            n.link_changed(self.clock, link, true, &mut self.changes);
        }
    }

    /// A local link went down or away at `now`: its paths get no more copies. Its
    /// paths keep their counters and are used again if it comes back.
    pub fn remove_link(&mut self, now: Time, link: LinkId) {
        self.tick(now);
        self.links.retain(|l| l.id != link);
        for idx in 0..self.neighbours.len() {
            self.neighbours[idx].link_changed(self.clock, link, false, &mut self.changes);
            self.neighbours[idx].rerank();
            self.flush_changes(idx);
        }
    }

    /// A packet read from the TUN: route it, seal it once, queue a copy on
    /// every path the policy picks.
    pub fn handle_tun_packet(&mut self, now: Time, packet: &[u8], out: &mut Transmits) -> Result<Sent, DropReason> {
        self.tick(now);
        self.stats.tun_in.add(packet.len());
        let r = self.route_tun_packet(now, packet, out);
        if let Err(reason) = r {
            self.stats.drops.add(reason);
        }
        r
    }

    fn route_tun_packet(&mut self, now: Time, packet: &[u8], out: &mut Transmits) -> Result<Sent, DropReason> {
        if packet.len() > self.cfg.max_packet {
            return Err(DropReason::TooBig);
        }
        let dst = ip::destination(packet).map_err(|_| DropReason::MalformedIp)?;
        let next = match self.routes.lookup(dst) {
            None => return Err(DropReason::NoRoute),
            Some(NextHop::Local) => return Err(DropReason::LocalDestination),
            Some(NextHop::Host(h)) => h,
        };
        let idx = self.index[&next];
        let sent = self.send_data(now, idx, self.cfg.hop_limit, packet, out)?;
        Ok(Sent { next_hop: next, seq: sent.map(|(seq, _)| seq), copies: sent.map_or(0, |(_, c)| c) })
    }

    /// Seal `packet` for neighbour `idx` on the paths the policy picks, or,
    /// with no session yet, hold it and start a handshake. `Ok(None)`: held.
    fn send_data(
        &mut self,
        now: Time,
        idx: usize,
        hop_limit: u8,
        packet: &[u8],
        out: &mut Transmits,
    ) -> Result<Option<(Seq, usize)>, DropReason> {
        self.choose_by_policy(idx);
        if self.chosen.is_empty() {
            return Err(DropReason::NoPath);
        }
        if self.neighbours[idx].sessions.sending(now).is_some() {
            let r = self.seal_to_chosen(now, idx, MessageType::Data, hop_limit, packet, out).map(Some);
            self.maybe_rekey(now, idx, out);
            return r;
        }
        let n = &mut self.neighbours[idx];
        if n.sessions.staged.len() >= MAX_STAGED {
            return Err(DropReason::NoSession);
        }
        n.sessions.staged.push_back(Staged { hop_limit, packet: packet.to_vec() });
        self.maybe_rekey(now, idx, out);
        Ok(None)
    }

    /// Start a handshake with neighbour `idx` if it needs one.
    fn maybe_rekey(&mut self, now: Time, idx: usize, out: &mut Transmits) {
        if self.neighbours[idx].sessions.wants_handshake(now) {
            self.initiate(now, idx, None, out);
        }
    }

    /// Send an initiation to neighbour `idx` on all its usable paths.
    /// `started` carries over the start of an attempt being retried.
    fn initiate(&mut self, now: Time, idx: usize, started: Option<Time>, out: &mut Transmits) {
        self.choose_all(idx);
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let timestamp = self.cfg.wall_epoch_ns.saturating_add(now.as_nanos());
        let n = &mut self.neighbours[idx];
        let key_phase = n.sessions.pending.as_ref().map_or_else(|| n.sessions.free_slot(), |p| p.key_phase);
        let mut init = [0u8; INIT_LEN];
        let _ = handshake::initiate(
            seed,
            &self.identity,
            &n.public_key,
            &n.psk,
            self.cfg.host,
            n.host,
            key_phase,
            timestamp,
            &mut init,
        );
        n.sessions.pending =
            Some(Pending { seed, timestamp, init, key_phase, started: started.unwrap_or(now), last_sent: now });
        self.stats.handshakes_out += 1;
        self.send_plain(now, idx, MessageType::HandshakeInit, &init, out);
    }

    /// Queue an unsealed (handshake) message for neighbour `idx` on the paths
    /// in `self.chosen`.
    fn send_plain(&mut self, now: Time, idx: usize, msg_type: MessageType, payload: &[u8], out: &mut Transmits) {
        if self.chosen.is_empty() {
            return;
        }
        let n = &mut self.neighbours[idx];
        let wire_len = HEADER_LEN + payload.len();
        for &i in &self.chosen {
            let p = &mut n.paths[i];
            p.last_tx = Some(now);
            p.tx.add(wire_len);
            out.add_path(p.addr);
            if let Some(l) = self.links.iter_mut().find(|l| l.id == p.addr.link) {
                l.stats.tx.add(wire_len);
            }
        }
        let header =
            Header { msg_type, hop_limit: 1, key_phase: false, sender: self.cfg.host, receiver: n.host, seq: Seq(0) };
        let copies = out.push_plain(&header, payload);
        self.stats.copies_out.packets += copies as u64;
        self.stats.copies_out.bytes += (copies * wire_len) as u64;
    }

    /// A datagram received on `link` from `from`. `datagram` is opened in
    /// place; on [`Received::Deliver`] the IP packet is the returned range of it.
    pub fn handle_datagram(
        &mut self,
        now: Time,
        link: LinkId,
        from: SocketAddr,
        datagram: &mut [u8],
        out: &mut Transmits,
    ) -> Received {
        self.tick(now);
        self.stats.datagrams_in.add(datagram.len());
        let Some(li) = self.links.iter().position(|l| l.id == link) else {
            self.stats.drops.add(DropReason::UnknownLink);
            return Received::Dropped(DropReason::UnknownLink);
        };
        self.links[li].stats.rx.add(datagram.len());
        match self.receive(now, link, from, datagram, out) {
            Ok(r) => r,
            Err(reason) => {
                self.stats.drops.add(reason);
                self.links[li].stats.drops.add(reason);
                Received::Dropped(reason)
            }
        }
    }

    fn receive(
        &mut self,
        now: Time,
        link: LinkId,
        from: SocketAddr,
        datagram: &mut [u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let mut packet = Packet::new_checked(&mut *datagram).map_err(wire_drop)?;
        let header = Header::parse(&packet).map_err(wire_drop)?;
        if !matches!(
            header.msg_type,
            MessageType::Data
                | MessageType::Keepalive
                | MessageType::Probe
                | MessageType::ProbeReply
                | MessageType::RouteAdvert
                | MessageType::HandshakeInit
                | MessageType::HandshakeResponse
        ) {
            return Err(DropReason::Unsupported);
        }
        if header.receiver != self.cfg.host {
            return Err(DropReason::WrongReceiver);
        }
        let idx = *self.index.get(&header.sender).ok_or(DropReason::UnknownSender)?;
        match header.msg_type {
            MessageType::HandshakeInit => return self.on_initiation(now, idx, link, from, packet.payload(), out),
            MessageType::HandshakeResponse => return self.on_response(now, idx, link, from, packet.payload(), out),
            _ => {}
        }
        let n = &mut self.neighbours[idx];
        let session = n.sessions.receiving(header.key_phase, now).ok_or(DropReason::NoSession)?;
        // Cheap replay/duplicate check before any cryptography.
        match session.window.check(header.seq) {
            Verdict::Fresh => {}
            Verdict::TooOld => return Err(DropReason::TooOld),
            Verdict::Duplicate => {
                // A later copy. Authenticated too (one more open per copy):
                // only an authenticated copy may credit its path or teach a
                // new one (the peer moved, and its copies there lose the race).
                let (head, sealed) = packet.split_mut();
                session.keys.open(header.seq, head, sealed).map_err(|_| DropReason::AuthFailed)?;
                let wire_len = datagram.len();
                let pi = n.touch_path(now, link, from, None);
                let p = &mut n.paths[pi];
                p.later.add(wire_len);
                if header.msg_type == MessageType::Data {
                    p.last_data = Some(now);
                    let session = n.sessions.receiving(header.key_phase, now).ok_or(DropReason::NoSession)?;
                    session.passive.record(now, header.seq.0, pi, false, &mut PathCredit(&mut n.paths));
                }
                return Err(DropReason::Duplicate);
            }
        }
        let (head, sealed) = packet.split_mut();
        let plain_len = session.keys.open(header.seq, head, sealed).map_err(|_| DropReason::AuthFailed)?;
        // Authenticated: only now may state change.
        session.window.mark(header.seq);
        let wire_len = HEADER_LEN + plain_len + super::wire::TAG_LEN;
        n.stats.accepted.add(wire_len);
        let pi = n.touch_path(now, link, from, Some(wire_len));
        if header.msg_type == MessageType::Data {
            n.paths[pi].last_data = Some(now);
            if let Some(session) = n.sessions.receiving(header.key_phase, now) {
                session.passive.record(now, header.seq.0, pi, true, &mut PathCredit(&mut n.paths));
            }
        }
        if n.sessions.confirm(header.key_phase) {
            // The initiator used the session: it is ours to send on now.
            self.event(Event::SessionEstablished { peer: header.sender, initiator: false });
            self.flush_staged(now, idx, out);
        }
        let plain = HEADER_LEN..HEADER_LEN + plain_len;
        match header.msg_type {
            MessageType::Keepalive => {
                self.stats.keepalives_in += 1;
                return Ok(Received::Keepalive);
            }
            MessageType::Probe => return self.on_probe(now, idx, pi, &datagram[plain], out),
            MessageType::ProbeReply => return self.on_probe_reply(now, idx, link, &datagram[plain]),
            MessageType::RouteAdvert => return self.on_advert(now, idx, &datagram[plain], out),
            _ => {}
        }
        let dst = ip::destination(&datagram[plain.clone()]).map_err(|_| DropReason::MalformedIp)?;
        match self.routes.lookup(dst) {
            None | Some(NextHop::Local) => {
                self.stats.tun_out.add(plain_len);
                Ok(Received::Deliver(plain))
            }
            Some(NextHop::Host(next)) => {
                if next == header.sender {
                    return Err(DropReason::Bounce);
                }
                if header.hop_limit <= 1 {
                    return Err(DropReason::HopLimit);
                }
                let next_idx = self.index[&next];
                let sent = self.send_data(now, next_idx, header.hop_limit - 1, &datagram[plain], out)?;
                self.stats.forwarded.add(plain_len);
                Ok(Received::Forwarded { next_hop: next, copies: sent.map_or(0, |(_, c)| c) })
            }
        }
    }

    /// An authenticated probe came on path `pi` of neighbour `idx`: answer
    /// it on that path, with this end's counts for the path.
    fn on_probe(
        &mut self,
        now: Time,
        idx: usize,
        pi: usize,
        body: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let probe = ProbeBody::decode(body).ok_or(DropReason::BadProbe)?;
        let counts = self.neighbours[idx].paths[pi].monitor.local;
        let mut reply = [0u8; ReplyBody::LEN];
        ReplyBody { probe, received: now.as_nanos(), counts }.encode(&mut reply);
        self.chosen.clear();
        self.chosen.push(pi);
        self.seal_to_chosen(now, idx, MessageType::ProbeReply, 1, &reply, out)?;
        Ok(Received::Probe)
    }

    /// An authenticated probe reply: measure the path its probe went on.
    fn on_probe_reply(&mut self, now: Time, idx: usize, link: LinkId, body: &[u8]) -> Result<Received, DropReason> {
        let reply = ReplyBody::decode(body).ok_or(DropReason::BadProbe)?;
        let cfg = self.cfg.monitor;
        let n = &mut self.neighbours[idx];
        let pi = usize::from(reply.probe.path);
        // The reply comes back on the link its probe left from.
        let Some(p) = n.paths.get_mut(pi).filter(|p| p.addr.link == link && p.usable) else {
            return Ok(Received::Probe);
        };
        if p.monitor.on_reply(now, &reply)
            && let Some(c) = p.monitor.evaluate(now, &cfg, p.last_rx)
        {
            self.changes.push((pi, c));
            n.rerank();
            self.flush_changes(idx);
        }
        Ok(Received::Probe)
    }

    /// Probe the paths of neighbour `idx` that are due, give up probes
    /// unanswered too long, credit settled data, and run the state machine.
    fn monitor_paths(&mut self, now: Time, idx: usize, out: &mut Transmits) {
        let cfg = self.cfg.monitor;
        let n = &mut self.neighbours[idx];
        let can_send = n.sessions.can_send();
        n.sessions.settle(now, &mut PathCredit(&mut n.paths));
        for pi in 0..n.paths.len().min(usize::from(u8::MAX) + 1) {
            let n = &mut self.neighbours[idx];
            let p = &mut n.paths[pi];
            if !p.usable {
                continue;
            }
            p.monitor.expire(now);
            if can_send && p.monitor.next_probe(&cfg, p.busy(now, cfg.interval)) <= now {
                let id = p.monitor.sent_probe(now);
                let mut body = [0u8; ProbeBody::LEN];
                ProbeBody { id, path: pi as u8, sent: now.as_nanos() }.encode(&mut body);
                self.chosen.clear();
                self.chosen.push(pi);
                if let Err(reason) = self.seal_to_chosen(now, idx, MessageType::Probe, 1, &body, out) {
                    self.stats.drops.add(reason);
                }
            }
            let p = &mut self.neighbours[idx].paths[pi];
            if let Some(c) = p.monitor.evaluate(now, &cfg, p.last_rx) {
                self.changes.push((pi, c));
            }
        }
        self.neighbours[idx].rerank();
        self.flush_changes(idx);
    }

    /// When the link monitor of neighbour `n` wants to run next.
    fn next_monitor_timer(&self, n: &Neighbour) -> Option<Time> {
        let cfg = &self.cfg.monitor;
        let can_send = n.sessions.can_send();
        n.paths
            .iter()
            .take(usize::from(u8::MAX) + 1)
            .filter(|p| p.usable)
            .flat_map(|p| {
                let probe = can_send.then(|| p.monitor.next_probe(cfg, p.busy(self.clock, cfg.interval)));
                [probe, p.monitor.next_loss(), p.monitor.next_silence(cfg, p.last_rx)]
            })
            .flatten()
            .chain(n.sessions.next_settle())
            .min()
    }

    /// Handshake messages cost public-key work: at most
    /// `handshakes_per_second` per source address, checked before any.
    fn rate_limit(&mut self, now: Time, from: SocketAddr) -> Result<(), DropReason> {
        if self.limiter.allow(from.ip(), now, self.cfg.handshakes_per_second) {
            Ok(())
        } else {
            Err(DropReason::RateLimited)
        }
    }

    fn on_initiation(
        &mut self,
        now: Time,
        idx: usize,
        link: LinkId,
        from: SocketAddr,
        msg: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        self.rate_limit(now, from)?;
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let n = &self.neighbours[idx];
        let mut reply = [0u8; RESPONSE_LEN];
        let peer = n.host;
        let slot = n.sessions.free_slot();
        let accepted =
            handshake::respond(seed, &self.identity, &n.public_key, &n.psk, peer, self.cfg.host, slot, msg, &mut reply)
                .map_err(|reason| {
                    self.event(Event::HandshakeRejected { peer, reason });
                    match reason {
                        HandshakeError::Invalid => DropReason::HandshakeInvalid,
                        HandshakeError::WrongKey => DropReason::HandshakeWrongKey,
                    }
                })?;
        let n = &mut self.neighbours[idx];
        if n.sessions.last_init_timestamp.is_some_and(|last| accepted.timestamp <= last) {
            // A replay, or a later copy of one initiation sent on several
            // paths (or sent again after crossing ours). If the session it
            // made is still unconfirmed, the response may have been lost:
            // answer again, on the path this copy came by if it is a known
            // one (no new path from a copy; the response is smaller).
            if n.sessions.last_init_timestamp == Some(accepted.timestamp)
                && let Some(response) = n.sessions.unconfirmed_response()
                && let Some(pi) = n.paths.iter().position(|p| p.usable && p.addr.link == link && p.addr.remote == from)
            {
                self.chosen.clear();
                self.chosen.push(pi);
                self.send_plain(now, idx, MessageType::HandshakeResponse, &response, out);
            }
            return Err(DropReason::HandshakeReplay);
        }
        n.sessions.last_init_timestamp = Some(accepted.timestamp);
        if let Some(p) = &n.sessions.pending
            && self.cfg.host < peer
        {
            // Both started at once: the lower host id's handshake goes on.
            // Its initiation may have been lost (the peer was not up yet), so
            // the same initiation goes again now rather than after the retry
            // timeout; a peer that had it refuses the copy as a replay.
            let init = p.init;
            self.choose_all(idx);
            self.send_plain(now, idx, MessageType::HandshakeInit, &init, out);
            return Err(DropReason::HandshakeCrossed);
        }
        n.sessions.pending = None;
        let session = Session::new(accepted.keys, self.cfg.window_packets, now, false, accepted.key_phase);
        n.sessions.install(slot, session);
        n.sessions.last_response = Some((slot, reply));
        n.stats.handshakes += 1;
        n.touch_path(now, link, from, Some(HEADER_LEN + msg.len()));
        self.stats.handshakes_in += 1;
        self.choose_all(idx);
        self.send_plain(now, idx, MessageType::HandshakeResponse, &reply, out);
        Ok(Received::Handshake)
    }

    fn on_response(
        &mut self,
        now: Time,
        idx: usize,
        link: LinkId,
        from: SocketAddr,
        msg: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        self.rate_limit(now, from)?;
        let n = &mut self.neighbours[idx];
        let Some(pending) = n.sessions.pending.as_ref() else {
            // Later copies of a response already used, or a stray one.
            return Err(DropReason::HandshakeUnexpected);
        };
        let key_phase = pending.key_phase;
        // Rebuild the initiator's state (same seed, same message) and try
        // this response with it; a bad one leaves the handshake as it was.
        let mut again = [0u8; INIT_LEN];
        let state = handshake::initiate(
            pending.seed,
            &self.identity,
            &n.public_key,
            &n.psk,
            self.cfg.host,
            n.host,
            key_phase,
            pending.timestamp,
            &mut again,
        );
        debug_assert_eq!(again, pending.init);
        let (keys, remote_phase) = handshake::finish(state, msg).map_err(|_| DropReason::HandshakeInvalid)?;
        n.sessions.pending = None;
        n.sessions.install(key_phase, Session::new(keys, self.cfg.window_packets, now, true, remote_phase));
        n.stats.handshakes += 1;
        n.touch_path(now, link, from, Some(HEADER_LEN + msg.len()));
        let peer = n.host;
        self.event(Event::SessionEstablished { peer, initiator: true });
        if !self.flush_staged(now, idx, out) {
            // Confirm the session to the responder even with nothing to say.
            self.keepalive(now, idx, None, out);
        }
        Ok(Received::Handshake)
    }

    /// Seal and send the packets waiting for a session with neighbour `idx`.
    /// False if there were none.
    fn flush_staged(&mut self, now: Time, idx: usize, out: &mut Transmits) -> bool {
        let staged = std::mem::take(&mut self.neighbours[idx].sessions.staged);
        let any = !staged.is_empty();
        for s in staged {
            self.choose_by_policy(idx);
            if let Err(reason) = self.seal_to_chosen(now, idx, MessageType::Data, s.hop_limit, &s.packet, out) {
                self.stats.drops.add(reason);
            }
        }
        any
    }

    /// When [`Node::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let keepalive = self.cfg.keepalive.and_then(|ka| {
            self.neighbours
                .iter()
                .flat_map(|n| n.paths.iter())
                .filter(|p| p.usable)
                .map(|p| p.last_tx.map_or(Time::ZERO, |t| t + ka))
                .min()
        });
        let sessions = self.neighbours.iter().filter_map(|n| n.sessions.next_timer()).min();
        let monitor = self.neighbours.iter().filter_map(|n| self.next_monitor_timer(n)).min();
        let mesh = self.cfg.mesh.and_then(|mc| {
            let refresh = self.mesh.last_advert.map(|t| t + mc.refresh);
            let me = self.cfg.host;
            let expiry = self.mesh.db.iter().filter(|(h, _)| **h != me).map(|(_, (_, at))| *at + mc.max_age).min();
            [refresh, expiry].into_iter().flatten().min()
        });
        [keepalive, sessions, monitor, mesh].into_iter().flatten().min()
    }

    /// Run timers due at `now`: handshake retries and give-ups, rekeying,
    /// session expiry, and keepalives (one per neighbour, sealed once and
    /// sent on each of its paths quiet for the keepalive interval; with no
    /// session, a handshake instead).
    pub fn handle_timeout(&mut self, now: Time, out: &mut Transmits) {
        self.tick(now);
        for idx in 0..self.neighbours.len() {
            let n = &mut self.neighbours[idx];
            n.sessions.expire(now);
            if let Some(p) = &n.sessions.pending {
                let started = p.started;
                if now - started >= REKEY_ATTEMPT_TIME {
                    n.sessions.pending = None;
                    let dropped = n.sessions.staged.len();
                    n.sessions.staged.clear();
                    let peer = n.host;
                    for _ in 0..dropped {
                        self.stats.drops.add(DropReason::NoSession);
                    }
                    self.event(Event::HandshakeTimedOut { peer });
                } else if now - p.last_sent >= REKEY_TIMEOUT {
                    self.initiate(now, idx, Some(started), out);
                }
            }
            self.maybe_rekey(now, idx, out);
            self.monitor_paths(now, idx, out);
            if let Some(ka) = self.cfg.keepalive {
                self.keepalive(now, idx, Some(ka), out);
            }
        }
        self.mesh_tick(now, out);
    }

    /// Send a keepalive to neighbour `idx` on its paths quiet for `ka` (all
    /// usable paths if `None`). With no session: start a handshake instead.
    fn keepalive(&mut self, now: Time, idx: usize, ka: Option<Duration>, out: &mut Transmits) {
        self.chosen.clear();
        let due = self.neighbours[idx]
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.usable && ka.is_none_or(|ka| p.last_tx.is_none_or(|t| t + ka <= now)))
            .map(|(i, _)| i);
        self.chosen.extend(due);
        if self.chosen.is_empty() {
            return;
        }
        let n = &mut self.neighbours[idx];
        if n.sessions.sending(now).is_none() {
            match &n.sessions.pending {
                None => self.initiate(now, idx, None, out),
                // A handshake runs: its initiation goes on these paths too
                // (a link that just came up), which also resets their timer.
                Some(p) => {
                    let init = p.init;
                    self.send_plain(now, idx, MessageType::HandshakeInit, &init, out);
                }
            }
            return;
        }
        if self.seal_to_chosen(now, idx, MessageType::Keepalive, 1, &[], out).is_ok() {
            self.stats.keepalives_out += 1;
        }
    }

    /// Fill `self.chosen` with every usable path of neighbour `idx`
    /// (handshakes go on all paths, whatever the policy).
    fn choose_all(&mut self, idx: usize) {
        self.chosen.clear();
        let usable = self.neighbours[idx].paths.iter().enumerate().filter(|(_, p)| p.usable).map(|(i, _)| i);
        self.chosen.extend(usable);
    }

    /// Fill `self.chosen` with the indices of the paths the policy picks
    /// among neighbour `idx`'s usable paths.
    /// `all` copies onto down paths too: a path that comes back carries
    /// packets from its first moment, not only once probes have noticed
    /// (that costs only bandwidth on a dead link).
    fn choose_by_policy(&mut self, idx: usize) {
        self.chosen.clear();
        let chosen = &mut self.chosen;
        self.neighbours[idx].select(self.cfg.policy, |i| chosen.push(i));
    }

    /// The paths of neighbour `host` a packet would be copied onto now.
    pub fn chosen_paths(&self, host: HostId) -> Vec<usize> {
        let mut out = Vec::new();
        if let Some(n) = self.neighbour(host) {
            n.select(self.cfg.policy, |i| out.push(i));
        }
        out
    }

    /// Seal `payload` once for neighbour `idx` with its current session and
    /// queue it on the paths in `self.chosen`; the one place that takes a
    /// sequence number.
    fn seal_to_chosen(
        &mut self,
        now: Time,
        idx: usize,
        msg_type: MessageType,
        hop_limit: u8,
        payload: &[u8],
        out: &mut Transmits,
    ) -> Result<(Seq, usize), DropReason> {
        if self.chosen.is_empty() {
            return Err(DropReason::NoPath);
        }
        let n = &mut self.neighbours[idx];
        let (key_phase, session) = n.sessions.sending(now).ok_or(DropReason::NoSession)?;
        let seq = session.next_seq().ok_or(DropReason::SeqExhausted)?;
        let wire_len = OVERHEAD + payload.len();
        for &i in &self.chosen {
            let p = &mut n.paths[i];
            p.last_tx = Some(now);
            p.tx.add(wire_len);
            out.add_path(p.addr);
            if let Some(l) = self.links.iter_mut().find(|l| l.id == p.addr.link) {
                l.stats.tx.add(wire_len);
            }
        }
        let header = Header { msg_type, hop_limit, key_phase, sender: self.cfg.host, receiver: n.host, seq };
        let copies = out.push_sealed(&header, payload, &session.keys);
        n.stats.sealed.add(wire_len);
        self.stats.sealed.add(wire_len);
        self.stats.copies_out.packets += copies as u64;
        self.stats.copies_out.bytes += (copies * wire_len) as u64;
        Ok((seq, copies))
    }
}
