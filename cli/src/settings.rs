//! The one resolve step: what was typed (flags), the environment and the config file become
//! typed [`Settings`], each value remembering where it came from so `config show` can say.
//!
//! Precedence, highest first:
//!
//! | setting | order |
//! |---|---|
//! | config file | `--config` > `S3DOCK_CONFIG` > `{config_dir}/s3dock/config.toml` |
//! | profile | `--profile` > `S3DOCK_PROFILE` > `default_profile` in the file > `default` |
//! | store | `--store` > `S3DOCK_STORE` > the profile's `store` > `{data_dir}/s3dock/store` |
//! | acting user | the profile's `user` > `S3DOCK_USER` > `$USER@hostname` |
//! | events, region, endpoint, path_style, aws_profile, account_id | the profile > default |
//!
//! The outside world (environment variables, XDG directories, host name, working directory)
//! arrives as an [`Environment`] value, so resolution is a pure function tests can call.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use s3dock_aws::location::Base;

use crate::config::{self, ConfigFile, Events, Profile};
use crate::exit::CliError;
use crate::flags::GlobalArgs;

pub const ENV_STORE: &str = "S3DOCK_STORE";
pub const ENV_PROFILE: &str = "S3DOCK_PROFILE";
pub const ENV_CONFIG: &str = "S3DOCK_CONFIG";
pub const ENV_USER: &str = "S3DOCK_USER";
/// The profile used when nothing names one, and the one built in when there is no file.
pub const DEFAULT_PROFILE: &str = "default";
/// The longest acting user accepted (documents refuse longer `promoted_by` values).
const MAX_USER_LEN: usize = 200;

/// What resolution reads from outside the command line.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Environment variables; empty values count as unset.
    pub vars: BTreeMap<String, String>,
    /// `dirs::config_dir()`: `$XDG_CONFIG_HOME` or `~/.config` on Linux.
    pub config_dir: Option<PathBuf>,
    /// `dirs::data_dir()`: `$XDG_DATA_HOME` or `~/.local/share` on Linux.
    pub data_dir: Option<PathBuf>,
    pub home_dir: Option<PathBuf>,
    pub hostname: Option<String>,
    pub cwd: Option<PathBuf>,
}

