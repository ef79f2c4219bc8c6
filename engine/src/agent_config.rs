//! The host file: the agent's configuration (TOML), documented key by key in `docs/agent.md`.
//! It lives here, once, because two programs read it: the agent, and `s3dock deploy --service`
//! on a host that runs one (which must use the same `state_dir`, so that the two share the
//! per-service lock and settle each other's interrupted deploys).
//!
//! Parsing is two steps, like the CLI's settings: [`RawConfig`] is what was written (types
//! only; an unknown key is an error naming it), [`AgentConfig::parse`] checks every value and
//! fills the defaults. [`HostFile::parse`] is the lighter read `s3dock deploy` needs: the
//! services, the state directory and the host name, by the same rules. Every error is one line
//! that says what to fix. The host name is a parameter ([`HostFacts`]), so parsing is a pure
//! function tests can call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::deploy::{DeploySpec, DriverConfig};
use s3dock_aws::location::Base;
use s3dock_aws::sqs::{MAX_VISIBILITY, MAX_WAIT, SqsConfig};
use s3dock_core::names::{AgentId, AppName, EnvName};

use serde::{Deserialize, Deserializer};

mod service_file;
pub use service_file::ServiceFile;

/// Where the state files live when `state_dir` is not set: the systemd unit's
/// `StateDirectory=s3dock` (`infra/s3dock-agent.service`). `s3dock deploy` uses the same
/// default, so a hand-run deploy and the agent share the service lock.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/s3dock";
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(60);
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// The first wait before a deploy that failed is tried again with the same pointer.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_MAX_RECEIVE_COUNT: u32 = 5;
/// The queue name prefix of the default stack (`s3dock`): its `AgentQueuePrefix` output.
pub const DEFAULT_QUEUE_PREFIX: &str = "s3dock_agent-";
/// Leaves room in SQS's 80 characters for an id and the `-dlq` suffix.
pub const MAX_QUEUE_PREFIX: usize = 40;
/// The promotion fan-out skips registrations older than this by default (`AgentTtlSeconds`):
/// a longer heartbeat interval would make a live agent look dead to it.
pub const FANOUT_TTL: Duration = Duration::from_secs(10 * 60);

/// A configuration problem: one line, saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file, with `:line:column` when the problem has a place.
    pub file: String,
    pub message: String,
}

/// What the agent learns from the machine it runs on.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The host name, if the system has one.
    pub hostname: Option<String>,
}

impl HostFacts {
    pub fn from_system() -> Self {
        HostFacts { hostname: gethostname::gethostname().into_string().ok().filter(|h| !h.trim().is_empty()) }
    }
}

/// A duration written with a unit (`"500ms"`, `"20s"`, `"5m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        s3dock_core::duration::de_short(d).map(Dur)
    }
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub agent_id: Option<String>,
    pub host: Option<String>,
    pub store: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: Option<bool>,
    pub aws_profile: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub reconcile_interval: Option<Dur>,
    pub heartbeat_interval: Option<Dur>,
    pub retry_backoff: Option<Dur>,
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub service: Vec<DeploySpec>,
}

/// The `[queue]` table as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub mode: Option<String>,
    pub url: Option<String>,
    pub visibility_timeout: Option<Dur>,
    pub max_receive_count: Option<u32>,
    pub wait: Option<Dur>,
    pub name_prefix: Option<String>,
}

/// Where the bucket is: the workspace's one store location, relative paths taken against
/// the file's own directory.
pub use s3dock_aws::location::Location as StoreLocation;

/// How messages reach the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueMode {
    /// The agent creates `{name_prefix}{id}` and `{name_prefix}{id}-dlq` with their attributes
    /// at every start (idempotent).
    Create,
    /// A queue made by someone else.
    Url(String),
    /// No queue: the agent converges through its periodic reconcile only.
    None,
}

impl QueueMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            QueueMode::Create => "create",
            QueueMode::Url(_) => "url",
            QueueMode::None => "none",
        }
    }
}

