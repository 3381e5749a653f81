//! The node: one host's protocol state machine, free of I/O and clocks.
//!
//! Inputs: packets read from the TUN ([`Node::handle_tun_packet`]), datagrams
//! received on a link ([`Node::handle_datagram`]), timer expiry
//! ([`Node::handle_timeout`]) and link changes ([`Node::add_link`],
//! [`Node::remove_link`]), each with an explicit `now`. Outputs: datagrams to
//! send, written into a caller-owned [`super::Transmits`] batch, plaintext to
//! deliver, returned as a range of the caller's own receive buffer, and
//! [`Event`]s ([`Node::poll_event`]). The shell (or the simulator) sends,
//! delivers and arms the timer from [`Node::poll_timeout`]. Outputs go
//! straight into the caller's batch, which saves a copy per packet; the one
//! place the node holds datagrams is a shaped link's queue
//! ([`super::shaper`]), whose copies join the batch of whichever call (a
//! packet, a datagram, a timeout) comes when the link's rate allows them.
//!
//! The node is a dispatcher over parts that own their state:
//! - a [`Bundle`] per peer: its paths ([`super::path`], named by stable
//!   [`super::path::PathId`]s), sessions ([`super::session`]), ranking and
//!   policy choice;
//! - the [`Router`]: configured and mesh routes ([`super::mesh`]);
//! - the handshake driver (`handshake`): identity, randomness, the
//!   per-source rate limit;
//! - the local [`Links`] and their counters, the [`NodeStats`], the event log.
//!
//! The packet path, one walk each way:
//! - TUN -> [`Node::handle_tun_packet`] (`send`): destination, router
//!   lookup, the packet's [`super::class::Class`], the bundle picks a
//!   [`super::path::PathSet`] (the class's policy among the paths its
//!   links' roles allow), the current session's next sequence number,
//!   sealed once, one datagram with N paths in the batch (a copy for a
//!   shaped link without the tokens for it waits in that link's queue, by
//!   class). With no session yet the packet waits (bounded)
//!   while a Noise IK handshake runs over every path.
//! - link -> [`Node::handle_datagram`] (`receive`): header, for us and from
//!   a peer, window check (cheap, before any crypto), open, mark the window
//!   (only now), credit the path, then deliver to the TUN or, on a relay,
//!   re-seal for the next hop through the same send path (hop by hop: every
//!   hop deduplicates, and classifies the packet again).
//!
//! Timers (`timers`): the link monitor probes every path (probes and
//! replies are sealed like data, on that path only), follows its estimates
//! and state, credits settled data and reports state changes as
//! [`Event::PathChanged`]; sessions rekey and expire (WireGuard's timers);
//! keepalives hold NAT mappings; the mesh advertises and ages its database.
//!
//! Guarantees: a packet is delivered at most once per session (first copy
//! wins); nothing that fails authentication is delivered or changes the
//! window, the paths or any other state but the drop counters; every input
//! ends in a delivery, a transmission or exactly one counted [`DropReason`],
//! never a panic. No allocation per packet once the batch has grown.

mod events;
mod handshake;
mod receive;
mod send;
mod timers;

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use ipnet::IpNet;

pub use events::{AdvertRefusal, Event, MAX_RECENT_CHANGES, PathChange};

use super::bundle::{Bundle, BundleConfig, EndpointSpec, Policies};
use super::class::{Class, Classifier, Rule, RuleError, validate_rules};
use super::ids::{HostId, LinkId, Seq};
use super::link::{LinkSettings, Links};
use super::mesh::{Mesh, MeshConfig, MeshConfigError};
use super::monitor::{Change, Health, MonitorConfig, MonitorConfigError};
use super::path::PathId;
use super::policy::Policy;
use super::route::{NextHop, RouteTable};
use super::router::Router;
use super::stats::{DropReason, LinkStats, NodeStats};
use super::time::Time;
use super::window::{DEFAULT_WINDOW_PACKETS, MAX_WINDOW_PACKETS, MIN_WINDOW_PACKETS};
use super::wire::{DEFAULT_HOP_LIMIT, Family, OVERHEAD, UDP_HEADER_LEN};

