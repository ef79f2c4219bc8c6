//! The flags every command accepts (`--store`, `--profile`, `--json`...): what [`crate::settings`]
//! and [`crate::context`] read, apart from the parser in [`crate::args`].

use std::path::PathBuf;

use clap::Args;

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
