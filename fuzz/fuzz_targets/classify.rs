//! Any bytes as inner packets: classification never panics, and the flow
//! table never holds more than its fixed size, whatever the packets say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpvr::proto::Time;
use mpvr::proto::class::{Classifier, Rule};
use mpvr::proto::{Class, class::protocol};

fuzz_target!(|data: &[u8]| {
    let rules = [Rule {
        class: Class::Bulk,
        protocol: Some(protocol::UDP),
        ports: vec![(5000, 5010)],
        prefixes: vec!["10.1.0.0/16".parse().unwrap()],
        dscp: vec![],
    }];
    let mut c = Classifier::new(&rules, [1, 2]);
    // Packets are the input cut at every 0xff byte; each 1 ms after the last.
    for (i, p) in data.split(|&b| b == 0xff).enumerate() {
        c.classify(Time::from_nanos(i as u64 * 1_000_000), p);
    }
    assert!(c.flows().live(Time::from_nanos(data.len() as u64 * 1_000_000)) <= 1024);
});
