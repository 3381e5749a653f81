//! The send path: from a TUN packet (or a relayed one) to the transmit
//! batch. [`Tx::seal`] is the one place a sequence number is taken, and
//! [`fan_out`] the one place a copy is accounted to its path and link.

use super::{Node, Sent};
use crate::proto::bundle::Bundle;
use crate::proto::class::Class;
use crate::proto::fit;
use crate::proto::ids::{HostId, Seq};
use crate::proto::ip;
use crate::proto::link::Links;
use crate::proto::path::{PathSet, Paths};
use crate::proto::route::NextHop;
use crate::proto::shaper::Lane;
use crate::proto::stats::{DropReason, NodeStats};
use crate::proto::time::Time;
use crate::proto::transmit::Transmits;
use crate::proto::wire::{HEADER_LEN, Header, MessageType, OVERHEAD};

/// ICMP answers made at most per [`ICMP_WINDOW`].
const ICMP_PER_WINDOW: u32 = 10;
/// The window of that limit (so 100 per second).
const ICMP_WINDOW: std::time::Duration = std::time::Duration::from_millis(100);
/// ICMP answers held for the TUN at most (the shell takes them after every call).
const MAX_TUN_ANSWERS: usize = 32;

/// What sending needs besides the bundle: this host's id and the counters
/// of the links and the node.
pub(super) struct Tx<'a> {
    pub(super) me: HostId,
    pub(super) links: &'a mut Links,
    pub(super) stats: &'a mut NodeStats,
    /// Padding for MTU probes (grown once).
    pub(super) pad: &'a mut Vec<u8>,
}

/// What is sealed: the message type, the hop limit it carries (1 for
/// everything but data, which counts down across relays) and, for data,
/// its class.
#[derive(Clone, Copy, Debug)]
pub(super) struct Kind {
    msg_type: MessageType,
    hop_limit: u8,
    class: Option<Class>,
    /// The key phase and sequence number it is sealed with (set by [`Tx::seal`]).
    seq: Option<(bool, u64)>,
}

impl Kind {
    /// A data packet of `class` with `hop_limit` hops left.
    pub(super) fn data(hop_limit: u8, class: Class) -> Kind {
        Kind { msg_type: MessageType::Data, hop_limit, class: Some(class), seq: None }
    }

    /// A control message for the next hop only.
    pub(super) fn control(msg_type: MessageType) -> Kind {
        Kind { msg_type, hop_limit: 1, class: None, seq: None }
    }
}

/// Copies of one datagram a shaper could not send at once: held by their
/// path's shaper (the peer's download rate) or their link's (its upload rate).
#[derive(Clone, Copy, Default)]
struct Held {
    path: PathSet,
    link: PathSet,
}

impl Held {
    fn len(self) -> usize {
        self.path.len() + self.link.len()
    }
}

/// Account one copy of `wire_len` bytes to every path in `set` and its
/// link, and stage the paths for the next datagram of `out`; returns the
/// paths whose path or link shaper has not the tokens for it now (their
/// copies are queued once the datagram is sealed).
fn fan_out(
    paths: &mut Paths,
    links: &mut Links,
    now: Time,
    set: PathSet,
    kind: Kind,
    wire_len: usize,
    out: &mut Transmits,
) -> Held {
    let mut held = Held::default();
    let lane = Lane::of(kind.class);
    for slot in set.slots() {
        let Some(p) = paths.at_slot_mut(slot) else { continue };
        p.last_tx = Some(now);
        if let (MessageType::Data, Some((phase, seq))) = (kind.msg_type, kind.seq) {
            p.sent_data(now, phase, seq);
        }
        p.tx.add(wire_len);
        if kind.msg_type == MessageType::Data {
            p.pmtu.sent(now, wire_len);
        }
        let by_path = p.shaper.as_mut().is_some_and(|s| !s.try_now(now, lane, wire_len));
        let Some((l, shaper)) = links.parts_mut(p.addr.link) else {
            out.add_path(p.addr);
            continue;
        };
        l.tx.add(wire_len);
        if let Some(c) = kind.class {
            l.class_tx[c.index()].add(wire_len);
        }
        if by_path {
            held.path.insert(p.id());
        } else if shaper.is_some_and(|s| !s.try_now(now, lane, wire_len)) {
            held.link.insert(p.id());
        } else {
            out.add_path(p.addr);
        }
    }
    held
}

