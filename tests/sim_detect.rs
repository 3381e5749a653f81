//! Failure detection from the data itself (the link monitor's targets):
//! how soon a dead path is known, at each end, at several packet rates,
//! and how soon it is used again; lossy paths do not flap.

mod common;

use std::time::Duration;

use common::{at_ms, ms};

use mpvr::proto::monitor::Health;
use mpvr::proto::{Policy, Time};
use mpvr::sim::scenario::{self, Pair};
use mpvr::sim::{Dir, HostIx, Jitter, LinkModel, Stream};

/// Changes of host `h`'s path over wire `w`: (time, state, reason).
fn changes(p: &Pair, h: HostIx, w: usize) -> Vec<(Time, Health, String)> {
    let (link, _) = p.sim.end(p.wires[w], h);
    p.sim
        .node(h)
        .recent_changes()
        .filter(|c| c.path.link == link)
        .map(|c| (c.at, c.change.to, c.change.reason.to_string()))
        .collect()
}

/// When host `h` stopped counting on its wire-`w` path after `t` (suspect or down).
fn dead_after(p: &Pair, h: HostIx, w: usize, t: Time) -> Option<Duration> {
    changes(p, h, w).into_iter().find(|c| c.0 >= t && !c.1.is_alive()).map(|c| c.0 - t)
}

/// When host `h`'s wire-`w` path was up again after `t`.
fn up_after(p: &Pair, h: HostIx, w: usize, t: Time) -> Option<Duration> {
    changes(p, h, w).into_iter().find(|c| c.0 >= t && c.1 == Health::Up).map(|c| c.0 - t)
}

fn link() -> LinkModel {
    LinkModel::delay(ms(20)).with_jitter(Jitter::Uniform(ms(2)))
}

/// Two wires, a stream from host 1 to host 2 every `gap` (none if `None`),
/// wire 0 blacked out (both ways, or only 1 -> 2) from 5 s to 8 s.
fn blackout(seed: u64, gap: Option<Duration>, policy: Policy, one_way: bool) -> (Pair, Option<mpvr::sim::StreamIx>) {
    // Wire 0 is the faster: `failover` and `best:1` put the stream on it.
    let fast = LinkModel::delay(ms(15)).with_jitter(Jitter::Uniform(ms(2)));
    let mut p = scenario::pair(seed, &[fast, link()], &|c| c.policy = policy);
    let (cut, heal) = (at_ms(5_000), at_ms(8_000));
    if one_way {
        p.sim.channel_mut(p.wires[0], Dir::Forward).model.blackouts.push((cut, heal));
    } else {
        p.sim.blackout(p.wires[0], cut, heal);
    }
    let s = gap.map(|g| {
        let count = (Duration::from_secs(10).as_nanos() / g.as_nanos()) as u64;
        p.stream(ms(1_000), g, count, 200)
    });
    p.sim.run_until(at_ms(12_000));
    (p, s)
}

#[test]
fn a_dead_path_is_known_within_a_few_packet_gaps_at_both_ends() {
    let (cut, heal) = (at_ms(5_000), at_ms(8_000));
    for (rate, gap) in [(50, ms(20)), (100, ms(10)), (1_000, ms(1))] {
        let (p, s) = blackout(40 + rate, Some(gap), Policy::All, false);
        assert_eq!(p.sim.stream_report(s.unwrap(), p.b).lost(), 0, "{rate}/s: policy all loses nothing");
        for (h, who) in [(p.b, "receiver"), (p.a, "sender")] {
            let dead = dead_after(&p, h, 0, cut).unwrap_or_else(|| panic!("{rate}/s {who}: {:?}", changes(&p, h, 0)));
            let up = up_after(&p, h, 0, heal).unwrap_or_else(|| panic!("{rate}/s {who}: {:?}", changes(&p, h, 0)));
            eprintln!("{rate:>5}/s {who:>8}: dead after {dead:?}, up {up:?} after healing");
            let bound = if rate >= 100 { ms(300) } else { ms(500) };
            assert!(dead <= bound, "{rate}/s {who}: dead after {dead:?}: {:?}", changes(&p, h, 0));
            assert!(up <= ms(500), "{rate}/s {who}: up {up:?} after healing: {:?}", changes(&p, h, 0));
            // The other path never changed after coming up.
            assert_eq!(changes(&p, h, 1).len(), 1, "{rate}/s {who}: {:?}", changes(&p, h, 1));
        }
    }
}

