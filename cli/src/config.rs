//! The configuration file: named profiles, each a store and how to reach it.
//!
//! ```toml
//! default_profile = "default"
//! [profiles.default]
//! store = "file:///home/me/.local/share/s3dock/store"
//! events = "inline"
//! [profiles.prod]
//! store = "s3://acme-images/s3dock"
//! region = "eu-west-1"
//! endpoint = "http://127.0.0.1:4566"
//! path_style = true
//! aws_profile = "work"
//! account_id = "123456789012"
//! user = "alice"
//! ```
//!
//! Unknown keys are errors that name the key and its line: a typo must never fall back to a
//! default silently (a misspelled `store` would otherwise send a production command to the
//! local store). The file holds no secrets: credentials always come from the AWS chain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exit::CliError;

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used when neither `--profile` nor `S3DOCK_PROFILE` names one.
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// One profile. Every key is optional: a missing one takes its default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `s3://bucket[/prefix]`, `file:///abs/path` or a path.
    pub store: Option<String>,
    /// Who runs the event handlers (audit, notifications).
    pub events: Option<Events>,
    pub region: Option<String>,
    /// Any S3-compatible endpoint (`http://127.0.0.1:4566`); AWS itself when absent.
    pub endpoint: Option<String>,
    /// Path-style addressing, which most S3 emulators need.
    pub path_style: Option<bool>,
    /// The AWS profile to take credentials (and region) from.
    pub aws_profile: Option<String>,
    /// The AWS account id whose agent queues inline promotions may notify; asked from STS
    /// (GetCallerIdentity) when absent and a registered agent has a queue.
    pub account_id: Option<String>,
    /// The acting user recorded in documents and audit records.
    pub user: Option<String>,
}

/// `events = "inline" | "lambda"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Events {
    /// This process writes the audit trail right after each change (no AWS stack needed).
    Inline,
    /// The Lambda functions do, from S3 events; the CLI writes no audit itself.
    Lambda,
}

impl Events {
    pub fn as_str(self) -> &'static str {
        match self {
            Events::Inline => "inline",
            Events::Lambda => "lambda",
        }
    }
}

impl ConfigFile {
    /// Reads and parses the file at `path`; `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<ConfigFile>, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(CliError::usage(format!(
                    "cannot read the config file {}: {e}; check its permissions or pass --config FILE",
                    path.display()
                )));
            }
        };
        Self::parse(&text, path).map(Some)
    }

    /// Parses the text of a config file; errors name the file, line and column.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, CliError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_col(text, s.start)).map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default();
            CliError::usage(format!(
                "{}{at}: {}; fix the file (see `s3dock config --help`)",
                path.display(),
                e.message().trim_end_matches('.')
            ))
        })?;
        for name in file.profiles.keys() {
            check_profile_name(name).map_err(|why| CliError::usage(format!("{}: {why}", path.display())))?;
        }
        Ok(file)
    }

    /// The profile names, sorted.
    pub fn profile_names(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }
}

/// Profile names appear in TOML table headers and messages: keep them plain.
pub fn check_profile_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid profile name {name:?}; use letters, digits, '-', '_' or '.', at most 64 characters (e.g. prod, eu-west)"
        ))
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// The file `config init` writes: one live profile and a commented example of an S3 one.
pub fn template(profile: &str, store: &str, events: Events) -> String {
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    // The example must not redefine the live profile once uncommented.
    let example = if profile == "prod" { "production" } else { "prod" };
    format!(
        r#"# s3dock configuration (docs/cli.md, or `s3dock config --help`).
#
# Precedence, highest first: command-line flags (--store, --profile), the environment
# (S3DOCK_STORE, S3DOCK_PROFILE, S3DOCK_USER), the selected profile below, built-in defaults.
# Unknown keys are errors, so a typo never falls back to a default silently.
# No secrets here: AWS credentials come from the usual AWS chain (environment, ~/.aws, SSO).

default_profile = {profile_q}

[profiles.{profile}]
store = {store_q}
# "inline": this CLI writes the audit trail after each change (no AWS stack needed).
# "lambda": leave audit and agent notifications to the deployed Lambda functions.
events = {events_q}
# user = "alice"                          # acting user in audit records; default $USER@host

# An S3 bucket (uncomment, adapt, then use it with --profile {example} or S3DOCK_PROFILE={example}):
# [profiles.{example}]
# store = "s3://acme-images/s3dock"       # s3://BUCKET[/PREFIX]
# region = "eu-west-1"
# endpoint = "http://127.0.0.1:4566"      # optional: any S3-compatible endpoint
# path_style = true                       # optional: needed by most S3 emulators
# aws_profile = "work"                    # optional: else the standard AWS chain
# account_id = "123456789012"             # optional: agent queues' account (inline events); else STS
# events = "lambda"
# user = "alice"
"#,
        profile_q = quoted(profile),
        store_q = quoted(store),
        events_q = quoted(events.as_str()),
    )
}

