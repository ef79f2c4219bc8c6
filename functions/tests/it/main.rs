//! s3dock-functions' integration tests, one module per topic.
//!
//! `pipeline` needs LocalStack (`S3DOCK_TEST_S3_ENDPOINT`, from `tests/services.sh env`); it
//! skips without it, except in CI (`CI` set), where it fails.

mod behaviour;
mod deps;
mod fixtures;
mod pipeline;
mod support;
