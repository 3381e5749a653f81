//! Duplication policy: which of a neighbour's usable paths a packet is copied onto.
//!
//! - `all` (default): every usable path, down ones included (a path that
//!   comes back carries packets from its first moment). Per packet the
//!   latency is the minimum over the paths and the loss the product of
//!   their losses.
//! - `best:N`: the N best paths by cost ([`super::monitor::PathMonitor::cost`])
//!   among those up or degraded (a suspect or down path is left out). The
//!   ranking is redone once per probe interval and whenever a path changes
//!   state, not per packet, and a path already ranked keeps its place unless
//!   another is clearly better (by [`RERANK_MARGIN`]), so the choice does not
//!   flap on noise.
//! - `failover`: one path, kept while it is up; when it degrades, turns
//!   suspect or goes down, the best path that is up (else degraded) takes
//!   over, preferring one that shares neither its local link nor its remote
//!   endpoint (failures are correlated), then one on another local link.
//!   Paths on the cheapest link role with a path up come first (a
//!   secondary or backup link takes over only while no primary path is up,
//!   and hands back when one is). Bulk traffic's default.
//!
//! Before any path has answered a probe (all down), every policy copies onto
//! every usable path: nothing is known yet, and a copy too many costs less
//! than a packet lost.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::ids::PathAddr;
use super::link::Role;
use super::monitor::Health;
use super::path::{PathId, PathSet};

/// A path must be this much cheaper (fraction) to overtake one ranked before it.
pub const RERANK_MARGIN: f64 = 0.2;
/// ... and at least this much cheaper in absolute terms.
pub const RERANK_MIN: Duration = Duration::from_millis(2);
/// Largest N of `best:N`.
pub const MAX_BEST: u8 = 16;

/// How many and which paths a packet is copied onto.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// A copy on every usable path.
    #[default]
    All,
    /// A copy on each of the N best paths that are up or degraded.
    Best(u8),
    /// One path, changed when it degrades.
    Failover,
}

/// What the policy knows about one usable path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// The path.
    pub id: PathId,
    /// Its local link and remote endpoint.
    pub addr: PathAddr,
    /// Its local link's role.
    pub role: Role,
    /// Its state.
    pub health: Health,
    /// Its cost (`None`: not measured yet).
    pub cost: Option<Duration>,
}

/// One neighbour's path ranking, kept between packets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranking {
    /// Paths, best first (only paths up or degraded).
    pub order: Vec<PathId>,
    /// The `failover` policy's active path.
    pub active: Option<PathId>,
}

fn beats(a: Option<Duration>, b: Option<Duration>) -> bool {
    match (a, b) {
        (Some(_), None) => true,
        (None, _) => false,
        (Some(a), Some(b)) => a + RERANK_MIN <= b && a.as_secs_f64() <= b.as_secs_f64() * (1.0 - RERANK_MARGIN),
    }
}

impl Ranking {
    /// Re-rank from `candidates` (usable paths) with hysteresis: the old
    /// order is the starting point, and a path moves ahead of another only
    /// if it beats it clearly. Returns true if the `failover` active path changed.
    pub fn update(&mut self, candidates: &[Candidate]) -> bool {
        let alive: Vec<&Candidate> = candidates.iter().filter(|c| c.health.is_alive()).collect();
        let find = |i: PathId| alive.iter().find(|c| c.id == i).copied();
        // Keep the old order of the paths still alive, then add new ones.
        let mut order: Vec<&Candidate> = self.order.iter().filter_map(|&i| find(i)).collect();
        for c in &alive {
            if !order.iter().any(|o| o.id == c.id) {
                order.push(c);
            }
        }
        // Insertion sort where a path passes another only by beating it clearly.
        for i in 1..order.len() {
            let mut j = i;
            while j > 0 && beats(order[j].cost, order[j - 1].cost) {
                order.swap(j, j - 1);
                j -= 1;
            }
        }
        self.order = order.iter().map(|c| c.id).collect();
        // The cheapest role with a path up: the active path is kept while
        // it is up and of that role (a backup is left when a primary is back).
        let tier = order.iter().filter(|c| c.health == Health::Up).map(|c| c.role).min();
        let keep = self.active.and_then(find).is_some_and(|c| c.health == Health::Up && Some(c.role) == tier);
        if keep {
            return false;
        }
        // Failures are correlated: a path that shares the failed one's
        // local link or remote endpoint may be dead too, so the best up path
        // that shares neither takes over, else one on another local link.
        let lost = self.active.and_then(|a| candidates.iter().find(|c| c.id == a)).map(|c| c.addr);
        let apart = |c: &&&Candidate, remote_too: bool| {
            lost.is_none_or(|l| c.addr.link != l.link && (!remote_too || c.addr.remote != l.remote))
        };
        let up = || order.iter().filter(|c| c.health == Health::Up && Some(c.role) == tier);
        let next = up()
            .find(|c| apart(c, true))
            .or_else(|| up().find(|c| apart(c, false)))
            .or_else(|| up().next())
            .or_else(|| order.first())
            .map(|c| c.id);
        let changed = next != self.active;
        self.active = next;
        changed
    }
}

