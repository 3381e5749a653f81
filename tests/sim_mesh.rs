//! The mesh in the simulator: routes learned from advertisements, relays
//! chosen by the probes' costs, convergence and control traffic of meshes
//! of 5 to 50 hosts.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{at_ms, ms};

use mpvr::proto::{NextHop, Time};
use mpvr::sim::scenario::{self, addr4};
use mpvr::sim::{Dir, HostIx, Jitter, LinkModel, Sim, Stream, WireIx};

/// Hosts 1..=n, no configured routes but their own; `edges` are wires
/// (host numbers), each host pair a neighbour once.
struct Mesh {
    sim: Sim,
    hosts: Vec<HostIx>,
    wires: Vec<(u32, u32, WireIx)>,
}

fn mesh(seed: u64, n: u32, edges: &[(u32, u32, LinkModel)]) -> Mesh {
    let mut sim = Sim::new(seed);
    let hosts: Vec<HostIx> = (1..=n).map(|i| scenario::add_host(&mut sim, i, &|_| {})).collect();
    let mut wires = Vec::new();
    let mut paired = std::collections::BTreeSet::new();
    for (a, b, m) in edges {
        let w = sim.connect(hosts[*a as usize - 1], hosts[*b as usize - 1], m.clone(), m.clone());
        wires.push((*a, *b, w));
    }
    // Neighbours once every wire exists: their endpoints are all the wires'.
    for (a, b, _) in edges {
        if paired.insert((*a.min(b), *a.max(b))) {
            sim.pair(hosts[*a as usize - 1], hosts[*b as usize - 1]).unwrap();
        }
    }
    Mesh { sim, hosts, wires }
}

impl Mesh {
    fn host(&self, n: u32) -> HostIx {
        self.hosts[n as usize - 1]
    }

    /// Host `from`'s next hop toward host `to`'s address.
    fn next_hop(&self, from: u32, to: u32) -> Option<u32> {
        match self.sim.node(self.host(from)).routes().lookup(addr4(to)) {
            Some(NextHop::Host(x)) => Some(x.get()),
            _ => None,
        }
    }

    /// Follow next hops from `from` to `to`: the hosts crossed, or `None`
    /// on a loop or a dead end.
    fn walk(&self, from: u32, to: u32) -> Option<Vec<u32>> {
        let mut at = from;
        let mut seen = vec![from];
        while at != to {
            at = self.next_hop(at, to)?;
            if seen.contains(&at) {
                return None;
            }
            seen.push(at);
        }
        Some(seen)
    }

    /// Every pair reaches each other, loop-free, avoiding the link `avoid`.
    fn converged(&self, n: u32, avoid: Option<(u32, u32)>) -> bool {
        (1..=n).all(|a| {
            (1..=n).filter(|b| *b != a).all(|b| {
                self.walk(a, b).is_some_and(|w| {
                    avoid.is_none_or(|(x, y)| !w.windows(2).any(|s| (s[0], s[1]) == (x, y) || (s[0], s[1]) == (y, x)))
                })
            })
        })
    }

    fn stream(&mut self, from: u32, to: u32, start: Time, interval: Duration, count: u64) -> mpvr::sim::StreamIx {
        let s = Stream {
            from: self.host(from),
            src: addr4(from),
            dst: addr4(to),
            start,
            interval,
            count,
            size: 200,
            dscp: mpvr::sim::traffic::EF,
        };
        self.sim.add_stream(s)
    }
}

#[test]
fn seed_layout_routes_are_learned_and_any_single_cut_loses_nothing() {
    let link = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(2)));
    // 1 and 2 each have two wires to 3 only; no route is configured.
    let edges = [(1, 3, link.clone()), (1, 3, link.clone()), (3, 2, link.clone()), (3, 2, link)];
    for cut in 0..4 {
        let mut m = mesh(30 + cut as u64, 3, &edges);
        m.sim.run_until(at_ms(2_000));
        assert_eq!(m.walk(1, 2), Some(vec![1, 3, 2]), "learned through the relay");
        assert_eq!(m.walk(2, 1), Some(vec![2, 3, 1]));
        let s = m.stream(1, 2, at_ms(2_000), ms(1), 6_000);
        let w = m.wires[cut].2;
        m.sim.blackout(w, at_ms(4_000), at_ms(6_000));
        m.sim.run_until(at_ms(10_000));
        let r = m.sim.stream_report(s, m.host(2));
        assert_eq!((r.lost(), r.delivered_twice), (0, 0), "wire {cut} cut");
        assert_eq!(m.walk(1, 2), Some(vec![1, 3, 2]));
    }
}