/// Hand the datagram just sealed into `out` to the shapers of the `held` copies.
fn hold(links: &mut Links, paths: &mut Paths, now: Time, kind: Kind, held: Held, out: &mut Transmits) {
    if held.len() == 0 {
        return;
    }
    let lane = Lane::of(kind.class);
    if let Some(dgram) = out.last_datagram() {
        for slot in held.path.union(held.link).slots() {
            let Some(p) = paths.at_slot_mut(slot) else { continue };
            if held.path.contains_slot(slot) {
                if let Some(s) = p.shaper.as_mut() {
                    s.enqueue(now, lane, dgram, p.addr);
                }
            } else if let Some((_, Some(s))) = links.parts_mut(p.addr.link) {
                s.enqueue(now, lane, dgram, p.addr);
            }
        }
    }
    out.drop_last_if_pathless();
}

impl Tx<'_> {
    /// Seal `payload` once for bundle `b` with its current session and queue
    /// it on the paths in `set`.
    pub(super) fn seal(
        &mut self,
        b: &mut Bundle,
        now: Time,
        set: PathSet,
        kind: Kind,
        payload: &[u8],
        out: &mut Transmits,
    ) -> Result<(Seq, usize), DropReason> {
        if set.is_empty() {
            return Err(DropReason::NoPath);
        }
        let receiver = b.host();
        let (key_phase, session) = b.sessions.sending(now).ok_or(DropReason::NoSession)?;
        let seq = session.next_seq().ok_or(DropReason::SeqExhausted)?;
        let wire_len = OVERHEAD + payload.len();
        let kind = Kind { seq: Some((key_phase, seq.0)), ..kind };
        let held = fan_out(&mut b.paths, self.links, now, set, kind, wire_len, out);
        let Kind { msg_type, hop_limit, class, .. } = kind;
        let sole = msg_type == MessageType::Data && set.len() == 1;
        let realtime = class == Some(Class::Realtime);
        let header = Header { msg_type, hop_limit, key_phase, sole, realtime, sender: self.me, receiver, seq };
        let copies = out.push_sealed(&header, payload, &session.keys) + held.len();
        hold(self.links, &mut b.paths, now, kind, held, out);
        b.stats.sealed.add(wire_len);
        self.stats.sealed.add(wire_len);
        if let Some(c) = class {
            self.stats.class_out[c.index()].add(payload.len());
        }
        self.count_copies(copies, wire_len);
        Ok((seq, copies))
    }

    /// Queue an unsealed (handshake) message for bundle `b` on the paths in `set`.
    pub(super) fn plain(
        &mut self,
        b: &mut Bundle,
        now: Time,
        set: PathSet,
        msg_type: MessageType,
        payload: &[u8],
        out: &mut Transmits,
    ) {
        if set.is_empty() {
            return;
        }
        let wire_len = HEADER_LEN + payload.len();
        let kind = Kind::control(msg_type);
        let held = fan_out(&mut b.paths, self.links, now, set, kind, wire_len, out);
        let header = Header {
            msg_type,
            hop_limit: 1,
            key_phase: false,
            sole: false,
            realtime: false,
            sender: self.me,
            receiver: b.host(),
            seq: Seq(0),
        };
        let copies = out.push_plain(&header, payload) + held.len();
        hold(self.links, &mut b.paths, now, kind, held, out);
        self.count_copies(copies, wire_len);
    }

    fn count_copies(&mut self, copies: usize, wire_len: usize) {
        self.stats.copies_out.packets += copies as u64;
        self.stats.copies_out.bytes += (copies * wire_len) as u64;
    }
}