/// Where the file lives when neither `--config` nor `S3DOCK_CONFIG` says: the XDG config
/// directory (`~/.config/s3dock/config.toml` on Linux).
pub fn default_path(config_dir: Option<&Path>) -> Option<PathBuf> {
    config_dir.map(|d| d.join("s3dock").join("config.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, CliError> {
        ConfigFile::parse(text, Path::new("/c/config.toml"))
    }

    #[test]
    fn parses_the_documented_shape() {
        let f = parse(
            r#"
default_profile = "prod"
[profiles.default]
store = "file:///tmp/store"
events = "inline"
[profiles.prod]
store = "s3://acme-images/s3dock"
region = "eu-west-1"
endpoint = "http://127.0.0.1:4566"
path_style = true
aws_profile = "work"
account_id = "123456789012"
user = "alice"
events = "lambda"
"#,
        )
        .unwrap();
        assert_eq!(f.default_profile.as_deref(), Some("prod"));
        assert_eq!(f.profile_names(), ["default", "prod"]);
        let p = &f.profiles["prod"];
        assert_eq!(p.events, Some(Events::Lambda));
        assert_eq!(p.path_style, Some(true));
        assert_eq!(p.user.as_deref(), Some("alice"));
        assert_eq!(p.account_id.as_deref(), Some("123456789012"));
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let e = parse("[profiles.default]\nstore = \"/x\"\nstroe = \"/y\"\n").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("stroe") && e.message().contains("config.toml:3:1"), "{e}");
        let e = parse("defualt_profile = \"x\"\n").unwrap_err();
        assert!(e.message().contains("defualt_profile"), "{e}");
        let e = parse("[profiles.default]\nevents = \"lambada\"\n").unwrap_err();
        assert!(e.message().contains("lambada") || e.message().contains("variant"), "{e}");
        assert!(!e.message().contains('\n'));
    }

    #[test]
    fn refuses_odd_profile_names() {
        let e = parse("[profiles.\"a b\"]\n").unwrap_err();
        assert!(e.message().contains("invalid profile name"), "{e}");
    }

    #[test]
    fn the_template_parses_back() {
        let t = template("dev", "file:///home/me/store \"quoted\"", Events::Lambda);
        let f = parse(&t).unwrap();
        assert_eq!(f.default_profile.as_deref(), Some("dev"));
        assert_eq!(f.profiles["dev"].store.as_deref(), Some("file:///home/me/store \"quoted\""));
        assert_eq!(f.profiles["dev"].events, Some(Events::Lambda));
        // The commented example becomes a valid profile once uncommented.
        let uncommented: String = t
            .lines()
            .skip_while(|l| !l.starts_with("# [profiles.prod]"))
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let f2 = parse(&format!("{t}\n{uncommented}")).unwrap();
        assert_eq!(f2.profiles["prod"].region.as_deref(), Some("eu-west-1"));
        // A live profile named like the example gets an example of another name.
        let t = template("prod", "s3://acme-images", Events::Inline);
        assert!(t.contains("# [profiles.production]") && !t.contains("# [profiles.prod]\n"), "{t}");
    }
}
