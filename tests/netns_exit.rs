//! The internet exit through the virtual router, end to end, as root: a
//! site with two links to a relay that is its internet exit, and an
//! "internet" host behind the relay that knows no route to the overlay.
//!
//! ```text
//!  site S  s0 10.30.0.2 ---- r0 10.30.0.1  relay R  r9 198.51.100.1 ---- i0 198.51.100.2  internet I
//!          s1 10.31.0.2 ---- r1 10.31.0.1           2001:db8:9::1          2001:db8:9::2
//! ```
//!
//! S's own default route goes through R's r0 (R routes S's plain traffic
//! too, as an ISP would): that is what `fallback = "direct"` falls back to.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const INTERNET: &str = "198.51.100.2";

fn site_config(key: &std::path::Path, relay_pub: &str, fallback: &str) -> String {
    format!(
        r#"
[host]
id = 1
private_key_file = "{key}"
addresses = ["10.9.0.1/24", "fd09::1/64"]

[links]
include = ["s0", "s1"]
allow_virtual = true

[[peer]]
id = 3
public_key = "{relay_pub}"
endpoints = ["10.30.0.1:51820", "10.31.0.1:51820"]
prefixes = ["10.9.0.3/32", "fd09::3/128"]
exit = true
fallback = "{fallback}"
"#,
        key = key.display()
    )
}

fn relay_config(key: &std::path::Path, site_pub: &str) -> String {
    format!(
        r#"
[host]
id = 3
private_key_file = "{key}"
addresses = ["10.9.0.3/24", "fd09::3/64"]

[links]
include = ["r0", "r1"]
allow_virtual = true

[exit]
enabled = true
interface = "r9"

[[peer]]
id = 1
public_key = "{site_pub}"
endpoints = ["10.30.0.2:51820", "10.31.0.2:51820"]
prefixes = ["10.9.0.1/32", "fd09::1/128"]
"#,
        key = key.display()
    )
}

struct Net {
    s: Netns,
    r: Netns,
    i: Netns,
    dir: TempDir,
    keys: [(std::path::PathBuf, String); 2],
}

/// The three namespaces; `isp`: R forwards S's plain traffic to I (and I
/// routes back to S's link), so S has a direct way out.
fn net(isp: bool) -> Net {
    let (s, r, i) = (Netns::new("s"), Netns::new("r"), Netns::new("i"));
    veth(&s, "s0", "10.30.0.2/24", &r, "r0", "10.30.0.1/24");
    veth(&s, "s1", "10.31.0.2/24", &r, "r1", "10.31.0.1/24");
    veth(&r, "r9", "198.51.100.1/24", &i, "i0", "198.51.100.2/24");
    r.sh(&["ip", "addr", "add", "2001:db8:9::1/64", "dev", "r9", "nodad"]);
    i.sh(&["ip", "addr", "add", "2001:db8:9::2/64", "dev", "i0", "nodad"]);
    // Neighbour discovery on the site's links would count as leaving them.
    for dev in ["s0", "s1"] {
        s.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1");
    }
    s.sh(&["ip", "route", "add", "default", "via", "10.30.0.1", "dev", "s0"]);
    if isp {
        for dev in ["r0", "r9"] {
            r.sysctl(&format!("net.ipv4.conf.{dev}.forwarding"), "1");
        }
        i.sh(&["ip", "route", "add", "10.30.0.0/24", "via", "198.51.100.1"]);
    }
    let dir = TempDir::new();
    let keys = [keypair(&dir, "s.key"), keypair(&dir, "r.key")];
    Net { s, r, i, dir, keys }
}

