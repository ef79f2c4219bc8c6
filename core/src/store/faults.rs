//! Store decorators for fault injection. They wrap any store, so tests exercise the callers'
//! error handling against the same code paths production uses.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

use super::*;

/// A store that accepts conditional writes but ignores their conditions, like some
/// S3-compatible servers do. The precondition probe must refuse it.
#[derive(Debug)]
pub struct IgnorePreconditions<S>(pub S);

#[async_trait]
impl<S: ObjectStore> ObjectStore for IgnorePreconditions<S> {
    fn url(&self) -> String {
        format!("careless+{}", self.0.url())
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        self.0.head(key).await
    }
    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        self.0.get(key, opts).await
    }
    async fn put_bytes(&self, key: &ObjectKey, body: Bytes, _p: Precondition) -> Result<ObjectInfo, StoreError> {
        self.0.put_bytes(key, body, Precondition::None).await
    }
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: BoxReader,
        mut opts: PutOptions,
    ) -> Result<ObjectInfo, StoreError> {
        opts.precondition = Precondition::None;
        self.0.put_stream(key, body, opts).await
    }
    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        self.0.list_page(prefix, delimited, token).await
    }
    async fn copy(&self, src: &ObjectKey, dst: &ObjectKey, _p: Precondition) -> Result<ObjectInfo, StoreError> {
        self.0.copy(src, dst, Precondition::None).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    async fn delete_if(&self, key: &ObjectKey, _etag: &ETag) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    fn precondition_support(&self) -> PreconditionSupport {
        PreconditionSupport::Probe
    }
}

/// A bucket without versioning: version ids in requests are ignored and none are returned,
/// as S3 does for a bucket whose versioning was never enabled (and as events captured from
/// other buckets expect when replayed against a test bucket).
#[derive(Debug, Default)]
pub struct Unversioned<S>(pub S);

fn unversioned(mut info: ObjectInfo) -> ObjectInfo {
    info.version_id = None;
    info
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Unversioned<S> {
    fn url(&self) -> String {
        self.0.url()
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        Ok(self.0.head(key).await?.map(unversioned))
    }
    async fn get(&self, key: &ObjectKey, mut opts: GetOptions) -> Result<GetObject, StoreError> {
        opts.version_id = None;
        let obj = self.0.get(key, opts).await?;
        Ok(GetObject { info: unversioned(obj.info), body: obj.body })
    }
    async fn put_bytes(&self, key: &ObjectKey, body: Bytes, p: Precondition) -> Result<ObjectInfo, StoreError> {
        self.0.put_bytes(key, body, p).await.map(unversioned)
    }
    async fn put_stream(&self, key: &ObjectKey, body: BoxReader, opts: PutOptions) -> Result<ObjectInfo, StoreError> {
        self.0.put_stream(key, body, opts).await.map(unversioned)
    }
    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        self.0.list_page(prefix, delimited, token).await
    }
    async fn copy(&self, src: &ObjectKey, dst: &ObjectKey, p: Precondition) -> Result<ObjectInfo, StoreError> {
        self.0.copy(src, dst, p).await.map(unversioned)
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.0.delete(key).await
    }
    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        self.0.delete_if(key, etag).await
    }
    fn precondition_support(&self) -> PreconditionSupport {
        self.0.precondition_support()
    }
}

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Head,
    Get,
    PutBytes,
    PutStream,
    List,
    Copy,
    Delete,
}

type MakeError = Box<dyn Fn(&str) -> StoreError + Send + Sync>;

struct Rule {
    op: Op,
    key_contains: String,
    remaining: usize,
    kind: RuleKind,
}

enum RuleKind {
    Fail(MakeError),
    /// `get` succeeds but its body fails with a connection reset after this many bytes.
    CutBody(u64),
    /// The write is applied, its response is lost, and the SDK sends the very same request
    /// again: the caller sees the retry's answer (for a conditional write, its own object
    /// failing the condition).
    LoseResponse,
}

/// What a rule says about one call.
enum Verdict {
    Pass,
    Fail(StoreError),
    Cut(u64),
    LoseResponse,
}

