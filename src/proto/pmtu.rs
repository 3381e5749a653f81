//! Path MTU discovery for one path: datagram PLPMTUD (RFC 8899) with
//! sealed, padded probes, and nothing learned from ICMP.
//!
//! Sizes here are mpvr datagram lengths (what goes inside UDP, or inside
//! IP with the raw transport); the node turns them into the outer MTU a
//! user knows (`+ 28` over IPv4 with UDP) and into the inner packet size
//! the path carries (`- 36`).
//!
//! A path knows a `good` size (carried; the floor until probed: 548 bytes
//! over IPv4, 1232 over IPv6, which RFC 791 and RFC 8200 make every path
//! carry) and a `bad` one (lost; one past the link's own limit until
//! probed). A **search** sends, per round, a control probe at `good` and
//! up to [`ROUND_SIZES`] probes spread evenly up to `bad - 1`; the largest
//! answered becomes `good`, the smallest lost above it `bad`. Probes of a
//! round leave together, so the round costs one probe timeout (or less:
//! it ends when every probe is answered, or the largest one is). About four
//! rounds take 548..1472 to the exact byte; a round in which the control
//! probe is lost too says nothing about sizes (the path is down or lost a
//! burst) and is run again. While a search runs the path is used up to
//! `bad - 1` (what it may carry): packets are never refused on a size the
//! search has not yet ruled out, and an ICMP "too big" toward a sender
//! always names a size that was measured.
//!
//! Once `bad = good + 1` the path is **settled** at `good`. It is
//! confirmed (a probe at `good`, with a control probe at the floor) every
//! [`CONFIRM_BUSY`] while it carries large datagrams and has sent 100
//! times the confirmation's bytes since the last one (so it costs at most
//! 1 %), every [`CONFIRM_THIN`] while it carries fewer, at once when it
//! carries a large one after [`RESUME_AFTER`] without (traffic moved onto
//! it), every
//! [`CONFIRM_IDLE`] at rest, and at once when the node asks
//! ([`Pmtu::confirm_now`]: the path looked stalled while small probes still
//! passed). [`CONFIRM_TRIES`] confirmations lost while their control
//! probes were answered mean the MTU shrank: `bad` becomes the old size and
//! the search starts again from the floor. A path below its link's limit
//! adds a probe at that limit to a confirmation every [`CONFIRM_IDLE`]
//! (RFC 8899's raise timer): a path whose MTU is back to normal is found
//! then. (One that grew part of the way is not: it stays at its smaller
//! measured size until it shrinks or reaches the link's limit.)

use std::time::Duration;

use super::time::Time;

/// Probes per search round besides the control probe.
pub const ROUND_SIZES: usize = 7;
/// How often a settled path that carries large datagrams is confirmed.
pub const CONFIRM_BUSY: Duration = Duration::from_millis(250);
/// How often a settled path that carries a few large datagrams is confirmed.
pub const CONFIRM_THIN: Duration = Duration::from_secs(10);
/// How often an idle settled path is confirmed, and a path below its
/// link's limit searches upward (RFC 8899's PMTU_RAISE_TIMER).
pub const CONFIRM_IDLE: Duration = Duration::from_secs(600);
/// Lost confirmations in a row (with their controls answered) that mean
/// the MTU shrank.
pub const CONFIRM_TRIES: u32 = 3;
/// A path that sent no large datagram for this long has its size
/// confirmed when it sends one again.
pub const RESUME_AFTER: Duration = Duration::from_secs(1);
/// A busy confirmation waits until the path sent this many times its bytes.
const CONFIRM_SHARE: u64 = 100;
/// Smallest datagram every IPv4 path carries: 576 - 20 - 8 (RFC 791).
pub const FLOOR_V4: u16 = 548;
/// Smallest datagram every IPv6 path carries: 1280 - 40 - 8 (RFC 8200).
pub const FLOOR_V6: u16 = 1232;
/// Most probes one path has in flight.
const OUTSTANDING: usize = ROUND_SIZES + 1;

