//! The bodies of probes and probe replies (sealed like data).

use super::PassiveCounts;

/// A probe's body (sealed like data): its id on the sender's path, the
/// sender's path index and send time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeBody {
    /// Probe id on its path.
    pub id: u32,
    /// The sender's index of the path (echoed back).
    pub path: u8,
    /// Sender's clock at sending, in nanoseconds.
    pub sent: u64,
    /// The download rate of the sender's link this probe left on, kbit/s
    /// (0: not set): the receiver shapes what it sends on this path to it.
    pub down_kbps: u32,
}

impl ProbeBody {
    /// Encoded length.
    pub const LEN: usize = 17;

    /// Encode into `out[..LEN]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.id.to_be_bytes());
        out[4] = self.path;
        out[5..13].copy_from_slice(&self.sent.to_be_bytes());
        out[13..17].copy_from_slice(&self.down_kbps.to_be_bytes());
    }

    /// Decode; `None` if it is not exactly [`ProbeBody::LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<ProbeBody> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(ProbeBody {
            id: u32::from_be_bytes(b[..4].try_into().ok()?),
            path: b[4],
            sent: u64::from_be_bytes(b[5..13].try_into().ok()?),
            down_kbps: u32::from_be_bytes(b[13..17].try_into().ok()?),
        })
    }
}

/// A reply's body: the probe echoed, the replier's clock when it received
/// (and answered) it, and the replier's passive counts for the path the
/// probe came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyBody {
    /// The probe answered.
    pub probe: ProbeBody,
    /// Replier's clock at receipt, in nanoseconds.
    pub received: u64,
    /// The replier's counts of data that came to it on this path.
    pub counts: PassiveCounts,
}

impl ReplyBody {
    /// Encoded length.
    pub const LEN: usize = ProbeBody::LEN + 8 + PassiveCounts::LEN;

    /// Encode into `out[..LEN]`.
    pub fn encode(&self, out: &mut [u8]) {
        const P: usize = ProbeBody::LEN;
        self.probe.encode(out);
        out[P..P + 8].copy_from_slice(&self.received.to_be_bytes());
        self.counts.encode(&mut out[P + 8..Self::LEN]);
    }

    /// Decode; `None` if it is not exactly [`ReplyBody::LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<ReplyBody> {
        if b.len() != Self::LEN {
            return None;
        }
        const P: usize = ProbeBody::LEN;
        Some(ReplyBody {
            probe: ProbeBody::decode(&b[..P])?,
            received: u64::from_be_bytes(b[P..P + 8].try_into().ok()?),
            counts: PassiveCounts::decode(&b[P + 8..]),
        })
    }
}

/// A path notice's body: the receiver's slot of the path (as its probes
/// named it), how long no data had arrived on it here, and the last data
/// packet it did deliver (key phase, sequence number): the peer knows
/// whether it sent anything after that one, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoticeBody {
    /// The receiver's path slot (from its probes' path byte).
    pub path: u8,
    /// Microseconds without data on the path at the sender of the notice.
    pub silent_us: u32,
    /// Key phase of the last data packet the path delivered.
    pub phase: bool,
    /// Its sequence number.
    pub last: u64,
    /// The sender of the notice saw the path's siblings deliver packets it
    /// missed (it is suspect there): the peer was sending, the path failed.
    pub confirmed: bool,
}

impl NoticeBody {
    /// Encoded length.
    pub const LEN: usize = 14;

    /// Encode into `out[..LEN]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[0] = self.path;
        out[1..5].copy_from_slice(&self.silent_us.to_be_bytes());
        out[5] = u8::from(self.phase) | u8::from(self.confirmed) << 1;
        out[6..14].copy_from_slice(&self.last.to_be_bytes());
    }

    /// Decode; `None` if it is not exactly [`NoticeBody::LEN`] bytes or
    /// its flags byte has undefined bits.
    pub fn decode(b: &[u8]) -> Option<NoticeBody> {
        if b.len() != Self::LEN || b[5] > 3 {
            return None;
        }
        Some(NoticeBody {
            path: b[0],
            silent_us: u32::from_be_bytes(b[1..5].try_into().ok()?),
            phase: b[5] & 1 != 0,
            confirmed: b[5] & 2 != 0,
            last: u64::from_be_bytes(b[6..14].try_into().ok()?),
        })
    }
}

/// A path MTU probe's body: its id (unique in the bundle, like a
/// probe's) and the datagram size it tests, then padding (zeros) up to that
/// size. A reply's body is the same 6 bytes without padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MtuProbeBody {
    /// Probe id.
    pub id: u32,
    /// The whole datagram's length: a probe that arrives shorter was cut.
    pub size: u16,
}

impl MtuProbeBody {
    /// Encoded length, before the padding.
    pub const LEN: usize = 6;

    /// Encode into `out[..LEN]`.
    pub fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.id.to_be_bytes());
        out[4..6].copy_from_slice(&self.size.to_be_bytes());
    }

    /// Decode a probe (`padded`: any length from [`MtuProbeBody::LEN`], padding
    /// ignored) or a reply (exactly `LEN` bytes).
    pub fn decode(b: &[u8], padded: bool) -> Option<MtuProbeBody> {
        if b.len() < Self::LEN || (!padded && b.len() != Self::LEN) {
            return None;
        }
        Some(MtuProbeBody {
            id: u32::from_be_bytes(b[..4].try_into().ok()?),
            size: u16::from_be_bytes(b[4..6].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_reject_bad_lengths() {
        let p = ProbeBody { id: 7, path: 2, sent: 123_456_789, down_kbps: 50_000 };
        let mut b = [0u8; ReplyBody::LEN];
        p.encode(&mut b);
        assert_eq!(ProbeBody::decode(&b[..ProbeBody::LEN]), Some(p));
        assert_eq!(ProbeBody::decode(&b[..ProbeBody::LEN - 1]), None);
        let r = ReplyBody {
            probe: p,
            received: 99,
            counts: PassiveCounts { delivered: 1, missing: 2, first: 3, rescues: 4 },
        };
        r.encode(&mut b);
        assert_eq!(ReplyBody::decode(&b), Some(r));
        assert_eq!(ReplyBody::decode(&b[1..]), None);
        let n = NoticeBody { path: 3, silent_us: 86_000, phase: true, last: 1 << 40, confirmed: true };
        n.encode(&mut b);
        assert_eq!(NoticeBody::decode(&b[..NoticeBody::LEN]), Some(n));
        assert_eq!(NoticeBody::decode(&b[..NoticeBody::LEN + 1]), None);
        let m = MtuProbeBody { id: 9, size: 1472 };
        m.encode(&mut b);
        assert_eq!(MtuProbeBody::decode(&b[..MtuProbeBody::LEN], false), Some(m));
        assert_eq!(MtuProbeBody::decode(&b[..MtuProbeBody::LEN + 3], true), Some(m));
        assert_eq!(MtuProbeBody::decode(&b[..MtuProbeBody::LEN + 3], false), None);
        assert_eq!(MtuProbeBody::decode(&b[..MtuProbeBody::LEN - 1], true), None);
    }
}
