//! The configuration file (TOML), checked once into a [`Config`] the rest of
//! the daemon can trust.
//!
//! Every problem is reported with the field it concerns, what is wrong and how
//! to fix it; all problems are collected, not just the first. Loading a
//! config changes nothing on the system. See `examples/` for documented files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use ipnet::IpNet;
use serde::Deserialize;

use crate::keys::{self, Key};
use crate::proto::mesh::MeshConfig;
use crate::proto::monitor::MonitorConfig;
use crate::proto::node::{DEFAULT_KEEPALIVE, MAX_PACKET_LIMIT};
use crate::proto::window::{DEFAULT_WINDOW_PACKETS, MAX_WINDOW_PACKETS, MIN_WINDOW_PACKETS};
use crate::proto::wire::DEFAULT_HOP_LIMIT;
use crate::proto::{HostId, Policy};
use crate::units::parse_duration;

/// Default UDP port.
pub const DEFAULT_PORT: u16 = 51820;
/// Default TUN name.
pub const DEFAULT_TUN: &str = "mpvr0";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    host: HostSection,
    #[serde(default)]
    links: LinksSection,
    #[serde(default)]
    link: BTreeMap<String, LinkSection>,
    #[serde(default)]
    peer: Vec<PeerSection>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    session: SessionSection,
    #[serde(default)]
    probe: ProbeSection,
    #[serde(default)]
    control: ControlSection,
    #[serde(default)]
    mesh: MeshSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeshSection {
    enabled: Option<bool>,
    refresh: Option<String>,
    max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeSection {
    interval: Option<String>,
    busy_interval: Option<String>,
    down_after: Option<i64>,
    up_after: Option<i64>,
    silence: Option<String>,
    degraded_loss: Option<String>,
    degraded_rtt: Option<String>,
    degraded_jitter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    socket: Option<PathBuf>,
    prometheus: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    id: u32,
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    listen_port: Option<u16>,
    transport: Option<String>,
    ip_protocol: Option<i64>,
    tun: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    advertise: Vec<String>,
    mtu: Option<MtuValue>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MtuValue {
    Number(i64),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinksSection {
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    allow_virtual: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkSection {
    #[serde(default = "yes")]
    enabled: bool,
    gateway: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerSection {
    id: u32,
    public_key: Option<String>,
    preshared_key: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointValue>,
    #[serde(default)]
    prefixes: Vec<String>,
    via: Option<u32>,
    policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EndpointValue {
    Plain(String),
    Pinned(PinnedEndpoint),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinnedEndpoint {
    address: String,
    link: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionSection {
    window: Option<i64>,
    keepalive: Option<String>,
    hop_limit: Option<i64>,
}

/// How datagrams travel between hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// In UDP (the default; works through NAT).
    Udp,
    /// Directly in IP packets of this protocol number (no UDP header; no NAT).
    Ip(u8),
}

impl Transport {
    /// Bytes the transport adds inside the IP packet.
    pub const fn header_len(self) -> usize {
        match self {
            Transport::Udp => crate::proto::wire::UDP_HEADER_LEN,
            Transport::Ip(_) => 0,
        }
    }
}

/// The TUN MTU: computed from the links, or fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtu {
    /// Smallest link MTU minus the encapsulation overhead.
    Auto,
    /// This value.
    Fixed(u16),
}

/// Which NICs become links.
#[derive(Clone, Debug)]
pub struct LinkSelection {
    include: GlobSet,
    exclude: GlobSet,
    /// Virtual devices (veth, bridges, ...) may be links.
    pub allow_virtual: bool,
    /// `include` entries without wildcards: NICs named outright.
    pub named: Vec<String>,
    /// Per-link options by NIC name.
    pub options: BTreeMap<String, LinkOptions>,
}

impl LinkSelection {
    /// Whether a NIC with this name may be a link (physical-ness and state
    /// are checked by the caller).
    pub fn wants(&self, name: &str) -> bool {
        self.include.is_match(name) && !self.exclude.is_match(name) && self.options.get(name).is_none_or(|o| o.enabled)
    }
}

/// Options of one link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkOptions {
    /// `false` keeps the NIC out whatever the globs say.
    pub enabled: bool,
    /// Next-hop router for this link's own routing table (policy routing):
    /// needed when the link has no default route of its own.
    pub gateway: Option<IpAddr>,
}

/// A remote endpoint, optionally tied to one local NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Its UDP address.
    pub address: SocketAddr,
    /// Reach it only from this NIC.
    pub link: Option<String>,
}

/// A peer: a neighbour (with a key) or a host reached through a relay (`via`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its host id.
    pub id: HostId,
    /// Its public key (neighbours only).
    pub public_key: Option<Key>,
    /// Optional pre-shared key mixed into the handshakes with it.
    pub psk: Option<Key>,
    /// Its endpoints (may be empty: then it must contact us first).
    pub endpoints: Vec<EndpointConfig>,
    /// Prefixes routed to it.
    pub prefixes: Vec<IpNet>,
    /// The relay it is reached through.
    pub via: Option<HostId>,
    /// Its own duplication policy (a neighbour only; `None`: the global one).
    pub policy: Option<Policy>,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it was read from.
    pub source: PathBuf,
    /// This host's id.
    pub host: HostId,
    /// This host's private key.
    pub private_key: Key,
    /// UDP port on every link.
    pub listen_port: u16,
    /// How datagrams travel between hosts.
    pub transport: Transport,
    /// TUN interface name.
    pub tun: String,
    /// Addresses (with prefix length) on the TUN.
    pub addresses: Vec<IpNet>,
    /// More prefixes this host advertises to the mesh (networks behind it).
    pub advertise: Vec<IpNet>,
    /// TUN MTU.
    pub mtu: Mtu,
    /// Which NICs are links.
    pub links: LinkSelection,
    /// Peers.
    pub peers: Vec<PeerConfig>,
    /// Duplication policy.
    pub policy: Policy,
    /// Dedup / anti-replay window in packets.
    pub window: u32,
    /// Keepalive interval (`None`: off).
    pub keepalive: Option<Duration>,
    /// Hop limit on packets this host sends.
    pub hop_limit: u8,
    /// Probes and path states.
    pub monitor: MonitorConfig,
    /// The control socket `mpvr status` reads.
    pub control_socket: PathBuf,
    /// Where Prometheus metrics are served (`None`: not served).
    pub prometheus: Option<SocketAddr>,
    /// Route advertisements (`None`: configured routes only).
    pub mesh: Option<MeshConfig>,
}

/// The control socket of a daemon whose TUN is `tun`, unless the config says otherwise.
pub fn default_control_socket(tun: &str) -> PathBuf {
    PathBuf::from(format!("/run/mpvr/{tun}.sock"))
}

/// One thing wrong in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a path (`peer[1].endpoints[0]`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Everything wrong with a config file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub source_file: PathBuf,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{}: {} problem{}", self.source_file.display(), n, if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            if p.field.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), message: message.into() });
    }

    fn host_id(&mut self, field: &str, v: u32) -> Option<HostId> {
        let id = HostId::new(v);
        if id.is_none() {
            self.bad(field, "host id 0 is reserved: use 1 to 4294967295");
        }
        id
    }

    fn prefix(&mut self, field: &str, v: &str) -> Option<IpNet> {
        match v.parse::<IpNet>() {
            Ok(p) => Some(p),
            Err(_) => match v.parse::<IpAddr>() {
                Ok(a) => Some(IpNet::from(a)),
                Err(_) => {
                    self.bad(
                        field,
                        format!("{v:?} is not an address or prefix: write it like 10.9.0.0/24 or fd09::/64"),
                    );
                    None
                }
            },
        }
    }

    fn globs(&mut self, field: &str, patterns: &[String]) -> GlobSet {
        let mut b = GlobSetBuilder::new();
        for (i, p) in patterns.iter().enumerate() {
            match Glob::new(p) {
                Ok(g) => {
                    b.add(g);
                }
                Err(e) => self.bad(format!("{field}[{i}]"), format!("{p:?} is not a valid glob: {e}")),
            }
        }
        b.build().unwrap_or_else(|_| GlobSet::empty())
    }
}

/// The `[probe]` section, checked field by field, then as a whole.
fn probe_settings(c: &mut Checker, p: &ProbeSection) -> MonitorConfig {
    let mut m = MonitorConfig::default();
    let duration = |c: &mut Checker, field: &str, v: &Option<String>, out: &mut Duration| {
        if let Some(s) = v {
            match parse_duration(s) {
                Some(d) => *out = d,
                None => c.bad(
                    format!("probe.{field}"),
                    format!("{s:?} is not a duration: write it like \"200ms\" or \"1.5s\""),
                ),
            }
        }
    };
    duration(c, "interval", &p.interval, &mut m.interval);
    duration(c, "busy_interval", &p.busy_interval, &mut m.busy_interval);
    duration(c, "silence", &p.silence, &mut m.silence);
    for (field, v, out) in [
        ("degraded_rtt", &p.degraded_rtt, &mut m.degraded_rtt),
        ("degraded_jitter", &p.degraded_jitter, &mut m.degraded_jitter),
    ] {
        if let Some(s) = v
            && s != "off"
        {
            let mut d = Duration::ZERO;
            duration(c, field, v, &mut d);
            *out = (d > Duration::ZERO).then_some(d);
        }
    }
    for (field, v, out) in [("down_after", p.down_after, &mut m.down_after), ("up_after", p.up_after, &mut m.up_after)]
    {
        match v {
            None => {}
            Some(n) if (1..=100).contains(&n) => *out = n as u32,
            Some(n) => c.bad(format!("probe.{field}"), format!("{n} is out of range: use 1 to 100 probes")),
        }
    }
    if let Some(s) = &p.degraded_loss {
        match s.strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()) {
            Some(pct) if pct > 0.0 && pct <= 100.0 => m.degraded_loss = pct / 100.0,
            _ => c.bad(
                "probe.degraded_loss",
                format!("{s:?} is not a loss threshold: write a percentage above 0 and at most 100, such as \"5%\""),
            ),
        }
    }
    if c.problems.iter().all(|x| !x.field.starts_with("probe."))
        && let Err(e) = m.validate()
    {
        c.bad("probe", e.to_string());
    }
    m
}