/// Default interval after which a path that sent nothing gets a keepalive
/// (holds NAT mappings; WireGuard's persistent-keepalive value).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(25);
/// Largest inner packet that can be carried: a 65 535-byte IPv4 datagram
/// minus IP (20) and UDP (8) headers minus our overhead.
pub const MAX_PACKET_LIMIT: usize = 65_535 - 20 - 8 - OVERHEAD;
/// Default rate limit of initiations per source address and second.
pub const DEFAULT_HANDSHAKES_PER_SECOND: u32 = 10;
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
    /// Bytes the transport adds between the outer IP header and an mpvr
    /// datagram (8 for UDP, 0 for the raw-IP transport): with the link's
    /// MTU, it says how large a datagram a path may be probed up to.
    pub transport_header: usize,
    /// Real-time traffic's duplication policy.
    pub policy: Policy,
    /// Bulk traffic's duplication policy.
    pub bulk_policy: Policy,
    /// Classification rules, checked before the automatic ones.
    pub rules: Vec<Rule>,
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
    /// Offer and accept AES-256-GCM for sessions' data (ChaCha20-Poly1305
    /// otherwise, and with a peer that does not offer it). The daemon sets
    /// it when the CPU has AES instructions, unless the config says
    /// `cipher = "chacha20-poly1305"`.
    pub aes_gcm: bool,
    /// This host is an internet exit: count, per neighbour, what comes
    /// back for it from outside the overlay (one more route lookup per
    /// packet read from the TUN).
    pub exit: bool,
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
            window_packets: DEFAULT_WINDOW_PACKETS,
            hop_limit: DEFAULT_HOP_LIMIT,
            keepalive: Some(DEFAULT_KEEPALIVE),
            max_packet: MAX_PACKET_LIMIT,
            transport_header: UDP_HEADER_LEN,
            policy: Policy::All,
            bulk_policy: Policy::Failover,
            rules: Vec::new(),
            monitor: MonitorConfig::default(),
            mesh: Some(MeshConfig::default()),
            aes_gcm: false,
            exit: false,
        }
    }

    /// Check every setting; the one validation of them (the config file
    /// checks each through the same functions and names its field).
    pub fn validate(&self) -> Result<(), SetupError> {
        check_window(self.window_packets)?;
        check_hop_limit(self.hop_limit)?;
        check_max_packet(self.max_packet)?;
        check_keepalive(self.keepalive)?;
        validate_rules(&self.rules).map_err(|(index, error)| SetupError::Rule { index, error })?;
        self.monitor.validate()?;
        if let Some(m) = &self.mesh {
            m.validate()?;
        }
        Ok(())
    }
}

/// The settings [`Node::retune`] changes on a running node.
#[derive(Clone, Debug, PartialEq)]
pub struct Tunables {
    /// Real-time traffic's duplication policy.
    pub policy: Policy,
    /// Bulk traffic's duplication policy.
    pub bulk_policy: Policy,
    /// Classification rules, checked before the automatic ones.
    pub rules: Vec<Rule>,
    /// Probes and path states.
    pub monitor: MonitorConfig,
    /// Keepalive interval per path; `None` disables keepalives.
    pub keepalive: Option<Duration>,
    /// Initiations accepted per second from one source address.
    pub handshakes_per_second: u32,
}

impl NodeConfig {
    /// Its settings that may change while the node runs.
    pub fn tunables(&self) -> Tunables {
        Tunables {
            policy: self.policy,
            bulk_policy: self.bulk_policy,
            rules: self.rules.clone(),
            monitor: self.monitor,
            keepalive: self.keepalive,
            handshakes_per_second: self.handshakes_per_second,
        }
    }
}

/// A dedup / anti-replay window size the node accepts.
pub fn check_window(packets: u32) -> Result<u32, SetupError> {
    if (MIN_WINDOW_PACKETS..=MAX_WINDOW_PACKETS).contains(&packets) {
        Ok(packets)
    } else {
        Err(SetupError::WindowOutOfRange(packets))
    }
}

/// A hop limit the node accepts.
pub fn check_hop_limit(hops: u8) -> Result<u8, SetupError> {
    if hops == 0 { Err(SetupError::ZeroHopLimit) } else { Ok(hops) }
}

/// A largest TUN packet the node accepts.
pub fn check_max_packet(bytes: usize) -> Result<usize, SetupError> {
    if (MIN_PACKET_LIMIT..=MAX_PACKET_LIMIT).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(SetupError::MaxPacketOutOfRange(bytes))
    }
}

