//! The local links the node knows are up, with their counters.

use super::ids::LinkId;
use super::stats::LinkStats;

/// The local links that are up, in the order they came up.
#[derive(Debug, Default)]
pub struct Links {
    links: Vec<(LinkId, LinkStats)>,
}

impl Links {
    /// Add `link` (idempotent).
    pub fn add(&mut self, link: LinkId) {
        if !self.links.iter().any(|(id, _)| *id == link) {
            self.links.push((link, LinkStats::default()));
        }
    }

    /// Forget `link`.
    pub fn remove(&mut self, link: LinkId) {
        self.links.retain(|(id, _)| *id != link);
    }

    /// The counters of `link`, if it is up.
    pub fn stats_mut(&mut self, link: LinkId) -> Option<&mut LinkStats> {
        self.links.iter_mut().find(|(id, _)| *id == link).map(|(_, s)| s)
    }

    /// The ids of the links, in order.
    pub fn ids(&self) -> Vec<LinkId> {
        self.links.iter().map(|(id, _)| *id).collect()
    }

    /// Every link with its counters.
    pub fn iter(&self) -> impl Iterator<Item = (LinkId, &LinkStats)> {
        self.links.iter().map(|(id, s)| (*id, s))
    }
}
