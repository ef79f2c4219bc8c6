//! `s3dock report [APP] --html FILE`: one self-contained HTML page (inline CSS and SVG, no
//! script, no network) with the fleet, the promotion timeline per environment and the
//! delivery metrics as small charts. The numbers are the ones `status` and `stats` print: the
//! page is drawn from the same computations (`s3dock_core::insight`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use s3dock_core::docs::AuditRecord;
use s3dock_core::insight::fleet::{self, Fleet, PointerState};
use s3dock_core::insight::metrics::{self, Fact, Metrics, Summary, Window};
use s3dock_core::names::AppName;
use s3dock_core::registry::{HistoryQuery, Registry};
use serde_json::json;

use crate::commands::stats::{self, millis, seconds};
use crate::commands::status::{parse_ttl, show_age};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, time};

/// The page around the sections: inline CSS, placeholders `{{...}}`.
const TEMPLATE: &str = include_str!("report.html");

const LONG_ABOUT: &str = "\
Write one self-contained HTML page about an app (or every app): open it in a browser or attach
it to a ticket. Inline CSS and SVG only: no script, nothing loaded from the network.

It shows, per app:
  - the fleet: each agent's environment, host, image, color, health, last deploy and
    heartbeat, stale agents marked (as `s3dock status`);
  - per environment, the promotion timeline over the window, rollbacks marked;
  - the delivery metrics of `s3dock stats` as small charts: promotions and host deploys per
    week, lead time, change failure rate, time to restore, deploy phases.

Examples:
  s3dock report myapp --html fleet.html
  s3dock report --html all.html --since 90d
  s3dock report myapp --html report.html --since 2025-07-01 --until 2025-08-01";

/// Write a self-contained HTML page: fleet, promotion timeline, delivery metrics
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct ReportArgs {
    /// The app (default: every app in the store)
    pub app: Option<AppName>,
    /// Where to write the page
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// Start of the window: a period back from now (30d), a date or a time
    #[arg(long, value_name = "WHEN", default_value = "30d")]
    pub since: String,
    /// End of the window (default: now)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Agent heartbeats older than this are marked stale
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// What the page shows of one app.
struct AppReport {
    fleet: Fleet,
    metrics: Metrics,
    /// Promotions and pointer rollbacks in the window, oldest first.
    timeline: Vec<Fact>,
}

pub async fn run(ctx: &Context, args: &ReportArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let window = stats::window(&registry, &args.since, args.until.as_deref())?;
    let apps = match &args.app {
        Some(a) => vec![a.clone()],
        None => registry.list_apps().await?,
    };
    let ttl = chrono::Duration::from_std(args.ttl).unwrap_or(chrono::Duration::MAX);
    let mut reports = Vec::new();
    for app in &apps {
        reports.push(app_report(&registry, app, window, ttl).await?);
    }
    let title = match &args.app {
        Some(a) => format!("s3dock report: {a}"),
        None => "s3dock report".to_owned(),
    };
    let page = page(&title, &registry, window, &reports);
    write_file(&args.html, page.as_bytes())?;

    let agents: usize = reports.iter().map(|r| r.fleet.agents.len()).sum();
    let stale: usize = reports.iter().map(|r| r.fleet.stale().count()).sum();
    let doc = json!({
        "file": args.html,
        "bytes": page.len(),
        "window": window,
        "apps": reports.iter().map(|r| json!({
            "app": r.fleet.app,
            "agents": r.fleet.agents.len(),
            "stale": r.fleet.stale().count(),
            "promotions": r.timeline.iter().filter(|f| matches!(f, Fact::Promotion { .. })).count(),
            "rollbacks": r.timeline.iter().filter(|f| matches!(f, Fact::PointerRollback { .. })).count(),
        })).collect::<Vec<_>>(),
    });
    let text = format!(
        "wrote {} ({} app{}, {agents} agent{}, {stale} stale)\n",
        args.html.display(),
        apps.len(),
        if apps.len() == 1 { "" } else { "s" },
        if agents == 1 { "" } else { "s" }
    );
    let mut out = Output::new(doc, text);
    if apps.is_empty() {
        out = out.note("the store holds no app yet: the page says so");
    }
    Ok(out)
}

async fn app_report(
    registry: &Registry,
    app: &AppName,
    window: Window,
    ttl: chrono::Duration,
) -> Result<AppReport, CliError> {
    let fleet = fleet::load(registry, app, None, ttl).await?;
    let entries = registry.history(app, &HistoryQuery { limit: 0, ..HistoryQuery::default() }).await?;
    let records: Vec<AuditRecord> = entries.into_iter().filter_map(|e| e.record.ok()).collect();
    let metrics = metrics::compute(&records, window, None);
    let mut timeline: Vec<Fact> = records
        .iter()
        .filter_map(Fact::of)
        .filter(|f| matches!(f, Fact::Promotion { .. } | Fact::PointerRollback { .. }) && window.contains(f.at()))
        .collect();
    timeline.sort_by_key(Fact::at);
    Ok(AppReport { fleet, metrics, timeline })
}

/// Writes the page next to its destination, then renames it into place.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let fail = |e: std::io::Error| {
        CliError::usage(format!("cannot write {}: {e}; check that the folder exists and is writable", path.display()))
    };
    let mut tmp = tempfile_in(dir).map_err(fail)?;
    std::io::Write::write_all(&mut tmp.1, bytes).map_err(fail)?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        fail(e)
    })
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(".s3dock-report-{}.tmp", std::process::id());
    let path = dir.join(name);
    let file = std::fs::File::create(&path)?;
    Ok((path, file))
}

