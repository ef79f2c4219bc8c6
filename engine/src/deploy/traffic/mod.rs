//! Traffic drivers: what sends requests to one color or the other.
//!
//! A driver is a [`TrafficSwitch`]: `current()` says what the driver last wrote (its record),
//! `switch()` moves traffic, and `routed()` says where traffic *actually* goes, asked of the
//! routing itself — the proof the deployer requires after every switch, and the authority it
//! goes by after a crash. A driver may report success and still not have moved traffic (a
//! command that exits 0 before the load balancer applied the change, an nginx whose
//! configuration does not include the upstream file, a reload the master refused): the file
//! written says nothing about what the running nginx serves.
//!
//! The deployer calls `switch()` only for a container that passed its health check, and calls
//! it again (the same upstream) when it recovers from a crash in the middle of a switch, so
//! every driver's `switch()` must be idempotent.
//!
//! - [`NginxSwitch`]: owns one upstream file the user's nginx config includes; writes it
//!   atomically, checks the whole config (`nginx -t`), restores the previous file when the
//!   check fails (nothing reloaded: old traffic kept), and reloads gracefully otherwise. The
//!   file also makes the running nginx answer, on a loopback probe address, which upstream it
//!   loaded: that answer is `routed()`.
//! - [`CommandSwitch`]: runs the user's program with the new address in its environment;
//!   `check_command` (optional) reports what the load balancer really routes to.
//! - [`RecordSwitch`] (`driver = "none"`): only records the upstream, for hosts where
//!   something else routes (polling the record), and for tests.
//!
//! `docs/agent.md` explains how to add a driver (an AWS ALB target group is the next one).

mod command;
mod nginx;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use command::CommandSwitch;
pub use nginx::{NginxConfig, NginxSwitch, PROBE_PATH};

use super::net::authority;
use super::spec::{Color, DeploySpec, DriverConfig, SpecError};
use super::state::{StateFiles, write_atomic};

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
        authority(&self.host, self.port)
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
    /// The routing could not be asked where traffic goes (`routed()`).
    #[error("{detail}")]
    Unknown { detail: String },
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
            TrafficError::Unknown { .. } => false,
        }
    }
}

/// Moves traffic between the colors of one (app, env).
#[async_trait]
pub trait TrafficSwitch: Send + Sync + std::fmt::Debug {
    /// The driver's name in the config (`nginx`, `command`, `none`).
    fn driver(&self) -> &'static str;

    /// What the driver last wrote (its record: the nginx file, the command's last success);
    /// `None` before the first switch. It may be ahead of what routes.
    async fn current(&self) -> Result<Option<Upstream>, TrafficError>;

    /// Sends traffic to `to`. Idempotent: switching to the current upstream again re-applies it.
    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError>;

    /// Where traffic goes, asked of the routing itself (nginx: the running master), not of
    /// the record. `Ok(None)`: nothing routes yet. A driver that cannot ask the routing
    /// ([`TrafficSwitch::proves`] false) answers with its record.
    async fn routed(&self) -> Result<Option<Upstream>, TrafficError>;

    /// Whether [`TrafficSwitch::routed`] asks the routing itself (true), or can only repeat the
    /// record (false: a switch that reports success is then taken at its word).
    fn proves(&self) -> bool;
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
        DriverConfig::Nginx { upstream_file, upstream_name, test_command, reload_command, timeout, probe } => {
            Arc::new(NginxSwitch::new(NginxConfig {
                app: spec.app.clone(),
                env: spec.env.clone(),
                ports: spec.ports,
                upstream_file,
                upstream_name,
                test_command,
                reload_command,
                timeout,
                probe,
            }))
        }
        DriverConfig::Command { command, check_command, state_file, timeout } => Arc::new(CommandSwitch::new(
            spec.app.clone(),
            spec.env.clone(),
            spec.ports,
            command,
            check_command,
            timeout,
            state_file.unwrap_or_else(default_record),
        )),
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

/// `driver = "none"`: records the upstream and moves nothing. Whatever routes reads the
/// record, so the record is what routes: `routed()` is the record.
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

    async fn routed(&self) -> Result<Option<Upstream>, TrafficError> {
        read_record(&self.record)
    }

    fn proves(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(color: Color, port: u16) -> Upstream {
        Upstream { host: "127.0.0.1".into(), port, color }
    }

    #[tokio::test]
    async fn the_none_driver_records_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = RecordSwitch::new(dir.path().join("a").join("rec.json"));
        assert_eq!(r.current().await.unwrap(), None);
        r.switch(&up(Color::Green, 2)).await.unwrap();
        assert_eq!(r.current().await.unwrap(), Some(up(Color::Green, 2)));
        assert_eq!(r.routed().await.unwrap(), Some(up(Color::Green, 2)));
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
        let nginx = traffic_switch(&spec, dir.path()).unwrap();
        assert_eq!(nginx.driver(), "nginx");
        assert!(nginx.proves(), "nginx proves through its probe by default");
        spec.traffic = Some(super::super::spec::TrafficConfig::command(vec!["/bin/true".into()]));
        let command = traffic_switch(&spec, dir.path()).unwrap();
        assert_eq!(command.driver(), "command");
        assert!(!command.proves(), "without check_command the command driver can only be taken at its word");
    }
}
