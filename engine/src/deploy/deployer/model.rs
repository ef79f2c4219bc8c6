//! The deployer's surface: requests, reports, results, errors and the [`Deployer`] itself,
//! which [`super::run`], [`super::switch`], [`super::recover`] and [`super::audit`] share.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::clock::Clock;
use s3dock_core::docs::DeployOutcome;
use s3dock_core::names::{AppName, EnvName, ImageRef, ObjectKey};
use s3dock_core::registry::Registry;

use crate::deploy::DeployObserver;
use crate::deploy::net::HostNetwork;
use crate::deploy::spec::{Color, SpecError};
use crate::deploy::state::{Phase, StateError};
use crate::deploy::traffic::{TrafficError, TrafficSwitch};
use crate::docker::{DockerEngine, EngineError};

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
pub(super) struct AuditSink {
    pub(super) registry: Arc<Registry>,
    pub(super) recorded_by: String,
    pub(super) agent_id: Option<String>,
}

/// Runs blue-green deploys of one service (one traffic switch) on one host.
#[derive(Debug)]
pub struct Deployer {
    pub(super) engine: Arc<dyn DockerEngine>,
    pub(super) traffic: Arc<dyn TrafficSwitch>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) net: Arc<dyn HostNetwork>,
    pub(super) state_dir: PathBuf,
    pub(super) host: String,
    pub(super) audit: Option<AuditSink>,
    pub(super) observer: Option<Arc<dyn DeployObserver>>,
    pub(super) lock_wait: Duration,
}