/// A store whose operations fail on demand.
pub struct Faulty<S> {
    inner: S,
    rules: Mutex<Vec<Rule>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Faulty<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S> Faulty<S> {
    pub fn new(inner: S) -> Self {
        Faulty { inner, rules: Mutex::new(Vec::new()) }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The next `times` calls of `op` on keys containing `key_contains` fail with `make(key)`.
    pub fn fail(
        &self,
        op: Op,
        key_contains: &str,
        times: usize,
        make: impl Fn(&str) -> StoreError + Send + Sync + 'static,
    ) {
        self.push(Rule {
            op,
            key_contains: key_contains.into(),
            remaining: times,
            kind: RuleKind::Fail(Box::new(make)),
        });
    }

    /// The next `times` writes (`op`: PutBytes, PutStream, Copy or Delete) on keys containing
    /// `key_contains` are applied, then their response is lost and the request is sent again.
    pub fn lose_response(&self, op: Op, key_contains: &str, times: usize) {
        self.push(Rule { op, key_contains: key_contains.into(), remaining: times, kind: RuleKind::LoseResponse });
    }

    /// The next `times` reads of keys containing `key_contains` break after `after` bytes.
    pub fn cut_body(&self, key_contains: &str, after: u64, times: usize) {
        self.push(Rule {
            op: Op::Get,
            key_contains: key_contains.into(),
            remaining: times,
            kind: RuleKind::CutBody(after),
        });
    }

    fn push(&self, r: Rule) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }

    fn take(&self, op: Op, key: &str) -> Verdict {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = rules.iter().position(|r| r.op == op && r.remaining > 0 && key.contains(&r.key_contains)) else {
            return Verdict::Pass;
        };
        rules[i].remaining -= 1;
        match &rules[i].kind {
            RuleKind::Fail(make) => Verdict::Fail(make(key)),
            RuleKind::CutBody(n) => Verdict::Cut(*n),
            RuleKind::LoseResponse => Verdict::LoseResponse,
        }
    }

    /// Fails the call if a rule says so; `Ok(true)` when its response is to be lost.
    fn gate(&self, op: Op, key: &str) -> Result<bool, StoreError> {
        match self.take(op, key) {
            Verdict::Fail(e) => Err(e),
            Verdict::LoseResponse => Ok(true),
            Verdict::Pass | Verdict::Cut(_) => Ok(false),
        }
    }
}

/// A reader that fails with a connection reset after `left` bytes.
struct CutReader {
    inner: BoxReader,
    left: u64,
}

impl AsyncRead for CutReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.left == 0 {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected: connection reset",
            )));
        }
        let max = (buf.remaining() as u64).min(self.left) as usize;
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(max));
        match self.inner.as_mut().poll_read(cx, &mut limited) {
            Poll::Ready(Ok(())) => {
                let n = limited.filled().len();
                buf.advance(n);
                self.left -= n as u64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for Faulty<S> {
    fn url(&self) -> String {
        self.inner.url()
    }
    async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectInfo>, StoreError> {
        self.gate(Op::Head, key.as_str())?;
        self.inner.head(key).await
    }
    async fn get(&self, key: &ObjectKey, opts: GetOptions) -> Result<GetObject, StoreError> {
        match self.take(Op::Get, key.as_str()) {
            Verdict::Fail(e) => Err(e),
            Verdict::Cut(after) => {
                let obj = self.inner.get(key, opts).await?;
                Ok(GetObject { info: obj.info, body: Box::pin(CutReader { inner: obj.body, left: after }) })
            }
            Verdict::Pass | Verdict::LoseResponse => self.inner.get(key, opts).await,
        }
    }
    async fn put_bytes(&self, key: &ObjectKey, body: Bytes, p: Precondition) -> Result<ObjectInfo, StoreError> {
        if self.gate(Op::PutBytes, key.as_str())? {
            let _lost = self.inner.put_bytes(key, body.clone(), p.clone()).await;
        }
        self.inner.put_bytes(key, body, p).await
    }
    async fn put_stream(&self, key: &ObjectKey, body: BoxReader, opts: PutOptions) -> Result<ObjectInfo, StoreError> {
        if self.gate(Op::PutStream, key.as_str())? {
            // The upload completes; the retried completion then meets the object it made, which
            // fails any condition (it exists; its ETag is new).
            let conditional = opts.precondition != Precondition::None;
            let info = self.inner.put_stream(key, body, opts).await?;
            return if conditional { Err(StoreError::PreconditionFailed { key: key.to_string() }) } else { Ok(info) };
        }
        self.inner.put_stream(key, body, opts).await
    }
    async fn list_page(&self, prefix: &str, delimited: bool, token: Option<String>) -> Result<ListPage, StoreError> {
        self.gate(Op::List, prefix)?;
        self.inner.list_page(prefix, delimited, token).await
    }
    async fn copy(&self, src: &ObjectKey, dst: &ObjectKey, p: Precondition) -> Result<ObjectInfo, StoreError> {
        if self.gate(Op::Copy, dst.as_str())? {
            let _lost = self.inner.copy(src, dst, p.clone()).await;
        }
        self.inner.copy(src, dst, p).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        if self.gate(Op::Delete, key.as_str())? {
            let _lost = self.inner.delete(key).await;
        }
        self.inner.delete(key).await
    }
    async fn delete_if(&self, key: &ObjectKey, etag: &ETag) -> Result<(), StoreError> {
        if self.gate(Op::Delete, key.as_str())? {
            let _lost = self.inner.delete_if(key, etag).await;
        }
        self.inner.delete_if(key, etag).await
    }
    fn precondition_support(&self) -> PreconditionSupport {
        self.inner.precondition_support()
    }
}
