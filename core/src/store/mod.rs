//! Object stores: the one trait every bucket access goes through, and its implementations.
//!
//! - [`S3Store`](s3::S3Store): any S3 endpoint (AWS, LocalStack, moto, MinIO...).
//! - [`LocalStore`](local::LocalStore): a directory laid out exactly like the bucket, the
//!   embedded default. Writes are atomic (temp file, fsync, rename) and conditional writes hold
//!   an exclusive lock per key, so compare-and-swap is correct across processes.
//! - [`MemoryStore`](memory::MemoryStore): for tests.
//! - [`faults`]: decorators for fault injection (a store that ignores preconditions, one that
//!   fails on chosen operations), used by tests to prove the callers' error handling.
//!
//! Conditional writes are the heart of the design: `IfAbsent` (`If-None-Match: *`) guards
//! creates of archive and audit objects (never overwritten) and first pointers; `IfMatch`
//! (`If-Match: <etag>`) makes pointer updates compare-and-swap. A store that silently ignores
//! them would turn a lost race into lost data, so [`probe_preconditions`] checks a store once
//! before any pointer is written and refuses one that does not honour them.

pub mod faults;
pub mod local;
pub mod memory;
pub mod s3;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::names::ObjectKey;

pub use local::LocalStore;
pub use memory::MemoryStore;
pub use s3::{S3Config, S3Store};

/// A streaming body.
pub type BoxReader = Pin<Box<dyn AsyncRead + Send>>;

/// An entity tag: opaque, compared for equality only.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

impl std::fmt::Display for ETag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size: u64,
    pub etag: ETag,
    pub last_modified: Option<DateTime<Utc>>,
}

/// The condition a write must meet, checked atomically with the write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Precondition {
    #[default]
    None,
    /// Only if no object exists at the key (`If-None-Match: *`).
    IfAbsent,
    /// Only if the current object has this ETag (`If-Match`).
    IfMatch(ETag),
}

#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    /// Start reading at this byte (a ranged GET), to resume an interrupted download.
    pub offset: u64,
    /// Fail with `PreconditionFailed` unless the object still has this ETag: a resumed
    /// download must not splice two different objects together.
    pub if_match: Option<ETag>,
    /// Read this version of the object (S3 versioning); ignored by stores without versions.
    pub version_id: Option<String>,
}

pub struct GetObject {
    /// The object's full size and ETag (not the remaining range).
    pub info: ObjectInfo,
    pub body: BoxReader,
}

impl std::fmt::Debug for GetObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GetObject").field("info", &self.info).finish_non_exhaustive()
    }
}

/// Run after the whole body was read and before the object becomes visible; an `Err` aborts
/// the write (nothing becomes visible) with [`StoreError::Aborted`]. The pusher uses it to skip
/// an upload whose MD5 turns out to match what the bucket already holds, and to archive the
/// content it is about to replace. It is async so it can do that copy.
pub type CommitCheck = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, Result<(), String>> + Send>;

/// A commit check from a plain closure.
pub fn commit_check(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> CommitCheck {
    Box::new(move || Box::pin(std::future::ready(f())))
}

#[derive(Default)]
pub struct PutOptions {
    pub precondition: Precondition,
    pub commit_check: Option<CommitCheck>,
    /// The body's size if known in advance (lets small bodies skip multipart).
    pub size_hint: Option<u64>,
}

impl std::fmt::Debug for PutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutOptions")
            .field("precondition", &self.precondition)
            .field("commit_check", &self.commit_check.is_some())
            .field("size_hint", &self.size_hint)
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectInfo>,
    /// With a delimiter: the "folders" directly under the prefix, each ending in `/`.
    pub prefixes: Vec<String>,
    pub next: Option<String>,
}

/// What went wrong talking to a store. Each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} does not exist")]
    NotFound { key: String },
    #[error("{key} was changed by someone else (precondition failed)")]
    PreconditionFailed { key: String },
    #[error("write to {key} aborted: {reason}")]
    Aborted { key: String, reason: String },
    #[error(
        "cannot reach {endpoint} ({detail}); check the endpoint URL, your network, and that the service is running"
    )]
    Unreachable { endpoint: String, detail: String },
    #[error("bucket {bucket} does not exist; create it or fix the store URL (s3://BUCKET[/PREFIX])")]
    NoSuchBucket { bucket: String },
    #[error(
        "{store} refused the credentials or the request ({detail}); check AWS_PROFILE / AWS_ACCESS_KEY_ID and the IAM policy"
    )]
    AccessDenied { store: String, detail: String },
    #[error(
        "no AWS credentials found ({detail}); set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or `aws_profile` in the s3dock profile"
    )]
    NoCredentials { detail: String },
    #[error(
        "{store} does not honour conditional writes (If-None-Match / If-Match), so concurrent promotions could overwrite each other; use AWS S3, LocalStack, or a local directory store"
    )]
    PreconditionsIgnored { store: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Other { message: String, retryable: bool },
}

