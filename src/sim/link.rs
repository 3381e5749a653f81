//! One direction of a simulated link: delay, jitter, loss (random and
//! Gilbert-Elliott bursts), blackout windows, reordering, duplication,
//! corruption, replay and a rate limit with a drop-tail queue.
//!
//! Every random draw comes from the simulator's seeded generator, in a fixed
//! order, so a run is reproducible from its seed.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::proto::Time;

/// Random delay added to the base delay of each packet.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Jitter {
    /// No jitter.
    #[default]
    None,
    /// Uniform in `[0, max]`.
    Uniform(Duration),
    /// Normal with this standard deviation, centred on 0 and cut at 0 (so
    /// never earlier than the base delay would allow).
    Normal(Duration),
}

/// Gilbert-Elliott two-state burst loss: a good and a bad state, each with
/// its own loss probability; the state changes before each packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    /// P(good -> bad) per packet.
    pub p_good_bad: f64,
    /// P(bad -> good) per packet.
    pub p_bad_good: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Long-run loss rate of this chain.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.p_good_bad / (self.p_good_bad + self.p_bad_good);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// How one direction of a link treats packets. `Default` is a perfect link:
/// no delay, no loss.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkModel {
    /// Base one-way delay.
    pub delay: Duration,
    /// Jitter on top of the base delay.
    pub jitter: Jitter,
    /// Jitter never reorders: a packet never overtakes the one before it.
    pub keep_order: bool,
    /// Independent random loss probability.
    pub loss: f64,
    /// Burst loss (applied instead of `loss` when set).
    pub burst: Option<GilbertElliott>,
    /// Windows `[start, end)` during which every packet entering the link is lost.
    pub blackouts: Vec<(Time, Time)>,
    /// Probability that a packet is held back by `reorder_extra`, past later ones.
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_extra: Duration,
    /// Probability that a packet arrives twice.
    pub duplicate: f64,
    /// Probability that one random bit of a packet is flipped.
    pub corrupt: f64,
    /// Probability that a packet is captured and replayed `replay_after` later.
    pub replay: f64,
    /// Delay of a replayed copy.
    pub replay_after: Duration,
    /// Rate limit in bits per second (`None`: unlimited).
    pub rate_bps: Option<u64>,
    /// Drop-tail queue limit in bytes when rate-limited.
    pub queue_bytes: usize,
    /// The path MTU somewhere along the link: an IPv4 packet (the datagram
    /// with 28 bytes of IP and UDP headers) larger than this is dropped,
    /// silently, as by a router that sends no ICMP (`None`: no limit).
    pub mtu: Option<usize>,
}

impl Default for LinkModel {
    fn default() -> LinkModel {
        LinkModel {
            delay: Duration::ZERO,
            jitter: Jitter::None,
            keep_order: false,
            loss: 0.0,
            burst: None,
            blackouts: Vec::new(),
            reorder: 0.0,
            reorder_extra: Duration::from_millis(5),
            duplicate: 0.0,
            corrupt: 0.0,
            replay: 0.0,
            replay_after: Duration::from_secs(1),
            rate_bps: None,
            queue_bytes: 256 * 1024,
            mtu: None,
        }
    }
}

impl LinkModel {
    /// A perfect link with this one-way delay.
    pub fn delay(d: Duration) -> LinkModel {
        LinkModel { delay: d, ..LinkModel::default() }
    }

    /// Same link with independent loss `p`.
    pub fn with_loss(mut self, p: f64) -> LinkModel {
        self.loss = p;
        self
    }

    /// Same link with jitter.
    pub fn with_jitter(mut self, j: Jitter) -> LinkModel {
        self.jitter = j;
        self
    }

    /// Same link with one more blackout window.
    pub fn with_blackout(mut self, start: Time, end: Time) -> LinkModel {
        self.blackouts.push((start, end));
        self
    }
}

/// What happened to the packets offered to one direction of a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Packets offered.
    pub offered: u64,
    /// Lost to random or burst loss.
    pub lost: u64,
    /// Lost in a blackout.
    pub blacked_out: u64,
    /// Dropped by the full queue.
    pub queue_drops: u64,
    /// Copies that arrived (including duplicates and replays).
    pub arrived: u64,
    /// Extra copies made by duplication.
    pub duplicated: u64,
    /// Copies with a flipped bit.
    pub corrupted: u64,
    /// Replayed copies.
    pub replayed: u64,
    /// Dropped for being larger than the link's MTU.
    pub too_big: u64,
}

/// One copy the link will hand over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handover {
    /// When it arrives.
    pub at: Time,
    /// Flip this bit (index into the datagram's bits) before handing it over.
    pub flip_bit: Option<usize>,
}

/// One direction of a link: its model and state.
#[derive(Clone, Debug)]
pub struct Channel {
    /// The model; may be changed at any time.
    pub model: LinkModel,
    /// Counters.
    pub stats: ChannelStats,
    bad: bool,
    busy_until: Time,
    last_arrival: Time,
}

impl Channel {
    /// A channel in its initial state.
    pub fn new(model: LinkModel) -> Channel {
        Channel { model, stats: ChannelStats::default(), bad: false, busy_until: Time::ZERO, last_arrival: Time::ZERO }
    }

