//! Blue-green deploys on one host: the engine `s3dock deploy --blue-green` and the host agent
//! share (it exists once, here).
//!
//! - [`spec`]: [`DeploySpec`], the service's settings (TOML or code), and their validation.
//! - [`traffic`]: the [`TrafficSwitch`] trait and its drivers (nginx, command, none).
//! - [`health`]: HTTP checks plus Docker's `HEALTHCHECK`, failing fast when the container exits.
//! - [`state`]: the per-service state file (atomic writes) and the per-service lock.
//! - [`deployer`]: [`Deployer`], the sequence below, and crash recovery.
//!
//! # The sequence
//!
//! Each service has two container names, `s3dock-{app}-{env}-blue` and `...-green`, labelled
//! `io.s3dock.app`, `io.s3dock.env`, `io.s3dock.color` and `io.s3dock.image`. Each color
//! publishes the container port on its own host port. The state file is written (temporary
//! file, fsync, rename) *before* the first action of each phase, so it never says less than
//! what may have happened.
//!
//! 1. **Observe.** Traffic is where the driver says (its record is what routes), else where
//!    the state file says. If that container runs the desired image id, the driver routes to
//!    it and it passes its health check now: nothing to do.
//! 2. **Start** (`starting`). Remove whatever holds the new color's name (a leftover; traffic
//!    is on the other color), check the host port is free, create and start the container.
//! 3. **Health** (`health-check`). N consecutive 2xx on the health path and, if the image has a
//!    `HEALTHCHECK`, Docker's `healthy`, before the deadline; an exited container fails at
//!    once. Any failure up to here removes the new container: traffic never left the old one.
//! 4. **Switch** (`switching`), then **verify** (`verifying`): the driver moves traffic; its
//!    record must then name the new upstream, and `verify_url` (if set) must answer 2xx N times.
//!    A driver that refused without changing anything (nginx -t) is a plain failure; a switch
//!    that may have moved traffic, or a failed verification, switches back to the old
//!    container (`rolling-back`) and removes the new one: result `rolled-back`.
//! 5. **Drain** (`draining`). The old container keeps running for the grace period (counted
//!    from the switch) so requests it accepted finish, then is stopped and removed; images
//!    beyond the newest `keep_images` are removed unless a container uses them.
//! 6. **Report.** Timings per phase, an audit record (`deploy`, or `rollback` for a switch
//!    back), then the state file goes back to `idle`.
//!
//! # Crash points
//!
//! A deployer killed anywhere is settled by the next [`Deployer::deploy`] (or
//! [`Deployer::recover`]) of the same service, which ends with exactly one serving container
//! and never sends traffic to a container that has not just passed its health check:
//!
//! | killed during | traffic was on | the restart |
//! |---|---|---|
//! | after the pull, before `starting` | old | nothing to settle: deploys normally |
//! | `starting` (leftover removed, container maybe created/started) | old | removes the new color's container; then deploys again |
//! | `health-check` | old | same: the new container never had traffic |
//! | `switching` (e.g. nginx file renamed, reload not run) | unknown | health checks new, then old; re-applies the switch to the first healthy one (a reload that never ran now runs), drains the other |
//! | `verifying` | new | health checks new, then old; keeps or re-applies the switch; drains the other |
//! | `rolling-back` | unknown | health checks old, then new; re-applies the switch; drains the other |
//! | `draining` | new | health checks new (then old); finishes the remaining grace and removes the old |
//! | after `draining`, before `idle` | new | as `draining`: nothing left to drain; the audit record is written again under a `-recovered` key |
//!
//! When no container passes its health check during recovery, the new (untrusted) container
//! is removed and the state goes idle; the deploy that follows starts a fresh container and
//! switches only once it is healthy. The service lock (an `flock`, released by the kernel when
//! its holder dies) keeps the agent and a hand-run `s3dock deploy` from interleaving.
//!
//! # Shutdown
//!
//! The `CancellationToken` passed to a deploy stops it at the next safe point: before the
//! switch the new container is removed (old keeps serving, result `failed`); a switch in
//! progress is finished and verified (or undone); the drain's grace period is not cut short
//! but left to the next start (the state file stays `draining`).

pub mod deployer;
pub mod health;
pub mod spec;
pub mod state;
pub mod traffic;

pub use deployer::{
    DeployError, DeployEvent, DeployObserver, DeployReport, DeployRequest, DeployResult, Deployer, LABEL_APP,
    LABEL_COLOR, LABEL_DEPLOY_ID, LABEL_ENV, LABEL_IMAGE, LABEL_INSTANCE, RecoverReport, container_name,
};
pub use health::{HealthCheck, HealthFailure, http_status};
pub use spec::{Color, ColorPorts, DeploySpec, DriverConfig, HealthSpec, HttpTarget, Secret, SpecError, TrafficConfig};
pub use state::{DeployState, Phase, Slot, StateError, StateFiles};
pub use traffic::{
    CommandSwitch, NginxConfig, NginxSwitch, RecordSwitch, TrafficError, TrafficSwitch, Upstream, traffic_switch,
};
