//! Object stores: the one trait every bucket access goes through, and its implementations.
//!
//! - `S3Store` (crate `s3dock-aws`): any S3 endpoint (AWS, LocalStack, moto, MinIO...).
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
//! before a command relies on them (push, tag, promote, rollback, cleanup) and refuses one
//! that does not honour them; [`probe`] reports each operation (`s3dock doctor`).

pub mod compose;
pub mod faults;
pub mod local;
pub mod memory;

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_with::skip_serializing_none;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::names::ObjectKey;

pub use compose::{CopyRange, Piece, PieceStream};
pub use local::LocalStore;
pub use memory::MemoryStore;

/// A streaming body.
pub type BoxReader = Pin<Box<dyn AsyncRead + Send>>;

/// An entity tag: opaque, compared for equality only. Equality ignores the spelling S3 and
/// proxies vary in: surrounding quotes and a weak `W/` prefix (`"abc"`, `abc` and `W/"abc"` are
/// the same tag), so a tag recorded in a document matches the one a later HEAD returns.
#[derive(Debug, Clone)]
pub struct ETag(pub String);

impl ETag {
    /// The tag without quotes or a weak prefix.
    pub fn normalized(&self) -> &str {
        let s = self.0.trim();
        let s = s.strip_prefix("W/").unwrap_or(s);
        s.trim_matches('"')
    }
}

impl PartialEq for ETag {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}

impl Eq for ETag {}

impl std::hash::Hash for ETag {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.normalized().hash(state);
    }
}

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
    /// The version (S3 versioning), where the store keeps versions and said which one.
    pub version_id: Option<String>,
    /// The write id the object was stored with ([`PutOptions::write_id`]), where the store
    /// keeps one (S3 as user metadata, memory); `None` elsewhere and in listings.
    pub write_id: Option<String>,
}

impl ObjectInfo {
    pub fn new(key: ObjectKey, size: u64, etag: ETag) -> Self {
        ObjectInfo { key, size, etag, last_modified: None, version_id: None, write_id: None }
    }
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
    /// Read at most this many bytes from `offset` (a ranged GET with an end).
    pub length: Option<u64>,
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
pub type CommitCheck = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, Result<(), Abort>> + Send>;

/// Why a commit check stopped a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Abort {
    /// The bytes are identical to what the bucket already holds: nothing to write.
    Identical,
    /// Anything else, said for people.
    Refused(String),
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::Identical => f.write_str("identical content: the bucket already holds these bytes"),
            Abort::Refused(why) => f.write_str(why),
        }
    }
}

/// A commit check from a plain closure.
pub fn commit_check(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> CommitCheck {
    Box::new(move || Box::pin(std::future::ready(f().map_err(Abort::Refused))))
}

#[derive(Default)]
pub struct PutOptions {
    pub precondition: Precondition,
    pub commit_check: Option<CommitCheck>,
    /// The body's size if known in advance (lets small bodies skip multipart).
    pub size_hint: Option<u64>,
    /// An id unique to this write, stored with the object and returned by `head`: after a
    /// lost response (the SDK retried and the condition failed on the writer's own object) the
    /// writer recognizes its own write by it.
    pub write_id: Option<String>,
    /// Use the multipart path whatever the size (the precondition probe checks conditional
    /// multipart completion with a tiny body). Stores without a multipart path ignore it.
    pub multipart: bool,
}

impl std::fmt::Debug for PutOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutOptions")
            .field("precondition", &self.precondition)
            .field("commit_check", &self.commit_check.is_some())
            .field("size_hint", &self.size_hint)
            .field("write_id", &self.write_id)
            .field("multipart", &self.multipart)
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
    Aborted { key: String, reason: Abort },
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
        "{store} ignores the conditions of {operations}, so concurrent writers could overwrite each other's data; use AWS S3, LocalStack, or a local directory store"
    )]
    PreconditionsIgnored { store: String, operations: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{message}")]
    Other {
        message: String,
        retryable: bool,
        /// The failure underneath, when there is one (an SDK error, a task's panic).
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A failure without a cause underneath.
    pub fn other(message: impl Into<String>, retryable: bool) -> Self {
        StoreError::Other { message: message.into(), retryable, source: None }
    }

    /// A failure caused by `source`, which stays reachable through [`std::error::Error::source`].
    pub fn other_caused(
        message: impl Into<String>,
        retryable: bool,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Other { message: message.into(), retryable, source: Some(Box::new(source)) }
    }

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

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
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

    /// Deletes an object only while it still has `etag` (S3's conditional delete, `If-Match`):
    /// `PreconditionFailed` if it changed, `NotFound` if it is gone. What a handler or cleanup
    /// deletes is what it inspected, never a version that landed since.
    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError>;

    /// Writes an object made of `pieces` in order: bytes to upload, and ranges of existing
    /// objects (each read only while it has the ETag given). Same guarantees as
    /// [`put_stream`](Self::put_stream): on any error nothing becomes visible. The default reads
    /// the ranges and writes them (memory, local directory); S3 copies them on the server.
    async fn compose(&self, key: &ObjectKey, pieces: PieceStream, opts: PutOptions) -> Result<ObjectInfo, StoreError> {
        compose::by_reading(self, key, pieces, opts).await
    }

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

/// One conditional operation the probe tried, and whether the store honoured its condition.
#[skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeCheck {
    /// `PutObject If-None-Match`, `CompleteMultipartUpload If-Match`, ...
    pub operation: &'static str,
    /// Whether s3dock relies on it (a failed required check refuses the store).
    pub required: bool,
    pub honoured: bool,
    /// Why the operation could not be tried (a server without multipart uploads...).
    pub error: Option<String>,
}

/// What [`probe`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProbeReport {
    /// False for stores whose support is native (local directory, memory): nothing was tried.
    pub probed: bool,
    pub checks: Vec<ProbeCheck>,
}