impl Node {
    /// Bundle `idx` and what sending to it needs.
    /// Seal `body` as a control message of type `ty` to `peer` in its
    /// session, on its usable paths: so a fuzz target can put any body
    /// inside an authenticated session. Only with the `fuzzing` feature.
    #[cfg(feature = "fuzzing")]
    pub fn seal_for_fuzzing(
        &mut self,
        now: Time,
        peer: HostId,
        ty: MessageType,
        body: &[u8],
        out: &mut Transmits,
    ) -> bool {
        let Some(&idx) = self.index.get(&peer) else { return false };
        let (b, mut tx) = self.tx(idx);
        let set = b.usable();
        tx.seal(b, now, set, Kind::control(ty), body, out).is_ok()
    }

    pub(super) fn tx(&mut self, idx: usize) -> (&mut Bundle, Tx<'_>) {
        let tx = Tx { me: self.cfg.host, links: &mut self.links, stats: &mut self.stats, pad: &mut self.scratch };
        (&mut self.bundles[idx], tx)
    }

    /// A packet read from the TUN: route it, seal it once, queue a copy on
    /// every path the policy picks.
    pub fn handle_tun_packet(&mut self, now: Time, packet: &[u8], out: &mut Transmits) -> Result<Sent, DropReason> {
        self.tick(now);
        self.release_shapers(now, out);
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
        let next = match self.router.lookup(dst) {
            None => return Err(DropReason::NoRoute),
            Some(NextHop::Local) => return Err(DropReason::LocalDestination),
            Some(NextHop::Host(h)) => h,
        };
        let idx = self.index[&next];
        if self.cfg.exit && ip::source(packet).is_ok_and(|s| self.router.lookup(s).is_none()) {
            self.bundles[idx].stats.exit_in.add(packet.len());
        }
        let class = self.classifier.classify(now, packet);
        let hops = self.cfg.hop_limit;
        // A SYN's MSS is lowered to what the paths carry (on a copy).
        let mut copy = std::mem::take(&mut self.scratch);
        let syn_mtu = if fit::is_syn(packet) { self.bundles[idx].mtu() } else { None };
        let packet = match syn_mtu {
            Some(mtu) => {
                copy.clear();
                copy.extend_from_slice(packet);
                if fit::clamp_mss(&mut copy, fit::mss_for(mtu, dst)) {
                    self.stats.mss_clamped += 1;
                }
                &copy[..]
            }
            _ => packet,
        };
        let sent = match self.send_data(now, idx, hops, class, packet, out) {
            Err(DropReason::PathMtu) => self.too_big(now, idx, Kind::data(hops, class), packet, true, out),
            r => r,
        };
        self.scratch = copy;
        let sent = sent?;
        Ok(Sent { next_hop: next, seq: sent.map(|(seq, _)| seq), copies: sent.map_or(0, |(_, c)| c) })
    }

    /// `packet` (data of `kind`, for bundle `idx`) is larger than any of its
    /// paths carries: an IPv4 packet that allows it goes in fragments that
    /// fit them all ([`crate::proto::Bundle::mtu`]); any other gets an ICMP
    /// "too big" naming that size (to the TUN if `local`, else routed
    /// back to its sender) and is dropped as [`DropReason::PathMtu`].
    pub(super) fn too_big(
        &mut self,
        now: Time,
        idx: usize,
        kind: Kind,
        packet: &[u8],
        local: bool,
        out: &mut Transmits,
    ) -> Result<Option<(Seq, usize)>, DropReason> {
        let (hop_limit, class) = (kind.hop_limit, kind.class.unwrap_or(Class::Bulk));
        let Some(mtu) = self.bundles[idx].mtu() else { return Err(DropReason::NoPath) };
        let mut piece = Vec::new();
        if fit::may_fragment(packet) {
            let mut pieces = 0;
            let mut last = Err(DropReason::PathMtu);
            let made = fit::fragment_v4(packet, mtu, &mut piece, |f| {
                pieces += 1;
                last = self.send_data(now, idx, hop_limit, class, f, out);
            });
            if made {
                self.stats.fragmented += 1;
                self.stats.fragments += pieces;
                return last;
            }
        }
        if self.icmp_allowed(now) && fit::too_big(packet, u16::try_from(mtu).unwrap_or(u16::MAX), &mut piece) {
            self.stats.icmp_too_big += 1;
            if local {
                if self.to_tun.len() < MAX_TUN_ANSWERS {
                    self.to_tun.push_back(piece);
                }
            } else if let Err(reason) = self.route_tun_packet(now, &piece, out) {
                self.stats.drops.add(reason);
            }
        }
        Err(DropReason::PathMtu)
    }

