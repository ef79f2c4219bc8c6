//! s3dock-engine against the real Docker engine.
//!
//! Every image is built `FROM scratch` (nothing can be pulled here); the HTTP server is the
//! static busybox of the host copied into the image. Without a reachable engine the tests that
//! need one skip with a message on stderr, unless `CI` is set, where that is a failure.
//! Each test uses its own `s3dock-test-<random>` repository and removes what it creates.

mod support;

mod build;
mod containers;
mod deploy;
mod deploy_exhaustive;
mod deploy_fake;
mod images;
mod layered;
mod ship;
mod version;