impl Net {
    fn start(&self, fallback: &str, tag: &str) -> (Daemon, Daemon) {
        let cr = self.dir.write(&format!("r{tag}.toml"), &relay_config(&self.keys[1].0, &self.keys[0].1));
        let cs = self.dir.write(&format!("s{tag}.toml"), &site_config(&self.keys[0].0, &self.keys[1].1, fallback));
        let dr = Daemon::start(&self.r, &cr, self.dir.0.join(format!("r{tag}.log")));
        dr.wait_log("internet exit on", 1, Duration::from_secs(10));
        let ds = Daemon::start(&self.s, &cs, self.dir.0.join(format!("s{tag}.log")));
        for d in [&dr, &ds] {
            d.wait_log("link up", 2, Duration::from_secs(10));
        }
        let t0 = Instant::now();
        while ds.snapshot().exit.and_then(|e| e.state) != Some("through the exit".into()) {
            assert!(t0.elapsed() < Duration::from_secs(10), "{:?}\n{}", ds.snapshot().exit, ds.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        (ds, dr)
    }

    /// Cut (or restore) the tunnel on the site's link `dev`.
    fn cut(&self, dev: &str, on: bool) {
        cut(&self.s.name, dev, on);
    }
}

/// Cut (or restore) the tunnel on link `dev` of namespace `ns`: mpvr's
/// UDP only, the link itself stays up for anything else.
fn cut(ns: &str, dev: &str, on: bool) {
    let table = format!("cut_{dev}");
    if on {
        let rules = format!(
            "table inet {table} {{ chain o {{ type filter hook output priority 0; oifname \"{dev}\" udp dport 51820 drop; }}; \
             chain i {{ type filter hook input priority 0; iifname \"{dev}\" udp sport 51820 drop; }}; }}"
        );
        nsh(ns, &["nft", &rules]);
    } else {
        nsh(ns, &["nft", "delete", "table", "inet", &table]);
    }
}

/// Send one UDP datagram from S to `to` and return the source address I
/// saw (I answers it, and S must get the answer).
fn source_seen(net: &Net, to: SocketAddr) -> SocketAddr {
    let rx = in_netns(&net.i.name, move || {
        let s = UdpSocket::bind(to).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        s.send_to(&buf[..n], from).unwrap();
        from
    });
    std::thread::sleep(Duration::from_millis(200));
    in_netns(&net.s.name, move || {
        let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.send_to(b"hello", to).unwrap();
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).expect("the internet host's answer came back");
        assert_eq!(&buf[..n], b"hello");
    })
    .join()
    .unwrap();
    rx.join().unwrap()
}

/// What I received of a stream from S: (sequence, source, when).
type Seen = Arc<Mutex<Vec<(u64, std::net::IpAddr, Instant)>>>;

/// A stream from S to I, one datagram every 5 ms until `stop` is set; what
/// I saw of it.
fn background(net: &Net, port: u16) -> (Seen, Arc<std::sync::atomic::AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let seen: Seen = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let to: SocketAddr = format!("{INTERNET}:{port}").parse().unwrap();
    let (seen2, stop2) = (seen.clone(), stop.clone());
    let rx = in_netns(&net.i.name, move || {
        let s = UdpSocket::bind(to).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 64];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf)
                && n >= 8
            {
                let i = u64::from_be_bytes(buf[..8].try_into().unwrap());
                seen2.lock().unwrap().push((i, from.ip(), Instant::now()));
            }
        }
    });
    let stop3 = stop.clone();
    let tx = in_netns(&net.s.name, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        mark_realtime(&s, to);
        let mut i = 0u64;
        while !stop3.load(Ordering::Relaxed) {
            // Sends may fail while the routes change: the test counts arrivals.
            let _ = s.send_to(&i.to_be_bytes(), to);
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    (seen, stop, vec![rx, tx])
}

/// The first arrival at or after `t` from `src`.
fn first_from(seen: &Seen, src: &str, t: Instant) -> Option<Duration> {
    let src: std::net::IpAddr = src.parse().unwrap();
    seen.lock().unwrap().iter().find(|(_, s, at)| *s == src && *at >= t).map(|(_, _, at)| *at - t)
}

#[test]
fn a_site_reaches_the_internet_through_its_exit_and_falls_back_as_told() {
    if !root_or_skip("a_site_reaches_the_internet_through_its_exit_and_falls_back_as_told") {
        return;
    }
    let _g = serial();
    let net = net(true);
    // Another program's firewall table, which must come through untouched.
    net.r.sh(&["nft", "add table inet other; add chain inet other c { type filter hook forward priority 10; }; add rule inet other c counter accept"]);
    // Its rules without their counters (which count the forwarded traffic).
    let other = || {
        net.r
            .sh(&["nft", "-n", "list", "table", "inet", "other"])
            .split_whitespace()
            .filter(|w| w.parse::<u64>().is_err())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let other_before = other();
    let (mut ds, mut dr) = net.start("direct", "");

    // Through the tunnel, the internet host sees the relay, IPv4 and IPv6.
    let seen = source_seen(&net, format!("{INTERNET}:7000").parse().unwrap());
    assert_eq!(seen.ip().to_string(), "198.51.100.1", "the internet host sees the relay's address");
    let seen = source_seen(&net, "[2001:db8:9::2]:7000".parse().unwrap());
    assert_eq!(seen.ip().to_string(), "2001:db8:9::1");

    // A real-time stream to the internet host loses nothing while either link is cut.
    let cuts = [(400, "s0", true), (900, "s0", false), (1100, "s1", true), (1600, "s1", false)];
    let (s_name,) = (net.s.name.clone(),);
    let r = udp_stream(
        &net.s.name,
        &net.i.name,
        format!("{INTERNET}:7001").parse().unwrap(),
        2_000,
        Duration::from_millis(1),
        200,
        move |i| {
            for (at, dev, on) in cuts {
                if i == at {
                    cut(&s_name, dev, on);
                }
            }
        },
    );
    assert_eq!(r.received, 2_000, "lost {:?}", r.missing);
    let out = ds.snapshot();
    assert!(dr.snapshot().peers[0].exit_out.packets >= 2_000, "the relay counts what it forwarded");
    assert_eq!(out.exit.as_ref().and_then(|e| e.state.as_deref()), Some("through the exit"));

    // Every link's tunnel cut: within 0.5 s traffic takes the site's own
    // default route (the internet host sees the site's link address), and
    // within 0.5 s of a path coming back it is in the tunnel again.
    let (seen, stop, threads) = background(&net, 7002);
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    net.cut("s0", true);
    net.cut("s1", true);
    std::thread::sleep(Duration::from_millis(1_500));
    let back = Instant::now();
    net.cut("s0", false);
    net.cut("s1", false);
    std::thread::sleep(Duration::from_millis(1_500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let direct = first_from(&seen, "10.30.0.2", cut).expect("traffic went direct");
    let tunnel = first_from(&seen, "198.51.100.1", back).expect("traffic went back into the tunnel");
    eprintln!("direct {direct:?} after the cut, back in the tunnel {tunnel:?} after the repair");
    assert!(direct <= Duration::from_millis(500), "direct after {direct:?}");
    assert!(tunnel <= Duration::from_millis(500), "tunnel after {tunnel:?}");
    ds.stop();
    dr.stop();
    let routes = net.s.sh(&["ip", "route", "show"]);
    assert!(!routes.contains("0.0.0.0/1") && !routes.contains("128.0.0.0/1"), "{routes}");
    let tables = net.r.sh(&["nft", "list", "tables"]);
    assert!(!tables.contains("mpvr"), "{tables}");
    assert_eq!(other(), other_before, "another program's table changed");
}

#[test]
fn with_block_nothing_leaves_the_site_outside_the_tunnel_and_the_exit_puts_back_what_it_changed() {
    if !root_or_skip("with_block_nothing_leaves_the_site_outside_the_tunnel_and_the_exit_puts_back_what_it_changed") {
        return;
    }
    let _g = serial();
    // No ISP role: the relay's forwarding is off until mpvr turns it on.
    let net = net(false);
    let before: Vec<String> =
        ["net/ipv4/conf/r9/forwarding", "net/ipv6/conf/r9/force_forwarding", "net/ipv4/ip_forward"]
            .iter()
            .map(|k| net.r.sh(&["cat", &format!("/proc/sys/{k}")]))
            .collect();
    let (mut ds, mut dr) = net.start("block", "b");
    assert_eq!(net.r.sh(&["cat", "/proc/sys/net/ipv4/conf/r9/forwarding"]).trim(), "1");
    assert_eq!(net.r.sh(&["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "0", "the global switch is never touched");
    assert_eq!(source_seen(&net, format!("{INTERNET}:7000").parse().unwrap()).ip().to_string(), "198.51.100.1");
    // Count what leaves the site's links that is not mpvr's own.
    net.s.sh(&[
        "nft",
        "table inet leak { chain o { type filter hook output priority 0; oifname { \"s0\", \"s1\" } udp sport 51820 accept; \
         oifname { \"s0\", \"s1\" } udp dport 51820 accept; oifname { \"s0\", \"s1\" } counter; }; }",
    ]);
    let (seen, stop, threads) = background(&net, 7003);
    std::thread::sleep(Duration::from_millis(300));
    net.cut("s0", true);
    net.cut("s1", true);
    let t0 = Instant::now();
    while ds.snapshot().exit.and_then(|e| e.state) != Some("blocked".into()) {
        assert!(t0.elapsed() < Duration::from_secs(3), "never blocked");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1_000));
    let leak = net.s.sh(&["nft", "list", "table", "inet", "leak"]);
    assert!(leak.contains("counter packets 0 bytes 0"), "packets left outside the tunnel:\n{leak}");
    net.cut("s0", false);
    net.cut("s1", false);
    std::thread::sleep(Duration::from_millis(1_000));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(first_from(&seen, "10.30.0.2", t0).is_none(), "a packet went direct");
    assert!(first_from(&seen, "198.51.100.1", t0 + Duration::from_millis(1_000)).is_some(), "back in the tunnel");
    assert!(ds.status(&[]).contains("full tunnel through host 3"));
    assert!(dr.status(&[]).contains("internet exit: the peers' traffic leaves by r9"));
    ds.stop();
    dr.stop();
    let after: Vec<String> =
        ["net/ipv4/conf/r9/forwarding", "net/ipv6/conf/r9/force_forwarding", "net/ipv4/ip_forward"]
            .iter()
            .map(|k| net.r.sh(&["cat", &format!("/proc/sys/{k}")]))
            .collect();
    assert_eq!(before, after, "the exit put its sysctls back");
    assert!(!net.r.sh(&["nft", "list", "tables"]).contains("mpvr"));
    assert!(!net.s.sh(&["ip", "route", "show"]).contains("0.0.0.0/1"));
    assert!(!net.s.sh(&["ip", "-6", "route", "show"]).contains("::/1"));
}
