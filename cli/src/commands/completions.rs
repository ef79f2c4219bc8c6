//! `s3dock completions bash|zsh|fish`: the shell completion script, generated from the same
//! clap definitions the binary parses with, so it never lists a command that does not exist.

use clap::Args;
use clap_complete::Shell;
use serde_json::json;

use crate::context::Context;
use crate::exit::CliError;
use crate::output::Output;

const LONG_ABOUT: &str = "\
Print the completion script for a shell on stdout.

Examples (install it where the shell looks):
  s3dock completions bash > ~/.local/share/bash-completion/completions/s3dock
  s3dock completions zsh  > ~/.zfunc/_s3dock        # with fpath+=~/.zfunc before compinit
  s3dock completions fish > ~/.config/fish/completions/s3dock.fish";

/// Print a shell completion script (bash, zsh or fish)
#[derive(Debug, Clone, Args)]
#[command(long_about = LONG_ABOUT)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_parser = ["bash", "zsh", "fish"])]
    pub shell: String,
}

/// The shells s3dock generates scripts for.
pub fn shell(name: &str) -> Option<Shell> {
    match name {
        "bash" => Some(Shell::Bash),
        "zsh" => Some(Shell::Zsh),
        "fish" => Some(Shell::Fish),
        _ => None,
    }
}

/// The script for `shell`, for the command `cmd` named `bin`.
pub fn script(shell: Shell, mut cmd: clap::Command, bin: &str) -> String {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, bin, &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub async fn run(_ctx: &Context, args: &CompletionsArgs, cli: clap::Command) -> Result<Output, CliError> {
    let sh = shell(&args.shell)
        .ok_or_else(|| CliError::usage(format!("unknown shell {:?}; use bash, zsh or fish", args.shell)))?;
    let text = script(sh, cli, "s3dock");
    Ok(Output::new(json!({"shell": args.shell, "script": text}), text))
}
