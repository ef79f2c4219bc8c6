//! The agent against the real Docker engine, nginx and LocalStack: one integration binary, a
//! module per topic. See `support` for the services each test needs and how it skips.

mod crash;
mod failures;
mod fleet;
mod messages;
mod reconcile;
mod shutdown;
mod sqs;
mod support;
