//! What the daemon needs from the kernel, checked before it touches anything.

use std::fs;

/// CAP_NET_ADMIN: create the TUN, set addresses, routes and rules.
const CAP_NET_ADMIN: u32 = 12;
/// CAP_NET_RAW: SO_BINDTODEVICE.
const CAP_NET_RAW: u32 = 13;

/// The capabilities `mpvr run` needs that this process lacks, by name.
pub fn missing_capabilities() -> Vec<&'static str> {
    let eff = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    [(CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_NET_RAW, "CAP_NET_RAW")]
        .into_iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| name)
        .collect()
}
