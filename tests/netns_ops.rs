//! End-to-end operability tests: the real `mpvr` binary in network
//! namespaces, as root. A reload in place under traffic; two daemons on
//! one host that never touch each other's TUN, rules or routes.
//!
//! ```text
//!  B b0 10.1.0.2 ---- 10.1.0.1 a0  A  a1 10.3.0.1 ---- 10.3.0.2 c0 C
//!  tunnel: A 10.9.0.1, B 10.9.0.2, C 10.9.0.3
//! ```

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn host(me: u32, key: &Path, extra: &str) -> String {
    format!(
        "[host]\nid = {me}\nprivate_key_file = \"{}\"\naddresses = [\"10.9.0.{me}/24\"]\n{extra}\n\
         [links]\nallow_virtual = true\n",
        key.display()
    )
}

fn peer(id: u32, public: &str, endpoint: &str) -> String {
    format!(
        "\n[[peer]]\nid = {id}\npublic_key = \"{public}\"\nendpoints = [\"{endpoint}:51820\"]\n\
         prefixes = [\"10.9.0.{id}/32\"]\n"
    )
}

/// `mpvr reload` against `d`: its exit code, standard output and error.
fn reload(d: &Daemon) -> (Option<i32>, String, String) {
    let out = Command::new(mpvr()).arg("reload").arg("-s").arg(&d.socket).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_session(d: &Daemon, peer: u32, within: Duration) {
    let t = Instant::now();
    loop {
        let s = d.snapshot();
        if s.peers.iter().any(|p| p.id == peer && p.session.is_some()) {
            return;
        }
        assert!(t.elapsed() < within, "no session with {peer} within {within:?}:\n{}\n{}", d.status(&[]), d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_reload_adds_a_peer_under_traffic_and_refuses_a_bad_config() {
    if !root_or_skip("a_reload_adds_a_peer_under_traffic_and_refuses_a_bad_config") {
        return;
    }
    let _g = serial();
    let (a, b, c) = (Netns::new("a"), Netns::new("b"), Netns::new("c"));
    veth(&a, "a0", "10.1.0.1/24", &b, "b0", "10.1.0.2/24");
    veth(&a, "a1", "10.3.0.1/24", &c, "c0", "10.3.0.2/24");
    let dir = TempDir::new();
    let (ka, pa) = keypair(&dir, "a.key");
    let (kb, pb) = keypair(&dir, "b.key");
    let (kc, pc) = keypair(&dir, "c.key");
    let a_before = host(1, &ka, "") + &peer(2, &pb, "10.1.0.2");
    let ca = dir.write("a.toml", &a_before);
    let cb = dir.write("b.toml", &(host(2, &kb, "") + &peer(1, &pa, "10.1.0.1")));
    let cc = dir.write("c.toml", &(host(3, &kc, "") + &peer(1, &pa, "10.3.0.1")));
    let da = Daemon::start(&a, &ca, dir.0.join("a.log"));
    let db = Daemon::start(&b, &cb, dir.0.join("b.log"));
    let dc = Daemon::start(&c, &cc, dir.0.join("c.log"));
    da.wait_log("link up", 2, Duration::from_secs(10));
    // This kernel has UDP GSO and GRO: said once, at the first link.
    assert_eq!(da.log().matches("UDP offloads").count(), 1);
    assert!(da.log().contains("gso=on, up to") && da.log().contains("gro=on"), "{}", da.log());
    wait_session(&da, 2, Duration::from_secs(5));
    let handshakes = |d: &Daemon, id: u32| d.snapshot().peers.iter().find(|p| p.id == id).map(|p| p.handshakes);
    let before = (handshakes(&da, 2), handshakes(&db, 1));
    assert_eq!(da.snapshot().config.as_ref().map(|c| c.reloads), Some(0));

    // While a stream runs to B, C is added to A's config and A gets SIGHUP.
    let a_after = a_before.clone() + &peer(3, &pc, "10.3.0.2");
    let (ca2, pid) = (ca.clone(), da.child.as_ref().unwrap().id() as i32);
    let r = udp_stream(
        &a.name,
        &b.name,
        "10.9.0.2:7000".parse().unwrap(),
        4000,
        Duration::from_micros(500),
        200,
        move |i| {
            if i == 1000 {
                std::fs::write(&ca2, &a_after).unwrap();
                // SAFETY: kill(2) on the daemon this test started.
                unsafe { libc::kill(pid, libc::SIGHUP) };
            }
        },
    );
    assert!(
        r.missing.is_empty(),
        "B's stream lost {} packets across the reload: {:?}",
        r.missing.len(),
        &r.missing[..r.missing.len().min(20)]
    );
    wait_session(&da, 3, Duration::from_secs(5));
    a.sh(&["ping", "-c", "1", "-W", "2", "10.9.0.3"]);
    assert_eq!((handshakes(&da, 2), handshakes(&db, 1)), before, "the reload made a new session with B");
    let snap = da.snapshot();
    assert_eq!(snap.config.as_ref().map(|c| c.reloads), Some(1));
    assert!(da.log().contains("config reloaded") && da.log().contains("peers added: host 3"), "{}", da.log());

    // A config with an error is refused, with the error; nothing changes.
    std::fs::write(&ca, a_before.replace("id = 2", "id = 0")).unwrap();
    let (code, _, err) = reload(&da);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("reload refused") && err.contains("peer[0].id"), "{err}");
    let snap = da.snapshot();
    assert_eq!(snap.peers.len(), 2, "the refused config changed the peers");
    assert!(snap.config.as_ref().unwrap().last_error.is_some());
    // So is one that changes a setting only a restart applies.
    std::fs::write(&ca, a_before.replace("[host]\n", "[host]\nlisten_port = 51999\n")).unwrap();
    let (code, _, err) = reload(&da);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("host.listen_port (51820 -> 51999)"), "{err}");
    // And `mpvr reload -c FILE` finds the socket from the config file
    // (here its control.socket), and removing C applies.
    let with_socket = format!("[control]\nsocket = \"{}\"\n", da.socket.display());
    std::fs::write(&ca, a_before.clone() + &with_socket).unwrap();
    let out = Command::new(mpvr()).args(["reload", "-c"]).arg(&ca).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("peers removed: host 3"), "{stdout}");
    assert!(da.snapshot().peers.iter().all(|p| p.id != 3));
    assert_eq!(handshakes(&da, 2), before.0, "removing C touched B's session");
    drop((dc, db, da));
}

#[test]
fn two_daemons_on_one_host_never_touch_each_other() {
    if !root_or_skip("two_daemons_on_one_host_never_touch_each_other") {
        return;
    }
    let _g = serial();
    let (x, y) = (Netns::new("x"), Netns::new("y"));
    veth(&x, "x0", "10.1.0.1/24", &y, "y0", "10.1.0.2/24");
    let dir = TempDir::new();
    let (k1, _) = keypair(&dir, "1.key");
    let (k2, _) = keypair(&dir, "2.key");
    let (_, pp) = keypair(&dir, "p.key");
    // Both take every NIC, virtual ones too, and route the same prefix.
    let cfg = |me: u32, key: &Path| {
        host(me, key, &format!("tun = \"mpvr{me}\"\nlisten_port = {}", 51820 + me)).replace(
            "allow_virtual = true\n",
            "allow_virtual = true\ninclude = [\"*\"]\n[link.x0]\ngateway = \"10.1.0.2\"\n",
        ) + &peer(9, &pp, "10.1.0.2").replace("10.9.0.9/32", "10.50.0.0/24")
    };
    let c1 = dir.write("1.toml", &cfg(1, &k1).replace("10.9.0.1/24", "10.91.0.1/24"));
    let c2 = dir.write("2.toml", &cfg(2, &k2).replace("10.9.0.2/24", "10.92.0.2/24"));
    let mut d1 = Daemon::start(&x, &c1, dir.0.join("1.log"));
    d1.wait_log("link up", 1, Duration::from_secs(10));
    let mut d2 = Daemon::start(&x, &c2, dir.0.join("2.log"));
    d2.wait_log("link up", 1, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    for (d, other) in [(&d1, "mpvr2"), (&d2, "mpvr1")] {
        let names: Vec<String> = d.snapshot().links.iter().map(|l| l.name.clone()).collect();
        assert_eq!(names, ["x0"], "a daemon took another's TUN ({other}) or something else as a link");
    }
    let rules = x.sh(&["ip", "rule"]);
    assert_eq!(rules.matches("5182:").count(), 2, "one rule per daemon:\n{rules}");
    let route = x.sh(&["ip", "route", "show", "10.50.0.0/24"]);
    assert!(route.contains("dev mpvr1") && route.contains("proto 109"), "{route}");
    assert_eq!(d2.snapshot().held_routes, ["10.50.0.0/24"]);
    assert!(d2.log().contains("routes this prefix to mpvr1 already"), "{}", d2.log());

    // A third daemon asking for the first's TUN name: fatal, named, and
    // nothing of it left (no rule, no socket), nothing of the first touched.
    let c3 = dir.write("3.toml", &cfg(3, &k2).replace("10.9.0.3/24", "10.93.0.3/24").replace("\"mpvr3\"", "\"mpvr1\""));
    let sock3 = dir.0.join("3.sock");
    let out = Command::new("ip")
        .args(["netns", "exec", &x.name, mpvr(), "run", "-c"])
        .arg(&c3)
        .arg("--socket")
        .arg(&sock3)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a network interface named mpvr1 exists already") && err.contains("host.tun"), "{err}");
    assert!(!sock3.exists(), "the failed daemon left its control socket");
    assert_eq!(x.sh(&["ip", "rule"]).matches("5182:").count(), 2, "{}", x.sh(&["ip", "rule"]));
    assert!(x.sh(&["ip", "route", "show", "10.50.0.0/24"]).contains("dev mpvr1"));
    assert_eq!(d1.snapshot().links.len(), 1, "the first daemon lost its link");

    // Killed without cleaning up, then started again: it removes what it
    // left (its rule and table), and not the other's.
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(d2.child.as_ref().unwrap().id() as i32, libc::SIGKILL) };
    let _ = d2.child.take().unwrap().wait();
    let d2 = Daemon::start(&x, &c2, dir.0.join("2b.log"));
    d2.wait_log("link up", 1, Duration::from_secs(10));
    assert!(d2.log().contains("left by an earlier run of this daemon"), "{}", d2.log());
    assert_eq!(x.sh(&["ip", "rule"]).matches("5182:").count(), 2, "{}", x.sh(&["ip", "rule"]));

    // Stopping one leaves the other's routes and rules as they were.
    let table1 =
        |x: &Netns| x.sh(&["ip", "rule"]).lines().filter(|l| l.contains("5182:")).map(String::from).collect::<Vec<_>>();
    let before = table1(&x);
    drop(d2);
    let after = table1(&x);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(before.contains(&after[0]));
    let route = x.sh(&["ip", "route", "show", "10.50.0.0/24"]);
    assert!(route.contains("dev mpvr1"), "stopping the second daemon took the first's route: {route}");
    let table = after[0].split_whitespace().skip_while(|w| *w != "lookup").nth(1).unwrap().to_string();
    assert!(after[0].contains("proto 109"), "{after:?}");
    assert!(x.sh(&["ip", "route", "show", "table", &table]).contains("default via 10.1.0.2"));
    assert_eq!(d1.stop(), Some(0));
    assert!(!x.sh(&["ip", "rule"]).contains("5182:"));
    assert!(!x.sh(&["ip", "route", "show", "table", "all"]).contains("proto 109"));
}

/// A kernel without UDP GSO and GRO (before 4.18 and 5.0), forced with
/// `MPVR_DISABLE_OFFLOADS`: the daemon says so once, and the plain paths
/// carry TCP whole and lose no packet of a stream when a link is cut.
#[test]
fn without_udp_offloads_the_plain_paths_carry_everything() {
    if !root_or_skip("without_udp_offloads_the_plain_paths_carry_everything") {
        return;
    }
    let _g = serial();
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    veth(&a, "a0", "10.1.0.1/24", &b, "b0", "10.1.0.2/24");
    veth(&a, "a1", "10.2.0.1/24", &b, "b1", "10.2.0.2/24");
    let dir = TempDir::new();
    let (ka, pa) = keypair(&dir, "a.key");
    let (kb, pb) = keypair(&dir, "b.key");
    let two = |id: u32, public: &str, net: &str| {
        peer(id, public, &format!("10.1.0.{net}")).replace(
            &format!("endpoints = [\"10.1.0.{net}:51820\"]"),
            &format!("endpoints = [\"10.1.0.{net}:51820\", \"10.2.0.{net}:51820\"]"),
        )
    };
    let ca = dir.write("a.toml", &(host(1, &ka, "") + &two(2, &pb, "2")));
    let cb = dir.write("b.toml", &(host(2, &kb, "") + &two(1, &pa, "1")));
    let env = [("MPVR_DISABLE_OFFLOADS", "gso,gro")];
    let da = Daemon::start_with_env(&a, &ca, dir.0.join("a.log"), &env);
    let db = Daemon::start_with_env(&b, &cb, dir.0.join("b.log"), &env);
    for d in [&da, &db] {
        d.wait_log("link up", 2, Duration::from_secs(10));
        let log = d.log();
        assert_eq!(log.matches("UDP offloads").count(), 1, "{log}");
        assert!(
            log.contains("gso=disabled by MPVR_DISABLE_OFFLOADS: one datagram per send call")
                && log.contains("gro=disabled by MPVR_DISABLE_OFFLOADS: one datagram per buffer"),
            "{log}"
        );
    }
    wait_session(&da, 2, Duration::from_secs(5));
    // TCP, checked end to end: 4 MB of known bytes arrive whole.
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let expected = data.len();
    let rx = in_netns(&b.name, move || {
        let l = std::net::TcpListener::bind("10.9.0.2:7100").unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut s, &mut got).unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(200));
    let sent = data.clone();
    in_netns(&a.name, move || {
        let mut s = std::net::TcpStream::connect("10.9.0.2:7100").unwrap();
        std::io::Write::write_all(&mut s, &sent).unwrap();
    })
    .join()
    .unwrap();
    let got = rx.join().unwrap();
    assert_eq!(got.len(), expected);
    assert!(got == data, "the bytes differ");
    // A real-time stream loses nothing when a link is cut.
    let an = a.name.clone();
    let r = udp_stream(
        &a.name,
        &b.name,
        "10.9.0.2:7000".parse().unwrap(),
        3000,
        Duration::from_micros(500),
        300,
        move |i| {
            if i == 1000 {
                nsh(&an, &["ip", "link", "set", "a0", "down"]);
            }
        },
    );
    assert!(r.missing.is_empty(), "lost {} packets", r.missing.len());
    drop((da, db));
}
