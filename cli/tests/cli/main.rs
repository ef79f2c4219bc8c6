//! The CLI's integration tests: the real binary, run in a sandbox (temp HOME and XDG
//! directories, cleared environment), one module per topic.

mod bad_input;
mod config;
mod deploy_guide;
mod docker;
mod doctor;
mod fake_s3;
mod help;
mod report;
mod s3;
mod shell;
mod stats;
mod status;
mod story;
mod support;