impl ProbeReport {
    /// The required operations whose conditions the store ignored.
    pub fn ignored(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|c| c.required && !c.honoured).map(|c| c.operation).collect()
    }
}

/// Tries every conditional operation s3dock relies on, with throw-away objects under
/// [`crate::layout::PROBE_PREFIX`], and reports which conditions the store honours: PutObject
/// with `If-None-Match: *` (creates) and `If-Match` (compare-and-swap of tags, pointers and
/// metadata), CompleteMultipartUpload with `If-None-Match: *` (archive uploads), CopyObject with
/// `If-None-Match: *` (archive copies). Also reported, not required: CompleteMultipartUpload
/// with `If-Match`, and DeleteObject with `If-Match` (the S3 store compares the ETag first where
/// the server does not). Stores whose support is native pass without a request. Errors only when the store
/// cannot be used at all (unreachable, access denied).
pub async fn probe(store: &dyn ObjectStore) -> Result<ProbeReport, StoreError> {
    if store.precondition_support() == PreconditionSupport::Native {
        return Ok(ProbeReport { probed: false, checks: Vec::new() });
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (single, multi, copy) = (
        crate::layout::probe(&format!("{id}-put")),
        crate::layout::probe(&format!("{id}-multipart")),
        crate::layout::probe(&format!("{id}-copy")),
    );
    let stale = ETag("\"00000000000000000000000000000000\"".into());
    // A condition is honoured when the write that should fail fails with PreconditionFailed.
    fn refused<T>(r: Result<T, StoreError>) -> Result<bool, StoreError> {
        match r {
            Err(e) if e.is_precondition_failed() => Ok(true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        }
    }
    let multipart = |precondition: Precondition| PutOptions { precondition, multipart: true, ..Default::default() };
    let put = async {
        let first = store.put_bytes(&single, Bytes::from_static(b"probe-1"), Precondition::IfAbsent).await?;
        let absent = refused(store.put_bytes(&single, Bytes::from_static(b"probe-2"), Precondition::IfAbsent).await)?;
        let stale_refused = refused(
            store.put_bytes(&single, Bytes::from_static(b"probe-3"), Precondition::IfMatch(stale.clone())).await,
        )?;
        let current = store.head(&single).await?.map(|i| i.etag).unwrap_or(first.etag);
        store.put_bytes(&single, Bytes::from_static(b"probe-4"), Precondition::IfMatch(current)).await?;
        Ok::<_, StoreError>((absent, stale_refused))
    }
    .await;
    let complete = async {
        let first =
            store.put_stream(&multi, reader_from_bytes(&b"probe-1"[..]), multipart(Precondition::IfAbsent)).await?;
        let absent = refused(
            store.put_stream(&multi, reader_from_bytes(&b"probe-2"[..]), multipart(Precondition::IfAbsent)).await,
        )?;
        let stale_refused = refused(
            store
                .put_stream(&multi, reader_from_bytes(&b"probe-3"[..]), multipart(Precondition::IfMatch(stale.clone())))
                .await,
        )?;
        store
            .put_stream(&multi, reader_from_bytes(&b"probe-4"[..]), multipart(Precondition::IfMatch(first.etag)))
            .await?;
        Ok::<_, StoreError>((absent, stale_refused))
    }
    .await;
    let copied = async {
        store.copy(&single, &copy, Precondition::IfAbsent).await?;
        refused(store.copy(&single, &copy, Precondition::IfAbsent).await)
    }
    .await;
    let deleted = async {
        let r = store.delete_if(&copy, &stale).await;
        match r {
            Err(e) if e.is_precondition_failed() => Ok(true),
            Ok(()) => Ok(false),
            Err(e) => Err(e),
        }
    }
    .await;
    // Best effort: the probe prefix is also expired by the bucket's lifecycle rule.
    for key in [&single, &multi, &copy] {
        if let Err(e) = store.delete(key).await {
            tracing::debug!(key = %key, error = %e, "could not delete a precondition probe object");
        }
    }
    // A store that cannot be used at all fails the probe; an operation that merely fails
    // (a server without multipart, without copies) counts as not honoured, with its error.
    let usable = |e: StoreError| -> Result<String, StoreError> {
        match e {
            StoreError::Unreachable { .. }
            | StoreError::NoSuchBucket { .. }
            | StoreError::AccessDenied { .. }
            | StoreError::NoCredentials { .. } => Err(e),
            other => Ok(other.to_string()),
        }
    };
    let mut checks = Vec::new();
    let mut push = |operation: &'static str, required: bool, r: Result<bool, String>| {
        let (honoured, error) = match r {
            Ok(h) => (h, None),
            Err(e) => (false, Some(e)),
        };
        checks.push(ProbeCheck { operation, required, honoured, error });
    };
    match put {
        Ok((absent, stale_refused)) => {
            push("PutObject If-None-Match", true, Ok(absent));
            push("PutObject If-Match", true, Ok(stale_refused));
        }
        Err(e) => {
            let e = usable(e)?;
            push("PutObject If-None-Match", true, Err(e.clone()));
            push("PutObject If-Match", true, Err(e));
        }
    }
    match complete {
        Ok((absent, stale_refused)) => {
            push("CompleteMultipartUpload If-None-Match", true, Ok(absent));
            // Reported, not required: no archive is ever replaced in place (a re-push writes a
            // new archive object), so nothing relies on it.
            push("CompleteMultipartUpload If-Match", false, Ok(stale_refused));
        }
        Err(e) => {
            let e = usable(e)?;
            push("CompleteMultipartUpload If-None-Match", true, Err(e.clone()));
            push("CompleteMultipartUpload If-Match", false, Err(e));
        }
    }
    let copied = match copied {
        Ok(b) => Ok(b),
        Err(e) => Err(usable(e)?),
    };
    push("CopyObject If-None-Match", true, copied);
    let deleted = match deleted {
        Ok(b) => Ok(b),
        Err(e) => Err(usable(e)?),
    };
    push("DeleteObject If-Match", false, deleted);
    Ok(ProbeReport { probed: true, checks })
}

/// Refuses a store that ignores a condition s3dock relies on (see [`probe`]).
pub async fn probe_preconditions(store: &dyn ObjectStore) -> Result<(), StoreError> {
    let report = probe(store).await?;
    let ignored = report.ignored();
    if ignored.is_empty() {
        Ok(())
    } else {
        Err(StoreError::PreconditionsIgnored { store: store.url(), operations: ignored.join(", ") })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: ETags were compared byte for byte, so a tag recorded without quotes (or a
    /// proxy's weak `W/` form) never matched the one a HEAD returned.
    #[test]
    fn etags_compare_by_value_not_spelling() {
        let quoted = ETag("\"9e107d9d372bb6826bd81d3542a419d6\"".into());
        for same in [
            "9e107d9d372bb6826bd81d3542a419d6",
            "W/\"9e107d9d372bb6826bd81d3542a419d6\"",
            " \"9e107d9d372bb6826bd81d3542a419d6\" ",
        ] {
            assert_eq!(quoted, ETag(same.into()), "{same}");
        }
        assert_ne!(quoted, ETag("\"9e107d9d372bb6826bd81d3542a419d7\"".into()));
        let set: std::collections::HashSet<ETag> =
            [quoted.clone(), ETag("9e107d9d372bb6826bd81d3542a419d6".into())].into();
        assert_eq!(set.len(), 1, "hashing agrees with equality");
        assert_eq!(ETag("\"abc-2\"".into()).normalized(), "abc-2");
    }
}
