//! The text table of `mpvr status`, and the human-readable units it and
//! the live view share.

use std::fmt::Write as _;

use super::snapshot::*;

/// "3.2s", "4m05s", "2h07m", "3d04h".
pub fn human_duration(s: f64) -> String {
    let s = s.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86_400.0 {
        format!("{}h{:02}m", (s / 3600.0) as u64, ((s % 3600.0) / 60.0) as u64)
    } else {
        format!("{}d{:02}h", (s / 86_400.0) as u64, ((s % 86_400.0) / 3600.0) as u64)
    }
}

/// "20.3 ms", or "-".
pub fn human_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| if v < 10.0 { format!("{v:.2} ms") } else { format!("{v:.1} ms") })
}

/// "1.25 %".
pub fn human_pct(f: f64) -> String {
    format!("{:.2} %", f * 100.0)
}

/// "12.3 MiB".
pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{b} B") } else { format!("{v:.1} {}", units[u]) }
}

/// The columns of a path row, shared by the table and the live view.
pub const PATH_COLUMNS: [&str; 12] = [
    "path",
    "state",
    "data",
    "for",
    "rtt",
    "jitter",
    "mtu",
    "probe loss",
    "data loss 30s in/out",
    "first",
    "rescues",
    "reason",
];

/// A path's MTU cell: the measured MTU, "1500?" while a first search has
/// not ruled it out, "-" before any probe.
pub fn mtu_cell(m: &MtuSnap) -> String {
    match (m.measured, m.state.as_str()) {
        (Some(v), _) => v.to_string(),
        (None, "searching") => format!("{}?", m.mtu),
        _ => "-".to_string(),
    }
}

/// A path's cells, in [`PATH_COLUMNS`] order.
pub fn path_cells(p: &PathSnap) -> [String; 12] {
    [
        format!("{} -> {}", p.link, p.remote),
        p.state.clone(),
        match (p.selected, p.selected_bulk) {
            (true, true) => "rt+bulk",
            (true, false) => "rt",
            (false, true) => "bulk",
            (false, false) => "-",
        }
        .to_string(),
        human_duration(p.state_for_s),
        human_ms(p.rtt_ms),
        human_ms(Some(p.jitter_out_ms.max(p.jitter_in_ms))),
        mtu_cell(&p.mtu),
        human_pct(p.probe_loss),
        format!(
            "{} / {}",
            human_pct(p.inbound.recent_loss.unwrap_or(0.0)),
            human_pct(p.outbound.recent_loss.unwrap_or(0.0))
        ),
        format!("{:.1} %", p.inbound.first_share * 100.0),
        p.inbound.rescues.to_string(),
        p.reason.clone(),
    ]
}

/// The columns of a link row.
pub const LINK_COLUMNS: [&str; 11] = [
    "link",
    "role",
    "rate",
    "received",
    "later copies",
    "dropped",
    "sent",
    "realtime sent",
    "bulk sent",
    "queue rt/bulk",
    "shaper drops",
];

/// A link's cells, in [`LINK_COLUMNS`] order.
pub fn link_cells(l: &LinkSnap) -> Vec<String> {
    let class = |c: &str| l.by_class.get(c).map_or_else(|| "-".to_string(), |c| human_bytes(c.bytes));
    let (queue, drops) = match &l.shaper {
        None => ("-".to_string(), "-".to_string()),
        Some(sh) => {
            let d = |lane: &str| sh.delay_ms.get(lane).copied();
            (
                format!("{} / {}", human_ms(d("realtime")), human_ms(Some(sh.bulk_delay_ms))),
                sh.drops.values().sum::<u64>().to_string(),
            )
        }
    };
    // Later copies are dropped by design (first copy wins): counted
    // apart from the drops that mean something is wrong.
    let duplicates = l.drops.get("duplicate").copied().unwrap_or(0);
    let dropped: u64 = l.drops.iter().filter(|(k, _)| k.as_str() != "duplicate").map(|(_, v)| v).sum();
    let received = format!("{} pkts ({})", l.rx.packets, human_bytes(l.rx.bytes));
    vec![
        l.name.clone(),
        if l.role.is_empty() { "primary".to_string() } else { l.role.clone() },
        l.rate.clone().unwrap_or_else(|| "-".to_string()),
        received,
        duplicates.to_string(),
        dropped.to_string(),
        format!("{} pkts ({})", l.tx.packets, human_bytes(l.tx.bytes)),
        class("realtime"),
        class("bulk"),
        queue,
        drops,
    ]
}

