//! Bad input gets a counted drop and changes nothing (DESIGN.md invariants 5 and 6).

use std::net::SocketAddr;

use mpvr::proto::{
    BundleConfig, DropReason, EndpointSpec, HostId, Identity, LinkId, NextHop, Node, NodeConfig, Openings, Received,
    Time, Transmits,
};
use mpvr::sim::{shake_hands, traffic};
use proptest::prelude::*;

fn host(n: u32) -> HostId {
    HostId::new(n).unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn private(n: u32) -> [u8; 32] {
    [n as u8; 32]
}

const A_EP: &str = "192.0.2.1:51820";
const B_EP: &str = "192.0.2.2:51820";

/// Node `me` with neighbour `other` reachable on link 1 at `other_ep` (none: learned).
fn node(me: u32, other: u32, other_ep: Option<&str>) -> Node {
    let mut n = Node::new(NodeConfig::new(host(me), private(me))).unwrap();
    n.add_link(Time::ZERO, LinkId(1));
    let endpoints = other_ep.map(|e| EndpointSpec { remote: addr(e), link: Some(LinkId(1)) }).into_iter().collect();
    let public_key = Identity::new(private(other)).public();
    n.add_bundle(BundleConfig { host: host(other), public_key, psk: None, endpoints }).unwrap();
    n.add_route(format!("10.9.0.{other}/32").parse().unwrap(), NextHop::Host(host(other))).unwrap();
    n.add_route(format!("10.9.0.{me}/32").parse().unwrap(), NextHop::Local).unwrap();
    n
}

/// Hosts 1 and 2 with a session.
fn pair() -> (Node, Node) {
    let mut a = node(1, 2, Some(B_EP));
    let mut b = node(2, 1, Some(A_EP));
    shake_hands(&mut a, LinkId(1), addr(A_EP), &mut b, LinkId(1), addr(B_EP), Time::ZERO);
    (a, b)
}

fn packet(from: u32, to: u32, id: u64) -> Vec<u8> {
    let ip = |n| format!("10.9.0.{n}").parse().unwrap();
    traffic::udp_packet(ip(from), ip(to), id, 120)
}

/// A sends `count` packets to B; returns B and the sealed datagrams.
fn setup(count: u64) -> (Node, Vec<Vec<u8>>) {
    let (mut a, b) = pair();
    let mut out = Transmits::new();
    let mut dgrams = Vec::new();
    for id in 0..count {
        a.handle_tun_packet(Time::ZERO, &packet(1, 2, id), &mut out).unwrap();
        dgrams.extend(out.iter().map(|t| t.datagram.to_vec()));
        out.clear();
    }
    (b, dgrams)
}

const FROM_A: &str = A_EP;

fn deliver(b: &mut Node, d: &[u8]) -> Received {
    let mut buf = d.to_vec();
    b.handle_datagram(Time::ZERO, LinkId(1), addr(FROM_A), &mut buf, &mut Transmits::new())
}

/// Handle `batch` on `b` the daemon's way (`mpvr::proto::opening`): every
/// datagram planned under the lock, opened outside it, then handled.
fn deliver_ahead(b: &mut Node, batch: &[Vec<u8>]) -> Vec<Received> {
    let mut bufs = batch.to_vec();
    let mut openings = Openings::new();
    for d in &bufs {
        b.plan_open(Time::ZERO, d, &mut openings);
    }
    for (i, d) in bufs.iter_mut().enumerate() {
        openings.open(i, d);
    }
    let mut out = Transmits::new();
    let mut got = Vec::new();
    for (i, d) in bufs.iter_mut().enumerate() {
        got.push(b.handle_opened(Time::ZERO, LinkId(1), addr(FROM_A), d, openings.ahead(i), &mut out));
    }
    got
}

/// One batch with a datagram of each kind, from `d` (4 genuine ones):
/// genuine, copies, forged, the other key phase, garbage, a forged
/// sequence number.
fn mixed_batch(d: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let flip = |i: usize, at: usize| {
        let mut x: Vec<u8> = d[i].clone();
        x[at] ^= 1;
        x
    };
    let (g, garbage) = (|i: usize| d[i].clone(), vec![1, 0, 0, 0, 0, 0, 0, 2]);
    vec![g(0), g(0), flip(1, 40), g(1), flip(2, 3), g(2), garbage, g(3), g(1), flip(3, 12), g(3)]
}

#[test]
fn opening_ahead_decides_as_opening_inline() {
    let (mut inline_b, d) = setup(4);
    let inline: Vec<Received> = mixed_batch(&d).iter().map(|x| deliver(&mut inline_b, x)).collect();
    let (mut ahead_b, d) = setup(4);
    let ahead = deliver_ahead(&mut ahead_b, &mixed_batch(&d));
    assert_eq!(ahead, inline);
    assert_eq!(inline.iter().filter(|r| matches!(r, Received::Deliver(_))).count(), 4, "{inline:?}");
    assert_eq!(ahead_b.stats().drops, inline_b.stats().drops);
    assert_eq!(ahead_b.stats().tun_out.packets, inline_b.stats().tun_out.packets);
}

#[test]
fn a_result_opened_with_other_keys_is_never_taken() {
    // Opened ahead with one node's session, handled by another's (as when
    // the session of that key phase is replaced between the steps): the
    // bytes are plaintext now and the keys are not the session's.
    let (mut b1, d) = setup(1);
    let (mut b2, _) = setup(1);
    let mut openings = Openings::new();
    let mut buf = d[0].clone();
    b1.plan_open(Time::ZERO, &buf, &mut openings);
    openings.open(0, &mut buf);
    let r = b2.handle_opened(Time::ZERO, LinkId(1), addr(FROM_A), &mut buf, openings.ahead(0), &mut Transmits::new());
    assert_eq!(r, Received::Dropped(DropReason::AuthFailed));
    assert_eq!(b2.stats().tun_out.packets, 0);
    // The one that opened it still takes it.
    let r = b1.handle_opened(Time::ZERO, LinkId(1), addr(FROM_A), &mut buf, openings.ahead(0), &mut Transmits::new());
    assert!(matches!(r, Received::Deliver(_)), "{r:?}");
}

#[test]
fn a_result_is_taken_for_its_own_datagram_only() {
    let (mut b, d) = setup(2);
    let mut openings = Openings::new();
    let mut bufs = d.clone();
    for (i, x) in bufs.iter_mut().enumerate() {
        b.plan_open(Time::ZERO, x, &mut openings);
        openings.open(i, x);
    }
    // Datagram 1 handed with datagram 0's result: refused, nothing marked.
    let mut out = Transmits::new();
    let r = b.handle_opened(Time::ZERO, LinkId(1), addr(FROM_A), &mut bufs[1], openings.ahead(0), &mut out);
    assert_eq!(r, Received::Dropped(DropReason::AuthFailed));
    let r = b.handle_opened(Time::ZERO, LinkId(1), addr(FROM_A), &mut bufs[0], openings.ahead(0), &mut out);
    assert!(matches!(r, Received::Deliver(_)), "{r:?}");
    // A result asked for past the batch: opened in place as usual.
    assert!(matches!(
        b.handle_opened(Time::ZERO, LinkId(1), addr(FROM_A), &mut d[1].clone(), openings.ahead(7), &mut out),
        Received::Deliver(_)
    ));
}

#[test]
fn each_kind_of_bad_datagram_has_its_reason() {
    let (mut b, d) = setup(1);
    let good = d[0].clone();
    let mut with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut x = good.clone();
        f(&mut x);
        deliver(&mut b, &x)
    };
    assert_eq!(with(&|x| x.truncate(10)), Received::Dropped(DropReason::Truncated));
    assert_eq!(with(&|x| x.truncate(30)), Received::Dropped(DropReason::Truncated));
    assert_eq!(with(&|x| x[0] = 9), Received::Dropped(DropReason::BadVersion));
    assert_eq!(with(&|x| x[1] = 99), Received::Dropped(DropReason::UnknownType));
    let cookie = |x: &mut Vec<u8>| {
        x[1] = 7;
        x[3] &= 1;
    };
    // A cookie reply while no handshake of ours runs.
    assert_eq!(with(&cookie), Received::Dropped(DropReason::HandshakeUnexpected));
    // The type is authenticated: a data packet relabelled as a probe
    // (flags a probe may carry) fails; with the data-only flag it is not
    // even opened.
    let relabel = |x: &mut Vec<u8>| {
        x[1] = 3;
        x[3] &= 1;
    };
    assert_eq!(with(&relabel), Received::Dropped(DropReason::AuthFailed));
    assert_eq!(with(&|x| x[1] = 3), Received::Dropped(DropReason::BadFlags));
    assert_eq!(with(&|x| x[3] = 8), Received::Dropped(DropReason::BadFlags));
    // The sole and real-time flags are authenticated too.
    assert_eq!(with(&|x| x[3] ^= 2), Received::Dropped(DropReason::AuthFailed));
    assert_eq!(with(&|x| x[3] ^= 4), Received::Dropped(DropReason::AuthFailed));
    // The other key phase: no session there.
    assert_eq!(with(&|x| x[3] ^= 1), Received::Dropped(DropReason::NoSession));
    // A handshake message that does not authenticate.
    let init = |x: &mut Vec<u8>| {
        x[1] = 5;
        x[3] = 0;
    };
    assert_eq!(with(&init), Received::Dropped(DropReason::HandshakeInvalid));
    assert_eq!(with(&|x| x[8..12].copy_from_slice(&7u32.to_be_bytes())), Received::Dropped(DropReason::WrongReceiver));
    assert_eq!(with(&|x| x[4..8].copy_from_slice(&7u32.to_be_bytes())), Received::Dropped(DropReason::UnknownSender));
    assert_eq!(with(&|x| x[12..20].fill(0)), Received::Dropped(DropReason::TooOld));
    assert_eq!(with(&|x| x[40] ^= 1), Received::Dropped(DropReason::AuthFailed));
    let mut buf = good.clone();
    let r = b.handle_datagram(Time::ZERO, LinkId(9), addr(FROM_A), &mut buf, &mut Transmits::new());
    assert_eq!(r, Received::Dropped(DropReason::UnknownLink));
    // None of that changed anything: the genuine datagram is still accepted, once.
    assert!(matches!(deliver(&mut b, &good), Received::Deliver(_)));
    assert_eq!(deliver(&mut b, &good), Received::Dropped(DropReason::Duplicate));
    let drops = &b.stats().drops;
    assert_eq!(drops.total(), 18);
    assert_eq!(b.stats().tun_out.packets, 1);
}

