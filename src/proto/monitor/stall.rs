//! Passive failure detection: a path that carries data at a steady pace and
//! falls silent for longer than its pace, its loss and its jitter explain
//! has stalled.
//!
//! Per path, the gaps between data arrivals are smoothed as RFC 6298 does
//! RTT samples (mean with gain 1/8, mean deviation with gain 1/4). Once
//! [`ARM_AFTER`] gaps are known, the path is expected to deliver again
//! within
//!
//! ```text
//! allow = K x gap + 4 x deviation + STALL_FLOOR
//! K     = ceil(ln(FALSE_ALARM) / ln(p)),  p = the path's loss, at least 1 %
//! ```
//!
//! that is: K packets in a row lost by chance happen less than once in
//! [`FALSE_ALARM`] packets at the path's own loss rate, and the jitter seen
//! in the gaps is allowed on top. At 100 packets/s on a clean path with a
//! few ms of jitter that is about 60 ms; at 1 000 packets/s about 25 ms; at
//! 5 % loss and 20 ms of jitter about 110 ms. A silence longer than that is
//! reported ([`DataGaps::stalled`]), and again at twice, four times ... the
//! allowance until [`REPORT_FOR`], or until data arrives again. A gap
//! longer than [`PAUSE`] is the sender pausing, not a sample: the estimate
//! starts over.

use std::time::Duration;

use crate::proto::time::Time;

/// Gaps seen before the detector is armed.
pub const ARM_AFTER: u32 = 8;
/// How rare a run of chance losses that looks like a stall may be.
pub const FALSE_ALARM: f64 = 1e-6;
/// Added to every allowance (scheduling, batching: a receiver on a loaded
/// 2-core host was seen to read one link 13 ms behind the other).
pub const STALL_FLOOR: Duration = Duration::from_millis(20);
/// A gap this long is a pause of the sender: the estimate starts over.
pub const PAUSE: Duration = Duration::from_secs(1);
/// A stall is reported again, less and less often, until it is this long.
pub const REPORT_FOR: Duration = Duration::from_secs(3);

/// The gaps between data arrivals on one path.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DataGaps {
    last: Option<Time>,
    gap_ns: f64,
    dev_ns: f64,
    samples: u32,
    /// Times the current silence has been reported.
    reported: u32,
}

/// Packets in a row a path may lose by chance at loss rate `p`.
pub fn chance_run(p: f64) -> u32 {
    let p = p.clamp(0.01, 0.5);
    (FALSE_ALARM.ln() / p.ln()).ceil() as u32
}

impl DataGaps {
    /// A data packet arrived at `now`; true if it ends a reported silence.
    pub fn on_data(&mut self, now: Time) -> bool {
        if let Some(last) = self.last {
            let g = now - last;
            if g >= PAUSE || self.reported > 0 {
                self.samples = 0;
            } else {
                let g = g.as_nanos() as f64;
                if self.samples == 0 {
                    self.gap_ns = g;
                    self.dev_ns = g / 2.0;
                } else {
                    self.dev_ns += ((g - self.gap_ns).abs() - self.dev_ns) / 4.0;
                    self.gap_ns += (g - self.gap_ns) / 8.0;
                }
                self.samples = self.samples.saturating_add(1);
            }
        }
        self.last = Some(now);
        std::mem::take(&mut self.reported) > 0
    }

    /// The mean gap between arrivals, once armed.
    pub fn gap(&self) -> Option<Duration> {
        (self.samples >= ARM_AFTER).then(|| Duration::from_nanos(self.gap_ns as u64))
    }

    /// The silence a path with loss `p` may show before it has stalled.
    pub fn allow(&self, p: f64) -> Option<Duration> {
        self.gap()?;
        let k = f64::from(chance_run(p));
        Some(Duration::from_nanos((k * self.gap_ns + 4.0 * self.dev_ns) as u64) + STALL_FLOOR)
    }

