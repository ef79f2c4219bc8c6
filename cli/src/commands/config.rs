//! `s3dock config init | show | list`

use std::path::Path;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::{self, ConfigFile, Events, check_profile_name};
use crate::context::Context;
use crate::exit::CliError;
use crate::output::{Output, Table};
use crate::settings::{
    ConfigLocation, DEFAULT_PROFILE, ENV_PROFILE, ENV_STORE, Settings, Source, Sourced, StoreLocation, default_store,
    requested_profile,
};

const LONG_ABOUT: &str = "\
Create, show and list configuration profiles.

The config file is --config FILE, else $S3DOCK_CONFIG, else ~/.config/s3dock/config.toml
(the XDG config directory). Each profile names a store and how to reach it:

  default_profile = \"default\"
  [profiles.default]
  store = \"file:///home/me/.local/share/s3dock/store\"
  events = \"inline\"                 # or \"lambda\": audit and notifications by the Lambdas
  [profiles.prod]
  store = \"s3://acme-images/s3dock\"
  region = \"eu-west-1\"
  endpoint = \"http://127.0.0.1:4566\" # optional, any S3-compatible endpoint
  path_style = true                   # optional
  aws_profile = \"work\"                # optional; else the standard AWS chain
  account_id = \"123456789012\"        # optional: agent queues' account (inline events)
  user = \"alice\"                      # optional acting user for audit records

Precedence: profile: --profile > $S3DOCK_PROFILE > default_profile > \"default\".
Store: --store > $S3DOCK_STORE > the profile's store > ~/.local/share/s3dock/store.
Acting user: the profile's user > $S3DOCK_USER > $USER@hostname.
Without a config file the built-in \"default\" profile is a local store with inline events.
Unknown keys are errors, so a typo never falls back to a default silently.

Examples:
  s3dock config init
  s3dock config init --profile prod --store s3://acme-images/s3dock --events lambda
  s3dock config show
  s3dock --profile prod config show --json
  s3dock config list";

