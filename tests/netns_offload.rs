//! End-to-end tests of the TUN offloads: the real `mpvr` binary in network
//! namespaces, as root. TCP and UDP, IPv4 and IPv6 inside, over an IPv4
//! and an IPv6 underlay (every packet on both: `bulk_policy = "all"`), with
//! the offloaded TUN (the default) and with the plain one
//! (`MPVR_DISABLE_OFFLOADS=tun`, the path a kernel that refuses the
//! offloads takes). Large transfers are checked by SHA-256 on both ends.
//!
//! ```text
//!  A  a0 10.1.0.1 ---- 10.1.0.2 b0  B
//!     a1 fd02::1  ---- fd02::2  b1
//!  tunnel: A 10.9.0.1 fd09::1, B 10.9.0.2 fd09::2
//! ```

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;

fn config(me: u32, key: &std::path::Path, peer: u32, public: &str) -> String {
    format!(
        "bulk_policy = \"all\"\n[host]\nid = {me}\nprivate_key_file = \"{}\"\n\
         addresses = [\"10.9.0.{me}/24\", \"fd09::{me}/64\"]\n[links]\nallow_virtual = true\n\
         [[peer]]\nid = {peer}\npublic_key = \"{public}\"\n\
         endpoints = [\"10.1.0.{peer}:51820\", \"[fd02::{peer}]:51820\"]\n\
         prefixes = [\"10.9.0.{peer}/32\", \"fd09::{peer}/128\"]\n",
        key.display()
    )
}

struct Pair {
    a: Netns,
    b: Netns,
    da: Daemon,
    db: Daemon,
    _dir: TempDir,
}

fn pair(env: &[(&str, &str)]) -> Pair {
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    veth(&a, "a0", "10.1.0.1/24", &b, "b0", "10.1.0.2/24");
    let (a1, b1) = ("a1", "b1");
    a.sh(&["ip", "link", "add", a1, "type", "veth", "peer", "name", b1, "netns", &b.name]);
    a.sh(&["ip", "addr", "add", "fd02::1/64", "dev", a1, "nodad"]);
    b.sh(&["ip", "addr", "add", "fd02::2/64", "dev", b1, "nodad"]);
    a.sh(&["ip", "link", "set", a1, "up"]);
    b.sh(&["ip", "link", "set", b1, "up"]);
    let dir = TempDir::new();
    let (ka, pa) = keypair(&dir, "a.key");
    let (kb, pb) = keypair(&dir, "b.key");
    let ca = dir.write("a.toml", &config(1, &ka, 2, &pb));
    let cb = dir.write("b.toml", &config(2, &kb, 1, &pa));
    let da = Daemon::start_with_env(&a, &ca, dir.0.join("a.log"), env);
    let db = Daemon::start_with_env(&b, &cb, dir.0.join("b.log"), env);
    for d in [&da, &db] {
        d.wait_log("link up", 2, Duration::from_secs(10));
    }
    // Both paths up: every packet goes both ways.
    let t0 = Instant::now();
    while !da.snapshot().peers.iter().any(|p| p.paths.iter().filter(|x| x.state == "up").count() == 2) {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}\n{}", da.status(&[]), da.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Pair { a, b, da, db, _dir: dir }
}

/// The kernel's count for the TUN in `ns`: `tx_packets` (what the kernel
/// handed mpvr: one per super-packet) or `rx_packets` (what mpvr wrote).
fn tun_count(ns: &Netns, what: &str) -> u64 {
    ns.sh(&["cat", &format!("/sys/class/net/mpvr0/statistics/{what}")]).trim().parse().unwrap()
}

/// Packets `d` read from TUN queue 0 (TCP, when it has a queue of its
/// own) and queue 1 (everything else).
fn queue_reads(d: &Daemon) -> (u64, u64) {
    match d.snapshot().totals.tun_queue_reads[..] {
        [q0, q1] => (q0, q1),
        [q0] => (q0, 0),
        ref other => panic!("{} TUN queues in status", other.len()),
    }
}

/// Packets `d` read from each queue since it had read `before`.
fn queue_reads_since(d: &Daemon, before: (u64, u64)) -> (u64, u64) {
    let now = queue_reads(d);
    (now.0 - before.0, now.1 - before.1)
}

/// Datagrams `d` read from its links' bulk socket (everything, with one
/// socket per link) and from the other (real-time data and control).
fn socket_reads(d: &Daemon) -> (u64, u64) {
    match d.snapshot().totals.link_queue_reads[..] {
        [s0, s1] => (s0, s1),
        [s0] => (s0, 0),
        ref other => panic!("{} link sockets in status", other.len()),
    }
}

