//! Cheap rejection of handshake messages before any public-key work, as
//! WireGuard does it (its mac1, mac2 and cookie reply), with HMAC-SHA256
//! and ChaCha20-Poly1305 from ring.
//!
//! - **mac1**: every initiation and response ends with a MAC keyed by the
//!   receiver's public key (`SHA-256("mpvr mac1" || public)`) over its
//!   type, sender, receiver and Noise message. Anything without it (garbage,
//!   a scan, a sender that does not know whom it talks to) costs one HMAC,
//!   not a Diffie-Hellman.
//! - **Load**: a responder spends at most [`DH_PER_SECOND`] (burst twice
//!   that) Diffie-Hellman operations per second on initiations that prove
//!   nothing more than mac1. Beyond that it is under load.
//! - **Cookie**: under load an initiation needs a valid mac2, a MAC keyed by
//!   a cookie that only a sender at its real address can have: the cookie is
//!   `HMAC(secret, source address and port)`, the secret is random and
//!   changes every two minutes. An initiation without one gets a cookie
//!   reply instead of work: the cookie sealed (key `SHA-256("mpvr cookie"
//!   || responder public)`, a random nonce, the initiation's mac1 as
//!   associated data, so an off-path sender cannot forge one). The reply (64
//!   bytes) is smaller than the initiation (157), so it amplifies nothing.
//!   The initiator sends the same initiation again at once, with mac2.
//!   Spoofed source addresses never receive their cookies: a flood from them
//!   costs the responder a MAC and a seal per datagram, and no
//!   Diffie-Hellman at all.

use std::net::SocketAddr;
use std::time::Duration;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::hmac;

use super::ids::HostId;
use super::time::Time;
use super::wire::MessageType;

/// Length of mac1 and of mac2.
pub const MAC_LEN: usize = 16;
/// Length of a cookie.
pub const COOKIE_LEN: usize = 16;
/// Payload of a cookie reply: nonce (12), the sealed cookie (16) and its tag (16).
pub const COOKIE_REPLY_LEN: usize = 12 + COOKIE_LEN + 16;
/// Diffie-Hellman operations per second a responder spends on initiations
/// with a valid mac1 alone (burst twice that); beyond it, mac2 is required.
pub const DH_PER_SECOND: u32 = 50;
/// How long a responder's cookie secret lasts, and an initiator keeps a cookie.
pub const COOKIE_LIFETIME: Duration = Duration::from_secs(120);

/// The MAC key of messages to the host whose public key is `public`.
pub fn mac1_key(public: &[u8; 32]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, derive(b"mpvr mac1", public).as_ref())
}

/// The key cookie replies from the host whose public key is `public` are sealed with.
pub fn cookie_key(public: &[u8; 32]) -> LessSafeKey {
    let k = derive(b"mpvr cookie", public);
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k.as_ref()).expect("a 32-byte key"))
}

fn derive(label: &[u8], public: &[u8; 32]) -> ring::digest::Digest {
    let mut input = [0u8; 43];
    input[..label.len()].copy_from_slice(label);
    input[label.len()..label.len() + 32].copy_from_slice(public);
    digest(&SHA256, &input[..label.len() + 32])
}

