//! The internet exit, both ends.
//!
//! On the exit host (`[exit] enabled`): packets its peers send to
//! addresses outside the overlay reach its TUN (the core delivers what no
//! route covers) and are forwarded out of one interface with their
//! sources translated. What this changes, and puts back at exit:
//! - IPv4 forwarding on the TUN and on the outbound interface (per
//!   interface, `net.ipv4.conf.DEV.forwarding`; the global switch is never
//!   touched), IPv6 forwarding through `net.ipv6.conf.DEV.force_forwarding`
//!   where the kernel has it (Linux 6.17), else only if IPv6 forwarding
//!   is on already;
//! - one nftables table of its own, `inet mpvr_TUN`: the forward chain
//!   passes the TUN's traffic out of the interface and the answers back,
//!   drops new connections from outside toward the overlay and, if this
//!   daemon turned the interface's forwarding on, anything else it would
//!   now forward from that interface; the postrouting chain masquerades
//!   the overlay's sources (IPv4, and NAT66 for IPv6). No other table is
//!   read or changed.
//!
//! On a site (`exit = true` on a peer): the core routes everything no other
//! route covers to that peer, and the kernel sends it to the TUN through
//! two half-default routes per family (`0.0.0.0/1` and `128.0.0.0/1`,
//! `::/1` and `8000::/1`), which win over any default route without
//! replacing it; mpvr's own sockets are bound to their NICs, so their
//! lookups never see the TUN's routes, and local subnets keep their more
//! specific routes. While no path to the exit is up, `fallback = "direct"`
//! removes those routes (the links' default routes carry the traffic) and
//! `"block"` keeps them (it is dropped in the tunnel).

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use ipnet::IpNet;
use tracing::{info, warn};

use super::RunError;
use crate::config::{Config, Fallback};
use crate::sys::netlink::{Add, Installed, Netlink, Nic};

/// What the core routes to an exit peer: everything.
pub const DEFAULT_ROUTES: [&str; 2] = ["0.0.0.0/0", "::/0"];
/// What the kernel routes to the TUN for a full tunnel: the two halves of
/// each family's address space.
const HALF_ROUTES: [&str; 4] = ["0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1"];

/// The nftables table of the exit on the TUN `tun`.
pub fn table_name(tun: &str) -> String {
    format!("mpvr_{}", tun.replace(|c: char| !c.is_ascii_alphanumeric(), "_"))
}

/// A sysctl file's value, trimmed (`None`: no such file).
fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The exit host's state: what it changed, to put back.
pub(super) struct ExitHost {
    table: String,
    /// The interface traffic leaves by.
    pub(super) interface: String,
    /// Sysctls set, with their values before.
    restore: Vec<(String, String)>,
    /// IPv6 is forwarded too.
    pub(super) ipv6: bool,
}

impl ExitHost {
    /// Set the exit up for the TUN `tun`: forwarding, the nftables table.
    pub(super) fn start(cfg: &Config, nics: &[Nic]) -> Result<ExitHost, RunError> {
        let exit = cfg.exit.as_ref().expect("called for an exit host");
        let interface = match &exit.interface {
            Some(i) => i.clone(),
            None => nics.iter().find(|n| n.default_v4 || n.default_v6).map(|n| n.name.clone()).ok_or_else(|| {
                RunError::Fatal(
                    "exit: the main routing table has no default route: set exit.interface to the interface toward the internet"
                        .into(),
                )
            })?,
        };
        if !nics.iter().any(|n| n.name == interface) {
            return Err(RunError::Fatal(format!(
                "exit.interface {interface:?} does not exist: check the name with `ip link`"
            )));
        }
        let mut me = ExitHost { table: table_name(&cfg.tun), interface, restore: Vec::new(), ipv6: false };
        // Which of the two had forwarding off: this daemon turns it on for
        // the exit's path only, and drops what else it would now forward.
        let mut took = [false; 2];
        for (i, dev) in [cfg.tun.clone(), me.interface.clone()].iter().enumerate() {
            let path = format!("/proc/sys/net/ipv4/conf/{dev}/forwarding");
            if read_sysctl(&path).as_deref() == Some("0") {
                me.set(&path, "1")?;
                took[i] = true;
            }
        }
        let v6_on_tun = cfg.addresses.iter().any(|a| a.addr().is_ipv6());
        if v6_on_tun {
            let all = read_sysctl("/proc/sys/net/ipv6/conf/all/forwarding");
            let force = |dev: &str| format!("/proc/sys/net/ipv6/conf/{dev}/force_forwarding");
            if all.as_deref() == Some("1") {
                me.ipv6 = true;
            } else if read_sysctl(&force(&me.interface)).is_some() {
                for dev in [cfg.tun.clone(), me.interface.clone()] {
                    if read_sysctl(&force(&dev)).as_deref() == Some("0") {
                        me.set(&force(&dev), "1")?;
                    }
                }
                me.ipv6 = true;
            } else {
                warn!(
                    "exit: IPv6 is not forwarded: this kernel has no per-interface IPv6 forwarding \
                     (net.ipv6.conf.*.force_forwarding, Linux 6.17), and net.ipv6.conf.all.forwarding is 0; \
                     set it to 1 yourself to exit IPv6 too"
                );
            }
        }
        let ruleset = ruleset(&me.table, &cfg.tun, &me.interface, &overlay(cfg), took);
        if let Err(e) = nft(&ruleset) {
            me.put_back();
            return Err(e);
        }
        info!(interface = %me.interface, table = %me.table, ipv6 = me.ipv6, "internet exit on: the peers' traffic leaves by this interface, its sources translated");
        Ok(me)
    }