/// The validated `[queue]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub mode: QueueMode,
    /// How long a received message stays hidden; also the unit of a poison message's back-off.
    pub visibility_timeout: Duration,
    /// Receives after which SQS moves a message to the dead-letter queue (`create` mode sets it
    /// in the queue's redrive policy).
    pub max_receive_count: u32,
    /// The long-poll wait of each receive.
    pub wait: Duration,
    /// What the names of the queues `create` makes start with: the stack's `AgentQueuePrefix`
    /// output (`STACK_agent-`), the only names its agent policy and fan-out reach.
    pub name_prefix: String,
}

/// The AWS connection settings shared by the store and the queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub aws_profile: Option<String>,
}

impl AwsSettings {
    /// The SQS client settings: the same region, endpoint and profile as the store.
    pub fn sqs(&self) -> SqsConfig {
        SqsConfig {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            aws_profile: self.aws_profile.clone(),
            ..SqsConfig::default()
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub agent_id: AgentId,
    /// This machine's name in audit records and registrations.
    pub host: String,
    pub store: StoreLocation,
    pub aws: AwsSettings,
    pub state_dir: PathBuf,
    pub reconcile_interval: Duration,
    pub heartbeat_interval: Duration,
    pub retry_backoff: Duration,
    pub queue: QueueConfig,
    /// Validated specs, each with a traffic driver; (app, env) pairs and host ports unique.
    pub services: Vec<DeploySpec>,
}

/// The one reader of host files (the agent's, `s3dock deploy`'s): the text, or an error naming
/// the file and ending with `hint`.
fn read_file(path: &Path, hint: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError { file: path.display().to_string(), message: format!("cannot read it ({e}); {hint}") })
}

impl AgentConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path, host: &HostFacts) -> Result<AgentConfig, ConfigError> {
        let text = read_file(path, "pass the agent's configuration file with --config FILE")?;
        Self::parse(&text, path, host)
    }

    /// Parses and checks the text of a configuration file read from `path`.
    pub fn parse(text: &str, path: &Path, host: &HostFacts) -> Result<AgentConfig, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError { file: file.clone(), message };
        let raw = parse_raw(text, path)?;

        let hostname = host.hostname.clone();
        let agent_id = match &raw.agent_id {
            Some(id) => AgentId::parse(id).map_err(|e| err(format!("agent_id: {e}")))?,
            None => {
                let name = hostname.as_deref().ok_or_else(|| {
                    err("agent_id: not set and this machine has no host name to derive it from; set agent_id = \"web-1\"".into())
                })?;
                agent_id_from_host(name).map_err(|why| err(format!("agent_id: {why}")))?
            }
        };
        let host_name = match raw.host.clone().or(hostname) {
            Some(h) if !h.trim().is_empty() && h.len() <= 255 && !h.chars().any(char::is_control) => h,
            Some(h) => {
                return Err(err(format!(
                    "host: {h:?} is not a host name (1 to 255 characters, no control characters)"
                )));
            }
            None => {
                return Err(
                    err("host: not set and this machine has no host name; set host = \"web-1.example\"".into()),
                );
            }
        };

        let aws = AwsSettings {
            region: raw.region.clone(),
            endpoint: raw.endpoint.clone(),
            aws_profile: raw.aws_profile.clone(),
        };
        let Some(store_raw) = raw.store.as_deref() else {
            return Err(err(
                "store: missing; give the bucket (store = \"s3://my-images/s3dock\") or a directory (store = \"/srv/s3dock-store\")"
                    .into(),
            ));
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let store = parse_store(store_raw, base, &aws, raw.path_style).map_err(|why| err(format!("store: {why}")))?;
        if matches!(store, StoreLocation::Local(_)) {
            for (key, set) in [
                ("region", raw.region.is_some()),
                ("endpoint", raw.endpoint.is_some()),
                ("path_style", raw.path_style.is_some()),
            ] {
                if set {
                    return Err(err(format!(
                        "{key}: only used with an s3:// store, and the store is a directory; remove it or fix store"
                    )));
                }
            }
        }

        let state_dir = state_dir_of(&raw, base).map_err(err)?;

        let positive = |key: &str,
                        value: Option<Dur>,
                        default: Duration,
                        min: Duration|
         -> Result<Duration, ConfigError> {
            let d = value.map_or(default, |d| d.0);
            if d < min {
                return Err(err(format!("{key}: must be at least {min:?}; e.g. {key} = \"{}s\"", default.as_secs())));
            }
            Ok(d)
        };
        let reconcile_interval = positive(
            "reconcile_interval",
            raw.reconcile_interval,
            DEFAULT_RECONCILE_INTERVAL,
            Duration::from_millis(100),
        )?;
        let heartbeat_interval = positive(
            "heartbeat_interval",
            raw.heartbeat_interval,
            DEFAULT_HEARTBEAT_INTERVAL,
            Duration::from_millis(100),
        )?;
        if heartbeat_interval >= FANOUT_TTL {
            return Err(err(format!(
                "heartbeat_interval: must be shorter than the {} minutes after which the promotion fan-out considers an agent gone; e.g. \"20s\"",
                FANOUT_TTL.as_secs() / 60
            )));
        }
        let retry_backoff =
            positive("retry_backoff", raw.retry_backoff, DEFAULT_RETRY_BACKOFF, Duration::from_secs(1))?;

        let queue = parse_queue(&raw.queue, &store).map_err(|why| err(format!("queue.{why}")))?;
        let services = check_services(raw.service).map_err(err)?;
        Ok(AgentConfig {
            path: path.to_path_buf(),
            agent_id,
            host: host_name,
            store,
            aws,
            state_dir,
            reconcile_interval,
            heartbeat_interval,
            retry_backoff,
            queue,
            services,
        })
    }
}

