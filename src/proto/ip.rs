//! Just enough of the inner IP header to route a packet and check where it
//! came from: version, source and destination.
//!
//! mpvr does not change the application's packet (DESIGN.md invariant 1)
//! beyond what a router on its path would: an MSS lowered in a TCP SYN,
//! an IPv4 packet fragmented, an ICMP "too big" answered
//! ([`super::fit`]). Here it only reads where the packet goes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a TUN packet (or a decrypted payload) is not an IP packet we can route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// Shorter than the fixed header of its version.
    #[error("IP packet truncated")]
    Truncated,
    /// Version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet (version {0})")]
    BadVersion(u8),
}

/// The destination address of an IPv4 or IPv6 packet.
pub fn destination(packet: &[u8]) -> Result<IpAddr, IpError> {
    address(packet, 16, 24)
}

/// The source address of an IPv4 or IPv6 packet.
pub fn source(packet: &[u8]) -> Result<IpAddr, IpError> {
    address(packet, 12, 8)
}

/// The address at `v4` (IPv4) or `v6` (IPv6) bytes into the header.
fn address(packet: &[u8], v4: usize, v6: usize) -> Result<IpAddr, IpError> {
    let first = *packet.first().ok_or(IpError::Truncated)?;
    match first >> 4 {
        4 => {
            let b: [u8; 4] =
                packet.get(v4..v4 + 4).ok_or(IpError::Truncated)?.try_into().map_err(|_| IpError::Truncated)?;
            if first & 0x0f < 5 {
                return Err(IpError::Truncated);
            }
            Ok(IpAddr::V4(Ipv4Addr::from(b)))
        }
        6 => {
            let b: [u8; 16] =
                packet.get(v6..v6 + 16).ok_or(IpError::Truncated)?.try_into().map_err(|_| IpError::Truncated)?;
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        v => Err(IpError::BadVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_destinations() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[10, 9, 0, 2]);
        assert_eq!(destination(&v4), Ok("10.9.0.2".parse().unwrap()));
        assert_eq!(destination(&v4[..19]), Err(IpError::Truncated));
        v4[0] = 0x44;
        assert_eq!(destination(&v4), Err(IpError::Truncated));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(destination(&v6), Ok("fd00::2".parse().unwrap()));
        assert_eq!(destination(&v6[..39]), Err(IpError::Truncated));
        assert_eq!(destination(&[]), Err(IpError::Truncated));
        assert_eq!(destination(&[0x50; 40]), Err(IpError::BadVersion(5)));
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 9, 0, 1]);
        assert_eq!(source(&v4), Ok("10.9.0.1".parse().unwrap()));
        v6[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(source(&v6), Ok("fd00::1".parse().unwrap()));
    }
}
