//! Netlink, behind a small typed API (innernet's habit): list NICs with their
//! addresses, watch for changes, add and remove routes and policy rules. The
//! rest of the daemon never sees a netlink message.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::stream::TryStreamExt;
use futures::{Stream, StreamExt};
use ipnet::IpNet;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {what}: {source}")]
pub struct NetlinkError {
    what: String,
    #[source]
    source: rtnetlink::Error,
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError { what, source }
}

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Administratively up and carrier present.
    pub up: bool,
    /// The loopback device.
    pub loopback: bool,
    /// A virtual device (veth, bridge, tun, ...), not backed by hardware.
    pub virtual_device: bool,
    /// A TUN or TAP device (it has `tun_flags` in sysfs).
    pub tun: bool,
    /// MTU.
    pub mtu: u32,
    /// Addresses with their prefix lengths.
    pub addrs: Vec<IpNet>,
    /// The main table has an IPv4 default route out of this NIC.
    pub default_v4: bool,
    /// The main table has an IPv6 default route out of this NIC.
    pub default_v6: bool,
}

/// A route or rule this process added, kept so it can be removed again.
#[derive(Clone, Debug)]
pub enum Installed {
    /// A route.
    Route(RouteMessage),
    /// A policy rule.
    Rule(RuleMessage),
}

