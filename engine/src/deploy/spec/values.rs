//! The values a spec is written with: durations, memory sizes, restart policies, `http://`
//! targets and env files, with their serde helpers. Every parser answers with a message that
//! says what to write instead.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use crate::docker::RestartPolicy;

/// A value that must not be printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that hands it to the container.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A value that failed validation: `{field}: {message}`, where the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending setting (`ports`, `health.path`, `traffic.driver`...); the file or line
    /// for errors that are not about one setting.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { field: field.into(), message: message.into() }
    }
}

pub(super) fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn check_volume(volume: &str) -> Result<(), SpecError> {
    let parts: Vec<&str> = volume.split(':').collect();
    let ok = matches!(parts.len(), 2 | 3) && !parts[0].is_empty() && parts[1].starts_with('/');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            "volumes",
            format!(
                "{volume:?} is not SOURCE:/container/path[:options]; e.g. \"/srv/web/data:/data\" or \"web-cache:/cache:ro\""
            ),
        ))
    }
}

/// Reads a `KEY=VALUE` file. Values are taken literally (no quote removal, as Docker's
/// `--env-file` does). Errors name the line, never its content: it may hold a secret.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, Secret)>, SpecError> {
    let field = format!("env_file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecError::new(&field, format!("cannot read it ({e}); create it or fix env_file (KEY=VALUE lines)"))
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(SpecError::new(&field, format!("line {} is not KEY=VALUE; fix or remove it", n + 1)));
        };
        let key = key.trim_end();
        if !is_env_key(key) {
            return Err(SpecError::new(
                &field,
                format!("line {} does not start with a variable name (letters, digits and '_'); fix it", n + 1),
            ));
        }
        out.push((key.to_owned(), Secret::new(value)));
    }
    Ok(out)
}

/// `http://host:port/path`: where `verify_url` sends its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    /// Starts with `/`, query included.
    pub path: String,
}

impl HttpTarget {
    /// Parses an `http://` URL (no TLS, no user info).
    pub fn parse_url(url: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("{url:?} {why}; write http://HOST:PORT/PATH, e.g. http://127.0.0.1:80/"));
        let Some(rest) = url.strip_prefix("http://") else {
            return bad("is not an http:// URL");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return bad("has user info");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, "")) => (h, 80),
                Some((h, p)) => match p.strip_prefix(':').and_then(|p| p.parse::<u16>().ok()) {
                    Some(port) => (h, port),
                    None => return bad("has a bad port"),
                },
                None => return bad("has an unclosed '['"),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => match p.parse::<u16>() {
                    Ok(port) => (h, port),
                    Err(_) => return bad("has a bad port"),
                },
                None => (authority, 80),
            }
        };
        if host.is_empty() || port == 0 || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("is not a usable address");
        }
        Ok(HttpTarget { host: host.to_owned(), port, path: path.to_owned() })
    }
}

/// `500ms`, `2s`, `1.5m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "" => return Err(format!("{s:?} has no unit; write e.g. \"500ms\", \"5s\" or \"1m\"")),
        other => return Err(format!("{s:?} has the unknown unit {other:?}; use ms, s, m or h")),
    };
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration; write e.g. \"500ms\" or \"5s\""))?;
    let secs = value * scale;
    if !secs.is_finite() || secs > 7.0 * 24.0 * 3600.0 {
        return Err(format!("{s:?} is longer than a week"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration for messages: `500ms`, `2s`, `1.5s`.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 && d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() != 0 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// `512m`, `1g`, `64k`, `1048576` (bytes); binary units, an optional `b`/`ib` suffix.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower.find(|c: char| !c.is_ascii_digit()).unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let unit = unit.trim();
    let unit = unit.strip_suffix("ib").or_else(|| unit.strip_suffix('b')).unwrap_or(unit);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("{s:?} is not a memory size; write e.g. \"256m\" or \"1g\"")),
    };
    let n: u64 = number.parse().map_err(|_| format!("{s:?} is not a memory size; write e.g. \"256m\" or \"1g\""))?;
    n.checked_mul(scale).ok_or_else(|| format!("{s:?} is too large"))
}

/// `no`, `always`, `unless-stopped`, `on-failure`, `on-failure:N`.
pub fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    match s {
        "no" => Ok(RestartPolicy::No),
        "always" => Ok(RestartPolicy::Always),
        "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
        "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: 0 }),
        other => match other.strip_prefix("on-failure:").and_then(|n| n.parse().ok()) {
            Some(max_retries) => Ok(RestartPolicy::OnFailure { max_retries }),
            None => Err(format!(
                "{other:?} is not a restart policy; use \"no\", \"always\", \"unless-stopped\" or \"on-failure[:N]\""
            )),
        },
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration with a unit, such as \"500ms\" or \"5s\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} has no unit; write it as a string with one, e.g. \"{v}s\" or \"{v}ms\"")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} has no unit; write it as a string with one, e.g. \"{v}s\" or \"{v}ms\"")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        Err(E::custom(format!("{v} has no unit; write it as a string with one, e.g. \"{v}s\"")))
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    d.deserialize_any(DurationVisitor).map(Some)
}

struct MemoryVisitor;

impl Visitor<'_> for MemoryVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a memory size such as \"256m\" or a byte count")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_memory(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative; write e.g. \"256m\"")))
    }
}

pub(super) fn de_opt_memory<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_any(MemoryVisitor).map(Some)
}

pub(super) fn de_restart<'de, D: Deserializer<'de>>(d: D) -> Result<RestartPolicy, D::Error> {
    let s = String::deserialize(d)?;
    parse_restart(&s).map_err(de::Error::custom)
}
