//! Counters. Drops on the data path are counted by reason (and, for
//! datagrams, per link); they are never logged per packet.

use std::fmt;

macro_rules! drop_reasons {
    ($($(#[$doc:meta])* $name:ident => $label:literal,)*) => {
        /// Why a packet was not delivered or sent. Every input ends in a
        /// delivery, a transmission, or exactly one of these.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum DropReason {
            $($(#[$doc])* $name,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// Number of reasons.
            pub const COUNT: usize = DropReason::ALL.len();

            /// Stable snake_case name for status output and metrics.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$name => $label,)* }
            }
        }
    };
}

drop_reasons! {
    /// Datagram shorter than its header (and tag).
    Truncated => "truncated",
    /// Datagram of another protocol version.
    BadVersion => "bad_version",
    /// Unknown message type.
    UnknownType => "unknown_type",
    /// Undefined flag bits set.
    BadFlags => "bad_flags",
    /// Sender or receiver host id 0.
    ZeroHostId => "zero_host_id",
    /// Addressed to another host.
    WrongReceiver => "wrong_receiver",
    /// From a host that is not a neighbour.
    UnknownSender => "unknown_sender",
    /// Arrived on a link the node does not know (removed meanwhile).
    UnknownLink => "unknown_link",
    /// AEAD open failed: forged, corrupted or wrong key.
    AuthFailed => "auth_failed",
    /// A later copy (or a replay) of a packet already accepted.
    Duplicate => "duplicate",
    /// Behind the dedup / anti-replay window.
    TooOld => "too_old",
    /// Not an IPv4/IPv6 packet (from the TUN, or inside an authenticated datagram).
    MalformedIp => "malformed_ip",
    /// TUN packet larger than the configured maximum.
    TooBig => "too_big",
    /// No route for the destination.
    NoRoute => "no_route",
    /// TUN packet addressed to this host itself.
    LocalDestination => "local_destination",
    /// Route found but no usable path toward the next hop.
    NoPath => "no_path",
    /// An authenticated data packet whose inner source address is not
    /// routed back to the neighbour it came from (a neighbour sending as
    /// another host).
    BadSource => "bad_source",
    /// Larger than any path toward its next hop carries (measured path
    /// MTU), and not allowed to be fragmented: answered with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big".
    PathMtu => "path_mtu",
    /// Relay: the hop limit ran out.
    HopLimit => "hop_limit",
    /// Relay: the route points back to the host the packet came from.
    Bounce => "bounce",
    /// The session's sequence numbers are used up.
    SeqExhausted => "seq_exhausted",
    /// No session to open (or seal) it with: unknown key phase, expired
    /// session, or the queue of packets waiting for a handshake is full.
    NoSession => "no_session",
    /// Too many handshake initiations from this source address.
    RateLimited => "rate_limited",
    /// A handshake message that does not authenticate.
    HandshakeInvalid => "handshake_invalid",
    /// An initiation with another static key than the one configured for its sender.
    HandshakeWrongKey => "handshake_wrong_key",
    /// An authenticated probe or probe reply of the wrong size.
    BadProbe => "bad_probe",
    /// An authenticated path notice of the wrong size.
    BadNotice => "bad_notice",
    /// An authenticated route advertisement that does not decode.
    BadAdvert => "bad_advert",
    /// An initiation no newer than the last one accepted: a replay, or a
    /// later copy of an initiation sent on several paths.
    HandshakeReplay => "handshake_replay",
    /// An initiation while this host's own is in progress and wins.
    HandshakeCrossed => "handshake_crossed",
    /// A response to no handshake in progress (later copies of a used one).
    HandshakeUnexpected => "handshake_unexpected",
    /// A handshake message without a valid mac1 (its sender does not know
    /// this host's public key): refused for the cost of one HMAC.
    HandshakeMac => "handshake_mac",
    /// An initiation while this host is under load, without a valid mac2:
    /// answered with a cookie reply instead of public-key work.
    UnderLoad => "under_load",
    /// A cookie reply that does not open (forged, or for no initiation of ours).
    BadCookie => "bad_cookie",
    /// A route advertisement without its origin's valid signature, or
    /// signed with another key than the one bound to its origin.
    AdvertForged => "advert_forged",
    /// A route advertisement claiming a prefix the config gives to another host.
    AdvertUnowned => "advert_unowned",
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A counter per drop reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::COUNT]);

impl Default for DropCounts {
    fn default() -> DropCounts {
        DropCounts([0; DropReason::COUNT])
    }
}

impl DropCounts {
    /// Count one drop.
    pub fn add(&mut self, r: DropReason) {
        self.0[r as usize] += 1;
    }

    /// Drops for one reason.
    pub fn get(&self, r: DropReason) -> u64 {
        self.0[r as usize]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Nonzero counters with their reasons.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r))).filter(|(_, n)| *n > 0)
    }
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Packets (or datagrams).
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl Count {
    /// Add one packet of `len` bytes.
    pub fn add(&mut self, len: usize) {
        self.packets += 1;
        self.bytes += len as u64;
    }
}

