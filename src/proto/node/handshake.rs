//! The handshake driver: starting, answering and finishing Noise IK
//! handshakes ([`crate::proto::handshake`]) with a bundle's peer, on every
//! usable path, and the per-source rate limit checked before any
//! public-key work.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Event, Node, NodeConfig, Received};
use crate::proto::cookie::{self, MAC_LEN};
use crate::proto::handshake::{self, HandshakeError, INIT_LEN, INIT_MSG_LEN, Identity, RESPONSE_LEN, RESPONSE_MSG_LEN};
use crate::proto::ids::PathAddr;
use crate::proto::ids::Seq;
use crate::proto::path::PathSet;
use crate::proto::session::{InitiationAge, Pending, Session};
use crate::proto::stats::DropReason;
use crate::proto::time::Time;
use crate::proto::transmit::Transmits;
use crate::proto::wire::{HEADER_LEN, Header, MessageType};

/// Source addresses the initiation rate limiter remembers (then it starts over).
const MAX_LIMITED_SOURCES: usize = 4096;

/// A token bucket per source address for handshake messages.
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

/// What handshakes need that no bundle owns: this host's identity, the
/// random generator for ephemeral keys, the rate limiter.
#[derive(Debug)]
pub(super) struct Handshakes {
    identity: Identity,
    rng: ChaCha8Rng,
    limiter: InitLimiter,
    per_second: u32,
    /// mac1 key of messages to this host, cookies, the work budget.
    responder: cookie::Responder,
}

impl Handshakes {
    pub(super) fn new(cfg: &NodeConfig) -> Handshakes {
        let identity = Identity::new(cfg.private_key);
        Handshakes {
            responder: cookie::Responder::new(&identity.public()),
            identity,
            rng: ChaCha8Rng::from_seed(cfg.rng_seed),
            limiter: InitLimiter::default(),
            per_second: cfg.handshakes_per_second,
        }
    }

    pub(super) fn public_key(&self) -> [u8; 32] {
        self.identity.public()
    }

    /// A secret key for the classifier's flow table hash.
    pub(super) fn flow_key(&mut self) -> [u64; 2] {
        [self.rng.next_u64(), self.rng.next_u64()]
    }

    fn seed(&mut self) -> [u8; 32] {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        seed
    }

    pub(super) fn set_rate(&mut self, per_second: u32) {
        self.per_second = per_second;
    }

    /// Handshake messages cost public-key work: at most `per_second` per
    /// source address, checked before any.
    fn rate_limit(&mut self, now: Time, from: SocketAddr) -> Result<(), DropReason> {
        if self.limiter.allow(from.ip(), now, self.per_second) { Ok(()) } else { Err(DropReason::RateLimited) }
    }
}

impl Node {
    /// Start a handshake with bundle `idx` if it needs one.
    pub(super) fn maybe_rekey(&mut self, now: Time, idx: usize, out: &mut Transmits) {
        if self.bundles[idx].sessions.wants_handshake(now) {
            self.initiate(now, idx, None, out);
        }
    }

    /// Send an initiation to bundle `idx` on all its usable paths.
    /// `started` carries over the start of an attempt being retried.
    pub(super) fn initiate(&mut self, now: Time, idx: usize, started: Option<Time>, out: &mut Transmits) {
        let seed = self.handshakes.seed();
        let timestamp = self.cfg.wall_epoch_ns.saturating_add(now.as_nanos());
        let me = self.cfg.host;
        let b = &mut self.bundles[idx];
        let key_phase = b.sessions.initiation_phase();
        let offered_aes = self.cfg.aes_gcm;
        let mut init = [0u8; INIT_MSG_LEN];
        let _ = handshake::initiate(
            seed,
            &self.handshakes.identity,
            &b.public_key,
            &b.psk,
            me,
            b.host(),
            key_phase,
            offered_aes,
            timestamp,
            (&mut init[..INIT_LEN]).try_into().expect("INIT_LEN bytes"),
        );
        let (noise, macs) = init.split_at_mut(INIT_LEN);
        let mac1 = cookie::mac1(&b.keys.mac1, MessageType::HandshakeInit, me, b.host(), noise);
        macs[..MAC_LEN].copy_from_slice(&mac1);
        // mac2 with the peer's cookie while it lasts (it is under load).
        if let Some((c, at)) = b.cookie
            && now - at < cookie::COOKIE_LIFETIME
        {
            macs[MAC_LEN..].copy_from_slice(&cookie::mac2(&c, noise, &mac1));
        }
        b.sessions.start_handshake(Pending {
            seed,
            timestamp,
            init,
            key_phase,
            offered_aes,
            started: started.unwrap_or(now),
            last_sent: now,
        });
        self.stats.handshakes_out += 1;
        let (b, mut tx) = self.tx(idx);
        let set = b.usable();
        tx.plain(b, now, set, MessageType::HandshakeInit, &init, out);
    }

