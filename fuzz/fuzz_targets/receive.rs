//! Any datagram into a node that has a session: it ends in a counted drop
//! (or, for bytes that happen to be a valid datagram, a delivery), never a
//! panic, and nothing unauthenticated is delivered.
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use mpvr::proto::{LinkId, Node, Received, Time, Transmits};

#[path = "pair.rs"]
mod pair;

static B: Mutex<Option<(Node, SocketAddr)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = B.lock().unwrap();
    let (b, from) = guard.get_or_insert_with(|| {
        let (_, b, ea) = pair::pair();
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
