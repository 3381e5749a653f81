//! Any datagram into a node that has a session: it ends in a counted drop
//! (or, for bytes that happen to be a valid datagram, a delivery), never a
//! panic, and nothing unauthenticated is delivered.
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use mpvr::proto::{EndpointSpec, HostId, LinkId, BundleConfig, NextHop, Node, NodeConfig, Received, Time, Transmits};

fn nodes() -> (Node, Node, SocketAddr) {
    let h = |n| HostId::new(n).unwrap();
    let (ea, eb): (SocketAddr, SocketAddr) = ("192.0.2.1:51820".parse().unwrap(), "192.0.2.2:51820".parse().unwrap());
    let mut a = Node::new(NodeConfig::new(h(1), [1; 32])).unwrap();
    let mut b = Node::new(NodeConfig::new(h(2), [2; 32])).unwrap();
    a.add_link(Time::ZERO, LinkId(1));
    b.add_link(Time::ZERO, LinkId(1));
    let (pa, pb) = (a.public_key(), b.public_key());
    a.add_bundle(BundleConfig {
        host: h(2),
        public_key: pb,
        psk: None,
        endpoints: vec![EndpointSpec { remote: eb, link: None }],
    })
    .unwrap();
    b.add_bundle(BundleConfig {
        host: h(1),
        public_key: pa,
        psk: None,
        endpoints: vec![EndpointSpec { remote: ea, link: None }],
    })
    .unwrap();
    a.add_route("10.9.0.2/32".parse().unwrap(), NextHop::Host(h(2))).unwrap();
    b.add_route("10.9.0.2/32".parse().unwrap(), NextHop::Local).unwrap();
    mpvr::sim::shake_hands(&mut a, LinkId(1), ea, &mut b, LinkId(1), eb, Time::ZERO);
    (a, b, ea)
}

static B: Mutex<Option<(Node, SocketAddr)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = B.lock().unwrap();
    let (b, from) = guard.get_or_insert_with(|| {
        let (_, b, ea) = nodes();
        (b, ea)
    });
    let before = b.stats().drops.total();
    let mut buf = data.to_vec();
    match b.handle_datagram(Time::ZERO, LinkId(1), *from, &mut buf, &mut Transmits::new()) {
        // Forging a datagram that authenticates is the AEAD's to prevent:
        // reaching here would be a finding.
        Received::Deliver(_)
        | Received::Forwarded { .. }
        | Received::Keepalive
        | Received::Probe
        | Received::Advert => {
            panic!("unauthenticated bytes accepted")
        }
        Received::Dropped(_) => assert_eq!(b.stats().drops.total(), before + 1),
        Received::Handshake => {}
    }
});