    /// Offer a packet of `len` bytes at `now`; push the copies that will
    /// arrive (none if lost) onto `out`.
    pub fn transit(&mut self, rng: &mut ChaCha8Rng, now: Time, len: usize, out: &mut Vec<Handover>) {
        let m = &self.model;
        self.stats.offered += 1;
        if m.blackouts.iter().any(|&(s, e)| s <= now && now < e) {
            self.stats.blacked_out += 1;
            return;
        }
        if m.mtu.is_some_and(|mtu| len + 28 > mtu) {
            self.stats.too_big += 1;
            return;
        }
        let mut depart = now;
        if let Some(rate) = m.rate_bps.filter(|r| *r > 0) {
            let start = self.busy_until.max(now);
            let backlog_bytes = (start - now).as_secs_f64() * rate as f64 / 8.0;
            if backlog_bytes + len as f64 > m.queue_bytes as f64 {
                self.stats.queue_drops += 1;
                return;
            }
            self.busy_until = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
            depart = self.busy_until;
        }
        let loss = match m.burst {
            Some(ge) => {
                let flip = if self.bad { ge.p_bad_good } else { ge.p_good_bad };
                if rng.random_bool(flip.clamp(0.0, 1.0)) {
                    self.bad = !self.bad;
                }
                if self.bad { ge.loss_bad } else { ge.loss_good }
            }
            None => m.loss,
        };
        if loss > 0.0 && rng.random_bool(loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return;
        }
        let jitter = match m.jitter {
            Jitter::None => Duration::ZERO,
            Jitter::Uniform(max) => max.mul_f64(rng.random::<f64>()),
            Jitter::Normal(sd) => {
                let n = Normal::new(0.0, sd.as_secs_f64()).expect("finite standard deviation");
                Duration::from_secs_f64(n.sample(rng).max(0.0))
            }
        };
        let mut at = depart + m.delay + jitter;
        if m.reorder > 0.0 && rng.random_bool(m.reorder.clamp(0.0, 1.0)) {
            at += m.reorder_extra;
        } else if m.keep_order {
            at = at.max(self.last_arrival);
            self.last_arrival = at;
        }
        let flip_bit = if m.corrupt > 0.0 && rng.random_bool(m.corrupt.clamp(0.0, 1.0)) {
            self.stats.corrupted += 1;
            Some(rng.random_range(0..len.max(1) * 8))
        } else {
            None
        };
        out.push(Handover { at, flip_bit });
        self.stats.arrived += 1;
        if m.duplicate > 0.0 && rng.random_bool(m.duplicate.clamp(0.0, 1.0)) {
            let extra = Duration::from_micros(rng.random_range(0..1000));
            out.push(Handover { at: at + extra, flip_bit });
            self.stats.duplicated += 1;
            self.stats.arrived += 1;
        }
        if m.replay > 0.0 && rng.random_bool(m.replay.clamp(0.0, 1.0)) {
            out.push(Handover { at: at + m.replay_after, flip_bit: None });
            self.stats.replayed += 1;
            self.stats.arrived += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn run(model: LinkModel, n: usize, gap: Duration) -> (Channel, Vec<Handover>) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut ch = Channel::new(model);
        let mut out = Vec::new();
        for i in 0..n {
            ch.transit(&mut rng, Time::ZERO + gap * i as u32, 1000, &mut out);
        }
        (ch, out)
    }

    #[test]
    fn loss_rates_match_the_model() {
        let (ch, out) = run(LinkModel::default().with_loss(0.1), 100_000, Duration::from_micros(10));
        let p = ch.stats.lost as f64 / 100_000.0;
        assert!((p - 0.1).abs() < 0.005, "{p}");
        assert_eq!(out.len() as u64, 100_000 - ch.stats.lost);
        let ge = GilbertElliott { p_good_bad: 0.01, p_bad_good: 0.2, loss_good: 0.0, loss_bad: 0.8 };
        let (ch, _) = run(LinkModel { burst: Some(ge), ..LinkModel::default() }, 200_000, Duration::from_micros(10));
        let p = ch.stats.lost as f64 / 200_000.0;
        assert!((p - ge.mean_loss()).abs() < 0.005, "{p} vs {}", ge.mean_loss());
    }

    #[test]
    fn blackout_rate_and_order() {
        let ms = Duration::from_millis;
        let m = LinkModel::delay(ms(10)).with_blackout(Time::ZERO + ms(100), Time::ZERO + ms(200));
        let (ch, out) = run(m, 300, ms(1));
        assert_eq!(ch.stats.blacked_out, 100);
        assert!(out.iter().all(|d| d.at >= Time::ZERO + ms(10)));
        // 1000-byte packets at 8 Mbit/s take 1 ms each: a 10-packet queue.
        let m = LinkModel { rate_bps: Some(8_000_000), queue_bytes: 10_000, ..LinkModel::default() };
        let (ch, out) = run(m, 100, Duration::ZERO);
        assert_eq!(ch.stats.queue_drops, 90);
        assert_eq!(out.last().unwrap().at, Time::ZERO + ms(10));
        // Order-keeping jitter never reorders.
        let m = LinkModel { keep_order: true, ..LinkModel::delay(ms(5)).with_jitter(Jitter::Normal(ms(3))) };
        let (_, out) = run(m, 1000, Duration::from_micros(100));
        assert!(out.windows(2).all(|w| w[0].at <= w[1].at));
    }
}