impl StoreError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unreachable { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ),
            StoreError::Other { retryable, .. } => *retryable,
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, StoreError::PreconditionFailed { .. })
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }
}

/// How a store treats conditional writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreconditionSupport {
    /// Guaranteed by construction (local directory, memory).
    Native,
    /// Depends on the server: probe before relying on it.
    Probe,
}

/// Everything s3dock needs from a bucket. No SDK type appears here.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// The store's URL, for messages (`s3://bucket/prefix`, `file:///path`).
    fn url(&self) -> String;

    /// Metadata of an object, `None` if absent.
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError>;

    /// A streaming read. `NotFound` if absent.
    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError>;

    /// Writes a small body in one request.
    async fn put_bytes(
        &self,
        key: &ObjectKey,
        body: Bytes,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError>;

    /// Writes a streaming body of any size, with memory bounded independently of it (S3:
    /// multipart above a threshold, concurrent parts). On any error the partial upload is
    /// discarded and nothing becomes visible.
    async fn put_stream(&self, key: &ObjectKey, body: BoxReader, opts: PutOptions) -> Result<ObjectInfo, StoreError>;

    /// One page of a listing, in key order. `delimited` groups keys below the next `/` into
    /// [`ListPage::prefixes`].
    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError>;

    /// Server-side copy. With `IfAbsent` the copy fails with `PreconditionFailed` if `dst`
    /// exists.
    async fn copy(
        &self,
        src: &ObjectKey,
        dst: &ObjectKey,
        precondition: Precondition,
    ) -> Result<ObjectInfo, StoreError>;

    /// Deletes an object; deleting an absent object is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError>;

    fn precondition_support(&self) -> PreconditionSupport {
        PreconditionSupport::Probe
    }
}

/// Every object under `prefix`, following continuation tokens.
pub async fn list_all(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = store.list_page(prefix, false, token).await?;
        out.extend(page.objects);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// The "folders" directly under `prefix` (each ending in `/`).
pub async fn list_prefixes(store: &dyn ObjectStore, prefix: &str) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = store.list_page(prefix, true, token).await?;
        out.extend(page.prefixes);
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

/// Reads a small document whole, refusing more than `max` bytes without reading them all
/// (a hostile object must not exhaust memory). `None` if absent.
pub async fn read_small(
    store: &dyn ObjectStore,
    key: &ObjectKey,
    max: usize,
) -> Result<Option<(Bytes, ObjectInfo)>, StoreError> {
    let obj = match store.get(key, GetOptions::default()).await {
        Ok(obj) => obj,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = Vec::with_capacity(obj.info.size.min(max as u64 + 1) as usize);
    obj.body
        .take(max as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| StoreError::io(format!("reading {key}"), e))?;
    Ok(Some((Bytes::from(buf), obj.info)))
}

/// Checks that `store` honours `If-None-Match: *` and `If-Match`, with throw-away objects under
/// [`crate::layout::PROBE_PREFIX`]. Stores whose support is native pass without a request.
pub async fn probe_preconditions(store: &dyn ObjectStore) -> Result<(), StoreError> {
    if store.precondition_support() == PreconditionSupport::Native {
        return Ok(());
    }
    let key = crate::layout::probe(&uuid::Uuid::new_v4().simple().to_string());
    let ignored = || StoreError::PreconditionsIgnored { store: store.url() };
    let first = store.put_bytes(&key, Bytes::from_static(b"probe-1"), Precondition::IfAbsent).await?;
    let result = async {
        match store.put_bytes(&key, Bytes::from_static(b"probe-2"), Precondition::IfAbsent).await {
            Err(e) if e.is_precondition_failed() => {}
            Ok(_) => return Err(ignored()),
            Err(e) => return Err(e),
        }
        let stale = ETag("\"00000000000000000000000000000000\"".into());
        match store.put_bytes(&key, Bytes::from_static(b"probe-3"), Precondition::IfMatch(stale)).await {
            Err(e) if e.is_precondition_failed() => {}
            Ok(_) => return Err(ignored()),
            Err(e) => return Err(e),
        }
        store.put_bytes(&key, Bytes::from_static(b"probe-4"), Precondition::IfMatch(first.etag.clone())).await?;
        Ok(())
    }
    .await;
    // Best effort: the probe prefix is also expired by the bucket's lifecycle rule.
    if let Err(e) = store.delete(&key).await {
        tracing::debug!(key = %key, error = %e, "could not delete the precondition probe");
    }
    result
}

/// Reads a whole stream into memory: for tests and small bodies only.
pub async fn read_to_vec(mut body: BoxReader) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    body.read_to_end(&mut v).await?;
    Ok(v)
}

/// Wraps bytes as a [`BoxReader`].
pub fn reader_from_bytes(b: impl Into<Bytes>) -> BoxReader {
    Box::pin(std::io::Cursor::new(b.into()))
}
