//! The `[traffic]` table: the driver's settings as written, and their check against the driver
//! they are for.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use s3dock_core::names::{AppName, EnvName};
use serde::Deserialize;

use super::SpecError;
use super::values::de_opt_duration;

/// The traffic driver's settings as written; [`TrafficConfig::driver`] checks them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficConfig {
    /// `nginx`, `command` or `none`.
    pub driver: String,
    /// nginx: the upstream file s3dock owns and the nginx config includes.
    #[serde(default)]
    pub upstream_file: Option<PathBuf>,
    /// nginx: the upstream's name (default `s3dock_{app}_{env}`, `.` and `-` as `_`).
    #[serde(default)]
    pub upstream_name: Option<String>,
    /// nginx: checks the configuration (default `["nginx", "-t"]`).
    #[serde(default)]
    pub test_command: Option<Vec<String>>,
    /// nginx: reloads gracefully (default `["nginx", "-s", "reload"]`).
    #[serde(default)]
    pub reload_command: Option<Vec<String>>,
    /// command: the program and its arguments, run without a shell.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// command and none: where the driver records the upstream it switched to (default
    /// `{state_dir}/{app}/{env}.upstream.json`).
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// nginx and command: how long one command may run (default 30 s).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    /// nginx: the loopback `IP:PORT` on which the running nginx answers which upstream it
    /// loaded (the proof of every switch), or `off`. Default: `127.0.0.1` and a port from 20000
    /// to 29999 derived from `upstream_file`.
    #[serde(default)]
    pub probe: Option<String>,
    /// command: a program that prints the upstream the load balancer really routes to
    /// (`host:port`, or `none`), run after each switch as its proof.
    #[serde(default)]
    pub check_command: Option<Vec<String>>,
}

/// A validated traffic driver configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverConfig {
    Nginx {
        upstream_file: PathBuf,
        upstream_name: String,
        test_command: Vec<String>,
        reload_command: Vec<String>,
        timeout: Duration,
        /// `None` when the proof is off.
        probe: Option<SocketAddr>,
    },
    Command {
        command: Vec<String>,
        check_command: Option<Vec<String>>,
        state_file: Option<PathBuf>,
        timeout: Duration,
    },
    None {
        state_file: Option<PathBuf>,
    },
}

/// How long a driver's command may run when `traffic.timeout` is not set.
pub const DEFAULT_DRIVER_TIMEOUT: Duration = Duration::from_secs(30);

impl TrafficConfig {
    pub fn nginx(upstream_file: impl Into<PathBuf>) -> Self {
        TrafficConfig { driver: "nginx".into(), upstream_file: Some(upstream_file.into()), ..Default::default() }
    }

    pub fn command(argv: Vec<String>) -> Self {
        TrafficConfig { driver: "command".into(), command: Some(argv), ..Default::default() }
    }

    pub fn none() -> Self {
        TrafficConfig { driver: "none".into(), ..Default::default() }
    }

