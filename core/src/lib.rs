//! s3dock's core: everything that is not a command line, a Lambda runtime, a Docker engine or
//! git. The CLI, the Lambda functions and the host agent are thin shells over this crate.
//!
//! - [`names`]: validated identifiers (`AppName`, `EnvName`, `Version`, `ImageTag`,
//!   `ImageRef`, `ObjectKey`); nothing unvalidated reaches a key.
//! - [`layout`]: the bucket layout, the only place keys are built and parsed.
//! - [`docs`]: the JSON documents (metadata, tags, pointers, audit, agents, messages).
//! - [`store`]: the `ObjectStore` trait and its S3, local-directory and in-memory
//!   implementations, plus fault-injecting decorators.
//! - [`clock`]: injected time.
pub mod clock;
pub mod docs;
pub mod layout;
pub mod names;
pub mod store;
