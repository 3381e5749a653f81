//! The link monitor: per-path probes, estimators, passive counts from data,
//! and the path state machine (up, degraded, down, with hysteresis).
//!
//! Active: every path is probed (an authenticated [`Probe`] sealed like data,
//! answered on the path it came in on by a [`ProbeReply`]). A reply gives one
//! RTT sample (RFC 6298 smoothing), one transit time per direction (RFC 3550
//! interarrival jitter, and one-way delay variation above the smallest
//! recent transit: the clocks' offset cancels out of both), and settles the
//! probe's outcome for the loss window. A probe unanswered after
//! [`PathMonitor::probe_timeout`] is lost.
//!
//! Passive: every data packet goes on every path, so the receiver learns per
//! sequence number which paths delivered it ([`Passive`]). Once a packet has
//! had [`SETTLE_AFTER`] for its slower copies, each path is credited with a
//! delivery, a miss, a first arrival or a rescue (the only path that
//! delivered it). A probe reply carries the replier's counts for the path the
//! probe came in on, so each end also sees the other direction.
//!
//! The state machine ([`PathMonitor::evaluate`]): down after `down_after`
//! probes lost in a row (twice as many while packets still arrive on the
//! path) or `silence` with no authenticated packet; up again
//! after `up_after` replies in a row; degraded when loss, RTT or jitter cross
//! their thresholds, and up again only when they fall clearly below them
//! (a quarter of the loss threshold, 80 % of the others); up and degraded swap at
//! most once per half loss window (32 probes). Every change carries its
//! [`Reason`].
//!
//! [`Probe`]: super::wire::MessageType::Probe
//! [`ProbeReply`]: super::wire::MessageType::ProbeReply

use std::fmt;
use std::time::Duration;

mod body;
mod estimators;
mod passive;
mod stall;

pub use body::{MtuProbeBody, NoticeBody, ProbeBody, ReplyBody};
pub use estimators::{JitterEstimator, LOSS_WINDOW, LossWindow, OwdVariation, RttEstimator};
pub use passive::{Credit, PASSIVE_SLOTS, Passive, PassiveCounts, SETTLE_AFTER};
pub use stall::{DataGaps, chance_run};

use super::time::Time;

/// Probes awaiting a reply at once per path.
const OUTSTANDING: usize = 8;
/// A path that turned suspect or down is probed at the fast interval for
/// this long (then at the usual one, so a dead link costs little).
pub const FAST_FOR: Duration = Duration::from_secs(10);
/// A path not heard from for this long is not expected to deliver data (a
/// stale path learned from an old NAT mapping, a link long dead): it is not
/// counted missing.
pub const EXPECT_WITHIN: Duration = Duration::from_secs(5);

/// Probe and state-machine settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MonitorConfig {
    /// Probe interval on a path.
    pub interval: Duration,
    /// Probe interval on a path that delivered data within the last `interval`.
    pub busy_interval: Duration,
    /// Probe interval on a path that is suspect, or went down within [`FAST_FOR`].
    pub fast_interval: Duration,
    /// Probes lost in a row that take a path down.
    pub down_after: u32,
    /// No authenticated packet for this long takes a path down.
    pub silence: Duration,
    /// Replies in a row that bring a path back up.
    pub up_after: u32,
    /// Probe loss (fraction) at which a path is degraded; it is up again below a quarter of it.
    pub degraded_loss: f64,
    /// Smoothed RTT at which a path is degraded (up again below 80 %).
    pub degraded_rtt: Option<Duration>,
    /// Jitter (either direction) at which a path is degraded (up again below 80 %).
    pub degraded_jitter: Option<Duration>,
}

impl Default for MonitorConfig {
    fn default() -> MonitorConfig {
        MonitorConfig {
            interval: Duration::from_millis(200),
            busy_interval: Duration::from_secs(1),
            fast_interval: Duration::from_millis(50),
            down_after: 3,
            silence: Duration::from_millis(1500),
            up_after: 3,
            degraded_loss: 0.05,
            degraded_rtt: None,
            degraded_jitter: None,
        }
    }
}

