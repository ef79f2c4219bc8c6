//! Health checks: when a new container may receive traffic.
//!
//! A container is healthy when, in the same round, the last `successes` HTTP tries in a row
//! answered 2xx *and* Docker's own `HEALTHCHECK` status (if the image defines one) is
//! `healthy`. The check gives up at its deadline, and at once when the container stops
//! running (crashed, or restarting under its restart policy), with its exit code and its last
//! log lines, redacted of the secrets it was given.
//!
//! The HTTP client is a few lines over a `TcpStream`: one `GET`, `Connection: close`, only the
//! status line is parsed. A health check needs nothing more, and it keeps the engine crate free
//! of an HTTP client stack.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::deployer::{DeployEvent, DeployObserver};
use super::spec::{Color, HealthSpec, show_duration};
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
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        format!("http://{host}:{}{}", self.port, self.spec.path)
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
            let last = probe(&self.host, self.port, &spec.path, spec.timeout, deadline, &mut streak).await;
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
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
    deadline: Instant,
    streak: &mut u32,
) -> String {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let per_try = timeout.min(remaining).max(Duration::from_millis(50));
    match http_status(host, port, path, per_try).await {
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

/// `GET http://host:port{path}` with `Connection: close`; the status code, or why there is
/// none, within `timeout`.
pub async fn http_status(host: &str, port: u16, path: &str, timeout: Duration) -> Result<u16, String> {
    let attempt = async {
        let mut socket =
            tokio::net::TcpStream::connect((host, port)).await.map_err(|e| format!("could not connect ({e})"))?;
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: s3dock\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).await.map_err(|e| format!("could not send the request ({e})"))?;
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = socket.read(&mut buf).await.map_err(|e| format!("the connection failed ({e})"))?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let status = parse_status_line(&head)?;
        // Read (a bounded amount of) the rest, so the server sees an orderly close rather than
        // a reset for unread data.
        let mut rest = 0usize;
        while rest < 64 * 1024 {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest += n,
            }
        }
        Ok(status)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("did not answer within {}", show_duration(timeout))),
    }
}

fn parse_status_line(head: &[u8]) -> Result<u16, String> {
    if head.is_empty() {
        return Err("closed the connection without answering".to_owned());
    }
    let line_end = head.windows(2).position(|w| w == b"\r\n").unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && (100..600).contains(&code) => Ok(code),
        _ => Err(format!("answered something that is not HTTP ({:?})", line.chars().take(60).collect::<String>())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert_eq!(parse_status_line(b"HTTP/1.0 500 Oops\r\nX: y\r\n"), Ok(500));
        assert!(parse_status_line(b"").unwrap_err().contains("without answering"));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH\r\n").unwrap_err().contains("not HTTP"));
        assert!(parse_status_line(b"HTTP/1.1 abc\r\n").is_err());
    }

    #[test]
    fn secrets_are_redacted_from_log_lines() {
        let secrets = vec!["hunter2-password".to_owned(), "1".to_owned()];
        assert_eq!(redact("connecting with hunter2-password to db1", &secrets), "connecting with *** to db1");
        assert_eq!(redact(&"y".repeat(500), &secrets).chars().count(), LOG_LINE_CHARS + 1);
    }

    /// A one-shot server answering each connection with `reply`, or holding it open silently.
    async fn server(reply: Option<&'static str>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                match reply {
                    Some(r) => {
                        let _ = s.write_all(r.as_bytes()).await;
                    }
                    None => {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn the_client_reads_status_codes_and_times_out() {
        let ok = server(Some("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;
        assert_eq!(http_status("127.0.0.1", ok, "/", Duration::from_secs(2)).await, Ok(200));
        let bad = server(Some("HTTP/1.0 503 Busy\r\n\r\n")).await;
        assert_eq!(http_status("127.0.0.1", bad, "/x", Duration::from_secs(2)).await, Ok(503));
        let silent = server(None).await;
        let started = Instant::now();
        let e = http_status("127.0.0.1", silent, "/", Duration::from_millis(200)).await.unwrap_err();
        assert!(e.contains("did not answer within 200ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let e = http_status("127.0.0.1", closed, "/", Duration::from_secs(1)).await.unwrap_err();
        assert!(e.contains("could not connect"), "{e}");
    }
}
