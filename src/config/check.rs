//! Checking each section of a config file: every problem named by its
//! field, all of them collected. Ranges the core defines are checked by the
//! core's own functions ([`crate::proto::node::check_window`] and its
//! siblings, [`MonitorConfig::validate`], [`MeshConfig::validate`]); this
//! layer only parses and names the field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use ipnet::IpNet;

use super::file::{
    ControlSection, EndpointValue, ExitSection, HostSection, MeshSection, NumberOrWord, PeerSection, ProbeSection,
    RuleSection, SessionSection,
};
use super::{
    CipherChoice, DEFAULT_PORT, DEFAULT_TUN, EndpointConfig, ExitConfig, Fallback, LinkOptions, LinkSelection,
    MAX_THREADS, Mtu, PeerConfig, Problem, Threads, default_control_socket, valid_ifname,
};
use crate::keys::{self, Key};
use crate::proto::class::{RuleError, protocol, validate_rules};
use crate::proto::mesh::{MeshConfig, MeshConfigError};
use crate::proto::monitor::MonitorConfig;
use crate::proto::node::{DEFAULT_KEEPALIVE, MAX_PACKET_LIMIT, check_hop_limit, check_keepalive, check_window};
use crate::proto::shaper::Rate;
use crate::proto::window::{DEFAULT_WINDOW_PACKETS, MAX_WINDOW_PACKETS, MIN_WINDOW_PACKETS};
use crate::proto::wire::DEFAULT_HOP_LIMIT;
use crate::proto::{Class, HostId, LinkSettings, Policy, Role, Rule};
use crate::sys::Transport;
use crate::units::parse_duration;

/// The problems found so far.
#[derive(Default)]
pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
}

