//! Noise IK handshakes between neighbours (snow), as WireGuard does them:
//! `Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`, the initiator knowing the
//! responder's static key beforehand, an optional pre-shared key (all zeros
//! when none is set), and the two host ids bound into the prologue so that
//! the cleartext header of a handshake cannot be altered.
//!
//! Each side keeps two session slots and picks, for a new session, the slot
//! it is not sending on; the initiation carries the initiator's slot (the
//! key phase the responder will put on what it sends) and the response the
//! responder's. So a late initiation never replaces the session in use.
//!
//! The initiation also carries a timestamp
//! (wall-clock nanoseconds): a responder accepts an initiation only if its
//! timestamp is later than the last one it accepted from that peer, so a
//! captured initiation cannot be replayed. The response is smaller than the
//! initiation (49 bytes against 105), so an unauthenticated sender can never
//! make mpvr send more than it sent.
//!
//! The handshake also agrees the data cipher ([`Cipher`]): the first byte
//! of each payload holds the key phase in bit 0, and in bit 1 the
//! initiator's offer of AES-256-GCM, or the responder's choice of it. The
//! responder takes AES-256-GCM only when offered and when it would offer it
//! itself; an initiator refuses a response choosing what it did not offer.
//! Both bits are inside the encrypted, authenticated payloads, so nobody on
//! the way can change the choice. Any other bit set makes the message
//! invalid.
//!
//! Randomness (the ephemeral keys) comes from a seed the node draws from its
//! own generator, so the core stays deterministic; the daemon seeds that
//! generator from the operating system.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher as NoiseCipher, Dh, Hash, Random};
use snow::{Builder, HandshakeState};

use super::crypto::{Cipher, SessionKeys};
use super::ids::HostId;

/// The Noise protocol.
pub const NOISE_PARAMS: &str = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s";
/// Payload of an initiation: key phase and cipher offer (1 byte) and
/// timestamp (8 bytes).
pub const INIT_PAYLOAD_LEN: usize = 9;
/// Length of a Noise initiation: ephemeral (32), encrypted static (48),
/// encrypted payload (9 + 16).
pub const INIT_LEN: usize = 32 + 48 + INIT_PAYLOAD_LEN + 16;
/// Length of a Noise response: ephemeral (32) and the encrypted key phase
/// and cipher choice (1 + 16).
pub const RESPONSE_LEN: usize = 32 + 1 + 16;
/// An initiation's payload on the wire: the Noise message, mac1 and mac2
/// ([`super::cookie`]).
pub const INIT_MSG_LEN: usize = INIT_LEN + 2 * super::cookie::MAC_LEN;
/// A response's payload on the wire: the Noise message and mac1.
pub const RESPONSE_MSG_LEN: usize = RESPONSE_LEN + super::cookie::MAC_LEN;

/// Bit 0 of a payload's first byte: the key phase.
const PHASE_BIT: u8 = 1;
/// Bit 1 of a payload's first byte: AES-256-GCM offered (initiation) or
/// chosen (response).
const AES_BIT: u8 = 2;

/// The first payload byte for `key_phase` and `aes`.
fn flags(key_phase: bool, aes: bool) -> u8 {
    (u8::from(key_phase) * PHASE_BIT) | (u8::from(aes) * AES_BIT)
}

/// The key phase and AES bit of a payload's first byte; `None` if another bit is set.
fn read_flags(b: u8) -> Option<(bool, bool)> {
    (b & !(PHASE_BIT | AES_BIT) == 0).then_some((b & PHASE_BIT != 0, b & AES_BIT != 0))
}

/// Why a handshake message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// It does not decrypt or is malformed (forged, corrupted, or another key).
    #[error("handshake message does not authenticate")]
    Invalid,
    /// It authenticates, but with a static key that is not the configured one.
    #[error("the peer's static key is not the one configured for it")]
    WrongKey,
}

/// A host's static key pair.
#[derive(Clone)]
pub struct Identity {
    private: [u8; 32],
    public: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity(public {:02x?}..)", &self.public[..4])
    }
}

