//! One deploy of one service, holding its lock: the sequence of [`crate::deploy`], step by
//! step, with the comments that say why each step is where it is.

use std::collections::BTreeMap;
use std::time::Duration;

use s3dock_core::names::ImageRef;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{DeployError, DeployReport, DeployRequest, DeployResult, Deployer};
use crate::deploy::health::{HealthCheck, HealthFailure};
use crate::deploy::net::show_addr;
use crate::deploy::spec::{Color, DeploySpec, Secret};
use crate::deploy::state::{DeployState, Phase, ServiceLock, Slot, StateError, StateFiles};
use crate::deploy::traffic::Upstream;
use crate::deploy::{DeployEvent, LABEL_APP, LABEL_COLOR, LABEL_DEPLOY_ID, LABEL_ENV, LABEL_IMAGE, LABEL_INSTANCE};
use crate::docker::{ContainerInfo, ContainerSpec, EngineError, PortPublish, Protocol};
use crate::ship;

/// How a deploy's steps stop early: a failure to report (before the switch: undone by
/// removing the new container), a deploy the caller no longer wants (undone the same way), or
/// an error that stops the deployer itself.
pub(super) enum Halt {
    Fail(String),
    Superseded(String),
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
pub(super) struct Outcome {
    pub result: DeployResult,
    pub message: Option<String>,
    /// True when the state file can go idle: traffic is known to be on `state.old`. Otherwise
    /// the state keeps its phase for the next run to settle.
    pub settled: bool,
    /// The container traffic is on afterwards, when known.
    pub serving: Option<Slot>,
}

pub(super) enum Drained {
    Done,
    /// Shutdown came during the grace period: the previous container is left for the next
    /// start, and the state file stays in `draining`.
    Deferred(String),
    /// Traffic is fine, but the previous container could not be stopped or removed; the next
    /// deploy removes it as a leftover.
    Leftover(String),
}

/// Where traffic goes, from the driver.
#[derive(Debug, Clone)]
pub(super) struct Routing {
    /// What the driver last wrote.
    pub record: Option<Upstream>,
    /// What the routing itself answers ([`crate::deploy::TrafficSwitch::routed`]); the record
    /// when it cannot be asked.
    pub routed: Option<Upstream>,
}

/// One deploy or recovery of one service, holding its lock.
pub(super) struct Run<'a> {
    pub d: &'a Deployer,
    pub spec: &'a DeploySpec,
    pub files: StateFiles,
    pub state: DeployState,
    pub cancel: &'a CancellationToken,
    /// The container's environment values, to redact from its logs.
    pub secrets: Vec<String>,
    pub _lock: ServiceLock,
}

