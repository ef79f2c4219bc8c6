//! `s3dock promote APP:TAG ENV` and `s3dock promote APP VERSION ENV`

use clap::Args;
use s3dock_core::names::{AppName, EnvName, ImageRef, Version};
use s3dock_core::registry::{Change, PromoteOutcome, PromoteSource};
use serde_json::{Value, json};

use super::{event_json, event_warning};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

const LONG_ABOUT: &str = "\
Point an environment at an image, directly or through a version.

Two forms, told apart by the number of arguments:
  APP:TAG ENV        the environment points at that image
  APP VERSION ENV    the environment points at the version's tag file, so it follows the tag
                     if the tag is ever moved with `s3dock tag --force`

The target must exist (exit 3 otherwise). The pointer is updated with compare-and-swap, so
concurrent promotions never lose one silently; promoting what is already current is a no-op
(exit 0). The pointer remembers what it replaced, for `s3dock rollback`.

Examples:
  s3dock promote myapp:20250721-2118-f7a5a27 staging
  s3dock promote myapp v1.2.0 production";

/// Point an environment at an image or a version
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT, override_usage = "s3dock promote [OPTIONS] <APP:TAG> <ENV>\n       s3dock promote [OPTIONS] <APP> <VERSION> <ENV>")]
pub struct PromoteArgs {
    /// APP:TAG (image form) or APP (version form)
    #[arg(value_name = "APP:TAG|APP", value_parser = parse_target)]
    pub target: Target,
    /// ENV (image form) or VERSION (version form)
    #[arg(value_name = "ENV|VERSION")]
    pub second: String,
    /// ENV (version form)
    #[arg(value_name = "ENV", value_parser = clap::value_parser!(EnvName))]
    pub env: Option<EnvName>,
}

/// The first argument: an image reference if it has a ':', else an app name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Image(ImageRef),
    App(AppName),
}

fn parse_target(s: &str) -> Result<Target, String> {
    if s.contains(':') {
        ImageRef::parse(s).map(Target::Image).map_err(|e| e.to_string())
    } else {
        AppName::parse(s).map(Target::App).map_err(|e| e.to_string())
    }
}

impl PromoteArgs {
    /// What to promote where; the arity decides the form. Checked before anything is opened.
    pub fn request(&self) -> Result<(PromoteSource, EnvName), CliError> {
        match (&self.target, &self.env) {
            (Target::App(app), Some(env)) => {
                let version = Version::parse(&self.second)?;
                Ok((PromoteSource::Version(app.clone(), version), env.clone()))
            }
            (Target::Image(image), None) => Ok((PromoteSource::Image(image.clone()), EnvName::parse(&self.second)?)),
            (Target::Image(image), Some(env)) => Err(CliError::usage(format!(
                "with three arguments the form is APP VERSION ENV, but {image} is an image; write `s3dock promote {image} ENV`, or `s3dock promote {} {} {env}`",
                image.app, self.second
            ))),
            (Target::App(app), None) => Err(CliError::usage(format!(
                "`s3dock promote {app} {}` is missing an argument; write `s3dock promote {app}:TAG ENV` for an image or `s3dock promote {app} VERSION ENV` for a version",
                self.second
            ))),
        }
    }
}

pub async fn run(ctx: &Context, args: &PromoteArgs) -> Result<Output, CliError> {
    let (source, env) = args.request()?;
    let settings = ctx.settings()?;
    let registry = ctx.open_registry(&settings).await?;
    let p = registry.promote(&source, &env).await?;
    let what = match &source {
        PromoteSource::Image(image) => image.to_string(),
        PromoteSource::Version(app, version) => format!("{app} {}", version.canonical()),
    };
    let text = match p.change {
        Change::Unchanged => format!("{env} already points to {what}; nothing to do\n"),
        _ => {
            let via = if p.version.is_some() { format!(" ({})", p.image) } else { String::new() };
            let was = p.previous.as_ref().map(|prev| format!(", was {prev}")).unwrap_or_default();
            format!("promoted {what}{via} to {env} (seq {}{was})\n", p.seq)
        }
    };
    let mut out = Output::new(pointer_json(&p), text);
    if p.attempts > 1 {
        out = out.note(format!("another promotion of {env} raced this one; it won after {} attempts", p.attempts));
    }
    Ok(out.warn_all(event_warning(&p.event, &format!("promoting {what} to {env}"))))
}

/// The JSON of a pointer write, shared with `rollback`.
pub(crate) fn pointer_json(p: &PromoteOutcome) -> Value {
    json!({
        "app": p.image.app,
        "env": p.env,
        "image": p.image.to_string(),
        "version": p.version,
        "key": p.key.as_str(),
        "seq": p.seq,
        "previous": p.previous,
        "change": p.change,
        "attempts": p.attempts,
        "event": event_json(&p.event),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::Cli;
    use crate::commands::Command;

    fn request(args: &[&str]) -> Result<(PromoteSource, EnvName), String> {
        let cli = Cli::try_parse_from(["s3dock", "promote"].iter().chain(args)).map_err(|e| e.to_string())?;
        let Command::Promote(p) = cli.command else { panic!("not promote") };
        p.request().map_err(|e| e.to_string())
    }

    #[test]
    fn the_arity_decides_the_form() {
        let (src, env) = request(&["myapp:20250721-2118-f7a5a27", "production"]).unwrap();
        assert!(matches!(src, PromoteSource::Image(i) if i.to_string() == "myapp:20250721-2118-f7a5a27"));
        assert_eq!(env.as_str(), "production");
        let (src, _) = request(&["myapp", "1.2.0", "staging"]).unwrap();
        assert!(matches!(src, PromoteSource::Version(a, v) if a.as_str() == "myapp" && v.canonical() == "v1.2.0"));
    }

    #[test]
    fn wrong_shapes_say_what_to_write() {
        let e = request(&["myapp", "production"]).unwrap_err();
        assert!(e.contains("missing an argument") && e.contains("myapp VERSION ENV"), "{e}");
        let e = request(&["myapp:20250721-2118-f7a5a27", "v1.2.0", "production"]).unwrap_err();
        assert!(e.contains("APP VERSION ENV"), "{e}");
        let e = request(&["myapp", "latest", "production"]).unwrap_err();
        assert!(e.contains("invalid version"), "{e}");
        let e = request(&["myapp:20250721-2118-f7a5a27", "Prod"]).unwrap_err();
        assert!(e.contains("invalid environment name"), "{e}");
        let e = request(&["My App", "v1.0.0", "prod"]).unwrap_err();
        assert!(e.contains("invalid app name"), "{e}");
        assert!(request(&["myapp"]).is_err());
        assert!(request(&["a", "v1.0.0", "b", "c"]).is_err());
    }
}
