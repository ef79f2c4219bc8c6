//! Delivery metrics computed from an app's audit trail alone: how often environments change,
//! how long a commit takes to reach them, how often a change fails and how long the fix takes,
//! and how long each phase of a host deploy takes. `s3dock stats` prints them and `s3dock
//! report` draws them: both call [`compute`], so the two can never disagree.
//!
//! The definitions (docs/cli.md repeats them for users):
//!
//! - **Facts.** A `promotion` record is a promotion; a `rollback` record with a `pointer_path`
//!   is a pointer rollback (`s3dock rollback`); a `deploy` or `rollback` record with a `host`
//!   and a `result` is a host deploy (written by an agent or `s3dock deploy`), whose result is
//!   `succeeded`, `failed` or `rolled-back`. Other records (push, tag, ...) are not used.
//! - **Window.** Facts whose record `timestamp` lies in `[start, end]` count. Weeks are ISO
//!   weeks (Monday 00:00 UTC to the next Monday), labelled `2025-W30`; every week that overlaps
//!   the window is listed, empty ones included.
//! - **Deployment frequency**, per environment: promotions and host deploys (every result) per
//!   week, and promotions per week over the whole window (promotions / (window days / 7),
//!   rounded to 2 decimals).
//! - **Lead time for changes**: for each promotion in the window, its time minus the commit
//!   time of the image it resolved to (the image tag's `YYYYMMDD-HHMM`, UTC); and for each
//!   (environment, image) whose *first ever* successful host deploy lies in the window, that
//!   deploy's time minus the commit time.
//! - **Change failure rate**: (failed host deploys + rolled-back host deploys + pointer
//!   rollbacks) / host deploys, all in the window; none when there was no host deploy.
//! - **Time to restore**: for each failure in the window, the time to the next successful host
//!   deploy after it: on the same host (agent id, else host name) for a failed or rolled-back
//!   deploy, on any host of the environment for a pointer rollback. Failures not followed by a
//!   success yet are counted as open.
//! - **Phases**: `timings_ms` of the successful host deploys in the window, per phase.
//! - **Percentiles** are nearest-rank: the p-th percentile of n sorted values is the value at
//!   rank ⌈p·n/100⌉ (1-based), so it is always one of the measured values.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use serde::Serialize;

use crate::docs::AuditRecord;
use crate::names::ImageRef;

/// The phases of a host deploy in the order they run; others recorded follow, sorted.
pub const PHASE_ORDER: [&str; 8] = ["recover", "pull", "start", "health", "switch", "verify", "drain", "rollback"];

/// The period the metrics cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.start && t <= self.end
    }

    /// The labels of the ISO weeks overlapping the window, oldest first.
    pub fn weeks(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut monday = week_start(self.start);
        while monday <= self.end {
            out.push(week_label(monday));
            monday += Duration::days(7);
        }
        out
    }
}

/// Monday 00:00 UTC of the ISO week holding `t`.
pub fn week_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let date = t.date_naive() - Duration::days(i64::from(t.weekday().num_days_from_monday()));
    Utc.from_utc_datetime(&date.and_time(NaiveTime::MIN))
}

/// `2025-W30`.
pub fn week_label(t: DateTime<Utc>) -> String {
    let w = t.iso_week();
    format!("{}-W{:02}", w.year(), w.week())
}

/// Parses a `--since` / `--until` value: a period back from `now` (`30d`, `2w`, `12h`, `90m`),
/// a date (`2025-07-01`, midnight UTC) or an RFC 3339 time (`2025-07-01T12:00:00Z`).
pub fn parse_instant(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    let hint = "write a period like 30d, 2w or 12h, a date like 2025-07-01, or a time like 2025-07-01T12:00:00Z";
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN)));
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: i64 = number.parse().map_err(|_| format!("{s:?} is not a period, date or time; {hint}"))?;
    let seconds = match unit {
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "" => return Err(format!("{s:?} has no unit; {hint}")),
        other => return Err(format!("{s:?} has the unknown unit {other:?}; use m, h, d or w")),
    };
    // Ten years back is more than any bucket holds; refusing more keeps the arithmetic safe.
    if n > 3660 * 86_400 / seconds {
        return Err(format!("{s:?} reaches back more than ten years; {hint}"));
    }
    Ok(now - Duration::seconds(n * seconds))
}

