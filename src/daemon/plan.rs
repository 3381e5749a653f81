//! Decisions the daemon takes from the NIC list and the config, as pure
//! functions: which NICs are links, which link reaches which endpoint, the
//! TUN MTU, which NIC names in the config do not exist, and which
//! prefixes learned from the mesh get a kernel route on the TUN.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{Config, Mtu, PeerConfig};
use crate::proto::LinkId;
use crate::proto::wire::{Family, UDP_HEADER_LEN, tun_mtu};
use crate::proto::{EndpointSpec, NextHop};
use crate::sys::netlink::Nic;

/// The prefixes that need a kernel route on the TUN among `mesh_routes`
/// (those the mesh routes, with their next hop): a prefix the kernel sends
/// to the TUN already (a TUN subnet, a configured peer prefix) needs none,
/// and neither does one routed here.
pub fn mesh_kernel_routes(mesh_routes: impl Iterator<Item = (IpNet, NextHop)>, cfg: &Config) -> BTreeSet<IpNet> {
    mesh_routes
        .filter(|(_, n)| *n != NextHop::Local)
        .map(|(p, _)| p)
        .filter(|p| !cfg.addresses.iter().any(|a| a.trunc().contains(p)))
        .filter(|p| !cfg.peers.iter().any(|peer| peer.prefixes.contains(p)))
        .collect()
}

/// Why a NIC is not a link (for logs and status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The loopback device.
    Loopback,
    /// mpvr's own TUN.
    OwnTun,
    /// Down or no carrier.
    Down,
    /// A virtual device and `links.allow_virtual` is off.
    Virtual,
    /// No IPv4 or IPv6 address usable for the underlay.
    NoAddress,
    /// Not matched by `links.include`, or matched by `links.exclude`, or disabled.
    NotSelected,
    /// A TUN or TAP device (another VPN's, or another mpvr's): never a
    /// link, whatever the globs and `allow_virtual` say (a loop otherwise).
    Tun,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::Loopback => "the loopback device",
            Skip::OwnTun => "this daemon's own TUN",
            Skip::Down => "down, or no carrier",
            Skip::Virtual => "a virtual device (set links.allow_virtual = true to use it)",
            Skip::NoAddress => "no usable IPv4 or IPv6 address",
            Skip::NotSelected => "not in links.include, or in links.exclude, or disabled",
            Skip::Tun => "a TUN/TAP device (another VPN's or another mpvr's): never a link",
        })
    }
}

/// An address the underlay can use (not loopback, not link-local).
pub fn usable_addr(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local(),
    }
}

/// Whether `nic` becomes a link, and why not.
pub fn classify(nic: &Nic, cfg: &Config, tun_index: Option<u32>) -> Result<(), Skip> {
    if nic.loopback {
        return Err(Skip::Loopback);
    }
    if Some(nic.index) == tun_index || nic.name == cfg.tun {
        return Err(Skip::OwnTun);
    }
    if nic.tun {
        return Err(Skip::Tun);
    }
    if !cfg.links.wants(&nic.name) {
        return Err(Skip::NotSelected);
    }
    if nic.virtual_device && !cfg.links.allow_virtual {
        return Err(Skip::Virtual);
    }
    if !nic.up {
        return Err(Skip::Down);
    }
    if !nic.addrs.iter().any(|a| usable_addr(&a.addr())) {
        return Err(Skip::NoAddress);
    }
    Ok(())
}

/// Whether `link` can reach `ip` without help: `ip` is on one of its subnets,
/// or the link has a default route of the right family (in the main table,
/// or through its configured `gateway`). A socket pinned to a NIC that has
/// neither would make the kernel treat `ip` as on-link and ARP for it there,
/// which, with Linux's default ARP behaviour, can silently carry the copy
/// over another path.
pub fn reaches(link: &Nic, cfg: &Config, ip: IpAddr) -> bool {
    if link.addrs.iter().any(|a| a.contains(&ip)) {
        return true;
    }
    let gateway = cfg.links.options.get(&link.name).and_then(|o| o.gateway);
    match ip {
        IpAddr::V4(_) => link.default_v4 || gateway.is_some_and(|g| g.is_ipv4()),
        IpAddr::V6(_) => link.default_v6 || gateway.is_some_and(|g| g.is_ipv6()),
    }
}

