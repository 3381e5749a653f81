//! Durations written for people: `250us`, `20ms`, `1.5s` (a bare number is milliseconds).

use std::time::Duration;

/// Read a duration; `None` if it is not one (negative, unknown unit, not a number).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (num, unit) = v.find(|c: char| c.is_ascii_alphabetic()).map_or((v, "ms"), |i| v.split_at(i));
    let n: f64 = num.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// Write a duration the way [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for s in ["250us", "20ms", "3s", "0ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("15"), Some(Duration::from_millis(15)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("5h"), None);
        assert_eq!(parse_duration("fast"), None);
    }
}