/// The result of a host deploy, as its record states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostResult {
    Succeeded,
    Failed,
    RolledBack,
}

/// What one audit record means for the metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Promotion {
        env: String,
        image: Option<ImageRef>,
        at: DateTime<Utc>,
    },
    PointerRollback {
        env: String,
        at: DateTime<Utc>,
    },
    HostDeploy {
        env: String,
        image: Option<ImageRef>,
        /// The agent id, else the host name: what "the same host" means.
        host: String,
        result: HostResult,
        at: DateTime<Utc>,
        timings_ms: BTreeMap<String, u64>,
    },
}

impl Fact {
    /// The fact a record states, if it is one the metrics use.
    pub fn of(rec: &AuditRecord) -> Option<Fact> {
        let d = &rec.details;
        let s = |k: &str| d.get(k).and_then(serde_json::Value::as_str);
        let env = s("environment")?.to_owned();
        let image = s("image_reference").and_then(|i| ImageRef::parse(i).ok());
        let at = rec.timestamp;
        let host_deploy = s("host").is_some() && s("result").is_some();
        match rec.event_type.as_str() {
            "deploy" | "rollback" if host_deploy => {
                let result = match s("result")? {
                    "succeeded" => HostResult::Succeeded,
                    "failed" => HostResult::Failed,
                    "rolled-back" => HostResult::RolledBack,
                    _ => return None,
                };
                let host = s("agent_id").or(s("host")).unwrap_or_default().to_owned();
                let timings_ms = d
                    .get("timings_ms")
                    .and_then(serde_json::Value::as_object)
                    .map(|m| m.iter().filter_map(|(k, v)| v.as_u64().map(|ms| (k.clone(), ms))).collect())
                    .unwrap_or_default();
                Some(Fact::HostDeploy { env, image, host, result, at, timings_ms })
            }
            "promotion" => Some(Fact::Promotion { env, image, at }),
            "rollback" if s("pointer_path").is_some() => Some(Fact::PointerRollback { env, at }),
            _ => None,
        }
    }

    pub fn env(&self) -> &str {
        match self {
            Fact::Promotion { env, .. } | Fact::PointerRollback { env, .. } | Fact::HostDeploy { env, .. } => env,
        }
    }

    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Fact::Promotion { at, .. } | Fact::PointerRollback { at, .. } | Fact::HostDeploy { at, .. } => *at,
        }
    }
}

/// Count, nearest-rank p50 and p95, and the extremes of a set of measurements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
}

impl Summary {
    pub fn of(mut values: Vec<i64>) -> Summary {
        values.sort_unstable();
        Summary {
            count: values.len(),
            p50: percentile(&values, 50),
            p95: percentile(&values, 95),
            min: values.first().copied(),
            max: values.last().copied(),
        }
    }
}

/// The nearest-rank percentile of sorted values: the value at rank ⌈p·n/100⌉.
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = (p as usize * n).div_ceil(100).max(1);
    Some(sorted[rank.min(n) - 1])
}

/// One week of one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeekCount {
    pub week: String,
    pub promotions: usize,
    pub deploys: usize,
}

