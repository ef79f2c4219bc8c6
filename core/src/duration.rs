//! Durations as people write them: `500ms`, `30s`, `5m`, `24h`, `7d`, `1.5h`. One parser for
//! flags and configuration files alike.

use std::time::Duration;

/// Parses a number with a unit (`ms`, `s`, `m`, `h`, `d`). A bare number is refused: `30`
/// could mean seconds or minutes.
pub fn parse(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => return Err(format!("{t:?} has no unit; write e.g. \"500ms\", \"30s\", \"5m\", \"24h\" or \"7d\"")),
        other => return Err(format!("{t:?} has the unknown unit {other:?}; use ms, s, m, h or d")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{t:?} is not a duration; write e.g. \"30s\" or \"24h\""))?;
    let secs = value * scale;
    if !secs.is_finite() || secs > 100.0 * 365.0 * 86400.0 {
        return Err(format!("{t:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An exact spelling: `500ms`, `30s`, `5m`, `24h`, `7d` (else seconds with a fraction).
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        if ms < 1000 { format!("{ms}ms") } else { format!("{:.1}s", d.as_secs_f64()) }
    } else {
        let s = d.as_secs();
        match s {
            0 => "0s".into(),
            // Days from two on: "24h" reads better than "1d" for a day.
            s if s >= 2 * 86400 && s.is_multiple_of(86400) => format!("{}d", s / 86400),
            s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
            s if s.is_multiple_of(60) => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_shows() {
        for (input, secs, shown) in [
            ("500ms", 0.5, "500ms"),
            ("30s", 30.0, "30s"),
            ("5m", 300.0, "5m"),
            ("24h", 86400.0, "24h"),
            ("7d", 604800.0, "7d"),
            ("1.5h", 5400.0, "90m"),
            ("0s", 0.0, "0s"),
        ] {
            let d = parse(input).unwrap();
            assert_eq!(d.as_secs_f64(), secs, "{input}");
            assert_eq!(show(d), shown, "{input}");
        }
        for bad in ["30", "5 parsecs", "h", "-1s", "1e400s", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert!(parse("30").unwrap_err().contains("no unit"));
    }
}
