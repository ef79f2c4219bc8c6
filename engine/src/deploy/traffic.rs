//! Traffic drivers: what sends requests to one color or the other.
//!
//! A driver is a [`TrafficSwitch`]: `current()` says where traffic goes as far as the driver
//! knows, `switch()` moves it. The deployer calls `switch()` only for a container that passed
//! its health check, and calls it again (the same upstream) when it recovers from a crash in
//! the middle of a switch, so every driver's `switch()` must be idempotent.
//!
//! - [`NginxSwitch`]: owns one upstream file the user's nginx config includes; writes it
//!   atomically, checks the whole config (`nginx -t`), restores the previous file when the
//!   check fails (nothing reloaded: old traffic kept), and reloads gracefully otherwise.
//! - [`CommandSwitch`]: runs the user's program with the new address in its environment.
//! - [`RecordSwitch`] (`driver = "none"`): only records the upstream, for hosts where
//!   something else routes, and for tests.
//!
//! `docs/agent.md` explains how to add a driver (an AWS ALB target group is the next one).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::names::{AppName, EnvName};
use serde::{Deserialize, Serialize};

use super::spec::{Color, ColorPorts, DeploySpec, DriverConfig, SpecError};
use super::state::{StateFiles, lock_file, remove_durably, write_atomic};

/// Where traffic goes: one color's published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// An IP address (or, for records written by hand, a host name).
    pub host: String,
    pub port: u16,
    pub color: Color,
}

impl Upstream {
    /// `host:port`, with IPv6 addresses in brackets.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same color and address.
    pub fn same_as(&self, other: &Upstream) -> bool {
        self.color == other.color && self.port == other.port && self.host == other.host
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.color, self.address())
    }
}

/// Why a driver could not report or move traffic. [`TrafficError::traffic_unchanged`] tells
/// the deployer whether traffic is known to be where it was.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    /// The configuration check refused the new upstream; the previous file is back and nothing
    /// was reloaded.
    #[error(
        "`{command}` refused the configuration ({detail}); the previous upstream file is restored and nothing was reloaded, so traffic stays where it was; fix the nginx configuration (run `{command}` to see the whole error)"
    )]
    Rejected { command: String, detail: String },
    /// A command failed or timed out.
    #[error("`{command}` failed ({detail}){}", if *unchanged { "; traffic stays where it was" } else { "" })]
    Command { command: String, detail: String, unchanged: bool },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
        unchanged: bool,
    },
    #[error("{path}: {detail}; delete it and deploy again, s3dock rewrites it")]
    Corrupt { path: PathBuf, detail: String },
}

impl TrafficError {
    /// True when the driver guarantees traffic did not move: the deployer can simply remove the
    /// new container. False when traffic may have moved, in which case the deployer switches
    /// back explicitly.
    pub fn traffic_unchanged(&self) -> bool {
        match self {
            TrafficError::Rejected { .. } => true,
            TrafficError::Command { unchanged, .. } | TrafficError::Io { unchanged, .. } => *unchanged,
            TrafficError::Corrupt { .. } => true,
        }
    }
}

/// Moves traffic between the colors of one (app, env).
#[async_trait]
pub trait TrafficSwitch: Send + Sync + std::fmt::Debug {
    /// The driver's name in the config (`nginx`, `command`, `none`).
    fn driver(&self) -> &'static str;

    /// Where traffic goes as far as this driver knows; `None` before the first switch.
    async fn current(&self) -> Result<Option<Upstream>, TrafficError>;

    /// Sends traffic to `to`. Idempotent: switching to the current upstream again re-applies it.
    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError>;
}

/// Builds the driver `spec.traffic` describes. The command and none drivers keep their record
/// under `state_dir` unless `traffic.state_file` says otherwise.
pub fn traffic_switch(spec: &DeploySpec, state_dir: &Path) -> Result<Arc<dyn TrafficSwitch>, SpecError> {
    let Some(traffic) = &spec.traffic else {
        return Err(SpecError::new(
            "traffic",
            "missing; add a [traffic] table with driver = \"nginx\", \"command\" or \"none\"",
        ));
    };
    let default_record = || StateFiles::for_spec(state_dir, spec).upstream();
    Ok(match traffic.driver(&spec.app, &spec.env)? {
        DriverConfig::Nginx { upstream_file, upstream_name, test_command, reload_command, timeout } => {
            Arc::new(NginxSwitch::new(NginxConfig {
                app: spec.app.clone(),
                env: spec.env.clone(),
                ports: spec.ports,
                upstream_file,
                upstream_name,
                test_command,
                reload_command,
                timeout,
            }))
        }
        DriverConfig::Command { command, state_file, timeout } => Arc::new(CommandSwitch {
            app: spec.app.clone(),
            env: spec.env.clone(),
            command,
            timeout,
            record: state_file.unwrap_or_else(default_record),
            lock: tokio::sync::Mutex::new(()),
        }),
        DriverConfig::None { state_file } => Arc::new(RecordSwitch::new(state_file.unwrap_or_else(default_record))),
    })
}

