//! Any body, sealed inside a real session as one of the authenticated
//! control messages (a route advert, a probe, a probe reply, a path notice,
//! an MTU probe or reply), into the node at the other end: it is handled or
//! ends in a counted drop, never a panic; it delivers nothing to the TUN,
//! and an advert without its origin's signature changes no route and binds
//! no key (an authenticated neighbour is not trusted).
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use mpvr::proto::wire::MessageType;
use mpvr::proto::{HostId, LinkId, Node, Received, Time, Transmits};

const TYPES: [MessageType; 6] = [
    MessageType::RouteAdvert,
    MessageType::Probe,
    MessageType::ProbeReply,
    MessageType::PathNotice,
    MessageType::MtuProbe,
    MessageType::MtuReply,
];

#[path = "pair.rs"]
mod pair;

struct Pair {
    a: Node,
    b: Node,
    from: SocketAddr,
}

static PAIR: Mutex<Option<Pair>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    let ty = TYPES[usize::from(which) % TYPES.len()];
    let mut guard = PAIR.lock().unwrap();
    let p = guard.get_or_insert_with(|| {
        let (a, b, from) = pair::pair();
        Pair { a, b, from }
    });
    let mut out = Transmits::new();
    if !p.a.seal_for_fuzzing(Time::ZERO, HostId::new(2).unwrap(), ty, body, &mut out) {
        return;
    }
    let Some(t) = out.iter().next() else { return };
    let mut datagram = t.datagram.to_vec();
    let routes = p.b.routes().iter().count();
    let keys = p.b.origin_keys().len();
    let tun_out = p.b.stats().tun_out.packets;
    let r = p.b.handle_datagram(Time::ZERO, LinkId(1), p.from, &mut datagram, &mut Transmits::new());
    assert!(!matches!(r, Received::Deliver(_) | Received::Forwarded { .. }), "a control message delivered: {r:?}");
    assert_eq!(p.b.stats().tun_out.packets, tun_out);
    if ty == MessageType::RouteAdvert {
        // No fuzzed body carries A's signature over itself.
        assert_eq!(p.b.routes().iter().count(), routes, "an unsigned advert changed the routes");
        assert_eq!(p.b.origin_keys().len(), keys, "an unsigned advert bound a key");
    }
});
