//! The sessions with one neighbour: two key slots chosen by the header's key
//! phase (the current session and the one it replaced, kept for packets in
//! flight), the handshake in progress, packets waiting for a session, and
//! WireGuard's timers (its whitepaper, section 6).
//!
//! A session is sealed under fresh keys from a Noise handshake, so its
//! sequence numbers start at 1 and never repeat under its keys; a new
//! session gets a new window. A responder does not send on a new session
//! until the initiator has used it (key confirmation): until then it keeps
//! sending on the previous one, or holds packets.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::crypto::{Cipher, SessionKeys};
use super::ids::Seq;
use super::monitor::{Credit, Passive, SETTLE_AFTER};
use super::time::Time;
use super::window::ReplayWindow;

/// The initiator of a session starts a new handshake once it is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old is no longer used, for sending or receiving.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// An unanswered initiation is sent again (with a new ephemeral key) after this.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A handshake unanswered for this long is given up (and its waiting packets dropped).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// A new handshake is started after this many packets on one session.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// No packet is sealed on a session past this many.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// [`REKEY_AFTER_MESSAGES`] for an AES-256-GCM session. GCM's security
/// bound falls with the square of the blocks sealed under one key (not
/// with the nonces, as ChaCha20-Poly1305's): 2^29 datagrams of 1500 bytes
/// keep the attacker's advantage under 2^-56, TLS 1.3's margin. At a
/// million packets a second that is 4.5 minutes, so the 2-minute rekey
/// comes first at any rate a site sees.
pub const AES_REKEY_AFTER_MESSAGES: u64 = 1 << 28;
/// [`REJECT_AFTER_MESSAGES`] for an AES-256-GCM session.
pub const AES_REJECT_AFTER_MESSAGES: u64 = 1 << 29;
/// Packets held while no session can carry them.
pub const MAX_STAGED: usize = 128;

/// One session's keys and counters.
#[derive(Debug)]
pub struct Session {
    /// Keys from the handshake; shared with the transmit batches that hold
    /// datagrams still to be sealed with them.
    pub keys: Arc<SessionKeys>,
    /// Last sequence number sealed.
    pub tx_seq: u64,
    /// Dedup / anti-replay window of what it received.
    pub window: ReplayWindow,
    /// When the handshake completed.
    pub created: Time,
    /// This host started the handshake.
    pub initiator: bool,
    /// The key phase to put on what is sealed with it: the neighbour's slot.
    pub remote_phase: bool,
    /// It may be used for sending (the initiator: at once; the responder:
    /// once a packet sealed with it arrived).
    pub confirmed: bool,
    /// Which paths delivered its recent data packets.
    pub passive: Passive,
}

impl Session {
    /// A new session.
    pub fn new(keys: SessionKeys, window_packets: u32, now: Time, initiator: bool, remote_phase: bool) -> Session {
        Session {
            keys: Arc::new(keys),
            tx_seq: 0,
            window: ReplayWindow::new(window_packets),
            created: now,
            initiator,
            remote_phase,
            confirmed: initiator,
            passive: Passive::default(),
        }
    }

    fn alive(&self, now: Time) -> bool {
        now - self.created < REJECT_AFTER_TIME
    }

    /// Packets after which a new handshake starts, and past which nothing
    /// is sealed, for this session's cipher.
    fn message_limits(&self) -> (u64, u64) {
        match self.keys.cipher() {
            Cipher::ChaCha20Poly1305 => (REKEY_AFTER_MESSAGES, REJECT_AFTER_MESSAGES),
            Cipher::Aes256Gcm => (AES_REKEY_AFTER_MESSAGES, AES_REJECT_AFTER_MESSAGES),
        }
    }

    /// Whether nothing more may be sealed with it.
    fn used_up(&self) -> bool {
        self.tx_seq >= self.message_limits().1
    }

    /// The next sequence number, or `None` when the session is used up.
    pub fn next_seq(&mut self) -> Option<Seq> {
        if self.used_up() {
            return None;
        }
        self.tx_seq += 1;
        Some(Seq(self.tx_seq))
    }
}