// ---------------------------------------------------------------- records

/// The JSON file in which the command and none drivers remember the upstream.
#[derive(Debug, Serialize, Deserialize)]
struct UpstreamRecord {
    schema_version: u32,
    upstream: Upstream,
}

fn read_record(path: &Path) -> Result<Option<Upstream>, TrafficError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TrafficError::Io { context: format!("reading {}", path.display()), source, unchanged: true });
        }
    };
    let record: UpstreamRecord = serde_json::from_slice(&bytes)
        .map_err(|e| TrafficError::Corrupt { path: path.to_owned(), detail: format!("not an upstream record: {e}") })?;
    Ok(Some(record.upstream))
}

fn write_record(path: &Path, upstream: &Upstream, unchanged: bool) -> Result<(), TrafficError> {
    let record = UpstreamRecord { schema_version: 1, upstream: upstream.clone() };
    let mut bytes = serde_json::to_vec_pretty(&record).expect("an upstream record always serializes");
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| TrafficError::Io {
        context: format!("recording the upstream in {}", path.display()),
        source,
        unchanged,
    })
}

/// `driver = "none"`: records the upstream and moves nothing.
#[derive(Debug)]
pub struct RecordSwitch {
    record: PathBuf,
}

impl RecordSwitch {
    pub fn new(record: impl Into<PathBuf>) -> Self {
        RecordSwitch { record: record.into() }
    }
}

#[async_trait]
impl TrafficSwitch for RecordSwitch {
    fn driver(&self) -> &'static str {
        "none"
    }

    async fn current(&self) -> Result<Option<Upstream>, TrafficError> {
        read_record(&self.record)
    }

    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError> {
        write_record(&self.record, to, true)
    }
}

// ---------------------------------------------------------------- commands

/// What a finished command said.
struct Ran {
    status: std::process::ExitStatus,
    stderr: Vec<u8>,
    stdout: Vec<u8>,
}