#[test]
fn with_no_traffic_probes_find_a_dead_path_within_800_ms() {
    let (cut, heal) = (at_ms(5_000), at_ms(8_000));
    let (p, _) = blackout(50, None, Policy::All, false);
    for h in [p.a, p.b] {
        let dead = dead_after(&p, h, 0, cut).expect("down");
        let up = up_after(&p, h, 0, heal).expect("up");
        eprintln!("idle: dead after {dead:?}, up {up:?} after healing");
        assert!(dead <= ms(800), "{:?}", changes(&p, h, 0));
        assert!(up <= ms(500), "{:?}", changes(&p, h, 0));
    }
}

#[test]
fn failover_at_1000_per_second_loses_at_most_300_ms() {
    let (p, s) = blackout(51, Some(ms(1)), Policy::Failover, false);
    let r = p.sim.stream_report(s.unwrap(), p.b);
    let lost = ms(1) * r.lost() as u32;
    eprintln!("failover at 1000/s: {} packets lost ({lost:?})", r.lost());
    // The stream was on the faster path, wire 0, and moved when it died.
    assert!(r.lost() > 0, "the dead path carried the stream");
    assert!(lost <= ms(300), "{lost:?}");
}

#[test]
fn a_one_way_failure_is_known_to_the_sender_within_500_ms() {
    let cut = at_ms(5_000);
    for (rate, gap) in [(100, ms(10)), (1_000, ms(1))] {
        let (p, _) = blackout(52 + rate, Some(gap), Policy::All, true);
        let dead = dead_after(&p, p.a, 0, cut).unwrap_or_else(|| panic!("{:?}", changes(&p, p.a, 0)));
        eprintln!("one way at {rate}/s: the sender knows after {dead:?}");
        assert!(dead <= ms(500), "{rate}/s: {:?}", changes(&p, p.a, 0));
    }
}

/// Ten minutes of a stream over two paths with `loss` each way and 20 ms of jitter.
fn lossy(seed: u64, loss: f64, gap: Duration) -> Pair {
    let m = LinkModel::delay(ms(20)).with_jitter(Jitter::Uniform(ms(20))).with_loss(loss);
    let mut p = scenario::pair(seed, &[m.clone(), m], &|_| {});
    let count = (Duration::from_secs(600).as_nanos() / gap.as_nanos()) as u64;
    p.sim.add_stream(Stream {
        from: p.a,
        src: scenario::addr4(1),
        dst: scenario::addr4(2),
        start: at_ms(1_000),
        interval: gap,
        count,
        size: 200,
        dscp: mpvr::sim::traffic::EF,
    });
    p.sim.run_until(at_ms(601_000));
    p
}

#[test]
fn ten_minutes_of_5_percent_loss_and_jitter_change_each_path_at_most_twice() {
    for (rate, gap) in [(50, ms(20)), (100, ms(10)), (1_000, ms(1))] {
        let p = lossy(60 + rate, 0.05, gap);
        for h in [p.a, p.b] {
            for w in 0..2 {
                let c = changes(&p, h, w);
                assert!(c.len() <= 2, "{rate}/s: {c:?}");
                assert!(c.iter().all(|c| c.1 != Health::Down && c.1 != Health::Suspect), "{rate}/s: {c:?}");
            }
        }
    }
}

#[test]
fn at_20_percent_loss_a_path_is_degraded_not_flapping() {
    let p = lossy(71, 0.2, ms(10));
    for h in [p.a, p.b] {
        for w in 0..2 {
            let c = changes(&p, h, w);
            assert!(c.len() <= 2, "{c:?}");
            assert_eq!(c.last().map(|c| c.1), Some(Health::Degraded), "{c:?}");
        }
    }
}

#[test]
fn a_slower_path_is_not_suspect_while_its_copies_are_on_their_way() {
    // 20 ms and 60 ms, and video-like bursts (a key frame: 40 packets 50
    // us apart every 100 ms): the gaps inside a burst make the slow path's
    // allowance short, the pause between bursts is longer, and every copy
    // on it comes 40 ms after the fast path's. It stays up all the same,
    // at both ends.
    let mut p = scenario::pair(61, &[LinkModel::delay(ms(20)), LinkModel::delay(ms(60))], &|_| {});
    for k in 0..40 {
        p.stream(ms(1000) + Duration::from_micros(50 * k), ms(100), 100, 1200);
    }
    p.sim.run_until(at_ms(12_000));
    for h in [p.a, p.b] {
        let c = changes(&p, h, 1);
        assert!(c.iter().all(|c| c.1 != Health::Suspect), "{c:?}");
    }
    // And it still is suspect soon when it really stops.
    p.sim.blackout(p.wires[1], at_ms(13_000), at_ms(15_000));
    p.stream(ms(12_500), ms(5), 1000, 200);
    p.sim.run_until(at_ms(16_000));
    let dead = dead_after(&p, p.b, 1, at_ms(13_000)).expect("the slow path's stall was seen");
    assert!(dead <= ms(300), "{dead:?}");
}
