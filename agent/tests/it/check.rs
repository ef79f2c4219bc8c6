//! The agent binary on its own, with a directory store and no queue: `--check`, its place in
//! the systemd unit, and signals. Needs the Docker engine only (skips without it, unless CI).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn docker_or_skip() -> bool {
    s3dock_testkit::docker_available()
}

/// A configuration on a directory store, without a queue, with `services` appended.
fn config(dir: &Path, services: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("store")).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "agent_id = \"check-1\"\nstore = \"{}\"\nstate_dir = \"{}\"\n{services}",
            dir.join("store").display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

fn agent(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s3dock-agent"));
    cmd.arg("--config").arg(config).args(args).env("AWS_EC2_METADATA_DISABLED", "true").stdin(Stdio::null());
    cmd
}

/// The unit checks the setup before every start, with the agent's own configuration, and keeps
/// its hardening.
#[test]
fn the_unit_checks_the_setup_before_starting() {
    let unit =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/s3dock-agent.service")).unwrap();
    let line = |key: &str| unit.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
    let start = line("ExecStart=").trim_start_matches("ExecStart=");
    assert_eq!(line("ExecStartPre="), format!("ExecStartPre={start} --check"));
    for hardening in ["NoNewPrivileges=true", "ProtectSystem=strict", "ProtectHome=true", "PrivateTmp=true"] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening} kept");
    }
}

/// Every problem of a setup in one run, each with what to do; exit 1. The same setup fixed:
/// exit 0, warnings allowed.
#[test]
fn check_reports_every_problem_in_one_run() {
    if !docker_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let broken = config(
        dir.path(),
        &format!(
            "[[service]]\napp = \"web\"\nenv = \"production\"\ncontainer_port = 80\nports = {{ blue = {port}, green = {} }}\ndrain = \"0s\"\n[service.traffic]\ndriver = \"nginx\"\nupstream_file = \"{}/missing/web.conf\"\ntest_command = [\"/bin/sh\", \"-c\", \"echo 'nginx: [emerg] unknown directive \\\"oops\\\"' >&2; exit 1\"]\n",
            port + 1,
            dir.path().display()
        ),
    );
    let out = agent(&broken, &["--check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "ok       state_dir:",
        "ok       store:",
        "ok       queue: none",
        "ok       docker: engine",
        "failure  web/production: upstream_file: cannot write in",
        "unknown directive",
        &format!("failure  web/production: ports.blue: 127.0.0.1:{port} is already in use"),
        "warning  configuration: service[0] (web/production): drain = \"0s\" with the nginx driver",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    let json = agent(&broken, &["--check", "--json"]).output().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(doc["failures"].as_u64().unwrap() >= 3, "{doc}");
    drop(held);

    let fine = config(dir.path(), "");
    let out = agent(&fine, &["--check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.ends_with("0 failure(s), 0 warning(s), 5 ok\n"), "{text}");
    // A file the agent cannot read is a usage error, as for the daemon.
    let out = agent(&dir.path().join("nope.toml"), &["--check"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// SIGHUP killed the agent, and systemd (which counts a SIGHUP death as clean) did not start it
/// again.
#[test]
fn sighup_does_not_stop_the_agent() {
    if !docker_or_skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut child = agent(&cfg, &[]).stderr(log).spawn().unwrap();
    let pid = child.id().to_string();
    let log_text = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_text().contains("s3dock-agent starting") {
        assert!(Instant::now() < deadline, "the agent did not start: {}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still running after SIGHUP: {}", log_text());
    assert!(log_text().contains("SIGHUP ignored"), "{}", log_text());
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}: {}", log_text());
            break;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM: {}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}