/// The endpoints of a neighbour as the node should see them, given the links
/// that are up now. An endpoint pinned to a NIC uses that NIC only (and is
/// left out while it is not a link). An unpinned endpoint uses the links on
/// whose subnet it lies if there are any, else every link that [`reaches`] it.
pub fn endpoints(peer: &PeerConfig, cfg: &Config, links: &[&Nic]) -> Vec<EndpointSpec> {
    let mut out = Vec::new();
    for e in &peer.endpoints {
        let pin = |nic: &Nic| EndpointSpec { remote: e.address, link: Some(LinkId(nic.index)) };
        match &e.link {
            Some(name) => out.extend(links.iter().filter(|n| &n.name == name).map(|n| pin(n))),
            None => {
                let ip = e.address.ip();
                let on_subnet = |n: &&&Nic| n.addrs.iter().any(|a| a.contains(&ip));
                if links.iter().any(|n| on_subnet(&n)) {
                    out.extend(links.iter().filter(on_subnet).map(|n| pin(n)));
                } else {
                    out.extend(links.iter().filter(|n| reaches(n, cfg, ip)).map(|n| pin(n)));
                }
            }
        }
    }
    out
}

/// The underlay family whose overhead the MTU must allow for: IPv6 if any
/// endpoint is IPv6.
pub fn underlay_family(cfg: &Config) -> Family {
    let v6 = cfg.peers.iter().flat_map(|p| &p.endpoints).any(|e| e.address.is_ipv6());
    if v6 { Family::V6 } else { Family::V4 }
}

/// The bounds of the TUN's MTU when it follows the paths (`host.mtu =
/// "auto"`): 1280 if the TUN has an IPv6 address (Linux removes IPv6
/// from a device below it), else 576; at most `start`, what the links
/// allow. `None` when the MTU is fixed.
pub fn tun_mtu_bounds(cfg: &Config, start: u16) -> Option<(u16, u16)> {
    match cfg.mtu {
        Mtu::Fixed(_) => None,
        Mtu::Auto => {
            let lo = if cfg.addresses.iter().any(|a| a.addr().is_ipv6()) { 1280 } else { 576 };
            Some((lo.min(start), start))
        }
    }
}

/// The TUN MTU: fixed, or the smallest link MTU (1500 when there is no link
/// yet) minus the encapsulation overhead.
pub fn mtu(cfg: &Config, links: &[&Nic]) -> u16 {
    match cfg.mtu {
        Mtu::Fixed(m) => m,
        Mtu::Auto => {
            let link_mtu = links.iter().map(|n| n.mtu as usize).min().unwrap_or(1500);
            // tun_mtu assumes UDP; the raw-IP transport saves its 8 bytes.
            let m = tun_mtu(link_mtu, underlay_family(cfg)) + UDP_HEADER_LEN - cfg.transport.header_len();
            let m = m.max(576);
            u16::try_from(m).unwrap_or(u16::MAX)
        }
    }
}

/// NIC names the config mentions literally (pinned endpoints, `[link.NAME]`
/// sections, glob-free `links.include` entries) that do not exist.
pub fn missing_nics(cfg: &Config, nics: &[Nic]) -> Vec<String> {
    let mut named: Vec<String> = cfg.peers.iter().flat_map(|p| &p.endpoints).filter_map(|e| e.link.clone()).collect();
    named.extend(cfg.links.options.keys().cloned());
    named.extend(cfg.links.named.iter().cloned());
    named.sort();
    named.dedup();
    named.retain(|n| !nics.iter().any(|nic| &nic.name == n));
    named
}

/// The settings of `new` that differ from `old` and that only a restart
/// applies (identity, sockets, the TUN, the window, the mesh, the exit),
/// in words with both values: a reload refuses a config that changes any.
pub fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.private_key != new.private_key {
        out.push("the private key".into());
    }
    let mut differ = |field: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{field} ({a} -> {b})"));
        }
    };
    differ("host.id", old.host.to_string(), new.host.to_string());
    differ("host.listen_port", old.listen_port.to_string(), new.listen_port.to_string());
    let transport = |t: crate::sys::Transport| match t {
        crate::sys::Transport::Udp => "udp".to_string(),
        crate::sys::Transport::Ip(p) => format!("ip protocol {p}"),
    };
    differ("host.transport", transport(old.transport), transport(new.transport));
    differ("host.tun", old.tun.clone(), new.tun.clone());
    let list = |v: &[IpNet]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ");
    differ("host.addresses", list(&old.addresses), list(&new.addresses));
    differ("host.mtu", old.mtu.to_string(), new.mtu.to_string());
    differ("host.threads", old.threads.to_string(), new.threads.to_string());
    differ("session.window", old.window.to_string(), new.window.to_string());
    differ("session.hop_limit", old.hop_limit.to_string(), new.hop_limit.to_string());
    differ("session.cipher", old.cipher.to_string(), new.cipher.to_string());
    differ("control.socket", old.control_socket.display().to_string(), new.control_socket.display().to_string());
    let prom = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    differ("control.prometheus", prom(old.prometheus), prom(new.prometheus));
    let changed = |a: bool| if a { "changed" } else { "as before" }.to_string();
    differ("the [mesh] settings", changed(false), changed(old.mesh != new.mesh));
    differ("the [exit] settings", changed(false), changed(old.exit != new.exit));
    let exits = |c: &Config| {
        c.peers.iter().filter_map(|p| p.exit.map(|f| format!("{} ({})", p.id, f.name()))).collect::<Vec<_>>().join(", ")
    };
    differ("the exit peer", exits(old), exits(new));
    out
}