impl Checker {
    fn bad(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { field: field.into(), message: message.into() });
    }

    pub(super) fn host_id(&mut self, field: &str, v: u32) -> Option<HostId> {
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

    /// `text` as a duration, or a problem for `field`.
    fn duration(&mut self, field: &str, text: &str) -> Option<Duration> {
        let d = parse_duration(text);
        if d.is_none() {
            self.bad(field, format!("{text:?} is not a duration: write it like \"200ms\" or \"1.5s\""));
        }
        d
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
pub(super) fn probe(c: &mut Checker, p: &ProbeSection) -> MonitorConfig {
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
    duration(c, "fast_interval", &p.fast_interval, &mut m.fast_interval);
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

/// The `[host]` section, but for its key.
pub(super) struct HostParts {
    pub(super) listen_port: u16,
    pub(super) transport: Transport,
    pub(super) tun: String,
    pub(super) addresses: Vec<IpNet>,
    pub(super) advertise: Vec<IpNet>,
    pub(super) mtu: Mtu,
    pub(super) threads: Threads,
}

/// This host's private key, given inline or in a file (relative to `path`'s folder).
pub(super) fn private_key(c: &mut Checker, file: &HostSection, path: &Path) -> Option<Key> {
    match (&file.private_key, &file.private_key_file) {
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
    }
}

/// The rest of the `[host]` section.
pub(super) fn host(c: &mut Checker, host: &HostSection) -> HostParts {
    let listen_port = host.listen_port.unwrap_or(DEFAULT_PORT);
    if listen_port == 0 {
        c.bad("host.listen_port", "port 0 cannot be reached by peers: use a fixed port such as 51820");
    }
    let transport = match (host.transport.as_deref(), host.ip_protocol) {
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
    let tun = host.tun.clone().unwrap_or_else(|| DEFAULT_TUN.to_string());
    if !valid_ifname(&tun) {
        c.bad("host.tun", format!("{tun:?} is not a valid interface name: 1 to 15 letters, digits, '-', '_' or '.'"));
    }
    let mut addresses = Vec::new();
    for (i, a) in host.addresses.iter().enumerate() {
        if let Some(p) = c.prefix(&format!("host.addresses[{i}]"), a) {
            addresses.push(p);
        }
    }
    let mut advertise = Vec::new();
    for (i, a) in host.advertise.iter().enumerate() {
        if let Some(p) = c.prefix(&format!("host.advertise[{i}]"), a) {
            advertise.push(p.trunc());
        }
    }
    if host.addresses.is_empty() {
        c.bad("host.addresses", "the TUN needs at least one address, such as [\"10.9.0.1/24\"]");
    }
    let mtu = match auto_or_number(c, "host.mtu", &host.mtu, 576..=MAX_PACKET_LIMIT as i64, "an MTU", "\"auto\"") {
        Some(n) => Mtu::Fixed(n as u16),
        None => Mtu::Auto,
    };
    if let Mtu::Fixed(m) = mtu
        && m < 1280
        && addresses.iter().any(|a| a.addr().is_ipv6())
    {
        c.bad("host.mtu", format!("{m} is below IPv6's minimum of 1280 while the TUN has an IPv6 address"));
    }

    let threads = match auto_or_number(
        c,
        "host.threads",
        &host.threads,
        1..=i64::from(MAX_THREADS),
        "a thread count",
        "\"auto\" (one per CPU)",
    ) {
        Some(n) => Threads::Fixed(n as u16),
        None => Threads::Auto,
    };

    HostParts { listen_port, transport, tun, addresses, advertise, mtu, threads }
}

/// A field that is "auto" (or absent: `None`) or a number in `range`
/// (`Some`); anything else is a problem for `field` (then `None`).
fn auto_or_number(
    c: &mut Checker,
    field: &str,
    v: &Option<NumberOrWord>,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
    auto: &str,
) -> Option<i64> {
    match v {
        None => None,
        Some(NumberOrWord::Word(w)) if w == "auto" => None,
        Some(NumberOrWord::Number(n)) if range.contains(n) => Some(*n),
        Some(other) => {
            c.bad(
                field,
                format!("{other} is not {what}: use {auto} or a number from {} to {}", range.start(), range.end()),
            );
            None
        }
    }
}

/// The `[links]` and `[link.NAME]` sections.
pub(super) fn links(
    c: &mut Checker,
    links: &super::file::LinksSection,
    link: &BTreeMap<String, super::file::LinkSection>,
) -> LinkSelection {
    let include = links.include.clone().unwrap_or_else(|| vec!["*".to_string()]);
    let selection = LinkSelection {
        include: c.globs("links.include", &include),
        exclude: c.globs("links.exclude", &links.exclude),
        allow_virtual: links.allow_virtual,
        named: include.iter().filter(|p| !p.contains(['*', '?', '[', '{'])).cloned().collect(),
        options: link
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
                let role = l.role.as_deref().map_or(Role::Primary, |r| {
                    r.parse::<Role>().unwrap_or_else(|e| {
                        c.bad(format!("link.{name}.role"), e.to_string());
                        Role::Primary
                    })
                });
                let mut rate = |field: &str, v: &Option<String>| {
                    v.as_deref().and_then(|r| {
                        r.parse::<Rate>().map_err(|e| c.bad(format!("link.{name}.{field}"), e.to_string())).ok()
                    })
                };
                let (up, down) = (rate("up", &l.up), rate("down", &l.down));
                let settings = LinkSettings { role, up, down };
                (name.clone(), LinkOptions { enabled: l.enabled, gateway, settings })
            })
            .collect(),
    };
    // A role or rate for a NIC the selection never takes is a mistake
    // (a typo in the name, most often).
    for (name, o) in &selection.options {
        let taken = selection.include.is_match(name) && !selection.exclude.is_match(name);
        if !taken && o.settings != LinkSettings::default() {
            let l = &link[name];
            let field = if l.role.is_some() {
                "role"
            } else if l.up.is_some() {
                "up"
            } else {
                "down"
            };
            c.bad(
                format!("link.{name}.{field}"),
                format!("{name} is not selected by links.include / links.exclude, so this never applies: check the name, or add it to links.include"),
            );
        }
    }
    selection
}

/// The `[[peer]]` sections; `routed` collects every prefix routed to a peer, with its field.
pub(super) fn peers(
    c: &mut Checker,
    file_peers: &[PeerSection],
    host: Option<HostId>,
    transport: Transport,
    routed: &mut BTreeMap<IpNet, String>,
) -> Vec<PeerConfig> {
    let mut peers = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in file_peers.iter().enumerate() {
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
        let exit = match (p.exit, p.fallback.as_deref()) {
            (false, None) => None,
            (false, Some(_)) => {
                c.bad(
                    f("fallback"),
                    "fallback is what traffic does while the exit is down: set exit = true too, or remove it",
                );
                None
            }
            (true, None | Some("direct")) => Some(Fallback::Direct),
            (true, Some("block")) => Some(Fallback::Block),
            (true, Some(other)) => {
                c.bad(f("fallback"), format!("{other:?} is not a fallback: use \"direct\" (the links' own default routes) or \"block\" (nothing leaves outside the tunnel)"));
                None
            }
        };
        if exit.is_some() && peers.iter().any(|q: &PeerConfig| q.exit.is_some()) {
            c.bad(f("exit"), "another peer is already the exit: a host has one internet exit");
        }
        peers.push(PeerConfig { id, public_key, psk, endpoints, prefixes, via, policy, exit });
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

    peers
}

/// Networks this host advertises must not also be routed to a peer.
pub(super) fn advertised_not_routed(c: &mut Checker, advertise: &[IpNet], routed: &BTreeMap<IpNet, String>) {
    for (i, a) in advertise.iter().enumerate() {
        if let Some(field) = routed.get(a) {
            c.bad(
                format!("host.advertise[{i}]"),
                format!("{a} is this host's, but {field} routes it to a peer: keep one"),
            );
        }
    }
}

/// A global policy (`policy`, `bulk_policy`), `default` if not given.
pub(super) fn policy(c: &mut Checker, field: &str, text: Option<&str>, default: Policy) -> Policy {
    match text.map(str::parse::<Policy>) {
        None => default,
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            c.bad(field, e.to_string());
            default
        }
    }
}

fn protocol_number(v: &NumberOrWord) -> Result<u8, String> {
    match v {
        NumberOrWord::Word(w) => match w.as_str() {
            "tcp" => Ok(protocol::TCP),
            "udp" => Ok(protocol::UDP),
            "icmp" => Ok(protocol::ICMP),
            "icmpv6" => Ok(protocol::ICMPV6),
            _ => Err(format!(
                "unknown protocol {w:?}: use \"tcp\", \"udp\", \"icmp\", \"icmpv6\" or a number from 0 to 255"
            )),
        },
        NumberOrWord::Number(n) => u8::try_from(*n).map_err(|_| format!("protocol {n} is out of range: use 0 to 255")),
    }
}

fn port_range(v: &NumberOrWord) -> Result<(u16, u16), String> {
    let port = |t: &str| t.trim().parse::<u16>().ok();
    match v {
        NumberOrWord::Number(n) => {
            let p = u16::try_from(*n).map_err(|_| format!("port {n} is out of range: use 0 to 65535"))?;
            Ok((p, p))
        }
        NumberOrWord::Word(w) => {
            let (lo, hi) = w.split_once('-').unwrap_or((w, w));
            match (port(lo), port(hi)) {
                (Some(lo), Some(hi)) => Ok((lo, hi)),
                _ => Err(format!("{w:?} is not a port or range: write 5060 or \"10000-20000\"")),
            }
        }
    }
}

/// The `[[rule]]` sections, in order, each checked alone and against the
/// ones before it (by the core's [`validate_rules`]).
pub(super) fn rules(c: &mut Checker, sections: &[RuleSection]) -> Vec<Rule> {
    let mut rules = Vec::new();
    let before = c.problems.len();
    for (i, r) in sections.iter().enumerate() {
        let f = |name: &str| format!("rule[{i}].{name}");
        let class = r.class.parse::<Class>().unwrap_or_else(|e| {
            c.bad(f("class"), e.to_string());
            Class::Bulk
        });
        let protocol = r.protocol.as_ref().and_then(|p| protocol_number(p).map_err(|e| c.bad(f("protocol"), e)).ok());
        let ports = r
            .ports
            .iter()
            .enumerate()
            .filter_map(|(j, p)| port_range(p).map_err(|e| c.bad(format!("rule[{i}].ports[{j}]"), e)).ok())
            .collect();
        let prefixes = r
            .prefixes
            .iter()
            .enumerate()
            .filter_map(|(j, p)| c.prefix(&format!("rule[{i}].prefixes[{j}]"), p))
            .collect();
        let dscp = r
            .dscp
            .iter()
            .enumerate()
            .filter_map(|(j, &d)| match u8::try_from(d) {
                Ok(d) => Some(d),
                Err(_) => {
                    c.bad(format!("rule[{i}].dscp[{j}]"), format!("DSCP {d} is out of range: DSCP is 0 to 63"));
                    None
                }
            })
            .collect();
        rules.push(Rule { class, protocol, ports, prefixes, dscp });
    }
    if c.problems.len() == before
        && let Err((i, e)) = validate_rules(&rules)
    {
        let field = match &e {
            RuleError::BadDscp(_) => "dscp",
            RuleError::EmptyPorts(..) | RuleError::PortsWithoutPorts(_) => "ports",
            RuleError::Shadowed { .. } => "",
        };
        let name = if field.is_empty() { format!("rule[{i}]") } else { format!("rule[{i}].{field}") };
        c.bad(name, e.to_string());
    }
    rules
}

/// The `[session]` section: window, keepalive and hop limit, checked by the core.
pub(super) fn session(c: &mut Checker, s: &SessionSection) -> (u32, Option<Duration>, u8) {
    let window = match s.window {
        None => DEFAULT_WINDOW_PACKETS,
        Some(w) => match u32::try_from(w).map(check_window) {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => {
                c.bad("session.window", e.to_string());
                DEFAULT_WINDOW_PACKETS
            }
            Err(_) => {
                c.bad(
                    "session.window",
                    format!("{w} packets is out of range: use {MIN_WINDOW_PACKETS} to {MAX_WINDOW_PACKETS}"),
                );
                DEFAULT_WINDOW_PACKETS
            }
        },
    };
    let keepalive = match s.keepalive.as_deref() {
        None => Some(DEFAULT_KEEPALIVE),
        Some("off") => None,
        Some(text) => match c.duration("session.keepalive", text).map(|d| check_keepalive(Some(d))) {
            Some(Ok(k)) => k,
            Some(Err(e)) => {
                c.bad("session.keepalive", e.to_string());
                None
            }
            None => None,
        },
    };
    let hop_limit = match s.hop_limit.map(|h| u8::try_from(h).map_err(|_| h)) {
        None => DEFAULT_HOP_LIMIT,
        Some(Ok(h)) => match check_hop_limit(h) {
            Ok(h) => h,
            Err(e) => {
                c.bad("session.hop_limit", e.to_string());
                DEFAULT_HOP_LIMIT
            }
        },
        Some(Err(h)) => {
            c.bad("session.hop_limit", format!("{h} is out of range: use 1 to 255 (default {DEFAULT_HOP_LIMIT})"));
            DEFAULT_HOP_LIMIT
        }
    };
    (window, keepalive, hop_limit)
}

/// `session.cipher`: "auto" (the default) or "chacha20-poly1305".
pub(super) fn cipher(c: &mut Checker, s: &SessionSection) -> CipherChoice {
    match s.cipher.as_deref() {
        None | Some("auto") => CipherChoice::Auto,
        Some("chacha20-poly1305") => CipherChoice::ChaCha20Poly1305,
        Some(other) => {
            c.bad(
                "session.cipher",
                format!(
                    "unknown cipher {other:?}: use \"auto\" (AES-256-GCM with peers that offer it too, when this \
                     CPU has AES instructions; ChaCha20-Poly1305 otherwise) or \"chacha20-poly1305\" (always)"
                ),
            );
            CipherChoice::Auto
        }
    }
}

/// The `[control]` section: the control socket (by default named after
/// the TUN) and the Prometheus address.
pub(super) fn control(c: &mut Checker, control: &ControlSection, tun: &str) -> (PathBuf, Option<SocketAddr>) {
    let control_socket = match &control.socket {
        None => default_control_socket(tun),
        Some(p) if p.is_absolute() && p.file_name().is_some() => p.clone(),
        Some(p) => {
            c.bad(
                "control.socket",
                format!("{} is not an absolute file path, such as \"/run/mpvr/mpvr0.sock\"", p.display()),
            );
            default_control_socket(tun)
        }
    };
    let prometheus = match control.prometheus.as_deref() {
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

    (control_socket, prometheus)
}

/// The `[mesh]` section, checked by the core (`None`: disabled).
pub(super) fn mesh(c: &mut Checker, s: &MeshSection) -> Option<MeshConfig> {
    let mut m = MeshConfig::default();
    let mut parsed = true;
    for (field, v, out) in [("refresh", &s.refresh, &mut m.refresh), ("max_age", &s.max_age, &mut m.max_age)] {
        if let Some(text) = v {
            match c.duration(&format!("mesh.{field}"), text) {
                Some(d) => *out = d,
                None => parsed = false,
            }
        }
    }
    if parsed && let Err(e) = m.validate() {
        let field = match e {
            MeshConfigError::Refresh(_) => "mesh.refresh",
            MeshConfigError::MaxAge(_) | MeshConfigError::MaxAgeShort { .. } => "mesh.max_age",
        };
        c.bad(field, e.to_string());
    }
    s.enabled.unwrap_or(true).then_some(m)
}

/// The `[exit]` section: this host forwards its peers' traffic to the internet.
pub(super) fn exit(c: &mut Checker, e: &ExitSection, peers: &[PeerConfig]) -> Option<ExitConfig> {
    if !e.enabled {
        if e.interface.is_some() {
            c.bad("exit.interface", "the exit is not enabled: set exit.enabled = true, or remove the section");
        }
        return None;
    }
    if let Some(i) = e.interface.as_deref()
        && !valid_ifname(i)
    {
        c.bad("exit.interface", format!("{i:?} is not a valid interface name"));
    }
    if peers.iter().any(|p| p.exit.is_some()) {
        c.bad("exit.enabled", "this host sends its own internet traffic to an exit peer: it cannot be an exit itself");
    }
    Some(ExitConfig { interface: e.interface.clone() })
}
