//! Running the user's commands: the command driver, and the nginx driver's test and reload.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::names::{AppName, EnvName};

use super::{TrafficError, TrafficSwitch, Upstream, read_record, write_record};
use crate::deploy::spec::ColorPorts;

/// What a finished command said.
pub(super) struct Ran {
    pub status: std::process::ExitStatus,
    pub stderr: Vec<u8>,
    pub stdout: Vec<u8>,
}

/// The last lines of a command's output, on one line: what goes into an error message.
pub(super) fn tail_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.chars().count() > 600 {
        let skip = tail.chars().count() - 600;
        format!("…{}", tail.chars().skip(skip).collect::<String>())
    } else {
        tail
    }
}

pub(super) fn show_argv(argv: &[String]) -> String {
    argv.join(" ")
}

/// Runs `argv` (no shell) with `env` added, within `timeout`. The child is killed when the
/// timeout fires (or when this future is dropped): no command outlives its budget.
pub(super) async fn run(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Result<Ran, String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|e| format!("cannot start it: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(Ran { status: out.status, stderr: out.stderr, stdout: out.stdout }),
        Ok(Err(e)) => Err(format!("waiting for it failed: {e}")),
        Err(_) => Err(format!("it did not finish within {}s and was killed", timeout.as_secs_f64())),
    }
}

/// Runs a command and turns anything but exit 0 into a one-line reason; its stdout otherwise.
pub(super) async fn run_checked(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Result<Vec<u8>, String> {
    let ran = run(argv, env, timeout).await?;
    if ran.status.success() {
        return Ok(ran.stdout);
    }
    let code = ran.status.code().map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit status {c}"));
    let mut tail = tail_of(&ran.stderr);
    if tail.is_empty() {
        tail = tail_of(&ran.stdout);
    }
    Err(if tail.is_empty() { code } else { format!("{code}: {tail}") })
}

/// `driver = "command"`: runs the user's program with the new upstream in its environment:
/// `S3DOCK_UPSTREAM=host:port`, `S3DOCK_UPSTREAM_HOST`, `S3DOCK_UPSTREAM_PORT`,
/// `S3DOCK_COLOR`, `S3DOCK_APP`, `S3DOCK_ENV`. Exit 0 means the program applied the switch; the
/// driver then records the upstream for `current()`.
///
/// A program may exit 0 before the change is live (an API that applies it asynchronously).
/// `check_command`, when set, asks the load balancer what it routes to now (it prints the live
/// `host:port` on its first line): that is `routed()`, the proof the deployer waits for.
/// Without it the driver can only repeat its record.
#[derive(Debug)]
pub struct CommandSwitch {
    app: AppName,
    env: EnvName,
    ports: ColorPorts,
    command: Vec<String>,
    check_command: Option<Vec<String>>,
    timeout: Duration,
    record: PathBuf,
    /// One switch at a time: the record must follow the last command that ran.
    lock: tokio::sync::Mutex<()>,
}

impl CommandSwitch {
    pub fn new(
        app: AppName,
        env: EnvName,
        ports: ColorPorts,
        command: Vec<String>,
        check_command: Option<Vec<String>>,
        timeout: Duration,
        record: PathBuf,
    ) -> Self {
        CommandSwitch { app, env, ports, command, check_command, timeout, record, lock: tokio::sync::Mutex::new(()) }
    }

    /// Reads `check_command`'s answer: `host:port` on the first non-empty line of stdout,
    /// `none` when nothing routes.
    fn parse_check(&self, stdout: &[u8]) -> Result<Option<Upstream>, String> {
        let text = String::from_utf8_lossy(stdout);
        let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
            return Err("it printed nothing; it must print the live upstream as host:port (or none)".into());
        };
        if line == "none" {
            return Ok(None);
        }
        let parsed =
            line.rsplit_once(':').and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)));
        let Some((host, port)) = parsed else {
            return Err(format!("it printed {line:?}, not host:port"));
        };
        let Some(color) = self.ports.color_of(port) else {
            return Err(format!(
                "it reports {line}, whose port is neither color's ({} or {})",
                self.ports.blue, self.ports.green
            ));
        };
        Ok(Some(Upstream { host: host.to_owned(), port, color }))
    }
}

