//! After the switch: proving it, verifying it, switching back, and draining the container
//! traffic left.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::model::{DeployError, DeployResult};
use super::run::{Drained, Outcome, Run};
use crate::deploy::health::probe;
use crate::deploy::net::HttpProbe;
use crate::deploy::spec::{Color, HttpTarget, show_duration};
use crate::deploy::state::Phase;
use crate::deploy::traffic::Upstream;

/// How often the deployer asks the routing whether a switch took effect.
const PROOF_POLL: Duration = Duration::from_millis(50);

impl Run<'_> {
    /// After a switch that failed (`switched` false: traffic may have moved) or whose proof or
    /// verification failed (`switched` true: the driver said it moved).
    pub(super) async fn roll_back(
        &mut self,
        reason: String,
        switched: bool,
        timings: &mut BTreeMap<String, Duration>,
    ) -> Result<Outcome, DeployError> {
        self.save(Phase::RollingBack).await?;
        let t = Instant::now();
        let new = self.state.new.clone().expect("rolling back a deploy that has a new slot");
        let old = self.state.old.clone();
        // The old container can take traffic back only if it still runs (it served until the
        // switch and is only stopped after the drain) and passes its health check now: traffic
        // never moves to a container that has not just passed it, not even back.
        let mut old_unhealthy = None;
        let old_runs = match &old {
            Some(o) => match self.container(o.color).await {
                Ok(Some(i)) if i.running && o.container_id.as_deref().is_none_or(|id| id == i.id) => {
                    match self.health(&i.id, o.color).wait(&CancellationToken::new(), None).await {
                        Ok(()) => true,
                        Err(e) => {
                            old_unhealthy = Some(e.to_string());
                            false
                        }
                    }
                }
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot inspect the previous container; not switching back to it");
                    false
                }
            },
            None => false,
        };
        let outcome = match old {
            Some(old) if old_runs => {
                let back = self.upstream(old.color);
                let switched_back = match self.d.traffic.switch(&back).await {
                    Ok(()) => self.prove(&back, Instant::now() + self.spec.verify_deadline).await,
                    Err(e) => Err(e.to_string()),
                };
                match switched_back {
                    Ok(()) => {
                        self.state.switched_at = Some(self.now());
                        // The new container may still be answering requests accepted while it
                        // had traffic (nginx's previous workers finish theirs): it gets the same
                        // grace an old container gets before it is removed.
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
                    // health checks, so whichever gets traffic is safe; keep both and let the
                    // next run settle it (the state file stays `rolling-back`).
                    Err(e) => Outcome {
                        result: DeployResult::Failed,
                        message: Some(format!(
                            "{reason}; switching back to {} failed too ({e}); both containers are kept and the next run settles traffic",
                            Self::describe(Some(&old))
                        )),
                        settled: false,
                        serving: None,
                    },
                }
            }
            _ => {
                // Nothing to go back to (a first deploy, the old container gone or failing its
                // health check now). The new container passed its health check, so it may keep
                // the traffic if it has it; the old one, if any, is left as it is.
                let why = match &old_unhealthy {
                    Some(e) => format!("the previous container fails its health check now ({e})"),
                    None => "there is no running previous container to go back to".to_owned(),
                };
                let message = format!(
                    "{reason}; {why}, so {} keeps the traffic (it passed its health check)",
                    Self::describe(Some(&new))
                );
                let on_new =
                    switched && self.routing().await.is_ok_and(|r| Self::routes_to(&r, &self.upstream(new.color)));
                if on_new && old_unhealthy.is_some() {
                    // The old container is the good one and only unhealthy now: keep traffic on
                    // the new one for the moment, and the state file `rolling-back`, so the next
                    // run goes back to the old one once it passes its check again.
                    Outcome { result: DeployResult::Failed, message: Some(message), settled: false, serving: Some(new) }
                } else if on_new {
                    self.state.old = Some(new.clone());
                    self.state.new = None;
                    self.state.serving_since = self.state.switched_at;
                    Outcome { result: DeployResult::Failed, message: Some(message), settled: true, serving: Some(new) }
                } else {
                    // Where traffic goes is not proven: the next run settles it.
                    Outcome { result: DeployResult::Failed, message: Some(message), settled: false, serving: None }
                }
            }
        };
        timings.insert("rollback".into(), t.elapsed());
        Ok(outcome)
    }

    /// The switch took effect: the routing itself names `to` (polled: a reload takes effect
    /// a moment after the command returns) before `deadline`.
    pub async fn prove(&self, to: &Upstream, deadline: Instant) -> Result<(), String> {
        let driver = self.d.traffic.driver();
        loop {
            let last = match self.d.traffic.routed().await {
                Ok(Some(u)) if u.same_as(to) => return Ok(()),
                Ok(Some(u)) => format!("it routes to {u}"),
                Ok(None) => "it routes nowhere".to_owned(),
                Err(e) => e.to_string(),
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "the {driver} driver reported the switch to {to} done, but traffic does not go there: {last}"
                ));
            }
            tokio::time::sleep(PROOF_POLL.min(deadline - now)).await;
        }
    }

    /// Proves the switch through the driver, then asks `verify_url` (the traffic path) for
    /// `health.successes` consecutive 2xx within `verify_deadline`.
    pub async fn verify(&self, to: &Upstream) -> Result<(), String> {
        self.prove(to, Instant::now() + self.spec.verify_deadline).await?;
        let Some(url) = &self.spec.verify_url else { return Ok(()) };
        let target = HttpTarget::parse_url(url)?;
        let request = HttpProbe {
            host_header: self.spec.verify_host.as_deref(),
            ..HttpProbe::new(&target.host, target.port, &target.path)
        };
        let h = &self.spec.health;
        let deadline = Instant::now() + self.spec.verify_deadline;
        let mut streak = 0;
        loop {
            let last = probe(&*self.d.net, &request, h.timeout, deadline, &mut streak).await;
            if streak >= h.successes {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "verification after the switch failed: GET {url} {last} ({streak} of {} consecutive 2xx within {})",
                    h.successes,
                    show_duration(self.spec.verify_deadline)
                ));
            }
            tokio::time::sleep(h.interval.min(deadline - now)).await;
        }
    }

    /// Traffic is on `keep`: give the other color's container what is left of its grace period
    /// (counted from the switch, which may predate a restart), then stop and remove it.
    pub async fn drain(&mut self, keep: Color) -> Drained {
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
}
