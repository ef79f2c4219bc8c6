//! The `s3dock` command line. `main` only parses, starts tracing, calls [`run`] and exits with
//! what [`output::emit`] returns; everything else lives here so tests can call it.
//!
//! - [`args`]: what was typed (clap); [`flags`]: the flags every command accepts; the command
//!   list is in [`commands`].
//! - [`settings`]: the one resolve step, flags > environment > profile > defaults, remembering
//!   where each value came from; [`config`] is the TOML file it reads.
//! - [`context`]: a command's inputs and the construction of the store and registry.
//! - [`commands`]: one module per command, each returning an [`output::Output`].
//! - [`output`]: human tables or `--json`, warnings and hints on stderr.
//! - [`exit`]: the error type and the documented exit codes.
//! - [`progress`]: transfer progress bars on a terminal's stderr.
//! - [`style`]: colour on terminals only, and never with `NO_COLOR`.

pub mod args;
pub mod commands;
pub mod config;
pub mod context;
pub mod exit;
pub mod flags;
pub mod output;
pub mod progress;
pub mod settings;
pub mod style;

use args::Cli;
use context::Context;
use exit::CliError;
use output::Output;
use settings::Environment;

/// `--version`: the release, the commit it was built from and the build date (build.rs; the
/// commit is `unknown` when the source was not a git checkout).
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("S3DOCK_COMMIT"), ", built ", env!("S3DOCK_BUILD_DATE"), ")");

/// Runs the parsed command line against `env` (the process environment in production).
pub async fn run(cli: &Cli, env: Environment) -> Result<Output, CliError> {
    let ctx = Context::new(cli.global.clone(), env);
    commands::run(&cli.command, &ctx, <Cli as clap::CommandFactory>::command).await
}

/// The tracing filter for `-v`/`-q`: s3dock's own crates at the chosen level, dependencies one
/// step quieter, unless `RUST_LOG` says otherwise. By default dependencies only log errors: the
/// AWS SDK warns about every credential or region source it tries (instance metadata on a
/// laptop, a missing profile file), which the one-line error already sums up.
pub fn log_filter(verbose: u8, quiet: bool) -> String {
    let (ours, theirs) = match (quiet, verbose) {
        (true, _) => ("error", "error"),
        (false, 0) => ("warn", "error"),
        (false, 1) => ("info", "warn"),
        (false, 2) => ("debug", "info"),
        (false, _) => ("trace", "debug"),
    };
    format!("{theirs},s3dock={ours},s3dock_cli={ours},s3dock_core={ours},s3dock_engine={ours}")
}