/// A netlink connection for requests.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Open a connection (spawns its driver on the current tokio runtime).
    pub fn new() -> std::io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// Every NIC with its addresses.
    pub async fn nics(&self) -> Result<Vec<Nic>, NetlinkError> {
        let mut nics = BTreeMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(nl_err("listing links"))? {
            let flags = msg.header.flags;
            let mut nic = Nic {
                index: msg.header.index,
                name: String::new(),
                up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::LowerUp),
                loopback: flags.contains(LinkFlags::Loopback) || msg.header.link_layer_type == LinkLayerType::Loopback,
                virtual_device: false,
                tun: false,
                mtu: 1500,
                addrs: Vec::new(),
                default_v4: false,
                default_v6: false,
            };
            for a in msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => nic.name = n,
                    LinkAttribute::Mtu(m) => nic.mtu = m,
                    _ => {}
                }
            }
            nic.virtual_device = Path::new("/sys/devices/virtual/net").join(&nic.name).exists();
            nic.tun = Path::new("/sys/class/net").join(&nic.name).join("tun_flags").exists();
            nics.insert(nic.index, nic);
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(nl_err("listing addresses"))? {
            let Some(nic) = nics.get_mut(&msg.header.index) else {
                continue;
            };
            // IFA_LOCAL is the interface's own address on point-to-point
            // links; IFA_ADDRESS otherwise.
            let mut local = None;
            let mut address = None;
            for a in msg.attributes {
                match a {
                    AddressAttribute::Local(ip) => local = Some(ip),
                    AddressAttribute::Address(ip) => address = Some(ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNet::new(ip, msg.header.prefix_len)
            {
                nic.addrs.push(net);
            }
        }
        for (v6, msg) in [
            (false, RouteMessageBuilder::<Ipv4Addr>::new().build()),
            (true, RouteMessageBuilder::<Ipv6Addr>::new().build()),
        ] {
            let mut routes = self.handle.route().get(msg).execute();
            loop {
                let r = match routes.try_next().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) if is_no_ipv6(&e) => break,
                    Err(e) => return Err(nl_err("listing routes")(e)),
                };
                if r.header.destination_prefix_length != 0 || route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                for a in &r.attributes {
                    let mut mark = |index: u32| {
                        if let Some(nic) = nics.get_mut(&index) {
                            if v6 { nic.default_v6 = true } else { nic.default_v4 = true }
                        }
                    };
                    match a {
                        RouteAttribute::Oif(i) => mark(*i),
                        RouteAttribute::MultiPath(hops) => hops.iter().for_each(|h| mark(h.interface_index)),
                        _ => {}
                    }
                }
            }
        }
        Ok(nics.into_values().collect())
    }

    /// Add an address (with its prefix length) to interface `index`; the
    /// kernel adds the connected route with it.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding address {addr} to interface #{index}")))
    }

    /// Add a route to `prefix` out of interface `index`, optionally through
    /// `gateway` and into `table` (main if `None`), tagged with
    /// [`RTPROT_MPVR`]. With [`Add::Exclusive`] a route the kernel already
    /// has for `prefix` (another program's, another device's) is left as it
    /// is: [`AddError::Held`]. [`Add::Replace`] is for mpvr's own tables.
    pub async fn add_route(
        &self,
        prefix: IpNet,
        index: u32,
        gateway: Option<IpAddr>,
        table: Option<u32>,
        mode: Add,
    ) -> Result<Installed, NetlinkError> {
        let what = format!("adding route {prefix} dev #{index}");
        let mut b = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(prefix.addr(), prefix.prefix_len())
            .map_err(|e| NetlinkError { what: what.clone(), source: rtnetlink::Error::InvalidNla(e.to_string()) })?
            .output_interface(index)
            .protocol(RouteProtocol::Other(RTPROT_MPVR));
        if let Some(g) = gateway {
            b = b.gateway(g).map_err(|e| NetlinkError {
                what: what.clone(),
                source: rtnetlink::Error::InvalidNla(e.to_string()),
            })?;
        }
        if let Some(t) = table {
            b = b.table_id(t);
        }
        let msg = b.build();
        let req = self.handle.route().add(msg.clone());
        let req = if mode == Add::Replace { req.replace() } else { req };
        req.execute().await.map_err(nl_err(what))?;
        Ok(Installed::Route(msg))
    }

    /// Add the rule "packets leaving interface `ifname` use `table`", for
    /// both IP families, tagged with [`RTPROT_MPVR`].
    pub async fn add_oif_rule(&self, ifname: &str, table: u32, priority: u32) -> Result<Vec<Installed>, NetlinkError> {
        let what = format!("adding rule oif {ifname} lookup {table}");
        let mut done = Vec::new();
        let mut r4 = self
            .handle
            .rule()
            .add()
            .v4()
            .output_interface(ifname)
            .table_id(table)
            .action(RuleAction::ToTable)
            .priority(priority);
        r4.message_mut().attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(RTPROT_MPVR)));
        done.push(Installed::Rule(r4.message_mut().clone()));
        r4.execute().await.map_err(nl_err(what.clone()))?;
        let mut r6 = self
            .handle
            .rule()
            .add()
            .v6()
            .output_interface(ifname)
            .table_id(table)
            .action(RuleAction::ToTable)
            .priority(priority);
        r6.message_mut().attributes.push(RuleAttribute::Protocol(RouteProtocol::Other(RTPROT_MPVR)));
        let m6 = r6.message_mut().clone();
        match r6.execute().await {
            Ok(()) => done.push(Installed::Rule(m6)),
            // A host without IPv6 has no IPv6 rules to add.
            Err(e) if is_no_ipv6(&e) => {}
            Err(e) => return Err(nl_err(what)(e)),
        }
        Ok(done)
    }

    /// Remove every rule with `priority` whose table is in `tables`, and
    /// every route in those tables, for both IP families: what an earlier
    /// run of this daemon (same tables) that was killed left behind; other
    /// daemons' rules and tables are left alone. Returns how many.
    pub async fn flush_tables(&self, priority: u32, tables: std::ops::Range<u32>) -> Result<usize, NetlinkError> {
        let mut stale = Vec::new();
        for v in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let mut rules = self.handle.rule().get(v).execute();
            loop {
                match rules.try_next().await {
                    Ok(Some(r)) => {
                        let prio =
                            r.attributes.iter().any(|a| matches!(a, RuleAttribute::Priority(p) if *p == priority));
                        let table = r
                            .attributes
                            .iter()
                            .find_map(|a| if let RuleAttribute::Table(t) = a { Some(*t) } else { None })
                            .unwrap_or(u32::from(r.header.table));
                        if prio && tables.contains(&table) {
                            stale.push(Installed::Rule(r));
                        }
                    }
                    Ok(None) => break,
                    Err(e) if is_no_ipv6(&e) => break,
                    Err(e) => return Err(nl_err("listing rules")(e)),
                }
            }
        }
        for msg in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
            let mut routes = self.handle.route().get(msg).execute();
            loop {
                match routes.try_next().await {
                    Ok(Some(r)) => {
                        if tables.contains(&route_table(&r)) {
                            stale.push(Installed::Route(r));
                        }
                    }
                    Ok(None) => break,
                    Err(e) if is_no_ipv6(&e) => break,
                    Err(e) => return Err(nl_err("listing routes")(e)),
                }
            }
        }
        let n = stale.len();
        for r in stale {
            self.remove(&r).await?;
        }
        Ok(n)
    }

    /// The interface that holds the main table's route for exactly
    /// `prefix`, if there is one (for the message when a route is refused).
    pub async fn route_holder(&self, prefix: IpNet) -> Option<u32> {
        let msg = match prefix {
            IpNet::V4(_) => RouteMessageBuilder::<Ipv4Addr>::new().build(),
            IpNet::V6(_) => RouteMessageBuilder::<Ipv6Addr>::new().build(),
        };
        let mut routes = self.handle.route().get(msg).execute();
        while let Ok(Some(r)) = routes.try_next().await {
            if route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN)
                || r.header.destination_prefix_length != prefix.prefix_len()
            {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                _ => None,
            });
            if dst == Some(prefix.addr()) {
                return r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
            }
        }
        None
    }

    /// Remove something this process installed. A thing already gone is fine.
    pub async fn remove(&self, what: &Installed) -> Result<(), NetlinkError> {
        let r = match what {
            Installed::Route(m) => self.handle.route().del(m.clone()).execute().await,
            Installed::Rule(m) => self.handle.rule().del(m.clone()).execute().await,
        };
        match r {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if is_gone(e.raw_code()) => Ok(()),
            Err(e) => Err(NetlinkError { what: format!("removing {what:?}"), source: e }),
        }
    }
}

