//! Timer work: handshake retries and give-ups, rekeying, session expiry,
//! the link monitor's probes and state machine, keepalives, and the mesh.
//!
//! Each part reports when it next has work ([`crate::proto::session::Sessions::next_timer`],
//! the paths' probe, loss and silence deadlines, the keepalive of the
//! quietest path, [`crate::proto::router::Router::next_timeout`]) and the
//! node takes the earliest: deadlines follow from state that changes with
//! every packet (a path's last send, say), so they are computed when asked
//! rather than kept in a table that every packet would have to update.

use super::send::Kind;
use super::{Event, Node};
use crate::proto::bundle::{Bundle, PathCredit};
use crate::proto::ids::HostId;
use crate::proto::mesh::{Advert, RouteChange};
use std::time::Duration;

use super::send::Tx;
use crate::proto::monitor::{Change, Health, MonitorConfig, MtuProbeBody, NoticeBody, ProbeBody, Reason};
use crate::proto::path::PathId;
use crate::proto::path::PathSet;
use crate::proto::pmtu::Phase;
use crate::proto::session::SessionTimeout;
use crate::proto::stats::DropReason;
use crate::proto::time::Time;
use crate::proto::transmit::Transmits;
use crate::proto::wire::{Family, MessageType, OVERHEAD};

/// Only the first 256 slots fit a probe's path byte (all of them do today).
const PROBED_SLOTS: usize = u8::MAX as usize + 1;

/// When the link monitor of bundle `b` wants to run next.
fn next_monitor_timer(b: &Bundle, cfg: &MonitorConfig, clock: Time) -> Option<Time> {
    let can_send = b.sessions.can_send();
    b.paths()
        .iter()
        .filter(|p| p.usable && p.id().slot() < PROBED_SLOTS)
        .flat_map(|p| {
            let probe = can_send.then(|| p.monitor.next_probe(cfg, p.busy(clock, cfg.interval)));
            // A path MTU search starts as soon as the path is alive.
            let idle = p.pmtu.phase() == Phase::Idle && p.monitor.health() != Health::Down;
            let pmtu = can_send.then(|| if idle { Some(clock) } else { p.pmtu.next_timer() }).flatten();
            [probe, p.monitor.next_loss(), p.monitor.next_silence(cfg, p.last_rx), p.monitor.next_stall(), pmtu]
        })
        .flatten()
        .chain(b.sessions.next_settle())
        .min()
}

/// Tell the peer, on the other usable paths, that its data on path `id`
/// (named by the peer's slot for it) stopped arriving here `silent` ago;
/// `confirmed`: its siblings delivered packets it missed.
pub(super) fn send_notice(
    tx: &mut Tx<'_>,
    b: &mut Bundle,
    now: Time,
    id: PathId,
    silent: Duration,
    confirmed: bool,
    out: &mut Transmits,
) {
    let Some((Some(path), Some((phase, last)))) = b.paths.get(id).map(|p| (p.peer_slot, p.last_seq)) else { return };
    let mut set = PathSet::EMPTY;
    for q in b.paths.iter().filter(|q| q.usable && q.id() != id) {
        set.insert(q.id());
    }
    if set.is_empty() {
        return;
    }
    let silent_us = u32::try_from(silent.as_micros()).unwrap_or(u32::MAX);
    let mut body = [0u8; NoticeBody::LEN];
    NoticeBody { path, silent_us, phase, last, confirmed }.encode(&mut body);
    if let Err(reason) = tx.seal(b, now, set, Kind::control(MessageType::PathNotice), &body, out) {
        tx.stats.drops.add(reason);
    }
}

