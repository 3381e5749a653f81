//! A bundle: everything this host keeps toward one peer (a neighbour host):
//! its keys, endpoints, paths, sessions, ranking and counters.
//!
//! The bundle owns its paths ([`Paths`], named by [`PathId`]) and decides
//! which of them a packet goes on ([`Bundle::select`]); the node seals and
//! fans the packet out. Paths come from endpoints crossed with local links
//! (`Bundle::link_changed`, `Bundle::set_endpoints`) or are learned from
//! fresh authenticated packets (`Bundle::touch_path`: never from a later
//! copy, which is what a replay is). Whenever a path is
//! removed or replaced, its slot is forgotten by the passive trackers and
//! the ranking is redone, so no credit or choice lands on another path.

use std::net::SocketAddr;
use std::time::Duration;

use super::class::Class;
use super::ids::{HostId, LinkId, PathAddr};
use super::link::Role;
use super::monitor::{Change, Credit, EXPECT_WITHIN, Health, PassiveCounts};
use super::path::{MAX_LEARNED_PATHS, Path, PathId, PathSet, Paths};
use super::policy::{Candidate, Policy, Ranking};
use super::session::Sessions;
use super::stats::{Count, DropReason};
use super::time::Time;
use super::wire::OVERHEAD;

/// A remote endpoint of a peer, optionally pinned to one local link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Where the peer listens.
    pub remote: SocketAddr,
    /// Reach it only from this local link (`None`: from every link).
    pub link: Option<LinkId>,
}

impl EndpointSpec {
    fn names(&self, addr: PathAddr) -> bool {
        self.remote == addr.remote && self.link.is_none_or(|l| l == addr.link)
    }
}

/// A peer to make a bundle for.
#[derive(Clone, Debug)]
pub struct BundleConfig {
    /// Its host id.
    pub host: HostId,
    /// Its X25519 public key.
    pub public_key: [u8; 32],
    /// Optional pre-shared key mixed into every handshake with it.
    pub psk: Option<[u8; 32]>,
    /// Its endpoints; paths are these crossed with the local links.
    pub endpoints: Vec<EndpointSpec>,
}

/// Per-bundle counters.
#[derive(Clone, Debug, Default)]
pub struct BundleStats {
    /// Packets sealed for this peer (once each, whatever the copies).
    pub sealed: Count,
    /// Authenticated packets accepted from it (first copies).
    pub accepted: Count,
    /// Paths learned (or moved, when a NAT changed the source port) from
    /// authenticated packets.
    pub paths_learned: u64,
    /// Handshakes completed (as initiator or responder).
    pub handshakes: u64,
    /// Authenticated data packets refused because their inner source is
    /// not routed to this neighbour.
    pub bad_source: u64,
    /// Data packets from it delivered toward a destination no route
    /// covers: what this host, as an internet exit, forwards out for it.
    pub exit_out: Count,
    /// Packets read from the TUN for it whose source no route covers: what
    /// comes back from outside the overlay (counted with `NodeConfig::exit`).
    pub exit_in: Count,
}

/// A neighbour's handshake keys (see [`Bundle`]).
#[derive(Debug)]
pub(super) struct HandshakeKeys {
    /// mac1 key of messages to it.
    pub(super) mac1: ring::hmac::Key,
    /// The key its cookie replies are sealed with.
    pub(super) cookie: ring::aead::LessSafeKey,
}

