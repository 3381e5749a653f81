//! Criterion benchmarks of the per-packet work in the core: header encode and
//! decode, window check + mark, and a full send + receive through two nodes
//! (route, seal once, fan out to 2 paths, window, open, deliver) by packet size.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mpvr::proto::window::{DEFAULT_WINDOW_PACKETS, ReplayWindow};
use mpvr::proto::wire::{HEADER_LEN, Header, MessageType, OVERHEAD, Packet};
use mpvr::proto::{
    BundleConfig, Cipher, EndpointSpec, HostId, Identity, LinkId, NextHop, Node, NodeConfig, Received, Seq,
    SessionKeys, Time, Transmits,
};
use mpvr::sim::traffic;

fn host(n: u32) -> HostId {
    HostId::new(n).expect("nonzero")
}

fn header(c: &mut Criterion) {
    let h = Header {
        msg_type: MessageType::Data,
        hop_limit: 8,
        key_phase: false,
        sole: false,
        realtime: false,
        sender: host(1),
        receiver: host(2),
        seq: Seq(77),
    };
    let mut buf = [0u8; OVERHEAD];
    let mut g = c.benchmark_group("header");
    g.bench_function("emit", |b| b.iter(|| black_box(&h).emit(black_box(&mut buf[..]))));
    h.emit(&mut buf);
    g.bench_function("parse", |b| {
        b.iter(|| Header::parse(&Packet::new_checked(black_box(&buf[..])).expect("long enough")).expect("valid"))
    });
    g.finish();
}

fn window(c: &mut Criterion) {
    let mut g = c.benchmark_group("window");
    g.bench_function("check_mark_in_order", |b| {
        let mut w = ReplayWindow::new(DEFAULT_WINDOW_PACKETS);
        let mut seq = 0u64;
        b.iter(|| {
            seq += 1;
            let s = Seq(black_box(seq));
            (w.check(s), w.mark(s))
        })
    });
    g.bench_function("check_duplicate", |b| {
        let mut w = ReplayWindow::new(DEFAULT_WINDOW_PACKETS);
        for s in 1..=1000 {
            w.mark(Seq(s));
        }
        b.iter(|| w.check(Seq(black_box(500))))
    });
    g.finish();
}

fn node(me: u32, other: u32, links: &[(u32, &str)]) -> Node {
    let mut n = Node::new(NodeConfig::new(host(me), [me as u8; 32])).expect("valid config");
    let mut endpoints = Vec::new();
    for &(l, ep) in links {
        n.add_link(Time::ZERO, LinkId(l));
        endpoints.push(EndpointSpec { remote: ep.parse().expect("endpoint"), link: Some(LinkId(l)) });
    }
    let public_key = Identity::new([other as u8; 32]).public();
    n.add_bundle(BundleConfig { host: host(other), public_key, psk: None, endpoints }).expect("neighbour");
    n.add_route(format!("10.9.0.{other}/32").parse().expect("prefix"), NextHop::Host(host(other))).expect("route");
    n
}

/// The cryptographic floor of the data path, for ratios: one seal and one
/// open of the same size, nothing else; ChaCha20-Poly1305 (what the node
/// benches below use) and AES-256-GCM (what hosts with AES instructions
/// agree on).
fn seal_open_baseline(c: &mut Criterion) {
    for (group, cipher) in
        [("baseline_seal_open", Cipher::ChaCha20Poly1305), ("baseline_seal_open_aes256gcm", Cipher::Aes256Gcm)]
    {
        let mut g = c.benchmark_group(group);
        for size in [64usize, 512, 1400] {
            let a = SessionKeys::from_shared_secret(cipher, &[3; 32], host(1), host(2));
            let b = SessionKeys::from_shared_secret(cipher, &[3; 32], host(2), host(1));
            let head = [0u8; HEADER_LEN];
            let mut buf = vec![0u8; size + mpvr::proto::wire::TAG_LEN];
            let mut seq = 0;
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bch, _| {
                bch.iter(|| {
                    seq += 1;
                    let tag = a.seal(Seq(seq), &head, &mut buf[..size]);
                    buf[size..].copy_from_slice(&tag);
                    b.open(Seq(seq), &head, &mut buf).expect("authentic")
                })
            });
        }
        g.finish();
    }
}

