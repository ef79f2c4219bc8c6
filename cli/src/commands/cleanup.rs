//! `s3dock cleanup [APP] [--keep N] [--yes]`

use clap::Args;
use s3dock_core::names::AppName;
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table, bytes};

const LONG_ABOUT: &str = "\
Delete old images that nothing references. A dry run unless --yes.

For each app (or only APP) keeps the newest N images (--keep, default 5), every image pushed
less than --grace ago (default 24h: a fresh push of an old commit is not old), and every
image a version, an environment (current or rollback target) or a running agent references;
the rest is deleted, metadata first. Archives no metadata names (a push that never committed,
or the one a re-push replaced and archived) are removed once older than a day. Nothing under
archive/ or audit/ is ever touched.

Deletion cannot race a promotion: each image is claimed first, references are read again under
the claim, and a tag or promotion in progress either is seen (the image is spared) or refuses
and asks to be run again. Every deletion is audited (one cleanup record per image, written
before it is deleted), also with events = lambda and after a failure part-way. A tag or
pointer that cannot be read stops the cleanup of its app (exit 4): it is unknown what it
protects.

Examples:
  s3dock cleanup                       # what would go, for every app
  s3dock cleanup myapp --keep 10
  s3dock cleanup myapp --keep 10 --yes
  s3dock cleanup myapp --keep 3 --grace 7d --yes";

/// Delete old unreferenced images (dry run unless --yes)
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct CleanupArgs {
    /// Only this app (default: every app)
    pub app: Option<AppName>,
    /// How many of the newest images of each app to keep, referenced or not
    #[arg(long, value_name = "N", default_value_t = 5, allow_negative_numbers = true)]
    pub keep: usize,
    /// Never delete an image pushed less than this long ago (e.g. 24h, 7d, 0s)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = s3dock_core::duration::parse)]
    pub grace: std::time::Duration,
    /// Really delete; without it nothing is changed
    #[arg(long)]
    pub yes: bool,
}

pub async fn run(ctx: &Context, args: &CleanupArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let dry_run = !args.yes;
    let grace = chrono::Duration::from_std(args.grace).unwrap_or(chrono::Duration::MAX);
    let report = registry.cleanup(args.app.as_ref(), args.keep, grace, dry_run).await?;

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
        "grace_seconds": report.grace_seconds,
        "deleted_count": count,
        "freed_bytes": freed,
        "apps": report.apps,
    });
    Ok(Output::new(doc, text))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
