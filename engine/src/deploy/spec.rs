//! The service spec: what one (app, env) runs on this host and how it is switched.
//!
//! [`DeploySpec`] is deserialized from TOML (the agent's config, the CLI's deploy file) or
//! built in code ([`DeploySpec::new`] fills every default). Deserialization only checks types;
//! [`DeploySpec::validate`] checks the values and answers with one line saying what to fix.
//! Environment variable values are [`Secret`]s: their `Debug` prints `***`, and the values of
//! the env file are read at deploy time, never kept in the spec.

mod traffic;
mod values;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;
use strum::{Display, EnumIter, EnumString, IntoStaticStr};

use s3dock_core::names::{AppName, EnvName};
use serde::{Deserialize, Serialize};

pub use traffic::{DEFAULT_DRIVER_TIMEOUT, DriverConfig, TrafficConfig, default_probe, default_upstream_name};
pub use values::{
    HttpTarget, Secret, SpecError, parse_duration, parse_memory, parse_restart, read_env_file, show_duration,
};
use values::{check_volume, de_duration, de_opt_memory, de_restart, is_env_key};

use crate::docker::RestartPolicy;

/// One of the two slots a service alternates between.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    IntoStaticStr,
    Display,
    EnumString,
    EnumIter,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub const ALL: [Color; 2] = [Color::Blue, Color::Green];

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The host ports of the two colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColorPorts {
    pub blue: u16,
    pub green: u16,
}

impl ColorPorts {
    pub fn port(&self, color: Color) -> u16 {
        match color {
            Color::Blue => self.blue,
            Color::Green => self.green,
        }
    }

    /// The color whose port this is.
    pub fn color_of(&self, port: u16) -> Option<Color> {
        Color::ALL.into_iter().find(|c| self.port(*c) == port)
    }
}

/// When a new container counts as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSpec {
    /// The path asked with `GET`, starting with `/`.
    pub path: String,
    /// The pause between two tries.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// How long one try may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive 2xx answers needed.
    pub successes: u32,
    /// How long the whole check may take before the deploy is abandoned.
    #[serde(deserialize_with = "de_duration")]
    pub deadline: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: "/".into(),
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(2),
            successes: 3,
            deadline: Duration::from_secs(60),
        }
    }
}

/// What one (app, env) runs on this host. See the module doc and `docs/agent.md`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    pub app: AppName,
    pub env: EnvName,
    /// The port the app listens on inside the container.
    pub container_port: u16,
    /// The host ports of the two colors.
    pub ports: ColorPorts,
    /// The host address both colors' ports are published on.
    #[serde(default = "default_bind")]
    pub bind: IpAddr,
    /// Environment variables given to the container; they win over `env_file`.
    #[serde(default)]
    pub env_vars: BTreeMap<String, Secret>,
    /// A file of `KEY=VALUE` lines read at every deploy (Docker's `--env-file` format: `#`
    /// comments and blank lines skipped, the value taken literally).
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    /// Binds and volumes, `source:/container/path[:options]`. Both colors mount them while they
    /// overlap during a switch.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// The Docker network (`bridge` or a network name); `None` is the engine's default.
    #[serde(default)]
    pub network: Option<String>,
    /// The memory limit in bytes (TOML: `"512m"`, `"1g"` or a byte count).
    #[serde(default, deserialize_with = "de_opt_memory")]
    pub memory: Option<u64>,
    /// The CPU limit in CPUs (`1.5`).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// `no`, `always`, `unless-stopped` (the default: a rebooted host brings the serving
    /// container back) or `on-failure[:N]`.
    #[serde(default = "default_restart", deserialize_with = "de_restart")]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub health: HealthSpec,
    /// How long the previous container keeps running after the switch, so requests it already
    /// accepted finish.
    #[serde(default = "default_drain", deserialize_with = "de_duration")]
    pub drain: Duration,
    /// How long a stopped container gets between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_timeout", deserialize_with = "de_duration")]
    pub stop_timeout: Duration,
    /// Local images of the app kept for instant rollback, the serving one included.
    #[serde(default = "default_keep_images")]
    pub keep_images: usize,
    /// Asked after the switch, through the traffic path (e.g. nginx's listen address):
    /// `health.successes` consecutive 2xx within `verify_deadline`, or the switch is undone.
    #[serde(default)]
    pub verify_url: Option<String>,
    /// The `Host` header of the verification requests (a virtual host behind nginx); the
    /// address of `verify_url` when unset.
    #[serde(default)]
    pub verify_host: Option<String>,
    /// How long the proof that the switch took effect may take, and then the verification.
    #[serde(default = "default_verify_deadline", deserialize_with = "de_duration")]
    pub verify_deadline: Duration,
    /// The traffic driver; required by [`crate::deploy::traffic_switch`].
    #[serde(default)]
    pub traffic: Option<TrafficConfig>,
    /// Tells apart two copies of the same app and environment on one Docker engine (two agents
    /// on one host, a test): container names become `s3dock-{app}-{env}-{instance}-{color}`,
    /// the state files `{app}/{env}@{instance}.*`, and the containers are labelled
    /// `io.s3dock.instance`. Unset for the usual single copy per host.
    #[serde(default)]
    pub instance: Option<String>,
}