impl Environment {
    /// The variables s3dock reads.
    const VARS: [&'static str; 9] =
        [ENV_STORE, ENV_PROFILE, ENV_CONFIG, ENV_USER, "USER", "LOGNAME", "USERNAME", "NO_COLOR", "CLICOLOR_FORCE"];

    /// This process's environment.
    pub fn from_process() -> Self {
        let vars = Self::VARS.iter().filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v))).collect();
        Environment {
            vars,
            config_dir: dirs::config_dir(),
            data_dir: dirs::data_dir(),
            home_dir: dirs::home_dir(),
            hostname: gethostname::gethostname().into_string().ok().filter(|h| !h.is_empty()),
            cwd: std::env::current_dir().ok(),
        }
    }

    /// A variable's value, `None` if unset or empty.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag (`--store`).
    Flag(&'static str),
    /// An environment variable (`S3DOCK_STORE`).
    Env(&'static str),
    /// The config file itself (`default_profile`).
    File,
    /// A key of the selected profile.
    Profile(String),
    /// Built in.
    Default,
}

impl Source {
    /// `flag`, `env`, `file`, `profile` or `default`, for `--json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Flag(_) => "flag",
            Source::Env(_) => "env",
            Source::File => "file",
            Source::Profile(_) => "profile",
            Source::Default => "default",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File => f.write_str("config file"),
            Source::Profile(p) => write!(f, "profile {p}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub source: Source,
}

impl<T> Sourced<T> {
    pub fn new(value: T, source: Source) -> Self {
        Sourced { value, source }
    }
}

/// The first value present among flag, environment variable and fallbacks.
fn first_of(flag: Option<(&str, &'static str)>, env: Option<(&str, &'static str)>) -> Option<Sourced<String>> {
    flag.map(|(v, name)| Sourced::new(v.to_owned(), Source::Flag(name)))
        .or_else(|| env.map(|(v, name)| Sourced::new(v.to_owned(), Source::Env(name))))
}

/// Where the config file is (it may not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    pub path: PathBuf,
    pub source: Source,
}

impl ConfigLocation {
    /// `--config` > `S3DOCK_CONFIG` > the XDG default.
    pub fn resolve(flag: Option<&Path>, env: &Environment) -> Result<Self, CliError> {
        if let Some(p) = flag {
            return Ok(ConfigLocation { path: absolute(p, env), source: Source::Flag("--config") });
        }
        if let Some(p) = env.var(ENV_CONFIG) {
            return Ok(ConfigLocation { path: absolute(Path::new(p), env), source: Source::Env(ENV_CONFIG) });
        }
        match config::default_path(env.config_dir.as_deref()) {
            Some(path) => Ok(ConfigLocation { path, source: Source::Default }),
            None => Err(CliError::usage(
                "cannot find a configuration directory (HOME and XDG_CONFIG_HOME are unset); pass --config FILE or set S3DOCK_CONFIG",
            )),
        }
    }

    /// Loads the file. A missing file is fine at the default location (built-in defaults
    /// apply) but an error when it was named explicitly: that is a typo, not a choice.
    pub fn load(&self) -> Result<Option<ConfigFile>, CliError> {
        let file = ConfigFile::load(&self.path)?;
        if file.is_none() && self.source != Source::Default {
            return Err(CliError::usage(format!(
                "config file {} (from {}) does not exist; create it with `s3dock config init --config {}` or fix the path",
                self.path.display(),
                self.source,
                self.path.display()
            )));
        }
        Ok(file)
    }
}

/// A relative path taken against the working directory; `~/` against the home directory.
fn absolute(p: &Path, env: &Environment) -> PathBuf {
    Base::from(env).absolute(p)
}

/// Where images live: the one store location of the workspace, read with the working
/// directory as base and `~/` as the home directory.
pub use s3dock_aws::location::Location as StoreLocation;

impl<'a> From<&'a Environment> for Base<'a> {
    fn from(env: &'a Environment) -> Base<'a> {
        Base { dir: env.cwd.as_deref(), home: env.home_dir.as_deref() }
    }
}

/// The S3 connection settings of the profile, kept for display (they are also folded into
/// [`StoreLocation::S3`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Settings {
    pub region: Option<Sourced<String>>,
    pub endpoint: Option<Sourced<String>>,
    pub path_style: Option<Sourced<bool>>,
    pub aws_profile: Option<Sourced<String>>,
    /// The account of the agent queues inline promotions notify (else asked from STS).
    pub account_id: Option<Sourced<String>>,
}

/// Everything a command needs to know, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: ConfigLocation,
    /// Whether the config file exists (without it, the built-in default profile applies).
    pub config_exists: bool,
    pub profile: Sourced<String>,
    pub store: Sourced<StoreLocation>,
    pub s3: S3Settings,
    pub events: Sourced<Events>,
    pub user: Sourced<String>,
}

/// The profile `--profile`, `S3DOCK_PROFILE` or the file select, before checking it exists.
pub fn requested_profile(flags: &GlobalArgs, env: &Environment, file: Option<&ConfigFile>) -> Sourced<String> {
    first_of(flags.profile.as_deref().map(|p| (p, "--profile")), env.var(ENV_PROFILE).map(|p| (p, ENV_PROFILE)))
        .or_else(|| file.and_then(|f| f.default_profile.clone()).map(|p| Sourced::new(p, Source::File)))
        .unwrap_or_else(|| Sourced::new(DEFAULT_PROFILE.to_owned(), Source::Default))
}

/// The default local store: `{data_dir}/s3dock/store`.
pub fn default_store(env: &Environment) -> Result<PathBuf, CliError> {
    env.data_dir.as_ref().map(|d| d.join("s3dock").join("store")).ok_or_else(|| {
        CliError::usage(
            "cannot find a data directory for the default local store (HOME and XDG_DATA_HOME are unset); pass --store or set S3DOCK_STORE",
        )
    })
}

/// `$USER@hostname`, the acting user when nothing else names one.
fn os_user(env: &Environment) -> String {
    let user = env.var("USER").or_else(|| env.var("LOGNAME")).or_else(|| env.var("USERNAME")).unwrap_or("unknown");
    match &env.hostname {
        Some(h) => format!("{user}@{h}"),
        None => user.to_owned(),
    }
}