/// A handshake this host started and waits an answer for.
#[derive(Debug)]
pub struct Pending {
    /// The seed of the initiation's ephemeral key and its timestamp: the
    /// Noise state is rebuilt from them for each response that arrives, so
    /// a forged or corrupted response cannot spoil the handshake.
    pub seed: [u8; 32],
    /// Timestamp carried by the initiation.
    pub timestamp: u64,
    /// The initiation as sent (the Noise message, mac1 and mac2), to send
    /// again as it is (with a new mac2 when a cookie comes).
    pub init: [u8; super::handshake::INIT_MSG_LEN],
    /// Key phase the new session will have.
    pub key_phase: bool,
    /// The initiation offered AES-256-GCM.
    pub offered_aes: bool,
    /// When the first initiation of this attempt was sent.
    pub started: Time,
    /// When the last initiation was sent.
    pub last_sent: Time,
}

/// A packet waiting for a session, with the hop limit it will carry.
#[derive(Debug)]
pub struct Staged {
    /// Hop limit to seal it with.
    pub hop_limit: u8,
    /// Its class.
    pub class: crate::proto::class::Class,
    /// The IP packet.
    pub packet: Vec<u8>,
}

/// Everything about the sessions with one peer.
#[derive(Debug, Default)]
pub struct Sessions {
    slots: [Option<Session>; 2],
    current: Option<bool>,
    /// The handshake in progress, if this host started one.
    pending: Option<Pending>,
    /// Timestamp of the last initiation accepted from this peer.
    last_init_timestamp: Option<u64>,
    /// The response sent to it, with the slot of the session it made.
    last_response: Option<(bool, [u8; super::handshake::RESPONSE_MSG_LEN])>,
    /// Packets waiting for a session (oldest first).
    staged: VecDeque<Staged>,
}

/// What a session timer asks for ([`Sessions::on_timeout`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionTimeout {
    /// Nothing.
    Nothing,
    /// Send the initiation again (a new one, same attempt started at `started`).
    Retry {
        /// When the attempt began.
        started: Time,
    },
    /// The attempt was given up; this many waiting packets were dropped.
    GaveUp {
        /// Packets dropped.
        dropped: usize,
    },
}

/// How an authenticated initiation's timestamp compares with the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitiationAge {
    /// Newer: a new handshake.
    New,
    /// The same initiation again (a copy on another path, or sent again).
    Repeat,
    /// Older: a replay.
    Replay,
}

impl Sessions {
    /// The session to seal with now, and the key phase to seal with.
    pub fn sending(&mut self, now: Time) -> Option<(bool, &mut Session)> {
        let phase = self.current?;
        match &mut self.slots[usize::from(phase)] {
            Some(s) if s.confirmed && s.alive(now) && !s.used_up() => Some((s.remote_phase, s)),
            _ => None,
        }
    }

    /// The session a packet with key phase `phase` was sealed with.
    pub fn receiving(&mut self, phase: bool, now: Time) -> Option<&mut Session> {
        self.slots[usize::from(phase)].as_mut().filter(|s| s.alive(now))
    }

    /// [`Sessions::receiving`], read only.
    pub fn peek(&self, phase: bool, now: Time) -> Option<&Session> {
        self.slots[usize::from(phase)].as_ref().filter(|s| s.alive(now))
    }

    /// A packet arrived on the session of `phase`: a responder's session is
    /// now confirmed and becomes the one to send on. True if that happened.
    pub fn confirm(&mut self, phase: bool) -> bool {
        match &mut self.slots[usize::from(phase)] {
            Some(s) if !s.confirmed => {
                s.confirmed = true;
                self.current = Some(phase);
                true
            }
            _ => false,
        }
    }

    /// The slot for a new session (handshake started or answered here): the
    /// one not being sent on, so the session in use is never replaced.
    pub fn free_slot(&self) -> bool {
        !self.current.unwrap_or(true)
    }

