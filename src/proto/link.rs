//! The local links: the ones the node knows are up, with their counters,
//! and what the config says of each (its role, its rate).
//!
//! A link's role is its cost tier, as users of bonding routers expect:
//! - `primary` (default): carries everything its policies give it;
//! - `secondary` (a metered LTE link, say): carries real-time copies, and
//!   bulk only while no primary path toward the peer is alive;
//! - `backup`: carries nothing while a primary or secondary path toward the
//!   peer is alive, then everything.
//!
//! Probes, keepalives and handshakes go on every link whatever its role:
//! a backup link is measured all the time, so it is known good (or not)
//! the moment it is needed.

use std::fmt;
use std::str::FromStr;

use super::ids::LinkId;
use super::shaper::{Rate, Shaper};
use super::stats::LinkStats;
use super::time::Time;
use super::transmit::Transmits;

/// A link's cost tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Carries everything.
    #[default]
    Primary,
    /// Real-time copies; bulk only while no primary path is alive.
    Secondary,
    /// Nothing while a primary or secondary path is alive, then everything.
    Backup,
}

impl Role {
    /// Every role, cheapest first.
    pub const ALL: [Role; 3] = [Role::Primary, Role::Secondary, Role::Backup];

    /// Its stable name (config, status, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Backup => "backup",
        }
    }

    /// Its tier, 0 cheapest.
    pub const fn tier(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A role name that is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: use \"primary\", \"secondary\" or \"backup\"")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        match s {
            "primary" => Ok(Role::Primary),
            "secondary" => Ok(Role::Secondary),
            "backup" => Ok(Role::Backup),
            _ => Err(UnknownRole(s.to_string())),
        }
    }
}

/// What the config says of one link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkSettings {
    /// Its cost tier.
    pub role: Role,
    /// Its upload rate: what mpvr sends on it is shaped just under this,
    /// real-time first (`None`: not shaped).
    pub up: Option<Rate>,
    /// Its download rate, told to the peers in every probe sent on it:
    /// they shape what they send toward it just under this (`None`: not told).
    pub down: Option<Rate>,
}

/// The MTU a link is taken to have until its NIC's is told (Ethernet's).
pub const DEFAULT_LINK_MTU: u16 = 1500;

/// A link that is up: its counters and, if it has a rate, its shaper.
#[derive(Debug)]
struct Up {
    id: LinkId,
    stats: LinkStats,
    shaper: Option<Shaper>,
}

/// The local links that are up, in the order they came up, and the
/// settings of every link the node was told of (kept while it is down).
#[derive(Debug, Default)]
pub struct Links {
    up: Vec<Up>,
    settings: Vec<(LinkId, LinkSettings)>,
    /// Each link's MTU as its NIC reports it (kept while it is down).
    mtus: Vec<(LinkId, u16)>,
    /// Paths given a shaper toward a peer's download rate (counted up when
    /// made, down when removed; a path forgotten with one leaves it high,
    /// which only costs a look): 0 lets the send path skip looking.
    pub(crate) path_shapers: usize,
}

impl Links {
    /// Add `link` at `now` (idempotent).
    pub fn add(&mut self, link: LinkId, now: Time) {
        if !self.up.iter().any(|u| u.id == link) {
            let shaper = self.settings(link).up.map(|r| Shaper::new(r, now));
            self.up.push(Up { id: link, stats: LinkStats::default(), shaper });
        }
    }

    /// Forget `link` (its settings stay; what its shaper held is dropped).
    pub fn remove(&mut self, link: LinkId) {
        self.up.retain(|u| u.id != link);
    }

    /// Set what the config says of `link` at `now` (a new rate starts a new shaper).
    pub fn configure(&mut self, link: LinkId, s: LinkSettings, now: Time) {
        match self.settings.iter_mut().find(|(id, _)| *id == link) {
            Some((_, old)) => *old = s,
            None => self.settings.push((link, s)),
        }
        if let Some(u) = self.up.iter_mut().find(|u| u.id == link)
            && u.shaper.as_ref().map(Shaper::rate) != s.up
        {
            u.shaper = s.up.map(|r| Shaper::new(r, now));
        }
    }

    /// `link`'s MTU is `mtu` (its NIC's).
    pub fn set_mtu(&mut self, link: LinkId, mtu: u16) {
        match self.mtus.iter_mut().find(|(id, _)| *id == link) {
            Some((_, old)) => *old = mtu,
            None => self.mtus.push((link, mtu)),
        }
    }

    /// `link`'s MTU ([`DEFAULT_LINK_MTU`] if never told).
    pub fn mtu(&self, link: LinkId) -> u16 {
        self.mtus.iter().find(|(id, _)| *id == link).map_or(DEFAULT_LINK_MTU, |(_, m)| *m)
    }

    /// What the config says of `link` (defaults if nothing).
    pub fn settings(&self, link: LinkId) -> LinkSettings {
        self.settings.iter().find(|(id, _)| *id == link).map(|(_, s)| *s).unwrap_or_default()
    }

    /// The counters of `link`, if it is up.
    pub fn stats_mut(&mut self, link: LinkId) -> Option<&mut LinkStats> {
        self.up.iter_mut().find(|u| u.id == link).map(|u| &mut u.stats)
    }

    /// The counters and shaper of `link`, if it is up.
    pub(crate) fn parts_mut(&mut self, link: LinkId) -> Option<(&mut LinkStats, Option<&mut Shaper>)> {
        self.up.iter_mut().find(|u| u.id == link).map(|u| (&mut u.stats, u.shaper.as_mut()))
    }

    /// The shaper of `link`, if it is up and has a rate.
    pub fn shaper(&self, link: LinkId) -> Option<&Shaper> {
        self.up.iter().find(|u| u.id == link).and_then(|u| u.shaper.as_ref())
    }

    /// Take `len` bytes from `link`'s tokens (a copy another shaper held
    /// goes out on it now), whatever they are.
    pub(crate) fn charge(&mut self, link: LinkId, len: usize) {
        if let Some(s) = self.up.iter_mut().find(|u| u.id == link).and_then(|u| u.shaper.as_mut()) {
            s.charge(len);
        }
    }

    /// Send what every shaper may send at `now`.
    pub(crate) fn release(&mut self, now: Time, out: &mut Transmits) {
        for s in self.up.iter_mut().filter_map(|u| u.shaper.as_mut()) {
            s.release(now, out);
        }
    }

    /// The download rate the config gives `link`, in kbit/s (0: none), for its probes.
    pub fn down_kbps(&self, link: LinkId) -> u32 {
        self.settings(link).down.map_or(0, |r| u32::try_from(r.bits() / 1000).unwrap_or(u32::MAX))
    }

    /// When a shaper next has a copy to send.
    pub fn next_release(&self) -> Option<Time> {
        self.up.iter().filter_map(|u| u.shaper.as_ref()?.next_release()).min()
    }

    /// The ids of the links, in order.
    pub fn ids(&self) -> Vec<LinkId> {
        self.up.iter().map(|u| u.id).collect()
    }

    /// Every link with its counters.
    pub fn iter(&self) -> impl Iterator<Item = (LinkId, &LinkStats)> {
        self.up.iter().map(|u| (u.id, &u.stats))
    }
}
