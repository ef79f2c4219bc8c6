//! What was typed: the top-level parser and the global flags. The command list and each
//! command's own arguments live beside their code in [`crate::commands`].
//!
//! Names (apps, environments, versions, image references) are parsed into core's newtypes by
//! clap itself, so an invalid one is refused with exit code 2 before anything is opened.
//! Environment variables and the config file are deliberately not read here (no clap `env`):
//! [`crate::settings`] merges them, so it can tell where each value came from.

use clap::Parser;

use crate::commands::Command;
use crate::exit::EXIT_CODES_HELP;
pub use crate::flags::GlobalArgs;

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }
}
