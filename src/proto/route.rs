//! The route table: destination prefix -> next hop, by longest-prefix match.
//!
//! A next hop is either this host (the packet is delivered to the local TUN)
//! or a neighbour host the packet is sealed for. A destination reached through
//! a relay simply has the relay as its next hop: forwarding is hop by hop.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::ids::HostId;

/// Where a packet for a prefix goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// This host: deliver to the local TUN.
    Local,
    /// A neighbour: seal for it and send on its paths.
    Host(HostId),
}

/// IPv4 and IPv6 prefix tries.
#[derive(Clone, Default)]
pub struct RouteTable {
    v4: PrefixMap<Ipv4Net, NextHop>,
    v6: PrefixMap<Ipv6Net, NextHop>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> RouteTable {
        RouteTable::default()
    }

    /// Add or replace the route for `prefix` (host bits are ignored); returns
    /// the one it replaced.
    pub fn insert(&mut self, prefix: IpNet, next: NextHop) -> Option<NextHop> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.insert(p, next),
            IpNet::V6(p) => self.v6.insert(p, next),
        }
    }

    /// Remove the route for exactly `prefix`.
    pub fn remove(&mut self, prefix: IpNet) -> Option<NextHop> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.remove(&p),
            IpNet::V6(p) => self.v6.remove(&p),
        }
    }

    /// The route for exactly `prefix` (host bits are ignored).
    pub fn get(&self, prefix: IpNet) -> Option<NextHop> {
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.get(&p).copied(),
            IpNet::V6(p) => self.v6.get(&p).copied(),
        }
    }

    /// Longest-prefix match for `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<NextHop> {
        match addr {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, n)| *n),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, n)| *n),
        }
    }

    /// Every route, IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, NextHop)> + '_ {
        let v4 = self.v4.iter().map(|(p, n)| (IpNet::V4(p), *n));
        let v6 = self.v6.iter().map(|(p, n)| (IpNet::V6(p), *n));
        v4.chain(v6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let h = |n| NextHop::Host(HostId::new(n).unwrap());
        let mut t = RouteTable::new();
        t.insert("10.9.0.0/16".parse().unwrap(), h(1));
        t.insert("10.9.2.0/24".parse().unwrap(), h(2));
        t.insert("10.9.2.7/32".parse().unwrap(), NextHop::Local);
        t.insert("fd00::/64".parse().unwrap(), h(3));
        t.insert("0.0.0.0/0".parse().unwrap(), h(4));
        assert_eq!(t.lookup("10.9.1.1".parse().unwrap()), Some(h(1)));
        assert_eq!(t.lookup("10.9.2.1".parse().unwrap()), Some(h(2)));
        assert_eq!(t.lookup("10.9.2.7".parse().unwrap()), Some(NextHop::Local));
        assert_eq!(t.lookup("8.8.8.8".parse().unwrap()), Some(h(4)));
        assert_eq!(t.lookup("fd00::1".parse().unwrap()), Some(h(3)));
        assert_eq!(t.lookup("fd01::1".parse().unwrap()), None);
        assert_eq!(t.remove("10.9.2.0/24".parse().unwrap()), Some(h(2)));
        assert_eq!(t.lookup("10.9.2.1".parse().unwrap()), Some(h(1)));
        // Host bits are ignored.
        assert_eq!(t.insert("10.9.2.9/24".parse().unwrap(), h(5)), None);
        assert_eq!(t.lookup("10.9.2.1".parse().unwrap()), Some(h(5)));
        assert_eq!(t.iter().count(), 5);
    }
}