    /// When the current silence becomes a stall, or, once it is one, when
    /// it is reported again: at 1, 2, 3, 4, then 8, 16, ... times the
    /// allowance, up to [`REPORT_FOR`] of silence (`None`: not armed, or
    /// reported enough). The first reports come often: the sender can only
    /// judge one once its own next packet should have arrived.
    pub fn deadline(&self, p: f64) -> Option<Time> {
        let allow = self.allow(p)?;
        let r = self.reported.min(20);
        let wait = allow.saturating_mul(if r < 4 { r + 1 } else { 1 << (r - 1) });
        (wait <= REPORT_FOR).then(|| self.last.map(|l| l + wait)).flatten()
    }

    /// The current silence was reported as a stall (and no data came since).
    pub fn is_stalled(&self) -> bool {
        self.reported > 0
    }

    /// When its last data packet arrived.
    pub fn last(&self) -> Option<Time> {
        self.last
    }

    /// Whether the path delivered data within its allowance of `now`.
    pub fn active(&self, now: Time, p: f64) -> bool {
        self.reported == 0 && self.deadline(p).is_some_and(|d| now < d)
    }

    /// The silence so far if it is a stall due to be reported (then it is):
    /// once when the allowance runs out, then again on the schedule of
    /// [`DataGaps::deadline`] (the sender may have paused when it was first
    /// reported).
    pub fn stalled(&mut self, now: Time, p: f64) -> Option<Duration> {
        let d = self.deadline(p)?;
        if now < d {
            return None;
        }
        // Once per doubling, however late this is asked.
        self.reported += 1;
        while self.deadline(p).is_some_and(|d| d <= now) {
            self.reported += 1;
        }
        self.last.map(|l| now - l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    #[test]
    fn chance_runs_follow_the_loss() {
        assert_eq!(chance_run(0.0), 3);
        assert_eq!(chance_run(0.05), 5);
        assert_eq!(chance_run(0.1), 6);
        assert_eq!(chance_run(0.2), 9);
        assert_eq!(chance_run(0.9), 20);
    }

    #[test]
    fn a_steady_stream_that_stops_is_a_stall_once() {
        let mut g = DataGaps::default();
        for i in 0..5 {
            g.on_data(at(10 * i));
        }
        assert_eq!(g.deadline(0.0), None, "not armed yet");
        for i in 5..50 {
            assert!(!g.on_data(at(10 * i)));
        }
        // 10 ms gaps, no deviation: 3 x 10 + 20 ms.
        let allow = g.allow(0.0).unwrap();
        assert!(allow.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1), "{allow:?}");
        assert_eq!(g.stalled(at(490 + 49), 0.0), None);
        assert_eq!(g.stalled(at(490 + 51), 0.0), Some(Duration::from_millis(51)));
        assert_eq!(g.stalled(at(490 + 80), 0.0), None, "reported once per step");
        assert_eq!(g.stalled(at(490 + 101), 0.0), Some(Duration::from_millis(101)));
        assert_eq!(g.stalled(at(490 + 151), 0.0), Some(Duration::from_millis(151)));
        assert_eq!(g.stalled(at(490 + 201), 0.0), Some(Duration::from_millis(201)));
        assert_eq!(g.stalled(at(490 + 300), 0.0), None);
        assert_eq!(g.stalled(at(490 + 401), 0.0), Some(Duration::from_millis(401)));
        let mut n = 5;
        while g.stalled(at(490 + 5_000), 0.0).is_some() {
            n += 1;
        }
        assert!(n < 10 && g.deadline(0.0).is_none(), "reports stop after REPORT_FOR: {n}");
        assert!(g.on_data(at(600)), "data ends the reported silence");
        assert_eq!(g.deadline(0.0), None, "and the estimate starts over");
    }

    #[test]
    fn jitter_and_loss_widen_the_allowance() {
        let mut clean = DataGaps::default();
        let mut rough = DataGaps::default();
        for i in 0..100u64 {
            clean.on_data(at(10 * i));
            rough.on_data(at(10 * i + (i * i * 31 + i * 17) % 20));
        }
        let (c, r) = (clean.allow(0.0).unwrap(), rough.allow(0.1).unwrap());
        assert!(r > c * 2, "{c:?} {r:?}");
        // A pause of the sender is not a sample.
        clean.on_data(at(10 * 100 + 5_000));
        assert_eq!(clean.gap(), None);
    }
}
