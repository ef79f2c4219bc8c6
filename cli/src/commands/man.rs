//! `s3dock man DIR`: man pages (roff) for s3dock and each of its commands, generated from the
//! clap definitions: `s3dock.1`, `s3dock-push.1`, `s3dock-config-init.1`, ...

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

const LONG_ABOUT: &str = "\
Write the man pages of s3dock and of every command into DIR (created if needed).

Examples:
  s3dock man ~/.local/share/man/man1 && man s3dock-promote
  sudo s3dock man /usr/local/share/man/man1 && sudo mandb";

/// Write man pages (s3dock.1, s3dock-COMMAND.1...) into a directory
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct ManArgs {
    /// The directory to write the pages into, e.g. ~/.local/share/man/man1
    pub dir: PathBuf,
}

/// Writes the pages of `cmd` and its subcommands into `dir`; returns their file names.
pub fn write_pages(cmd: clap::Command, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd.clone(), dir)?;
    // The same walk clap_mangen makes, for the names of what it wrote.
    fn names(cmd: &clap::Command, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            names(sub, out);
        }
        out.push(format!("{}.1", cmd.get_display_name().unwrap_or_else(|| cmd.get_name())));
    }
    let mut built = cmd.disable_help_subcommand(true);
    built.build();
    let mut out = Vec::new();
    names(&built, &mut out);
    out.sort();
    Ok(out)
}

pub async fn run(_ctx: &Context, args: &ManArgs, cli: clap::Command) -> Result<Output, CliError> {
    let pages = write_pages(cli, &args.dir).map_err(|e| {
        CliError::usage(format!(
            "cannot write man pages into {}: {e}; check the path and its permissions",
            args.dir.display()
        ))
    })?;
    let text = format!("wrote {} man pages into {}\n", pages.len(), args.dir.display());
    Ok(Output::new(json!({"dir": args.dir, "pages": pages}), text))
}
