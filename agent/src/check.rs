//! `s3dock-agent --check`: everything the agent needs, checked in one run, before it starts.
//!
//! The problems that otherwise show up only at the first deploy — a state directory the agent
//! cannot write, a bucket it may not read, a queue that does not exist, a Docker socket it
//! may not use, an nginx configuration `nginx -t` refuses, a host port another process holds
//! — are each one line, with what to do. The systemd unit runs it as `ExecStartPre`, so a
//! broken setup fails the start with the reason in `journalctl`.
//!
//! Every check runs whatever the others found. A check that fails for a reason waiting may cure
//! (the network or Docker not up yet while the host boots) is a warning: the agent itself
//! waits those out, and failing the start for them would make systemd give up on a booting
//! host. Settings that are valid but risky are warnings too.

use std::path::Path;
use std::sync::Arc;

use s3dock_aws::sqs::SqsClient;
use s3dock_core::layout;
use s3dock_core::registry::{EventMode, Registry};
use s3dock_core::store::ObjectStore;
use s3dock_engine::deploy::{DeploySpec, DriverConfig, HostNetwork, LocalNetwork, traffic_switch};
use s3dock_engine::{BollardEngine, DockerEngine};
use serde_json::{Value, json};

use crate::config::{AgentConfig, QueueMode};
use crate::queue::{dlq_name, queue_name};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Failure,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Failure => "failure",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    /// What was checked (`docker`, `store`, `web/production: nginx -t`...).
    pub what: String,
    /// What was found, and for a failure what to do.
    pub detail: String,
}

/// Every check of one run.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub checks: Vec<Check>,
}

impl CheckReport {
    fn push(&mut self, level: Level, what: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { level, what: what.into(), detail: detail.into() });
    }

    pub fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|c| c.level == level).count()
    }

    /// One line per check, then the tally.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{:<8} {}: {}\n", c.level.as_str(), c.what, c.detail));
        }
        out.push_str(&format!(
            "{} failure(s), {} warning(s), {} ok\n",
            self.count(Level::Failure),
            self.count(Level::Warning),
            self.count(Level::Ok)
        ));
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "checks": self.checks.iter().map(|c| json!({"level": c.level.as_str(), "check": c.what, "detail": c.detail})).collect::<Vec<_>>(),
            "failures": self.count(Level::Failure),
            "warnings": self.count(Level::Warning),
        })
    }
}

/// An error's level: a failure unless waiting may cure it.
fn level_of(retryable: bool) -> Level {
    if retryable { Level::Warning } else { Level::Failure }
}

/// Runs every check against the real world the configuration names (the store, the queue, the
/// Docker engine the agent would use, this host's network).
pub async fn check(config: &AgentConfig) -> CheckReport {
    let mut report = CheckReport::default();
    report.push(
        Level::Ok,
        "configuration",
        format!(
            "{}: agent {}, host {}, {} service(s)",
            config.path.display(),
            config.agent_id,
            config.host,
            config.services.len()
        ),
    );
    for w in config.warnings() {
        report.push(Level::Warning, "configuration", w);
    }
    check_state_dir(&config.state_dir, &mut report);
    let store = check_store(config, &mut report).await;
    check_queue(config, &mut report).await;
    let engine = match BollardEngine::connect().await {
        Ok(engine) => {
            let engine: Arc<dyn DockerEngine> = Arc::new(engine);
            match engine.version().await {
                Ok(v) => report.push(
                    Level::Ok,
                    "docker",
                    format!("engine {} (API {}, {})", v.server_version, v.api_version, v.storage_driver),
                ),
                Err(e) => report.push(level_of(e.is_retryable()), "docker", e.to_string()),
            }
            Some(engine)
        }
        Err(e) => {
            report.push(level_of(e.is_retryable()), "docker", e.to_string());
            None
        }
    };
    for spec in &config.services {
        check_service(config, spec, store.as_ref(), engine.as_deref(), &LocalNetwork, &mut report).await;
    }
    report
}

fn check_state_dir(dir: &Path, report: &mut CheckReport) {
    let probe = dir.join(format!(".s3dock-check-{}", std::process::id()));
    let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&probe, b"check"));
    let _ = std::fs::remove_file(&probe);
    match written {
        Ok(()) => report.push(Level::Ok, "state_dir", format!("{} is writable", dir.display())),
        Err(e) => report.push(
            Level::Failure,
            "state_dir",
            format!(
                "{} is not writable by this user ({e}); create it owned by the agent's user (the unit's StateDirectory= does), or set state_dir",
                dir.display()
            ),
        ),
    }
}

