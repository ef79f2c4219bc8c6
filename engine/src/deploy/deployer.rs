//! The blue-green deployer: one sequence, written down once, for the agent and the CLI.
//!
//! See the module doc of [`crate::deploy`] for the sequence and what each crash point
//! converges to. This file is the deployer's surface (requests, reports, errors, the
//! [`Deployer`] itself); [`run`] holds the sequence up to the switch, [`switch`] what follows
//! it (the proof, verification, switching back, the drain), [`recover`] the settling of an
//! interrupted deploy, [`audit`] the audit record.

mod audit;
mod recover;
mod run;
mod switch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::clock::Clock;
use s3dock_core::docs::DeployOutcome;
use s3dock_core::names::{AppName, EnvName, ImageRef, ObjectKey};
use s3dock_core::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::net::{HostNetwork, LocalNetwork};
use super::spec::{Color, DeploySpec, SpecError};
use super::state::{DeployState, Phase, StateError, StateFiles};
use super::traffic::{TrafficError, TrafficSwitch};
use super::{DEFAULT_LOCK_WAIT, DeployObserver};
use crate::docker::{DockerEngine, EngineError};
use run::Run;

/// Asked right before the switch, whether the deploy is still wanted: an agent re-reads the
/// pointer, so a rollback promoted while a deploy health-checks its image stops that deploy
/// before it takes the traffic (and the rollback goes next, at once).
#[async_trait]
pub trait StillWanted: Send + Sync + std::fmt::Debug {
    /// `Some(why)` when the deploy must not switch: it is superseded.
    async fn superseded(&self) -> Option<String>;
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// Must already be in the engine: pulling is the caller's step.
    pub image: ImageRef,
    /// The pointer generation this deploy converges on, for the audit record.
    pub pointer_seq: Option<u64>,
    /// How long the caller's pull took, reported with the deploy's own phases.
    pub pull_time: Option<Duration>,
    /// Asked before the switch; see [`StillWanted`].
    pub still_wanted: Option<Arc<dyn StillWanted>>,
}

impl DeployRequest {
    pub fn new(image: ImageRef) -> Self {
        DeployRequest { image, pointer_seq: None, pull_time: None, still_wanted: None }
    }
}

/// How a deploy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeployResult {
    /// Traffic is on a new container of the image.
    Succeeded,
    /// The image was already serving and healthy: nothing done, nothing audited.
    Unchanged,
    /// The deploy was abandoned; traffic stays on the previous container.
    Failed,
    /// Traffic reached the new container, failed there, and was switched back.
    RolledBack,
    /// Abandoned before the switch because the caller wants something else now (the pointer
    /// moved); traffic stays on the previous container. Not the image's fault.
    Superseded,
}

impl DeployResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployResult::Succeeded => "succeeded",
            DeployResult::Unchanged => "unchanged",
            DeployResult::Failed => "failed",
            DeployResult::RolledBack => "rolled-back",
            DeployResult::Superseded => "superseded",
        }
    }

    /// `failed` and `rolled-back`: the image (or its verification) failed, and trying the same
    /// image again at once would fail the same way.
    pub fn is_failure(self) -> bool {
        matches!(self, DeployResult::Failed | DeployResult::RolledBack)
    }
}

impl std::fmt::Display for DeployResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What settling an interrupted deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverReport {
    /// The phase the state file was left in.
    pub found: Phase,
    /// The color traffic is on afterwards, if any container serves.
    pub serving: Option<Color>,
    /// What was done, for people.
    pub action: String,
}

/// The outcome of [`Deployer::deploy`].
#[derive(Debug, Clone)]
pub struct DeployReport {
    /// `None` when nothing was deployed ([`DeployResult::Unchanged`]).
    pub deploy_id: Option<String>,
    pub app: AppName,
    pub env: EnvName,
    pub image: ImageRef,
    /// The engine's id of `image`.
    pub image_id: Option<String>,
    pub result: DeployResult,
    /// The color serving afterwards, and its container.
    pub color: Option<Color>,
    pub container_id: Option<String>,
    /// The image that served before the deploy.
    pub previous_image: Option<String>,
    pub message: Option<String>,
    /// Per phase: `pull` (the caller's), `recover`, `start`, `health`, `switch`, `verify`,
    /// `drain`; only the phases that ran.
    pub timings: BTreeMap<String, Duration>,
    /// What an interrupted earlier deploy was settled to before this one started.
    pub recovered: Option<RecoverReport>,
    /// Where the audit record went, or why it could not be written (the deploy's outcome does
    /// not depend on it). `None` without a registry, and for an unchanged deploy.
    pub audit: Option<Result<ObjectKey, String>>,
    pub duration: Duration,
}

impl DeployReport {
    pub fn timings_ms(&self) -> BTreeMap<String, u64> {
        self.timings.iter().map(|(k, v)| (k.clone(), v.as_millis() as u64)).collect()
    }

    /// The summary an agent puts in its registration.
    pub fn outcome(&self, at: chrono::DateTime<chrono::Utc>) -> DeployOutcome {
        DeployOutcome {
            result: self.result.as_str().to_owned(),
            image: self.image.to_string(),
            at,
            message: self.message.clone(),
            duration_ms: Some(self.duration.as_millis() as u64),
        }
    }
}

/// Why a deploy or a recovery could not run at all. Once a deploy has started, its failures
/// are a [`DeployReport`] with [`DeployResult::Failed`] instead, except for the state file
/// becoming unwritable.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("traffic driver: {0}")]
    Traffic(#[from] TrafficError),
    /// A container with one of the service's names exists but is not the service's.
    #[error("{message}")]
    Conflict { message: String },
    #[error("stopped by shutdown: {what}")]
    Cancelled { what: String },
    /// Recovery could not finish; the state file keeps the interrupted phase.
    #[error(
        "{app}/{env}: recovering the interrupted deploy is not finished ({message}); the state file keeps its phase and the next run tries again"
    )]
    Incomplete { app: String, env: String, message: String },
}

impl DeployError {
    /// Whether running the same deploy later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DeployError::Spec(_) | DeployError::Conflict { .. } => false,
            DeployError::State(e) => e.is_retryable(),
            DeployError::Engine(e) => e.is_retryable(),
            DeployError::Traffic(_) | DeployError::Cancelled { .. } | DeployError::Incomplete { .. } => true,
        }
    }
}

#[derive(Debug, Clone)]
struct AuditSink {
    registry: Arc<Registry>,
    recorded_by: String,
    agent_id: Option<String>,
}

/// Runs blue-green deploys of one service (one traffic switch) on one host.
#[derive(Debug)]
pub struct Deployer {
    engine: Arc<dyn DockerEngine>,
    traffic: Arc<dyn TrafficSwitch>,
    clock: Arc<dyn Clock>,
    net: Arc<dyn HostNetwork>,
    state_dir: PathBuf,
    host: String,
    audit: Option<AuditSink>,
    observer: Option<Arc<dyn DeployObserver>>,
    lock_wait: Duration,
}

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