/// Node-wide counters.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    /// Packets read from the TUN.
    pub tun_in: Count,
    /// Packets delivered to the TUN (first copies only).
    pub tun_out: Count,
    /// Packets sealed for a neighbour (each counted once, not per copy).
    pub sealed: Count,
    /// Copies handed to the shell to send (datagrams x paths).
    pub copies_out: Count,
    /// Datagrams received from links.
    pub datagrams_in: Count,
    /// Authenticated packets relayed on toward another neighbour.
    pub forwarded: Count,
    /// Keepalives sent (each once, not per copy).
    pub keepalives_out: u64,
    /// Keepalives received.
    pub keepalives_in: u64,
    /// Handshake initiations sent (each once, not per copy).
    pub handshakes_out: u64,
    /// Handshake initiations accepted.
    pub handshakes_in: u64,
    /// Diffie-Hellman work done for handshake messages from others
    /// (initiations answered or refused after it, responses tried): what
    /// mac1 and cookies bound.
    pub handshake_work: u64,
    /// Cookie replies sent (this host was under load).
    pub cookies_out: u64,
    /// Route advertisements sealed for a neighbour (each once, whatever
    /// the copies; bytes on the wire per copy).
    pub adverts_out: Count,
    /// Route advertisements received (authenticated, decoded).
    pub adverts_in: u64,
    /// Data packets sealed, by class ([`crate::proto::class::Class::index`]): read from the TUN or relayed.
    pub class_out: [Count; 2],
    /// Data packets delivered to the TUN, by class.
    pub class_in: [Count; 2],
    /// ICMP "too big" answers written (toward the TUN or a relayed packet's sender).
    pub icmp_too_big: u64,
    /// IPv4 packets fragmented to fit the paths (DF clear), and the fragments made.
    pub fragmented: u64,
    /// Fragments made of them.
    pub fragments: u64,
    /// TCP SYNs whose MSS option was lowered to what the paths carry.
    pub mss_clamped: u64,
    /// Every drop, by reason.
    pub drops: DropCounts,
}

/// Per local link counters.
#[derive(Clone, Debug, Default)]
pub struct LinkStats {
    /// Datagrams received on this link.
    pub rx: Count,
    /// Copies sent on this link (or held by its shaper, which may drop them).
    pub tx: Count,
    /// Data copies sent on this link, by class.
    pub class_tx: [Count; 2],
    /// Datagrams received on this link and dropped, by reason.
    pub drops: DropCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        let mut c = DropCounts::default();
        c.add(DropReason::Bounce);
        c.add(DropReason::Bounce);
        assert_eq!(c.nonzero().collect::<Vec<_>>(), vec![(DropReason::Bounce, 2)]);
    }
}
