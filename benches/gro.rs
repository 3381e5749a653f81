//! Criterion benchmark of the GRO toward the offloaded TUN
//! ([`mpvr::sys::gro::Coalescer`]) against the baseline it replaced, in the
//! same run: tun-rs's GRO table over packets copied into its buffers, as the
//! daemon did before (each packet copied behind a virtio-net header's room,
//! then coalesced by tun-rs, which appends each merged payload to the
//! first buffer).
//!
//! A batch is what one link receive hands over: 64 packets of 1400-byte
//! payloads, IPv4, valid checksums, laid one after the other in one storage.
//! Cases: one TCP flow (two items: one holds 64 KiB at most), four TCP
//! flows interleaved (four items), and UDP (nothing merges, every packet alone).
//! Both sides stop where the writes would start: the coalescer after `seal`
//! and the slices of every item, tun-rs after its table is applied.

use std::hint::black_box;
use std::io::IoSlice;
use std::ops::Range;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use mpvr::sys::gro::{Coalescer, MAX_SLICES};
use tun_rs::{GROTable, VIRTIO_NET_HDR_LEN, checksum, checksum_no_fold};

const PACKETS: usize = 64;
const PAYLOAD: usize = 1400;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ACK: u8 = 0x10;

/// One IPv4 packet of flow `flow` (source port 40000 + flow) with a valid IP
/// and transport checksum: TCP (20-byte header, ACK, sequence `seq`) or UDP.
fn packet(proto: u8, flow: u16, seq: u32) -> Vec<u8> {
    let l4 = if proto == TCP { 20 } else { 8 };
    let len = 20 + l4 + PAYLOAD;
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&[10, 9, 0, 1]);
    p[16..20].copy_from_slice(&[10, 9, 0, 2]);
    let sum = !checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    for (i, b) in p[20 + l4..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&(40_000 + flow).to_be_bytes());
    t[2..4].copy_from_slice(&5201u16.to_be_bytes());
    let at = if proto == TCP {
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&7u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = ACK;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        16
    } else {
        t[4..6].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
        6
    };
    // Pseudo-header: addresses, protocol, transport length.
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&p[12..20]);
    pseudo[9] = proto;
    pseudo[10..12].copy_from_slice(&((l4 + PAYLOAD) as u16).to_be_bytes());
    let sum = !checksum(&p[20..], checksum_no_fold(&pseudo, 0));
    p[20 + at..22 + at].copy_from_slice(&sum.to_be_bytes());
    p
}

/// A batch: `flows` flows taking turns, each flow's segments in sequence.
fn batch(proto: u8, flows: u16) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut storage = Vec::new();
    let mut ranges = Vec::new();
    for i in 0..PACKETS {
        let flow = i as u16 % flows;
        let seq = 1_000 + (i / usize::from(flows) * PAYLOAD) as u32;
        let p = packet(proto, flow, seq);
        ranges.push(storage.len()..storage.len() + p.len());
        storage.extend_from_slice(&p);
    }
    (storage, ranges)
}

fn gro(c: &mut Criterion) {
    let mut g = c.benchmark_group("gro_64x1400");
    g.throughput(Throughput::Elements(PACKETS as u64));
    for (name, proto, flows) in [("tcp_1_flow", TCP, 1), ("tcp_4_flows", TCP, 4), ("udp", UDP, 1)] {
        let (storage, ranges) = batch(proto, flows);
        let mut co = Coalescer::default();
        g.bench_function(format!("{name}/mpvr_coalescer"), |b| {
            // `seal` rewrites the first segments' headers in place: every
            // iteration starts from the batch as it was received.
            b.iter_batched_ref(
                || storage.clone(),
                |s| {
                    co.clear();
                    for r in &ranges {
                        co.add(s, r.clone());
                    }
                    co.seal(s);
                    let mut iov = [IoSlice::new(&[]); MAX_SLICES];
                    let mut slices = 0;
                    for i in 0..co.len() {
                        slices += co.slices(i, s, &mut iov);
                    }
                    black_box(slices)
                },
                BatchSize::SmallInput,
            )
        });
        let mut table = GROTable::new();
        let mut bufs: Vec<Vec<u8>> =
            (0..PACKETS).map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + 65_536)).collect();
        g.bench_function(format!("{name}/tun_rs_table_copied"), |b| {
            b.iter_batched_ref(
                || storage.clone(),
                |s| {
                    for (buf, r) in bufs.iter_mut().zip(&ranges) {
                        buf.clear();
                        buf.resize(VIRTIO_NET_HDR_LEN, 0);
                        buf.extend_from_slice(&s[r.clone()]);
                    }
                    table.apply_gro(&mut bufs, VIRTIO_NET_HDR_LEN, false).expect("a valid batch");
                    black_box(bufs[0].len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Both sides must agree on what the batch becomes, or the comparison is
/// of different work: checked once before measuring.
fn check() {
    for (proto, flows, items) in [(TCP, 1, 2), (TCP, 4, 4), (UDP, 1, PACKETS)] {
        let (mut storage, ranges) = batch(proto, flows);
        let mut co = Coalescer::default();
        for r in &ranges {
            co.add(&storage, r.clone());
        }
        co.seal(&mut storage);
        assert_eq!(co.len(), items, "coalescer items for proto {proto}, {flows} flows");
    }
}

fn benches(c: &mut Criterion) {
    check();
    gro(c);
}

criterion_group!(group, benches);
criterion_main!(group);