impl Identity {
    /// The pair of an X25519 private key.
    pub fn new(private: [u8; 32]) -> Identity {
        let secret = x25519_dalek::StaticSecret::from(private);
        let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
        Identity { private: secret.to_bytes(), public }
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
}

struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// snow's default primitives, with randomness from a given seed.
struct Seeded([u8; 32]);

impl CryptoResolver for Seeded {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.0))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn NoiseCipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn prologue(initiator: HostId, responder: HostId) -> [u8; 16] {
    let mut p = *b"mpvr v1\0\0\0\0\0\0\0\0\0";
    p[8..12].copy_from_slice(&initiator.get().to_be_bytes());
    p[12..16].copy_from_slice(&responder.get().to_be_bytes());
    p
}

fn builder<'a>(seed: [u8; 32], me: &'a Identity, psk: &'a [u8; 32], prologue: &'a [u8; 16]) -> Builder<'a> {
    let params = NOISE_PARAMS.parse().expect("valid Noise parameters");
    // These calls only fail for wrong key lengths, which the types rule out.
    Builder::with_resolver(params, Box::new(Seeded(seed)))
        .local_private_key(&me.private)
        .and_then(|b| b.psk(2, psk))
        .and_then(|b| b.prologue(prologue))
        .expect("32-byte keys")
}

/// Start a handshake toward `responder`, offering AES-256-GCM if
/// `offer_aes`: writes the initiation into `msg`.
#[allow(clippy::too_many_arguments)]
pub fn initiate(
    seed: [u8; 32],
    me: &Identity,
    peer_public: &[u8; 32],
    psk: &[u8; 32],
    initiator: HostId,
    responder: HostId,
    key_phase: bool,
    offer_aes: bool,
    timestamp: u64,
    msg: &mut [u8; INIT_LEN],
) -> HandshakeState {
    let pro = prologue(initiator, responder);
    let mut hs = builder(seed, me, psk, &pro)
        .remote_public_key(peer_public)
        .and_then(|b| b.build_initiator())
        .expect("initiator from valid keys");
    let mut payload = [0u8; INIT_PAYLOAD_LEN];
    payload[0] = flags(key_phase, offer_aes);
    payload[1..].copy_from_slice(&timestamp.to_be_bytes());
    let n = hs.write_message(&payload, msg).expect("initiation fits its buffer");
    debug_assert_eq!(n, INIT_LEN);
    hs
}

/// What a responder learned from a valid initiation.
#[derive(Debug)]
pub struct Initiation {
    /// The initiator's slot for the session: the key phase to send with.
    pub key_phase: bool,
    /// The initiator's timestamp.
    pub timestamp: u64,
    /// The session's keys, from the responder's side, for the cipher chosen.
    pub keys: SessionKeys,
}

/// Answer an initiation from `initiator`, whose static key must be
/// `expected_public`, for a session in this host's slot `my_phase`, taking
/// AES-256-GCM if offered and `accept_aes`: writes the response into `reply`.
#[allow(clippy::too_many_arguments)]
pub fn respond(
    seed: [u8; 32],
    me: &Identity,
    expected_public: &[u8; 32],
    psk: &[u8; 32],
    initiator: HostId,
    responder: HostId,
    my_phase: bool,
    accept_aes: bool,
    msg: &[u8],
    reply: &mut [u8; RESPONSE_LEN],
) -> Result<Initiation, HandshakeError> {
    if msg.len() != INIT_LEN {
        return Err(HandshakeError::Invalid);
    }
    let pro = prologue(initiator, responder);
    let mut hs = builder(seed, me, psk, &pro).build_responder().expect("responder from valid keys");
    let mut payload = [0u8; INIT_LEN];
    let n = hs.read_message(msg, &mut payload).map_err(|_| HandshakeError::Invalid)?;
    let Some((key_phase, offered)) = read_flags(payload[0]).filter(|_| n == INIT_PAYLOAD_LEN) else {
        return Err(HandshakeError::Invalid);
    };
    if hs.get_remote_static() != Some(&expected_public[..]) {
        return Err(HandshakeError::WrongKey);
    }
    let timestamp = u64::from_be_bytes(payload[1..9].try_into().expect("8 bytes"));
    let aes = offered && accept_aes;
    hs.write_message(&[flags(my_phase, aes)], reply).map_err(|_| HandshakeError::Invalid)?;
    let (i_to_r, r_to_i) = hs.dangerously_get_raw_split();
    let cipher = Cipher::agreed(aes);
    Ok(Initiation { key_phase, timestamp, keys: SessionKeys::new(cipher, &r_to_i, &i_to_r) })
}

