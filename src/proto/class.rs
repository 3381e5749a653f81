//! Traffic classes: what kind of traffic an inner IP packet belongs to,
//! decided per packet without allocation.
//!
//! Two classes, each with its own duplication policy (the node's `policy`
//! for real-time traffic, `bulk_policy` for bulk):
//! - [`Class::Realtime`]: media and what a call's setup and feel depend on;
//!   copied onto every path by default, first in every queue.
//! - [`Class::Bulk`]: everything else; one path by default (the cheapest
//!   that is up), last in every queue.
//!
//! Order of decision, first match wins:
//! 1. the configured [`Rule`]s, in file order (protocol, ports, prefixes,
//!    DSCP; a rule's fields must all match, a list matches if any entry does;
//!    ports and prefixes match the source or the destination);
//! 2. DSCP EF, CS4, CS5 or AF41-43 (RFC 4594's telephony, real-time
//!    interactive, broadcast video and multimedia conferencing classes);
//! 3. ICMP and ICMPv6 (ping and path MTU discovery feel like the network);
//! 4. TCP: bulk;
//! 5. UDP to or from port 53 (DNS);
//! 6. UDP whose payload is STUN, DTLS, TURN channel data or RTP/RTCP, told
//!    apart by the first byte as RFC 7983 does and checked further (STUN's
//!    magic cookie, DTLS's version, a TURN channel's length, RTP version 2
//!    with a header that fits);
//! 7. a UDP flow of small packets at a steady, modest rate (voice, game
//!    state, telemetry), from a bounded [`FlowTable`];
//! 8. everything else: bulk.
//!
//! Each hop decides again from the decrypted packet (the class does not
//! travel on the wire): a relay applies its own rules, and nothing a sender
//! claims about a class is trusted beyond what the packet shows.
//!
//! Everything here reads untrusted bytes (the application's DSCP and
//! payloads): no pattern can allocate, panic or grow any state; the flow
//! table has a fixed size, its hash is keyed with a secret, and a flood of
//! new flows can only replace flows that are not (or no longer) steady.

use std::fmt;
use std::hash::Hasher;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use super::time::Time;

/// What kind of traffic a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Real-time: copied onto every path by default, never queued behind bulk.
    Realtime,
    /// Everything else.
    Bulk,
}

impl Class {
    /// Every class, in counter order.
    pub const ALL: [Class; 2] = [Class::Realtime, Class::Bulk];

    /// Its stable name (config, status, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Class::Realtime => "realtime",
            Class::Bulk => "bulk",
        }
    }

    /// Its index in per-class arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A class name that is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown class {0:?}: use \"realtime\" or \"bulk\"")]
pub struct UnknownClass(pub String);

impl FromStr for Class {
    type Err = UnknownClass;
    fn from_str(s: &str) -> Result<Class, UnknownClass> {
        match s {
            "realtime" => Ok(Class::Realtime),
            "bulk" => Ok(Class::Bulk),
            _ => Err(UnknownClass(s.to_string())),
        }
    }
}

/// IP protocol numbers this module names.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// DSCP values that mark real-time traffic: EF (46), CS4 (32), CS5 (40), AF41-43 (34, 36, 38).
pub const REALTIME_DSCP: [u8; 6] = [46, 32, 40, 34, 36, 38];

const fn dscp_mask(values: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < values.len() {
        m |= 1 << values[i];
        i += 1;
    }
    m
}

const REALTIME_DSCP_MASK: u64 = dscp_mask(&REALTIME_DSCP);

/// A configured classification rule: every field given must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The class of the packets it matches.
    pub class: Class,
    /// IP protocol number (`None`: any).
    pub protocol: Option<u8>,
    /// Port ranges, inclusive, matched against source and destination (empty: any).
    pub ports: Vec<(u16, u16)>,
    /// Prefixes, matched against source and destination (empty: any).
    pub prefixes: Vec<IpNet>,
    /// DSCP values (empty: any).
    pub dscp: Vec<u8>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        parts.push(match self.protocol {
            None => "any protocol".to_string(),
            Some(protocol::TCP) => "tcp".to_string(),
            Some(protocol::UDP) => "udp".to_string(),
            Some(protocol::ICMP) => "icmp".to_string(),
            Some(protocol::ICMPV6) => "icmpv6".to_string(),
            Some(p) => format!("protocol {p}"),
        });
        if !self.ports.is_empty() {
            let ports: Vec<String> =
                self.ports.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
            parts.push(format!("ports {}", ports.join(",")));
        }
        if !self.prefixes.is_empty() {
            let p: Vec<String> = self.prefixes.iter().map(ToString::to_string).collect();
            parts.push(format!("to or from {}", p.join(",")));
        }
        if !self.dscp.is_empty() {
            let d: Vec<String> = self.dscp.iter().map(ToString::to_string).collect();
            parts.push(format!("dscp {}", d.join(",")));
        }
        write!(f, "{} -> {}", parts.join(" "), self.class)
    }
}