async fn check_store(config: &AgentConfig, report: &mut CheckReport) -> Option<Arc<dyn ObjectStore>> {
    let opened = config.store.open().await.map_err(|e| (e.is_retryable(), e.to_string()));
    let store = match opened {
        Ok(s) => s,
        Err((retryable, e)) => {
            report.push(level_of(retryable), "store", format!("{}: {e}", config.store.url()));
            return None;
        }
    };
    // A read the agent makes at every reconcile: the pointer of its first service (or one
    // that surely does not exist), which also proves the credentials.
    let key = match config.services.first() {
        Some(s) => layout::pointer(&s.app, &s.env),
        None => layout::agent(
            &s3dock_core::names::AppName::parse("s3dock-check").expect("a valid app name"),
            &s3dock_core::names::EnvName::parse("check").expect("a valid environment name"),
            &config.agent_id,
        ),
    };
    match store.head(&key).await {
        Ok(_) => report.push(Level::Ok, "store", format!("{} answers", store.url())),
        Err(e) => {
            report.push(level_of(e.is_retryable()), "store", format!("{}: {e}", store.url()));
            return None;
        }
    }
    Some(store)
}

async fn check_queue(config: &AgentConfig, report: &mut CheckReport) {
    let mode = &config.queue.mode;
    if *mode == QueueMode::None {
        report.push(Level::Ok, "queue", "none: the agent converges through its periodic reconcile only");
        return;
    }
    let client = match SqsClient::connect(&config.aws.sqs()).await {
        Ok(c) => c,
        Err(e) => return report.push(level_of(e.is_retryable()), "queue", e.to_string()),
    };
    match mode {
        QueueMode::Url(url) => {
            let queue = client.queue(url);
            match queue.attributes().await {
                Ok(attrs) if attrs.contains_key("RedrivePolicy") => {
                    report.push(Level::Ok, "queue", format!("{url} exists, with a dead-letter queue"))
                }
                Ok(_) => report.push(
                    Level::Warning,
                    "queue",
                    format!(
                        "{url} has no redrive policy: messages the agent cannot read are never set aside, only hidden for longer each time; give it a dead-letter queue"
                    ),
                ),
                Err(e) => report.push(level_of(e.is_retryable()), "queue", e.to_string()),
            }
        }
        QueueMode::Create => {
            let name = queue_name(&config.queue.name_prefix, &config.agent_id);
            match client.queue_named(&name).await {
                Ok(q) => {
                    report.push(Level::Ok, "queue", format!("{} exists (its DLQ is {})", q.url(), dlq_name(&name)))
                }
                Err(s3dock_aws::sqs::QueueError::NotFound { .. }) => {
                    report.push(Level::Ok, "queue", format!("{name} does not exist yet; the agent creates it at start"))
                }
                Err(e) => report.push(level_of(e.is_retryable()), "queue", e.to_string()),
            }
        }
        QueueMode::None => {}
    }
}

/// One service: its pointer, its driver (the configuration check runs as the agent would run
/// it, the proof of the running nginx), its host ports.
pub async fn check_service(
    config: &AgentConfig,
    spec: &DeploySpec,
    store: Option<&Arc<dyn ObjectStore>>,
    engine: Option<&dyn DockerEngine>,
    net: &dyn HostNetwork,
    report: &mut CheckReport,
) {
    let name = format!("{}/{}", spec.app, spec.env);
    if let Some(store) = store {
        let registry = Registry::new(
            store.clone(),
            Arc::new(s3dock_core::clock::SystemClock),
            format!("agent:{}", config.agent_id),
            EventMode::Lambda,
        );
        match registry.resolve(&spec.app, &spec.env).await {
            Ok(r) => report.push(Level::Ok, format!("{name}: pointer"), format!("names {}", r.record.image)),
            Err(e) if e.kind() == s3dock_core::ErrorKind::NotFound => {
                match store.head(&layout::pointer(&spec.app, &spec.env)).await {
                    Ok(None) => report.push(Level::Ok, format!("{name}: pointer"), "none yet: nothing to deploy"),
                    _ => report.push(Level::Warning, format!("{name}: pointer"), e.to_string()),
                }
            }
            Err(e) => report.push(level_of(e.is_retryable()), format!("{name}: pointer"), e.to_string()),
        }
    }
    let traffic = match traffic_switch(spec, &config.state_dir) {
        Ok(t) => t,
        Err(e) => return report.push(Level::Failure, format!("{name}: traffic"), e.to_string()),
    };
    let driver = spec.traffic.as_ref().and_then(|t| t.driver(&spec.app, &spec.env).ok());
    if let Some(DriverConfig::Nginx { upstream_file, test_command, timeout, .. }) = &driver {
        let dir = upstream_file.parent().unwrap_or(Path::new("."));
        check_state_dir_like(dir, &name, report);
        match run(test_command, *timeout).await {
            Ok(()) => report.push(Level::Ok, format!("{name}: {}", test_command.join(" ")), "accepts the configuration"),
            Err(e) => report.push(
                Level::Failure,
                format!("{name}: {}", test_command.join(" ")),
                format!("{e}; the agent runs it before every switch, so no deploy could switch: fix nginx's configuration or test_command"),
            ),
        }
    }
    match (traffic.proves(), traffic.routed().await) {
        (true, Ok(Some(up))) => report.push(
            Level::Ok,
            format!("{name}: traffic"),
            format!("the {} driver routes to {up}", traffic.driver()),
        ),
        (true, Ok(None)) => report.push(Level::Ok, format!("{name}: traffic"), "nothing routed yet"),
        (true, Err(e)) => report.push(
            Level::Warning,
            format!("{name}: traffic"),
            format!("{e} (before the first deploy, an upstream file written by hand has no probe: that is expected)"),
        ),
        (false, _) => {}
    }
    for color in s3dock_engine::deploy::Color::ALL {
        let port = spec.ports.port(color);
        let ours = match engine {
            Some(e) => e
                .inspect_container(&spec.container_name(color))
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.running && c.host_port(spec.container_port) == Some(port)),
            None => false,
        };
        if ours {
            continue;
        }
        if let Some(problem) = net.port_in_use(spec.bind, port).await {
            report.push(
                Level::Failure,
                format!("{name}: ports.{color}"),
                format!("{}:{port} {problem}; free it or change ports.{color}", spec.bind),
            );
        }
    }
}

