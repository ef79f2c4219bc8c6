//! `s3dock stats APP [ENV] [--since 30d] [--until TIME]`: delivery metrics from the audit trail.

use clap::Args;
use s3dock_core::insight::metrics::{self, Metrics, Summary, Window};
use s3dock_core::names::{AppName, EnvName};
use s3dock_core::registry::{HistoryQuery, Registry};
use serde_json::json;

use crate::commands::status::show_age;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table, time};

const LONG_ABOUT: &str = "\
Delivery metrics of an app, computed from its audit trail alone (audit/): no agent, metrics
service or network access needed beyond the bucket.

  deployment frequency  promotions per environment per ISO week (Monday 00:00 UTC), and
                        host deploys (records of agents and `s3dock deploy`)
  lead time             from the image's commit time (its tag, YYYYMMDD-HHMM UTC) to each
                        promotion, and to its first successful host deploy per environment
  change failure rate   (failed + rolled-back host deploys + pointer rollbacks) / host deploys
  time to restore       from each failure to the next successful host deploy (same host for
                        a host failure, any host of the environment for a pointer rollback)
  deploy phases         p50 and p95 of each phase of the successful host deploys (pull,
                        start, health, switch, verify, drain...)

Percentiles are nearest-rank (always a measured value). Only records in the window count,
except that \"first successful deploy\" looks at the whole trail. The exact definitions are in
docs/cli.md.

--since and --until take a period back from now (30d, 2w, 12h, 90m), a date (2025-07-01,
midnight UTC) or a time (2025-07-01T12:00:00Z).

Examples:
  s3dock stats myapp
  s3dock stats myapp production --since 90d
  s3dock stats myapp --since 2025-07-01 --until 2025-08-01 --json";

/// Delivery metrics from the audit trail: frequency, lead time, failure rate, restore, phases
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct StatsArgs {
    /// The app, e.g. myapp
    pub app: AppName,
    /// Only this environment
    pub env: Option<EnvName>,
    /// Start of the window: a period back from now (30d), a date or a time
    #[arg(long, value_name = "WHEN", default_value = "30d")]
    pub since: String,
    /// End of the window (default: now)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
}

pub async fn run(ctx: &Context, args: &StatsArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let window = window(&registry, &args.since, args.until.as_deref())?;
    let (metrics, unreadable) = compute(&registry, &args.app, args.env.as_ref(), window).await?;
    let mut doc =
        serde_json::to_value(&metrics).map_err(|e| CliError::internal(format!("encoding the metrics: {e}")))?;
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("app".into(), json!(args.app));
        obj.insert("unreadable_records".into(), json!(unreadable));
    }
    let mut out = Output::new(doc, render(&args.app, &metrics));
    if unreadable > 0 {
        out = out.warn(format!(
            "{unreadable} audit record(s) could not be read and are not counted; see them with s3dock history {}",
            args.app
        ));
    }
    Ok(out)
}

/// The window `--since` / `--until` name, checked.
pub(crate) fn window(registry: &Registry, since: &str, until: Option<&str>) -> Result<Window, CliError> {
    let now = registry.clock().now();
    let start = metrics::parse_instant(since, now).map_err(|e| CliError::usage(format!("--since: {e}")))?;
    let end = match until {
        Some(u) => metrics::parse_instant(u, now).map_err(|e| CliError::usage(format!("--until: {e}")))?,
        None => now,
    };
    if start >= end {
        return Err(CliError::usage(format!(
            "the window is empty: --since {} is not before --until {}; pick an earlier --since",
            time(&start),
            time(&end)
        )));
    }
    Ok(Window { start, end })
}

/// Reads the app's whole audit trail and computes its metrics; also how many records could
/// not be read.
pub(crate) async fn compute(
    registry: &Registry,
    app: &AppName,
    env: Option<&EnvName>,
    window: Window,
) -> Result<(Metrics, usize), CliError> {
    let entries = registry.history(app, &HistoryQuery { limit: 0, ..HistoryQuery::default() }).await?;
    let unreadable = entries.iter().filter(|e| e.record.is_err()).count();
    let records: Vec<_> = entries.into_iter().filter_map(|e| e.record.ok()).collect();
    Ok((metrics::compute(&records, window, env.map(EnvName::as_str)), unreadable))
}

