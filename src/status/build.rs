//! Building a [`Snapshot`] from a node and what the shell knows.

use std::collections::BTreeMap;
use std::time::Duration;

use super::snapshot::*;
use crate::proto::Path;
use crate::proto::monitor::PassiveCounts;
use crate::proto::pmtu::Phase;
use crate::proto::shaper::{Lane, Shaper};
use crate::proto::stats::DropCounts;
use crate::proto::wire::{Family, OVERHEAD};
use crate::proto::{Class, DropReason, LinkId, NextHop, Node, Time};

fn drops_map(d: &DropCounts) -> BTreeMap<String, u64> {
    DropReason::ALL.iter().map(|r| (r.name().to_string(), d.get(*r))).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

const LANES: [(&str, Lane); 3] = [("realtime", Lane::Realtime), ("control", Lane::Control), ("bulk", Lane::Bulk)];

fn shaper_snap(s: &Shaper) -> ShaperSnap {
    let st = s.stats();
    let backlog = s.backlog();
    let per = |f: &dyn Fn(usize) -> u64| LANES.iter().map(|(n, l)| (n.to_string(), f(l.index()))).collect();
    ShaperSnap {
        queued: per(&|i| st.queued[i]),
        drops: per(&|i| st.drops[i]),
        backlog_bytes: per(&|i| backlog[i] as u64),
        delay_ms: LANES.iter().map(|(n, l)| (n.to_string(), ms(st.delay[l.index()]))).collect(),
        bulk_delay_ms: ms(st.bulk_delay),
    }
}

fn data(c: &PassiveCounts, firsts: u64) -> DataSnap {
    DataSnap {
        delivered: c.delivered,
        missing: c.missing,
        first: c.first,
        rescues: c.rescues,
        loss: c.loss(),
        first_share: if firsts == 0 { 0.0 } else { c.first as f64 / firsts as f64 },
        recent_loss: None,
    }
}

fn path_snap(
    p: &Path,
    selected: (bool, bool),
    now: Time,
    name: &dyn Fn(LinkId) -> String,
    firsts: (u64, u64),
    transport_header: usize,
) -> PathSnap {
    let m = &p.monitor;
    let rtt = m.rtt();
    let (sent, answered, lost) = m.probe_counts();
    PathSnap {
        link: name(p.addr.link),
        link_index: p.addr.link.0,
        remote: p.addr.remote.to_string(),
        learned: p.learned,
        usable: p.usable,
        peer_down: p.peer_down.map(|r| r.to_string()),
        shaper: p.shaper.as_ref().map(shaper_snap),
        selected: selected.0,
        selected_bulk: selected.1,
        state: m.health().name().to_string(),
        state_for_s: (now - m.since()).as_secs_f64(),
        reason: m.reason().to_string(),
        rtt_ms: rtt.srtt().map(ms),
        rttvar_ms: rtt.srtt().map(|_| ms(rtt.rttvar())),
        rtt_min_ms: rtt.min().map(ms),
        jitter_out_ms: ms(m.jitter_out()),
        jitter_in_ms: ms(m.jitter_in()),
        owd_var_out_ms: m.owd_out().map(ms),
        owd_var_in_ms: m.owd_in().map(ms),
        probe_loss: m.loss().ratio(),
        probes: ProbeSnap { sent, answered, lost },
        tx: p.tx.into(),
        rx_first: p.first.into(),
        rx_later: p.later.into(),
        last_rx_s_ago: p.last_rx.map(|t| (now - t).as_secs_f64()),
        inbound: data(&m.local, firsts.0),
        outbound: data(&m.remote, firsts.1),
        mtu: mtu_snap(p, transport_header),
    }
}

fn mtu_snap(p: &Path, transport_header: usize) -> MtuSnap {
    let headers = (Family::of(p.addr.remote).ip_header_len() + transport_header) as u32;
    let outer = |d: u16| u32::from(d) + headers;
    let (floor, ceiling) = p.pmtu.bounds();
    let (searches, shrinks) = p.pmtu.counts();
    let usable = p.pmtu.usable();
    MtuSnap {
        state: match p.pmtu.phase() {
            Phase::Idle => "not probed",
            Phase::Searching => "searching",
            Phase::Settled => "settled",
            Phase::Confirming { .. } => "confirming",
        }
        .to_string(),
        mtu: outer(usable),
        measured: p.pmtu.measured().map(outer),
        carries: u32::from(usable).saturating_sub(OVERHEAD as u32),
        floor: outer(floor),
        link: outer(ceiling.min(u16::MAX - 1)),
        searches,
        shrinks,
    }
}

/// Why `b` has no session at `now`, in words; `None` if it has one.
fn no_session(b: &crate::proto::Bundle, now: Time) -> Option<String> {
    if b.session().is_some() {
        return None;
    }
    let refused = b.last_refused().filter(|(at, _)| now - *at < Duration::from_secs(30));
    Some(match (refused, b.handshake_started()) {
        (Some((at, crate::proto::handshake::HandshakeError::WrongKey)), _) => format!(
            "handshake refused {} ago: the peer's key is not the one configured (check its public_key)",
            super::human_duration((now - at).as_secs_f64())
        ),
        (Some((at, _)), _) => format!(
            "handshake refused {} ago: it does not authenticate (the keys do not match: check public_key on both \
             hosts)",
            super::human_duration((now - at).as_secs_f64())
        ),
        (None, Some(started)) => format!(
            "no answer for {} (is this host's public key in the peer's config, and its endpoint right?)",
            super::human_duration((now - started).as_secs_f64())
        ),
        (None, None) if b.paths().is_empty() => "no path: no endpoint is reachable from a link that is up".into(),
        (None, None) => "waiting for the peer to start a handshake".into(),
    })
}

/// What the shell adds to the core's state.
pub struct ShellInfo<'a> {
    /// TUN name.
    pub tun: &'a str,
    /// Time since start.
    pub uptime: Duration,
    /// Interface name of a link.
    pub link_name: &'a dyn Fn(LinkId) -> String,
    /// I/O counters by name.
    pub io: Vec<(&'static str, u64)>,
    /// The TUN's MTU now, and whether it follows the paths.
    pub tun_mtu: Option<(u16, bool)>,
    /// The TUN's offloads, in words (`TSO, USO`, or `off: why`).
    pub tun_offload: Option<String>,
    /// The TUN's queues, in words (`TCP apart`, or `one: why`).
    pub tun_queues: Option<String>,
    /// Packets read from each TUN queue (a super-packet counts as its segments).
    pub tun_queue_reads: Vec<u64>,
    /// Datagrams read from the links' sockets, by socket (summed over links).
    pub link_queue_reads: Vec<u64>,
    /// The internet exit, at either end.
    pub exit: Option<ExitSnap>,
    /// The config file in use.
    pub config: Option<ConfigSnap>,
    /// Prefixes whose kernel route another program holds.
    pub held_routes: Vec<String>,
}

/// The snapshot of `node` at `now`.
pub fn snapshot(node: &Node, now: Time, shell: &ShellInfo<'_>) -> Snapshot {
    let name = shell.link_name;
    let table = node.link_table();
    let links = node
        .links()
        .map(|(id, l)| {
            let settings = table.settings(id);
            LinkSnap {
                name: name(id),
                index: id.0,
                rx: l.rx.into(),
                tx: l.tx.into(),
                drops: drops_map(&l.drops),
                role: settings.role.name().to_string(),
                rate: settings.up.map(|r| r.to_string()),
                rate_bps: settings.up.map(|r| r.bits()),
                by_class: Class::ALL.iter().map(|c| (c.name().to_string(), l.class_tx[c.index()].into())).collect(),
                shaper: table.shaper(id).map(shaper_snap),
            }
        })
        .collect();
    let peers = node
        .bundles()
        .map(|n| {
            let firsts_in: u64 = n.paths().iter().map(|p| p.monitor.local.first).sum();
            let firsts_out: u64 = n.paths().iter().map(|p| p.monitor.remote.first).sum();
            let s = n.stats();
            let chosen = node.chosen_paths(n.host(), Class::Realtime);
            let chosen_bulk = node.chosen_paths(n.host(), Class::Bulk);
            PeerSnap {
                id: n.host().get(),
                policy: n.policy().unwrap_or(node.config().policy).to_string(),
                bulk_policy: node.config().bulk_policy.to_string(),
                session: n.session().map(|s| SessionSnap {
                    age_s: (now - s.created).as_secs_f64(),
                    initiator: s.initiator,
                    cipher: s.cipher.to_string(),
                }),
                handshake_pending: n.handshake_pending(),
                handshakes: s.handshakes,
                no_session: no_session(n, now),
                staged: n.staged(),
                sealed: s.sealed.into(),
                accepted: s.accepted.into(),
                paths_learned: s.paths_learned,
                bad_source: s.bad_source,
                exit_out: s.exit_out.into(),
                exit_in: s.exit_in.into(),
                paths: n
                    .paths()
                    .iter()
                    .map(|p| {
                        let selected = (chosen.contains(&p.id()), chosen_bulk.contains(&p.id()));
                        path_snap(p, selected, now, name, (firsts_in, firsts_out), node.config().transport_header)
                    })
                    .collect(),
            }
        })
        .collect();
    let routes = node
        .routes()
        .iter()
        .map(|(prefix, next)| {
            let mesh = node.router().mesh_route(prefix);
            RouteSnap {
                prefix: prefix.to_string(),
                next_hop: match next {
                    NextHop::Local => "local".to_string(),
                    NextHop::Host(h) => h.get().to_string(),
                },
                source: match (next, mesh) {
                    (NextHop::Local, _) => "local",
                    (_, Some(_)) => "mesh",
                    _ => "config",
                }
                .to_string(),
                origin: mesh.map(|r| r.origin.get()),
                metric_ms: mesh.map(|r| r.cost as f64 / 1e3),
                held_s: mesh.map(|r| (now - r.since).as_secs_f64()),
            }
        })
        .collect();
    let changes = node
        .recent_changes()
        .map(|c| ChangeSnap {
            ago_s: (now - c.at).as_secs_f64(),
            peer: c.peer.get(),
            link: name(c.path.link),
            remote: c.path.remote.to_string(),
            from: c.change.from.name().to_string(),
            to: c.change.to.name().to_string(),
            reason: c.change.reason.to_string(),
        })
        .collect();
    let s = node.stats();
    let totals = Totals {
        tun_in: s.tun_in.into(),
        tun_out: s.tun_out.into(),
        sealed: s.sealed.into(),
        copies_out: s.copies_out.into(),
        datagrams_in: s.datagrams_in.into(),
        forwarded: s.forwarded.into(),
        duplicates: s.drops.get(DropReason::Duplicate),
        too_old: s.drops.get(DropReason::TooOld),
        auth_failed: s.drops.get(DropReason::AuthFailed),
        drops: drops_map(&s.drops),
        io: shell.io.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        tun_queue_reads: shell.tun_queue_reads.clone(),
        link_queue_reads: shell.link_queue_reads.clone(),
        classes: Class::ALL
            .iter()
            .map(|c| {
                let i = c.index();
                (c.name().to_string(), ClassSnap { out: s.class_out[i].into(), into: s.class_in[i].into() })
            })
            .collect(),
        icmp_too_big: s.icmp_too_big,
        fragmented: s.fragmented,
        fragments: s.fragments,
        mss_clamped: s.mss_clamped,
        handshake_work: s.handshake_work,
        cookies_out: s.cookies_out,
    };
    Snapshot {
        version: SNAPSHOT_VERSION,
        host: node.host().get(),
        tun: shell.tun.to_string(),
        policy: node.config().policy.to_string(),
        bulk_policy: node.config().bulk_policy.to_string(),
        uptime_s: shell.uptime.as_secs_f64(),
        probe_interval_ms: ms(node.config().monitor.interval),
        links,
        peers,
        routes,
        changes,
        totals,
        tun_mtu: shell.tun_mtu.map(|(m, _)| u32::from(m)),
        tun_mtu_auto: shell.tun_mtu.is_some_and(|(_, auto)| auto),
        tun_offload: shell.tun_offload.clone(),
        tun_queues: shell.tun_queues.clone(),
        tunnel_mtu: node.tunnel_mtu().map(|m| m as u32),
        exit: shell.exit.clone(),
        config: shell.config.clone(),
        held_routes: shell.held_routes.clone(),
        origin_keys: node
            .origin_keys()
            .iter()
            .map(|(o, k)| OriginKeySnap {
                origin: o.get(),
                key: crate::keys::encode(&k.key),
                bound: if k.first_use { "first use" } else { "session" }.to_string(),
                via: k.via.get(),
            })
            .collect(),
    }
}

/// A snapshot of host 1 of a simulated pair after a cut on its second link.
#[cfg(test)]
pub(crate) fn simulated() -> Snapshot {
    use crate::sim::scenario;
    use crate::sim::{Jitter, LinkModel};
    let ms = Duration::from_millis;
    let link = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(2))).with_loss(0.01);
    let mut p = scenario::pair(5, &[link.clone(), link], &|_| {});
    let settings =
        crate::proto::LinkSettings { role: crate::proto::Role::Secondary, up: "10mbit".parse().ok(), down: None };
    p.sim.configure_link(p.a, p.wires[1], settings);
    p.sim.blackout(p.wires[1], Time::ZERO + ms(2_000), Time::ZERO + ms(4_000));
    p.stream(ms(100), ms(2), 2_000, 300);
    p.sim.run_until(Time::ZERO + ms(3_000));
    let node = p.sim.node(p.a);
    let shell = ShellInfo {
        tun: "mpvr0",
        uptime: ms(3_000),
        link_name: &|l: LinkId| format!("wan{}", l.0),
        io: vec![("send_errors", 0)],
        tun_mtu: Some((1436, true)),
        tun_offload: Some("TSO, USO".into()),
        tun_queues: Some("TCP apart".into()),
        tun_queue_reads: vec![52_113, 1_207],
        link_queue_reads: vec![61_870, 2_310],
        exit: None,
        config: Some(ConfigSnap {
            file: "/etc/mpvr/mpvr.toml".into(),
            loaded_s_ago: 95.0,
            reloads: 1,
            last_error: None,
        }),
        held_routes: Vec::new(),
    };
    snapshot(node, p.sim.now(), &shell)
}
