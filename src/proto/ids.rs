//! Newtypes for the identifiers in DESIGN.md's vocabulary.

use std::fmt;
use std::net::SocketAddr;

/// A host: one mpvr daemon. Carried in every datagram header (sender and receiver).
///
/// Zero is reserved (never a valid host) so an all-zero header is always rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostId(u32);

impl HostId {
    /// `None` for the reserved id 0.
    pub const fn new(id: u32) -> Option<HostId> {
        if id == 0 { None } else { Some(HostId(id)) }
    }

    /// The id as carried on the wire.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {}", self.0)
    }
}

/// A local link (physical NIC) as numbered by the shell, for example its ifindex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u32);

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {}", self.0)
    }
}

/// A per-session packet sequence number. It is also the AEAD nonce, so it never
/// repeats under one key; 0 is never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

/// One path: a local link and a remote endpoint. The unit a copy is sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathAddr {
    /// The local link the copy leaves from.
    pub link: LinkId,
    /// The remote host's UDP endpoint.
    pub remote: SocketAddr,
}

impl fmt::Display for PathAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.link, self.remote)
    }
}