#[test]
fn bad_tun_packets_are_counted() {
    let (mut a, _b) = pair();
    let mut out = Transmits::new();
    let p = |dst: &str| traffic::udp_packet("10.9.0.1".parse().unwrap(), dst.parse().unwrap(), 1, 100);
    let first = a.handle_tun_packet(Time::ZERO, &p("10.9.0.2"), &mut out).unwrap().seq.unwrap();
    let before = a.stats().drops.total();
    assert_eq!(a.handle_tun_packet(Time::ZERO, &[], &mut out), Err(DropReason::MalformedIp));
    assert_eq!(a.handle_tun_packet(Time::ZERO, &[0x45; 10], &mut out), Err(DropReason::MalformedIp));
    assert_eq!(a.handle_tun_packet(Time::ZERO, &p("10.8.0.1"), &mut out), Err(DropReason::NoRoute));
    assert_eq!(a.handle_tun_packet(Time::ZERO, &p("10.9.0.1"), &mut out), Err(DropReason::LocalDestination));
    assert_eq!(a.handle_tun_packet(Time::ZERO, &vec![0x45; 70_000], &mut out), Err(DropReason::TooBig));
    a.remove_link(Time::ZERO, LinkId(1));
    out.clear();
    assert_eq!(a.handle_tun_packet(Time::ZERO, &p("10.9.0.2"), &mut out), Err(DropReason::NoPath));
    assert!(out.is_empty());
    assert_eq!(a.stats().drops.total() - before, 6);
    // No sequence number was spent on any of them.
    a.add_link(Time::ZERO, LinkId(1));
    let sent = a.handle_tun_packet(Time::ZERO, &p("10.9.0.2"), &mut out).unwrap();
    assert_eq!(sent.seq.unwrap().0, first.0 + 1);
}

