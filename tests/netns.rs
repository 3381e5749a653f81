//! End-to-end tests: the real `mpvr` binary in network namespaces, as root.
//!
//! Layout (routed, so uplinks really need their own gateways):
//!
//! ```text
//!  A  a0 10.10.0.2 ---- 10.10.0.1 ma0 \            / mb0 10.20.0.1 ---- 10.20.0.2 b0  B
//!     a1 10.11.0.2 ---- 10.11.0.1 ma1 -  M (router) - mb1 10.21.0.1 ---- 10.21.0.2 b1
//!  tunnel: A 10.9.0.1 fd09::1          B 10.9.0.2 fd09::2
//! ```
//!
//! A's and B's main tables have one default route (via link 0); link 1 has a
//! `gateway` in the config, so mpvr gives it its own routing table.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

struct TwoHosts {
    da: Daemon,
    db: Daemon,
    dir: TempDir,
    a: Netns,
    m: Netns,
    b: Netns,
}

fn config(me: u32, key: &Path, peer_pub: &str, peer: u32, endpoints: [&str; 2], gateway: (&str, &str)) -> String {
    let (gw_link, gw) = gateway;
    format!(
        r#"
[host]
id = {me}
private_key_file = "{key}"
addresses = ["10.9.0.{me}/24", "fd09::{me}/64"]

[links]
allow_virtual = true

[link.{gw_link}]
gateway = "{gw}"

[[peer]]
id = {peer}
public_key = "{peer_pub}"
endpoints = ["{e0}:51820", "{e1}:51820"]
prefixes = ["10.9.0.{peer}/32", "fd09::{peer}/128"]
"#,
        key = key.display(),
        e0 = endpoints[0],
        e1 = endpoints[1],
    )
}

fn two_hosts() -> TwoHosts {
    two_hosts_with(|_| {}, |a, b| (a, b))
}

/// The two-host layout; `middle` prepares the router before the daemons
/// start, `edit` may change the two config files.
fn two_hosts_with(middle: impl FnOnce(&Netns), edit: impl FnOnce(String, String) -> (String, String)) -> TwoHosts {
    let a = Netns::new("a");
    let m = Netns::new("m");
    let b = Netns::new("b");
    veth(&a, "a0", "10.10.0.2/24", &m, "ma0", "10.10.0.1/24");
    veth(&a, "a1", "10.11.0.2/24", &m, "ma1", "10.11.0.1/24");
    veth(&b, "b0", "10.20.0.2/24", &m, "mb0", "10.20.0.1/24");
    veth(&b, "b1", "10.21.0.2/24", &m, "mb1", "10.21.0.1/24");
    m.sysctl("net.ipv4.ip_forward", "1");
    a.sh(&["ip", "route", "add", "default", "via", "10.10.0.1", "dev", "a0"]);
    b.sh(&["ip", "route", "add", "default", "via", "10.20.0.1", "dev", "b0"]);
    let dir = TempDir::new();
    let (ka, pa) = keypair(&dir, "a.key");
    let (kb, pb) = keypair(&dir, "b.key");
    middle(&m);
    let (ca, cb) = edit(
        config(1, &ka, &pb, 2, ["10.20.0.2", "10.21.0.2"], ("a1", "10.11.0.1")),
        config(2, &kb, &pa, 1, ["10.10.0.2", "10.11.0.2"], ("b1", "10.21.0.1")),
    );
    let ca = dir.write("a.toml", &ca);
    let cb = dir.write("b.toml", &cb);
    let da = Daemon::start(&a, &ca, dir.0.join("a.log"));
    let db = Daemon::start(&b, &cb, dir.0.join("b.log"));
    for d in [&da, &db] {
        d.wait_log("link up", 2, Duration::from_secs(10));
    }
    TwoHosts { da, db, dir, a, m, b }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.da.stop();
            self.db.stop();
            eprintln!("--- host A log ---\n{}\n--- host B log ---\n{}", self.da.log(), self.db.log());
        }
    }
}