    /// Put a new session in slot `phase`; the initiator sends on it at once.
    pub fn install(&mut self, phase: bool, session: Session) {
        let confirmed = session.confirmed;
        self.slots[usize::from(phase)] = Some(session);
        if confirmed {
            self.current = Some(phase);
        }
    }

    /// Whether a new handshake should start now (none is in progress).
    pub fn wants_handshake(&mut self, now: Time) -> bool {
        if self.pending.is_some() {
            return false;
        }
        match self.sending(now) {
            None => !self.staged.is_empty(),
            Some((_, s)) => (s.initiator && now - s.created >= REKEY_AFTER_TIME) || s.tx_seq >= s.message_limits().0,
        }
    }

    /// Forget sessions past [`REJECT_AFTER_TIME`].
    pub fn expire(&mut self, now: Time) {
        for slot in &mut self.slots {
            if slot.as_ref().is_some_and(|s| !s.alive(now)) {
                *slot = None;
            }
        }
        if self.current.is_some_and(|p| self.slots[usize::from(p)].is_none()) {
            self.current = None;
        }
    }

    /// The next time a session timer fires.
    pub fn next_timer(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut at = |x: Time| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(p) = &self.pending {
            at(p.last_sent + REKEY_TIMEOUT);
            at(p.started + REKEY_ATTEMPT_TIME);
        }
        for s in self.slots.iter().flatten() {
            at(s.created + REJECT_AFTER_TIME);
        }
        // Rekeying by time: the initiator of the session being sent on,
        // unless a handshake already runs.
        if self.pending.is_none()
            && let Some(s) = self.current.and_then(|p| self.slots[usize::from(p)].as_ref())
            && s.initiator
        {
            at(s.created + REKEY_AFTER_TIME);
        }
        t
    }

    /// The session being sent on, if any.
    pub fn current(&self) -> Option<&Session> {
        self.current.and_then(|p| self.slots[usize::from(p)].as_ref())
    }

    /// The last response sent, while the session it made is not confirmed
    /// yet (the initiator may not have it).
    pub fn unconfirmed_response(&self) -> Option<[u8; super::handshake::RESPONSE_MSG_LEN]> {
        let (phase, r) = self.last_response?;
        self.slots[usize::from(phase)].as_ref().is_some_and(|s| !s.confirmed).then_some(r)
    }

    /// Whether a session can be sent on (ignoring its age: expiry is a timer of its own).
    pub fn can_send(&self) -> bool {
        self.current.and_then(|p| self.slots[usize::from(p)].as_ref()).is_some_and(|s| s.confirmed)
    }

    /// Credit the paths with the settled data of both sessions.
    pub fn settle(&mut self, now: Time, credit: &mut impl Credit) {
        for s in self.slots.iter_mut().flatten() {
            s.passive.settle(now, credit);
        }
    }

    /// The path in `slot` is gone: neither session's tracker credits it.
    pub fn forget_path(&mut self, slot: usize) {
        for s in self.slots.iter_mut().flatten() {
            s.passive.forget(slot);
        }
    }

    /// When the oldest unsettled data packet settles.
    pub fn next_settle(&self) -> Option<Time> {
        self.slots.iter().flatten().filter_map(|s| s.passive.oldest_open()).map(|t| t + SETTLE_AFTER).min()
    }

    /// Whether any session exists (for status).
    pub fn established(&self) -> bool {
        self.slots.iter().any(Option::is_some)
    }

    /// The handshake this host started, while it waits for an answer.
    pub fn pending(&self) -> Option<&Pending> {
        self.pending.as_ref()
    }

    /// The handshake in progress, to change (a new mac2).
    pub fn pending_mut(&mut self) -> Option<&mut Pending> {
        self.pending.as_mut()
    }

    /// A handshake starts (or is retried) with this initiation.
    pub fn start_handshake(&mut self, p: Pending) {
        self.pending = Some(p);
    }