impl AgentConfig {
    /// Settings that are valid but risky, one line each saying what to change: the agent logs
    /// them at start and `s3dock-agent --check` reports them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, spec) in self.services.iter().enumerate() {
            let name = format!("service[{i}] ({}/{})", spec.app, spec.env);
            for w in spec.warnings() {
                out.push(format!("{name}: {w}"));
            }
            if self.reconcile_interval < spec.health.deadline {
                out.push(format!(
                    "{name}: reconcile_interval ({}) is shorter than health.deadline ({}): a reconcile can come due while a health check is still running, so the reconciles queue up behind the deploy; make reconcile_interval longer than a health check",
                    crate::deploy::spec::show_duration(self.reconcile_interval),
                    crate::deploy::spec::show_duration(spec.health.deadline),
                ));
            }
        }
        out
    }
}

/// `state_dir`, relative to the file's directory; [`DEFAULT_STATE_DIR`] when unset.
fn state_dir_of(raw: &RawConfig, base: &Path) -> Result<PathBuf, String> {
    Ok(match &raw.state_dir {
        Some(p) if p.as_os_str().is_empty() => return Err("state_dir: is empty; give a directory".into()),
        Some(p) if p.is_relative() => base.join(p),
        Some(p) => p.clone(),
        None => PathBuf::from(DEFAULT_STATE_DIR),
    })
}

fn parse_raw(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
    let file = path.display().to_string();
    toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| line_col(text, s.start)).map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default();
        ConfigError {
            file: format!("{file}{at}"),
            message: format!("{}; fix the file (docs/agent.md lists every key)", one_line(e.message())),
        }
    })
}

/// What `s3dock deploy --service` takes from an agent's file: its services (each checked on
/// its own), where the state files are and the host's name, by the agent's own rules.
#[derive(Debug, Clone)]
pub struct HostFile {
    pub state_dir: PathBuf,
    /// `host`, when the file sets it.
    pub host: Option<String>,
    pub services: Vec<DeploySpec>,
}

