//! The blue-green deployer: one sequence, written down once, for the agent and the CLI.
//!
//! See the module doc of [`crate::deploy`] for the sequence and what each crash point
//! converges to. This file is the deployer's surface (requests, reports, errors, the
//! [`Deployer`] itself); [`run`] holds the sequence up to the switch, [`switch`] what follows
//! it (the proof, verification, switching back, the drain), [`recover`] the settling of an
//! interrupted deploy, [`audit`] the audit record.

mod audit;
mod model;
mod recover;
mod run;
mod switch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use s3dock_core::clock::Clock;
use s3dock_core::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::net::{HostNetwork, LocalNetwork};
use super::spec::{DeploySpec, SpecError};
use super::state::{DeployState, Phase, StateFiles};
use super::traffic::TrafficSwitch;
use super::{DEFAULT_LOCK_WAIT, DeployObserver};
use crate::docker::DockerEngine;
use model::AuditSink;
pub use model::{DeployError, DeployReport, DeployRequest, DeployResult, Deployer, RecoverReport, StillWanted};
use run::Run;

impl Deployer {
    /// `state_dir` holds the state files (see [`crate::deploy::state`]); `host` names this
    /// machine in audit records.
    pub fn new(
        engine: Arc<dyn DockerEngine>,
        traffic: Arc<dyn TrafficSwitch>,
        clock: Arc<dyn Clock>,
        state_dir: impl Into<PathBuf>,
        host: impl Into<String>,
    ) -> Self {
        Deployer {
            engine,
            traffic,
            clock,
            net: Arc::new(LocalNetwork),
            state_dir: state_dir.into(),
            host: host.into(),
            audit: None,
            observer: None,
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }

    /// Writes an audit record per deploy through `registry` (its actor is the record's user);
    /// `recorded_by` is `agent` or `cli`.
    pub fn with_audit(mut self, registry: Arc<Registry>, recorded_by: impl Into<String>) -> Self {
        self.audit = Some(AuditSink { registry, recorded_by: recorded_by.into(), agent_id: None });
        self
    }

    /// The agent id put in audit records (with [`Deployer::with_audit`]).
    pub fn with_agent_id(mut self, agent_id: impl Into<String>) -> Self {
        if let Some(sink) = &mut self.audit {
            sink.agent_id = Some(agent_id.into());
        }
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn DeployObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// The network health checks, `verify_url` and the port check go through (the real one by
    /// default; the in-memory host of [`crate::fake`] in tests).
    pub fn with_network(mut self, net: Arc<dyn HostNetwork>) -> Self {
        self.net = net;
        self
    }

    /// The service's state file as last written, if any.
    pub fn state(&self, spec: &DeploySpec) -> Result<Option<DeployState>, DeployError> {
        Ok(StateFiles::for_spec(&self.state_dir, spec).load()?)
    }

    /// Makes `req.image` the image serving `spec`'s traffic, blue-green: see the module doc of
    /// [`crate::deploy`]. A deploy interrupted earlier (a crash, a kill) is settled first, so
    /// this is also what a restarted agent calls. After `cancel` fires, no new phase starts
    /// except those that finish or undo the deploy in flight.
    pub async fn deploy(
        &self,
        spec: &DeploySpec,
        req: &DeployRequest,
        cancel: &CancellationToken,
    ) -> Result<DeployReport, DeployError> {
        spec.validate()?;
        if req.image.app != spec.app {
            return Err(SpecError::new(
                "image",
                format!(
                    "{} is an image of {}, not of {}; deploy an image of {}",
                    req.image, req.image.app, spec.app, spec.app
                ),
            )
            .into());
        }
        if cancel.is_cancelled() {
            return Err(DeployError::Cancelled { what: "the deploy was not started".into() });
        }
        let mut run = self.begin(spec, cancel).await?;
        run.deploy(req).await
    }

    /// [`Deployer::deploy`] under the name an agent's reconcile loop uses: settle whatever a
    /// previous run left half done, then converge on `req.image` (a no-op when it serves and
    /// is healthy).
    pub async fn converge(
        &self,
        spec: &DeploySpec,
        req: &DeployRequest,
        cancel: &CancellationToken,
    ) -> Result<DeployReport, DeployError> {
        self.deploy(spec, req, cancel).await
    }

    /// Settles an interrupted deploy without starting a new one: afterwards the state file is
    /// idle and traffic is on a container that passed its health check and its verification —
    /// or, when none passes now, on the container it was routed to, which keeps it (nothing is
    /// removed).
    pub async fn recover(&self, spec: &DeploySpec, cancel: &CancellationToken) -> Result<RecoverReport, DeployError> {
        spec.validate()?;
        let mut run = self.begin(spec, cancel).await?;
        if run.state.phase == Phase::Idle {
            let serving = run.state.old.as_ref().map(|s| s.color);
            return Ok(RecoverReport { found: Phase::Idle, serving, action: "nothing to recover".into() });
        }
        run.settle().await
    }

    async fn begin<'a>(&'a self, spec: &'a DeploySpec, cancel: &'a CancellationToken) -> Result<Run<'a>, DeployError> {
        let files = StateFiles::for_spec(&self.state_dir, spec);
        let lock = files.lock_service(self.lock_wait).await?;
        let state = files.load()?.unwrap_or_else(|| DeployState::empty(&spec.app, &spec.env, self.clock.now()));
        // Known from the start, so that recovery redacts container logs too. An unreadable env
        // file fails the deploy later, with its own message.
        let secrets = match spec.container_env() {
            Ok(env) => env.into_iter().map(|(_, v)| v.expose().to_owned()).collect(),
            Err(_) => spec.env_vars.values().map(|v| v.expose().to_owned()).collect(),
        };
        Ok(Run { d: self, spec, files, state, cancel, secrets, _lock: lock })
    }
}

#[cfg(test)]
mod tests {
    use s3dock_core::names::{AppName, EnvName};

    use crate::deploy::spec::Color;

    use super::*;
    use crate::deploy::container_name;

    #[test]
    fn names_and_results() {
        let app = AppName::parse("web.api").unwrap();
        let env = EnvName::parse("production").unwrap();
        assert_eq!(container_name(&app, &env, Color::Green), "s3dock-web.api-production-green");
        let mut spec = DeploySpec::new(app, env, 80, super::super::spec::ColorPorts { blue: 1, green: 2 });
        assert_eq!(spec.container_name(Color::Blue), "s3dock-web.api-production-blue");
        spec.instance = Some("b".into());
        assert_eq!(spec.container_name(Color::Blue), "s3dock-web.api-production-b-blue");
        let files = StateFiles::for_spec(std::path::Path::new("/s"), &spec);
        assert_eq!(files.state(), std::path::PathBuf::from("/s/web.api/production@b.json"));
        assert_eq!(files.upstream(), std::path::PathBuf::from("/s/web.api/production@b.upstream.json"));
        assert_eq!(DeployResult::RolledBack.to_string(), "rolled-back");
        assert!(DeployResult::RolledBack.is_failure() && !DeployResult::Superseded.is_failure());
    }
}
