//! What `mpvr status` shows: a [`Snapshot`] of the node (built by the
//! daemon from the core's state, sent as JSON on the control socket), its
//! text table ([`render_text`]), the live view ([`watch`]) and the
//! Prometheus exposition ([`metrics`]).
//!
//! The snapshot is the stable interface for scripts (`mpvr status --json`):
//! fields are added, never renamed or removed, within one `version`.

pub mod metrics;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proto::Path;
use crate::proto::monitor::PassiveCounts;
use crate::proto::stats::{Count, DropCounts};
use crate::proto::{DropReason, LinkId, NextHop, Node, Time};

/// Version of the snapshot's layout.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// Packets (or datagrams).
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

impl From<Count> for Counter {
    fn from(c: Count) -> Counter {
        Counter { packets: c.packets, bytes: c.bytes }
    }
}

/// Everything `mpvr status` shows, at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Layout version ([`SNAPSHOT_VERSION`]).
    pub version: u32,
    /// This host's id.
    pub host: u32,
    /// The TUN interface.
    pub tun: String,
    /// Duplication policy.
    pub policy: String,
    /// Seconds since the daemon started.
    pub uptime_s: f64,
    /// Probe interval per path, in milliseconds.
    pub probe_interval_ms: f64,
    /// Local links in use.
    pub links: Vec<LinkSnap>,
    /// Neighbours, with their sessions and paths.
    pub peers: Vec<PeerSnap>,
    /// The route table.
    pub routes: Vec<RouteSnap>,
    /// Recent path state changes, oldest first.
    pub changes: Vec<ChangeSnap>,
    /// Host-wide counters.
    pub totals: Totals,
}

/// One local link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkSnap {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// Datagrams received.
    pub rx: Counter,
    /// Copies sent.
    pub tx: Counter,
    /// Datagrams received on it and dropped, by reason (every reason).
    pub drops: BTreeMap<String, u64>,
}

/// One neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSnap {
    /// Its host id.
    pub id: u32,
    /// The duplication policy toward it.
    pub policy: String,
    /// The session being sent on.
    pub session: Option<SessionSnap>,
    /// A handshake this host started waits for an answer.
    pub handshake_pending: bool,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Packets waiting for a session.
    pub staged: usize,
    /// Packets sealed for it (once each, whatever the copies).
    pub sealed: Counter,
    /// Packets accepted from it (first copies).
    pub accepted: Counter,
    /// Paths learned from authenticated packets.
    pub paths_learned: u64,
    /// Its paths.
    pub paths: Vec<PathSnap>,
}

/// A session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSnap {
    /// Seconds since its handshake.
    pub age_s: f64,
    /// This host started the handshake.
    pub initiator: bool,
}

/// Passive counts of one direction of a path.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSnap {
    /// Data packets this path delivered.
    pub delivered: u64,
    /// Data packets another path delivered and this one did not.
    pub missing: u64,
    /// Data packets whose first copy came on this path.
    pub first: u64,
    /// Data packets only this path delivered.
    pub rescues: u64,
    /// missing / (delivered + missing).
    pub loss: f64,
    /// This path's share of the bundle's first arrivals.
    pub first_share: f64,
}

/// Probe counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSnap {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered.
    pub answered: u64,
    /// Probes given up.
    pub lost: u64,
}

/// One path: a local link toward one endpoint of a neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathSnap {
    /// Local link name.
    pub link: String,
    /// Local link index.
    pub link_index: u32,
    /// Remote endpoint.
    pub remote: String,
    /// Learned from authenticated packets rather than configured.
    pub learned: bool,
    /// Its local link is up.
    pub usable: bool,
    /// The policy copies data onto it now.
    pub selected: bool,
    /// "up", "degraded" or "down".
    pub state: String,
    /// Seconds in that state.
    pub state_for_s: f64,
    /// Why it is in that state.
    pub reason: String,
    /// Smoothed RTT (RFC 6298), ms.
    pub rtt_ms: Option<f64>,
    /// RTT variation, ms.
    pub rttvar_ms: Option<f64>,
    /// Smallest RTT seen, ms.
    pub rtt_min_ms: Option<f64>,
    /// Jitter toward the peer (RFC 3550), ms.
    pub jitter_out_ms: f64,
    /// Jitter from the peer, ms.
    pub jitter_in_ms: f64,
    /// One-way delay variation toward the peer (above its recent minimum), ms.
    pub owd_var_out_ms: Option<f64>,
    /// One-way delay variation from the peer, ms.
    pub owd_var_in_ms: Option<f64>,
    /// Lost fraction of the last probes.
    pub probe_loss: f64,
    /// Probe counts.
    pub probes: ProbeSnap,
    /// Copies sent on it.
    pub tx: Counter,
    /// Authenticated first copies received on it.
    pub rx_first: Counter,
    /// Authenticated later copies received on it.
    pub rx_later: Counter,
    /// Seconds since its last authenticated packet.
    pub last_rx_s_ago: Option<f64>,
    /// Data from the peer on this path (counted here).
    pub inbound: DataSnap,
    /// Data to the peer on this path (counted by the peer, from its probe replies).
    pub outbound: DataSnap,
}

