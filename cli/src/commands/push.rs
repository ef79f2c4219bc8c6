//! `s3dock push APP:TAG`

use chrono::{DateTime, Utc};
use clap::Args;
use s3dock_core::gzip::GzipOptions;
use s3dock_core::names::ImageRef;
use s3dock_core::transfer::Progress;
use s3dock_engine::BollardEngine;
use s3dock_engine::ship::{self, GitOverride, PushRequest};
use serde_json::json;

use super::{event_json, event_warning};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, human_bytes};
use crate::progress::Bar;

const LONG_ABOUT: &str = "\
Upload an image from the local Docker engine to the bucket.

One streaming pass: docker save -> gzip (parallel, on every core) -> MD5 + SHA-256 -> multipart
upload with concurrent parts. Memory stays bounded whatever the image size; nothing is written
to disk. The metadata is written last, so an interrupted push (Ctrl-C, a crash, a lost network)
leaves no metadata and no visible archive.

Skips without exporting when the bucket already holds this tag with the same Docker image id,
and skips the replace when the archive turns out byte-identical (same MD5). The same tag with
different content (two CI runners on one commit, a build that is not reproducible) is
uploaded beside the old one and swapped in by one conditional metadata write, after the old
content was copied to archive/: a reader sees the old image or the new one, never a mix.
When a tag file, a pointer or a running agent references the image, that replacement would
change what they run, so it is refused unless --force (audited; agents compare image ids and
redeploy).

The git facts (commit, time, source) come from the image's labels, written by `s3dock build`.
For an image built otherwise, give them with --git-commit and --git-time; the tag must then be
the one those facts imply.

Examples:
  s3dock push myapp:20250721-2118-f7a5a27
  s3dock push myapp:20250721-2118-f7a5a27 --git-commit f7a5a27e... --git-time 2025-07-21T21:18:00Z
  s3dock push myapp:20250721-2118-f7a5a27 --force   # replace content production runs";

/// Upload an image to the bucket (streamed, deduplicated, verified)
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct PushArgs {
    /// APP:TAG, e.g. myapp:20250721-2118-f7a5a27
    pub image: ImageRef,
    /// The full commit id, for images not built by `s3dock build`
    #[arg(long, value_name = "SHA", requires = "git_time")]
    pub git_commit: Option<String>,
    /// The commit's time (RFC 3339), for images not built by `s3dock build`
    #[arg(long, value_name = "RFC3339", requires = "git_commit", value_parser = parse_time)]
    pub git_time: Option<DateTime<Utc>>,
    /// The source repository URL, for images not built by `s3dock build`
    #[arg(long, value_name = "URL", requires = "git_commit")]
    pub git_source: Option<String>,
    /// Replace different content under this tag even though a tag, pointer or agent references
    /// it (the replacement is archived and audited, and agents redeploy)
    #[arg(long)]
    pub force: bool,
    /// gzip level, 1 (fastest) to 9 (smallest)
    #[arg(long, value_name = "N", default_value_t = GzipOptions::default().level, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub level: u32,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2025-07-21T21:18:00Z ({e})"))
}

fn parse_commit(s: &str) -> Result<String, CliError> {
    let ok = (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit());
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(CliError::usage(format!("--git-commit {s:?} is not a full commit id (40 hex digits)")))
    }
}

/// What a push reports when Ctrl-C may have come: what happened decides, not when the signal
/// arrived. A push that returned its report committed its metadata, even if the signal came
/// during its last steps (then the warning says so); one that failed after the signal committed
/// nothing (the upload was aborted, no metadata was written).
fn settle<T>(
    result: Result<T, ship::ShipError>,
    cancelled: bool,
    image: &ImageRef,
) -> Result<(T, Option<String>), CliError> {
    match result {
        Err(_) if cancelled => Err(CliError::interrupted(format!(
            "push of {image} interrupted; nothing was committed (no metadata was written, the upload was aborted)"
        ))),
        Err(e) => Err(e.into()),
        Ok(report) => {
            Ok((report, cancelled.then(|| format!("interrupted after {image} was committed: the push is complete"))))
        }
    }
}

