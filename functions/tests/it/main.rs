//! s3dock-functions' integration tests, one module per topic.
//!
//! `pipeline` and `fanout` need LocalStack (`S3DOCK_TEST_S3_ENDPOINT`, from `tests/services.sh
//! env`); they skip without it, except in CI (`CI` set), where they fail.

mod behaviour;
mod binaries;
mod deps;
mod fanout;
mod fixtures;
mod pipeline;
mod support;
