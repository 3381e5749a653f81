//! Sealing and opening datagrams: ChaCha20-Poly1305 (RFC 8439) via ring.
//!
//! The nonce is the 64-bit sequence number (little-endian after four zero
//! bytes, as WireGuard lays it out) and the associated data is the 20-byte
//! header, so a packet is sealed exactly once and every copy sent on every
//! path is the same authenticated bytes (DESIGN.md invariant 4). Nothing that
//! differs between copies is authenticated.
//!
//! What this module guarantees: `open` fails, and leaves no plaintext behind
//! that the caller could use, for any modification of header, ciphertext or
//! tag. What it does not do: choose keys. Session keys come from the Noise
//! handshake ([`super::handshake`]); [`SessionKeys::from_shared_secret`]
//! exists for tests and benchmarks of the sealing alone.

use std::sync::Arc;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use super::ids::{HostId, Seq};
use super::wire::TAG_LEN;

/// The AEAD rejected a sealed message (wrong key, or modified bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct OpenError;

/// The two directional keys of one session with a neighbour.
pub struct SessionKeys {
    send: LessSafeKey,
    recv: LessSafeKey,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

fn nonce(seq: Seq) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.0.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // CHACHA20_POLY1305 takes exactly 32 bytes, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("32-byte ChaCha20-Poly1305 key"))
}

/// The place of `keys` in a batch's key list, added if new: a batch holds
/// each session's keys once (one reference count per batch, not per
/// datagram). Batches hold few sessions, and the last one added is the
/// likeliest.
pub(crate) fn key_index(list: &mut Vec<Arc<SessionKeys>>, keys: &Arc<SessionKeys>) -> usize {
    match list.iter().rposition(|k| Arc::ptr_eq(k, keys)) {
        Some(k) => k,
        None => {
            list.push(Arc::clone(keys));
            list.len() - 1
        }
    }
}

impl SessionKeys {
    /// Keys from raw 32-byte secrets: `send` seals what this host sends,
    /// `recv` opens what it receives.
    pub fn new(send: &[u8; 32], recv: &[u8; 32]) -> SessionKeys {
        SessionKeys { send: key(send), recv: key(recv) }
    }

    /// Directional keys derived with HKDF-SHA256 from a secret both sides
    /// know, for tests and benchmarks of the sealing alone (never for
    /// traffic: such keys would outlive a restart, and the sequence numbers
    /// with them). `local` and `remote` swap on the other side.
    pub fn from_shared_secret(secret: &[u8; 32], local: HostId, remote: HostId) -> SessionKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mpvr v1 shared-secret session").extract(secret);
        let derive = |from: HostId, to: HostId| {
            let info = [b"mpvr v1 direction".as_slice(), &from.get().to_be_bytes(), &to.get().to_be_bytes()];
            let okm = prk.expand(&info, &CHACHA20_POLY1305).expect("HKDF output of one key length");
            LessSafeKey::new(UnboundKey::from(okm))
        };
        SessionKeys { send: derive(local, remote), recv: derive(remote, local) }
    }

    /// Encrypt `payload` in place and return the tag. `header` is
    /// authenticated, not encrypted.
    pub fn seal(&self, seq: Seq, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(seq), Aad::from(header), payload)
            // ring fails only for inputs longer than ChaCha20's 256 GiB limit.
            .expect("payload within ChaCha20-Poly1305 limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Authenticate and decrypt `sealed` (ciphertext followed by the tag) in
    /// place; returns the plaintext length on success.
    pub fn open(&self, seq: Seq, header: &[u8], sealed: &mut [u8]) -> Result<usize, OpenError> {
        self.recv.open_in_place(nonce(seq), Aad::from(header), sealed).map(|plain| plain.len()).map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SessionKeys, SessionKeys) {
        let a = HostId::new(1).unwrap();
        let b = HostId::new(2).unwrap();
        let s = [7u8; 32];
        (SessionKeys::from_shared_secret(&s, a, b), SessionKeys::from_shared_secret(&s, b, a))
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        let (a, b) = pair();
        let header = [9u8; 20];
        let mut msg = b"hello multipath".to_vec();
        let tag = a.seal(Seq(5), &header, &mut msg);
        assert_ne!(&msg[..], b"hello multipath");
        msg.extend_from_slice(&tag);
        let mut good = msg.clone();
        assert_eq!(b.open(Seq(5), &header, &mut good), Ok(15));
        assert_eq!(&good[..15], b"hello multipath");
        // Wrong direction, wrong nonce, modified header, modified body.
        assert_eq!(a.open(Seq(5), &header, &mut msg.clone()), Err(OpenError));
        assert_eq!(b.open(Seq(6), &header, &mut msg.clone()), Err(OpenError));
        let mut h2 = header;
        h2[3] ^= 1;
        assert_eq!(b.open(Seq(5), &h2, &mut msg.clone()), Err(OpenError));
        for i in 0..msg.len() {
            let mut m = msg.clone();
            m[i] ^= 0x10;
            assert_eq!(b.open(Seq(5), &header, &mut m), Err(OpenError), "byte {i}");
        }
    }
}