impl HostFile {
    /// Reads the file's types (unknown keys are errors) and its state directory; the services
    /// are validated when one is picked ([`HostFile::service`]).
    pub fn parse(text: &str, path: &Path) -> Result<HostFile, ConfigError> {
        let raw = parse_raw(text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let state_dir =
            state_dir_of(&raw, base).map_err(|message| ConfigError { file: path.display().to_string(), message })?;
        Ok(HostFile { state_dir, host: raw.host, services: raw.service })
    }

    /// The service of (app, env), if the file has one.
    pub fn service(&self, app: &AppName, env: &EnvName) -> Option<&DeploySpec> {
        self.services.iter().find(|s| s.app == *app && s.env == *env)
    }
}

/// The store location ([`StoreLocation::parse`], relative to the file's own directory) with
/// the file's S3 connection settings applied.
fn parse_store(raw: &str, base: &Path, aws: &AwsSettings, path_style: Option<bool>) -> Result<StoreLocation, String> {
    match StoreLocation::parse(raw, Base { dir: Some(base), home: None })? {
        StoreLocation::S3(mut cfg) => {
            cfg.region = aws.region.clone();
            cfg.endpoint = aws.endpoint.clone();
            cfg.path_style = path_style.unwrap_or(false);
            cfg.aws_profile = aws.aws_profile.clone();
            cfg.validate().map(StoreLocation::S3).map_err(|e| e.to_string())
        }
        local => Ok(local),
    }
}

fn parse_queue(raw: &RawQueue, store: &StoreLocation) -> Result<QueueConfig, String> {
    let default_mode = if matches!(store, StoreLocation::S3(_)) { "create" } else { "none" };
    let mode = match (raw.mode.as_deref().unwrap_or(default_mode), &raw.url) {
        ("create", None) => QueueMode::Create,
        ("none", None) => QueueMode::None,
        ("url", Some(url)) => {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 1024
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(format!(
                    "url: {url:?} is not a queue URL; e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/s3dock_agent-web-1"
                ));
            }
            QueueMode::Url(url.clone())
        }
        ("url", None) => {
            return Err("url: missing; mode = \"url\" needs the queue's URL (url = \"https://sqs.REGION.amazonaws.com/ACCOUNT/NAME\")".into());
        }
        (m @ ("create" | "none"), Some(_)) => {
            return Err(format!("url: not used with mode = \"{m}\"; remove it, or set mode = \"url\""));
        }
        (other, _) => {
            return Err(format!("mode: {other:?} is not a queue mode; use \"create\", \"url\" or \"none\""));
        }
    };
    let visibility_timeout = raw.visibility_timeout.map_or(DEFAULT_VISIBILITY_TIMEOUT, |d| d.0);
    if visibility_timeout < Duration::from_secs(1) || visibility_timeout > MAX_VISIBILITY {
        return Err("visibility_timeout: must be between 1s and 12h (SQS's limits); e.g. \"5m\"".into());
    }
    let max_receive_count = raw.max_receive_count.unwrap_or(DEFAULT_MAX_RECEIVE_COUNT);
    if !(1..=1000).contains(&max_receive_count) {
        return Err(format!("max_receive_count: {max_receive_count} is outside SQS's 1 to 1000; e.g. 5"));
    }
    let wait = raw.wait.map_or(MAX_WAIT, |d| d.0);
    if wait > MAX_WAIT || wait.subsec_nanos() != 0 || wait.is_zero() {
        // 0 s is a short poll: every receive returns at once, and the loop spins on the queue.
        return Err(
            "wait: must be whole seconds, from 1s to 20s (SQS's longest long poll; 0s would poll in a busy loop); e.g. \"20s\"".into(),
        );
    }
    let name_prefix = raw.name_prefix.clone().unwrap_or_else(|| DEFAULT_QUEUE_PREFIX.to_owned());
    let ok = (1..=MAX_QUEUE_PREFIX).contains(&name_prefix.len())
        && name_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(format!(
            "name_prefix: {name_prefix:?} must be 1 to {MAX_QUEUE_PREFIX} letters, digits, '-' or '_'; use the stack's AgentQueuePrefix output, e.g. \"s3dock_agent-\""
        ));
    }
    Ok(QueueConfig { mode, visibility_timeout, max_receive_count, wait, name_prefix })
}