/// Finish a handshake this host started (offering AES-256-GCM if
/// `offered_aes`), with the response: the session's keys and the
/// responder's slot (the key phase to send with).
pub fn finish(mut hs: HandshakeState, offered_aes: bool, msg: &[u8]) -> Result<(SessionKeys, bool), HandshakeError> {
    if msg.len() != RESPONSE_LEN {
        return Err(HandshakeError::Invalid);
    }
    let mut payload = [0u8; RESPONSE_LEN];
    let n = hs.read_message(msg, &mut payload).map_err(|_| HandshakeError::Invalid)?;
    let Some((key_phase, aes)) = read_flags(payload[0]).filter(|_| n == 1 && hs.is_handshake_finished()) else {
        return Err(HandshakeError::Invalid);
    };
    // A responder may only take what was offered.
    if aes && !offered_aes {
        return Err(HandshakeError::Invalid);
    }
    let (i_to_r, r_to_i) = hs.dangerously_get_raw_split();
    let cipher = Cipher::agreed(aes);
    Ok((SessionKeys::new(cipher, &i_to_r, &r_to_i), key_phase))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Seq;

    fn id(n: u8) -> Identity {
        Identity::new([n; 32])
    }

    /// Hosts 1 and 2: their identities and ids.
    fn hosts() -> (Identity, Identity, HostId, HostId) {
        (id(1), id(2), HostId::new(1).unwrap(), HostId::new(2).unwrap())
    }

    /// What `from` seals, `to` opens.
    fn carries(from: &SessionKeys, to: &SessionKeys, seq: u64, msg: &[u8]) {
        let mut m = msg.to_vec();
        let tag = from.seal(Seq(seq), &[1; 20], &mut m);
        m.extend_from_slice(&tag);
        assert_eq!(to.open(Seq(seq), &[1; 20], &mut m), Ok(msg.len()));
    }

    #[test]
    fn a_handshake_gives_both_sides_matching_keys() {
        let (a, b, ha, hb) = hosts();
        let psk = [0u8; 32];
        let mut init = [0u8; INIT_LEN];
        let hs = initiate([7; 32], &a, &b.public(), &psk, ha, hb, true, false, 12345, &mut init);
        let mut resp = [0u8; RESPONSE_LEN];
        let got = respond([8; 32], &b, &a.public(), &psk, ha, hb, false, true, &init, &mut resp).unwrap();
        assert!(got.key_phase);
        assert_eq!(got.timestamp, 12345);
        let (ka, their_phase) = finish(hs, false, &resp).unwrap();
        assert!(!their_phase);
        carries(&ka, &got.keys, 1, b"hello");
    }

    /// AES-256-GCM only when the initiator offers it and the responder
    /// accepts it; both sides always end with the same cipher, and the key
    /// phases come through whatever the choice.
    #[test]
    fn the_cipher_is_aes_only_when_both_want_it() {
        let (a, b, ha, hb) = hosts();
        let psk = [0u8; 32];
        for (offer, accept) in [(false, false), (false, true), (true, false), (true, true)] {
            let mut init = [0u8; INIT_LEN];
            let hs = initiate([7; 32], &a, &b.public(), &psk, ha, hb, offer, offer, 1, &mut init);
            let mut resp = [0u8; RESPONSE_LEN];
            let got = respond([8; 32], &b, &a.public(), &psk, ha, hb, accept, accept, &init, &mut resp).unwrap();
            let (ka, their_phase) = finish(hs, offer, &resp).unwrap();
            let want = if offer && accept { Cipher::Aes256Gcm } else { Cipher::ChaCha20Poly1305 };
            assert_eq!((ka.cipher(), got.keys.cipher()), (want, want), "offer {offer} accept {accept}");
            assert_eq!((got.key_phase, their_phase), (offer, accept));
            carries(&got.keys, &ka, 9, b"agreed");
        }
    }

    /// Flags outside the two known bits, and a response choosing AES-256-GCM
    /// that was not offered, are refused: the responder cannot impose it.
    #[test]
    fn unknown_flags_and_an_unoffered_choice_are_refused() {
        let (a, b, ha, hb) = hosts();
        let psk = [0u8; 32];
        let mut resp = [0u8; RESPONSE_LEN];
        // An initiation with bit 2 set (written by hand, as a newer or a
        // broken peer would).
        let pro = prologue(ha, hb);
        let mut hs =
            builder([7; 32], &a, &psk, &pro).remote_public_key(&b.public()).unwrap().build_initiator().unwrap();
        let mut payload = [0u8; INIT_PAYLOAD_LEN];
        payload[0] = 4;
        let mut init = [0u8; INIT_LEN];
        hs.write_message(&payload, &mut init).unwrap();
        assert_eq!(
            respond([8; 32], &b, &a.public(), &psk, ha, hb, false, true, &init, &mut resp).unwrap_err(),
            HandshakeError::Invalid
        );
        // A response choosing AES-256-GCM to an initiation that did not
        // offer it: the responder here accepts it as if it had been offered.
        let mut init = [0u8; INIT_LEN];
        let hs = initiate([7; 32], &a, &b.public(), &psk, ha, hb, false, false, 1, &mut init);
        let mut rhs = builder([8; 32], &b, &psk, &pro).build_responder().unwrap();
        let mut buf = [0u8; INIT_LEN];
        rhs.read_message(&init, &mut buf).unwrap();
        rhs.write_message(&[flags(false, true)], &mut resp).unwrap();
        assert_eq!(finish(hs, false, &resp).unwrap_err(), HandshakeError::Invalid);
    }

    #[test]
    fn wrong_keys_ids_or_bytes_are_refused() {
        let (a, b, ha, hb) = hosts();
        let c = id(3);
        let psk = [0u8; 32];
        let mut init = [0u8; INIT_LEN];
        let _ = initiate([7; 32], &a, &b.public(), &psk, ha, hb, false, true, 1, &mut init);
        let mut resp = [0u8; RESPONSE_LEN];
        // B expects C's key for this peer.
        assert_eq!(
            respond([8; 32], &b, &c.public(), &psk, ha, hb, false, true, &init, &mut resp).unwrap_err(),
            HandshakeError::WrongKey
        );
        // Another responder cannot read it.
        assert!(respond([8; 32], &c, &a.public(), &psk, ha, hb, false, true, &init, &mut resp).is_err());
        // The host ids are bound in.
        let h3 = HostId::new(3).unwrap();
        assert_eq!(
            respond([8; 32], &b, &a.public(), &psk, h3, hb, false, true, &init, &mut resp).unwrap_err(),
            HandshakeError::Invalid
        );
        // Another pre-shared key: IKpsk2 mixes it into the response, so the
        // initiator refuses that.
        let mut init2 = [0u8; INIT_LEN];
        let hs = initiate([9; 32], &a, &b.public(), &psk, ha, hb, false, true, 2, &mut init2);
        respond([8; 32], &b, &a.public(), &[1; 32], ha, hb, false, true, &init2, &mut resp).unwrap();
        assert_eq!(finish(hs, true, &resp).unwrap_err(), HandshakeError::Invalid);
        // Any flipped bit.
        for i in 0..INIT_LEN {
            let mut bad = init;
            bad[i] ^= 4;
            assert!(respond([8; 32], &b, &a.public(), &psk, ha, hb, false, true, &bad, &mut resp).is_err(), "byte {i}");
        }
        assert!(respond([8; 32], &b, &a.public(), &psk, ha, hb, false, true, &init[..50], &mut resp).is_err());
    }
}
