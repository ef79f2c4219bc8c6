//! The agent binary and its library on their own: the `--check` report, the shell surface, and
//! the service loop over an in-memory host. The tests that drive the agent with the `s3dock` CLI
//! are in the `s3dock-e2e` package (tests/e2e).

mod check;
mod in_memory;
mod shell;
