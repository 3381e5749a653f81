//! Path MTU discovery in the simulator: every path finds its own MTU
//! within a second of its session, packets go on the paths that carry
//! them, what no path carries is fragmented (IPv4, DF clear) or answered
//! with ICMP "too big" (DF set, IPv6), a shrink is found within seconds
//! and a growth at the raise timer, and probing costs little at rest.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{at_ms, ms};

use mpvr::proto::pmtu::CONFIRM_IDLE;
use mpvr::proto::wire::MessageType;
use mpvr::proto::{HostId, Time};
use mpvr::sim::scenario::{self, Pair, addr4, addr6};
use mpvr::sim::traffic::udp_packet_marked;
use mpvr::sim::{Dir, HostIx, LinkModel};

/// The measured datagram sizes of `h`'s paths toward its peer, by wire.
fn measured(p: &Pair, h: HostIx) -> Vec<Option<u16>> {
    let peer = if h == p.a { 2 } else { 1 };
    let b = p.sim.node(h).bundle(HostId::new(peer).unwrap()).unwrap();
    (0..p.wires.len())
        .map(|w| {
            let (link, _) = p.sim.end(p.wires[w], h);
            b.paths().iter().find(|q| q.addr.link == link).and_then(|q| q.pmtu.measured())
        })
        .collect()
}

/// Link models of one-way `delay` with a path MTU of `mtu` somewhere along.
fn link(delay: Duration, mtu: Option<usize>) -> LinkModel {
    LinkModel { mtu, ..LinkModel::delay(delay) }
}

/// Set both directions of wire `w`'s path MTU.
fn set_mtu(p: &mut Pair, w: usize, mtu: Option<usize>) {
    for d in [Dir::Forward, Dir::Backward] {
        p.sim.channel_mut(p.wires[w], d).model.mtu = mtu;
    }
}

/// A DSCP-0 UDP test packet of `len` bytes from host 1 to host 2, DF set if `df`.
fn packet(v6: bool, len: usize, df: bool) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = if v6 { (addr6(1), addr6(2)) } else { (addr4(1), addr4(2)) };
    let mut p = udp_packet_marked(src, dst, 7, len, 0);
    if df && !v6 {
        p[6] |= 0x40;
        p[10] = 0;
        p[11] = 0;
        let c = mpvr::proto::fit::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p
}

#[test]
fn each_path_finds_its_mtu_within_a_second_of_its_session() {
    // PPPoE DSL (1492) and an LTE network (1420), 20 and 40 ms away.
    let mut p = scenario::pair(1, &[link(ms(10), Some(1492)), link(ms(20), Some(1420))], &|_| {});
    let want = vec![Some(1492 - 28), Some(1420 - 28)];
    let mut found = [None, None];
    for t in (50..3_000).step_by(10) {
        p.sim.run_until(at_ms(t));
        for (i, h) in [p.a, p.b].into_iter().enumerate() {
            if found[i].is_none() && measured(&p, h) == want {
                found[i] = Some(t);
            }
        }
    }
    // The session is up after about one round trip of the slower link.
    for (i, f) in found.iter().enumerate() {
        let f = f.unwrap_or_else(|| panic!("host {} measured {:?}", i + 1, measured(&p, [p.a, p.b][i])));
        assert!(f <= 1_000, "host {} knew both MTUs after {f} ms", i + 1);
    }
    // The tunnel carries what both paths carry.
    assert_eq!(p.sim.node(p.a).tunnel_mtu(), Some(1420 - 28 - 36));
    assert_eq!(p.sim.node(p.b).tunnel_mtu(), Some(1420 - 28 - 36));
}

#[test]
fn packets_go_where_they_fit_and_the_rest_are_fragmented_or_answered() {
    let mut p = scenario::pair(2, &[link(ms(10), Some(1492)), link(ms(10), Some(1420))], &|_| {});
    p.sim.record_arrivals = true;
    // 1400-byte packets fit link 0 (1464-byte datagrams) but not link 1.
    let s = p.stream(ms(2_000), ms(1), 1_000, 1400);
    p.sim.run_until(at_ms(4_000));
    let r = p.sim.stream_report(s, p.b);
    common::assert_clean(&r);
    assert_eq!(r.lost(), 0, "a packet that fits one path is delivered");
    let data = MessageType::Data as u8;
    let on = |w: usize| {
        p.sim
            .arrivals()
            .iter()
            .filter(|a| a.host == p.b && a.wire == p.wires[w] && a.msg_type == data && a.len > 1400)
            .count()
    };
    assert_eq!((on(0), on(1)), (1_000, 0), "large copies only where they fit");

    // Larger than both paths: DF set gets ICMP, DF clear is fragmented.
    let before = p.sim.deliveries().len();
    let big = packet(false, 1450, false);
    p.sim.send_tun(p.a, at_ms(4_100), big.clone());
    p.sim.send_tun(p.a, at_ms(4_110), packet(false, 1450, true));
    p.sim.send_tun(p.a, at_ms(4_120), packet(true, 1450, false));
    p.sim.run_until(at_ms(4_500));
    let pieces: Vec<&[u8]> =
        p.sim.deliveries()[before..].iter().filter(|d| d.host == p.b).map(|d| &d.packet[..]).collect();
    assert_eq!(pieces.len(), 2, "one packet in two fragments, nothing else");
    assert!(pieces.iter().all(|f| f.len() <= 1356));
    let data: Vec<u8> = pieces.iter().flat_map(|f| f[20..].iter().copied()).collect();
    assert_eq!(&data[..], &big[20..], "the fragments carry the packet");
    let answers = p.sim.tun_answers();
    assert_eq!(answers.len(), 2, "{answers:?}");
    let v4 = &answers[0].packet;
    assert_eq!((v4[9], v4[20], v4[21]), (1, 3, 4), "ICMP fragmentation needed");
    assert_eq!(u16::from_be_bytes([v4[26], v4[27]]), 1356);
    let v6 = &answers[1].packet;
    assert_eq!((v6[6], v6[40]), (58, 2), "ICMPv6 packet too big");
    assert_eq!(u32::from_be_bytes(v6[44..48].try_into().unwrap()), 1356);
    assert!(answers.iter().all(|a| a.host == p.a));
}