/// Known bytes, not a repeating pattern a reordering could pass.
fn data(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// Send `bytes` over TCP from namespace `from` to `to` (a listener in
/// `to_ns`); returns the SHA-256 of what was sent and of what arrived.
fn tcp_transfer(from: &Netns, to_ns: &Netns, to: SocketAddr, bytes: Vec<u8>) -> (Vec<u8>, Vec<u8>, usize) {
    let l = in_netns(&to_ns.name, move || TcpListener::bind(to).unwrap()).join().unwrap();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut got).unwrap();
        (sha256(&got), got.len())
    });
    let sent = sha256(&bytes);
    in_netns(&from.name, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
        std::io::Write::write_all(&mut s, &bytes).unwrap();
    })
    .join()
    .unwrap();
    let (got, len) = rx.join().unwrap();
    (sent, got, len)
}

/// The content of UDP datagram `seq`: its number, then bytes from it.
fn datagram(seq: u32, size: usize) -> Vec<u8> {
    let mut d = seq.to_be_bytes().to_vec();
    d.extend(data(size - 4, seq));
    d
}

/// `count` UDP datagrams of `size` bytes from `from` to `to`, sent
/// `per_send` at a time in one UDP_SEGMENT (GSO) send when it is above 1:
/// a super-packet for the TUN. Returns how many arrived, and how many of
/// those were not exactly what was sent.
fn udp_transfer(from: &Netns, to_ns: &Netns, to: SocketAddr, count: u32, size: usize, per_send: u32) -> (u32, u32) {
    let rx = in_netns(&to_ns.name, move || {
        let s = UdpSocket::bind(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
        let (mut seen, mut bad) = (vec![false; count as usize], 0);
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = s.recv(&mut buf) {
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if seq >= count || buf[..n] != datagram(seq, size)[..] || seen[seq as usize] {
                bad += 1;
                continue;
            }
            seen[seq as usize] = true;
        }
        (seen.iter().filter(|x| **x).count() as u32, bad)
    });
    std::thread::sleep(Duration::from_millis(100));
    in_netns(&from.name, move || {
        let any: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().unwrap();
        let s = UdpSocket::bind(any).unwrap();
        s.connect(to).unwrap();
        if per_send > 1 {
            let seg = size as libc::c_int;
            // SAFETY: setsockopt on a valid socket with a pointer to an int and its size.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_SEGMENT,
                    (&seg as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
        }
        let mut seq = 0;
        while seq < count {
            let n = per_send.min(count - seq);
            let buf: Vec<u8> = (seq..seq + n).flat_map(|i| datagram(i, size)).collect();
            s.send(&buf).unwrap();
            seq += n;
            // Paced: about 30 Mbit/s, far below what the tunnel carries.
            std::thread::sleep(Duration::from_micros(300 * u64::from(n)));
        }
    })
    .join()
    .unwrap();
    rx.join().unwrap()
}

/// The offloaded TUN (the default): the daemon says so; TCP in both
/// families arrives whole, read from the kernel as super-packets and
/// written back coalesced; UDP sent as GSO super-packets arrives datagram
/// for datagram, exactly.
#[test]
fn offloaded_tun_carries_tcp_and_udp_whole_in_both_families() {
    if !root_or_skip("offloaded_tun_carries_tcp_and_udp_whole_in_both_families") {
        return;
    }
    let _g = serial();
    let p = pair(&[]);
    for d in [&p.da, &p.db] {
        let log = d.log();
        assert!(log.contains("TUN offloads") && log.contains("TSO4/TSO6"), "{log}");
        assert!(log.contains("udp=\"segmentation offload (USO)\""), "this kernel (6.2+) has USO: {log}");
        assert_eq!(d.snapshot().tun_offload.as_deref(), Some("TSO, USO"));
        assert!(d.status(&[]).contains("; offloads TSO, USO)"), "{}", d.status(&[]));
        assert_eq!(d.snapshot().tun_queues.as_deref(), Some("TCP apart"), "{log}");
        assert!(log.contains("sockets=two per link, bulk data apart"), "{log}");
    }
    const BYTES: usize = 24 << 20;
    // At most this many packets of the TUN's MTU (1420 or less) make the
    // transfer; a super-packet counts once in the kernel's figures.
    let segments = (BYTES / 1420) as u64;
    for (from, to_ns, to, seed, sender) in
        [(&p.a, &p.b, "10.9.0.2:7100", 1, &p.da), (&p.b, &p.a, "[fd09::1]:7101", 2, &p.db)]
    {
        let receiver = if std::ptr::eq(sender, &p.da) { &p.db } else { &p.da };
        let (tx0, rx0) = (tun_count(from, "tx_packets"), tun_count(to_ns, "rx_packets"));
        let before = queue_reads(sender);
        let sockets_before = socket_reads(receiver);
        let (sent, got, len) = tcp_transfer(from, to_ns, to.parse().unwrap(), data(BYTES, seed));
        // TCP came through its own queue: every segment (at most 1448
        // bytes of payload each) there, next to nothing in the other.
        let (d0, d1) = queue_reads_since(sender, before);
        assert!(
            d0 >= (BYTES / 1448) as u64 && d1 < 50,
            "{to}: {d0} packets read from the TCP queue, {d1} from the other"
        );
        assert_eq!(len, BYTES, "{to}: {len} of {BYTES} bytes arrived");
        assert_eq!(sent, got, "{to}: the bytes differ");
        // At the other end TCP, bulk, came through the links' bulk
        // sockets (each datagram twice: one per link); the other sockets
        // read only the probes.
        let (s0, s1) = socket_reads(receiver);
        let (s0, s1) = (s0 - sockets_before.0, s1 - sockets_before.1);
        assert!(
            s0 >= (BYTES / 1448) as u64 && s1 < 100,
            "{to}: {s0} datagrams read from bulk sockets, {s1} from the others"
        );
        let (reads, writes) = (tun_count(from, "tx_packets") - tx0, tun_count(to_ns, "rx_packets") - rx0);
        // The plain TUN takes a read per segment (the other test checks it
        // does). How large the kernel makes its super-packets depends on the
        // pace TCP sees: 11 segments per read and 17 per write here, so a
        // bound of 4 leaves room for a slower machine.
        assert!(reads < segments / 4, "{to}: {reads} reads from the TUN for {segments}+ segments: no TSO");
        assert!(writes < segments / 4, "{to}: {writes} writes to the TUN for {segments}+ segments: no GRO");
        eprintln!("{to}: {BYTES} bytes whole; {reads} TUN reads, {writes} TUN writes for about {segments} segments");
    }
    for (to, per_send) in [("10.9.0.2:7200", 8), ("[fd09::2]:7201", 8), ("10.9.0.2:7202", 1)] {
        let before = queue_reads(&p.da);
        let (arrived, bad) = udp_transfer(&p.a, &p.b, to.parse().unwrap(), 4000, 1200, per_send);
        assert_eq!(bad, 0, "{to}: {bad} datagrams not as sent");
        assert!(arrived >= 3980, "{to}: {arrived} of 4000 datagrams arrived");
        // UDP (calls, QUIC) through the other queue, none in TCP's.
        let (d0, d1) = queue_reads_since(&p.da, before);
        assert!(d1 >= 4000 && d0 < 50, "{to}: {d1} packets read from the non-TCP queue, {d0} from TCP's");
    }
    // Pings (real-time) through the other sockets, none through bulk's.
    let before = socket_reads(&p.db);
    p.a.sh(&["ping", "-c", "20", "-i", "0.02", "-q", "10.9.0.2"]);
    let (s0, s1) = socket_reads(&p.db);
    let (s0, s1) = (s0 - before.0, s1 - before.1);
    assert!(s1 >= 2 * 20 && s0 < 5, "{s1} datagrams read from the real-time and control sockets, {s0} from bulk's");
    // Nothing was refused on the way: by the TUN, or by a link's socket (a
    // GSO run of TSO segments over 64 KiB is refused whole, EMSGSIZE).
    for d in [&p.da, &p.db] {
        let io = d.snapshot().totals.io;
        assert_eq!(io.get("tun_write_errors").copied(), Some(0), "{io:?}");
        assert_eq!(io.get("send_errors").copied(), Some(0), "{io:?}\n{}", d.log());
    }
}

/// The plain TUN (`MPVR_DISABLE_OFFLOADS=tun`, as on a kernel that
/// refuses the offloads): the daemon says so, one packet per read, and
/// TCP in both families and UDP still arrive whole.
#[test]
fn plain_tun_fallback_carries_tcp_and_udp_whole() {
    if !root_or_skip("plain_tun_fallback_carries_tcp_and_udp_whole") {
        return;
    }
    let _g = serial();
    let p = pair(&[("MPVR_DISABLE_OFFLOADS", "tun")]);
    for d in [&p.da, &p.db] {
        let log = d.log();
        assert!(log.contains("TUN offloads off") && log.contains("disabled by MPVR_DISABLE_OFFLOADS"), "{log}");
        assert!(d.status(&[]).contains("; offloads off: disabled by MPVR_DISABLE_OFFLOADS)"), "{}", d.status(&[]));
    }
    const BYTES: usize = 8 << 20;
    let segments = (BYTES / 1500) as u64;
    for (from, to_ns, to, seed) in [(&p.a, &p.b, "10.9.0.2:7100", 3), (&p.b, &p.a, "[fd09::1]:7101", 4)] {
        let tx0 = tun_count(from, "tx_packets");
        let (sent, got, len) = tcp_transfer(from, to_ns, to.parse().unwrap(), data(BYTES, seed));
        assert_eq!((len, &sent), (BYTES, &got), "{to}: the bytes differ");
        let reads = tun_count(from, "tx_packets") - tx0;
        assert!(reads >= segments, "{to}: {reads} reads for {segments}+ segments: super-packets on a plain TUN?");
    }
    let (arrived, bad) = udp_transfer(&p.a, &p.b, "[fd09::2]:7200".parse().unwrap(), 4000, 1200, 8);
    assert_eq!(bad, 0);
    assert!(arrived >= 3980, "{arrived} of 4000 datagrams arrived");
}

/// TCP's own TUN queue refused or turned off: one queue, said in the log
/// and in status, and everything read from it. `MPVR_DISABLE_OFFLOADS=queues`
/// does what a kernel without TUN steering (before 4.16) or a daemon
/// without CAP_BPF gets; the latter is checked too, with the capability
/// taken away, and the capability the unit grants shown to be enough.
#[test]
fn one_tun_queue_when_steering_is_off_or_not_permitted() {
    if !root_or_skip("one_tun_queue_when_steering_is_off_or_not_permitted") {
        return;
    }
    let _g = serial();
    let p = pair(&[("MPVR_DISABLE_OFFLOADS", "queues")]);
    for d in [&p.da, &p.db] {
        assert!(d.log().contains("one TUN queue"), "{}", d.log());
        assert_eq!(d.snapshot().tun_queues.as_deref(), Some("one: disabled by MPVR_DISABLE_OFFLOADS"));
        assert!(d.status(&[]).contains("; queues one: disabled by MPVR_DISABLE_OFFLOADS;"), "{}", d.status(&[]));
        assert_eq!(d.snapshot().totals.tun_queue_reads.len(), 1, "one queue, one read count");
        // The same switch gives each link one socket.
        assert!(d.log().contains("sockets=one per link: disabled by MPVR_DISABLE_OFFLOADS"), "{}", d.log());
        assert_eq!(d.snapshot().totals.link_queue_reads.len(), 1, "one socket per link, one read count");
    }
    let before = queue_reads(&p.da);
    let (arrived, bad) = udp_transfer(&p.a, &p.b, "10.9.0.2:7300".parse().unwrap(), 500, 1200, 1);
    assert_eq!((arrived, bad), (500, 0), "through the one queue");
    let (d0, d1) = queue_reads_since(&p.da, before);
    assert!(d0 >= 500 && d1 == 0, "{d0} packets read from the one queue, {d1} from another");
    drop(p);

    // Root without CAP_BPF and CAP_SYS_ADMIN: the program cannot be loaded
    // (unless this kernel lets anyone load socket filters), the daemon
    // runs with one queue and names the capability. With CAP_BPF alone
    // (the unit's set): two queues.
    let c = Netns::new("c");
    let dir = TempDir::new();
    let (key, _) = keypair(&dir, "c.key");
    let cfg = dir.write(
        "c.toml",
        &format!("[host]\nid = 3\nprivate_key_file = \"{}\"\naddresses = [\"10.9.0.3/24\"]\n", key.display()),
    );
    let open_bpf = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled").is_ok_and(|v| v.trim() == "0");
    for (drop_caps, apart) in [("-bpf,-sys_admin", open_bpf), ("-sys_admin", true)] {
        let log = dir.0.join(format!("c{drop_caps}.log"));
        let d = Daemon::start_under(&c, &cfg, log, &[], &["setpriv", &format!("--bounding-set={drop_caps}"), "--"]);
        d.wait_log("TUN queue", 1, Duration::from_secs(10));
        let log = d.log();
        if apart {
            assert!(log.contains("TUN queues: TCP in one"), "without {drop_caps}: {log}");
        } else {
            assert!(log.contains("one TUN queue") && log.contains("CAP_BPF"), "without {drop_caps}: {log}");
        }
    }
}
