//! s3dock-aws's integration tests: the storage contract and the S3 store's error and
//! concurrency checks, run against every store (memory, local directory, S3 on LocalStack and
//! moto), and the registry's concurrency on a local store and on S3.
//!
//! The S3 tests need a real endpoint: start LocalStack (and optionally moto) with
//! `tests/services.sh localstack-start` and `eval "$(tests/services.sh env)"`. Without
//! `S3DOCK_TEST_S3_ENDPOINT` they are skipped with a message, except in CI where they fail.
//! `S3DOCK_TEST_S3_ENDPOINT=aws` plus `S3DOCK_TEST_BUCKET` runs them against real AWS.

mod registry_concurrency;
mod store_compose;
mod store_concurrency;
mod store_contract;
mod store_errors;
mod support;
