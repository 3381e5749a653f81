//! The snapshot's types: the JSON layout of `mpvr status --json`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::proto::stats::Count;

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
    /// Layout version ([`SNAPSHOT_VERSION`]); fields added since carry defaults.
    pub version: u32,
    /// This host's id.
    pub host: u32,
    /// The TUN interface.
    pub tun: String,
    /// Real-time traffic's duplication policy.
    pub policy: String,
    /// Bulk traffic's duplication policy.
    #[serde(default)]
    pub bulk_policy: String,
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
    /// The TUN's MTU now.
    #[serde(default)]
    pub tun_mtu: Option<u32>,
    /// The TUN's MTU follows the paths (`host.mtu = "auto"`).
    #[serde(default)]
    pub tun_mtu_auto: bool,
    /// The TUN's offloads: `TSO` (with checksum offload; GRO toward the
    /// TUN), `TSO, USO`, or `off: ` and why.
    #[serde(default)]
    pub tun_offload: Option<String>,
    /// The TUN's queues: `TCP apart` (TCP in a queue of its own, each queue
    /// with its reader) or `one: ` and why.
    #[serde(default)]
    pub tun_queues: Option<String>,
    /// The largest inner packet the paths toward every neighbour carry.
    #[serde(default)]
    pub tunnel_mtu: Option<u32>,
    /// The internet exit, at either end.
    #[serde(default)]
    pub exit: Option<ExitSnap>,
    /// The config file in use: when it was loaded, reloads.
    #[serde(default)]
    pub config: Option<ConfigSnap>,
    /// Prefixes whose kernel route another program or device holds (not
    /// replaced: traffic to them does not enter this tunnel).
    #[serde(default)]
    pub held_routes: Vec<String>,
    /// The advert key bound to each origin host.
    #[serde(default)]
    pub origin_keys: Vec<OriginKeySnap>,
}

/// An origin's advert key, and how it was bound.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OriginKeySnap {
    /// The origin host.
    pub origin: u32,
    /// Its Ed25519 public key (base64).
    pub key: String,
    /// "session" (from the origin itself, a neighbour) or "first use"
    /// (from an advert another neighbour flooded).
    pub bound: String,
    /// The neighbour it came through.
    pub via: u32,
}

/// The config file the daemon runs with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigSnap {
    /// Its path.
    pub file: String,
    /// Seconds since it was loaded (at start or by the last reload that applied).
    pub loaded_s_ago: f64,
    /// Reloads that applied.
    pub reloads: u64,
    /// Why the last reload was refused, if it was (cleared by one that applies).
    pub last_error: Option<String>,
}

/// The internet exit: this host is one, or sends its internet traffic to one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExitSnap {
    /// "exit" (this host forwards its peers' traffic out) or "site" (its
    /// internet traffic goes through an exit peer).
    pub role: String,
    /// Exit: the interface traffic leaves by.
    pub interface: Option<String>,
    /// Exit: IPv6 is forwarded too.
    pub ipv6: bool,
    /// Exit: connections the kernel tracks (NAT's and any other's).
    pub tracked: Option<u64>,
    /// Site: the exit peer.
    pub peer: Option<u32>,
    /// Site: "direct" or "block".
    pub fallback: Option<String>,
    /// Site: "through the exit", "direct" or "blocked".
    pub state: Option<String>,
    /// Site: seconds in that state.
    pub state_for_s: Option<f64>,
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
    /// Its role: primary, secondary or backup.
    #[serde(default)]
    pub role: String,
    /// Its configured upload rate (`None`: not shaped).
    #[serde(default)]
    pub rate: Option<String>,
    /// Its configured upload rate, bits per second.
    #[serde(default)]
    pub rate_bps: Option<u64>,
    /// Data copies sent, by class.
    #[serde(default)]
    pub by_class: BTreeMap<String, Counter>,
    /// Its shaper (`None`: not shaped).
    #[serde(default)]
    pub shaper: Option<ShaperSnap>,
}

/// A link's shaper: its queues by lane (realtime, control, bulk).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShaperSnap {
    /// Copies that had to wait, per lane.
    pub queued: BTreeMap<String, u64>,
    /// Copies dropped, per lane.
    pub drops: BTreeMap<String, u64>,
    /// Bytes waiting now, per lane.
    pub backlog_bytes: BTreeMap<String, u64>,
    /// Queueing delay of the last copy sent, per lane, milliseconds.
    pub delay_ms: BTreeMap<String, f64>,
    /// Smoothed queueing delay of bulk, milliseconds.
    pub bulk_delay_ms: f64,
}