/// What the automatic rules do, in words (for `mpvr check` and docs).
pub const AUTOMATIC: &str = "DSCP EF/CS4/CS5/AF41-43, ICMP, DNS, STUN/DTLS/TURN/RTP/RTCP payloads and steady \
     small-packet UDP flows -> realtime; TCP and everything else -> bulk";

/// A rule that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A DSCP value above 63.
    #[error("DSCP {0} is out of range: DSCP is 0 to 63 (EF is 46, AF41 is 34)")]
    BadDscp(u8),
    /// A port range whose start is above its end.
    #[error("port range {0}-{1} is empty: write the lower port first")]
    EmptyPorts(u16, u16),
    /// Ports with a protocol that has none.
    #[error("protocol {0} has no ports, so this rule never matches: remove `ports` or use protocol \"tcp\" or \"udp\"")]
    PortsWithoutPorts(u8),
    /// Every packet it would match, an earlier rule matches first.
    #[error(
        "rule {earlier} matches every packet this rule does, so this rule never matches: remove it, or put it before rule {earlier}"
    )]
    Shadowed {
        /// The earlier rule (index in the list).
        earlier: usize,
    },
}

impl Rule {
    /// Check this rule alone.
    pub fn validate(&self) -> Result<(), RuleError> {
        if let Some(&d) = self.dscp.iter().find(|&&d| d > 63) {
            return Err(RuleError::BadDscp(d));
        }
        if let Some(&(lo, hi)) = self.ports.iter().find(|(lo, hi)| lo > hi) {
            return Err(RuleError::EmptyPorts(lo, hi));
        }
        if let Some(p) = self.protocol
            && !self.ports.is_empty()
            && p != protocol::TCP
            && p != protocol::UDP
        {
            return Err(RuleError::PortsWithoutPorts(p));
        }
        Ok(())
    }

    /// Whether every packet this rule matches, `other` matches too.
    fn covered_by(&self, other: &Rule) -> bool {
        let proto = other.protocol.is_none() || other.protocol == self.protocol;
        let ports = other.ports.is_empty()
            || (!self.ports.is_empty()
                && self.ports.iter().all(|&(lo, hi)| other.ports.iter().any(|&(a, b)| a <= lo && hi <= b)));
        let prefixes = other.prefixes.is_empty()
            || (!self.prefixes.is_empty()
                && self.prefixes.iter().all(|p| other.prefixes.iter().any(|o| o.contains(p))));
        let dscp = other.dscp.is_empty() || (!self.dscp.is_empty() && self.dscp.iter().all(|d| other.dscp.contains(d)));
        proto && ports && prefixes && dscp
    }

    fn matches(&self, v: &View<'_>, dscp_mask: u64) -> bool {
        if self.protocol.is_some_and(|p| p != v.protocol) {
            return false;
        }
        if dscp_mask != 0 && dscp_mask & (1 << v.dscp) == 0 {
            return false;
        }
        if !self.ports.is_empty() {
            let Some((s, d)) = v.ports else { return false };
            if !self.ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&s) || (lo..=hi).contains(&d)) {
                return false;
            }
        }
        self.prefixes.is_empty() || self.prefixes.iter().any(|p| p.contains(&v.src) || p.contains(&v.dst))
    }
}

/// Check a list of rules: each alone, and none hidden by an earlier one.
/// Returns the index of the first bad rule with what is wrong.
pub fn validate_rules(rules: &[Rule]) -> Result<(), (usize, RuleError)> {
    for (i, r) in rules.iter().enumerate() {
        r.validate().map_err(|e| (i, e))?;
        if let Some(earlier) = rules[..i].iter().position(|e| r.covered_by(e)) {
            return Err((i, RuleError::Shadowed { earlier }));
        }
    }
    Ok(())
}

