//! The mpvr datagram format, as checked views over byte buffers.
//!
//! Every mpvr datagram (the payload of one UDP packet) is:
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version = 4  |     type      |   hop limit   |     flags     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                        sender host id                         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       receiver host id                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                                                               |
//! +                   sequence number (64 bits)                   +
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 payload (ciphertext) ...                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 tag (16 bytes)                                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Flags: bit 0 is the key phase of a sealed message (which of the two
//! sessions a neighbour keeps, the current or the one being replaced, sealed
//! it); bit 1 (data only) says the packet went on one path alone (a bulk
//! packet, say), so the receiver does not count it missing on the others
//! (passive counts, stall detection); bit 2 (data only) says the packet is
//! of the real-time class, so the receiving host's kernel puts it in the
//! link's real-time socket, ahead of bulk (see `crate::sys::udp`); every
//! other bit must be 0. Handshake messages have sequence number 0.
//!
//! All integers are big-endian. The 20-byte header is the AEAD's associated
//! data and the sequence number is its nonce, so the header is authenticated
//! and every copy of a packet is byte-identical (DESIGN.md invariant 4): no
//! field here differs between the copies sent on different paths. Per-copy
//! facts (which link, which endpoint) live only in the outer UDP/IP headers.
//!
//! Overhead per packet: 20 (header) + 16 (tag) = 36 bytes inside UDP, so
//! 64 bytes over IPv4 (20 + 8 + 36) and 84 bytes over IPv6 (40 + 8 + 36). On
//! a 1500-byte link the TUN MTU is therefore 1436 over an IPv4 underlay and
//! 1416 over an IPv6 underlay; see [`tun_mtu`].
//!
//! Every [`MessageType`] is handled by this version: data, keepalive, probe
//! and probe reply, handshake initiation and response (with mac1, and mac2
//! for an initiation), cookie reply ([`super::cookie`]), route
//! advertisement, path notice, path MTU probe and reply ([`super::pmtu`]).
//! Version 2 added the MACs and the cookie reply; version 3 the cipher
//! agreement in the handshake payloads ([`super::handshake`]: AES-256-GCM
//! or ChaCha20-Poly1305); version 4 the real-time flag. A datagram of another version is dropped
//! (`bad_version`) and reported ([`super::Event::VersionMismatch`]).
//! The others are reserved now so their numbers never change: probe and probe
//! reply (link monitor), handshake initiation, response and cookie (Noise
//! sessions), route advertisement (mesh).

use std::ops::Range;

use super::ids::{HostId, Seq};

/// The only version this code speaks.
pub const VERSION: u8 = 4;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 20;
/// Length of the AEAD tag that ends every sealed message.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// UDP header length.
pub const UDP_HEADER_LEN: usize = 8;
/// Flags bit 0: the key phase of a sealed message.
pub const FLAG_KEY_PHASE: u8 = 1;
/// Flags bit 1: a data packet sent on one path alone.
pub const FLAG_SOLE: u8 = 2;
/// Flags bit 2: a data packet of the real-time class. In the clear (and
/// authenticated), at this byte, for the receiver's socket steering.
pub const FLAG_REALTIME: u8 = 4;
/// The flags byte's offset in the header.
pub const FLAGS_OFFSET: usize = field::FLAGS;
/// The type byte's offset in the header.
pub const TYPE_OFFSET: usize = field::TYPE;
/// Default hop limit for data: enough for any sane overlay, small enough to
/// kill a loop quickly.
pub const DEFAULT_HOP_LIMIT: u8 = 8;

/// Byte offsets of the header fields.
mod field {
    use std::ops::{Range, RangeFrom};
    pub const VERSION: usize = 0;
    pub const TYPE: usize = 1;
    pub const HOP_LIMIT: usize = 2;
    pub const FLAGS: usize = 3;
    pub const SENDER: Range<usize> = 4..8;
    pub const RECEIVER: Range<usize> = 8..12;
    pub const SEQ: Range<usize> = 12..20;
    pub const PAYLOAD: RangeFrom<usize> = 20..;
}

/// The underlay IP family, which decides the outer header size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4 underlay: 20-byte IP header.
    V4,
    /// IPv6 underlay: 40-byte IP header.
    V6,
}

impl Family {
    /// The family of a remote address.
    pub fn of(addr: std::net::SocketAddr) -> Family {
        if addr.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// Size of this family's fixed IP header.
    pub const fn ip_header_len(self) -> usize {
        match self {
            Family::V4 => 20,
            Family::V6 => 40,
        }
    }
}

/// The largest inner IP packet that fits a link of `link_mtu` bytes once
/// encapsulated over `family` (1500 -> 1436 over IPv4, 1416 over IPv6).
pub const fn tun_mtu(link_mtu: usize, family: Family) -> usize {
    link_mtu.saturating_sub(family.ip_header_len() + UDP_HEADER_LEN + OVERHEAD)
}

/// Message types. Numbers are wire values and never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// An IP packet from a TUN, sealed.
    Data = 1,
    /// Empty sealed message that keeps a path (and its NAT mapping) alive.
    Keepalive = 2,
    /// Path probe (link monitor).
    Probe = 3,
    /// Path probe reply (link monitor).
    ProbeReply = 4,
    /// Noise handshake initiation.
    HandshakeInit = 5,
    /// Noise handshake response.
    HandshakeResponse = 6,
    /// Cookie reply under load.
    Cookie = 7,
    /// Route advertisement (mesh).
    RouteAdvert = 8,
    /// Path notice (link monitor): data sent on one of the receiver's paths
    /// stopped arriving here.
    PathNotice = 9,
    /// Path MTU probe: padded to the size it tests, answered on its path.
    MtuProbe = 10,
    /// Path MTU probe reply: the probe's id and size.
    MtuReply = 11,
}

