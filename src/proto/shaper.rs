//! Per-link shaping with priority: what mpvr sends on a link with a
//! configured rate goes out just under that rate, so the queue forms here,
//! where mpvr can order it, and not in the ISP's buffer.
//!
//! A token bucket per link, driven by `now` (no clock is read): it fills
//! at [`SHAPE_FRACTION`] of the configured rate, up to a depth of
//! [`BURST_TIME`] at that rate (at least two full packets). Three queues,
//! served strictly in order:
//! 1. real-time copies;
//! 2. control (probes and their replies, keepalives, handshakes, adverts,
//!    notices);
//! 3. bulk copies.
//!
//! Real-time and control never wait for bulk: while their own queue is
//! empty they go at once, even if that borrows up to one bucket depth from
//! the next tokens (bulk then waits for the debt to be paid), and bulk
//! waits whenever anything else is queued. Real-time has that precedence
//! up to [`REALTIME_SHARE`] of the rate (its own bucket, [`REALTIME_BURST`]
//! deep); past it, it is served after bulk: an application that marks a
//! transfer real-time cannot starve the link's bulk, or its control. Bulk is bounded by its sojourn
//! time with CoDel (RFC 8289: target [`CODEL_TARGET`], interval
//! [`CODEL_INTERVAL`]) so TCP backs off here rather than filling the
//! link's buffer, and by [`BULK_LIMIT`] packets. A real-time copy older
//! than [`REALTIME_MAX_WAIT`] is dropped (it would be late anyway; a copy
//! on another path may still be in time).
//!
//! Queued copies are already sealed (encrypt once, send N: the bytes are
//! the same as the copies sent at once on other links). Buffers are
//! recycled: steady traffic allocates nothing.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::class::Class;
use super::ids::PathAddr;
use super::time::{Time, smooth};
use super::transmit::Transmits;

/// The shaper runs at this fraction of a link's configured rate (the
/// queue must stay here, not downstream).
pub const SHAPE_FRACTION: f64 = 0.95;
/// Bucket depth, as time at the shaped rate.
pub const BURST_TIME: Duration = Duration::from_millis(4);
/// CoDel's target sojourn time for bulk.
pub const CODEL_TARGET: Duration = Duration::from_millis(5);
/// CoDel's interval.
pub const CODEL_INTERVAL: Duration = Duration::from_millis(100);
/// Most bulk copies queued on one link.
pub const BULK_LIMIT: usize = 2048;
/// Most bulk bytes queued on one link, as time at its rate: CoDel tames
/// TCP, this tames what does not back off (at least [`BULK_MIN_BYTES`]).
pub const BULK_MAX_DELAY: Duration = Duration::from_millis(100);
/// The bulk byte limit's floor.
pub const BULK_MIN_BYTES: usize = 64 * 1024;
/// Most real-time or control copies queued on one link.
pub const PRIORITY_LIMIT: usize = 512;
/// Real-time goes ahead of everything up to this share of the rate (over
/// [`REALTIME_BURST`]); past it, it waits behind bulk: traffic that marks
/// itself real-time cannot starve the rest.
pub const REALTIME_SHARE: f64 = 0.8;
/// The span over which real-time's share is counted (a key frame's burst fits).
pub const REALTIME_BURST: Duration = Duration::from_millis(100);
/// A real-time copy queued longer than this is dropped.
pub const REALTIME_MAX_WAIT: Duration = Duration::from_millis(50);
/// A full-size datagram, for the bucket's smallest depth.
const FULL_PACKET: f64 = 1500.0;

/// A rate in bits per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

/// Slowest rate accepted (below this a full packet takes over 100 ms).
pub const MIN_RATE: u64 = 128_000;
/// Fastest rate accepted.
pub const MAX_RATE: u64 = 400_000_000_000;

