//! The TUN device (tun-rs): created with its name and MTU and brought up;
//! addresses and routes are set through netlink. Closing it (drop, exit, or
//! a crash) makes the kernel delete it with every address and route on it.

use std::io;
use std::sync::Arc;

pub use tun_rs::AsyncDevice;

/// Create the TUN `name` with `mtu`, up. Returns it and its interface index.
pub fn create(name: &str, mtu: u16) -> io::Result<(Arc<AsyncDevice>, u32)> {
    let dev = tun_rs::DeviceBuilder::new().name(name).mtu(mtu).enable(true).build_async()?;
    let index = dev.if_index()?;
    Ok((Arc::new(dev), index))
}
