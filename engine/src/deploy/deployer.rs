//! The blue-green deployer: one sequence, written down once, for the agent and the CLI.
//!
//! See the module doc of [`crate::deploy`] for the sequence and what each crash point
//! converges to; the comments here explain each step where it happens.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use s3dock_core::clock::Clock;
use s3dock_core::docs::{AuditRecord, DeployDetails, DeployOutcome, EventType, SCHEMA_VERSION};
use s3dock_core::layout;
use s3dock_core::names::{AppName, EnvName, ImageRef, ObjectKey};
use s3dock_core::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::health::{HealthCheck, HealthFailure, probe};
use super::spec::{Color, DeploySpec, HttpTarget, SpecError, show_duration};
use super::state::{DeployState, Phase, Slot, StateError, StateFiles};
use super::traffic::{TrafficError, TrafficSwitch, Upstream};
use crate::docker::{ContainerInfo, ContainerSpec, DockerEngine, EngineError, PortPublish, Protocol};
use crate::ship;

/// The label naming the app a deployer's container belongs to.
pub const LABEL_APP: &str = "io.s3dock.app";
pub const LABEL_ENV: &str = "io.s3dock.env";
pub const LABEL_COLOR: &str = "io.s3dock.color";
/// The `app:tag` the container runs.
pub const LABEL_IMAGE: &str = "io.s3dock.image";
pub const LABEL_DEPLOY_ID: &str = "io.s3dock.deploy-id";
/// The spec's `instance`, on containers of a spec that has one.
pub const LABEL_INSTANCE: &str = "io.s3dock.instance";

/// How long a deployer waits for another one working on the same service.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(10);

/// `s3dock-{app}-{env}-{color}`: the one container name a color can have, so two containers of
/// the same color cannot exist.
pub fn container_name(app: &AppName, env: &EnvName, color: Color) -> String {
    format!("s3dock-{app}-{env}-{color}")
}

/// What a deployer reports as it goes (progress for the agent's logs; crash points for tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployEvent {
    /// The state file now records `phase`; `color` is the new container's.
    Phase { phase: Phase, color: Option<Color> },
    /// One health-check try of the new container; `streak` consecutive 2xx so far.
    Probe { color: Color, ok: bool, streak: u32 },
}

/// Receives [`DeployEvent`]s, awaited in line: an observer that never returns stops the deploy
/// where it stands, which is how the tests simulate a crash at a given point.
#[async_trait]
pub trait DeployObserver: Send + Sync + std::fmt::Debug {
    async fn event(&self, event: &DeployEvent);
}

/// What to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRequest {
    /// Must already be in the engine: pulling is the caller's step.
    pub image: ImageRef,
    /// The pointer generation this deploy converges on, for the audit record.
    pub pointer_seq: Option<u64>,
    /// How long the caller's pull took, reported with the deploy's own phases.
    pub pull_time: Option<Duration>,
}

impl DeployRequest {
    pub fn new(image: ImageRef) -> Self {
        DeployRequest { image, pointer_seq: None, pull_time: None }
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
}

impl DeployResult {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployResult::Succeeded => "succeeded",
            DeployResult::Unchanged => "unchanged",
            DeployResult::Failed => "failed",
            DeployResult::RolledBack => "rolled-back",
        }
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

    /// Settles an interrupted deploy without starting a new one: afterwards traffic is on a
    /// container that passes its health check (or, when none does, the untrusted new
    /// container is removed and the state is idle), and the state file is idle.
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

/// How a deploy's steps stop early: a failure to report (before the switch: undone by
/// removing the new container), or an error that stops the deployer itself.
enum Halt {
    Fail(String),
    Fatal(DeployError),
}

impl From<StateError> for Halt {
    fn from(e: StateError) -> Self {
        Halt::Fatal(e.into())
    }
}

impl From<DeployError> for Halt {
    fn from(e: DeployError) -> Self {
        match e {
            // The engine or the driver failing mid-deploy is this deploy failing: undo it.
            DeployError::Engine(e) => Halt::Fail(e.to_string()),
            DeployError::Traffic(e) => Halt::Fail(e.to_string()),
            other => Halt::Fatal(other),
        }
    }
}

/// How a deploy ended, before it is reported and audited.
struct Outcome {
    result: DeployResult,
    message: Option<String>,
    /// True when the state file can go idle: traffic is known to be on `state.old`. Otherwise
    /// the state keeps its phase for the next run to settle.
    settled: bool,
    /// The container traffic is on afterwards, when known.
    serving: Option<Slot>,
}

enum Drained {
    Done,
    /// Shutdown came during the grace period: the previous container is left for the next
    /// start, and the state file stays in `draining`.
    Deferred(String),
    /// Traffic is fine, but the previous container could not be stopped or removed; the next
    /// deploy removes it as a leftover.
    Leftover(String),
}

/// One deploy or recovery of one service, holding its lock.
struct Run<'a> {
    d: &'a Deployer,
    spec: &'a DeploySpec,
    files: StateFiles,
    state: DeployState,
    cancel: &'a CancellationToken,
    /// The container's environment values, to redact from its logs.
    secrets: Vec<String>,
    _lock: super::state::ServiceLock,
}

