//! Passive counts: which paths delivered each recent data packet, and
//! what that says of each path once the packet has settled.

use std::time::Duration;

use crate::proto::path::MAX_PATHS;
use crate::proto::time::Time;

/// Wait this long after a data packet's first copy before crediting the paths
/// (its slower copies have arrived by then, or are counted missing).
pub const SETTLE_AFTER: Duration = Duration::from_secs(1);
/// Sequence numbers a [`Passive`] tracker remembers; a copy later than this
/// many packets behind the newest is not credited.
pub const PASSIVE_SLOTS: usize = 4096;

/// Per-path counts of data packets, from the receiver's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveCounts {
    /// Packets this path delivered (first or later copy).
    pub delivered: u64,
    /// Packets another path delivered and this one did not (while it was expected).
    pub missing: u64,
    /// Packets whose first copy came on this path.
    pub first: u64,
    /// Packets only this path delivered while at least one other was expected.
    pub rescues: u64,
}

impl PassiveCounts {
    /// Encoded length.
    pub const LEN: usize = 32;

    /// Missing over delivered plus missing (0 when nothing was counted).
    pub fn loss(&self) -> f64 {
        let total = self.delivered + self.missing;
        if total == 0 { 0.0 } else { self.missing as f64 / total as f64 }
    }

    pub(super) fn encode(&self, out: &mut [u8]) {
        for (i, v) in [self.delivered, self.missing, self.first, self.rescues].into_iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
        }
    }

    pub(super) fn decode(b: &[u8]) -> PassiveCounts {
        let f = |i: usize| u64::from_be_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        PassiveCounts { delivered: f(0), missing: f(1), first: f(2), rescues: f(3) }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    seq: u64,
    first_at: Time,
    mask: u32,
    open: bool,
    /// Sent on several paths (not on one alone): the others are expected too.
    spread: bool,
}

/// Which paths delivered each recent data packet of one session (paths by
/// their slot in the bundle's path table, [`MAX_PATHS`] of them; a slot
/// emptied is [`Passive::forget`]ten, so its bits never credit the next path).
#[derive(Clone, Debug)]
pub struct Passive {
    slots: Box<[Slot]>,
    /// Every sequence number below this is settled.
    settled: u64,
    highest: u64,
    /// First arrival of the oldest packet not settled (about: it may be
    /// settled already, which costs one early wakeup).
    oldest: Option<Time>,
}

impl Default for Passive {
    fn default() -> Passive {
        Passive { slots: vec![Slot::default(); PASSIVE_SLOTS].into_boxed_slice(), settled: 1, highest: 0, oldest: None }
    }
}

/// The per-path counts a [`Passive`] tracker credits, and which paths are
/// expected to deliver (the others are not counted missing). Paths are
/// named by slot.
pub trait Credit {
    /// Every path lives in a slot below this.
    fn span(&self) -> usize;
    /// Whether the path in `slot` was expected to deliver a packet whose
    /// first copy came at `first_at`, judged at `now`.
    fn expected(&self, slot: usize, first_at: Time, now: Time) -> bool;
    /// The counts of the path in `slot` (`None`: the slot is empty).
    fn counts(&mut self, slot: usize) -> Option<&mut PassiveCounts>;
}

impl Passive {
    /// Path `path` delivered data packet `seq` at `now`; `first`: it was
    /// the first copy; `spread`: it was sent on several paths (a packet
    /// sent on one alone is never missing on the others). Late copies
    /// whose slot was reused are not credited.
    pub fn record(&mut self, now: Time, seq: u64, path: usize, first: bool, spread: bool, credit: &mut impl Credit) {
        if path >= MAX_PATHS || seq < self.settled {
            return;
        }
        let i = (seq % PASSIVE_SLOTS as u64) as usize;
        let slot = self.slots[i];
        if slot.open && slot.seq == seq {
            self.slots[i].mask |= 1 << path;
            return;
        }
        if !first || (slot.open && slot.seq > seq) {
            return;
        }
        if slot.open {
            Self::settle_slot(&mut self.slots[i], now, credit);
        }
        self.slots[i] = Slot { seq, first_at: now, mask: 1 << path, open: true, spread };
        self.oldest.get_or_insert(now);
        self.highest = self.highest.max(seq);
        if let Some(c) = credit.counts(path) {
            c.first += 1;
        }
    }

    /// The path in `slot` is gone: no open packet credits that slot.
    pub fn forget(&mut self, slot: usize) {
        if slot >= MAX_PATHS {
            return;
        }
        let bit = !(1u32 << slot);
        for s in self.slots.iter_mut().filter(|s| s.open) {
            s.mask &= bit;
        }
    }

