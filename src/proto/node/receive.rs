//! The receive path: from a datagram on a link to a delivery, a relay hop,
//! or a control message handled. Security order is visible here: header,
//! peer, cheap window check, open, and only then any state change.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::send::Kind;
use super::{AdvertRefusal, Event, Node, OriginKey, Received};
use crate::proto::bundle::PathCredit;
use crate::proto::fit;
use crate::proto::ids::{HostId, LinkId, PathAddr};
use crate::proto::ip;
use crate::proto::mesh::{Advert, Heard};
use crate::proto::monitor::{MtuProbeBody, NoticeBody, ProbeBody, Reason, ReplyBody};
use crate::proto::opening::{Ahead, OpenedAhead, Openings};
use crate::proto::path::{PathId, PathSet};
use crate::proto::route::NextHop;
use crate::proto::shaper::Rate;
use crate::proto::stats::DropReason;
use crate::proto::time::{Time, smooth};
use crate::proto::transmit::Transmits;
use crate::proto::window::Verdict;
use crate::proto::wire::{HEADER_LEN, Header, MessageType, Packet, TAG_LEN, WireError};

fn wire_drop(e: WireError) -> DropReason {
    match e {
        WireError::Truncated => DropReason::Truncated,
        WireError::BadVersion(_) => DropReason::BadVersion,
        WireError::UnknownType(_) => DropReason::UnknownType,
        WireError::BadFlags(_) => DropReason::BadFlags,
        WireError::ZeroHostId => DropReason::ZeroHostId,
    }
}

/// A datagram of another wire version is reported at most this often.
const VERSION_NOTE_INTERVAL: Duration = Duration::from_secs(10);

/// Added to the trips a notice's packet took (scheduling, batching at both ends).
const NOTICE_SLACK: Duration = Duration::from_millis(5);

