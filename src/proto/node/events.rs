//! What the node reports to the shell: [`Event`]s to log, and the recent
//! path state changes status shows.

use std::collections::VecDeque;

use crate::proto::handshake::HandshakeError;
use crate::proto::ids::{HostId, PathAddr};
use crate::proto::monitor::Change;
use crate::proto::time::Time;

/// Most events kept for [`crate::proto::Node::poll_event`]; older ones are dropped.
const MAX_EVENTS: usize = 256;
/// Path state changes kept for [`crate::proto::Node::recent_changes`].
pub const MAX_RECENT_CHANGES: usize = 64;

/// Something the shell should log (rate-limited) or show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A handshake completed: a new session with `peer`.
    SessionEstablished {
        /// The peer.
        peer: HostId,
        /// This host started it.
        initiator: bool,
    },
    /// An initiation claiming to be from `peer` was refused.
    HandshakeRejected {
        /// The host id it claimed.
        peer: HostId,
        /// Why.
        reason: HandshakeError,
    },
    /// No answer to initiations for [`crate::proto::session::REKEY_ATTEMPT_TIME`]: waiting packets dropped.
    HandshakeTimedOut {
        /// The peer.
        peer: HostId,
    },
    /// A path changed state.
    PathChanged(PathChange),
    /// A path's MTU was measured, or changed.
    PathMtu {
        /// The peer.
        peer: HostId,
        /// The path.
        path: PathAddr,
        /// The largest datagram it carries.
        datagram: u16,
        /// The outer MTU that is (the datagram with the IP and transport headers).
        mtu: u16,
    },
    /// A route advertisement was refused: it changed nothing.
    AdvertRefused {
        /// The origin it named.
        origin: HostId,
        /// The neighbour it came from.
        from: HostId,
        /// Why.
        why: AdvertRefusal,
    },
    /// An origin's advert key was bound: by its own session (`first_use`
    /// false), or on first use through neighbour `via`.
    OriginKeyBound {
        /// The origin.
        origin: HostId,
        /// The neighbour its advert came from.
        via: HostId,
        /// Pinned on first use (not from the origin itself).
        first_use: bool,
        /// It replaced another key (a first-use pin the origin's own session contradicted).
        replaced: bool,
    },
    /// A datagram of another wire version came from `from` (said at most
    /// every 10 s): the two hosts run incompatible mpvr versions.
    VersionMismatch {
        /// Where it came from.
        from: std::net::SocketAddr,
        /// The version it carried.
        version: u8,
    },
    /// The tunnel MTU ([`crate::proto::Node::tunnel_mtu`]) changed.
    TunnelMtu {
        /// The largest inner packet now.
        mtu: usize,
    },
    /// The next hop toward a host changed (`None`: no mesh route any more).
    RouteChanged {
        /// The destination host.
        dest: HostId,
        /// Its next hop now.
        next: Option<HostId>,
        /// Cost through it, microseconds.
        cost: u64,
    },
}

/// A path's state change, kept by the node for status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathChange {
    /// When.
    pub at: Time,
    /// The peer.
    pub peer: HostId,
    /// The path.
    pub path: PathAddr,
    /// From, to and why.
    pub change: Change,
}

/// Events not yet taken, and the recent path changes.
#[derive(Debug, Default)]
pub(super) struct EventLog {
    events: VecDeque<Event>,
    recent: VecDeque<PathChange>,
}

impl EventLog {
    pub(super) fn push(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    pub(super) fn path_changed(&mut self, pc: PathChange) {
        if self.recent.len() >= MAX_RECENT_CHANGES {
            self.recent.pop_front();
        }
        self.recent.push_back(pc);
        self.push(Event::PathChanged(pc));
    }

    pub(super) fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub(super) fn recent(&self) -> impl Iterator<Item = &PathChange> {
        self.recent.iter()
    }
}

/// Why a route advertisement was refused ([`Event::AdvertRefused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvertRefusal {
    /// Its signature does not verify.
    Signature,
    /// It is signed with another key than the one bound to its origin (or
    /// names a neighbour whose key only the neighbour itself may bring).
    Key,
    /// It claims this prefix, which the config gives to another host.
    Prefix(ipnet::IpNet),
}

impl std::fmt::Display for AdvertRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdvertRefusal::Signature => f.write_str("its signature does not verify"),
            AdvertRefusal::Key => f.write_str("it is signed with another key than the origin's"),
            AdvertRefusal::Prefix(p) => write!(f, "it claims {p}, which the config gives to another host"),
        }
    }
}