/// What classification reads of a packet.
#[derive(Clone, Copy, Debug)]
struct View<'a> {
    dscp: u8,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
    /// Source and destination ports (TCP and UDP, first fragment only).
    ports: Option<(u16, u16)>,
    /// The UDP payload (empty for anything else).
    payload: &'a [u8],
    len: usize,
    /// A fragment of a larger datagram: its identification, and whether it is the first.
    fragment: Option<(u32, bool)>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// IPv6 extension headers walked to find the transport header.
const MAX_EXTENSIONS: usize = 4;

fn view(packet: &[u8]) -> Option<View<'_>> {
    let first = *packet.first()?;
    let (dscp, mut protocol, src, dst, mut l4, mut fragment) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return None;
            }
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            let flags = u16_at(packet, 6)?;
            let (more, offset) = (flags & 0x2000 != 0, flags & 0x1fff);
            let frag = (more || offset != 0).then(|| (u32::from(u16_at(packet, 4).unwrap_or(0)), offset == 0));
            (packet[1] >> 2, packet[9], IpAddr::from(src), IpAddr::from(dst), ihl, frag)
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let tc = (packet[0] & 0x0f) << 4 | packet[1] >> 4;
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            (tc >> 2, packet[6], IpAddr::from(src), IpAddr::from(dst), 40, None)
        }
        _ => return None,
    };
    if first >> 4 == 6 {
        for _ in 0..MAX_EXTENSIONS {
            match protocol {
                // Hop-by-hop, routing, destination options: length in 8-byte units past the first 8.
                0 | 43 | 60 => {
                    let len = (usize::from(*packet.get(l4 + 1)?) + 1) * 8;
                    protocol = *packet.get(l4)?;
                    l4 += len;
                }
                44 => {
                    let off = u16_at(packet, l4 + 2)?;
                    let id = u32::from_be_bytes(packet.get(l4 + 4..l4 + 8)?.try_into().ok()?);
                    fragment = Some((id, off >> 3 == 0));
                    protocol = *packet.get(l4)?;
                    l4 += 8;
                }
                _ => break,
            }
        }
    }
    let transport = packet.get(l4..).unwrap_or(&[]);
    let later_fragment = fragment.is_some_and(|(_, first)| !first);
    let ported = !later_fragment && (protocol == protocol::TCP || protocol == protocol::UDP);
    let ports = if ported { Some((u16_at(transport, 0)?, u16_at(transport, 2)?)) } else { None };
    let payload = if ported && protocol == protocol::UDP { transport.get(8..).unwrap_or(&[]) } else { &[] };
    Some(View { dscp, protocol, src, dst, ports, payload, len: packet.len(), fragment })
}

/// Whether a UDP payload is STUN, DTLS, TURN channel data, RTP or RTCP
/// (RFC 7983's demultiplexing by first byte, each checked further).
pub fn realtime_payload(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    match b0 {
        // STUN: a 20-byte header with the magic cookie, length a multiple of 4.
        0..=3 => p.len() >= 20 && p[4..8] == [0x21, 0x12, 0xa4, 0x42] && u16_at(p, 2).is_some_and(|l| l % 4 == 0),
        // DTLS record: content type 20-63, version 1.0 (fe ff) or 1.2 (fe fd), a 13-byte header.
        20..=63 => p.len() >= 13 && p[1] == 0xfe && (p[2] == 0xff || p[2] == 0xfd),
        // TURN ChannelData: channel 0x4000-0x4fff, then the length of the data after 4 bytes.
        64..=79 => u16_at(p, 2).is_some_and(|l| {
            let data = p.len() - 4;
            usize::from(l) <= data && data - usize::from(l) < 4
        }),
        // RTP / RTCP version 2.
        128..=191 => {
            let Some(&b1) = p.get(1) else { return false };
            if (200..=207).contains(&b1) {
                // RTCP: SR, RR, SDES, BYE, APP, RTPFB, PSFB, XR; length in 32-bit words minus one.
                return p.len() >= 8 && u16_at(p, 2).is_some_and(|w| (usize::from(w) + 1) * 4 <= p.len());
            }
            // RTP: payload types 72-76 are RTCP's range (RFC 5761); the
            // fixed header and its CSRCs must fit.
            let pt = b1 & 0x7f;
            let csrc = usize::from(b0 & 0x0f);
            !(72..=76).contains(&pt) && p.len() > 12 + 4 * csrc
        }
        _ => false,
    }
}

