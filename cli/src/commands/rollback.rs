//! `s3dock rollback APP ENV`

use clap::Args;
use s3dock_core::names::{AppName, EnvName};
use s3dock_core::registry::Change;

use super::event_warning;
use super::promote::pointer_json;
use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

const LONG_ABOUT: &str = "\
Point an environment back at what its last promotion replaced.

Uses the previous target recorded in the pointer (an image or a version), checks it still
exists, and writes it with compare-and-swap as a new generation (seq + 1), audited as a
rollback. Rolling back twice toggles between the last two targets. If the pointer changes
while rolling back, nothing is written (exit 4): check `s3dock current` and run it again.
A pointer with no previous target (a first promotion) exits 3.

Example:
  s3dock rollback myapp production";

/// Point an environment back at its previous target
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct RollbackArgs {
    /// The app, e.g. myapp (lowercase letters, digits, '.', '_', '-')
    pub app: AppName,
    /// The environment, e.g. production
    pub env: EnvName,
}

pub async fn run(ctx: &Context, args: &RollbackArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let p = registry.rollback(&args.app, &args.env).await?;
    let target = match &p.version {
        Some(v) => format!("{} {v} ({})", p.image.app, p.image),
        None => p.image.to_string(),
    };
    let was = p.previous.as_ref().map(|prev| format!(", was {prev}")).unwrap_or_default();
    let text = match p.change {
        Change::Unchanged => format!("{} already points to {target}; nothing to do\n", args.env),
        _ => format!("rolled back {} to {target} (seq {}{was})\n", args.env, p.seq),
    };
    let warning = event_warning(&p.event, &format!("rolling back {} {}", args.app, args.env));
    Ok(Output::new(pointer_json(&p), text).warn_all(warning))
}