/// Send path `id` of `b` an MTU probe of `size` bytes (a datagram of
/// exactly that length: the body's id and size, then zeros).
fn send_mtu_probe(tx: &mut Tx<'_>, b: &mut Bundle, now: Time, id: PathId, size: u16, out: &mut Transmits) {
    let probe_id = b.probe_id();
    let Some(p) = b.paths.get_mut(id) else { return };
    p.pmtu.probing(now, probe_id, size);
    let mut body = std::mem::take(tx.pad);
    body.clear();
    body.resize(usize::from(size).saturating_sub(OVERHEAD).max(MtuProbeBody::LEN), 0);
    MtuProbeBody { id: probe_id, size }.encode(&mut body);
    if let Err(reason) = tx.seal(b, now, PathSet::of(id), Kind::control(MessageType::MtuProbe), &body, out) {
        tx.stats.drops.add(reason);
    }
    *tx.pad = body;
}

/// Paths of `b` whose data stalled while its siblings delivered packets it
/// did not (newer sequence numbers, their first copies older than the
/// stalled path's allowance, as many as its loss makes a one-in-a-million
/// run): the sender still sends, so the stalled path is the one that
/// failed. It turns suspect, and the peer is told again (it may have paused
/// when the stall was first seen). At the end of a stream every path falls
/// silent, and after a pause of the sender every path resumes: nothing
/// turns suspect.
pub(super) fn suspect_stalled(
    tx: &mut Tx<'_>,
    b: &mut Bundle,
    now: Time,
    out: &mut Transmits,
) -> Vec<(PathId, Change)> {
    let mut changes = Vec::new();
    for slot in b.usable().slots() {
        let Some(p) = b.paths.at_slot(slot).filter(|p| p.monitor.stall_pending()) else { continue };
        let id = p.id();
        let (gap, last) = p.monitor.data_pace();
        let (Some(gap), Some(last), Some(allow), Some(last_seq)) = (gap, last, p.monitor.allowance(), p.last_seq)
        else {
            continue;
        };
        let silent = now - last;
        // Packets its siblings delivered after its last one, long enough
        // ago (its allowance) that its own copies should have come too; as
        // many as its loss makes a one-in-a-million run.
        // A slower path's copies come later than the first: only packets
        // first seen longer ago than its lateness and allowance count.
        let lateness = p.lateness;
        let missed = b.missed_since(last_seq, now - allow - lateness);
        if missed < p.monitor.chance_run() {
            continue;
        }
        if let Some(c) = b.paths.get_mut(id).and_then(|p| p.monitor.suspect(now, Reason::Stalled { silent, gap })) {
            // Large packets may be what it lost (its MTU shrank).
            if let Some(p) = b.paths.get_mut(id) {
                p.pmtu.confirm_now(now);
            }
            changes.push((id, c));
            send_notice(tx, b, now, id, silent, true, out);
        }
    }
    changes
}

impl Node {
    /// Send what the shapers (of links, and of paths toward a peer's
    /// download rate) may send at `now`. A copy a path's shaper releases
    /// takes its link's tokens too.
    pub(super) fn release_shapers(&mut self, now: Time, out: &mut Transmits) {
        let bundles = if self.links.path_shapers > 0 { &mut self.bundles[..] } else { &mut [] };
        for b in bundles {
            for p in b.paths.iter_mut() {
                if let Some(s) = p.shaper.as_mut() {
                    let sent = s.release(now, out);
                    if sent > 0 {
                        self.links.charge(p.addr.link, sent);
                    }
                }
            }
        }
        self.links.release(now, out);
    }