/// HTML-escapes untrusted text (everything read from the bucket).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, registry: &Registry, window: Window, reports: &[AppReport]) -> String {
    let mut body = String::new();
    if reports.is_empty() {
        body.push_str("<p class=\"empty\">The store holds no app yet.</p>\n");
    }
    for r in reports {
        app_section(&mut body, r);
    }
    TEMPLATE
        .replace("{{title}}", &esc(title))
        .replace("{{generated}}", &esc(&time(&registry.clock().now())))
        .replace("{{store}}", &esc(&registry.store().url()))
        .replace("{{window}}", &esc(&format!("{} to {}", time(&window.start), time(&window.end))))
        .replace("{{version}}", &esc(crate::VERSION))
        .replace("{{body}}", &body)
}

fn app_section(out: &mut String, r: &AppReport) {
    let app = esc(r.fleet.app.as_str());
    let _ = writeln!(out, "<section class=\"app\" id=\"app-{app}\">\n<h2>{app}</h2>");
    fleet_table(out, &r.fleet);
    let _ = writeln!(out, "<h3>Promotion timeline</h3>");
    let envs: Vec<&str> = r.metrics.frequency.iter().map(|f| f.env.as_str()).collect();
    if envs.is_empty() {
        let _ = writeln!(out, "<p class=\"empty\">No promotion in the window.</p>");
    }
    for env in &envs {
        timeline(out, env, &r.timeline, r.metrics.window);
    }
    metrics_cards(out, &r.metrics);
    let _ = writeln!(out, "</section>");
}

fn fleet_table(out: &mut String, f: &Fleet) {
    let _ = writeln!(out, "<h3>Fleet</h3>");
    for (env, p) in &f.pointers {
        let shown = match p {
            PointerState::Image { image, seq, .. } => format!("{} (seq {seq})", esc(image)),
            PointerState::Missing => "<span class=\"badge muted\">no pointer</span>".to_owned(),
            PointerState::Broken(e) => format!("<span class=\"badge bad\">broken</span> {}", esc(e)),
        };
        let _ = writeln!(
            out,
            "<div class=\"pointer\"><b>{}</b> → <span class=\"mono\">{shown}</span></div>",
            esc(env.as_str())
        );
    }
    if f.agents.is_empty() {
        let _ = writeln!(out, "<p class=\"empty\">No agent is registered.</p>");
    } else {
        out.push_str(
            "<table class=\"fleet\"><thead><tr><th>Environment</th><th>Agent</th><th>Host</th><th>Image</th>\
             <th>Color</th><th>Health</th><th>Last deploy</th><th>Heartbeat</th><th>Pointer</th></tr></thead><tbody>\n",
        );
    }
    for a in &f.agents {
        let r = &a.registration;
        let s = a.state();
        let health = match s.health.map(|h| h.as_str()) {
            Some("healthy") => "<span class=\"badge ok\">healthy</span>".to_owned(),
            Some(h) => format!("<span class=\"badge warn\">{}</span>", esc(h)),
            None => "<span class=\"badge muted\">unknown</span>".to_owned(),
        };
        let last = s
            .last_deploy
            .as_ref()
            .map(|d| {
                let class = if d.result.as_str() == "succeeded" { "ok" } else { "bad" };
                format!("<span class=\"badge {class}\">{}</span> {}", esc(d.result.as_str()), esc(&time(&d.at)))
            })
            .unwrap_or_else(|| "-".into());
        let heartbeat = format!(
            "{} ago{}",
            show_age(a.heartbeat_age),
            if a.stale { " <span class=\"badge bad\">STALE</span>" } else { "" }
        );
        let pointer = match a.converged {
            Some(true) => "<span class=\"badge ok\">converged</span>",
            Some(false) => "<span class=\"badge warn\">behind</span>",
            None => "<span class=\"badge muted\">unknown</span>",
        };
        let _ = writeln!(
            out,
            "<tr class=\"agent{}\" data-agent=\"{}\" data-env=\"{}\"><td>{}</td><td class=\"mono\">{}</td><td>{}</td>\
             <td class=\"mono\">{}</td><td>{}</td><td>{health}</td><td>{last}</td><td>{heartbeat}</td><td>{pointer}</td></tr>",
            if a.stale { " stale" } else { "" },
            esc(r.agent_id.as_str()),
            esc(r.environment.as_str()),
            esc(r.environment.as_str()),
            esc(r.agent_id.as_str()),
            esc(&r.host),
            esc(s.image.as_deref().unwrap_or("-")),
            esc(s.color.as_deref().unwrap_or("-")),
        );
    }
    if !f.agents.is_empty() {
        out.push_str("</tbody></table>\n");
    }
    for (key, why) in &f.errors {
        let _ = writeln!(out, "<p class=\"badge bad\">unreadable registration {}: {}</p>", esc(key), esc(why));
    }
}

