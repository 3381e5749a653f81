//! The namespace testbed (testbed/netns.sh) and its link emulator
//! (mpvr-linkemu): accuracy, loss, cuts, idempotent up and clean down. Root.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::*;

fn namespaces() -> String {
    sh(&["ip", "netns", "list"])
}

fn rtts(ns: &str, dst: &str, count: u32) -> Vec<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-n", "-c", &count.to_string(), "-i", "0.01", "-W", "1", dst])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn emulated_delay_is_accurate_and_loss_is_as_asked() {
    if !root_or_skip("emulated_delay_is_accurate_and_loss_is_as_asked") {
        return;
    }
    let _g = serial();
    let tb = Testbed::new("acc");
    tb.ok(&["up", "pair"]);
    tb.ok(&["impair", "link0", "delay=20ms"]);
    let _ = rtts(&tb.ns("a"), "10.0.0.2", 3); // ARP through the emulator
    let v = rtts(&tb.ns("a"), "10.0.0.2", 200);
    assert!(v.len() >= 195, "{} replies", v.len());
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
    let mut sorted = v.clone();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    eprintln!(
        "20 ms each way: RTT mean {mean:.3} ms, standard deviation {sd:.3} ms, p5 {:.3} p50 {:.3} p90 {:.3} p95 {:.3} max {:.3}",
        q(0.05),
        q(0.5),
        q(0.9),
        q(0.95),
        q(1.0)
    );
    // Robust figures, not the mean and deviation: on a busy VM (as in the
    // full test run) some per cent of wake-ups come 1-5 ms late, the host's
    // scheduling rather than the emulator's timing (an idle vCPU waits for
    // the host); those alone moved the mean to 40.9 ms and the deviation to
    // 0.7-0.9 ms while the median stayed at 40.4-40.6 ms. A wrong delay
    // moves the median; an unsteady one widens p5-p50 or lifts p90.
    assert!((40.0..41.0).contains(&q(0.5)), "median RTT {} ms", q(0.5));
    assert!(q(0.5) - q(0.05) < 0.5, "RTT p5 {} to p50 {} ms: the emulated delay is not steady", q(0.05), q(0.5));
    assert!(q(0.9) < 43.0, "RTT p90 {} ms", q(0.9));

    // 10 % loss one way only: the receiver sees 90 % (binomial 95 % interval).
    tb.ok(&["impair", "link1", "loss=10%", "ab"]);
    let to: SocketAddr = "10.0.1.2:7000".parse().unwrap();
    let r = udp_stream(&tb.ns("a"), &tb.ns("b"), to, 5000, Duration::from_micros(200), 100, |_| {});
    let lost = r.sent - r.received;
    assert!((458..=542).contains(&lost), "lost {lost} of 5000 at 10 %");
    let show = tb.ok(&["show", "link1"]);
    assert!(show.contains("ab: delay=0ms,loss=10%"), "{show}");
}

#[test]
fn a_cut_stops_the_link_and_restoring_it_brings_it_back() {
    if !root_or_skip("a_cut_stops_the_link_and_restoring_it_brings_it_back") {
        return;
    }
    let _g = serial();
    let tb = Testbed::new("cut");
    tb.ok(&["up", "pair"]);
    assert_eq!(rtts(&tb.ns("a"), "10.0.0.2", 3).len(), 3);
    tb.ok(&["cut", "link0", "on"]);
    assert_eq!(rtts(&tb.ns("a"), "10.0.0.2", 5).len(), 0);
    // The other link is untouched.
    assert_eq!(rtts(&tb.ns("a"), "10.0.1.2", 3).len(), 3);
    tb.ok(&["cut", "link0", "off"]);
    assert_eq!(rtts(&tb.ns("a"), "10.0.0.2", 3).len(), 3);
    // A timed cut heals by itself.
    tb.ok(&["cut", "link0", "500ms"]);
    assert_eq!(rtts(&tb.ns("a"), "10.0.0.2", 3).len(), 0);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(rtts(&tb.ns("a"), "10.0.0.2", 3).len(), 3);
    // Bad input: a clear error, nothing changed.
    let out = tb.run(&["impair", "link0", "delay=soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("delay=soon"));
    let out = tb.run(&["impair", "link9", "delay=1ms"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no link link9"));
}

#[test]
fn up_is_idempotent_and_down_removes_everything() {
    if !root_or_skip("up_is_idempotent_and_down_removes_everything") {
        return;
    }
    let _g = serial();
    let tb = Testbed::new("idem");
    tb.ok(&["up", "seed"]);
    tb.ok(&["up", "seed"]);
    let list = namespaces();
    for h in ["vm0", "vm1", "vm2", "wan"] {
        assert_eq!(list.matches(&tb.ns(h)).count(), 1, "{list}");
    }
    let pids: Vec<i32> = (0..4)
        .map(|i| {
            std::fs::read_to_string(format!("/run/mpvr-testbed/{}/net{i}.pid", tb.prefix))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    // The seed layout: vm0 reaches vm1 on both of its links, not vm2.
    assert_eq!(rtts(&tb.ns("vm0"), "192.168.0.3", 2).len(), 2);
    assert_eq!(rtts(&tb.ns("vm0"), "192.168.1.3", 2).len(), 2);
    assert_eq!(rtts(&tb.ns("vm0"), "192.168.2.2", 2).len(), 0);
    tb.ok(&["down"]);
    tb.ok(&["down"]);
    let list = namespaces();
    assert!(!list.contains(&tb.prefix), "{list}");
    std::thread::sleep(Duration::from_millis(100));
    for p in pids {
        // Gone, or a zombie waiting for an init that reaps slowly: not running.
        let state = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let running = state.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        assert!(!running, "emulator {p} still runs: {state}");
    }
    assert!(!std::path::Path::new(&format!("/run/mpvr-testbed/{}", tb.prefix)).exists());
}