    fn set(&mut self, path: &str, value: &str) -> Result<(), RunError> {
        let before = read_sysctl(path).unwrap_or_default();
        std::fs::write(path, value)
            .map_err(|source| RunError::Io { what: format!("exit: setting {path} to {value}"), source })?;
        self.restore.push((path.to_string(), before));
        Ok(())
    }

    fn put_back(&mut self) {
        for (path, value) in self.restore.drain(..).rev() {
            // The TUN's own files are gone with it.
            if std::path::Path::new(&path).exists()
                && let Err(e) = std::fs::write(&path, &value)
            {
                warn!(path, value, error = %e, "exit: cannot put a sysctl back");
            }
        }
    }

    /// Remove the table and put the sysctls back.
    pub(super) fn stop(mut self) {
        if let Err(e) = nft(&format!("delete table inet {}\n", self.table)) {
            warn!(table = %self.table, error = %e, "exit: cannot remove the nftables table");
        }
        self.put_back();
    }

    /// The connections the kernel tracks (all of them: NAT's and others').
    pub(super) fn tracked() -> Option<u64> {
        read_sysctl("/proc/sys/net/netfilter/nf_conntrack_count")?.parse().ok()
    }
}

/// The prefixes whose sources are translated: the TUN's subnets and what
/// the config routes to peers (a network behind a site needs its prefix
/// there, or in the site's `host.advertise` and the relay's peer
/// prefixes).
fn overlay(cfg: &Config) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = cfg.addresses.iter().map(IpNet::trunc).collect();
    v.extend(cfg.peers.iter().flat_map(|p| p.prefixes.iter().copied()).filter(|p| p.prefix_len() > 0));
    v.sort();
    v.dedup();
    v
}

/// The exit's nftables table, replaced whole in one transaction (a table
/// left by a killed daemon goes with it).
/// `took`: this daemon turned forwarding on for the TUN, for `out`.
fn ruleset(table: &str, tun: &str, out: &str, overlay: &[IpNet], took: [bool; 2]) -> String {
    let set = |v6: bool| {
        let items: Vec<String> =
            overlay.iter().filter(|p| matches!(p.addr(), IpAddr::V6(_)) == v6).map(|p| p.to_string()).collect();
        items.join(", ")
    };
    let (v4, v6) = (set(false), set(true));
    let mut s = format!("table inet {table} {{}}\ndelete table inet {table}\ntable inet {table} {{\n");
    s += "  chain forward {\n    type filter hook forward priority filter; policy accept;\n";
    s += &format!("    iifname \"{tun}\" oifname \"{out}\" counter accept\n");
    s += &format!("    iifname \"{out}\" oifname \"{tun}\" ct state established,related counter accept\n");
    s += &format!("    iifname \"{out}\" oifname \"{tun}\" counter drop\n");
    for (dev, took) in [(tun, took[0]), (out, took[1])] {
        if took {
            s += &format!("    iifname \"{dev}\" drop\n");
        }
    }
    s += "  }\n  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
    if !v4.is_empty() {
        s += &format!("    oifname \"{out}\" ip saddr {{ {v4} }} counter masquerade\n");
    }
    if !v6.is_empty() {
        s += &format!("    oifname \"{out}\" ip6 saddr {{ {v6} }} counter masquerade\n");
    }
    s += "  }\n}\n";
    s
}

