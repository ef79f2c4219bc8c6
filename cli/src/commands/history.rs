//! `s3dock history APP [ENV] [--type T]... [--limit N]`

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use s3dock_core::docs::{AuditRecord, EventType};
use s3dock_core::names::{AppName, EnvName};
use s3dock_core::registry::HistoryQuery;
use serde_json::{Value, json};

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table, bytes, time};

const LONG_ABOUT: &str = "\
Show an app's audit trail, newest first: pushes, tags, promotions, rollbacks, rejections,
archives, deploys and cleanups, with who did what and when.

Records that cannot be read are listed with their error unless a filter is given.

Examples:
  s3dock history myapp
  s3dock history myapp production --type promotion,rollback
  s3dock history myapp --type push --type tag --limit 10 --json";

/// Show an app's audit trail, newest first
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct HistoryArgs {
    /// The app, e.g. myapp (lowercase letters, digits, '.', '_', '-')
    pub app: AppName,
    /// Only records about this environment
    pub env: Option<EnvName>,
    /// Only these kinds of record (repeat, or separate with commas)
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',', value_parser = event_type())]
    pub types: Vec<EventType>,
    /// At most this many records (0: all)
    #[arg(long, value_name = "N", default_value_t = 50, allow_negative_numbers = true)]
    pub limit: usize,
}

/// The event types core knows, as clap's possible values (so `--help` lists them).
fn event_type() -> impl TypedValueParser<Value = EventType> {
    PossibleValuesParser::new(EventType::ALL.map(EventType::as_str))
        // The parser only lets through the names of `EventType::ALL`, which all parse back.
        .map(|s| s.parse::<EventType>().expect("a possible value is an event type"))
}

pub async fn run(ctx: &Context, args: &HistoryArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let query = HistoryQuery {
        env: args.env.clone(),
        types: args.types.iter().map(|t| t.as_str().to_owned()).collect(),
        limit: args.limit,
    };
    let entries = registry.history(&args.app, &query).await?;
    let mut table = Table::new(&["TIME", "EVENT", "USER", "ENV", "DETAILS"]);
    let mut rows = Vec::new();
    for e in &entries {
        match &e.record {
            Ok(r) => {
                table.row(vec![
                    time(&r.timestamp),
                    r.event_type.clone(),
                    r.user.clone(),
                    r.environment().unwrap_or("-").to_owned(),
                    summary(r),
                ]);
                let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("key".into(), Value::from(e.key.as_str()));
                }
                rows.push(v);
            }
            Err(why) => {
                table.row(vec!["-".into(), "?".into(), "-".into(), "-".into(), format!("ERROR: {why}")]);
                rows.push(json!({"key": e.key.as_str(), "error": why}));
            }
        }
    }
    let text = if table.is_empty() { String::new() } else { table.render() };
    let mut out = Output::new(json!({"app": args.app, "env": args.env, "entries": rows}), text);
    if entries.is_empty() {
        out = out.note(format!("no matching records for {}", args.app));
    } else if args.limit != 0 && entries.len() == args.limit {
        out = out.note(format!("showing the newest {}; pass --limit N (0 for all) to see more", args.limit));
    }
    Ok(out)
}

/// One line about a record, from the `details` each kind carries.
fn summary(r: &AuditRecord) -> String {
    let d = &r.details;
    let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
    let u = |k: &str| d.get(k).and_then(Value::as_u64);
    let line = match r.event_type.parse::<EventType>().ok() {
        Some(EventType::Push) => s("image_reference").map(|i| {
            let size = u("size").map(|n| format!(" ({})", bytes(n))).unwrap_or_default();
            let skipped = if d.get("was_skipped").and_then(Value::as_bool) == Some(true) { ", unchanged" } else { "" };
            format!("{i}{size}{skipped}")
        }),
        Some(EventType::Tag) => s("image_reference").map(|i| {
            let forced = s("previous_target").map(|p| format!(" (forced, was {p})")).unwrap_or_default();
            format!("{i} as {}{forced}", s("version").unwrap_or_default())
        }),
        Some(EventType::Promotion | EventType::Rollback) => s("source").map(|src| {
            let image = s("image_reference").filter(|i| *i != src).map(|i| format!(" ({i})")).unwrap_or_default();
            let seq = u("seq").map(|n| format!(", seq {n}")).unwrap_or_default();
            let prev = s("previous_target").map(|p| format!(", was {p}")).unwrap_or_default();
            format!("{src}{image}{seq}{prev}")
        }),
        Some(EventType::Reject | EventType::Archive) => {
            s("reason").map(|why| format!("{}: {why}", s("path").unwrap_or_default()))
        }
        Some(EventType::Deploy) => s("image_reference")
            .map(|i| format!("{i} on {} {}", s("host").unwrap_or_default(), s("result").unwrap_or_default())),
        Some(EventType::Cleanup) => {
            let n = d.get("deleted").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
            Some(format!(
                "deleted {n} image{}, freed {}",
                if n == 1 { "" } else { "s" },
                bytes(u("freed_bytes").unwrap_or(0))
            ))
        }
        None => None,
    };
    line.unwrap_or_else(|| {
        let raw = d.to_string();
        if raw.chars().count() > 100 { format!("{}…", raw.chars().take(100).collect::<String>()) } else { raw }
    })
}
