//! The agent against the real Docker engine, nginx and LocalStack: one integration binary, a
//! module per topic. See `support` for the services each test needs and how it skips.

mod check;
mod crash;
mod failures;
mod fleet;
mod in_memory;
mod messages;
mod reconcile;
mod shell;
mod shutdown;
mod sqs;
mod support;
