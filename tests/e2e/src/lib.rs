//! s3dock's end-to-end tests live under `tests/`: the `s3dock-agent` binary, deploying what the
//! `s3dock` CLI promotes, against the real Docker engine, nginx and LocalStack. This library is
//! empty; the package exists so that neither binary's package depends on the other's.