    pub(super) fn on_initiation(
        &mut self,
        now: Time,
        idx: usize,
        addr: PathAddr,
        msg: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let me = self.cfg.host;
        let peer = self.bundles[idx].host();
        if msg.len() != INIT_MSG_LEN {
            return Err(DropReason::HandshakeInvalid);
        }
        let (noise, macs) = msg.split_at(INIT_LEN);
        let (mac1, mac2) = macs.split_at(MAC_LEN);
        let mac1: &[u8; MAC_LEN] = mac1.try_into().expect("MAC_LEN bytes");
        let h = &mut self.handshakes;
        if !cookie::mac1_ok(h.responder.mac1_key(), MessageType::HandshakeInit, peer, me, noise, mac1) {
            return Err(DropReason::HandshakeMac);
        }
        h.rate_limit(now, addr.remote)?;
        // Under load, only an initiation whose sender proved its address
        // (mac2 with its cookie) costs public-key work; others get a cookie.
        if !h.responder.spend(now) {
            let fresh = h.seed();
            if !h.responder.mac2_ok(now, addr.remote, noise, mac1, mac2, || fresh) {
                let (a, b) = (h.seed(), h.seed());
                let mut random = [a, b].into_iter();
                let reply = h.responder.reply(now, addr.remote, mac1, || random.next().unwrap_or(a));
                let header = Header {
                    msg_type: MessageType::Cookie,
                    hop_limit: 1,
                    key_phase: false,
                    sole: false,
                    realtime: false,
                    sender: me,
                    receiver: peer,
                    seq: Seq(0),
                };
                out.add_path(addr);
                out.push_plain(&header, &reply);
                self.stats.cookies_out += 1;
                return Err(DropReason::UnderLoad);
            }
        }
        self.stats.handshake_work += 1;
        let seed = self.handshakes.seed();
        let b = &self.bundles[idx];
        let slot = b.sessions.free_slot();
        let mut reply = [0u8; RESPONSE_MSG_LEN];
        let accepted = match handshake::respond(
            seed,
            &self.handshakes.identity,
            &b.public_key,
            &b.psk,
            peer,
            me,
            slot,
            self.cfg.aes_gcm,
            noise,
            (&mut reply[..RESPONSE_LEN]).try_into().expect("RESPONSE_LEN bytes"),
        ) {
            Ok(a) => a,
            Err(reason) => {
                self.bundles[idx].refused = Some((now, reason));
                self.events.push(Event::HandshakeRejected { peer, reason });
                return Err(match reason {
                    HandshakeError::Invalid => DropReason::HandshakeInvalid,
                    HandshakeError::WrongKey => DropReason::HandshakeWrongKey,
                });
            }
        };
        let (b, mut tx) = self.tx(idx);
        match b.sessions.initiation_age(accepted.timestamp) {
            InitiationAge::New => {}
            age => {
                // A replay, or a later copy of one initiation sent on several
                // paths (or sent again after crossing ours). If the session it
                // made is still unconfirmed, the response may have been lost:
                // answer again, on the path this copy came by if it is a known
                // one (no new path from a copy; the response is smaller).
                if age == InitiationAge::Repeat
                    && let Some(response) = b.sessions.unconfirmed_response()
                    && let Some(id) = b.known_path(addr)
                {
                    tx.plain(b, now, PathSet::of(id), MessageType::HandshakeResponse, &response, out);
                }
                return Err(DropReason::HandshakeReplay);
            }
        }
        if let Some(p) = b.sessions.pending()
            && me < peer
        {
            // Both started at once: the lower host id's handshake goes on.
            // Its initiation may have been lost (the peer was not up yet), so
            // the same initiation goes again now rather than after the retry
            // timeout; a peer that had it refuses the copy as a replay.
            let init = p.init;
            let set = b.usable();
            tx.plain(b, now, set, MessageType::HandshakeInit, &init, out);
            return Err(DropReason::HandshakeCrossed);
        }
        let session = Session::new(accepted.keys, self.cfg.window_packets, now, false, accepted.key_phase);
        let (b, mut tx) = self.tx(idx);
        let mac1 = cookie::mac1(&b.keys.mac1, MessageType::HandshakeResponse, me, peer, &reply[..RESPONSE_LEN]);
        reply[RESPONSE_LEN..].copy_from_slice(&mac1);
        b.sessions.answered(slot, session, reply);
        b.stats.handshakes += 1;
        b.touch_path(now, addr, Some(HEADER_LEN + msg.len()));
        tx.stats.handshakes_in += 1;
        let set = b.usable();
        tx.plain(b, now, set, MessageType::HandshakeResponse, &reply, out);
        Ok(Received::Handshake)
    }

