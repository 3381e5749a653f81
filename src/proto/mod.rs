//! The pure core of mpvr: wire format, dedup / anti-replay window, sealing,
//! handshakes and sessions, the link monitor (probes, estimators, path
//! states), the mesh (route advertisements), routing, duplication policy and
//! the [`Node`] state machine.
//!
//! No I/O, no clock reads, no unsafe code: every entry point takes `now`, and
//! outputs are returned or written into caller buffers. The Linux shell and the
//! simulator ([`crate::sim`]) drive the same [`Node`].
#![forbid(unsafe_code)]

pub mod crypto;
pub mod handshake;
pub mod ids;
pub mod ip;
pub mod mesh;
pub mod monitor;
pub mod node;
pub mod policy;
pub mod route;
pub mod session;
pub mod stats;
pub mod time;
pub mod transmit;
pub mod window;
pub mod wire;

pub use crypto::SessionKeys;
pub use handshake::Identity;
pub use ids::{HostId, LinkId, PathAddr, Seq};
pub use node::{ConfigError, Endpoint, Event, NeighbourConfig, Node, NodeConfig, Received, Sent};
pub use policy::Policy;
pub use route::NextHop;
pub use stats::DropReason;
pub use time::Time;
pub use transmit::{Transmit, Transmits};
