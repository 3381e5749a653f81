//! The comparison `mpvr sim` prints: the same stream over each link alone,
//! then over all of them through mpvr (policy `all`).

use std::time::Duration;

use super::link::LinkModel;
use super::scenario;
use super::{Dir, StreamReport};

/// What to send.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Packets in the stream.
    pub packets: u64,
    /// Packets per second.
    pub rate_pps: u64,
    /// IP packet size.
    pub size: usize,
    /// Seed of the first run (the others use the following seeds).
    pub seed: u64,
}

/// One line of the comparison.
#[derive(Clone, Debug)]
pub struct Row {
    /// "link 1", ..., or "mpvr (all links)".
    pub label: String,
    /// What arrived.
    pub report: StreamReport,
    /// Copies the links lost (random, burst, blackout, queue), summed over links.
    pub copies_lost: u64,
    /// Copies offered to the links.
    pub copies_sent: u64,
}

/// Run the stream over each link alone, then over all links together.
pub fn compare(links: &[LinkModel], load: Load) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, m) in links.iter().enumerate() {
        rows.push(run(format!("link {} alone", i + 1), std::slice::from_ref(m), load, load.seed + 1 + i as u64));
    }
    rows.push(run(format!("mpvr over {} links", links.len()), links, load, load.seed));
    rows
}

fn run(label: String, links: &[LinkModel], load: Load, seed: u64) -> Row {
    let mut p = scenario::pair(seed, links, &|_| {});
    let interval = Duration::from_secs_f64(1.0 / load.rate_pps.max(1) as f64);
    let s = p.stream(Duration::from_millis(10), interval, load.packets, load.size);
    let worst_delay = links.iter().map(|m| m.delay + Duration::from_secs(2)).max().unwrap_or_default();
    let end = p.sim.stream(s).send_time(load.packets) + worst_delay;
    p.sim.run_until(end);
    let report = p.sim.stream_report(s, p.b);
    let (mut copies_lost, mut copies_sent) = (0, 0);
    for w in &p.wires {
        let c = p.sim.channel(*w, Dir::Forward).stats;
        copies_lost += c.lost + c.blacked_out + c.queue_drops;
        copies_sent += c.offered;
    }
    Row { label, report, copies_lost, copies_sent }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplication_beats_each_link() {
        let a: LinkModel = "delay=20ms,loss=5%".parse().unwrap();
        let b: LinkModel = "delay=40ms,loss=5%,blackout=1s-2s".parse().unwrap();
        let rows = compare(&[a, b], Load { packets: 20_000, rate_pps: 5_000, size: 200, seed: 1 });
        let mpvr = &rows[2].report;
        assert_eq!(mpvr.delivered_twice, 0);
        for r in &rows[..2] {
            assert!(mpvr.lost() * 3 < r.report.lost(), "{} lost {} vs mpvr {}", r.label, r.report.lost(), mpvr.lost());
        }
        assert!(mpvr.latency_percentile(50.0).unwrap() < Duration::from_millis(21));
    }
}
