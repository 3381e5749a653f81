//! Paths keep their identity: removing one never moves a policy choice,
//! a probe or passive credit onto another.

mod common;

use common::{at_ms, ms};

use mpvr::proto::{EndpointSpec, Policy};
use mpvr::sim::scenario;
use mpvr::sim::{Jitter, LinkModel};

fn links(p: &scenario::Pair, ids: &[mpvr::proto::PathId]) -> Vec<mpvr::proto::LinkId> {
    let peer = p.sim.node(p.b).host();
    let b = p.sim.node(p.a).bundle(peer).expect("bundle");
    ids.iter().map(|&id| b.path(id).expect("a current path").addr.link).collect()
}

/// Three wires, slow, mid and fast, with `failover`; after the probes have
/// ranked them, the slow one's endpoint is removed from host 1's config.
fn three_paths_then_remove_the_first(seed: u64) -> scenario::Pair {
    let slow = LinkModel::delay(ms(40)).with_jitter(Jitter::Uniform(ms(1)));
    let mid = LinkModel::delay(ms(20)).with_jitter(Jitter::Uniform(ms(1)));
    let fast = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(1)));
    let mut p = scenario::pair(seed, &[slow, mid, fast], &|c| c.policy = Policy::Failover);
    p.sim.run_until(at_ms(3_000));
    let keep: Vec<EndpointSpec> = [1, 2]
        .iter()
        .map(|&w| {
            let (link, _) = p.sim.end(p.wires[w], p.a);
            let (_, remote) = p.sim.end(p.wires[w], p.b);
            EndpointSpec { remote, link: Some(link) }
        })
        .collect();
    let peer = p.sim.node(p.b).host();
    let before = p.sim.node(p.a).chosen_paths(peer, mpvr::proto::Class::Realtime);
    let (fast_link, _) = p.sim.end(p.wires[2], p.a);
    assert_eq!(links(&p, &before), vec![fast_link], "failover picked the fast path");
    p.sim.node_mut(p.a).set_endpoints(peer, keep).unwrap();
    p
}

#[test]
fn removing_an_endpoint_keeps_the_failover_choice_on_its_path() {
    // With paths named by their index in a list, removing the first path
    // shifted the others and the choice fell back to every path.
    let mut p = three_paths_then_remove_the_first(31);
    let peer = p.sim.node(p.b).host();
    let (fast_link, _) = p.sim.end(p.wires[2], p.a);
    let chosen = p.sim.node(p.a).chosen_paths(peer, mpvr::proto::Class::Realtime);
    assert_eq!(links(&p, &chosen), vec![fast_link]);
    // And a stream after the change goes on that path only, losing nothing.
    let count = 2_000;
    let s = p.stream(ms(3_100), ms(1), count, 200);
    p.sim.run_until(at_ms(7_000));
    assert_eq!(p.sim.stream_report(s, p.b).lost(), 0);
    let offered = |w: usize| p.sim.channel(p.wires[w], mpvr::sim::Dir::Forward).stats.offered;
    assert!(offered(2) > count, "the fast path carried the stream");
    assert!(offered(1) < count / 10, "the mid path carried only probes: {}", offered(1));
}

#[test]
fn passive_credit_stays_with_its_path_after_a_removal() {
    // Host 2 removes host 1's slow endpoint while data is in flight (a
    // packet's paths are credited a second after its first copy). With
    // paths named by index, the fast path's bit then named another path,
    // and the fast path was counted missing for every packet in flight.
    let slow = LinkModel::delay(ms(40)).with_jitter(Jitter::Uniform(ms(1)));
    let fast = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(1)));
    let mut p = scenario::pair(32, &[slow, fast.clone(), fast], &|_| {});
    let count = 4_000;
    let s = p.stream(ms(2_000), ms(1), count, 200);
    p.sim.run_until(at_ms(3_500));
    let me = p.sim.node(p.a).host();
    let keep: Vec<EndpointSpec> = [1, 2]
        .iter()
        .map(|&w| {
            let (link, _) = p.sim.end(p.wires[w], p.b);
            let (_, remote) = p.sim.end(p.wires[w], p.a);
            EndpointSpec { remote, link: Some(link) }
        })
        .collect();
    p.sim.node_mut(p.b).set_endpoints(me, keep).unwrap();
    p.sim.run_until(at_ms(9_000));
    assert_eq!(p.sim.stream_report(s, p.b).lost(), 0);
    let b = p.sim.node(p.b).bundle(me).unwrap();
    assert_eq!(b.paths().iter().filter(|x| !x.learned).count(), 2, "the slow path is only learned again");
    for w in [1, 2] {
        let (link, _) = p.sim.end(p.wires[w], p.b);
        let path = b.paths().iter().find(|x| x.addr.link == link).unwrap();
        let c = path.monitor.local;
        assert_eq!(c.missing, 0, "wire {w}: a lossless path counted missing: {c:?}");
        assert!(c.delivered >= count - 10, "wire {w}: {c:?}");
    }
}
