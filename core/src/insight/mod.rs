//! What operators ask of a bucket beyond single commands, computed once for every command
//! that shows it (`status`, `stats`, `doctor`, `report`):
//!
//! - [`fleet`]: every agent of an app, stale or behind its environment's pointer.
//! - [`metrics`]: delivery metrics (frequency, lead time, change failure rate, time to
//!   restore, deploy phases) from the audit trail.
//! - [`dangling`]: pointers and tags whose image is gone.
//! - [`liveness`]: whether the event functions answer the newest writes.

pub mod dangling;
pub mod fleet;
pub mod liveness;
pub mod metrics;
