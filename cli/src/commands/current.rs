//! `s3dock current APP ENV`

use clap::Args;
use s3dock_core::names::{AppName, EnvName};
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, time};

const LONG_ABOUT: &str = "\
Print the image an environment points to, resolved through its version if it has one.

Prints exactly APP:TAG and a newline, nothing else, so scripts can use it:
  docker run \"$(s3dock current myapp production)\"

The pointer is followed through tags with cycle detection and must stay inside the app: a
malformed, cyclic or foreign pointer exits 5, a missing one exits 3.

Examples:
  s3dock current myapp production
  s3dock current myapp staging --json";

/// Print the image an environment points to
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct CurrentArgs {
    /// The app, e.g. myapp (lowercase letters, digits, '.', '_', '-')
    pub app: AppName,
    /// The environment, e.g. production
    pub env: EnvName,
}

pub async fn run(ctx: &Context, args: &CurrentArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let r = registry.resolve(&args.app, &args.env).await?;
    let image = r.record.image.to_string();
    let pointer = r.pointer.as_ref();
    let doc = json!({
        "app": args.app,
        "env": args.env,
        "image": image,
        "version": r.version,
        "seq": pointer.map(|p| p.seq()),
        "chain": r.chain,
        "promoted_at": pointer.map(|p| time(&p.promoted_at)),
        "promoted_by": pointer.map(|p| p.promoted_by.clone()),
    });
    Ok(Output::new(doc, format!("{image}\n")))
}
