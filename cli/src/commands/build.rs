//! `s3dock build APP`

use std::path::PathBuf;

use clap::Args;
use s3dock_core::names::AppName;
use s3dock_engine::{BollardEngine, BuildRequest};
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

const LONG_ABOUT: &str = "\
Build a Docker image tagged from the HEAD commit: APP:YYYYMMDD-HHMM-hash7.

The tag is the commit's committer time in UTC and the first 7 hex digits of its id, so the same
commit gives the same tag on any machine and in any time zone. The build refuses a tree with
modified or staged tracked files (commit or stash them first); untracked files do not block
it, but note they are part of the build context unless .dockerignore excludes them. The git
repository is the one containing the context directory. .dockerignore is honoured with
Docker's rules.

Building the same commit again with the same Dockerfile, platform and build arguments reuses
the image the engine already has (same image id, so the next push is skipped); --rebuild
forces a build.

The image is labelled with its provenance (org.opencontainers.image.revision, .created,
.source), which `s3dock push` reads back. Prints the image reference on stdout.

Examples:
  s3dock build myapp
  s3dock build myapp --dockerfile Dockerfile.prod --context ./backend
  s3dock build myapp --platform linux/amd64 --build-arg VERSION=1.2.0";

/// Build an image tagged from the HEAD commit (requires a clean tree)
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct BuildArgs {
    /// The app: the image repository and the bucket folder (e.g. myapp)
    pub app: AppName,
    /// The Dockerfile [default: CONTEXT/Dockerfile]
    #[arg(long, short = 'f', value_name = "FILE")]
    pub dockerfile: Option<PathBuf>,
    /// The build context directory
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub context: PathBuf,
    /// Target platform, e.g. linux/amd64 or linux/arm64
    #[arg(long, value_name = "OS/ARCH")]
    pub platform: Option<String>,
    /// A build argument (repeatable)
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = parse_build_arg)]
    pub build_args: Vec<(String, String)>,
    /// Build even if the engine already has this commit's image from the same Dockerfile,
    /// platform and build arguments (needed when untracked files in the context changed)
    #[arg(long)]
    pub rebuild: bool,
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

pub async fn run(ctx: &Context, args: &BuildArgs) -> Result<Output, CliError> {
    let engine = BollardEngine::connect().await?;
    let req = BuildRequest {
        app: args.app.clone(),
        context_dir: args.context.clone(),
        dockerfile: args.dockerfile.clone(),
        platform: args.platform.clone(),
        build_args: args.build_args.clone(),
        rebuild: args.rebuild,
    };
    ctx.info(&format!("building {} from {}", args.app, args.context.display()));
    let built = s3dock_engine::build(&engine, &req).await?;
    if built.reused {
        ctx.info(&format!(
            "{} is already built from this commit (image {}); --rebuild to build again",
            built.image_ref, built.image_id
        ));
    }
    for line in &built.log {
        tracing::info!(target: "s3dock_cli::build", "{line}");
    }
    let doc = json!({
        "image": built.image_ref.to_string(),
        "image_id": built.image_id,
        "commit": built.git.commit,
        "committed_at": built.git.committed_at.to_rfc3339(),
        "source": built.git.source_url,
        "reused": built.reused,
    });
    Ok(Output::new(doc, format!("{}\n", built.image_ref)).note(format!("next: s3dock push {}", built.image_ref)))
}
