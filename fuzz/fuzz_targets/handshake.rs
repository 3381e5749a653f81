//! Any bytes as a handshake initiation: refused without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpvr::proto::HostId;
use mpvr::proto::handshake::{Identity, RESPONSE_LEN, respond};

fuzz_target!(|data: &[u8]| {
    let (a, b) = (Identity::new([1; 32]), Identity::new([2; 32]));
    let (ha, hb) = (HostId::new(1).unwrap(), HostId::new(2).unwrap());
    let mut reply = [0u8; RESPONSE_LEN];
    assert!(respond([3; 32], &b, &a.public(), &[0; 32], ha, hb, false, true, data, &mut reply).is_err());
});
