//! Health checks: when a new container may receive traffic.
//!
//! A container is healthy when, in the same round, the last `successes` HTTP tries in a row
//! answered 2xx *and* Docker's own `HEALTHCHECK` status (if the image defines one) is
//! `healthy`. The check gives up at its deadline, and at once when the container stops
//! running (crashed, or restarting under its restart policy), with its exit code and its last
//! log lines, redacted of the secrets it was given.
//!
//! The probes go through the [`HostNetwork`] seam and time is tokio's, so the in-memory host
//! of [`crate::fake`] runs a check in microseconds.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::net::{HostNetwork, HttpProbe};
use super::spec::{Color, HealthSpec, show_duration};
use super::{DeployEvent, DeployObserver};
use crate::docker::{DockerEngine, EngineError, HealthStatus};

/// How many of a failed container's last log lines go into the error.
const LOG_LINES: usize = 10;
/// Longer log lines are cut: the error is one line, and the audit record carries it.
const LOG_LINE_CHARS: usize = 200;
/// Secrets shorter than this are not redacted from logs: replacing `1` or `on` everywhere
/// would make the lines unreadable and protects nothing.
const MIN_REDACTED_LEN: usize = 4;

/// Why a container did not become healthy. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum HealthFailure {
    #[error(
        "the container {} before passing its health check{}; fix the image or its command",
        exit_description(*code, status),
        log_suffix(logs)
    )]
    Exited { code: Option<i64>, status: String, logs: Vec<String> },
    #[error("the container disappeared during its health check (removed by someone else?); deploy again")]
    Gone,
    #[error(
        "not healthy within {}: GET {url} {last} ({streak} of {needed} consecutive 2xx){}; fix the app, or raise health.deadline",
        show_duration(*deadline),
        docker_suffix(*docker)
    )]
    Deadline { deadline: Duration, url: String, last: String, streak: u32, needed: u32, docker: HealthStatus },
    #[error("stopped by shutdown during the health check")]
    Cancelled,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn exit_description(code: Option<i64>, status: &str) -> String {
    match (status, code) {
        ("restarting", _) => "keeps exiting (Docker is restarting it)".to_owned(),
        (_, Some(code)) => format!("exited with status {code}"),
        (status, None) => format!("stopped ({status})"),
    }
}

fn log_suffix(logs: &[String]) -> String {
    if logs.is_empty() { "; it printed nothing".to_owned() } else { format!("; its last output: {}", logs.join(" | ")) }
}

fn docker_suffix(docker: HealthStatus) -> String {
    match docker {
        HealthStatus::None => String::new(),
        HealthStatus::Starting => "; Docker health: starting".to_owned(),
        HealthStatus::Healthy => "; Docker health: healthy".to_owned(),
        HealthStatus::Unhealthy => "; Docker health: unhealthy".to_owned(),
    }
}

/// Replaces each secret (of at least [`MIN_REDACTED_LEN`] characters) with `***`, then cuts
/// the line to [`LOG_LINE_CHARS`].
pub fn redact(line: &str, secrets: &[String]) -> String {
    let mut out = line.to_owned();
    for s in secrets.iter().filter(|s| s.chars().count() >= MIN_REDACTED_LEN) {
        out = out.replace(s.as_str(), "***");
    }
    if out.chars().count() > LOG_LINE_CHARS {
        out = format!("{}…", out.chars().take(LOG_LINE_CHARS).collect::<String>());
    }
    out
}

/// One container to check.
#[derive(Debug)]
pub struct HealthCheck<'a> {
    pub engine: &'a dyn DockerEngine,
    pub net: &'a dyn HostNetwork,
    pub container: &'a str,
    pub color: Color,
    /// Where the container's port is published (an IP address).
    pub host: String,
    pub port: u16,
    pub spec: &'a HealthSpec,
    /// Values to hide from the container's log lines.
    pub secrets: &'a [String],
}

impl HealthCheck<'_> {
    pub fn url(&self) -> String {
        HttpProbe::new(&self.host, self.port, &self.spec.path).url()
    }

    /// Waits until the container is healthy, it stops, the deadline passes or `cancel` fires.
    /// Every round sleeps at most until the deadline, and every try is bounded by
    /// `health.timeout`, so this ends within the deadline plus one round.
    pub async fn wait(
        &self,
        cancel: &CancellationToken,
        observer: Option<&dyn DeployObserver>,
    ) -> Result<(), HealthFailure> {
        let spec = self.spec;
        let deadline = Instant::now() + spec.deadline;
        let mut streak = 0u32;
        loop {
            let info = self.engine.inspect_container(self.container).await?.ok_or(HealthFailure::Gone)?;
            // A container that exited (or that Docker is restarting after an exit) will not
            // pass: say so now, with what it printed, rather than at the deadline.
            if !info.running || info.status == "restarting" {
                let logs = self.engine.container_logs(self.container, LOG_LINES).await.unwrap_or_default();
                return Err(HealthFailure::Exited {
                    code: info.exit_code,
                    status: info.status,
                    logs: logs.iter().map(|l| redact(l, self.secrets)).collect(),
                });
            }
            let target = HttpProbe::new(&self.host, self.port, &spec.path);
            let last = probe(self.net, &target, spec.timeout, deadline, &mut streak).await;
            if let Some(o) = observer {
                o.event(&DeployEvent::Probe { color: self.color, ok: streak > 0, streak }).await;
            }
            // Docker's status is from the inspect above, taken before this try: both verdicts
            // are of the same round.
            if streak >= spec.successes && matches!(info.health, HealthStatus::None | HealthStatus::Healthy) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HealthFailure::Deadline {
                    deadline: spec.deadline,
                    url: self.url(),
                    last,
                    streak,
                    needed: spec.successes,
                    docker: info.health,
                });
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(HealthFailure::Cancelled),
                _ = tokio::time::sleep(spec.interval.min(deadline - now)) => {}
            }
        }
    }
}

/// One try of a health or verification probe within `deadline`: counts consecutive 2xx
/// answers in `streak` (reset by anything else) and says what the endpoint answered.
pub async fn probe(
    net: &dyn HostNetwork,
    target: &HttpProbe<'_>,
    timeout: Duration,
    deadline: Instant,
    streak: &mut u32,
) -> String {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let per_try = timeout.min(remaining).max(Duration::from_millis(50));
    match net.http_status(target, per_try).await {
        Ok(code) if (200..300).contains(&code) => {
            *streak += 1;
            format!("answered HTTP {code}")
        }
        Ok(code) => {
            *streak = 0;
            format!("answered HTTP {code}")
        }
        Err(e) => {
            *streak = 0;
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_from_log_lines() {
        let secrets = vec!["hunter2-password".to_owned(), "1".to_owned()];
        assert_eq!(redact("connecting with hunter2-password to db1", &secrets), "connecting with *** to db1");
        assert_eq!(redact(&"y".repeat(500), &secrets).chars().count(), LOG_LINE_CHARS + 1);
    }
}