    /// Checks the settings against the driver they are for.
    pub fn driver(&self, app: &AppName, env: &EnvName) -> Result<DriverConfig, SpecError> {
        let unused = |field: &str, value_set: bool, driver: &str| -> Result<(), SpecError> {
            if value_set {
                Err(SpecError::new(
                    format!("traffic.{field}"),
                    format!("not used by driver = \"{driver}\"; remove it, or pick the driver it belongs to"),
                ))
            } else {
                Ok(())
            }
        };
        let timeout = self.timeout.unwrap_or(DEFAULT_DRIVER_TIMEOUT);
        if timeout.is_zero() {
            return Err(SpecError::new("traffic.timeout", "must be more than 0; e.g. \"30s\""));
        }
        match self.driver.as_str() {
            "nginx" => {
                unused("command", self.command.is_some(), "nginx")?;
                unused("check_command", self.check_command.is_some(), "nginx")?;
                unused("state_file", self.state_file.is_some(), "nginx")?;
                let Some(upstream_file) = self.upstream_file.clone().filter(|p| !p.as_os_str().is_empty()) else {
                    return Err(SpecError::new(
                        "traffic.upstream_file",
                        "missing; the nginx driver needs the path of the upstream file your nginx config includes, e.g. upstream_file = \"/etc/nginx/s3dock/web-production.conf\"",
                    ));
                };
                if upstream_file.file_name().is_none() {
                    return Err(SpecError::new("traffic.upstream_file", "must name a file, not a directory"));
                }
                let upstream_name = match &self.upstream_name {
                    Some(name) => {
                        let ok = !name.is_empty()
                            && name.len() <= 128
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
                        if !ok {
                            return Err(SpecError::new(
                                "traffic.upstream_name",
                                format!(
                                    "{name:?} is not an nginx upstream name; use letters, digits, '_', '.' and '-'"
                                ),
                            ));
                        }
                        name.clone()
                    }
                    None => default_upstream_name(app, env),
                };
                let test_command = command_or("traffic.test_command", &self.test_command, &["nginx", "-t"])?;
                let reload_command =
                    command_or("traffic.reload_command", &self.reload_command, &["nginx", "-s", "reload"])?;
                let probe = match self.probe.as_deref().map(str::trim) {
                    None => Some(default_probe(&upstream_file)),
                    Some("off") => None,
                    Some(text) => match text.parse::<SocketAddr>() {
                        Ok(addr) if addr.ip().is_loopback() && addr.port() != 0 => Some(addr),
                        _ => {
                            return Err(SpecError::new(
                                "traffic.probe",
                                format!(
                                    "{text:?} is not a loopback address with a port; give one nginx may listen on, e.g. \"127.0.0.1:24680\", or \"off\""
                                ),
                            ));
                        }
                    },
                };
                Ok(DriverConfig::Nginx { upstream_file, upstream_name, test_command, reload_command, timeout, probe })
            }
            "command" => {
                for (field, set) in [
                    ("upstream_file", self.upstream_file.is_some()),
                    ("upstream_name", self.upstream_name.is_some()),
                    ("test_command", self.test_command.is_some()),
                    ("reload_command", self.reload_command.is_some()),
                    ("probe", self.probe.is_some()),
                ] {
                    unused(field, set, "command")?;
                }
                let command = match &self.command {
                    Some(argv) if !argv.is_empty() && !argv[0].is_empty() => argv.clone(),
                    _ => {
                        return Err(SpecError::new(
                            "traffic.command",
                            "missing; the command driver needs the program to run, e.g. command = [\"/usr/local/bin/switch-lb\"]",
                        ));
                    }
                };
                let check_command = match &self.check_command {
                    None => None,
                    Some(argv) if !argv.is_empty() && !argv[0].is_empty() => Some(argv.clone()),
                    Some(_) => {
                        return Err(SpecError::new(
                            "traffic.check_command",
                            "is empty; give the program and its arguments, or remove it",
                        ));
                    }
                };
                Ok(DriverConfig::Command { command, check_command, state_file: self.state_file.clone(), timeout })
            }
            "none" => {
                for (field, set) in [
                    ("upstream_file", self.upstream_file.is_some()),
                    ("upstream_name", self.upstream_name.is_some()),
                    ("test_command", self.test_command.is_some()),
                    ("reload_command", self.reload_command.is_some()),
                    ("command", self.command.is_some()),
                    ("check_command", self.check_command.is_some()),
                    ("probe", self.probe.is_some()),
                    ("timeout", self.timeout.is_some()),
                ] {
                    unused(field, set, "none")?;
                }
                Ok(DriverConfig::None { state_file: self.state_file.clone() })
            }
            other => Err(SpecError::new(
                "traffic.driver",
                format!("{other:?} is not a driver s3dock knows; use \"nginx\", \"command\" or \"none\""),
            )),
        }
    }
}

fn command_or(field: &str, given: &Option<Vec<String>>, default: &[&str]) -> Result<Vec<String>, SpecError> {
    match given {
        None => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
        Some(argv) if !argv.is_empty() && !argv[0].is_empty() => Ok(argv.clone()),
        Some(_) => {
            Err(SpecError::new(field, "is empty; give the program and its arguments, or remove it for the default"))
        }
    }
}

/// `s3dock_{app}_{env}` with `.` and `-` turned into `_`.
pub fn default_upstream_name(app: &AppName, env: &EnvName) -> String {
    format!("s3dock_{app}_{env}").replace(['.', '-'], "_")
}

/// The probe address when `traffic.probe` is not set: `127.0.0.1` and a port from 20000 to
/// 29999 derived from the upstream file's path. Below Linux's ephemeral range (32768 and up),
/// so no outgoing connection holds it when nginx starts; different upstream files (different
/// services, or the test suite's many nginx instances) get different ports, and two that
/// collide still answer apart (each probe server has its own `server_name`).
pub fn default_probe(upstream_file: &Path) -> SocketAddr {
    // FNV-1a: stable across builds and platforms, unlike the standard hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for b in upstream_file.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    SocketAddr::from(([127, 0, 0, 1], 20000 + (hash % 10000) as u16))
}
