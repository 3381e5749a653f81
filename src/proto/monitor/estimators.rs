//! Estimators of one path: RTT (RFC 6298), interarrival jitter (RFC 3550),
//! one-way delay variation, and the probe loss window.

use std::time::Duration;

/// Probes in the loss window.
pub const LOSS_WINDOW: u32 = 64;
/// Transit samples the one-way delay variation takes its base from.
const OWD_SAMPLES: usize = 32;

/// Smoothed round-trip time and its variation, as RFC 6298 section 2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Duration,
    min: Option<Duration>,
}

impl RttEstimator {
    /// Take one sample.
    pub fn update(&mut self, r: Duration) {
        self.latest = r;
        self.min = Some(self.min.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(srtt) => {
                let diff = srtt.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((srtt * 7 + r) / 8);
            }
        }
    }

    /// Smoothed RTT (`None` before the first sample).
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// RTT variation.
    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// The last sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// The smallest sample.
    pub fn min(&self) -> Option<Duration> {
        self.min
    }
}

/// Interarrival jitter of one direction, as RFC 3550 section 6.4.1:
/// `J += (|D| - J) / 16`, where `D` is the change in transit time between
/// consecutive packets. Transit times may carry any constant clock offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitterEstimator {
    last_transit: Option<i64>,
    jitter_ns: i64,
}

impl JitterEstimator {
    /// Take the transit time (receive time minus send time, in nanoseconds
    /// of two clocks that may be offset) of the next packet.
    pub fn update(&mut self, transit_ns: i64) {
        if let Some(last) = self.last_transit {
            let d = transit_ns.saturating_sub(last).saturating_abs();
            self.jitter_ns += (d - self.jitter_ns) / 16;
        }
        self.last_transit = Some(transit_ns);
    }

    /// The estimate.
    pub fn get(&self) -> Duration {
        Duration::from_nanos(self.jitter_ns.max(0) as u64)
    }
}

/// One-way delay variation of one direction: the last transit time above the
/// smallest of the last 32 (the clock offset cancels out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwdVariation {
    samples: [i64; OWD_SAMPLES],
    len: usize,
    next: usize,
}

impl OwdVariation {
    /// Take one transit time.
    pub fn update(&mut self, transit_ns: i64) {
        self.samples[self.next] = transit_ns;
        self.next = (self.next + 1) % OWD_SAMPLES;
        self.len = (self.len + 1).min(OWD_SAMPLES);
    }

    /// The last transit above the base (`None` before a sample).
    pub fn get(&self) -> Option<Duration> {
        if self.len == 0 {
            return None;
        }
        let last = self.samples[(self.next + OWD_SAMPLES - 1) % OWD_SAMPLES];
        let base = self.samples[..self.len].iter().copied().min().unwrap_or(last);
        Some(Duration::from_nanos(last.saturating_sub(base).max(0) as u64))
    }
}

/// Outcomes of the last [`LOSS_WINDOW`] probes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossWindow {
    lost: u64,
    len: u32,
}

impl LossWindow {
    /// Record the next probe's outcome.
    pub fn push(&mut self, lost: bool) {
        self.lost = (self.lost << 1) | u64::from(lost);
        self.len = (self.len + 1).min(LOSS_WINDOW);
    }

    /// Probes decided in the window.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// No probe decided yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Lost probes in the window.
    pub fn lost(&self) -> u32 {
        let mask = if self.len >= 64 { u64::MAX } else { (1u64 << self.len) - 1 };
        (self.lost & mask).count_ones()
    }

    /// Lost fraction (0 when empty).
    pub fn ratio(&self) -> f64 {
        if self.len == 0 { 0.0 } else { f64::from(self.lost()) / f64::from(self.len) }
    }

    /// Lost fraction of the window without its newest `n` probes (the loss
    /// a path had before a run of `n` losses; 0 when nothing is left).
    pub fn ratio_before(&self, n: u32) -> f64 {
        let n = n.min(self.len);
        let len = self.len - n;
        if len == 0 {
            return 0.0;
        }
        let older = if n >= 64 { 0 } else { self.lost >> n };
        let mask = if len >= 64 { u64::MAX } else { (1u64 << len) - 1 };
        f64::from((older & mask).count_ones()) / f64::from(len)
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        *self = LossWindow::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rtt_follows_rfc6298() {
        let mut r = RttEstimator::default();
        r.update(ms(100));
        assert_eq!((r.srtt(), r.rttvar()), (Some(ms(100)), ms(50)));
        r.update(ms(200));
        // rttvar = 3/4 * 50 + 1/4 * |100 - 200| = 62.5; srtt = 7/8 * 100 + 1/8 * 200 = 112.5
        assert_eq!(r.rttvar(), Duration::from_micros(62_500));
        assert_eq!(r.srtt(), Some(Duration::from_micros(112_500)));
        for _ in 0..200 {
            r.update(ms(20));
        }
        assert!(r.srtt().unwrap().abs_diff(ms(20)) < Duration::from_micros(10));
        assert!(r.rttvar() < Duration::from_micros(10));
        assert_eq!(r.min(), Some(ms(20)));
        assert_eq!(r.latest(), ms(20));
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut j = JitterEstimator::default();
        // A constant offset (clock skew) gives no jitter.
        for _ in 0..10 {
            j.update(5_000_000_000);
        }
        assert_eq!(j.get(), Duration::ZERO);
        // Transit alternating by 16 ms: J converges to 16 ms from below.
        let mut t = 0;
        for i in 0..400 {
            t = if i % 2 == 0 { 16_000_000 } else { 0 };
            j.update(5_000_000_000 + t);
        }
        let _ = t;
        assert!(j.get().abs_diff(ms(16)) < ms(1), "{:?}", j.get());
        // One step of D = 32 ms from J = 0 gives 2 ms.
        let mut j = JitterEstimator::default();
        j.update(0);
        j.update(32_000_000);
        assert_eq!(j.get(), ms(2));
    }

    #[test]
    fn owd_variation_is_above_the_recent_minimum() {
        let mut o = OwdVariation::default();
        assert_eq!(o.get(), None);
        for t in [1_000_000_000i64 + 20_000_000, 1_000_000_000 + 25_000_000, 1_000_000_000 + 21_000_000] {
            o.update(t);
        }
        assert_eq!(o.get(), Some(ms(1)));
        // The base moves on after OWD_SAMPLES samples.
        for _ in 0..OWD_SAMPLES {
            o.update(1_000_000_000 + 30_000_000);
        }
        assert_eq!(o.get(), Some(Duration::ZERO));
    }

    #[test]
    fn loss_window_slides() {
        let mut l = LossWindow::default();
        assert!(l.is_empty());
        for i in 0..100 {
            l.push(i % 4 == 0);
        }
        assert_eq!(l.len(), 64);
        assert_eq!(l.lost(), 16);
        assert!((l.ratio() - 0.25).abs() < 1e-9);
        for _ in 0..64 {
            l.push(false);
        }
        assert_eq!(l.lost(), 0);
        // Four losses after 60 clean probes: before them, nothing was lost.
        for _ in 0..4 {
            l.push(true);
        }
        assert_eq!(l.ratio_before(4), 0.0);
        assert!((l.ratio_before(2) - 2.0 / 62.0).abs() < 1e-9);
        assert_eq!(l.ratio_before(100), 0.0);
    }
}