/// Check a NIC or TUN name as Linux accepts it.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Read and check a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let fail = |message: String| ConfigError {
        source_file: path.to_path_buf(),
        problems: vec![Problem { field: String::new(), message }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    parse(&text, path)
}

/// Check config text; `path` names it in messages and anchors a relative
/// `private_key_file`.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError {
        source_file: path.to_path_buf(),
        problems: vec![Problem { field: String::new(), message: e.to_string().trim_end().replace('\n', "\n  ") }],
    })?;
    let mut c = Checker { problems: Vec::new() };
    let host = c.host_id("host.id", file.host.id);

    let private_key = match (&file.host.private_key, &file.host.private_key_file) {
        (Some(_), Some(_)) => {
            c.bad("host.private_key", "give private_key or private_key_file, not both");
            None
        }
        (None, None) => {
            c.bad(
                "host",
                "no private key: set private_key_file = \"/etc/mpvr/private.key\" (create it with `mpvr genkey`)",
            );
            None
        }
        (Some(k), None) => match keys::decode(k) {
            Ok(k) => Some(k),
            Err(e) => {
                c.bad("host.private_key", e.to_string());
                None
            }
        },
        (None, Some(f)) => {
            let f = if f.is_relative() { path.parent().unwrap_or(Path::new(".")).join(f) } else { f.clone() };
            match keys::read_private_key_file(&f) {
                Ok(k) => Some(k),
                Err(e) => {
                    c.bad("host.private_key_file", e.to_string());
                    None
                }
            }
        }
    };

    let listen_port = file.host.listen_port.unwrap_or(DEFAULT_PORT);
    if listen_port == 0 {
        c.bad("host.listen_port", "port 0 cannot be reached by peers: use a fixed port such as 51820");
    }
    let transport = match (file.host.transport.as_deref(), file.host.ip_protocol) {
        (None | Some("udp"), None) => Transport::Udp,
        (None | Some("udp"), Some(_)) => {
            c.bad("host.ip_protocol", "only used with transport = \"ip\": remove it, or set the transport");
            Transport::Udp
        }
        (Some("ip"), p) => {
            let p = p.unwrap_or(i64::from(crate::sys::raw::DEFAULT_PROTOCOL));
            if (143..=254).contains(&p) {
                Transport::Ip(p as u8)
            } else {
                c.bad(
                    "host.ip_protocol",
                    format!("{p} is an assigned or invalid protocol number: use 253 or 254 (for experiments, RFC 3692) or an unassigned one from 143 to 252"),
                );
                Transport::Udp
            }
        }
        (Some(other), _) => {
            c.bad(
                "host.transport",
                format!("{other:?} is not a transport: use \"udp\" (the default) or \"ip\" (raw IP, no NAT)"),
            );
            Transport::Udp
        }
    };
    let tun = file.host.tun.clone().unwrap_or_else(|| DEFAULT_TUN.to_string());
    if !valid_ifname(&tun) {
        c.bad("host.tun", format!("{tun:?} is not a valid interface name: 1 to 15 letters, digits, '-', '_' or '.'"));
    }
    let mut addresses = Vec::new();
    for (i, a) in file.host.addresses.iter().enumerate() {
        if let Some(p) = c.prefix(&format!("host.addresses[{i}]"), a) {
            addresses.push(p);
        }
    }
    let mut advertise = Vec::new();
    for (i, a) in file.host.advertise.iter().enumerate() {
        if let Some(p) = c.prefix(&format!("host.advertise[{i}]"), a) {
            advertise.push(p.trunc());
        }
    }
    if file.host.addresses.is_empty() {
        c.bad("host.addresses", "the TUN needs at least one address, such as [\"10.9.0.1/24\"]");
    }
    let mtu = match &file.host.mtu {
        None => Mtu::Auto,
        Some(MtuValue::Word(w)) if w == "auto" => Mtu::Auto,
        Some(MtuValue::Number(n)) if (576..=MAX_PACKET_LIMIT as i64).contains(n) => Mtu::Fixed(*n as u16),
        Some(other) => {
            c.bad(
                "host.mtu",
                format!("{other:?} is not an MTU: use \"auto\" or a number from 576 to {MAX_PACKET_LIMIT}"),
            );
            Mtu::Auto
        }
    };
    if let Mtu::Fixed(m) = mtu
        && m < 1280
        && addresses.iter().any(|a| a.addr().is_ipv6())
    {
        c.bad("host.mtu", format!("{m} is below IPv6's minimum of 1280 while the TUN has an IPv6 address"));
    }

    let include = file.links.include.clone().unwrap_or_else(|| vec!["*".to_string()]);
    let links = LinkSelection {
        include: c.globs("links.include", &include),
        exclude: c.globs("links.exclude", &file.links.exclude),
        allow_virtual: file.links.allow_virtual,
        named: include.iter().filter(|p| !p.contains(['*', '?', '[', '{'])).cloned().collect(),
        options: file
            .link
            .iter()
            .map(|(name, l)| {
                if !valid_ifname(name) {
                    c.bad(format!("link.{name}"), "not a valid interface name");
                }
                let gateway = match &l.gateway {
                    None => None,
                    Some(g) => match g.parse::<IpAddr>() {
                        Ok(a) => Some(a),
                        Err(_) => {
                            c.bad(format!("link.{name}.gateway"), format!("{g:?} is not an IP address"));
                            None
                        }
                    },
                };
                (name.clone(), LinkOptions { enabled: l.enabled, gateway })
            })
            .collect(),
    };

    let mut peers = Vec::new();
    let mut seen = BTreeSet::new();
    let mut routed: BTreeMap<IpNet, String> = BTreeMap::new();
    for (i, p) in file.peer.iter().enumerate() {
        let f = |s: &str| format!("peer[{i}].{s}");
        let Some(id) = c.host_id(&f("id"), p.id) else {
            continue;
        };
        if Some(id) == host {
            c.bad(f("id"), format!("{id} is this host itself: give each host its own id"));
        }
        if !seen.insert(id) {
            c.bad(f("id"), format!("{id} is listed twice: merge the two [[peer]] sections"));
        }
        let via = p.via.and_then(|v| c.host_id(&f("via"), v));
        let public_key = match &p.public_key {
            Some(k) => match keys::decode(k) {
                Ok(k) => Some(k),
                Err(e) => {
                    c.bad(f("public_key"), e.to_string());
                    None
                }
            },
            None => {
                if via.is_none() {
                    c.bad(f("public_key"), "a neighbour needs its public key (run `mpvr pubkey` on it), or set via = <relay id> if it is reached through a relay");
                }
                None
            }
        };
        let psk = match &p.preshared_key {
            None => None,
            Some(k) => match keys::decode(k) {
                Ok(k) => Some(k),
                Err(e) => {
                    c.bad(f("preshared_key"), format!("{e} (both hosts set the same one, e.g. from `mpvr genkey`)"));
                    None
                }
            },
        };
        if via.is_some() && (p.public_key.is_some() || !p.endpoints.is_empty() || psk.is_some()) {
            c.bad(f("via"), "a peer reached through a relay has no key or endpoints of its own here: remove them, or remove via to make it a neighbour");
        }
        let mut endpoints = Vec::new();
        for (j, e) in p.endpoints.iter().enumerate() {
            let (addr, link) = match e {
                EndpointValue::Plain(a) => (a, None),
                EndpointValue::Pinned(pe) => (&pe.address, Some(pe.link.clone())),
            };
            let parsed = addr.parse::<SocketAddr>().ok().or_else(|| {
                // The raw-IP transport has no ports: a bare address will do.
                matches!(transport, Transport::Ip(_))
                    .then(|| addr.parse::<IpAddr>().ok())
                    .flatten()
                    .map(|ip| SocketAddr::new(ip, 0))
            });
            match parsed {
                Some(a) if (a.port() != 0 || matches!(transport, Transport::Ip(_))) && !a.ip().is_unspecified() => {
                    let a = if matches!(transport, Transport::Ip(_)) { SocketAddr::new(a.ip(), 0) } else { a };
                    endpoints.push(EndpointConfig { address: a, link: link.clone() })
                }
                _ => c.bad(format!("peer[{i}].endpoints[{j}]"), format!("{addr:?} is not an endpoint: write IP:port, such as \"192.0.2.1:51820\" or \"[2001:db8::1]:51820\"")),
            }
            if let Some(l) = link
                && !valid_ifname(&l)
            {
                c.bad(format!("peer[{i}].endpoints[{j}].link"), format!("{l:?} is not a valid interface name"));
            }
        }
        let mut prefixes = Vec::new();
        for (j, s) in p.prefixes.iter().enumerate() {
            let field = format!("peer[{i}].prefixes[{j}]");
            if let Some(pfx) = c.prefix(&field, s) {
                let pfx = pfx.trunc();
                if let Some(other) = routed.insert(pfx, field.clone()) {
                    c.bad(field, format!("{pfx} is already routed by {other}: a prefix goes to one peer"));
                }
                prefixes.push(pfx);
            }
        }
        let policy = match p.policy.as_deref().map(str::parse::<Policy>) {
            None => None,
            Some(Ok(_)) if via.is_some() => {
                c.bad(f("policy"), "a peer reached through a relay has no paths of its own here: set the policy on the relay's [[peer]]");
                None
            }
            Some(Ok(pol)) => Some(pol),
            Some(Err(e)) => {
                c.bad(f("policy"), e.to_string());
                None
            }
        };
        peers.push(PeerConfig { id, public_key, psk, endpoints, prefixes, via, policy });
    }
    for (i, p) in peers.iter().enumerate() {
        if let Some(v) = p.via {
            match peers.iter().find(|q| q.id == v) {
                None => c.bad(format!("peer[{i}].via"), format!("{v} is not a peer: add a [[peer]] for the relay")),
                Some(q) if q.via.is_some() => c.bad(
                    format!("peer[{i}].via"),
                    format!("{v} is itself reached via a relay: name the relay that is a neighbour"),
                ),
                Some(_) => {}
            }
        }
    }

    for (i, a) in advertise.iter().enumerate() {
        if let Some(field) = routed.get(a) {
            c.bad(
                format!("host.advertise[{i}]"),
                format!("{a} is this host's, but {field} routes it to a peer: keep one"),
            );
        }
    }

    let policy = match file.policy.as_deref().map(str::parse::<Policy>) {
        None => Policy::All,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            c.bad("policy", e.to_string());
            Policy::All
        }
    };
    let window = match file.session.window {
        None => DEFAULT_WINDOW_PACKETS,
        Some(w) if (i64::from(MIN_WINDOW_PACKETS)..=i64::from(MAX_WINDOW_PACKETS)).contains(&w) => w as u32,
        Some(w) => {
            c.bad("session.window", format!("{w} packets is out of range: use {MIN_WINDOW_PACKETS} to {MAX_WINDOW_PACKETS} (default {DEFAULT_WINDOW_PACKETS}: 100 000 packets/s with 500 ms of skew)"));
            DEFAULT_WINDOW_PACKETS
        }
    };
    let keepalive = match file.session.keepalive.as_deref() {
        None => Some(DEFAULT_KEEPALIVE),
        Some("off") => None,
        Some(s) => {
            match parse_duration(s) {
                Some(d) if d >= Duration::from_secs(1) => Some(d),
                _ => {
                    c.bad("session.keepalive", format!("{s:?} is not a keepalive interval: use \"off\" or a duration of at least 1s, such as \"25s\""));
                    None
                }
            }
        }
    };
    let hop_limit = match file.session.hop_limit {
        None => DEFAULT_HOP_LIMIT,
        Some(h) if (1..=255).contains(&h) => h as u8,
        Some(h) => {
            c.bad("session.hop_limit", format!("{h} is out of range: use 1 to 255 (default {DEFAULT_HOP_LIMIT})"));
            DEFAULT_HOP_LIMIT
        }
    };

    let monitor = probe_settings(&mut c, &file.probe);
    let control_socket = match &file.control.socket {
        None => default_control_socket(&tun),
        Some(p) if p.is_absolute() && p.file_name().is_some() => p.clone(),
        Some(p) => {
            c.bad(
                "control.socket",
                format!("{} is not an absolute file path, such as \"/run/mpvr/mpvr0.sock\"", p.display()),
            );
            default_control_socket(&tun)
        }
    };
    let prometheus = match file.control.prometheus.as_deref() {
        None => None,
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(addr),
            Ok(_) => {
                c.bad("control.prometheus", format!("{a} is not a loopback address: metrics are served on 127.0.0.1 or [::1] only (put a proxy in front to expose them)"));
                None
            }
            Err(_) => {
                c.bad(
                    "control.prometheus",
                    format!("{a:?} is not an address: write IP:port, such as \"127.0.0.1:9182\""),
                );
                None
            }
        },
    };

    let mesh = {
        let mut m = MeshConfig::default();
        for (field, v, out) in
            [("refresh", &file.mesh.refresh, &mut m.refresh), ("max_age", &file.mesh.max_age, &mut m.max_age)]
        {
            if let Some(text) = v {
                match parse_duration(text) {
                    Some(d) if (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) => *out = d,
                    _ => c.bad(
                        format!("mesh.{field}"),
                        format!("{text:?} is not a duration from 1s to 1h, such as \"10s\""),
                    ),
                }
            }
        }
        if m.max_age < m.refresh * 3 {
            c.bad(
                "mesh.max_age",
                format!(
                    "{} must be at least 3 x refresh ({}): one lost advert must not drop a host's routes",
                    crate::units::format_duration(m.max_age),
                    crate::units::format_duration(m.refresh)
                ),
            );
        }
        file.mesh.enabled.unwrap_or(true).then_some(m)
    };

    match (c.problems.is_empty(), host, private_key) {
        (true, Some(host), Some(private_key)) => Ok(Config {
            source: path.to_path_buf(),
            host,
            private_key,
            listen_port,
            transport,
            tun,
            addresses,
            advertise,
            mtu,
            links,
            peers,
            policy,
            window,
            keepalive,
            hop_limit,
            monitor,
            control_socket,
            prometheus,
            mesh,
        }),
        _ => Err(ConfigError { source_file: path.to_path_buf(), problems: c.problems }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "GBpJ3Y0mRG9NwPtr4m9BdHI2c0gz+fyTQ2eAIOcZ0Hw=";
    const PUB: &str = "u4fHs/dULTSx3PUTF6pG8a4BTlN3I2jr/qSvbxh7Cyc=";

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(text, Path::new("test.toml"))
    }

    fn fields(text: &str) -> Vec<String> {
        check(text).unwrap_err().problems.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_full_config_parses() {
        let c = check(&format!(
            r#"
            policy = "all"
            [host]
            id = 1
            private_key = "{KEY}"
            addresses = ["10.9.0.1/24", "fd09::1/64"]
            advertise = ["192.168.60.1/24"]
            mtu = 1400
            [links]
            include = ["eth*", "wwan0"]
            exclude = ["eth9"]
            [link.wwan0]
            gateway = "10.64.0.1"
            [[peer]]
            id = 2
            public_key = "{PUB}"
            endpoints = ["192.0.2.2:51820", {{ address = "[2001:db8::2]:51820", link = "wwan0" }}]
            prefixes = ["10.9.0.2/32", "192.168.50.0/24"]
            policy = "failover"
            [[peer]]
            id = 3
            via = 2
            prefixes = ["10.9.0.3"]
            [session]
            window = 100000
            keepalive = "10s"
            hop_limit = 4
            "#
        ))
        .unwrap();
        assert_eq!(c.host.get(), 1);
        assert_eq!(c.mtu, Mtu::Fixed(1400));
        assert_eq!(c.advertise, vec!["192.168.60.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(c.listen_port, DEFAULT_PORT);
        assert!(c.links.wants("eth0") && !c.links.wants("eth9") && c.links.wants("wwan0") && !c.links.wants("docker0"));
        assert_eq!(c.links.options["wwan0"].gateway, Some("10.64.0.1".parse().unwrap()));
        assert_eq!(c.peers[0].endpoints[1].link.as_deref(), Some("wwan0"));
        assert_eq!(c.peers[1].prefixes, vec!["10.9.0.3/32".parse::<IpNet>().unwrap()]);
        assert_eq!(c.peers[1].via, HostId::new(2));
        assert_eq!((c.peers[0].policy, c.peers[1].policy), (Some(Policy::Failover), None));
        assert_eq!((c.window, c.keepalive, c.hop_limit), (100_000, Some(Duration::from_secs(10)), 4));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let got = fields(&format!(
            r#"
            policy = "fastest"
            [host]
            id = 0
            private_key = "nope"
            tun = "this-name-is-far-too-long"
            addresses = ["10.9.0.300/24"]
            mtu = 100
            [[peer]]
            id = 2
            endpoints = ["192.0.2.2"]
            prefixes = ["10.9.0.0/24"]
            [[peer]]
            id = 2
            public_key = "{PUB}"
            via = 7
            prefixes = ["10.9.0.7/24"]
            [session]
            window = 5
            keepalive = "100ms"
            hop_limit = 0
            "#
        ));
        let want = [
            "host.id",
            "host.private_key",
            "host.tun",
            "host.addresses[0]",
            "host.mtu",
            "peer[0].public_key",
            "peer[0].endpoints[0]",
            "peer[1].id",
            "peer[1].via",
            "peer[1].prefixes[0]",
            "peer[1].via",
            "policy",
            "session.window",
            "session.keepalive",
            "session.hop_limit",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn syntax_and_unknown_fields_are_refused_with_their_place() {
        let e = check("[host]\nid = 1\ncolour = \"red\"\n").unwrap_err().to_string();
        assert!(e.contains("colour") && e.contains("line 3"), "{e}");
        let e = check("[host\n").unwrap_err().to_string();
        assert!(e.contains("test.toml"), "{e}");
        assert_eq!(fields("[host]\nid = 1\naddresses = [\"10.0.0.1/8\"]\n"), vec!["host"]);
    }

    #[test]
    fn probe_and_control_sections() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\ntun = \"wan9\"\n");
        let c = check(&base).unwrap();
        assert_eq!(c.monitor, MonitorConfig::default());
        assert_eq!(c.control_socket, PathBuf::from("/run/mpvr/wan9.sock"));
        assert_eq!(c.prometheus, None);
        assert_eq!(c.mesh, Some(MeshConfig::default()));
        assert_eq!(check(&format!("{base}[mesh]\nenabled = false\n")).unwrap().mesh, None);
        let m = check(&format!("{base}[mesh]\nrefresh = \"5s\"\nmax_age = \"20s\"\n")).unwrap().mesh.unwrap();
        assert_eq!((m.refresh, m.max_age), (Duration::from_secs(5), Duration::from_secs(20)));
        assert_eq!(fields(&format!("{base}[mesh]\nrefresh = \"20s\"\n")), ["mesh.max_age"]);
        assert_eq!(fields(&format!("{base}[mesh]\nrefresh = \"0s\"\n")), ["mesh.refresh"]);
        let both = format!(
            "[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\nadvertise = [\"10.5.0.0/16\"]\n\
             [[peer]]\nid = 2\npublic_key = \"{PUB}\"\nprefixes = [\"10.5.0.0/16\"]\n"
        );
        assert_eq!(fields(&both), ["host.advertise[0]"]);
        let c = check(&format!(
            "{base}[probe]\ninterval = \"100ms\"\nbusy_interval = \"500ms\"\ndown_after = 5\nup_after = 2\n\
             silence = \"1s\"\ndegraded_loss = \"2.5%\"\ndegraded_rtt = \"150ms\"\ndegraded_jitter = \"off\"\n\
             [control]\nsocket = \"/tmp/x.sock\"\nprometheus = \"127.0.0.1:9182\"\n"
        ))
        .unwrap();
        let m = c.monitor;
        assert_eq!(
            (m.interval, m.busy_interval, m.silence),
            (Duration::from_millis(100), Duration::from_millis(500), Duration::from_secs(1))
        );
        assert_eq!((m.down_after, m.up_after, m.degraded_loss), (5, 2, 0.025));
        assert_eq!((m.degraded_rtt, m.degraded_jitter), (Some(Duration::from_millis(150)), None));
        assert_eq!(c.control_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.prometheus, Some("127.0.0.1:9182".parse().unwrap()));
        let got = fields(&format!(
            "{base}[probe]\ninterval = \"fast\"\ndown_after = 0\ndegraded_loss = \"5\"\n\
             [control]\nsocket = \"relative.sock\"\nprometheus = \"0.0.0.0:9182\"\n"
        ));
        assert_eq!(
            got,
            ["probe.interval", "probe.down_after", "probe.degraded_loss", "control.socket", "control.prometheus"]
        );
        // Each value fine, together wrong: silence must exceed the busy interval.
        let e = check(&format!("{base}[probe]\nbusy_interval = \"2s\"\n")).unwrap_err().to_string();
        assert!(e.contains("probe: probe silence") && e.contains("busy_interval"), "{e}");
    }

    #[test]
    fn transports() {
        let base = format!("[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n");
        let peer = format!("[[peer]]\nid = 2\npublic_key = \"{PUB}\"\nendpoints = [\"192.0.2.2\"]\n");
        assert_eq!(check(&base).unwrap().transport, Transport::Udp);
        let ip = check(&format!("{base}transport = \"ip\"\n{peer}")).unwrap();
        assert_eq!(ip.transport, Transport::Ip(253));
        assert_eq!(ip.peers[0].endpoints[0].address, "192.0.2.2:0".parse().unwrap());
        // A bare address needs the raw-IP transport.
        assert_eq!(fields(&format!("{base}{peer}")), vec!["peer[0].endpoints[0]"]);
        assert_eq!(fields(&format!("{base}transport = \"ip\"\nip_protocol = 17\n")), vec!["host.ip_protocol"]);
        assert_eq!(fields(&format!("{base}ip_protocol = 253\n")), vec!["host.ip_protocol"]);
        assert_eq!(fields(&format!("{base}transport = \"tcp\"\n")), vec!["host.transport"]);
    }

    #[test]
    fn glob_selection() {
        let c = check(&format!(
            "[host]\nid = 1\nprivate_key = \"{KEY}\"\naddresses = [\"10.9.0.1/24\"]\n[link.eth1]\nenabled = false\n"
        ))
        .unwrap();
        assert!(c.links.wants("eth0") && !c.links.wants("eth1"));
        assert!(valid_ifname("wan-1.2") && !valid_ifname("a/b") && !valid_ifname(""));
    }
}