/// A monitor setting that cannot work.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MonitorConfigError {
    /// Interval too short or too long.
    #[error("probe interval {0:?} is out of range: use 20 ms to 60 s (default 200 ms)")]
    Interval(Duration),
    /// Busy interval shorter than the interval.
    #[error("probe busy_interval {busy:?} is shorter than interval {interval:?}: use at least the interval")]
    BusyInterval {
        /// The busy interval.
        busy: Duration,
        /// The interval.
        interval: Duration,
    },
    /// Fast interval too short, or longer than the interval.
    #[error("probe fast_interval {fast:?} is out of range: use 10 ms up to the interval ({interval:?}); default 50 ms")]
    FastInterval {
        /// The fast interval.
        fast: Duration,
        /// The interval.
        interval: Duration,
    },
    /// A count of zero.
    #[error("probe {0} must be 1 to 100")]
    Count(&'static str),
    /// Silence not longer than the busy interval would take busy paths down.
    #[error("probe silence {silence:?} must be longer than busy_interval {busy:?}")]
    Silence {
        /// The silence.
        silence: Duration,
        /// The busy interval.
        busy: Duration,
    },
    /// Loss threshold out of (0, 1].
    #[error("probe degraded_loss {0} is out of range: use more than 0 % and at most 100 %")]
    Loss(f64),
}

impl MonitorConfig {
    /// Check the settings; nothing uses them until they pass.
    pub fn validate(&self) -> Result<(), MonitorConfigError> {
        if !(Duration::from_millis(20)..=Duration::from_secs(60)).contains(&self.interval) {
            return Err(MonitorConfigError::Interval(self.interval));
        }
        if self.busy_interval < self.interval {
            return Err(MonitorConfigError::BusyInterval { busy: self.busy_interval, interval: self.interval });
        }
        if self.fast_interval < Duration::from_millis(10) || self.fast_interval > self.interval {
            return Err(MonitorConfigError::FastInterval { fast: self.fast_interval, interval: self.interval });
        }
        if !(1..=100).contains(&self.down_after) {
            return Err(MonitorConfigError::Count("down_after"));
        }
        if !(1..=100).contains(&self.up_after) {
            return Err(MonitorConfigError::Count("up_after"));
        }
        if self.silence <= self.busy_interval {
            return Err(MonitorConfigError::Silence { silence: self.silence, busy: self.busy_interval });
        }
        if !(self.degraded_loss > 0.0 && self.degraded_loss <= 1.0) {
            return Err(MonitorConfigError::Loss(self.degraded_loss));
        }
        Ok(())
    }
}

/// Health of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    /// Probes answered, quality within the thresholds.
    Up,
    /// Answering, but loss, RTT or jitter past a threshold.
    Degraded,
    /// Was up or degraded, and the data says it may be dead: it stopped
    /// delivering while its pace said it should, or the peer says so.
    /// Policies treat it as down while fast probes decide.
    Suspect,
    /// Not answering (or its link is down).
    Down,
}