impl Settings {
    /// The resolve step: flags > environment > profile > defaults.
    pub fn resolve(flags: &GlobalArgs, env: &Environment) -> Result<Settings, CliError> {
        let config = ConfigLocation::resolve(flags.config.as_deref(), env)?;
        let file = config.load()?;
        Self::resolve_with(flags, env, config, file.as_ref())
    }

    /// Resolution once the file is loaded (`None`: no file at the default location).
    pub fn resolve_with(
        flags: &GlobalArgs,
        env: &Environment,
        config: ConfigLocation,
        file: Option<&ConfigFile>,
    ) -> Result<Settings, CliError> {
        let profile_name = requested_profile(flags, env, file);
        let builtin = Profile::default();
        let profile: &Profile = match file {
            None if profile_name.value == DEFAULT_PROFILE => &builtin,
            None => {
                return Err(CliError::usage(format!(
                    "profile {:?} (from {}) is not defined: there is no config file at {}; the only profile is the built-in {DEFAULT_PROFILE:?}; create it with `s3dock config init --profile {} --store URL`",
                    profile_name.value,
                    profile_name.source,
                    config.path.display(),
                    profile_name.value
                )));
            }
            Some(f) => f.profiles.get(&profile_name.value).ok_or_else(|| {
                let known = f.profile_names();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                CliError::usage(format!(
                    "profile {:?} (from {}) is not defined in {}; known profiles: {known}; pass --profile NAME or add [profiles.{}]",
                    profile_name.value,
                    profile_name.source,
                    config.path.display(),
                    profile_name.value
                ))
            })?,
        };
        let in_profile = || Source::Profile(profile_name.value.clone());

        let store_raw =
            first_of(flags.store.as_deref().map(|s| (s, "--store")), env.var(ENV_STORE).map(|s| (s, ENV_STORE)))
                .or_else(|| profile.store.clone().map(|s| Sourced::new(s, in_profile())));
        let store = match store_raw {
            Some(raw) => {
                let loc = StoreLocation::parse(&raw.value, env)
                    .map_err(|why| CliError::usage(format!("invalid store (from {}): {why}", raw.source)))?;
                Sourced::new(loc, raw.source)
            }
            None => Sourced::new(StoreLocation::Local(default_store(env)?), Source::Default),
        };

        let s3 = S3Settings {
            region: profile.region.clone().map(|v| Sourced::new(v, in_profile())),
            endpoint: profile.endpoint.clone().map(|v| Sourced::new(v, in_profile())),
            path_style: profile.path_style.map(|v| Sourced::new(v, in_profile())),
            aws_profile: profile.aws_profile.clone().map(|v| Sourced::new(v, in_profile())),
            account_id: profile.account_id.clone().map(|v| Sourced::new(v, in_profile())),
        };
        if let Some(a) = &s3.account_id
            && !(a.value.len() == 12 && a.value.chars().all(|c| c.is_ascii_digit()))
        {
            return Err(CliError::usage(format!(
                "profile {:?}: account_id {:?} is not a 12-digit AWS account id; fix it or remove it (then STS is asked)",
                profile_name.value, a.value
            )));
        }
        let store = match store.value {
            StoreLocation::S3(mut cfg) => {
                cfg.region = s3.region.as_ref().map(|r| r.value.clone());
                cfg.endpoint = s3.endpoint.as_ref().map(|e| e.value.clone());
                cfg.path_style = s3.path_style.as_ref().is_some_and(|p| p.value);
                cfg.aws_profile = s3.aws_profile.as_ref().map(|p| p.value.clone());
                let cfg =
                    cfg.validate().map_err(|e| CliError::usage(format!("profile {:?}: {e}", profile_name.value)))?;
                Sourced::new(StoreLocation::S3(cfg), store.source)
            }
            local => Sourced::new(local, store.source),
        };

        let events = match profile.events {
            Some(e) => Sourced::new(e, in_profile()),
            None => Sourced::new(Events::Inline, Source::Default),
        };

        let user = match (&profile.user, env.var(ENV_USER)) {
            (Some(u), _) => Sourced::new(u.clone(), in_profile()),
            (None, Some(u)) => Sourced::new(u.to_owned(), Source::Env(ENV_USER)),
            (None, None) => Sourced::new(os_user(env), Source::Default),
        };
        if user.value.trim().is_empty() || user.value.len() > MAX_USER_LEN || user.value.chars().any(char::is_control) {
            return Err(CliError::usage(format!(
                "invalid acting user {:?} (from {}): it must be 1 to {MAX_USER_LEN} bytes without control characters",
                user.value, user.source
            )));
        }

        Ok(Settings { config_exists: file.is_some(), config, profile: profile_name, store, s3, events, user })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        Environment {
            vars: vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            config_dir: Some("/home/me/.config".into()),
            data_dir: Some("/home/me/.local/share".into()),
            home_dir: Some("/home/me".into()),
            hostname: Some("box".into()),
            cwd: Some("/work".into()),
        }
    }