#[test]
fn a_shrink_is_found_within_3_s_and_a_growth_at_the_raise_timer() {
    let mut p = scenario::pair(3, &[link(ms(10), None)], &|_| {});
    // 1400-byte packets (1464 on the wire), 1000 a second, DF clear.
    let s = p.stream(ms(1_000), ms(1), 19_000, 1400);
    p.sim.run_until(at_ms(5_000));
    assert_eq!(measured(&p, p.a), vec![Some(1472)]);
    let _ = s;
    assert!(p.sim.deliveries().iter().filter(|d| d.host == p.b).count() >= 3_980, "all delivered so far");
    // The path's MTU drops to 1400 (an LTE handover, say).
    set_mtu(&mut p, 0, Some(1400));
    let before = p.sim.deliveries().len();
    let mut found = None;
    for t in (5_010..10_000).step_by(10) {
        p.sim.run_until(at_ms(t));
        if found.is_none() && measured(&p, p.a) == vec![Some(1372)] {
            found = Some(t - 5_000);
        }
    }
    let found = found.unwrap_or_else(|| panic!("measured {:?}", measured(&p, p.a)));
    assert!(found <= 3_000, "shrink found after {found} ms");
    // From then on the packets arrive again, in fragments that fit.
    let recovered = p.sim.deliveries()[before..].iter().find(|d| d.host == p.b).map(|d| d.at).expect("delivered again");
    let recovered = recovered - at_ms(5_000);
    assert!(recovered <= ms(3_000), "traffic back after {recovered:?}");
    assert_eq!(p.sim.node(p.a).tunnel_mtu(), Some(1372 - 36));
    // The path grows back: found at the raise timer.
    set_mtu(&mut p, 0, None);
    p.sim.run_until(at_ms(20_000) + CONFIRM_IDLE);
    assert_eq!(measured(&p, p.a), vec![Some(1472)]);
    assert_eq!(p.sim.node(p.a).tunnel_mtu(), Some(1472 - 36));
}

#[test]
fn probing_costs_a_few_hundred_bytes_per_path_and_minute_at_rest() {
    let mut p = scenario::pair(4, &[link(ms(10), Some(1492)), link(ms(20), Some(1420))], &|_| {});
    p.sim.record_arrivals = true;
    p.sim.run_until(at_ms(60_000));
    let start = p.sim.offers().len();
    let minutes = 60;
    p.sim.run_until(at_ms(60_000) + Duration::from_secs(60 * minutes));
    let mtu_types = [MessageType::MtuProbe as u8, MessageType::MtuReply as u8];
    for w in 0..2 {
        let bytes: usize = p.sim.offers()[start..]
            .iter()
            .filter(|a| a.wire == p.wires[w] && mtu_types.contains(&a.msg_type))
            .map(|a| a.len + 28)
            .sum();
        // Sent both ways (probes, and replies), both ends probing: per
        // path (one end's) and minute.
        let per_minute = bytes as f64 / 2.0 / minutes as f64;
        eprintln!("wire {w}: {per_minute:.0} bytes a minute");
        assert!(per_minute <= 400.0, "wire {w}: {per_minute:.0} bytes a minute");
        assert!(per_minute > 0.0, "wire {w}: never confirmed");
    }
    assert_eq!(measured(&p, p.a), vec![Some(1464), Some(1392)]);
    let _ = Time::ZERO;
}

#[test]
fn a_relay_answers_for_a_smaller_second_hop() {
    let mut c = scenario::chain(5, &[link(ms(5), None)], &[link(ms(5), Some(1420))]);
    c.sim.run_until(at_ms(2_000));
    // Host 1's own paths carry 1436-byte packets; the relay's next hop does not.
    c.sim.send_tun(c.a, at_ms(2_000), packet(false, 1400, true));
    c.sim.run_until(at_ms(2_500));
    assert!(c.sim.deliveries().iter().all(|d| d.host != c.b), "nothing too big got through");
    let back: Vec<&Vec<u8>> = c.sim.deliveries().iter().filter(|d| d.host == c.a).map(|d| &d.packet).collect();
    assert_eq!(back.len(), 1, "the relay's answer came back through the tunnel");
    let icmp = back[0];
    assert_eq!((icmp[9], icmp[20], icmp[21]), (1, 3, 4));
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1420 - 28 - 36);
    assert_eq!(&icmp[12..16], &[10, 9, 0, 2], "from the destination, which host 1 routes via the relay");
}
