//! The paths of one bundle, each named by a [`PathId`] that is never reused.
//!
//! A path lives in one of [`MAX_PATHS`] slots. Its id is the slot and the
//! slot's generation, which grows every time the slot takes a new path: an
//! id kept by the ranking, a probe in flight or a policy choice either finds
//! the very path it was made for, or finds nothing. Removing a path never
//! makes any of those land on another one.
//!
//! What refers to paths by slot alone (a [`PathSet`], the passive tracker's
//! masks, a probe's path byte) is either used at once (a set is made and
//! consumed within one call) or is cleared when its slot is emptied
//! ([`super::monitor::Passive::forget`], probe ids unique per bundle).

use std::fmt;
use std::time::Duration;

use super::ids::PathAddr;
use super::monitor::PathMonitor;
use super::pmtu::{FLOOR_V4, FLOOR_V6, Pmtu};
use super::shaper::{Rate, Shaper};
use super::stats::Count;
use super::time::Time;

/// Most paths one bundle has at once (configured and learned). The passive
/// tracker keeps one bit per path slot, so this is also its width.
pub const MAX_PATHS: usize = 32;
/// Most paths one bundle has that were learned rather than configured.
pub const MAX_LEARNED_PATHS: usize = 8;
/// Data packets a path remembers sending (to judge a peer's notice)...
pub const SENT_KEPT: usize = 64;
/// ... at most one per this interval (so they reach 256 ms back at any rate;
/// the first packet after a pause is always kept).
pub const SENT_SPACING: Duration = Duration::from_millis(4);

/// A path's identity: its slot and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId {
    slot: u8,
    generation: u32,
}

impl PathId {
    /// An id made by hand (tests of the parts that only carry ids).
    #[cfg(test)]
    pub(crate) const fn new(slot: u8, generation: u32) -> PathId {
        PathId { slot, generation }
    }

    /// The slot it lives in (below [`MAX_PATHS`]).
    pub fn slot(self) -> usize {
        usize::from(self.slot)
    }

    /// The slot's generation when this path took it.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for PathId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// A set of path slots of one bundle, made and used within one call (the
/// paths a packet is copied onto). No allocation: one bit per slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSet(u32);

impl PathSet {
    /// The empty set.
    pub const EMPTY: PathSet = PathSet(0);

    /// The set of one path.
    pub fn of(id: PathId) -> PathSet {
        PathSet(1 << id.slot)
    }

    /// Add a path.
    pub fn insert(&mut self, id: PathId) {
        self.0 |= 1 << id.slot;
    }

    /// Whether it holds the path's slot.
    pub fn contains_slot(self, slot: usize) -> bool {
        slot < MAX_PATHS && self.0 & (1 << slot) != 0
    }

    /// Whether it holds `id`'s slot (the caller knows the id is current).
    pub fn contains(self, id: PathId) -> bool {
        self.contains_slot(id.slot())
    }

    /// The paths in either.
    pub fn union(self, other: PathSet) -> PathSet {
        PathSet(self.0 | other.0)
    }

    /// Nothing in it.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// How many paths.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The slots in it, lowest first.
    pub fn slots(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let slot = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(slot)
        })
    }
}

/// One path toward a peer and what was seen on it.
#[derive(Clone, Debug)]
pub struct Path {
    id: PathId,
    /// Local link and remote endpoint.
    pub addr: PathAddr,
    /// Its local link is up.
    pub usable: bool,
    /// Learned from an authenticated packet rather than configured.
    pub learned: bool,
    /// When it was made.
    pub created: Time,
    /// Last time a copy was sent on it.
    pub last_tx: Option<Time>,
    /// Last time an authenticated datagram arrived on it.
    pub last_rx: Option<Time>,
    /// Copies sent.
    pub tx: Count,
    /// Authenticated datagrams received that were the first copy of their packet.
    pub first: Count,
    /// Authenticated later copies received (dropped as duplicates).
    pub later: Count,
    /// Last time a data packet (first or later copy) arrived on it.
    pub last_data: Option<Time>,
    /// Last time a data packet was sent on it.
    pub last_data_tx: Option<Time>,
    /// The last data packets sent on it: (key phase, sequence number, when).
    sent: [(bool, u64, Time); SENT_KEPT],
    /// Where the next goes in `sent`.
    next_sent: usize,
    /// The peer's slot for this path, from the path byte of its probes.
    pub peer_slot: Option<u8>,
    /// The highest sequence number of data it delivered, with its key phase.
    pub last_seq: Option<(bool, u64)>,
    /// How long after the first copy its copies of data usually arrive
    /// (smoothed, 1/8; zero when it delivers first): a slower path is not
    /// silent while its copies are still on their way.
    pub lateness: std::time::Duration,
    /// Probes, estimates, passive counts and state.
    pub monitor: PathMonitor,
    /// The download rate the peer's end of this path told (in its probes).
    pub peer_down: Option<Rate>,
    /// What this end sends on it is shaped to `peer_down` (real-time first).
    pub shaper: Option<Shaper>,
    /// Its MTU discovery (datagram sizes it carries).
    pub pmtu: Pmtu,
}