impl Health {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Suspect => "suspect",
            Health::Down => "down",
        }
    }

    /// Up or degraded: policies may use it.
    pub const fn is_alive(self) -> bool {
        matches!(self, Health::Up | Health::Degraded)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a path is in its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No probe has been answered yet.
    NotProbed,
    /// Probes lost in a row; how long since the path's last packet.
    ProbesLost {
        /// Probes lost in a row.
        lost: u32,
        /// Since the last authenticated packet on the path (`None`: never).
        last_packet: Option<Duration>,
    },
    /// No authenticated packet for this long.
    Silent {
        /// Since the last authenticated packet (`None`: never).
        last_packet: Option<Duration>,
    },
    /// Replies in a row, with the smoothed RTT.
    Answering {
        /// Replies in a row.
        replies: u32,
        /// Smoothed RTT.
        rtt: Duration,
    },
    /// Probe loss (per mille) past the threshold.
    Loss {
        /// Lost probes per thousand.
        permille: u32,
    },
    /// Smoothed RTT past the threshold.
    Rtt {
        /// Smoothed RTT.
        rtt: Duration,
    },
    /// Jitter past the threshold.
    Jitter {
        /// The larger of the two directions' jitter.
        jitter: Duration,
    },
    /// Quality back within the thresholds.
    Recovered {
        /// Lost probes per thousand.
        permille: u32,
        /// Smoothed RTT.
        rtt: Duration,
    },
    /// The local link went down or away.
    LinkDown,
    /// Data stopped arriving on it, for longer than its pace, loss and
    /// jitter explain.
    Stalled {
        /// Since its last data packet.
        silent: Duration,
        /// Its usual gap between data packets.
        gap: Duration,
    },
    /// The peer says our data stopped arriving on it.
    PeerSilent {
        /// How long the peer had heard nothing on it.
        silent: Duration,
    },
    /// A suspect path delivered data again.
    DataAgain,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn ago(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("last packet {:.1} s ago", d.as_secs_f64()),
        None => "no packet yet".to_string(),
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Reason::NotProbed => f.write_str("no probe answered yet"),
            Reason::ProbesLost { lost, last_packet } => write!(f, "{lost} probes lost, {}", ago(last_packet)),
            Reason::Silent { last_packet } => write!(f, "silent, {}", ago(last_packet)),
            Reason::Answering { replies, rtt } => write!(f, "{replies} probes answered, rtt {}", ms(rtt)),
            Reason::Loss { permille } => write!(f, "probe loss {:.1} %", f64::from(permille) / 10.0),
            Reason::Rtt { rtt } => write!(f, "rtt {}", ms(rtt)),
            Reason::Jitter { jitter } => write!(f, "jitter {}", ms(jitter)),
            Reason::Recovered { permille, rtt } => {
                write!(f, "recovered: probe loss {:.1} %, rtt {}", f64::from(permille) / 10.0, ms(rtt))
            }
            Reason::LinkDown => f.write_str("local link down"),
            Reason::Stalled { silent, gap } => {
                let missed = (silent.as_nanos() / gap.as_nanos().max(1)) as u64;
                write!(f, "0 of the last {missed} packets, {} silent, usual gap {}", ms(silent), ms(gap))
            }
            Reason::PeerSilent { silent } => write!(f, "the peer received none of our data on it for {}", ms(silent)),
            Reason::DataAgain => f.write_str("data arriving again"),
        }
    }
}

/// A state change of one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// State before.
    pub from: Health,
    /// State now.
    pub to: Health,
    /// Why.
    pub reason: Reason,
}

/// The probes, estimates and state of one path.
#[derive(Clone, Debug)]
pub struct PathMonitor {
    health: Health,
    since: Time,
    reason: Reason,
    next_id: u32,
    outstanding: [Option<(u32, Time)>; OUTSTANDING],
    last_probe: Option<Time>,
    lost_in_row: u32,
    replies_in_row: u32,
    rtt: RttEstimator,
    jitter_out: JitterEstimator,
    jitter_in: JitterEstimator,
    owd_out: OwdVariation,
    owd_in: OwdVariation,
    loss: LossWindow,
    probes_sent: u64,
    replies: u64,
    lost: u64,
    /// The state a suspect path returns to when its suspicion clears.
    before_suspect: Health,
    /// Send time of the newest probe answered.
    last_answered: Option<Time>,
    /// Probes sent when a degraded path's quality last became clearly good.
    clear_since: Option<u64>,
    /// Gaps between data arrivals (passive failure detection).
    gaps: DataGaps,
    /// This end's passive counts (data that came in on this path).
    pub local: PassiveCounts,
    /// The other end's counts (data this end sent on this path), from its replies.
    pub remote: PassiveCounts,
}

