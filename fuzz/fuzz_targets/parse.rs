//! Any bytes: the checked view and header parser never panic, and what
//! parses emits back to the same header bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpvr::proto::wire::{HEADER_LEN, Header, Packet};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data)
        && let Ok(h) = Header::parse(&p)
    {
        let mut again = [0u8; HEADER_LEN];
        h.emit(&mut again);
        assert_eq!(&again[..], p.header());
    }
    let _ = mpvr::proto::ip::destination(data);
});
