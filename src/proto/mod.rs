//! The pure core of mpvr: wire format, dedup / anti-replay window, sealing,
//! handshakes and sessions, the link monitor (probes, estimators, path
//! states), the mesh (route advertisements), routing, duplication policy and
//! the [`Node`] state machine that dispatches over them.
//!
//! No I/O, no clock reads, no unsafe code: every entry point takes `now`, and
//! outputs are returned or written into caller buffers. The Linux shell and the
//! simulator ([`crate::sim`]) drive the same [`Node`].
//!
//! Words (DESIGN.md's, one name per concept in code, config, status and docs):
//! - host: one mpvr daemon ([`HostId`]); a peer is a remote host in this
//!   host's config (`[[peer]]`), and a neighbour is a peer reached directly,
//!   with a session of its own (events and status call it `peer`);
//! - link: a local NIC ([`LinkId`]); endpoint: a peer's UDP address
//!   ([`EndpointSpec`] when pinned to a link);
//! - path: one (link, endpoint) pair ([`path::Path`], named by a stable
//!   [`path::PathId`]);
//! - bundle: all paths and sessions toward one neighbour ([`bundle::Bundle`]);
//! - route: prefix -> next hop ([`route`], composed by [`router::Router`]
//!   from the configured routes and the [`mesh`]);
//! - policy: which paths a packet is copied onto ([`Policy`]);
//! - class: what kind of traffic a packet is ([`Class`], decided by
//!   [`class::Classifier`]); each class has its policy ([`Policies`]);
//! - role: a link's cost tier ([`Role`]), and its rate, which a
//!   [`shaper::Shaper`] keeps to, real-time first.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod class;
pub mod cookie;
pub mod crypto;
pub mod fit;
pub mod handshake;
pub mod ids;
pub mod ip;
pub mod link;
pub mod mesh;
pub mod monitor;
pub mod node;
pub mod opening;
pub mod path;
pub mod pmtu;
pub mod policy;
pub mod route;
pub mod router;
pub mod session;
pub mod shaper;
pub mod stats;
pub mod time;
pub mod transmit;
pub mod window;
pub mod wire;

pub use bundle::{Bundle, BundleConfig, EndpointSpec, Policies, SessionInfo};
pub use class::{Class, Rule};
pub use crypto::{Cipher, SessionKeys};
pub use handshake::Identity;
pub use ids::{HostId, LinkId, PathAddr, Seq};
pub use link::{LinkSettings, Role};
pub use node::{AdvertRefusal, Event, Node, NodeConfig, OriginKey, Received, Sent, SetupError, Tunables};
pub use opening::{Ahead, Openings};
pub use path::{Path, PathId, PathSet};
pub use policy::Policy;
pub use route::NextHop;
pub use stats::DropReason;
pub use time::Time;
pub use transmit::{Sealed, Transmit, Transmits};