impl Run<'_> {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.d.clock.now()
    }

    fn name(&self, color: Color) -> String {
        self.spec.container_name(color)
    }

    fn upstream(&self, color: Color) -> Upstream {
        Upstream { host: self.spec.upstream_host().to_string(), port: self.spec.ports.port(color), color }
    }

    fn health<'b>(&'b self, container: &'b str, color: Color) -> HealthCheck<'b> {
        HealthCheck {
            engine: &*self.d.engine,
            container,
            color,
            host: self.spec.upstream_host().to_string(),
            port: self.spec.ports.port(color),
            spec: &self.spec.health,
            secrets: &self.secrets,
        }
    }

    /// Records `phase` (atomically, see [`super::state::write_atomic`]) before the phase's
    /// first action, then tells the observer.
    async fn save(&mut self, phase: Phase) -> Result<(), StateError> {
        self.state.phase = phase;
        self.state.updated_at = self.now();
        self.files.save(&self.state)?;
        if let Some(o) = &self.d.observer {
            o.event(&DeployEvent::Phase { phase, color: self.state.new.as_ref().map(|s| s.color) }).await;
        }
        Ok(())
    }

    /// The service's container of `color`, if any. A container holding the name without the
    /// service's labels is refused rather than touched.
    async fn container(&self, color: Color) -> Result<Option<ContainerInfo>, DeployError> {
        let name = self.name(color);
        let Some(info) = self.d.engine.inspect_container(&name).await? else { return Ok(None) };
        let ours = info.labels.get(LABEL_APP).map(String::as_str) == Some(self.spec.app.as_str())
            && info.labels.get(LABEL_ENV).map(String::as_str) == Some(self.spec.env.as_str())
            && info.labels.get(LABEL_INSTANCE).map(String::as_str) == self.spec.instance.as_deref();
        if ours {
            Ok(Some(info))
        } else {
            Err(DeployError::Conflict {
                message: format!(
                    "a container named {name} exists but s3dock did not create it for {}/{} (its {LABEL_APP}/{LABEL_ENV}/{LABEL_INSTANCE} labels differ); rename or remove it",
                    self.spec.app, self.spec.env
                ),
            })
        }
    }

    /// Force-removes the service's container of `color`, if there is one.
    async fn remove_color(&self, color: Color) -> Result<(), DeployError> {
        if let Some(info) = self.container(color).await? {
            self.d.engine.remove_container(&info.id, true).await?;
        }
        Ok(())
    }

    fn describe(slot: Option<&Slot>) -> String {
        match slot {
            Some(s) => format!("{} ({})", s.color, s.image),
            None => "nothing".to_owned(),
        }
    }

    // ------------------------------------------------------------------ deploy

    async fn deploy(&mut self, req: &DeployRequest) -> Result<DeployReport, DeployError> {
        let began = Instant::now();
        let mut timings: BTreeMap<String, Duration> = BTreeMap::new();
        if let Some(pull) = req.pull_time {
            timings.insert("pull".into(), pull);
        }
        // A deploy interrupted earlier is settled first: the steps below assume an idle state.
        let recovered = if self.state.phase != Phase::Idle {
            let t = Instant::now();
            let r = self.settle().await?;
            timings.insert("recover".into(), t.elapsed());
            Some(r)
        } else {
            None
        };
        if self.cancel.is_cancelled() {
            return Err(DeployError::Cancelled { what: "the deploy was not started".into() });
        }

        let desired = req.image.to_string();
        // The image must be in the engine (the caller pulls); its id also tells a re-pushed tag
        // apart from the content already running under the same name.
        let image = self
            .d
            .engine
            .inspect_image(&desired)
            .await?
            .ok_or_else(|| EngineError::ImageNotFound { reference: desired.clone() })?;

        // Where traffic is. The driver is the authority (it is what routes); the state file
        // fills in when the driver has no record (e.g. the nginx file was deleted).
        let current = self.d.traffic.current().await?;
        let serving_color = current.as_ref().map(|u| u.color).or(self.state.old.as_ref().map(|s| s.color));
        let serving = match serving_color {
            Some(c) => self.container(c).await?,
            None => None,
        };

        // Step 1: already there? The serving container runs this exact image, the driver
        // routes to it, and it passes its health check now: nothing to do, nothing audited
        // (an agent asks this at every reconcile).
        if let (Some(color), Some(info)) = (serving_color, &serving)
            && info.running
            && info.image_id == image.id
            && current.as_ref().is_some_and(|u| u.same_as(&self.upstream(color)))
        {
            match self.health(&info.id, color).wait(self.cancel, None).await {
                Ok(()) => {
                    let slot = Slot { color, container_id: Some(info.id.clone()), image: desired.clone() };
                    if self.state.old.as_ref() != Some(&slot) {
                        // Re-learnt from the containers and the driver (a lost state directory).
                        self.state.old = Some(slot);
                        self.save(Phase::Idle).await?;
                    }
                    return Ok(DeployReport {
                        deploy_id: None,
                        app: self.spec.app.clone(),
                        env: self.spec.env.clone(),
                        image: req.image.clone(),
                        result: DeployResult::Unchanged,
                        color: Some(color),
                        container_id: Some(info.id.clone()),
                        previous_image: Some(desired),
                        message: Some(format!("{} already serves {} and is healthy", color, req.image)),
                        timings,
                        recovered,
                        audit: None,
                        duration: began.elapsed(),
                    });
                }
                Err(HealthFailure::Cancelled) => {
                    return Err(DeployError::Cancelled { what: "nothing was changed".into() });
                }
                Err(e) => {
                    tracing::warn!(app = %self.spec.app, env = %self.spec.env, %color, error = %e,
                        "the serving container fails its health check; deploying a fresh one");
                }
            }
        }

        // The new color is the one traffic is not on. With nothing known to serve, prefer a
        // color without a running container, so a container started by hand is not the first
        // thing removed.
        let new_color = match serving_color {
            Some(c) => c.other(),
            None => {
                let blue_runs = self.container(Color::Blue).await?.is_some_and(|i| i.running);
                let green_runs = self.container(Color::Green).await?.is_some_and(|i| i.running);
                if blue_runs && !green_runs { Color::Green } else { Color::Blue }
            }
        };
        let old = match (serving_color, &serving) {
            (Some(color), Some(info)) => {
                Some(Slot { color, container_id: Some(info.id.clone()), image: info.image.clone() })
            }
            _ => None,
        };
        let previous_image = old.as_ref().map(|s| s.image.clone());
        // A foreign container holding the new color's name is refused now, before the state
        // file records a deploy that could not proceed.
        self.container(new_color).await?;
        let deploy_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(app = %self.spec.app, env = %self.spec.env, image = %desired, color = %new_color,
            deploy_id = %deploy_id, "deploying");
        self.state = DeployState {
            phase: Phase::Starting,
            old,
            new: Some(Slot { color: new_color, container_id: None, image: desired.clone() }),
            deploy_id: Some(deploy_id.clone()),
            started_at: Some(self.now()),
            pointer_seq: req.pointer_seq,
            switched_at: None,
            ..self.state.clone()
        };
        // From here on the state file says a deploy is in flight: whatever happens next, a
        // restart knows what to settle.
        self.save(Phase::Starting).await?;

        let outcome = match self.forward(&mut timings).await {
            Ok(o) => o,
            Err(Halt::Fatal(e)) => return Err(e),
            Err(Halt::Fail(reason)) => self.abandon(reason).await?,
        };

        let serving_slot = outcome.serving.clone();
        let mut report = DeployReport {
            deploy_id: Some(deploy_id),
            app: self.spec.app.clone(),
            env: self.spec.env.clone(),
            image: req.image.clone(),
            result: outcome.result,
            color: serving_slot.as_ref().map(|s| s.color),
            container_id: serving_slot.as_ref().and_then(|s| s.container_id.clone()),
            previous_image,
            message: outcome.message,
            timings,
            recovered,
            audit: None,
            duration: began.elapsed(),
        };
        // The audit record goes before the state file turns idle: if the deployer dies in
        // between, the restart still finds the deploy in flight and records its settlement.
        report.audit = self.write_audit(&report, false).await;
        self.state.last_deploy = Some(report.outcome(self.now()));
        if outcome.settled {
            self.state.new = None;
            self.save(Phase::Idle).await?;
        } else {
            // Keep the interrupted phase for the next run; only the outcome is added.
            let phase = self.state.phase;
            self.save(phase).await?;
        }
        match report.result {
            DeployResult::Succeeded => tracing::info!(app = %self.spec.app, env = %self.spec.env,
                image = %report.image, color = ?report.color, "deploy succeeded"),
            _ => tracing::warn!(app = %self.spec.app, env = %self.spec.env, image = %report.image,
                result = %report.result, message = report.message.as_deref().unwrap_or(""), "deploy did not succeed"),
        }
        Ok(report)
    }

    /// Steps 2 to 5 of the sequence. Before the switch a failure is a [`Halt::Fail`], undone
    /// by the caller ([`Run::abandon`]); from the switch on, failures are handled here.
    async fn forward(&mut self, timings: &mut BTreeMap<String, Duration>) -> Result<Outcome, Halt> {
        let new = self.state.new.clone().expect("forward runs after the new slot is recorded");
        let color = new.color;
        let name = self.name(color);

        // ---- 2. start
        let t = Instant::now();
        let started = self.start_new(&new).await;
        timings.insert("start".into(), t.elapsed());
        let id = started?;

        // ---- 3. health
        // Traffic is still on the old container; the new one must earn it.
        self.save(Phase::HealthCheck).await?;
        let t = Instant::now();
        let observer = self.d.observer.clone();
        let checked = self.health(&id, color).wait(self.cancel, observer.as_deref()).await;
        timings.insert("health".into(), t.elapsed());
        match checked {
            Ok(()) => {}
            Err(HealthFailure::Cancelled) => {
                return Err(Halt::Fail("shutdown during the health check; the deploy was abandoned".into()));
            }
            Err(e) => return Err(Halt::Fail(format!("{name} did not become healthy: {e}"))),
        }
        // Last point where shutdown abandons the deploy: switching now would leave traffic to
        // be verified and drained by a process that is going away.
        if self.cancel.is_cancelled() {
            return Err(Halt::Fail("shutdown before the switch; the deploy was abandoned".into()));
        }

        // ---- 4. switch
        // Recorded before the driver is called: if the deployer dies inside the switch, the
        // restart does not know which way traffic went and re-applies a healthy choice.
        self.save(Phase::Switching).await?;
        let t = Instant::now();
        let to = self.upstream(color);
        let switched = self.d.traffic.switch(&to).await;
        timings.insert("switch".into(), t.elapsed());
        if let Err(e) = switched {
            if e.traffic_unchanged() {
                // The driver guarantees nothing moved (nginx -t refused, previous file back,
                // no reload): this is the same as failing before the switch.
                return Err(Halt::Fail(format!("switching traffic to {to}: {e}")));
            }
            // Traffic may have moved: go back explicitly. From here on nothing may turn into a
            // `Halt::Fail`, whose undo (removing the new container) is only right before the
            // switch; errors are fatal (the state file keeps the phase for the next run).
            return self
                .roll_back(format!("switching traffic to {to} failed: {e}"), false, timings)
                .await
                .map_err(Halt::Fatal);
        }
        // The switch returned: traffic is on the new container. A crash from here on finds
        // `verifying` and keeps traffic there if the new container still passes its check.
        self.state.switched_at = Some(self.now());
        self.save(Phase::Verifying).await?;

        // ---- verify
        // Runs even after shutdown: it finishes (or undoes) the switch already made, within
        // verify_deadline.
        let t = Instant::now();
        let verified = self.verify(&to).await;
        timings.insert("verify".into(), t.elapsed());
        if let Err(reason) = verified {
            return self
                .roll_back(format!("verification after the switch failed: {reason}"), true, timings)
                .await
                .map_err(Halt::Fatal);
        }

        // ---- 5. drain
        // Traffic is on the new container. The old one keeps running for the grace period so
        // the requests it accepted before the switch (nginx's old workers finish theirs) end.
        self.save(Phase::Draining).await?;
        let t = Instant::now();
        let drained = self.drain(color).await;
        timings.insert("drain".into(), t.elapsed());
        let mut message = None;
        let settled = match drained {
            Drained::Done => true,
            Drained::Leftover(warning) => {
                message = Some(warning);
                true
            }
            Drained::Deferred(note) => {
                message = Some(note);
                false
            }
        };
        let serving = Slot { color, container_id: Some(id), image: new.image.clone() };
        if settled {
            // The new container becomes the one serving.
            self.state.old = Some(serving.clone());
            self.state.new = None;
        }
        // Otherwise the state file stays `draining` with `old` (to drain) and `new` (serving):
        // exactly what the next start's recovery finishes.
        // Older images go, the newest `keep_images` stay for an instant rollback; images a
        // container uses are never removed.
        match ship::remove_old_images(&*self.d.engine, &parse_image(&new.image), self.spec.keep_images).await {
            Ok(removed) if !removed.is_empty() => tracing::info!(?removed, "removed old images"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove old images"),
        }
        Ok(Outcome { result: DeployResult::Succeeded, message, settled, serving: Some(serving) })
    }

    /// Step 2: creates and starts the new color's container; its id.
    async fn start_new(&mut self, new: &Slot) -> Result<String, Halt> {
        let color = new.color;
        let name = self.name(color);
        // Whatever holds the new color's name is a leftover of a deploy that failed or was
        // interrupted, or a color that served long ago: traffic is on the other color or
        // nowhere, so it serves nothing and goes.
        self.remove_color(color).await?;
        let port = self.spec.ports.port(color);
        if let Some(problem) = port_in_use(self.spec.bind, port) {
            return Err(Halt::Fail(format!(
                "host port {} (ports.{color}) {problem}; free it or change ports.{color}",
                show_addr(self.spec.bind, port)
            )));
        }
        let env = self.spec.container_env().map_err(|e| Halt::Fail(e.to_string()))?;
        self.secrets = env.iter().map(|(_, v)| v.expose().to_owned()).collect();
        let spec = self.container_spec(color, &new.image, env);
        let id =
            self.d.engine.create_container(&spec).await.map_err(|e| Halt::Fail(format!("creating {name}: {e}")))?;
        // Recorded as soon as the engine answers. A crash before this line leaves a container
        // the state file does not name; recovery removes by name, so it goes all the same.
        if let Some(slot) = &mut self.state.new {
            slot.container_id = Some(id.clone());
        }
        self.save(Phase::Starting).await?;
        if let Err(e) = self.d.engine.start_container(&id).await {
            let text = e.to_string();
            let hint = if text.contains("already in use") || text.contains("already allocated") {
                format!(
                    "host port {} (ports.{color}) is taken: {text}; free it or change ports.{color}",
                    show_addr(self.spec.bind, port)
                )
            } else {
                format!("starting {name}: {text}")
            };
            return Err(Halt::Fail(hint));
        }
        Ok(id)
    }

    /// Undoes a deploy before its switch: traffic never reached the new container, so removing
    /// it leaves everything as before.
    async fn abandon(&mut self, reason: String) -> Result<Outcome, DeployError> {
        let color = self.state.new.as_ref().map(|s| s.color);
        let created = self.state.new.as_ref().is_some_and(|s| s.container_id.is_some());
        let kept = Self::describe(self.state.old.as_ref());
        let removed = match color {
            Some(c) => self.remove_color(c).await,
            None => Ok(()),
        };
        Ok(match removed {
            Ok(()) => Outcome {
                result: DeployResult::Failed,
                message: Some(if created {
                    format!("{reason}; the new container was removed and traffic stays on {kept}")
                } else {
                    format!("{reason}; traffic stays on {kept}")
                }),
                settled: true,
                serving: self.state.old.clone(),
            },
            // The phase stays as it is: the next run removes it (a container of the new color
            // never had traffic before the switch).
            Err(e) => Outcome {
                result: DeployResult::Failed,
                message: Some(format!(
                    "{reason}; removing the new container failed too ({e}), the next run removes it; traffic stays on {kept}"
                )),
                settled: false,
                serving: self.state.old.clone(),
            },
        })
    }

    /// After a switch that failed (`switched` false: traffic may have moved) or whose
    /// verification failed (`switched` true: traffic is on the new container).
    async fn roll_back(
        &mut self,
        reason: String,
        switched: bool,
        timings: &mut BTreeMap<String, Duration>,
    ) -> Result<Outcome, DeployError> {
        self.save(Phase::RollingBack).await?;
        let t = Instant::now();
        let new = self.state.new.clone().expect("rolling back a deploy that has a new slot");
        let old = self.state.old.clone();
        // The old container can take traffic back only if it still runs: it served until the
        // switch and was not stopped (that happens after the drain), and it passed its health
        // check when it was deployed.
        let old_runs = match &old {
            Some(o) => match self.container(o.color).await {
                Ok(info) => info.is_some_and(|i| i.running && o.container_id.as_deref().is_none_or(|id| id == i.id)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot inspect the previous container; not switching back to it");
                    false
                }
            },
            None => false,
        };
        let outcome = match old {
            Some(old) if old_runs => match self.d.traffic.switch(&self.upstream(old.color)).await {
                Ok(()) => {
                    self.state.switched_at = Some(self.now());
                    // The new container may still be answering requests accepted while it had
                    // traffic (nginx's previous workers finish theirs): it gets the same grace
                    // an old container gets before it is removed.
                    let (removal, settled) = match self.drain(old.color).await {
                        Drained::Done => ("the new container was removed".to_owned(), true),
                        Drained::Leftover(warning) => (warning, true),
                        // Left for the next start: the state file stays `rolling-back`, whose
                        // recovery puts traffic on the old container again and drains the new.
                        Drained::Deferred(note) => (note, false),
                    };
                    Outcome {
                        result: DeployResult::RolledBack,
                        message: Some(format!(
                            "{reason}; traffic is back on {}, {removal}",
                            Self::describe(Some(&old))
                        )),
                        settled,
                        serving: Some(old.clone()),
                    }
                }
                // Neither direction is certain. Both containers run and both passed their
                // health checks, so whichever gets traffic is safe; keep both and let the next
                // run settle it (the state file stays `rolling-back`).
                Err(e) => Outcome {
                    result: DeployResult::Failed,
                    message: Some(format!(
                        "{reason}; switching back to {} failed too ({e}); both containers are kept and the next run settles traffic",
                        Self::describe(Some(&old))
                    )),
                    settled: false,
                    serving: None,
                },
            },
            _ => {
                // Nothing to go back to (a first deploy, or the old container is gone). The new
                // container passed its health check, so it may keep the traffic.
                let message = format!(
                    "{reason}; there is no running previous container to go back to, so {} keeps the traffic (it passed its health check)",
                    Self::describe(Some(&new))
                );
                if switched {
                    self.state.old = Some(new.clone());
                    self.state.new = None;
                    Outcome { result: DeployResult::Failed, message: Some(message), settled: true, serving: Some(new) }
                } else {
                    // Where traffic went is unknown: the next run re-applies the switch.
                    Outcome { result: DeployResult::Failed, message: Some(message), settled: false, serving: None }
                }
            }
        };
        timings.insert("rollback".into(), t.elapsed());
        Ok(outcome)
    }

    /// Reads the switch back through the driver, then asks `verify_url` (the traffic path) for
    /// `health.successes` consecutive 2xx within `verify_deadline`.
    async fn verify(&self, to: &Upstream) -> Result<(), String> {
        match self.d.traffic.current().await {
            Ok(Some(c)) if c.same_as(to) => {}
            Ok(Some(c)) => return Err(format!("the {} driver routes to {c}, not {to}", self.d.traffic.driver())),
            Ok(None) => return Err(format!("the {} driver reports no upstream", self.d.traffic.driver())),
            Err(e) => return Err(format!("reading the switch back failed: {e}")),
        }
        let Some(url) = &self.spec.verify_url else { return Ok(()) };
        let target = HttpTarget::parse_url(url)?;
        let h = &self.spec.health;
        let deadline = Instant::now() + self.spec.verify_deadline;
        let mut streak = 0;
        loop {
            let last = probe(&target.host, target.port, &target.path, h.timeout, deadline, &mut streak).await;
            if streak >= h.successes {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "GET {url} {last} ({streak} of {} consecutive 2xx within {})",
                    h.successes,
                    show_duration(self.spec.verify_deadline)
                ));
            }
            tokio::time::sleep(h.interval.min(deadline - now)).await;
        }
    }

    /// Traffic is on `keep`: give the other color's container what is left of its grace period
    /// (counted from the switch, which may predate a restart), then stop and remove it.
    async fn drain(&mut self, keep: Color) -> Drained {
        let other = keep.other();
        let name = self.name(other);
        let info = match self.container(other).await {
            Ok(Some(info)) => info,
            Ok(None) => return Drained::Done,
            Err(e) => {
                return Drained::Leftover(format!(
                    "the previous container {name} could not be inspected ({e}); the next deploy removes it"
                ));
            }
        };
        if info.running {
            let since =
                self.state.switched_at.map_or(Duration::ZERO, |t| (self.now() - t).to_std().unwrap_or_default());
            let wait = self.spec.drain.saturating_sub(since);
            if !wait.is_zero() {
                tokio::select! {
                    // Shutdown: the grace period is not cut short; the container is left
                    // running for the next start, which finishes the drain.
                    _ = self.cancel.cancelled() => {
                        return Drained::Deferred(format!(
                            "shutdown during the drain: {name} is left running and the next start drains it"
                        ));
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        let stop_secs = u32::try_from(self.spec.stop_timeout.as_millis().div_ceil(1000)).unwrap_or(u32::MAX);
        let stopped = match self.d.engine.stop_container(&info.id, stop_secs).await {
            Ok(()) => self.d.engine.remove_container(&info.id, true).await,
            Err(e) => Err(e),
        };
        match stopped {
            Ok(()) => Drained::Done,
            Err(e) => Drained::Leftover(format!(
                "the previous container {name} could not be stopped or removed ({e}); the next deploy removes it"
            )),
        }
    }

    fn container_spec(&self, color: Color, image: &str, env: Vec<(String, super::spec::Secret)>) -> ContainerSpec {
        let spec = self.spec;
        let mut vars: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, v.expose().to_owned())).collect();
        // Last, so they win over variables of the same name from the spec.
        vars.extend([
            ("S3DOCK_APP".to_owned(), spec.app.to_string()),
            ("S3DOCK_ENV".to_owned(), spec.env.to_string()),
            ("S3DOCK_COLOR".to_owned(), color.to_string()),
            ("S3DOCK_IMAGE".to_owned(), image.to_owned()),
        ]);
        let mut labels = BTreeMap::from([
            (LABEL_APP.to_owned(), spec.app.to_string()),
            (LABEL_ENV.to_owned(), spec.env.to_string()),
            (LABEL_COLOR.to_owned(), color.to_string()),
            (LABEL_IMAGE.to_owned(), image.to_owned()),
            (LABEL_DEPLOY_ID.to_owned(), self.state.deploy_id.clone().unwrap_or_default()),
        ]);
        if let Some(i) = &spec.instance {
            labels.insert(LABEL_INSTANCE.to_owned(), i.clone());
        }
        ContainerSpec {
            name: self.name(color),
            image: image.to_owned(),
            cmd: None,
            env: vars,
            labels,
            ports: vec![PortPublish {
                container_port: spec.container_port,
                protocol: Protocol::Tcp,
                host_ip: Some(spec.bind.to_string()),
                host_port: Some(spec.ports.port(color)),
            }],
            binds: spec.volumes.clone(),
            network_mode: spec.network.clone(),
            memory_bytes: spec.memory,
            nano_cpus: spec.cpus.map(|c| (c * 1e9).round() as u64),
            restart_policy: spec.restart,
        }
    }

    // ------------------------------------------------------------------ recovery

    /// Settles a deploy the state file says was in flight. What each phase converges to is in
    /// the module doc of [`crate::deploy`]; in short:
    ///
    /// - `starting`, `health-check`: the switch never began, so the new container never had
    ///   traffic: remove it. Traffic stays on the old container.
    /// - `switching`, `verifying`, `rolling-back`, `draining`: traffic may be on either color.
    ///   Health check the containers now, preferring the direction the deploy was going (back
    ///   to the old one when it was rolling back, forward otherwise), put traffic on the first
    ///   that passes (re-applying the switch unless the driver's record is known to be what
    ///   routes), then drain and remove the other. When none passes, remove the untrusted new
    ///   container; the deploy that follows starts a fresh one and switches only once it is
    ///   healthy.
    async fn settle(&mut self) -> Result<RecoverReport, DeployError> {
        let found = self.state.phase;
        tracing::warn!(app = %self.spec.app, env = %self.spec.env, phase = %found,
            "settling a deploy that was interrupted");
        let current = self.d.traffic.current().await?;
        let new = self.state.new.clone();
        let old = self.state.old.clone();
        let traffic_on_new = matches!((&current, &new), (Some(c), Some(n)) if c.color == n.color);

        if matches!(found, Phase::Starting | Phase::HealthCheck) && !traffic_on_new {
            if let Some(n) = &new {
                self.remove_color(n.color).await?;
            }
            self.state.new = None;
            let action = format!(
                "the deploy was interrupted during {found}, before any traffic moved: removed its new container; traffic stays on {}",
                Self::describe(old.as_ref())
            );
            self.finish_recovery(DeployResult::Failed, &action, new.as_ref()).await?;
            return Ok(RecoverReport { found, serving: self.state.old.as_ref().map(|s| s.color), action });
        }

        let order: Vec<Slot> = match found {
            Phase::RollingBack => [old.clone(), new.clone()],
            _ => [new.clone(), old.clone()],
        }
        .into_iter()
        .flatten()
        .collect();
        let mut chosen: Option<Slot> = None;
        for slot in order {
            let Some(info) = self.container(slot.color).await? else { continue };
            // Someone replaced the container since: it is not the one the state describes.
            if !info.running || slot.container_id.as_deref().is_some_and(|id| id != info.id) {
                continue;
            }
            match self.health(&info.id, slot.color).wait(self.cancel, None).await {
                Ok(()) => {
                    chosen = Some(Slot { container_id: Some(info.id.clone()), ..slot });
                    break;
                }
                Err(HealthFailure::Cancelled) => {
                    return Err(DeployError::Cancelled {
                        what: format!("recovery was stopped; the state file keeps the phase {found}"),
                    });
                }
                Err(e) => tracing::warn!(color = %slot.color, error = %e, "not healthy: not a candidate for traffic"),
            }
        }

        let Some(chosen) = chosen else {
            // No container can take traffic now. The new one is not trusted (it failed now, or
            // never finished its first check) and goes; the old one stays in case its restart
            // policy brings it back. The next deploy starts a fresh container.
            if let Some(n) = &new {
                self.remove_color(n.color).await?;
            }
            self.state.new = None;
            let action = format!(
                "the deploy was interrupted during {found} and no container passes its health check now: removed the new one; the next deploy starts a fresh container"
            );
            self.finish_recovery(DeployResult::Failed, &action, new.as_ref()).await?;
            return Ok(RecoverReport { found, serving: None, action });
        };

        let up = self.upstream(chosen.color);
        // After `verifying` and `draining` the switch had returned, so a driver record naming
        // this upstream is what routes. After `switching` and `rolling-back` the record may be
        // ahead of what routes (the nginx file renamed, the reload not done): apply it again.
        let trusted =
            matches!(found, Phase::Verifying | Phase::Draining) && current.as_ref().is_some_and(|c| c.same_as(&up));
        if !trusted {
            self.d.traffic.switch(&up).await.map_err(|e| DeployError::Incomplete {
                app: self.spec.app.to_string(),
                env: self.spec.env.to_string(),
                message: format!("switching traffic to the healthy {up} failed: {e}"),
            })?;
            self.state.switched_at = Some(self.now());
        }
        // From here it is the end of a deploy to `chosen`: drain the other color.
        let forward = new.as_ref().is_some_and(|n| n.color == chosen.color);
        self.state.old = self.state.slot(chosen.color.other()).cloned();
        self.state.new = Some(chosen.clone());
        self.save(Phase::Draining).await?;
        match self.drain(chosen.color).await {
            Drained::Deferred(note) => return Err(DeployError::Cancelled { what: note }),
            Drained::Leftover(warning) => tracing::warn!("{warning}"),
            Drained::Done => {}
        }
        self.state.old = Some(chosen.clone());
        self.state.new = None;
        let (result, action) = if forward {
            (
                DeployResult::Succeeded,
                format!(
                    "the deploy was interrupted during {found}; completed it: traffic is on {}",
                    Self::describe(Some(&chosen))
                ),
            )
        } else {
            (
                DeployResult::RolledBack,
                format!(
                    "the deploy was interrupted during {found}; traffic is back on {} and the new container was removed",
                    Self::describe(Some(&chosen))
                ),
            )
        };
        self.finish_recovery(result, &action, new.as_ref()).await?;
        Ok(RecoverReport { found, serving: Some(chosen.color), action })
    }

    /// Audits the settled deploy (a record of its own, `...-recovered`, so it never collides
    /// with one the interrupted run may have written) and makes the state idle.
    async fn finish_recovery(
        &mut self,
        result: DeployResult,
        action: &str,
        new: Option<&Slot>,
    ) -> Result<(), DeployError> {
        if let Some(image) = new.and_then(|n| ImageRef::parse(&n.image).ok()) {
            let report = DeployReport {
                deploy_id: self.state.deploy_id.clone(),
                app: self.spec.app.clone(),
                env: self.spec.env.clone(),
                image,
                result,
                color: self.state.old.as_ref().map(|s| s.color),
                container_id: self.state.old.as_ref().and_then(|s| s.container_id.clone()),
                previous_image: None,
                message: Some(action.to_owned()),
                timings: BTreeMap::new(),
                recovered: None,
                audit: None,
                duration: Duration::ZERO,
            };
            let _ = self.write_audit(&report, true).await;
            self.state.last_deploy = Some(report.outcome(self.now()));
        }
        self.save(Phase::Idle).await?;
        Ok(())
    }

    // ------------------------------------------------------------------ audit

    /// `audit/{app}/{YYYYMM}/{start}-{deploy|rollback}-{hash7}-{env}-{host}-{deploy-id}[-recovered].json`.
    /// The deploy id is a random UUID, so no two deploys share a key; the same deploy's record
    /// written twice (a retry) is the same key, which the conditional create keeps once.
    async fn write_audit(&self, report: &DeployReport, recovered: bool) -> Option<Result<ObjectKey, String>> {
        let sink = self.d.audit.as_ref()?;
        let deploy_id = report.deploy_id.as_deref()?;
        let started = self.state.started_at.unwrap_or_else(|| self.now());
        let event = if report.result == DeployResult::RolledBack { EventType::Rollback } else { EventType::Deploy };
        let mut discriminators = vec![self.spec.env.as_str(), self.d.host.as_str(), deploy_id];
        if recovered {
            discriminators.push("recovered");
        }
        let tag = &report.image.tag;
        let key = layout::audit(&self.spec.app, started, event.as_str(), tag.hash7(), &discriminators);
        let details = DeployDetails {
            environment: self.spec.env.to_string(),
            image_reference: report.image.to_string(),
            host: self.d.host.clone(),
            result: report.result.as_str().to_owned(),
            color: report.color.map(|c| c.to_string()),
            previous_image: report.previous_image.clone(),
            message: report.message.clone(),
            timings_ms: report.timings_ms(),
            pointer_seq: self.state.pointer_seq,
            agent_id: sink.agent_id.clone(),
        };
        let record = AuditRecord {
            schema_version: Some(SCHEMA_VERSION),
            event_type: event.as_str().to_owned(),
            timestamp: self.now(),
            user: sink.registry.actor().to_owned(),
            app_name: self.spec.app.to_string(),
            git_hash: tag.hash7().to_owned(),
            git_time: tag.time_str(),
            details: serde_json::to_value(&details).expect("DeployDetails always serializes"),
            principal: None,
            recorded_by: Some(sink.recorded_by.clone()),
        };
        Some(match sink.registry.audit(&key, &record).await {
            Ok(_) => Ok(key),
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "could not write the deploy's audit record");
                Err(e.to_string())
            }
        })
    }
}

fn parse_image(reference: &str) -> ImageRef {
    // Slots only ever hold references built from an ImageRef's Display.
    ImageRef::parse(reference).expect("slot images are valid image references")
}

fn show_addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// Whether another process listens on the port: a clear message before Docker's own.
fn port_in_use(ip: IpAddr, port: u16) -> Option<String> {
    match std::net::TcpListener::bind((ip, port)) {
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Some("is already in use by another process".into()),
        // Not ours to judge (e.g. an address this host does not have): Docker says.
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(show_addr("::1".parse().unwrap(), 80), "[::1]:80");
    }

    #[test]
    fn a_port_held_by_another_process_is_reported() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(port_in_use("127.0.0.1".parse().unwrap(), port).unwrap().contains("in use"));
        drop(held);
        assert!(port_in_use("127.0.0.1".parse().unwrap(), port).is_none());
    }
}
