//! One served (app, env): its deployer, what the agent knows about it, the reconcile step and
//! the registration it reports.
//!
//! # Reconcile
//!
//! The pointer is the only truth; a message only says "look now". A reconcile:
//!
//! 1. resolves `pointers/{app}/{env}.json` (through a tag if it names one) to an image and its
//!    metadata. No pointer: nothing to deploy, the registration says `no-pointer`;
//! 2. asks the container serving now (the state file's) for its health, whatever it runs: the
//!    registration's `health` is never older than the last reconcile;
//! 3. is done if the pointer's image already serves: the state file is idle on it, its
//!    container runs *the image id the metadata names* (a tag re-pushed with new content is
//!    not what runs), the traffic driver routes to it and one probe of the health path answers
//!    2xx;
//! 4. is done if this (image, pointer seq) failed before — its deploy, or its pull for a reason
//!    that retrying cannot fix (a full disk, an archive whose content is not its metadata's) —
//!    and its back-off has not passed (see below); an interrupted deploy is still settled
//!    ([`Deployer::recover`]);
//! 5. otherwise pulls (verified, skipped when the engine has the image id) and converges
//!    ([`Deployer::converge`]: settle what a crash left, then the blue-green sequence), which
//!    writes the `deploy` / `rollback` audit record with `recorded_by = "agent"`. Right before
//!    the switch the pointer is read once more: a deploy whose image the pointer no longer
//!    names (a rollback promoted meanwhile) stops there, and the next reconcile follows at
//!    once.
//!
//! # Failed deploys are not retried in a hot loop
//!
//! A deploy that ran and ended `failed` or `rolled-back`, and a pull that failed for good, are
//! remembered by (image, pointer seq). The same pair is tried again only after a back-off
//! (`retry_backoff`, doubling at every failure, at most an hour), or at once when the pointer
//! changes (another image, or a new promotion of any kind). The memory starts from the state
//! file's last deploy, so a restarted agent keeps backing off. Errors that kept the deploy from
//! running (the bucket or the Docker engine unreachable, the service lock held by a hand-run
//! `s3dock deploy`) are not remembered: the next reconcile tries again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use s3dock_core::clock::Clock;
use s3dock_core::docs::{AgentRegistration, AgentState, SCHEMA_VERSION};
use s3dock_core::names::{AgentId, AppName, EnvName, ImageRef, ObjectKey};
use s3dock_core::registry::Registry;
use s3dock_core::transfer::Progress;
use s3dock_core::{ErrorKind, layout};
use s3dock_engine::DockerEngine;
use s3dock_engine::deploy::{
    DeployEvent, DeployObserver, DeployReport, DeployRequest, DeployResult, DeploySpec, Deployer, HostNetwork,
    HttpProbe, Phase, Slot, StillWanted, TrafficSwitch, Upstream,
};
use s3dock_engine::ship::{self, PullRequest, PullTarget};
use tokio_util::sync::CancellationToken;

use crate::fault::{self, FaultPoint};

/// The longest wait between two tries of a deploy that keeps failing with the same pointer.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(3600);

pub use s3dock_core::docs::{AgentStatus, Health};

/// What failed: a deploy (its result), or a pull that retrying at once cannot fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Deploy(DeployResult),
    Pull,
}

/// A deploy (or pull) that failed, and when the same pointer may be tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedDeploy {
    pub image: ImageRef,
    pub seq: u64,
    pub failure: Failure,
    pub attempts: u32,
    pub retry_at: DateTime<Utc>,
}

/// What the agent knows about a service beyond its state file.
#[derive(Debug, Clone, Default)]
pub struct ServiceStatus {
    pub status: AgentStatus,
    /// The image the pointer resolved to at the last reconcile.
    pub desired: Option<ImageRef>,
    /// The pointer seq last converged on.
    pub converged_seq: Option<u64>,
    /// The serving container's health at the last reconcile.
    pub health: Option<Health>,
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
    BackingOff { image: ImageRef, seq: u64, retry_at: DateTime<Utc> },
    /// A deploy ran (its result may be a failure).
    Deployed { report: Box<DeployReport>, seq: u64 },
    /// The pull failed for a reason that retrying at once cannot fix; backed off like a failed
    /// deploy.
    PullFailed { image: ImageRef, seq: u64, message: String },
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

