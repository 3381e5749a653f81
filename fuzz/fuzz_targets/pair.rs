//! Two nodes with a session between them (hosts 1 and 2, one link each),
//! for the targets that fuzz inside a session.

use std::net::SocketAddr;

use mpvr::proto::{BundleConfig, EndpointSpec, HostId, LinkId, NextHop, Node, NodeConfig, Time};

/// A (host 1) and B (host 2, owning 10.9.0.2/32) after a handshake, and A's endpoint.
pub fn pair() -> (Node, Node, SocketAddr) {
    let h = |n| HostId::new(n).unwrap();
    let (ea, eb): (SocketAddr, SocketAddr) = ("192.0.2.1:51820".parse().unwrap(), "192.0.2.2:51820".parse().unwrap());
    let mut a = Node::new(NodeConfig::new(h(1), [1; 32])).unwrap();
    let mut b = Node::new(NodeConfig::new(h(2), [2; 32])).unwrap();
    a.add_link(Time::ZERO, LinkId(1));
    b.add_link(Time::ZERO, LinkId(1));
    let (pa, pb) = (a.public_key(), b.public_key());
    let peer = |host, public_key, remote| BundleConfig {
        host,
        public_key,
        psk: None,
        endpoints: vec![EndpointSpec { remote, link: None }],
    };
    a.add_bundle(peer(h(2), pb, eb)).unwrap();
    b.add_bundle(peer(h(1), pa, ea)).unwrap();
    a.add_route("10.9.0.2/32".parse().unwrap(), NextHop::Host(h(2))).unwrap();
    b.add_route("10.9.0.2/32".parse().unwrap(), NextHop::Local).unwrap();
    b.claim("10.9.0.2/32".parse().unwrap(), h(2));
    mpvr::sim::shake_hands(&mut a, LinkId(1), ea, &mut b, LinkId(1), eb, Time::ZERO);
    (a, b, ea)
}