/// A UDP flow's packets must be at most this long (IP bytes, averaged) to count as steady.
pub const STEADY_MAX_LEN: f32 = 400.0;
/// ... and at most this many bytes per second (1 Mbit/s: a video call's
/// audio, a game's state, never a transfer).
pub const STEADY_MAX_BYTES_PER_SEC: f32 = 125_000.0;
/// ... seen this many packets in a row.
pub const STEADY_AFTER: u32 = 8;
/// A flow silent this long starts over.
pub const FLOW_IDLE: Duration = Duration::from_secs(2);
/// Flow table sets and ways: 1024 flows.
const FLOW_SETS: usize = 256;
const FLOW_WAYS: usize = 4;

#[derive(Clone, Copy, Debug, Default)]
struct Flow {
    /// The flow's keyed hash (0: an empty way).
    tag: u64,
    last: Time,
    packets: u32,
    /// Averages (1/8 weight per packet): length, gap between packets and
    /// the gap's mean deviation, microseconds.
    len: f32,
    gap_us: f32,
    dev_us: f32,
}

impl Flow {
    fn steady(&self) -> bool {
        self.packets >= STEADY_AFTER
            && self.len <= STEADY_MAX_LEN
            && self.gap_us > 0.0
            && self.len / (self.gap_us / 1e6) <= STEADY_MAX_BYTES_PER_SEC
            && self.dev_us <= self.gap_us
    }

    fn fresh(&self, now: Time) -> bool {
        now.saturating_since(self.last) < FLOW_IDLE
    }
}

/// Small UDP flows and their pace, in a fixed-size table (1024 flows,
/// 4-way set associative) under a keyed hash: a new flow takes an empty
/// way, else the way of a flow that is not steady or went quiet, longest
/// quiet first; a set whose four flows are all steady and live keeps them,
/// and the new flow is simply not tracked (bulk). So traffic inside the
/// tunnel can neither grow the table nor push a live call out of it.
#[derive(Clone, Debug)]
pub struct FlowTable {
    key: [u64; 2],
    flows: Vec<Flow>,
}

impl FlowTable {
    /// An empty table whose hash is keyed with `key` (secret, random).
    pub fn new(key: [u64; 2]) -> FlowTable {
        FlowTable { key, flows: vec![Flow::default(); FLOW_SETS * FLOW_WAYS] }
    }

    fn hash(&self, v: &View<'_>) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.key[0]);
        h.write_u64(self.key[1]);
        match (v.src, v.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.write_u32(s.to_bits());
                h.write_u32(d.to_bits());
            }
            (s, d) => {
                h.write_u128(ip_bits(s));
                h.write_u128(ip_bits(d));
            }
        }
        let (sp, dp) = v.ports.unwrap_or_default();
        h.write_u32(u32::from(sp) << 16 | u32::from(dp));
        h.finish() | 1
    }

    /// The keyed hash naming one fragmented datagram.
    fn fragment_tag(&self, v: &View<'_>, id: u32) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(self.key[1]);
        h.write_u64(self.key[0]);
        h.write_u128(ip_bits(v.src));
        h.write_u128(ip_bits(v.dst));
        h.write_u8(v.protocol);
        h.write_u32(id);
        h.finish() | 1
    }

    /// Note a UDP packet of its flow at `now`; whether the flow is steady.
    fn observe(&mut self, now: Time, v: &View<'_>) -> bool {
        let tag = self.hash(v);
        let set = (tag >> 32) as usize % FLOW_SETS * FLOW_WAYS;
        let ways = &mut self.flows[set..set + FLOW_WAYS];
        let len = v.len as f32;
        if let Some(f) = ways.iter_mut().find(|f| f.tag == tag) {
            if !f.fresh(now) {
                *f = Flow { tag, last: now, packets: 1, len, ..Flow::default() };
                return false;
            }
            let gap = now.saturating_since(f.last).as_secs_f32() * 1e6;
            if f.packets == 1 {
                f.gap_us = gap;
            } else {
                f.dev_us += ((gap - f.gap_us).abs() - f.dev_us) / 8.0;
                f.gap_us += (gap - f.gap_us) / 8.0;
            }
            f.len += (len - f.len) / 8.0;
            f.packets = f.packets.saturating_add(1);
            f.last = now;
            return f.steady();
        }
        let victim = ways
            .iter_mut()
            .filter(|f| f.tag == 0 || !f.steady() || !f.fresh(now))
            .min_by_key(|f| if f.tag == 0 { Time::ZERO } else { f.last });
        if let Some(f) = victim {
            *f = Flow { tag, last: now, packets: 1, len, ..Flow::default() };
        }
        false
    }

    /// Flows tracked now (not quiet).
    pub fn live(&self, now: Time) -> usize {
        self.flows.iter().filter(|f| f.tag != 0 && f.fresh(now)).count()
    }
}

