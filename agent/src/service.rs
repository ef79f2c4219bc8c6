//! One served (app, env): its deployer, what the agent knows about it, the reconcile step and
//! the registration it reports.
//!
//! # Reconcile
//!
//! The pointer is the only truth; a message only says "look now". A reconcile:
//!
//! 1. resolves `pointers/{app}/{env}.json` (through a tag if it names one) to an image. No
//!    pointer: nothing to deploy, the registration says `no-pointer`;
//! 2. is done if that image already serves: the state file is idle on it, its container runs,
//!    the traffic driver routes to it and one probe of the health path answers 2xx;
//! 3. is done if this (image, pointer seq) failed its deploy and its back-off has not passed
//!    (see below); an interrupted deploy is still settled ([`Deployer::recover`]);
//! 4. otherwise pulls (verified, skipped when the engine has the image id) and converges
//!    ([`Deployer::converge`]: settle what a crash left, then the blue-green sequence), which
//!    writes the `deploy` / `rollback` audit record with `recorded_by = "agent"`.
//!
//! # Failed deploys are not retried in a hot loop
//!
//! A deploy that ran and ended `failed` or `rolled-back` is remembered by (image, pointer
//! seq). The same pair is deployed again only after a back-off (`retry_backoff`, doubling at
//! every failure, at most an hour), or at once when the pointer changes (another image, or a
//! new promotion of any kind). Errors that kept the deploy from running (the bucket or the
//! Docker engine unreachable, the service lock held by a hand-run `s3dock deploy`) are not
//! remembered: the next reconcile tries again. The memory lives in the process: a restarted
//! agent tries once more.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use s3dock_core::clock::Clock;
use s3dock_core::docs::{AgentRegistration, AgentState, SCHEMA_VERSION};
use s3dock_core::names::{AgentId, ImageRef, ObjectKey};
use s3dock_core::registry::Registry;
use s3dock_core::transfer::Progress;
use s3dock_core::{ErrorKind, layout};
use s3dock_engine::DockerEngine;
use s3dock_engine::deploy::{
    DeployEvent, DeployObserver, DeployReport, DeployRequest, DeployResult, DeploySpec, Deployer, Phase, TrafficSwitch,
    Upstream, http_status,
};
use s3dock_engine::ship::{self, PullRequest, PullTarget};
use tokio_util::sync::CancellationToken;

use crate::fault::{self, FaultPoint};

/// The longest wait between two tries of a deploy that keeps failing with the same pointer.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3600);

/// The `status` a registration reports.
pub mod status {
    /// Started, not reconciled yet.
    pub const STARTING: &str = "starting";
    /// The pointer's image serves.
    pub const CONVERGED: &str = "converged";
    /// A pull or deploy is running.
    pub const DEPLOYING: &str = "deploying";
    /// The last deploy of the desired image failed; the previous container keeps serving.
    pub const FAILED: &str = "failed";
    /// The environment has no pointer: nothing to deploy.
    pub const NO_POINTER: &str = "no-pointer";
    /// The last reconcile could not run (`message` says why); the next one tries again.
    pub const ERROR: &str = "error";
    /// The agent stopped (its last registration before exiting).
    pub const STOPPED: &str = "stopped";
}

/// A deploy that failed, and when the same pointer may be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDeploy {
    pub image: String,
    pub seq: u64,
    pub attempts: u32,
    pub retry_at: DateTime<Utc>,
}

/// What the agent knows about a service beyond its state file.
#[derive(Debug, Clone, Default)]
pub struct ServiceStatus {
    pub status: &'static str,
    /// The image the pointer resolved to at the last reconcile.
    pub desired: Option<String>,
    /// The pointer seq last converged on.
    pub converged_seq: Option<u64>,
    pub health: Option<&'static str>,
    pub message: Option<String>,
    pub failed: Option<FailedDeploy>,
    /// The deploy phase in flight, for logs.
    pub phase: Option<Phase>,
}