impl Node {
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
        self.handle_opened(now, link, from, datagram, Ahead(None), out)
    }

    /// Step 1 of opening a batch outside the lock (see [`crate::proto::opening`]):
    /// note in `openings` the keys and sequence number `datagram` would be
    /// opened with, or that it is not to be opened ahead. Changes nothing.
    pub fn plan_open(&self, now: Time, datagram: &[u8], openings: &mut Openings) {
        let job = || {
            let packet = Packet::new_checked(datagram).ok()?;
            let header = Header::parse(&packet).ok()?;
            if header.receiver != self.cfg.host
                || matches!(
                    header.msg_type,
                    MessageType::Cookie | MessageType::HandshakeInit | MessageType::HandshakeResponse
                )
            {
                return None;
            }
            let idx = *self.index.get(&header.sender)?;
            let session = self.bundles[idx].sessions.peek(header.key_phase, now)?;
            (session.window.check(header.seq) != Verdict::TooOld).then_some((&session.keys, header.seq))
        };
        openings.plan(job());
    }

    /// Step 3: a datagram of a batch whose step 2 ([`Openings::open`]) is
    /// done, handled as [`Node::handle_datagram`] does, every check made
    /// again. `datagram` is the buffer planned and opened at some `i`, and
    /// `ahead` is [`Openings::ahead(i)`](Openings::ahead).
    pub fn handle_opened(
        &mut self,
        now: Time,
        link: LinkId,
        from: SocketAddr,
        datagram: &mut [u8],
        ahead: Ahead<'_>,
        out: &mut Transmits,
    ) -> Received {
        self.tick(now);
        self.release_shapers(now, out);
        self.stats.datagrams_in.add(datagram.len());
        let Some(ls) = self.links.stats_mut(link) else {
            self.stats.drops.add(DropReason::UnknownLink);
            return Received::Dropped(DropReason::UnknownLink);
        };
        ls.rx.add(datagram.len());
        match self.receive(now, PathAddr { link, remote: from }, datagram, ahead.0, out) {
            Ok(r) => r,
            Err(reason) => {
                self.stats.drops.add(reason);
                if let Some(ls) = self.links.stats_mut(link) {
                    ls.drops.add(reason);
                }
                Received::Dropped(reason)
            }
        }
    }

    fn receive(
        &mut self,
        now: Time,
        addr: PathAddr,
        datagram: &mut [u8],
        ahead: Option<OpenedAhead<'_>>,
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let wire_len = datagram.len();
        let mut packet = Packet::new_checked(&mut *datagram).map_err(wire_drop)?;
        let header = match Header::parse(&packet) {
            Ok(h) => h,
            Err(WireError::BadVersion(version)) => {
                if self.version_noted.is_none_or(|t| now - t >= VERSION_NOTE_INTERVAL) {
                    self.version_noted = Some(now);
                    self.events.push(Event::VersionMismatch { from: addr.remote, version });
                }
                return Err(DropReason::BadVersion);
            }
            Err(e) => return Err(wire_drop(e)),
        };
        if header.receiver != self.cfg.host {
            return Err(DropReason::WrongReceiver);
        }
        let idx = *self.index.get(&header.sender).ok_or(DropReason::UnknownSender)?;
        match header.msg_type {
            MessageType::Cookie => return self.on_cookie(now, idx, packet.payload(), out),
            MessageType::HandshakeInit => return self.on_initiation(now, idx, addr, packet.payload(), out),
            MessageType::HandshakeResponse => return self.on_response(now, idx, addr, packet.payload(), out),
            _ => {}
        }
        let is_data = header.msg_type == MessageType::Data;
        let b = &mut self.bundles[idx];
        let session = b.sessions.receiving(header.key_phase, now).ok_or(DropReason::NoSession)?;
        // Cheap replay/duplicate check before any cryptography.
        let fresh = match session.window.check(header.seq) {
            Verdict::Fresh => true,
            Verdict::TooOld => return Err(DropReason::TooOld),
            Verdict::Duplicate => false,
        };
        // A later copy is authenticated too (one more open per copy): only
        // an authenticated copy may credit its path or teach a new one (the
        // peer moved, and its copies there lose the race).
        let plain_len = match ahead {
            // Opened outside the lock: taken only if made with the keys this
            // key phase holds now, for this sequence number and length.
            Some(a) if Arc::ptr_eq(a.keys, &session.keys) && a.seq == header.seq && a.len == wire_len => a.plain,
            // Opened with keys replaced since (it would not open with
            // these), or another datagram's result: the bytes are no longer
            // the sealed ones, so nothing can authenticate them.
            Some(_) => None,
            None => {
                let (head, sealed) = packet.split_mut();
                session.keys.open(header.seq, head, sealed).ok()
            }
        }
        .ok_or(DropReason::AuthFailed)?;
        // Authenticated: only now may state change.
        if fresh {
            session.window.mark(header.seq);
        }
        let first = fresh.then_some(HEADER_LEN + plain_len + TAG_LEN);
        let first_at = if fresh { Some(now) } else { b.first_arrived(header.key_phase, header.seq.0) };
        let path = b.touch_path(now, addr, first);
        let mut change = None;
        if let Some(id) = path {
            if let Some(p) = b.paths.get_mut(id) {
                if !fresh {
                    p.later.add(wire_len);
                }
                if is_data {
                    p.last_data = Some(now);
                    let seq = (header.key_phase, header.seq.0);
                    if p.last_seq.is_none_or(|last| last.0 != seq.0 || last.1 < seq.1) {
                        p.last_seq = Some(seq);
                    }
                    if let Some(t) = first_at.filter(|_| !header.sole) {
                        p.lateness = smooth(p.lateness, now.saturating_since(t), 8);
                    }
                    change = p.monitor.on_data(now).map(|c| (id, c));
                }
            }
            // A packet sent on one path alone is not missed by the others.
            if is_data && fresh && !header.sole {
                b.first_arrival(header.key_phase, header.seq.0, now);
            }
            // The path may have been learned just now (which can replace
            // another and so touch the sessions): the session is looked up
            // again for its tracker.
            if is_data && let Some(session) = b.sessions.receiving(header.key_phase, now) {
                let (seq, spread) = (header.seq.0, !header.sole);
                session.passive.record(now, seq, id.slot(), fresh, spread, &mut PathCredit(&mut b.paths));
            }
        }
        // Data on this path may show another's stall to be that path's failure.
        let stalled = is_data && b.paths.iter().any(|p| p.monitor.stall_pending());
        if change.is_some() || stalled {
            let mut changes: Vec<_> = change.into_iter().collect();
            if stalled {
                let (b, mut tx) = self.tx(idx);
                changes.extend(super::timers::suspect_stalled(&mut tx, b, now, out));
            }
            self.bundles[idx].rerank();
            self.announce(idx, changes);
        }
        let b = &mut self.bundles[idx];
        if !fresh {
            return Err(DropReason::Duplicate);
        }
        b.stats.accepted.add(HEADER_LEN + plain_len + TAG_LEN);
        if b.sessions.confirm(header.key_phase) {
            // The initiator used the session: it is ours to send on now.
            self.events.push(Event::SessionEstablished { peer: header.sender, initiator: false });
            self.flush_staged(now, idx, out);
        }
        let plain = HEADER_LEN..HEADER_LEN + plain_len;
        match header.msg_type {
            MessageType::Keepalive => {
                self.stats.keepalives_in += 1;
                Ok(Received::Keepalive)
            }
            MessageType::Probe => self.on_probe(now, idx, path, &datagram[plain], out),
            MessageType::ProbeReply => self.on_probe_reply(now, idx, addr.link, &datagram[plain]),
            MessageType::PathNotice => self.on_notice(now, idx, path, &datagram[plain]),
            MessageType::MtuProbe => self.on_mtu_probe(now, idx, path, wire_len, &datagram[plain], out),
            MessageType::MtuReply => self.on_mtu_reply(now, idx, path, &datagram[plain]),
            MessageType::RouteAdvert => self.on_advert(now, idx, &datagram[plain], out),
            _ => self.deliver_or_forward(now, idx, header, &mut datagram[plain.clone()], plain, out),
        }
    }

    /// An authenticated data packet: to the TUN, or on toward its next hop.
    fn deliver_or_forward(
        &mut self,
        now: Time,
        from: usize,
        header: Header,
        packet: &mut [u8],
        plain: std::ops::Range<usize>,
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let dst = ip::destination(packet).map_err(|_| DropReason::MalformedIp)?;
        // Authenticated is not trusted: a neighbour may only send from the
        // addresses routed to it (its own, or those it relays for), at
        // every hop, as WireGuard's cryptokey routing does.
        let src = ip::source(packet).map_err(|_| DropReason::MalformedIp)?;
        let version = self.router.version();
        if self.bundles[from].source_ok != Some((src, version)) {
            if !self.router.source_ok(src, header.sender) {
                self.bundles[from].stats.bad_source += 1;
                return Err(DropReason::BadSource);
            }
            self.bundles[from].source_ok = Some((src, version));
        }
        // Each hop classifies the packet itself: the sender's real-time flag
        // only chose the socket it was read from, and is not trusted.
        let class = self.classifier.classify(now, packet);
        let next_hop = self.router.lookup(dst);
        if fit::is_syn(packet) {
            // The MSS fits what the paths both ways carry: those it came
            // on (the answer goes back on them) and, relayed, the next hop's.
            let next = match next_hop {
                Some(NextHop::Host(h)) => self.index.get(&h).and_then(|&i| self.bundles[i].mtu()),
                _ => None,
            };
            if let Some(mtu) = self.bundles[from].mtu().into_iter().chain(next).min()
                && fit::clamp_mss(packet, fit::mss_for(mtu, dst))
            {
                self.stats.mss_clamped += 1;
            }
        }
        if next_hop.is_none() {
            self.bundles[from].stats.exit_out.add(packet.len());
        }
        match next_hop {
            None | Some(NextHop::Local) => {
                self.stats.tun_out.add(packet.len());
                self.stats.class_in[class.index()].add(packet.len());
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
                let hops = header.hop_limit - 1;
                let sent = match self.send_data(now, next_idx, hops, class, packet, out) {
                    Err(DropReason::PathMtu) => {
                        self.too_big(now, next_idx, Kind::data(hops, class), packet, false, out)
                    }
                    r => r,
                }?;
                self.stats.forwarded.add(packet.len());
                Ok(Received::Forwarded { next_hop: next, copies: sent.map_or(0, |(_, c)| c) })
            }
        }
    }

    /// An authenticated probe came on `path` of bundle `idx`: answer it on
    /// that path, with this end's counts for the path.
    fn on_probe(
        &mut self,
        now: Time,
        idx: usize,
        path: Option<PathId>,
        body: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let probe = ProbeBody::decode(body).ok_or(DropReason::BadProbe)?;
        let (b, mut tx) = self.tx(idx);
        let Some(p) = path.and_then(|id| b.paths.get_mut(id)) else { return Err(DropReason::NoPath) };
        // The peer names this path by its slot in its probes: a notice about
        // it names it so too. And its end of the path downloads at this
        // rate: what goes on the path is shaped to it.
        p.peer_slot = Some(probe.path);
        let shapers = p.set_peer_down(now, Rate::from_bits(u64::from(probe.down_kbps) * 1000));
        tx.links.path_shapers = tx.links.path_shapers.saturating_add_signed(shapers);
        let (id, counts) = (p.id(), p.monitor.local);
        let mut reply = [0u8; ReplyBody::LEN];
        ReplyBody { probe, received: now.as_nanos(), counts }.encode(&mut reply);
        tx.seal(b, now, PathSet::of(id), Kind::control(MessageType::ProbeReply), &reply, out)?;
        Ok(Received::Probe)
    }

    /// An authenticated path MTU probe of `wire_len` bytes came on `path`:
    /// if it is as long as it says (nothing cut it), answer on that path.
    fn on_mtu_probe(
        &mut self,
        now: Time,
        idx: usize,
        path: Option<PathId>,
        wire_len: usize,
        body: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let probe = MtuProbeBody::decode(body, true).ok_or(DropReason::BadProbe)?;
        if usize::from(probe.size) != wire_len {
            return Err(DropReason::BadProbe);
        }
        let id = path.ok_or(DropReason::NoPath)?;
        let mut reply = [0u8; MtuProbeBody::LEN];
        probe.encode(&mut reply);
        let (b, mut tx) = self.tx(idx);
        tx.seal(b, now, PathSet::of(id), Kind::control(MessageType::MtuReply), &reply, out)?;
        Ok(Received::Probe)
    }

    /// An authenticated path MTU probe reply, come on `path`: the size got through.
    fn on_mtu_reply(
        &mut self,
        now: Time,
        idx: usize,
        path: Option<PathId>,
        body: &[u8],
    ) -> Result<Received, DropReason> {
        let reply = MtuProbeBody::decode(body, false).ok_or(DropReason::BadProbe)?;
        let b = &mut self.bundles[idx];
        let peer = b.host();
        let Some(p) = path.and_then(|id| b.paths.get_mut(id)) else { return Ok(Received::Probe) };
        if p.pmtu.answered(now, reply.id, reply.size)
            && let Some(datagram) = p.pmtu.changed()
        {
            let addr = p.addr;
            self.announce_pmtu(peer, vec![(addr, datagram)]);
            self.check_tunnel_mtu();
        }
        Ok(Received::Probe)
    }

    /// An authenticated probe reply: measure the path its probe went on.
    fn on_probe_reply(&mut self, now: Time, idx: usize, link: LinkId, body: &[u8]) -> Result<Received, DropReason> {
        let reply = ReplyBody::decode(body).ok_or(DropReason::BadProbe)?;
        let cfg = self.cfg.monitor;
        let b = &mut self.bundles[idx];
        // The reply comes back on the link its probe left from; probe ids
        // are unique in the bundle, so a reply for a path since replaced
        // answers nothing.
        let Some(p) = b.paths.at_slot_mut(usize::from(reply.probe.path)).filter(|p| p.addr.link == link && p.usable)
        else {
            return Ok(Received::Probe);
        };
        if p.monitor.on_reply(now, &reply)
            && let Some(c) = p.monitor.evaluate(now, &cfg, p.last_rx)
        {
            let id = p.id();
            b.rerank();
            self.announce(idx, vec![(id, c)]);
        }
        Ok(Received::Probe)
    }

    /// An authenticated path notice, come on path `via`: the peer says our
    /// data on one of our paths stopped arriving after a given packet. If
    /// this end sent data on it after that packet long enough ago that it
    /// should have arrived before the peer wrote the notice (a one-way trip
    /// on that path, one back on `via`, and their variation), the path lost
    /// it: it is suspect (and probed fast). A sender that paused, or sent
    /// its next packet only just now (bursty video), sent nothing the peer
    /// missed. A confirmed notice (the peer's other paths delivered packets
    /// this one missed) needs only that this end sent something after it.
    fn on_notice(&mut self, now: Time, idx: usize, via: Option<PathId>, body: &[u8]) -> Result<Received, DropReason> {
        let notice = NoticeBody::decode(body).ok_or(DropReason::BadNotice)?;
        let silent = Duration::from_micros(u64::from(notice.silent_us));
        let b = &mut self.bundles[idx];
        let back = via.and_then(|v| b.paths.get(v)).map(|q| (q.monitor.rtt().srtt(), q.monitor.rtt().rttvar()));
        let Some(p) = b.paths.at_slot_mut(usize::from(notice.path)).filter(|p| p.usable) else {
            return Ok(Received::Probe);
        };
        let (out_rtt, out_var) = (p.monitor.rtt().srtt().unwrap_or(silent), p.monitor.rtt().rttvar());
        let transit = match back {
            Some((Some(back_rtt), back_var)) => (out_rtt + back_rtt) / 2 + (out_var + back_var) * 2,
            _ => out_rtt + out_var * 2,
        } + NOTICE_SLACK;
        // A confirmed notice: the peer saw this path's siblings deliver
        // packets it missed, so this end was sending and the path failed.
        let after = p.sent_after(notice.phase, notice.last);
        let lost = after.is_some_and(|t| notice.confirmed || t + transit <= now);
        if lost && let Some(c) = p.monitor.suspect(now, Reason::PeerSilent { silent }) {
            // Large packets may be what it lost (its MTU shrank).
            p.pmtu.confirm_now(now);
            let id = p.id();
            b.rerank();
            self.announce(idx, vec![(id, c)]);
        }
        Ok(Received::Probe)
    }

    /// An authenticated advert from bundle `idx`: take it if newer, flood
    /// it on, recompute the routes. Authenticated hop by hop is not enough
    /// (the neighbour may be compromised, or another tenant's): a new
    /// advert must carry its origin's signature, under the key bound to the
    /// origin ([`Node::origin_keys`]), and may not claim a prefix the config
    /// gives to another host ([`Node::claim`]). Anything else changes no
    /// route and is counted.
    fn on_advert(&mut self, now: Time, idx: usize, body: &[u8], out: &mut Transmits) -> Result<Received, DropReason> {
        let advert = Advert::decode(body).map_err(|_| DropReason::BadAdvert)?;
        self.stats.adverts_in += 1;
        let from = self.bundles[idx].host();
        let me = self.cfg.host;
        let known = self.router.mesh().and_then(|m| m.advert(advert.origin)).is_some_and(|a| a.seq >= advert.seq);
        if advert.origin == me {
            // This host's own, from before a restart, makes it advertise
            // above it: only if it is really its own (a neighbour could
            // otherwise push its sequence number to the end).
            if !(advert.signature_ok() && advert.key == self.advert_key) {
                self.events.push(Event::AdvertRefused { origin: me, from, why: AdvertRefusal::Key });
                return Err(DropReason::AdvertForged);
            }
        } else if !known {
            self.check_advert(&advert, from)?;
        }
        let direct = self.direct_costs();
        if let Heard::New { route_changes } = self.router.receive(advert.clone(), now, &direct) {
            self.flood(now, &advert, Some(from), out);
            self.route_events(route_changes);
        }
        Ok(Received::Advert)
    }

    /// The origin checks of a new advert that came from neighbour `from`.
    fn check_advert(&mut self, advert: &Advert, from: HostId) -> Result<(), DropReason> {
        let origin = advert.origin;
        if !advert.signature_ok() {
            self.events.push(Event::AdvertRefused { origin, from, why: AdvertRefusal::Signature });
            return Err(DropReason::AdvertForged);
        }
        // The origin's key: bound by its own session when it is the
        // neighbour that sent it (authoritative), else pinned on first use.
        let direct = from == origin;
        match self.origin_keys.get(&origin) {
            Some(k) if k.key == advert.key => {}
            Some(k) if !direct => {
                let _ = k;
                self.events.push(Event::AdvertRefused { origin, from, why: AdvertRefusal::Key });
                return Err(DropReason::AdvertForged);
            }
            None if !direct && self.index.contains_key(&origin) => {
                // A neighbour's key comes from the neighbour itself.
                self.events.push(Event::AdvertRefused { origin, from, why: AdvertRefusal::Key });
                return Err(DropReason::AdvertForged);
            }
            old => {
                let first_use = !direct;
                let replaced = old.is_some();
                self.origin_keys.insert(origin, OriginKey { key: advert.key, first_use, via: from });
                self.events.push(Event::OriginKeyBound { origin, via: from, first_use, replaced });
            }
        }
        if let Some(p) =
            advert.prefixes.iter().find(|p| self.claims.iter().any(|(q, owner)| *owner != origin && q.contains(*p)))
        {
            let prefix = *p;
            self.events.push(Event::AdvertRefused { origin, from, why: AdvertRefusal::Prefix(prefix) });
            return Err(DropReason::AdvertUnowned);
        }
        Ok(())
    }
}