    /// Whether another reconcile should follow at once: the deploy was superseded by a newer
    /// pointer.
    pub fn wants_another(&self) -> bool {
        matches!(self, Reconciled::Deployed { report, .. } if report.result == DeployResult::Superseded)
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
            Reconciled::PullFailed { image, seq, message } => format!("pulling {image} (seq {seq}) failed: {message}"),
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

    pub fn update(&self, f: impl FnOnce(&mut ServiceStatus)) {
        f(&mut lock(&self.status));
    }
}

/// Asks the pointer, right before a deploy switches, whether it still names the image being
/// deployed.
#[derive(Debug)]
struct PointerWatch {
    registry: Arc<Registry>,
    app: AppName,
    env: EnvName,
    image: ImageRef,
    image_id: Option<String>,
}

#[async_trait]
impl StillWanted for PointerWatch {
    async fn superseded(&self) -> Option<String> {
        // A pointer that cannot be read now says nothing new: the deploy goes on.
        let resolved = self.registry.resolve(&self.app, &self.env).await.ok()?;
        let now = &resolved.record;
        let other_content = match (&now.metadata.image_id, &self.image_id) {
            (Some(a), Some(b)) => a != b,
            _ => false,
        };
        (now.image != self.image || other_content).then(|| {
            let seq = resolved.pointer.as_ref().map_or(0, |p| p.seq());
            format!("the pointer of {}/{} now names {} (seq {seq})", self.app, self.env, now.image)
        })
    }
}

/// The world a reconcile talks to.
#[derive(Debug, Clone)]
pub struct World {
    pub registry: Arc<Registry>,
    pub engine: Arc<dyn DockerEngine>,
    pub clock: Arc<dyn Clock>,
    /// Health probes of the serving container (the host's network, or the fake's).
    pub net: Arc<dyn HostNetwork>,
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
                    s.status = AgentStatus::Error;
                    s.message = Some(format!("recovering an interrupted deploy: {e}"));
                });
            }
        }
    }

    /// The failure memory a restarted agent starts with: the state file's last deploy, when it
    /// failed. Without it a restart (or a crash loop) would retry a failing image at once.
    pub fn remember_last_failure(&self, svc: &Service) {
        let Ok(Some(state)) = svc.deployer.state(&svc.spec) else { return };
        let (Some(last), Some(seq)) = (state.last_deploy, state.pointer_seq) else { return };
        let result = last.result;
        if !result.is_failure() {
            return;
        }
        let Ok(image) = ImageRef::parse(&last.image) else { return };
        let retry_at = last.at + chrono::Duration::from_std(self.retry_backoff).unwrap_or(chrono::Duration::hours(1));
        svc.update(|s| {
            s.failed = Some(FailedDeploy { image, seq, failure: Failure::Deploy(result), attempts: 1, retry_at });
        });
    }

    /// One reconcile of `svc` (see the module doc), with the status updated to match.
    pub async fn reconcile(&self, svc: &Service, cancel: &CancellationToken) -> Reconciled {
        let outcome = self.reconcile_inner(svc, cancel).await;
        self.record(svc, &outcome);
        match &outcome {
            Reconciled::InSync { .. } => tracing::debug!(service = %svc.name(), "{}", outcome.describe()),
            Reconciled::Error { .. } | Reconciled::PullFailed { .. } => {
                tracing::error!(service = %svc.name(), "{}", outcome.describe())
            }
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
        let want_id = resolved.record.metadata.image_id.clone();
        let seq = resolved.pointer.as_ref().map_or(0, |p| p.seq());
        svc.update(|s| s.desired = Some(image.clone()));

        // 2. How the serving container is doing, whatever it runs.
        let state = match svc.deployer.state(&svc.spec) {
            Ok(s) => s,
            Err(e) => return Reconciled::Error { message: e.to_string() },
        };
        let idle = state.as_ref().is_none_or(|s| s.phase == Phase::Idle);
        let serving = match state.as_ref().and_then(|s| s.old.as_ref()) {
            Some(slot) => self.serving(svc, slot).await,
            None => None,
        };
        svc.update(|s| s.health = serving.as_ref().map(|(h, _)| *h));

        // 3. Already there? The same image *content*: a tag re-pushed with new content has
        // another id and is deployed again.
        if idle
            && let Some(slot) = state.as_ref().and_then(|s| s.old.as_ref())
            && slot.image == image
            && let Some((health, running_id)) = &serving
            && want_id.as_ref().is_none_or(|want| want == running_id)
            && *health == Health::Healthy
        {
            return Reconciled::InSync { image, seq };
        }

        // 4. Failed before with this very pointer?
        if let Some(f) = svc.status().failed
            && f.image == image
            && f.seq == seq
            && self.clock.now() < f.retry_at
        {
            if !idle {
                self.recover(svc, cancel).await;
            }
            return Reconciled::BackingOff { image: f.image, seq, retry_at: f.retry_at };
        }

        // 5. Pull, then converge.
        svc.update(|s| {
            s.status = AgentStatus::Deploying;
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
            // Unreachable bucket or engine: the next reconcile tries again. Anything else (a
            // full disk, an archive that is not what its metadata says) fails the same way
            // every time: backed off like a failed deploy.
            Err(e) if e.is_retryable() => return Reconciled::Error { message: format!("pulling {image}: {e}") },
            Err(e) => return Reconciled::PullFailed { image, seq, message: e.to_string() },
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
        let watch = PointerWatch {
            registry: self.registry.clone(),
            app: app.clone(),
            env: env.clone(),
            image: image.clone(),
            image_id: pulled.resolved.record.metadata.image_id.clone(),
        };
        let req = DeployRequest {
            image: image.clone(),
            pointer_seq: Some(seq),
            pull_time: Some(started.elapsed()),
            still_wanted: Some(Arc::new(watch)),
        };
        match svc.deployer.converge(&svc.spec, &req, cancel).await {
            Ok(report) => Reconciled::Deployed { report: Box::new(report), seq },
            Err(e) if cancel.is_cancelled() => {
                tracing::warn!(service = %svc.name(), error = %e, "deploy stopped by shutdown");
                Reconciled::Cancelled
            }
            Err(e) => Reconciled::Error { message: format!("deploying {image}: {e}") },
        }
    }

    /// The health of the container a slot names, and the image id it runs, when it is the one
    /// running under its color's name and the driver routes to it; `None` when it is not (then
    /// the service is not in sync, whatever the state file says).
    async fn serving(&self, svc: &Service, slot: &Slot) -> Option<(Health, String)> {
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
        let routed = match svc.traffic.routed().await {
            Ok(r) => r,
            Err(_) => svc.traffic.current().await.ok().flatten(),
        };
        if !routed.is_some_and(|r| r.same_as(&up)) {
            return None;
        }
        let h = &svc.spec.health;
        let probe = HttpProbe::new(&up.host, up.port, &h.path);
        let health = match self.net.http_status(&probe, h.timeout).await {
            Ok(code) if (200..300).contains(&code) => Health::Healthy,
            _ => Health::Unhealthy,
        };
        Some((health, info.image_id))
    }

    /// Folds an outcome into the service's status (what the next registration reports).
    fn record(&self, svc: &Service, outcome: &Reconciled) {
        let now = self.clock.now();
        let backoff = self.retry_backoff;
        let remember = |s: &mut ServiceStatus, image: &ImageRef, seq: u64, failure: Failure| {
            let attempts = match &s.failed {
                Some(f) if f.image == *image && f.seq == seq => f.attempts + 1,
                _ => 1,
            };
            let wait = backoff.saturating_mul(1 << (attempts - 1).min(16)).min(MAX_RETRY_BACKOFF.max(backoff));
            let retry_at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
            s.failed = Some(FailedDeploy { image: image.clone(), seq, failure, attempts, retry_at });
        };
        svc.update(|s| {
            s.phase = None;
            match outcome {
                Reconciled::NoPointer => {
                    s.status = AgentStatus::NoPointer;
                    s.desired = None;
                    s.message = Some("the environment has no pointer: nothing to deploy".into());
                }
                Reconciled::InSync { image, seq } => {
                    s.status = AgentStatus::Converged;
                    s.desired = Some(image.clone());
                    s.converged_seq = Some(*seq);
                    s.health = Some(Health::Healthy);
                    s.message = None;
                    s.failed = None;
                }
                Reconciled::BackingOff { .. } => {
                    s.status = AgentStatus::Failed;
                }
                Reconciled::Deployed { report, seq } => match report.result {
                    DeployResult::Succeeded | DeployResult::Unchanged => {
                        s.status = AgentStatus::Converged;
                        s.desired = Some(report.image.clone());
                        s.converged_seq = Some(*seq);
                        s.health = Some(Health::Healthy);
                        s.message = None;
                        s.failed = None;
                    }
                    DeployResult::Failed | DeployResult::RolledBack => {
                        s.status = AgentStatus::Failed;
                        s.message = report.message.clone();
                        remember(s, &report.image, *seq, Failure::Deploy(report.result));
                    }
                    // Not the image's fault: the next reconcile (at once) deploys what the
                    // pointer names now.
                    DeployResult::Superseded => {
                        s.status = AgentStatus::Deploying;
                        s.message = report.message.clone();
                    }
                },
                Reconciled::PullFailed { image, seq, message } => {
                    s.status = AgentStatus::Failed;
                    s.message = Some(format!("pulling {image}: {message}"));
                    remember(s, image, *seq, Failure::Pull);
                }
                Reconciled::Error { message } => {
                    s.status = AgentStatus::Error;
                    s.message = Some(message.clone());
                }
                Reconciled::Cancelled => {}
            }
        });
    }

    /// After a failed deploy: when the Docker engine no longer answers, the failure is the
    /// engine's, not the image's, and it must not be held against the pointer.
    pub async fn forgive_if_engine_down(&self, svc: &Service, outcome: &mut Reconciled) {
        let image = match outcome {
            Reconciled::Deployed { report, .. } if report.result.is_failure() => report.image.clone(),
            Reconciled::PullFailed { image, .. } => image.clone(),
            _ => return,
        };
        if let Err(e) = self.engine.version().await {
            let message = format!(
                "the deploy of {image} failed and the Docker engine does not answer ({e}); the next reconcile tries again"
            );
            svc.update(|s| {
                s.failed = None;
                s.status = AgentStatus::Error;
                s.message = Some(message.clone());
            });
            *outcome = Reconciled::Error { message };
        }
    }

    /// The registration `svc` reports now: the queue, the heartbeat, and its state (what serves
    /// comes from the deployer's state file, so it survives restarts).
    pub fn registration(&self, svc: &Service, override_status: Option<AgentStatus>) -> AgentRegistration {
        let st = svc.status();
        let file = match svc.deployer.state(&svc.spec) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(service = %svc.name(), error = %e, "cannot read the state file for the registration");
                None
            }
        };
        let serving = file.as_ref().and_then(|f| f.old.clone());
        // Since when the serving container has the traffic: not the start of a later deploy
        // that failed.
        let since = file
            .as_ref()
            .filter(|_| serving.is_some())
            .and_then(|f| f.serving_since.or(f.switched_at).or(f.started_at));
        let status_now = override_status.unwrap_or(st.status);
        // While a deploy runs, the message says how far it got.
        let message = match (status_now, st.phase) {
            (AgentStatus::Deploying, Some(phase)) => Some(format!("deploy phase: {phase}")),
            _ => st.message.clone(),
        };
        let state = AgentState {
            image: serving.as_ref().map(|s| s.image.to_string()),
            image_id: serving.as_ref().and_then(|s| s.image_id.clone()),
            color: serving.as_ref().map(|s| s.color.to_string()),
            since,
            health: serving.as_ref().map(|_| st.health.unwrap_or(Health::Unknown)),
            last_deploy: file.and_then(|f| f.last_deploy),
            pointer_seq: st.converged_seq,
            desired: st.desired.as_ref().map(ImageRef::to_string),
            status: Some(status_now),
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
        override_status: Option<AgentStatus>,
    ) -> Result<(), s3dock_core::store::StoreError> {
        let _one_at_a_time = svc.write_lock.lock().await;
        let doc = self.registration(svc, override_status);
        let body = bytes::Bytes::from(s3dock_core::docs::encode(&doc));
        self.registry.store().put_bytes(&svc.key, body, s3dock_core::store::Precondition::None).await?;
        Ok(())
    }
}
