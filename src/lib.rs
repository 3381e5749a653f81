//! mpvr: a multipath virtual router.
//!
//! - [`proto`]: the pure, deterministic core (see DESIGN.md, "Shape of the code"):
//!   wire format, window, Noise sessions, routes, policy, the [`proto::Node`].
//! - [`sim`]: a deterministic network simulator that drives the real core.
//! - [`daemon`]: `mpvr run`, the thin Linux shell that drives the core.
//! - [`sys`]: netlink, TUN, per-link sockets, AF_PACKET, capabilities.
//! - [`status`]: the status snapshot, its table, live view and Prometheus text.
//! - [`config`], [`keys`]: the config file and key files, checked at the edge.
//! - [`linkemu`]: the link emulator of the namespace testbed (`mpvr-linkemu`).
//! - [`units`]: durations as people write them.
#![warn(missing_docs)]

pub mod config;
pub mod daemon;
pub mod keys;
pub mod linkemu;
pub mod proto;
pub mod sim;
pub mod status;
pub mod sys;
pub mod units;
