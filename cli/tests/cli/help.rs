//! `--help` teaches: every command explains itself with an example, the exit codes are in the
//! top-level help, and docs/cli.md documents the same commands and codes.

use clap::CommandFactory;
use s3dock_cli::args::Cli;
use s3dock_cli::exit::EXIT_CODES_HELP;

use crate::support::*;

fn docs() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(code, meaning)` rows of the exit-code table in the help.
fn exit_codes() -> Vec<(String, String)> {
    EXIT_CODES_HELP
        .lines()
        .skip(1)
        .map(|l| {
            let (code, text) = l.trim().split_once("  ").expect("a code and its meaning");
            (code.to_owned(), text.trim().to_owned())
        })
        .collect()
}

#[test]
fn top_level_help_lists_commands_and_exit_codes() {
    let sb = Sandbox::new();
    let r = sb.run(&["--help"]).ok();
    for (code, text) in exit_codes() {
        assert!(r.stdout.contains(&format!("  {code}  {text}")), "exit code {code} in --help:\n{}", r.stdout);
    }
    for name in ["tag", "promote", "current", "list", "cleanup", "rollback", "history", "config"] {
        assert!(r.stdout.contains(&format!("\n  {name} ")), "{name} in --help");
    }
    assert!(r.stdout.contains("S3DOCK_STORE") && r.stdout.contains("--json"), "{}", r.stdout);
    sb.run(&[]).code(2).stderr_has("Usage: s3dock");
    assert!(sb.run(&["--version"]).ok().stdout.starts_with("s3dock "));
}

#[test]
fn every_command_has_an_example() {
    let sb = Sandbox::new();
    let cli = Cli::command();
    for cmd in cli.get_subcommands().filter(|c| c.get_name() != "help") {
        let name = cmd.get_name();
        let mut paths = vec![vec![name.to_owned()]];
        paths.extend(
            cmd.get_subcommands()
                .filter(|c| c.get_name() != "help")
                .map(|s| vec![name.to_owned(), s.get_name().to_owned()]),
        );
        for path in paths {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push("--help");
            let r = sb.run(&args).ok();
            assert!(r.stdout.contains("Example"), "{path:?} --help has an example:\n{}", r.stdout);
            assert!(
                r.stdout.contains(&format!("  s3dock {}", path.join(" "))),
                "{path:?}: an example of itself:\n{}",
                r.stdout
            );
        }
    }
}

#[test]
fn the_docs_cover_every_command_and_exit_code() {
    let doc = docs();
    for (code, text) in exit_codes() {
        assert!(doc.contains(&format!("| {code} | {text} |")), "exit code {code} in docs/cli.md");
    }
    for cmd in Cli::command().get_subcommands().filter(|c| c.get_name() != "help") {
        assert!(doc.contains(&format!("### `s3dock {}`", cmd.get_name())), "{} in docs/cli.md", cmd.get_name());
    }
}
