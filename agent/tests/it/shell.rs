//! The agent binary's installation helpers: completions, man page, `--version`, `NO_COLOR`
//! (the CLI's own are in cli/tests/cli/shell.rs).

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_s3dock-agent"))
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("the agent binary runs")
}

#[test]
fn completions_man_page_version_and_no_color() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = agent(&["completions", shell]);
        assert!(out.status.success(), "completions {shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("once") && script.contains("config") && script.contains("completions"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            let file = dir.path().join("s3dock-agent.bash");
            std::fs::write(&file, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
            assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        }
    }
    let man = dir.path().join("man1");
    assert!(agent(&["man", man.to_str().unwrap()]).status.success());
    let page = std::fs::read_to_string(man.join("s3dock-agent.1")).expect("s3dock-agent.1");
    assert!(page.contains("\\-\\-once") || page.contains("--once"), "{page}");

    let version = String::from_utf8(agent(&["--version"]).stdout).unwrap();
    let rest = version.trim().strip_prefix(&format!("s3dock-agent {} (commit ", env!("CARGO_PKG_VERSION")));
    assert!(rest.is_some_and(|r| r.contains(", built ") && r.ends_with(')')), "{version}");

    // Without a subcommand the configuration is still required.
    let out = agent(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));

    let esc = '\u{1b}';
    let forced =
        Command::new(env!("CARGO_BIN_EXE_s3dock-agent")).arg("--help").env("CLICOLOR_FORCE", "1").output().unwrap();
    assert!(String::from_utf8_lossy(&forced.stdout).contains(esc), "forced colour");
    let off = Command::new(env!("CARGO_BIN_EXE_s3dock-agent"))
        .arg("--help")
        .env("CLICOLOR_FORCE", "1")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&off.stdout).contains(esc), "NO_COLOR wins");
}