/// The routes the core gets from `cfg`: this host's addresses and
/// advertised prefixes, each peer's prefixes (to it, or to its relay), and
/// the default routes to an exit peer.
pub fn configured_routes(cfg: &Config) -> std::collections::BTreeMap<IpNet, NextHop> {
    let mut out = std::collections::BTreeMap::new();
    for a in &cfg.addresses {
        out.insert(IpNet::from(a.addr()), NextHop::Local);
    }
    for p in &cfg.advertise {
        out.insert(*p, NextHop::Local);
    }
    for p in &cfg.peers {
        let next = NextHop::Host(p.via.unwrap_or(p.id));
        for prefix in &p.prefixes {
            out.insert(*prefix, next);
        }
        if p.exit.is_some() {
            for prefix in super::exit::DEFAULT_ROUTES {
                out.insert(prefix.parse().expect("a valid prefix"), next);
            }
        }
    }
    out
}

/// The prefixes that get a kernel route on the TUN from `cfg`: every peer's.
pub fn tun_routes(cfg: &Config) -> BTreeSet<IpNet> {
    cfg.peers.iter().flat_map(|p| p.prefixes.iter().copied()).collect()
}

/// What a reload changes among the neighbours: those to remove (gone, or
/// with another key or pre-shared key: their sessions cannot be kept) and
/// those to add (new, or re-keyed).
pub fn neighbour_changes(old: &Config, new: &Config) -> (Vec<crate::proto::HostId>, Vec<crate::proto::HostId>) {
    let key = |p: &PeerConfig| (p.public_key, p.psk);
    let neighbours =
        |c: &Config| c.peers.iter().filter(|p| p.via.is_none()).map(|p| (p.id, key(p))).collect::<Vec<_>>();
    let (o, n) = (neighbours(old), neighbours(new));
    let removed = o.iter().filter(|x| !n.contains(x)).map(|(id, _)| *id).collect();
    let added = n.iter().filter(|x| !o.contains(x)).map(|(id, _)| *id).collect();
    (removed, added)
}

/// Tables of mpvr's per-link policy routing start here.
pub const TABLE_BASE: u32 = 0x6d00_0000;
/// Per-link tables one daemon may use (one per link with a `gateway`).
pub const TABLES_PER_DAEMON: u32 = 256;