impl Run<'_> {
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.d.clock.now()
    }

    pub fn name(&self, color: Color) -> String {
        self.spec.container_name(color)
    }

    pub fn upstream(&self, color: Color) -> Upstream {
        Upstream { host: self.spec.upstream_host().to_string(), port: self.spec.ports.port(color), color }
    }

    pub fn health<'b>(&'b self, container: &'b str, color: Color) -> HealthCheck<'b> {
        HealthCheck {
            engine: &*self.d.engine,
            net: &*self.d.net,
            container,
            color,
            host: self.spec.upstream_host().to_string(),
            port: self.spec.ports.port(color),
            spec: &self.spec.health,
            secrets: &self.secrets,
        }
    }

    /// Records `phase` (atomically, see [`crate::deploy::state::write_atomic`]) before the
    /// phase's first action, then tells the observer.
    pub async fn save(&mut self, phase: Phase) -> Result<(), StateError> {
        self.state.phase = phase;
        self.state.updated_at = self.now();
        self.files.save(&self.state)?;
        if let Some(o) = &self.d.observer {
            o.event(&DeployEvent::Phase { phase, color: self.state.new.as_ref().map(|s| s.color) }).await;
        }
        Ok(())
    }

    /// Where traffic goes. The routing's own answer when the driver can give one; when it
    /// cannot be asked (nginx down, a file written by hand before the first deploy), the
    /// driver's record.
    pub async fn routing(&self) -> Result<Routing, DeployError> {
        let record = self.d.traffic.current().await?;
        let routed = match self.d.traffic.routed().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(app = %self.spec.app, env = %self.spec.env, error = %e,
                    "cannot ask the routing where traffic goes; going by the driver's record");
                record.clone()
            }
        };
        Ok(Routing { record, routed })
    }

    /// Traffic goes to `to` (and the record says so): the state the deployer wants after every
    /// switch.
    pub fn routes_to(routing: &Routing, to: &Upstream) -> bool {
        routing.routed.as_ref().is_some_and(|r| r.same_as(to)) && routing.record.as_ref().is_some_and(|r| r.same_as(to))
    }

    /// The service's container of `color`, if any. A container holding the name without the
    /// service's labels is refused rather than touched.
    pub async fn container(&self, color: Color) -> Result<Option<ContainerInfo>, DeployError> {
        let name = self.name(color);
        let Some(info) = self.d.engine.inspect_container(&name).await? else { return Ok(None) };
        // An empty instance label is no instance: the deployer sets it empty on purpose, so an
        // instance label the image itself carries does not leak into its containers.
        let instance = info.labels.get(LABEL_INSTANCE).map(String::as_str).filter(|i| !i.is_empty());
        let ours = info.labels.get(LABEL_APP).map(String::as_str) == Some(self.spec.app.as_str())
            && info.labels.get(LABEL_ENV).map(String::as_str) == Some(self.spec.env.as_str())
            && instance == self.spec.instance.as_deref();
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
    pub async fn remove_color(&self, color: Color) -> Result<(), DeployError> {
        if let Some(info) = self.container(color).await? {
            self.d.engine.remove_container(&info.id, true).await?;
        }
        Ok(())
    }

    pub fn describe(slot: Option<&Slot>) -> String {
        match slot {
            Some(s) => format!("{} ({})", s.color, s.image),
            None => "nothing".to_owned(),
        }
    }

    // ------------------------------------------------------------------ deploy

    pub async fn deploy(&mut self, req: &DeployRequest) -> Result<DeployReport, DeployError> {
        let began = Instant::now();
        let mut timings: BTreeMap<String, Duration> = BTreeMap::new();
        if let Some(pull) = req.pull_time {
            timings.insert("pull".into(), pull);
        }
        // A deploy interrupted earlier is settled first: the steps below assume an idle state.
        let recovered = if self.state.phase != Phase::Idle {
            let t = Instant::now();
            let r = match self.settle().await {
                Ok(r) => r,
                // A rollback waiting for its old container to be healthy again: given up only
                // when another image is wanted now.
                Err(DeployError::Incomplete { .. })
                    if self.state.phase == Phase::RollingBack
                        && self.state.new.as_ref().is_some_and(|n| n.image != req.image) =>
                {
                    self.give_up_rollback().await?
                }
                Err(e) => return Err(e),
            };
            timings.insert("recover".into(), t.elapsed());
            Some(r)
        } else {
            None
        };
        if self.cancel.is_cancelled() {
            return Err(DeployError::Cancelled { what: "the deploy was not started".into() });
        }

        let desired = req.image.clone();
        // The image must be in the engine (the caller pulls); its id also tells a re-pushed tag
        // apart from the content already running under the same name.
        let image = self
            .d
            .engine
            .inspect_image(&desired.to_string())
            .await?
            .ok_or_else(|| EngineError::ImageNotFound { reference: desired.to_string() })?;

        // Where traffic is. What the routing proves is the authority (it is what serves); the
        // state file fills in when the driver knows nothing (e.g. the nginx file was deleted).
        let routing = self.routing().await?;
        let serving_color = routing.routed.as_ref().map(|u| u.color).or(self.state.old.as_ref().map(|s| s.color));
        let serving = match serving_color {
            Some(c) => self.container(c).await?,
            None => None,
        };

        // Step 1: already there? The serving container runs this exact image, the routing goes
        // to it, and it passes its health check now: nothing to do, nothing audited (an agent
        // asks this at every reconcile).
        if let (Some(color), Some(info)) = (serving_color, &serving)
            && info.running
            && info.image_id == image.id
            && Self::routes_to(&routing, &self.upstream(color))
        {
            match self.health(&info.id, color).wait(self.cancel, None).await {
                Ok(()) => {
                    let slot = Slot {
                        color,
                        container_id: Some(info.id.clone()),
                        image: desired.clone(),
                        image_id: Some(image.id.clone()),
                    };
                    // A container of the other color has no traffic: a leftover of a recovery
                    // that found nothing healthy, or of a deploy that could not remove it.
                    self.remove_leftover(color.other()).await;
                    if self.state.old.as_ref() != Some(&slot) {
                        // Re-learnt from the containers and the driver (a lost state directory).
                        if self.state.serving_since.is_none() {
                            self.state.serving_since = info.started_at.or(Some(self.now()));
                        }
                        self.state.old = Some(slot);
                        self.save(Phase::Idle).await?;
                    }
                    return Ok(DeployReport {
                        deploy_id: None,
                        app: self.spec.app.clone(),
                        env: self.spec.env.clone(),
                        image: req.image.clone(),
                        image_id: Some(image.id.clone()),
                        result: DeployResult::Unchanged,
                        color: Some(color),
                        container_id: Some(info.id.clone()),
                        previous_image: Some(desired.to_string()),
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
            (Some(color), Some(info)) => Some(Slot {
                color,
                container_id: Some(info.id.clone()),
                // Containers always carry the image label; one without it (made by hand) is
                // described by the state file's belief, or as it reports its image.
                image: ImageRef::parse(&info.image)
                    .ok()
                    .or_else(|| info.labels.get(LABEL_IMAGE).and_then(|i| ImageRef::parse(i).ok()))
                    .or_else(|| self.state.slot(color).map(|s| s.image.clone()))
                    .unwrap_or_else(|| desired.clone()),
                image_id: Some(info.image_id.clone()),
            }),
            _ => None,
        };
        let previous_image = old.as_ref().map(|s| s.image.to_string());
        // A foreign container holding the new color's name is refused now, before the state
        // file records a deploy that could not proceed.
        self.container(new_color).await?;
        let deploy_id = uuid::Uuid::new_v4().simple().to_string();
        tracing::info!(app = %self.spec.app, env = %self.spec.env, image = %desired, color = %new_color,
            deploy_id = %deploy_id, "deploying");
        let serving_since = if old.is_some() { self.state.serving_since } else { None };
        self.state = DeployState {
            phase: Phase::Starting,
            old,
            new: Some(Slot { color: new_color, container_id: None, image: desired.clone(), image_id: Some(image.id) }),
            deploy_id: Some(deploy_id.clone()),
            started_at: Some(self.now()),
            pointer_seq: req.pointer_seq,
            switched_at: None,
            serving_since,
            ..self.state.clone()
        };
        // From here on the state file says a deploy is in flight: whatever happens next, a
        // restart knows what to settle.
        self.save(Phase::Starting).await?;

        let outcome = match self.forward(req, &mut timings).await {
            Ok(o) => o,
            Err(Halt::Fatal(e)) => return Err(e),
            Err(Halt::Fail(reason)) => self.abandon(reason, DeployResult::Failed).await?,
            Err(Halt::Superseded(reason)) => self.abandon(reason, DeployResult::Superseded).await?,
        };

        let serving_slot = outcome.serving.clone();
        let mut report = DeployReport {
            deploy_id: Some(deploy_id),
            app: self.spec.app.clone(),
            env: self.spec.env.clone(),
            image: req.image.clone(),
            image_id: self.state.new.as_ref().or(self.state.old.as_ref()).and_then(|s| s.image_id.clone()),
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
        if report.result == DeployResult::Succeeded {
            report.image_id = serving_slot.as_ref().and_then(|s| s.image_id.clone());
        }
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

    /// Removes the service's container of `color` when it has no traffic: only called for the
    /// color the routing does not go to.
    async fn remove_leftover(&self, color: Color) {
        match self.container(color).await {
            Ok(Some(info)) => {
                tracing::info!(app = %self.spec.app, env = %self.spec.env, %color,
                    "removing a leftover container that has no traffic");
                if let Err(e) = self.d.engine.remove_container(&info.id, true).await {
                    tracing::warn!(error = %e, "could not remove a leftover container; the next deploy does");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "not touching the other color's container"),
        }
    }

    /// Steps 2 to 5 of the sequence. Before the switch a failure is a [`Halt::Fail`], undone
    /// by the caller ([`Run::abandon`]); from the switch on, failures are handled here.
    async fn forward(
        &mut self,
        req: &DeployRequest,
        timings: &mut BTreeMap<String, Duration>,
    ) -> Result<Outcome, Halt> {
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
        // And the last point where the caller may change its mind (a rollback promoted while
        // this image was being checked): the superseded image never takes the traffic.
        if let Some(still) = &req.still_wanted
            && let Some(why) = still.superseded().await
        {
            return Err(Halt::Superseded(format!("superseded before the switch: {why}")));
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
        // The switch returned. A crash from here on finds `verifying` and keeps traffic on the
        // new container if it still passes its check and its verification.
        self.state.switched_at = Some(self.now());
        self.save(Phase::Verifying).await?;

        // ---- verify
        // Runs even after shutdown: it finishes (or undoes) the switch already made, within
        // verify_deadline. First the proof that traffic moved, then the traffic path.
        let t = Instant::now();
        let verified = self.verify(&to).await;
        timings.insert("verify".into(), t.elapsed());
        if let Err(reason) = verified {
            return self.roll_back(reason, true, timings).await.map_err(Halt::Fatal);
        }
        // Proven: the drain's grace counts from here.
        self.state.switched_at = Some(self.now());
        self.state.serving_since = self.state.switched_at;

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
        let serving = Slot { container_id: Some(id), ..new.clone() };
        if settled {
            // The new container becomes the one serving.
            self.state.old = Some(serving.clone());
            self.state.new = None;
        }
        // Otherwise the state file stays `draining` with `old` (to drain) and `new` (serving):
        // exactly what the next start's recovery finishes.
        // Older images go, the newest `keep_images` stay for an instant rollback; images a
        // container uses, or that were pulled moments ago (for another environment of the same
        // app, about to be deployed), are never removed.
        match ship::remove_old_images(&*self.d.engine, &new.image, self.spec.keep_images).await {
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
        if let Some(problem) = self.d.net.port_in_use(self.spec.bind, port).await {
            return Err(Halt::Fail(format!(
                "host port {} (ports.{color}) {problem}; free it or change ports.{color}",
                show_addr(self.spec.bind, port)
            )));
        }
        let env = self.spec.container_env().map_err(|e| Halt::Fail(e.to_string()))?;
        self.secrets = env.iter().map(|(_, v)| v.expose().to_owned()).collect();
        let spec = self.container_spec(color, &new.image.to_string(), env);
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
    async fn abandon(&mut self, reason: String, result: DeployResult) -> Result<Outcome, DeployError> {
        let color = self.state.new.as_ref().map(|s| s.color);
        let created = self.state.new.as_ref().is_some_and(|s| s.container_id.is_some());
        let kept = Self::describe(self.state.old.as_ref());
        let removed = match color {
            Some(c) => self.remove_color(c).await,
            None => Ok(()),
        };
        Ok(match removed {
            Ok(()) => Outcome {
                result,
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
                result,
                message: Some(format!(
                    "{reason}; removing the new container failed too ({e}), the next run removes it; traffic stays on {kept}"
                )),
                settled: false,
                serving: self.state.old.clone(),
            },
        })
    }

    fn container_spec(&self, color: Color, image: &str, env: Vec<(String, Secret)>) -> ContainerSpec {
        let spec = self.spec;
        let mut vars: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k, v.expose().to_owned())).collect();
        // Last, so they win over variables of the same name from the spec.
        vars.extend([
            ("S3DOCK_APP".to_owned(), spec.app.to_string()),
            ("S3DOCK_ENV".to_owned(), spec.env.to_string()),
            ("S3DOCK_COLOR".to_owned(), color.to_string()),
            ("S3DOCK_IMAGE".to_owned(), image.to_owned()),
        ]);
        // Every label s3dock reads is set, the instance one empty when there is none: Docker
        // gives a container its image's labels unless the container sets them, and an image's
        // own io.s3dock.instance would otherwise make the container look like another's.
        let labels = BTreeMap::from([
            (LABEL_APP.to_owned(), spec.app.to_string()),
            (LABEL_ENV.to_owned(), spec.env.to_string()),
            (LABEL_COLOR.to_owned(), color.to_string()),
            (LABEL_IMAGE.to_owned(), image.to_owned()),
            (LABEL_DEPLOY_ID.to_owned(), self.state.deploy_id.clone().unwrap_or_default()),
            (LABEL_INSTANCE.to_owned(), spec.instance.clone().unwrap_or_default()),
        ]);
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
}
