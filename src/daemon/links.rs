//! The links in use: reconciling them with the NIC list (sockets, readers,
//! per-link policy routing), and the endpoints each peer is reached at
//! over the links that are up.

use std::collections::BTreeMap;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::readers::read_link;
use super::shared::Shared;
use super::{RULE_PRIORITY, plan};
use crate::config::Config;
use crate::proto::LinkId;
use crate::sys::LinkIo;
use crate::sys::netlink::{Add, Installed, Netlink, NetlinkError, Nic};

pub(super) struct LinkEntry {
    pub(super) nic: Nic,
    pub(super) readers: Vec<JoinHandle<()>>,
    pub(super) installed: Vec<Installed>,
    /// Its policy-routing table (one of the daemon's [`plan::link_tables`]).
    pub(super) table: Option<u32>,
}

/// The links in use and how to change them.
pub(super) struct Links {
    pub(super) cfg: Arc<Config>,
    pub(super) nl: Netlink,
    pub(super) shared: Arc<Shared>,
    pub(super) tun_index: u32,
    pub(super) up: BTreeMap<u32, LinkEntry>,
    /// NICs that were links and are still there, but down (or without an
    /// address): their paths stay listed, down, until the NIC is a link
    /// again or goes away.
    pub(super) down: BTreeMap<u32, Nic>,
    /// The UDP offloads the kernel gives were logged (once, at the first link).
    pub(super) offloads_logged: bool,
    pub(super) fatal: mpsc::UnboundedSender<String>,
}

impl Links {
    /// Bring the links in line with `nics`, then the neighbours' endpoints.
    pub(super) async fn reconcile(&mut self, nics: Vec<Nic>) {
        let present: BTreeMap<u32, Nic> = nics.into_iter().map(|n| (n.index, n)).collect();
        let wanted: BTreeMap<u32, Nic> = present
            .values()
            .filter(|n| plan::classify(n, &self.cfg, Some(self.tun_index)).is_ok())
            .map(|n| (n.index, n.clone()))
            .collect();
        let gone: Vec<u32> = self.up.keys().filter(|i| !wanted.contains_key(i)).copied().collect();
        for index in gone {
            if let Some(entry) = self.up.remove(&index) {
                let nic = entry.nic.clone();
                self.remove_link(entry).await;
                self.down.insert(index, nic);
            }
        }
        // A down link that went away, or is a link again, or that the
        // config no longer selects, is no longer kept.
        self.down
            .retain(|i, _| present.get(i).is_some_and(|n| !wanted.contains_key(i) && self.cfg.links.wants(&n.name)));
        for (index, nic) in wanted {
            match self.up.get_mut(&index) {
                Some(entry) if entry.nic == nic => {}
                Some(entry) => {
                    info!(link = %nic.name, addrs = ?nic.addrs, mtu = nic.mtu, "link changed");
                    if entry.nic.mtu != nic.mtu {
                        let mtu = u16::try_from(nic.mtu).unwrap_or(u16::MAX);
                        self.shared.node().set_link_mtu(self.shared.now(), LinkId(index), mtu);
                    }
                    let old = std::mem::take(&mut entry.installed);
                    entry.nic = nic.clone();
                    for i in &old {
                        let _ = self.nl.remove(i).await;
                    }
                    let table = entry.table;
                    let installed = self.policy_routes(&nic, table).await;
                    if let Some(entry) = self.up.get_mut(&index) {
                        entry.installed = installed;
                    }
                }
                None => self.add_link(nic).await,
            }
        }
        self.update_endpoints();
    }

    /// Give the neighbours the endpoints the links up now reach.
    fn update_endpoints(&self) {
        let nics: Vec<&Nic> = self.up.values().map(|e| &e.nic).collect();
        let mut node = self.shared.node();
        for p in self.cfg.peers.iter().filter(|p| p.via.is_none()) {
            let mut specs = plan::endpoints(p, &self.cfg, &nics);
            // A down link's paths stay (down, in status) while an endpoint
            // would name them were it up; the links up choose as before.
            for d in self.down.values() {
                specs.extend(plan::endpoints(p, &self.cfg, &[d]));
            }
            let _ = node.set_endpoints(p.id, specs);
        }
    }