impl PathMonitor {
    /// A path not probed yet: down until it answers.
    pub fn new(now: Time) -> PathMonitor {
        PathMonitor {
            health: Health::Down,
            since: now,
            reason: Reason::NotProbed,
            next_id: 1,
            before_suspect: Health::Up,
            last_answered: None,
            clear_since: None,
            gaps: DataGaps::default(),
            outstanding: [None; OUTSTANDING],
            last_probe: None,
            lost_in_row: 0,
            replies_in_row: 0,
            rtt: RttEstimator::default(),
            jitter_out: JitterEstimator::default(),
            jitter_in: JitterEstimator::default(),
            owd_out: OwdVariation::default(),
            owd_in: OwdVariation::default(),
            loss: LossWindow::default(),
            probes_sent: 0,
            replies: 0,
            lost: 0,
            local: PassiveCounts::default(),
            remote: PassiveCounts::default(),
        }
    }

    /// Its state.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Since when it is in that state.
    pub fn since(&self) -> Time {
        self.since
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// RTT estimates.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Jitter toward the peer (this end's probes as the peer received them).
    pub fn jitter_out(&self) -> Duration {
        self.jitter_out.get()
    }

    /// Jitter from the peer (its replies as this end received them).
    pub fn jitter_in(&self) -> Duration {
        self.jitter_in.get()
    }

    /// One-way delay variation toward the peer.
    pub fn owd_out(&self) -> Option<Duration> {
        self.owd_out.get()
    }

    /// One-way delay variation from the peer.
    pub fn owd_in(&self) -> Option<Duration> {
        self.owd_in.get()
    }

    /// The probe loss window.
    pub fn loss(&self) -> &LossWindow {
        &self.loss
    }

    /// Probes sent, answered and lost.
    pub fn probe_counts(&self) -> (u64, u64, u64) {
        (self.probes_sent, self.replies, self.lost)
    }

    /// What the path costs a packet, for ranking paths (`best:N`,
    /// `failover`) and routes: the one-way delay (half the smoothed RTT)
    /// plus twice the jitter plus 10 ms per percent of probe loss. `None`
    /// before the first RTT sample.
    pub fn cost(&self) -> Option<Duration> {
        let srtt = self.rtt.srtt()?;
        let jitter = self.jitter_out().max(self.jitter_in());
        Some(srtt / 2 + jitter * 2 + Duration::from_secs_f64(self.loss.ratio()))
    }

    /// How long an unanswered probe is waited for: the RTO of RFC 6298
    /// without its 1 s floor (srtt + 4 rttvar, at least twice srtt and
    /// 50 ms, at most 2 s; 1 s before any sample).
    pub fn probe_timeout(&self) -> Duration {
        match self.rtt.srtt() {
            None => Duration::from_secs(1),
            Some(srtt) => {
                (srtt + self.rtt.rttvar() * 4).max(srtt * 2).max(Duration::from_millis(50)).min(Duration::from_secs(2))
            }
        }
    }

    /// When the next probe is due; `busy`: the path delivered data lately.
    /// A path suspect, down for less than [`FAST_FOR`], or whose last probe
    /// was lost, is probed at `fast_interval` whatever its traffic.
    pub fn next_probe(&self, cfg: &MonitorConfig, busy: bool) -> Time {
        let Some(last) = self.last_probe else { return Time::ZERO };
        let fast = match self.health {
            Health::Suspect => true,
            Health::Down => last < self.since + FAST_FOR,
            // Its last probe was lost: whether that was chance or the
            // path is known sooner (a path whose traffic all goes one way
            // has only its probes to tell).
            Health::Up | Health::Degraded => self.lost_in_row > 0,
        };
        let every = if fast {
            cfg.fast_interval
        } else if busy {
            cfg.busy_interval
        } else {
            cfg.interval
        };
        last + every
    }

    /// The path is suspect for `reason` (if it was up or degraded).
    pub fn suspect(&mut self, now: Time, reason: Reason) -> Option<Change> {
        if !self.health.is_alive() {
            return None;
        }
        self.before_suspect = self.health;
        self.set(now, Health::Suspect, reason)
    }

    /// A data packet (first or later copy) arrived on the path at `now`. A
    /// path suspect because its data had stalled is itself again.
    pub fn on_data(&mut self, now: Time) -> Option<Change> {
        self.gaps.on_data(now);
        if self.health == Health::Suspect && matches!(self.reason, Reason::Stalled { .. }) {
            let to = self.before_suspect;
            return self.set(now, to, Reason::DataAgain);
        }
        None
    }

    /// The loss the stall detector allows for: the probes' round-trip loss.
    fn loss_estimate(&self) -> f64 {
        self.loss.ratio()
    }

    /// When the path's data would have stalled (`None`: it carries no
    /// steady data, is not up or degraded, or the stall was reported).
    pub fn next_stall(&self) -> Option<Time> {
        self.health.is_alive().then(|| self.gaps.deadline(self.loss_estimate())).flatten()
    }

    /// Whether data arrived on it within its allowance of `now`.
    pub fn data_active(&self, now: Time) -> bool {
        self.gaps.active(now, self.loss_estimate())
    }

    /// Up or degraded with its data stalled: a stall that siblings' data
    /// may yet show to be this path's failure.
    pub fn stall_pending(&self) -> bool {
        self.health.is_alive() && self.gaps.is_stalled()
    }

    /// The usual gap between its data packets, and when the last arrived.
    pub fn data_pace(&self) -> (Option<Duration>, Option<Time>) {
        (self.gaps.gap(), self.gaps.last())
    }

    /// The silence it may show before its data has stalled.
    pub fn allowance(&self) -> Option<Duration> {
        self.gaps.allow(self.loss_estimate())
    }

    /// Packets in a row it may lose by chance, at its measured loss.
    pub fn chance_run(&self) -> u32 {
        chance_run(self.loss_estimate())
    }

    /// A stall of its data at `now`, reported once: the silence and the usual gap.
    pub fn stalled(&mut self, now: Time) -> Option<(Duration, Duration)> {
        if !self.health.is_alive() {
            return None;
        }
        let p = self.loss_estimate();
        let silent = self.gaps.stalled(now, p)?;
        Some((silent, self.gaps.gap().unwrap_or_default()))
    }

    /// When the oldest unanswered probe times out.
    pub fn next_loss(&self) -> Option<Time> {
        let timeout = self.probe_timeout();
        self.outstanding.iter().flatten().map(|&(_, t)| t + timeout).min()
    }

    /// When silence would take the path down (`None` if down already).
    pub fn next_silence(&self, cfg: &MonitorConfig, last_rx: Option<Time>) -> Option<Time> {
        (self.health != Health::Down).then(|| last_rx.unwrap_or(self.since) + cfg.silence)
    }

    /// A probe goes out now: its id. The oldest outstanding one is given up
    /// (counted lost) if all slots are taken.
    pub fn sent_probe(&mut self, now: Time) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.sent_probe_as(now, id);
        id
    }