#[test]
fn triangle_moves_to_the_relay_when_the_direct_path_degrades_and_back_without_flapping() {
    let jitter = |d| LinkModel::delay(ms(d)).with_jitter(Jitter::Uniform(ms(3)));
    // Direct 1-2: 10 ms (+0-3); through 3: 2 x 7 ms (+0-3 each).
    let edges = [(1, 2, jitter(10)), (1, 3, jitter(7)), (3, 2, jitter(7))];
    let mut m = mesh(40, 3, &edges);
    let direct = m.wires[0].2;
    let s = m.stream(1, 2, at_ms(3_000), ms(5), 11_000);
    let mut hops: Vec<(Time, Option<u32>)> = Vec::new();
    let mut t = at_ms(0);
    while t < at_ms(60_000) {
        t += ms(100);
        if t == at_ms(20_000) {
            // The direct path degrades: 40 ms each way.
            for d in [Dir::Forward, Dir::Backward] {
                m.sim.channel_mut(direct, d).model.delay = ms(40);
            }
        }
        if t == at_ms(40_000) {
            for d in [Dir::Forward, Dir::Backward] {
                m.sim.channel_mut(direct, d).model.delay = ms(10);
            }
        }
        m.sim.run_until(t);
        let next = m.next_hop(1, 2);
        if next.is_some() && hops.last().is_none_or(|(_, n)| *n != next) {
            hops.push((t, next));
        }
    }
    let nexts: Vec<Option<u32>> = hops.iter().map(|(_, n)| *n).collect();
    assert_eq!(nexts, vec![Some(2), Some(3), Some(2)], "{hops:?}");
    let (moved, back) = (hops[1].0 - at_ms(20_000), hops[2].0 - at_ms(40_000));
    assert!(moved < ms(5_000) && back < ms(5_000), "moved after {moved:?}, back after {back:?}");
    eprintln!("triangle: to the relay {moved:?} after the degradation, back {back:?} after healing");
    // Nothing lost on the way, nothing twice.
    let r = m.sim.stream_report(s, m.host(2));
    assert_eq!((r.lost(), r.delivered_twice), (0, 0));
}

/// A ring of `n` hosts with a chord from every host to the one `n / 3`
/// further (so there are detours), 5 to 20 ms links with jitter.
fn ring_with_chords(n: u32) -> Vec<(u32, u32, LinkModel)> {
    let mut edges = Vec::new();
    let link = |i: u32| LinkModel::delay(ms(5 + u64::from(i * 7 % 16))).with_jitter(Jitter::Uniform(ms(1)));
    for i in 1..=n {
        edges.push((i, i % n + 1, link(i)));
    }
    let k = (n / 3).max(2);
    for i in (1..=n).step_by(2) {
        let j = (i - 1 + k) % n + 1;
        if j != i && j != i % n + 1 && i != j % n + 1 {
            edges.push((i, j, link(i + 3)));
        }
    }
    edges
}

/// Convergence and control traffic of one mesh: (time to converge at
/// start, time to converge after the failure, adverts per host per
/// second, advert bytes per host per second, transient loops seen).
fn measure(n: u32) -> (Duration, Duration, f64, f64, usize) {
    let edges = ring_with_chords(n);
    let mut m = mesh(50 + u64::from(n), n, &edges);
    let step = ms(50);
    let mut t = Time::ZERO;
    while !m.converged(n, None) {
        t += step;
        assert!(t < at_ms(30_000), "{n} hosts: no convergence at start");
        m.sim.run_until(t);
    }
    let start = t - Time::ZERO;
    // Let it settle, count the control traffic over a quiet minute.
    m.sim.run_until(t + ms(10_000));
    let count = |m: &Mesh| -> (u64, u64) {
        m.hosts.iter().fold((0, 0), |(p, b), h| {
            let s = &m.sim.node(*h).stats().adverts_out;
            (p + s.packets, b + s.bytes)
        })
    };
    let (p0, b0) = count(&m);
    let quiet_from = m.sim.now();
    m.sim.run_until(quiet_from + ms(60_000));
    let (p1, b1) = count(&m);
    let secs = 60.0 * f64::from(n);
    let (per_host, bytes_per_host) = ((p1 - p0) as f64 / secs, (b1 - b0) as f64 / secs);
    // Fail the link the route from host 1 to the farthest host uses first.
    let far = n / 2 + 1;
    let path = m.walk(1, far).expect("converged");
    let (x, y) = (path[0], path[1]);
    let w = m.wires.iter().find(|(a, b, _)| (*a, *b) == (x, y) || (*a, *b) == (y, x)).expect("wire").2;
    let fail = m.sim.now();
    m.sim.blackout(w, fail, fail + ms(3_600_000));
    let mut loops = 0;
    let mut t = fail;
    loop {
        t += step;
        m.sim.run_until(t);
        loops += (1..=n)
            .flat_map(|a| (1..=n).filter(move |b| *b != a).map(move |b| (a, b)))
            .filter(|&(a, b)| {
                // A loop, not a dead end: the walk comes back to a host.
                let mut at = a;
                let mut seen = vec![a];
                while let Some(next) = m.next_hop(at, b) {
                    if next == b {
                        return false;
                    }
                    if seen.contains(&next) {
                        return true;
                    }
                    seen.push(next);
                    at = next;
                }
                false
            })
            .count();
        if m.converged(n, Some((x, y))) {
            break;
        }
        assert!(t - fail < ms(30_000), "{n} hosts: no convergence after the failure");
    }
    (start, t - fail, per_host, bytes_per_host, loops)
}