/// One route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteSnap {
    /// Destination prefix.
    pub prefix: String,
    /// "local", or the next hop's host id.
    pub next_hop: String,
    /// "local" (this host's), "config" (from the config file) or "mesh" (from advertisements).
    pub source: String,
    /// The host that advertised it (mesh routes).
    pub origin: Option<u32>,
    /// Cost of the route through its next hop, ms (mesh routes).
    pub metric_ms: Option<f64>,
    /// Seconds since this next hop was chosen (mesh routes).
    pub held_s: Option<f64>,
}

/// One path state change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeSnap {
    /// Seconds ago.
    pub ago_s: f64,
    /// The neighbour.
    pub peer: u32,
    /// Local link name.
    pub link: String,
    /// Remote endpoint.
    pub remote: String,
    /// State before.
    pub from: String,
    /// State after.
    pub to: String,
    /// Why.
    pub reason: String,
}

/// Host-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Packets read from the TUN.
    pub tun_in: Counter,
    /// Packets written to the TUN.
    pub tun_out: Counter,
    /// Packets sealed (once each).
    pub sealed: Counter,
    /// Copies sent (datagrams x paths).
    pub copies_out: Counter,
    /// Datagrams received.
    pub datagrams_in: Counter,
    /// Packets relayed to another neighbour.
    pub forwarded: Counter,
    /// Later copies dropped (each a packet delivered earlier by another path).
    pub duplicates: u64,
    /// Copies behind the window.
    pub too_old: u64,
    /// Copies that failed authentication.
    pub auth_failed: u64,
    /// Every drop, by reason (every reason, zeros included).
    pub drops: BTreeMap<String, u64>,
    /// I/O outcomes only the shell sees (send errors, full buffers, ...).
    pub io: BTreeMap<String, u64>,
}

fn drops_map(d: &DropCounts) -> BTreeMap<String, u64> {
    DropReason::ALL.iter().map(|r| (r.name().to_string(), d.get(*r))).collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn data(c: &PassiveCounts, firsts: u64) -> DataSnap {
    DataSnap {
        delivered: c.delivered,
        missing: c.missing,
        first: c.first,
        rescues: c.rescues,
        loss: c.loss(),
        first_share: if firsts == 0 { 0.0 } else { c.first as f64 / firsts as f64 },
    }
}

fn path_snap(p: &Path, selected: bool, now: Time, name: &dyn Fn(LinkId) -> String, firsts: (u64, u64)) -> PathSnap {
    let m = &p.monitor;
    let rtt = m.rtt();
    let (sent, answered, lost) = m.probe_counts();
    PathSnap {
        link: name(p.addr.link),
        link_index: p.addr.link.0,
        remote: p.addr.remote.to_string(),
        learned: p.learned,
        usable: p.usable,
        selected,
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
    }
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
}

/// The snapshot of `node` at `now`.
pub fn snapshot(node: &Node, now: Time, shell: &ShellInfo<'_>) -> Snapshot {
    let name = shell.link_name;
    let links = node
        .links()
        .map(|(id, l)| LinkSnap {
            name: name(id),
            index: id.0,
            rx: l.rx.into(),
            tx: l.tx.into(),
            drops: drops_map(&l.drops),
        })
        .collect();
    let peers = node
        .bundles()
        .map(|n| {
            let firsts_in: u64 = n.paths().iter().map(|p| p.monitor.local.first).sum();
            let firsts_out: u64 = n.paths().iter().map(|p| p.monitor.remote.first).sum();
            let s = n.stats();
            let chosen = node.chosen_paths(n.host());
            PeerSnap {
                id: n.host().get(),
                policy: n.policy().unwrap_or(node.config().policy).to_string(),
                session: n
                    .session()
                    .map(|(created, initiator)| SessionSnap { age_s: (now - created).as_secs_f64(), initiator }),
                handshake_pending: n.handshake_pending(),
                handshakes: s.handshakes,
                staged: n.staged(),
                sealed: s.sealed.into(),
                accepted: s.accepted.into(),
                paths_learned: s.paths_learned,
                paths: n
                    .paths()
                    .iter()
                    .map(|p| path_snap(p, chosen.contains(&p.id()), now, name, (firsts_in, firsts_out)))
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
    };
    Snapshot {
        version: SNAPSHOT_VERSION,
        host: node.host().get(),
        tun: shell.tun.to_string(),
        policy: node.config().policy.to_string(),
        uptime_s: shell.uptime.as_secs_f64(),
        probe_interval_ms: ms(node.config().monitor.interval),
        links,
        peers,
        routes,
        changes,
        totals,
    }
}

/// Why a snapshot could not be read from a daemon.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No socket file.
    #[error(
        "no mpvr daemon runs with the control socket {0}: start it with `mpvr run`; a daemon with \
         another TUN has another socket (mpvr status -i NAME, or -s PATH)"
    )]
    NotRunning(String),
    /// The socket exists but nobody listens.
    #[error("{0} exists but no daemon listens on it (did mpvr stop uncleanly?): start `mpvr run` again")]
    Stale(String),
    /// Not allowed.
    #[error("cannot open the control socket {0}: permission denied; it is root's: run `sudo mpvr status`")]
    Denied(String),
    /// Any other I/O error.
    #[error("reading the control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon's answer is not a snapshot.
    #[error(
        "the daemon at {path} sent something that is not a status snapshot ({reason}): is it the same mpvr version?"
    )]
    Garbled {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Read one snapshot from the daemon listening on `socket`.
pub fn fetch(socket: &std::path::Path) -> Result<Snapshot, FetchError> {
    use std::io::{ErrorKind, Read};
    let path = socket.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound => FetchError::NotRunning(path.clone()),
        ErrorKind::ConnectionRefused => FetchError::Stale(path.clone()),
        ErrorKind::PermissionDenied => FetchError::Denied(path.clone()),
        _ => FetchError::Io { path: path.clone(), source: e },
    })?;
    let timeout = Some(Duration::from_secs(5));
    let io = |e| FetchError::Io { path: path.clone(), source: e };
    stream.set_read_timeout(timeout).map_err(io)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).map_err(|e| FetchError::Io { path: path.clone(), source: e })?;
    if text.contains("\"error\":\"permission denied\"") {
        return Err(FetchError::Denied(path));
    }
    serde_json::from_str(&text).map_err(|e| FetchError::Garbled { path, reason: e.to_string() })
}

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
pub const PATH_COLUMNS: [&str; 11] =
    ["path", "state", "data", "for", "rtt", "jitter", "probe loss", "data loss in/out", "first", "rescues", "reason"];