    fn flags() -> GlobalArgs {
        GlobalArgs::default()
    }

    const FILE: &str = r#"
default_profile = "dev"
[profiles.dev]
store = "/srv/dev-store"
[profiles.prod]
store = "s3://acme-images/s3dock"
region = "eu-west-1"
endpoint = "http://127.0.0.1:4566"
path_style = true
user = "deployer"
events = "lambda"
"#;

    fn resolve(f: &GlobalArgs, e: &Environment, file: Option<&str>) -> Result<Settings, CliError> {
        let loc = ConfigLocation { path: "/home/me/.config/s3dock/config.toml".into(), source: Source::Default };
        let parsed = file.map(|t| ConfigFile::parse(t, &loc.path).unwrap());
        Settings::resolve_with(f, e, loc, parsed.as_ref())
    }

    #[test]
    fn without_a_file_everything_defaults_to_a_local_store() {
        let s = resolve(&flags(), &env(&[("USER", "me")]), None).unwrap();
        assert_eq!(s.profile, Sourced::new("default".to_owned(), Source::Default));
        assert_eq!(s.store.value, StoreLocation::Local("/home/me/.local/share/s3dock/store".into()));
        assert_eq!(s.store.source, Source::Default);
        assert_eq!(s.events.value, Events::Inline);
        assert_eq!(s.user, Sourced::new("me@box".to_owned(), Source::Default));
        assert!(!s.config_exists);
    }

