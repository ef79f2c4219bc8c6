//! The `s3dock-agent` binary: parse, start logging, wait for SIGTERM/SIGINT, run, exit.
//!
//! Exit codes: 0 after an orderly shutdown (or, with `--once`, when every service converged;
//! with `--check`, when no check failed); 1 when `--once` left a service unconverged, a check
//! failed, or the start failed (refused credentials, a queue that does not exist); 2 for a bad
//! command line, configuration file or fault point.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use s3dock_agent::check::{Level, check};
use s3dock_agent::config::{AgentConfig, HostFacts};
use s3dock_agent::fault::FaultPoint;
use s3dock_agent::{RunOptions, launch};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// `--version`: the release, the commit and the build date (build.rs).
const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("S3DOCK_COMMIT"), ", built ", env!("S3DOCK_BUILD_DATE"), ")");

/// Keeps this host's containers on the image each environment's pointer names: long-polls its
/// SQS queue for promotion hints, reconciles every interval, deploys blue-green.
#[derive(Debug, Parser)]
#[command(
    name = "s3dock-agent",
    version = VERSION,
    after_help = "Configuration reference: docs/agent.md. NO_COLOR turns colour off everywhere.",
    subcommand_negates_reqs = true
)]
struct Args {
    /// The agent's configuration file (TOML)
    #[arg(long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Recover and reconcile every service once, then exit (0 when all converged)
    #[arg(long, conflicts_with = "check")]
    once: bool,
    /// Check the configuration, the state directory, the store, the queue, the Docker engine,
    /// each service's nginx test command and host ports, report every problem, and exit (0
    /// when none failed); the systemd unit runs it before each start
    #[arg(long)]
    check: bool,
    /// With --check: one JSON document on stdout
    #[arg(long, requires = "check")]
    json: bool,
    #[command(subcommand)]
    tool: Option<Tool>,
}

/// Installation helpers; the agent itself runs without a subcommand.
#[derive(Debug, Subcommand)]
enum Tool {
    /// Print a shell completion script (bash, zsh or fish)
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Write the man page (s3dock-agent.1) into a directory
    Man { dir: PathBuf },
}

fn tool(t: Tool) -> ExitCode {
    let result = match t {
        Tool::Completions { shell } => {
            let shell = match shell.as_str() {
                "zsh" => clap_complete::Shell::Zsh,
                "fish" => clap_complete::Shell::Fish,
                _ => clap_complete::Shell::Bash,
            };
            clap_complete::generate(shell, &mut Args::command(), "s3dock-agent", &mut std::io::stdout());
            Ok(())
        }
        Tool::Man { dir } => {
            std::fs::create_dir_all(&dir).and_then(|_| clap_mangen::generate_to(Args::command(), &dir))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3dock-agent: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(t) = args.tool {
        return tool(t);
    }
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,s3dock_agent=info,s3dock_engine=info,s3dock_core=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .init();

    // clap requires --config without a subcommand.
    let config_path = args.config.unwrap_or_default();
    let config = match AgentConfig::load(&config_path, &HostFacts::from_system()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("s3dock-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let fault = match fault_point() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("s3dock-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3dock-agent: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check {
        return runtime.block_on(async move {
            let report = check(&config).await;
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.render());
            }
            if report.count(Level::Failure) == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) }
        });
    }
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

/// The test-only fault point, from `S3DOCK_AGENT_CRASH_AT`: read only by a build with the
/// `fault-injection` feature (the test suite's). A production build never looks at it.
#[cfg(feature = "fault-injection")]
fn fault_point() -> Result<Option<FaultPoint>, String> {
    match std::env::var(s3dock_agent::fault::CRASH_AT_ENV) {
        Ok(v) if !v.is_empty() => {
            let p = FaultPoint::parse(&v)?;
            tracing::warn!(point = p.name(), "fault injection is on: the first deploy reaching the point stops there");
            Ok(Some(p))
        }
        _ => Ok(None),
    }
}

#[cfg(not(feature = "fault-injection"))]
fn fault_point() -> Result<Option<FaultPoint>, String> {
    Ok(None)
}

/// Cancels `token` on the first SIGTERM or SIGINT. A second one is not special: the deploy in
/// flight finishes or rolls back either way (systemd's TimeoutStopSec is the hard limit).
/// SIGHUP does not stop the agent (by default it would kill it, and systemd, which counts it
/// as a clean exit, would not start it again): it is logged, and the configuration is re-read
/// only at a restart.
async fn signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup()))
    else {
        tracing::error!(
            "cannot listen for SIGTERM/SIGINT/SIGHUP; stop the agent with SIGKILL (it recovers at the next start)"
        );
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping (a deploy in flight finishes or rolls back)");
                break;
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping (a deploy in flight finishes or rolls back)");
                break;
            }
            _ = hup.recv() => {
                tracing::warn!("SIGHUP ignored: the agent keeps running; restart it (systemctl restart s3dock-agent) to re-read its configuration");
            }
        }
    }
    token.cancel();
}