#[async_trait]
impl TrafficSwitch for CommandSwitch {
    fn driver(&self) -> &'static str {
        "command"
    }

    async fn current(&self) -> Result<Option<Upstream>, TrafficError> {
        read_record(&self.record)
    }

    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError> {
        let _one = self.lock.lock().await;
        let env = [
            ("S3DOCK_UPSTREAM", to.address()),
            ("S3DOCK_UPSTREAM_HOST", to.host.clone()),
            ("S3DOCK_UPSTREAM_PORT", to.port.to_string()),
            ("S3DOCK_COLOR", to.color.to_string()),
            ("S3DOCK_APP", self.app.to_string()),
            ("S3DOCK_ENV", self.env.to_string()),
        ];
        // A failed command may have done part of its work: traffic is not known to be unchanged.
        run_checked(&self.command, &env, self.timeout).await.map_err(|detail| TrafficError::Command {
            command: show_argv(&self.command),
            detail,
            unchanged: false,
        })?;
        write_record(&self.record, to, false)
    }

    async fn routed(&self) -> Result<Option<Upstream>, TrafficError> {
        let Some(check) = &self.check_command else { return read_record(&self.record) };
        let env = [("S3DOCK_APP", self.app.to_string()), ("S3DOCK_ENV", self.env.to_string())];
        let unknown = |detail: String| TrafficError::Unknown {
            detail: format!(
                "`{}` (check_command) {detail}; fix it, it is how s3dock proves a switch",
                show_argv(check)
            ),
        };
        let stdout = run_checked(check, &env, self.timeout).await.map_err(|e| unknown(format!("failed ({e})")))?;
        self.parse_check(&stdout).map_err(unknown)
    }

    fn proves(&self) -> bool {
        self.check_command.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::spec::Color;

    fn up(color: Color, port: u16) -> Upstream {
        Upstream { host: "127.0.0.1".into(), port, color }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn switch(dir: &std::path::Path, command: Vec<String>, check: Option<Vec<String>>) -> CommandSwitch {
        CommandSwitch::new(
            AppName::parse("web").unwrap(),
            EnvName::parse("production").unwrap(),
            ColorPorts { blue: 18080, green: 18081 },
            command,
            check,
            Duration::from_secs(5),
            dir.join("rec.json"),
        )
    }

    #[tokio::test]
    async fn the_command_driver_passes_the_upstream_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let script = format!(
            "echo \"$S3DOCK_UPSTREAM $S3DOCK_UPSTREAM_HOST $S3DOCK_UPSTREAM_PORT $S3DOCK_COLOR $S3DOCK_APP $S3DOCK_ENV\" >> {}; \
             if [ \"$S3DOCK_COLOR\" = green ]; then echo 'first line' >&2; echo 'lb api said no' >&2; exit 7; fi",
            out.display()
        );
        let c = switch(dir.path(), sh(&script), None);
        assert_eq!(c.current().await.unwrap(), None);
        c.switch(&up(Color::Blue, 18080)).await.unwrap();
        assert_eq!(c.current().await.unwrap(), Some(up(Color::Blue, 18080)));
        let e = c.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(!e.traffic_unchanged());
        assert!(e.to_string().contains("exit status 7: first line | lb api said no"), "{e}");
        assert_eq!(c.current().await.unwrap(), Some(up(Color::Blue, 18080)), "the record follows successes only");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "127.0.0.1:18080 127.0.0.1 18080 blue web production\n127.0.0.1:18081 127.0.0.1 18081 green web production\n"
        );
    }

    /// A program that exits 0 before the load balancer applied anything: its record says green,
    /// the check says what really routes.
    #[tokio::test]
    async fn check_command_reports_what_really_routes() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        std::fs::write(&live, "127.0.0.1:18080\n").unwrap();
        let c = switch(dir.path(), sh("exit 0"), Some(sh(&format!("cat {}", live.display()))));
        assert!(c.proves());
        c.switch(&up(Color::Green, 18081)).await.unwrap();
        assert_eq!(c.current().await.unwrap(), Some(up(Color::Green, 18081)));
        assert_eq!(c.routed().await.unwrap(), Some(up(Color::Blue, 18080)), "the lie is seen");
        std::fs::write(&live, "none\n").unwrap();
        assert_eq!(c.routed().await.unwrap(), None);
        for (answer, want) in
            [("", "printed nothing"), ("green\n", "not host:port"), ("127.0.0.1:9\n", "neither color")]
        {
            std::fs::write(&live, answer).unwrap();
            let e = c.routed().await.unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("check_command"), "{e}");
        }
    }

    #[test]
    fn tails_are_short_and_on_one_line() {
        assert_eq!(tail_of(b"a\n\nb\nc\nd\ne\nf\n"), "b | c | d | e | f");
        let long = "x".repeat(2000);
        assert_eq!(tail_of(long.as_bytes()).chars().count(), 601);
    }
}
