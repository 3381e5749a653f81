//! mpvr: a multipath virtual router.
//!
//! - [`proto`]: the pure, deterministic core (see DESIGN.md, "Shape of the code").
//! - [`sim`]: a deterministic network simulator that drives the real core.
#![warn(missing_docs)]

pub mod config;
pub mod daemon;
pub mod keys;
pub mod linkemu;
pub mod proto;
pub mod sim;
pub mod sys;
pub mod units;