/// Deployment frequency of one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvFrequency {
    pub env: String,
    pub promotions: usize,
    pub rollbacks: usize,
    /// Host deploys of every result.
    pub deploys: usize,
    pub successful_deploys: usize,
    /// Promotions / (window days / 7), 2 decimals.
    pub promotions_per_week: f64,
    pub weeks: Vec<WeekCount>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeadTimes {
    /// Commit to promotion, seconds.
    pub to_promotion_seconds: Summary,
    /// Commit to the first successful host deploy of the image in an environment, seconds.
    pub to_first_deploy_seconds: Summary,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChangeFailure {
    pub deploys: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub pointer_rollbacks: usize,
    /// failed + rolled_back + pointer_rollbacks.
    pub failures: usize,
    /// failures / deploys, 4 decimals; `None` without deploys.
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Restore {
    /// Failure to the next successful deploy, seconds.
    pub seconds: Summary,
    /// Failures with no successful deploy after them yet.
    pub open: usize,
}

/// The durations of one deploy phase, milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhaseTimes {
    pub phase: String,
    #[serde(flatten)]
    pub ms: Summary,
}

/// Everything `s3dock stats` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub window: Window,
    /// Only this environment, if one was asked for.
    pub env: Option<String>,
    pub weeks: Vec<String>,
    pub frequency: Vec<EnvFrequency>,
    pub lead_time: LeadTimes,
    pub change_failure: ChangeFailure,
    pub restore: Restore,
    /// Per phase, milliseconds, in [`PHASE_ORDER`] then by name.
    pub phases_ms: Vec<PhaseTimes>,
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Computes the metrics of `records` (one app's audit trail, any order, all of it: the first
/// successful deploy of an image may predate the window) over `window`, optionally for one
/// environment.
pub fn compute(records: &[AuditRecord], window: Window, env: Option<&str>) -> Metrics {
    let mut facts: Vec<Fact> =
        records.iter().filter_map(Fact::of).filter(|f| env.is_none_or(|e| f.env() == e)).collect();
    facts.sort_by_key(Fact::at);
    let in_window: Vec<&Fact> = facts.iter().filter(|f| window.contains(f.at())).collect();
    let weeks = window.weeks();

    // ---- deployment frequency
    let envs: BTreeSet<&str> = in_window.iter().map(|f| f.env()).chain(env).collect();
    let window_weeks = (window.end - window.start).num_seconds() as f64 / (7.0 * 86_400.0);
    let frequency = envs
        .iter()
        .map(|e| {
            let mine: Vec<&&Fact> = in_window.iter().filter(|f| f.env() == *e).collect();
            let promotions = mine.iter().filter(|f| matches!(f, Fact::Promotion { .. })).count();
            let is_deploy = |f: &Fact| matches!(f, Fact::HostDeploy { .. });
            let per_week = weeks
                .iter()
                .map(|w| {
                    let this_week = mine.iter().filter(|f| week_label(week_start(f.at())) == *w);
                    let (mut p, mut d) = (0, 0);
                    for f in this_week {
                        p += usize::from(matches!(f, Fact::Promotion { .. }));
                        d += usize::from(is_deploy(f));
                    }
                    WeekCount { week: w.clone(), promotions: p, deploys: d }
                })
                .collect();
            EnvFrequency {
                env: (*e).to_owned(),
                promotions,
                rollbacks: mine.iter().filter(|f| matches!(f, Fact::PointerRollback { .. })).count(),
                deploys: mine.iter().filter(|f| is_deploy(f)).count(),
                successful_deploys: mine
                    .iter()
                    .filter(|f| matches!(f, Fact::HostDeploy { result: HostResult::Succeeded, .. }))
                    .count(),
                promotions_per_week: if window_weeks > 0.0 { round(promotions as f64 / window_weeks, 2) } else { 0.0 },
                weeks: per_week,
            }
        })
        .collect();

    // ---- lead time
    let to_promotion = in_window
        .iter()
        .filter_map(|f| match f {
            Fact::Promotion { image: Some(i), at, .. } => Some((*at - i.tag.time()).num_seconds()),
            _ => None,
        })
        .collect();
    let mut first_success: BTreeMap<(&str, String), (DateTime<Utc>, &ImageRef)> = BTreeMap::new();
    for f in &facts {
        if let Fact::HostDeploy { env, image: Some(i), result: HostResult::Succeeded, at, .. } = f {
            first_success.entry((env.as_str(), i.to_string())).or_insert((*at, i));
        }
    }
    let to_first_deploy = first_success
        .values()
        .filter(|(at, _)| window.contains(*at))
        .map(|(at, i)| (*at - i.tag.time()).num_seconds())
        .collect();

    // ---- change failure rate and time to restore
    let mut cf = ChangeFailure::default();
    let mut restored = Vec::new();
    let mut open = 0;
    for f in &in_window {
        let same_host = match f {
            Fact::HostDeploy { result: HostResult::Succeeded, .. } => {
                cf.deploys += 1;
                continue;
            }
            Fact::HostDeploy { result, host, .. } => {
                cf.deploys += 1;
                if *result == HostResult::Failed {
                    cf.failed += 1;
                } else {
                    cf.rolled_back += 1;
                }
                Some(host.as_str())
            }
            Fact::PointerRollback { .. } => {
                cf.pointer_rollbacks += 1;
                None
            }
            Fact::Promotion { .. } => continue,
        };
        let fix = facts.iter().find(|g| match g {
            Fact::HostDeploy { env, host, result: HostResult::Succeeded, at, .. } => {
                env == f.env() && *at > f.at() && same_host.is_none_or(|h| h == host)
            }
            _ => false,
        });
        match fix {
            Some(g) => restored.push((g.at() - f.at()).num_seconds()),
            None => open += 1,
        }
    }
    cf.failures = cf.failed + cf.rolled_back + cf.pointer_rollbacks;
    cf.rate = (cf.deploys > 0).then(|| round(cf.failures as f64 / cf.deploys as f64, 4));

    // ---- phases
    let mut phases: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for f in &in_window {
        if let Fact::HostDeploy { result: HostResult::Succeeded, timings_ms, .. } = f {
            for (phase, ms) in timings_ms {
                phases.entry(phase.clone()).or_default().push(i64::try_from(*ms).unwrap_or(i64::MAX));
            }
        }
    }
    let rank = |p: &str| PHASE_ORDER.iter().position(|q| *q == p).unwrap_or(PHASE_ORDER.len());
    let mut phases_ms: Vec<PhaseTimes> =
        phases.into_iter().map(|(phase, v)| PhaseTimes { phase, ms: Summary::of(v) }).collect();
    phases_ms.sort_by(|a, b| rank(&a.phase).cmp(&rank(&b.phase)).then_with(|| a.phase.cmp(&b.phase)));

    Metrics {
        window,
        env: env.map(str::to_owned),
        weeks,
        frequency,
        lead_time: LeadTimes {
            to_promotion_seconds: Summary::of(to_promotion),
            to_first_deploy_seconds: Summary::of(to_first_deploy),
        },
        change_failure: cf,
        restore: Restore { seconds: Summary::of(restored), open },
        phases_ms,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn rec(event: &str, ts: &str, details: serde_json::Value) -> AuditRecord {
        AuditRecord {
            schema_version: Some(1),
            event_type: event.into(),
            timestamp: at(ts),
            user: "t".into(),
            app_name: "web".into(),
            git_hash: String::new(),
            git_time: String::new(),
            details,
            principal: None,
            recorded_by: Some("lambda".into()),
            write_id: None,
        }
    }

    fn promotion(env: &str, image: &str, ts: &str) -> AuditRecord {
        rec(
            "promotion",
            ts,
            json!({"environment": env, "source": image, "source_type": "image", "pointer_path": format!("pointers/web/{env}.json"), "image_reference": image}),
        )
    }

    fn deploy(env: &str, image: &str, host: &str, result: &str, ts: &str, timings: serde_json::Value) -> AuditRecord {
        let event = if result == "rolled-back" { "rollback" } else { "deploy" };
        rec(
            event,
            ts,
            json!({"environment": env, "image_reference": image, "host": host, "result": result, "timings_ms": timings}),
        )
    }

    const I1: &str = "web:20250707-0900-aaaaaaa";
    const I2: &str = "web:20250714-0900-bbbbbbb";

    #[test]
    fn percentiles_are_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[1, 2, 3, 4], 50), Some(2));
        assert_eq!(percentile(&[1, 2, 3, 4], 95), Some(4));
        let hundred: Vec<i64> = (1..=100).collect();
        assert_eq!((percentile(&hundred, 50), percentile(&hundred, 95)), (Some(50), Some(95)));
        let s = Summary::of(vec![30, 10, 20]);
        assert_eq!((s.count, s.p50, s.p95, s.min, s.max), (3, Some(20), Some(30), Some(10), Some(30)));
    }

    #[test]
    fn instants_and_weeks() {
        let now = at("2025-07-31T12:00:00Z");
        assert_eq!(parse_instant("30d", now).unwrap(), at("2025-07-01T12:00:00Z"));
        assert_eq!(parse_instant("2w", now).unwrap(), at("2025-07-17T12:00:00Z"));
        assert_eq!(parse_instant("2025-07-01", now).unwrap(), at("2025-07-01T00:00:00Z"));
        assert_eq!(parse_instant("2025-07-01T10:00:00+02:00", now).unwrap(), at("2025-07-01T08:00:00Z"));
        for bad in ["30", "30x", "d", "-3d", "99999999d", "2025-13-01"] {
            assert!(parse_instant(bad, now).is_err(), "{bad}");
        }
        // 2025-07-06 is a Sunday, 2025-07-07 a Monday (week 28).
        assert_eq!(week_start(at("2025-07-06T23:59:59Z")), at("2025-06-30T00:00:00Z"));
        assert_eq!(week_label(at("2025-07-07T00:00:00Z")), "2025-W28");
        let w = Window { start: at("2025-07-01T00:00:00Z"), end: at("2025-07-31T00:00:00Z") };
        assert_eq!(w.weeks(), ["2025-W27", "2025-W28", "2025-W29", "2025-W30", "2025-W31"]);
        assert_eq!(week_label(at("2021-01-03T00:00:00Z")), "2020-W53", "ISO years differ from calendar years");
    }

    #[test]
    fn classifies_records() {
        assert!(matches!(Fact::of(&promotion("prod", I1, "2025-07-08T00:00:00Z")), Some(Fact::Promotion { .. })));
        let rb = rec(
            "rollback",
            "2025-07-08T00:00:00Z",
            json!({"environment": "prod", "source": I1, "source_type": "image", "pointer_path": "pointers/web/prod.json"}),
        );
        assert!(matches!(Fact::of(&rb), Some(Fact::PointerRollback { .. })));
        let host_rb = deploy("prod", I1, "h1", "rolled-back", "2025-07-08T00:00:00Z", json!({}));
        assert!(matches!(Fact::of(&host_rb), Some(Fact::HostDeploy { result: HostResult::RolledBack, .. })));
        let push = rec("push", "2025-07-08T00:00:00Z", json!({"image_reference": I1}));
        assert_eq!(Fact::of(&push), None);
        let odd = deploy("prod", I1, "h1", "unchanged", "2025-07-08T00:00:00Z", json!({}));
        assert_eq!(Fact::of(&odd), None);
    }

    #[test]
    fn computes_each_metric() {
        let records = vec![
            // Before the window: the first successful deploy of I1 on prod.
            deploy("prod", I1, "h1", "succeeded", "2025-06-30T10:00:00Z", json!({"pull": 1})),
            promotion("prod", I1, "2025-07-08T09:00:00Z"), // lead 1d
            deploy("prod", I1, "h1", "succeeded", "2025-07-08T09:10:00Z", json!({"pull": 100, "health": 10})),
            promotion("prod", I2, "2025-07-14T12:00:00Z"), // lead 3h
            deploy("prod", I2, "h1", "failed", "2025-07-14T12:05:00Z", json!({"pull": 50})),
            deploy("prod", I2, "h2", "rolled-back", "2025-07-14T12:06:00Z", json!({})),
            deploy("prod", I2, "h1", "succeeded", "2025-07-14T12:35:00Z", json!({"pull": 300, "health": 30})),
            rec(
                "rollback",
                "2025-07-15T00:00:00Z",
                json!({"environment": "prod", "source": I1, "source_type": "image", "pointer_path": "pointers/web/prod.json"}),
            ),
            deploy("prod", I1, "h2", "succeeded", "2025-07-15T01:00:00Z", json!({"pull": 200, "health": 20})),
            promotion("staging", I2, "2025-07-14T10:00:00Z"), // lead 1h
        ];
        let window = Window { start: at("2025-07-07T00:00:00Z"), end: at("2025-07-21T00:00:00Z") };
        let m = compute(&records, window, None);
        assert_eq!(m.weeks, ["2025-W28", "2025-W29", "2025-W30"]);
        let prod = &m.frequency[0];
        assert_eq!((prod.env.as_str(), prod.promotions, prod.rollbacks, prod.deploys), ("prod", 2, 1, 5));
        assert_eq!(prod.successful_deploys, 3);
        assert_eq!(prod.promotions_per_week, 1.0);
        assert_eq!(prod.weeks[0], WeekCount { week: "2025-W28".into(), promotions: 1, deploys: 1 });
        assert_eq!(prod.weeks[1], WeekCount { week: "2025-W29".into(), promotions: 1, deploys: 4 });
        assert_eq!(m.frequency[1].env, "staging");

        let lt = &m.lead_time.to_promotion_seconds;
        assert_eq!((lt.count, lt.p50, lt.p95), (3, Some(3 * 3600), Some(86_400)));
        // First successes: I1 on prod before the window (excluded), I2 on prod 12:35 (3h35m).
        let fd = &m.lead_time.to_first_deploy_seconds;
        assert_eq!((fd.count, fd.p50), (1, Some(3 * 3600 + 35 * 60)));

        let cf = &m.change_failure;
        assert_eq!((cf.deploys, cf.failed, cf.rolled_back, cf.pointer_rollbacks, cf.failures), (5, 1, 1, 1, 3));
        assert_eq!(cf.rate, Some(0.6));
        // h1 failed 12:05, fixed 12:35 on h1 (30m); h2 rolled back 12:06, fixed on h2 at
        // 01:00 the next day (12h54m); the pointer rollback at 00:00 fixed at 01:00 (1h).
        let r = &m.restore;
        assert_eq!((r.seconds.count, r.open), (3, 0));
        assert_eq!((r.seconds.p50, r.seconds.p95), (Some(3600), Some(12 * 3600 + 54 * 60)));

        let phases: Vec<&str> = m.phases_ms.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(phases, ["pull", "health"]);
        assert_eq!(
            m.phases_ms[0].ms,
            Summary { count: 3, p50: Some(200), p95: Some(300), min: Some(100), max: Some(300) }
        );

        let only = compute(&records, window, Some("staging"));
        assert_eq!(only.frequency.len(), 1);
        assert_eq!(only.change_failure.rate, None, "no deploys, no rate");
        assert_eq!(only.lead_time.to_promotion_seconds.p50, Some(3600));
        let empty = compute(&records, window, Some("qa"));
        assert_eq!(empty.frequency[0].promotions, 0, "an asked-for environment is listed even when empty");
    }

    #[test]
    fn an_unfixed_failure_is_open() {
        let records = vec![deploy("prod", I1, "h1", "failed", "2025-07-08T00:00:00Z", json!({}))];
        let window = Window { start: at("2025-07-07T00:00:00Z"), end: at("2025-07-21T00:00:00Z") };
        let m = compute(&records, window, None);
        assert_eq!((m.restore.open, m.restore.seconds.count), (1, 0));
        assert_eq!(m.change_failure.rate, Some(1.0));
    }
}
