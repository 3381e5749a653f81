//! The route table: destination prefix -> next hop, by longest-prefix match.
//!
//! A next hop is either this host (the packet is delivered to the local TUN)
//! or a neighbour host the packet is sealed for. A destination reached through
//! a relay simply has the relay as its next hop: forwarding is hop by hop.
//!
//! Every packet is looked up once on each host it crosses, so lookups go
//! through a small direct-mapped cache of recent addresses (a trie walk
//! was 3 % of the daemons' CPU under one TCP stream). Any change to the
//! table empties the cache: an answer is always the table's.

use std::cell::Cell;
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
    /// Recent lookups, by a hash of the address: emptied by every change.
    cache: [Cell<Option<Cached>>; CACHE_SLOTS],
}

/// A cached lookup: the address and the table's answer for it.
type Cached = (IpAddr, Option<NextHop>);

/// Addresses the lookup cache holds (a power of two).
const CACHE_SLOTS: usize = 16;

/// The cache slot of `addr`: its bytes folded, so hosts of one subnet
/// (which differ in the last bits) take different slots.
fn slot(addr: IpAddr) -> usize {
    let folded = match addr {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(a) => {
            let x = u128::from(a);
            (x ^ (x >> 64) ^ (x >> 32) ^ (x >> 96)) as u32
        }
    };
    let x = folded ^ (folded >> 16);
    ((x ^ (x >> 8)) as usize) % CACHE_SLOTS
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
        self.forget();
        match prefix.trunc() {
            IpNet::V4(p) => self.v4.insert(p, next),
            IpNet::V6(p) => self.v6.insert(p, next),
        }
    }

    /// Remove the route for exactly `prefix`.
    pub fn remove(&mut self, prefix: IpNet) -> Option<NextHop> {
        self.forget();
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
        let cached = &self.cache[slot(addr)];
        if let Some((a, next)) = cached.get()
            && a == addr
        {
            return next;
        }
        let next = match addr {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, n)| *n),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, n)| *n),
        };
        cached.set(Some((addr, next)));
        next
    }

    fn forget(&mut self) {
        for c in &mut self.cache {
            *c.get_mut() = None;
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

    /// The answer by definition: the longest of the prefixes that hold `addr`.
    fn reference(routes: &[(IpNet, NextHop)], addr: IpAddr) -> Option<NextHop> {
        routes.iter().filter(|(p, _)| p.contains(&addr)).max_by_key(|(p, _)| p.prefix_len()).map(|(_, n)| *n)
    }

    proptest::proptest! {
        /// Cached answers are the table's answers, through every change:
        /// few addresses and prefixes, so lookups repeat, share cache slots
        /// and outlive the routes they were answered from.
        #[test]
        fn cached_lookups_follow_every_change(ops in proptest::collection::vec((0u8..3, 0u8..8, 0u8..4, 0u8..3), 1..200)) {
            let h = |n: u8| NextHop::Host(HostId::new(u32::from(n) + 1).unwrap());
            let addr = |i: u8| -> IpAddr {
                if i.is_multiple_of(2) { format!("10.9.{}.{}", i / 4, i * 16).parse().unwrap() } else { format!("fd00::{}", i * 16).parse().unwrap() }
            };
            let mut t = RouteTable::new();
            let mut routes: Vec<(IpNet, NextHop)> = Vec::new();
            for (op, a, len, next) in ops {
                let a = addr(a);
                let bits = if a.is_ipv4() { [0, 16, 24, 32][usize::from(len)] } else { [0, 64, 120, 128][usize::from(len)] };
                let prefix = IpNet::new(a, bits).unwrap().trunc();
                match op {
                    0 => {
                        t.insert(prefix, h(next));
                        routes.retain(|(p, _)| *p != prefix);
                        routes.push((prefix, h(next)));
                    }
                    1 => {
                        t.remove(prefix);
                        routes.retain(|(p, _)| *p != prefix);
                    }
                    _ => {}
                }
                for i in 0..8 {
                    proptest::prop_assert_eq!(t.lookup(addr(i)), reference(&routes, addr(i)));
                }
            }
        }
    }
}
