//! The Linux side: netlink, the TUN device, per-link UDP sockets,
//! privileges. Thin wrappers with typed APIs; no protocol decisions.

pub mod netlink;
pub mod privilege;
pub mod tun;
pub mod udp;