/// Where the discovery of one path stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started (the path has not answered a probe yet).
    Idle,
    /// Rounds of probes narrow `good..bad`.
    Searching,
    /// `good` is the path's MTU.
    Settled,
    /// A settled path's size is being confirmed (`tries` sent so far).
    Confirming {
        /// Confirmations sent in this run.
        tries: u32,
    },
}

/// One probe in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Outstanding {
    id: u32,
    size: u16,
    sent: Time,
}

/// The discovery state of one path.
#[derive(Clone, Debug)]
pub struct Pmtu {
    floor: u16,
    ceiling: u16,
    good: u16,
    bad: u16,
    phase: Phase,
    outstanding: [Option<Outstanding>; OUTSTANDING],
    /// When the round or confirmation in flight is given up, or the next
    /// confirmation is due.
    due: Time,
    /// When the last confirmation or search ended.
    settled_at: Time,
    /// When the last search ended (the raise timer runs from it).
    searched_at: Time,
    /// Bytes of datagrams above the floor sent since then.
    large_bytes: u64,
    /// When the last datagram above the floor was sent.
    last_large: Option<Time>,
    /// A control probe of the run in flight was answered.
    control_ok: bool,
    /// No size is measured (a first search, or one after a shrink): the
    /// path is used up to what the search has not ruled out.
    optimistic: bool,
    /// The measured size last reported by [`Pmtu::changed`].
    reported: Option<u16>,
    /// Searches run and shrinks found.
    searches: u64,
    shrinks: u64,
}

/// Probe sizes to send now, at most one round's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeSizes {
    sizes: [u16; OUTSTANDING],
    len: usize,
}

impl ProbeSizes {
    fn push(&mut self, size: u16) {
        if self.len < OUTSTANDING && !self.sizes[..self.len].contains(&size) {
            self.sizes[self.len] = size;
            self.len += 1;
        }
    }

