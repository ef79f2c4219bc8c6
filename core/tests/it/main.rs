//! s3dock-core's integration tests: one binary, one module per topic.
//!
//! The S3 tests need a real endpoint: start LocalStack (and optionally moto) with
//! `tests/services.sh localstack-start` and `eval "$(tests/services.sh env)"`. Without
//! `S3DOCK_TEST_S3_ENDPOINT` they are skipped with a message, except in CI where they fail.
//! `S3DOCK_TEST_S3_ENDPOINT=aws` plus `S3DOCK_TEST_BUCKET` runs them against real AWS.

mod registry_concurrency;
mod sim;
mod store_compose;
mod store_concurrency;
mod store_contract;
mod store_errors;
mod support;