/// A truncated HMAC-SHA256 over `parts`.
fn mac(key: &hmac::Key, parts: &[&[u8]]) -> [u8; MAC_LEN] {
    let mut ctx = hmac::Context::with_key(key);
    for p in parts {
        ctx.update(p);
    }
    let tag = ctx.sign();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// mac1 of a handshake message of type `ty` from `sender` to `receiver`
/// whose Noise part is `noise`, with the receiver's [`mac1_key`].
pub fn mac1(key: &hmac::Key, ty: MessageType, sender: HostId, receiver: HostId, noise: &[u8]) -> [u8; MAC_LEN] {
    mac(key, &[&[ty as u8], &sender.get().to_be_bytes(), &receiver.get().to_be_bytes(), noise])
}

/// mac2 of an initiation (`noise` and its `mac1`) with `cookie`.
pub fn mac2(cookie: &[u8; COOKIE_LEN], noise: &[u8], mac1: &[u8; MAC_LEN]) -> [u8; MAC_LEN] {
    mac(&hmac::Key::new(hmac::HMAC_SHA256, cookie), &[noise, mac1])
}

/// Whether `got` is the mac1 of that message.
pub fn mac1_ok(key: &hmac::Key, ty: MessageType, sender: HostId, receiver: HostId, noise: &[u8], got: &[u8]) -> bool {
    same(&mac1(key, ty, sender, receiver, noise), got)
}

/// Open a cookie reply from a peer (its [`cookie_key`]) to the initiation
/// whose mac1 was `mac1`: the cookie, or `None` if it is not one.
pub fn open_reply(key: &LessSafeKey, mac1: &[u8; MAC_LEN], reply: &[u8]) -> Option<[u8; COOKIE_LEN]> {
    if reply.len() != COOKIE_REPLY_LEN {
        return None;
    }
    let nonce = Nonce::try_assume_unique_for_key(&reply[..12]).ok()?;
    let mut sealed = [0u8; COOKIE_LEN + 16];
    sealed.copy_from_slice(&reply[12..]);
    let plain = key.open_in_place(nonce, Aad::from(mac1), &mut sealed).ok()?;
    let mut cookie = [0u8; COOKIE_LEN];
    cookie.copy_from_slice(plain);
    Some(cookie)
}

/// A responder's side: its mac1 key, its cookie secret and sealing key,
/// and the budget of Diffie-Hellman work initiations may cost.
pub struct Responder {
    mac1: hmac::Key,
    seal: LessSafeKey,
    secret: [u8; 32],
    secret_at: Option<Time>,
    tokens: f64,
    refilled: Time,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("tokens", &self.tokens).finish_non_exhaustive()
    }
}

impl Responder {
    /// The responder side of the host whose public key is `public`.
    pub fn new(public: &[u8; 32]) -> Responder {
        Responder {
            mac1: mac1_key(public),
            seal: cookie_key(public),
            secret: [0; 32],
            secret_at: None,
            tokens: f64::from(DH_PER_SECOND) * 2.0,
            refilled: Time::ZERO,
        }
    }

    /// Its mac1 key (messages to this host).
    pub fn mac1_key(&self) -> &hmac::Key {
        &self.mac1
    }

    /// Whether an initiation with only a valid mac1 may cost a
    /// Diffie-Hellman now; if so, it is counted.
    pub fn spend(&mut self, now: Time) -> bool {
        let cap = f64::from(DH_PER_SECOND) * 2.0;
        self.tokens = (self.tokens + (now - self.refilled).as_secs_f64() * f64::from(DH_PER_SECOND)).min(cap);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The cookie of `from` now. A new secret (`fresh`, random) is taken
    /// when the last one is [`COOKIE_LIFETIME`] old.
    fn cookie(&mut self, now: Time, from: SocketAddr, fresh: impl FnOnce() -> [u8; 32]) -> [u8; COOKIE_LEN] {
        if self.secret_at.is_none_or(|t| now - t >= COOKIE_LIFETIME) {
            self.secret = fresh();
            self.secret_at = Some(now);
        }
        let port = from.port().to_be_bytes();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.secret);
        match from.ip().to_canonical() {
            std::net::IpAddr::V4(a) => mac(&key, &[&a.octets(), &port]),
            std::net::IpAddr::V6(a) => mac(&key, &[&a.octets(), &port]),
        }
    }

    /// Whether `got` is the mac2 an initiation (`noise`, `mac1`) from `from`
    /// carries with the cookie `from` has now.
    pub fn mac2_ok(
        &mut self,
        now: Time,
        from: SocketAddr,
        noise: &[u8],
        mac1: &[u8; MAC_LEN],
        got: &[u8],
        fresh: impl FnOnce() -> [u8; 32],
    ) -> bool {
        let cookie = self.cookie(now, from, fresh);
        same(&mac2(&cookie, noise, mac1), got)
    }