impl Rate {
    /// `bits` per second, if within [`MIN_RATE`]..=[`MAX_RATE`].
    pub fn from_bits(bits: u64) -> Option<Rate> {
        (MIN_RATE..=MAX_RATE).contains(&bits).then_some(Rate(bits))
    }

    /// Bits per second.
    pub fn bits(self) -> u64 {
        self.0
    }

    fn bytes_per_sec(self) -> f64 {
        self.0 as f64 / 8.0
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, n) in [("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1_000)] {
            if b >= n {
                return if b.is_multiple_of(n) {
                    write!(f, "{}{unit}", b / n)
                } else {
                    write!(f, "{:.3}{unit}", b as f64 / n as f64)
                };
            }
        }
        write!(f, "{b}bit")
    }
}

/// A rate that is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not a number with a unit.
    #[error("{0:?} is not a rate: write a number and a unit, such as \"50mbit\", \"800kbit\" or \"1.5gbit\"")]
    Malformed(String),
    /// Out of range.
    #[error("{0:?} is out of range: use 128kbit to 400gbit")]
    OutOfRange(String),
}

impl FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Rate, RateError> {
        let bad = || RateError::Malformed(s.to_string());
        let t = s.trim().to_ascii_lowercase();
        let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("ps")).unwrap_or(&t);
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let scale = match unit.trim() {
            "bit" | "b" => 1.0,
            "kbit" | "kb" | "k" => 1e3,
            "mbit" | "mb" | "m" => 1e6,
            "gbit" | "gb" | "g" => 1e9,
            _ => return Err(bad()),
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        let bits = n * scale;
        if !bits.is_finite() || bits < MIN_RATE as f64 || bits > MAX_RATE as f64 {
            return Err(RateError::OutOfRange(s.to_string()));
        }
        Ok(Rate(bits.round() as u64))
    }
}

/// A queue a copy waits in, by what it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Real-time data.
    Realtime,
    /// Control messages.
    Control,
    /// Bulk data.
    Bulk,
}

impl Lane {
    /// The lane of a data packet of class `c`, or of control (`None`).
    pub fn of(c: Option<Class>) -> Lane {
        match c {
            Some(Class::Realtime) => Lane::Realtime,
            Some(Class::Bulk) => Lane::Bulk,
            None => Lane::Control,
        }
    }

    /// Its index, highest priority first.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What a shaper did, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShaperStats {
    /// Copies that waited in a queue, per lane.
    pub queued: [u64; 3],
    /// Copies dropped, per lane (CoDel, the limits, the real-time deadline, a link gone).
    pub drops: [u64; 3],
    /// Queueing delay of the last copy sent from each lane (0 if it did not wait).
    pub delay: [Duration; 3],
    /// Smoothed queueing delay of bulk (1/16 per packet).
    pub bulk_delay: Duration,
}

#[derive(Clone, Debug)]
struct Queued {
    buf: Vec<u8>,
    path: PathAddr,
    at: Time,
}

#[derive(Clone, Debug, Default)]
struct Codel {
    dropping: bool,
    first_above: Option<Time>,
    drop_next: Time,
    count: u32,
}

impl Codel {
    fn control_law(t: Time, count: u32) -> Time {
        t + CODEL_INTERVAL.div_f64(f64::from(count.max(1)).sqrt())
    }

    /// Whether the head, queued for `sojourn`, should be dropped at `now`
    /// (`backlog`: bytes still queued behind it).
    fn should_drop(&mut self, now: Time, sojourn: Duration, backlog: usize) -> bool {
        let ok_to_drop = if sojourn < CODEL_TARGET || backlog <= FULL_PACKET as usize {
            self.first_above = None;
            false
        } else {
            match self.first_above {
                None => {
                    self.first_above = Some(now + CODEL_INTERVAL);
                    false
                }
                Some(t) => now >= t,
            }
        };
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return false;
            }
            if now >= self.drop_next {
                self.count += 1;
                self.drop_next = Self::control_law(self.drop_next, self.count);
                return true;
            }
            return false;
        }
        if ok_to_drop {
            self.dropping = true;
            let recent = now.saturating_since(self.drop_next) < CODEL_INTERVAL * 16;
            self.count = if self.count > 2 && recent { self.count - 2 } else { 1 };
            self.drop_next = Self::control_law(now, self.count);
            return true;
        }
        false
    }
}