/// Validates each `[[service]]` and what they must not share: an (app, env), a host port, an
/// nginx upstream file.
fn check_services(services: Vec<DeploySpec>) -> Result<Vec<DeploySpec>, String> {
    let name = |i: usize, s: &DeploySpec| format!("service[{i}] ({}/{})", s.app, s.env);
    let mut seen: BTreeMap<(AppName, EnvName), usize> = BTreeMap::new();
    let mut ports: BTreeMap<u16, (usize, String)> = BTreeMap::new();
    let mut files: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (i, spec) in services.iter().enumerate() {
        spec.validate().map_err(|e| format!("{}: {e}", name(i, spec)))?;
        let Some(traffic) = &spec.traffic else {
            return Err(format!(
                "{}: traffic: missing; add [service.traffic] with driver = \"nginx\", \"command\" or \"none\"",
                name(i, spec)
            ));
        };
        if let Some(first) = seen.insert((spec.app.clone(), spec.env.clone()), i) {
            return Err(format!(
                "{}: service[{first}] already serves {}/{}; one agent runs one service per app and environment",
                name(i, spec),
                spec.app,
                spec.env
            ));
        }
        for (field, port) in [("blue", spec.ports.blue), ("green", spec.ports.green)] {
            if let Some((other, other_field)) = ports.get(&port) {
                return Err(format!(
                    "{}: ports.{field} {port} is also ports.{other_field} of {}; give each service its own host ports",
                    name(i, spec),
                    name(*other, &services[*other])
                ));
            }
            ports.insert(port, (i, field.to_owned()));
        }
        if let Ok(DriverConfig::Nginx { upstream_file, .. }) = traffic.driver(&spec.app, &spec.env)
            && let Some(other) = files.insert(upstream_file.clone(), i)
        {
            return Err(format!(
                "{}: traffic.upstream_file {} is also {}'s; each service needs its own upstream file",
                name(i, spec),
                upstream_file.display(),
                name(other, &services[other])
            ));
        }
    }
    Ok(services)
}

/// An agent id from a host name: lowercase, characters outside `[a-z0-9._-]` as `-`, runs of
/// separators as one `-`, no separator at either end, at most 64 characters.
pub fn agent_id_from_host(host: &str) -> Result<AgentId, String> {
    let mut out = String::new();
    let mut pending_sep: Option<char> = None;
    for c in host.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if let Some(s) = pending_sep.take()
                && !out.is_empty()
            {
                out.push(s);
            }
            out.push(c);
        } else {
            // `.`, `_` and `-` are kept alone; anything else, or a run of separators, is `-`.
            let sep = if matches!(c, '.' | '_' | '-') { c } else { '-' };
            pending_sep = Some(if pending_sep.is_some() { '-' } else { sep });
        }
    }
    let mut id: String = out.chars().take(s3dock_core::names::MAX_NAME_LEN).collect();
    while id.ends_with(['.', '_', '-']) {
        id.pop();
    }
    AgentId::parse(&id).map_err(|_| {
        format!(
            "the host name {host:?} gives no usable agent id; set agent_id (lowercase letters, digits, '.', '_', '-')"
        )
    })
}

fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
        .trim_end_matches('.')
        .to_owned()
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
agent_id = "web-1"
host = "web-1.example"
store = "s3://acme-images/s3dock"
region = "eu-west-1"
endpoint = "http://127.0.0.1:4566"
path_style = true
aws_profile = "work"
state_dir = "/var/lib/s3dock"
reconcile_interval = "60s"
heartbeat_interval = "20s"
retry_backoff = "5m"