    #[test]
    fn flags_beat_env_beat_profile_beat_default() {
        let f = GlobalArgs { store: Some("/from/flag".into()), ..flags() };
        let e = env(&[(ENV_STORE, "/from/env"), (ENV_PROFILE, "prod")]);
        let s = resolve(&f, &e, Some(FILE)).unwrap();
        assert_eq!(s.store, Sourced::new(StoreLocation::Local("/from/flag".into()), Source::Flag("--store")));
        assert_eq!(s.profile.source, Source::Env(ENV_PROFILE));

        let s = resolve(&flags(), &e, Some(FILE)).unwrap();
        assert_eq!(s.store, Sourced::new(StoreLocation::Local("/from/env".into()), Source::Env(ENV_STORE)));

        let s = resolve(&flags(), &env(&[(ENV_PROFILE, "prod")]), Some(FILE)).unwrap();
        let StoreLocation::S3(cfg) = &s.store.value else { panic!("{s:?}") };
        assert_eq!(cfg.url(), "s3://acme-images/s3dock");
        assert_eq!(cfg.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert!(cfg.path_style);
        assert_eq!(cfg.region.as_deref(), Some("eu-west-1"));
        assert_eq!(s.store.source, Source::Profile("prod".into()));
        assert_eq!(s.events, Sourced::new(Events::Lambda, Source::Profile("prod".into())));

        // default_profile picks dev when nothing else names a profile.
        let s = resolve(&flags(), &env(&[]), Some(FILE)).unwrap();
        assert_eq!(s.profile, Sourced::new("dev".to_owned(), Source::File));
        assert_eq!(s.store.value, StoreLocation::Local("/srv/dev-store".into()));
        // The flag beats the environment for the profile too.
        let f = GlobalArgs { profile: Some("dev".into()), ..flags() };
        assert_eq!(resolve(&f, &env(&[(ENV_PROFILE, "prod")]), Some(FILE)).unwrap().profile.value, "dev");
    }

    #[test]
    fn the_profile_user_beats_the_environment() {
        let e = env(&[(ENV_USER, "ci-bot"), ("USER", "me")]);
        let p = GlobalArgs { profile: Some("prod".into()), ..flags() };
        assert_eq!(
            resolve(&p, &e, Some(FILE)).unwrap().user,
            Sourced::new("deployer".into(), Source::Profile("prod".into()))
        );
        assert_eq!(
            resolve(&flags(), &e, Some(FILE)).unwrap().user,
            Sourced::new("ci-bot".into(), Source::Env(ENV_USER))
        );
        let e = env(&[(ENV_USER, "bad\u{1b}[31m")]);
        assert_eq!(resolve(&flags(), &e, None).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn unknown_profiles_list_the_known_ones() {
        let f = GlobalArgs { profile: Some("staging".into()), ..flags() };
        let e = resolve(&f, &env(&[]), Some(FILE)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("\"staging\"") && e.message().contains("dev, prod"), "{e}");
        let e = resolve(&f, &env(&[]), None).unwrap_err();
        assert!(e.message().contains("no config file") && e.message().contains("config init"), "{e}");
        // A file without the default profile is not silently replaced by the built-in one.
        let e = resolve(&flags(), &env(&[]), Some("[profiles.prod]\nstore = \"/x\"\n")).unwrap_err();
        assert!(e.message().contains("\"default\"") && e.message().contains("prod"), "{e}");
    }

    #[test]
    fn store_urls() {
        let e = env(&[]);
        let local = |s: &str| StoreLocation::parse(s, &e).unwrap();
        assert_eq!(local("file:///srv/images"), StoreLocation::Local("/srv/images".into()));
        assert_eq!(local("file://localhost/srv/images"), StoreLocation::Local("/srv/images".into()));
        assert_eq!(local("file:///srv/my%20images"), StoreLocation::Local("/srv/my images".into()));
        assert_eq!(local("store"), StoreLocation::Local("/work/store".into()));
        assert_eq!(local("~/images"), StoreLocation::Local("/home/me/images".into()));
        assert_eq!(local("/abs"), StoreLocation::Local("/abs".into()));
        assert_eq!(local("s3://acme-images/team").url(), "s3://acme-images/team");
        assert_eq!(local("/srv/images").url(), "file:///srv/images");
        for (bad, why) in [
            ("", "empty"),
            ("file://relative/x", "absolute"),
            ("file:///a%zz", "%-escape"),
            ("http://x/y", "unsupported"),
            ("s3://B", "bucket"),
            ("s3://b", "bucket"),
            ("/a\nb", "control"),
        ] {
            let err = StoreLocation::parse(bad, &e).unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_s3_settings_name_the_profile() {
        let file = "[profiles.default]\nstore = \"s3://acme-images\"\nendpoint = \"127.0.0.1:4566\"\n";
        let e = resolve(&flags(), &env(&[]), Some(file)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.message().contains("profile \"default\"") && e.message().contains("endpoint"), "{e}");
        // S3 settings of the profile apply to an s3:// store given on the command line.
        let f = GlobalArgs { store: Some("s3://other-bucket/p".into()), profile: Some("prod".into()), ..flags() };
        let s = resolve(&f, &env(&[]), Some(FILE)).unwrap();
        let StoreLocation::S3(cfg) = &s.store.value else { panic!() };
        assert_eq!((cfg.bucket.as_str(), cfg.endpoint.as_deref()), ("other-bucket", Some("http://127.0.0.1:4566")));
    }

    #[test]
    fn config_location() {
        let e = env(&[(ENV_CONFIG, "rel/c.toml")]);
        let l = ConfigLocation::resolve(None, &e).unwrap();
        assert_eq!((l.path, l.source), (PathBuf::from("/work/rel/c.toml"), Source::Env(ENV_CONFIG)));
        let l = ConfigLocation::resolve(Some(Path::new("/x.toml")), &e).unwrap();
        assert_eq!(l.source, Source::Flag("--config"));
        let l = ConfigLocation::resolve(None, &env(&[])).unwrap();
        assert_eq!(l.path, PathBuf::from("/home/me/.config/s3dock/config.toml"));
        // An explicitly named file that is missing is an error, the default one is not.
        let missing = ConfigLocation { path: "/nonexistent/s3dock.toml".into(), source: Source::Flag("--config") };
        assert!(missing.load().unwrap_err().message().contains("does not exist"));
        let missing = ConfigLocation { source: Source::Default, ..missing };
        assert_eq!(missing.load().unwrap(), None);
    }
}
