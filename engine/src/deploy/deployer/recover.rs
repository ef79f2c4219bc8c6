//! Settling a deploy the state file says was in flight (a crash, a kill, a shutdown in the
//! drain). What each phase converges to is in the module doc of [`crate::deploy`].

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::{DeployError, DeployReport, DeployResult, RecoverReport};
use super::run::{Drained, Run};
use crate::deploy::LABEL_DEPLOY_ID;
use crate::deploy::health::HealthFailure;
use crate::deploy::state::{Phase, Slot};

impl Run<'_> {
    /// Settles the interrupted deploy:
    ///
    /// - `starting`, `health-check`: the switch never began, so the new container never had
    ///   traffic. If it runs, is this deploy's and passes its health check now, the deploy goes
    ///   on with it (as below); otherwise it is removed and traffic stays on the old container.
    /// - `switching`, `verifying`, `rolling-back`, `draining`: traffic may be on either color.
    ///   Health check the containers now, preferring the direction the deploy was going (back
    ///   to the old one when it was rolling back, forward otherwise); put traffic on the first
    ///   that passes, prove the switch and verify it like any other (a recovery that kept an
    ///   image nobody verified would drain the good container); then drain and remove the
    ///   other.
    /// - When none passes (a database outage, a host still booting): nothing is removed and
    ///   traffic stays where it is routed — the one container that serves is never taken away
    ///   without a healthy replacement. See [`Run::keep_what_serves`].
    pub async fn settle(&mut self) -> Result<RecoverReport, DeployError> {
        let found = self.state.phase;
        tracing::warn!(app = %self.spec.app, env = %self.spec.env, phase = %found,
            "settling a deploy that was interrupted");
        let routing = self.routing().await?;
        let new = self.state.new.clone();
        let old = self.state.old.clone();
        let routed_color = routing.routed.as_ref().map(|u| u.color);
        let traffic_on_new = matches!((routed_color, &new), (Some(c), Some(n)) if c == n.color);

        // Before the switch the new container never had traffic. One that runs, is this
        // deploy's, and passes its health check now may still take it (the general path below
        // switches to it and verifies it); any other goes.
        let new_usable = match (&new, found) {
            (Some(n), Phase::Starting | Phase::HealthCheck) if !traffic_on_new => self.still_usable(n).await?,
            _ => true,
        };
        if matches!(found, Phase::Starting | Phase::HealthCheck) && !traffic_on_new && !new_usable {
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
        let mut switched = false;
        let mut new_failed_verification = false;
        let mut old_failed_health = false;
        let mut why_not: Vec<String> = Vec::new();
        for slot in order {
            let Some(info) = self.container(slot.color).await? else {
                why_not.push(format!("{} is gone", slot.color));
                continue;
            };
            // Someone replaced the container since: it is not the one the state describes.
            if !info.running || slot.container_id.as_deref().is_some_and(|id| id != info.id) {
                why_not.push(format!("{} is not the running container the state file names", slot.color));
                continue;
            }
            match self.health(&info.id, slot.color).wait(self.cancel, None).await {
                Ok(()) => {}
                Err(HealthFailure::Cancelled) => {
                    return Err(DeployError::Cancelled {
                        what: format!("recovery was stopped; the state file keeps the phase {found}"),
                    });
                }
                Err(e) => {
                    tracing::warn!(color = %slot.color, error = %e, "not healthy: not a candidate for traffic");
                    why_not.push(format!("{} is not healthy ({e})", slot.color));
                    old_failed_health |= old.as_ref().is_some_and(|o| o.color == slot.color);
                    continue;
                }
            }
            // Put the traffic on it, unless the routing provably goes there already (after
            // `switching` or `rolling-back` the record may be ahead of what routes: the nginx
            // file renamed, the reload not done).
            let up = self.upstream(slot.color);
            if !Self::routes_to(&self.routing().await?, &up) {
                if let Err(e) = self.d.traffic.switch(&up).await {
                    if e.traffic_unchanged() {
                        why_not.push(format!("switching to {} was refused ({e})", slot.color));
                        continue;
                    }
                    return Err(self.incomplete(format!("switching traffic to the healthy {up} failed: {e}")));
                }
                self.state.switched_at = Some(self.now());
                switched = true;
            }
            match self.verify(&up).await {
                Ok(()) => {
                    chosen = Some(Slot { container_id: Some(info.id.clone()), ..slot });
                    break;
                }
                Err(e) => {
                    tracing::warn!(color = %slot.color, error = %e, "not verified: not kept as the serving container");
                    why_not.push(format!("{} is not verified ({e})", slot.color));
                    new_failed_verification |= new.as_ref().is_some_and(|n| n.color == slot.color);
                }
            }
        }

        let Some(chosen) = chosen else {
            // Worth waiting for the old container when the deploy was being undone (or its new
            // image just failed verification) and the old one still runs but fails its health
            // check: it is the one known to be good, unhealthy only for now. One that is healthy
            // but fails verification too will not get better by waiting.
            let back_to_old = (found == Phase::RollingBack || new_failed_verification) && old_failed_health;
            return self.keep_what_serves(found, new.as_ref(), &why_not, back_to_old).await;
        };

        // From here it is the end of a deploy to `chosen`: drain the other color.
        let forward = new.as_ref().is_some_and(|n| n.color == chosen.color);
        if switched {
            self.state.serving_since = self.state.switched_at;
        } else if forward {
            self.state.serving_since = self.state.switched_at.or(self.state.serving_since);
        }
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

    /// No container can take the traffic now (nothing passes its health check and its
    /// verification). Whatever the routing goes to keeps it — removing it would leave nothing
    /// serving — and nothing else is removed either. The driver's record is put back in line
    /// with what routes, so a reload someone else triggers cannot move traffic to a container
    /// that failed its check.
    ///
    /// A deploy that was going forward (to its new image) is given up: the state file records
    /// what serves and goes idle, so the deploy that follows starts a fresh container in the
    /// other color and switches once it is healthy. A deploy that was rolling back, or whose
    /// new image just failed its verification, is not when its old container still runs: that
    /// one is known to be good, so the state says `rolling-back` and the next run goes back to
    /// it once it passes its check (a deploy of another image gives the rollback up, see
    /// [`Run::give_up_rollback`]).
    async fn keep_what_serves(
        &mut self,
        found: Phase,
        new: Option<&Slot>,
        why_not: &[String],
        back_to_old: bool,
    ) -> Result<RecoverReport, DeployError> {
        let routing = self.routing().await?;
        if let Some(routed) = &routing.routed
            && !routing.record.as_ref().is_some_and(|r| r.same_as(routed))
            && let Err(e) = self.d.traffic.switch(routed).await
        {
            return Err(self.incomplete(format!(
                "no container passes its health check, and putting the driver's record back on {routed} (where traffic goes) failed: {e}"
            )));
        }
        let routed_color = routing.routed.as_ref().map(|u| u.color);
        let reasons = why_not.join("; ");
        if back_to_old {
            self.save(Phase::RollingBack).await?;
            let on = routed_color.map_or_else(|| "nothing".to_owned(), |c| c.to_string());
            return Err(self.incomplete(format!(
                "rolling back, and no container can take the traffic now ({reasons}); traffic stays on {on}, nothing was removed"
            )));
        }
        self.serve_routed(routed_color).await?;
        let action = format!(
            "the deploy was interrupted during {found} and no container can take the traffic now ({reasons}): traffic stays on {}, nothing was removed; the next deploy starts a fresh container and switches once it is healthy",
            Self::describe(self.state.old.as_ref())
        );
        tracing::warn!(app = %self.spec.app, env = %self.spec.env, "{action}");
        self.finish_recovery(DeployResult::Failed, &action, new).await?;
        Ok(RecoverReport { found, serving: routed_color, action })
    }

    /// Records the container of `color` (the one traffic goes to) as serving, the other as
    /// nothing: it has no traffic, and the next deploy removes it when it needs its color.
    async fn serve_routed(&mut self, color: Option<crate::deploy::spec::Color>) -> Result<(), DeployError> {
        let serving = match color {
            Some(color) => {
                let id = self.container(color).await?.map(|i| i.id);
                self.state.slot(color).cloned().map(|s| Slot { container_id: id.or(s.container_id.clone()), ..s })
            }
            None => self.state.old.clone(),
        };
        if serving.as_ref().map(|s| s.color) != self.state.old.as_ref().map(|s| s.color) {
            self.state.serving_since = self.state.switched_at;
        }
        self.state.old = serving;
        self.state.new = None;
        Ok(())
    }

    /// An interrupted rollback that cannot finish (nothing healthy to go back to) is given up
    /// when the caller wants another image: the pointer moved on, so the old container is no
    /// longer the one to return to. What the routing goes to is recorded as serving and the
    /// state goes idle; the deploy of the new image proceeds from there.
    pub async fn give_up_rollback(&mut self) -> Result<RecoverReport, DeployError> {
        let found = self.state.phase;
        let routed_color = self.routing().await?.routed.map(|u| u.color);
        let new = self.state.new.clone();
        self.serve_routed(routed_color).await?;
        let action = format!(
            "an interrupted rollback could not finish (nothing healthy to go back to) and another image is wanted now: traffic stays on {} until the new image is healthy",
            Self::describe(self.state.old.as_ref())
        );
        self.finish_recovery(DeployResult::Failed, &action, new.as_ref()).await?;
        Ok(RecoverReport { found, serving: routed_color, action })
    }

    /// The new container of an interrupted deploy runs, carries this deploy's id, and passes
    /// its health check now.
    async fn still_usable(&self, new: &Slot) -> Result<bool, DeployError> {
        let Some(info) = self.container(new.color).await? else { return Ok(false) };
        let this_deploy = info.labels.get(LABEL_DEPLOY_ID).is_some_and(|id| Some(id) == self.state.deploy_id.as_ref());
        if !info.running || !this_deploy || new.container_id.as_deref().is_some_and(|id| id != info.id) {
            return Ok(false);
        }
        match self.health(&info.id, new.color).wait(self.cancel, None).await {
            Ok(()) => Ok(true),
            Err(HealthFailure::Cancelled) => Err(DeployError::Cancelled {
                what: format!("recovery was stopped; the state file keeps the phase {}", self.state.phase),
            }),
            Err(_) => Ok(false),
        }
    }

    fn incomplete(&self, message: String) -> DeployError {
        DeployError::Incomplete { app: self.spec.app.to_string(), env: self.spec.env.to_string(), message }
    }

    /// Audits the settled deploy (a record of its own, `...-recovered`, so it never collides
    /// with one the interrupted run may have written) and makes the state idle.
    async fn finish_recovery(
        &mut self,
        result: DeployResult,
        action: &str,
        new: Option<&Slot>,
    ) -> Result<(), DeployError> {
        if let Some(new) = new {
            let report = DeployReport {
                deploy_id: self.state.deploy_id.clone(),
                app: self.spec.app.clone(),
                env: self.spec.env.clone(),
                image: new.image.clone(),
                image_id: new.image_id.clone(),
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
}