    fn settle_slot(slot: &mut Slot, now: Time, credit: &mut impl Credit) {
        slot.open = false;
        let span = credit.span().min(MAX_PATHS);
        let expected: u32 = if slot.spread {
            (0..span).filter(|&p| credit.expected(p, slot.first_at, now)).fold(0, |m, p| m | 1 << p)
        } else {
            0
        };
        let rescue = slot.mask.count_ones() == 1 && (expected & !slot.mask) != 0;
        for p in 0..span {
            let bit = 1u32 << p;
            let Some(c) = credit.counts(p) else { continue };
            if slot.mask & bit != 0 {
                c.delivered += 1;
                if rescue {
                    c.rescues += 1;
                }
            } else if expected & bit != 0 {
                c.missing += 1;
            }
        }
    }

    /// Credit every packet whose first copy is at least [`SETTLE_AFTER`] old.
    pub fn settle(&mut self, now: Time, credit: &mut impl Credit) {
        let floor = self.highest.saturating_sub(PASSIVE_SLOTS as u64 - 1).max(1);
        let mut seq = self.settled.max(floor);
        self.oldest = None;
        while seq <= self.highest {
            let slot = &mut self.slots[(seq % PASSIVE_SLOTS as u64) as usize];
            if slot.open && slot.seq == seq {
                if slot.first_at + SETTLE_AFTER > now {
                    self.oldest = Some(slot.first_at);
                    break;
                }
                Self::settle_slot(slot, now, credit);
            }
            seq += 1;
        }
        self.settled = seq;
    }

    /// First arrival of the oldest packet not credited yet.
    pub fn oldest_open(&self) -> Option<Time> {
        self.oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Paths {
        counts: Vec<PassiveCounts>,
        expected: Vec<bool>,
    }

    impl Credit for Paths {
        fn span(&self) -> usize {
            self.counts.len()
        }
        fn expected(&self, i: usize, _: Time, _: Time) -> bool {
            self.expected.get(i).copied().unwrap_or(false)
        }
        fn counts(&mut self, i: usize) -> Option<&mut PassiveCounts> {
            self.counts.get_mut(i)
        }
    }

    #[test]
    fn passive_credits_deliveries_misses_firsts_and_rescues() {
        let mut p = Passive::default();
        let mut paths = Paths { counts: vec![PassiveCounts::default(); 3], expected: vec![true, true, false] };
        let t = Time::ZERO + ms(10);
        // seq 1: both paths, 0 first. seq 2: only 1. seq 3: only 0. seq 4: 1 then 0.
        p.record(t, 1, 0, true, true, &mut paths);
        p.record(t, 1, 1, false, true, &mut paths);
        p.record(t, 2, 1, true, true, &mut paths);
        p.record(t, 3, 0, true, true, &mut paths);
        p.record(t, 4, 1, true, true, &mut paths);
        p.record(t, 4, 0, false, true, &mut paths);
        p.settle(t + ms(999), &mut paths);
        assert_eq!(paths.counts[0].delivered, 0, "nothing settles before SETTLE_AFTER");
        p.settle(t + SETTLE_AFTER, &mut paths);
        assert_eq!(paths.counts[0], PassiveCounts { delivered: 3, missing: 1, first: 2, rescues: 1 });
        assert_eq!(paths.counts[1], PassiveCounts { delivered: 3, missing: 1, first: 2, rescues: 1 });
        assert_eq!(paths.counts[2], PassiveCounts::default(), "an unexpected path is not missing");
        // A copy after settling is not credited again.
        p.record(t + SETTLE_AFTER, 2, 0, false, true, &mut paths);
        p.settle(t + SETTLE_AFTER * 3, &mut paths);
        assert_eq!(paths.counts[0].delivered, 3);
        // Wrapping the ring settles the overwritten slots first.
        for seq in 5..5 + PASSIVE_SLOTS as u64 + 10 {
            p.record(t, seq, 0, true, true, &mut paths);
        }
        assert_eq!(paths.counts[0].delivered, 3 + 10);
        assert_eq!(paths.counts[1].missing, 1 + 10);
        // A packet sent on one path alone is missing nowhere else.
        let t2 = t + SETTLE_AFTER * 4;
        p.settle(t2, &mut paths);
        let before = paths.counts[1];
        p.record(t2, 1 << 20, 0, true, false, &mut paths);
        p.settle(t2 + SETTLE_AFTER, &mut paths);
        assert_eq!(paths.counts[1], before);
        assert_eq!(paths.counts[2], PassiveCounts::default());
    }
}
