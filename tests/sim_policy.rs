//! Duplication policies in the simulator: `best:N` copies onto the N
//! cheapest paths, `failover` onto one and moves when it fails.

mod common;

use std::time::Duration;

use common::{at_ms, ms};

use mpvr::proto::Policy;
use mpvr::sim::scenario;
use mpvr::sim::{Dir, Jitter, LinkModel};

fn offered(p: &scenario::Pair, w: usize) -> u64 {
    p.sim.channel(p.wires[w], Dir::Forward).stats.offered
}

#[test]
fn best_n_copies_onto_the_n_cheapest_paths() {
    let fast = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(1)));
    let mid = LinkModel::delay(ms(20)).with_jitter(Jitter::Uniform(ms(1)));
    let slow = LinkModel::delay(ms(40)).with_jitter(Jitter::Uniform(ms(1)));
    for (n, want) in [(1, [true, false, false]), (2, [true, true, false])] {
        let mut p = scenario::pair(21, &[slow.clone(), fast.clone(), mid.clone()], &|c| c.policy = Policy::Best(n));
        // Let the probes rank the paths, then stream.
        let count = 5_000;
        let s = p.stream(ms(2_000), ms(1), count, 200);
        let before: Vec<u64> = {
            p.sim.run_until(at_ms(1_999));
            (0..3).map(|w| offered(&p, w)).collect()
        };
        p.sim.run_until(at_ms(8_000));
        assert_eq!(p.sim.stream_report(s, p.b).lost(), 0);
        // Wire order is slow, fast, mid.
        let carried: Vec<bool> = (0..3).map(|w| offered(&p, w) - before[w] > count).collect();
        assert_eq!(carried, vec![want[2], want[0], want[1]], "best:{n}");
    }
}

#[test]
fn failover_moves_to_the_other_path_within_the_detection_time() {
    let fast = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(1)));
    let slow = LinkModel::delay(ms(30)).with_jitter(Jitter::Uniform(ms(1)));
    let mut p = scenario::pair(22, &[fast, slow], &|c| c.policy = Policy::Failover);
    let (cut, heal) = (at_ms(5_000), at_ms(8_000));
    p.sim.blackout(p.wires[0], cut, heal);
    let interval = ms(1);
    let count = 10_000;
    let s = p.stream(ms(2_000), interval, count, 200);
    p.sim.run_until(at_ms(13_000));
    let r = p.sim.stream_report(s, p.b);
    // One copy per packet (and the probes).
    let total = offered(&p, 0) + offered(&p, 1);
    assert!(total < count + count / 10, "{total} copies for {count} packets");
    // What was lost is what was sent between the cut and the switch.
    let failover = interval * r.lost() as u32;
    assert!(failover > Duration::ZERO && failover <= ms(900), "failover took {failover:?}");
    eprintln!("failover: {} packets lost at 1000/s, {failover:?}", r.lost());
    // After healing, failover stays on the path that works: no flapping back.
    let a = p.sim.node(p.a);
    let peer = p.sim.node(p.b).host();
    let active = a.bundle(peer).unwrap().ranking().active.unwrap();
    let (slow_link, _) = p.sim.end(p.wires[1], p.a);
    assert_eq!(a.bundle(peer).unwrap().path(active).unwrap().addr.link, slow_link);
}

#[test]
fn a_neighbour_can_have_its_own_policy() {
    let link = LinkModel::delay(ms(10));
    let mut p = scenario::pair(23, &[link.clone(), link], &|_| {});
    let peer = p.sim.node(p.b).host();
    p.sim.node_mut(p.a).set_policy(peer, Some(Policy::Best(1))).unwrap();
    let count = 2_000;
    let s = p.stream(ms(2_000), ms(1), count, 200);
    p.sim.run_until(at_ms(5_000));
    assert_eq!(p.sim.stream_report(s, p.b).lost(), 0);
    let total = offered(&p, 0) + offered(&p, 1);
    assert!(total < count + count / 4, "{total} copies for {count} packets");
}
