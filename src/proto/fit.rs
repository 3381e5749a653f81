//! Packets larger than the paths carry, handled as a router would: an
//! IPv4 packet that allows it is fragmented (RFC 791), any other is
//! answered with ICMP "fragmentation needed" (RFC 1191) or ICMPv6 "packet
//! too big" (RFC 8201) naming the size the tunnel carries, so the sender's
//! stack adapts at once; and TCP SYNs get their MSS option lowered to what
//! the paths carry (what `iptables -j TCPMSS --clamp-mss-to-pmtu` does),
//! so most TCP never needs either.
//!
//! Everything writes into caller buffers; nothing here allocates once they
//! have grown. An ICMP answer is sourced from the packet's destination
//! (the far end of the tunnel): the local stack accepts it on the TUN
//! (a local source address would be a martian), and its quote lets the
//! stack find the socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Largest ICMPv4 error (RFC 1812 4.3.2.3: the quote fills up to 576 bytes).
const ICMP_V4_MAX: usize = 576;
/// Largest ICMPv6 error (RFC 4443 2.4(c): no more than the minimum MTU).
const ICMP_V6_MAX: usize = 1280;
/// TTL / hop limit of the answers mpvr writes.
const TTL: u8 = 64;
const PROTO_TCP: u8 = 6;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// An IPv4 header's fields this module reads.
struct V4 {
    ihl: usize,
    total: usize,
    dont_fragment: bool,
    more: bool,
    offset: usize,
    protocol: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

fn v4(p: &[u8]) -> Option<V4> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return None;
    }
    let frag = u16::from_be_bytes([p[6], p[7]]);
    Some(V4 {
        ihl,
        total,
        dont_fragment: frag & 0x4000 != 0,
        more: frag & 0x2000 != 0,
        offset: usize::from(frag & 0x1fff) * 8,
        protocol: p[9],
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    })
}