    async fn add_link(&mut self, nic: Nic) {
        let disabled = crate::sys::udp::Disabled::from_env();
        let socket = match LinkIo::bind(&nic.name, self.cfg.listen_port, self.cfg.transport, disabled) {
            Ok(s) => Arc::new(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // Another program has the port on this NIC: retrying would
                // run without the link for ever.
                let _ = self.fatal.send(format!(
                    "UDP port {} is in use on {} (another mpvr or WireGuard?): set host.listen_port to a free port",
                    self.cfg.listen_port, nic.name
                ));
                return;
            }
            Err(e) => {
                warn!(link = %nic.name, error = %e, port = self.cfg.listen_port, "cannot open the link's socket; will retry on the next change");
                return;
            }
        };
        if !self.offloads_logged && self.cfg.transport == crate::sys::Transport::Udp {
            self.offloads_logged = true;
            let (gso, gro) = socket.offloads();
            let why = |off: bool, kernel: &str| match (off, kernel) {
                (true, _) => "disabled by MPVR_DISABLE_OFFLOADS".to_string(),
                (false, k) => format!("not available (kernels before {k} lack it)"),
            };
            let gso_text = if gso {
                format!("on, up to {} datagrams per send call", socket.max_segments())
            } else {
                why(disabled.gso, "4.18") + ": one datagram per send call"
            };
            let gro_text = if gro { "on".to_string() } else { why(disabled.gro, "5.0") + ": one datagram per buffer" };
            let sockets_text = match socket.bulk_apart() {
                Ok(()) => "two per link, bulk data apart".to_string(),
                Err(why) => format!("one per link: {why}"),
            };
            info!(gso = %gso_text, gro = %gro_text, sockets = %sockets_text, "UDP offloads");
        }
        let link = LinkId(nic.index);
        self.shared.sockets.write().unwrap_or_else(|e| e.into_inner()).insert(link, socket.clone());
        self.shared.names.write().unwrap_or_else(|e| e.into_inner()).insert(link, nic.name.clone());
        let settings = self.cfg.links.options.get(&nic.name).map(|o| o.settings).unwrap_or_default();
        {
            let mut node = self.shared.node();
            let now = self.shared.now();
            node.configure_link(now, link, settings);
            node.set_link_mtu(now, link, u16::try_from(nic.mtu).unwrap_or(u16::MAX));
            node.add_link(now, link);
        }
        let readers = (0..socket.queue_count())
            .map(|q| tokio::spawn(read_link(self.shared.clone(), link, socket.clone(), q, self.fatal.clone())))
            .collect();
        let table = self.free_table();
        let installed = self.policy_routes(&nic, table).await;
        info!(link = %nic.name, index = nic.index, addrs = ?nic.addrs, mtu = nic.mtu, "link up");
        self.up.insert(nic.index, LinkEntry { nic, readers, installed, table });
        // Its paths at once: its socket already reads, and an answer to a
        // handshake goes on every path known when it is sent.
        self.update_endpoints();
    }

    async fn remove_link(&mut self, entry: LinkEntry) {
        entry.readers.iter().for_each(|r| r.abort());
        let link = LinkId(entry.nic.index);
        self.shared.sockets.write().unwrap_or_else(|e| e.into_inner()).remove(&link);
        self.shared.node().remove_link(self.shared.now(), link);
        for i in &entry.installed {
            if let Err(e) = self.nl.remove(i).await {
                warn!(link = %entry.nic.name, error = %e, "cannot remove a policy route");
            }
        }
        info!(link = %entry.nic.name, index = entry.nic.index, "link down");
    }

