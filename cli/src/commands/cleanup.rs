//! `s3dock cleanup [APP] [--keep N] [--yes]`

use clap::Args;
use s3dock_core::names::AppName;
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table, bytes};

const LONG_ABOUT: &str = "\
Delete old images that nothing references. A dry run unless --yes.

For each app (or only APP) keeps the newest N images (--keep, default 5) plus every image a
version, an environment (current or rollback target) or a running agent references; the rest
is deleted, metadata first. Pushes that never completed (an archive without metadata) are
removed once older than a day. Nothing under archive/ or audit/ is ever touched. References
are read again right before deleting, so an image tagged or promoted meanwhile is spared.
A tag or pointer that cannot be read stops the cleanup of its app (exit 4): it is unknown
what it protects.

Examples:
  s3dock cleanup                       # what would go, for every app
  s3dock cleanup myapp --keep 10
  s3dock cleanup myapp --keep 10 --yes";

/// Delete old unreferenced images (dry run unless --yes)
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct CleanupArgs {
    /// Only this app (default: every app)
    pub app: Option<AppName>,
    /// How many of the newest images of each app to keep, referenced or not
    #[arg(long, value_name = "N", default_value_t = 5, allow_negative_numbers = true)]
    pub keep: usize,
    /// Really delete; without it nothing is changed
    #[arg(long)]
    pub yes: bool,
}

pub async fn run(ctx: &Context, args: &CleanupArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let dry_run = !args.yes;
    let report = registry.cleanup(args.app.as_ref(), args.keep, dry_run).await?;

    let mut table = Table::new(&["APP", "IMAGE", "ACTION", "SIZE", "WHY"]);
    let (mut count, mut freed) = (0usize, 0u64);
    let action = if dry_run { "would delete" } else { "deleted" };
    for app in &report.apps {
        // One list per app, newest image first (image tags sort chronologically).
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        for item in &app.deleted {
            rows.push((item.image.clone(), vec![action.into(), bytes(item.bytes), item.reason.clone()]));
        }
        for item in &app.kept {
            rows.push((item.image.clone(), vec!["keep".into(), bytes(item.bytes), item.reason.clone()]));
        }
        for image in &app.spared {
            rows.push((image.clone(), vec!["spared".into(), "-".into(), "referenced since the plan was made".into()]));
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0));
        for (image, rest) in rows {
            let mut cells = vec![app.app.clone(), image];
            cells.extend(rest);
            table.row(cells);
        }
        count += app.deleted.len();
        freed += app.freed_bytes;
    }
    let mut text = if table.is_empty() { String::new() } else { table.render() };
    let rerun = {
        let mut cmd = String::from("s3dock cleanup");
        if let Some(app) = &args.app {
            cmd.push_str(&format!(" {app}"));
        }
        cmd.push_str(&format!(" --keep {} --yes", args.keep));
        cmd
    };
    let summary = match (dry_run, count) {
        (_, 0) => "nothing to delete\n".to_owned(),
        (true, n) => format!(
            "dry run: nothing was deleted; `{rerun}` would delete {n} image{} and free {}\n",
            plural(n),
            bytes(freed)
        ),
        (false, n) => format!("deleted {n} image{}, freed {}\n", plural(n), bytes(freed)),
    };
    text.push_str(&summary);
    let doc = json!({
        "dry_run": report.dry_run,
        "keep": report.keep,
        "deleted_count": count,
        "freed_bytes": freed,
        "apps": report.apps,
    });
    Ok(Output::new(doc, text))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