fn ip_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

/// Fragmented datagrams remembered, so the later fragments (which carry
/// no ports or payload header) take the class of the first.
const FRAGMENTS: usize = 256;

/// Decides each packet's class: the rules, then the automatic tests.
#[derive(Clone, Debug)]
pub struct Classifier {
    rules: Vec<(Rule, u64)>,
    flows: FlowTable,
    /// (keyed hash of source, destination, protocol and identification; class of the first fragment).
    fragments: Vec<(u64, Class)>,
}

impl Classifier {
    /// A classifier with these (validated) rules and a flow table keyed with `key`.
    pub fn new(rules: &[Rule], key: [u64; 2]) -> Classifier {
        let rules = rules.iter().map(|r| (r.clone(), dscp_mask(&r.dscp))).collect();
        Classifier { rules, flows: FlowTable::new(key), fragments: vec![(0, Class::Bulk); FRAGMENTS] }
    }

    /// The rules in effect, in order.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().map(|(r, _)| r)
    }

    /// The flow table.
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// The class of an inner IP packet seen at `now` (anything that is not
    /// an IP packet we can read is bulk). A fragment after the first takes
    /// the first one's class (bulk if it was not seen).
    pub fn classify(&mut self, now: Time, packet: &[u8]) -> Class {
        let Some(v) = view(packet) else { return Class::Bulk };
        let Some((id, first)) = v.fragment else { return self.decide(now, &v) };
        let tag = self.flows.fragment_tag(&v, id);
        let slot = (tag >> 32) as usize % FRAGMENTS;
        if !first {
            let (t, class) = self.fragments[slot];
            return if t == tag { class } else { Class::Bulk };
        }
        let class = self.decide(now, &v);
        self.fragments[slot] = (tag, class);
        class
    }

    fn decide(&mut self, now: Time, v: &View<'_>) -> Class {
        let v = *v;
        if let Some((r, _)) = self.rules.iter().find(|(r, m)| r.matches(&v, *m)) {
            return r.class;
        }
        if REALTIME_DSCP_MASK & (1 << v.dscp) != 0 {
            return Class::Realtime;
        }
        match v.protocol {
            protocol::ICMP | protocol::ICMPV6 => Class::Realtime,
            protocol::UDP => {
                let Some((s, d)) = v.ports else { return Class::Bulk };
                if s == 53 || d == 53 || realtime_payload(v.payload) || self.flows.observe(now, &v) {
                    Class::Realtime
                } else {
                    Class::Bulk
                }
            }
            _ => Class::Bulk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::traffic::udp_packet_marked;

    fn ms(n: u64) -> Time {
        Time::from_nanos(n * 1_000_000)
    }

    fn udp(payload: &[u8], sport: u16, dport: u16, dscp: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload.len()];
        p[0] = 0x45;
        p[1] = dscp << 2;
        let len = p.len() as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[9] = protocol::UDP;
        p[12..16].copy_from_slice(&[10, 9, 0, 1]);
        p[16..20].copy_from_slice(&[10, 9, 0, 2]);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[28..].copy_from_slice(payload);
        p
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut p = udp(&[0; 32], sport, dport, 0);
        p[9] = protocol::TCP;
        p
    }

    fn plain() -> Classifier {
        Classifier::new(&[], [1, 2])
    }

    #[test]
    fn dscp_icmp_dns_and_tcp() {
        let mut c = plain();
        for d in REALTIME_DSCP {
            assert_eq!(c.classify(ms(0), &udp(&[9; 900], 4000, 4001, d)), Class::Realtime, "dscp {d}");
        }
        assert_eq!(c.classify(ms(0), &udp(&[9; 900], 4000, 4001, 0)), Class::Bulk);
        assert_eq!(c.classify(ms(0), &udp(&[9; 100], 4000, 53, 0)), Class::Realtime);
        assert_eq!(c.classify(ms(0), &tcp(5201, 40000)), Class::Bulk);
        let mut icmp = tcp(0, 0);
        icmp[9] = protocol::ICMP;
        assert_eq!(c.classify(ms(0), &icmp), Class::Realtime);
        // IPv6 with traffic class EF, and ICMPv6.
        let mut v6 = udp_packet_marked("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap(), 1, 1200, 0);
        assert_eq!(c.classify(ms(0), &v6), Class::Bulk);
        v6[0] = 0x60 | (46 << 2) >> 4;
        v6[1] = ((46u8 << 2) & 0x0f) << 4;
        assert_eq!(c.classify(ms(0), &v6), Class::Realtime);
        v6[0] = 0x60;
        v6[1] = 0;
        v6[6] = protocol::ICMPV6;
        assert_eq!(c.classify(ms(0), &v6), Class::Realtime);
    }

    #[test]
    fn payloads_by_first_byte() {
        let mut stun = vec![0u8; 20];
        stun[1] = 1;
        stun[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        assert!(realtime_payload(&stun));
        stun[5] = 0;
        assert!(!realtime_payload(&stun), "no magic cookie");
        let mut dtls = vec![22u8, 0xfe, 0xfd];
        dtls.resize(40, 0);
        assert!(realtime_payload(&dtls));
        let mut turn = vec![0x40, 1, 0, 8];
        turn.resize(12, 7);
        assert!(realtime_payload(&turn));
        turn.push(0);
        turn.resize(20, 0);
        assert!(!realtime_payload(&turn), "length does not fit: a QUIC short header, say");
        let mut rtp = vec![0x80, 111];
        rtp.resize(172, 1);
        assert!(realtime_payload(&rtp));
        let mut rtcp = vec![0x81, 200, 0, 6];
        rtcp.resize(28, 0);
        assert!(realtime_payload(&rtcp));
        rtcp.truncate(20);
        assert!(!realtime_payload(&rtcp), "RTCP length past the end");
        assert!(!realtime_payload(&[0x80, 72, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "RTCP's payload type range");
        assert!(!realtime_payload(&[0xc3, 0, 0, 0, 1]), "QUIC long header");
        assert!(!realtime_payload(&[]));
        let mut c = plain();
        assert_eq!(c.classify(ms(0), &udp(&rtp, 40000, 40002, 0)), Class::Realtime);
    }

    #[test]
    fn a_steady_small_udp_flow_becomes_realtime_and_a_fast_one_does_not() {
        let mut c = plain();
        let voice = udp(&[7; 160], 40000, 40002, 0);
        let classes: Vec<Class> = (0..20).map(|i| c.classify(ms(20 * i), &voice)).collect();
        assert_eq!(classes[0], Class::Bulk, "nothing known yet");
        assert_eq!(classes[19], Class::Realtime);
        // The same packets 5000 a second (a transfer of small packets): bulk.
        let fast = udp(&[7; 160], 40001, 40002, 0);
        let t0 = 1000;
        let classes: Vec<Class> =
            (0..200).map(|i| c.classify(Time::from_nanos(ms(t0).as_nanos() + i * 200_000), &fast)).collect();
        assert!(classes.iter().all(|&x| x == Class::Bulk));
        // Large packets at a steady pace: bulk.
        let big = udp(&[7; 1200], 40003, 40002, 0);
        assert!((0..50).all(|i| c.classify(ms(2000 + 20 * i), &big) == Class::Bulk));
        // A steady flow that goes quiet starts over.
        assert_eq!(c.classify(ms(20 * 19 + 10_000), &voice), Class::Bulk);
    }

    #[test]
    fn a_flood_of_new_flows_does_not_push_out_a_live_call() {
        let mut c = plain();
        // Calls on many ports, all steady.
        let calls: Vec<Vec<u8>> = (0..64).map(|i| udp(&[7; 160], 30000 + i, 40002, 0)).collect();
        for t in 0..20 {
            for call in &calls {
                c.classify(ms(20 * t), call);
            }
        }
        // 100 000 one-packet flows inside one packet time.
        for i in 0..100_000u32 {
            let p = udp(&[7; 160], (i % 60000) as u16 + 1024, (i / 60000) as u16 + 1000, 0);
            assert_eq!(c.classify(ms(400), &p), Class::Bulk);
        }
        assert!(c.flows().live(ms(400)) <= FLOW_SETS * FLOW_WAYS);
        for call in &calls {
            assert_eq!(c.classify(ms(420), call), Class::Realtime);
        }
    }

    #[test]
    fn rules_come_first_and_are_checked() {
        let rule = |class, protocol, ports: &[(u16, u16)], prefixes: &[&str], dscp: &[u8]| Rule {
            class,
            protocol,
            ports: ports.to_vec(),
            prefixes: prefixes.iter().map(|p| p.parse().unwrap()).collect(),
            dscp: dscp.to_vec(),
        };
        let rules = [
            rule(Class::Bulk, Some(protocol::UDP), &[(5000, 5010)], &[], &[]),
            rule(Class::Realtime, Some(protocol::TCP), &[(22, 22)], &[], &[]),
            rule(Class::Realtime, None, &[], &["10.9.0.0/24"], &[8]),
        ];
        assert_eq!(validate_rules(&rules), Ok(()));
        let mut c = Classifier::new(&rules, [3, 4]);
        assert_eq!(c.classify(ms(0), &udp(&[0x80; 200], 5005, 9, 46)), Class::Bulk, "a rule beats DSCP and RTP");
        assert_eq!(c.classify(ms(0), &tcp(40000, 22)), Class::Realtime);
        assert_eq!(c.classify(ms(0), &udp(&[1; 900], 1, 2, 8)), Class::Realtime);
        assert_eq!(c.classify(ms(0), &udp(&[1; 900], 1, 2, 9)), Class::Bulk);
        // Never-matching and bad rules.
        let shadowed = [rules[0].clone(), rule(Class::Realtime, Some(protocol::UDP), &[(5001, 5002)], &[], &[])];
        assert_eq!(validate_rules(&shadowed), Err((1, RuleError::Shadowed { earlier: 0 })));
        let icmp_ports = [rule(Class::Bulk, Some(protocol::ICMP), &[(1, 2)], &[], &[])];
        assert_eq!(validate_rules(&icmp_ports), Err((0, RuleError::PortsWithoutPorts(1))));
        assert_eq!(validate_rules(&[rule(Class::Bulk, None, &[], &[], &[64])]), Err((0, RuleError::BadDscp(64))));
        assert_eq!(
            validate_rules(&[rule(Class::Bulk, None, &[(9, 2)], &[], &[])]),
            Err((0, RuleError::EmptyPorts(9, 2)))
        );
    }

    #[test]
    fn later_fragments_take_the_first_fragments_class() {
        let mut c = plain();
        let mut rtp = vec![0x80, 96];
        rtp.resize(1400, 1);
        let mut first = udp(&rtp[..1000], 40000, 5006, 0);
        first[4..6].copy_from_slice(&77u16.to_be_bytes());
        first[6] = 0x20; // more fragments
        let mut later = udp(&[3; 400], 0, 0, 0);
        later[4..6].copy_from_slice(&77u16.to_be_bytes());
        later[6..8].copy_from_slice(&(1008u16 / 8).to_be_bytes());
        assert_eq!(c.classify(ms(0), &first), Class::Realtime);
        assert_eq!(c.classify(ms(0), &later), Class::Realtime);
        // Another datagram's later fragment, first never seen: bulk.
        later[5] = 78;
        assert_eq!(c.classify(ms(0), &later), Class::Bulk);
    }

    #[test]
    fn garbage_is_bulk_and_never_panics() {
        let mut c = plain();
        for len in 0..80 {
            for fill in [0u8, 0x45, 0x4f, 0x60, 0xff, 0x11] {
                let mut p = vec![fill; len];
                if let Some(b) = p.first_mut() {
                    *b = if fill == 0x60 { 0x60 } else { 0x45 | (fill & 0x0f) };
                }
                c.classify(ms(0), &p);
            }
        }
        // IPv6 with a chain of extension headers that runs off the end.
        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[6] = 0;
        v6[40] = 0;
        v6[41] = 200;
        assert_eq!(c.classify(ms(0), &v6), Class::Bulk);
    }
}
