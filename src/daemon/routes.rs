//! The kernel routes on the TUN: the configured peers' prefixes and those
//! the mesh routes through the tunnel. Each is added only where the main
//! table has no route for exactly that prefix: a route another program
//! or device holds (another daemon's TUN, a VPN's) is never replaced. It
//! is logged once and tried again at the next resync, so the prefix moves
//! to this TUN when the other route goes. Every route carries mpvr's route
//! protocol, and only the routes recorded here are removed.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use tracing::{info, warn};

use crate::sys::netlink::{Add, Installed, Netlink};

/// The TUN's kernel routes this daemon holds, and those another holds.
#[derive(Default)]
pub(super) struct TunRoutes {
    installed: BTreeMap<IpNet, Installed>,
    held: BTreeSet<IpNet>,
}

impl TunRoutes {
    /// Make the installed routes `want`: remove the others, add what is
    /// missing. Prefixes another route holds are tried again only with
    /// `retry_held` (a resync), not on every call.
    pub(super) async fn sync(&mut self, nl: &Netlink, tun_index: u32, want: &BTreeSet<IpNet>, retry_held: bool) {
        let gone: Vec<IpNet> = self.installed.keys().filter(|p| !want.contains(p)).copied().collect();
        for p in gone {
            if let Some(i) = self.installed.remove(&p)
                && let Err(e) = nl.remove(&i).await
            {
                warn!(prefix = %p, error = %e, "cannot remove a route from the TUN");
            }
        }
        self.held.retain(|p| want.contains(p));
        for p in want {
            if self.installed.contains_key(p) || (!retry_held && self.held.contains(p)) {
                continue;
            }
            match nl.add_route(*p, tun_index, None, None, Add::Exclusive).await {
                Ok(i) => {
                    if self.held.remove(p) {
                        info!(prefix = %p, "the route is free now: it goes to the TUN");
                    }
                    self.installed.insert(*p, i);
                }
                Err(e) if e.is_held() => {
                    if self.held.insert(*p) {
                        let holder = match nl.route_holder(*p).await {
                            Some(i) => crate::sys::netlink::ifname(i).unwrap_or_else(|| format!("interface #{i}")),
                            None => "another route".into(),
                        };
                        warn!(
                            prefix = %p,
                            holder,
                            "the main table routes this prefix to {holder} already (another daemon's or program's): \
                             it is left alone, and traffic to it does not enter this tunnel until that route goes"
                        );
                    }
                }
                Err(e) => warn!(prefix = %p, error = %e, "cannot add a route to the TUN"),
            }
        }
    }

    /// The prefixes whose route another program holds.
    pub(super) fn held(&self) -> impl Iterator<Item = &IpNet> {
        self.held.iter()
    }

    /// Remove every route this holds.
    pub(super) async fn clear(&mut self, nl: &Netlink, tun_index: u32) {
        self.sync(nl, tun_index, &BTreeSet::new(), false).await;
    }
}
