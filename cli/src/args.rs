//! What was typed: the top-level parser, the global flags and the command list. Each
//! command's own arguments live beside its code in [`crate::commands`]; adding a command is a
//! module there and one variant here.
//!
//! Names (apps, environments, versions, image references) are parsed into core's newtypes by
//! clap itself, so an invalid one is refused with exit code 2 before anything is opened.
//! Environment variables and the config file are deliberately not read here (no clap `env`):
//! [`crate::settings`] merges them, so it can tell where each value came from.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::{
    build, cleanup, completions, config, current, deploy, doctor, history, list, man, promote, pull, push, report,
    rollback, stats, status, tag,
};
use crate::exit::EXIT_CODES_HELP;

const ABOUT: &str = "Ship Docker images through an S3 bucket, without a registry";

const LONG_ABOUT: &str = "\
Ship Docker images through an S3 bucket, without a registry.

Images are tar.gz archives with JSON metadata under images/, semantic versions under tags/,
environment pointers under pointers/ and an audit trail under audit/. The bucket can also be
a local directory with the same layout (the default, so every command works out of the box).

Typical flow:
  s3dock build myapp
  s3dock push myapp:20250721-2118-f7a5a27
  s3dock tag myapp:20250721-2118-f7a5a27 v1.2.0
  s3dock promote myapp v1.2.0 staging
  s3dock current myapp staging
  s3dock pull myapp staging
  s3dock deploy --blue-green myapp staging --service /etc/s3dock/agent.toml
  s3dock status myapp
  s3dock history myapp staging
  s3dock doctor myapp
  s3dock stats myapp --since 30d
  s3dock report myapp --html fleet.html";

const AFTER_HELP: &str = "\
Environment:
  S3DOCK_STORE    store URL (below --store, above the profile)
  S3DOCK_PROFILE  profile name (below --profile)
  S3DOCK_CONFIG   config file (below --config)
  S3DOCK_USER     acting user for audit records (below the profile's `user`)
  NO_COLOR        no colour anywhere (help, reports, log lines), even with CLICOLOR_FORCE
  CLICOLOR_FORCE  colour even when the output is not a terminal
  RUST_LOG        tracing filter, overrides -v/-q for log lines

Every command accepts --json: one JSON document on stdout, errors included as
{\"error\":{\"kind\":..,\"message\":..,\"exit_code\":..}}.";

#[derive(Debug, Parser)]
#[command(
    name = "s3dock",
    version = crate::VERSION,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = format!("{AFTER_HELP}\n\n{EXIT_CODES_HELP}"),
    max_term_width = 100,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts, before or after its name.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Store: s3://BUCKET[/PREFIX], file:///ABS/PATH or a directory [env: S3DOCK_STORE]
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Profile of the config file to use [env: S3DOCK_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Config file [env: S3DOCK_CONFIG] [default: ~/.config/s3dock/config.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout (errors too)
    #[arg(long, global = true)]
    pub json: bool,
    /// More log lines on stderr: -v info, -vv debug, -vvv trace
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only results, warnings and errors: no progress or hints on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(build::BuildArgs),
    Push(push::PushArgs),
    Tag(tag::TagArgs),
    Promote(promote::PromoteArgs),
    Pull(pull::PullArgs),
    Current(current::CurrentArgs),
    List(list::ListArgs),
    Cleanup(cleanup::CleanupArgs),
    Rollback(rollback::RollbackArgs),
    History(history::HistoryArgs),
    Config(config::ConfigArgs),
    Deploy(deploy::DeployArgs),
    Status(status::StatusArgs),
    Doctor(doctor::DoctorArgs),
    Stats(stats::StatsArgs),
    Report(report::ReportArgs),
    Completions(completions::CompletionsArgs),
    Man(man::ManArgs),
}

/// `--month YYYYMM`.
pub fn parse_month(s: &str) -> Result<String, String> {
    let ok = s.len() == 6 && s.chars().all(|c| c.is_ascii_digit()) && matches!(s[4..].parse::<u32>(), Ok(1..=12));
    if ok { Ok(s.to_owned()) } else { Err(format!("{s:?} is not a month; write YYYYMM, e.g. 202507")) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn months() {
        assert!(parse_month("202507").is_ok());
        for bad in ["2025-07", "202513", "202500", "20257", "abcdef", "２０２５０７"] {
            assert!(parse_month(bad).is_err(), "{bad}");
        }
    }
}
