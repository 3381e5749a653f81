//! The sliding window that is both the dedup window and the anti-replay window
//! (DESIGN.md invariant 3).
//!
//! One window per (sender, session). It remembers which sequence numbers have
//! been accepted among the last [`ReplayWindow::size`] below the highest one
//! seen, in a ring of 64-bit blocks as in RFC 6479 ("IPsec Anti-Replay
//! Algorithm without Bit Shifting"): checking is one bit test, marking is one
//! bit set plus, when the window slides, clearing the blocks it slides over
//! (at most the whole ring, so bounded). No allocation after construction.
//!
//! The order a receiver must follow (boringtun's): [`ReplayWindow::check`]
//! before opening, [`ReplayWindow::mark`] only after the AEAD open succeeded,
//! so a forged packet can never move the window.

use super::ids::Seq;

/// Default number of packets the window covers: 100 000 packets/s with 500 ms
/// of delay skew between paths is 50 000 packets. The ring rounds it up to
/// 65 472 (1024 blocks, 8 KiB per session).
pub const DEFAULT_WINDOW_PACKETS: u32 = 50_000;
/// Smallest window accepted by configuration.
pub const MIN_WINDOW_PACKETS: u32 = 64;
/// Largest window accepted by configuration (4 Mi packets, 512 KiB a session).
pub const MAX_WINDOW_PACKETS: u32 = 1 << 22;

const BLOCK_BITS: u64 = 64;

/// What the window says about a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen yet and inside (or ahead of) the window: may be accepted.
    Fresh,
    /// Already accepted: a later copy, or a replay.
    Duplicate,
    /// Too far behind the highest accepted number to tell; 0 is always too old.
    TooOld,
}

/// An RFC 6479 sliding bitmap.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Ring of blocks; its length is a power of two, one block more than the
    /// window needs so that the block being filled never evicts the window.
    blocks: Box<[u64]>,
    /// Highest accepted sequence number; 0 before the first.
    top: u64,
    /// Packets covered behind `top`.
    size: u64,
}

impl ReplayWindow {
    /// A window covering at least `packets` sequence numbers behind the
    /// highest one (rounded up to a multiple of 64, at least 64).
    pub fn new(packets: u32) -> ReplayWindow {
        let packets = u64::from(packets.max(1));
        let needed_blocks = packets.div_ceil(BLOCK_BITS) + 1;
        let n = needed_blocks.next_power_of_two();
        ReplayWindow { blocks: vec![0u64; n as usize].into_boxed_slice(), top: 0, size: (n - 1) * BLOCK_BITS }
    }

    /// How many sequence numbers behind the highest one are remembered.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Highest sequence number accepted so far (0 if none).
    pub fn top(&self) -> Seq {
        Seq(self.top)
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let block = (seq / BLOCK_BITS) as usize & (self.blocks.len() - 1);
        (block, 1u64 << (seq % BLOCK_BITS))
    }

    /// Whether `seq` could be accepted. Changes nothing.
    pub fn check(&self, seq: Seq) -> Verdict {
        let seq = seq.0;
        if seq == 0 {
            return Verdict::TooOld;
        }
        if seq > self.top {
            return Verdict::Fresh;
        }
        if self.top - seq >= self.size {
            return Verdict::TooOld;
        }
        let (block, bit) = self.slot(seq);
        if self.blocks[block] & bit != 0 { Verdict::Duplicate } else { Verdict::Fresh }
    }

    /// Accept `seq`: call only after `check` said `Fresh` and the packet was
    /// authenticated. Returns the verdict `check` would have given, so a
    /// caller that skips `check` still learns what happened; nothing changes
    /// unless it is `Fresh`.
    pub fn mark(&mut self, seq: Seq) -> Verdict {
        let verdict = self.check(seq);
        if verdict != Verdict::Fresh {
            return verdict;
        }
        let seq = seq.0;
        if seq > self.top {
            let cur = self.top / BLOCK_BITS;
            let new = seq / BLOCK_BITS;
            let slide = (new - cur).min(self.blocks.len() as u64);
            let mask = self.blocks.len() - 1;
            for i in 1..=slide {
                self.blocks[(cur + i) as usize & mask] = 0;
            }
            self.top = seq;
        }
        let (block, bit) = self.slot(seq);
        self.blocks[block] |= bit;
        Verdict::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn default_covers_100k_pps_with_500ms_skew() {
        let w = ReplayWindow::new(DEFAULT_WINDOW_PACKETS);
        assert_eq!(w.size(), 65_472);
        assert_eq!(std::mem::size_of_val(&*w.blocks), 8 * 1024);
    }

    #[test]
    fn basic_sequence() {
        let mut w = ReplayWindow::new(128);
        assert_eq!(w.size(), 192);
        assert_eq!(w.mark(Seq(0)), Verdict::TooOld);
        assert_eq!(w.mark(Seq(1)), Verdict::Fresh);
        assert_eq!(w.mark(Seq(1)), Verdict::Duplicate);
        assert_eq!(w.mark(Seq(1000)), Verdict::Fresh);
        assert_eq!(w.check(Seq(1000 - 191)), Verdict::Fresh);
        assert_eq!(w.check(Seq(1000 - 192)), Verdict::TooOld);
        assert_eq!(w.mark(Seq(999)), Verdict::Fresh);
        assert_eq!(w.check(Seq(999)), Verdict::Duplicate);
        // A jump far ahead forgets everything behind the new window.
        assert_eq!(w.mark(Seq(u64::MAX)), Verdict::Fresh);
        assert_eq!(w.check(Seq(1000)), Verdict::TooOld);
        assert_eq!(w.check(Seq(u64::MAX - 1)), Verdict::Fresh);
    }

    /// The obviously correct model: every accepted number in a set.
    struct Model {
        seen: BTreeSet<u64>,
        top: u64,
        size: u64,
    }

    impl Model {
        fn mark(&mut self, seq: u64) -> Verdict {
            let v = if seq == 0 || (seq <= self.top && self.top - seq >= self.size) {
                Verdict::TooOld
            } else if self.seen.contains(&seq) {
                Verdict::Duplicate
            } else {
                Verdict::Fresh
            };
            if v == Verdict::Fresh {
                self.seen.insert(seq);
                self.top = self.top.max(seq);
            }
            v
        }
    }

    fn ops() -> impl Strategy<Value = Vec<(bool, u64)>> {
        // (jump?, amount): mostly near the top, sometimes far behind or ahead.
        proptest::collection::vec((any::<bool>(), 0u64..600), 1..600)
    }

    proptest! {
        #[test]
        fn matches_btreeset_model(size in prop_oneof![Just(64u32), Just(100), Just(256), Just(1000)], ops in ops()) {
            let mut w = ReplayWindow::new(size);
            let mut m = Model { seen: BTreeSet::new(), top: 0, size: w.size() };
            let mut last = 1u64;
            for (forward, delta) in ops {
                let seq = if forward { last + delta } else { last.saturating_sub(delta) };
                last = last.max(seq);
                let checked = w.check(Seq(seq));
                let got = w.mark(Seq(seq));
                prop_assert_eq!(checked, got);
                prop_assert_eq!(got, m.mark(seq), "seq {}", seq);
            }
        }
    }
}