/// How a reconcile ended.
#[derive(Debug)]
pub enum Reconciled {
    /// No pointer: nothing to deploy.
    NoPointer,
    /// The pointer's image already serves and answers.
    InSync { image: ImageRef, seq: u64 },
    /// The pointer's image failed before; not tried again until `retry_at`.
    BackingOff { image: String, seq: u64, retry_at: DateTime<Utc> },
    /// A deploy ran (its result may be a failure).
    Deployed { report: Box<DeployReport>, seq: u64 },
    /// The reconcile could not run; the next one tries again.
    Error { message: String },
    /// Shutdown came first.
    Cancelled,
}

impl Reconciled {
    /// Whether the service ended where the pointer says (or has nothing to run).
    pub fn is_converged(&self) -> bool {
        match self {
            Reconciled::NoPointer | Reconciled::InSync { .. } => true,
            Reconciled::Deployed { report, .. } => {
                matches!(report.result, DeployResult::Succeeded | DeployResult::Unchanged)
            }
            _ => false,
        }
    }

    /// One line for logs and `--once`.
    pub fn describe(&self) -> String {
        match self {
            Reconciled::NoPointer => "no pointer: nothing to deploy".into(),
            Reconciled::InSync { image, seq } => format!("{image} serves (pointer seq {seq})"),
            Reconciled::BackingOff { image, seq, retry_at } => {
                format!("{image} (seq {seq}) failed before; next try at {}", retry_at.format("%Y-%m-%dT%H:%M:%SZ"))
            }
            Reconciled::Deployed { report, .. } => format!(
                "deploy of {}: {}{}",
                report.image,
                report.result,
                report.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default()
            ),
            Reconciled::Error { message } => format!("error: {message}"),
            Reconciled::Cancelled => "stopped by shutdown".into(),
        }
    }
}

/// The observer the agent's deployers report to: logs each phase, keeps it in the status,
/// and stops at the fault point when one is set.
#[derive(Debug)]
pub struct AgentObserver {
    pub service: String,
    pub status: Arc<Mutex<ServiceStatus>>,
    pub fault: Option<FaultPoint>,
}

