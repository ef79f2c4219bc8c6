//! One module per command: its arguments (clap derive) and its `run`, which resolves the
//! settings, calls the registry and builds an [`Output`]. Adding a command is a module here,
//! a variant in [`Command`] and its line in [`run`].

pub mod build;
pub mod cleanup;
pub mod completions;
pub mod config;
pub mod current;
pub mod deploy;
pub mod doctor;
pub mod history;
pub mod list;
pub mod man;
pub mod promote;
pub mod pull;
pub mod push;
pub mod report;
pub mod rollback;
pub mod stats;
pub mod status;
pub mod tag;

use clap::Subcommand;
use s3dock_core::events::{EventError, Outcome};
use serde_json::{Value, json};

use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

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

/// Runs one command. `cli` gives the whole command line's definition (for completions and
/// man pages), which lives above this module.
pub async fn run(command: &Command, ctx: &Context, cli: fn() -> clap::Command) -> Result<Output, CliError> {
    match command {
        Command::Build(args) => build::run(ctx, args).await,
        Command::Push(args) => push::run(ctx, args).await,
        Command::Pull(args) => pull::run(ctx, args).await,
        Command::Tag(args) => tag::run(ctx, args).await,
        Command::Promote(args) => promote::run(ctx, args).await,
        Command::Current(args) => current::run(ctx, args).await,
        Command::List(args) => list::run(ctx, args).await,
        Command::Cleanup(args) => cleanup::run(ctx, args).await,
        Command::Rollback(args) => rollback::run(ctx, args).await,
        Command::History(args) => history::run(ctx, args).await,
        Command::Config(args) => config::run(ctx, args).await,
        Command::Deploy(args) => deploy::run(ctx, args).await,
        Command::Status(args) => status::run(ctx, args).await,
        Command::Doctor(args) => doctor::run(ctx, args).await,
        Command::Stats(args) => stats::run(ctx, args).await,
        Command::Report(args) => report::run(ctx, args).await,
        Command::Completions(args) => completions::run(ctx, args, cli()).await,
        Command::Man(args) => man::run(ctx, args, cli()).await,
    }
}

/// The result of the inline event handler that ran after a write: `null` when none ran
/// (`events = "lambda"`, or nothing was written).
pub(crate) fn event_json(event: &Option<Result<Outcome, EventError>>) -> Value {
    match event {
        None => Value::Null,
        Some(Ok(Outcome::Recorded { audit_key, notified })) => {
            json!({"status": "recorded", "audit_key": audit_key.as_str(), "notified": notified})
        }
        Some(Ok(Outcome::Duplicate { audit_key })) => json!({"status": "duplicate", "audit_key": audit_key.as_str()}),
        Some(Ok(Outcome::Ignored { reason })) => json!({"status": "ignored", "reason": reason}),
        Some(Ok(Outcome::Rejected { reason, archived_to, audit_key, deleted })) => json!({
            "status": "rejected",
            "reason": reason,
            "archived_to": archived_to.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "audit_key": audit_key.as_ref().map(|k| k.as_str()),
            "deleted": deleted,
        }),
        Some(Ok(Outcome::Superseded { reason, audit_key })) => json!({
            "status": "superseded",
            "reason": reason,
            "audit_key": audit_key.as_ref().map(|k| k.as_str()),
        }),
        Some(Err(e)) => json!({"status": "failed", "error": e.message, "retryable": e.retryable}),
    }
}

/// The warning for an inline event that did not go well. The write itself succeeded (the
/// command exits 0); what is missing is its audit record, or the handler undid the write.
pub(crate) fn event_warning(event: &Option<Result<Outcome, EventError>>, what: &str) -> Option<String> {
    match event {
        Some(Err(e)) => Some(format!(
            "{what} succeeded, but writing its audit record failed: {e}; the change stands, only the history lacks it"
        )),
        Some(Ok(Outcome::Rejected { reason, archived_to, deleted, .. })) => {
            let moved = archived_to.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ");
            let fate = if *deleted { "deleted" } else { "kept in place (something references it)" };
            Some(format!(
                "{what} was written, then rejected by the audit handler ({reason}): copied to {moved} and {fate}; check the image and run the command again"
            ))
        }
        _ => None,
    }
}