fn check_state_dir_like(dir: &Path, name: &str, report: &mut CheckReport) {
    let probe = dir.join(format!(".s3dock-check-{}", std::process::id()));
    match std::fs::write(&probe, b"check") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
        }
        Err(e) => report.push(
            Level::Failure,
            format!("{name}: upstream_file"),
            format!(
                "cannot write in {} ({e}); create the directory owned by the agent's user (and list it in the unit's ReadWritePaths=)",
                dir.display()
            ),
        ),
    }
}

/// Runs a command as the agent runs a driver's commands (no shell, bounded).
async fn run(argv: &[String], timeout: std::time::Duration) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let tail = last[last.len().saturating_sub(3)..].join(" | ");
            Err(format!(
                "exited with {}{}",
                out.status,
                if tail.is_empty() { String::new() } else { format!(": {tail}") }
            ))
        }
        Ok(Err(e)) => Err(format!("cannot start it: {e}")),
        Err(_) => Err(format!("did not finish within {}s", timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::HostFacts;

    fn config(dir: &Path, extra: &str) -> AgentConfig {
        let text = format!(
            "agent_id = \"web-1\"\nstore = \"{store}\"\nstate_dir = \"{state}\"\nreconcile_interval = \"10s\"\n[[service]]\napp = \"web\"\nenv = \"production\"\ncontainer_port = 80\nports = {{ blue = 18080, green = 18081 }}\ndrain = \"0s\"\n[service.traffic]\ndriver = \"nginx\"\nupstream_file = \"{up}\"\ntest_command = [\"/bin/sh\", \"-c\", \"echo 'nginx: [emerg] unknown directive' >&2; exit 1\"]\nreload_command = [\"true\"]\n{extra}",
            store = dir.join("store").display(),
            state = dir.join("state").display(),
            up = dir.join("nginx").join("web.conf").display(),
        );
        AgentConfig::parse(&text, &dir.join("agent.toml"), &HostFacts { hostname: Some("h".into()) }).unwrap()
    }

    /// Every problem of one setup in one run, each with what to do; the agent's start would
    /// otherwise find them one deploy at a time.
    #[tokio::test]
    async fn every_problem_is_reported_in_one_run() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        let cfg = config(dir.path(), "");
        let mut report = CheckReport::default();
        check_state_dir(&cfg.state_dir, &mut report);
        let store = check_store(&cfg, &mut report).await;
        assert!(store.is_some());
        // The nginx directory does not exist; the test command refuses; a port is taken.
        let held = std::net::TcpListener::bind("127.0.0.1:18081").ok();
        check_service(&cfg, &cfg.services[0], store.as_ref(), None, &LocalNetwork, &mut report).await;
        for w in cfg.warnings() {
            report.push(Level::Warning, "configuration", w);
        }
        let text = report.render();
        assert!(text.contains("ok       state_dir:"), "{text}");
        assert!(text.contains("web/production: pointer: none yet"), "{text}");
        assert!(text.contains("failure  web/production: upstream_file: cannot write in"), "{text}");
        assert!(text.contains("unknown directive") && text.contains("no deploy could switch"), "{text}");
        if held.is_some() {
            assert!(text.contains("failure  web/production: ports.green: 127.0.0.1:18081 is already in use"), "{text}");
        }
        assert!(text.contains("drain = \"0s\" with the nginx driver"), "{text}");
        assert!(text.contains("reconcile_interval (10s) is shorter than health.deadline (60s)"), "{text}");
        assert!(report.count(Level::Failure) >= 2, "{text}");
        assert_eq!(report.to_json()["failures"], report.count(Level::Failure));
        assert!(text.lines().all(|l| !l.is_empty()));

        // A state directory that cannot be created.
        let mut report = CheckReport::default();
        check_state_dir(&PathBuf::from("/proc/s3dock-cannot-be-here"), &mut report);
        assert_eq!(report.checks[0].level, Level::Failure, "{:?}", report.checks);
        assert!(report.checks[0].detail.contains("StateDirectory="));
    }
}
