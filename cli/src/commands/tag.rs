//! `s3dock tag APP:TAG VERSION [--force]`

use clap::Args;
use s3dock_core::names::{ImageRef, Version};
use s3dock_core::registry::Change;
use serde_json::json;

use super::{event_json, event_warning};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

const LONG_ABOUT: &str = "\
Give an image a semantic version.

Tags are immutable: tagging the same image again is a no-op (exit 0); tagging another image
with an existing version is refused (exit 4) unless --force, which archives the old tag file
under archive/ and records the move in the audit trail. Versions may be assigned in any order
(v1.1.5 after v1.2.0); `1.2.0` and `v1.2.0` are the same tag.

Examples:
  s3dock tag myapp:20250721-2118-f7a5a27 v1.2.0
  s3dock tag myapp:20250720-1045-def5678 v1.1.5
  s3dock tag myapp:20250722-0900-0a1b2c3 v1.2.0 --force";

/// Give an image a semantic version
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct TagArgs {
    /// The image: APP:YYYYMMDD-HHMM-hash7, as `s3dock build` names it
    #[arg(value_name = "APP:TAG")]
    pub image: ImageRef,
    /// A semantic version: v1.2.0, 1.2.0-rc.1, v2.0.0+build.7
    #[arg(value_name = "VERSION")]
    pub version: Version,
    /// Move an existing version to this image (the old tag file is archived)
    #[arg(long)]
    pub force: bool,
}

pub async fn run(ctx: &Context, args: &TagArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let t = registry.tag(&args.image, &args.version, args.force).await?;
    let app = &t.image.app;
    let version = t.version.canonical();
    let text = match t.change {
        Change::Created => format!("tagged {} as {version}\n", t.image),
        Change::Unchanged => format!("{app} {version} already points to {}; nothing to do\n", t.image),
        Change::Updated => format!(
            "moved {app} {version} from {} to {}; the old tag file is archived at {}\n",
            t.previous.as_deref().unwrap_or("?"),
            t.image,
            t.archived_to.as_ref().map(|k| k.as_str()).unwrap_or("?"),
        ),
    };
    let doc = json!({
        "app": app,
        "image": t.image.to_string(),
        "version": version,
        "key": t.key.as_str(),
        "change": t.change,
        "previous": t.previous,
        "archived_to": t.archived_to.as_ref().map(|k| k.as_str()),
        "event": event_json(&t.event),
    });
    Ok(Output::new(doc, text).warn_all(event_warning(&t.event, &format!("tagging {} as {version}", t.image))))
}
