//! Sealing and opening datagrams via ring, with the AEAD a session's
//! handshake agreed ([`Cipher`]): ChaCha20-Poly1305 (RFC 8439), or
//! AES-256-GCM when both hosts have AES instructions (about 3x faster than
//! ChaCha20-Poly1305 there; ChaCha20-Poly1305 is the faster and the
//! constant-time one without them). Both take a 32-byte key and a 12-byte
//! nonce and end a message with a 16-byte tag, so nothing else changes.
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

use ring::aead::{AES_256_GCM, Aad, Algorithm, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use super::ids::{HostId, Seq};
use super::wire::TAG_LEN;

/// The AEAD rejected a sealed message (wrong key, or modified bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed")]
pub struct OpenError;

/// The AEAD of a session's datagrams, agreed in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439): always offered, and the one taken
    /// unless both hosts want AES-256-GCM.
    ChaCha20Poly1305,
    /// AES-256-GCM, taken when both hosts offer it (each does when its CPU
    /// has AES instructions and its config allows it).
    Aes256Gcm,
}

impl Cipher {
    /// AES-256-GCM if both hosts want it (`aes`), else ChaCha20-Poly1305.
    pub fn agreed(aes: bool) -> Cipher {
        if aes { Cipher::Aes256Gcm } else { Cipher::ChaCha20Poly1305 }
    }

    fn algorithm(self) -> &'static Algorithm {
        match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cipher::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Cipher::Aes256Gcm => "AES-256-GCM",
        })
    }
}

/// The two directional keys of one session with a neighbour.
pub struct SessionKeys {
    cipher: Cipher,
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

fn key(cipher: Cipher, bytes: &[u8; 32]) -> LessSafeKey {
    // Both algorithms take exactly 32 bytes, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(cipher.algorithm(), bytes).expect("32-byte AEAD key"))
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
    /// Keys of `cipher` from raw 32-byte secrets: `send` seals what this
    /// host sends, `recv` opens what it receives.
    pub fn new(cipher: Cipher, send: &[u8; 32], recv: &[u8; 32]) -> SessionKeys {
        SessionKeys { cipher, send: key(cipher, send), recv: key(cipher, recv) }
    }

    /// The AEAD these keys are for.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Directional keys derived with HKDF-SHA256 from a secret both sides
    /// know, for tests and benchmarks of the sealing alone (never for
    /// traffic: such keys would outlive a restart, and the sequence numbers
    /// with them). `local` and `remote` swap on the other side.
    pub fn from_shared_secret(cipher: Cipher, secret: &[u8; 32], local: HostId, remote: HostId) -> SessionKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"mpvr v1 shared-secret session").extract(secret);
        let derive = |from: HostId, to: HostId| {
            let info = [b"mpvr v1 direction".as_slice(), &from.get().to_be_bytes(), &to.get().to_be_bytes()];
            let okm = prk.expand(&info, cipher.algorithm()).expect("HKDF output of one key length");
            LessSafeKey::new(UnboundKey::from(okm))
        };
        SessionKeys { cipher, send: derive(local, remote), recv: derive(remote, local) }
    }

    /// Encrypt `payload` in place and return the tag. `header` is
    /// authenticated, not encrypted.
    pub fn seal(&self, seq: Seq, header: &[u8], payload: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .send
            .seal_in_place_separate_tag(nonce(seq), Aad::from(header), payload)
            // ring fails only for inputs longer than the cipher's limit
            // (64 GiB for AES-GCM, 256 GiB for ChaCha20).
            .expect("payload within the AEAD's limits");
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

    fn pair(cipher: Cipher) -> (SessionKeys, SessionKeys) {
        let a = HostId::new(1).unwrap();
        let b = HostId::new(2).unwrap();
        let s = [7u8; 32];
        (SessionKeys::from_shared_secret(cipher, &s, a, b), SessionKeys::from_shared_secret(cipher, &s, b, a))
    }

    #[test]
    fn seal_open_roundtrip_and_tamper() {
        for cipher in [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm] {
            roundtrip_and_tamper(cipher);
        }
    }

    #[test]
    fn the_ciphers_do_not_open_each_other() {
        let (a, _) = pair(Cipher::ChaCha20Poly1305);
        let (_, b) = pair(Cipher::Aes256Gcm);
        let mut msg = b"same key bytes, other cipher".to_vec();
        let tag = a.seal(Seq(1), &[0; 20], &mut msg);
        msg.extend_from_slice(&tag);
        assert_eq!(b.open(Seq(1), &[0; 20], &mut msg), Err(OpenError));
    }

    fn roundtrip_and_tamper(cipher: Cipher) {
        let (a, b) = pair(cipher);
        assert_eq!(a.cipher(), cipher);
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