impl Policy {
    /// The paths a packet is copied onto, among `usable` (the bundle's usable
    /// paths; `is_usable` says whether a ranked id is one of them), given
    /// the bundle's ranking.
    pub fn select(self, usable: PathSet, is_usable: impl Fn(PathId) -> bool, ranking: &Ranking) -> PathSet {
        match self {
            Policy::All => usable,
            Policy::Best(n) => {
                let mut taken = PathSet::EMPTY;
                for &id in ranking.order.iter().filter(|&&id| is_usable(id)).take(usize::from(n)) {
                    taken.insert(id);
                }
                if taken.is_empty() { usable } else { taken }
            }
            // The active path, else (it is not allowed here: a role keeps
            // this class off it) the best ranked one allowed.
            Policy::Failover => match ranking.active.filter(|&a| is_usable(a)) {
                Some(a) => PathSet::of(a),
                None => ranking.order.iter().copied().find(|&i| is_usable(i)).map_or(usable, PathSet::of),
            },
        }
    }
}

/// A policy name that is not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?}: use \"all\", \"best:N\" (N from 1 to {MAX_BEST}) or \"failover\"")]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Policy, UnknownPolicy> {
        let bad = || UnknownPolicy(s.to_string());
        match s {
            "all" => Ok(Policy::All),
            "failover" => Ok(Policy::Failover),
            _ => {
                let n = s.strip_prefix("best:").ok_or_else(bad)?.parse::<u8>().map_err(|_| bad())?;
                if (1..=MAX_BEST).contains(&n) { Ok(Policy::Best(n)) } else { Err(bad()) }
            }
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::All => f.write_str("all"),
            Policy::Best(n) => write!(f, "best:{n}"),
            Policy::Failover => f.write_str("failover"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    fn id(i: usize) -> PathId {
        PathId::new(i as u8, 1)
    }

    fn c(index: usize, health: Health, cost: Option<Duration>) -> Candidate {
        let addr = PathAddr {
            link: crate::proto::LinkId(index as u32),
            remote: format!("192.0.2.{index}:1").parse().unwrap(),
        };
        Candidate { id: id(index), addr, role: Role::Primary, health, cost }
    }

    fn chosen(p: Policy, usable: &[usize], r: &Ranking) -> Vec<usize> {
        let mut set = PathSet::EMPTY;
        usable.iter().for_each(|&i| set.insert(id(i)));
        p.select(set, |x| set.contains(x), r).slots().collect()
    }

    fn order(r: &Ranking) -> Vec<usize> {
        r.order.iter().map(|i| i.slot()).collect()
    }

    #[test]
    fn names_round_trip() {
        for s in ["all", "best:1", "best:16", "failover"] {
            assert_eq!(s.parse::<Policy>().unwrap().to_string(), s);
        }
        for s in ["best:0", "best:17", "best", "fastest"] {
            assert!(s.parse::<Policy>().unwrap_err().to_string().contains("best:N"), "{s}");
        }
    }

    #[test]
    fn all_takes_every_usable_path() {
        assert_eq!(chosen(Policy::All, &[0, 1, 2], &Ranking::default()), vec![0, 1, 2]);
    }

    #[test]
    fn best_takes_the_cheapest_and_does_not_flap_on_noise() {
        let mut r = Ranking::default();
        r.update(&[
            c(0, Health::Up, ms(30)),
            c(1, Health::Up, ms(10)),
            c(2, Health::Up, ms(20)),
            c(3, Health::Down, ms(1)),
        ]);
        assert_eq!(order(&r), vec![1, 2, 0]);
        assert_eq!(chosen(Policy::Best(2), &[0, 1, 2, 3], &r), vec![1, 2]);
        // Path 2 gets a little cheaper than 1: not enough to pass it.
        r.update(&[c(0, Health::Up, ms(30)), c(1, Health::Up, ms(10)), c(2, Health::Up, ms(9))]);
        assert_eq!(order(&r), vec![1, 2, 0]);
        // Clearly cheaper: it passes.
        r.update(&[c(0, Health::Up, ms(30)), c(1, Health::Up, ms(10)), c(2, Health::Up, ms(5))]);
        assert_eq!(order(&r), vec![2, 1, 0]);
        // A path that goes down leaves the ranking; with none alive, all go.
        r.update(&[c(0, Health::Down, ms(30)), c(1, Health::Up, ms(10)), c(2, Health::Down, ms(5))]);
        assert_eq!(chosen(Policy::Best(2), &[0, 1, 2], &r), vec![1]);
        r.update(&[c(0, Health::Down, None), c(1, Health::Down, None)]);
        assert_eq!(chosen(Policy::Best(2), &[0, 1], &r), vec![0, 1]);
    }

    #[test]
    fn failover_keeps_its_path_while_up_and_moves_when_it_degrades() {
        let mut r = Ranking::default();
        assert!(r.update(&[c(0, Health::Up, ms(20)), c(1, Health::Up, ms(10))]));
        assert_eq!(chosen(Policy::Failover, &[0, 1], &r), vec![1]);
        // Path 0 becomes much cheaper: failover stays on 1 while 1 is up.
        assert!(!r.update(&[c(0, Health::Up, ms(2)), c(1, Health::Up, ms(10))]));
        assert_eq!(chosen(Policy::Failover, &[0, 1], &r), vec![1]);
        // 1 degrades: 0 takes over.
        assert!(r.update(&[c(0, Health::Up, ms(2)), c(1, Health::Degraded, ms(10))]));
        assert_eq!(chosen(Policy::Failover, &[0, 1], &r), vec![0]);
        // Only degraded paths left: the best of them.
        r.update(&[c(0, Health::Down, ms(2)), c(1, Health::Degraded, ms(10))]);
        assert_eq!(chosen(Policy::Failover, &[0, 1], &r), vec![1]);
        // Nothing known: every usable path.
        r.update(&[c(0, Health::Down, None), c(1, Health::Down, None)]);
        assert_eq!(chosen(Policy::Failover, &[0, 1], &r), vec![0, 1]);
    }

    #[test]
    fn failover_prefers_the_cheapest_role_and_hands_back() {
        let with =
            |index: usize, role: Role, health: Health, cost: u64| Candidate { role, ..c(index, health, ms(cost)) };
        let mut r = Ranking::default();
        // The secondary path is faster, the primary is chosen.
        r.update(&[with(0, Role::Primary, Health::Up, 30), with(1, Role::Secondary, Health::Up, 10)]);
        assert_eq!(r.active, Some(id(0)));
        // The primary fails: the secondary; it comes back: the primary again.
        r.update(&[with(0, Role::Primary, Health::Suspect, 30), with(1, Role::Secondary, Health::Up, 10)]);
        assert_eq!(r.active, Some(id(1)));
        r.update(&[with(0, Role::Primary, Health::Up, 30), with(1, Role::Secondary, Health::Up, 10)]);
        assert_eq!(r.active, Some(id(0)));
        // A path the caller does not allow is passed over for the best allowed.
        let only = |i: PathId| i == id(1);
        assert_eq!(Policy::Failover.select(PathSet::of(id(1)), only, &r), PathSet::of(id(1)));
    }

    #[test]
    fn failover_moves_off_the_failed_link_and_endpoint() {
        let at = |index: usize, link: u32, remote: &str, health: Health, cost: u64| Candidate {
            id: id(index),
            addr: PathAddr { link: crate::proto::LinkId(link), remote: remote.parse().unwrap() },
            role: Role::Primary,
            health,
            cost: ms(cost),
        };
        // Two local links x two endpoints; 0 (link 1 -> x) is active.
        let paths = |h0: Health| {
            [
                at(0, 1, "192.0.2.1:1", h0, 10),
                at(1, 1, "192.0.2.2:1", Health::Up, 11),
                at(2, 2, "192.0.2.1:1", Health::Up, 12),
                at(3, 2, "192.0.2.2:1", Health::Up, 30),
            ]
        };
        let mut r = Ranking::default();
        r.update(&paths(Health::Up));
        assert_eq!(r.active, Some(id(0)));
        // 0 fails: not 1 (same link) nor 2 (same endpoint), but 3.
        r.update(&paths(Health::Suspect));
        assert_eq!(r.active, Some(id(3)));
    }
}