fn table(out: &mut String, indent: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::from(indent);
        for (i, c) in cells.enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            l.push_str(c);
            if i + 1 < widths.len() {
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    for r in rows {
        line(out, &mut r.iter().map(String::as_str));
    }
}

/// The table `mpvr status` prints.
pub fn render_text(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "host {}  tun {}{}  policy {} (realtime), {} (bulk)  up {}  probes every {:.0} ms",
        s.host,
        s.tun,
        match (s.tun_mtu, s.tun_mtu_auto, &s.tun_offload) {
            (Some(m), auto, offload) => format!(
                " (mtu {m}{}{}{})",
                if auto { ", follows the paths" } else { "" },
                s.tun_queues.as_ref().map(|q| format!("; queues {q}")).unwrap_or_default(),
                offload.as_ref().map(|o| format!("; offloads {o}")).unwrap_or_default()
            ),
            (None, _, _) => String::new(),
        },
        s.policy,
        s.bulk_policy,
        human_duration(s.uptime_s),
        s.probe_interval_ms
    );
    let t = &s.totals;
    let _ = writeln!(
        o,
        "  tun in {} pkts ({}), out {} pkts ({}); copies sent {}, received {}; duplicates dropped {}, too old {}, auth failed {}",
        t.tun_in.packets,
        human_bytes(t.tun_in.bytes),
        t.tun_out.packets,
        human_bytes(t.tun_out.bytes),
        t.copies_out.packets,
        t.datagrams_in.packets,
        t.duplicates,
        t.too_old,
        t.auth_failed
    );
    let other: Vec<String> = t
        .drops
        .iter()
        .filter(|(k, v)| **v > 0 && !matches!(k.as_str(), "duplicate" | "too_old" | "auth_failed"))
        .map(|(k, v)| format!("{k} {v}"))
        .chain(t.io.iter().filter(|(_, v)| **v > 0).map(|(k, v)| format!("{k} {v}")))
        .collect();
    if !other.is_empty() {
        let _ = writeln!(o, "  other drops: {}", other.join(", "));
    }
    // Two queues: TCP apart (one queue: nothing to tell apart).
    if let [tcp, rest] = t.tun_queue_reads[..] {
        let _ = writeln!(o, "  tun queues: TCP {tcp} pkts read, the rest {rest}");
    }
    // Two sockets per link: bulk data apart.
    if let [bulk, rest] = t.link_queue_reads[..] {
        let _ = writeln!(o, "  link sockets: bulk data {bulk} datagrams read, the rest {rest}");
    }
    if t.cookies_out > 0 {
        let _ = writeln!(
            o,
            "  under load: {} initiations answered with a cookie; {} Diffie-Hellman operations for others' handshakes",
            t.cookies_out, t.handshake_work
        );
    }
    if t.icmp_too_big + t.fragmented + t.mss_clamped > 0 {
        let _ = writeln!(
            o,
            "  too big for the paths: {} answered with ICMP, {} fragmented ({} fragments); {} TCP SYNs' MSS lowered",
            t.icmp_too_big, t.fragmented, t.fragments, t.mss_clamped
        );
    }
    let classes: Vec<String> = t
        .classes
        .iter()
        .map(|(name, c)| {
            format!(
                "{name} out {} pkts ({}), in {} pkts ({})",
                c.out.packets,
                human_bytes(c.out.bytes),
                c.into.packets,
                human_bytes(c.into.bytes)
            )
        })
        .collect();
    if !classes.is_empty() {
        let _ = writeln!(o, "  {}", classes.join("; "));
    }
    if let Some(e) = &s.exit {
        let line = match e.role.as_str() {
            "exit" => format!(
                "internet exit: the peers' traffic leaves by {}{} ({} connections tracked)",
                e.interface.as_deref().unwrap_or("-"),
                if e.ipv6 { ", IPv4 and IPv6" } else { ", IPv4 only" },
                e.tracked.map_or_else(|| "-".to_string(), |n| n.to_string())
            ),
            _ => format!(
                "full tunnel through host {}: {} for {} (fallback {})",
                e.peer.unwrap_or(0),
                e.state.as_deref().unwrap_or("-"),
                human_duration(e.state_for_s.unwrap_or(0.0)),
                e.fallback.as_deref().unwrap_or("-")
            ),
        };
        let _ = writeln!(o, "  {line}");
    }
    if let Some(c) = &s.config {
        let _ = writeln!(
            o,
            "  config {} loaded {} ago{}",
            c.file,
            human_duration(c.loaded_s_ago),
            match c.reloads {
                0 => String::new(),
                1 => " (reloaded once)".to_string(),
                n => format!(" (reloaded {n} times)"),
            }
        );
        if let Some(e) = &c.last_error {
            let _ = writeln!(o, "  last reload refused (the config above runs): {}", e.replace('\n', " "));
        }
    }
    for p in &s.held_routes {
        let _ = writeln!(
            o,
            "  route {p}: another program holds it in the main table; traffic to it does not enter this tunnel"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "links:");
    if s.links.is_empty() {
        let _ = writeln!(
            o,
            "  none: no network interface is a link (check links.include and links.exclude; virtual NICs need \
             links.allow_virtual = true; `mpvr check` lists why each NIC is skipped)"
        );
    } else {
        let rows: Vec<Vec<String>> = s.links.iter().map(link_cells).collect();
        table(&mut o, "  ", &LINK_COLUMNS, &rows);
    }
    for p in &s.peers {
        let _ = writeln!(o);
        let session = match &p.session {
            Some(ss) => format!(
                "session {} old ({}, {})",
                human_duration(ss.age_s),
                if ss.initiator { "initiator" } else { "responder" },
                ss.cipher
            ),
            None => format!("no session ({})", p.no_session.as_deref().unwrap_or("handshake in progress")),
        };
        let _ = writeln!(
            o,
            "peer {}: {session}, policy {} (realtime), {} (bulk), {} handshakes; sent {} pkts ({}), received {} pkts ({})",
            p.id,
            p.policy,
            p.bulk_policy,
            p.handshakes,
            p.sealed.packets,
            human_bytes(p.sealed.bytes),
            p.accepted.packets,
            human_bytes(p.accepted.bytes)
        );
        if p.exit_out.packets + p.exit_in.packets > 0 {
            let _ = writeln!(
                o,
                "  through this exit: out {} pkts ({}), back {} pkts ({})",
                p.exit_out.packets,
                human_bytes(p.exit_out.bytes),
                p.exit_in.packets,
                human_bytes(p.exit_in.bytes)
            );
        }
        if p.bad_source > 0 {
            let _ = writeln!(
                o,
                "  {} packets refused: their source address is not routed to this peer (bad_source)",
                p.bad_source
            );
        }
        let rows: Vec<Vec<String>> = p.paths.iter().map(|x| path_cells(x).to_vec()).collect();
        table(&mut o, "  ", &PATH_COLUMNS, &rows);
        for x in p.paths.iter().filter(|x| x.peer_down.is_some()) {
            let drops = x.shaper.as_ref().map_or(0, |sh| sh.drops.values().sum::<u64>());
            let bulk = x.shaper.as_ref().map_or(0.0, |sh| sh.bulk_delay_ms);
            let _ = writeln!(
                o,
                "  {} -> {}: shaped to the peer's download rate {} (bulk queue {}, {drops} dropped)",
                x.link,
                x.remote,
                x.peer_down.as_deref().unwrap_or("-"),
                human_ms(Some(bulk))
            );
        }
    }
    if !s.routes.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "routes:");
        let rows: Vec<Vec<String>> = s
            .routes
            .iter()
            .map(|r| {
                let next = if r.next_hop == "local" { "local".to_string() } else { format!("host {}", r.next_hop) };
                let origin = r.origin.map_or_else(String::new, |o| format!("host {o}"));
                let held = r.held_s.map_or_else(String::new, human_duration);
                vec![r.prefix.clone(), next, r.source.clone(), origin, human_ms(r.metric_ms), held]
            })
            .collect();
        table(&mut o, "  ", &["prefix", "next hop", "from", "origin", "metric", "held"], &rows);
    }
    let pinned: Vec<&OriginKeySnap> = s.origin_keys.iter().filter(|k| k.bound == "first use").collect();
    if !pinned.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "advert keys pinned on first use (hosts that are not neighbours):");
        for k in pinned {
            let _ = writeln!(o, "  host {}  {}  (through host {})", k.origin, k.key, k.via);
        }
    }
    if !s.changes.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "recent path changes:");
        for c in s.changes.iter().rev().take(10) {
            let _ = writeln!(
                o,
                "  {} ago  {} -> host {} ({}): {} -> {}, {}",
                human_duration(c.ago_s),
                c.link,
                c.peer,
                c.remote,
                c.from,
                c.to,
                c.reason
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::DropReason;
    use crate::status::build::simulated;

    #[test]
    fn snapshot_and_table_show_every_path_and_the_cut() {
        let s = simulated();
        assert_eq!(s.peers.len(), 1);
        let paths = &s.peers[0].paths;
        assert_eq!(paths.len(), 2);
        assert_eq!(paths[0].state, "up");
        assert_eq!(paths[1].state, "down");
        assert!(paths[0].rtt_ms.unwrap() > 20.0 && paths[0].rtt_ms.unwrap() < 25.0);
        // Equal links share first arrivals until the cut; then the first wins them all.
        assert!(paths[0].outbound.first_share > 0.6, "{:?}", paths[0].outbound);
        assert_eq!(s.totals.drops.len(), DropReason::COUNT);
        let text = render_text(&s);
        for needle in [
            "host 1",
            "peer 2",
            "wan1 -> 172.16.0.2:51820",
            "wan2 -> 172.16.1.2:51820",
            "probes lost",
            "primary",
            "secondary",
            "10mbit",
            "realtime out 1",
            "(realtime), failover (bulk)",
            "mtu 1436, follows the paths",
            "; queues TCP apart;",
            "tun queues: TCP 52113 pkts read, the rest 1207",
            "link sockets: bulk data 61870 datagrams read, the rest 2310",
            " 1500 ",
        ] {
            assert!(text.contains(needle), "{needle:?} missing in\n{text}");
        }
        // JSON round trip: what scripts read is what the table shows.
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), s);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_duration(3.24), "3.2s");
        assert_eq!(human_duration(125.0), "2m05s");
        assert_eq!(human_duration(7500.0), "2h05m");
        assert_eq!(human_ms(Some(20.26)), "20.3 ms");
        assert_eq!(human_ms(None), "-");
        assert_eq!(human_pct(0.0125), "1.25 %");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