impl Path {
    /// Its id.
    pub fn id(&self) -> PathId {
        self.id
    }

    /// Whether it delivered data within `interval` of `now` (then it is probed less).
    pub fn busy(&self, now: Time, interval: Duration) -> bool {
        self.last_data.is_some_and(|t| now - t < interval)
    }

    /// Data packet `seq` (of key phase `phase`) goes out on it at `now`.
    pub fn sent_data(&mut self, now: Time, phase: bool, seq: u64) {
        let prev = self.sent[(self.next_sent + SENT_KEPT - 1) % SENT_KEPT];
        if prev.1 == 0 || prev.2 + SENT_SPACING <= now || prev.0 != phase {
            self.sent[self.next_sent] = (phase, seq, now);
            self.next_sent = (self.next_sent + 1) % SENT_KEPT;
        }
        self.last_data_tx = Some(now);
    }

    /// When this end sent the first data packet on it after the one the
    /// peer says it last received (`phase`, `last`), as far as it
    /// remembers (within [`SENT_SPACING`] after it; the oldest remembered,
    /// if all are later): `None` if it
    /// sent none after it (it paused; the peer's silence is no failure),
    /// or none under that key phase (a rekey: nothing is concluded).
    pub fn sent_after(&self, phase: bool, last: u64) -> Option<Time> {
        self.sent.iter().filter(|&&(p, s, _)| s != 0 && p == phase && s > last).map(|&(_, _, at)| at).min()
    }

    /// The peer says its end of this path downloads at `down` (at `now`):
    /// what this end sends on it is shaped to that from now on.
    /// Returns +1 if it has a shaper now and had none, -1 the other way, else 0.
    pub fn set_peer_down(&mut self, now: Time, down: Option<Rate>) -> isize {
        if self.peer_down == down {
            return 0;
        }
        let had = self.shaper.is_some();
        self.peer_down = down;
        self.shaper = down.map(|r| Shaper::new(r, now));
        isize::from(self.shaper.is_some()) - isize::from(had)
    }

    /// Whether nothing was sent on it for `ka` (or ever).
    pub fn quiet(&self, now: Time, ka: Duration) -> bool {
        self.last_tx.is_none_or(|t| t + ka <= now)
    }
}

#[derive(Clone, Debug, Default)]
struct Slot {
    generation: u32,
    path: Option<Path>,
}

/// Every slot is taken: the path is not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a peer can have at most {MAX_PATHS} paths")]
pub struct PathsFull;

/// The path table of one bundle.
#[derive(Clone, Debug)]
pub struct Paths {
    slots: Vec<Slot>,
    /// Every path is in a slot below this.
    span: usize,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths { slots: vec![Slot::default(); MAX_PATHS], span: 0 }
    }
}