    /// The sizes, in the order they are to be sent.
    pub fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        self.sizes[..self.len].iter().copied()
    }

    /// None to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Pmtu {
    /// A path whose link lets out datagrams up to `ceiling` bytes, over an
    /// underlay whose paths all carry `floor`.
    pub fn new(now: Time, floor: u16, ceiling: u16) -> Pmtu {
        let floor = floor.min(ceiling);
        Pmtu {
            floor,
            ceiling,
            good: floor,
            bad: ceiling.saturating_add(1),
            phase: Phase::Idle,
            outstanding: [None; OUTSTANDING],
            due: now,
            settled_at: now,
            searched_at: now,
            large_bytes: 0,
            last_large: None,
            control_ok: false,
            optimistic: true,
            reported: None,
            searches: 0,
            shrinks: 0,
        }
    }

    /// The largest datagram sent on the path now: the measured size, or
    /// before one is (a first search, a search after a shrink) what the
    /// search has not ruled out.
    pub fn usable(&self) -> u16 {
        if self.optimistic { self.bad - 1 } else { self.good }
    }

    /// Whether a datagram of `len` bytes goes on the path.
    pub fn fits(&self, len: usize) -> bool {
        len <= usize::from(self.usable())
    }

    /// The measured size, once a search has settled (kept while a later
    /// search looks for a larger one).
    pub fn measured(&self) -> Option<u16> {
        (!self.optimistic).then_some(self.good)
    }

    /// The measured size, if it changed since last asked.
    pub fn changed(&mut self) -> Option<u16> {
        let m = self.measured();
        if m == self.reported {
            return None;
        }
        self.reported = m;
        m
    }

    /// Where discovery stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The floor and the link's limit.
    pub fn bounds(&self) -> (u16, u16) {
        (self.floor, self.ceiling)
    }

    /// Searches run, and shrinks found by confirmation.
    pub fn counts(&self) -> (u64, u64) {
        (self.searches, self.shrinks)
    }

    /// The link's limit (its MTU) is now `ceiling`: what it rules out is
    /// lost, and a larger limit is searched (at once if the old one was reached).
    pub fn set_ceiling(&mut self, now: Time, ceiling: u16) {
        if ceiling == self.ceiling {
            return;
        }
        let reached = self.bad == self.ceiling.saturating_add(1);
        self.ceiling = ceiling;
        self.floor = self.floor.min(ceiling);
        self.good = self.good.clamp(self.floor, ceiling);
        if reached || self.bad > ceiling {
            self.bad = ceiling.saturating_add(1);
        }
        if self.phase != Phase::Idle && self.bad > self.good + 1 {
            self.start_search(now);
        }
    }

    /// A data datagram of `len` bytes went on the path at `now`. The first
    /// large one after [`RESUME_AFTER`] without any has the size confirmed
    /// at once: traffic that moves onto a path (a failover) finds out
    /// within a few probe timeouts whether the path still carries it.
    pub fn sent(&mut self, now: Time, len: usize) {
        if len <= usize::from(self.floor) {
            return;
        }
        if self.last_large.is_none_or(|t| t + RESUME_AFTER <= now) {
            self.confirm_now(now);
        }
        self.last_large = Some(now);
        self.large_bytes += len as u64;
    }

    /// Confirm the size now (the path lost data while small probes passed).
    pub fn confirm_now(&mut self, now: Time) {
        if self.phase == Phase::Settled && self.good > self.floor {
            self.due = now;
        }
    }

    /// When [`Pmtu::poll`] has work (`None` before the path is alive).
    pub fn next_timer(&self) -> Option<Time> {
        match self.phase {
            Phase::Idle => None,
            Phase::Settled => Some(self.due.min(self.busy_due()).min(self.raise_due().unwrap_or(self.due))),
            Phase::Searching | Phase::Confirming { .. } => Some(self.due),
        }
    }

    /// When a path below its link's limit searches upward again.
    fn raise_due(&self) -> Option<Time> {
        (self.bad <= self.ceiling).then_some(self.searched_at + CONFIRM_IDLE)
    }

    fn busy_due(&self) -> Time {
        let confirm = u64::from(self.good) + u64::from(self.floor);
        if self.good <= self.floor || self.large_bytes == 0 {
            self.due
        } else if self.large_bytes >= confirm * CONFIRM_SHARE {
            self.settled_at + CONFIRM_BUSY
        } else {
            // A thin stream of large packets: confirmed now and then.
            self.settled_at + CONFIRM_THIN
        }
    }

    fn start_search(&mut self, now: Time) {
        self.phase = Phase::Searching;
        self.outstanding = [None; OUTSTANDING];
        self.searches += 1;
        self.due = now;
    }

    fn settle(&mut self, now: Time) {
        if self.phase == Phase::Searching {
            self.searched_at = now;
        }
        self.phase = Phase::Settled;
        self.optimistic = false;
        self.settled_at = now;
        self.large_bytes = 0;
        self.due = now + CONFIRM_IDLE;
    }

    /// Run what is due at `now` on a path that is alive (`alive`), whose
    /// probes are waited for `timeout`: returns the probe sizes to send
    /// now (each then reported with [`Pmtu::probing`]).
    pub fn poll(&mut self, now: Time, alive: bool, timeout: Duration) -> ProbeSizes {
        let mut sizes = ProbeSizes::default();
        if self.phase == Phase::Idle {
            if !alive {
                return sizes;
            }
            self.start_search(now);
        }
        let due = self.next_timer().is_some_and(|t| t <= now);
        if !due {
            return sizes;
        }
        match self.phase {
            Phase::Idle => {}
            Phase::Searching => {
                // What is still out at the round's end was lost; it rules
                // out its size only if the control came back.
                if self.control_ok {
                    let lost = self.outstanding.iter().flatten().map(|o| o.size).filter(|&s| s > self.good).min();
                    if let Some(s) = lost {
                        self.bad = self.bad.min(s);
                    }
                }
                if self.bad <= self.good + 1 {
                    self.settle(now);
                    return sizes;
                }
                if !alive {
                    self.due = now + timeout;
                    return sizes;
                }
                sizes.push(self.good);
                let top = self.bad - 1;
                let span = top - self.good;
                let n = span.min(ROUND_SIZES as u16);
                for i in 1..=n {
                    sizes.push(self.good + ((u32::from(span) * u32::from(i)) / u32::from(n)) as u16);
                }
                self.begin_run(now, timeout);
            }
            Phase::Settled => {
                let raise = self.raise_due().is_some_and(|t| t <= now);
                if self.good <= self.floor && !raise {
                    self.settle(now);
                    return sizes;
                }
                if !alive {
                    // Down: confirmed (and raised) once it is alive again.
                    self.settled_at = now;
                    self.due = self.due.max(now + timeout);
                    if raise {
                        self.searched_at = now;
                    }
                    return sizes;
                }
                self.phase = Phase::Confirming { tries: 0 };
                self.confirm(now, timeout, &mut sizes);
                if raise {
                    // Below the link's limit: does the path carry it again?
                    sizes.push(self.ceiling);
                    self.searched_at = now;
                }
            }
            Phase::Confirming { tries } => {
                if !self.control_ok {
                    // Nothing came back, not even the small probe: the path
                    // is down or lost a burst, which says nothing of sizes.
                    if alive {
                        self.phase = Phase::Confirming { tries: 0 };
                        self.confirm(now, timeout, &mut sizes);
                    } else {
                        self.settle(now);
                    }
                } else if tries >= CONFIRM_TRIES {
                    // Small probes pass and probes at the size do not: the
                    // path's MTU shrank.
                    self.shrinks += 1;
                    self.bad = self.good;
                    self.good = self.floor;
                    self.optimistic = true;
                    self.start_search(now);
                    return self.poll(now, alive, timeout);
                } else {
                    self.confirm(now, timeout, &mut sizes);
                }
            }
        }
        sizes
    }

    fn confirm(&mut self, now: Time, timeout: Duration, sizes: &mut ProbeSizes) {
        let tries = match self.phase {
            Phase::Confirming { tries } => tries,
            _ => 0,
        };
        // The control probe's answer is kept across tries: it says the path
        // is alive while the probes at the size are lost.
        let control_ok = self.control_ok && tries > 0;
        sizes.push(self.good);
        sizes.push(self.floor);
        self.begin_run(now, timeout);
        self.control_ok = control_ok;
        self.phase = Phase::Confirming { tries: tries + 1 };
    }

    fn begin_run(&mut self, now: Time, timeout: Duration) {
        self.outstanding = [None; OUTSTANDING];
        self.control_ok = false;
        self.due = now + timeout;
    }

    /// Probe `id` of `size` bytes goes out at `now` (ids unique in the bundle).
    pub fn probing(&mut self, now: Time, id: u32, size: u16) {
        if let Some(slot) = self.outstanding.iter_mut().find(|o| o.is_none()) {
            *slot = Some(Outstanding { id, size, sent: now });
        }
    }

    /// Probe `id` of `size` bytes was answered at `now`. False if it
    /// answers nothing in flight.
    pub fn answered(&mut self, now: Time, id: u32, size: u16) -> bool {
        let Some(slot) = self.outstanding.iter_mut().find(|o| o.is_some_and(|o| o.id == id && o.size == size)) else {
            return false;
        };
        *slot = None;
        match self.phase {
            Phase::Searching => {
                if size == self.good {
                    self.control_ok = true;
                }
                if size > self.good {
                    self.good = size;
                    self.control_ok = true;
                    if self.bad <= size {
                        // An earlier loss was chance, not size.
                        self.bad = self.ceiling.saturating_add(1);
                    }
                }
                // The round is over when nothing is out, or the largest
                // size it could learn came back.
                if self.good + 1 >= self.bad {
                    self.settle(now);
                } else if self.outstanding.iter().all(Option::is_none) {
                    self.due = now;
                }
            }
            Phase::Confirming { .. } | Phase::Settled if size > self.good => {
                // The raise probe: the path carries its link's limit again.
                self.good = size;
                self.bad = self.bad.max(size.saturating_add(1));
                self.searched_at = now;
                self.settle(now);
            }
            Phase::Confirming { .. } if size == self.good => self.settle(now),
            Phase::Confirming { .. } => self.control_ok = true,
            Phase::Idle | Phase::Settled => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(50);

    /// Drive `p` against a path that carries datagrams up to `mtu` for
    /// `rounds` polls; returns probes sent.
    fn drive(p: &mut Pmtu, now: &mut Time, mtu: u16, rounds: usize) -> usize {
        let mut sent = 0;
        let mut id = 0;
        for _ in 0..rounds {
            let sizes = p.poll(*now, true, T);
            for s in sizes.iter() {
                id += 1;
                sent += 1;
                p.probing(*now, id, s);
                if s <= mtu {
                    p.answered(*now + Duration::from_millis(1), id, s);
                }
            }
            *now = p.next_timer().unwrap().max(*now + Duration::from_millis(1));
        }
        sent
    }

    #[test]
    fn a_search_finds_the_exact_size_in_a_few_rounds() {
        for mtu in [548, 600, 1392, 1464, 1471, 1472] {
            let mut now = Time::ZERO;
            let mut p = Pmtu::new(now, FLOOR_V4, 1472);
            assert_eq!(p.usable(), 1472, "optimistic before a search");
            let sent = drive(&mut p, &mut now, mtu, 6);
            assert_eq!(p.measured(), Some(mtu), "mtu {mtu}");
            assert!(sent <= 6 * 8, "{sent}");
        }
        // Already at the link's limit: one round.
        let mut now = Time::ZERO;
        let mut p = Pmtu::new(now, FLOOR_V4, 1472);
        drive(&mut p, &mut now, 1472, 1);
        assert_eq!(p.measured(), Some(1472));
    }

    #[test]
    fn a_round_without_its_control_rules_nothing_out() {
        let mut now = Time::ZERO;
        let mut p = Pmtu::new(now, FLOOR_V4, 1472);
        let sizes = p.poll(now, true, T);
        for (i, s) in sizes.iter().enumerate() {
            p.probing(now, i as u32 + 1, s);
        }
        now += T;
        // Everything lost: the search goes on with the same bounds.
        let again = p.poll(now, true, T);
        assert_eq!(again, sizes);
        assert_eq!(p.usable(), 1472);
    }

    #[test]
    fn a_shrink_is_found_by_confirmation_and_a_growth_by_the_raise_timer() {
        let mut now = Time::ZERO;
        let mut p = Pmtu::new(now, FLOOR_V4, 1472);
        drive(&mut p, &mut now, 1472, 2);
        assert_eq!(p.measured(), Some(1472));
        // Busy: confirmed within CONFIRM_BUSY once enough was sent.
        for _ in 0..1000 {
            p.sent(now, 1400);
        }
        assert!(p.next_timer().unwrap() <= now + CONFIRM_BUSY);
        now = p.next_timer().unwrap();
        drive(&mut p, &mut now, 1372, 12);
        assert_eq!(p.measured(), Some(1372));
        assert_eq!(p.counts().1, 1);
        // Idle for the raise timer: the larger size is found again.
        now = p.next_timer().unwrap();
        assert!(now >= Time::ZERO + CONFIRM_IDLE);
        drive(&mut p, &mut now, 1472, 6);
        assert_eq!(p.measured(), Some(1472));
    }

    #[test]
    fn a_dead_path_is_not_a_small_one() {
        let mut now = Time::ZERO;
        let mut p = Pmtu::new(now, FLOOR_V4, 1472);
        drive(&mut p, &mut now, 1472, 2);
        p.confirm_now(now);
        // Nothing answers at all: confirmations go on, the size stays.
        drive(&mut p, &mut now, 0, 10);
        assert_eq!(p.usable(), 1472);
        assert_eq!(p.counts().1, 0);
    }

    #[test]
    fn a_smaller_link_limit_is_taken_at_once() {
        let mut now = Time::ZERO;
        let mut p = Pmtu::new(now, FLOOR_V4, 1472);
        drive(&mut p, &mut now, 1472, 2);
        p.set_ceiling(now, 1400);
        assert_eq!(p.usable(), 1400);
        p.set_ceiling(now, 1472);
        drive(&mut p, &mut now, 1472, 6);
        assert_eq!(p.measured(), Some(1472));
    }
}