/// The last lines of a command's output, on one line: what goes into an error message.
fn tail_of(bytes: &[u8]) -> String {
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

fn show_argv(argv: &[String]) -> String {
    argv.join(" ")
}

/// Runs `argv` (no shell) with `env` added, within `timeout`. The child is killed when the
/// timeout fires (or when this future is dropped): no command outlives its budget.
async fn run(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Result<Ran, String> {
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

/// Runs a command and turns anything but exit 0 into a one-line reason.
async fn run_checked(argv: &[String], env: &[(&str, String)], timeout: Duration) -> Result<(), String> {
    let ran = run(argv, env, timeout).await?;
    if ran.status.success() {
        return Ok(());
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
/// `S3DOCK_COLOR`, `S3DOCK_APP`, `S3DOCK_ENV`. Exit 0 means traffic moved; the driver then
/// records the upstream for `current()`.
#[derive(Debug)]
pub struct CommandSwitch {
    app: AppName,
    env: EnvName,
    command: Vec<String>,
    timeout: Duration,
    record: PathBuf,
    /// One switch at a time: the record must follow the last command that ran.
    lock: tokio::sync::Mutex<()>,
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
}

// ---------------------------------------------------------------- nginx

/// The nginx driver's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    pub app: AppName,
    pub env: EnvName,
    /// To recognize an upstream file written by hand before the first deploy.
    pub ports: ColorPorts,
    pub upstream_file: PathBuf,
    pub upstream_name: String,
    pub test_command: Vec<String>,
    pub reload_command: Vec<String>,
    pub timeout: Duration,
}

/// `driver = "nginx"`. The switch, step by step:
///
/// 0. Take the lock of the upstream file's directory (`.s3dock-nginx.lock`, an `flock`). A
///    reload loads every upstream file, so the switches of all services behind one nginx, in
///    this process or another, run one at a time: another service's reload must not land
///    between this service's write and a check that fails (nginx would then run a file this
///    switch is about to restore).
/// 1. Keep the current file's bytes (or its absence): that is what a failure restores.
/// 2. Write the new file atomically (temporary file, fsync, rename, fsync of the directory):
///    nginx never reads half a file, even if the host dies mid-write.
/// 3. Run the test command (`nginx -t`). It checks the whole configuration with the new file.
///    If it fails, put the previous file back and return [`TrafficError::Rejected`] *without
///    reloading*: the running nginx still has the old configuration in memory, and the file on
///    disk matches it again, so a reload someone else triggers later cannot pick up a
///    configuration that was refused.
/// 4. Reload gracefully (`nginx -s reload`): the master starts workers with the new upstream
///    and lets the old workers finish the requests they accepted, so no request is dropped.
///    If the reload command fails, restore the previous file as well; whether the running
///    nginx reloaded is then unknown, which the error says ([`TrafficError::traffic_unchanged`]
///    is false), and the deployer switches back explicitly.
#[derive(Debug)]
pub struct NginxSwitch {
    cfg: NginxConfig,
}

/// The lock shared by every nginx switch whose upstream file is in the same directory.
const NGINX_LOCK_FILE: &str = ".s3dock-nginx.lock";

impl NginxSwitch {
    pub fn new(cfg: NginxConfig) -> Self {
        NginxSwitch { cfg }
    }

    /// The file's content for `to`.
    pub fn render(&self, to: &Upstream) -> String {
        format!(
            "# Written by s3dock for {app} ({env}); replaced at every deploy, do not edit.\n\
             # s3dock-color: {color}\n\
             upstream {name} {{\n    server {address};\n}}\n",
            app = self.cfg.app,
            env = self.cfg.env,
            color = to.color,
            name = self.cfg.upstream_name,
            address = to.address(),
        )
    }

    /// Reads back what [`NginxSwitch::render`] wrote. A file written by hand (before the first
    /// deploy) is understood when its `server` port is one of the colors' ports.
    pub fn parse(&self, text: &str) -> Option<Upstream> {
        let mut color = None;
        let mut server = None;
        for line in text.lines().map(str::trim) {
            if let Some(c) = line.strip_prefix("# s3dock-color:") {
                color = Color::parse(c.trim());
            } else if let Some(rest) = line.strip_prefix("server ") {
                let address = rest.split([';', ' ']).next().unwrap_or("");
                server = split_address(address);
            }
        }
        let (host, port) = server?;
        let color = color.or_else(|| self.cfg.ports.color_of(port))?;
        Some(Upstream { host, port, color })
    }

    fn restore(&self, previous: &Option<Vec<u8>>) -> std::io::Result<()> {
        match previous {
            Some(bytes) => write_atomic(&self.cfg.upstream_file, bytes),
            None => remove_durably(&self.cfg.upstream_file),
        }
    }
}

/// `127.0.0.1:8080` or `[::1]:8080` -> (host, port).
fn split_address(address: &str) -> Option<(String, u16)> {
    if let Some(v6) = address.strip_prefix('[') {
        let (host, port) = v6.split_once("]:")?;
        return Some((host.to_owned(), port.parse().ok()?));
    }
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

#[async_trait]
impl TrafficSwitch for NginxSwitch {
    fn driver(&self) -> &'static str {
        "nginx"
    }

    async fn current(&self) -> Result<Option<Upstream>, TrafficError> {
        let path = &self.cfg.upstream_file;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TrafficError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                    unchanged: true,
                });
            }
        };
        let parsed = self.parse(&text);
        if parsed.is_none() {
            tracing::warn!(
                file = %path.display(),
                "the upstream file names no color s3dock knows; it is replaced at the next switch"
            );
        }
        Ok(parsed)
    }

    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError> {
        let path = &self.cfg.upstream_file;
        let io = |context: String, unchanged: bool| move |source| TrafficError::Io { context, source, unchanged };
        // 0. One switch at a time per nginx. The wait covers another switch's two commands.
        let lock_path = path.parent().unwrap_or(Path::new(".")).join(NGINX_LOCK_FILE);
        let _lock = match lock_file(&lock_path, self.cfg.timeout * 2).await {
            Ok(Some(file)) => file,
            Ok(None) => {
                return Err(TrafficError::Command {
                    command: "nginx switch".into(),
                    detail: format!(
                        "another switch held {} for more than {}s",
                        lock_path.display(),
                        (self.cfg.timeout * 2).as_secs()
                    ),
                    unchanged: true,
                });
            }
            Err(e) => return Err(io(format!("locking {}", lock_path.display()), true)(e)),
        };
        // 1. What a failure restores.
        let previous = match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(format!("reading {}", path.display()), true)(e)),
        };
        // 2. The new file, atomically.
        write_atomic(path, self.render(to).as_bytes()).map_err(io(format!("writing {}", path.display()), true))?;
        // 3. Check the whole configuration before nginx is asked to load it.
        if let Err(detail) = run_checked(&self.cfg.test_command, &[], self.cfg.timeout).await {
            self.restore(&previous).map_err(io(
                format!(
                    "the configuration check failed ({detail}) and restoring the previous {} failed too",
                    path.display()
                ),
                // Not reloaded, so the running nginx is unchanged; the file is not.
                true,
            ))?;
            return Err(TrafficError::Rejected { command: show_argv(&self.cfg.test_command), detail });
        }
        // 4. Graceful reload.
        if let Err(detail) = run_checked(&self.cfg.reload_command, &[], self.cfg.timeout).await {
            let restored = match self.restore(&previous) {
                Ok(()) => "the previous upstream file is restored".to_owned(),
                Err(e) => format!("restoring the previous upstream file failed too ({e})"),
            };
            return Err(TrafficError::Command {
                command: show_argv(&self.cfg.reload_command),
                detail: format!("{detail}; {restored}; whether nginx reloaded is unknown"),
                unchanged: false,
            });
        }
        tracing::info!(app = %self.cfg.app, env = %self.cfg.env, upstream = %to, "nginx reloaded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (AppName, EnvName) {
        (AppName::parse("web").unwrap(), EnvName::parse("production").unwrap())
    }

    fn up(color: Color, port: u16) -> Upstream {
        Upstream { host: "127.0.0.1".into(), port, color }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn nginx(dir: &Path, test: Vec<String>, reload: Vec<String>) -> NginxSwitch {
        let (app, env) = names();
        NginxSwitch::new(NginxConfig {
            app,
            env,
            ports: ColorPorts { blue: 18080, green: 18081 },
            upstream_file: dir.join("conf.d").join("web.conf"),
            upstream_name: "s3dock_web_production".into(),
            test_command: test,
            reload_command: reload,
            timeout: Duration::from_secs(5),
        })
    }

    #[test]
    fn the_upstream_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let n = nginx(dir.path(), sh("true"), sh("true"));
        let green = up(Color::Green, 18081);
        let text = n.render(&green);
        assert!(text.contains("upstream s3dock_web_production {\n    server 127.0.0.1:18081;\n}"), "{text}");
        assert_eq!(n.parse(&text), Some(green));
        let v6 = Upstream { host: "::1".into(), port: 18080, color: Color::Blue };
        assert!(n.render(&v6).contains("server [::1]:18080;"));
        assert_eq!(n.parse(&n.render(&v6)), Some(v6));
        // Written by hand before the first deploy: the port says the color.
        assert_eq!(
            n.parse("upstream s3dock_web_production {\n    server 127.0.0.1:18080 max_fails=0;\n}\n"),
            Some(up(Color::Blue, 18080))
        );
        assert_eq!(n.parse("upstream x {\n server 127.0.0.1:9999;\n}\n"), None);
        assert_eq!(n.parse("garbage"), None);
    }

    #[tokio::test]
    async fn nginx_switch_reloads_after_a_passing_check() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let n = nginx(
            dir.path(),
            sh(&format!("echo test >> {}", log.display())),
            sh(&format!("echo reload >> {}", log.display())),
        );
        assert_eq!(n.current().await.unwrap(), None);
        n.switch(&up(Color::Blue, 18080)).await.unwrap();
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Blue, 18080)));
        n.switch(&up(Color::Green, 18081)).await.unwrap();
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Green, 18081)));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "test\nreload\ntest\nreload\n");
    }

    #[tokio::test]
    async fn a_refused_check_restores_the_file_and_never_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let reloads = dir.path().join("reloads");
        let reload = sh(&format!("echo reload >> {}", reloads.display()));
        let ok = nginx(dir.path(), sh("true"), reload.clone());
        ok.switch(&up(Color::Blue, 18080)).await.unwrap();
        let before = std::fs::read(&ok.cfg.upstream_file).unwrap();

        let refusing = nginx(dir.path(), sh("echo 'nginx: [emerg] unexpected \"}\" in x.conf:3' >&2; exit 1"), reload);
        let e = refusing.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(e.traffic_unchanged(), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("unexpected") && msg.contains("nothing was reloaded"), "{msg}");
        assert_eq!(std::fs::read(&refusing.cfg.upstream_file).unwrap(), before, "the previous file is back");
        assert_eq!(std::fs::read_to_string(&reloads).unwrap(), "reload\n", "no second reload");

        // With no previous file, a refused first switch leaves no file behind.
        let fresh = tempfile::tempdir().unwrap();
        let n = nginx(fresh.path(), sh("exit 1"), sh("true"));
        n.switch(&up(Color::Blue, 18080)).await.unwrap_err();
        assert!(!n.cfg.upstream_file.exists());
        let left: Vec<_> = std::fs::read_dir(n.cfg.upstream_file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [NGINX_LOCK_FILE], "no temporary file is left");
    }

    #[tokio::test]
    async fn a_failed_reload_restores_the_file_and_says_traffic_is_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let n = nginx(dir.path(), sh("true"), sh("true"));
        n.switch(&up(Color::Blue, 18080)).await.unwrap();
        let failing = nginx(dir.path(), sh("true"), sh("echo 'no pid file' >&2; exit 1"));
        let e = failing.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(!e.traffic_unchanged());
        assert!(e.to_string().contains("no pid file"), "{e}");
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Blue, 18080)));
        let slow = nginx(dir.path(), sh("sleep 5"), sh("true"));
        let slow = NginxSwitch { cfg: NginxConfig { timeout: Duration::from_millis(200), ..slow.cfg } };
        let started = std::time::Instant::now();
        let e = slow.switch(&up(Color::Green, 18081)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "killed at the timeout");
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert_eq!(n.current().await.unwrap(), Some(up(Color::Blue, 18080)));
    }

    #[tokio::test]
    async fn switches_of_one_nginx_run_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        // Each check records its start and end around a pause: overlapping switches would
        // interleave the lines.
        let test = sh(&format!("echo start >> {l}; sleep 0.3; echo end >> {l}", l = log.display()));
        let a = nginx(dir.path(), test.clone(), sh("true"));
        let mut b_cfg = nginx(dir.path(), test, sh("true")).cfg;
        b_cfg.upstream_file = dir.path().join("conf.d").join("other.conf");
        let b = NginxSwitch::new(b_cfg);
        let (blue, green) = (up(Color::Blue, 18080), up(Color::Green, 18081));
        let (ra, rb) = tokio::join!(a.switch(&blue), b.switch(&green));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "start\nend\nstart\nend\n");
    }

    #[tokio::test]
    async fn the_command_driver_passes_the_upstream_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let (app, env) = names();
        let out = dir.path().join("got");
        let script = format!(
            "echo \"$S3DOCK_UPSTREAM $S3DOCK_UPSTREAM_HOST $S3DOCK_UPSTREAM_PORT $S3DOCK_COLOR $S3DOCK_APP $S3DOCK_ENV\" >> {}; \
             if [ \"$S3DOCK_COLOR\" = green ]; then echo 'first line' >&2; echo 'lb api said no' >&2; exit 7; fi",
            out.display()
        );
        let c = CommandSwitch {
            app,
            env,
            command: sh(&script),
            timeout: Duration::from_secs(5),
            record: dir.path().join("rec.json"),
            lock: tokio::sync::Mutex::new(()),
        };
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

    #[tokio::test]
    async fn the_none_driver_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = RecordSwitch::new(dir.path().join("a").join("rec.json"));
        assert_eq!(r.current().await.unwrap(), None);
        r.switch(&up(Color::Green, 2)).await.unwrap();
        assert_eq!(r.current().await.unwrap(), Some(up(Color::Green, 2)));
        std::fs::write(dir.path().join("a").join("rec.json"), "{").unwrap();
        assert!(matches!(r.current().await, Err(TrafficError::Corrupt { .. })));
    }

    #[test]
    fn drivers_are_built_from_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = DeploySpec::from_toml(
            "app = \"web\"\nenv = \"production\"\ncontainer_port = 80\nports = { blue = 1, green = 2 }\n",
        )
        .unwrap();
        assert!(traffic_switch(&spec, dir.path()).unwrap_err().to_string().contains("traffic: missing"));
        spec.traffic = Some(super::super::spec::TrafficConfig::none());
        assert_eq!(traffic_switch(&spec, dir.path()).unwrap().driver(), "none");
        spec.traffic = Some(super::super::spec::TrafficConfig::nginx("/tmp/x.conf"));
        assert_eq!(traffic_switch(&spec, dir.path()).unwrap().driver(), "nginx");
        spec.traffic = Some(super::super::spec::TrafficConfig::command(vec!["/bin/true".into()]));
        assert_eq!(traffic_switch(&spec, dir.path()).unwrap().driver(), "command");
    }

    #[test]
    fn tails_are_short_and_on_one_line() {
        assert_eq!(tail_of(b"a\n\nb\nc\nd\ne\nf\n"), "b | c | d | e | f");
        let long = "x".repeat(2000);
        assert_eq!(tail_of(long.as_bytes()).chars().count(), 601);
    }
}