/// A packet from the TUN at A to delivery at B, both copies offered to B
/// (the second is authenticated, to credit its path, then dropped as a
/// duplicate).
fn send_receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("send_receive_2_paths");
    for size in [64usize, 512, 1400] {
        let mut a = node(1, 2, &[(1, "192.0.2.2:51820"), (2, "198.51.100.2:51820")]);
        let mut b = node(2, 1, &[(1, "192.0.2.1:51820"), (2, "198.51.100.1:51820")]);
        let from: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let to: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        mpvr::sim::shake_hands(&mut a, LinkId(1), from, &mut b, LinkId(1), to, Time::ZERO);
        let packet = traffic::udp_packet("10.9.0.1".parse().expect("ip"), "10.9.0.2".parse().expect("ip"), 1, size);
        let mut out = Transmits::new();
        let mut rx_out = Transmits::new();
        let mut buf = vec![0u8; size + OVERHEAD];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |bch, _| {
            bch.iter(|| {
                out.clear();
                a.handle_tun_packet(Time::ZERO, &packet, &mut out).expect("sent");
                let t = out.iter().next().expect("one datagram");
                let mut delivered = 0;
                for path in t.paths {
                    buf.copy_from_slice(t.datagram);
                    if let Received::Deliver(r) = b.handle_datagram(Time::ZERO, path.link, from, &mut buf, &mut rx_out)
                    {
                        delivered += r.len() + HEADER_LEN;
                    }
                }
                black_box(delivered)
            })
        });
    }
    g.finish();
}

/// Classifying one packet: what each kind of traffic costs (target: under 50 ns).
fn classify(c: &mut Criterion) {
    use mpvr::proto::class::Classifier;
    use mpvr::sim::traffic::udp_packet_marked;
    let ip = |n: u8| std::net::IpAddr::from([10, 9, 0, n]);
    let ef = udp_packet_marked(ip(1), ip(2), 1, 200, 46);
    let mut rtp = udp_packet_marked(ip(1), ip(2), 1, 200, 0);
    rtp[28] = 0x80;
    rtp[29] = 111;
    let mut tcp = udp_packet_marked(ip(1), ip(2), 1, 1400, 0);
    tcp[9] = 6;
    let udp = udp_packet_marked(ip(1), ip(2), 1, 1200, 0);
    let mut g = c.benchmark_group("classify");
    for (name, p) in [("dscp_ef", &ef), ("rtp", &rtp), ("tcp", &tcp), ("udp_flow_table", &udp)] {
        let mut cl = Classifier::new(&[], [7, 9]);
        let mut t = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                t += 20_000;
                cl.classify(Time::from_nanos(t), black_box(p))
            })
        });
    }
    g.finish();
}

/// Packets per batch in [`core_scaling`]: what one TUN read gives under load.
const SCALING_BATCH: u64 = 64;

/// Core scaling of the send path (and [`core_scaling_receive`]): `threads` threads share one node behind a
/// mutex, as the daemon's readers do; each takes a batch of 1400-byte
/// packets through the node under the lock (route, classify, sequence
/// numbers, fan out) and seals it, after releasing the lock ("outside", the
/// daemon's shape) or before ("inside": one core seals at a time). Per
/// packet: compare 2 threads with 1 in the same run.
fn core_scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_scaling_send_1400");
    g.throughput(Throughput::Elements(SCALING_BATCH));
    for (name, threads, outside) in [("1_thread", 1, true), ("2_threads_seal_inside", 2, false), ("2_threads", 2, true)]
    {
        let mut a = node(1, 2, &[(1, "192.0.2.2:51820"), (2, "198.51.100.2:51820")]);
        let mut b = node(2, 1, &[(1, "192.0.2.1:51820"), (2, "198.51.100.1:51820")]);
        let from: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let to: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        mpvr::sim::shake_hands(&mut a, LinkId(1), from, &mut b, LinkId(1), to, Time::ZERO);
        let a = std::sync::Mutex::new(a);
        let packet = traffic::udp_packet("10.9.0.1".parse().expect("ip"), "10.9.0.2".parse().expect("ip"), 1, 1400);
        g.bench_function(name, |bch| {
            bch.iter_custom(|batches| {
                let t0 = std::time::Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..threads {
                        let (a, packet) = (&a, &packet);
                        // Thread t does batches t, t + threads, ...
                        let mine = (batches + threads - 1 - t) / threads;
                        scope.spawn(move || {
                            let mut out = Transmits::new();
                            for _ in 0..mine {
                                {
                                    let mut a = a.lock().expect("not poisoned");
                                    for _ in 0..SCALING_BATCH {
                                        a.handle_tun_packet(Time::ZERO, packet, &mut out).expect("sent");
                                    }
                                    if !outside {
                                        out.seal();
                                    }
                                }
                                out.seal();
                                black_box(out.bytes().len());
                                out.clear();
                            }
                        });
                    }
                });
                t0.elapsed()
            })
        });
    }
    g.finish();
}