const W: f64 = 860.0;

/// One environment's promotions (dots) and pointer rollbacks (red triangles) on a time axis.
fn timeline(out: &mut String, env: &str, facts: &[Fact], window: Window) {
    let span = (window.end - window.start).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| 20.0 + (t - window.start).num_seconds() as f64 / span * (W - 40.0);
    let _ = writeln!(
        out,
        "<svg class=\"timeline\" data-env=\"{e}\" width=\"{W}\" height=\"54\" viewBox=\"0 0 {W} 54\" role=\"img\" aria-label=\"promotions of {e}\">\
         <text x=\"0\" y=\"12\">{e}</text><line class=\"axis\" x1=\"20\" y1=\"32\" x2=\"{x2}\" y2=\"32\" stroke-width=\"2\"/>\
         <text x=\"20\" y=\"50\">{start}</text><text x=\"{x2}\" y=\"50\" text-anchor=\"end\">{end}</text>",
        e = esc(env),
        x2 = W - 20.0,
        start = window.start.format("%Y-%m-%d"),
        end = window.end.format("%Y-%m-%d"),
    );
    for f in facts.iter().filter(|f| f.env() == env) {
        match f {
            Fact::Promotion { image, at, .. } => {
                let what = image.as_ref().map(|i| i.to_string()).unwrap_or_default();
                let _ = write!(
                    out,
                    "<circle class=\"promo\" cx=\"{:.1}\" cy=\"32\" r=\"5\"><title>promotion {} at {}</title></circle>",
                    x(*at),
                    esc(&what),
                    time(at)
                );
            }
            Fact::PointerRollback { at, .. } => {
                let cx = x(*at);
                let _ = write!(
                    out,
                    "<polygon class=\"rollback\" points=\"{:.1},28 {:.1},14 {:.1},14\"><title>rollback at {}</title></polygon>",
                    cx,
                    cx - 6.0,
                    cx + 6.0,
                    time(at)
                );
            }
            Fact::HostDeploy { .. } => {}
        }
    }
    out.push_str("</svg>\n");
}

/// Horizontal bars: `(label, value)` scaled to the largest value.
fn bars(rows: &[(String, i64)], show: fn(i64) -> String) -> String {
    let max = rows.iter().map(|r| r.1).max().unwrap_or(0).max(1) as f64;
    let h = 22.0 * rows.len() as f64 + 4.0;
    let mut s = format!("<svg width=\"360\" height=\"{h}\" viewBox=\"0 0 360 {h}\">");
    for (i, (label, v)) in rows.iter().enumerate() {
        let y = 4.0 + 22.0 * i as f64;
        let w = (*v).max(0) as f64 / max * 170.0;
        let class = if label.ends_with("p95") { "bar2" } else { "bar" };
        let _ = write!(
            s,
            "<text x=\"0\" y=\"{ty}\">{l}</text><rect class=\"{class}\" x=\"120\" y=\"{y}\" width=\"{w:.1}\" height=\"16\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{v}</text>",
            ty = y + 12.0,
            l = esc(label),
            tx = 124.0 + w,
            v = esc(&show(*v)),
        );
    }
    s.push_str("</svg>");
    s
}

fn summary_rows(name: &str, s: &Summary) -> Vec<(String, i64)> {
    let mut v = Vec::new();
    if let Some(p) = s.p50 {
        v.push((format!("{name} p50"), p));
    }
    if let Some(p) = s.p95 {
        v.push((format!("{name} p95"), p));
    }
    v
}

