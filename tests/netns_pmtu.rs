//! No MTU black holes, end to end, as root: the real daemons on the
//! testbed's pair layout, with the middle of each link (the veths in the
//! testbed's "wan" namespace, which drop larger frames silently, as a
//! switch does) set to a smaller MTU than the hosts' NICs. Real TCP
//! (iperf3) and real UDP sockets.
//!
//! link0: IPv4 underlay, middle MTU 1492 (PPPoE). link1: IPv6 underlay
//! (addresses added here), middle MTU 1420 (LTE).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;

/// Host `me`'s config; `mtu`: the TUN's (`"auto"` or a number).
fn config(me: u32, key: &std::path::Path, peer_pub: &str, peer: u32, ifs: [&str; 2], mtu: &str) -> String {
    format!(
        r#"
[host]
id = {me}
private_key_file = "{key}"
addresses = ["10.9.0.{me}/24", "fd09::{me}/64"]
mtu = {mtu}

[links]
include = ["{i0}", "{i1}"]
allow_virtual = true

[[peer]]
id = {peer}
public_key = "{peer_pub}"
endpoints = ["10.0.0.{peer}:51820", "[fd10:1::{peer}]:51820"]
prefixes = ["10.9.0.{peer}/32", "fd09::{peer}/128"]
"#,
        key = key.display(),
        i0 = ifs[0],
        i1 = ifs[1],
    )
}

struct Site {
    d: PairDaemons,
    tb: Testbed,
    dir: TempDir,
    keys: [(std::path::PathBuf, String); 2],
}

/// Set the middle of `link` (both of its veths in the wan namespace) to `mtu`.
fn middle_mtu(tb: &Testbed, link: &str, mtu: u32) {
    for end in ["a", "b"] {
        sh(&["ip", "-n", &tb.ns("wan"), "link", "set", &format!("{link}{end}"), "mtu", &mtu.to_string()]);
    }
}

fn start(tb: &Testbed, dir: &TempDir, keys: &[(std::path::PathBuf, String); 2], mtu: &str, tag: &str) -> PairDaemons {
    let ca = dir.write(&format!("a{tag}.toml"), &config(1, &keys[0].0, &keys[1].1, 2, ["a0", "a1"], mtu));
    let cb = dir.write(&format!("b{tag}.toml"), &config(2, &keys[1].0, &keys[0].1, 1, ["b0", "b1"], mtu));
    start_pair(tb, dir, &ca, &cb, tag)
}

/// The pair with IPv6 on link1, daemons started with TUN MTU `mtu`.
fn site(tag: &str, mtu: &str) -> Site {
    let tb = Testbed::new(tag);
    tb.ok(&["up", "pair"]);
    for (host, n) in [("a", 1), ("b", 2)] {
        sh(&["ip", "-n", &tb.ns(host), "addr", "add", &format!("fd10:1::{n}/64"), "dev", &format!("{host}1"), "nodad"]);
    }
    let dir = TempDir::new();
    let keys = [keypair(&dir, "a.key"), keypair(&dir, "b.key")];
    let d = start(&tb, &dir, &keys, mtu, "");
    Site { d, tb, dir, keys }
}

impl Site {
    /// Restart both daemons (new sessions, new discovery) with TUN MTU `mtu`.
    fn restart(&mut self, mtu: &str, tag: &str) {
        self.d.da.stop();
        self.d.db.stop();
        self.d = start(&self.tb, &self.dir, &self.keys, mtu, tag);
    }