/// One link's shaper.
#[derive(Clone, Debug)]
pub struct Shaper {
    rate: Rate,
    /// Bytes per second it sends at.
    fill: f64,
    depth: f64,
    tokens: f64,
    /// Real-time's own bucket: its share of the rate.
    rt_fill: f64,
    rt_depth: f64,
    rt_tokens: f64,
    bulk_bytes: usize,
    last: Time,
    lanes: [VecDeque<Queued>; 3],
    bytes: [usize; 3],
    free: Vec<Vec<u8>>,
    codel: Codel,
    stats: ShaperStats,
}

impl Shaper {
    /// A shaper for a link of `rate`, its bucket full.
    pub fn new(rate: Rate, now: Time) -> Shaper {
        let fill = rate.bytes_per_sec() * SHAPE_FRACTION;
        let depth = (fill * BURST_TIME.as_secs_f64()).max(2.0 * FULL_PACKET);
        Shaper {
            rate,
            fill,
            depth,
            tokens: depth,
            rt_fill: fill * REALTIME_SHARE,
            rt_depth: (fill * REALTIME_SHARE * REALTIME_BURST.as_secs_f64()).max(8.0 * FULL_PACKET),
            rt_tokens: (fill * REALTIME_SHARE * REALTIME_BURST.as_secs_f64()).max(8.0 * FULL_PACKET),
            bulk_bytes: ((fill * BULK_MAX_DELAY.as_secs_f64()) as usize).max(BULK_MIN_BYTES),
            last: now,
            lanes: Default::default(),
            bytes: [0; 3],
            free: Vec::new(),
            codel: Codel::default(),
            stats: ShaperStats::default(),
        }
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// What it did.
    pub fn stats(&self) -> &ShaperStats {
        &self.stats
    }

    /// Bytes queued, per lane.
    pub fn backlog(&self) -> [usize; 3] {
        self.bytes
    }

    fn refill(&mut self, now: Time) {
        if now > self.last {
            let dt = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + self.fill * dt).min(self.depth);
            self.rt_tokens = (self.rt_tokens + self.rt_fill * dt).min(self.rt_depth);
            self.last = now;
        }
    }

    /// Whether a copy of `len` bytes in `lane` may go at `now` (then its
    /// tokens are taken); if not, [`Shaper::enqueue`] it. The caller has
    /// released what was due at `now` first ([`Shaper::release`]).
    pub fn try_now(&mut self, now: Time, lane: Lane, len: usize) -> bool {
        self.refill(now);
        let len = len as f64;
        let [rt, ctl, bulk] = [Lane::Realtime, Lane::Control, Lane::Bulk].map(|l| self.lanes[l.index()].is_empty());
        // Queued real-time past its share is served after bulk: it holds
        // back nothing but later real-time.
        let rt_ahead = self.lanes[Lane::Realtime.index()].front().is_some_and(|h| self.rt_tokens >= h.buf.len() as f64);
        let go = match lane {
            // Ahead of everything (borrowing up to one bucket) within its
            // share; past it, like bulk.
            Lane::Realtime if self.rt_tokens >= len => rt && self.tokens - len >= -self.depth,
            Lane::Realtime => rt && ctl && bulk && self.tokens >= len,
            Lane::Control => ctl && !rt_ahead && self.tokens - len >= -self.depth,
            Lane::Bulk => bulk && ctl && !rt_ahead && self.tokens >= len,
        };
        if go {
            self.tokens -= len;
            if lane == Lane::Realtime {
                self.rt_tokens -= len;
            }
        }
        go
    }