/// Core scaling of the receive path: `threads` threads share node B behind a
/// mutex, as the daemon's link readers do; each takes a batch of 64 sealed
/// 1400-byte datagrams (made beforehand, not timed) and either handles it
/// under the lock ("inside": one core opens at a time, as before) or plans
/// it under the lock, opens it outside and handles it under the lock again
/// (the daemon's shape, [`mpvr::proto::opening`]). Every datagram must be
/// delivered: a bench that dropped some would measure less work.
fn core_scaling_receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_scaling_receive_1400");
    g.throughput(Throughput::Elements(SCALING_BATCH));
    g.sample_size(30);
    for (name, threads, outside) in [("1_thread", 1, true), ("2_threads_open_inside", 2, false), ("2_threads", 2, true)]
    {
        let mut a = node(1, 2, &[(1, "192.0.2.2:51820")]);
        let mut b = node(2, 1, &[(1, "192.0.2.1:51820")]);
        let from: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let to: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        mpvr::sim::shake_hands(&mut a, LinkId(1), from, &mut b, LinkId(1), to, Time::ZERO);
        let b = std::sync::Mutex::new(b);
        let packet = traffic::udp_packet("10.9.0.1".parse().expect("ip"), "10.9.0.2".parse().expect("ip"), 1, 1400);
        let len = packet.len() + OVERHEAD;
        let mut out = Transmits::new();
        let mut made: Vec<u8> = Vec::new();
        g.bench_function(name, |bch| {
            bch.iter_custom(|batches| {
                made.clear();
                for _ in 0..batches * SCALING_BATCH {
                    out.clear();
                    a.handle_tun_packet(Time::ZERO, &packet, &mut out).expect("sent");
                    made.extend_from_slice(out.iter().next().expect("one datagram").datagram);
                }
                assert_eq!(made.len() as u64, batches * SCALING_BATCH * len as u64);
                let batch_len = SCALING_BATCH as usize * len;
                let delivered = std::sync::atomic::AtomicU64::new(0);
                let chunks: Vec<std::sync::Mutex<&mut [u8]>> =
                    made.chunks_mut(batch_len).map(std::sync::Mutex::new).collect();
                let next = std::sync::atomic::AtomicUsize::new(0);
                let t0 = std::time::Instant::now();
                std::thread::scope(|scope| {
                    // Each thread takes the next batch not taken, under the
                    // node's lock: batches reach the node in sequence, as two
                    // links' copies do, however the threads are scheduled (a
                    // fixed split, or a thread preempted between taking a
                    // batch and locking, lets the other run ahead past the
                    // window).
                    for _ in 0..threads {
                        let (b, delivered, chunks, next) = (&b, &delivered, &chunks, &next);
                        scope.spawn(move || {
                            let mut rx_out = Transmits::new();
                            let mut openings = mpvr::proto::Openings::new();
                            let mut n = 0;
                            loop {
                                let mut b_locked = b.lock().expect("not poisoned");
                                let Some(chunk) = chunks.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                                else {
                                    break;
                                };
                                let mut chunk = chunk.lock().expect("not poisoned");
                                if outside {
                                    openings.clear();
                                    for d in chunk.chunks(len) {
                                        b_locked.plan_open(Time::ZERO, d, &mut openings);
                                    }
                                    drop(b_locked);
                                    for (i, d) in chunk.chunks_mut(len).enumerate() {
                                        openings.open(i, d);
                                    }
                                    b_locked = b.lock().expect("not poisoned");
                                }
                                let b = &mut b_locked;
                                for (i, d) in chunk.chunks_mut(len).enumerate() {
                                    let r = if outside {
                                        b.handle_opened(Time::ZERO, LinkId(1), from, d, openings.ahead(i), &mut rx_out)
                                    } else {
                                        b.handle_datagram(Time::ZERO, LinkId(1), from, d, &mut rx_out)
                                    };
                                    n += matches!(r, Received::Deliver(_)) as u64;
                                }
                                rx_out.clear();
                            }
                            delivered.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                        });
                    }
                });
                let elapsed = t0.elapsed();
                assert_eq!(delivered.into_inner(), batches * SCALING_BATCH, "every datagram delivered");
                elapsed
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    header,
    window,
    seal_open_baseline,
    send_receive,
    classify,
    core_scaling,
    core_scaling_receive
);
criterion_main!(benches);
