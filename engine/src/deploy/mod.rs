//! Blue-green deploys on one host: the engine `s3dock deploy --blue-green` and the host agent
//! share (it exists once, here).
//!
//! - [`spec`]: [`DeploySpec`], the service's settings (TOML or code), and their validation.
//! - [`traffic`]: the [`TrafficSwitch`] trait and its drivers (nginx, command, none), each of
//!   which proves where traffic goes ([`TrafficSwitch::routed`]).
//! - [`health`]: HTTP checks plus Docker's `HEALTHCHECK`, failing fast when the container exits.
//! - [`net`]: the host network seam (HTTP probes, host ports) the checks go through.
//! - [`state`]: the per-service state file (atomic writes) and the per-service lock.
//! - [`deployer`]: [`Deployer`], the sequence below, and crash recovery.
//!
//! This module holds what they share: the container names and labels, and the events a
//! deployer reports to its [`DeployObserver`].
//!
//! # The sequence
//!
//! Each service has two container names, `s3dock-{app}-{env}-blue` and `...-green`, labelled
//! `io.s3dock.app`, `io.s3dock.env`, `io.s3dock.color`, `io.s3dock.image` and
//! `io.s3dock.instance` (empty without an instance, so a label of the image itself never
//! leaks through). Each color publishes the container port on its own host port. The state file
//! is written (temporary file, fsync, rename) *before* the first action of each phase, so it
//! never says less than what may have happened.
//!
//! 1. **Observe.** Traffic is where the driver proves it goes (nginx: what the running master
//!    serves), else where its record says, else where the state file says. If that container
//!    runs the desired image id and passes its health check now: nothing to do (a leftover
//!    container of the other color, which has no traffic, is removed).
//! 2. **Start** (`starting`). Remove whatever holds the new color's name (a leftover; traffic
//!    is on the other color), check the host port is free, create and start the container.
//! 3. **Health** (`health-check`). N consecutive 2xx on the health path and, if the image has a
//!    `HEALTHCHECK`, Docker's `healthy`, before the deadline; an exited container fails at
//!    once. Any failure up to here removes the new container: traffic never left the old one.
//! 4. **Switch** (`switching`), then **verify** (`verifying`): the driver moves traffic, then
//!    must *prove* it moved (the routing itself names the new upstream, within
//!    `verify_deadline`), and `verify_url` (if set) must answer 2xx N times. A driver that
//!    refused without changing anything (nginx -t) is a plain failure; a switch that may have
//!    moved traffic, one that cannot be proven, or a failed verification switches back to the
//!    old container (`rolling-back`) and removes the new one: result `rolled-back`.
//! 5. **Drain** (`draining`). The old container keeps running for the grace period (counted
//!    from the proven switch) so requests it accepted finish, then is stopped and removed;
//!    images beyond the newest `keep_images` are removed unless a container uses them or they
//!    were pulled in the last hour.
//! 6. **Report.** Timings per phase, an audit record (`deploy`, or `rollback` for a switch
//!    back), then the state file goes back to `idle`.
//!
//! # Crash points
//!
//! A deployer killed anywhere is settled by the next [`Deployer::deploy`] (or
//! [`Deployer::recover`]) of the same service. Two rules hold whatever the phase, and the
//! exhaustive crash test (every phase, every point between two engine or driver calls, every
//! health of both colors at restart) checks them on the in-memory host of [`crate::fake`]:
//!
//! - **A container that serves traffic is never removed while no healthy replacement serves.**
//!   What serves is what the driver proves routes, not the state file's belief.
//! - **Traffic never moves to a container that has not just passed its health check**, and a
//!   switch kept or completed by recovery is proven and verified (`verify_url`) like any other.
//!
//! | killed during | traffic was on | the restart |
//! |---|---|---|
//! | after the pull, before `starting` | old | nothing to settle: deploys normally |
//! | `starting` (leftover removed, container maybe created/started) | old | removes the new color's container; then deploys again |
//! | `health-check` | old | same: the new container never had traffic |
//! | `switching` (e.g. nginx file renamed, reload not run) | either | health checks new, then old; puts traffic on the first that passes and is verified (a reload that never ran now runs), drains the other |
//! | `verifying` | new | the same, without a reload when the proven routing already names the choice |
//! | `rolling-back` | either | the same, old first |
//! | `draining` | new | the same, new first; waits what is left of the grace before removing the other |
//! | after `draining`, before `idle` | new | as `draining`: nothing left to drain; the audit record is written again under a `-recovered` key |
//!
//! When no container passes its health check (a database outage, a host still booting),
//! nothing is removed and traffic stays where it is routed (the driver's record is put back in
//! line with it); the state file records that container as serving. The deploy that follows
//! starts a fresh container in the other color and switches only once it is healthy; until
//! then the serving container keeps its traffic. The service lock (an `flock`, released by the
//! kernel when its holder dies) keeps the agent and a hand-run `s3dock deploy` from
//! interleaving.
//!
//! # Shutdown
//!
//! The `CancellationToken` passed to a deploy stops it at the next safe point: before the
//! switch the new container is removed (old keeps serving, result `failed`); a switch in
//! progress is finished and verified (or undone); the drain's grace period is not cut short
//! but left to the next start (the state file stays `draining`).

pub mod deployer;
pub mod health;
pub mod net;
pub mod spec;
pub mod state;
pub mod traffic;

use std::time::Duration;

use async_trait::async_trait;
use s3dock_core::names::{AppName, EnvName};

pub use deployer::{DeployError, DeployReport, DeployRequest, DeployResult, Deployer, RecoverReport, StillWanted};
pub use health::{HealthCheck, HealthFailure};
pub use net::{HostNetwork, HttpProbe, LocalNetwork, http_status};
pub use spec::{Color, ColorPorts, DeploySpec, DriverConfig, HealthSpec, HttpTarget, Secret, SpecError, TrafficConfig};
pub use state::{DeployState, Phase, Slot, StateError, StateFiles};
pub use traffic::{
    CommandSwitch, NginxConfig, NginxSwitch, RecordSwitch, TrafficError, TrafficSwitch, Upstream, traffic_switch,
};

/// The label naming the app a deployer's container belongs to.
pub const LABEL_APP: &str = "io.s3dock.app";
pub const LABEL_ENV: &str = "io.s3dock.env";
pub const LABEL_COLOR: &str = "io.s3dock.color";
/// The `app:tag` the container runs.
pub const LABEL_IMAGE: &str = "io.s3dock.image";
pub const LABEL_DEPLOY_ID: &str = "io.s3dock.deploy-id";
/// The spec's `instance`; set (empty) on every container, so that an image carrying this label
/// does not make its containers look like another instance's.
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