    pub(super) fn on_response(
        &mut self,
        now: Time,
        idx: usize,
        addr: PathAddr,
        msg: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let me = self.cfg.host;
        if msg.len() != RESPONSE_MSG_LEN {
            return Err(DropReason::HandshakeInvalid);
        }
        let (noise, mac1) = msg.split_at(RESPONSE_LEN);
        let peer = self.bundles[idx].host();
        if !cookie::mac1_ok(self.handshakes.responder.mac1_key(), MessageType::HandshakeResponse, peer, me, noise, mac1)
        {
            return Err(DropReason::HandshakeMac);
        }
        self.handshakes.rate_limit(now, addr.remote)?;
        let b = &mut self.bundles[idx];
        let Some(pending) = b.sessions.pending() else {
            // Later copies of a response already used, or a stray one.
            return Err(DropReason::HandshakeUnexpected);
        };
        let (key_phase, offered_aes) = (pending.key_phase, pending.offered_aes);
        // Rebuild the initiator's state (same seed, same message) and try
        // this response with it; a bad one leaves the handshake as it was.
        self.stats.handshake_work += 1;
        let mut again = [0u8; INIT_LEN];
        let state = handshake::initiate(
            pending.seed,
            &self.handshakes.identity,
            &b.public_key,
            &b.psk,
            me,
            b.host(),
            key_phase,
            offered_aes,
            pending.timestamp,
            &mut again,
        );
        debug_assert_eq!(again[..], pending.init[..INIT_LEN]);
        let (keys, remote_phase) =
            handshake::finish(state, offered_aes, noise).map_err(|_| DropReason::HandshakeInvalid)?;
        b.sessions.end_handshake();
        b.sessions.install(key_phase, Session::new(keys, self.cfg.window_packets, now, true, remote_phase));
        b.stats.handshakes += 1;
        b.touch_path(now, addr, Some(HEADER_LEN + msg.len()));
        let peer = b.host();
        self.events.push(Event::SessionEstablished { peer, initiator: true });
        if !self.flush_staged(now, idx, out) {
            // Confirm the session to the responder even with nothing to say.
            self.keepalive(now, idx, None, out);
        }
        Ok(Received::Handshake)
    }

    /// A cookie reply from bundle `idx`'s peer: it is under load and wants
    /// mac2. The cookie is kept (for the next initiations) and the pending
    /// initiation goes again at once with it (at most every 50 ms).
    pub(super) fn on_cookie(
        &mut self,
        now: Time,
        idx: usize,
        msg: &[u8],
        out: &mut Transmits,
    ) -> Result<Received, DropReason> {
        let b = &mut self.bundles[idx];
        let Some(pending) = b.sessions.pending() else {
            return Err(DropReason::HandshakeUnexpected);
        };
        let mac1: [u8; MAC_LEN] = pending.init[INIT_LEN..INIT_LEN + MAC_LEN].try_into().expect("MAC_LEN bytes");
        let c = cookie::open_reply(&b.keys.cookie, &mac1, msg).ok_or(DropReason::BadCookie)?;
        b.cookie = Some((c, now));
        if b.cookie_resent.is_some_and(|t| now - t < COOKIE_RESEND_GAP) {
            return Ok(Received::Handshake);
        }
        b.cookie_resent = Some(now);
        let pending = b.sessions.pending_mut().expect("checked above");
        let mac2 = cookie::mac2(&c, &pending.init[..INIT_LEN], &mac1);
        pending.init[INIT_LEN + MAC_LEN..].copy_from_slice(&mac2);
        pending.last_sent = now;
        let init = pending.init;
        let (b, mut tx) = self.tx(idx);
        let set = b.usable();
        tx.plain(b, now, set, MessageType::HandshakeInit, &init, out);
        Ok(Received::Handshake)
    }
}

/// An initiation goes again on a cookie reply at most this often.
const COOKIE_RESEND_GAP: std::time::Duration = std::time::Duration::from_millis(50);