#[test]
fn meshes_of_5_to_50_hosts_converge_without_loops() {
    let mut rows = BTreeMap::new();
    for n in [5, 10, 20, 50] {
        let (start, after, per_host, bytes, loops) = measure(n);
        eprintln!(
            "mesh {n:>2} hosts: converged {start:>6.2?} after start, {after:>6.2?} after a link failure; \
             {per_host:.2} adverts/s and {bytes:.0} B/s per host; transient loops {loops}"
        );
        // Detection (about 0.7 s) plus flooding: a few seconds at most.
        assert!(after < ms(5_000), "{n} hosts: {after:?}");
        rows.insert(n, (start, after, per_host, bytes, loops));
    }
    // Control traffic grows with the mesh (every host's advert reaches
    // every host), and stays small: under 2.5 KiB/s per host at 50 hosts
    // (under 1 KiB/s before adverts carried their origin's key and
    // signature, 96 bytes each).
    assert!(rows[&50].3 < 2560.0, "{:?}", rows[&50]);
}

/// Authenticated is not trusted: a relay (R2) that is another tenant's, or
/// compromised, vouches for an impostor with C's host id, and advertises a
/// part of C's network itself. A learned C's advert key from C's own
/// adverts through R1 (pinned on first use); the impostor's adverts carry
/// another key and R2's claim a prefix A's config gives to C: both are
/// refused, counted, and A's route to C's network stays through R1.
#[test]
fn a_rogue_relay_can_neither_advertise_in_another_hosts_name_nor_claim_its_prefix() {
    let mut sim = Sim::new(31);
    let a = scenario::add_host(&mut sim, 1, &|_| {});
    let r1 = scenario::add_host(&mut sim, 2, &|_| {});
    let r2 = scenario::add_host(&mut sim, 4, &|_| {});
    let c = scenario::add_host(&mut sim, 3, &|_| {});
    let impostor = scenario::add_host(&mut sim, 3, &|_| {});
    let link = LinkModel::delay(ms(10));
    for (x, y) in [(a, r1), (a, r2), (r1, c)] {
        sim.connect(x, y, link.clone(), link.clone());
    }
    // The impostor shows up once A knows C.
    let late = sim.connect(r2, impostor, link.clone(), link.clone());
    sim.blackout(late, Time::ZERO, at_ms(3_000));
    for (x, y) in [(a, r1), (a, r2), (r1, c), (r2, impostor)] {
        sim.pair(x, y).unwrap();
    }
    let net: ipnet::IpNet = "10.50.0.0/24".parse().unwrap();
    let three = mpvr::proto::HostId::new(3).unwrap();
    for h in [c, impostor] {
        sim.route(h, net, NextHop::Local).unwrap();
    }
    sim.route(r2, "10.50.0.128/25".parse().unwrap(), NextHop::Local).unwrap();
    // A's config says the network is C's.
    sim.node_mut(a).claim(net, three);
    sim.run_until(at_ms(10_000));
    let node = sim.node(a);
    let drops = &node.stats().drops;
    assert!(drops.get(mpvr::proto::DropReason::AdvertForged) >= 1, "the impostor's adverts were taken");
    assert!(drops.get(mpvr::proto::DropReason::AdvertUnowned) >= 1, "R2's claim on C's network was taken");
    let c_key = sim.node(c).mesh().unwrap().advert(three).unwrap().key;
    let pinned = node.origin_keys()[&three];
    assert!(pinned.first_use && pinned.key == c_key && pinned.via.get() == 2, "{pinned:?}");
    let r1_id = mpvr::proto::HostId::new(2).unwrap();
    assert_eq!(node.routes().lookup(addr4(3)), Some(NextHop::Host(r1_id)));
    assert_eq!(node.routes().lookup("10.50.0.200".parse().unwrap()), Some(NextHop::Host(r1_id)));
    // R2 itself took the impostor: it is R2's own neighbour.
    assert_ne!(sim.node(r2).origin_keys()[&three].key, c_key);
}
