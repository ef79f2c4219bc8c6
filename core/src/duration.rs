//! Durations as people write them: `500ms`, `30s`, `5m`, `24h`, `7d`, `1.5h`. One parser for
//! flags and configuration files alike.

use std::time::Duration;

/// Parses a number with a unit (`ms`, `s`, `m`, `h`, `d`). A bare number is refused: `30`
/// could mean seconds or minutes.
pub fn parse(s: &str) -> Result<Duration, String> {
    parse_in(s, &LONG)
}

/// The short form of timeouts and intervals (deploy specs, the agent's file): `500ms`, `2s`,
/// `1.5m`, `1h`; no days, at most a week.
pub fn parse_short(s: &str) -> Result<Duration, String> {
    parse_in(s, &SHORT)
}

/// What one form accepts, and how its refusals read.
struct Form {
    days: bool,
    max_secs: f64,
    no_unit: &'static str,
    units: &'static str,
    not_a_duration: &'static str,
    too_long: &'static str,
}

const LONG: Form = Form {
    days: true,
    max_secs: 100.0 * 365.0 * 86400.0,
    no_unit: "\"500ms\", \"30s\", \"5m\", \"24h\" or \"7d\"",
    units: "ms, s, m, h or d",
    not_a_duration: "\"30s\" or \"24h\"",
    too_long: "is out of range",
};

const SHORT: Form = Form {
    days: false,
    max_secs: 7.0 * 24.0 * 3600.0,
    no_unit: "\"500ms\", \"5s\" or \"1m\"",
    units: "ms, s, m or h",
    not_a_duration: "\"500ms\" or \"5s\"",
    too_long: "is longer than a week",
};

fn parse_in(s: &str, form: &Form) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" if form.days => 86400.0,
        "" => return Err(format!("{t:?} has no unit; write e.g. {}", form.no_unit)),
        other => return Err(format!("{t:?} has the unknown unit {other:?}; use {}", form.units)),
    };
    let value: f64 =
        number.parse().map_err(|_| format!("{t:?} is not a duration; write e.g. {}", form.not_a_duration))?;
    let secs = value * scale;
    if !secs.is_finite() || secs > form.max_secs {
        return Err(format!("{t:?} {}", form.too_long));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Serde's side of [`parse_short`]: a string with a unit; a bare number is refused with the
/// spelling to use. For `#[serde(deserialize_with = "...")]`.
pub fn de_short<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(ShortVisitor)
}

/// [`de_short`] for an `Option` field (absent means `None` with `#[serde(default)]`).
pub fn de_short_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(ShortVisitor).map(Some)
}

struct ShortVisitor;

impl serde::de::Visitor<'_> for ShortVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration with a unit, such as \"500ms\" or \"5s\"")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_short(v).map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} has no unit; write it as a string with one, e.g. \"{v}s\" or \"{v}ms\"")))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} has no unit; write it as a string with one, e.g. \"{v}s\" or \"{v}ms\"")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} has no unit; write it as a string with one, e.g. \"{v}s\"")))
    }
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

    #[test]
    fn the_short_form_takes_no_days_and_at_most_a_week() {
        for (input, secs) in [("500ms", 0.5), ("1.5s", 1.5), ("2m", 120.0), ("1h", 3600.0), (" 168h ", 604800.0)] {
            assert_eq!(parse_short(input).unwrap().as_secs_f64(), secs, "{input}");
        }
        for (bad, why) in [
            ("5", "no unit"),
            ("s", "not a duration"),
            ("2d", "unknown unit \"d\"; use ms, s, m or h"),
            ("169h", "longer than a week"),
            ("-1s", "unknown unit"),
            ("1e400s", "unknown unit"),
            ("", "no unit"),
        ] {
            let e = parse_short(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn serde_takes_strings_and_refuses_bare_numbers() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "de_short")]
            d: Duration,
            #[serde(default, deserialize_with = "de_short_opt")]
            o: Option<Duration>,
        }
        let t: T = serde_json::from_str(r#"{"d": "2s", "o": "500ms"}"#).unwrap();
        assert_eq!((t.d, t.o), (Duration::from_secs(2), Some(Duration::from_millis(500))));
        let t: T = serde_json::from_str(r#"{"d": "1m"}"#).unwrap();
        assert_eq!(t.o, None);
        for (body, why) in [
            (r#"{"d": 5}"#, "5 has no unit; write it as a string with one, e.g. \"5s\""),
            (r#"{"d": 1.5}"#, "1.5 has no unit"),
            (r#"{"d": "2d"}"#, "unknown unit"),
            (r#"{"d": true}"#, "a duration with a unit"),
        ] {
            let e = serde_json::from_str::<T>(body).err().unwrap().to_string();
            assert!(e.contains(why), "{body}: {e}");
        }
    }
}
