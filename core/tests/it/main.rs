//! s3dock-core's integration tests: the protocol simulation, and the check that the domain
//! crate links no AWS SDK (the S3 store's contract and concurrency tests live with the store,
//! in s3dock-aws).

mod deps;
mod sim;