#[async_trait]
impl DeployObserver for AgentObserver {
    async fn event(&self, event: &DeployEvent) {
        match event {
            DeployEvent::Phase { phase, color } => {
                tracing::info!(service = %self.service, phase = %phase, color = ?color, "deploy phase");
                lock(&self.status).phase = Some(*phase);
            }
            DeployEvent::Probe { color, ok, streak } => {
                tracing::debug!(service = %self.service, %color, ok, streak, "health probe");
            }
        }
        if let Some(point) = self.fault
            && point.matches(event)
        {
            fault::stop_here(point).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the status leaves plain data behind; keep using it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One (app, env) this agent serves.
#[derive(Debug)]
pub struct Service {
    pub spec: DeploySpec,
    /// `agents/{app}/{env}/{agent-id}.json`.
    pub key: ObjectKey,
    pub deployer: Deployer,
    pub traffic: Arc<dyn TrafficSwitch>,
    pub status: Arc<Mutex<ServiceStatus>>,
    /// Serializes registration writes, so a heartbeat built before an outcome never lands
    /// after the write that recorded it.
    pub write_lock: tokio::sync::Mutex<()>,
}

impl Service {
    pub fn name(&self) -> String {
        format!("{}/{}", self.spec.app, self.spec.env)
    }

    pub fn status(&self) -> ServiceStatus {
        lock(&self.status).clone()
    }

    fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        f(&mut lock(&self.status));
    }
}

/// The world a reconcile talks to.
#[derive(Debug, Clone)]
pub struct World {
    pub registry: Arc<Registry>,
    pub engine: Arc<dyn DockerEngine>,
    pub clock: Arc<dyn Clock>,
    pub agent_id: AgentId,
    pub host: String,
    pub queue_url: Option<String>,
    pub retry_backoff: Duration,
    pub fault: Option<FaultPoint>,
}

impl World {
    /// Settles a deploy a crash interrupted (start-up, before the first reconcile).
    pub async fn recover(&self, svc: &Service, cancel: &CancellationToken) {
        match svc.deployer.recover(&svc.spec, cancel).await {
            Ok(r) if r.found == Phase::Idle => {}
            Ok(r) => tracing::warn!(service = %svc.name(), found = %r.found, serving = ?r.serving, action = %r.action,
                "settled an interrupted deploy"),
            Err(e) => {
                // Not fatal: the reconcile's converge settles it again (and reports).
                tracing::error!(service = %svc.name(), error = %e, "could not settle an interrupted deploy");
                svc.update(|s| {
                    s.status = status::ERROR;
                    s.message = Some(format!("recovering an interrupted deploy: {e}"));
                });
            }
        }
    }

    /// One reconcile of `svc` (see the module doc), with the status updated to match.
    pub async fn reconcile(&self, svc: &Service, cancel: &CancellationToken) -> Reconciled {
        let outcome = self.reconcile_inner(svc, cancel).await;
        self.record(svc, &outcome);
        match &outcome {
            Reconciled::InSync { .. } => tracing::debug!(service = %svc.name(), "{}", outcome.describe()),
            Reconciled::Error { .. } => tracing::error!(service = %svc.name(), "{}", outcome.describe()),
            Reconciled::Deployed { report, .. } if !outcome.is_converged() => {
                tracing::warn!(service = %svc.name(), result = %report.result, "{}", outcome.describe())
            }
            _ => tracing::info!(service = %svc.name(), "{}", outcome.describe()),
        }
        outcome
    }

    async fn reconcile_inner(&self, svc: &Service, cancel: &CancellationToken) -> Reconciled {
        let (app, env) = (&svc.spec.app, &svc.spec.env);
        // 1. The pointer, read now: never what a message said.
        let resolved = match self.registry.resolve(app, env).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return match self.registry.store().head(&layout::pointer(app, env)).await {
                    Ok(None) => Reconciled::NoPointer,
                    // The pointer exists but leads nowhere: that is worth an error.
                    Ok(Some(_)) => Reconciled::Error { message: e.to_string() },
                    Err(head) => Reconciled::Error { message: head.to_string() },
                };
            }
            Err(e) => return Reconciled::Error { message: format!("resolving the pointer: {e}") },
        };
        let image = resolved.record.image.clone();
        let seq = resolved.pointer.as_ref().map_or(0, |p| p.seq());
        svc.update(|s| s.desired = Some(image.to_string()));

        // 2. Already there?
        let state = match svc.deployer.state(&svc.spec) {
            Ok(s) => s,
            Err(e) => return Reconciled::Error { message: e.to_string() },
        };
        let idle = state.as_ref().is_none_or(|s| s.phase == Phase::Idle);
        if idle
            && let Some(slot) = state.as_ref().and_then(|s| s.old.as_ref())
            && slot.image == image.to_string()
            && let Some(health) = self.serving_health(svc, slot).await
        {
            svc.update(|s| s.health = Some(health));
            if health == "healthy" {
                return Reconciled::InSync { image, seq };
            }
            // Unhealthy: converging checks it properly and replaces it if it really fails.
        }

        // 3. Failed before with this very pointer?
        if let Some(f) = svc.status().failed
            && f.image == image.to_string()
            && f.seq == seq
            && self.clock.now() < f.retry_at
        {
            if !idle {
                self.recover(svc, cancel).await;
            }
            return Reconciled::BackingOff { image: f.image, seq, retry_at: f.retry_at };
        }

        // 4. Pull, then converge.
        svc.update(|s| {
            s.status = status::DEPLOYING;
            s.message = None;
        });
        let started = Instant::now();
        let req = PullRequest { app: app.clone(), target: PullTarget::Env(env.clone()), keep: None };
        let progress = Progress::default();
        let pulled = tokio::select! {
            // Shutdown: no new deploy starts. Dropping the pull aborts its `docker load`
            // upload, so nothing half-loaded stays behind.
            _ = cancel.cancelled() => return Reconciled::Cancelled,
            r = ship::pull(&*self.engine, &self.registry, &req, &progress) => r,
        };
        let pulled = match pulled {
            Ok(p) => p,
            Err(e) => return Reconciled::Error { message: format!("pulling {image}: {e}") },
        };
        // The pull resolved the pointer again; if it moved meanwhile, the newer image wins.
        let image = pulled.image.clone();
        let seq = pulled.resolved.pointer.as_ref().map_or(seq, |p| p.seq());
        if let Some(skipped) = &pulled.skipped {
            tracing::info!(service = %svc.name(), %image, "{skipped}");
        } else {
            tracing::info!(service = %svc.name(), %image, bytes = pulled.bytes, seconds = pulled.seconds, "pulled and verified");
        }
        if self.fault == Some(FaultPoint::AfterPull) {
            fault::stop_here(FaultPoint::AfterPull).await;
        }
        if cancel.is_cancelled() {
            return Reconciled::Cancelled;
        }
        let req = DeployRequest { image: image.clone(), pointer_seq: Some(seq), pull_time: Some(started.elapsed()) };
        match svc.deployer.converge(&svc.spec, &req, cancel).await {
            Ok(report) => Reconciled::Deployed { report: Box::new(report), seq },
            Err(e) if cancel.is_cancelled() => {
                tracing::warn!(service = %svc.name(), error = %e, "deploy stopped by shutdown");
                Reconciled::Cancelled
            }
            Err(e) => Reconciled::Error { message: format!("deploying {image}: {e}") },
        }
    }

