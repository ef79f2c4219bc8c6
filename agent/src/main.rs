//! The `s3dock-agent` binary: parse, start logging, wait for SIGTERM/SIGINT, run, exit.
//!
//! Exit codes: 0 after an orderly shutdown (or, with `--once`, when every service converged);
//! 1 when `--once` left a service unconverged, or the start failed (refused credentials, a
//! queue that does not exist); 2 for a bad command line, configuration file or fault point.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use s3dock_agent::config::{AgentConfig, HostFacts};
use s3dock_agent::fault::{CRASH_AT_ENV, FaultPoint};
use s3dock_agent::{RunOptions, launch};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Keeps this host's containers on the image each environment's pointer names: long-polls its
/// SQS queue for promotion hints, reconciles every interval, deploys blue-green.
#[derive(Debug, Parser)]
#[command(name = "s3dock-agent", version, after_help = "Configuration reference: docs/agent.md")]
struct Args {
    /// The agent's configuration file (TOML)
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Recover and reconcile every service once, then exit (0 when all converged)
    #[arg(long)]
    once: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,s3dock_agent=info,s3dock_engine=info,s3dock_core=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let config = match AgentConfig::load(&args.config, &HostFacts::from_system()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("s3dock-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let fault = match std::env::var(CRASH_AT_ENV) {
        Ok(v) if !v.is_empty() => match FaultPoint::parse(&v) {
            Ok(p) => {
                tracing::warn!(
                    point = p.name(),
                    "fault injection is on: the first deploy reaching the point stops there"
                );
                Some(p)
            }
            Err(e) => {
                eprintln!("s3dock-agent: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3dock-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let once = args.once;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        match launch(config, RunOptions { once, fault }, shutdown).await {
            Ok(summary) if once && !summary.all_converged() => {
                for (service, outcome) in &summary.services {
                    let text = outcome.as_ref().map_or_else(|| "not reconciled".to_owned(), |o| o.describe());
                    eprintln!("s3dock-agent: {service}: {text}");
                }
                ExitCode::from(1)
            }
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("s3dock-agent: {e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Cancels `token` on the first SIGTERM or SIGINT. A second one is not special: the deploy in
/// flight finishes or rolls back either way (systemd's TimeoutStopSec is the hard limit).
async fn signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!(
            "cannot listen for SIGTERM/SIGINT; stop the agent with SIGKILL (it recovers at the next start)"
        );
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping (a deploy in flight finishes or rolls back)"),
        _ = int.recv() => tracing::info!("SIGINT: stopping (a deploy in flight finishes or rolls back)"),
    }
    token.cancel();
}