/// Seconds for people: `3d4h`, `2h05m`, `12m30s`; a negative lead time (a commit dated in the
/// future) shows as such.
pub(crate) fn seconds(s: i64) -> String {
    if s < 0 { format!("-{}", show_age(chrono::Duration::seconds(-s))) } else { show_age(chrono::Duration::seconds(s)) }
}

/// Milliseconds for people: `850ms`, `1.2s`, `2m05s`.
pub(crate) fn millis(ms: i64) -> String {
    match ms {
        ..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => show_age(chrono::Duration::milliseconds(ms)),
    }
}

fn cells(s: &Summary, show: fn(i64) -> String) -> Vec<String> {
    let f = |v: Option<i64>| v.map(show).unwrap_or_else(|| "-".into());
    vec![s.count.to_string(), f(s.p50), f(s.p95), f(s.max)]
}

fn render(app: &AppName, m: &Metrics) -> String {
    let mut text = format!(
        "{app}{}: {} to {} ({} week{})\n\n",
        m.env.as_ref().map(|e| format!(" {e}")).unwrap_or_default(),
        time(&m.window.start),
        time(&m.window.end),
        m.weeks.len(),
        if m.weeks.len() == 1 { "" } else { "s" }
    );
    if m.frequency.is_empty() {
        text.push_str("no promotion, rollback or host deploy in the window\n");
        return text;
    }
    text.push_str("Deployment frequency\n");
    let mut t = Table::new(&["ENV", "PROMOTIONS", "PER WEEK", "ROLLBACKS", "HOST DEPLOYS", "SUCCEEDED"]);
    for f in &m.frequency {
        t.row(vec![
            f.env.clone(),
            f.promotions.to_string(),
            format!("{:.2}", f.promotions_per_week),
            f.rollbacks.to_string(),
            f.deploys.to_string(),
            f.successful_deploys.to_string(),
        ]);
    }
    text.push_str(&t.render());
    let mut headers = vec!["WEEK".to_owned()];
    headers.extend(m.frequency.iter().map(|f| format!("{} (promotions/deploys)", f.env)));
    let mut t = Table::new(&headers.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, week) in m.weeks.iter().enumerate() {
        let mut row = vec![week.clone()];
        row.extend(m.frequency.iter().map(|f| format!("{}/{}", f.weeks[i].promotions, f.weeks[i].deploys)));
        t.row(row);
    }
    text.push('\n');
    text.push_str(&t.render());

    text.push_str("\nLead time for changes\n");
    let mut t = Table::new(&["FROM COMMIT TO", "COUNT", "P50", "P95", "MAX"]);
    let mut row = vec!["promotion".to_owned()];
    row.extend(cells(&m.lead_time.to_promotion_seconds, seconds));
    t.row(row);
    let mut row = vec!["first successful deploy".to_owned()];
    row.extend(cells(&m.lead_time.to_first_deploy_seconds, seconds));
    t.row(row);
    text.push_str(&t.render());

    let cf = &m.change_failure;
    text.push_str(&format!(
        "\nChange failure rate: {} ({} of {} host deploys: {} failed, {} rolled back, {} pointer rollback{})\n",
        cf.rate.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "-".into()),
        cf.failures,
        cf.deploys,
        cf.failed,
        cf.rolled_back,
        cf.pointer_rollbacks,
        if cf.pointer_rollbacks == 1 { "" } else { "s" }
    ));
    let r = &m.restore;
    let f = |v: Option<i64>| v.map(seconds).unwrap_or_else(|| "-".into());
    text.push_str(&format!(
        "Time to restore: {} restored, p50 {}, p95 {}; {} still open\n",
        r.seconds.count,
        f(r.seconds.p50),
        f(r.seconds.p95),
        r.open
    ));

    if !m.phases_ms.is_empty() {
        text.push_str("\nDeploy phases (successful host deploys)\n");
        let mut t = Table::new(&["PHASE", "COUNT", "P50", "P95", "MAX"]);
        for p in &m.phases_ms {
            let mut row = vec![p.phase.clone()];
            row.extend(cells(&p.ms, millis));
            t.row(row);
        }
        text.push_str(&t.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(93_600), "1d2h");
        assert_eq!(seconds(-120), "-2m00s");
        assert_eq!(millis(850), "850ms");
        assert_eq!(millis(1250), "1.2s");
        assert_eq!(millis(125_000), "2m05s");
    }
}