impl MessageType {
    /// Decode a wire value.
    pub const fn from_u8(v: u8) -> Option<MessageType> {
        Some(match v {
            1 => MessageType::Data,
            2 => MessageType::Keepalive,
            3 => MessageType::Probe,
            4 => MessageType::ProbeReply,
            5 => MessageType::HandshakeInit,
            6 => MessageType::HandshakeResponse,
            7 => MessageType::Cookie,
            8 => MessageType::RouteAdvert,
            9 => MessageType::PathNotice,
            10 => MessageType::MtuProbe,
            11 => MessageType::MtuReply,
            _ => return None,
        })
    }

    /// Whether messages of this type are sealed with a session key (header as
    /// associated data, tag at the end).
    pub const fn is_sealed(self) -> bool {
        !matches!(self, MessageType::HandshakeInit | MessageType::HandshakeResponse | MessageType::Cookie)
    }
}

/// Why bytes are not a well-formed mpvr datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the header, or than header + tag for a sealed type.
    #[error("datagram truncated")]
    Truncated,
    /// Version byte is not ours.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Type byte is not a known message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Flags carry bits this version does not define (or a key phase on a
    /// message that is not sealed).
    #[error("unknown flags {0:#04x}")]
    BadFlags(u8),
    /// Sender or receiver is the reserved host id 0.
    #[error("host id 0 is reserved")]
    ZeroHostId,
}

/// A view of a datagram. After [`Packet::new_checked`] succeeds no accessor
/// can panic; [`Header::parse`] then checks what the fields mean.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap without checks; accessors panic on a buffer shorter than the header.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wrap untrusted bytes: fails unless the whole header is there.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Packet::new_unchecked(buffer))
    }

    fn array<const N: usize>(&self, r: Range<usize>) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buffer.as_ref()[r]);
        a
    }

    /// Give back the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.buffer.as_ref().len()
    }

    /// Never true for a checked packet; here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.buffer.as_ref().is_empty()
    }

    /// Version byte.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    /// Raw message type byte.
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// Remaining hops.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// Flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Raw sending host id (the previous hop).
    pub fn sender(&self) -> u32 {
        u32::from_be_bytes(self.array(field::SENDER))
    }

    /// Raw receiving host id (the next hop).
    pub fn receiver(&self) -> u32 {
        u32::from_be_bytes(self.array(field::RECEIVER))
    }

    /// Sequence number, also the AEAD nonce.
    pub fn seq(&self) -> Seq {
        Seq(u64::from_be_bytes(self.array(field::SEQ)))
    }

    /// The header bytes (the AEAD's associated data).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN]
    }

    /// Everything after the header (ciphertext and tag for sealed types).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Header (read-only) and everything after it (mutable), for opening in place.
    pub fn split_mut(&mut self) -> (&[u8], &mut [u8]) {
        let (h, p) = self.buffer.as_mut().split_at_mut(HEADER_LEN);
        (h, p)
    }
}

/// The parsed header: what [`Header::emit`] writes and [`Header::parse`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Message type.
    pub msg_type: MessageType,
    /// Remaining hops; a relay drops the packet instead of sending it with 0.
    pub hop_limit: u8,
    /// Key phase of a sealed message (flags bit 0).
    pub key_phase: bool,
    /// A data packet sent on one path alone (flags bit 1).
    pub sole: bool,
    /// A data packet of the real-time class (flags bit 2).
    pub realtime: bool,
    /// Previous hop.
    pub sender: HostId,
    /// Next hop.
    pub receiver: HostId,
    /// Sequence number in the sender -> receiver session.
    pub seq: Seq,
}

impl Header {
    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Read and validate the header of an untrusted datagram: everything a
    /// receiver must reject before any state is touched.
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Header, WireError> {
        if p.version() != VERSION {
            return Err(WireError::BadVersion(p.version()));
        }
        let msg_type = MessageType::from_u8(p.msg_type()).ok_or(WireError::UnknownType(p.msg_type()))?;
        let allowed = match msg_type {
            MessageType::Data => FLAG_KEY_PHASE | FLAG_SOLE | FLAG_REALTIME,
            t if t.is_sealed() => FLAG_KEY_PHASE,
            _ => 0,
        };
        if p.flags() & !allowed != 0 {
            return Err(WireError::BadFlags(p.flags()));
        }
        if msg_type.is_sealed() && p.len() < OVERHEAD {
            return Err(WireError::Truncated);
        }
        let (Some(sender), Some(receiver)) = (HostId::new(p.sender()), HostId::new(p.receiver())) else {
            return Err(WireError::ZeroHostId);
        };
        Ok(Header {
            msg_type,
            hop_limit: p.hop_limit(),
            key_phase: p.flags() & FLAG_KEY_PHASE != 0,
            sole: p.flags() & FLAG_SOLE != 0,
            realtime: p.flags() & FLAG_REALTIME != 0,
            sender,
            receiver,
            seq: p.seq(),
        })
    }