/// One class's packets in and out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassSnap {
    /// Sealed toward a neighbour (from the TUN or relayed).
    pub out: Counter,
    /// Delivered to the TUN.
    #[serde(rename = "in")]
    pub into: Counter,
}

/// One neighbour.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSnap {
    /// Its host id.
    pub id: u32,
    /// The real-time duplication policy toward it.
    pub policy: String,
    /// The bulk duplication policy toward it.
    #[serde(default)]
    pub bulk_policy: String,
    /// The session being sent on.
    pub session: Option<SessionSnap>,
    /// A handshake this host started waits for an answer.
    pub handshake_pending: bool,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Why there is no session, in words (`None` with a session).
    #[serde(default)]
    pub no_session: Option<String>,
    /// Packets waiting for a session.
    pub staged: usize,
    /// Packets sealed for it (once each, whatever the copies).
    pub sealed: Counter,
    /// Packets accepted from it (first copies).
    pub accepted: Counter,
    /// Paths learned from authenticated packets.
    pub paths_learned: u64,
    /// Its authenticated data packets refused for a source address not routed to it.
    #[serde(default)]
    pub bad_source: u64,
    /// Data packets from it this host delivered toward outside the overlay (as an exit).
    #[serde(default)]
    pub exit_out: Counter,
    /// Packets from outside the overlay sent to it (as an exit).
    #[serde(default)]
    pub exit_in: Counter,
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
    /// The AEAD its data is sealed with ("AES-256-GCM" or "ChaCha20-Poly1305").
    #[serde(default)]
    pub cipher: String,
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
    /// missing / (delivered + missing), over the daemon's lifetime.
    pub loss: f64,
    /// This path's share of the bundle's first arrivals.
    pub first_share: f64,
    /// The same ratio over the last [`super::RECENT_WINDOW_S`] seconds
    /// (`None` until there is a sample that old, or without data then).
    #[serde(default)]
    pub recent_loss: Option<f64>,
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
    /// The download rate the peer told for its end of the path (what this
    /// end shapes its sending on the path to).
    #[serde(default)]
    pub peer_down: Option<String>,
    /// The shaper toward that rate.
    #[serde(default)]
    pub shaper: Option<ShaperSnap>,
    /// The real-time policy copies data onto it now.
    pub selected: bool,
    /// The bulk policy sends data on it now.
    #[serde(default)]
    pub selected_bulk: bool,
    /// "up", "degraded", "suspect" or "down".
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
    /// Its MTU discovery.
    #[serde(default)]
    pub mtu: MtuSnap,
}

/// A path's MTU discovery. Sizes are outer IP packets (what `ip link`
/// calls an MTU), as the path's local link sends them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MtuSnap {
    /// "not probed", "searching", "settled" or "confirming".
    pub state: String,
    /// The largest packet sent on the path now (measured, or during a
    /// first search what is not yet ruled out).
    pub mtu: u32,
    /// The measured MTU, once a search settled.
    pub measured: Option<u32>,
    /// The largest inner packet that fits (`mtu` less the encapsulation).
    pub carries: u32,
    /// The smallest MTU assumed of every path (576 over IPv4, 1280 over IPv6).
    pub floor: u32,
    /// The local link's MTU.
    pub link: u32,
    /// Searches run.
    pub searches: u64,
    /// Shrinks found by confirmation.
    pub shrinks: u64,
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
    /// Packets read from each TUN queue, by queue (a super-packet counts as
    /// its segments): with TCP apart, queue 0 holds TCP and queue 1
    /// everything else; with one queue, all of it.
    #[serde(default)]
    pub tun_queue_reads: Vec<u64>,
    /// Datagrams read from the links' sockets, by socket, summed over the
    /// links (a GRO train counts as its datagrams): with bulk data apart,
    /// socket 0 holds bulk data and socket 1 real-time data and control;
    /// with one socket per link, all of it.
    #[serde(default)]
    pub link_queue_reads: Vec<u64>,
    /// Data packets by class.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassSnap>,
    /// ICMP "too big" answers written.
    #[serde(default)]
    pub icmp_too_big: u64,
    /// IPv4 packets fragmented to fit the paths.
    #[serde(default)]
    pub fragmented: u64,
    /// Fragments made of them.
    #[serde(default)]
    pub fragments: u64,
    /// TCP SYNs whose MSS was lowered.
    #[serde(default)]
    pub mss_clamped: u64,
    /// Diffie-Hellman work done for others' handshake messages.
    #[serde(default)]
    pub handshake_work: u64,
    /// Cookie replies sent (under load).
    #[serde(default)]
    pub cookies_out: u64,
}
