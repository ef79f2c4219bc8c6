//! `s3dock list apps | images APP [--month YYYYMM] | tags APP | envs APP`

use clap::{Args, Subcommand};
use s3dock_core::names::AppName;
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table, bytes, or_dash, time};

const LONG_ABOUT: &str = "\
List what the store holds: apps, an app's images, its versions, or its environments.

Examples:
  s3dock list apps
  s3dock list images myapp --month 202507
  s3dock list tags myapp
  s3dock list envs myapp --json";

/// List apps, images, versions or environments
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct ListArgs {
    #[command(subcommand)]
    pub what: ListWhat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ListWhat {
    /// Every app with images, tags or environments
    #[command(
        long_about = "Every app with images, tags or environments, one per line.\n\nExample:\n  s3dock list apps"
    )]
    Apps,
    /// An app's images, newest first, with size and push state
    #[command(
        long_about = "An app's images, newest first: size, when the archive was written, and whether the push completed (an archive without metadata is a push in progress or an interrupted one).\n\nExamples:\n  s3dock list images myapp\n  s3dock list images myapp --month 202507"
    )]
    Images {
        /// The app, e.g. myapp (lowercase letters, digits, '.', '_', '-')
        app: AppName,
        /// Only this month's folder (YYYYMM: the image tag's month)
        #[arg(long, value_name = "YYYYMM", value_parser = parse_month)]
        month: Option<String>,
    },
    /// An app's versions in semantic-version order, with the image each names
    #[command(
        long_about = "An app's versions in semantic-version order (v1.2.0-rc.1 before v1.2.0 before v1.10.0), with the image each names and who tagged it when.\n\nExample:\n  s3dock list tags myapp"
    )]
    Tags {
        /// The app, e.g. myapp (lowercase letters, digits, '.', '_', '-')
        app: AppName,
    },
    /// An app's environments, with the image each resolves to
    #[command(
        long_about = "An app's environments with the image each resolves to, its generation (seq) and who promoted it when. An environment whose pointer is broken is listed with its error (and a warning); the listing itself still succeeds.\n\nExample:\n  s3dock list envs myapp"
    )]
    Envs {
        /// The app, e.g. myapp (lowercase letters, digits, '.', '_', '-')
        app: AppName,
    },
}

