//! `s3dock pull APP ENV|VERSION`

use clap::Args;
use s3dock_core::names::{AppName, EnvName, Version};
use s3dock_core::transfer::Progress;
use s3dock_engine::BollardEngine;
use s3dock_engine::ship::{self, PullRequest, PullTarget};
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, human_bytes};
use crate::progress::Bar;

const LONG_ABOUT: &str = "\
Bring the image an environment (or a version) resolves to into the local Docker engine.

One streaming pass: download -> MD5 + SHA-256 -> gunzip -> docker load, with no archive on disk.
Interrupted downloads resume; a checksum mismatch fails the pull and nothing is loaded; after
loading, the image id is checked against the metadata. Skips when the engine already has the
image id.

The second argument is a version when it is a semantic version (1.2.0, v1.2.0-rc.1), else an
environment. --keep N then removes older local images of the app beyond the N newest that no
container uses.

Examples:
  s3dock pull myapp production
  s3dock pull myapp v1.2.0
  s3dock pull myapp production --keep 3";

/// Load the image an environment or version points to into Docker
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct PullArgs {
    pub app: AppName,
    /// An environment (production) or a version (v1.2.0)
    #[arg(value_name = "ENV|VERSION")]
    pub target: String,
    /// Keep the N newest local images of the app and remove older unused ones
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub keep: Option<u64>,
}

/// A semantic version is a version; anything else must be an environment name.
pub fn target(s: &str) -> Result<PullTarget, CliError> {
    if let Ok(v) = Version::parse(s) {
        return Ok(PullTarget::Version(v));
    }
    Ok(PullTarget::Env(EnvName::parse(s)?))
}

pub async fn run(ctx: &Context, args: &PullArgs) -> Result<Output, CliError> {
    let target = target(&args.target)?;
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let engine = BollardEngine::connect().await?;
    let req = PullRequest { app: args.app.clone(), target, keep: args.keep.map(|k| k as usize) };
    let progress = Progress::default();
    let bar = Bar::start(ctx, "pull", progress.clone());
    let report = ship::pull(&engine, &registry, &req, &progress).await;
    bar.finish();
    let report = report?;
    let image = report.image.to_string();
    let mut text = match &report.skipped {
        Some(why) => format!("{image} is already loaded: {why}\n"),
        None => {
            let rate = if report.seconds > 0.0 { report.bytes as f64 / report.seconds } else { 0.0 };
            let mut t = format!(
                "pulled {image} ({}, {:.1}s, {}/s), verified and loaded\n",
                human_bytes(report.bytes),
                report.seconds,
                human_bytes(rate as u64)
            );
            if let Some(p) = &report.partial {
                t.push_str(&format!(
                    "the engine had {} of its {} layers: downloaded only the others ({} not downloaded)\n",
                    p.layers_present,
                    p.layers,
                    human_bytes(p.bytes_skipped)
                ));
            }
            t
        }
    };
    for r in &report.removed {
        text.push_str(&format!("removed old image {r}\n"));
    }
    let doc = json!({
        "app": args.app,
        "image": image,
        "image_id": report.image_id,
        "version": report.resolved.version,
        "chain": report.resolved.chain,
        "skipped": report.skipped,
        "bytes": report.bytes,
        "partial": report.partial,
        "seconds": report.seconds,
        "removed": report.removed,
    });
    Ok(Output::new(doc, text))
}
