//! Installation helpers: shell completions (checked by the shells that can parse them here),
//! man pages (checked by groff and man when installed), `--version` with the commit and build
//! date, and `NO_COLOR`. The agent's are checked in its own tests (agent/tests/it/shell.rs).

use std::process::Command;

use crate::support::*;

/// How a shell checks a script without running it, when that shell is installed (bash always
/// is; zsh and fish are checked where present).
pub fn syntax_check(shell: &str) -> Option<(&'static str, &'static str)> {
    match shell {
        "bash" => Some(("bash", "-n")),
        "zsh" if have("zsh") => Some(("zsh", "-n")),
        "fish" if have("fish") => Some(("fish", "--no-execute")),
        _ => None,
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success())
}

#[test]
fn completions_parse_in_their_shells() {
    let sb = Sandbox::new();
    let dir = sb.dir.path();
    for shell in ["bash", "zsh", "fish"] {
        let script = sb.run(&["completions", shell]).ok().stdout;
        assert!(script.contains("doctor") && script.contains("stats") && script.contains("report"), "{shell}");
        let file = dir.join(format!("s3dock.{shell}"));
        std::fs::write(&file, &script).unwrap();
        if let Some((bin, flag)) = syntax_check(shell) {
            let out = Command::new(bin).arg(flag).arg(&file).output().unwrap();
            assert!(out.status.success(), "{bin} {flag}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    // The bash script completes the commands: source it and ask.
    let file = dir.join("s3dock.bash");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}'; COMP_WORDS=(s3dock do); COMP_CWORD=1; _s3dock s3dock do s3dock; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            file.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "doctor", "{}", String::from_utf8_lossy(&out.stderr));
    sb.run(&["completions", "tcsh"]).code(2);
}

#[test]
fn man_pages_for_both_binaries() {
    let sb = Sandbox::new();
    let dir = sb.dir.path().join("man/man1");
    let j = sb.run(&["man", dir.to_str().unwrap(), "--json"]).ok().json();
    let pages: Vec<&str> = j["pages"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    for want in ["s3dock.1", "s3dock-doctor.1", "s3dock-stats.1", "s3dock-report.1", "s3dock-config-init.1"] {
        assert!(pages.contains(&want), "{want} in {pages:?}");
        assert!(dir.join(want).is_file(), "{want} written");
    }
    let page = std::fs::read_to_string(dir.join("s3dock-doctor.1")).unwrap();
    assert!(page.starts_with(".ie") || page.contains(".TH"), "roff: {page}");
    if have("groff") {
        for p in ["s3dock.1", "s3dock-doctor.1"] {
            let out = Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]).arg(dir.join(p)).output().unwrap();
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "groff {p}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = Command::new("groff").args(["-man", "-Tutf8"]).arg(dir.join("s3dock-doctor.1")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--lag"), "{text}");
    }
    // MANPATH-style install: `man` finds the page by name.
    if have("man") {
        let out = Command::new("man")
            .env("MANPATH", sb.dir.path().join("man"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .arg("s3dock-stats")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("--since"), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// `NAME X.Y.Z (commit HEX12|unknown, built YYYY-MM-DD)`.
pub fn check_version_line(name: &str, line: &str) {
    let rest = line
        .trim()
        .strip_prefix(&format!("{name} {} (commit ", env!("CARGO_PKG_VERSION")))
        .unwrap_or_else(|| panic!("{line}"));
    let (commit, date) = rest.split_once(", built ").unwrap_or_else(|| panic!("{line}"));
    assert!(commit == "unknown" || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{line}");
    let date = date.strip_suffix(')').unwrap();
    assert!(chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").is_ok(), "{line}");
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let sb = Sandbox::new();
    let out = sb.run(&["--version"]).ok().stdout;
    check_version_line("s3dock", &out);
    // Built from this checkout: the commit is HEAD's (when git is there to say).
    let head =
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if let Ok(h) = head
        && h.status.success()
    {
        let head = String::from_utf8_lossy(&h.stdout).trim().to_owned();
        assert!(out.contains(&format!("(commit {head},")), "{out} vs HEAD {head}");
    }
}

#[test]
fn no_color_turns_colour_off_everywhere() {
    let sb = Sandbox::new();
    sb.seed(&[A1]);
    let esc = '\u{1b}';
    // Forced colour shows in the doctor's marks and clap's help...
    let forced = [("CLICOLOR_FORCE", "1")];
    let r = sb.run_with(&["--store", sb.store.to_str().unwrap(), "doctor"], &forced);
    assert!(r.stdout.contains(esc), "forced colour: {}", r.stdout);
    assert!(sb.run_with(&["--help"], &forced).stdout.contains(esc));
    // ...and NO_COLOR wins over it, in the report, the help and the log lines.
    let both = [("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")];
    let r = sb.run_with(&["--store", sb.store.to_str().unwrap(), "doctor"], &both);
    assert!(!r.stdout.contains(esc) && !r.stderr.contains(esc), "{r:?}");
    assert!(r.stdout.contains("ok       preconditions"), "{}", r.stdout);
    assert!(!sb.run_with(&["--help"], &both).stdout.contains(esc));
    let r = sb.run_with(&["-vv", "--store", sb.store.to_str().unwrap(), "list", "apps"], &both);
    assert!(!r.stderr.contains(esc), "{}", r.stderr);
    // --json is never coloured.
    let r = sb.run_with(&["--store", sb.store.to_str().unwrap(), "doctor", "--json"], &forced);
    assert!(!r.stdout.contains(esc));
}