    /// The cookie reply payload for an initiation from `from` whose mac1
    /// was `mac1`; `random` gives the nonce (and a new secret when due).
    pub fn reply(
        &mut self,
        now: Time,
        from: SocketAddr,
        mac1: &[u8; MAC_LEN],
        mut random: impl FnMut() -> [u8; 32],
    ) -> [u8; COOKIE_REPLY_LEN] {
        let cookie = self.cookie(now, from, &mut random);
        let n = random();
        let mut out = [0u8; COOKIE_REPLY_LEN];
        out[..12].copy_from_slice(&n[..12]);
        let nonce = Nonce::try_assume_unique_for_key(&n[..12]).expect("12 bytes");
        let mut sealed = [0u8; COOKIE_LEN];
        sealed.copy_from_slice(&cookie);
        let tag = self.seal.seal_in_place_separate_tag(nonce, Aad::from(mac1), &mut sealed).expect("16 bytes seal");
        out[12..12 + COOKIE_LEN].copy_from_slice(&sealed);
        out[12 + COOKIE_LEN..].copy_from_slice(tag.as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u32) -> HostId {
        HostId::new(n).unwrap()
    }

    #[test]
    fn mac1_binds_the_receiver_key_and_the_message() {
        let (k, other) = (mac1_key(&[1; 32]), mac1_key(&[2; 32]));
        let m = mac1(&k, MessageType::HandshakeInit, h(1), h(2), b"noise");
        assert!(mac1_ok(&k, MessageType::HandshakeInit, h(1), h(2), b"noise", &m));
        assert!(!mac1_ok(&other, MessageType::HandshakeInit, h(1), h(2), b"noise", &m));
        assert!(!mac1_ok(&k, MessageType::HandshakeInit, h(3), h(2), b"noise", &m));
        assert!(!mac1_ok(&k, MessageType::HandshakeResponse, h(1), h(2), b"noise", &m));
        assert!(!mac1_ok(&k, MessageType::HandshakeInit, h(1), h(2), b"noisf", &m));
    }

    #[test]
    fn a_cookie_opens_only_at_its_initiator_and_proves_the_address() {
        let public = [9; 32];
        let mut r = Responder::new(&public);
        let from: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let m1 = [5; MAC_LEN];
        let mut n = 0u8;
        let mut random = || {
            n += 1;
            [n; 32]
        };
        let reply = r.reply(Time::ZERO, from, &m1, &mut random);
        let cookie = open_reply(&cookie_key(&public), &m1, &reply).expect("opens");
        assert_eq!(open_reply(&cookie_key(&public), &[6; MAC_LEN], &reply), None, "another initiation's");
        assert_eq!(open_reply(&cookie_key(&[8; 32]), &m1, &reply), None, "another responder's");
        let m2 = mac2(&cookie, b"noise", &m1);
        let t = Time::ZERO + Duration::from_secs(1);
        assert!(r.mac2_ok(t, from, b"noise", &m1, &m2, || [0; 32]));
        assert!(!r.mac2_ok(t, "192.0.2.2:51820".parse().unwrap(), b"noise", &m1, &m2, || [0; 32]));
        assert!(!r.mac2_ok(t, "192.0.2.1:51821".parse().unwrap(), b"noise", &m1, &m2, || [0; 32]));
        // The secret changes after two minutes: old cookies stop working.
        let later = Time::ZERO + COOKIE_LIFETIME;
        assert!(!r.mac2_ok(later, from, b"noise", &m1, &m2, || [77; 32]));
    }

    #[test]
    fn the_work_budget_refills_at_its_rate() {
        let mut r = Responder::new(&[1; 32]);
        let spent = (0..1000).filter(|_| r.spend(Time::ZERO)).count();
        assert_eq!(spent, 2 * DH_PER_SECOND as usize, "the burst");
        let t = Time::ZERO + Duration::from_secs(1);
        assert_eq!((0..1000).filter(|_| r.spend(t)).count(), DH_PER_SECOND as usize);
    }
}