    /// When [`Node::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Time> {
        let keepalive = self.cfg.keepalive.and_then(|ka| {
            self.bundles
                .iter()
                .flat_map(|b| b.paths().iter())
                .filter(|p| p.usable)
                .map(|p| p.last_tx.map_or(Time::ZERO, |t| t + ka))
                .min()
        });
        let sessions = self.bundles.iter().filter_map(|b| b.sessions.next_timer()).min();
        let monitor = self.bundles.iter().filter_map(|b| next_monitor_timer(b, &self.cfg.monitor, self.clock)).min();
        let bundles = if self.links.path_shapers > 0 { &self.bundles[..] } else { &[] };
        let paths = bundles.iter().flat_map(|b| b.paths().iter()).filter_map(|p| p.shaper.as_ref()?.next_release());
        let shapers = self.links.next_release().into_iter().chain(paths).min();
        [keepalive, sessions, monitor, self.router.next_timeout(), shapers].into_iter().flatten().min()
    }

    /// Run timers due at `now`: what the shapers hold that may go, handshake retries and give-ups, rekeying,
    /// session expiry, the link monitor, keepalives (one per peer, sealed
    /// once and sent on each of its paths quiet for the keepalive interval;
    /// with no session, a handshake instead) and the mesh.
    pub fn handle_timeout(&mut self, now: Time, out: &mut Transmits) {
        self.tick(now);
        self.release_shapers(now, out);
        for idx in 0..self.bundles.len() {
            match self.bundles[idx].sessions.on_timeout(now) {
                SessionTimeout::Nothing => {}
                SessionTimeout::Retry { started } => self.initiate(now, idx, Some(started), out),
                SessionTimeout::GaveUp { dropped } => {
                    for _ in 0..dropped {
                        self.stats.drops.add(DropReason::NoSession);
                    }
                    let peer = self.bundles[idx].host();
                    self.events.push(Event::HandshakeTimedOut { peer });
                }
            }
            self.maybe_rekey(now, idx, out);
            self.monitor_paths(now, idx, out);
            if let Some(ka) = self.cfg.keepalive {
                self.keepalive(now, idx, Some(ka), out);
            }
        }
        self.mesh_tick(now, out);
        self.check_tunnel_mtu();
    }

    /// Probe the paths of bundle `idx` that are due, give up probes
    /// unanswered too long, credit settled data, and run the state machine.
    fn monitor_paths(&mut self, now: Time, idx: usize, out: &mut Transmits) {
        let cfg = self.cfg.monitor;
        let mut changes = Vec::new();
        let mut stalls = Vec::new();
        let (b, mut tx) = self.tx(idx);
        let can_send = b.sessions.can_send();
        b.sessions.settle(now, &mut PathCredit(&mut b.paths));
        for slot in b.usable().slots().filter(|&s| s < PROBED_SLOTS) {
            let Some(p) = b.paths.at_slot_mut(slot) else { continue };
            p.monitor.expire(now);
            if let Some(c) = p.monitor.evaluate(now, &cfg, p.last_rx) {
                changes.push((p.id(), c));
            }
            if let Some((silent, _)) = p.monitor.stalled(now) {
                stalls.push((p.id(), silent));
            }
        }
        // Tell the peer on the other paths: it knows whether it was sending.
        for (id, silent) in stalls {
            send_notice(&mut tx, b, now, id, silent, false, out);
        }
        changes.extend(suspect_stalled(&mut tx, b, now, out));
        for slot in b.usable().slots().filter(|&s| s < PROBED_SLOTS) {
            let Some(p) = b.paths.at_slot_mut(slot) else { continue };
            if can_send && p.monitor.next_probe(&cfg, p.busy(now, cfg.interval)) <= now {
                let id = p.id();
                let probe_id = b.probe_id();
                if let Some(p) = b.paths.get_mut(id) {
                    p.monitor.sent_probe_as(now, probe_id);
                }
                let mut body = [0u8; ProbeBody::LEN];
                let down_kbps = b.paths.get(id).map_or(0, |p| tx.links.down_kbps(p.addr.link));
                ProbeBody { id: probe_id, path: slot as u8, sent: now.as_nanos(), down_kbps }.encode(&mut body);
                if let Err(reason) = tx.seal(b, now, PathSet::of(id), Kind::control(MessageType::Probe), &body, out) {
                    tx.stats.drops.add(reason);
                }
            }
        }
        let hdr = self.cfg.transport_header;
        let (b, mut tx) = self.tx(idx);
        let mut pmtu_events = Vec::new();
        for slot in b.usable().slots() {
            let Some(p) = b.paths.at_slot_mut(slot) else { continue };
            p.pmtu.set_ceiling(now, super::path_ceiling(tx.links, hdr, p.addr));
            if can_send {
                let sizes = p.pmtu.poll(now, p.monitor.health() != Health::Down, p.monitor.probe_timeout());
                let id = p.id();
                for size in sizes.iter() {
                    send_mtu_probe(&mut tx, b, now, id, size, out);
                }
            }
            if let Some(p) = b.paths.at_slot_mut(slot)
                && let Some(datagram) = p.pmtu.changed()
            {
                pmtu_events.push((p.addr, datagram));
            }
        }
        b.rerank();
        let peer = b.host();
        self.announce(idx, changes);
        self.announce_pmtu(peer, pmtu_events);
    }

    /// Log the paths' new MTUs.
    pub(super) fn announce_pmtu(&mut self, peer: HostId, changes: Vec<(crate::proto::ids::PathAddr, u16)>) {
        for (path, datagram) in changes {
            let headers = Family::of(path.remote).ip_header_len() + self.cfg.transport_header;
            let mtu = (usize::from(datagram) + headers).min(usize::from(u16::MAX)) as u16;
            self.events.push(Event::PathMtu { peer, path, datagram, mtu });
        }
    }

    /// The peers reachable now, with the cost of their best path that is
    /// not down (microseconds), by host id.
    pub(super) fn direct_costs(&self) -> Vec<(HostId, u32)> {
        let mut v: Vec<(HostId, u32)> = self
            .bundles
            .iter()
            .filter(|b| b.sessions.can_send())
            .filter_map(|b| Some((b.host(), b.best_cost()?)))
            .collect();
        v.sort();
        v
    }

    /// Seal the encoded advert `body` for bundle `idx` on all its usable paths.
    fn send_advert(&mut self, now: Time, idx: usize, body: &[u8], out: &mut Transmits) {
        let (b, mut tx) = self.tx(idx);
        let set = b.usable();
        if tx.seal(b, now, set, Kind::control(MessageType::RouteAdvert), body, out).is_ok() {
            tx.stats.adverts_out.add(OVERHEAD + body.len());
        }
    }

    /// Send `advert` to every synced peer but `except`.
    pub(super) fn flood(&mut self, now: Time, advert: &Advert, except: Option<HostId>, out: &mut Transmits) {
        let mut body = Vec::new();
        advert.encode(&mut body);
        for idx in 0..self.bundles.len() {
            let b = &self.bundles[idx];
            if Some(b.host()) != except && b.sessions.can_send() && b.synced {
                self.send_advert(now, idx, &body, out);
            }
        }
    }

    /// Announce next-hop changes.
    pub(super) fn route_events(&mut self, changes: Vec<RouteChange>) {
        for c in changes {
            self.events.push(Event::RouteChanged { dest: c.dest, next: c.next, cost: c.cost });
        }
    }

    /// The mesh's timer work: send the whole database to peers with a new
    /// session, advertise this host when due, recompute the routes.
    fn mesh_tick(&mut self, now: Time, out: &mut Transmits) {
        let Some(mesh) = self.router.mesh() else { return };
        let mut body = Vec::new();
        let mut new_session = Vec::new();
        for (idx, b) in self.bundles.iter_mut().enumerate() {
            if !b.sessions.can_send() {
                b.synced = false;
            } else if !b.synced {
                b.synced = true;
                new_session.push(idx);
            }
        }
        if !new_session.is_empty() {
            let adverts: Vec<Advert> = mesh.others().cloned().collect();
            for idx in new_session {
                for a in &adverts {
                    a.encode(&mut body);
                    self.send_advert(now, idx, &body, out);
                }
            }
            // And this host's own, fresh, to everyone.
            self.router.readvertise();
        }
        let direct = self.direct_costs();
        let wall_ms = self.cfg.wall_epoch_ns.saturating_add(now.as_nanos()) / 1_000_000;
        let Some((advert, changes)) = self.router.tick(now, wall_ms, &direct) else { return };
        if let Some(a) = advert {
            self.flood(now, &a, None, out);
        }
        self.route_events(changes);
    }
}