#[test]
fn every_copy_is_byte_identical() {
    let mut a = Node::new(NodeConfig::new(host(1), private(1))).unwrap();
    for l in 1..=3 {
        a.add_link(Time::ZERO, LinkId(l));
    }
    let endpoints = vec![
        EndpointSpec { remote: addr(B_EP), link: None },
        EndpointSpec { remote: addr("198.51.100.2:1"), link: Some(LinkId(3)) },
    ];
    let public_key = Identity::new(private(2)).public();
    a.add_bundle(BundleConfig { host: host(2), public_key, psk: None, endpoints }).unwrap();
    a.add_route("0.0.0.0/0".parse().unwrap(), NextHop::Host(host(2))).unwrap();
    let mut b = node(2, 1, Some(A_EP));
    shake_hands(&mut a, LinkId(1), addr(A_EP), &mut b, LinkId(1), addr(B_EP), Time::ZERO);
    let mut out = Transmits::new();
    let sealed_before = a.stats().sealed.packets;
    let sent = a.handle_tun_packet(Time::ZERO, &packet(1, 2, 1), &mut out).unwrap();
    // Unpinned endpoint: one path per link; pinned one: one path.
    assert_eq!(sent.copies, 4);
    assert_eq!(out.len(), 1, "sealed once");
    assert_eq!(out.copies(), 4);
    assert_eq!(a.stats().sealed.packets - sealed_before, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn random_bytes_end_in_a_counted_drop(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let (mut b, good) = setup(1);
        let before = b.stats().drops.clone();
        let r = deliver(&mut b, &bytes);
        let Received::Dropped(reason) = r else { panic!("random bytes were accepted: {r:?}") };
        prop_assert_eq!(b.stats().drops.get(reason), before.get(reason) + 1);
        prop_assert_eq!(b.stats().drops.total(), before.total() + 1);
        // Nothing changed: the genuine packet is still accepted.
        prop_assert!(matches!(deliver(&mut b, &good[0]), Received::Deliver(_)));
    }

    #[test]
    fn any_modified_datagram_is_refused_and_changes_nothing(
        which in 0usize..4,
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<Option<prop::sample::Index>>(),
        ahead in any::<bool>(),
    ) {
        let (mut b, d) = setup(4);
        let good = &d[which];
        let mut bad = good.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        if let Some(c) = cut {
            bad.truncate(c.index(bad.len()));
        }
        let r = if ahead { deliver_ahead(&mut b, &[bad])[0].clone() } else { deliver(&mut b, &bad) };
        prop_assert!(matches!(r, Received::Dropped(_)), "{:?}", r);
        prop_assert_eq!(b.stats().tun_out.packets, 0);
        // The genuine packets are all still accepted.
        for g in &d {
            prop_assert!(matches!(deliver(&mut b, g), Received::Deliver(_)));
        }
    }
}

#[test]
fn endpoints_can_change_and_paths_follow() {
    let mut a = node(1, 2, Some(B_EP));
    a.add_link(Time::ZERO, LinkId(2));
    let eps = vec![
        EndpointSpec { remote: addr("192.0.2.2:51820"), link: Some(LinkId(1)) },
        EndpointSpec { remote: addr("198.51.100.2:51820"), link: None },
    ];
    a.set_endpoints(host(2), eps).unwrap();
    let paths: Vec<_> = a.bundle(host(2)).unwrap().paths().iter().map(|p| (p.addr.link.0, p.addr.remote)).collect();
    assert_eq!(
        paths,
        vec![(1, addr("192.0.2.2:51820")), (1, addr("198.51.100.2:51820")), (2, addr("198.51.100.2:51820"))]
    );
    a.set_endpoints(host(2), vec![]).unwrap();
    assert!(a.bundle(host(2)).unwrap().paths().is_empty());
    assert!(a.set_endpoints(host(9), vec![]).is_err());
}

#[test]
fn a_peer_behind_nat_is_learned_from_authenticated_packets_only() {
    // B knows no endpoint for A: A is behind NAT and initiates.
    let mut a = node(1, 2, Some(B_EP));
    let mut b = node(2, 1, None);
    let nat = addr("203.0.113.7:40001");
    let reply = packet(2, 1, 9);
    let mut out = Transmits::new();
    assert_eq!(b.handle_tun_packet(Time::ZERO, &reply, &mut out), Err(DropReason::NoPath));
    // A forged initiation from the NAT address teaches nothing (and
    // without mac1 it costs one HMAC).
    let mut forged = vec![0u8; 20 + 137];
    forged[..20].copy_from_slice(&[2, 5, 1, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
    forged[0] = mpvr::proto::wire::VERSION;
    assert_eq!(
        b.handle_datagram(Time::ZERO, LinkId(1), nat, &mut forged, &mut out),
        Received::Dropped(DropReason::HandshakeMac)
    );
    assert_eq!(b.stats().handshake_work, 0);
    assert!(b.bundle(host(1)).unwrap().paths().is_empty());
    // A genuine handshake does, and B answers on that path.
    shake_hands(&mut a, LinkId(1), nat, &mut b, LinkId(1), addr(B_EP), Time::ZERO);
    let sent = b.handle_tun_packet(Time::ZERO, &reply, &mut out).unwrap();
    assert_eq!(sent.copies, 1);
    assert_eq!(out.iter().last().unwrap().paths[0].remote, nat);
    // The NAT moves A to a new port: the path moves, it does not multiply.
    let moved = addr("203.0.113.7:40999");
    let mut next = Transmits::new();
    a.handle_tun_packet(Time::ZERO, &packet(1, 2, 5), &mut next).unwrap();
    let mut d = next.iter().next().unwrap().datagram.to_vec();
    assert!(matches!(b.handle_datagram(Time::ZERO, LinkId(1), moved, &mut d, &mut out), Received::Deliver(_)));
    let paths: Vec<_> = b.bundle(host(1)).unwrap().paths().iter().collect();
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].addr.remote, moved);
    assert!(paths[0].learned);
}

#[test]
fn replayed_datagrams_teach_no_path_and_draw_no_traffic() {
    // A and B have a session; an attacker on one of A's segments captured
    // A's datagrams and sends them to B again, from its own address (or one
    // it forges). B refuses them as duplicates, learns no path, and never
    // sends a datagram toward that address.
    let mut a = node(1, 2, Some(B_EP));
    let mut b = node(2, 1, Some(A_EP));
    shake_hands(&mut a, LinkId(1), addr(A_EP), &mut b, LinkId(1), addr(B_EP), Time::ZERO);
    let mut captured = Vec::new();
    for i in 0..50 {
        let mut out = Transmits::new();
        a.handle_tun_packet(Time::ZERO, &packet(1, 2, i), &mut out).unwrap();
        for t in out.iter() {
            captured.push(t.datagram.to_vec());
        }
    }
    let mut out = Transmits::new();
    for d in &captured {
        assert!(matches!(
            b.handle_datagram(Time::ZERO, LinkId(1), addr(A_EP), &mut d.clone(), &mut out),
            Received::Deliver(_)
        ));
    }
    let attacker = addr("198.51.100.66:4444");
    let before = b.stats().drops.get(DropReason::Duplicate);
    let mut sent_to_attacker = 0;
    for (i, d) in captured.iter().enumerate() {
        let now = Time::ZERO + std::time::Duration::from_millis(i as u64 * 10);
        let r = b.handle_datagram(now, LinkId(1), attacker, &mut d.clone(), &mut out);
        assert_eq!(r, Received::Dropped(DropReason::Duplicate));
        b.handle_timeout(now, &mut out);
        b.handle_tun_packet(now, &packet(2, 1, 100 + i as u64), &mut out).unwrap();
        sent_to_attacker += out.iter().flat_map(|t| t.paths).filter(|p| p.remote == attacker).count();
        out.clear();
    }
    assert_eq!(b.stats().drops.get(DropReason::Duplicate) - before, captured.len() as u64);
    assert!(b.bundle(host(1)).unwrap().paths().iter().all(|p| p.addr.remote != attacker), "a path to the attacker");
    assert_eq!(sent_to_attacker, 0);
}

#[test]
fn a_peer_may_send_only_from_the_addresses_routed_to_it() {
    // Host 1 is authenticated, but its packets from an address not routed
    // to it here (another host's, or one nobody owns) are not delivered.
    let (mut a, mut b) = pair();
    for src in ["10.9.0.77", "10.9.0.2"] {
        let mut p = packet(1, 2, 7);
        p[12..16].copy_from_slice(&src.parse::<std::net::Ipv4Addr>().unwrap().octets());
        let mut out = Transmits::new();
        // A seals what its TUN gives it; B is the one to check.
        a.handle_tun_packet(Time::ZERO, &p, &mut out).unwrap();
        let d = out.iter().next().unwrap().datagram.to_vec();
        assert_eq!(deliver(&mut b, &d), Received::Dropped(DropReason::BadSource), "{src}");
    }
    assert_eq!(b.stats().drops.get(DropReason::BadSource), 2);
    assert_eq!(b.bundle(host(1)).unwrap().stats().bad_source, 2);
    assert_eq!(b.stats().tun_out.packets, 0);
    // Its own address still works.
    let mut out = Transmits::new();
    a.handle_tun_packet(Time::ZERO, &packet(1, 2, 8), &mut out).unwrap();
    let d = out.iter().next().unwrap().datagram.to_vec();
    assert!(matches!(deliver(&mut b, &d), Received::Deliver(_)));
}