pub async fn run(ctx: &Context, args: &PushArgs) -> Result<Output, CliError> {
    let git = match (&args.git_commit, &args.git_time) {
        (Some(c), Some(t)) => {
            Some(GitOverride { commit: parse_commit(c)?, committed_at: *t, source: args.git_source.clone() })
        }
        _ => None,
    };
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let engine = BollardEngine::connect().await?;
    let req = PushRequest {
        image: args.image.clone(),
        git,
        gzip: GzipOptions { level: args.level, ..GzipOptions::default() },
        force: args.force,
    };
    let progress = Progress::default();
    let bar = Bar::start(ctx, "push", progress.clone());
    // Ctrl-C and SIGTERM cancel through the data path: the upload sees a failed body and
    // aborts its multipart upload, so nothing partial stays in the bucket.
    let token = ctx.interrupt_token();
    let report = ship::push(&engine, &registry, &req, &progress, &token).await;
    bar.finish();
    let (report, late_interrupt) = settle(report, token.is_cancelled(), &args.image)?;
    let o = &report.outcome;
    let store_url = registry.store().url();
    let text = match &o.skipped {
        Some(why) => format!("{} is up to date in {store_url}: {why}\n", args.image),
        None => {
            let d = o.digests.as_ref();
            let size = d.map(|d| d.size).unwrap_or(0);
            let rate = if report.seconds > 0.0 { report.tar_bytes as f64 / report.seconds } else { 0.0 };
            let mut t = format!(
                "pushed {} to {store_url}/{} ({} compressed from {}, {:.1}s, {}/s)\n",
                args.image,
                o.archive_key,
                human_bytes(size),
                human_bytes(report.tar_bytes),
                report.seconds,
                human_bytes(rate as u64)
            );
            t.push_str(&layer_lines(&o.layers));
            for a in &o.archived {
                t.push_str(&format!("archived the previous content to {a}\n"));
            }
            if !o.forced_over.is_empty() {
                t.push_str(&format!(
                    "replaced content referenced by {} (--force); agents redeploy it\n",
                    o.forced_over.join(", ")
                ));
            }
            t
        }
    };
    let doc = json!({
        "image": args.image.to_string(),
        "image_id": report.image_id,
        "store": store_url,
        "archive_key": o.archive_key.as_str(),
        "metadata_key": o.metadata_key.as_str(),
        "skipped": o.skipped,
        // Empty for a composed archive: its ranges' digests are in the metadata instead.
        "md5": o.digests.as_ref().map(|d| d.md5.clone()).filter(|m| !m.is_empty()),
        "sha256": o.digests.as_ref().map(|d| d.sha256.clone()).filter(|m| !m.is_empty()),
        "layers": o.layers,
        "size": o.digests.as_ref().map(|d| d.size),
        "tar_bytes": report.tar_bytes,
        "archived": o.archived.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "forced_over": o.forced_over,
        "seconds": report.seconds,
        "event": event_json(&o.event),
    });
    Ok(Output::new(doc, text)
        .warn_all(event_warning(&o.event, &format!("pushing {}", args.image)))
        .warn_all(late_interrupt))
}

/// What a layered push uploaded and what it reused (and from which image), one line per range.
fn layer_lines(layers: &[s3dock_core::layers::RangePlan]) -> String {
    if layers.is_empty() {
        return String::new();
    }
    let (reused, uploaded): (Vec<_>, Vec<_>) = layers.iter().partition(|l| l.reused_from.is_some());
    let sum = |v: &[&s3dock_core::layers::RangePlan]| v.iter().map(|l| l.bytes).sum::<u64>();
    let mut t = format!(
        "{} uploaded ({}), {} reused from earlier images ({})\n",
        uploaded.len(),
        human_bytes(sum(&uploaded)),
        reused.len(),
        human_bytes(sum(&reused))
    );
    for l in layers {
        let what = match (&l.diff_id, &l.path) {
            (Some(d), _) => format!("layer {}", &d[..d.len().min(19)]),
            (None, Some(p)) => p.clone(),
            (None, None) => "config and manifest".into(),
        };
        match &l.reused_from {
            Some(from) => t.push_str(&format!("  reused   {:>10}  {what} (from {from})\n", human_bytes(l.bytes))),
            None => t.push_str(&format!("  uploaded {:>10}  {what}\n", human_bytes(l.bytes))),
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: Ctrl-C during the commit phase printed "nothing was committed" although the
    /// push had committed.
    #[test]
    fn an_interrupt_is_reported_by_what_happened() {
        let image = ImageRef::parse("myapp:20250721-2118-f7a5a27").unwrap();
        let (report, warning) = settle(Ok("committed"), true, &image).unwrap();
        assert_eq!(report, "committed");
        assert!(warning.unwrap().contains("the push is complete"));
        assert_eq!(settle(Ok(1), false, &image).unwrap(), (1, None));
        let failed = || Err::<(), _>(ship::ShipError::Refused { message: "stream failed".into() });
        let e = settle(failed(), true, &image).unwrap_err();
        assert_eq!(e.exit_code(), 130, "{e:?}");
        assert!(e.to_string().contains("nothing was committed"), "{e}");
        let e = settle(failed(), false, &image).unwrap_err();
        assert_eq!(e.exit_code(), 4, "{e:?}");
    }
}
