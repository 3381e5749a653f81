//! Ready-made topologies shared by the scenario tests, the benchmarks and
//! `mpvr sim`: two hosts joined by N wires, and two hosts joined through a
//! relay (the virtual router).
//!
//! Host `n` has the tunnel addresses 10.9.0.n and fd09::n.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;

use super::{HostIx, LinkModel, Sim, Stream, StreamIx, WireIx};
use crate::proto::{HostId, NextHop, NodeConfig, Time};

/// Host `n`'s IPv4 tunnel address.
pub fn addr4(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 0, u8::try_from(n).expect("host number below 256")))
}

/// Host `n`'s IPv6 tunnel address.
pub fn addr6(n: u32) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd09, 0, 0, 0, 0, 0, 0, u16::try_from(n).expect("host number below 65536")))
}

fn host_routes(n: u32) -> [IpNet; 2] {
    [IpNet::from(addr4(n)), IpNet::from(addr6(n))]
}

/// Add host number `n` with its own addresses routed locally.
pub fn add_host(sim: &mut Sim, n: u32, tweak: &dyn Fn(&mut NodeConfig)) -> HostIx {
    let mut cfg = NodeConfig::new(HostId::new(n).expect("host number is not 0"), sim.random_bytes());
    cfg.rng_seed = sim.random_bytes();
    tweak(&mut cfg);
    let h = sim.add_host(cfg).expect("scenario config is valid");
    for p in host_routes(n) {
        sim.route(h, p, NextHop::Local).expect("local route");
    }
    h
}

/// Route host number `dest`'s addresses on `on` to neighbour number `via`.
pub fn route_to(sim: &mut Sim, on: HostIx, dest: u32, via: u32) {
    let next = NextHop::Host(HostId::new(via).expect("host number is not 0"));
    for p in host_routes(dest) {
        sim.route(on, p, next).expect("next hop is a neighbour");
    }
}

/// Hosts 1 (`a`) and 2 (`b`) joined by one wire per model (same model both ways).
pub struct Pair {
    /// The simulator.
    pub sim: Sim,
    /// Host 1.
    pub a: HostIx,
    /// Host 2.
    pub b: HostIx,
    /// The wires, in model order.
    pub wires: Vec<WireIx>,
}

/// Build a [`Pair`]; `tweak` adjusts both nodes' settings.
pub fn pair(seed: u64, links: &[LinkModel], tweak: &dyn Fn(&mut NodeConfig)) -> Pair {
    let mut sim = Sim::new(seed);
    let a = add_host(&mut sim, 1, tweak);
    let b = add_host(&mut sim, 2, tweak);
    let wires = links.iter().map(|m| sim.connect(a, b, m.clone(), m.clone())).collect();
    sim.pair(a, b).expect("fresh neighbours");
    route_to(&mut sim, a, 2, 2);
    route_to(&mut sim, b, 1, 1);
    Pair { sim, a, b, wires }
}

impl Pair {
    /// A stream of `count` IPv4 packets of `size` bytes from host 1 to host 2.
    pub fn stream(&mut self, start: Duration, interval: Duration, count: u64, size: usize) -> StreamIx {
        self.sim.add_stream(stream_1_to_2(self.a, start, interval, count, size))
    }
}

/// Host 1 (`a`) and host 2 (`b`) that share no wire, both joined to the relay
/// host 3 (`r`).
pub struct Chain {
    /// The simulator.
    pub sim: Sim,
    /// Host 1.
    pub a: HostIx,
    /// Host 3, the relay.
    pub r: HostIx,
    /// Host 2.
    pub b: HostIx,
    /// Wires between `a` and `r`.
    pub hop1: Vec<WireIx>,
    /// Wires between `r` and `b`.
    pub hop2: Vec<WireIx>,
}

/// Build a [`Chain`] with one wire per model on each hop.
pub fn chain(seed: u64, hop1: &[LinkModel], hop2: &[LinkModel]) -> Chain {
    let mut sim = Sim::new(seed);
    let a = add_host(&mut sim, 1, &|_| {});
    let b = add_host(&mut sim, 2, &|_| {});
    let r = add_host(&mut sim, 3, &|_| {});
    let hop1 = hop1.iter().map(|m| sim.connect(a, r, m.clone(), m.clone())).collect();
    let hop2 = hop2.iter().map(|m| sim.connect(r, b, m.clone(), m.clone())).collect();
    sim.pair(a, r).expect("fresh neighbours");
    sim.pair(r, b).expect("fresh neighbours");
    route_to(&mut sim, a, 2, 3);
    route_to(&mut sim, b, 1, 3);
    route_to(&mut sim, r, 1, 1);
    route_to(&mut sim, r, 2, 2);
    Chain { sim, a, r, b, hop1, hop2 }
}

impl Chain {
    /// A stream of `count` IPv4 packets of `size` bytes from host 1 to host 2.
    pub fn stream(&mut self, start: Duration, interval: Duration, count: u64, size: usize) -> StreamIx {
        self.sim.add_stream(stream_1_to_2(self.a, start, interval, count, size))
    }
}

fn stream_1_to_2(from: HostIx, start: Duration, interval: Duration, count: u64, size: usize) -> Stream {
    let start = Time::from_duration(start);
    Stream { from, src: addr4(1), dst: addr4(2), start, interval, count, size, dscp: super::traffic::EF }
}