    /// Whether one more ICMP answer may be made at `now` (at most
    /// [`ICMP_PER_WINDOW`] per [`ICMP_WINDOW`], as a router limits them).
    fn icmp_allowed(&mut self, now: Time) -> bool {
        let (start, n) = &mut self.icmp_budget;
        if now.saturating_since(*start) >= ICMP_WINDOW {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= ICMP_PER_WINDOW
    }

    /// Seal `packet` (of `class`) for bundle `idx` on the paths its
    /// class's policy picks, or, with no session yet, hold it and start a
    /// handshake. `Ok(None)`: held.
    pub(super) fn send_data(
        &mut self,
        now: Time,
        idx: usize,
        hop_limit: u8,
        class: Class,
        packet: &[u8],
        out: &mut Transmits,
    ) -> Result<Option<(Seq, usize)>, DropReason> {
        let policies = self.policies();
        let set = self.bundles[idx].select_fitting(class, policies, OVERHEAD + packet.len())?;
        if self.bundles[idx].sessions.sending(now).is_some() {
            let (b, mut tx) = self.tx(idx);
            let r = tx.seal(b, now, set, Kind::data(hop_limit, class), packet, out).map(Some);
            self.maybe_rekey(now, idx, out);
            return r;
        }
        if !self.bundles[idx].sessions.stage(hop_limit, class, packet) {
            return Err(DropReason::NoSession);
        }
        self.maybe_rekey(now, idx, out);
        Ok(None)
    }

    /// Seal and send the packets waiting for a session with bundle `idx`.
    /// False if there were none.
    pub(super) fn flush_staged(&mut self, now: Time, idx: usize, out: &mut Transmits) -> bool {
        let staged = self.bundles[idx].sessions.take_staged();
        let any = !staged.is_empty();
        let policies = self.policies();
        for s in staged {
            let (b, mut tx) = self.tx(idx);
            let set = b.select_fitting(s.class, policies, OVERHEAD + s.packet.len());
            if let Err(reason) =
                set.and_then(|set| tx.seal(b, now, set, Kind::data(s.hop_limit, s.class), &s.packet, out))
            {
                tx.stats.drops.add(reason);
            }
        }
        any
    }

    /// Send a keepalive to bundle `idx` on its paths quiet for `ka` (all
    /// usable paths if `None`). With no session: start a handshake instead,
    /// or send the running one's initiation on those paths.
    pub(super) fn keepalive(&mut self, now: Time, idx: usize, ka: Option<std::time::Duration>, out: &mut Transmits) {
        let set = self.bundles[idx].quiet(now, ka);
        if set.is_empty() {
            return;
        }
        let (b, mut tx) = self.tx(idx);
        if b.sessions.sending(now).is_none() {
            match b.sessions.pending().map(|p| p.init) {
                None => self.initiate(now, idx, None, out),
                // A handshake runs: its initiation goes on these paths too
                // (a link that just came up), which also resets their timer.
                Some(init) => tx.plain(b, now, set, MessageType::HandshakeInit, &init, out),
            }
            return;
        }
        if tx.seal(b, now, set, Kind::control(MessageType::Keepalive), &[], out).is_ok() {
            tx.stats.keepalives_out += 1;
        }
    }
}
