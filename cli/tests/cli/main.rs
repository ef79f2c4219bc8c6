//! The CLI's integration tests: the real binary, run in a sandbox (temp HOME and XDG
//! directories, cleared environment), one module per topic.

mod bad_input;
mod config;
mod docker;
mod help;
mod s3;
mod story;
mod support;
