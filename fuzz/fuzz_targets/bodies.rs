//! Any bytes as the body of an authenticated control message (a route
//! advert, a probe, a probe reply, a path notice, a path MTU probe or reply): decoding never panics,
//! and what decodes encodes back to the same bytes (nothing is read that
//! is not checked, so a peer cannot make two hosts disagree on a message).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpvr::proto::mesh::Advert;
use mpvr::proto::monitor::{MtuProbeBody, NoticeBody, ProbeBody, ReplyBody};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Advert::decode(data) {
        let mut again = Vec::new();
        a.encode(&mut again);
        assert_eq!(Advert::decode(&again).as_ref().ok(), Some(&a));
    }
    if let Some(p) = ProbeBody::decode(data) {
        let mut again = [0u8; ProbeBody::LEN];
        p.encode(&mut again);
        assert_eq!(&again[..], data);
    }
    if let Some(r) = ReplyBody::decode(data) {
        let mut again = [0u8; ReplyBody::LEN];
        r.encode(&mut again);
        assert_eq!(&again[..], data);
    }
    if let Some(n) = NoticeBody::decode(data) {
        let mut again = [0u8; NoticeBody::LEN];
        n.encode(&mut again);
        assert_eq!(&again[..], data);
    }
    if let Some(m) = MtuProbeBody::decode(data, false) {
        let mut again = [0u8; MtuProbeBody::LEN];
        m.encode(&mut again);
        assert_eq!(&again[..], data);
    }
    if let Some(m) = MtuProbeBody::decode(data, true) {
        let mut again = [0u8; MtuProbeBody::LEN];
        m.encode(&mut again);
        assert_eq!(&again[..], &data[..MtuProbeBody::LEN]);
    }
});
