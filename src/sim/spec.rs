//! Link models written as text, for `mpvr sim --link`:
//! `delay=20ms,jitter=5ms,loss=5%` and so on (see [`LinkModel`]'s `FromStr`).

use std::fmt;
use std::str::FromStr;

use super::link::{GilbertElliott, Jitter, LinkModel};
use crate::proto::Time;
use crate::units::{format_duration, parse_duration};

/// A link specification that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("link spec {spec:?}: {what}")]
pub struct SpecError {
    spec: String,
    what: String,
}

/// The keys a link spec understands, for help texts.
pub const SPEC_HELP: &str = "comma-separated key=value: delay=20ms, jitter=5ms (uniform), \
jitter-sd=2ms (normal), loss=5%, burst=5% (Gilbert-Elliott, mean bad run of 5 packets), \
blackout=2s-4s, order=keep (jitter never reorders; default any), reorder=1%, duplicate=1%, corrupt=1%, \
rate=10mbit, queue=64kb";

fn probability(v: &str) -> Option<f64> {
    let p = match v.strip_suffix('%') {
        Some(pct) => pct.parse::<f64>().ok()? / 100.0,
        None => v.parse::<f64>().ok()?,
    };
    (0.0..=1.0).contains(&p).then_some(p)
}

fn scaled(v: &str, units: &[(&str, u64)]) -> Option<u64> {
    let lower = v.to_ascii_lowercase();
    for (suffix, mult) in units {
        if let Some(num) = lower.strip_suffix(suffix) {
            let n: f64 = num.parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0)?;
            return Some((n * *mult as f64) as u64);
        }
    }
    lower.parse().ok()
}

impl FromStr for LinkModel {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<LinkModel, SpecError> {
        let err = |what: String| SpecError { spec: spec.to_string(), what };
        let mut m = LinkModel::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| err(format!("{part:?} is not key=value")))?;
            let bad = |kind: &str| err(format!("{k}={v}: expected {kind}"));
            match k {
                "delay" => m.delay = parse_duration(v).ok_or_else(|| bad("a duration such as 20ms"))?,
                "jitter" => m.jitter = Jitter::Uniform(parse_duration(v).ok_or_else(|| bad("a duration such as 5ms"))?),
                "jitter-sd" => {
                    m.jitter = Jitter::Normal(parse_duration(v).ok_or_else(|| bad("a duration such as 2ms"))?)
                }
                "loss" => m.loss = probability(v).ok_or_else(|| bad("a probability such as 5%"))?,
                "burst" => {
                    let mean = probability(v).ok_or_else(|| bad("a mean loss such as 5%"))?;
                    // Bad runs last 5 packets on average and lose everything;
                    // the good-to-bad rate gives the requested mean loss.
                    let p_bad_good = 0.2;
                    let p_good_bad = if mean >= 1.0 { 1.0 } else { p_bad_good * mean / (1.0 - mean) };
                    m.burst = Some(GilbertElliott { p_good_bad, p_bad_good, loss_good: 0.0, loss_bad: 1.0 });
                }
                "blackout" => {
                    let (s, e) = v.split_once('-').ok_or_else(|| bad("start-end such as 2s-4s"))?;
                    let (s, e) = (parse_duration(s), parse_duration(e));
                    let (Some(s), Some(e)) = (s, e) else {
                        return Err(bad("start-end such as 2s-4s"));
                    };
                    if e <= s {
                        return Err(bad("an end after the start"));
                    }
                    m.blackouts.push((Time::from_duration(s), Time::from_duration(e)));
                }
                "reorder" => m.reorder = probability(v).ok_or_else(|| bad("a probability such as 1%"))?,
                "duplicate" => m.duplicate = probability(v).ok_or_else(|| bad("a probability such as 1%"))?,
                "corrupt" => m.corrupt = probability(v).ok_or_else(|| bad("a probability such as 1%"))?,
                "order" => {
                    m.keep_order = match v {
                        "keep" => true,
                        "any" => false,
                        _ => return Err(bad("keep (jitter never reorders) or any")),
                    }
                }
                "rate" => {
                    let units = [("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1_000), ("bit", 1)];
                    m.rate_bps = Some(scaled(v, &units).ok_or_else(|| bad("a rate such as 10mbit"))?);
                }
                "queue" => {
                    let units = [("mb", 1 << 20), ("kb", 1 << 10), ("b", 1)];
                    let q = scaled(v, &units).ok_or_else(|| bad("a size such as 64kb"))?;
                    m.queue_bytes = usize::try_from(q).map_err(|_| bad("a smaller size"))?;
                }
                _ => return Err(err(format!("unknown key {k:?}; keys are: {SPEC_HELP}"))),
            }
        }
        Ok(m)
    }
}