    /// Take `len` bytes of tokens whatever is left (a copy sent by another
    /// shaper on the same link).
    pub fn charge(&mut self, len: usize) {
        self.tokens -= len as f64;
    }

    /// Queue a copy of `datagram` for `path` in `lane` (or drop it: the
    /// lane is full).
    pub fn enqueue(&mut self, now: Time, lane: Lane, datagram: &[u8], path: PathAddr) {
        let i = lane.index();
        let limit = if lane == Lane::Bulk { BULK_LIMIT } else { PRIORITY_LIMIT };
        let full = lane == Lane::Bulk && self.bytes[i] + datagram.len() > self.bulk_bytes;
        if self.lanes[i].len() >= limit || full {
            self.stats.drops[i] += 1;
            return;
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(datagram);
        self.bytes[i] += buf.len();
        self.lanes[i].push_back(Queued { buf, path, at: now });
        self.stats.queued[i] += 1;
    }

    /// The lane served next, and the token floor it may go down to:
    /// real-time within its share (or late: it is dropped), control, bulk,
    /// then real-time past its share, as bulk.
    fn next_lane(&self) -> Option<(usize, f64)> {
        let rt = Lane::Realtime.index();
        if let Some(h) = self.lanes[rt].front()
            && self.rt_tokens >= h.buf.len() as f64
        {
            return Some((rt, -self.depth));
        }
        if !self.lanes[Lane::Control.index()].is_empty() {
            return Some((Lane::Control.index(), -self.depth));
        }
        if !self.lanes[Lane::Bulk.index()].is_empty() {
            return Some((Lane::Bulk.index(), 0.0));
        }
        (!self.lanes[rt].is_empty()).then_some((rt, 0.0))
    }

    /// Send what the tokens allow at `now`, real-time first, into `out`;
    /// returns the bytes sent.
    pub fn release(&mut self, now: Time, out: &mut Transmits) -> usize {
        let mut sent = 0;
        self.refill(now);
        // Late real-time copies go first: dropped, whatever the tokens.
        let rt = Lane::Realtime.index();
        while self.lanes[rt].front().is_some_and(|h| now.saturating_since(h.at) > REALTIME_MAX_WAIT) {
            if let Some(q) = self.lanes[rt].pop_front() {
                self.bytes[rt] -= q.buf.len();
                self.stats.drops[rt] += 1;
                self.free.push(q.buf);
            }
        }
        while let Some((i, floor)) = self.next_lane() {
            let Some(head) = self.lanes[i].front() else { break };
            let len = head.buf.len() as f64;
            if self.tokens - len < floor {
                break;
            }
            let Some(q) = self.lanes[i].pop_front() else { break };
            let sojourn = now.saturating_since(q.at);
            self.bytes[i] -= q.buf.len();
            let late = i == rt && sojourn > REALTIME_MAX_WAIT;
            if late || (i == Lane::Bulk.index() && self.codel.should_drop(now, sojourn, self.bytes[i])) {
                self.stats.drops[i] += 1;
            } else {
                self.tokens -= len;
                if i == rt {
                    self.rt_tokens -= len;
                }
                self.stats.delay[i] = sojourn;
                if i == Lane::Bulk.index() {
                    self.stats.bulk_delay = smooth(self.stats.bulk_delay, sojourn, 16);
                }
                out.push_raw(&q.buf, q.path);
                sent += q.buf.len();
            }
            self.free.push(q.buf);
        }
        if self.lanes[Lane::Bulk.index()].is_empty() {
            self.codel.first_above = None;
        }
        sent
    }

    /// When the head of the queues can go (`None`: nothing queued).
    pub fn next_release(&self) -> Option<Time> {
        let (i, floor) = self.next_lane()?;
        let head = self.lanes[i].front()?;
        let need = head.buf.len() as f64 + floor - self.tokens;
        // Rounded up: at that time the tokens are there.
        let wait =
            if need <= 0.0 { Duration::ZERO } else { Duration::from_nanos((need / self.fill * 1e9).ceil() as u64 + 1) };
        let mut at = self.last + wait;
        // A real-time head past its share may regain it, or run late, sooner.
        if let Some(h) = self.lanes[Lane::Realtime.index()].front() {
            at = at.min(h.at + REALTIME_MAX_WAIT + Duration::from_micros(1));
            let short = h.buf.len() as f64 - self.rt_tokens;
            if short > 0.0 {
                at = at.min(self.last + Duration::from_nanos((short / self.rt_fill * 1e9).ceil() as u64 + 1));
            }
        }
        Some(at)
    }

    /// The link is gone: drop everything queued.
    pub fn clear(&mut self) {
        for i in 0..3 {
            self.stats.drops[i] += self.lanes[i].len() as u64;
            while let Some(q) = self.lanes[i].pop_front() {
                self.free.push(q.buf);
            }
            self.bytes[i] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_us(n: u64) -> Time {
        Time::from_nanos(n * 1000)
    }

    fn path() -> PathAddr {
        PathAddr { link: crate::proto::LinkId(1), remote: "192.0.2.1:1".parse().unwrap() }
    }

    fn tagged(lane: u8, n: u32) -> Vec<u8> {
        let mut v = vec![0u8; 1000];
        v[0] = lane;
        v[1..5].copy_from_slice(&n.to_be_bytes());
        v
    }

    #[test]
    fn rates_parse_and_print() {
        for (s, bits) in
            [("50mbit", 50_000_000), ("800kbit", 800_000), ("1.5gbit", 1_500_000_000), ("5Mbit/s", 5_000_000)]
        {
            assert_eq!(s.parse::<Rate>().unwrap().bits(), bits, "{s}");
        }
        assert_eq!("50mbit".parse::<Rate>().unwrap().to_string(), "50mbit");
        assert_eq!("1.5gbit".parse::<Rate>().unwrap().to_string(), "1.500gbit");
        for s in ["fast", "50", "mbit", "5 parsecs", "1e3mbit"] {
            assert!(matches!(s.parse::<Rate>(), Err(RateError::Malformed(_))), "{s}");
        }
        assert!(matches!("10kbit".parse::<Rate>(), Err(RateError::OutOfRange(_))));
        assert!(matches!("900gbit".parse::<Rate>(), Err(RateError::OutOfRange(_))));
    }

    /// Feed a 4 Mbit/s link 1000-byte bulk copies at 8 Mbit/s and a
    /// real-time copy every 20 ms; returns what went out, in order, with when.
    fn run(ms: u64) -> (Vec<(u64, u8, u32)>, Shaper) {
        let rate = Rate::from_bits(4_000_000).unwrap();
        let mut s = Shaper::new(rate, Time::ZERO);
        let mut sent = Vec::new();
        let mut out = Transmits::new();
        let collect = |out: &mut Transmits, t: u64, sent: &mut Vec<(u64, u8, u32)>| {
            for tx in out.iter() {
                sent.push((t, tx.datagram[0], u32::from_be_bytes(tx.datagram[1..5].try_into().unwrap())));
            }
            out.clear();
        };
        let mut rt = 0;
        let mut bulk = 0;
        for t in (0..ms * 1000).step_by(250) {
            let now = at_us(t);
            s.release(now, &mut out);
            let mut offer = |lane: Lane, d: Vec<u8>, out: &mut Transmits| {
                if s.try_now(now, lane, d.len()) {
                    out.push_raw(&d, path());
                } else {
                    s.enqueue(now, lane, &d, path());
                }
            };
            if t % 1000 == 0 {
                offer(Lane::Bulk, tagged(2, bulk), &mut out);
                bulk += 1;
            }
            if t % 20_000 == 0 {
                offer(Lane::Realtime, tagged(0, rt), &mut out);
                rt += 1;
            }
            collect(&mut out, t, &mut sent);
        }
        (sent, s)
    }

    #[test]
    fn real_time_never_waits_and_bulk_is_held_to_the_rate() {
        let (sent, s) = run(3000);
        // Every real-time copy went out the moment it came (t % 20 ms == 0).
        let rt: Vec<_> = sent.iter().filter(|x| x.1 == 0).collect();
        assert_eq!(rt.len(), 150);
        assert!(rt.iter().all(|x| x.0 % 20_000 == 0), "a real-time copy waited");
        // The link carried its shaped rate (3.8 Mbit/s) within a few
        // percent over the last two seconds, no more.
        let bytes: u64 = sent.iter().filter(|x| x.0 >= 1_000_000).count() as u64 * 1000;
        let rate = bytes as f64 * 8.0 / 2.0;
        assert!((3.6e6..=3.85e6).contains(&rate), "{rate}");
        // Bulk that does not back off is held to 100 ms of queue (64 kB at least: 138 ms here).
        assert!(s.stats().drops[Lane::Bulk.index()] > 1000);
        assert!(s.stats().bulk_delay <= Duration::from_millis(140), "{:?}", s.stats().bulk_delay);
        assert!(s.backlog()[Lane::Bulk.index()] <= 64 * 1024, "{:?}", s.backlog());
    }

    #[test]
    fn real_time_past_its_share_cannot_starve_bulk() {
        // A "real-time" flood at twice the link's rate, and bulk.
        let rate = Rate::from_bits(4_000_000).unwrap();
        let mut s = Shaper::new(rate, Time::ZERO);
        let mut out = Transmits::new();
        let (mut rt, mut bulk) = (0u64, 0u64);
        for t in (0..3_000_000u64).step_by(1000) {
            let now = at_us(t);
            s.release(now, &mut out);
            for (lane, n) in [(Lane::Realtime, 0u32), (Lane::Realtime, 1), (Lane::Bulk, 2)] {
                let d = tagged(n as u8, 0);
                if s.try_now(now, lane, d.len()) {
                    out.push_raw(&d, path());
                } else {
                    s.enqueue(now, lane, &d, path());
                }
            }
            for tx in out.iter() {
                if tx.datagram[0] == 2 { bulk += 1 } else { rt += 1 }
            }
            out.clear();
        }
        // 3 s of a 3.8 Mbit/s shaper: 1425 packets; bulk got its 20 %, less
        // the real-time burst of the first 100 ms.
        let total = (rt + bulk) as f64;
        assert!((1350.0..=1450.0).contains(&total), "{rt} + {bulk}");
        assert!(bulk as f64 >= 0.16 * total, "bulk {bulk} of {total}");
        assert!(rt as f64 >= 0.75 * total, "real-time {rt} of {total}");
    }

    #[test]
    fn next_release_says_when_the_head_can_go() {
        let rate = Rate::from_bits(8_000_000).unwrap();
        let mut s = Shaper::new(rate, Time::ZERO);
        let mut out = Transmits::new();
        assert_eq!(s.next_release(), None);
        // Empty the bucket with bulk, then one more waits.
        let mut n = 0;
        while s.try_now(Time::ZERO, Lane::Bulk, 1000) {
            n += 1;
        }
        assert_eq!(n, 3, "a 4 ms bucket at 7.6 Mbit/s holds 3.8 kB");
        s.enqueue(Time::ZERO, Lane::Bulk, &[0; 1000], path());
        let at = s.next_release().unwrap();
        // 1000 - 800 bytes short at 950 kB/s: about 0.2 ms.
        assert!(at > Time::ZERO && at < at_us(300), "{at:?}");
        s.release(at, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.next_release(), None);
        // A link going away drops what waits.
        assert!(!s.try_now(at, Lane::Bulk, 1000));
        s.enqueue(at, Lane::Bulk, &[0; 1000], path());
        s.clear();
        assert_eq!(s.stats().drops[Lane::Bulk.index()], 1);
    }
}