/// A keepalive interval the node accepts (`None`: off).
pub fn check_keepalive(k: Option<Duration>) -> Result<Option<Duration>, SetupError> {
    match k {
        Some(k) if k < Duration::from_secs(1) => Err(SetupError::KeepaliveTooShort(k)),
        _ => Ok(k),
    }
}

/// A setting or topology change that would make the node wrong. Nothing is
/// changed when one is returned.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SetupError {
    /// Window size out of range.
    #[error(
        "window of {0} packets is out of range: use {MIN_WINDOW_PACKETS} to {MAX_WINDOW_PACKETS} (default {DEFAULT_WINDOW_PACKETS}: 100 000 packets/s with 500 ms of skew)"
    )]
    WindowOutOfRange(u32),
    /// Hop limit 0.
    #[error("hop limit 0 would drop every packet: use 1 to 255 (default {DEFAULT_HOP_LIMIT})")]
    ZeroHopLimit,
    /// Max packet size out of range.
    #[error("maximum packet size {0} is out of range: use {MIN_PACKET_LIMIT} to {MAX_PACKET_LIMIT} bytes")]
    MaxPacketOutOfRange(usize),
    /// Keepalive shorter than a second.
    #[error("keepalive interval {0:?} is too short: use \"off\" or a duration of at least 1s, such as \"25s\"")]
    KeepaliveTooShort(Duration),
    /// A peer with this host's own id.
    #[error("{0} is this host itself and cannot be its own peer")]
    PeerIsSelf(HostId),
    /// The same peer twice.
    #[error("{0} is already a peer")]
    DuplicatePeer(HostId),
    /// Probe or path-state settings that cannot work.
    #[error(transparent)]
    Monitor(#[from] MonitorConfigError),
    /// Mesh settings that cannot work.
    #[error(transparent)]
    Mesh(#[from] MeshConfigError),
    /// A peer that was never added.
    #[error("{0} is not a peer")]
    UnknownPeer(HostId),
    /// A classification rule that cannot work.
    #[error("rule {index}: {error}")]
    Rule {
        /// Its index in the list.
        index: usize,
        /// What is wrong.
        error: RuleError,
    },
    /// A route whose next hop is not a peer.
    #[error("route {prefix} goes to {next}, which is not a peer: add it as a peer, or route via one")]
    UnknownNextHop {
        /// The route's prefix.
        prefix: IpNet,
        /// Its next hop.
        next: HostId,
    },
}

/// What [`Node::handle_tun_packet`] did with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The peer it goes to.
    pub next_hop: HostId,
    /// Its sequence number in the current session; `None` when it waits for
    /// a session (then it is sealed when the handshake completes).
    pub seq: Option<Seq>,
    /// How many copies were queued (0 while it waits).
    pub copies: usize,
}

/// What [`Node::handle_datagram`] did with a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Write these bytes of the caller's buffer (the decrypted IP packet) to the TUN.
    Deliver(Range<usize>),
    /// Relayed: re-sealed for `next_hop` and queued on its paths.
    Forwarded {
        /// The peer it goes to.
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

/// One host's protocol state.
#[derive(Debug)]
pub struct Node {
    cfg: NodeConfig,
    links: Links,
    bundles: Vec<Bundle>,
    index: HashMap<HostId, usize>,
    router: Router,
    handshakes: handshake::Handshakes,
    events: events::EventLog,
    stats: NodeStats,
    classifier: Classifier,
    /// ICMP answers for the TUN, oldest first (bounded), and the budget
    /// that limits how many are made.
    to_tun: std::collections::VecDeque<Vec<u8>>,
    icmp_budget: (Time, u32),
    /// The tunnel MTU last announced ([`Event::TunnelMtu`]).
    tunnel_mtu: Option<usize>,
    /// Scratch for a packet being changed (an MSS lowered, a fragment).
    scratch: Vec<u8>,
    /// The latest `now` any entry point was given (for link changes, which come without one).
    clock: Time,
    /// When a datagram of another wire version was last reported.
    version_noted: Option<Time>,
    /// The advert key bound to each origin.
    origin_keys: std::collections::BTreeMap<HostId, OriginKey>,
    /// This host's own advert public key.
    advert_key: [u8; 32],
    /// Prefixes the config gives to a host: no other origin may advertise them.
    claims: Vec<(IpNet, HostId)>,
}

/// The advert key of an origin, and how it was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginKey {
    /// Its Ed25519 public key.
    pub key: [u8; 32],
    /// Pinned on first use, from an advert another neighbour flooded; else
    /// from the origin's own session.
    pub first_use: bool,
    /// The neighbour that brought it.
    pub via: HostId,
}