    /// Wait until host A has a session and both paths are up.
    fn wait_up(&self) {
        let t0 = Instant::now();
        while !self.d.da.snapshot().peers[0].paths.iter().all(|p| p.state == "up") {
            assert!(t0.elapsed() < Duration::from_secs(10), "{:#?}", self.d.da.snapshot().peers[0].paths);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Host A's paths' measured MTUs, link0's then link1's.
    fn measured(&self) -> Vec<Option<u32>> {
        let s = self.d.da.snapshot();
        let mut paths: Vec<_> = s.peers[0].paths.iter().map(|p| (p.link.clone(), p.mtu.measured)).collect();
        paths.sort();
        paths.into_iter().map(|(_, m)| m).collect()
    }

    /// iperf3 TCP from A to B for `secs`: the bits per second of each
    /// `interval` (seconds), and of the whole run.
    fn tcp(&self, secs: f64, interval: f64) -> (Vec<f64>, f64) {
        let server = spawn(&self.tb.ns("b"), &["iperf3", "-s", "-1", "-p", "5301"]);
        std::thread::sleep(Duration::from_millis(300));
        let (t, i) = (secs.to_string(), interval.to_string());
        let client = spawn(&self.tb.ns("a"), &["iperf3", "-c", "10.9.0.2", "-p", "5301", "-t", &t, "-i", &i, "-J"]);
        let j: serde_json::Value = serde_json::from_str(&output(client)).unwrap();
        drop(server);
        let per: Vec<f64> =
            j["intervals"].as_array().unwrap().iter().map(|x| x["sum"]["bits_per_second"].as_f64().unwrap()).collect();
        (per, j["end"]["sum_received"]["bits_per_second"].as_f64().unwrap())
    }
}

#[test]
fn smaller_middle_mtus_are_measured_and_tcp_keeps_its_throughput() {
    if !root_or_skip("smaller_middle_mtus_are_measured_and_tcp_keeps_its_throughput") {
        return;
    }
    let _g = serial();
    let mut s = site("pm", "\"auto\"");
    s.wait_up();
    // Baseline, same run: 1500-byte paths.
    let (_, plain) = s.tcp(3.0, 1.0);
    // PPPoE on link0, LTE on link1, then fresh daemons: discovery from scratch.
    middle_mtu(&s.tb, "link0", 1492);
    middle_mtu(&s.tb, "link1", 1420);
    s.restart("\"auto\"", "2");
    s.wait_up();
    let (per, small) = s.tcp(3.0, 1.0);
    eprintln!("TCP: {:.0} Mbit/s with 1500-byte paths, {:.0} with 1492/1420 ({per:?})", plain / 1e6, small / 1e6);
    assert!(small >= 0.8 * plain, "{:.0} Mbit/s against {:.0}", small / 1e6, plain / 1e6);
    assert!(per[0] >= 0.5 * plain, "first second {:.0} Mbit/s", per[0] / 1e6);
    // Both paths measured exactly, over IPv4 and IPv6 underlays; the TUN
    // carries what both carry (1420 - 40 - 8 - 36 over IPv6).
    assert_eq!(s.measured(), vec![Some(1492), Some(1420)]);
    let snap = s.d.da.snapshot();
    assert_eq!(snap.tun_mtu, Some(1336), "{:?}", snap.tun_mtu);
    assert!(snap.tun_mtu_auto);
    let mtu = sh(&["ip", "-n", &s.tb.ns("a"), "link", "show", "mpvr0"]);
    assert!(mtu.contains("mtu 1336"), "{mtu}");
    assert!(s.d.da.status(&[]).contains("1420"), "status shows the MTU");
    s.d.da.stop();
    s.d.db.stop();
    assert!(s.d.da.log().contains("MTU 1420"), "the measured MTU is logged");
}

/// Send one UDP datagram of `len` bytes from `from` to `to` with DF (PMTU
/// discovery "do") in namespace `ns`: the two sends' results.
fn df_sends(
    ns: &str,
    from: SocketAddr,
    to: SocketAddr,
    len: usize,
) -> (std::io::Result<usize>, std::io::Result<usize>) {
    in_netns(ns, move || {
        let s = UdpSocket::bind(from).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&s);
        let (level, name, value) = if to.is_ipv4() {
            (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, libc::IP_PMTUDISC_DO)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, libc::IPV6_PMTUDISC_DO)
        };
        // SAFETY: setsockopt on a socket this thread owns, with an int option.
        let rc = unsafe {
            libc::setsockopt(fd, level, name, (&value as *const i32).cast(), std::mem::size_of::<i32>() as u32)
        };
        assert_eq!(rc, 0);
        let buf = vec![0u8; len];
        let first = s.send_to(&buf, to);
        std::thread::sleep(Duration::from_millis(300));
        let second = s.send_to(&buf, to);
        (first, second)
    })
    .join()
    .unwrap()
}

