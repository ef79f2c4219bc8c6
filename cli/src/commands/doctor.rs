//! `s3dock doctor [APP]`: every check a setup needs, one line each, with what to do.
//!
//! The checks run in order and each says ok, warning, failure or skipped (a check whose
//! precondition failed, e.g. the bucket checks after refused credentials). The command exits 0
//! when nothing failed, warnings included, and otherwise with the exit code of the first
//! failure's class (6 unavailable, 4 refused, 5 integrity...). It never writes, except the
//! precondition probe's throw-away keys under `probe/`.

mod checks;

use std::time::Duration;

use clap::Args;
use s3dock_core::ErrorKind;
use s3dock_core::names::AppName;
use s3dock_engine::deploy::spec::parse_duration;
use serde::Serialize;
use serde_json::{Value, json};
use serde_with::skip_serializing_none;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, clean};
use crate::style::{Paint, Style};

const LONG_ABOUT: &str = "\
Check everything a setup needs, in one run, and say what to do about each problem.

One line per check (ok, warning, failure or skipped):
  config         which config file, profile, store and event mode are in effect, and from where
  store          the store location (a local directory must exist)
  credentials    the AWS caller identity (STS GetCallerIdentity) for an S3 store
  bucket         the bucket (and prefix) can be listed
  versioning     the bucket keeps old versions (GetBucketVersioning)
  preconditions  the store honours conditional writes (the probe writes and deletes
                 throw-away keys under probe/: the only write doctor makes)
  functions      with events = \"lambda\": the newest push, tag and promotion each have the
                 audit record their function writes, within --lag, and how long it took
  docker         the Docker engine and the API version s3dock speaks with it
  agents         per environment: agents whose heartbeat is older than --ttl (stale), and
                 agents that run something other than what the pointer names (behind)
  pointers, tags with APP: pointers and tags whose image is missing (dangling)

Exit code: 0 when no check failed (warnings included); otherwise the code of the first
failure's class: 6 the store, credentials, functions or an agent unavailable (stale), 4 the
store ignores conditional writes, 5 a dangling pointer or tag, 2 a bad configuration.

Examples:
  s3dock doctor
  s3dock doctor myapp
  s3dock --profile prod doctor myapp --lag 2m --ttl 5m
  s3dock doctor --json";

/// Check the setup: config, credentials, bucket, conditional writes, functions, Docker, agents
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct DoctorArgs {
    /// Also check this app's pointers and tags, and only its agents and functions' records
    pub app: Option<AppName>,
    /// How long a function may take to write its audit record before it counts as dead
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_positive)]
    pub lag: Duration,
    /// Agent heartbeats older than this are stale
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_positive)]
    pub ttl: Duration,
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() { Err("must be more than 0, e.g. 5m".into()) } else { Ok(d) }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warning,
    Failure,
}

impl Status {
    fn mark(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skipped => "skipped",
            Status::Warning => "warning",
            Status::Failure => "failure",
        }
    }

    fn paint(self) -> Paint {
        match self {
            Status::Ok => Paint::Green,
            Status::Skipped => Paint::Dim,
            Status::Warning => Paint::Yellow,
            Status::Failure => Paint::Red,
        }
    }
}

/// One line of the report.
#[skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub summary: String,
    /// What to do, for warnings and failures.
    pub fix: Option<String>,
    /// The class of a failure: what the exit code says.
    #[serde(skip)]
    pub kind: Option<ErrorKind>,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl Check {
    pub fn ok(name: impl Into<String>, summary: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Ok,
            summary: summary.into(),
            fix: None,
            kind: None,
            details: Value::Null,
        }
    }

    pub fn skipped(name: impl Into<String>, summary: impl Into<String>) -> Self {
        Check { status: Status::Skipped, ..Check::ok(name, summary) }
    }

    pub fn warning(name: impl Into<String>, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { status: Status::Warning, fix: Some(fix.into()), ..Check::ok(name, summary) }
    }

    pub fn failure(
        name: impl Into<String>,
        kind: ErrorKind,
        summary: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check { status: Status::Failure, fix: Some(fix.into()), kind: Some(kind), ..Check::ok(name, summary) }
    }

    pub fn with(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

pub async fn run(ctx: &Context, args: &DoctorArgs) -> Result<Output, CliError> {
    let checks = checks::run_all(ctx, args).await;
    Ok(render(&checks, &ctx.style()))
}

/// The report: a line per check, the fix under each problem, a closing count.
pub fn render(checks: &[Check], style: &Style) -> Output {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0).max(13);
    let mut text = String::new();
    for c in checks {
        let mark = format!("{:<8}", c.status.mark());
        text.push_str(&format!("{} {:<width$}  {}\n", style.paint(&mark, c.status.paint()), c.name, clean(&c.summary)));
        if let Some(fix) = &c.fix {
            text.push_str(&format!("{:<8} {:<width$}  {} {}\n", "", "", style.paint("fix:", Paint::Bold), clean(fix)));
        }
    }
    let failures = checks.iter().filter(|c| c.status == Status::Failure).count();
    let warnings = checks.iter().filter(|c| c.status == Status::Warning).count();
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    text.push_str(&match (failures, warnings) {
        (0, 0) => "\nall checks passed\n".to_owned(),
        (0, w) => format!("\nno failures, {}\n", plural(w, "warning")),
        (f, w) => format!("\n{}, {}\n", plural(f, "failure"), plural(w, "warning")),
    });
    let doc = json!({
        "ok": failures == 0,
        "failures": failures,
        "warnings": warnings,
        "checks": checks,
    });
    let mut out = Output::new(doc, text);
    if let Some(kind) = checks.iter().find(|c| c.status == Status::Failure).and_then(|c| c.kind) {
        out = out.exit_with(kind);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_failure_picks_the_exit_code_and_colour_is_optional() {
        let checks = vec![
            Check::ok("config", "profile default"),
            Check::warning("docker", "not reachable", "start it"),
            Check::failure("bucket", ErrorKind::Unavailable, "bucket b does not exist", "create it"),
            Check::failure("tags", ErrorKind::Integrity, "v1 dangles", "re-push"),
        ];
        let out = render(&checks, &Style::plain());
        assert_eq!(out.exit, Some(ErrorKind::Unavailable));
        assert!(out.text.contains("failure  bucket"), "{}", out.text);
        assert!(out.text.contains("fix: create it"), "{}", out.text);
        assert!(out.text.ends_with("2 failures, 1 warning\n"), "{}", out.text);
        assert!(!out.text.contains('\u{1b}'));
        assert_eq!(out.json["failures"], 2);
        assert_eq!(out.json["checks"][2]["status"], "failure");
        let coloured = render(&checks, &Style::coloured());
        assert!(coloured.text.contains("\u{1b}[31m"), "{}", coloured.text);
        let fine = render(&checks[..1], &Style::plain());
        assert_eq!(fine.exit, None);
        assert!(fine.text.ends_with("all checks passed\n"));
    }
}
