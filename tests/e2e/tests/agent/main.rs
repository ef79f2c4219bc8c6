//! The agent against the real Docker engine, nginx and LocalStack, driven by the `s3dock` CLI:
//! one integration binary, a module per topic. See `support` for the services and binaries each
//! test needs and how it skips.

mod crash;
mod deps;
mod failures;
mod fleet;
mod messages;
mod reconcile;
mod shutdown;
mod sqs;
mod support;