pub async fn run(ctx: &Context, args: &ListArgs) -> Result<Output, CliError> {
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let store = registry.store().url();
    match &args.what {
        ListWhat::Apps => {
            let apps = registry.list_apps().await?;
            let text: String = apps.iter().map(|a| format!("{a}\n")).collect();
            let mut out = Output::new(json!({ "apps": apps }), text);
            if apps.is_empty() {
                out = out.note(format!("no apps in {store} yet; push an image first"));
            }
            Ok(out)
        }
        ListWhat::Images { app, month } => {
            let images = registry.list_images(app, month.as_deref()).await?;
            let mut table = Table::new(&["IMAGE", "SIZE", "WRITTEN", "STATE"]);
            let mut rows = Vec::new();
            for e in &images {
                let state = match (&e.archive, &e.metadata) {
                    (Some(_), Some(_)) => "complete",
                    (Some(_), None) => "incomplete: no metadata (uploading or interrupted)",
                    (None, _) => "incomplete: metadata without archive",
                };
                let written = e.archive.as_ref().or(e.metadata.as_ref()).and_then(|o| o.last_modified);
                table.row(vec![
                    e.image.to_string(),
                    or_dash(e.archive.as_ref().map(|a| bytes(a.size))),
                    or_dash(written.as_ref().map(time)),
                    state.to_owned(),
                ]);
                rows.push(json!({
                    "image": e.image.to_string(),
                    "month": e.month,
                    "complete": e.is_complete(),
                    "size": e.archive.as_ref().map(|a| a.size),
                    "archive_key": e.archive.as_ref().map(|a| a.key.as_str()),
                    "metadata_key": e.metadata.as_ref().map(|m| m.key.as_str()),
                    "written_at": written.as_ref().map(time),
                }));
            }
            let mut out = Output::new(json!({"app": app, "month": month, "images": rows}), render(&table));
            if images.is_empty() {
                let scope = month.as_ref().map(|m| format!(" in {m}")).unwrap_or_default();
                out = out.note(format!("no images of {app}{scope} in {store}"));
            }
            Ok(out)
        }
        ListWhat::Tags { app } => {
            let tags = registry.list_tags(app).await?;
            let mut table = Table::new(&["VERSION", "IMAGE", "TAGGED_AT", "TAGGED_BY"]);
            let mut rows = Vec::new();
            let mut warnings = Vec::new();
            for t in &tags {
                let version = t.version.canonical();
                match &t.doc {
                    Ok(d) => {
                        let image = t.image.as_ref().map(|i| i.to_string());
                        table.row(vec![
                            version.clone(),
                            image.clone().unwrap_or_else(|| format!("ERROR: targets {}", d.target_path)),
                            time(&d.promoted_at),
                            d.promoted_by.clone(),
                        ]);
                        if image.is_none() {
                            warnings
                                .push(format!("{} targets {:?}, which is not an image of {app}", t.key, d.target_path));
                        }
                        rows.push(json!({
                            "version": version, "key": t.key.as_str(), "image": image,
                            "tagged_at": time(&d.promoted_at), "tagged_by": d.promoted_by, "error": null,
                        }));
                    }
                    Err(e) => {
                        table.row(vec![version.clone(), format!("ERROR: {e}"), "-".into(), "-".into()]);
                        warnings.push(e.clone());
                        rows.push(json!({
                            "version": version, "key": t.key.as_str(), "image": null,
                            "tagged_at": null, "tagged_by": null, "error": e,
                        }));
                    }
                }
            }
            let mut out = Output::new(json!({"app": app, "tags": rows}), render(&table)).warn_all(warnings);
            if tags.is_empty() {
                out = out.note(format!("{app} has no versions; tag one with `s3dock tag {app}:TAG VERSION`"));
            }
            Ok(out)
        }
        ListWhat::Envs { app } => {
            let envs = registry.list_envs(app).await?;
            let mut table = Table::new(&["ENV", "IMAGE", "VIA", "SEQ", "PROMOTED_AT", "PROMOTED_BY"]);
            let mut rows = Vec::new();
            let mut warnings = Vec::new();
            for e in &envs {
                let pointer = e.pointer.as_ref().ok();
                let error = match (&e.pointer, &e.image) {
                    (Err(why), _) | (Ok(_), Err(why)) => Some(why.clone()),
                    _ => None,
                };
                let via = pointer.and_then(|p| match p.target_type {
                    s3dock_core::docs::TargetType::Tag => Some(p.describe_target()),
                    s3dock_core::docs::TargetType::Image => None,
                });
                let image = e.image.as_ref().ok().map(|i| i.to_string());
                table.row(vec![
                    e.env.to_string(),
                    image.clone().unwrap_or_else(|| format!("ERROR: {}", error.as_deref().unwrap_or("?"))),
                    or_dash(via.clone()),
                    or_dash(pointer.map(|p| p.seq())),
                    or_dash(pointer.map(|p| time(&p.promoted_at))),
                    or_dash(pointer.map(|p| p.promoted_by.clone())),
                ]);
                if let Some(why) = &error {
                    warnings.push(format!("{app} {}: {why}", e.env));
                }
                rows.push(json!({
                    "env": e.env,
                    "key": e.key.as_str(),
                    "image": image,
                    "version": via,
                    "seq": pointer.map(|p| p.seq()),
                    "promoted_at": pointer.map(|p| time(&p.promoted_at)),
                    "promoted_by": pointer.map(|p| p.promoted_by.clone()),
                    "error": error,
                }));
            }
            let mut out = Output::new(json!({"app": app, "envs": rows}), render(&table)).warn_all(warnings);
            if envs.is_empty() {
                out = out.note(format!("{app} has no environments; promote with `s3dock promote {app}:TAG ENV`"));
            }
            Ok(out)
        }
    }
}

/// A table, or nothing at all when it has no rows (the hint on stderr says why).
fn render(table: &Table) -> String {
    if table.is_empty() { String::new() } else { table.render() }
}

/// `--month YYYYMM`.
pub fn parse_month(s: &str) -> Result<String, String> {
    let ok = s.len() == 6 && s.chars().all(|c| c.is_ascii_digit()) && matches!(s[4..].parse::<u32>(), Ok(1..=12));
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?} is not a month; write YYYYMM, e.g. 202507")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        assert!(parse_month("202507").is_ok());
        for bad in ["2025-07", "202513", "202500", "20257", "abcdef", "２０２５０７"] {
            assert!(parse_month(bad).is_err(), "{bad}");
        }
    }
}