fn v6_addrs(p: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// Whether `packet` is an IPv4 packet a router may fragment (DF clear).
pub fn may_fragment(packet: &[u8]) -> bool {
    v4(packet).is_some_and(|h| !h.dont_fragment)
}

/// Split the IPv4 `packet` (DF clear) into fragments of at most `max`
/// bytes, each built in `scratch` and handed to `each`. False (and nothing
/// handed) if it is not such a packet or `max` leaves no room for 8 bytes
/// of data. Options are copied into the first fragment only, and into the
/// others when their "copied" bit says so (RFC 791).
pub fn fragment_v4(packet: &[u8], max: usize, scratch: &mut Vec<u8>, mut each: impl FnMut(&[u8])) -> bool {
    let Some(h) = v4(packet).filter(|h| !h.dont_fragment) else { return false };
    // The options later fragments carry, padded to a 4-byte boundary.
    let mut later_opts = [0u8; 40];
    let mut later_len = 0;
    let mut i = 20;
    while i < h.ihl {
        let kind = packet[i];
        match kind {
            0 => break,
            1 => i += 1,
            _ => {
                let len = usize::from(*packet.get(i + 1).unwrap_or(&0));
                if len < 2 || i + len > h.ihl {
                    return false;
                }
                if kind & 0x80 != 0 {
                    later_opts[later_len..later_len + len].copy_from_slice(&packet[i..i + len]);
                    later_len += len;
                }
                i += len;
            }
        }
    }
    let later_ihl = 20 + later_len.div_ceil(4) * 4;
    let data = &packet[h.ihl..h.total];
    let first_room = max.saturating_sub(h.ihl) / 8 * 8;
    let later_room = max.saturating_sub(later_ihl) / 8 * 8;
    if first_room == 0 || later_room == 0 {
        return false;
    }
    let mut at = 0;
    while at < data.len() {
        let (ihl, room) = if at == 0 { (h.ihl, first_room) } else { (later_ihl, later_room) };
        let n = room.min(data.len() - at);
        let last = at + n == data.len();
        scratch.clear();
        scratch.extend_from_slice(&packet[..20]);
        if at == 0 {
            scratch.extend_from_slice(&packet[20..h.ihl]);
        } else {
            scratch.extend_from_slice(&later_opts[..later_len]);
            scratch.resize(later_ihl, 0);
        }
        scratch.extend_from_slice(&data[at..at + n]);
        scratch[0] = 0x40 | (ihl / 4) as u8;
        scratch[2..4].copy_from_slice(&((ihl + n) as u16).to_be_bytes());
        let more = !last || h.more;
        let off = ((h.offset + at) / 8) as u16 | if more { 0x2000 } else { 0 };
        scratch[6..8].copy_from_slice(&off.to_be_bytes());
        scratch[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&scratch[..ihl]);
        scratch[10..12].copy_from_slice(&c.to_be_bytes());
        each(scratch);
        at += n;
    }
    true
}

/// Whether an ICMP error may answer `packet` (RFC 1122 3.2.2, RFC 4443
/// 2.4(e)): not an ICMP error itself, not a later fragment, not from an
/// address that is no single host's.
fn may_answer(packet: &[u8]) -> bool {
    if let Some(h) = v4(packet) {
        let error = h.protocol == PROTO_ICMP && packet.get(h.ihl).is_some_and(|&t| matches!(t, 3 | 4 | 5 | 11 | 12));
        let nobody = h.src.is_unspecified() || h.src.is_broadcast() || h.src.is_multicast() || h.dst.is_multicast();
        return !error && h.offset == 0 && !nobody;
    }
    if let Some((src, dst)) = v6_addrs(packet) {
        // A packet whose first header is ICMPv6 with a type below 128 is an error.
        let error = packet[6] == PROTO_ICMPV6 && packet.get(40).is_some_and(|&t| t < 128);
        return !error && !src.is_unspecified() && !src.is_multicast() && !dst.is_multicast();
    }
    false
}

/// Build in `out` the answer to `packet`, which is larger than the `mtu`
/// bytes the tunnel carries toward its destination: ICMP type 3 code 4
/// with the next-hop MTU, or ICMPv6 type 2 with the MTU (at least 1280,
/// IPv6's minimum). False (and `out` empty) if no error may answer it.
pub fn too_big(packet: &[u8], mtu: u16, out: &mut Vec<u8>) -> bool {
    out.clear();
    if !may_answer(packet) {
        return false;
    }
    if let Some(h) = v4(packet) {
        let quote = &packet[..h.total.min(ICMP_V4_MAX - 28)];
        let total = 28 + quote.len();
        out.extend_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, TTL, PROTO_ICMP, 0, 0]);
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        out.extend_from_slice(&h.dst.octets());
        out.extend_from_slice(&h.src.octets());
        let c = checksum(&out[..20]);
        out[10..12].copy_from_slice(&c.to_be_bytes());
        out.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
        out.extend_from_slice(&mtu.to_be_bytes());
        out.extend_from_slice(quote);
        let c = checksum(&out[20..]);
        out[22..24].copy_from_slice(&c.to_be_bytes());
        return true;
    }
    let Some((src, dst)) = v6_addrs(packet) else { return false };
    let quote = &packet[..packet.len().min(ICMP_V6_MAX - 48)];
    let len = 8 + quote.len();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[PROTO_ICMPV6, TTL]);
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&[2, 0, 0, 0]);
    out.extend_from_slice(&u32::from(mtu.max(1280)).to_be_bytes());
    out.extend_from_slice(quote);
    let c = v6_checksum(out);
    out[42..44].copy_from_slice(&c.to_be_bytes());
    true
}

/// The upper-layer checksum of an IPv6 packet whose payload starts at 40.
fn v6_checksum(p: &[u8]) -> u16 {
    let mut acc = sum16(&p[8..40], 0);
    acc += (p.len() - 40) as u32;
    acc += u32::from(p[6]);
    fold(sum16(&p[40..], acc))
}

/// The largest TCP MSS for packets of at most `mtu` bytes of the
/// family of `addr` (RFC 879, RFC 8200: 40 or 60 bytes of headers).
pub fn mss_for(mtu: usize, addr: IpAddr) -> u16 {
    let headers = if addr.is_ipv4() { 40 } else { 60 };
    u16::try_from(mtu.saturating_sub(headers)).unwrap_or(u16::MAX)
}

/// Where the TCP header of `packet` starts, if it is a whole TCP
/// segment (IPv4 not a later fragment; IPv6 with TCP as its first header).
fn tcp_at(packet: &[u8]) -> Option<usize> {
    if let Some(h) = v4(packet) {
        return (h.protocol == PROTO_TCP && h.offset == 0).then_some(h.ihl);
    }
    (packet.len() >= 40 && packet[0] >> 4 == 6 && packet[6] == PROTO_TCP).then_some(40)
}