/// Run `nft -f -` with `script`.
fn nft(script: &str) -> Result<(), RunError> {
    use std::io::Write as _;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RunError::Fatal(format!("exit: cannot run nft ({e}): install nftables (apt install nftables)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| RunError::Io { what: "exit: nft".into(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RunError::Fatal(format!(
            "exit: nft refused the exit's table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A site's full tunnel: the half-default routes on the TUN, present while
/// the tunnel is up (and always with `block`).
pub(super) struct FullTunnel {
    /// What happens while no path to the exit is up.
    pub(super) fallback: Fallback,
    /// The exit's neighbour (the exit itself, or the relay it is reached via).
    pub(super) neighbour: crate::proto::HostId,
    /// The exit host.
    pub(super) exit: crate::proto::HostId,
    families: Vec<IpNet>,
    installed: Vec<Installed>,
    /// Whether the tunnel to the exit is up, and since when.
    pub(super) up: bool,
    pub(super) since: Instant,
    /// While the routes cannot be added (another program holds them), the
    /// next try.
    next_try: Instant,
}

impl FullTunnel {
    /// The site's full tunnel toward its exit peer, if it has one; its
    /// routes are added by the first [`FullTunnel::update`].
    pub(super) fn new(cfg: &Config) -> Option<FullTunnel> {
        let peer = cfg.peers.iter().find(|p| p.exit.is_some())?;
        let v4 = cfg.addresses.iter().any(|a| a.addr().is_ipv4());
        let v6 = cfg.addresses.iter().any(|a| a.addr().is_ipv6());
        let families = HALF_ROUTES
            .iter()
            .map(|p| p.parse::<IpNet>().expect("a valid prefix"))
            .filter(|p| if p.addr().is_ipv4() { v4 } else { v6 })
            .collect();
        Some(FullTunnel {
            fallback: peer.exit.expect("found by it"),
            neighbour: peer.via.unwrap_or(peer.id),
            exit: peer.id,
            families,
            installed: Vec::new(),
            up: false,
            since: Instant::now(),
            next_try: Instant::now(),
        })
    }

    /// The tunnel to the exit is `up` now: add or remove the routes.
    pub(super) async fn update(&mut self, nl: &Netlink, tun_index: u32, up: bool) {
        let changed = up != self.up;
        if changed {
            self.since = Instant::now();
        }
        self.up = up;
        let want = up || self.fallback == Fallback::Block;
        if want && self.installed.is_empty() && Instant::now() >= self.next_try {
            for p in &self.families {
                match nl.add_route(*p, tun_index, None, None, Add::Exclusive).await {
                    Ok(i) => self.installed.push(i),
                    Err(e) if e.is_held() => {
                        // Tried again in 10 s, not at every tick.
                        self.next_try = Instant::now() + std::time::Duration::from_secs(10);
                        warn!(
                        prefix = %p,
                        "full tunnel: another program (another VPN?) holds this route in the main table: it is \
                         left alone, and internet traffic does not go through the exit until it goes"
                        )
                    }
                    Err(e) => warn!(prefix = %p, error = %e, "full tunnel: cannot add the route to the TUN"),
                }
            }
            info!(up, fallback = self.fallback.name(), "full tunnel: internet traffic goes through the exit");
        } else if !want && !self.installed.is_empty() {
            self.remove(nl).await;
            info!("full tunnel: no path to the exit; internet traffic uses the links' own routes (fallback direct)");
        } else if changed && self.fallback == Fallback::Block && !up {
            warn!("full tunnel: no path to the exit; internet traffic is dropped until one is up (fallback block)");
        }
    }

    /// Remove the routes.
    pub(super) async fn remove(&mut self, nl: &Netlink) {
        for i in self.installed.drain(..) {
            if let Err(e) = nl.remove(&i).await {
                warn!(error = %e, "full tunnel: cannot remove a route");
            }
        }
    }

    /// "through the exit", "direct" or "blocked".
    pub(super) fn state(&self) -> &'static str {
        match (self.up, self.fallback) {
            (true, _) => "through the exit",
            (false, Fallback::Direct) => "direct",
            (false, Fallback::Block) => "blocked",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_is_one_table_of_ours() {
        let overlay: Vec<IpNet> = vec!["10.9.0.0/24".parse().unwrap(), "fd09::/64".parse().unwrap()];
        let r = ruleset("mpvr_mpvr0", "mpvr0", "eth0", &overlay, [false, true]);
        assert!(r.starts_with("table inet mpvr_mpvr0 {}\ndelete table inet mpvr_mpvr0\n"));
        assert_eq!(r.matches("table inet").count(), 3, "{r}");
        assert!(r.contains("oifname \"eth0\" ip saddr { 10.9.0.0/24 } counter masquerade"));
        assert!(r.contains("oifname \"eth0\" ip6 saddr { fd09::/64 } counter masquerade"));
        assert!(r.contains("iifname \"eth0\" drop"));
        assert!(!r.contains("iifname \"mpvr0\" drop"));
        assert!(!ruleset("t", "mpvr0", "eth0", &overlay, [false; 2]).contains("iifname \"eth0\" drop"));
        assert_eq!(table_name("wg-0"), "mpvr_wg_0");
    }
}