/// This host's state toward one peer.
#[derive(Debug)]
pub struct Bundle {
    host: HostId,
    pub(super) public_key: [u8; 32],
    pub(super) psk: [u8; 32],
    endpoints: Vec<EndpointSpec>,
    pub(super) paths: Paths,
    pub(super) sessions: Sessions,
    pub(super) stats: BundleStats,
    /// Its own policy, if not the node's.
    policy: Option<Policy>,
    /// Its paths ranked for `best:N` and `failover`.
    ranking: Ranking,
    /// It has been sent the whole route database on its current session.
    pub(super) synced: bool,
    /// Probe ids, unique across its paths.
    next_probe_id: u32,
    /// The last data packets sent on several paths: (key phase, sequence
    /// number, first arrival), at the sequence number modulo its size.
    firsts: [(bool, u64, Time); RECENT_FIRSTS],
    /// The last inner source address found routed to this neighbour, with
    /// the router version it was checked at (most packets repeat it).
    pub(super) source_ok: Option<(std::net::IpAddr, u64)>,
    /// The last initiation in its name that was refused, and when (why a
    /// peer has no session, in status).
    pub(super) refused: Option<(Time, crate::proto::handshake::HandshakeError)>,
    /// The keys of its handshake MACs and cookie replies: used per
    /// handshake only, so boxed (ring's HMAC and AEAD keys take 720 bytes,
    /// which would spread the fields every packet touches over more cache
    /// lines).
    pub(super) keys: Box<HandshakeKeys>,
    /// The last cookie it sent (for mac2), and when; when an initiation
    /// last went again because of one.
    pub(super) cookie: Option<([u8; crate::proto::cookie::COOKIE_LEN], Time)>,
    pub(super) cookie_resent: Option<Time>,
    /// The role of each local link it was told of.
    roles: Vec<(LinkId, Role)>,
}

/// The duplication policy of each class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    /// Real-time traffic's.
    pub realtime: Policy,
    /// Bulk traffic's.
    pub bulk: Policy,
}

/// First arrivals of data a bundle remembers, to tell which a stalled path missed.
pub const RECENT_FIRSTS: usize = 64;

/// A bundle's paths as a passive tracker credits them.
pub(super) struct PathCredit<'a>(pub(super) &'a mut Paths);

impl Credit for PathCredit<'_> {
    fn span(&self) -> usize {
        self.0.span()
    }

    fn expected(&self, slot: usize, first_at: Time, now: Time) -> bool {
        self.0
            .at_slot(slot)
            .is_some_and(|p| p.usable && p.created <= first_at && p.last_data.is_some_and(|t| now - t < EXPECT_WITHIN))
    }

    fn counts(&mut self, slot: usize) -> Option<&mut PassiveCounts> {
        self.0.at_slot_mut(slot).map(|p| &mut p.monitor.local)
    }
}

/// What [`Bundle::session`] tells of the session being sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// When its handshake completed.
    pub created: Time,
    /// Whether this host started that handshake.
    pub initiator: bool,
    /// The data cipher the handshake agreed.
    pub cipher: crate::proto::crypto::Cipher,
}

impl Bundle {
    /// A bundle with no paths and no session.
    pub(super) fn new(c: BundleConfig) -> Bundle {
        Bundle {
            host: c.host,
            public_key: c.public_key,
            psk: c.psk.unwrap_or([0; 32]),
            endpoints: c.endpoints,
            paths: Paths::default(),
            sessions: Sessions::default(),
            stats: BundleStats::default(),
            policy: None,
            ranking: Ranking::default(),
            synced: false,
            next_probe_id: 1,
            firsts: [(false, 0, Time::ZERO); RECENT_FIRSTS],
            source_ok: None,
            refused: None,
            keys: Box::new(HandshakeKeys {
                mac1: crate::proto::cookie::mac1_key(&c.public_key),
                cookie: crate::proto::cookie::cookie_key(&c.public_key),
            }),
            cookie: None,
            cookie_resent: None,
            roles: Vec::new(),
        }
    }

    /// The role of local `link`.
    pub fn role(&self, link: LinkId) -> Role {
        self.roles.iter().find(|(l, _)| *l == link).map_or(Role::Primary, |(_, r)| *r)
    }

    /// Local `link` has role `role` now.
    pub(super) fn set_role(&mut self, link: LinkId, role: Role) {
        match self.roles.iter_mut().find(|(l, _)| *l == link) {
            Some((_, r)) => *r = role,
            None => self.roles.push((link, role)),
        }
        self.rerank();
    }

