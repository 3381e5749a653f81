//! Virtual-or-real time as the core sees it.
//!
//! The core never reads a clock: every entry point takes `now: Time`. A `Time`
//! is a count of nanoseconds since an epoch chosen by the caller (the daemon
//! uses its start, the simulator uses zero). Only differences are meaningful.

use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::time::Duration;

/// A point in time, in nanoseconds since a caller-chosen epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(0);

    /// A time `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// A time `d` after the epoch (saturating at the far future).
    pub fn from_duration(d: Duration) -> Time {
        Time(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(d))
    }
}

impl AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    /// Saturating at the epoch.
    fn sub(self, d: Duration) -> Time {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_sub(d))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    /// Saturating difference: zero if `rhs` is later.
    fn sub(self, rhs: Time) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.6}s", self.0 as f64 / 1e9)
    }
}

/// `avg` moved 1/`n` of the way toward `sample` (an exponentially weighted
/// mean of durations, without going through floats).
pub fn smooth(avg: Duration, sample: Duration, n: u32) -> Duration {
    avg + sample.saturating_sub(avg) / n - avg.saturating_sub(sample) / n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_nanos(10);
        assert_eq!(t + Duration::from_nanos(5), Time::from_nanos(15));
        assert_eq!(t - Time::from_nanos(20), Duration::ZERO);
        assert_eq!(Time::from_nanos(u64::MAX) + Duration::from_secs(1), Time::from_nanos(u64::MAX));
        assert_eq!(Time::from_duration(Duration::from_millis(2)).as_nanos(), 2_000_000);
    }
}