fn default_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_restart() -> RestartPolicy {
    RestartPolicy::UnlessStopped
}
fn default_drain() -> Duration {
    Duration::from_secs(5)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_keep_images() -> usize {
    3
}
fn default_verify_deadline() -> Duration {
    Duration::from_secs(10)
}

impl DeploySpec {
    /// A spec with every default: bound on 127.0.0.1, no variables, no limits,
    /// `unless-stopped`, the default health check, 5 s of drain, 3 images kept, no driver.
    pub fn new(app: AppName, env: EnvName, container_port: u16, ports: ColorPorts) -> Self {
        DeploySpec {
            app,
            env,
            container_port,
            ports,
            bind: default_bind(),
            env_vars: BTreeMap::new(),
            env_file: None,
            volumes: Vec::new(),
            network: None,
            memory: None,
            cpus: None,
            restart: default_restart(),
            health: HealthSpec::default(),
            drain: default_drain(),
            stop_timeout: default_stop_timeout(),
            keep_images: default_keep_images(),
            verify_url: None,
            verify_host: None,
            verify_deadline: default_verify_deadline(),
            traffic: None,
            instance: None,
        }
    }

    /// The container name of `color`: `s3dock-{app}-{env}-{color}`, with `-{instance}` before
    /// the color when the spec has one.
    pub fn container_name(&self, color: Color) -> String {
        match &self.instance {
            None => super::container_name(&self.app, &self.env, color),
            Some(i) => format!("s3dock-{}-{}-{i}-{color}", self.app, self.env),
        }
    }

    /// Parses and validates a spec written in TOML.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: DeploySpec = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let message = e.message().trim().replace('\n', " ");
            SpecError::new(line.map_or_else(|| "spec".to_owned(), |l| format!("line {l}")), message)
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every value; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field: &str, message: String| Err(SpecError::new(field, message));
        if self.container_port == 0 {
            return err("container_port", "is 0; give the port the app listens on inside the container".into());
        }
        for color in Color::ALL {
            if self.ports.port(color) == 0 {
                return err(
                    &format!("ports.{color}"),
                    "is 0; give each color a fixed host port, e.g. ports = { blue = 18080, green = 18081 }".into(),
                );
            }
        }
        if self.ports.blue == self.ports.green {
            return err(
                "ports",
                format!(
                    "blue and green are both {}; the two colors run side by side during a switch, give each its own host port",
                    self.ports.blue
                ),
            );
        }
        for key in self.env_vars.keys() {
            if !is_env_key(key) {
                return err(
                    "env_vars",
                    format!("{key:?} is not a variable name; use letters, digits and '_', not starting with a digit"),
                );
            }
        }
        for (key, value) in &self.env_vars {
            if value.expose().contains('\0') {
                return err("env_vars", format!("the value of {key} contains a NUL byte, which Docker refuses"));
            }
        }
        if let Some(path) = &self.env_file
            && path.as_os_str().is_empty()
        {
            return err("env_file", "is empty; give the path of a KEY=VALUE file or remove it".into());
        }
        for volume in &self.volumes {
            check_volume(volume)?;
        }
        if let Some(network) = &self.network {
            if network.trim().is_empty() {
                return err("network", "is empty; give a network name, or remove it for the engine's default".into());
            }
            if network == "host" || network == "none" || network.starts_with("container:") {
                return err(
                    "network",
                    format!(
                        "{network:?} publishes no ports, so two colors cannot run side by side; use \"bridge\" or a user-defined network"
                    ),
                );
            }
        }
        if let Some(memory) = self.memory
            && memory < 6 * 1024 * 1024
        {
            return err("memory", format!("{memory} bytes is below Docker's minimum of 6 MiB; e.g. memory = \"256m\""));
        }
        if let Some(cpus) = self.cpus
            && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
        {
            return err("cpus", format!("{cpus} is not a CPU count; give a positive number such as 0.5 or 2"));
        }
        let h = &self.health;
        if !h.path.starts_with('/') || h.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err(
                "health.path",
                format!(
                    "{:?} is not a request path; start it with '/' and leave out spaces, e.g. \"/healthz\"",
                    h.path
                ),
            );
        }
        if h.interval.is_zero() {
            return err("health.interval", "must be more than 0; e.g. \"500ms\"".into());
        }
        if h.timeout.is_zero() {
            return err("health.timeout", "must be more than 0; e.g. \"2s\"".into());
        }
        if h.successes == 0 {
            return err("health.successes", "must be at least 1".into());
        }
        if h.deadline < h.timeout {
            return err(
                "health.deadline",
                format!(
                    "{} is shorter than one try (health.timeout = {}); raise it",
                    show_duration(h.deadline),
                    show_duration(h.timeout)
                ),
            );
        }
        if self.keep_images == 0 {
            return err("keep_images", "must be at least 1 (the serving image is always kept)".into());
        }
        if let Some(url) = &self.verify_url {
            HttpTarget::parse_url(url).map_err(|m| SpecError::new("verify_url", m))?;
        }
        if self.verify_deadline.is_zero() {
            return err(
                "verify_deadline",
                "must be more than 0: the proof of a switch is waited for that long; e.g. \"10s\"".into(),
            );
        }
        if let Some(host) = &self.verify_host {
            let ok = !host.is_empty()
                && host.len() <= 255
                && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
            if !ok {
                return err(
                    "verify_host",
                    format!("{host:?} is not a Host header; give a host name such as \"www.example.com\""),
                );
            }
            if self.verify_url.is_none() {
                return err("verify_host", "is only used with verify_url; set verify_url or remove it".into());
            }
        }
        if let Some(traffic) = &self.traffic {
            traffic.driver(&self.app, &self.env)?;
        }
        if let Some(i) = &self.instance {
            let ok = !i.is_empty()
                && i.len() <= 32
                && i.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !i.starts_with('-')
                && !i.ends_with('-');
            if !ok {
                return err(
                    "instance",
                    format!(
                        "{i:?} is not an instance name; use 1 to 32 lowercase letters, digits and inner '-', e.g. \"b\""
                    ),
                );
            }
        }
        Ok(())
    }

    /// Settings that are valid but risky, each one line saying what to change. Printed by the
    /// agent at start, by `s3dock-agent --check` and by `s3dock deploy`.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let nginx = self.traffic.as_ref().is_some_and(|t| t.driver == "nginx");
        if nginx && self.drain.is_zero() {
            out.push(
                "drain = \"0s\" with the nginx driver: `nginx -s reload` returns before the old workers stop routing to the old container, so it is removed under requests in flight; give it a few seconds, e.g. drain = \"5s\"".to_owned(),
            );
        }
        if let Some(traffic) = &self.traffic
            && let Ok(driver) = traffic.driver(&self.app, &self.env)
        {
            match driver {
                DriverConfig::Nginx { probe: None, .. } => out.push(
                    "traffic.probe = \"off\": s3dock cannot ask the running nginx whether a reload took effect, and takes the file it wrote for what routes; remove it to use the default probe address".to_owned(),
                ),
                DriverConfig::Command { check_command: None, .. } => out.push(
                    "traffic.check_command is not set: s3dock takes the command's exit status for proof that traffic moved; give a command that prints the upstream the load balancer really routes to".to_owned(),
                ),
                _ => {}
            }
        }
        out
    }

    /// The address health checks and upstreams use: `bind`, or the loopback address of its
    /// family when `bind` is unspecified (`0.0.0.0`, `::`).
    pub fn upstream_host(&self) -> IpAddr {
        match self.bind {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            other => other,
        }
    }

    /// The container's environment: the env file's variables, then `env_vars` (which win).
    /// Errors never quote a value.
    pub fn container_env(&self) -> Result<Vec<(String, Secret)>, SpecError> {
        let mut vars: BTreeMap<String, Secret> = BTreeMap::new();
        if let Some(path) = &self.env_file {
            for (k, v) in read_env_file(path)? {
                vars.insert(k, v);
            }
        }
        for (k, v) in &self.env_vars {
            vars.insert(k.clone(), v.clone());
        }
        Ok(vars.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The color words of specs, state files and labels (serde) and `as_str`/`Display`/
    /// `FromStr` (strum) agree; `ALL` lists every color.
    #[test]
    fn serde_and_strum_color_words_agree() {
        use strum::IntoEnumIterator;
        assert_eq!(Color::ALL.to_vec(), Color::iter().collect::<Vec<_>>());
        for c in Color::iter() {
            assert_eq!(serde_json::to_value(c).unwrap(), serde_json::Value::String(c.as_str().to_owned()), "{c:?}");
            assert_eq!(c.to_string(), c.as_str());
            assert_eq!(c.as_str().parse::<Color>(), Ok(c));
        }
        assert!("Blue".parse::<Color>().is_err());
    }

    const FULL: &str = r#"
app = "web"
env = "production"
container_port = 8080
ports = { blue = 18080, green = 18081 }
bind = "127.0.0.1"
env_vars = { RUST_LOG = "info", DATABASE_PASSWORD = "hunter2" }
env_file = "/etc/s3dock/web.env"
volumes = ["/srv/web/uploads:/app/uploads", "web-cache:/cache:ro"]
network = "bridge"
memory = "512m"
cpus = 1.5
restart = "on-failure:5"
drain = "5s"
stop_timeout = "10s"
keep_images = 3
verify_url = "http://127.0.0.1:80/healthz"

[health]
path = "/healthz"
interval = "500ms"
timeout = "2s"
successes = 3
deadline = "60s"

[traffic]
driver = "nginx"
upstream_file = "/etc/nginx/s3dock/web-production.conf"
test_command = ["nginx", "-t"]
reload_command = ["systemctl", "reload", "nginx"]
timeout = "30s"
"#;

    #[test]
    fn a_full_spec_parses() {
        let spec = DeploySpec::from_toml(FULL).unwrap();
        assert_eq!(spec.app.as_str(), "web");
        assert_eq!(spec.ports.port(Color::Green), 18081);
        assert_eq!(spec.memory, Some(512 << 20));
        assert_eq!(spec.restart, RestartPolicy::OnFailure { max_retries: 5 });
        assert_eq!(spec.health.interval, Duration::from_millis(500));
        assert_eq!(spec.volumes.len(), 2);
        let driver = spec.traffic.as_ref().unwrap().driver(&spec.app, &spec.env).unwrap();
        match driver {
            DriverConfig::Nginx { upstream_name, reload_command, test_command, .. } => {
                assert_eq!(upstream_name, "s3dock_web_production");
                assert_eq!(reload_command, ["systemctl", "reload", "nginx"]);
                assert_eq!(test_command, ["nginx", "-t"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_filled() {
        let spec = DeploySpec::from_toml(
            "app = \"web\"\nenv = \"staging\"\ncontainer_port = 80\nports = { blue = 1, green = 2 }\n",
        )
        .unwrap();
        assert_eq!(spec.bind, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(spec.health, HealthSpec::default());
        assert_eq!(spec.drain, Duration::from_secs(5));
        assert_eq!(spec.keep_images, 3);
        assert_eq!(spec.restart, RestartPolicy::UnlessStopped);
        assert!(spec.traffic.is_none());
        let built = DeploySpec::new(spec.app.clone(), spec.env.clone(), 80, ColorPorts { blue: 1, green: 2 });
        assert_eq!(built, spec);
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let spec = DeploySpec::from_toml(FULL).unwrap();
        let shown = format!("{spec:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("DATABASE_PASSWORD"), "{shown}");
        assert_eq!(spec.env_vars["DATABASE_PASSWORD"].expose(), "hunter2");
    }

    fn error_of(toml_text: &str) -> String {
        DeploySpec::from_toml(toml_text).unwrap_err().to_string()
    }

    fn with(extra: &str) -> String {
        format!("app = \"web\"\nenv = \"production\"\ncontainer_port = 8080\n{extra}")
    }

    #[test]
    fn validation_says_what_to_fix() {
        let ports = "ports = { blue = 18080, green = 18081 }\n";
        for (text, want) in [
            (with("ports = { blue = 18080, green = 18080 }\n"), "give each its own host port"),
            (with("ports = { blue = 0, green = 18080 }\n"), "ports.blue: is 0"),
            (with(&format!("{ports}[traffic]\ndriver = \"haproxy\"\n")), "\"haproxy\" is not a driver s3dock knows"),
            (with(&format!("{ports}[traffic]\ndriver = \"nginx\"\n")), "traffic.upstream_file: missing"),
            (with(&format!("{ports}[traffic]\ndriver = \"command\"\n")), "traffic.command: missing"),
            (
                with(&format!("{ports}[traffic]\ndriver = \"none\"\ncommand = [\"x\"]\n")),
                "traffic.command: not used by driver = \"none\"",
            ),
            (with(&format!("{ports}drain = 5\n")), "has no unit"),
            (with(&format!("{ports}drain = \"5 parsecs\"\n")), "unknown unit"),
            (with(&format!("{ports}network = \"host\"\n")), "publishes no ports"),
            (with(&format!("{ports}memory = \"1m\"\n")), "minimum of 6 MiB"),
            (with(&format!("{ports}memory = \"lots\"\n")), "not a memory size"),
            (with(&format!("{ports}cpus = 0.0\n")), "cpus: 0 is not a CPU count"),
            (with(&format!("{ports}restart = \"sometimes\"\n")), "not a restart policy"),
            (with(&format!("{ports}volumes = [\"data\"]\n")), "SOURCE:/container/path"),
            (with(&format!("{ports}env_vars = {{ \"1X\" = \"v\" }}\n")), "not a variable name"),
            (with(&format!("{ports}keep_images = 0\n")), "keep_images: must be at least 1"),
            (with(&format!("{ports}instance = \"B_2\"\n")), "instance: \"B_2\" is not an instance name"),
            (with(&format!("{ports}verify_url = \"https://x/\"\n")), "not an http:// URL"),
            (with(&format!("{ports}[health]\npath = \"healthz\"\n")), "start it with '/'"),
            (with(&format!("{ports}[health]\nsuccesses = 0\n")), "health.successes"),
            (with(&format!("{ports}[health]\ndeadline = \"1s\"\ntimeout = \"2s\"\n")), "shorter than one try"),
            (with(&format!("{ports}colour = \"blue\"\n")), "unknown field `colour`"),
            (with("ports = { blue = 1 }\n"), "missing field `green`"),
            ("app = \"Web\"\n".to_owned(), "invalid app name"),
        ] {
            let e = error_of(&text);
            assert!(e.contains(want), "{e}\n--- for ---\n{text}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn env_files_are_read_without_echoing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.env");
        std::fs::write(&path, "# comment\n\nA=1\nexport_me=x=y\nB=\"quoted\"\n").unwrap();
        let mut spec = DeploySpec::from_toml(&with("ports = { blue = 1, green = 2 }\n")).unwrap();
        spec.env_file = Some(path.clone());
        spec.env_vars.insert("A".into(), Secret::new("override"));
        let env: BTreeMap<String, String> =
            spec.container_env().unwrap().into_iter().map(|(k, v)| (k, v.expose().to_owned())).collect();
        assert_eq!(env["A"], "override");
        assert_eq!(env["export_me"], "x=y");
        assert_eq!(env["B"], "\"quoted\"");

        std::fs::write(&path, "GOOD=1\nsecret-value-without-key\n").unwrap();
        let e = spec.container_env().unwrap_err().to_string();
        assert!(e.contains("line 2 is not KEY=VALUE"), "{e}");
        assert!(!e.contains("secret-value"), "{e}");
        std::fs::write(&path, "BAD KEY=topsecret\n").unwrap();
        let e = spec.container_env().unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("topsecret"), "{e}");
        spec.env_file = Some(dir.path().join("missing.env"));
        assert!(spec.container_env().unwrap_err().to_string().contains("cannot read it"));
    }

    #[test]
    fn durations_sizes_and_urls() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(show_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(show_duration(Duration::from_secs(60)), "60s");
        assert_eq!(parse_memory("256m").unwrap(), 256 << 20);
        assert_eq!(parse_memory("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert!(parse_memory("99999999999999g").is_err());
        let t = HttpTarget::parse_url("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 8080, "/a?b=1"));
        let t = HttpTarget::parse_url("http://[::1]:81").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 81, "/"));
        assert_eq!(HttpTarget::parse_url("http://localhost/").unwrap().port, 80);
        assert!(HttpTarget::parse_url("http://:80/").is_err());
        assert!(HttpTarget::parse_url("http://h:0/").is_err());
        assert!(HttpTarget::parse_url("http://u@h:1/").is_err());
    }

    #[test]
    fn upstream_host_is_never_unspecified() {
        let mut spec = DeploySpec::from_toml(&with("ports = { blue = 1, green = 2 }\n")).unwrap();
        spec.bind = "0.0.0.0".parse().unwrap();
        assert_eq!(spec.upstream_host().to_string(), "127.0.0.1");
        spec.bind = "::".parse().unwrap();
        assert_eq!(spec.upstream_host().to_string(), "::1");
        spec.bind = "10.1.2.3".parse().unwrap();
        assert_eq!(spec.upstream_host().to_string(), "10.1.2.3");
        let app = AppName::parse("my-app.web").unwrap();
        assert_eq!(default_upstream_name(&app, &EnvName::parse("prod").unwrap()), "s3dock_my_app_web_prod");
    }
}
