//! The handshake driver: starting, answering and finishing Noise IK
//! handshakes ([`crate::proto::handshake`]) with a bundle's peer, on every
//! usable path, and the per-source rate limit checked before any
//! public-key work.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Event, Node, NodeConfig, Received};
use crate::proto::handshake::{self, HandshakeError, INIT_LEN, Identity, RESPONSE_LEN};
use crate::proto::ids::PathAddr;
use crate::proto::path::PathSet;
use crate::proto::session::{InitiationAge, Pending, Session};
use crate::proto::stats::DropReason;
use crate::proto::time::Time;
use crate::proto::transmit::Transmits;
use crate::proto::wire::{HEADER_LEN, MessageType};

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
}

impl Handshakes {
    pub(super) fn new(cfg: &NodeConfig) -> Handshakes {
        Handshakes {
            identity: Identity::new(cfg.private_key),
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
        let mut init = [0u8; INIT_LEN];
        let _ = handshake::initiate(
            seed,
            &self.handshakes.identity,
            &b.public_key,
            &b.psk,
            me,
            b.host(),
            key_phase,
            timestamp,
            &mut init,
        );
        b.sessions.start_handshake(Pending {
            seed,
            timestamp,
            init,
            key_phase,
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
        self.handshakes.rate_limit(now, addr.remote)?;
        let seed = self.handshakes.seed();
        let me = self.cfg.host;
        let b = &self.bundles[idx];
        let peer = b.host();
        let slot = b.sessions.free_slot();
        let mut reply = [0u8; RESPONSE_LEN];
        let accepted = match handshake::respond(
            seed,
            &self.handshakes.identity,
            &b.public_key,
            &b.psk,
            peer,
            me,
            slot,
            msg,
            &mut reply,
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
        self.handshakes.rate_limit(now, addr.remote)?;
        let me = self.cfg.host;
        let b = &mut self.bundles[idx];
        let Some(pending) = b.sessions.pending() else {
            // Later copies of a response already used, or a stray one.
            return Err(DropReason::HandshakeUnexpected);
        };
        let key_phase = pending.key_phase;
        // Rebuild the initiator's state (same seed, same message) and try
        // this response with it; a bad one leaves the handshake as it was.
        let mut again = [0u8; INIT_LEN];
        let state = handshake::initiate(
            pending.seed,
            &self.handshakes.identity,
            &b.public_key,
            &b.psk,
            me,
            b.host(),
            key_phase,
            pending.timestamp,
            &mut again,
        );
        debug_assert_eq!(again, pending.init);
        let (keys, remote_phase) = handshake::finish(state, msg).map_err(|_| DropReason::HandshakeInvalid)?;
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
}
