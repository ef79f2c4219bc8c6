//! Test helpers: bodies, readers and keys; the S3 fixtures come from `s3dock-testkit`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use s3dock_core::names::ObjectKey;
use s3dock_core::store::{BoxReader, LocalStore};
pub use s3dock_testkit::s3::*;
pub use s3dock_testkit::unique;
use tempfile::TempDir;
use tokio::io::{AsyncRead, ReadBuf};

/// A local directory store in a fresh temp dir (dropped with the `TempDir`).
pub fn local_store() -> (TempDir, LocalStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LocalStore::open(dir.path().join("bucket")).expect("open local store");
    (dir, store)
}

pub fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap_or_else(|e| panic!("test key {s:?}: {e}"))
}

pub use s3dock_testkit::pseudo_random;

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A body that arrives in uneven chunks, counts what was read, and can fail part-way.
pub struct TestReader {
    data: Bytes,
    pos: usize,
    chunk: usize,
    fail_at: Option<usize>,
    read: Arc<AtomicU64>,
}

impl TestReader {
    pub fn new(data: impl Into<Bytes>) -> TestReader {
        TestReader { data: data.into(), pos: 0, chunk: 65_537, fail_at: None, read: Arc::new(AtomicU64::new(0)) }
    }

    /// Fails with a connection reset once `at` bytes were delivered.
    pub fn failing_at(mut self, at: usize) -> TestReader {
        self.fail_at = Some(at);
        self
    }

    /// A counter of the bytes delivered so far.
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }

    pub fn boxed(self) -> BoxReader {
        Box::pin(self)
    }
}

impl AsyncRead for TestReader {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let mut end = (this.pos + this.chunk).min(this.data.len());
        if let Some(at) = this.fail_at {
            if this.pos >= at {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected: the body's source broke",
                )));
            }
            end = end.min(at);
        }
        let n = (end - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        this.read.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}