#[test]
fn a_datagram_that_fits_the_tun_but_no_path_is_never_silently_lost() {
    if !root_or_skip("a_datagram_that_fits_the_tun_but_no_path_is_never_silently_lost") {
        return;
    }
    let _g = serial();
    let s = site("pd", "1436");
    middle_mtu(&s.tb, "link0", 1492);
    middle_mtu(&s.tb, "link1", 1420);
    s.wait_up();
    let t0 = Instant::now();
    while s.measured() != vec![Some(1492), Some(1420)] {
        assert!(t0.elapsed() < Duration::from_secs(5), "measured {:?}", s.measured());
        std::thread::sleep(Duration::from_millis(50));
    }
    // TCP over the 1436-byte TUN: the SYNs' MSS lowered to what both
    // paths carry (1336 - 40), so the connection's segments fit.
    let server = in_netns(&s.tb.ns("b"), || {
        let l = std::net::TcpListener::bind("10.9.0.2:40010").unwrap();
        let (c, _) = l.accept().unwrap();
        socket2::SockRef::from(&c).tcp_mss().unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = in_netns(&s.tb.ns("a"), || {
        let c = std::net::TcpStream::connect("10.9.0.2:40010").unwrap();
        socket2::SockRef::from(&c).tcp_mss().unwrap()
    })
    .join()
    .unwrap();
    let server = server.join().unwrap();
    assert!(client <= 1296 && server <= 1296, "MSS: client {client}, server {server}");
    // Each host lowered its own stack's SYN (neither knows better yet).
    assert!(s.d.da.snapshot().totals.mss_clamped >= 1 && s.d.db.snapshot().totals.mss_clamped >= 1);
    // Without DF it arrives, in fragments mpvr made (first: once the
    // sender's stack knows the tunnel's MTU, it fragments itself).
    let rx = in_netns(&s.tb.ns("b"), || {
        let r = UdpSocket::bind("10.9.0.2:40006").unwrap();
        r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        r.recv(&mut buf)
    });
    std::thread::sleep(Duration::from_millis(200));
    in_netns(&s.tb.ns("a"), || {
        let t = UdpSocket::bind("10.9.0.1:40005").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&t);
        let value = libc::IP_PMTUDISC_DONT;
        // SAFETY: as above.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        assert_eq!(rc, 0);
        t.send_to(&[7u8; 1408], "10.9.0.2:40006").unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(rx.join().unwrap().expect("delivered in fragments"), 1408);
    // 1436 bytes of IPv4 fit the TUN (1436) but neither path (1428, 1336):
    // the sender's next send is refused with the size the tunnel carries.
    let from: SocketAddr = "10.9.0.1:40001".parse().unwrap();
    let (first, second) = df_sends(&s.tb.ns("a"), from, "10.9.0.2:40002".parse().unwrap(), 1408);
    assert!(first.is_ok(), "{first:?}");
    let e = second.expect_err("the second send learned the tunnel's MTU");
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
    let route = sh(&["ip", "-n", &s.tb.ns("a"), "route", "get", "10.9.0.2"]);
    assert!(route.contains("mtu 1336") || route.contains("mtu 1356"), "{route}");
    // IPv6 inside: 1433 bytes, the same.
    let from: SocketAddr = "[fd09::1]:40003".parse().unwrap();
    let (first, second) = df_sends(&s.tb.ns("a"), from, "[fd09::2]:40004".parse().unwrap(), 1385);
    assert!(first.is_ok(), "{first:?}");
    let e = second.expect_err("the second IPv6 send learned the tunnel's MTU");
    assert_eq!(e.raw_os_error(), Some(libc::EMSGSIZE), "{e}");
    let t = s.d.da.snapshot().totals;
    assert!(t.icmp_too_big >= 2 && t.fragmented >= 1, "{t:?}");
}

#[test]
fn a_path_mtu_lowered_mid_transfer_costs_tcp_less_than_3_s() {
    if !root_or_skip("a_path_mtu_lowered_mid_transfer_costs_tcp_less_than_3_s") {
        return;
    }
    let _g = serial();
    let s = site("pl", "\"auto\"");
    s.wait_up();
    let tb = Testbed { prefix: s.tb.prefix.clone() };
    let change = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2_300));
        middle_mtu(&tb, "link0", 1400);
        middle_mtu(&tb, "link1", 1400);
        std::mem::forget(tb);
    });
    let (per, _) = s.tcp(8.0, 0.5);
    change.join().unwrap();
    // iperf3's first interval starts about 0.3 s after our clock: the
    // change falls in interval 4 (2.0-2.5 s).
    let before = per[1..4].iter().sum::<f64>() / 3.0;
    let back = per.iter().enumerate().skip(5).find(|(_, b)| **b >= 0.5 * before).map(|(i, _)| i);
    eprintln!("per 0.5 s: {:?} Mbit/s", per.iter().map(|b| (b / 1e6).round()).collect::<Vec<_>>());
    let back = back.unwrap_or_else(|| panic!("never recovered: {per:?}"));
    // Interval `back` ends (back + 1) * 0.5 s in; the change was at ~2.0-2.3 s.
    let recovered_by = (back + 1) as f64 * 0.5 - 2.0;
    assert!(recovered_by <= 3.0, "throughput back {recovered_by:.1} s after the change: {per:?}");
    // Link0 carried the transfer: its MTU is known. (Link1 is measured
    // again only once it carries large packets: a failover, say.)
    assert_eq!(s.measured()[0], Some(1400));
}
