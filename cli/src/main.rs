//! The `s3dock` binary: parse, start tracing, run, exit with the documented code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use s3dock_cli::args::Cli;
use s3dock_cli::exit::CliError;
use s3dock_cli::output::{self, Mode};
use s3dock_cli::settings::Environment;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Parsing failed, so whether --json was asked is read from the raw arguments.
            let json = std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json");
            return ExitCode::from(output::emit_parse_error(&e, json, &mut stdout.lock(), &mut stderr.lock()));
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(s3dock_cli::log_filter(cli.global.verbose, cli.global.quiet)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(s3dock_cli::style::colors_allowed(
            std::env::var("NO_COLOR").ok().as_deref(),
            std::env::var("CLICOLOR_FORCE").ok().as_deref(),
            std::io::stderr().is_terminal(),
        ))
        .init();

    let result = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(s3dock_cli::run(&cli, Environment::from_process())),
        Err(e) => Err(CliError::internal(format!("cannot start the async runtime: {e}"))),
    };
    let mode = Mode { json: cli.global.json, quiet: cli.global.quiet };
    ExitCode::from(output::emit(result, mode, &mut stdout.lock(), &mut stderr.lock()))
}