/// Prints the spec `FromStr` reads back (keys at their defaults are left out).
impl fmt::Display for LinkModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = LinkModel::default();
        let mut parts = vec![format!("delay={}", format_duration(self.delay))];
        match self.jitter {
            Jitter::None => {}
            Jitter::Uniform(j) => parts.push(format!("jitter={}", format_duration(j))),
            Jitter::Normal(j) => parts.push(format!("jitter-sd={}", format_duration(j))),
        }
        let pct = |p: f64| format!("{}%", (p * 1e6).round() / 1e4);
        if self.loss > 0.0 {
            parts.push(format!("loss={}", pct(self.loss)));
        }
        if let Some(ge) = self.burst {
            parts.push(format!("burst={}", pct(ge.mean_loss())));
        }
        if self.keep_order {
            parts.push("order=keep".to_string());
        }
        for (s, e) in &self.blackouts {
            let since = |t: Time| format_duration(t.saturating_since(Time::ZERO));
            parts.push(format!("blackout={}-{}", since(*s), since(*e)));
        }
        for (key, p) in [("reorder", self.reorder), ("duplicate", self.duplicate), ("corrupt", self.corrupt)] {
            if p > 0.0 {
                parts.push(format!("{key}={}", pct(p)));
            }
        }
        if let Some(r) = self.rate_bps {
            parts.push(format!("rate={r}bit"));
            if self.queue_bytes != d.queue_bytes {
                parts.push(format!("queue={}b", self.queue_bytes));
            }
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_every_key() {
        let m: LinkModel =
            "delay=20ms, jitter=5ms,loss=5%,blackout=1s-3s,rate=10mbit,queue=64kb,reorder=0.01".parse().unwrap();
        assert_eq!(m.delay, Duration::from_millis(20));
        assert_eq!(m.jitter, Jitter::Uniform(Duration::from_millis(5)));
        assert!((m.loss - 0.05).abs() < 1e-12);
        assert_eq!(
            m.blackouts,
            vec![(Time::from_duration(Duration::from_secs(1)), Time::from_duration(Duration::from_secs(3)))]
        );
        assert_eq!(m.rate_bps, Some(10_000_000));
        assert_eq!(m.queue_bytes, 65_536);
        assert!((m.reorder - 0.01).abs() < 1e-12);
        assert_eq!(m.to_string().parse::<LinkModel>().unwrap(), m);
        assert_eq!(
            m.to_string(),
            "delay=20ms,jitter=5ms,loss=5%,blackout=1s-3s,reorder=1%,rate=10000000bit,queue=65536b"
        );
        let k: LinkModel = "delay=5ms,jitter-sd=1ms,order=keep".parse().unwrap();
        assert!(k.keep_order);
        assert_eq!(k.to_string().parse::<LinkModel>().unwrap(), k);
        let b: LinkModel = "burst=5%".parse().unwrap();
        assert!((b.burst.unwrap().mean_loss() - 0.05).abs() < 1e-9);
    }

    #[test]
    fn errors_say_what_and_how() {
        let e = "delay=fast".parse::<LinkModel>().unwrap_err().to_string();
        assert!(e.contains("delay=fast") && e.contains("20ms"), "{e}");
        let e = "loss=150%".parse::<LinkModel>().unwrap_err().to_string();
        assert!(e.contains("probability"), "{e}");
        let e = "latency=3ms".parse::<LinkModel>().unwrap_err().to_string();
        assert!(e.contains("unknown key") && e.contains("delay="), "{e}");
        assert!("blackout=3s-1s".parse::<LinkModel>().is_err());
        assert!("delay".parse::<LinkModel>().is_err());
    }
}
