//! Test traffic: real IPv4/IPv6 UDP packets whose payload carries an id and a
//! pattern derived from it, so a receiver can tell which packet arrived and
//! whether a single bit of it changed on the way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::proto::fit::checksum;

/// Smallest payload: the 8-byte id.
const ID_LEN: usize = 8;
const UDP_PORT: u16 = 5004; // RTP's customary port: this is "real-time media".

fn fill(id: u64, payload: &mut [u8]) {
    payload[..ID_LEN].copy_from_slice(&id.to_be_bytes());
    for (i, b) in payload[ID_LEN..].iter_mut().enumerate() {
        *b = (id as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
}

/// DSCP EF (expedited forwarding): how test media marks itself real-time.
pub const EF: u8 = 46;

/// An IP/UDP packet of `total_len` bytes (at least the headers plus 8) from
/// `src` to `dst` carrying `id`, marked DSCP EF (test media: real-time).
/// Both addresses must be of one family.
///
/// # Panics
/// If the families differ or `total_len` is too small or too large (test bugs).
pub fn udp_packet(src: IpAddr, dst: IpAddr, id: u64, total_len: usize) -> Vec<u8> {
    udp_packet_marked(src, dst, id, total_len, EF)
}

/// [`udp_packet`] with DSCP `dscp` (0: best effort, which a large packet
/// makes bulk).
pub fn udp_packet_marked(src: IpAddr, dst: IpAddr, id: u64, total_len: usize, dscp: u8) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => udp4(s, d, id, total_len, dscp),
        (IpAddr::V6(s), IpAddr::V6(d)) => udp6(s, d, id, total_len, dscp),
        _ => panic!("udp_packet: {src} and {dst} are of different families"),
    }
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, id: u64, total_len: usize, dscp: u8) -> Vec<u8> {
    assert!((20 + 8 + ID_LEN..=65_535).contains(&total_len), "bad IPv4 test packet length {total_len}");
    let mut p = vec![0u8; total_len];
    p[0] = 0x45;
    p[1] = dscp << 2;
    p[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
    p[8] = 64; // TTL
    p[9] = 17; // UDP
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    udp_header(&mut p[20..]);
    fill(id, &mut p[28..]);
    p
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, id: u64, total_len: usize, dscp: u8) -> Vec<u8> {
    assert!((40 + 8 + ID_LEN..=65_535).contains(&total_len), "bad IPv6 test packet length {total_len}");
    let mut p = vec![0u8; total_len];
    p[0] = 0x60 | dscp >> 2;
    p[1] = (dscp & 0x03) << 6;
    p[4..6].copy_from_slice(&((total_len - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    udp_header(&mut p[40..]);
    fill(id, &mut p[48..]);
    p
}

fn udp_header(u: &mut [u8]) {
    let len = u.len() as u16;
    u[0..2].copy_from_slice(&UDP_PORT.to_be_bytes());
    u[2..4].copy_from_slice(&UDP_PORT.to_be_bytes());
    u[4..6].copy_from_slice(&len.to_be_bytes());
    // Checksum 0: "none" for IPv4; the simulator never checks it.
}

/// The id of a packet built by [`udp_packet`], or `None` if any byte of its
/// payload is not what that id implies (the packet was mangled).
pub fn packet_id(packet: &[u8]) -> Option<u64> {
    let off = match packet.first()? >> 4 {
        4 => 28,
        6 => 48,
        _ => return None,
    };
    let payload = packet.get(off..)?;
    let id = u64::from_be_bytes(payload.get(..ID_LEN)?.try_into().ok()?);
    let mut expect = vec![0u8; payload.len()];
    fill(id, &mut expect);
    (expect == payload).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ip;

    #[test]
    fn ids_roundtrip_and_mangling_is_seen() {
        let a: IpAddr = "10.9.0.1".parse().unwrap();
        let b: IpAddr = "10.9.0.2".parse().unwrap();
        let p = udp_packet(a, b, 42, 200);
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(ip::destination(&p), Ok(b));
        assert_eq!(packet_id(&p), Some(42));
        let mut q = p.clone();
        q[150] ^= 4;
        assert_eq!(packet_id(&q), None);
        let p6 = udp_packet("fd09::1".parse().unwrap(), "fd09::2".parse().unwrap(), 7, 100);
        assert_eq!(ip::destination(&p6), Ok("fd09::2".parse().unwrap()));
        assert_eq!(packet_id(&p6), Some(7));
    }
}