/// Create, show and list configuration profiles
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub action: ConfigAction,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigAction {
    /// Write a config file with one profile and a commented S3 example
    #[command(long_about = "\
Write a config file with one profile and a commented example of an S3 profile.

The profile is named by --profile (default \"default\") and becomes default_profile; its store
is --store (default: the local store under the XDG data directory). $S3DOCK_PROFILE and
$S3DOCK_STORE are used when the flags are absent. Refuses to replace an existing file
(exit 4) unless --force, which keeps the old one as FILE.bak.

Examples:
  s3dock config init
  s3dock config init --profile prod --store s3://acme-images/s3dock --events lambda
  s3dock config init --config ./s3dock.toml --store ./images --force")]
    Init {
        /// Who writes the audit trail: this CLI (inline) or the deployed Lambda functions
        #[arg(long, value_enum, default_value_t = Events::Inline)]
        events: Events,
        /// Replace an existing file (the old one is kept as FILE.bak)
        #[arg(long)]
        force: bool,
    },
    /// Show the effective settings and where each comes from
    #[command(long_about = "\
Show the effective settings and where each comes from: a flag, an environment variable, the
config file, the selected profile, or the built-in default. Nothing is contacted; the file
holds no secrets (AWS credentials come from the AWS chain) and none are shown.

Examples:
  s3dock config show
  s3dock --profile prod config show --json")]
    Show,
    /// List the profiles, marking the default and the active one
    #[command(long_about = "\
List the profiles of the config file with their store and event mode, marking the default
profile (default_profile) and the active one (after --profile and $S3DOCK_PROFILE).

Example:
  s3dock config list")]
    List,
}

pub async fn run(ctx: &Context, args: &ConfigArgs) -> Result<Output, CliError> {
    match &args.action {
        ConfigAction::Init { events, force } => init(ctx, *events, *force),
        ConfigAction::Show => show(&ctx.settings()?),
        ConfigAction::List => list(ctx),
    }
}

fn init(ctx: &Context, events: Events, force: bool) -> Result<Output, CliError> {
    let location = ConfigLocation::resolve(ctx.flags.config.as_deref(), &ctx.env)?;
    let path = &location.path;
    let exists = path.exists();
    if exists && !force {
        return Err(CliError::conflict(format!(
            "{} already exists; edit it, or pass --force to replace it (the old file is kept as {}.bak)",
            path.display(),
            path.display()
        )));
    }
    let profile = ctx.flags.profile.clone().or_else(|| ctx.env.var(ENV_PROFILE).map(str::to_owned));
    let profile = profile.unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    check_profile_name(&profile).map_err(CliError::usage)?;
    let store = match ctx.flags.store.as_deref().or_else(|| ctx.env.var(ENV_STORE)) {
        Some(raw) => {
            StoreLocation::parse(raw, &ctx.env).map_err(|why| CliError::usage(format!("invalid --store: {why}")))?
        }
        None => StoreLocation::Local(default_store(&ctx.env)?),
    };
    let text = config::template(&profile, &store.url(), events);
    // What we write must load: refuse rather than leave a file every command then rejects.
    ConfigFile::parse(&text, path)?;

    let backup = if exists { Some(path.with_file_name(format!("{}.bak", file_name(path)))) } else { None };
    write_config(path, &text, backup.as_deref()).map_err(|e| {
        CliError::internal(format!(
            "cannot write {}: {e}; check the directory's permissions or pass --config FILE",
            path.display()
        ))
    })?;
    let mut out = Output::new(
        json!({
            "path": path.display().to_string(),
            "profile": profile,
            "store": store.url(),
            "events": events.as_str(),
            "replaced": exists,
            "backup": backup.as_ref().map(|b| b.display().to_string()),
        }),
        format!("wrote {} (profile {profile}: store {}, events {})\n", path.display(), store.url(), events.as_str()),
    );
    if let Some(b) = &backup {
        out = out.note(format!("the previous file is kept as {}", b.display()));
    }
    if store.is_s3() {
        out = out.note(format!(
            "add region, endpoint or aws_profile under [profiles.{profile}] in {} if the bucket needs them",
            path.display()
        ));
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "config.toml".into())
}

/// Writes through a temp file and a rename, so a crash never leaves half a config.
fn write_config(path: &Path, text: &str, backup: Option<&Path>) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    if let Some(b) = backup {
        std::fs::copy(path, b)?;
    }
    let tmp = dir.join(format!(".{}.tmp-{}", file_name(path), std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn sourced_json<T: serde::Serialize>(s: &Sourced<T>) -> Value {
    json!({"value": s.value, "source": s.source.kind(), "from": s.source.to_string()})
}

fn show(s: &Settings) -> Result<Output, CliError> {
    let mut table = Table::new(&["SETTING", "VALUE", "FROM"]);
    let file_from = if s.config_exists {
        s.config.source.to_string()
    } else {
        format!("{} (no file: built-in defaults)", s.config.source)
    };
    table.row(vec!["config".into(), s.config.path.display().to_string(), file_from]);
    table.row(vec!["profile".into(), s.profile.value.clone(), s.profile.source.to_string()]);
    table.row(vec!["store".into(), s.store.value.url(), s.store.source.to_string()]);
    table.row(vec!["events".into(), s.events.value.as_str().into(), s.events.source.to_string()]);
    table.row(vec!["user".into(), s.user.value.clone(), s.user.source.to_string()]);
    let s3_row = |name: &str, v: Option<(String, &Source)>, default: &str| -> Vec<String> {
        match v {
            Some((v, src)) => vec![name.into(), v, src.to_string()],
            None => vec![name.into(), "-".into(), default.into()],
        }
    };
    let is_s3 = s.store.value.is_s3();
    let unused = "default (unused: the store is local)";
    let pick = |aws: &'static str| if is_s3 { aws } else { unused };
    table.row(s3_row(
        "region",
        s.s3.region.as_ref().map(|r| (r.value.clone(), &r.source)),
        pick("default (AWS chain, else us-east-1)"),
    ));
    table.row(s3_row(
        "endpoint",
        s.s3.endpoint.as_ref().map(|r| (r.value.clone(), &r.source)),
        pick("default (AWS S3)"),
    ));
    table.row(s3_row(
        "path_style",
        s.s3.path_style.as_ref().map(|r| (r.value.to_string(), &r.source)),
        pick("default (false)"),
    ));
    table.row(s3_row(
        "aws_profile",
        s.s3.aws_profile.as_ref().map(|r| (r.value.clone(), &r.source)),
        pick("default (AWS chain)"),
    ));
    table.row(s3_row(
        "account_id",
        s.s3.account_id.as_ref().map(|r| (r.value.clone(), &r.source)),
        pick("default (STS, when an inline promotion notifies agents)"),
    ));

    let opt = |v: Option<Value>| v.unwrap_or(Value::Null);
    let doc = json!({
        "config_file": {
            "path": s.config.path.display().to_string(),
            "exists": s.config_exists,
            "source": s.config.source.kind(),
            "from": s.config.source.to_string(),
        },
        "profile": sourced_json(&s.profile),
        "store": {"value": s.store.value.url(), "source": s.store.source.kind(), "from": s.store.source.to_string()},
        "events": sourced_json(&Sourced::new(s.events.value.as_str(), s.events.source.clone())),
        "user": sourced_json(&s.user),
        "region": opt(s.s3.region.as_ref().map(sourced_json)),
        "endpoint": opt(s.s3.endpoint.as_ref().map(sourced_json)),
        "path_style": opt(s.s3.path_style.as_ref().map(sourced_json)),
        "aws_profile": opt(s.s3.aws_profile.as_ref().map(sourced_json)),
        "account_id": opt(s.s3.account_id.as_ref().map(sourced_json)),
    });
    Ok(Output::new(doc, table.render()))
}

fn list(ctx: &Context) -> Result<Output, CliError> {
    let location = ConfigLocation::resolve(ctx.flags.config.as_deref(), &ctx.env)?;
    let file = location.load()?;
    let active = requested_profile(&ctx.flags, &ctx.env, file.as_ref());
    let default = file.as_ref().and_then(|f| f.default_profile.clone()).unwrap_or_else(|| DEFAULT_PROFILE.to_owned());
    let builtin_store = || default_store(&ctx.env).map(|p| StoreLocation::Local(p).url());
    let profiles: Vec<(String, String, Events, bool)> = match &file {
        Some(f) => f
            .profiles
            .iter()
            .map(|(name, p)| {
                let store = match &p.store {
                    Some(s) => s.clone(),
                    None => builtin_store().unwrap_or_else(|_| "-".into()),
                };
                (name.clone(), store, p.events.unwrap_or(Events::Inline), false)
            })
            .collect(),
        None => vec![(DEFAULT_PROFILE.to_owned(), builtin_store()?, Events::Inline, true)],
    };
    let mut table = Table::new(&["PROFILE", "STORE", "EVENTS", ""]);
    let mut rows = Vec::new();
    for (name, store, events, builtin) in &profiles {
        let is_default = *name == default;
        let is_active = *name == active.value;
        let marks: Vec<&str> = [(is_default, "default"), (is_active, "active"), (*builtin, "built in")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, m)| *m)
            .collect();
        table.row(vec![name.clone(), store.clone(), events.as_str().into(), marks.join(", ")]);
        rows.push(json!({
            "name": name, "store": store, "events": events.as_str(),
            "default": is_default, "active": is_active, "builtin": builtin,
        }));
    }
    let mut out = Output::new(
        json!({
            "config_file": location.path.display().to_string(),
            "exists": file.is_some(),
            "default_profile": default,
            "active_profile": active.value,
            "profiles": rows,
        }),
        table.render(),
    );
    if file.is_none() {
        out = out.note(format!(
            "no config file at {}: the built-in profile is used; `s3dock config init` writes one",
            location.path.display()
        ));
    }
    if !profiles.iter().any(|(n, ..)| *n == active.value) {
        out = out.warn(format!("the active profile {:?} (from {}) is not defined", active.value, active.source));
    }
    Ok(out)
}