/// Whether `packet` is a TCP SYN (or SYN-ACK): cheap, for the hot path.
pub fn is_syn(packet: &[u8]) -> bool {
    tcp_at(packet).and_then(|t| packet.get(t + 13)).is_some_and(|&flags| flags & 0x02 != 0)
}

/// Lower the MSS option of the TCP SYN in `packet` to `mss` if it is
/// larger, fixing the checksum (RFC 1624). True if it was changed.
pub fn clamp_mss(packet: &mut [u8], mss: u16) -> bool {
    let Some(t) = tcp_at(packet) else { return false };
    let Some(&flags) = packet.get(t + 13) else { return false };
    if flags & 0x02 == 0 {
        return false;
    }
    let doff = usize::from(packet[t + 12] >> 4) * 4;
    if doff < 20 || t + doff > packet.len() {
        return false;
    }
    let mut i = t + 20;
    while i < t + doff {
        match packet[i] {
            0 => return false,
            1 => i += 1,
            kind => {
                let Some(&len) = packet.get(i + 1) else { return false };
                let len = usize::from(len);
                if len < 2 || i + len > t + doff {
                    return false;
                }
                if kind == 2 && len == 4 {
                    let old = u16::from_be_bytes([packet[i + 2], packet[i + 3]]);
                    if old <= mss {
                        return false;
                    }
                    packet[i + 2..i + 4].copy_from_slice(&mss.to_be_bytes());
                    let hc = u16::from_be_bytes([packet[t + 16], packet[t + 17]]);
                    let acc = u32::from(!hc) + u32::from(!old) + u32::from(mss);
                    packet[t + 16..t + 18].copy_from_slice(&fold(acc).to_be_bytes());
                    return true;
                }
                i += len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4_packet(len: usize, df: bool, protocol: u8) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        if df {
            p[6] = 0x40;
        }
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&[10, 9, 0, 1]);
        p[16..20].copy_from_slice(&[10, 9, 0, 2]);
        for (i, b) in p[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_syn(v6: bool, mss: u16) -> Vec<u8> {
        let ip = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip + 24];
        if v6 {
            p[0] = 0x60;
            p[4..6].copy_from_slice(&24u16.to_be_bytes());
            p[6] = PROTO_TCP;
            p[7] = 64;
            p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
            p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        } else {
            p = v4_packet(44, true, PROTO_TCP);
        }
        let t = ip;
        p[t + 12] = 6 << 4;
        p[t + 13] = 0x02;
        p[t + 20..t + 24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        let c = tcp_checksum(&p, t);
        p[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tcp_checksum(p: &[u8], t: usize) -> u16 {
        let mut seg = p[t..].to_vec();
        seg[16] = 0;
        seg[17] = 0;
        let acc = if t == 20 {
            sum16(&p[12..20], 0) + u32::from(PROTO_TCP) + seg.len() as u32
        } else {
            sum16(&p[8..40], 0) + u32::from(PROTO_TCP) + seg.len() as u32
        };
        fold(sum16(&seg, acc))
    }

    #[test]
    fn fragments_reassemble_to_the_packet_and_respect_the_size() {
        let p = v4_packet(1400, false, 17);
        let mut scratch = Vec::new();
        let mut pieces = Vec::new();
        assert!(fragment_v4(&p, 1000, &mut scratch, |f| pieces.push(f.to_vec())));
        assert_eq!(pieces.len(), 2);
        let mut data = Vec::new();
        for (i, f) in pieces.iter().enumerate() {
            assert!(f.len() <= 1000);
            assert_eq!(checksum(&f[..20]), 0, "header checksum");
            let h = v4(f).unwrap();
            assert_eq!(h.more, i == 0);
            assert_eq!(h.offset, data.len());
            assert_eq!(&f[4..6], &p[4..6], "same id");
            data.extend_from_slice(&f[20..]);
        }
        assert_eq!(&data[..], &p[20..]);
        // DF set: not fragmented.
        let df = v4_packet(1400, true, 17);
        assert!(!fragment_v4(&df, 1000, &mut scratch, |_| panic!("fragmented a DF packet")));
        assert!(!may_fragment(&df) && may_fragment(&p));
    }

    #[test]
    fn too_big_answers_quote_the_packet_with_valid_checksums() {
        let p = v4_packet(1400, true, 17);
        let mut out = Vec::new();
        assert!(too_big(&p, 1356, &mut out));
        assert_eq!(out.len(), 576);
        assert_eq!(checksum(&out[..20]), 0);
        assert_eq!(checksum(&out[20..]), 0);
        assert_eq!((out[20], out[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1356);
        assert_eq!(&out[12..16], &p[16..20], "from the destination");
        assert_eq!(&out[16..20], &p[12..16], "to the source");
        assert_eq!(&out[28..48], &p[..20], "quotes the header");
        // Never an error for an error.
        let mut err = out.clone();
        assert!(!too_big(&err.clone(), 1000, &mut err));

        let mut v6 = vec![0u8; 1400];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&1360u16.to_be_bytes());
        v6[6] = 17;
        v6[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        v6[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        assert!(too_big(&v6, 1300, &mut out));
        assert_eq!(out.len(), 1280);
        assert_eq!(v6_checksum(&out), 0);
        assert_eq!(out[40], 2);
        assert_eq!(u32::from_be_bytes(out[44..48].try_into().unwrap()), 1300);
        assert!(too_big(&v6, 1000, &mut out));
        assert_eq!(u32::from_be_bytes(out[44..48].try_into().unwrap()), 1280, "never below IPv6's minimum");
    }

    #[test]
    fn mss_is_clamped_with_a_correct_checksum_both_families() {
        for v6 in [false, true] {
            let mut p = tcp_syn(v6, 1460);
            let t = if v6 { 40 } else { 20 };
            assert!(is_syn(&p));
            assert!(clamp_mss(&mut p, 1316));
            assert_eq!(u16::from_be_bytes([p[t + 22], p[t + 23]]), 1316);
            let stored = u16::from_be_bytes([p[t + 16], p[t + 17]]);
            assert_eq!(stored, tcp_checksum(&p, t), "v6 {v6}");
            assert!(!clamp_mss(&mut p, 1400), "never raised");
        }
        assert_eq!(mss_for(1356, "10.0.0.1".parse().unwrap()), 1316);
        assert_eq!(mss_for(1356, "fd00::1".parse().unwrap()), 1296);
        assert!(!is_syn(&v4_packet(100, true, 17)));
    }

    proptest::proptest! {
        /// Any bytes (a TUN packet, or a peer's decrypted one): nothing
        /// panics, fragments are well formed and carry the packet, a clamp
        /// changes at most the two MSS bytes and the checksum.
        #[test]
        fn any_bytes_are_handled(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600), max in 0usize..1600, mss in proptest::prelude::any::<u16>(), patch in proptest::prelude::any::<bool>()) {
            // Half the inputs look like IPv4 (version, a header length
            // from 20 to 60 bytes, total length right, DF clear).
            if patch && bytes.len() >= 60 {
                bytes[0] = 0x40 | if bytes[0] & 1 == 0 { 5 } else { 5 + bytes[0] % 11 };
                let len = bytes.len() as u16;
                bytes[2..4].copy_from_slice(&len.to_be_bytes());
                bytes[6] &= !0x40;
            }
            let mut out = Vec::new();
            let _ = too_big(&bytes, 1300, &mut out);
            let mut scratch = Vec::new();
            let mut data = Vec::new();
            let fragmented = fragment_v4(&bytes, max, &mut scratch, |f| {
                assert!(f.len() <= max.max(28));
                assert_eq!(checksum(&f[..usize::from(f[0] & 0x0f) * 4]), 0);
                data.extend_from_slice(&f[usize::from(f[0] & 0x0f) * 4..]);
            });
            if fragmented {
                let h = v4(&bytes).unwrap();
                proptest::prop_assert_eq!(&data[..], &bytes[h.ihl..h.total]);
            }
            let before = bytes.clone();
            let _ = is_syn(&bytes);
            if clamp_mss(&mut bytes, mss) {
                let changed = before.iter().zip(&bytes).filter(|(a, b)| a != b).count();
                proptest::prop_assert!(changed <= 4);
            }
            proptest::prop_assert_eq!(before.len(), bytes.len());
        }
    }
}