/// A path's cells, in [`PATH_COLUMNS`] order.
pub fn path_cells(p: &PathSnap) -> [String; 11] {
    [
        format!("{} -> {}", p.link, p.remote),
        p.state.clone(),
        if p.selected { "yes" } else { "-" }.to_string(),
        human_duration(p.state_for_s),
        human_ms(p.rtt_ms),
        human_ms(Some(p.jitter_out_ms.max(p.jitter_in_ms))),
        human_pct(p.probe_loss),
        format!("{} / {}", human_pct(p.inbound.loss), human_pct(p.outbound.loss)),
        format!("{:.1} %", p.inbound.first_share * 100.0),
        p.inbound.rescues.to_string(),
        p.reason.clone(),
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
        "host {}  tun {}  policy {}  up {}  probes every {:.0} ms",
        s.host,
        s.tun,
        s.policy,
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
    let _ = writeln!(o);
    let _ = writeln!(o, "links:");
    let rows: Vec<Vec<String>> = s
        .links
        .iter()
        .map(|l| {
            let drops: u64 = l.drops.values().sum();
            vec![
                l.name.clone(),
                format!("{} pkts ({})", l.rx.packets, human_bytes(l.rx.bytes)),
                format!("{} pkts ({})", l.tx.packets, human_bytes(l.tx.bytes)),
                drops.to_string(),
            ]
        })
        .collect();
    table(&mut o, "  ", &["link", "received", "sent", "dropped"], &rows);
    for p in &s.peers {
        let _ = writeln!(o);
        let session = match &p.session {
            Some(ss) => format!(
                "session {} old ({})",
                human_duration(ss.age_s),
                if ss.initiator { "initiator" } else { "responder" }
            ),
            None if p.handshake_pending => "no session: handshake in progress".to_string(),
            None => "no session".to_string(),
        };
        let _ = writeln!(
            o,
            "peer {}: {session}, policy {}, {} handshakes; sent {} pkts ({}), received {} pkts ({})",
            p.id,
            p.policy,
            p.handshakes,
            p.sealed.packets,
            human_bytes(p.sealed.bytes),
            p.accepted.packets,
            human_bytes(p.accepted.bytes)
        );
        let rows: Vec<Vec<String>> = p.paths.iter().map(|x| path_cells(x).to_vec()).collect();
        table(&mut o, "  ", &PATH_COLUMNS, &rows);
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
    use crate::sim::scenario;
    use crate::sim::{Jitter, LinkModel};

    /// A snapshot of host 1 of a simulated pair after a cut on its second link.
    pub(crate) fn simulated() -> Snapshot {
        let ms = Duration::from_millis;
        let link = LinkModel::delay(ms(10)).with_jitter(Jitter::Uniform(ms(2))).with_loss(0.01);
        let mut p = scenario::pair(5, &[link.clone(), link], &|_| {});
        p.sim.blackout(p.wires[1], Time::ZERO + ms(2_000), Time::ZERO + ms(4_000));
        p.stream(ms(100), ms(2), 2_000, 300);
        p.sim.run_until(Time::ZERO + ms(3_000));
        let node = p.sim.node(p.a);
        let shell = ShellInfo {
            tun: "mpvr0",
            uptime: ms(3_000),
            link_name: &|l: LinkId| format!("wan{}", l.0),
            io: vec![("send_errors", 0)],
        };
        snapshot(node, p.sim.now(), &shell)
    }

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
        for needle in ["host 1", "peer 2", "wan1 -> 172.16.0.2:51820", "wan2 -> 172.16.1.2:51820", "probes lost"] {
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