    /// `healthy` or `unhealthy` for the container a slot names, when it is the one running
    /// under its color's name and the driver routes to it; `None` when it is not (then the
    /// service is not in sync, whatever the state file says).
    async fn serving_health(&self, svc: &Service, slot: &s3dock_engine::deploy::Slot) -> Option<&'static str> {
        let name = svc.spec.container_name(slot.color);
        let info = self.engine.inspect_container(&name).await.ok().flatten()?;
        if !info.running || slot.container_id.as_deref().is_some_and(|id| id != info.id) {
            return None;
        }
        let up = Upstream {
            host: svc.spec.upstream_host().to_string(),
            port: svc.spec.ports.port(slot.color),
            color: slot.color,
        };
        match svc.traffic.current().await {
            Ok(Some(current)) if current.same_as(&up) => {}
            _ => return None,
        }
        let h = &svc.spec.health;
        Some(match http_status(&up.host, up.port, &h.path, h.timeout).await {
            Ok(code) if (200..300).contains(&code) => "healthy",
            _ => "unhealthy",
        })
    }

    /// Folds an outcome into the service's status (what the next registration reports).
    fn record(&self, svc: &Service, outcome: &Reconciled) {
        let now = self.clock.now();
        let backoff = self.retry_backoff;
        svc.update(|s| {
            s.phase = None;
            match outcome {
                Reconciled::NoPointer => {
                    s.status = status::NO_POINTER;
                    s.desired = None;
                    s.message = Some("the environment has no pointer: nothing to deploy".into());
                }
                Reconciled::InSync { image, seq } => {
                    s.status = status::CONVERGED;
                    s.desired = Some(image.to_string());
                    s.converged_seq = Some(*seq);
                    s.health = Some("healthy");
                    s.message = None;
                    s.failed = None;
                }
                Reconciled::BackingOff { .. } => {
                    s.status = status::FAILED;
                }
                Reconciled::Deployed { report, seq } => match report.result {
                    DeployResult::Succeeded | DeployResult::Unchanged => {
                        s.status = status::CONVERGED;
                        s.desired = Some(report.image.to_string());
                        s.converged_seq = Some(*seq);
                        s.health = Some("healthy");
                        s.message = None;
                        s.failed = None;
                    }
                    DeployResult::Failed | DeployResult::RolledBack => {
                        let image = report.image.to_string();
                        let attempts = match &s.failed {
                            Some(f) if f.image == image && f.seq == *seq => f.attempts + 1,
                            _ => 1,
                        };
                        let wait =
                            backoff.saturating_mul(1 << (attempts - 1).min(16)).min(MAX_RETRY_BACKOFF.max(backoff));
                        let retry_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
                        s.status = status::FAILED;
                        s.message = report.message.clone();
                        s.failed = Some(FailedDeploy { image, seq: *seq, attempts, retry_at });
                    }
                },
                Reconciled::Error { message } => {
                    s.status = status::ERROR;
                    s.message = Some(message.clone());
                }
                Reconciled::Cancelled => {}
            }
        });
    }

    /// After a failed deploy: when the Docker engine no longer answers, the failure is the
    /// engine's, not the image's, and it must not be held against the pointer.
    pub async fn forgive_if_engine_down(&self, svc: &Service, outcome: &mut Reconciled) {
        let Reconciled::Deployed { report, .. } = outcome else { return };
        if !matches!(report.result, DeployResult::Failed | DeployResult::RolledBack) {
            return;
        }
        if let Err(e) = self.engine.version().await {
            let message = format!(
                "the deploy of {} failed and the Docker engine does not answer ({e}); the next reconcile tries again",
                report.image
            );
            svc.update(|s| {
                s.failed = None;
                s.status = status::ERROR;
                s.message = Some(message.clone());
            });
            *outcome = Reconciled::Error { message };
        }
    }

    /// The registration `svc` reports now: the queue, the heartbeat, and its state (what serves
    /// comes from the deployer's state file, so it survives restarts).
    pub fn registration(&self, svc: &Service, override_status: Option<&'static str>) -> AgentRegistration {
        let st = svc.status();
        let file = match svc.deployer.state(&svc.spec) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(service = %svc.name(), error = %e, "cannot read the state file for the registration");
                None
            }
        };
        let serving = file.as_ref().and_then(|f| f.old.clone());
        let since = file.as_ref().filter(|_| serving.is_some()).and_then(|f| f.switched_at.or(f.started_at));
        let status_now = override_status.unwrap_or(if st.status.is_empty() { status::STARTING } else { st.status });
        // While a deploy runs, the message says how far it got.
        let message = match (status_now, st.phase) {
            (status::DEPLOYING, Some(phase)) => Some(format!("deploy phase: {phase}")),
            _ => st.message.clone(),
        };
        let state = AgentState {
            image: serving.as_ref().map(|s| s.image.clone()),
            color: serving.as_ref().map(|s| s.color.to_string()),
            since,
            health: if serving.is_some() { st.health.map(str::to_owned).or(Some("unknown".into())) } else { None },
            last_deploy: file.and_then(|f| f.last_deploy),
            pointer_seq: st.converged_seq,
            desired: st.desired.clone(),
            status: Some(status_now.to_owned()),
            message,
        };
        AgentRegistration {
            schema_version: Some(SCHEMA_VERSION),
            agent_id: self.agent_id.clone(),
            app_name: svc.spec.app.clone(),
            environment: svc.spec.env.clone(),
            queue_url: self.queue_url.clone(),
            host: self.host.clone(),
            last_heartbeat: self.clock.now(),
            state: Some(state),
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        }
    }

    /// Writes the registration (one at a time per service). Errors are returned for the
    /// caller to log: a message is only deleted once this succeeded.
    pub async fn write_registration(
        &self,
        svc: &Service,
        override_status: Option<&'static str>,
    ) -> Result<(), s3dock_core::store::StoreError> {
        let _one_at_a_time = svc.write_lock.lock().await;
        let doc = self.registration(svc, override_status);
        let body = bytes::Bytes::from(s3dock_core::docs::encode(&doc));
        self.registry.store().put_bytes(&svc.key, body, s3dock_core::store::Precondition::None).await?;
        Ok(())
    }
}
