//! s3dock's AWS adapters: everything that speaks to AWS (or an S3/SQS/STS emulator) through
//! the AWS SDK, behind the traits and types of `s3dock-core`. No other library crate of the
//! workspace names an SDK type; the binaries only wire these adapters in.
//!
//! - [`s3`]: the S3 [`ObjectStore`](s3dock_core::store::ObjectStore), one module per operation
//!   (config, upload, get, copy, list, delete, error mapping, bucket settings).
//! - [`sqs`]: the SQS client and queues, the promotion fan-out's notifier and the queue-URL
//!   rules it enforces.
//! - [`sts`]: who the credentials belong to (GetCallerIdentity).
//! - [`location`]: the one parser of store locations (`s3://`, `file://`, a directory) and
//!   the one place a location becomes an open store.
//! - `error`: the one classifier of SDK failures (credentials, timeout, network, service
//!   status and code) the three clients map from; `sdk`: how an SDK configuration is loaded.
mod error;
pub mod location;
pub mod s3;
mod sdk;
pub mod sqs;
pub mod sts;

pub use location::Location;
pub use s3::{S3Config, S3Store};
pub use sdk::DEFAULT_REGION;