fn metrics_cards(out: &mut String, m: &Metrics) {
    let _ = writeln!(out, "<h3>Delivery metrics</h3>\n<div class=\"grid\">");
    // Promotions and host deploys per week, one pair of bars per week and environment.
    let mut freq = String::from("<div class=\"card\" id=\"frequency\"><b>Deployment frequency</b><br>");
    for f in &m.frequency {
        let max = f.weeks.iter().map(|w| w.promotions.max(w.deploys)).max().unwrap_or(0).max(1) as f64;
        let n = f.weeks.len().max(1) as f64;
        let bw = (300.0 / n).min(60.0);
        let _ = write!(
            freq,
            "<div>{} — {} promotion{} ({:.2}/week), {} host deploys</div><svg width=\"340\" height=\"96\" viewBox=\"0 0 340 96\">",
            esc(&f.env),
            f.promotions,
            if f.promotions == 1 { "" } else { "s" },
            f.promotions_per_week,
            f.deploys
        );
        for (i, w) in f.weeks.iter().enumerate() {
            let x0 = 10.0 + bw * i as f64;
            let hp = w.promotions as f64 / max * 60.0;
            let hd = w.deploys as f64 / max * 60.0;
            let _ = write!(
                freq,
                "<rect class=\"bar\" x=\"{x0:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hp:.1}\"><title>{}: {} promotions</title></rect>\
                 <rect class=\"bar2\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hd:.1}\"><title>{}: {} host deploys</title></rect>\
                 <text x=\"{x0:.1}\" y=\"92\">{}</text>",
                76.0 - hp,
                bw * 0.4,
                esc(&w.week),
                w.promotions,
                x0 + bw * 0.42,
                76.0 - hd,
                bw * 0.4,
                esc(&w.week),
                w.deploys,
                esc(w.week.split('-').nth(1).unwrap_or(""))
            );
        }
        freq.push_str("</svg>");
    }
    if m.frequency.is_empty() {
        freq.push_str("<p class=\"empty\">Nothing in the window.</p>");
    }
    freq.push_str("</div>");
    out.push_str(&freq);

    let mut lead = summary_rows("to promotion", &m.lead_time.to_promotion_seconds);
    lead.extend(summary_rows("to 1st deploy", &m.lead_time.to_first_deploy_seconds));
    let _ = write!(
        out,
        "<div class=\"card\" id=\"lead-time\"><b>Lead time for changes</b><br>{}</div>",
        chart_or_empty(&lead, seconds)
    );

    let cf = &m.change_failure;
    let rate = cf.rate.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_else(|| "-".into());
    let width = cf.rate.unwrap_or(0.0).min(1.0) * 300.0;
    let _ = write!(
        out,
        "<div class=\"card\" id=\"change-failure\"><b>Change failure rate</b><div class=\"figure\">{rate}</div>\
         <svg width=\"320\" height=\"20\" viewBox=\"0 0 320 20\"><rect class=\"axis\" x=\"0\" y=\"4\" width=\"300\" height=\"12\" fill=\"#e4e7ec\"/>\
         <rect class=\"rollback\" x=\"0\" y=\"4\" width=\"{width:.1}\" height=\"12\"/></svg>\
         <div class=\"meta\">{} of {} host deploys: {} failed, {} rolled back, {} pointer rollbacks</div></div>",
        cf.failures, cf.deploys, cf.failed, cf.rolled_back, cf.pointer_rollbacks
    );

    let restore = summary_rows("restore", &m.restore.seconds);
    let _ = write!(
        out,
        "<div class=\"card\" id=\"restore\"><b>Time to restore</b><br>{}<div class=\"meta\">{} restored, {} open</div></div>",
        chart_or_empty(&restore, seconds),
        m.restore.seconds.count,
        m.restore.open
    );

    let phases: Vec<(String, i64)> = m.phases_ms.iter().flat_map(|p| summary_rows(&p.phase, &p.ms)).collect();
    let _ = write!(
        out,
        "<div class=\"card\" id=\"phases\"><b>Deploy phases</b><br>{}</div>",
        chart_or_empty(&phases, millis)
    );
    out.push_str("</div>\n");
}

fn chart_or_empty(rows: &[(String, i64)], show: fn(i64) -> String) -> String {
    if rows.is_empty() { "<p class=\"empty\">No data in the window.</p>".to_owned() } else { bars(rows, show) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_comes_from_the_bucket() {
        assert_eq!(
            esc("<script>alert('x')</script>&\u{1b}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;\u{fffd}"
        );
    }

    #[test]
    fn the_template_has_every_placeholder_and_no_script() {
        for p in ["{{title}}", "{{generated}}", "{{store}}", "{{window}}", "{{version}}", "{{body}}"] {
            assert!(TEMPLATE.contains(p), "{p}");
        }
        let lower = TEMPLATE.to_ascii_lowercase();
        assert!(!lower.contains("<script") && !lower.contains("http://") && !lower.contains("https://"));
    }
}