impl Paths {
    /// Every path, by slot.
    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.slots[..self.span].iter().filter_map(|s| s.path.as_ref())
    }

    /// Every path, by slot, to change.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Path> {
        self.slots[..self.span].iter_mut().filter_map(|s| s.path.as_mut())
    }

    /// Every path is in a slot below this.
    pub fn span(&self) -> usize {
        self.span
    }

    /// How many paths.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// No path.
    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// The path `id` names, if it still exists.
    pub fn get(&self, id: PathId) -> Option<&Path> {
        self.slots.get(id.slot()).and_then(|s| s.path.as_ref()).filter(|p| p.id == id)
    }

    /// The path `id` names, if it still exists, to change.
    pub fn get_mut(&mut self, id: PathId) -> Option<&mut Path> {
        self.slots.get_mut(id.slot()).and_then(|s| s.path.as_mut()).filter(|p| p.id == id)
    }

    /// The path in `slot` now, whichever it is.
    pub fn at_slot(&self, slot: usize) -> Option<&Path> {
        self.slots.get(slot).and_then(|s| s.path.as_ref())
    }

    /// The path in `slot` now, to change.
    pub fn at_slot_mut(&mut self, slot: usize) -> Option<&mut Path> {
        self.slots.get_mut(slot).and_then(|s| s.path.as_mut())
    }

    /// The path with this address.
    pub fn find(&self, addr: PathAddr) -> Option<PathId> {
        self.iter().find(|p| p.addr == addr).map(Path::id)
    }

    /// The paths whose local link is up.
    pub fn usable(&self) -> PathSet {
        let mut set = PathSet::EMPTY;
        for p in self.iter().filter(|p| p.usable) {
            set.insert(p.id);
        }
        set
    }

    /// Make a path in the lowest free slot, with a new generation.
    pub fn insert(&mut self, addr: PathAddr, learned: bool, now: Time) -> Result<PathId, PathsFull> {
        let slot = self.slots.iter().position(|s| s.path.is_none()).ok_or(PathsFull)?;
        Ok(self.fill(slot, addr, learned, now))
    }

    /// Forget path `id`; its slot's next path gets a new generation.
    pub fn remove(&mut self, id: PathId) -> Option<Path> {
        let s = self.slots.get_mut(id.slot())?;
        if s.path.as_ref().is_none_or(|p| p.id != id) {
            return None;
        }
        let gone = s.path.take();
        self.span = self.slots.iter().rposition(|s| s.path.is_some()).map_or(0, |i| i + 1);
        gone
    }

    /// Put a new path in place of `old` (same slot, new generation).
    pub fn replace(&mut self, old: PathId, addr: PathAddr, learned: bool, now: Time) -> PathId {
        self.remove(old);
        self.fill(old.slot(), addr, learned, now)
    }

    fn fill(&mut self, slot: usize, addr: PathAddr, learned: bool, now: Time) -> PathId {
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        let id = PathId { slot: slot as u8, generation: s.generation };
        self.span = self.span.max(slot + 1);
        s.path = Some(Path {
            id,
            addr,
            usable: true,
            learned,
            created: now,
            last_tx: None,
            last_rx: None,
            tx: Count::default(),
            first: Count::default(),
            later: Count::default(),
            last_data: None,
            last_data_tx: None,
            sent: [(false, 0, Time::ZERO); SENT_KEPT],
            next_sent: 0,
            lateness: std::time::Duration::ZERO,
            peer_down: None,
            shaper: None,
            peer_slot: None,
            last_seq: None,
            monitor: PathMonitor::new(now),
            // The link's limit is set by the node before anything is sent.
            pmtu: Pmtu::new(now, if addr.remote.is_ipv4() { FLOOR_V4 } else { FLOOR_V6 }, u16::MAX - 1),
        });
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::LinkId;

    fn addr(n: u16) -> PathAddr {
        PathAddr { link: LinkId(1), remote: format!("192.0.2.1:{n}").parse().unwrap() }
    }

    #[test]
    fn an_id_never_names_another_path() {
        let mut t = Paths::default();
        let a = t.insert(addr(1), false, Time::ZERO).unwrap();
        let b = t.insert(addr(2), false, Time::ZERO).unwrap();
        assert_eq!((a.slot(), b.slot()), (0, 1));
        assert!(t.remove(a).is_some());
        assert!(t.get(a).is_none());
        let c = t.insert(addr(3), false, Time::ZERO).unwrap();
        assert_eq!(c.slot(), a.slot(), "the free slot is reused");
        assert_ne!(c, a, "with a new generation");
        assert!(t.get(a).is_none(), "the old id finds nothing");
        assert!(t.remove(a).is_none(), "and removes nothing");
        assert_eq!(t.get(c).unwrap().addr, addr(3));
        assert_eq!(t.find(addr(2)), Some(b));
        let d = t.replace(b, addr(4), true, Time::ZERO);
        assert_eq!((d.slot(), t.get(b).is_none()), (b.slot(), true));
        assert_eq!(t.usable().len(), 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = Paths::default();
        for n in 0..MAX_PATHS {
            t.insert(addr(n as u16), false, Time::ZERO).unwrap();
        }
        assert_eq!(t.insert(addr(999), false, Time::ZERO), Err(PathsFull));
        assert_eq!(t.len(), MAX_PATHS);
        let set = t.usable();
        assert_eq!(set.len(), MAX_PATHS);
        assert_eq!(set.slots().count(), MAX_PATHS);
        assert!(!set.contains_slot(MAX_PATHS));
    }
}
