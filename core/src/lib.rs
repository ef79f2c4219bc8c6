//! s3dock's core: everything that is not a command line, a Lambda runtime, a Docker engine or
//! git. The CLI, the Lambda functions and the host agent are thin shells over this crate.
//!
//! - [`names`]: validated identifiers (`AppName`, `EnvName`, `Version`, `ImageTag`,
//!   `ImageRef`, `ObjectKey`); nothing unvalidated reaches a key.
//! - [`layout`]: the bucket layout, the only place keys are built and parsed.
//! - [`docs`]: the JSON documents (metadata, tags, pointers, audit, agents, messages).
//! - [`store`]: the `ObjectStore` trait and its local-directory and in-memory
//!   implementations, plus fault-injecting decorators (the S3 store is in `s3dock-aws`).
//! - [`registry`]: the operations (tag, promote, rollback, resolve, list, cleanup, history).
//! - [`push`]: the bucket side of a push (plan, stream in, archive what it replaces, commit).
//! - [`bucket`]: reading and writing documents safely (lost-response recognition, archive
//!   copies, references, the leases between referencing and deleting an image).
//! - [`events`]: the event handlers the Lambdas run and the CLI runs inline.
//! - [`insight`]: the fleet view, delivery metrics, dangling references and function liveness.
//! - [`error`]: the operations' error, with the kinds the CLI maps to exit codes.
//! - [`transfer`]: verified, resumable downloads; byte counters for progress.
//! - [`clock`]: injected time and randomness; the one retry back-off.
//! - [`duration`]: durations as people write them (`30s`, `24h`, `7d`).
//! - [`digest`]: MD5, SHA-256 and size of a stream, hashed as it is read, and their check.
//! - [`gzip`]: parallel streaming gzip for pushes, multi-member streaming gunzip for pulls.
//! - `testing` (tests and the `testing` feature only, through `s3dock-testkit`): seeded images,
//!   raw writes, a recording notifier.
pub mod bucket;
pub mod clock;
pub mod digest;
pub mod docs;
pub mod duration;
pub mod error;
pub mod events;
pub mod gzip;
pub mod insight;
pub mod layers;
pub mod layout;
pub mod names;
pub mod push;
pub mod registry;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transfer;

pub use error::{Error, ErrorKind, Result};