[queue]
mode = "create"
visibility_timeout = "5m"
max_receive_count = 5
wait = "20s"

[[service]]
app = "web"
env = "production"
container_port = 8080
ports = { blue = 18080, green = 18081 }
[service.health]
path = "/healthz"
[service.traffic]
driver = "nginx"
upstream_file = "/etc/nginx/s3dock/web-production.conf"

[[service]]
app = "worker"
env = "production"
container_port = 9000
ports = { blue = 19000, green = 19001 }
[service.traffic]
driver = "none"
"#;

    fn host() -> HostFacts {
        HostFacts { hostname: Some("ip-10-0-1-5.EC2.internal".into()) }
    }

    fn parse(text: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(text, Path::new("/etc/s3dock/agent.toml"), &host()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.agent_id.as_str(), "web-1");
        assert_eq!(c.host, "web-1.example");
        let StoreLocation::S3(s3) = &c.store else { panic!("{:?}", c.store) };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("acme-images", "s3dock/"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert!(s3.path_style);
        assert_eq!(c.aws.sqs().region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.queue.mode, QueueMode::Create);
        assert_eq!(c.queue.max_receive_count, 5);
        assert_eq!(c.queue.name_prefix, DEFAULT_QUEUE_PREFIX);
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].health.path, "/healthz");
        assert_eq!(c.retry_backoff, Duration::from_secs(300));
    }

    #[test]
    fn defaults_fill_in() {
        let c = parse(
            "store = \"/srv/store\"\n[[service]]\napp = \"web\"\nenv = \"staging\"\ncontainer_port = 80\nports = { blue = 1, green = 2 }\n[service.traffic]\ndriver = \"none\"\n",
        )
        .unwrap();
        assert_eq!(c.agent_id.as_str(), "ip-10-0-1-5.ec2.internal");
        assert_eq!(c.host, "ip-10-0-1-5.EC2.internal");
        assert_eq!(c.store, StoreLocation::Local("/srv/store".into()));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.reconcile_interval, DEFAULT_RECONCILE_INTERVAL);
        assert_eq!(c.heartbeat_interval, DEFAULT_HEARTBEAT_INTERVAL);
        assert_eq!(c.queue.mode, QueueMode::None, "a directory store has no fan-out");
        assert_eq!(c.queue.wait, MAX_WAIT);
        let c = parse("store = \"s3://b-1\"\nstate_dir = \"state\"\n").unwrap();
        assert_eq!(c.queue.mode, QueueMode::Create);
        assert_eq!(c.state_dir, PathBuf::from("/etc/s3dock/state"));
        assert!(c.services.is_empty());
        let c = parse("store = \"relative/store\"\n").unwrap();
        assert_eq!(c.store, StoreLocation::Local("/etc/s3dock/relative/store".into()));
    }

    #[test]
    fn every_error_is_one_line_saying_what_to_fix() {
        let svc = |extra: &str| {
            format!(
                "store = \"s3://b-1\"\n[[service]]\napp = \"web\"\nenv = \"prod\"\ncontainer_port = 80\nports = {{ blue = 8001, green = 8002 }}\n{extra}[service.traffic]\ndriver = \"none\"\n"
            )
        };
        let two = |second: &str| {
            format!(
                "{}[[service]]\napp = \"api\"\nenv = \"prod\"\ncontainer_port = 80\n{second}\n[service.traffic]\ndriver = \"none\"\n",
                svc("")
            )
        };
        for (text, want) in [
            ("stroe = \"x\"\n".to_owned(), "unknown field `stroe`"),
            ("store = \"s3://b-1\"\n[queue]\nmdoe = \"x\"\n".into(), "unknown field `mdoe`"),
            (svc("colour = 1\n"), "unknown field `colour`"),
            ("".into(), "store: missing"),
            ("store = \"ftp://x\"\n".into(), "scheme \"ftp\""),
            ("store = \"s3://B\"\n".into(), "store:"),
            ("store = \"/x\"\nendpoint = \"http://h:1\"\n".into(), "endpoint: only used with an s3:// store"),
            ("agent_id = \"Web 1\"\nstore = \"/x\"\n".into(), "agent_id: invalid agent id"),
            ("store = \"/x\"\nreconcile_interval = 60\n".into(), "has no unit"),
            ("store = \"/x\"\nheartbeat_interval = \"0s\"\n".into(), "heartbeat_interval: must be at least"),
            ("store = \"/x\"\nheartbeat_interval = \"15m\"\n".into(), "fan-out considers an agent gone"),
            ("store = \"s3://b-1\"\n[queue]\nmode = \"push\"\n".into(), "queue.mode: \"push\" is not a queue mode"),
            ("store = \"s3://b-1\"\n[queue]\nmode = \"url\"\n".into(), "queue.url: missing"),
            ("store = \"s3://b-1\"\n[queue]\nurl = \"https://q/1/a\"\n".into(), "queue.url: not used with mode = \"create\""),
            ("store = \"s3://b-1\"\n[queue]\nmax_receive_count = 0\n".into(), "queue.max_receive_count"),
            ("store = \"s3://b-1\"\n[queue]\nname_prefix = \"a.b-\"\n".into(), "queue.name_prefix"),
            ("store = \"s3://b-1\"\n[queue]\nwait = \"30s\"\n".into(), "queue.wait"),
            ("store = \"s3://b-1\"\n[queue]\nwait = \"0s\"\n".into(), "busy loop"),
            ("store = \"s3://b-1\"\n[queue]\nvisibility_timeout = \"0s\"\n".into(), "queue.visibility_timeout"),
            (svc("drain = \"5\"\n"), "has no unit"),
            (
                "store = \"/x\"\n[[service]]\napp = \"web\"\nenv = \"prod\"\ncontainer_port = 80\nports = { blue = 1, green = 2 }\n".into(),
                "service[0] (web/prod): traffic: missing",
            ),
            (svc("ports = { blue = 8001, green = 8001 }\n").replacen("ports = { blue = 8001, green = 8002 }\n", "", 1), "give each its own host port"),
            (two("ports = { blue = 9001, green = 8002 }"), "ports.green 8002 is also ports.green of service[0] (web/prod)"),
            (
                format!("{}[[service]]\napp = \"web\"\nenv = \"prod\"\ncontainer_port = 80\nports = {{ blue = 9001, green = 9002 }}\n[service.traffic]\ndriver = \"none\"\n", svc("")),
                "service[1] (web/prod): service[0] already serves web/prod",
            ),
            (svc("").replace("app = \"web\"", "app = \"Web\""), "invalid app name"),
        ] {
            let e = parse(&text).expect_err(&text);
            assert!(e.contains(want), "{e}\n--- for ---\n{text}");
            assert!(!e.contains('\n'), "one line: {e}");
            assert!(e.starts_with("/etc/s3dock/agent.toml"), "{e}");
        }
        let e = AgentConfig::parse("store = \"/x\"\n", Path::new("a.toml"), &HostFacts::default()).unwrap_err();
        assert!(e.message.contains("agent_id: not set"), "{e}");
    }

    #[test]
    fn two_nginx_services_cannot_share_an_upstream_file() {
        let text = "store = \"/x\"\n[[service]]\napp = \"a\"\nenv = \"p\"\ncontainer_port = 80\nports = { blue = 1, green = 2 }\n[service.traffic]\ndriver = \"nginx\"\nupstream_file = \"/etc/nginx/u.conf\"\n[[service]]\napp = \"b\"\nenv = \"p\"\ncontainer_port = 80\nports = { blue = 3, green = 4 }\n[service.traffic]\ndriver = \"nginx\"\nupstream_file = \"/etc/nginx/u.conf\"\n";
        assert!(parse(text).unwrap_err().contains("each service needs its own upstream file"));
    }

    #[test]
    fn agent_ids_from_host_names() {
        for (host, want) in [
            ("web-1", "web-1"),
            ("Web-1.Example.COM", "web-1.example.com"),
            ("ip-10-0-1-5.ec2.internal", "ip-10-0-1-5.ec2.internal"),
            ("my host_name!", "my-host_name"),
            ("-.lead.-trail.-", "lead-trail"),
            ("a._b", "a-b"),
        ] {
            assert_eq!(agent_id_from_host(host).unwrap().as_str(), want, "{host}");
        }
        let long = "h".repeat(100);
        assert_eq!(agent_id_from_host(&long).unwrap().as_str().len(), 64);
        assert!(agent_id_from_host("...").is_err());
        assert!(agent_id_from_host("ÿÿ").is_err());
    }

    /// Valid but risky: said, not silently accepted.
    #[test]
    fn risky_settings_are_warned_about() {
        let svc = |extra: &str, driver: &str| {
            format!(
                "store = \"/x\"\nreconcile_interval = \"90s\"\n[[service]]\napp = \"web\"\nenv = \"prod\"\ncontainer_port = 80\nports = {{ blue = 1, green = 2 }}\n{extra}[service.traffic]\n{driver}"
            )
        };
        let nginx = "driver = \"nginx\"\nupstream_file = \"/etc/nginx/s3dock/web.conf\"\n";
        assert!(parse(&svc("", nginx)).unwrap().warnings().is_empty());
        let w = parse(&svc("drain = \"0s\"\n", nginx)).unwrap().warnings();
        assert!(w.len() == 1 && w[0].contains("drain = \"0s\" with the nginx driver"), "{w:?}");
        assert!(parse(&svc("drain = \"0s\"\n", "driver = \"none\"\n")).unwrap().warnings().is_empty());
        let w = parse(&svc("[service.health]\ndeadline = \"2m\"\n", nginx)).unwrap().warnings();
        assert!(
            w.len() == 1 && w[0].contains("reconcile_interval (90s) is shorter than health.deadline (120s)"),
            "{w:?}"
        );
        let w = parse(&svc("", "driver = \"command\"\ncommand = [\"/bin/true\"]\n")).unwrap().warnings();
        assert!(w.len() == 1 && w[0].contains("check_command"), "{w:?}");
        let w = parse(&svc("", &format!("{nginx}probe = \"off\"\n"))).unwrap().warnings();
        assert!(w.len() == 1 && w[0].contains("probe = \"off\""), "{w:?}");
        assert!(w.iter().all(|l| l.starts_with("service[0] (web/prod): ") && !l.contains('\n')));
    }

    #[test]
    fn the_host_file_gives_deploy_its_services_and_state_dir() {
        let text = "store = \"s3://b-1\"\nstate_dir = \"state\"\nhost = \"web-1\"\n[[service]]\napp = \"api\"\nenv = \"production\"\ncontainer_port = 80\nports = { blue = 1, green = 2 }\n";
        let f = HostFile::parse(text, Path::new("/etc/s3dock/agent.toml")).unwrap();
        assert_eq!(f.state_dir, PathBuf::from("/etc/s3dock/state"));
        assert_eq!(f.host.as_deref(), Some("web-1"));
        let (api, prod) = (AppName::parse("api").unwrap(), EnvName::parse("production").unwrap());
        assert_eq!(f.service(&api, &prod).unwrap().ports.green, 2);
        assert!(f.service(&AppName::parse("web").unwrap(), &prod).is_none());
        let f = HostFile::parse("store = \"/x\"\n", Path::new("/etc/s3dock/agent.toml")).unwrap();
        assert_eq!(f.state_dir, PathBuf::from(DEFAULT_STATE_DIR), "the agent's default, for the shared lock");
        let e = HostFile::parse("stroe = 1\n", Path::new("a.toml")).unwrap_err().to_string();
        assert!(e.contains("unknown field `stroe`"), "{e}");
    }
}