/// The route protocol mpvr's routes and rules carry (`ip route show proto
/// 109`; iproute2 names it with `109 mpvr` in /etc/iproute2/rt_protos.d/).
pub const RTPROT_MPVR: u8 = 109;

/// How [`Netlink::add_route`] treats a route the kernel already has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Add {
    /// Fail with EEXIST ([`NetlinkError::is_held`]): the main table, where
    /// a route may be another program's.
    Exclusive,
    /// Replace it: mpvr's own per-link tables.
    Replace,
}

impl NetlinkError {
    /// The kernel has a route for that prefix already (EEXIST).
    pub fn is_held(&self) -> bool {
        matches!(&self.source, rtnetlink::Error::NetlinkError(e) if e.raw_code().abs() == libc::EEXIST)
    }
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None })
        .unwrap_or(u32::from(r.header.table))
}

fn is_gone(code: i32) -> bool {
    let code = code.abs();
    code == libc::ENOENT || code == libc::ESRCH || code == libc::ENODEV
}

fn is_no_ipv6(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code().abs() == libc::EAFNOSUPPORT)
}

/// A stream that yields once per batch of link, address or route changes (the
/// caller re-reads the whole picture, which also recovers from a lost event:
/// an overflowing socket, ENOBUFS, ends in a full re-read too).
pub fn watch() -> std::io::Result<impl Stream<Item = ()> + Unpin> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])?;
    tokio::spawn(conn);
    Ok(messages.map(|_| ()))
}

/// The name of interface `index` (from sysfs), if it exists.
pub fn ifname(index: u32) -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/net").ok()?;
    dir.flatten().find_map(|e| {
        let i = std::fs::read_to_string(e.path().join("ifindex")).ok()?;
        (i.trim().parse::<u32>().ok()? == index).then(|| e.file_name().to_string_lossy().into_owned())
    })
}