/// The routing tables of the daemon whose TUN is `tun`: 256 numbers of
/// its own, from a hash of the TUN's name (unique on a host, the same at
/// every start), so that a daemon removes what a killed earlier run of it
/// left and never another daemon's rules or tables.
pub fn link_tables(tun: &str) -> std::ops::Range<u32> {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let h = tun.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let start = TABLE_BASE + ((h ^ (h >> 16)) & 0xffff) * TABLES_PER_DAEMON;
    start..start + TABLES_PER_DAEMON
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use std::path::Path;

    fn nic(index: u32, name: &str, addrs: &[&str]) -> Nic {
        Nic {
            index,
            name: name.into(),
            up: true,
            loopback: false,
            virtual_device: false,
            tun: false,
            mtu: 1500,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            default_v4: false,
            default_v6: false,
        }
    }

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[host]\nid = 1\nprivate_key = \"GBpJ3Y0mRG9NwPtr4m9BdHI2c0gz+fyTQ2eAIOcZ0Hw=\"\naddresses = [\"10.9.0.1/24\"]\n{extra}"
        );
        parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn classification() {
        let c = cfg("[links]\nexclude = [\"docker*\"]\n");
        let mut lo = nic(1, "lo", &["127.0.0.1/8"]);
        lo.loopback = true;
        assert_eq!(classify(&lo, &c, None), Err(Skip::Loopback));
        assert_eq!(classify(&nic(2, "eth0", &["192.0.2.1/24"]), &c, None), Ok(()));
        assert_eq!(classify(&nic(3, "mpvr0", &["10.9.0.1/24"]), &c, Some(9)), Err(Skip::OwnTun));
        assert_eq!(classify(&nic(4, "docker0", &["172.17.0.1/16"]), &c, None), Err(Skip::NotSelected));
        let mut veth = nic(5, "veth0", &["192.0.2.1/24"]);
        veth.virtual_device = true;
        assert_eq!(classify(&veth, &c, None), Err(Skip::Virtual));
        // Another daemon's TUN, even with allow_virtual and a glob for everything.
        let all = cfg("[links]\ninclude = [\"*\"]\nallow_virtual = true\n");
        let other = Nic { tun: true, virtual_device: true, ..nic(7, "mpvr1", &["10.8.0.1/24"]) };
        assert_eq!(classify(&other, &all, Some(9)), Err(Skip::Tun));
        assert!(Skip::Tun.to_string().contains("never a link"));
        assert_eq!(classify(&veth, &cfg("[links]\nallow_virtual = true\n"), None), Ok(()));
        let mut down = nic(6, "eth1", &["192.0.2.1/24"]);
        down.up = false;
        assert_eq!(classify(&down, &c, None), Err(Skip::Down));
        assert_eq!(classify(&nic(7, "eth2", &["fe80::1/64"]), &c, None), Err(Skip::NoAddress));
    }

    #[test]
    fn endpoints_follow_subnets_and_pins() {
        let c = cfg(
            "[links]\ninclude = [\"net*\", \"wwan0\", \"eth5\"]\n[[peer]]\nid = 2\npublic_key = \"u4fHs/dULTSx3PUTF6pG8a4BTlN3I2jr/qSvbxh7Cyc=\"\n\
             endpoints = [\"192.168.0.3:51820\", \"203.0.113.9:51820\", { address = \"198.51.100.1:4000\", link = \"wwan0\" }]\n",
        );
        let a = nic(2, "net0", &["192.168.0.2/24"]);
        let mut b = nic(3, "net1", &["192.168.1.2/24"]);
        let got = |links: &[&Nic]| -> Vec<(String, Option<u32>)> {
            endpoints(&c.peers[0], &c, links).iter().map(|e| (e.remote.to_string(), e.link.map(|l| l.0))).collect()
        };
        // 203.0.113.9 is on no subnet and no link has a default route: no path.
        assert_eq!(got(&[&a, &b]), vec![("192.168.0.3:51820".to_string(), Some(2))]);
        b.default_v4 = true;
        assert_eq!(
            got(&[&a, &b]),
            vec![("192.168.0.3:51820".to_string(), Some(2)), ("203.0.113.9:51820".to_string(), Some(3))]
        );
        let w = nic(7, "wwan0", &["10.64.0.5/30"]);
        assert_eq!(endpoints(&c.peers[0], &c, &[&a, &w]).last().unwrap().link, Some(LinkId(7)));
        assert_eq!(mtu(&c, &[&a, &b]), 1436);
        let mut small = nic(8, "wwan1", &["10.64.1.5/30"]);
        small.mtu = 1400;
        assert_eq!(mtu(&c, &[&a, &small]), 1336);
        assert_eq!(missing_nics(&c, &[a, b]), vec!["eth5".to_string(), "wwan0".to_string()]);
    }

    #[test]
    fn a_reload_names_what_needs_a_restart_and_which_peers_change() {
        let peer = |id: u32, key: &str| {
            format!("[[peer]]\nid = {id}\npublic_key = \"{key}\"\nendpoints = [\"192.0.2.{id}:51820\"]\n")
        };
        let (k1, k2) = ("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=", "ZqL8uNOy/5tHwqiB57ITZ9Kwlv+4zcUtu1cm3+0mElw=");
        let old = cfg(&(peer(2, k1) + &peer(3, k1)));
        let new = cfg(&(peer(2, k1) + &peer(3, k2) + &peer(4, k1)));
        assert!(restart_only(&old, &new).is_empty());
        let (removed, added) = neighbour_changes(&old, &new);
        assert_eq!(removed, [crate::proto::HostId::new(3).unwrap()]);
        assert_eq!(added, [crate::proto::HostId::new(3).unwrap(), crate::proto::HostId::new(4).unwrap()]);
        let moved = cfg(&format!("listen_port = 4000\ntun = \"x0\"\nthreads = 2\n{}", peer(2, k1)));
        assert_eq!(
            restart_only(&old, &moved),
            [
                "host.listen_port (51820 -> 4000)",
                "host.tun (mpvr0 -> x0)",
                "host.threads (auto -> 2)",
                "control.socket (/run/mpvr/mpvr0.sock -> /run/mpvr/x0.sock)"
            ]
        );
    }

    #[test]
    fn each_daemon_has_its_own_tables() {
        let (a, b) = (link_tables("mpvr0"), link_tables("mpvr1"));
        assert_eq!(a, link_tables("mpvr0"), "the same at every start");
        assert!(a.end <= b.start || b.end <= a.start, "{a:?} {b:?}");
        assert_eq!(a.len(), 256);
        assert!(a.start >= TABLE_BASE && a.end <= TABLE_BASE + 0x0100_0000);
    }
}