    /// Its peer's host id.
    pub fn host(&self) -> HostId {
        self.host
    }

    /// Its paths, usable or not, by slot.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }

    /// One path, if `id` still names one.
    pub fn path(&self, id: PathId) -> Option<&Path> {
        self.paths.get(id)
    }

    /// Its counters.
    pub fn stats(&self) -> &BundleStats {
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

    pub(super) fn set_policy(&mut self, policy: Option<Policy>) {
        self.policy = policy;
    }

    /// The session being sent on, if there is one.
    pub fn session(&self) -> Option<SessionInfo> {
        self.sessions.current().map(|s| SessionInfo {
            created: s.created,
            initiator: s.initiator,
            cipher: s.keys.cipher(),
        })
    }

    /// A handshake this host started is waiting for an answer.
    pub fn handshake_pending(&self) -> bool {
        self.sessions.pending().is_some()
    }

    /// When the handshake this host is waiting on started, if one is.
    pub fn handshake_started(&self) -> Option<Time> {
        self.sessions.pending().map(|p| p.started)
    }

    /// The last initiation in its name that was refused, and why.
    pub fn last_refused(&self) -> Option<(Time, crate::proto::handshake::HandshakeError)> {
        self.refused
    }

    /// Packets waiting for a session with it.
    pub fn staged(&self) -> usize {
        self.sessions.staged()
    }

    /// The paths a packet of `class` is copied onto now: its class's policy
    /// (real-time: the bundle's own, if set) among the paths its links'
    /// roles allow. `all` copies onto down paths too: a path that comes
    /// back carries packets from its first moment, not only once probes
    /// have noticed.
    pub fn select(&self, class: Class, policies: Policies) -> PathSet {
        let allowed = self.allowed(class);
        let is_usable = |id| allowed.contains(id) && self.paths.get(id).is_some_and(|p| p.usable);
        let policy = match class {
            Class::Realtime => self.policy.unwrap_or(policies.realtime),
            Class::Bulk => policies.bulk,
        };
        policy.select(allowed, is_usable, &self.ranking)
    }

    /// The paths a datagram of `len` bytes of `class` goes on:
    /// [`Bundle::select`]'s that carry it (their path MTU); if none of
    /// those does, the best ranked usable path that does, whatever its role
    /// or the policy ([`DropReason::PathMtu`] if none does).
    pub fn select_fitting(&self, class: Class, policies: Policies, len: usize) -> Result<PathSet, DropReason> {
        let set = self.select(class, policies);
        if set.is_empty() {
            return Err(DropReason::NoPath);
        }
        let mut fit = PathSet::EMPTY;
        for slot in set.slots() {
            if let Some(p) = self.paths.at_slot(slot).filter(|p| p.pmtu.fits(len)) {
                fit.insert(p.id());
            }
        }
        if !fit.is_empty() {
            return Ok(fit);
        }
        let carries = |p: &Path| p.usable && p.pmtu.fits(len);
        let best = self.ranking.order.iter().copied().find(|&id| self.paths.get(id).is_some_and(carries));
        best.or_else(|| self.paths.iter().find(|p| carries(p)).map(Path::id))
            .map(PathSet::of)
            .ok_or(DropReason::PathMtu)
    }

    /// The largest inner packet every usable path that is not down carries
    /// (every usable path, if all are down): what the TUN's MTU, an MSS
    /// and an ICMP "too big" toward this neighbour are sized to. `None`
    /// without a usable path.
    pub fn mtu(&self) -> Option<usize> {
        let inner = |p: &Path| usize::from(p.pmtu.usable()).saturating_sub(OVERHEAD);
        let usable = || self.paths.iter().filter(|p| p.usable);
        usable().filter(|p| p.monitor.health() != Health::Down).map(inner).min().or_else(|| usable().map(inner).min())
    }

    /// The usable paths the links' roles let carry `class` now: real-time
    /// goes on primary and secondary links while one of their paths is
    /// alive, bulk on the cheapest tier with a path alive; with none alive
    /// (nothing known yet, or everything failed), every usable path.
    pub fn allowed(&self, class: Class) -> PathSet {
        let mut tiers = [PathSet::EMPTY; 3];
        let mut alive = [false; 3];
        for p in self.paths.iter().filter(|p| p.usable) {
            let t = self.role(p.addr.link).tier();
            tiers[t].insert(p.id());
            alive[t] |= p.monitor.health().is_alive();
        }
        let any = tiers[0].union(tiers[1]).union(tiers[2]);
        match class {
            Class::Realtime if alive[0] || alive[1] => tiers[0].union(tiers[1]),
            Class::Bulk => (0..3).find(|&t| alive[t]).map_or(any, |t| tiers[t]),
            Class::Realtime => any,
        }
    }

    /// Every usable path (handshakes and adverts go on all of them).
    pub fn usable(&self) -> PathSet {
        self.paths.usable()
    }

    /// The usable paths nothing was sent on for `ka` (all usable if `None`).
    pub fn quiet(&self, now: Time, ka: Option<Duration>) -> PathSet {
        let mut set = PathSet::EMPTY;
        for p in self.paths.iter().filter(|p| p.usable && ka.is_none_or(|ka| p.quiet(now, ka))) {
            set.insert(p.id());
        }
        set
    }

    /// The usable path with this address, if known (never learned here).
    pub fn known_path(&self, addr: PathAddr) -> Option<PathId> {
        self.paths.find(addr).filter(|&id| self.paths.get(id).is_some_and(|p| p.usable))
    }

    /// Re-rank its paths from their states and costs.
    pub(super) fn rerank(&mut self) {
        let candidates: Vec<Candidate> = self
            .paths
            .iter()
            .filter(|p| p.usable)
            .map(|p| Candidate {
                id: p.id(),
                addr: p.addr,
                role: self.role(p.addr.link),
                health: p.monitor.health(),
                cost: p.monitor.cost(),
            })
            .collect();
        self.ranking.update(&candidates);
    }

    /// The cost of its best path that is not down, microseconds (for the
    /// mesh: a suspect path still counts, so a passing suspicion does not
    /// withdraw the neighbour from this host's adverts).
    pub(super) fn best_cost(&self) -> Option<u32> {
        let best = self
            .paths
            .iter()
            .filter(|p| p.usable && p.monitor.health() != Health::Down)
            .filter_map(|p| p.monitor.cost())
            .min()?;
        Some(u32::try_from(best.as_micros()).unwrap_or(u32::MAX).max(1))
    }

    /// A data packet's first copy arrived at `now` (one sent on several paths).
    pub(super) fn first_arrival(&mut self, phase: bool, seq: u64, now: Time) {
        self.firsts[(seq % RECENT_FIRSTS as u64) as usize] = (phase, seq, now);
    }

    /// When the first copy of data packet `seq` arrived, if it is remembered.
    pub(super) fn first_arrived(&self, phase: bool, seq: u64) -> Option<Time> {
        let (p, s, at) = self.firsts[(seq % RECENT_FIRSTS as u64) as usize];
        (p == phase && s == seq && s != 0).then_some(at)
    }

    /// How many of the remembered data packets a path that last delivered
    /// `last` (key phase, sequence number) missed although their first
    /// copies arrived before `before`.
    pub(super) fn missed_since(&self, last: (bool, u64), before: Time) -> u32 {
        let (phase, seq) = last;
        self.firsts.iter().filter(|&&(p, s, at)| p == phase && s > seq && s != 0 && at <= before).count() as u32
    }

    /// The next probe id.
    pub(super) fn probe_id(&mut self) -> u32 {
        let id = self.next_probe_id;
        self.next_probe_id = self.next_probe_id.wrapping_add(1).max(1);
        id
    }

    /// Note an authenticated datagram on the path it came from; `first` is
    /// its length when it was the first copy of its packet (a fresh sequence
    /// number, or a valid handshake message). Only a fresh datagram may
    /// teach a path that is new: a later copy, whoever sent it from
    /// wherever, credits a known path or nothing, so a replay can neither
    /// create a path nor make this host send toward an address. `None`: no
    /// such path (a later copy from a new address, or the table is full of
    /// configured paths).
    pub(super) fn touch_path(&mut self, now: Time, addr: PathAddr, first: Option<usize>) -> Option<PathId> {
        let id = match (self.paths.find(addr), first) {
            (Some(id), _) => id,
            (None, Some(_)) => self.learn_path(now, addr)?,
            (None, None) => return None,
        };
        let p = self.paths.get_mut(id)?;
        if let Some(len) = first {
            p.first.add(len);
        }
        p.last_rx = Some(now);
        Some(id)
    }

    /// Remember a path an authenticated packet came from (a peer behind NAT,
    /// or one that roamed). One learned path per (local link, remote IP): a
    /// new port on the same pair moves it. At most [`MAX_LEARNED_PATHS`];
    /// past that, or with the table full, the learned path heard from
    /// longest ago is replaced.
    fn learn_path(&mut self, now: Time, addr: PathAddr) -> Option<PathId> {
        let same_pair = self
            .paths
            .iter()
            .find(|p| p.learned && p.addr.link == addr.link && p.addr.remote.ip() == addr.remote.ip())
            .map(Path::id);
        let learned = self.paths.iter().filter(|p| p.learned).count();
        let id = match same_pair {
            Some(old) => self.replace_path(old, addr, now),
            None if learned >= MAX_LEARNED_PATHS => {
                let old = self.oldest_learned()?;
                self.replace_path(old, addr, now)
            }
            None => match self.paths.insert(addr, true, now) {
                Ok(id) => id,
                Err(_) => {
                    let old = self.oldest_learned()?;
                    self.replace_path(old, addr, now)
                }
            },
        };
        self.stats.paths_learned += 1;
        Some(id)
    }

    fn oldest_learned(&self) -> Option<PathId> {
        self.paths.iter().filter(|p| p.learned).min_by_key(|p| p.last_rx).map(Path::id)
    }

    fn replace_path(&mut self, old: PathId, addr: PathAddr, now: Time) -> PathId {
        self.sessions.forget_path(old.slot());
        let id = self.paths.replace(old, addr, true, now);
        self.rerank();
        id
    }

    /// Add the paths `link` brings for its endpoints (when `up`), and mark
    /// every path on `link` usable or not. Returns the paths that went
    /// down, with their change. Past [`super::path::MAX_PATHS`] no path is added.
    pub(super) fn link_changed(&mut self, now: Time, link: LinkId, up: bool) -> Vec<(PathId, Change)> {
        if up {
            for e in &self.endpoints {
                if e.link.is_none_or(|l| l == link) {
                    let addr = PathAddr { link, remote: e.remote };
                    if self.paths.find(addr).is_none() {
                        let _ = self.paths.insert(addr, false, now);
                    }
                }
            }
        }
        let mut changes = Vec::new();
        for p in self.paths.iter_mut().filter(|p| p.addr.link == link) {
            p.usable = up;
            if !up && let Some(c) = p.monitor.link_down(now) {
                changes.push((p.id(), c));
            }
        }
        changes
    }

    /// Replace its endpoints: paths no endpoint names any more are
    /// forgotten (their slots too), paths that remain keep their counters,
    /// and `links` (the local links up now) get the paths the new ones bring.
    pub(super) fn set_endpoints(&mut self, now: Time, endpoints: Vec<EndpointSpec>, links: &[LinkId]) {
        self.endpoints = endpoints;
        let gone: Vec<PathId> = self
            .paths
            .iter()
            .filter(|p| !p.learned && !self.endpoints.iter().any(|e| e.names(p.addr)))
            .map(Path::id)
            .collect();
        for id in gone {
            self.sessions.forget_path(id.slot());
            self.paths.remove(id);
        }
        for &l in links {
            self.link_changed(now, l, true);
        }
        self.rerank();
    }
}