    /// Write the header into the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// # Panics
    /// If `buf` is shorter than [`HEADER_LEN`] (a caller bug, never input).
    pub fn emit(&self, buf: &mut [u8]) {
        let b = &mut buf[..HEADER_LEN];
        b[field::VERSION] = VERSION;
        b[field::TYPE] = self.msg_type as u8;
        b[field::HOP_LIMIT] = self.hop_limit;
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        b[field::FLAGS] =
            flag(self.key_phase, FLAG_KEY_PHASE) | flag(self.sole, FLAG_SOLE) | flag(self.realtime, FLAG_REALTIME);
        b[field::SENDER].copy_from_slice(&self.sender.get().to_be_bytes());
        b[field::RECEIVER].copy_from_slice(&self.receiver.get().to_be_bytes());
        b[field::SEQ].copy_from_slice(&self.seq.0.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hid(n: u32) -> HostId {
        HostId::new(n).unwrap()
    }

    #[test]
    fn mtu_for_1500_byte_links() {
        assert_eq!(tun_mtu(1500, Family::V4), 1436);
        assert_eq!(tun_mtu(1500, Family::V6), 1416);
        assert_eq!(tun_mtu(10, Family::V6), 0);
    }

    #[test]
    fn rejects_bad_headers() {
        let h = Header {
            msg_type: MessageType::Data,
            hop_limit: 3,
            key_phase: false,
            sole: false,
            realtime: false,
            sender: hid(1),
            receiver: hid(2),
            seq: Seq(9),
        };
        let mut b = vec![0u8; OVERHEAD];
        h.emit(&mut b);
        let parse = |v: &[u8]| Packet::new_checked(v).and_then(|p| Header::parse(&p));
        assert_eq!(parse(&b[..]), Ok(h));
        assert_eq!(parse(&b[..HEADER_LEN - 1]), Err(WireError::Truncated));
        assert_eq!(parse(&b[..HEADER_LEN]), Err(WireError::Truncated));
        let mut v = b.clone();
        v[0] = 1;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadVersion(1), "version 1 had no handshake MACs");
        v[0] = 2;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadVersion(2), "version 2 had no cipher agreement");
        v[0] = 3;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadVersion(3), "version 3 had no real-time flag");
        v[0] = 5;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadVersion(5));
        let mut v = b.clone();
        v[1] = 0;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::UnknownType(0));
        let mut v = b.clone();
        v[3] = 8;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadFlags(8));
        v[3] = 4;
        assert!(parse(&v[..]).unwrap().realtime, "data may be real-time");
        v[1] = MessageType::Keepalive as u8;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadFlags(4), "nothing else may");
        v[1] = MessageType::Data as u8;
        v[3] = 2;
        assert!(parse(&v[..]).unwrap().sole, "data may be sole");
        v[1] = MessageType::Probe as u8;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadFlags(2), "nothing else may");
        let mut v = b.clone();
        v[3] = 1;
        assert!(parse(&v[..]).unwrap().key_phase);
        v[1] = MessageType::HandshakeInit as u8;
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::BadFlags(1));
        let mut v = b.clone();
        v[4..8].fill(0);
        assert_eq!(parse(&v[..]).unwrap_err(), WireError::ZeroHostId);
        // Handshake messages are not sealed: a bare header is long enough.
        let mut v = b.clone();
        v[1] = MessageType::HandshakeInit as u8;
        assert!(parse(&v[..HEADER_LEN]).is_ok());
    }

    proptest! {
        #[test]
        fn header_roundtrip(ty in 1u8..=8, hop: u8, s in 1u32.., r in 1u32.., seq: u64, extra in 0usize..64) {
            let ty = MessageType::from_u8(ty).unwrap();
            let key_phase = ty.is_sealed() && seq % 2 == 1;
            let sole = ty == MessageType::Data && seq % 3 == 0;
            let realtime = ty == MessageType::Data && seq % 5 < 2;
            let h = Header { msg_type: ty, hop_limit: hop, key_phase, sole, realtime, sender: hid(s), receiver: hid(r), seq: Seq(seq) };
            let mut b = vec![0u8; OVERHEAD + extra];
            h.emit(&mut b);
            let p = Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(Header::parse(&p), Ok(h));
            prop_assert_eq!(p.header(), &b[..HEADER_LEN]);
        }

        #[test]
        fn checked_view_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = Packet::new_checked(&bytes[..]) && let Ok(h) = Header::parse(&p) {
                let mut again = vec![0u8; HEADER_LEN];
                h.emit(&mut again);
                prop_assert_eq!(&again[..], p.header());
                let _ = p.payload();
            }
        }
    }
}