/// Wait until every path of the daemon's first peer is up (5 s at most).
fn wait_paths_up(d: &Daemon) {
    let t0 = std::time::Instant::now();
    while !d.snapshot().peers[0].paths.iter().all(|p| p.state == "up") {
        assert!(t0.elapsed() < Duration::from_secs(5), "{:#?}", d.snapshot().peers[0].paths);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(ns: &Netns, dev: &str, what: &str) -> u64 {
    let out = ns.sh(&["cat", &format!("/sys/class/net/{dev}/statistics/{what}")]);
    out.trim().parse().unwrap()
}

const TO_B: &str = "10.9.0.2:7000";

fn stream(t: &TwoHosts, count: u64, during: impl FnMut(u64) + Send + 'static) -> StreamResult {
    let to: SocketAddr = TO_B.parse().unwrap();
    udp_stream(&t.a.name, &t.b.name, to, count, Duration::from_micros(500), 200, during)
}

#[test]
fn ping_across_the_tunnel_over_ipv4_and_ipv6() {
    if !root_or_skip("ping_across_the_tunnel_over_ipv4_and_ipv6") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    t.a.sh(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    t.a.sh(&["ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "fd09::2"]);
    t.b.sh(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.9.0.1"]);
    // The MTU leaves room for the encapsulation over IPv4 links of 1500.
    assert!(t.a.sh(&["ip", "link", "show", "mpvr0"]).contains("mtu 1436"));
    // Link a1 got its own table through its gateway.
    let rules = t.a.sh(&["ip", "rule"]);
    assert!(rules.contains("5182:") && rules.contains("oif a1"), "{rules}");
    // Every packet goes out on every path: each of A's links carries a copy
    // to each of B's two endpoints, and each of B's links receives two.
    // Counted in bytes (a UDP GSO run crosses a veth as one packet): a copy
    // of a 200-byte packet is at least 236 bytes of mpvr datagram.
    let bytes = |d: &str| counter(&t.m, d, if d.starts_with("ma") { "rx_bytes" } else { "tx_bytes" });
    let before: Vec<u64> = ["ma0", "ma1", "mb0", "mb1"].iter().map(|d| bytes(d)).collect();
    let r = stream(&t, 1000, |_| {});
    assert_eq!(r.received, 1000);
    for (i, d) in ["ma0", "ma1", "mb0", "mb1"].iter().enumerate() {
        let carried = bytes(d) - before[i];
        assert!(carried >= 2000 * 236, "{d} carried {carried} bytes: less than 2 copies of 1000 packets");
    }
    let _ = (&t.da, &t.db, &t.dir);
}

#[test]
fn a_link_cut_mid_stream_loses_nothing() {
    if !root_or_skip("a_link_cut_mid_stream_loses_nothing") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    // Every path comes up first.
    wait_paths_up(&t.da);
    let m = t.m.name.clone();
    let socket = t.da.socket.clone();
    let during_cut = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen = during_cut.clone();
    // Cut link 0 (both directions) in the router for 2 s of a 4 s stream;
    // 1.5 s into the cut, read A's status.
    let r = stream(&t, 8000, move |i| {
        if i == 2000 {
            nsh(&m, &["nft", "add table inet cut"]);
            nsh(&m, &["nft", "add chain inet cut f { type filter hook forward priority 0; }"]);
            nsh(&m, &["nft", "add rule inet cut f iifname ma0 counter drop"]);
            nsh(&m, &["nft", "add rule inet cut f oifname ma0 counter drop"]);
        }
        if i == 5000 {
            let out =
                std::process::Command::new(mpvr()).args(["status", "--json", "-s"]).arg(&socket).output().unwrap();
            *seen.lock().unwrap() = String::from_utf8(out.stdout).unwrap();
        }
        if i == 6000 {
            nsh(&m, &["nft", "delete table inet cut"]);
        }
    });
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
    assert_eq!(r.duplicates, 0);
    assert_eq!(r.received, 8000);
    // During the cut: the path over a0 down, the one over a1 up.
    let snap: mpvr::status::Snapshot =
        serde_json::from_str(&during_cut.lock().unwrap()).expect("status during the cut");
    let paths = &snap.peers[0].paths;
    let state = |link: &str| paths.iter().find(|p| p.link == link).map(|p| p.state.clone());
    assert_eq!((state("a0").as_deref(), state("a1").as_deref()), (Some("down"), Some("up")), "{paths:#?}");
    let down = paths.iter().find(|p| p.link == "a0").unwrap();
    assert!(down.reason.contains("probes lost") || down.reason.contains("silent"), "{}", down.reason);
    assert!(snap.changes.iter().any(|c| c.link == "a0" && c.to == "down"), "{:#?}", snap.changes);
    // The live view shows every path (rendered from the daemon's own snapshot).
    let mut history = mpvr::status::watch::History::default();
    history.push(&snap);
    let screen = mpvr::status::watch::screen(&snap, &history, 180, 40);
    for p in paths {
        assert!(screen.contains(&format!("{} -> {}", p.link, p.remote)), "{} missing in\n{screen}", p.link);
    }
    // After the cut the path comes back up, and the table says so.
    let t0 = std::time::Instant::now();
    loop {
        let snap = t.da.snapshot();
        if snap.peers[0].paths.iter().all(|p| p.state == "up") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "a0 not back up: {:#?}", snap.peers[0].paths);
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = t.da.status(&[]);
    assert!(text.contains("peer 2: session") && text.contains("a0 -> 10.20.0.2:51820"), "{text}");
    // Both hosts on the default cipher setting: AES-256-GCM where this CPU
    // has AES instructions (both daemons run on it).
    let cipher = if mpvr::sys::aes_in_hardware() { "AES-256-GCM" } else { "ChaCha20-Poly1305" };
    assert_eq!(t.da.snapshot().peers[0].session.as_ref().map(|s| s.cipher.as_str()), Some(cipher));
    let _ = (&t.db, &t.dir);
}

/// One sample of a path's state, read from a daemon's control socket.
struct Seen {
    at: std::time::Instant,
    path: String,
    state: String,
    /// When it entered that state (the sample time less `state_for_s`).
    since: std::time::Instant,
}

/// Poll both daemons' status every 10 ms until `stop` is set.
fn poll_paths(
    sockets: [PathBuf; 2],
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<[Vec<Seen>; 2]> {
    std::thread::spawn(move || {
        let mut seen: [Vec<Seen>; 2] = [Vec::new(), Vec::new()];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for (i, s) in sockets.iter().enumerate() {
                let at = std::time::Instant::now();
                let Ok(snap) = mpvr::status::fetch(s) else { continue };
                for p in snap.peers.iter().flat_map(|p| &p.paths) {
                    let since = at.checked_sub(Duration::from_secs_f64(p.state_for_s)).unwrap_or(at);
                    seen[i].push(Seen {
                        at,
                        path: format!("{} -> {}", p.link, p.remote),
                        state: p.state.clone(),
                        since,
                    });
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        seen
    })
}

/// How long after `t` the first path matching `which` was seen entering a
/// state `is` accepts.
fn entered(
    seen: &[Seen],
    which: impl Fn(&str) -> bool,
    is: impl Fn(&str) -> bool,
    t: std::time::Instant,
) -> Option<Duration> {
    seen.iter().find(|s| s.at > t && which(&s.path) && is(&s.state)).map(|s| s.since.saturating_duration_since(t))
}

#[test]
fn a_blackout_is_known_within_300_ms_and_the_path_is_back_within_500_ms() {
    if !root_or_skip("a_blackout_is_known_within_300_ms_and_the_path_is_back_within_500_ms") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    wait_paths_up(&t.da);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_paths([t.da.socket.clone(), t.db.socket.clone()], stop.clone());
    let m = t.m.name.clone();
    let times = std::sync::Arc::new(std::sync::Mutex::new((None, None)));
    let mark = times.clone();
    // 2 000 packets/s for 5 s; a0 cut in the router (both ways) from 1 s to 3 s.
    let r = stream(&t, 10_000, move |i| {
        if i == 2000 {
            nsh(&m, &["nft", "add table inet cut"]);
            nsh(&m, &["nft", "add chain inet cut f { type filter hook forward priority 0; }"]);
            nsh(&m, &["nft", "add rule inet cut f iifname ma0 counter drop"]);
            nsh(&m, &["nft", "add rule inet cut f oifname ma0 counter drop"]);
            mark.lock().unwrap().0 = Some(std::time::Instant::now());
        }
        if i == 6000 {
            nsh(&m, &["nft", "delete table inet cut"]);
            mark.lock().unwrap().1 = Some(std::time::Instant::now());
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let [at_a, at_b] = poller.join().unwrap();
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
    let (cut, heal) = *times.lock().unwrap();
    let (cut, heal) = (cut.unwrap(), heal.unwrap());
    let dead = |s: &str| s == "suspect" || s == "down";
    // A's paths over a0; B's paths toward A's a0 address.
    let a0 = |p: &str| p.starts_with("a0 ");
    let to_a0 = |p: &str| p.ends_with("10.10.0.2:51820");
    for (who, seen, which) in [("A", &at_a, &a0 as &dyn Fn(&str) -> bool), ("B", &at_b, &to_a0)] {
        let d = entered(seen, which, dead, cut).unwrap_or_else(|| panic!("{who}: never seen dead"));
        let u = entered(seen, which, |s| s == "up", heal).unwrap_or_else(|| panic!("{who}: never seen up again"));
        eprintln!("{who}: dead {d:?} after the cut, up {u:?} after healing");
        assert!(d <= Duration::from_millis(300), "{who}: dead only {d:?} after the cut");
        assert!(u <= Duration::from_millis(500), "{who}: up only {u:?} after healing");
    }
    // The paths the cut did not touch stayed up while it lasted. (Changing
    // the router's nft tables stalls its forwarding for a few ms, every
    // path at once, which both ends may rightly flag for a moment: the
    // first 100 ms of the cut and its end are left out.)
    let during = |s: &&Seen| s.at > cut + Duration::from_millis(100) && s.at < heal && s.path.starts_with("a1 ");
    assert!(at_a.iter().filter(during).all(|s| s.state == "up"), "an untouched path was blamed during the cut");
    let _ = (&t.db, &t.dir);
}

#[test]
fn failover_loses_at_most_300_ms_when_its_path_dies() {
    if !root_or_skip("failover_loses_at_most_300_ms_when_its_path_dies") {
        return;
    }
    let _g = serial();
    // `policy` goes before the first section: it is a top-level key.
    let t =
        two_hosts_with(|_| {}, |a, b| (format!("policy = \"failover\"\n{a}"), format!("policy = \"failover\"\n{b}")));
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    let t0 = std::time::Instant::now();
    let active = loop {
        let snap = t.da.snapshot();
        let paths = &snap.peers[0].paths;
        if paths.iter().all(|p| p.state == "up") && paths.iter().filter(|p| p.selected).count() == 1 {
            break paths.iter().find(|p| p.selected).unwrap().link.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{paths:#?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The router's side of A's active link.
    let router_dev = format!("m{active}");
    let m = t.m.name.clone();
    // 2 000 packets/s for 4 s; the active link cut (both ways) after 1 s, for good.
    let r = stream(&t, 8000, move |i| {
        if i == 2000 {
            nsh(&m, &["nft", "add table inet cut"]);
            nsh(&m, &["nft", "add chain inet cut f { type filter hook forward priority 0; }"]);
            nsh(&m, &["nft", &format!("add rule inet cut f iifname {router_dev} counter drop")]);
            nsh(&m, &["nft", &format!("add rule inet cut f oifname {router_dev} counter drop")]);
        }
    });
    let lost = Duration::from_micros(500) * r.missing.len() as u32;
    eprintln!("failover over {active}: {} packets lost ({lost:?})", r.missing.len());
    assert!(!r.missing.is_empty(), "the cut link carried the stream");
    assert!(lost <= Duration::from_millis(300), "lost {lost:?}");
    // It moved to a path on the other link, and stays there.
    let snap = t.da.snapshot();
    let now_on = snap.peers[0].paths.iter().find(|p| p.selected).map(|p| p.link.clone());
    assert!(now_on.is_some_and(|l| l != active), "{:#?}", snap.peers[0].paths);
    let _ = (&t.db, &t.dir);
}

#[test]
fn the_only_working_link_renumbered_mid_stream_loses_under_100_ms() {
    if !root_or_skip("the_only_working_link_renumbered_mid_stream_loses_under_100_ms") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    // As DHCP clients and systemd hosts do: a secondary address is promoted
    // when the primary goes.
    t.a.sysctl("net.ipv4.conf.a0.promote_secondaries", "1");
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    wait_paths_up(&t.db);
    // Link a1 dead for good: a0 carries everything.
    for rule in ["add table inet cut", "add chain inet cut f { type filter hook forward priority 0; }"] {
        t.m.sh(&["nft", rule]);
    }
    t.m.sh(&["nft", "add rule inet cut f iifname ma1 counter drop"]);
    t.m.sh(&["nft", "add rule inet cut f oifname ma1 counter drop"]);
    std::thread::sleep(Duration::from_millis(1500));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = poll_paths([t.da.socket.clone(), t.db.socket.clone()], stop.clone());
    let a = t.a.name.clone();
    let when = std::sync::Arc::new(std::sync::Mutex::new(None));
    let mark = when.clone();
    // 2 000 packets/s for 3 s; 1 s in, a0 moves from 10.10.0.2 to 10.10.0.5.
    let r = stream(&t, 6000, move |i| {
        if i == 2000 {
            *mark.lock().unwrap() = Some(std::time::Instant::now());
            nsh(&a, &["ip", "addr", "add", "10.10.0.5/24", "dev", "a0"]);
            nsh(&a, &["ip", "addr", "del", "10.10.0.2/24", "dev", "a0"]);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let [_, at_b] = poller.join().unwrap();
    let lost = Duration::from_micros(500) * r.missing.len() as u32;
    eprintln!("renumbered: {} packets lost ({lost:?})", r.missing.len());
    assert!(lost <= Duration::from_millis(100), "lost {lost:?}");
    let moved = when.lock().unwrap().unwrap();
    let up = entered(&at_b, |p| p.ends_with("10.10.0.5:51820"), |s| s == "up", moved)
        .unwrap_or_else(|| panic!("B never showed a path to 10.10.0.5 up"));
    eprintln!("renumbered: B shows the new address up {up:?} after the change");
    assert!(up <= Duration::from_millis(500), "{up:?}");
    let _ = (&t.da, &t.dir);
}

#[test]
fn a_peer_cannot_send_from_an_address_not_routed_to_it() {
    if !root_or_skip("a_peer_cannot_send_from_an_address_not_routed_to_it") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    // A puts an address outside its prefixes on its TUN and pings B from it.
    t.a.sh(&["ip", "addr", "add", "10.9.0.77/32", "dev", "mpvr0"]);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.a.name, "ping", "-I", "10.9.0.77", "-c", "20", "-i", "0.05", "-W", "1", "10.9.0.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("20 packets transmitted, 0 received"), "{text}");
    let snap = t.db.snapshot();
    assert!(snap.peers[0].bad_source >= 20, "{:#?}", snap.peers[0]);
    assert!(snap.totals.drops["bad_source"] >= 20);
    assert!(t.db.status(&[]).contains("bad_source"));
    // From its own address it still gets through.
    t.a.sh(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    let _ = (&t.da, &t.dir);
}

#[test]
fn a_link_taken_down_loses_nothing_and_is_used_again() {
    if !root_or_skip("a_link_taken_down_loses_nothing_and_is_used_again") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    let a = t.a.name.clone();
    let socket = t.da.socket.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen2 = seen.clone();
    let r = stream(&t, 8000, move |i| {
        if i == 2000 {
            nsh(&a, &["ip", "link", "set", "a1", "down"]);
        }
        if i == 5000 {
            // Status lists the path over the down link: down, and why.
            let out = std::process::Command::new(mpvr()).args(["status", "--json", "-s"]).arg(&socket).output();
            let snap: mpvr::status::Snapshot = serde_json::from_slice(&out.unwrap().stdout).unwrap();
            let p = snap.peers[0].paths.iter().find(|p| p.link == "a1").cloned();
            *seen.lock().unwrap() = p.map(|p| (p.state, p.reason, p.state_for_s));
        }
        if i == 6000 {
            nsh(&a, &["ip", "link", "set", "a1", "up"]);
        }
    });
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
    let (state, reason, for_s) = seen2.lock().unwrap().clone().expect("the path over the down link is listed");
    assert_eq!((state.as_str(), reason.as_str()), ("down", "local link down"));
    assert!((1.0..2.5).contains(&for_s), "down for {for_s} s (since the link went down 1.5 s before)");
    t.da.wait_log("link up link=a1", 2, Duration::from_secs(5));
    t.da.wait_log("policy routing installed link=a1", 2, Duration::from_secs(5));
    // a1 carries copies again, through its own table.
    let before = counter(&t.m, "ma1", "rx_bytes");
    let r = stream(&t, 1000, |_| {});
    assert_eq!(r.received, 1000);
    let carried = counter(&t.m, "ma1", "rx_bytes") - before;
    assert!(carried >= 1000 * 236, "a1 carried {carried} bytes after coming back");
    let _ = (&t.db, &t.dir);
}

#[test]
fn a_nic_deleted_and_recreated_is_used_again_without_restart() {
    if !root_or_skip("a_nic_deleted_and_recreated_is_used_again_without_restart") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    t.a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.2"]);
    let (a, m) = (t.a.name.clone(), t.m.name.clone());
    let r = stream(&t, 8000, move |i| {
        if i == 2000 {
            nsh(&a, &["ip", "link", "del", "a1"]);
        }
        if i == 6000 {
            sh(&["ip", "link", "add", "a1", "netns", &a, "type", "veth", "peer", "name", "ma1", "netns", &m]);
            nsh(&a, &["ip", "addr", "add", "10.11.0.2/24", "dev", "a1"]);
            nsh(&m, &["ip", "addr", "add", "10.11.0.1/24", "dev", "ma1"]);
            nsh(&a, &["ip", "link", "set", "a1", "up"]);
            nsh(&m, &["ip", "link", "set", "ma1", "up"]);
        }
    });
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
    t.da.wait_log("link up link=a1", 2, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let before = counter(&t.m, "ma1", "rx_bytes");
    let r = stream(&t, 1000, |_| {});
    assert_eq!(r.received, 1000);
    let carried = counter(&t.m, "ma1", "rx_bytes") - before;
    assert!(carried >= 1000 * 236, "the re-created a1 carried {carried} bytes");
    let _ = (&t.db, &t.dir);
}

#[test]
fn sigterm_removes_everything_it_added() {
    if !root_or_skip("sigterm_removes_everything_it_added") {
        return;
    }
    let _g = serial();
    let mut t = two_hosts();
    assert!(t.a.sh(&["ip", "rule"]).contains("5182:"));
    assert_eq!(t.da.stop(), Some(0));
    assert!(!t.a.sh(&["ip", "link"]).contains("mpvr0"));
    assert!(!t.a.sh(&["ip", "rule"]).contains("5182:"));
    // No route of mpvr's is left in any table (they carry protocol 109).
    assert!(!t.a.sh(&["ip", "route", "show", "table", "all"]).contains("proto 109"));
    assert!(t.da.log().contains("mpvr stopped"));
    let _ = (&t.db, &t.dir, &t.m, &t.b);
}

fn run_fails(ns: &Netns, prefix: &[&str], config: &Path) -> String {
    let mut args = vec!["ip", "netns", "exec", &ns.name];
    args.extend_from_slice(prefix);
    let cfg = config.display().to_string();
    let socket = config.with_extension("sock");
    let socket_arg = socket.display().to_string();
    args.extend_from_slice(&[mpvr(), "run", "-c", &cfg, "--socket", &socket_arg]);
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // Nothing left behind: no TUN, rule, route or control socket.
    assert!(!ns.sh(&["ip", "link"]).contains("mpvr0"), "a TUN was left after: {err}");
    assert!(!ns.sh(&["ip", "rule"]).contains("5182:"), "a rule was left after: {err}");
    assert!(!ns.sh(&["ip", "route", "show", "table", "all"]).contains("proto 109"), "a route was left after: {err}");
    assert!(!socket.exists(), "the control socket was left after: {err}");
    err
}

#[test]
fn bad_config_unknown_nic_or_missing_privilege_fail_cleanly() {
    if !root_or_skip("bad_config_unknown_nic_or_missing_privilege_fail_cleanly") {
        return;
    }
    let _g = serial();
    let a = Netns::new("a");
    let m = Netns::new("m");
    veth(&a, "a0", "10.10.0.2/24", &m, "ma0", "10.10.0.1/24");
    let dir = TempDir::new();
    let (key, _) = keypair(&dir, "a.key");
    let good = format!(
        "[host]\nid = 1\nprivate_key_file = \"{}\"\naddresses = [\"10.9.0.1/24\"]\n[links]\nallow_virtual = true\n",
        key.display()
    );

    let bad = dir.write("bad.toml", &good.replace("id = 1", "id = 0"));
    let err = run_fails(&a, &[], &bad);
    assert!(err.contains("host.id") && err.contains("reserved"), "{err}");

    let unknown = dir.write("unknown.toml", &format!("{good}[link.wan9]\ngateway = \"10.10.0.1\"\n"));
    let err = run_fails(&a, &[], &unknown);
    assert!(err.contains("wan9") && err.contains("do not exist"), "{err}");

    let ok = dir.write("ok.toml", &good);
    let err = run_fails(&a, &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"], &ok);
    assert!(err.contains("CAP_NET_ADMIN") && err.contains("CAP_NET_RAW"), "{err}");

    // The UDP port taken on the link by another program: fatal, named, nothing left.
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let holder = in_netns(&a.name, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:51820").unwrap();
        bound_tx.send(()).unwrap();
        let _ = done_rx.recv();
        drop(s);
    });
    bound_rx.recv().unwrap();
    let err = run_fails(&a, &[], &ok);
    done_tx.send(()).unwrap();
    holder.join().unwrap();
    assert!(err.contains("UDP port 51820 is in use on a0") && err.contains("host.listen_port"), "{err}");

    // `mpvr check` where the only NIC is a veth and virtual NICs are not
    // allowed: exit 1, the reason, and no "ok"; allowed: ok.
    let novirt = dir.write("novirt.toml", &good.replace("allow_virtual = true", "allow_virtual = false"));
    let check = |c: &Path| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &a.name, mpvr(), "check", "-c"])
            .arg(c)
            .output()
            .unwrap()
    };
    let out = check(&novirt);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("no network interface here becomes a link") && stderr.contains("a0"), "{stderr}");
    assert!(stderr.contains("allow_virtual = true") && !stdout.contains(": ok"), "{stdout}{stderr}");
    let out = check(&ok);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim_end().ends_with(": ok"));

    // And `mpvr check` says what is wrong without needing root.
    let out = std::process::Command::new(mpvr()).args(["check", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host.id"));
}

/// The seed layout with the example configs from examples/seed: VM0 and VM2
/// share no link and reach each other only through VM1, the virtual router.
#[test]
fn seed_layout_relays_through_vm1_and_a_cut_loses_nothing() {
    if !root_or_skip("seed_layout_relays_through_vm1_and_a_cut_loses_nothing") {
        return;
    }
    let _g = serial();
    let vm0 = Netns::new("v0");
    let vm1 = Netns::new("v1");
    let vm2 = Netns::new("v2");
    veth(&vm0, "net0", "192.168.0.2/24", &vm1, "net0", "192.168.0.3/24");
    veth(&vm0, "net1", "192.168.1.2/24", &vm1, "net1", "192.168.1.3/24");
    veth(&vm2, "net2", "192.168.2.2/24", &vm1, "net2", "192.168.2.3/24");
    veth(&vm2, "net3", "192.168.3.2/24", &vm1, "net3", "192.168.3.3/24");
    let dir = TempDir::new();
    let keys: Vec<_> = ["vm0", "vm1", "vm2"].iter().map(|n| keypair(&dir, &format!("{n}.key"))).collect();
    let example = |name: &str, key: &Path| {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/seed").join(name)).unwrap();
        let text = text
            .replace("/etc/mpvr/private.key", &key.display().to_string())
            .replace("REPLACE with VM0's public key", &keys[0].1)
            .replace("REPLACE with VM1's public key", &keys[1].1)
            .replace("REPLACE with VM2's public key", &keys[2].1)
            .replace("[links]\n", "[links]\nallow_virtual = true\n");
        dir.write(name, &text)
    };
    // vm0 and vm2 without their `via` sections: they learn each other's
    // address from the relay's advertisements.
    let learn = |path: std::path::PathBuf, marker: &str| {
        let text = std::fs::read_to_string(&path).unwrap();
        let cut = text.find(marker).expect("the example has a relayed peer");
        let start = text[..cut].rfind("[[peer]]").unwrap();
        std::fs::write(&path, &text[..start]).unwrap();
        path
    };
    let c0 = learn(example("vm0.toml", &keys[0].0), "# VM2, reached through VM1");
    let c1 = example("vm1.toml", &keys[1].0);
    let c2 = learn(example("vm2.toml", &keys[2].0), "# VM0, reached through VM1");
    // vm2 also advertises a network behind it (an address on its loopback).
    let text = std::fs::read_to_string(&c2).unwrap().replace("[host]\n", "[host]\nadvertise = [\"10.77.0.0/24\"]\n");
    std::fs::write(&c2, text).unwrap();
    vm2.sh(&["ip", "addr", "add", "10.77.0.1/32", "dev", "lo"]);
    let d1 = Daemon::start(&vm1, &c1, dir.0.join("vm1.log"));
    let d0 = Daemon::start(&vm0, &c0, dir.0.join("vm0.log"));
    let mut d2 = Daemon::start(&vm2, &c2, dir.0.join("vm2.log"));
    d1.wait_log("link up", 4, Duration::from_secs(10));
    d0.wait_log("link up", 2, Duration::from_secs(10));
    d2.wait_log("link up", 2, Duration::from_secs(10));
    // The route to vm2 is learned: through vm1, from the mesh.
    let t0 = std::time::Instant::now();
    let route = loop {
        let snap = d0.snapshot();
        if let Some(r) = snap.routes.iter().find(|r| r.prefix == "10.9.0.2/32") {
            break r.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no route to vm2: {:#?}", snap.routes);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((route.next_hop.as_str(), route.source.as_str(), route.origin), ("3", "mesh", Some(2)), "{route:?}");
    vm0.sh(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    // The network behind vm2 is learned too, and vm0's kernel routes it into the TUN.
    let t0 = std::time::Instant::now();
    while !vm0.sh(&["ip", "route", "show", "10.77.0.0/24"]).contains("dev mpvr0") {
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", vm0.sh(&["ip", "route"]));
        std::thread::sleep(Duration::from_millis(100));
    }
    vm0.sh(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.77.0.1"]);
    // vm2 is not vm0's neighbour: its advert key was pinned on first use,
    // through vm1, and it is the key `mpvr pubkey --advert` gives for vm2.
    let pinned = d0.snapshot().origin_keys.into_iter().find(|k| k.origin == 2).expect("vm2's advert key pinned");
    let out = std::process::Command::new(mpvr())
        .args(["pubkey", "--advert"])
        .stdin(std::fs::File::open(&keys[2].0).unwrap())
        .output()
        .unwrap();
    assert_eq!(pinned.key, String::from_utf8(out.stdout).unwrap().trim());
    assert_eq!((pinned.bound.as_str(), pinned.via), ("first use", 3));
    assert!(d0.status(&[]).contains("advert keys pinned on first use"));
    // Each of vm0's and vm2's links in turn goes down mid-stream: nothing lost.
    for (ns, dev) in [(&vm0, "net0"), (&vm0, "net1"), (&vm2, "net2"), (&vm2, "net3")] {
        let name = ns.name.clone();
        let r = udp_stream(
            &vm0.name,
            &vm2.name,
            "10.9.0.2:7000".parse().unwrap(),
            4000,
            Duration::from_micros(500),
            300,
            move |i| {
                if i == 1000 {
                    nsh(&name, &["ip", "link", "set", dev, "down"]);
                }
                if i == 3000 {
                    nsh(&name, &["ip", "link", "set", dev, "up"]);
                }
            },
        );
        if !r.missing.is_empty() || r.duplicates != 0 {
            for d in [&d0, &d1, &d2] {
                eprintln!("--- {} ---\n{}", d.log.display(), d.log());
            }
        }
        assert_eq!(r.missing, Vec::<u64>::new(), "{dev} down: lost {} of {}", r.missing.len(), r.sent);
        assert_eq!(r.duplicates, 0);
        // Wait for every path to be up again before the next cut.
        let t0 = std::time::Instant::now();
        while !d1.snapshot().peers.iter().all(|p| p.paths.iter().all(|x| x.state == "up")) {
            assert!(t0.elapsed() < Duration::from_secs(10), "{:#?}", d1.snapshot().peers);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A forged inner source through the relay: vm0 sends from an address
    // not routed to it; the relay refuses every packet (bad_source).
    vm0.sh(&["ip", "addr", "add", "10.9.0.77/32", "dev", "mpvr0"]);
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &vm0.name, "ping", "-I", "10.9.0.77", "-c", "10", "-i", "0.05", "-W", "1", "10.9.0.2"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10 packets transmitted, 0 received"), "{text}");
    let relay = d1.snapshot();
    let from_vm0 = relay.peers.iter().find(|p| p.id == 1).expect("vm0 is the relay's peer");
    assert!(from_vm0.bad_source >= 10, "{from_vm0:#?}");
    vm0.sh(&["ip", "addr", "del", "10.9.0.77/32", "dev", "mpvr0"]);
    // vm0's config gives vm2's network to vm2 (a reload adds the relayed
    // peer back), then the relay claims a part of it (another reload): vm0
    // refuses the relay's advert, counts it, and routes nothing new.
    let full = example("vm0.toml", &keys[0].0);
    let text = std::fs::read_to_string(&full)
        .unwrap()
        .replace("prefixes = [\"10.9.0.2/32\"]", "prefixes = [\"10.9.0.2/32\", \"10.77.0.0/24\"]");
    std::fs::write(&c0, text).unwrap();
    let reload = |d: &Daemon| {
        let out = std::process::Command::new(mpvr()).arg("reload").arg("-s").arg(&d.socket).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    reload(&d0);
    let text = std::fs::read_to_string(&c1).unwrap().replace("[host]\n", "[host]\nadvertise = [\"10.77.0.0/25\"]\n");
    std::fs::write(&c1, text).unwrap();
    reload(&d1);
    let t0 = std::time::Instant::now();
    while d0.snapshot().totals.drops.get("advert_unowned").copied().unwrap_or(0) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "vm1's claim was not refused:\n{}", d0.status(&[]));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!d0.snapshot().routes.iter().any(|r| r.prefix == "10.77.0.0/25"), "{:#?}", d0.snapshot().routes);
    assert!(!vm0.sh(&["ip", "route"]).contains("10.77.0.0/25"));
    assert!(d0.log().contains("route advertisement refused") && d0.log().contains("10.77.0.0/25"), "{}", d0.log());
    // The overlay still works (what the relay does with what it relays,
    // 10.77.0.0/25 now its own, is the relay's: it can always drop it).
    vm0.sh(&["ping", "-c", "2", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    // An impostor in vm2's name: the relay is told (reload) that host 2
    // has a new key, and a daemon with that key and id 2 takes vm2's place
    // and advertises a network of its own. The relay takes it (its config
    // vouches for it), but vm0 pinned host 2's advert key: it refuses the
    // impostor's advert as forged and routes nothing new.
    d2.stop();
    let (impostor_key, impostor_pub) = keypair(&dir, "impostor.key");
    let text = std::fs::read_to_string(&c1).unwrap().replace(&keys[2].1, &impostor_pub);
    std::fs::write(&c1, text).unwrap();
    reload(&d1);
    let text = std::fs::read_to_string(&c2)
        .unwrap()
        .replace(&keys[2].0.display().to_string(), &impostor_key.display().to_string())
        .replace("advertise = [\"10.77.0.0/24\"]", "advertise = [\"10.78.0.0/24\"]");
    let ci = dir.write("impostor.toml", &text);
    let forged_before = d0.snapshot().totals.drops.get("advert_forged").copied().unwrap_or(0);
    let _impostor = Daemon::start(&vm2, &ci, dir.0.join("impostor.log"));
    let t0 = std::time::Instant::now();
    while d0.snapshot().totals.drops.get("advert_forged").copied().unwrap_or(0) == forged_before {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the impostor's advert was not refused:\n{}\n{}",
            d0.status(&[]),
            d1.status(&[])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap = d0.snapshot();
    assert!(!snap.routes.iter().any(|r| r.prefix == "10.78.0.0/24"), "{:#?}", snap.routes);
    assert!(!vm0.sh(&["ip", "route"]).contains("10.78.0.0"));
    let still = snap.origin_keys.iter().find(|k| k.origin == 2).expect("host 2's key stays pinned");
    assert_eq!(still.key, pinned.key);
    let log = d0.log();
    assert!(
        log.lines().any(|l| l.contains("route advertisement refused")
            && l.contains("origin=2")
            && l.contains("signed with another key than the origin's")),
        "{log}"
    );
}

/// Two hosts joined directly by two veth pairs, each with an IPv4 and an
/// IPv6 subnet; `host_extra` goes into both [host] sections and `peer_of(n)`
/// gives the endpoints list of host n.
fn direct_pair(host_extra: &str, peer_of: impl Fn(u32) -> String) -> (Netns, Netns, TempDir, Daemon, Daemon) {
    let a = Netns::new("a");
    let b = Netns::new("b");
    veth(&a, "a0", "10.1.0.1/24", &b, "b0", "10.1.0.2/24");
    veth(&a, "a1", "10.2.0.1/24", &b, "b1", "10.2.0.2/24");
    for (ns, n) in [(&a, 1), (&b, 2)] {
        let dev = if n == 1 { "a" } else { "b" };
        ns.sh(&["ip", "addr", "add", &format!("fd01::{n}/64"), "dev", &format!("{dev}0"), "nodad"]);
        ns.sh(&["ip", "addr", "add", &format!("fd02::{n}/64"), "dev", &format!("{dev}1"), "nodad"]);
    }
    let dir = TempDir::new();
    let (ka, pa) = keypair(&dir, "a.key");
    let (kb, pb) = keypair(&dir, "b.key");
    let cfg = |me: u32, key: &Path, peer: u32, public: &str| {
        format!(
            "[host]\nid = {me}\nprivate_key_file = \"{}\"\naddresses = [\"10.9.0.{me}/24\"]\n{host_extra}\n\
             [links]\nallow_virtual = true\n[[peer]]\nid = {peer}\npublic_key = \"{public}\"\nendpoints = {}\n\
             prefixes = [\"10.9.0.{peer}/32\"]\n",
            key.display(),
            peer_of(peer)
        )
    };
    let ca = dir.write("a.toml", &cfg(1, &ka, 2, &pb));
    let cb = dir.write("b.toml", &cfg(2, &kb, 1, &pa));
    let da = Daemon::start(&a, &ca, dir.0.join("a.log"));
    let db = Daemon::start(&b, &cb, dir.0.join("b.log"));
    for d in [&da, &db] {
        d.wait_log("link up", 2, Duration::from_secs(10));
    }
    (a, b, dir, da, db)
}

fn cut_a0_midstream(a: &Netns, b: &Netns) -> StreamResult {
    let an = a.name.clone();
    udp_stream(&a.name, &b.name, TO_B.parse().unwrap(), 6000, Duration::from_micros(500), 300, move |i| {
        if i == 1500 {
            nsh(&an, &["ip", "link", "set", "a0", "down"]);
        }
        if i == 4500 {
            nsh(&an, &["ip", "link", "set", "a0", "up"]);
        }
    })
}

#[test]
fn raw_ip_transport_carries_traffic_and_a_cut_loses_nothing() {
    if !root_or_skip("raw_ip_transport_carries_traffic_and_a_cut_loses_nothing") {
        return;
    }
    let _g = serial();
    let (a, b, _dir, da, db) = direct_pair("transport = \"ip\"", |n| format!("[\"10.1.0.{n}\", \"10.2.0.{n}\"]"));
    a.sh(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    // No UDP header: 8 bytes more for the applications than over UDP.
    assert!(a.sh(&["ip", "link", "show", "mpvr0"]).contains("mtu 1444"));
    let r = cut_a0_midstream(&a, &b);
    if !r.missing.is_empty() {
        eprintln!("--- A ---\n{}\n--- B ---\n{}", da.log(), db.log());
    }
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
}

#[test]
fn ipv6_underlay_carries_traffic_and_a_cut_loses_nothing() {
    if !root_or_skip("ipv6_underlay_carries_traffic_and_a_cut_loses_nothing") {
        return;
    }
    let _g = serial();
    let (a, b, _dir, da, db) = direct_pair("", |n| format!("[\"[fd01::{n}]:51820\", \"[fd02::{n}]:51820\"]"));
    a.sh(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    // IPv6 underlay: 20 bytes more header than IPv4.
    assert!(a.sh(&["ip", "link", "show", "mpvr0"]).contains("mtu 1416"));
    let r = cut_a0_midstream(&a, &b);
    if !r.missing.is_empty() {
        eprintln!("--- A ---\n{}\n--- B ---\n{}", da.log(), db.log());
    }
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
}

/// A is behind a NAT on both links (masquerade in the router); B knows no
/// endpoint for A: A's handshake and packets teach B where A is, on both
/// links, and traffic flows both ways on both.
#[test]
fn a_host_behind_nat_is_reached_on_both_links() {
    if !root_or_skip("a_host_behind_nat_is_reached_on_both_links") {
        return;
    }
    let _g = serial();
    let t = two_hosts_with(
        |m| {
            m.sh(&["nft", "add table ip nat"]);
            m.sh(&["nft", "add chain ip nat post { type nat hook postrouting priority 100; }"]);
            m.sh(&["nft", "add rule ip nat post oifname { mb0, mb1 } masquerade"]);
        },
        |a, b| (a, b.replace(r#"endpoints = ["10.10.0.2:51820", "10.11.0.2:51820"]"#, "endpoints = []")),
    );
    // Until 3 replies, for up to 12 s: a first initiation lost on the way
    // (seen twice in full test runs; in the one logged, both links' copies
    // left A and B received nothing) is sent again after 5 s, as in
    // WireGuard.
    t.a.sh(&["ping", "-c", "3", "-i", "0.2", "-w", "12", "10.9.0.2"]);
    let bytes = |d: &str| counter(&t.b, d, "tx_bytes");
    let before = (bytes("b0"), bytes("b1"));
    // B -> A: B has only the paths it learned through the NAT.
    let to_a: SocketAddr = "10.9.0.1:7000".parse().unwrap();
    let r = udp_stream(&t.b.name, &t.a.name, to_a, 2000, Duration::from_micros(500), 200, |_| {});
    assert_eq!(r.missing, Vec::<u64>::new(), "lost {} of {}", r.missing.len(), r.sent);
    // Both of B's links carried a copy of every packet.
    assert!(bytes("b0") - before.0 >= 2000 * 236, "b0 sent {} bytes", bytes("b0") - before.0);
    assert!(bytes("b1") - before.1 >= 2000 * 236, "b1 sent {} bytes", bytes("b1") - before.1);
    let r = stream(&t, 2000, |_| {});
    assert_eq!(r.received, 2000);
    let _ = (&t.da, &t.db, &t.dir);
}

/// B has a wrong public key for A: no session, the refusal is logged with
/// the peer's id at most once per 10 s, and counted.
#[test]
fn a_wrong_key_gets_no_session_and_is_logged_once_per_interval() {
    if !root_or_skip("a_wrong_key_gets_no_session_and_is_logged_once_per_interval") {
        return;
    }
    let _g = serial();
    let wrong = sh(&[mpvr(), "genkey"]);
    let wrong_pub = {
        let mut c = std::process::Command::new(mpvr())
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(c.stdin.as_mut().unwrap(), wrong.as_bytes()).unwrap();
        String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap().trim().to_string()
    };
    let mut t = two_hosts_with(
        |_| {},
        |a, b| {
            let at = b.find("public_key = \"").unwrap() + 14;
            let b = format!("{}{}{}", &b[..at], wrong_pub, &b[at + 44..]);
            (a, b)
        },
    );
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.a.name, "ping", "-c", "2", "-W", "1", "10.9.0.2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a session came up with a wrong key");
    // Each side's status says why there is no session.
    let why = |d: &Daemon| d.snapshot().peers[0].no_session.clone().unwrap_or_default();
    assert!(why(&t.db).starts_with("handshake refused") && why(&t.db).contains("key"), "{}", why(&t.db));
    // A's initiations get no answer, and B's (to a key A does not have) do not authenticate.
    assert!(why(&t.da).starts_with("no answer for") || why(&t.da).contains("do not match"), "{}", why(&t.da));
    assert!(t.db.status(&[]).contains("no session (handshake refused"), "{}", t.db.status(&[]));
    // A tries every 5 s; B logs the refusal at most once per 10 s.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(t.db.stop(), Some(0));
    let log = t.db.log();
    let refusals = log.lines().filter(|l| l.contains("handshake refused") && l.contains("peer=1")).count();
    assert!((1..=2).contains(&refusals), "{refusals} refusal lines:\n{log}");
    assert!(log.contains("handshake_wrong_key="), "{log}");
    assert!(!log.contains("session established"), "{log}");
}

/// One HTTP GET on `addr` from inside namespace `ns`: status line and body.
fn http_get(ns: &str, addr: &'static str, path: &'static str) -> String {
    in_netns(ns, move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .join()
    .unwrap()
}

#[test]
fn status_metrics_and_their_access() {
    if !root_or_skip("status_metrics_and_their_access") {
        return;
    }
    let _g = serial();
    // B insists on ChaCha20-Poly1305: A (auto) agrees to it. A runs on one
    // thread, B on one worker per CPU: both kinds of runtime carry the
    // traffic.
    let t = two_hosts_with(
        |_| {},
        |a, b| {
            (
                format!(
                    "{}\n[control]\nprometheus = \"127.0.0.1:9182\"\n",
                    a.replace("[host]\n", "[host]\nthreads = 1\n")
                ),
                format!("{b}\n[session]\ncipher = \"chacha20-poly1305\"\n"),
            )
        },
    );
    t.a.sh(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.9.0.2"]);
    // Wait until every path answered its probes.
    let t0 = std::time::Instant::now();
    while !t.da.snapshot().peers[0].paths.iter().all(|p| p.state == "up") {
        assert!(t0.elapsed() < Duration::from_secs(5), "{:#?}", t.da.snapshot());
        std::thread::sleep(Duration::from_millis(100));
    }
    let snap = t.da.snapshot();
    assert!(t.da.log().contains("threads=1 setting=1"), "{}", t.da.log());
    assert!(t.db.log().contains("setting=auto"), "{}", t.db.log());
    assert_eq!(snap.host, 1);
    assert_eq!(snap.peers[0].session.as_ref().map(|s| s.cipher.as_str()), Some("ChaCha20-Poly1305"));
    assert!(t.da.status(&[]).contains("ChaCha20-Poly1305"), "{}", t.da.status(&[]));
    assert!(snap.totals.tun_out.packets >= 3);
    // Prometheus: every path's state and RTT, under the documented names.
    let m = http_get(&t.a.name, "127.0.0.1:9182", "/metrics");
    assert!(m.starts_with("HTTP/1.1 200 OK") && m.contains("application/openmetrics-text"), "{m}");
    for p in &snap.peers[0].paths {
        let labels = format!("peer=\"2\",link=\"{}\",remote=\"{}\"", p.link, p.remote);
        assert!(m.contains(&format!("mpvr_path_state{{{labels},state=\"up\"}} 1")), "{labels} missing:\n{m}");
        assert!(m.contains(&format!("mpvr_path_rtt_seconds{{{labels}}}")), "{labels} rtt missing");
    }
    assert!(m.contains("mpvr_tun_packets_total{direction=\"out\"}") && m.trim_end().ends_with("# EOF"));
    assert!(m.contains("\nmpvr_links_up{} 2.0\n") && m.contains("\nmpvr_config_reloads_total{} 0\n"), "{m}");
    assert!(http_get(&t.a.name, "127.0.0.1:9182", "/").starts_with("HTTP/1.1 404"));
    // The control socket is root's alone: another user is refused with a clear message.
    let mode =
        std::fs::metadata(&t.da.socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap();
    assert_eq!(mode & 0o777, 0o600);
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", mpvr(), "status", "-s"])
        .arg(&t.da.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("permission denied") && err.contains("sudo"), "{err}");
    // A second daemon on the same socket refuses to start, and names it.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &t.a.name, mpvr(), "run", "-c"])
        .arg(t.dir.0.join("a.toml"))
        .arg("--socket")
        .arg(&t.da.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another mpvr answers"), "{err}");
    // The first one still answers.
    assert_eq!(t.da.snapshot().host, 1);
    // SIGHUP does not stop it: it reloads the config (unchanged here).
    let pid = t.da.child.as_ref().expect("running").id() as i32;
    // SAFETY: kill(2) on a pid this test started.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    t.da.wait_log("config reloaded", 1, Duration::from_secs(5));
    assert!(t.da.log().contains("changes=no change"), "{}", t.da.log());
    assert_eq!(t.da.snapshot().host, 1, "still running after SIGHUP");
    let _ = &t.db;
}

/// systemd: the shipped unit passes `systemd-analyze verify`, and the
/// daemon says READY=1 (once its TUN and links are up) and STOPPING=1 on
/// the notify socket systemd would give it.
#[test]
fn systemd_unit_and_readiness() {
    if !root_or_skip("systemd_unit_and_readiness") {
        return;
    }
    let _g = serial();
    let dir = TempDir::new();
    let unit = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/mpvr.service")).unwrap();
    let unit = dir.write("mpvr.service", &unit.replace("/usr/bin/mpvr", mpvr()));
    assert!(unit.exists());
    let out = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&unit).output();
    match out {
        Ok(o) => assert!(o.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            assert!(std::env::var_os("CI").is_none(), "CI installs systemd (systemd-analyze): {e}");
            eprintln!("SKIPPED systemd-analyze verify: {e}");
        }
    }

    let a = Netns::new("a");
    let m = Netns::new("m");
    veth(&a, "a0", "10.10.0.2/24", &m, "ma0", "10.10.0.1/24");
    let (key, _) = keypair(&dir, "a.key");
    let config = dir.write(
        "a.toml",
        &format!(
            "[host]\nid = 1\nprivate_key_file = \"{}\"\naddresses = [\"10.9.0.1/24\"]\n[links]\nallow_virtual = true\n",
            key.display()
        ),
    );
    let notify = dir.0.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut d =
        Daemon::start_with_env(&a, &config, dir.0.join("a.log"), &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1\n", "{}", String::from_utf8_lossy(&buf[..n]));
    // Ready means ready: the TUN and the link are there already.
    assert!(a.sh(&["ip", "link", "show", "mpvr0"]).contains("mpvr0"));
    assert!(d.log().contains("link up"), "{}", d.log());
    // A reload is framed by RELOADING=1 (with the monotonic clock, as
    // Type=notify-reload wants) and READY=1.
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    let n = sock.recv(&mut buf).expect("RELOADING=1 at a reload");
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
    let n = sock.recv(&mut buf).expect("READY=1 after the reload");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert_eq!(d.stop(), Some(0));
    let n = sock.recv(&mut buf).expect("STOPPING=1 at shutdown");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
}

/// Captured tunnel datagrams sent again from an attacker's own address (the
/// middle router M, which sees every packet): they reach no TUN, teach B
/// no path, and draw not one datagram toward that address.
#[test]
fn replayed_datagrams_teach_no_path_and_draw_no_traffic() {
    if !root_or_skip("replayed_datagrams_teach_no_path_and_draw_no_traffic") {
        return;
    }
    let _g = serial();
    let t = two_hosts();
    wait_paths_up(&t.db);
    // Capture, on M's side of B's link 0, the mpvr datagrams A sends to B
    // (AF_PACKET: whole IPv4 packets) while a stream runs.
    let m_ns = t.m.name.clone();
    let capture = in_netns(&m_ns, move || {
        // SAFETY: plain socket calls on a socket this thread owns; buffers outlive the calls.
        unsafe {
            let index = libc::if_nametoindex(c"mb0".as_ptr()) as i32;
            assert!(index > 0, "mb0 in {}", std::io::Error::last_os_error());
            let s = libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from((libc::ETH_P_IP as u16).to_be()));
            assert!(s >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            sll.sll_ifindex = index;
            let r = libc::bind(s, (&sll as *const libc::sockaddr_ll).cast(), std::mem::size_of_val(&sll) as u32);
            assert_eq!(r, 0);
            let tv = libc::timeval { tv_sec: 3, tv_usec: 0 };
            libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&tv as *const libc::timeval).cast(), 16);
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while got.len() < 200 {
                let n = libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), 0);
                if n <= 0 {
                    break;
                }
                let p = &buf[..n as usize];
                let ihl = usize::from(p[0] & 0x0f) * 4;
                // UDP to B's port 51820, from A.
                if p[9] == 17 && p.len() > ihl + 8 && u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]) == 51820 {
                    got.push(p[ihl + 8..].to_vec());
                }
            }
            libc::close(s);
            got
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let r = stream(&t, 1000, |_| {});
    assert_eq!(r.received, 1000);
    let captured = capture.join().unwrap();
    assert!(captured.len() >= 150, "captured {} datagrams", captured.len());
    let delivered = t.db.snapshot().totals.tun_out.packets;
    // M sends them all again to B, from its own address, and listens.
    let replayed = in_netns(&m_ns, move || {
        let s = std::net::UdpSocket::bind("10.20.0.1:51820").unwrap();
        for d in &captured {
            s.send_to(d, "10.20.0.2:51820").unwrap();
        }
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 2048];
        let mut answers = 0;
        while s.recv(&mut buf).is_ok() {
            answers += 1;
        }
        (captured.len(), answers)
    });
    let (sent, answers) = replayed.join().unwrap();
    assert_eq!(answers, 0, "B sent {answers} datagrams toward the address {sent} replays came from");
    let snap = t.db.snapshot();
    assert_eq!(snap.totals.tun_out.packets, delivered, "a replay reached B's TUN");
    assert!(
        snap.peers[0].paths.iter().all(|p| !p.remote.starts_with("10.20.0.1:")),
        "a path to the replaying address: {:#?}",
        snap.peers[0].paths
    );
    let refused: u64 = ["duplicate", "too_old", "handshake_replay", "handshake_unexpected"]
        .iter()
        .map(|k| snap.totals.drops.get(*k).copied().unwrap_or(0))
        .sum();
    assert!(refused >= sent as u64 - 5, "{sent} replays, {refused} refused: {:?}", snap.totals.drops);
    let _ = (&t.da, &t.dir, &t.a, &t.b);
}