    /// A link with a `gateway` gets its own table (its subnets and a default
    /// route through the gateway) and a rule sending its socket's packets
    /// there: without it the kernel would find no route for a link that has
    /// no default route of its own.
    pub(super) async fn policy_routes(&self, nic: &Nic, table: Option<u32>) -> Vec<Installed> {
        let Some(gw) = self.cfg.links.options.get(&nic.name).and_then(|o| o.gateway) else {
            return Vec::new();
        };
        let Some(table) = table else {
            warn!(link = %nic.name, "no policy-routing table left for this link (256 per daemon): its gateway is not used");
            return Vec::new();
        };
        let mut done = Vec::new();
        let default: IpNet = if gw.is_ipv4() { "0.0.0.0/0".parse() } else { "::/0".parse() }.expect("literal");
        let subnets = nic.addrs.iter().filter(|a| plan::usable_addr(&a.addr())).map(|a| a.trunc());
        let mut result: Result<(), NetlinkError> = Ok(());
        for s in subnets {
            match self.nl.add_route(s, nic.index, None, Some(table), Add::Replace).await {
                Ok(i) => done.push(i),
                Err(e) => result = Err(e),
            }
        }
        match self.nl.add_route(default, nic.index, Some(gw), Some(table), Add::Replace).await {
            Ok(i) => done.push(i),
            Err(e) => result = Err(e),
        }
        match self.nl.add_oif_rule(&nic.name, table, RULE_PRIORITY).await {
            Ok(is) => done.extend(is),
            Err(e) => result = Err(e),
        }
        match result {
            Ok(()) => info!(link = %nic.name, gateway = %gw, table, "policy routing installed"),
            Err(e) => {
                warn!(link = %nic.name, gateway = %gw, error = %e, "policy routing incomplete")
            }
        }
        if rp_filter_strict(&nic.name) {
            warn!(
                link = %nic.name,
                "rp_filter is strict (1) on this link: replies arriving on it may be dropped; set it to 2 (loose): \
                 sysctl -w net.ipv4.conf.{}.rp_filter=2",
                nic.name
            );
        }
        done
    }

    /// After a reload (`self.cfg` is the new config, `old` the one
    /// before): links that stay up and whose options changed get the new
    /// role and rate, and their policy routing again if the gateway
    /// changed. Their sockets and paths stay. Returns their names.
    pub(super) async fn apply_options(&mut self, old: &Config) -> Vec<String> {
        let mut changed = Vec::new();
        let indexes: Vec<u32> = self.up.keys().copied().collect();
        for index in indexes {
            let name = self.up[&index].nic.name.clone();
            let (was, now) = (old.links.options.get(&name), self.cfg.links.options.get(&name));
            if was == now {
                continue;
            }
            changed.push(name.clone());
            let settings = now.map(|o| o.settings).unwrap_or_default();
            self.shared.node().configure_link(self.shared.now(), LinkId(index), settings);
            if was.and_then(|o| o.gateway) != now.and_then(|o| o.gateway) {
                let entry = self.up.get_mut(&index).expect("listed above");
                let stale = std::mem::take(&mut entry.installed);
                let (nic, table) = (entry.nic.clone(), entry.table);
                for i in &stale {
                    let _ = self.nl.remove(i).await;
                }
                let installed = self.policy_routes(&nic, table).await;
                if let Some(entry) = self.up.get_mut(&index) {
                    entry.installed = installed;
                }
            }
        }
        changed
    }

    /// The lowest of the daemon's tables no link uses.
    fn free_table(&self) -> Option<u32> {
        plan::link_tables(&self.cfg.tun).find(|t| !self.up.values().any(|e| e.table == Some(*t)))
    }

    pub(super) async fn shutdown(&mut self) {
        let entries: Vec<LinkEntry> = std::mem::take(&mut self.up).into_values().collect();
        for e in entries {
            self.remove_link(e).await;
        }
    }
}

fn rp_filter_strict(ifname: &str) -> bool {
    let read = |p: String| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u8>().ok()).unwrap_or(0);
    let all = read("/proc/sys/net/ipv4/conf/all/rp_filter".into());
    let one = read(format!("/proc/sys/net/ipv4/conf/{ifname}/rp_filter"));
    all.max(one) == 1
}