    /// A probe with `id` goes out now (ids given by the bundle, unique
    /// across its paths, so a reply to a path that was replaced matches
    /// nothing). The oldest outstanding one is given up (counted lost) if
    /// all slots are taken.
    pub fn sent_probe_as(&mut self, now: Time, id: u32) {
        self.last_probe = Some(now);
        self.probes_sent += 1;
        let slot = match self.outstanding.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                let oldest = (0..OUTSTANDING).min_by_key(|&i| self.outstanding[i].map(|(_, t)| t)).unwrap_or(0);
                self.outstanding[oldest] = None;
                self.record_loss();
                oldest
            }
        };
        self.outstanding[slot] = Some((id, now));
    }

    fn record_loss(&mut self) {
        self.lost += 1;
        self.lost_in_row += 1;
        self.replies_in_row = 0;
        if self.health != Health::Down {
            self.loss.push(true);
        }
    }

    /// Give up probes unanswered for [`PathMonitor::probe_timeout`].
    pub fn expire(&mut self, now: Time) {
        let timeout = self.probe_timeout();
        for i in 0..OUTSTANDING {
            if let Some((_, sent)) = self.outstanding[i]
                && sent + timeout <= now
            {
                self.outstanding[i] = None;
                self.record_loss();
            }
        }
    }

    /// A reply came in at `now` (this end's clock): update the estimates.
    /// False if it answers no outstanding probe (late, or a stray).
    pub fn on_reply(&mut self, now: Time, reply: &ReplyBody) -> bool {
        let Some(slot) = self.outstanding.iter().position(|o| o.is_some_and(|(id, _)| id == reply.probe.id)) else {
            return false;
        };
        let Some((_, sent)) = self.outstanding[slot].take() else { return false };
        if sent.as_nanos() != reply.probe.sent {
            return false;
        }
        self.rtt.update(now - sent);
        self.last_answered = Some(self.last_answered.map_or(sent, |t| t.max(sent)));
        let out = reply.received as i64 - sent.as_nanos() as i64;
        let back = now.as_nanos() as i64 - reply.received as i64;
        self.jitter_out.update(out);
        self.jitter_in.update(back);
        self.owd_out.update(out);
        self.owd_in.update(back);
        if self.health != Health::Down {
            self.loss.push(false);
        }
        self.replies += 1;
        self.replies_in_row += 1;
        self.lost_in_row = 0;
        // Counters only grow; an older reply never moves them back.
        if reply.counts.delivered + reply.counts.missing >= self.remote.delivered + self.remote.missing {
            self.remote = reply.counts;
        }
        true
    }

    /// The local link went down: the path is down, and its probes void.
    pub fn link_down(&mut self, now: Time) -> Option<Change> {
        self.outstanding = [None; OUTSTANDING];
        self.replies_in_row = 0;
        self.set(now, Health::Down, Reason::LinkDown)
    }

    fn set(&mut self, now: Time, to: Health, reason: Reason) -> Option<Change> {
        if to == self.health {
            return None;
        }
        let from = self.health;
        self.health = to;
        self.since = now;
        self.clear_since = None;
        self.reason = reason;
        Some(Change { from, to, reason })
    }

    fn quality(&self, cfg: &MonitorConfig, leaving: bool) -> Option<Reason> {
        // Entering degraded needs the threshold; leaving it needs clearly less.
        let (loss_f, f) = if leaving { (0.25, 0.8) } else { (1.0, 1.0) };
        let enough = self.loss.len() >= LOSS_WINDOW / 2;
        let ratio = self.loss.ratio();
        if enough && ratio >= cfg.degraded_loss * loss_f {
            return Some(Reason::Loss { permille: (ratio * 1000.0).round() as u32 });
        }
        if let (Some(limit), Some(srtt)) = (cfg.degraded_rtt, self.rtt.srtt())
            && srtt >= limit.mul_f64(f)
        {
            return Some(Reason::Rtt { rtt: srtt });
        }
        let jitter = self.jitter_out().max(self.jitter_in());
        if let Some(limit) = cfg.degraded_jitter
            && jitter >= limit.mul_f64(f)
        {
            return Some(Reason::Jitter { jitter });
        }
        None
    }

    /// Run the state machine at `now`; `last_rx`: the path's last
    /// authenticated packet. Returns the change, if any.
    pub fn evaluate(&mut self, now: Time, cfg: &MonitorConfig, last_rx: Option<Time>) -> Option<Change> {
        let last_packet = last_rx.map(|t| now - t);
        match self.health {
            Health::Up | Health::Degraded | Health::Suspect => {
                // A path the peer is still heard on needs twice the evidence:
                // on a lossy path a few probes lost in a row are chance (at
                // 10 % round-trip loss, 3 in a row happen once per 1000
                // probes), while a dead one also falls silent. One-way
                // failures, where only probes tell, are still caught.
                let heard = last_rx.is_some_and(|t| now - t < cfg.interval * 2);
                // And on a path that loses probes by chance, at least as
                // many in a row as its loss before this run makes a
                // one-in-a-million run.
                let by_chance = chance_run(self.loss.ratio_before(self.lost_in_row));
                let needed = if heard { cfg.down_after * 2 } else { cfg.down_after }.max(by_chance);
                if self.lost_in_row >= needed {
                    return self.set(now, Health::Down, Reason::ProbesLost { lost: self.lost_in_row, last_packet });
                }
                if last_rx.unwrap_or(self.since) + cfg.silence <= now {
                    return self.set(now, Health::Down, Reason::Silent { last_packet });
                }
                if self.health == Health::Suspect {
                    // A probe sent since the suspicion was answered: the path works.
                    if self.last_answered.is_some_and(|t| t >= self.since) {
                        let (to, rtt) = (self.before_suspect, self.rtt.srtt().unwrap_or_default());
                        return self.set(now, to, Reason::Answering { replies: self.replies_in_row, rtt });
                    }
                    return None;
                }
                // Up and degraded swap only after half a loss window in the
                // state: loss near the threshold does not make it flap.
                if now - self.since < cfg.interval * (LOSS_WINDOW / 2) {
                    return None;
                }
                if self.health == Health::Up {
                    let bad = self.quality(cfg, false)?;
                    self.set(now, Health::Degraded, bad)
                } else if self.quality(cfg, true).is_none() {
                    // Clearly below the thresholds, and for a whole loss
                    // window of probes: on a path whose loss sits above the
                    // threshold a clean window is chance, two in a row are not.
                    let clear = *self.clear_since.get_or_insert(self.probes_sent);
                    if self.probes_sent - clear < u64::from(LOSS_WINDOW) {
                        return None;
                    }
                    let permille = (self.loss.ratio() * 1000.0).round() as u32;
                    let rtt = self.rtt.srtt().unwrap_or_default();
                    self.set(now, Health::Up, Reason::Recovered { permille, rtt })
                } else {
                    self.clear_since = None;
                    None
                }
            }
            Health::Down => {
                if self.replies_in_row < cfg.up_after {
                    return None;
                }
                // Losses while down say nothing about the path now.
                self.loss.clear();
                let rtt = self.rtt.srtt().unwrap_or_default();
                self.set(now, Health::Up, Reason::Answering { replies: self.replies_in_row, rtt })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drive a monitor with probes every `interval`, each answered after
    /// `rtt` unless `lost(i)`.
    fn drive(
        m: &mut PathMonitor,
        cfg: &MonitorConfig,
        start: Time,
        probes: u32,
        rtt: Duration,
        lost: impl Fn(u32) -> bool,
    ) -> Vec<(Time, Change)> {
        let mut changes = vec![];
        // The last reply before `start` (drives follow each other).
        let mut last_rx = (m.replies > 0).then(|| start - Duration::from_millis(200) + rtt);
        for i in 0..probes {
            let now = start + cfg.interval * i;
            m.expire(now);
            let id = m.sent_probe(now);
            if !lost(i) {
                let at = now + rtt;
                let reply = ReplyBody {
                    probe: ProbeBody { id, path: 0, sent: now.as_nanos(), down_kbps: 0 },
                    received: (now + rtt / 2).as_nanos(),
                    counts: PassiveCounts::default(),
                };
                assert!(m.on_reply(at, &reply));
                last_rx = Some(at);
                if let Some(c) = m.evaluate(at, cfg, last_rx) {
                    changes.push((at, c));
                }
            }
            let mid = now + (cfg.interval - Duration::from_nanos(1));
            m.expire(mid);
            if let Some(c) = m.evaluate(mid, cfg, last_rx) {
                changes.push((mid, c));
            }
        }
        changes
    }

    #[test]
    fn state_machine_goes_down_and_up_with_hysteresis() {
        let cfg = MonitorConfig::default();
        let mut m = PathMonitor::new(Time::ZERO);
        assert_eq!(m.health(), Health::Down);
        // 20 ms RTT: up after 3 replies.
        let ch = drive(&mut m, &cfg, Time::ZERO, 10, ms(20), |_| false);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].1.to, Health::Up);
        assert_eq!(ch[0].0, Time::ZERO + ms(400) + ms(20));
        assert!(ch[0].1.reason.to_string().contains("3 probes answered, rtt 20.0 ms"), "{}", ch[0].1.reason);
        // A blackout: down once 3 probes are lost, i.e. within
        // down_after * interval + timeout of its start.
        let start = Time::ZERO + ms(2000);
        let ch = drive(&mut m, &cfg, start, 10, ms(20), |i| i < 6);
        assert_eq!(ch[0].1.to, Health::Down);
        assert!(ch[0].0 - start <= cfg.interval * cfg.down_after + m.probe_timeout());
        assert!(ch[0].1.reason.to_string().starts_with("3 probes lost, last packet"), "{}", ch[0].1.reason);
        assert_eq!(ch[1].1.to, Health::Up);
        assert_eq!(ch.len(), 2);
        // One lost probe in a row of answered ones changes nothing.
        let ch = drive(&mut m, &cfg, start + ms(4000), 20, ms(20), |i| i == 5);
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn degraded_on_loss_and_back_only_well_below() {
        let cfg = MonitorConfig { degraded_rtt: Some(ms(100)), ..MonitorConfig::default() };
        let mut m = PathMonitor::new(Time::ZERO);
        drive(&mut m, &cfg, Time::ZERO, 5, ms(20), |_| false);
        assert_eq!(m.health(), Health::Up);
        // 10 % loss (never two in a row): degraded, not down.
        let ch = drive(&mut m, &cfg, Time::ZERO + ms(1000), 64, ms(20), |i| i % 10 == 3);
        assert_eq!(ch.iter().map(|c| c.1.to).collect::<Vec<_>>(), vec![Health::Degraded]);
        assert!(matches!(ch[0].1.reason, Reason::Loss { .. }));
        // Loss back to 0: up again once the window has held less than
        // 1.25 % for a whole window of probes (a clean window alone is not
        // enough: on a lossy path it happens by chance).
        let ch = drive(&mut m, &cfg, Time::ZERO + ms(20_000), 64, ms(20), |_| false);
        assert!(ch.is_empty(), "{ch:?}");
        let ch = drive(&mut m, &cfg, Time::ZERO + ms(40_000), 64, ms(20), |_| false);
        assert_eq!(ch.iter().map(|c| c.1.to).collect::<Vec<_>>(), vec![Health::Up]);
        assert!(m.loss().ratio() < 0.0125);
        // RTT past 100 ms: degraded; 90 ms is not clearly below: stays.
        drive(&mut m, &cfg, Time::ZERO + ms(60_000), 40, ms(120), |_| false);
        assert_eq!(m.health(), Health::Degraded);
        assert!(matches!(m.reason(), Reason::Rtt { .. }));
        drive(&mut m, &cfg, Time::ZERO + ms(80_000), 80, ms(90), |_| false);
        assert_eq!(m.health(), Health::Degraded);
        drive(&mut m, &cfg, Time::ZERO + ms(100_000), 80, ms(50), |_| false);
        assert_eq!(m.health(), Health::Up);
    }

    #[test]
    fn silence_takes_a_path_down() {
        let cfg = MonitorConfig::default();
        let mut m = PathMonitor::new(Time::ZERO);
        drive(&mut m, &cfg, Time::ZERO, 5, ms(20), |_| false);
        let last = Some(Time::ZERO + ms(820));
        assert_eq!(m.evaluate(Time::ZERO + ms(2000), &cfg, last), None);
        let c = m.evaluate(Time::ZERO + ms(2320), &cfg, last).expect("down");
        assert_eq!(c.to, Health::Down);
        assert_eq!(c.reason.to_string(), "silent, last packet 1.5 s ago");
        assert_eq!(m.next_silence(&cfg, last), None);
    }
}