impl Node {
    /// A node with no links, peers or routes.
    pub fn new(cfg: NodeConfig) -> Result<Node, SetupError> {
        cfg.validate()?;
        let mut handshakes = handshake::Handshakes::new(&cfg);
        let classifier = Classifier::new(&cfg.rules, handshakes.flow_key());
        let mut router = Router::new(cfg.host, cfg.mesh);
        router.set_signing_seed(super::mesh::signing_seed(&cfg.private_key));
        Ok(Node {
            links: Links::default(),
            bundles: Vec::new(),
            index: HashMap::new(),
            router,
            handshakes,
            classifier,
            to_tun: std::collections::VecDeque::new(),
            icmp_budget: (Time::ZERO, 0),
            tunnel_mtu: None,
            scratch: Vec::new(),
            events: events::EventLog::default(),
            stats: NodeStats::default(),
            clock: Time::ZERO,
            version_noted: None,
            origin_keys: std::collections::BTreeMap::new(),
            advert_key: super::mesh::advert_key(&cfg.private_key),
            claims: Vec::new(),
            cfg,
        })
    }

    /// This host.
    pub fn host(&self) -> HostId {
        self.cfg.host
    }

    /// This host's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.handshakes.public_key()
    }

    /// The oldest event not yet taken.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop()
    }

    /// The last [`MAX_RECENT_CHANGES`] path state changes, oldest first.
    pub fn recent_changes(&self) -> impl Iterator<Item = &PathChange> {
        self.events.recent()
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
        self.links.iter()
    }

    /// The bundles, one per peer, in the order the peers were added.
    pub fn bundles(&self) -> impl Iterator<Item = &Bundle> {
        self.bundles.iter()
    }

    /// The bundle toward one peer.
    pub fn bundle(&self, peer: HostId) -> Option<&Bundle> {
        self.index.get(&peer).map(|&i| &self.bundles[i])
    }

    /// The route table in use.
    pub fn routes(&self) -> &RouteTable {
        self.router.table()
    }

    /// The router: configured and mesh routes.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The mesh (route database and computed next hops), if enabled.
    pub fn mesh(&self) -> Option<&Mesh> {
        self.router.mesh()
    }

    /// The host that advertised `prefix`, if the route to it came from the mesh.
    pub fn mesh_origin(&self, prefix: IpNet) -> Option<HostId> {
        self.router.mesh_origin(prefix)
    }

    /// The paths toward `peer` a packet of `class` would be copied onto now.
    pub fn chosen_paths(&self, peer: HostId, class: Class) -> Vec<PathId> {
        let Some(b) = self.bundle(peer) else { return Vec::new() };
        let set = b.select(class, self.policies());
        b.paths().iter().filter(|p| set.contains(p.id())).map(|p| p.id()).collect()
    }

    /// The policy of each class (a bundle may have its own for real-time).
    pub fn policies(&self) -> Policies {
        Policies { realtime: self.cfg.policy, bulk: self.cfg.bulk_policy }
    }

    /// The classifier: its rules and flow table.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// The local links' settings and shapers.
    pub fn link_table(&self) -> &Links {
        &self.links
    }

    fn tick(&mut self, now: Time) {
        self.clock = self.clock.max(now);
    }

    /// Record and announce state changes of bundle `idx`'s paths.
    fn announce(&mut self, idx: usize, changes: Vec<(PathId, Change)>) {
        let b = &self.bundles[idx];
        for (id, change) in changes {
            let Some(p) = b.path(id) else { continue };
            self.events.path_changed(PathChange { at: self.clock, peer: b.host(), path: p.addr, change });
        }
    }

    /// Add a peer: a bundle with its paths over the links that are up now.
    pub fn add_bundle(&mut self, c: BundleConfig) -> Result<(), SetupError> {
        if c.host == self.cfg.host {
            return Err(SetupError::PeerIsSelf(c.host));
        }
        if self.index.contains_key(&c.host) {
            return Err(SetupError::DuplicatePeer(c.host));
        }
        let mut b = Bundle::new(c);
        for l in self.links.ids() {
            b.set_role(l, self.links.settings(l).role);
            b.link_changed(self.clock, l, true);
        }
        self.index.insert(b.host(), self.bundles.len());
        self.bundles.push(b);
        Ok(())
    }

    /// Remove a peer: its bundle, sessions and paths, and the configured
    /// routes whose next hop it is (returned, so the caller can follow them
    /// in the kernel). What the mesh learned through it goes at the next
    /// tick, when it is no longer a direct neighbour.
    pub fn remove_bundle(&mut self, peer: HostId) -> Result<Vec<IpNet>, SetupError> {
        let idx = self.index.remove(&peer).ok_or(SetupError::UnknownPeer(peer))?;
        self.bundles.remove(idx);
        for (i, b) in self.bundles.iter().enumerate() {
            self.index.insert(b.host(), i);
        }
        let routed: Vec<IpNet> =
            self.router.configured().filter(|(_, n)| *n == NextHop::Host(peer)).map(|(p, _)| p).collect();
        for p in &routed {
            self.router.remove(*p);
        }
        Ok(routed)
    }

    /// Change the settings that may change while the node runs (a config
    /// reload): the policies, the classification rules, probes and path
    /// states, keepalives and the handshake rate limit. Everything is
    /// validated first; on an error nothing changes. Sessions, paths and
    /// their measurements stay; new probe intervals apply from each
    /// path's next probe.
    pub fn retune(&mut self, t: Tunables) -> Result<(), SetupError> {
        check_keepalive(t.keepalive)?;
        validate_rules(&t.rules).map_err(|(index, error)| SetupError::Rule { index, error })?;
        t.monitor.validate()?;
        if t.rules != self.cfg.rules {
            let key = self.handshakes.flow_key();
            self.classifier = Classifier::new(&t.rules, key);
            self.cfg.rules = t.rules;
        }
        self.cfg.policy = t.policy;
        self.cfg.bulk_policy = t.bulk_policy;
        self.cfg.monitor = t.monitor;
        self.cfg.keepalive = t.keepalive;
        self.cfg.handshakes_per_second = t.handshakes_per_second;
        self.handshakes.set_rate(t.handshakes_per_second);
        for b in &mut self.bundles {
            b.rerank();
        }
        Ok(())
    }

    /// Replace a peer's endpoints. Paths that remain keep their counters
    /// and ids; paths no endpoint names any more are forgotten.
    pub fn set_endpoints(&mut self, peer: HostId, endpoints: Vec<EndpointSpec>) -> Result<(), SetupError> {
        let idx = *self.index.get(&peer).ok_or(SetupError::UnknownPeer(peer))?;
        let links = self.links.ids();
        self.bundles[idx].set_endpoints(self.clock, endpoints, &links);
        Ok(())
    }

    /// Give `peer` its own policy (`None`: the node's).
    pub fn set_policy(&mut self, peer: HostId, policy: Option<Policy>) -> Result<(), SetupError> {
        let idx = *self.index.get(&peer).ok_or(SetupError::UnknownPeer(peer))?;
        self.bundles[idx].set_policy(policy);
        Ok(())
    }

    /// Route `prefix` to `next`: this host, or a peer. A prefix of this
    /// host's own is advertised to the mesh at its next tick.
    pub fn add_route(&mut self, prefix: IpNet, next: NextHop) -> Result<Option<NextHop>, SetupError> {
        if let NextHop::Host(h) = next
            && !self.index.contains_key(&h)
        {
            return Err(SetupError::UnknownNextHop { prefix, next: h });
        }
        let old = self.router.add(prefix, next);
        if next == NextHop::Local || old == Some(NextHop::Local) {
            self.router.readvertise();
        }
        Ok(old)
    }

    /// `prefix` is `owner`'s (the config says so: a peer's `prefixes`,
    /// this host's addresses): an advert from any other origin that claims
    /// it, or a prefix inside it, is refused.
    pub fn claim(&mut self, prefix: IpNet, owner: HostId) {
        let prefix = prefix.trunc();
        self.claims.retain(|(p, _)| *p != prefix);
        self.claims.push((prefix, owner));
    }

    /// Forget every claim (a reload sets them again).
    pub fn clear_claims(&mut self) {
        self.claims.clear();
    }

    /// The advert keys bound to origins.
    pub fn origin_keys(&self) -> &std::collections::BTreeMap<HostId, OriginKey> {
        &self.origin_keys
    }

    /// Remove the route for exactly `prefix`.
    pub fn remove_route(&mut self, prefix: IpNet) -> Option<NextHop> {
        let old = self.router.remove(prefix);
        if old == Some(NextHop::Local) {
            self.router.readvertise();
        }
        old
    }

    /// `link`'s MTU (its NIC's) is `mtu`, up or not: its paths are
    /// probed up to the datagram that leaves room for the outer headers.
    pub fn set_link_mtu(&mut self, now: Time, link: LinkId, mtu: u16) {
        self.tick(now);
        self.links.set_mtu(link, mtu);
        let hdr = self.cfg.transport_header;
        for b in &mut self.bundles {
            for p in b.paths.iter_mut().filter(|p| p.addr.link == link) {
                p.pmtu.set_ceiling(self.clock, path_ceiling(&self.links, hdr, p.addr));
            }
        }
    }

    /// The largest inner packet every neighbour with a session can be sent
    /// on the paths not down ([`Bundle::mtu`], smallest over the
    /// neighbours): what `host.mtu = "auto"` sets the TUN's MTU to.
    pub fn tunnel_mtu(&self) -> Option<usize> {
        self.bundles.iter().filter(|b| b.sessions.can_send()).filter_map(Bundle::mtu).min()
    }

    /// The next ICMP answer to write to the TUN ("too big" for a packet
    /// read from it), if any.
    pub fn poll_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.to_tun.pop_front()
    }

    /// Announce the tunnel MTU if it changed; not while a path that is
    /// not down searches (its size moves round by round: the TUN's MTU
    /// changes once, to the measured size).
    fn check_tunnel_mtu(&mut self) {
        let searching = self.bundles.iter().filter(|b| b.sessions.can_send()).any(|b| {
            b.paths().iter().any(|p| {
                p.usable && p.monitor.health() != Health::Down && p.pmtu.phase() == crate::proto::pmtu::Phase::Searching
            })
        });
        if searching {
            return;
        }
        let m = self.tunnel_mtu();
        if m != self.tunnel_mtu {
            self.tunnel_mtu = m;
            if let Some(mtu) = m {
                self.events.push(Event::TunnelMtu { mtu });
            }
        }
    }

    /// A local link came up at `now` (idempotent): paths over it are used from now on.
    pub fn add_link(&mut self, now: Time, link: LinkId) {
        self.tick(now);
        self.links.add(link, self.clock);
        let role = self.links.settings(link).role;
        for b in &mut self.bundles {
            b.set_role(link, role);
            b.link_changed(self.clock, link, true);
        }
    }

    /// What the config says of `link` (its role and rate), before or after
    /// it comes up; kept while it is down.
    pub fn configure_link(&mut self, now: Time, link: LinkId, settings: LinkSettings) {
        self.tick(now);
        self.links.configure(link, settings, self.clock);
        for b in &mut self.bundles {
            b.set_role(link, settings.role);
        }
    }

    /// A local link went down or away at `now`: its paths get no more copies. Its
    /// paths keep their counters and are used again if it comes back.
    pub fn remove_link(&mut self, now: Time, link: LinkId) {
        self.tick(now);
        self.links.remove(link);
        for idx in 0..self.bundles.len() {
            let changes = self.bundles[idx].link_changed(self.clock, link, false);
            self.bundles[idx].rerank();
            self.announce(idx, changes);
        }
    }
}

/// The largest datagram a path over `addr.link` may carry: the link's MTU
/// less the outer IP header of `addr`'s family and the transport's.
pub(super) fn path_ceiling(links: &Links, transport_header: usize, addr: crate::proto::ids::PathAddr) -> u16 {
    let mtu = usize::from(links.mtu(addr.link));
    u16::try_from(mtu.saturating_sub(Family::of(addr.remote).ip_header_len() + transport_header)).unwrap_or(u16::MAX)
}