    /// The handshake ended (answered, or superseded by the peer's).
    pub fn end_handshake(&mut self) {
        self.pending = None;
    }

    /// The key phase for a new initiation: the running attempt's, or a free slot.
    pub fn initiation_phase(&self) -> bool {
        self.pending.as_ref().map_or_else(|| self.free_slot(), |p| p.key_phase)
    }

    /// Hold a packet until a session exists; `false` if the queue is full.
    pub fn stage(&mut self, hop_limit: u8, class: crate::proto::class::Class, packet: &[u8]) -> bool {
        if self.staged.len() >= MAX_STAGED {
            return false;
        }
        self.staged.push_back(Staged { hop_limit, class, packet: packet.to_vec() });
        true
    }

    /// Take the packets waiting for a session.
    pub fn take_staged(&mut self) -> VecDeque<Staged> {
        std::mem::take(&mut self.staged)
    }

    /// Packets waiting for a session.
    pub fn staged(&self) -> usize {
        self.staged.len()
    }

    /// Check an authenticated initiation's timestamp against the last one
    /// accepted, and remember it if it is newer.
    pub fn initiation_age(&mut self, timestamp: u64) -> InitiationAge {
        match self.last_init_timestamp {
            Some(last) if timestamp == last => InitiationAge::Repeat,
            Some(last) if timestamp < last => InitiationAge::Replay,
            _ => {
                self.last_init_timestamp = Some(timestamp);
                InitiationAge::New
            }
        }
    }

    /// Install the session an accepted initiation made (this host answered
    /// it with `response`): the handshake this host started, if any, ends.
    pub fn answered(&mut self, slot: bool, session: Session, response: [u8; super::handshake::RESPONSE_MSG_LEN]) {
        self.pending = None;
        self.install(slot, session);
        self.last_response = Some((slot, response));
    }

    /// Run the session timers at `now`: forget sessions past their age,
    /// give up or retry the handshake in progress.
    pub fn on_timeout(&mut self, now: Time) -> SessionTimeout {
        self.expire(now);
        let Some(p) = &self.pending else { return SessionTimeout::Nothing };
        if now - p.started >= REKEY_ATTEMPT_TIME {
            self.pending = None;
            let dropped = self.staged.len();
            self.staged.clear();
            SessionTimeout::GaveUp { dropped }
        } else if now - p.last_sent >= REKEY_TIMEOUT {
            SessionTimeout::Retry { started: p.started }
        } else {
            SessionTimeout::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session of `cipher` sealed up to `tx_seq`, in slot 0, sent on.
    fn sessions(cipher: Cipher, tx_seq: u64) -> Sessions {
        let mut s = Session::new(SessionKeys::new(cipher, &[1; 32], &[2; 32]), 64, Time::ZERO, true, false);
        s.tx_seq = tx_seq;
        let mut all = Sessions::default();
        all.install(false, s);
        all
    }

    /// Each cipher's session asks for a new handshake at its own count, and
    /// seals nothing past its own limit: AES-256-GCM's are far lower.
    #[test]
    fn message_limits_follow_the_cipher() {
        let now = Time::ZERO;
        for (cipher, rekey, reject) in [
            (Cipher::ChaCha20Poly1305, REKEY_AFTER_MESSAGES, REJECT_AFTER_MESSAGES),
            (Cipher::Aes256Gcm, AES_REKEY_AFTER_MESSAGES, AES_REJECT_AFTER_MESSAGES),
        ] {
            assert!(!sessions(cipher, rekey - 1).wants_handshake(now), "{cipher}");
            assert!(sessions(cipher, rekey).wants_handshake(now), "{cipher}");
            let mut last = sessions(cipher, reject - 1);
            let (_, s) = last.sending(now).expect("one left");
            assert_eq!(s.next_seq(), Some(Seq(reject)), "{cipher}");
            assert!(last.sending(now).is_none(), "{cipher}: sealed past its limit");
        }
    }
}
